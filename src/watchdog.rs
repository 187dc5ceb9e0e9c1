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
use crate::report::event::{Event, RevertCause};
use crate::state::{FaultRecord, StateDir, recover};
use std::borrow::Cow;

/// `faultline __watchdog`: not a user command, so `main` dispatches it before parsing the
/// command line.
pub const SUBCOMMAND: &str = "__watchdog";

/// One line from the runner to its watchdog.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// The experiment that runs now: its run id (in its state records) and its journal.
    Journal { run_id: String, path: PathBuf },
    /// The run ended by itself, whatever its outcome: stand down.
    Done,
}

/// The experiment that was running when the runner died.
#[derive(Debug, PartialEq)]
struct Current {
    run_id: String,
    journal: PathBuf,
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
        let child = command.spawn()?;
        crate::sys::proc::protect_helper(child.id());
        Ok(Watchdog {
            pipe: File::from(write),
        })
    }

    /// The experiment `run_id` starts now and writes to `journal`.
    pub fn journal(&mut self, run_id: &str, journal: &Path) {
        self.send(&Message::Journal {
            run_id: run_id.to_string(),
            path: journal.to_path_buf(),
        });
    }

    /// The run ended by itself; whatever it left (a failed revert) is for `recover` and a
    /// person, as the run's summary said.
    pub fn stand_down(mut self) {
        self.send(&Message::Done);
    }

    fn send(&mut self, message: &Message) {
        // A path that is not UTF-8 cannot be said in JSON; the watchdog then reverts without
        // journalling, which beats a runner that panics here.
        let Ok(mut line) = serde_json::to_vec(message) else {
            return;
        };
        line.push(b'\n');
        // A watchdog that died early cannot be helped; the state file still can.
        let _ = self.pipe.write_all(&line);
    }
}

/// The watchdog process: `__watchdog OWNER_PID OWNER_START_TIME STATE_DIR`, the runner's
/// pipe on standard input.
pub fn watchdog_main(args: &[String]) -> u8 {
    let [pid, start_time, state_dir] = args else {
        crate::say!("faultline {SUBCOMMAND}: expected OWNER_PID OWNER_START_TIME STATE_DIR");
        return crate::outcome::EXIT_INVALID_INPUT;
    };
    let (Ok(pid), Ok(start_time)) = (pid.parse(), start_time.parse()) else {
        crate::say!("faultline {SUBCOMMAND}: bad owner {pid} {start_time}");
        return crate::outcome::EXIT_INVALID_INPUT;
    };
    let owner = ProcRef { pid, start_time };
    protect_from_oom_killer();
    // The runner's signals are the runner's: a SIGTERM to the whole session or unit must not
    // take the watchdog away while the runner reverts.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to be ignored.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let (current, done) = listen(io::stdin().lock());
    if done {
        return 0;
    }
    wait_until_dead(owner);
    take_over(&StateDir::new(state_dir), owner, current.as_ref());
    0
}

/// Read the runner's messages until the pipe closes: the experiment last named, and whether
/// the runner said it was done.
fn listen(input: impl Read) -> (Option<Current>, bool) {
    let mut current = None;
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str(&line) {
            Ok(Message::Journal { run_id, path }) => {
                current = Some(Current {
                    run_id,
                    journal: path,
                })
            }
            Ok(Message::Done) => return (current, true),
            Err(_) => {}
        }
    }
    (current, false)
}

