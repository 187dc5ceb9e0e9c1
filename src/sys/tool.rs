//! The one way faultline runs an external tool (`ip`, `tc`, `iptables*`, `nft`, `losetup`,
//! `mkfs`, `mount`...): argv only, never a shell; inside a network namespace when asked
//! (setns(2) between fork and exec, which leaves /sys alone); killed with SIGKILL if faultline
//! dies first (`PR_SET_PDEATHSIG`); killed when it overruns its timeout (a tool stuck on a
//! lock must not hold a revert forever); stdout and stderr captured. What the user can do
//! about a failure is looked up in one [`hint`] table.
//!
//! Everything goes through a [`ToolRunner`]: the real one ([`System`]) unless a test put a
//! recording fake in place on its thread ([`scoped`]), so the order of the calls a fault
//! makes, and what it does when one fails, is tested without root.

use std::cell::RefCell;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::Cause;
use super::netns::Netns;

/// How long a tool may run unless the caller says otherwise: far above any call faultline
/// makes (tens of milliseconds), below a record's revert timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(8);

/// One tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// A name looked up in `$PATH` and the sbin directories, or a path.
    pub program: String,
    pub args: Vec<String>,
    /// Run inside this network namespace.
    pub netns: Option<Netns>,
    /// Written to the tool's standard input, which is then closed.
    pub stdin: Option<String>,
    pub timeout: Duration,
}

