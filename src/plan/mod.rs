//! Stage two: an [`Experiment`](crate::experiment::Experiment) checked and turned into a
//! [`Plan`] — references resolved, defaults applied, expectations compiled, durations absolute.
//! `run` executes only a `Plan`; `plan` prints one. Building a plan touches nothing on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::experiment::model::{Experiment, FaultKind, NoData};
use crate::experiment::{Diagnostics, Overrides, Source};
use crate::net::NetworkTarget;
use crate::sys::proc::CompiledSelector;

pub mod compile;
pub mod jsonpath;
pub mod summary;

/// Semantic checks (references, cycles, offsets, per-kind parameters) and compilation
/// into a [`Plan`]. All problems are reported at once, not just the first.
pub fn compile(source: &Source, experiment: Experiment) -> Result<Plan, Diagnostics> {
    compile::compile(source, experiment)
}

/// Read, parse and compile one file.
pub fn load_plan(path: &Path) -> Result<Plan, Diagnostics> {
    load_plan_with(path, &Overrides::none())
}

/// Read, parse with `overrides` and compile one file.
pub fn load_plan_with(path: &Path, overrides: &Overrides) -> Result<Plan, Diagnostics> {
    plan_source(&Source::read(path)?, overrides)
}

/// Parse with `overrides` and compile text already read (the built-in quickstart).
pub fn plan_source(source: &Source, overrides: &Overrides) -> Result<Plan, Diagnostics> {
    let experiment = crate::experiment::parse_with(source, overrides)?;
    compile(source, experiment)
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub name: String,
    /// Where the experiment came from (`<built-in quickstart>` for the embedded default).
    pub source: PathBuf,
    /// The experiment as written (defaults not filled in), for the journal.
    pub experiment: Experiment,
    pub targets: BTreeMap<String, TargetSpec>,
    pub probes: BTreeMap<String, ProbeSpec>,
    pub before: Option<GateSpec>,
    /// Probes checked from T0 until the last fault ends.
    pub during: Vec<String>,
    pub after: Option<AfterSpec>,
    /// In file order.
    pub faults: Vec<FaultSpec>,
    pub abort_on_probe_failure: bool,
    pub revert_timeout: Duration,
    pub max_duration: Duration,
    pub setup: Vec<CommandSpec>,
    pub cleanup: Vec<CommandSpec>,
    /// Where each secret the probes use is read from when the run starts.
    pub secrets: BTreeMap<String, crate::secrets::SecretSource>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSpec {
    /// Its patterns compiled once, here.
    Process(CompiledSelector),
    /// Addresses, blocks and ports parsed; host names are looked up when a fault on it is
    /// prepared (and by `faultline plan`).
    Network(NetworkTarget),
}

#[derive(Clone, Debug, Serialize)]
pub struct GateSpec {
    pub probes: Vec<String>,
    /// Zero means a single try.
    pub wait_until: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct AfterSpec {
    pub probes: Vec<String>,
    pub within: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultSpec {
    pub id: String,
    pub kind: FaultKind,
    /// `None` for host-wide pressure faults.
    pub target: Option<String>,
    pub action: FaultAction,
    /// Offset from T0 (zero when not given).
    pub at: Duration,
    /// Start only after these faults have been injected, plus `delay`.
    pub after: Vec<String>,
    pub delay: Duration,
    /// How long the fault stays injected; `None` for one-shot faults (a kill without repeat).
    pub duration: Option<Duration>,
    pub repeat_every: Option<Duration>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum FaultAction {
    /// Send `signal` (a raw signal number, validated) to every selected process.
    Signal {
        signal: i32,
        signal_name: String,
    },
    /// SIGSTOP now, SIGCONT on revert.
    Stop,
    Network(NetworkAction),
    Resource(ResourceAction),
}

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
    DiskFill {
        path: PathBuf,
        amount: FillAmount,
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

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FillAmount {
    /// Add this many bytes.
    Bytes(u64),
    /// Fill until this share of the filesystem (0..=1) is in use.
    UsedShare(f64),
    /// Fill until only this many bytes are free.
    LeaveFree(u64),
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

#[derive(Clone, Debug, Serialize)]
pub struct ProbeSpec {
    pub name: String,
    pub kind: ProbeKind,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub slo: Option<WindowSloSpec>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        body: Option<String>,
    },
    Tcp {
        address: String,
    },
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Process {
        selector: CompiledSelector,
    },
    Prometheus {
        /// The server's base URL, as written.
        url: String,
        query: String,
        headers: BTreeMap<String, String>,
    },
}

impl ProbeSpec {
    /// This probe with each `${secret.NAME}` in what it sends (URL, header values, command
    /// env values) replaced by the secret's value: what the run's probes are built from, never
    /// what is shown or journalled.
    pub fn revealed(&self, secrets: &crate::secrets::Secrets) -> ProbeSpec {
        let reveal_map = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            map.iter()
                .map(|(k, v)| (k.clone(), secrets.reveal(v)))
                .collect()
        };
        let kind = match &self.kind {
            ProbeKind::Http {
                url,
                method,
                headers,
                body,
            } => ProbeKind::Http {
                url: secrets.reveal(url),
                method: method.clone(),
                headers: reveal_map(headers),
                body: body.clone(),
            },
            ProbeKind::Prometheus {
                url,
                query,
                headers,
            } => ProbeKind::Prometheus {
                url: secrets.reveal(url),
                query: query.clone(),
                headers: reveal_map(headers),
            },
            ProbeKind::Command { argv, env } => ProbeKind::Command {
                argv: argv.clone(),
                env: reveal_map(env),
            },
            other => other.clone(),
        };
        ProbeSpec {
            kind,
            ..self.clone()
        }
    }
}

/// Compiled expectations for one sample, defaults applied for the probe's kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    /// Inclusive ranges of accepted HTTP status codes (HTTP only; default 200-299).
    pub status: Vec<(u16, u16)>,
    pub max_latency: Option<Duration>,
    pub body_contains: Option<String>,
    /// JSON path (as written, `$.a.b[0]`) and the value it must equal.
    pub json_path: Option<(String, serde_json::Value)>,
    /// Command only; default 0.
    pub exit_code: Option<i32>,
    pub stdout_contains: Option<String>,
    /// Compiled at plan time; serialised as the pattern.
    #[serde(serialize_with = "serialize_regex")]
    pub stdout_matches: Option<regex::Regex>,
    /// Process only; default min 1.
    pub min_count: Option<u32>,
    pub max_count: Option<u32>,
    /// Prometheus only: every number the query returns must pass all of these (at least one).
    pub comparisons: Vec<Comparison>,
    /// Prometheus only: whether a result without any series passes.
    pub no_data: NoData,
}

/// One bound on a number. The threshold is finite: the YAML parser refuses `.nan` and `.inf`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Below(f64),
    AtMost(f64),
    Above(f64),
    AtLeast(f64),
    Equals(f64),
}

impl Comparison {
    /// NaN never holds: IEEE comparisons with NaN are all false, which is what a probe wants
    /// (a 0/0 error ratio says nothing about health, so it must not pass).
    pub fn holds(self, value: f64) -> bool {
        match self {
            Comparison::Below(bound) => value < bound,
            Comparison::AtMost(bound) => value <= bound,
            Comparison::Above(bound) => value > bound,
            Comparison::AtLeast(bound) => value >= bound,
            Comparison::Equals(bound) => value == bound,
        }
    }

    pub fn operator(self) -> &'static str {
        match self {
            Comparison::Below(_) => "<",
            Comparison::AtMost(_) => "<=",
            Comparison::Above(_) => ">",
            Comparison::AtLeast(_) => ">=",
            Comparison::Equals(_) => "==",
        }
    }

    pub fn bound(self) -> f64 {
        match self {
            Comparison::Below(bound)
            | Comparison::AtMost(bound)
            | Comparison::Above(bound)
            | Comparison::AtLeast(bound)
            | Comparison::Equals(bound) => bound,
        }
    }
}

/// `< 0.01`
impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.operator(), self.bound())
    }
}

