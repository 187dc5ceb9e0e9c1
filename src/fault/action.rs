//! The compiled effects of the fault kinds that do not yet have a module of their own (those
//! in [`super::MODULE_KINDS`] do); the plan holds them, checked, and the kinds' code reads
//! them.

use std::time::Duration;

use serde::Serialize;

/// A network fault's effect, validated (probabilities as fractions 0..=1).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum NetworkAction {
    Delay {
        delay: Duration,
        jitter: Duration,
        normal: bool,
        correlation: f64,
        backend: DelayBackend,
    },
    Loss {
        probability: f64,
        correlation: f64,
    },
    Partition {
        reject: bool,
    },
    Bandwidth {
        rate_bits_per_sec: u64,
        burst_bytes: Option<u64>,
    },
    /// netem-only effects.
    Duplicate {
        probability: f64,
    },
    Corrupt {
        probability: f64,
    },
    Reorder {
        probability: f64,
        delay: Duration,
        gap: Option<u32>,
    },
}

pub use crate::host::DelayBackend;
