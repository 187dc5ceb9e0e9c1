//! The experiment file format (`apiVersion: faultline/v1`), exactly as written by the user.
//!
//! Every struct denies unknown keys. Values that semantic checks must point at are wrapped
//! in [`Sp`] so errors can name their line and column. Nothing here touches the host.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::spanned::Sp;

pub const API_VERSION: &str = "faultline/v1";

/// One chaos experiment: what to check, what to break, and how to decide whether it went well.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Must be `faultline/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: Sp<String>,
    pub metadata: Metadata,
    /// Named values referenced as `${vars.NAME}` anywhere in the file (substituted in the text
    /// before it is parsed), each overridable with `--var NAME=VALUE`. After parsing this holds
    /// the effective values, overrides applied, so the journal records what actually ran.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Named secrets, read when a run starts and used as `${secret.NAME}` in probe URLs,
    /// headers and command env; their values are written out nowhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Sp<SecretDef>>,
    /// Named things faults act on.
    #[serde(default)]
    pub targets: BTreeMap<String, Sp<Target>>,
    /// Named, reusable SLO checks.
    #[serde(default)]
    pub probes: BTreeMap<String, Sp<ProbeDef>>,
    #[serde(default)]
    pub steady_state: SteadyState,
    /// The faults and when they start.
    #[serde(default)]
    pub faults: Vec<Sp<FaultDef>>,
    #[serde(default)]
    pub abort: AbortPolicy,
    /// Hard cap from T0: when reached, every fault is reverted and the run ends as aborted.
    pub max_duration: Sp<Dur>,
    /// Commands that bring up the system under test, run before the `before` gate.
    #[serde(default)]
    pub setup: Vec<Sp<Command>>,
    /// Commands run at the very end, after the `after` checks, whatever the outcome.
    #[serde(default)]
    pub cleanup: Vec<Sp<Command>>,
}

/// Where a secret's value comes from: exactly one of `env` and `file`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    /// An environment variable of the `faultline run` process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Sp<String>>,
    /// A file, read without its final newline (`/run/secrets/api-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Sp<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: Sp<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Targets

/// A named target. Exactly one kind key (today: `process`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSelector>,
}

/// Which traffic a network fault acts on. Every filter that is given must match; an empty
/// list means "any".
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSelector {
    /// Act inside this network namespace (`/run/netns/NAME`, as made by `ip netns add`);
    /// default: faultline's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<Sp<String>>,
    /// Act inside this container's network namespace (its `eth0`, so only its traffic): a
    /// name, an ID of 12 or more characters, or a label as `key=value` that one running
    /// container has. Asked of the runtime's API when the fault is prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Sp<String>>,
    /// The runtime to ask about `container`: `docker` or `podman`; default: the first whose
    /// API socket exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Sp<crate::sys::container::Runtime>>,
    /// Interfaces; default: every interface (filters) or every non-loopback interface (shaping).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Sp<String>>,
    /// `egress` (default), `ingress` or `both`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Sp<crate::net::Direction>>,
    /// `all` (default), `tcp`, `udp` or `icmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Sp<crate::net::Protocol>>,
    /// The other end of the flows: IP addresses, CIDR blocks (IPv4 or IPv6) or host names
    /// (looked up when the fault is planned; `faultline plan` shows the addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<Sp<String>>,
    /// Ports on the other end: `5432`, `"8000-8100"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ports: Vec<Sp<PortSpec>>,
    /// This end's addresses (rarely needed: a host with several addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<Sp<String>>,
    /// Ports on this end (a server's listening port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_ports: Vec<Sp<PortSpec>>,
    /// Only the traffic of processes in this cgroup (a v2 path such as
    /// `/system.slice/app.service`; egress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Sp<String>>,
    /// Leave the operator's SSH session (`SSH_CONNECTION`) and the endpoints of this
    /// experiment's probes untouched (default true). Set false only when the fault must hit them.
    #[serde(default = "yes", deserialize_with = "boolean")]
    pub lockout_protection: bool,
}

/// A port or a range: `5432` or `"8000-8100"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u32),
    Text(String),
}

