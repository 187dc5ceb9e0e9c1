//! One experiment's run as the reports see it, rebuilt from its journal alone: the journal
//! is the record, every other report is derived from it (so a journal left by a crashed run
//! still gives a report, one that says the run never ended).

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use super::event::{AbortRecord, Event, Phase, RevertCause};
use crate::fault::RevertRecipe;
use crate::outcome::Outcome;

/// The largest journal read back: a day-long run with a busy probe stays well below it.
pub const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// A journal as read back: its path and its events in order.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub journal: PathBuf,
    pub events: Vec<serde_json::Value>,
}

impl RunRecord {
    /// Read a journal (a regular file, read without blocking, at most
    /// [`MAX_JOURNAL_BYTES`]). A last line cut short by a crash is skipped, not an error.
    pub fn read(path: &Path) -> io::Result<RunRecord> {
        let text = crate::sys::file::read_regular(path, MAX_JOURNAL_BYTES, "journal")
            .map_err(io::Error::other)?;
        let events = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Ok(RunRecord {
            journal: path.to_path_buf(),
            events,
        })
    }
}

/// What a report says of a journal without an outcome.
pub const NO_OUTCOME: &str = "the journal ends without an outcome: faultline crashed or was \
     killed. Each fault says whether it was reverted (by the run's watchdog, if it had one); \
     `faultline recover` reverts any that were not";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunView {
    pub name: String,
    pub run_id: String,
    pub host: String,
    pub started_at: String,
    pub tool_version: String,
    pub journal: PathBuf,
    /// `None` when the journal ends without an outcome: the run crashed or was killed.
    pub outcome: Option<OutcomeView>,
    /// The last `t_ms` in the journal.
    pub end_ms: f64,
    /// Each phase and when it began, in order.
    pub phases: Vec<(Phase, f64)>,
    pub commands: Vec<CommandView>,
    pub gates: Vec<GateView>,
    /// One entry per injection (a repeated fault has several), in intent order.
    pub faults: Vec<FaultView>,
    /// Probes in the order they first sampled.
    pub probes: Vec<ProbeView>,
    pub abort: Option<AbortRecord>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeView {
    pub outcome: Outcome,
    pub exit_code: u8,
    pub reason: String,
    pub t_ms: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommandView {
    pub t_ms: f64,
    pub phase: Phase,
    pub name: String,
    pub exit_code: Option<i32>,
    pub background: bool,
    pub duration_ms: f64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GateView {
    pub t_ms: f64,
    /// `before` or `after`.
    pub phase: Phase,
    pub passed: bool,
    pub attempts: u32,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultView {
    /// The fault's id in the experiment.
    pub fault: String,
    /// The state record of this injection (`None` when it failed before one was written).
    pub record: Option<String>,
    pub summary: String,
    pub intent_ms: f64,
    /// Nothing to undo (a kill): such a fault is never reverted, and rightly so.
    pub nothing_to_revert: bool,
    pub injected_ms: Option<f64>,
    pub reverted_ms: Option<f64>,
    /// Why it was reverted.
    pub revert_cause: Option<RevertCause>,
    /// What the fault achieved (counters, measured delays...), from its revert.
    pub achieved: serde_json::Value,
    pub injection_error: Option<String>,
    pub revert_error: Option<String>,
    pub revert_remedy: Option<String>,
    /// What became of each container the fault killed (`... restarted 0.53 s after the kill`).
    pub restarts: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeView {
    pub name: String,
    pub samples: Vec<SampleView>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SampleView {
    pub t_ms: f64,
    pub phase: Phase,
    pub ok: bool,
    pub latency_ms: f64,
    pub error: Option<String>,
}

impl FaultView {
    /// A state record was written (so the fault may be on the host, even when the
    /// journal ends before confirming the injection), there is something to undo, and
    /// no revert in this journal: the host may still carry it.
    pub fn never_reverted(&self) -> bool {
        self.record.is_some() && self.reverted_ms.is_none() && !self.nothing_to_revert
    }

    /// What to tell the reader about a fault that was never reverted, if it was not.
    pub fn never_reverted_message(&self) -> Option<&'static str> {
        if !self.never_reverted() {
            None
        } else if self.injection_error.is_some() {
            Some(
                "its failed injection may have been partly applied and was never reverted in \
                 this journal: run `faultline status` / `faultline recover`",
            )
        } else if self.injected_ms.is_some() {
            Some(
                "injected but never reverted in this journal: run `faultline status` / \
                 `faultline recover`",
            )
        } else {
            Some(
                "about to be injected when the journal ends (injection never confirmed, \
                 never reverted): it may be in place; run `faultline status` / \
                 `faultline recover`",
            )
        }
    }
}

impl ProbeView {
    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| !s.ok).count()
    }

    /// Latency percentile (0-100) of the samples taken in `phase` (all phases if `None`).
    pub fn latency_percentile(&self, phase: Option<Phase>, p: f64) -> Option<f64> {
        let mut latencies: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| phase.is_none_or(|ph| s.phase == ph))
            .map(|s| s.latency_ms)
            .collect();
        crate::units::nearest_rank(&mut latencies, p)
    }
}

impl RunView {
    pub fn from_record(record: &RunRecord) -> RunView {
        let mut view = RunView::of(record.journal.clone());
        for value in &record.events {
            view.push(value);
        }
        view
    }

    /// The view of the journal being written, read back event by event.
    pub fn from_journal(journal: &super::journal::Journal) -> RunView {
        let mut view = RunView::of(journal.path().map(Path::to_path_buf).unwrap_or_default());
        journal.replay(|value| view.push(&value));
        view
    }

    fn of(journal: PathBuf) -> RunView {
        RunView {
            journal,
            ..RunView::default()
        }
    }

    /// Take one more event of the journal into the view.
    fn push(&mut self, value: &serde_json::Value) {
        if let Some(t) = value.get("t_ms").and_then(serde_json::Value::as_f64) {
            self.end_ms = self.end_ms.max(t);
        }
        // Events this version does not know (a newer journal) are skipped.
        if let Some(event) = Event::read(value) {
            self.apply(event);
        }
    }

    /// Wall time the run took, as far as the journal knows.
    pub fn duration_ms(&self) -> f64 {
        self.outcome.as_ref().map_or(self.end_ms, |o| o.t_ms)
    }

    pub fn gate(&self, phase: Phase) -> Option<&GateView> {
        self.gates.iter().rev().find(|g| g.phase == phase)
    }

    fn fault_mut(&mut self, record: &str) -> Option<&mut FaultView> {
        self.faults
            .iter_mut()
            .rev()
            .find(|f| f.record.as_deref() == Some(record))
    }

    fn apply(&mut self, event: Event<'static>) {
        match event {
            Event::RunStarted {
                run_id,
                experiment_name,
                host,
                started_at,
                tool_version,
                ..
            } => {
                self.run_id = run_id.into_owned();
                self.name = experiment_name.into_owned();
                self.host = host.into_owned();
                self.started_at = started_at.into_owned();
                self.tool_version = tool_version.into_owned();
            }
            Event::Phase { t_ms, phase } => self.phases.push((phase, t_ms)),
            Event::Command {
                t_ms,
                phase,
                name,
                exit_code,
                background,
                duration_ms,
                error,
                ..
            } => self.commands.push(CommandView {
                t_ms,
                phase,
                name: name.into_owned(),
                exit_code,
                background,
                duration_ms,
                error,
            }),
            Event::ProbeSample {
                t_ms,
                phase,
                probe,
                sample,
                ..
            } => {
                let sample = SampleView {
                    t_ms,
                    phase,
                    ok: sample.ok,
                    latency_ms: crate::units::ms(sample.latency),
                    error: sample.into_owned().error,
                };
                match self.probes.iter_mut().find(|p| p.name == probe) {
                    Some(p) => p.samples.push(sample),
                    None => self.probes.push(ProbeView {
                        name: probe.into_owned(),
                        samples: vec![sample],
                    }),
                }
            }
            Event::Gate {
                t_ms,
                phase,
                passed,
                attempts,
                reason,
                ..
            } => self.gates.push(GateView {
                t_ms,
                phase,
                passed,
                attempts,
                reason,
            }),
            Event::FaultIntent {
                t_ms,
                fault,
                record,
                summary,
                revert,
                ..
            } => self.faults.push(FaultView {
                fault: fault.into_owned(),
                record: Some(record.into_owned()),
                summary: summary.into_owned(),
                intent_ms: t_ms,
                // A recipe this version cannot read may well need reverting.
                nothing_to_revert: matches!(revert.as_deref(), Some(RevertRecipe::Nothing)),
                ..FaultView::default()
            }),
            Event::FaultInjected { t_ms, record, .. } => {
                if let Some(f) = self.fault_mut(&record) {
                    f.injected_ms = Some(t_ms);
                }
            }
            Event::FaultInjectionFailed {
                t_ms,
                fault,
                record,
                error,
            } => match record.as_deref().and_then(|r| self.fault_mut(r)) {
                Some(f) => f.injection_error = Some(error),
                None => self.faults.push(FaultView {
                    fault: fault.into_owned(),
                    record: record.map(Cow::into_owned),
                    intent_ms: t_ms,
                    injection_error: Some(error),
                    ..FaultView::default()
                }),
            },
            Event::FaultAbandoned { .. } => {}
            Event::ContainerRestart { ref fault, .. } => {
                let line = event.terminal_line().unwrap_or_default();
                let said = line
                    .split_once(": ")
                    .map_or(line.as_str(), |(_, rest)| rest)
                    .to_string();
                if let Some(f) = self.faults.iter_mut().rev().find(|f| f.fault == *fault) {
                    f.restarts.push(said);
                }
            }
            Event::FaultReverted {
                t_ms,
                record,
                cause,
                achieved,
                ..
            } => {
                if let Some(f) = self.fault_mut(&record) {
                    f.reverted_ms = Some(t_ms);
                    f.revert_cause = Some(cause);
                    f.achieved = achieved.into_owned();
                }
            }
            Event::FaultRevertFailed {
                t_ms,
                record,
                error,
                remedy,
                ..
            } => {
                if let Some(f) = self.fault_mut(&record) {
                    f.reverted_ms.get_or_insert(t_ms);
                    f.revert_error = Some(error);
                    f.revert_remedy = Some(remedy);
                }
            }
            Event::Abort { record, .. } => self.abort = Some(record.into_owned()),
            Event::Outcome {
                t_ms,
                outcome,
                exit_code,
                reason,
                ..
            } => {
                self.outcome = Some(OutcomeView {
                    outcome,
                    exit_code,
                    reason: reason.into_owned(),
                    t_ms,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(lines: &[&str]) -> RunView {
        RunView::from_record(&RunRecord {
            journal: PathBuf::from("test.jsonl"),
            events: lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        })
    }

    #[test]
    fn a_kill_has_nothing_to_revert_but_a_freeze_does() {
        let view = view_of(&[
            r#"{"event":"fault_intent","t_ms":1.0,"fault":"kill","record":"r-kill","summary":"SIGKILL","revert":{"recipe":"nothing"}}"#,
            r#"{"event":"fault_injected","t_ms":2.0,"fault":"kill","record":"r-kill"}"#,
            r#"{"event":"fault_intent","t_ms":3.0,"fault":"freeze","record":"r-freeze","summary":"SIGSTOP","revert":{"recipe":"resume_processes","processes":[]}}"#,
            r#"{"event":"fault_injected","t_ms":4.0,"fault":"freeze","record":"r-freeze"}"#,
        ]);
        let [kill, freeze] = &view.faults[..] else {
            panic!("two faults: {:?}", view.faults)
        };
        assert!(kill.nothing_to_revert && !kill.never_reverted());
        assert!(!freeze.nothing_to_revert && freeze.never_reverted());
    }
}