fn serialize_regex<S: serde::Serializer>(
    re: &Option<regex::Regex>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match re {
        Some(re) => s.serialize_some(re.as_str()),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WindowSloSpec {
    pub window: Duration,
    /// 0.0..=1.0
    pub success_ratio: Option<f64>,
    /// (percentile 0..100, bound)
    pub latency: Option<(f64, Duration)>,
    pub min_samples: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandSpec {
    pub name: String,
    /// argv[0] already resolved (`faultline` → this binary).
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub background: bool,
    pub timeout: Duration,
}

impl Plan {
    /// Earliest start of every fault (offset from T0, in plan order), taking `at`, `after`
    /// and `delay` into account and assuming injections take no time. `None` for a fault
    /// caught in an `after` cycle (validation rejects those).
    pub fn earliest_starts(&self) -> Vec<Option<Duration>> {
        let inputs: Vec<ScheduleInput<'_>> = self
            .faults
            .iter()
            .map(|f| ScheduleInput {
                id: &f.id,
                at: f.at,
                after: f.after.iter().map(String::as_str).collect(),
                delay: f.delay,
            })
            .collect();
        earliest_starts(&inputs)
    }
}

/// What the schedule of one fault depends on.
pub struct ScheduleInput<'a> {
    pub id: &'a str,
    pub at: Duration,
    pub after: Vec<&'a str>,
    pub delay: Duration,
}

/// A fault starts at the later of `at` and (its last dependency's start + `delay`) — the
/// rule the engine's scheduler follows. `None` for faults in a cycle or depending on an
/// unknown fault. Shared with validation, which runs before a `Plan` exists.
pub fn earliest_starts(faults: &[ScheduleInput<'_>]) -> Vec<Option<Duration>> {
    fn visit(
        index: usize,
        faults: &[ScheduleInput<'_>],
        memo: &mut Vec<Option<Option<Duration>>>,
        visiting: &mut Vec<bool>,
    ) -> Option<Duration> {
        if let Some(known) = memo[index] {
            return known;
        }
        if visiting[index] {
            return None;
        }
        visiting[index] = true;
        let fault = &faults[index];
        let mut start = Some(fault.at);
        for dep in &fault.after {
            let dep_start = faults
                .iter()
                .position(|f| f.id == *dep)
                .and_then(|d| visit(d, faults, memo, visiting));
            start = start.zip(dep_start).map(|(s, d)| s.max(d + fault.delay));
        }
        visiting[index] = false;
        memo[index] = Some(start);
        start
    }
    let mut memo = vec![None; faults.len()];
    let mut visiting = vec![false; faults.len()];
    (0..faults.len())
        .map(|i| visit(i, faults, &mut memo, &mut visiting))
        .collect()
}