/// Which processes a target means. The filters that are given must all match; then
/// `exclude` removes matches, and `count`/`percent` (optionally `random`) pick among the rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSelector {
    /// An exact PID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A file holding a PID (read each time the target is resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<String>,
    /// Exact process name (`/proc/PID/comm`, at most 15 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Regular expression searched in the full command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Sp<String>>,
    /// Cgroup path as shown in `/proc/PID/cgroup` (for example `/system.slice/nginx.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Only the processes of a container: its name, an ID prefix, or a label as `key=value`
    /// (`com.docker.compose.service=web` selects a compose service's containers). Asked of
    /// the runtime's API each time the target is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Sp<String>>,
    /// The runtime to ask about `container`: `docker` or `podman`; default: the first whose
    /// API socket exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Sp<crate::sys::container::Runtime>>,
    /// Owner's real user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Matches to leave alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<ProcessExclude>,
    /// Pick at most this many of the matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Sp<u32>>,
    /// Pick this share of the matches (rounded up, at least one when any match), 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Sp<u32>>,
    /// Pick at random instead of oldest first.
    #[serde(default, deserialize_with = "boolean")]
    pub random: bool,
    /// Seed for `random`, for repeatable picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Allow PID 1, faultline itself and its ancestors. They are refused otherwise.
    #[serde(default, deserialize_with = "boolean")]
    pub force: bool,
}