impl Call {
    pub fn new(program: &str, args: &[String]) -> Call {
        Call {
            program: program.to_string(),
            args: args.to_vec(),
            netns: None,
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn in_netns(mut self, netns: Option<&Netns>) -> Call {
        self.netns = netns.cloned();
        self
    }

    pub fn with_stdin(mut self, input: &str) -> Call {
        self.stdin = Some(input.to_string());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Call {
        self.timeout = timeout;
        self
    }

    /// `tc qdisc del dev v0 root (in netns a)`, for messages.
    pub fn display(&self) -> String {
        let place = self
            .netns
            .as_ref()
            .map(|n| format!(" (in netns {n})"))
            .unwrap_or_default();
        format!("{} {}{place}", self.program, self.args.join(" "))
    }
}

/// What a tool that ran said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Neither in `$PATH` nor in the sbin directories.
    #[error("`{program}` is not installed")]
    Missing { program: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {} and was killed", humantime::format_duration(*timeout))]
    TimedOut { command: String, timeout: Duration },
}

/// Runs tool calls. `Send + Sync`: reverts run on threads of their own.
pub trait ToolRunner: Send + Sync {
    fn run(&self, call: &Call) -> Result<Output, ToolError>;
}

/// Run `call` with this thread's runner: the system's, or a test's fake.
pub fn run(call: &Call) -> Result<Output, ToolError> {
    let fake = current();
    let started = std::time::Instant::now();
    let result = match fake {
        Some(runner) => runner.run(call),
        None => System.run(call),
    };
    tracing::debug!(
        program = %call.program,
        args = ?call.args,
        netns = ?call.netns,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        ok = result.as_ref().is_ok_and(|o| o.success),
        "tool call"
    );
    result
}

thread_local! {
    static SCOPED: RefCell<Option<Arc<dyn ToolRunner>>> = const { RefCell::new(None) };
}

/// Run `f` with every tool call of this thread going to `runner`.
pub fn scoped<T>(runner: Arc<dyn ToolRunner>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<dyn ToolRunner>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|scoped| *scoped.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(SCOPED.with(|scoped| scoped.borrow_mut().replace(runner)));
    f()
}

/// This thread's runner when a test set one: a thread this thread starts hands it to
/// [`with_runner`], so the fake sees that thread's calls too.
pub fn current() -> Option<Arc<dyn ToolRunner>> {
    SCOPED.with(|scoped| scoped.borrow().clone())
}

/// Run `f` with `runner` (from [`current`]) when there is one, else with the system's.
pub fn with_runner<T>(runner: Option<Arc<dyn ToolRunner>>, f: impl FnOnce() -> T) -> T {
    match runner {
        Some(runner) => scoped(runner, f),
        None => f(),
    }
}

/// The binary's path: `$PATH`, then the sbin directories a non-login root shell may lack.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The host's tools.
pub struct System;

impl ToolRunner for System {
    fn run(&self, call: &Call) -> Result<Output, ToolError> {
        let binary = find_binary(&call.program).ok_or_else(|| ToolError::Missing {
            program: call.program.clone(),
        })?;
        let spawn_error = |source| ToolError::Spawn {
            command: call.display(),
            source,
        };
        let mut command = Command::new(binary);
        command
            .args(&call.args)
            .stdin(if call.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(name) = &call.netns {
            super::netns::enter(&mut command, name);
        }
        super::dies_with_us(&mut command);
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), call.stdin.clone()) {
            // On a thread of its own: a tool that writes much before it has read all its
            // input must not block on us. A failure to write shows as the tool's own failure.
            std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        let pid = child.id();
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        // The waiter owns the child and reaps it (reading stdout and stderr together, as
        // `wait_with_output` does): until then its PID cannot be reused, so a SIGKILL on
        // timeout reaches that process and no other.
        std::thread::Builder::new()
            .name("fl-tool".into())
            .spawn(move || {
                let _ = done.send(child.wait_with_output());
            })
            .map_err(spawn_error)?;
        match finished.recv_timeout(call.timeout) {
            Ok(Ok(out)) => Ok(Output {
                success: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Ok(Err(source)) => Err(spawn_error(source)),
            Err(_) => {
                // SAFETY: kill(2) on the child's PID, which the waiter has not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                Err(ToolError::TimedOut {
                    command: call.display(),
                    timeout: call.timeout,
                })
            }
        }
    }
}

/// What a tool's failure means and what the user can do about it, from its stderr: the one
/// place a tool's words are read.
pub fn diagnose(stderr: &str) -> Option<(Cause, &'static str)> {
    use Cause::*;
    const HINTS: &[(&str, Cause, &str)] = &[
        (
            "Specified qdisc kind is unknown",
            Unsupported,
            "the kernel lacks this qdisc; `faultline doctor` lists what works here",
        ),
        (
            "Exclusivity flag on",
            Unsupported,
            "another qdisc was attached meanwhile; faultline will not replace it",
        ),
        (
            "Operation not permitted",
            Permission,
            "run as root (needs CAP_NET_ADMIN)",
        ),
        (
            "Permission denied (you must be root)",
            Permission,
            "run as root (needs CAP_NET_ADMIN)",
        ),
        (
            "Cannot find device",
            Gone,
            "the interface does not exist (in that namespace)",
        ),
        (
            "Unknown device type",
            Unsupported,
            "the kernel lacks IFB (CONFIG_IFB), needed for ingress faults",
        ),
        (
            "TC classifier not found",
            Unsupported,
            "the kernel lacks cls_u32 (CONFIG_NET_CLS_U32)",
        ),
        (
            "Failed to load TC action module",
            Unsupported,
            "the kernel lacks act_mirred (CONFIG_NET_ACT_MIRRED), needed for ingress faults",
        ),
        (
            "Another app is currently holding the xtables lock",
            Failed,
            "another program is changing the rules right now; try again",
        ),
        (
            "Couldn't load match",
            Unsupported,
            "the kernel lacks a netfilter match faultline uses; `faultline doctor` says which",
        ),
        (
            "Couldn't load target",
            Unsupported,
            "the kernel lacks a netfilter target faultline uses (NFQUEUE, REJECT); `faultline doctor` says which",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _, _)| stderr.contains(needle))
        .map(|(_, cause, hint)| (*cause, *hint))
}

/// What the user can do about a tool's failure, from its stderr.
pub fn hint(stderr: &str) -> Option<&'static str> {
    diagnose(stderr).map(|(_, hint)| hint)
}

impl ToolError {
    pub fn cause(&self) -> Cause {
        match self {
            ToolError::Missing { .. } => Cause::Unsupported,
            ToolError::Spawn { .. } | ToolError::TimedOut { .. } => Cause::Failed,
        }
    }
}

/// A fake for tests: records every call and answers from a script.
#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    type Answer = Box<dyn Fn(&Call) -> Result<Output, ToolError> + Send + Sync>;

    /// Records calls; `answer` decides each one's output (by default: success, no output).
    pub struct Recording {
        calls: Mutex<Vec<Call>>,
        answer: Answer,
    }

    impl Recording {
        pub fn answering(
            answer: impl Fn(&Call) -> Result<Output, ToolError> + Send + Sync + 'static,
        ) -> Arc<Recording> {
            Arc::new(Recording {
                calls: Mutex::new(Vec::new()),
                answer: Box::new(answer),
            })
        }

        /// Each call as `program arg arg...`.
        pub fn lines(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|c| format!("{} {}", c.program, c.args.join(" ")))
                .collect()
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ToolRunner for Recording {
        fn run(&self, call: &Call) -> Result<Output, ToolError> {
            self.calls.lock().unwrap().push(call.clone());
            (self.answer)(call)
        }
    }

    pub fn ok(stdout: &str) -> Result<Output, ToolError> {
        Ok(Output {
            success: true,
            code: Some(0),
            stdout: stdout.to_string(),
            stderr: String::new(),
        })
    }

    pub fn failed(stderr: &str) -> Result<Output, ToolError> {
        Ok(Output {
            success: false,
            code: Some(1),
            stdout: String::new(),
            stderr: stderr.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn output_stdin_and_exit_codes_come_back() {
        let echoed = run(&Call::new("cat", &[]).with_stdin("to stdout\n")).unwrap();
        assert!(echoed.success);
        assert_eq!(echoed.stdout, "to stdout\n");
        let failed = run(&Call::new("ls", &strings(&["/no/such/path"]))).unwrap();
        assert!(!failed.success);
        assert_eq!(failed.code, Some(2));
        assert!(failed.stderr.contains("No such file"), "{}", failed.stderr);
    }

    #[test]
    fn arguments_reach_the_tool_as_they_are_never_through_a_shell() {
        let said = run(&Call::new("echo", &strings(&["$(id)", "; true", "*"]))).unwrap();
        assert_eq!(said.stdout, "$(id) ; true *\n");
    }

    #[test]
    fn a_tool_that_overruns_is_killed_at_its_timeout() {
        let started = Instant::now();
        let err =
            run(&Call::new("sleep", &strings(&["30"])).with_timeout(Duration::from_millis(200)))
                .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("sleep 30"), "{err}");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = run(&Call::new("faultline-no-such-tool", &[])).unwrap_err();
        assert!(
            matches!(&err, ToolError::Missing { program } if program == "faultline-no-such-tool"),
            "{err}"
        );
    }

    #[test]
    fn a_scoped_fake_sees_this_threads_calls_and_only_while_in_place() {
        let fake = fake::Recording::answering(|_| fake::ok("faked"));
        let said = scoped(fake.clone(), || {
            run(&Call::new("tc", &strings(&["qdisc", "show"])))
        });
        assert_eq!(said.unwrap().stdout, "faked");
        assert_eq!(fake.lines(), ["tc qdisc show"]);
        let real = run(&Call::new("echo", &strings(&["real"]))).unwrap();
        assert_eq!(real.stdout, "real\n");
        assert_eq!(fake.lines().len(), 1);
    }

    #[test]
    fn hints_name_what_to_do() {
        assert!(
            hint("RTNETLINK answers: Operation not permitted")
                .unwrap()
                .contains("root")
        );
        assert_eq!(
            diagnose("RTNETLINK answers: Operation not permitted").map(|d| d.0),
            Some(Cause::Permission)
        );
        assert_eq!(
            diagnose("Cannot find device \"v9\"").map(|d| d.0),
            Some(Cause::Gone)
        );
        assert!(
            hint("Error: Specified qdisc kind is unknown.")
                .unwrap()
                .contains("doctor")
        );
        assert_eq!(hint("something else"), None);
    }
}

#[cfg(test)]
mod overhead {
    use std::time::Instant;

    use super::*;

    #[test]
    #[ignore = "measurement"]
    fn runner_against_a_bare_spawn() {
        let args: Vec<String> = vec!["-n".into(), "-L".into()];
        for round in 0..3 {
            let t = Instant::now();
            for _ in 0..50 {
                run(&Call::new("iptables-nft", &args)).unwrap();
            }
            let runner = t.elapsed() / 50;
            let t = Instant::now();
            for _ in 0..50 {
                Command::new("/usr/sbin/iptables-nft")
                    .args(&args)
                    .output()
                    .unwrap();
            }
            let bare = t.elapsed() / 50;
            println!("round {round}: runner {runner:?}, bare {bare:?}");
        }
    }
}