/// The pipe closes while the runner exits, a moment before the kernel turns it into a
/// zombie and sends `PR_SET_PDEATHSIG` to the tools it was running (an `iptables` halfway
/// through adding a rule). Wait for the zombie — a pidfd turns readable then; the pipe also
/// closes if the runner merely dropped its end, and then it has not died at all — and give
/// those tools a moment to die before reverting after them.
fn wait_until_dead(owner: ProcRef) {
    use std::os::fd::AsRawFd;
    if let Ok(pidfd) = crate::sys::pidfd::open(owner) {
        let mut poll = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one live fd; retried only when a signal interrupted it.
        while unsafe { libc::poll(poll.as_mut_ptr(), 1, -1) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// The runner died without ending its run: revert what it recorded, say so where its output
/// went, and write the reverts of the experiment that was running into its journal.
fn take_over(state: &StateDir, owner: ProcRef, current: Option<&Current>) {
    let report = match recover::recover_owned_by(state, owner) {
        Ok(report) => report,
        Err(e) => {
            crate::say!(
                "faultline watchdog: the run (pid {}) died; cannot read its state ({e}): run \
                 `faultline recover`",
                owner.pid
            );
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
    let t_ms = current.map_or(0.0, |current| run_clock_ms(&current.journal));
    let events = revert_events(&report, t_ms);
    // The terminal says each revert as the runner would have, from the event the journal gets.
    lines.extend(
        events
            .iter()
            .filter_map(|(_, event)| event.terminal_line())
            .map(|line| format!("  {line}")),
    );
    crate::say!("{}", lines.join("\n"));
    if let Some(current) = current {
        let ours = events
            .iter()
            .filter(|(record, _)| record.run_id == current.run_id)
            .map(|(_, event)| event);
        append_to_journal(&current.journal, ours);
    }
}

/// Every revert of the report as the event a runner would have journalled for it, with the
/// record it is about.
fn revert_events(report: &recover::RecoverReport, t_ms: f64) -> Vec<(&FaultRecord, Event<'_>)> {
    let reverted = report.reverted.iter().map(|(record, summary)| {
        let event = Event::FaultReverted {
            t_ms,
            fault: record.fault_id.as_str().into(),
            record: record.id.as_str().into(),
            summary: summary.as_str().into(),
            cause: RevertCause::Watchdog,
            achieved: Cow::Owned(serde_json::Value::Null),
        };
        (record, event)
    });
    let failed = report.failed.iter().map(|(record, error)| {
        let event = Event::FaultRevertFailed {
            t_ms,
            fault: record.fault_id.as_str().into(),
            record: record.id.as_str().into(),
            error: error.clone(),
            remedy: "the run died and its watchdog could not revert this: run \
                     `faultline recover` (with the run's --state-dir)"
                .into(),
        };
        (record, event)
    });
    reverted.chain(failed).collect()
}

/// Milliseconds since the run started, on the clock of its journal's first event.
fn run_clock_ms(journal: &std::path::Path) -> f64 {
    let Ok(bytes) = std::fs::read(journal) else {
        return 0.0;
    };
    let started: Option<jiff::Timestamp> = bytes
        .split(|b| *b == b'\n')
        .next()
        .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .and_then(|event| event["started_at"].as_str().and_then(|t| t.parse().ok()));
    started.map_or(0.0, |started| {
        (jiff::Timestamp::now() - started)
            .total(jiff::Unit::Millisecond)
            .unwrap_or(0.0)
    })
}

/// Appends the reverts of the current experiment's records to its journal. Records of an
/// earlier experiment of a game day (a revert that had failed) are reverted and reported on
/// the terminal, not written into this journal.
fn append_to_journal<'e>(journal: &std::path::Path, events: impl Iterator<Item = &'e Event<'e>>) {
    let Ok(mut file) = OpenOptions::new().read(true).append(true).open(journal) else {
        return;
    };
    // A line cut short (a full disk) must not swallow the first event.
    let cut_short = std::fs::read(journal)
        .ok()
        .and_then(|bytes| bytes.last().copied())
        .is_some_and(|last| last != b'\n');
    let mut out = if cut_short {
        b"\n".to_vec()
    } else {
        Vec::new()
    };
    for event in events {
        out.extend(serde_json::to_vec(event).expect("events serialise"));
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
    fn the_last_experiment_counts_and_done_stands_down() {
        let message = |run_id: &str| {
            let mut line = serde_json::to_string(&Message::Journal {
                run_id: run_id.into(),
                path: PathBuf::from(format!("/r/{run_id}.jsonl")),
            })
            .unwrap();
            line.push('\n');
            line
        };
        let messages = message("a") + &message("b");
        let b = Current {
            run_id: "b".into(),
            journal: PathBuf::from("/r/b.jsonl"),
        };
        let (current, done) = listen(messages.as_bytes());
        assert_eq!((current.as_ref(), done), (Some(&b), false));
        let with_done = format!("{messages}\"done\"\n");
        let (current, done) = listen(with_done.as_bytes());
        assert_eq!((current.as_ref(), done), (Some(&b), true));
        // A line cut short when the runner died is no message.
        assert_eq!(listen("\"do".as_bytes()), (None, false));
    }
}
