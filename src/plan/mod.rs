//! Stage two: an [`Experiment`](crate::experiment::Experiment) checked and turned into a
//! [`Plan`] — references resolved, defaults applied, expectations compiled, durations absolute.
//! `run` executes only a `Plan`; `plan` prints one. Building a plan touches nothing on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::experiment::model::{Experiment, FaultKind, NoData};
use crate::experiment::{Diagnostics, Overrides, Source};
use crate::fault::network::NetworkTarget;
use crate::net::Protected;
use crate::sys::proc::CompiledSelector;

pub mod compile;
pub mod jsonpath;
pub mod schema;

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
    /// How long the checks before injecting may take ([`compile::DEFAULT_CHECK_TIMEOUT`]).
    pub check_timeout: Duration,
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

impl FaultSpec {
    /// The live fault this entry describes, built by its kind's module.
    pub fn build(
        &self,
        plan: &Plan,
        shared: &crate::fault::RunShared,
    ) -> Box<dyn crate::fault::Fault> {
        let target_name = self.target.as_deref().unwrap_or_default();
        let target = plan.targets.get(target_name);
        let protected = if self.kind.is_network() {
            plan.protected_flows()
        } else {
            Vec::new()
        };
        self.action.build(&crate::fault::BuildContext {
            fault_id: &self.id,
            target_name,
            process: match target {
                Some(TargetSpec::Process(selector)) => Some(selector),
                _ => None,
            },
            network: match target {
                Some(TargetSpec::Network(selector)) => Some(selector),
                _ => None,
            },
            protected: &protected,
            shared,
        })
    }
}

pub use crate::fault::{DelayBackend, FaultAction, NetworkAction};

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
        // Boxed: a selector is several times the size of the other probes' fields.
        selector: Box<CompiledSelector>,
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
    /// Flows no network fault may touch unless its target turns lockout protection off: the
    /// operator's SSH session and every endpoint this experiment's probes talk to (so the
    /// experiment can still see — and abort — what it breaks).
    pub fn protected_flows(&self) -> Vec<Protected> {
        let mut flows = Vec::new();
        if let Some(ssh) = std::env::var_os("SSH_CONNECTION") {
            flows.extend(crate::fault::network::parse_ssh_connection(
                &ssh.to_string_lossy(),
            ));
        }
        for (name, probe) in &self.probes {
            let endpoint = match &probe.kind {
                ProbeKind::Http { url, .. } | ProbeKind::Prometheus { url, .. } => {
                    reqwest::Url::parse(url).ok().and_then(|u| {
                        let port = u.port_or_known_default()?;
                        Some(format!(
                            "{}:{port}",
                            u.host_str()?.trim_start_matches('[').trim_end_matches(']')
                        ))
                    })
                }
                ProbeKind::Tcp { address } => Some(address.clone()),
                ProbeKind::Command { .. } | ProbeKind::Process { .. } => None,
            };
            let Some(endpoint) = endpoint else { continue };
            for addr in crate::fault::network::socket_addrs(&endpoint) {
                flows.push(Protected {
                    addr: addr.ip(),
                    remote_port: Some(addr.port()),
                    local_port: None,
                    reason: format!("probe {name}"),
                });
            }
        }
        flows.dedup();
        flows
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Direction, Endpoint, PortRange};

    /// The network target `traffic` of an experiment whose targets section is `targets`,
    /// compiled as `run` compiles it.
    fn compiled_target(targets: &str) -> NetworkTarget {
        let source = crate::experiment::Source {
            path: "test.yaml".into(),
            text: format!(
                "apiVersion: faultline/v1\nmetadata: {{name: t}}\nmax_duration: 1m\ntargets: {targets}\n\
                 faults: [{{id: f, kind: network-loss, target: traffic, params: {{probability: 10%}}, duration: 1s}}]\n"
            ),
        };
        let plan = plan_source(&source, &crate::experiment::Overrides::none()).expect("compiles");
        match plan.targets.get("traffic") {
            Some(TargetSpec::Network(target)) => target.clone(),
            other => panic!("not a network target: {other:?}"),
        }
    }

    #[test]
    fn selectors_resolve_addresses_ports_and_protection() {
        let target = compiled_target(
            "{traffic: {network: {remote: [10.0.0.0/8, localhost, '::1'], remote_ports: [5432, '8000-8100'], direction: both, protocol: tcp}}}",
        );
        assert_eq!(
            target.remote_ports,
            vec![
                PortRange { lo: 5432, hi: 5432 },
                PortRange { lo: 8000, hi: 8100 }
            ],
            "ports are parsed when the plan is compiled"
        );
        assert_eq!(target.remote[1], Endpoint::Host("localhost".into()));
        let guard =
            crate::fault::network::parse_ssh_connection("192.0.2.10 51234 192.0.2.1 22").unwrap();
        let t = crate::fault::network::resolve(&target, std::slice::from_ref(&guard)).unwrap();
        assert_eq!(t.direction, Direction::Both);
        assert!(t.remote.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!(
            t.remote.contains(&"127.0.0.1".parse().unwrap()),
            "localhost was looked up: {:?}",
            t.remote
        );
        assert!(t.remote.contains(&"::1".parse().unwrap()));
        assert_eq!(t.remote_ports, target.remote_ports);
        assert_eq!(t.protected, vec![guard]);

        let unprotected = compiled_target(
            "{traffic: {network: {remote: [10.0.0.1], lockout_protection: false}}}",
        );
        assert!(
            crate::fault::network::resolve(
                &unprotected,
                &[
                    crate::fault::network::parse_ssh_connection("192.0.2.10 1 192.0.2.1 22")
                        .unwrap()
                ]
            )
            .unwrap()
            .protected
            .is_empty()
        );
    }
}
