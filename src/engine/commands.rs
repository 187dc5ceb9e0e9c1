//! Setup and cleanup commands (argv only, never a shell), and the background processes
//! setup starts, which are always stopped before the run ends.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::plan::CommandSpec;

/// How a foreground command ended.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

fn command(spec: &CommandSpec) -> Command {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Run a foreground command to completion, bounded by its timeout. Output goes to faultline's
/// stderr so the operator sees it; the child is killed and reaped on timeout.
pub async fn run(spec: &CommandSpec) -> Finished {
    let mut child = match command(spec)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Finished {
                exit_code: None,
                error: Some(format!("cannot start `{}`: {e}", spec.argv[0])),
            };
        }
    };
    match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => Finished {
            exit_code: status.code(),
            error: (!status.success()).then(|| format!("`{}` ended with {status}", spec.name)),
        },
        Ok(Err(e)) => Finished {
            exit_code: None,
            error: Some(format!("waiting for `{}`: {e}", spec.name)),
        },
        Err(_) => {
            let _ = child.kill().await;
            Finished {
                exit_code: None,
                error: Some(format!(
                    "`{}` did not finish within {} and was killed",
                    spec.name,
                    humantime::format_duration(spec.timeout)
                )),
            }
        }
    }
}

/// A process started by setup with `background: true`.
pub struct Background {
    pub name: String,
    pub child: Child,
}

/// Start a background command. Its output is discarded: it is the system under test,
/// and its chatter would bury faultline's own report. It gets SIGTERM if faultline dies
/// (even by `kill -9`), so a crashed run leaves no service of its own behind.
pub fn spawn_background(spec: &CommandSpec) -> Result<Background, String> {
    let mut cmd = command(spec);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (prctl, getppid, kill on itself).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", spec.argv[0]))?;
    Ok(Background {
        name: spec.name.clone(),
        child,
    })
}

impl Background {
    /// Has it exited already? (A background service that died during setup is a failed setup.)
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM its process group, wait up to `grace`, then SIGKILL the group; always reaps.
    /// A process that was frozen by a fault is thawed first so it can act on SIGTERM.
    pub async fn stop(mut self, grace: Duration) -> String {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let Some(pid) = self.child.id() else {
            return format!("{} had already exited", self.name);
        };
        // The group id is the leader's pid (process_group(0) at spawn).
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGCONT);
        let _ = killpg(group, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => {
                // Children of the leader may linger in the group; make sure they go too.
                let _ = killpg(group, Signal::SIGKILL);
                format!("stopped {} (pid {pid})", self.name)
            }
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = self.child.wait().await;
                format!(
                    "killed {} (pid {pid}) after {}",
                    self.name,
                    humantime::format_duration(grace)
                )
            }
        }
    }
}
