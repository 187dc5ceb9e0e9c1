//! The journal's one event type: written by the engine and the watchdog, read back by every
//! report. Every event carries `t_ms`, milliseconds since the run started. The writers lend
//! their values (`Cow::Borrowed`); a journal read back owns them.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::experiment::Experiment;
use crate::fault::RevertRecipe;
use crate::outcome::Outcome;
use crate::probe::Sample;

/// Text an event lends from its writer or owns when read back.
pub type Text<'a> = Cow<'a, str>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    RunStarted {
        t_ms: f64,
        run_id: Text<'a>,
        experiment_name: Text<'a>,
        #[serde(default)]
        source: Text<'a>,
        tool_version: Text<'a>,
        host: Text<'a>,
        #[serde(default)]
        pid: u32,
        started_at: Text<'a>,
        /// The experiment as loaded; written for the record, not read back (the reports
        /// need only its name).
        #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
        experiment: Option<&'a Experiment>,
    },
    Phase {
        t_ms: f64,
        phase: Phase,
    },
    Command {
        t_ms: f64,
        phase: Phase,
        name: Text<'a>,
        #[serde(default)]
        argv: Cow<'a, [String]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        background: bool,
        duration_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    ProbeSample {
        t_ms: f64,
        phase: Phase,
        probe: Text<'a>,
        #[serde(flatten)]
        sample: Cow<'a, Sample>,
        /// Consecutive failures after this sample (during only).
        #[serde(skip_serializing_if = "Option::is_none")]
        consecutive_failures: Option<u32>,
    },
    Gate {
        t_ms: f64,
        phase: Phase,
        passed: bool,
        attempts: u32,
        /// How many probes the gate checks (0 in journals written before it was recorded).
        #[serde(default)]
        probes: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    FaultIntent {
        t_ms: f64,
        fault: Text<'a>,
        record: Text<'a>,
        summary: Text<'a>,
        #[serde(default)]
        details: Cow<'a, serde_json::Value>,
        /// Always written; `None` when read back only if this version cannot read it.
        #[serde(
            default,
            deserialize_with = "readable_recipe",
            skip_serializing_if = "Option::is_none"
        )]
        revert: Option<Cow<'a, RevertRecipe>>,
    },
    FaultInjected {
        t_ms: f64,
        fault: Text<'a>,
        record: Text<'a>,
        #[serde(default)]
        summary: Text<'a>,
        #[serde(default)]
        details: Cow<'a, serde_json::Value>,
    },
    FaultInjectionFailed {
        t_ms: f64,
        fault: Text<'a>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<Text<'a>>,
        error: String,
    },
    /// The run stopped while the fault was still being prepared (its target resolved):
    /// nothing was recorded or injected, and the preparation was left to finish on its own.
    FaultAbandoned {
        t_ms: f64,
        fault: Text<'a>,
        reason: Text<'a>,
    },
    FaultReverted {
        t_ms: f64,
        fault: Text<'a>,
        record: Text<'a>,
        summary: Text<'a>,
        /// Why it was reverted now.
        cause: RevertCause,
        /// What the fault achieved while live (packet counters, delay statistics...).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        achieved: Cow<'a, serde_json::Value>,
    },
    /// What became of a container whose main process a kill ended: restarted by its
    /// runtime (its restart policy), and how long that took, or not within the watch.
    ContainerRestart {
        t_ms: f64,
        fault: Text<'a>,
        /// `docker container web (3f2a9c1b0d4e)`.
        container: Text<'a>,
        id: Text<'a>,
        restart_policy: Text<'a>,
        old_pid: u32,
        restarted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_pid: Option<u32>,
        /// From the kill to the runtime's start of the new main process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restart_ms: Option<f64>,
        /// How long faultline watched, from the fault's start.
        watched_ms: f64,
        /// Why the watch ended without a restart, or what could not be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    FaultRevertFailed {
        t_ms: f64,
        fault: Text<'a>,
        record: Text<'a>,
        error: String,
        /// What to do about it.
        remedy: String,
    },
    Abort {
        t_ms: f64,
        #[serde(flatten)]
        record: Cow<'a, AbortRecord>,
    },
    Outcome {
        t_ms: f64,
        outcome: Outcome,
        exit_code: u8,
        reason: Text<'a>,
        #[serde(default)]
        finished_at: String,
    },
}

