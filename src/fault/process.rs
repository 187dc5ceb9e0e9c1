//! `process-kill` and `process-stop`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Applied, Fault, FaultAction, FaultError, Prepared, ProcRef, RevertRecipe, Reverted};
use crate::sys::pidfd::{self, SignalError};
use crate::sys::proc::{self, CompiledSelector, ProcInfo, Selection, WaitOutcome};

/// How long `apply` waits for SIGSTOPped processes to show state `T`.
pub const STOP_CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);

/// A process-kill or process-stop against one target.
pub struct ProcessFault {
    fault_id: String,
    target_name: String,
    /// `None` when the plan has no such target (validation should make that impossible).
    selector: Option<CompiledSelector>,
    action: FaultAction,
}

pub fn build(action: &FaultAction, ctx: &super::BuildContext<'_>) -> Box<dyn Fault> {
    Box::new(ProcessFault::new(
        ctx.fault_id,
        ctx.target_name,
        ctx.process.cloned(),
        action.clone(),
    ))
}

/// One picked process as written into `Prepared::details`, which `apply` reads back.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Picked {
    pid: u32,
    start_time: u64,
    name: String,
    cmdline: String,
}

impl Picked {
    fn proc_ref(&self) -> ProcRef {
        ProcRef {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    fn label(&self) -> String {
        format!("pid {} ({})", self.pid, self.name)
    }
}

impl ProcessFault {
    pub fn new(
        fault_id: &str,
        target_name: &str,
        selector: Option<CompiledSelector>,
        action: FaultAction,
    ) -> ProcessFault {
        ProcessFault {
            fault_id: fault_id.into(),
            target_name: target_name.into(),
            selector,
            action,
        }
    }

    fn signal(&self) -> (i32, &str) {
        match &self.action {
            FaultAction::Signal {
                signal,
                signal_name,
            } => (*signal, signal_name),
            FaultAction::Stop => (libc::SIGSTOP, "SIGSTOP"),
            // Validation never gives a process fault a network action; signal 0 only probes.
            _ => (0, "no signal"),
        }
    }

    fn is_stop(&self) -> bool {
        self.signal().0 == libc::SIGSTOP
    }

    fn describe_target(&self) -> String {
        let selector = self
            .selector
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok())
            .unwrap_or_default();
        format!("target `{}` {selector}", self.target_name)
    }

    fn no_target(&self, selection: &Selection) -> FaultError {
        let mut message = format!("{}: {} matched", self.describe_target(), selection.matched);
        if !selection.refused.is_empty() {
            let refused: Vec<String> = selection
                .refused
                .iter()
                .map(|(pid, reason)| format!("pid {pid}: {reason}"))
                .collect();
            message.push_str(&format!(
                ", {} refused ({}); set `force: true` on the target to allow them",
                selection.refused.len(),
                refused.join(", ")
            ));
        }
        FaultError::NoTarget(message)
    }
}

/// Refuse before touching anything when the kernel would refuse the signal anyway.
fn check_permission(picked: &[ProcInfo]) -> Result<(), FaultError> {
    let euid = rustix::process::geteuid().as_raw();
    let ruid = rustix::process::getuid().as_raw();
    if euid == 0 || has_cap_kill() {
        return Ok(());
    }
    match unsignallable(picked, euid, ruid) {
        None => Ok(()),
        Some(p) => Err(FaultError::Permission(format!(
            "pid {} ({}) belongs to {} but faultline runs as {}; run faultline as root (or with CAP_KILL)",
            p.pid,
            p.name,
            user_label(p.uid),
            user_label(euid)
        ))),
    }
}

/// Without privilege the kernel lets a sender signal a process only when the target's real uid
/// equals the sender's real or effective uid.
fn unsignallable(picked: &[ProcInfo], euid: u32, ruid: u32) -> Option<&ProcInfo> {
    picked.iter().find(|p| p.uid != euid && p.uid != ruid)
}

fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("user {} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

fn has_cap_kill() -> bool {
    const CAP_KILL: u32 = 5;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_KILL) != 0)
}

/// `pid 1, pid 2 (x), ...` capped so a wide selection keeps the line readable.
fn summarize(labels: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = labels
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if labels.len() > SHOWN {
        text.push_str(&format!(" and {} more", labels.len() - SHOWN));
    }
    text
}

