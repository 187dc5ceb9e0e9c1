//! The `command` probe: run a program (argv, never a shell) and judge its exit code and output.
//!
//! The program runs in a process group of its own, for two reasons: a Ctrl-C at the terminal
//! goes to faultline (which aborts and reverts) instead of failing the probe mid-abort, and on
//! timeout or cancellation the whole group is killed, so a helper the program started cannot
//! outlive the sample holding its pipes.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{Probe, Sample};
use crate::experiment::Dur;
use crate::plan::{Check, ProbeKind, ProbeSpec};

/// Captured per stream; the rest is read and discarded so the program never blocks on a full
/// pipe.
const OUTPUT_CAP: usize = 64 * 1024;

/// How much of stdout the sample's value carries.
const STDOUT_PREVIEW_CHARS: usize = 200;

/// After SIGKILL, reaping takes well under a millisecond; this only bounds a stuck kernel.
const REAP_GRACE: Duration = Duration::from_secs(1);

pub struct CommandProbe {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    check: Check,
    timeout: Duration,
}

impl CommandProbe {
    pub fn new(spec: &ProbeSpec) -> CommandProbe {
        let (argv, env) = match &spec.kind {
            ProbeKind::Command { argv, env } => (argv.clone(), env.clone().into_iter().collect()),
            // A caller bug (`probe::build` dispatches on the kind); an empty argv fails every
            // sample with a clear error instead of panicking mid-experiment.
            _ => (Vec::new(), Vec::new()),
        };
        CommandProbe {
            argv,
            env,
            check: spec.check.clone(),
            timeout: spec.timeout,
        }
    }

    fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    fn spawn(&self) -> Result<Child, String> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| "the command probe has an empty argv".to_string())?;
        Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let reason = match e.raw_os_error() {
                    Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
                    None => e.to_string(),
                };
                format!("cannot start `{program}`: {reason}")
            })
    }

    /// Every check the finished program fails, each naming what was observed.
    fn judge(&self, status: ExitStatus, stdout: &str, stderr: &str) -> Vec<String> {
        let mut failures = Vec::new();
        let expected = self.check.exit_code.unwrap_or(0);
        if status.code() != Some(expected) {
            let observed = match (status.code(), signal_name(status)) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("killed by {signal}"),
                (None, None) => format!("ended with {status}"),
            };
            let mut failure = format!("{observed}, expected {expected}");
            if let Some(line) = stderr.lines().map(str::trim).find(|line| !line.is_empty()) {
                failure.push_str(&format!("; stderr: {line}"));
            }
            failures.push(failure);
        }
        if let Some(needle) = &self.check.stdout_contains
            && !stdout.contains(needle.as_str())
        {
            failures.push(format!("stdout does not contain `{needle}`"));
        }
        if let Some(pattern) = &self.check.stdout_matches {
            // Like `$(...)` in a shell, ignore the final newline, so `^ok$` matches `echo ok`.
            if !pattern.is_match(stdout.trim_end_matches('\n')) {
                failures.push(format!("stdout does not match /{}/", pattern.as_str()));
            }
        }
        failures
    }
}