/// A recipe this version cannot read (a newer journal's) reads as `None`, so its fault is
/// reported as one that may need reverting instead of the whole intent being skipped, which
/// would hide a fault that may be live.
fn readable_recipe<'de, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, RevertRecipe>>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(RevertRecipe::deserialize(value).ok().map(Cow::Owned))
}

impl Event<'static> {
    /// One journal line read back; `None` for an event this version does not know (a newer
    /// journal) or a line that is not one.
    pub fn read(value: &serde_json::Value) -> Option<Event<'static>> {
        Event::deserialize(value).ok()
    }
}

impl Event<'_> {
    /// What the operator's terminal shows for this event, for the events that are a step of
    /// their own (a fault injected, failed, skipped or reverted; an abort), so the journal
    /// and the terminal say it from one value. The engine's other lines (a gate's verdict, a
    /// probe turning healthy) sum up several events and are written where that happens.
    pub fn terminal_line(&self) -> Option<String> {
        Some(match self {
            Event::FaultInjected { fault, summary, .. } => format!("inject  {fault}: {summary}"),
            Event::FaultInjectionFailed { fault, error, .. } => {
                format!("FAILED  {fault}: could not inject: {error}")
            }
            Event::FaultAbandoned { fault, reason, .. } => format!("skip    {fault}: {reason}"),
            Event::FaultReverted { fault, summary, .. } => format!("revert  {fault}: {summary}"),
            Event::ContainerRestart {
                fault,
                container,
                old_pid,
                restarted: true,
                new_pid,
                restart_ms,
                ..
            } => format!(
                "restart {fault}: {container} restarted {} after the kill (pid {old_pid} -> {})",
                restart_ms.map_or("(time unknown)".to_string(), |ms| format!(
                    "{:.2} s",
                    ms / 1000.0
                )),
                new_pid.unwrap_or(0)
            ),
            Event::ContainerRestart {
                fault,
                container,
                restart_policy,
                watched_ms,
                note,
                ..
            } => format!(
                "restart {fault}: {container} NOT restarted within {:.1} s of the kill (restart policy {}){}",
                watched_ms / 1000.0,
                if restart_policy.is_empty() {
                    "none"
                } else {
                    restart_policy
                },
                note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
            ),
            Event::FaultRevertFailed {
                fault,
                error,
                remedy,
                ..
            } => format!("REVERT FAILED  {fault}: {error}\n          {remedy}"),
            Event::Command {
                phase: Phase::Setup,
                name,
                pid,
                background,
                error,
                ..
            } => match error {
                Some(e) => format!("setup   FAILED: {e}"),
                None if *background => format!(
                    "setup   started {name} in the background (pid {})",
                    pid.unwrap_or(0)
                ),
                None => format!("setup   {name} done"),
            },
            Event::Command {
                phase: Phase::Cleanup,
                name,
                error,
                ..
            } => match error {
                Some(e) => format!("cleanup {name} failed: {e}"),
                None => format!("cleanup {name} done"),
            },
            Event::Gate {
                phase,
                passed,
                attempts,
                probes,
                reason,
                ..
            } => {
                let attempts_said = format!("{attempts} attempt{}", plural(*attempts));
                match (phase, passed) {
                    (Phase::Before, true) => format!(
                        "before  steady state holds ({probes} probe{}, {attempts_said})",
                        plural(*probes)
                    ),
                    (Phase::After, true) => format!("after   recovered ({attempts_said})"),
                    (Phase::After, false) => format!(
                        "after   NOT RECOVERED: {} (after {attempts_said})",
                        reason.as_deref().unwrap_or_default()
                    ),
                    (_, passed) => format!(
                        "{:<7} {}: {} (after {attempts_said})",
                        phase.as_str(),
                        if *passed { "passed" } else { "NOT READY" },
                        reason.as_deref().unwrap_or_default()
                    ),
                }
            }
            Event::Abort { record, .. } => format!(
                "ABORT   {} fault{} reverted {:.1} ms after the breach",
                record.faults_reverted,
                if record.faults_reverted == 1 { "" } else { "s" },
                record.breach_to_all_reverted_ms
            ),
            _ => return None,
        })
    }
}

