//! The run's dead-man's switch. `run` and `inject` start a small watchdog process (this
//! binary again, in a session of its own, so Ctrl-C and a terminal hang-up do not reach it)
//! and keep the write end of a pipe to it. The runner tells it which journal is current and,
//! when it ends by itself, that it is done. If the pipe closes without that — the runner was
//! `kill -9`ed, OOM-killed, or panicked — the watchdog reverts at once every fault the runner
//! recorded, as `faultline recover` would, and appends the reverts to the journal. The state
//! file stays the last line of defence: if the watchdog dies too, `recover` still works.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::fault::ProcRef;
use crate::state::{StateDir, recover};

/// `faultline __watchdog`: not a user command, so `main` dispatches it before parsing the
/// command line.
pub const SUBCOMMAND: &str = "__watchdog";

/// One line from the runner to its watchdog.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// The journal of the experiment that runs now.
    Journal(PathBuf),
    /// The run ended by itself, whatever its outcome: stand down.
    Done,
}

/// The runner's end of the watchdog.
pub struct Watchdog {
    pipe: File,
}

impl Watchdog {
    /// Start a watchdog for this process's records in `state`.
    pub fn start(state: &StateDir) -> io::Result<Watchdog> {
        let owner = crate::engine::this_process();
        // Close-on-exec: only this process may hold the write end, or the pipe would not close
        // when it dies.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg(SUBCOMMAND)
            .arg(owner.pid.to_string())
            .arg(owner.start_time.to_string())
            .arg(state.root())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: setsid only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Its own session: no terminal signals, no hang-up with the operator's SSH.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Not waited for: it must outlive this process (init reaps it then).
        command.spawn()?;
        Ok(Watchdog {
            pipe: File::from(write),
        })
    }

    /// The experiment that starts now writes to `journal`.
    pub fn journal(&mut self, journal: &Path) {
        self.send(&Message::Journal(journal.to_path_buf()));
    }

    /// The run ended by itself; whatever it left (a failed revert) is for `recover` and a
    /// person, as the run's summary said.
    pub fn stand_down(mut self) {
        self.send(&Message::Done);
    }

    fn send(&mut self, message: &Message) {
        let mut line = serde_json::to_vec(message).expect("a message serialises");
        line.push(b'\n');
        // A watchdog that died early cannot be helped; the state file still can.
        let _ = self.pipe.write_all(&line);
    }
}

/// The watchdog process: `__watchdog OWNER_PID OWNER_START_TIME STATE_DIR`, the runner's
/// pipe on standard input.
pub fn watchdog_main(args: &[String]) -> u8 {
    let [pid, start_time, state_dir] = args else {
        eprintln!("faultline {SUBCOMMAND}: expected OWNER_PID OWNER_START_TIME STATE_DIR");
        return crate::outcome::EXIT_INVALID_INPUT;
    };
    let (Ok(pid), Ok(start_time)) = (pid.parse(), start_time.parse()) else {
        eprintln!("faultline {SUBCOMMAND}: bad owner {pid} {start_time}");
        return crate::outcome::EXIT_INVALID_INPUT;
    };
    let owner = ProcRef { pid, start_time };
    protect_from_oom_killer();
    let (journal, done) = listen(io::stdin().lock());
    if done {
        return 0;
    }
    take_over(&StateDir::new(state_dir), owner, journal.as_deref());
    0
}

/// Read the runner's messages until the pipe closes: the last journal named, and whether
/// the runner said it was done.
fn listen(input: impl Read) -> (Option<PathBuf>, bool) {
    let mut journal = None;
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str(&line) {
            Ok(Message::Journal(path)) => journal = Some(path),
            Ok(Message::Done) => return (journal, true),
            Err(_) => {}
        }
    }
    (journal, false)
}

/// The runner died without ending its run: revert what it recorded, say so where its output
/// went, and write the reverts into its journal.
fn take_over(state: &StateDir, owner: ProcRef, journal: Option<&Path>) {
    let report = match recover::recover_owned_by(state, owner) {
        Ok(report) => report,
        Err(e) => {
            say(&format!(
                "faultline watchdog: the run (pid {}) died; cannot read its state ({e}): run \
                 `faultline recover`",
                owner.pid
            ));
            return;
        }
    };
    if report.reverted.is_empty() && report.failed.is_empty() {
        return;
    }
    let mut lines = vec![format!(
        "faultline watchdog: the run (pid {}) died without ending; reverted {} fault(s){}",
        owner.pid,
        report.reverted.len(),
        if report.failed.is_empty() {
            String::new()
        } else {
            format!(
                ", {} revert(s) FAILED: run `faultline recover`",
                report.failed.len()
            )
        }
    )];
    for (record, summary) in &report.reverted {
        lines.push(format!("  reverted {}: {summary}", record.fault_id));
    }
    for (record, error) in &report.failed {
        lines.push(format!("  FAILED   {}: {error}", record.fault_id));
    }
    say(&lines.join("\n"));
    if let Some(journal) = journal {
        append_to_journal(journal, &report);
    }
}

/// Standard error may be a terminal that is gone: never panic on it.
fn say(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// The reverts as journal events, with `t_ms` on the run's clock (from its start time).
fn append_to_journal(path: &Path, report: &recover::RecoverReport) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let started: Option<jiff::Timestamp> = text
        .lines()
        .next()
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|event| event["started_at"].as_str().and_then(|t| t.parse().ok()));
    let t_ms = started.map_or(0.0, |started| {
        (jiff::Timestamp::now() - started)
            .total(jiff::Unit::Millisecond)
            .unwrap_or(0.0)
    });
    let mut events = Vec::new();
    for (record, summary) in &report.reverted {
        events.push(serde_json::json!({
            "event": "fault_reverted", "t_ms": t_ms, "fault": record.fault_id,
            "record": record.id, "summary": summary, "cause": "watchdog",
        }));
    }
    for (record, error) in &report.failed {
        events.push(serde_json::json!({
            "event": "fault_revert_failed", "t_ms": t_ms, "fault": record.fault_id,
            "record": record.id, "error": error,
            "remedy": "the run died and its watchdog could not revert this: run `faultline recover`",
        }));
    }
    let Ok(mut file) = OpenOptions::new().append(true).open(path) else {
        return;
    };
    // A line cut short (a full disk) must not swallow the first event.
    let mut out = if text.is_empty() || text.ends_with('\n') {
        Vec::new()
    } else {
        b"\n".to_vec()
    };
    for event in events {
        out.extend(serde_json::to_vec(&event).expect("a Value serialises"));
        out.push(b'\n');
    }
    let _ = file.write_all(&out).and_then(|()| file.sync_all());
}

/// The watchdog is what frees memory a runaway hog took; the OOM killer must pick anything
/// else first. Lowering the score needs CAP_SYS_RESOURCE; without it the default stays.
fn protect_from_oom_killer() {
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_journal_counts_and_done_stands_down() {
        let messages = "{\"journal\":\"/r/a.jsonl\"}\n{\"journal\":\"/r/b.jsonl\"}\n";
        assert_eq!(
            listen(messages.as_bytes()),
            (Some(PathBuf::from("/r/b.jsonl")), false)
        );
        let done = format!("{messages}\"done\"\n");
        assert_eq!(
            listen(done.as_bytes()),
            (Some(PathBuf::from("/r/b.jsonl")), true)
        );
        // A line cut short when the runner died is no message.
        assert_eq!(listen("\"do".as_bytes()), (None, false));
    }
}