impl From<&ProcessSelector> for crate::sys::proc::Selector {
    fn from(s: &ProcessSelector) -> Self {
        crate::sys::proc::Selector {
            pid: s.pid,
            pidfile: s.pidfile.clone(),
            name: s.name.clone(),
            cmdline: s.cmdline.as_deref().cloned(),
            cgroup: s.cgroup.clone(),
            container: s.container.as_deref().cloned(),
            runtime: s.runtime.as_deref().copied(),
            uid: s.uid,
            exclude: s.exclude.as_ref().map(|e| crate::sys::proc::Exclude {
                pids: e.pids.clone(),
                name: e.name.clone(),
                cmdline: e.cmdline.as_deref().cloned(),
            }),
            count: s.count.as_deref().copied(),
            percent: s.percent.as_deref().copied(),
            random: s.random,
            seed: s.seed,
            force: s.force,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessExclude {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Sp<String>>,
}

// ---------------------------------------------------------------------------------------------
// Probes

/// A named SLO check: one kind key (`http`, `tcp`, `command`, `process`, `prometheus`) plus
/// how to judge it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProbe>,
    /// What a passing sample looks like. Defaults per kind: HTTP 2xx, TCP connects,
    /// command exits 0, process count at least 1; a Prometheus probe names its comparison.
    #[serde(default)]
    pub expect: Expect,
    /// Time between samples (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Sp<Dur>>,
    /// A sample that takes longer fails (default 2s, and never longer than the interval allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Sp<Dur>>,
    /// Consecutive failed samples before the probe counts as failing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<Sp<u32>>,
    /// An SLO over a sliding window of samples, checked in addition to the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Sp<WindowSlo>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub url: Sp<String>,
    /// GET unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// `host:port`, `[v6]:port`.
    pub address: Sp<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    /// Program and arguments, run directly (never through a shell).
    pub argv: Sp<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessProbe {
    /// Count the processes of this named target...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Sp<String>>,
    /// ...or of this inline selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<ProcessSelector>,
}

/// An instant query against a Prometheus server's HTTP API; every number it returns is judged.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusProbe {
    /// The server's base URL (`http://127.0.0.1:9090`, or with its route prefix:
    /// `https://monitoring.internal/prometheus`); faultline adds `/api/v1/query`.
    pub url: Sp<String>,
    /// PromQL, evaluated at the moment of each sample.
    pub query: Sp<String>,
    /// Sent with every query (for example `Authorization`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Expectations for one sample. Only the keys that fit the probe's kind may be given.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// HTTP status: a code (`200`), a range (`"200-299"`), or a list of either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Sp<StatusSet>>,
    /// HTTP/TCP/Prometheus: the sample fails when it takes longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<Sp<Dur>>,
    /// HTTP: the body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// HTTP: the body is JSON and the value at `path` (`$.a.b[0]`) equals `equals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<Sp<JsonPathExpect>>,
    /// Command: expected exit code (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<Sp<i32>>,
    /// Command: stdout must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_contains: Option<String>,
    /// Command: stdout must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_matches: Option<Sp<String>>,
    /// Process: at least this many live matches (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<Sp<u32>>,
    /// Process: at most this many live matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<Sp<u32>>,
    /// Prometheus: every value is below this (`<`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Sp<f64>>,
    /// Prometheus: every value is at most this (`<=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<Sp<f64>>,
    /// Prometheus: every value is above this (`>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Sp<f64>>,
    /// Prometheus: every value is at least this (`>=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<Sp<f64>>,
    /// Prometheus: every value equals this (`==`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Sp<f64>>,
    /// Prometheus: what a result without any series means: `fail` (default) or `pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data: Option<Sp<NoData>>,
}

/// What a Prometheus query that returns no series means for the sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// The sample fails: a missing metric (a target no longer scraped, a typo in a label)
    /// must not look healthy.
    #[default]
    Fail,
    /// The sample passes: for queries that return series only when something is wrong
    /// (`rate(errors_total[1m]) > 0`).
    Pass,
}

/// `200`, `"200-299"`, or a list such as `[200, "300-399"]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusSet {
    One(u16),
    Range(String),
    List(Vec<StatusItem>),
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusItem {
    Code(u16),
    Range(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonPathExpect {
    pub path: String,
    /// Any YAML/JSON value; compared for equality with the value found.
    pub equals: serde_json::Value,
}

/// A sliding-window SLO over the probe's samples.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSlo {
    /// How far back the window reaches.
    pub window: Sp<Dur>,
    /// The share of samples that must pass, 0.0 to 1.0 (for example 0.99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_ratio: Option<Sp<f64>>,
    /// Latency bound on a percentile of the window's samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Sp<LatencySlo>>,
    /// The window is not judged until it holds this many samples (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<Sp<u32>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySlo {
    /// Percentile, for example 99 or 99.9.
    pub percentile: Sp<f64>,
    /// That percentile must stay below this.
    pub below: Sp<Dur>,
}

// ---------------------------------------------------------------------------------------------
// Steady state

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SteadyState {
    /// The gate: must pass before any fault is injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<BeforeGate>,
    /// Checked continuously from T0 until the last fault ends; a failing probe aborts the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during: Option<DuringChecks>,
    /// Recovery: must pass after every fault is reverted, within `within`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<AfterChecks>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BeforeGate {
    pub probes: Vec<Sp<String>>,
    /// Keep retrying (at each probe's interval) until every probe passes, for at most this long.
    /// Without it the gate gets a single try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<Sp<Dur>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DuringChecks {
    pub probes: Vec<Sp<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AfterChecks {
    pub probes: Vec<Sp<String>>,
    /// How long recovery may take (default 30s). Probes are retried at their interval until all pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Sp<Dur>>,
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Send a signal (default SIGKILL) to the target's processes.
    ProcessKill,
    /// SIGSTOP the target's processes for the duration; SIGCONT on revert.
    ProcessStop,
    /// Delay the target's packets (`delay`, optional `jitter`, `distribution`, `correlation`).
    NetworkDelay,
    /// Drop a share of the target's packets (`probability`).
    NetworkLoss,
    /// Drop every packet of the target, or reject it (`mode: reject`: TCP reset / ICMP).
    NetworkPartition,
    /// Cap the target's throughput (`rate`, optional `burst`).
    NetworkBandwidth,
    /// Duplicate a share of packets (netem only).
    NetworkDuplicate,
    /// Corrupt a share of packets (netem only).
    NetworkCorrupt,
    /// Reorder a share of packets (netem only; `probability`, `delay`, optional `gap`).
    NetworkReorder,
    /// Burn CPU on the host: `load` per core, on `cores`, `mode: added|total`, `ramp`.
    CpuPressure,
    /// Throttle a process target to a CPU `quota` (cgroup cpu.max / cfs_quota_us).
    CpuLimit,
    /// Allocate and keep resident `size` of memory (bytes or % of RAM), `ramp`, `keep_free`.
    MemoryPressure,
    /// Read/write load on `path`: `mode`, `block_size`, `throughput` or `iops` (default: max).
    DiskIoPressure,
    /// Throttle a process target's I/O on the device holding `path`.
    DiskIoLimit,
    /// Fill the filesystem holding `path` (`size`: bytes to add or % in use, or `leave_free`).
    DiskFill,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ProcessKill => "process-kill",
            FaultKind::ProcessStop => "process-stop",
            FaultKind::NetworkDelay => "network-delay",
            FaultKind::NetworkLoss => "network-loss",
            FaultKind::NetworkPartition => "network-partition",
            FaultKind::NetworkBandwidth => "network-bandwidth",
            FaultKind::NetworkDuplicate => "network-duplicate",
            FaultKind::NetworkCorrupt => "network-corrupt",
            FaultKind::NetworkReorder => "network-reorder",
            FaultKind::CpuPressure => "cpu-pressure",
            FaultKind::CpuLimit => "cpu-limit",
            FaultKind::MemoryPressure => "memory-pressure",
            FaultKind::DiskIoPressure => "disk-io-pressure",
            FaultKind::DiskIoLimit => "disk-io-limit",
            FaultKind::DiskFill => "disk-fill",
        }
    }

    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::NetworkDelay
                | FaultKind::NetworkLoss
                | FaultKind::NetworkPartition
                | FaultKind::NetworkBandwidth
                | FaultKind::NetworkDuplicate
                | FaultKind::NetworkCorrupt
                | FaultKind::NetworkReorder
        )
    }

    /// Host-wide pressure faults act on the host, not on a target.
    pub fn takes_target(self) -> bool {
        !matches!(
            self,
            FaultKind::CpuPressure
                | FaultKind::MemoryPressure
                | FaultKind::DiskIoPressure
                | FaultKind::DiskFill
        )
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDef {
    /// Unique within the experiment; used by `after` and in reports.
    pub id: Sp<String>,
    pub kind: Sp<FaultKind>,
    /// Name of an entry in `targets` (process and network faults, `cpu-limit`,
    /// `disk-io-limit`); host-wide pressure faults take none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Sp<String>>,
    #[serde(default)]
    pub params: Sp<FaultParams>,
    /// Start offset from T0. With `after`, the fault starts at the later of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Sp<Dur>>,
    /// Start only once these faults have started (their injection succeeded)...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Sp<String>>,
    /// ...plus this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Sp<Dur>>,
    /// How long the fault stays injected. Required for faults that are reverted
    /// (`process-stop`) and for `repeat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Sp<Dur>>,
    /// `every 10s`: inject again at this period until `duration` is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Sp<Repeat>>,
}

/// Parameters of all fault kinds; each kind accepts only its own (checked by `validate`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultParams {
    /// `process-kill`: signal name or number (`SIGTERM`, `TERM`, `15`). Default SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Sp<SignalSpec>>,
    /// `network-delay`, `network-reorder`: how long packets are held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Sp<Dur>>,
    /// `network-delay`: spread around `delay` (± for uniform, the standard deviation for normal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Sp<Dur>>,
    /// `network-delay`: `uniform` (default) or `normal` jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Sp<JitterDistribution>>,
    /// `network-delay`, `network-loss`: how much each random draw follows the previous one
    /// (`25%`), as netem defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Sp<PercentSpec>>,
    /// `network-loss`, `network-duplicate`, `network-corrupt`, `network-reorder`: share of
    /// packets affected (`30%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Sp<PercentSpec>>,
    /// `network-partition`: `drop` (default; connections hang) or `reject` (TCP reset, ICMP
    /// port unreachable: connections fail at once). `cpu-pressure`: `added` (default; burn
    /// `load` on top of what runs) or `total` (top each core up to `load`).
    /// `disk-io-pressure`: `write` (default), `read` or `mixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Sp<String>>,
    /// `network-bandwidth`: the cap, in bits per second: `10mbit`, `500kbit`, `1gbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Sp<String>>,
    /// `network-bandwidth`: bucket size in bytes: `32kb`, `64kib`, `1mb` (default: enough for
    /// the rate at this kernel's timer frequency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Sp<String>>,
    /// `network-reorder`: reorder every Nth packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Sp<u32>>,
    /// `cpu-pressure`: load per core (`60%`). `cpu-limit`: quota in % of one CPU (`50%`; `150%`
    /// is one and a half CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Sp<PercentSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Sp<PercentSpec>>,
    /// `cpu-pressure`: how many cores (`2`) or which ones (`[0, 2]`); default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<Sp<CoresSpec>>,
    /// `cpu-pressure`, `memory-pressure`: reach the target gradually over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Sp<Dur>>,
    /// `memory-pressure`: `512MiB` or `50%` of RAM. `disk-fill`: bytes to add (`1GiB`) or the
    /// share of the filesystem in use to reach (`95%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Sp<String>>,
    /// `disk-fill`: fill until only this much is free (`100MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_free: Option<Sp<String>>,
    /// `memory-pressure`: never take the last this-much of available memory (default 256MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_free: Option<Sp<String>>,
    /// `disk-io-pressure`, `disk-fill`: a directory on the filesystem to act on.
    /// `disk-io-limit`: a path on the device to throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Sp<String>>,
    /// `disk-io-pressure`: bytes per request (`1MiB`, `4KiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<Sp<String>>,
    /// `disk-io-pressure`: target bytes per second (`50MiB`); default as fast as possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Sp<String>>,
    /// `disk-io-pressure`: target requests per second instead of `throughput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<Sp<u64>>,
    /// `disk-io-pressure`: worker threads (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Sp<u32>>,
    /// `disk-io-pressure` with `mode: mixed`: share of reads (default 50%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_share: Option<Sp<PercentSpec>>,
    /// `disk-io-limit`: caps in bytes per second (`10MiB`) and requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_throughput: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_throughput: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<Sp<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<Sp<u64>>,
    /// Network faults: force a backend (`netem` or `nfqueue` for delay) instead of the one
    /// faultline picks for this host (`auto`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Sp<BackendChoice>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JitterDistribution {
    Uniform,
    Normal,
}