#[async_trait::async_trait]
impl Probe for CommandProbe {
    async fn sample(&self) -> Sample {
        let started = Instant::now();
        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(error) => return Sample::fail(started.elapsed(), None, error),
        };
        // Not yet reaped, so the PID (and the group ID equal to it) cannot have been reused.
        let mut group = child.id().map(GroupKiller::new);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async { tokio::join!(child.wait(), read_capped(stdout), read_capped(stderr)) };
        let outcome = tokio::time::timeout(self.timeout, run).await;
        let latency = started.elapsed();
        let (status, stdout, stderr) = match outcome {
            Ok((Ok(status), stdout, stderr)) => (status, stdout, stderr),
            Ok((Err(e), _, _)) => {
                let error = format!("waiting for `{}` failed: {e}", self.program());
                return Sample::fail(latency, None, error);
            }
            Err(_) => {
                // If the program itself has exited (and is now reaped), the group ID stays
                // reserved only while the helper holding the output lives in it; killpg then
                // reaches that helper, or finds nothing.
                let exited = child.try_wait().ok().flatten();
                if let Some(group) = group.take() {
                    group.kill_now();
                }
                // Reap before returning so no zombie is left behind; kill_on_drop covers the
                // (never observed) case of the grace running out.
                let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
                let error = match exited {
                    Some(status) => format!(
                        "timed out after {}: `{}` exited ({status}) but a process it started kept \
                         its output open; killed its process group",
                        Dur(self.timeout),
                        self.program()
                    ),
                    None => format!(
                        "timed out after {}; killed `{}`",
                        Dur(self.timeout),
                        self.program()
                    ),
                };
                return Sample::fail(latency, None, error);
            }
        };
        // The program is reaped; its group ID may be reused from here on, so never signal it.
        if let Some(group) = group.take() {
            group.disarm();
        }
        let stdout = String::from_utf8_lossy(&stdout);
        let stderr = String::from_utf8_lossy(&stderr);
        let preview: String = stdout.chars().take(STDOUT_PREVIEW_CHARS).collect();
        let mut value = json!({ "exit_code": status.code(), "stdout": preview });
        if let Some(signal) = signal_name(status) {
            value["signal"] = json!(signal);
        }
        let failures = self.judge(status, &stdout, &stderr);
        if failures.is_empty() {
            Sample::pass(latency, value)
        } else {
            Sample::fail(latency, Some(value), failures.join("; "))
        }
    }
}

/// SIGKILLs the program's process group when dropped while armed: the sample future being
/// cancelled by the caller must not leave the program's children running.
struct GroupKiller {
    group: Option<Pid>,
}

impl GroupKiller {
    fn new(pid: u32) -> GroupKiller {
        GroupKiller {
            group: i32::try_from(pid).ok().map(Pid::from_raw),
        }
    }

