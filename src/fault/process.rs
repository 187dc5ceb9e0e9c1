//! `process-kill` and `process-stop`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use nix::sys::signal::Signal;

use super::{
    Applied, Backend, BuildContext, Fault, FaultAction, FaultError, KindPlan, ModuleKind, Prepared,
    ProcRef, RevertRecipe, Reverted,
};
use crate::experiment::diagnostic::nearest;
use crate::experiment::model::{FaultDef, FaultKind, SignalSpec};
use crate::experiment::params::ParamChecks;
use crate::experiment::{Diagnostic, Sp};
use crate::sys::container::Container;
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
    signal: Kill,
}

// ---- the kinds: process-kill and process-stop, which share the selection and signalling ----

/// `process-kill`, as the list in [`super::MODULE_KINDS`] registers it.
pub const PROCESS_KILL: ModuleKind = ModuleKind {
    kind: FaultKind::ProcessKill,
    keys: &["signal"],
    compile: |fault, checks| compile_kill(fault, checks).map(FaultAction::ProcessKill),
    backend: |_| Backend::always("pidfd signals", PIDFD_DETAIL),
};

/// `process-stop`, as the list in [`super::MODULE_KINDS`] registers it.
pub const PROCESS_STOP: ModuleKind = ModuleKind {
    kind: FaultKind::ProcessStop,
    keys: &[],
    compile: |fault, checks| compile_stop(fault, checks).map(FaultAction::ProcessStop),
    backend: |_| Backend::always("pidfd signals", PIDFD_DETAIL),
};

const PIDFD_DETAIL: &str = "always available; sent through a pidfd, so a recycled PID is never hit";

/// A process-kill as the plan holds it: the signal, checked (default SIGKILL).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kill {
    pub signal: i32,
    pub signal_name: String,
}

impl Kill {
    /// SIGSTOP, as process-stop sends it.
    fn stop() -> Kill {
        Kill {
            signal: libc::SIGSTOP,
            signal_name: "SIGSTOP".into(),
        }
    }
}

/// A process-stop as the plan holds it: SIGSTOP now, SIGCONT on revert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stop;

/// Check a process-kill's `params` and compile them; `None` after reporting what is wrong.
pub fn compile_kill(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<Kill> {
    let signal = match &fault.params.signal {
        None => Signal::SIGKILL,
        Some(spec) => match parse_signal(spec) {
            Ok(signal) => signal,
            Err((reason, hint)) => {
                checks.report(Diagnostic::at(spec.pos, reason, "invalid signal").with_hint(hint));
                Signal::SIGKILL
            }
        },
    };
    Some(Kill {
        signal: signal as i32,
        signal_name: signal.as_str().to_string(),
    })
}

/// Check a process-stop's `params` and compile them; `None` never (what is wrong is
/// reported, and the plan is refused for it).
pub fn compile_stop(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<Stop> {
    if let Some(signal) = &fault.params.signal {
        checks.report(
            Diagnostic::at(signal.pos, "`params.signal` does not apply to a process-stop fault", "not a parameter of process-stop")
                .with_hint("process-stop always sends SIGSTOP and resumes with SIGCONT; remove `signal`, or use `process-kill`"),
        );
    }
    if fault.duration.is_none() {
        checks.report(
            Diagnostic::at(
                fault.kind.pos,
                format!(
                    "fault `{}` (process-stop) has no `duration`",
                    fault.id.value
                ),
                "needs a duration",
            )
            .with_hint("add `duration: 10s`: the processes are resumed (SIGCONT) when it is over"),
        );
    }
    Some(Stop)
}

impl KindPlan for Kill {
    fn summary(&self) -> String {
        self.signal_name.clone()
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(ProcessFault::new(
            ctx.fault_id,
            ctx.target_name,
            ctx.process.cloned(),
            self.clone(),
        ))
    }
}

impl KindPlan for Stop {
    fn summary(&self) -> String {
        "SIGSTOP, SIGCONT on revert".into()
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(ProcessFault::new(
            ctx.fault_id,
            ctx.target_name,
            ctx.process.cloned(),
            Kill::stop(),
        ))
    }
}

/// `SIGTERM`, `TERM`, `sigterm`, `15` → SIGTERM. Refuses 0 (sends nothing) and the stop
/// signals (a stopped process would never be resumed: that is `process-stop`'s job).
fn parse_signal(spec: &SignalSpec) -> Result<Signal, (String, String)> {
    let usage = "use a name (`SIGTERM`, `TERM`) or a number (`15`); leave `signal` out for SIGKILL";
    let from_number = |number: i32| match number {
        0 => Err((
            "signal 0 sends nothing".to_string(),
            format!("it only checks that a process exists; {usage}"),
        )),
        n => Signal::try_from(n).map_err(|_| {
            (
                format!("`{n}` is not a signal number on Linux"),
                usage.to_string(),
            )
        }),
    };
    let signal = match spec {
        SignalSpec::Number(number) => from_number(*number)?,
        SignalSpec::Name(text) => match text.trim().parse::<i32>() {
            Ok(number) => from_number(number)?,
            Err(_) => {
                let upper = text.trim().to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                full.parse::<Signal>().map_err(|_| {
                    let names: Vec<&str> = Signal::iterator().map(Signal::as_str).collect();
                    let hint = match nearest(&full, names) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => usage.to_string(),
                    };
                    (format!("`{text}` is not a signal"), hint)
                })?
            }
        },
    };
    if matches!(
        signal,
        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
    ) {
        return Err((
            format!(
                "{} would stop the processes and never resume them",
                signal.as_str()
            ),
            "use the `process-stop` fault kind, which resumes them (SIGCONT) when it is reverted"
                .to_string(),
        ));
    }
    Ok(signal)
}

/// A container whose main process a kill ended: watched for its runtime's restart, which
/// is what an experiment killing a container measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KilledContainer {
    pub container: Container,
    /// When the signal was sent (RFC 3339).
    pub killed_at: String,
}