impl Fault for ProcessFault {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        let selector = self.selector.as_ref().ok_or_else(|| {
            FaultError::Failed(format!(
                "fault `{}` names target `{}`, which the plan does not define",
                self.fault_id, self.target_name
            ))
        })?;
        let selection = selector
            .select()
            .map_err(|e| FaultError::Failed(format!("{}: {e}", self.describe_target())))?;
        if selection.picked.is_empty() {
            return Err(self.no_target(&selection));
        }
        check_permission(&selection.picked)?;
        let picked: Vec<Picked> = selection
            .picked
            .iter()
            .map(|p| Picked {
                pid: p.pid,
                start_time: p.start_time,
                name: p.name.clone(),
                cmdline: p.cmdline.clone(),
            })
            .collect();
        let labels: Vec<String> = picked.iter().map(Picked::label).collect();
        let revert = if self.is_stop() {
            // A "kill" with SIGSTOP leaves processes stopped just as process-stop does.
            RevertRecipe::ResumeProcesses {
                processes: picked.iter().map(Picked::proc_ref).collect(),
            }
        } else {
            RevertRecipe::Nothing
        };
        let refused: Vec<_> = selection
            .refused
            .iter()
            .map(|(pid, reason)| serde_json::json!({"pid": pid, "reason": reason}))
            .collect();
        Ok(Prepared {
            summary: format!("{} {}", self.signal().1, summarize(&labels)),
            revert,
            details: serde_json::json!({
                "target": self.target_name,
                "signal": self.signal().0,
                "signal_name": self.signal().1,
                "picked": picked,
                "matched": selection.matched,
                "refused": refused,
            }),
        })
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        let picked: Vec<Picked> = serde_json::from_value(prepared.details["picked"].clone())
            .map_err(|e| {
                FaultError::Failed(format!("prepared details hold no picked processes: {e}"))
            })?;
        let (signal, signal_name) = self.signal();
        let mut permission = Vec::new();
        // Signal everyone first so the processes stop (or die) together, then confirm.
        let sent: Vec<Result<String, String>> = picked
            .iter()
            .map(
                |process| match pidfd::send_signal(process.proc_ref(), signal) {
                    Ok(()) => Ok("signalled".to_string()),
                    Err(SignalError::Gone(_)) => Err("gone".to_string()),
                    Err(SignalError::Permission(_, why)) => {
                        permission.push(process.label());
                        Err(format!("permission denied: {why}"))
                    }
                    Err(e) => Err(e.to_string()),
                },
            )
            .collect();
        let deadline = Instant::now() + STOP_CONFIRM_TIMEOUT;
        let mut hit = Vec::new();
        let mut missed = Vec::new();
        let mut report = Vec::new();
        for (process, status) in picked.iter().zip(sent) {
            let status = match status {
                Ok(_) if self.is_stop() => confirm_stopped(process.proc_ref(), deadline),
                other => other,
            };
            let (ok, text) = match status {
                Ok(text) => (true, text),
                Err(text) => (false, text),
            };
            report.push(serde_json::json!({"pid": process.pid, "name": process.name, "ok": ok, "status": text}));
            let line = format!("{} {text}", process.label());
            if ok {
                hit.push(line)
            } else {
                missed.push(line)
            }
        }
        let details = serde_json::json!({"signal_name": signal_name, "processes": report});
        if hit.is_empty() {
            let reason = format!("{signal_name} reached no process: {}", missed.join(", "));
            return Err(if permission.len() == picked.len() {
                FaultError::Permission(format!("{reason}; run faultline as root"))
            } else {
                FaultError::Failed(reason)
            });
        }
        let mut summary = format!("{signal_name}: {}", summarize(&hit));
        if !missed.is_empty() {
            summary.push_str(&format!("; missed {}", summarize(&missed)));
        }
        Ok(Applied {
            summary,
            details,
            live: None,
        })
    }
}

/// After SIGSTOP: "injected" must mean the process really stopped, not just that the signal
/// is pending (a task in uninterruptible sleep stops only when it wakes).
fn confirm_stopped(target: ProcRef, deadline: Instant) -> Result<String, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match proc::wait_for_state(target, |state| state == 'T', left) {
        WaitOutcome::Reached(_) => Ok("stopped".into()),
        WaitOutcome::TimedOut(state) => Err(format!(
            "signalled but not stopped within {} ms (state {state})",
            STOP_CONFIRM_TIMEOUT.as_millis()
        )),
        WaitOutcome::Gone => Err("gone".into()),
    }
}