/// The phases of a run, in the order they begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Setup,
    Before,
    T0,
    During,
    Revert,
    After,
    Cleanup,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Before => "before",
            Phase::T0 => "t0",
            Phase::During => "during",
            Phase::Revert => "revert",
            Phase::After => "after",
            Phase::Cleanup => "cleanup",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fault was reverted when it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertCause {
    /// Its `duration` ran out.
    DurationElapsed,
    /// The run aborted (an SLO breach, `max_duration`, a failed injection, an interrupt).
    Abort,
    /// Every fault's time was up: the revert phase.
    EndOfFaults,
    /// The run was ending with the fault still live (a failed gate, an error).
    EndOfRun,
    /// The runner died; its watchdog reverted the fault.
    Watchdog,
}

impl RevertCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RevertCause::DurationElapsed => "duration_elapsed",
            RevertCause::Abort => "abort",
            RevertCause::EndOfFaults => "end_of_faults",
            RevertCause::EndOfRun => "end_of_run",
            RevertCause::Watchdog => "watchdog",
        }
    }
}

impl fmt::Display for RevertCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why and how fast a run was aborted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbortRecord {
    pub trigger: AbortTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    pub reason: String,
    /// The failing probe's last samples, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<AbortSample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// When the breach was detected.
    pub breach_t_ms: f64,
    /// When the last live fault was reverted.
    pub all_reverted_t_ms: f64,
    pub breach_to_all_reverted_ms: f64,
    pub faults_reverted: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbortSample {
    pub t_ms: f64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortTrigger {
    ProbeFailure,
    MaxDuration,
    InjectionFailed,
    Interrupted,
}

impl AbortTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortTrigger::ProbeFailure => "probe_failure",
            AbortTrigger::MaxDuration => "max_duration",
            AbortTrigger::InjectionFailed => "injection_failed",
            AbortTrigger::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for AbortTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event the engine writes reads back as the same event.
    #[test]
    fn events_read_back_as_written() {
        let sample = Sample::fail(std::time::Duration::from_micros(1500), None, "refused");
        let recipe = RevertRecipe::Nothing;
        let abort = AbortRecord {
            trigger: AbortTrigger::ProbeFailure,
            probe: Some("api".into()),
            reason: "probe api: 2 consecutive failed samples".into(),
            samples: vec![AbortSample {
                t_ms: 1.0,
                ok: false,
                error: Some("refused".into()),
            }],
            failure_threshold: Some(2),
            breach_t_ms: 650.5,
            all_reverted_t_ms: 651.7,
            breach_to_all_reverted_ms: 1.2,
            faults_reverted: 1,
        };
        let written = [
            Event::Phase {
                t_ms: 1.0,
                phase: Phase::T0,
            },
            Event::ProbeSample {
                t_ms: 2.0,
                phase: Phase::During,
                probe: "api".into(),
                sample: Cow::Borrowed(&sample),
                consecutive_failures: Some(1),
            },
            Event::FaultIntent {
                t_ms: 3.0,
                fault: "kill".into(),
                record: "r-kill".into(),
                summary: "SIGKILL".into(),
                details: Cow::Owned(serde_json::json!({"pids": [1]})),
                revert: Some(Cow::Borrowed(&recipe)),
            },
            Event::FaultReverted {
                t_ms: 4.0,
                fault: "kill".into(),
                record: "r-kill".into(),
                summary: "nothing".into(),
                cause: RevertCause::DurationElapsed,
                achieved: Cow::Owned(serde_json::Value::Null),
            },
            Event::Abort {
                t_ms: 5.0,
                record: Cow::Borrowed(&abort),
            },
        ];
        for event in &written {
            let value = serde_json::to_value(event).unwrap();
            let read = Event::read(&value).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(serde_json::to_value(&read).unwrap(), value);
        }
    }

    #[test]
    fn an_intent_whose_recipe_this_version_cannot_read_is_kept() {
        let value = serde_json::json!({"event": "fault_intent", "t_ms": 1.0, "fault": "f",
            "record": "r", "summary": "s", "revert": {"recipe": "from_the_future"}});
        match Event::read(&value) {
            Some(Event::FaultIntent { record, revert, .. }) => {
                assert_eq!(record, "r");
                assert!(revert.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_event_is_skipped_not_misread() {
        let value = serde_json::json!({"event": "from_the_future", "t_ms": 1.0});
        assert!(Event::read(&value).is_none());
    }
}