impl KilledContainer {
    /// `docker container web (3f2a9c1b0d4e)`.
    pub fn label(&self) -> String {
        format!(
            "{} container {} ({})",
            self.container.runtime.as_str(),
            self.container.name,
            self.container.short_id()
        )
    }

    /// Ask the runtime once whether the container runs again under a new main process.
    pub fn check_restart(&self) -> Result<Option<Restarted>, String> {
        let now = crate::sys::container::inspect(&self.container.id, self.container.runtime)
            .map_err(|e| e.to_string())?;
        if !now.running
            || now.pid == 0
            || (now.pid == self.container.pid && now.started_at == self.container.started_at)
        {
            return Ok(None);
        }
        let parse = |text: &str| text.parse::<jiff::Timestamp>().ok();
        let restart_ms = match (parse(&self.killed_at), parse(&now.started_at)) {
            (Some(killed), Some(started)) => {
                Some((started.as_nanosecond() - killed.as_nanosecond()) as f64 / 1e6)
            }
            _ => None,
        };
        Ok(Some(Restarted {
            new_pid: now.pid,
            started_at: now.started_at,
            restart_ms,
        }))
    }
}

/// A killed container running again.
#[derive(Clone, Debug)]
pub struct Restarted {
    pub new_pid: u32,
    pub started_at: String,
    /// From the kill to the runtime's start of the new main process, by the runtime's clock
    /// (the host's); `None` when either time cannot be read.
    pub restart_ms: Option<f64>,
}

/// The containers whose main process the kill that `applied` (its details) describes
/// ended, for the engine to watch.
pub fn killed_containers(applied: &serde_json::Value) -> Vec<KilledContainer> {
    serde_json::from_value(applied["killed_containers"].clone()).unwrap_or_default()
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
        signal: Kill,
    ) -> ProcessFault {
        ProcessFault {
            fault_id: fault_id.into(),
            target_name: target_name.into(),
            selector,
            signal,
        }
    }

    fn signal(&self) -> (i32, &str) {
        (self.signal.signal, &self.signal.signal_name)
    }

    fn is_stop(&self) -> bool {
        self.signal().0 == libc::SIGSTOP
    }

    fn describe_target(&self) -> String {
        let selector = self
            .selector
            .as_ref()
            .map(|s| format!("[{}]", s.selector().describe()))
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
            .map_err(|e| FaultError::unresolved(format!("{}: ", self.describe_target()), &e))?;
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
                "containers": selection
                    .containers
                    .iter()
                    .filter(|c| c.running && picked.iter().any(|p| p.pid == c.pid))
                    .collect::<Vec<_>>(),
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
        let signalled_at = jiff::Timestamp::now().to_string();
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
        // A container whose main process this ended is watched for a restart; a signal that
        // does not end a process (SIGSTOP, SIGHUP to a daemon that reloads) restarts nothing
        // the engine could wait for, so only the kill signals count.
        let ends = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].contains(&signal);
        let containers: Vec<Container> =
            serde_json::from_value(prepared.details["containers"].clone()).unwrap_or_default();
        let killed: Vec<KilledContainer> = containers
            .into_iter()
            .filter(|c| ends && report.iter().any(|r| r["pid"] == c.pid && r["ok"] == true))
            .map(|container| KilledContainer {
                container,
                killed_at: signalled_at.clone(),
            })
            .collect();
        let details = serde_json::json!({
            "signal_name": signal_name,
            "processes": report,
            "killed_containers": killed,
        });
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

    fn fault(selector: ProcessSelector, signal: Kill) -> ProcessFault {
        let selector = CompiledSelector::new(&selector).expect("a valid selector");
        ProcessFault::new("f1", "workers", Some(selector), signal)
    }

    fn kill_with(signal: i32, name: &str) -> Kill {
        Kill {
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
    fn signals_accept_common_spellings() {
        for spec in [
            SignalSpec::Name("SIGTERM".into()),
            SignalSpec::Name("TERM".into()),
            SignalSpec::Name("sigterm".into()),
            SignalSpec::Name("15".into()),
            SignalSpec::Number(15),
        ] {
            assert_eq!(parse_signal(&spec).unwrap(), Signal::SIGTERM, "{spec:?}");
        }
        assert!(parse_signal(&SignalSpec::Number(0)).is_err());
        assert!(parse_signal(&SignalSpec::Number(99)).is_err());
        assert!(parse_signal(&SignalSpec::Name("SIGSTOP".into())).is_err());
        let (_, hint) = parse_signal(&SignalSpec::Name("SIGKIL".into())).unwrap_err();
        assert!(hint.contains("SIGKILL"), "{hint}");
    }

    #[test]
    fn stop_really_stops_and_resume_is_idempotent() {
        let name = unique("stop");
        let children: Vec<TestChild> = (0..2).map(|_| sleep_named(&name)).collect();
        let stop = fault(by_name(&name), Kill::stop());
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
        let stop = fault(by_name(&name), Kill::stop());
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
