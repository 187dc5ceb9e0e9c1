//! Journal events. Every event carries `t_ms`, milliseconds since the run started.

use serde::Serialize;

use crate::experiment::Experiment;
use crate::fault::RevertRecipe;
use crate::outcome::Outcome;
use crate::probe::Sample;

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    RunStarted {
        t_ms: f64,
        run_id: &'a str,
        experiment_name: &'a str,
        source: String,
        tool_version: &'static str,
        host: String,
        pid: u32,
        started_at: String,
        experiment: &'a Experiment,
    },
    Phase {
        t_ms: f64,
        phase: Phase,
    },
    Command {
        t_ms: f64,
        phase: Phase,
        name: &'a str,
        argv: &'a [String],
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
        probe: &'a str,
        #[serde(flatten)]
        sample: &'a Sample,
        /// Consecutive failures after this sample (during only).
        #[serde(skip_serializing_if = "Option::is_none")]
        consecutive_failures: Option<u32>,
    },
    Gate {
        t_ms: f64,
        phase: Phase,
        passed: bool,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    FaultIntent {
        t_ms: f64,
        fault: &'a str,
        record: &'a str,
        summary: &'a str,
        details: &'a serde_json::Value,
        revert: &'a RevertRecipe,
    },
    FaultInjected {
        t_ms: f64,
        fault: &'a str,
        record: &'a str,
        summary: &'a str,
        details: &'a serde_json::Value,
    },
    FaultInjectionFailed {
        t_ms: f64,
        fault: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<&'a str>,
        error: String,
    },
    /// The run stopped while the fault was still being prepared (its target resolved):
    /// nothing was recorded or injected, and the preparation was left to finish on its own.
    FaultAbandoned {
        t_ms: f64,
        fault: &'a str,
        reason: &'a str,
    },
    FaultReverted {
        t_ms: f64,
        fault: &'a str,
        record: &'a str,
        summary: &'a str,
        /// Why it was reverted now: `duration_elapsed`, `abort`, `end_of_faults`.
        cause: &'a str,
        /// What the fault achieved while live (packet counters, delay statistics...).
        #[serde(skip_serializing_if = "serde_json::Value::is_null")]
        achieved: &'a serde_json::Value,
    },
    FaultRevertFailed {
        t_ms: f64,
        fault: &'a str,
        record: &'a str,
        error: String,
        /// What to do about it.
        remedy: String,
    },
    Abort {
        t_ms: f64,
        #[serde(flatten)]
        record: &'a AbortRecord,
    },
    Outcome {
        t_ms: f64,
        outcome: Outcome,
        exit_code: u8,
        reason: &'a str,
        finished_at: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

/// Why and how fast a run was aborted.
#[derive(Clone, Debug, Serialize)]
pub struct AbortRecord {
    pub trigger: AbortTrigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    pub reason: String,
    /// The failing probe's last samples, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<AbortSample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// When the breach was detected.
    pub breach_t_ms: f64,
    /// When the last live fault was reverted.
    pub all_reverted_t_ms: f64,
    pub breach_to_all_reverted_ms: f64,
    pub faults_reverted: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AbortSample {
    pub t_ms: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortTrigger {
    ProbeFailure,
    MaxDuration,
    InjectionFailed,
    Interrupted,
}
