//! From samples to a verdict: consecutive-failure threshold plus an optional window SLO
//! (success ratio and latency percentile over the last N seconds).

use std::time::Instant;

use crate::plan::ProbeSpec;

use super::Sample;

/// Healthy, or failing with a reason people can read ("3 consecutive failures (threshold 3)",
/// "success ratio 0.80 < 0.99 over 10s (25 samples)", "p99 latency 412ms >= 300ms").
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Failing { reason: String },
}

/// Tracks one probe's samples. Time is passed in, so tests can drive it deterministically.
pub struct SloTracker {}

impl SloTracker {
    pub fn new(_spec: &ProbeSpec) -> SloTracker {
        unimplemented!("helper B")
    }

    /// Record a sample taken at `at` and return the verdict after it.
    pub fn record(&mut self, _at: Instant, _sample: &Sample) -> Verdict {
        unimplemented!("helper B")
    }

    /// Consecutive failed samples right now.
    pub fn consecutive_failures(&self) -> u32 {
        unimplemented!("helper B")
    }
}