    fn kill_now(mut self) {
        if let Some(group) = self.group.take() {
            // ESRCH only means everything in the group is gone already.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    fn disarm(mut self) {
        self.group = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// Read a pipe to its end, keeping the first `OUTPUT_CAP` bytes.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP - kept.len();
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

fn signal_name(status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let number = status.signal()?;
    Some(match Signal::try_from(number) {
        Ok(signal) => signal.as_str().to_string(),
        Err(_) => format!("signal {number}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn probe(argv: &[&str], check: Check, timeout: Duration) -> CommandProbe {
        CommandProbe::new(&ProbeSpec {
            name: "cmd".into(),
            kind: ProbeKind::Command {
                argv: argv.iter().map(|arg| arg.to_string()).collect(),
                env: BTreeMap::from([("FAULTLINE_PROBE_TEST".to_string(), "from-env".to_string())]),
            },
            check,
            interval: Duration::from_secs(1),
            timeout,
            failure_threshold: 1,
            slo: None,
        })
    }

    async fn run(argv: &[&str], check: Check) -> Sample {
        probe(argv, check, Duration::from_secs(5)).sample().await
    }

    fn error(sample: &Sample) -> &str {
        assert!(!sample.ok, "expected a failed sample: {sample:?}");
        sample.error.as_deref().unwrap()
    }

    #[tokio::test]
    async fn exit_codes_are_judged_against_the_expected_one() {
        let sample = run(&["true"], Check::default()).await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(sample.value, Some(json!({ "exit_code": 0, "stdout": "" })));

        let sample = run(&["false"], Check::default()).await;
        assert_eq!(error(&sample), "exit code 1, expected 0");

        let expect_one = Check {
            exit_code: Some(1),
            ..Check::default()
        };
        assert!(run(&["false"], expect_one).await.ok);
    }

    #[tokio::test]
    async fn exit_code_mismatch_quotes_the_first_stderr_line() {
        let sample = run(&["ls", "/nonexistent-faultline-path"], Check::default()).await;
        let error = error(&sample);
        assert!(
            error.starts_with("exit code 2, expected 0; stderr: ls: cannot access"),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }

    #[tokio::test]
    async fn stdout_checks_see_the_output() {
        let check = Check {
            stdout_contains: Some("ready".into()),
            stdout_matches: Some(regex::Regex::new(r"^replicas=\d+ ready$").unwrap()),
            ..Check::default()
        };
        let sample = run(&["echo", "replicas=3 ready"], check.clone()).await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(json!({ "exit_code": 0, "stdout": "replicas=3 ready\n" }))
        );

        let sample = run(&["echo", "replicas=three"], check).await;
        assert_eq!(
            error(&sample),
            r"stdout does not contain `ready`; stdout does not match /^replicas=\d+ ready$/"
        );
    }

    #[tokio::test]
    async fn env_is_added_to_the_inherited_environment() {
        let sample = run(
            &["printenv", "FAULTLINE_PROBE_TEST", "PATH"],
            Check::default(),
        )
        .await;
        assert!(sample.ok, "{sample:?}");
        let stdout = sample.value.unwrap()["stdout"]
            .as_str()
            .unwrap()
            .to_string();
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("from-env"));
        assert!(
            lines.next().is_some_and(|path| !path.is_empty()),
            "PATH was not inherited: {stdout}"
        );
    }

    #[tokio::test]
    async fn missing_program_cannot_start() {
        let sample = run(&["faultline-no-such-program"], Check::default()).await;
        assert_eq!(
            error(&sample),
            "cannot start `faultline-no-such-program`: No such file or directory"
        );
    }

    #[tokio::test]
    async fn output_is_capped_and_the_preview_is_short() {
        let sample = run(&["head", "-c", "204800", "/dev/zero"], Check::default()).await;
        assert!(sample.ok, "{sample:?}");
        let preview = sample.value.unwrap()["stdout"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(preview.chars().count(), STDOUT_PREVIEW_CHARS);
        let flood = vec![7u8; 3 * OUTPUT_CAP];
        assert_eq!(read_capped(Some(flood.as_slice())).await.len(), OUTPUT_CAP);
    }

    #[tokio::test]
    async fn timeout_kills_and_reaps_the_program() {
        let probe = probe(
            &["sleep", "29.75"],
            Check::default(),
            Duration::from_millis(300),
        );
        let started = Instant::now();
        let sampling = probe.sample();
        tokio::pin!(sampling);
        let mut pid = None;
        let sample = loop {
            tokio::select! {
                sample = &mut sampling => break sample,
                _ = tokio::time::sleep(Duration::from_millis(20)), if pid.is_none() => {
                    pid = live_pids_with_cmdline(&["sleep", "29.75"]).into_iter().next();
                }
            }
        };
        let elapsed = started.elapsed();
        assert_eq!(error(&sample), "timed out after 300ms; killed `sleep`");
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
        let pid = pid.expect("the sleep child was never seen in /proc");
        // Reaped before sample() returned: no /proc entry at all, not even a zombie.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }

    #[tokio::test]
    async fn timeout_kills_helpers_that_hold_the_output_open() {
        // The program forks a `sleep` into its process group (which inherits stdout) and exits
        // at once. A fixed script passed as argv: nothing is interpolated.
        let script = "import os\nif os.fork() == 0:\n    os.execvp('sleep', ['sleep', '31.25'])\n";
        let probe = probe(
            &["python3", "-c", script],
            Check::default(),
            Duration::from_millis(500),
        );
        let sample = probe.sample().await;
        let error = error(&sample);
        assert!(
            error.starts_with(
                "timed out after 500ms: `python3` exited (exit status: 0) but a process"
            ),
            "{error}"
        );
        // The helper was reparented to init when python exited; once killed, init reaps it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !live_pids_with_cmdline(&["sleep", "31.25"]).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = live_pids_with_cmdline(&["sleep", "31.25"]);
        for &pid in &left {
            // Clean up even when failing; init reaps them.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// PIDs of processes (zombies excluded) whose argv is exactly `argv`.
    fn live_pids_with_cmdline(argv: &[&str]) -> Vec<u32> {
        let wanted: String = argv.iter().flat_map(|arg| [*arg, "\0"]).collect();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted)
            })
            .filter(|pid| {
                // Field 3 of stat, after the parenthesised command name, is the state.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
                })
            })
            .collect()
    }
}