/// `2` (that many cores) or `[0, 2]` (those cores).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CoresSpec {
    Count(u32),
    List(Vec<u32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    Auto,
    Netem,
    Nfqueue,
}

/// A percentage: `"30%"`, or a number from 0 to 100.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PercentSpec {
    Number(f64),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SignalSpec {
    Number(i32),
    Name(String),
}

/// `every 10s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Repeat {
    pub every: Dur,
}

impl std::str::FromStr for Repeat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let rest = text
            .trim()
            .strip_prefix("every")
            .ok_or_else(|| format!("`{text}` is not a repeat; write it like `every 10s`"))?;
        Ok(Repeat {
            every: rest.trim().parse()?,
        })
    }
}

impl<'de> Deserialize<'de> for Repeat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Repeat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("every {}", self.every))
    }
}

impl JsonSchema for Repeat {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Repeat".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`every <duration>`, for example `every 10s`.",
            "pattern": "^\\s*every\\s+\\S.*$",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Abort, setup, cleanup

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortPolicy {
    /// Abort (revert everything at once) when a `during` probe fails. Default true; when false
    /// a failing `during` probe makes the outcome `deviated` but the faults run their course.
    #[serde(default = "yes", deserialize_with = "boolean")]
    pub on_probe_failure: bool,
    /// Longest a single revert may take before the run counts as `revert_failed` (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_timeout: Option<Sp<Dur>>,
    /// Longest the checks before anything is injected may take (default 15s): a fault whose
    /// check has not answered by then (its target on a hung mount, a host far slower than
    /// usual) stops the run with nothing injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_timeout: Option<Sp<Dur>>,
}

/// `true` or `false`, unquoted. YAML 1.1's `yes`/`no`/`on`/`off` are refused by the parser
/// options; a quoted `"true"` is text, and text is never taken for a boolean here either:
/// `lockout_protection: "false"` should not quietly mean what it seems to.
fn boolean<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Strict;
    impl<'de> serde::de::Visitor<'de> for Strict {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<bool, E> {
            let word = text.to_ascii_lowercase();
            let meant = match word.as_str() {
                "true" | "y" | "yes" | "on" => "true",
                "false" | "n" | "no" | "off" => "false",
                _ => "true or false",
            };
            let why = match word.as_str() {
                "true" | "false" => "in quotes it is text",
                "y" | "yes" | "on" | "n" | "no" | "off" => {
                    "YAML 1.1 read it as a boolean, YAML 1.2 (and faultline) as text"
                }
                _ => "it is text",
            };
            Err(E::custom(format!(
                "`{text}` is not a boolean: {why}; write {meant}, without quotes"
            )))
        }
    }
    deserializer.deserialize_any(Strict)
}

fn yes() -> bool {
    true
}

impl Default for AbortPolicy {
    fn default() -> Self {
        AbortPolicy {
            on_probe_failure: true,
            revert_timeout: None,
            check_timeout: None,
        }
    }
}

/// A command run directly (argv, never a shell).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Shown in output and reports; defaults to the program name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Program and arguments. A program named `faultline` means this faultline binary.
    pub argv: Sp<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Setup only: leave it running in the background (a server under test); it is
    /// stopped (SIGTERM, then SIGKILL) after cleanup.
    #[serde(default, deserialize_with = "boolean")]
    pub background: bool,
    /// Longest the command may run (default 60s). Not applied to background commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Sp<Dur>>,
}

/// Selectors for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::ProcessSelector;

    pub fn by_name(name: &str) -> ProcessSelector {
        ProcessSelector {
            name: Some(name.into()),
            ..Default::default()
        }
    }
}