/// SIGCONT every process that is still the same process. Gone processes are not an error.
pub fn resume_all(processes: &[ProcRef]) -> Result<Reverted, FaultError> {
    let mut done = Vec::new();
    let mut denied = Vec::new();
    let mut failed = Vec::new();
    // Try every process before reporting: a revert undoes as much as it can.
    for &process in processes {
        match pidfd::send_signal(process, libc::SIGCONT) {
            Ok(()) => done.push(format!("SIGCONT pid {}", process.pid)),
            Err(SignalError::Gone(pid)) => done.push(format!("pid {pid} already gone")),
            Err(SignalError::Permission(pid, why)) => denied.push(format!("pid {pid}: {why}")),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !denied.is_empty() {
        return Err(FaultError::Permission(format!(
            "could not SIGCONT {}; run `faultline recover` as root",
            denied.join(", ")
        )));
    }
    if !failed.is_empty() {
        return Err(FaultError::Failed(format!(
            "could not SIGCONT: {}",
            failed.join(", ")
        )));
    }
    Ok(Reverted {
        summary: if done.is_empty() {
            "no processes to resume".into()
        } else {
            done.join("; ")
        },
        ..Reverted::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::model::ProcessSelector;
    use crate::experiment::model::testing::by_name;
    use crate::sys::proc::testing::{TestChild, sleep_named, unique};

    fn fault(selector: ProcessSelector, action: FaultAction) -> ProcessFault {
        let selector = CompiledSelector::new(&selector).expect("a valid selector");
        ProcessFault::new("f1", "workers", Some(selector), action)
    }

    fn kill_with(signal: i32, name: &str) -> FaultAction {
        FaultAction::Signal {
            signal,
            signal_name: name.into(),
        }
    }

    fn resume_refs(prepared: &Prepared) -> Vec<ProcRef> {
        match &prepared.revert {
            RevertRecipe::ResumeProcesses { processes } => processes.clone(),
            other => panic!("expected ResumeProcesses, got {other:?}"),
        }
    }

    #[test]
    fn stop_really_stops_and_resume_is_idempotent() {
        let name = unique("stop");
        let children: Vec<TestChild> = (0..2).map(|_| sleep_named(&name)).collect();
        let stop = fault(by_name(&name), FaultAction::Stop);
        let prepared = stop.prepare().expect("prepare");
        assert_eq!(
            prepared.summary,
            format!(
                "SIGSTOP pid {} ({name}), pid {} ({name})",
                children[0].pid(),
                children[1].pid()
            )
        );
        assert_eq!(prepared.details["matched"], 2);
        let refs = resume_refs(&prepared);
        assert_eq!(
            refs,
            children.iter().map(TestChild::proc_ref).collect::<Vec<_>>()
        );
        // prepare touches nothing (a just-started child may still be running, not sleeping).
        assert!(children.iter().all(|c| c.state() != 'T'));

        let applied = stop.apply(&prepared).expect("apply");
        assert!(
            children.iter().all(|c| c.state() == 'T'),
            "{}",
            applied.summary
        );
        assert!(applied.summary.contains("stopped"), "{}", applied.summary);

        let reverted = prepared.revert.revert(None).expect("resume");
        assert_eq!(
            reverted.summary,
            format!(
                "SIGCONT pid {}; SIGCONT pid {}",
                children[0].pid(),
                children[1].pid()
            )
        );
        for child in &children {
            let back = proc::wait_for_state(child.proc_ref(), |s| s == 'S', Duration::from_secs(2));
            assert_eq!(back, WaitOutcome::Reached('S'));
        }
        prepared
            .revert
            .revert(None)
            .expect("second resume is harmless");
        assert!(children.iter().all(|c| c.state() == 'S'));
    }

    #[test]
    fn resume_of_a_gone_process_succeeds() {
        let mut child = sleep_named(&unique("gone"));
        let target = child.proc_ref();
        child.kill_and_reap();
        let reverted = resume_all(&[target]).expect("gone is not an error");
        assert_eq!(reverted.summary, format!("pid {} already gone", target.pid));
    }

    #[test]
    fn kill_with_sigterm_ends_the_process_with_signal_15() {
        let name = unique("term");
        let mut child = sleep_named(&name);
        let kill = fault(by_name(&name), kill_with(libc::SIGTERM, "SIGTERM"));
        let prepared = kill.prepare().expect("prepare");
        assert_eq!(prepared.revert, RevertRecipe::Nothing);
        assert_eq!(
            prepared.summary,
            format!("SIGTERM pid {} ({name})", child.pid())
        );
        let applied = kill.apply(&prepared).expect("apply");
        assert_eq!(
            applied.summary,
            format!("SIGTERM: pid {} ({name}) signalled", child.pid())
        );
        assert_eq!(child.reap_signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_kill_with_sigstop_is_still_reverted() {
        let name = unique("kstop");
        let child = sleep_named(&name);
        let kill = fault(by_name(&name), kill_with(libc::SIGSTOP, "SIGSTOP"));
        let prepared = kill.prepare().expect("prepare");
        assert_eq!(resume_refs(&prepared), vec![child.proc_ref()]);
        kill.apply(&prepared).expect("apply");
        assert_eq!(child.state(), 'T');
        prepared.revert.revert(None).expect("resume");
        let back = proc::wait_for_state(child.proc_ref(), |s| s == 'S', Duration::from_secs(2));
        assert_eq!(back, WaitOutcome::Reached('S'));
    }

    #[test]
    fn no_match_is_no_target_and_says_what_was_refused() {
        let kill = fault(
            by_name(&unique("none")),
            kill_with(libc::SIGKILL, "SIGKILL"),
        );
        let error = kill.prepare().expect_err("nothing matches");
        assert!(
            matches!(&error, FaultError::NoTarget(m) if m.contains("0 matched")),
            "{error}"
        );

        let init = ProcessSelector {
            pid: Some(1),
            ..Default::default()
        };
        let error = fault(init, kill_with(libc::SIGKILL, "SIGKILL"))
            .prepare()
            .expect_err("init is refused");
        let message = error.to_string();
        assert!(
            message.contains("1 refused (pid 1: pid 1 (init))") && message.contains("force"),
            "{message}"
        );
    }

    #[test]
    fn unprivileged_callers_are_refused_other_users_processes() {
        let info = |pid, uid| ProcInfo {
            pid,
            ppid: 1,
            name: "w".into(),
            cmdline: "w".into(),
            uid,
            start_time: 1,
            state: 'S',
        };
        let picked = [info(10, 1000), info(11, 1001)];
        assert_eq!(unsignallable(&picked, 1000, 1000).map(|p| p.pid), Some(11));
        assert_eq!(unsignallable(&picked, 1001, 1000).map(|p| p.pid), None);
        assert_eq!(unsignallable(&picked[..1], 1000, 1000).map(|p| p.pid), None);
        assert!(user_label(0).contains("root"));
    }

    #[test]
    fn apply_fails_when_every_picked_process_is_gone() {
        let name = unique("late");
        let mut child = sleep_named(&name);
        let kill = fault(by_name(&name), kill_with(libc::SIGKILL, "SIGKILL"));
        let prepared = kill.prepare().expect("prepare");
        child.kill_and_reap();
        let error = kill.apply(&prepared).expect_err("nothing left to hit");
        assert!(
            error
                .to_string()
                .contains(&format!("pid {} ({name}) gone", child.pid())),
            "{error}"
        );
    }

    #[test]
    fn apply_reports_partial_success_when_some_are_gone() {
        let name = unique("part");
        let mut first = sleep_named(&name);
        let second = sleep_named(&name);
        let stop = fault(by_name(&name), FaultAction::Stop);
        let prepared = stop.prepare().expect("prepare");
        first.kill_and_reap();
        let applied = stop.apply(&prepared).expect("one still hit");
        assert_eq!(second.state(), 'T');
        assert!(
            applied
                .summary
                .contains(&format!("missed pid {} ({name}) gone", first.pid())),
            "{}",
            applied.summary
        );
        assert_eq!(applied.details["processes"][0]["ok"], false);
        assert_eq!(applied.details["processes"][1]["ok"], true);
    }
}
