//! The compiled effects of the fault kinds that do not yet have a module of their own (those
//! in [`super::MODULE_KINDS`] do); the plan holds them, checked, and the kinds' code reads
//! them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A resource fault's effect, validated (shares as fractions).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum ResourceAction {
    CpuPressure {
        /// 0..=1 of each selected core.
        load: f64,
        /// `None`: every online core.
        cores: Option<CoreSelection>,
        /// Top each core up to `load` (true) or add `load` on top of what runs (false).
        total: bool,
        ramp: Duration,
    },
    CpuLimit {
        /// In CPUs: 0.5 is half a core, 1.5 one and a half.
        cpus: f64,
    },
    MemoryPressure {
        size: MemorySize,
        ramp: Duration,
        keep_free: u64,
    },
    DiskIoPressure {
        path: PathBuf,
        mode: IoMode,
        block_size: u64,
        rate: IoRate,
        workers: u32,
    },
    DiskIoLimit {
        path: PathBuf,
        read_bytes_per_sec: Option<u64>,
        write_bytes_per_sec: Option<u64>,
        read_iops: Option<u64>,
        write_iops: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreSelection {
    Count(u32),
    List(Vec<u32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySize {
    Bytes(u64),
    /// Of total RAM, 0..=1.
    Share(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    Read,
    Write,
    /// Share of reads 0..=1.
    Mixed(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoRate {
    Max,
    BytesPerSec(u64),
    Iops(u64),
}

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
