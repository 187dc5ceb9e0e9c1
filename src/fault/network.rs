//! Network faults: delay, loss, partition, bandwidth (and netem's duplicate, corrupt,
//! reorder). This file resolves *which* traffic (host names, ports, lockout protection) and
//! picks the backend; `sys::iptables`, `sys::tc` and `sys::delayer` do the work.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Applied, Backend, BuildContext, Fault, FaultAction, FaultCause, FaultError, HostFacts,
    KindPlan, ModuleKind, Prepared, RevertRecipe, Reverted,
};
use crate::experiment::model::{
    BackendChoice, FaultDef, FaultKind, JitterDistribution, PercentSpec,
};
use crate::experiment::params::{ParamChecks, fraction, parse_bytes, parse_rate};
use crate::experiment::{Diagnostic, Sp};
use crate::fault::summary::dur;
pub use crate::host::DelayBackend;
use crate::host::{DelayRoute, HostCaps};
use crate::net::{Direction, Endpoint, IpNet, Netns, PortRange, Protected, Protocol, Traffic};
use crate::sys::container::Runtime;
use crate::sys::delayer::{self, DelaySpec, Delayer};
use crate::sys::iptables::{Action, CreatedTables, RuleSet};
use crate::sys::tc::legacy::LegacyTcInstall;
use crate::sys::tc::{self, NetemSpec, TcInstall, TcTrees};

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

/// One line describing a network fault's effect, for `plan`, the terminal and the journal.
fn effect_summary(effect: &NetworkAction) -> String {
    use NetworkAction::*;
    let pct = |f: f64| format!("{}%", (f * 10_000.0).round() / 100.0);
    match effect {
        Delay {
            delay,
            jitter,
            normal,
            correlation,
            backend,
        } => {
            let mut s = format!("delay {}", dur(*delay));
            if !jitter.is_zero() {
                s.push_str(&format!(
                    " ± {} {}",
                    dur(*jitter),
                    if *normal { "normal" } else { "uniform" }
                ));
            }
            if *correlation > 0.0 {
                s.push_str(&format!(", correlation {}", pct(*correlation)));
            }
            s.push_str(&format!(", backend {backend:?}").to_lowercase());
            s
        }
        Loss {
            probability,
            correlation,
        } if *correlation > 0.0 => {
            format!(
                "drop {} of packets, correlation {}",
                pct(*probability),
                pct(*correlation)
            )
        }
        Loss { probability, .. } => format!("drop {} of packets", pct(*probability)),
        Partition { reject: true } => "reject every packet (TCP reset / ICMP unreachable)".into(),
        Partition { reject: false } => "drop every packet".into(),
        Bandwidth {
            rate_bits_per_sec,
            burst_bytes,
        } => {
            let mut s = format!("cap at {} bit/s", rate_bits_per_sec);
            if let Some(b) = burst_bytes {
                s.push_str(&format!(", burst {b} bytes"));
            }
            s
        }
        Duplicate { probability } => format!("duplicate {} of packets", pct(*probability)),
        Corrupt { probability } => format!("corrupt {} of packets", pct(*probability)),
        Reorder {
            probability,
            delay,
            gap,
        } => format!(
            "reorder {} of packets (others delayed {}{})",
            pct(*probability),
            dur(*delay),
            gap.map(|g| format!(", gap {g}")).unwrap_or_default()
        ),
    }
}

// ---- the kinds: seven network faults, which share the traffic selection and backends ----

/// The network kinds, as the list in [`super::MODULE_KINDS`] registers them.
pub const NETWORK_DELAY: ModuleKind = network_kind(
    FaultKind::NetworkDelay,
    &["delay", "jitter", "distribution", "correlation", "backend"],
    delay_backend,
);
pub const NETWORK_LOSS: ModuleKind = network_kind(
    FaultKind::NetworkLoss,
    &["correlation", "probability"],
    iptables_backend,
);
pub const NETWORK_PARTITION: ModuleKind =
    network_kind(FaultKind::NetworkPartition, &["mode"], iptables_backend);
pub const NETWORK_BANDWIDTH: ModuleKind = network_kind(
    FaultKind::NetworkBandwidth,
    &["rate", "burst"],
    shaping_backend,
);
pub const NETWORK_DUPLICATE: ModuleKind =
    network_kind(FaultKind::NetworkDuplicate, &["probability"], netem_backend);
pub const NETWORK_CORRUPT: ModuleKind =
    network_kind(FaultKind::NetworkCorrupt, &["probability"], netem_backend);
pub const NETWORK_REORDER: ModuleKind = network_kind(
    FaultKind::NetworkReorder,
    &["delay", "probability", "gap"],
    netem_backend,
);

const fn network_kind(
    kind: FaultKind,
    keys: &'static [&'static str],
    backend: fn(&HostFacts<'_>) -> Backend,
) -> ModuleKind {
    ModuleKind {
        kind,
        keys,
        compile: |fault, checks| compile(fault, checks).map(FaultAction::Network),
        backend,
    }
}

/// Why netem cannot be used here, if it cannot.
fn netem(facts: &HostFacts<'_>) -> Result<(), String> {
    match (facts.host.tc.netem.reason(), facts.host.cap_net_admin) {
        (None, true) => Ok(()),
        (Some(why), _) => Err(why.to_string()),
        (None, false) => Err("needs CAP_NET_ADMIN".into()),
    }
}

fn delay_backend(facts: &HostFacts<'_>) -> Backend {
    let net_admin = facts.host.cap_net_admin;
    let nfqueue = facts.iptables.is_ok() && facts.nfqueue.is_ok();
    match facts.host.delay_route(DelayBackend::Auto) {
        Ok(DelayRoute::Netem) if net_admin => Backend::always("netem", "tc netem qdisc"),
        Ok(DelayRoute::Netem) => Backend::unavailable("netem: needs CAP_NET_ADMIN"),
        route => Backend {
            name: (matches!(route, Ok(DelayRoute::Nfqueue)) && nfqueue).then(|| "nfqueue".into()),
            detail: format!(
                "no netem ({}); NFQUEUE: iptables rules steer packets to faultline's delayer{}",
                netem(facts)
                    .err()
                    .unwrap_or_else(|| "needs CAP_NET_ADMIN".into()),
                if nfqueue {
                    ""
                } else {
                    ", which cannot run here (see iptables and nfqueue above)"
                }
            ),
        },
    }
}

fn iptables_backend(facts: &HostFacts<'_>) -> Backend {
    match &facts.iptables {
        Ok(()) => Backend::always("iptables", "rules in FAULTLINE-* chains"),
        Err(why) => Backend::unavailable(why.clone()),
    }
}

fn shaping_backend(facts: &HostFacts<'_>) -> Backend {
    let shaping = facts.host.can_shape() && facts.host.cap_net_admin;
    Backend {
        name: shaping.then(|| "tc tbf/htb".into()),
        detail: match (shaping, facts.host.can_shape_ingress()) {
            (true, true) => "egress on the interface, ingress through an IFB device".into(),
            (true, false) => "egress only (no IFB/ingress/mirred for ingress shaping)".into(),
            (false, _) => "needs tbf and htb qdiscs and CAP_NET_ADMIN".into(),
        },
    }
}

fn netem_backend(facts: &HostFacts<'_>) -> Backend {
    match netem(facts) {
        Ok(()) => Backend::always("netem", "tc netem qdisc"),
        Err(why) => Backend::unavailable(why),
    }
}

/// Check a network fault's `params` and compile them; `None` after reporting what is wrong.
pub fn compile(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<NetworkAction> {
    let id = fault.id.as_str();
    let kind = fault.kind.value;
    let p = &fault.params;
    if fault.duration.is_none() {
        checks.report(
            Diagnostic::at(
                fault.kind.pos,
                format!("fault `{id}` ({}) has no `duration`", kind.as_str()),
                "needs a duration",
            )
            .with_hint("add `duration: 30s`: the fault is reverted when it is over"),
        );
    }
    let required = |checker: &mut ParamChecks<'_>, key: &str, present: bool, example: &str| {
        if !present {
            checker.report(
                Diagnostic::at(
                    fault.kind.pos,
                    format!("fault `{id}` ({}) needs `params.{key}`", kind.as_str()),
                    format!("no {key}"),
                )
                .with_hint(format!("add `params: {{{key}: {example}}}`")),
            );
        }
        present
    };
    let mut ok = true;
    let mut share = |checker: &mut ParamChecks<'_>, spec: &Option<Sp<PercentSpec>>| -> f64 {
        match spec {
            None => 0.0,
            Some(spec) => match fraction(spec) {
                Ok(f) => f,
                Err(e) => {
                    checker.report(
                        Diagnostic::at(spec.pos, e, "not a percentage")
                            .with_hint("write it like `30%`"),
                    );
                    ok = false;
                    0.0
                }
            },
        }
    };
    let action = match kind {
        FaultKind::NetworkDelay => {
            if !required(checks, "delay", p.delay.is_some(), "100ms") {
                return None;
            }
            let delay = p.delay.as_ref().map_or(Duration::ZERO, |d| d.get());
            let jitter = p.jitter.as_ref().map_or(Duration::ZERO, |j| j.get());
            let normal = p
                .distribution
                .as_ref()
                .is_some_and(|d| d.value == JitterDistribution::Normal);
            if let (Some(j), false) = (&p.jitter, normal)
                && jitter > delay
            {
                checks.report(
                        Diagnostic::at(j.pos, format!("jitter {} is larger than the delay {}", j.value, dur(delay)), "negative delays")
                            .with_hint("uniform jitter spreads delays over delay ± jitter; keep jitter at most the delay"),
                    );
            }
            if let (Some(d), true) = (&p.distribution, p.jitter.is_none()) {
                checks.report(
                    Diagnostic::at(
                        d.pos,
                        "`distribution` without `jitter`",
                        "nothing to distribute",
                    )
                    .with_hint("add `jitter:`; the distribution shapes the spread around `delay`"),
                );
            }
            let correlation = share(checks, &p.correlation);
            let backend = match p.backend.as_ref().map(|b| b.value) {
                None | Some(BackendChoice::Auto) => DelayBackend::Auto,
                Some(BackendChoice::Netem) => DelayBackend::Netem,
                Some(BackendChoice::Nfqueue) => DelayBackend::Nfqueue,
            };
            NetworkAction::Delay {
                delay,
                jitter,
                normal,
                correlation,
                backend,
            }
        }
        FaultKind::NetworkLoss => {
            if !required(checks, "probability", p.probability.is_some(), "30%") {
                return None;
            }
            let probability = share(checks, &p.probability);
            let correlation = share(checks, &p.correlation);
            NetworkAction::Loss {
                probability,
                correlation,
            }
        }
        FaultKind::NetworkPartition => NetworkAction::Partition {
            reject: checks.mode(fault, &["drop", "reject"])? == "reject",
        },
        FaultKind::NetworkBandwidth => {
            if !required(checks, "rate", p.rate.is_some(), "10mbit") {
                return None;
            }
            let rate = p.rate.as_ref().and_then(|r| match parse_rate(r) {
                Ok(bits) => Some(bits),
                Err(e) => {
                    checks.report(
                        Diagnostic::at(r.pos, e, "not a rate")
                            .with_hint("rates are in bits per second: `10mbit`"),
                    );
                    None
                }
            });
            let burst = p.burst.as_ref().and_then(|b| match parse_bytes(b) {
                Ok(bytes) if bytes >= 1_500 => Some(bytes),
                Ok(bytes) => {
                    checks.report(
                        Diagnostic::at(b.pos, format!("burst of {bytes} bytes cannot hold one full-size packet"), "too small")
                            .with_hint("a burst must be at least one MTU (1500 bytes); leave it out for a sensible default"),
                    );
                    None
                }
                Err(e) => {
                    checks.report(Diagnostic::at(b.pos, e, "not a size").with_hint("write it like `32kb`"));
                    None
                }
            });
            NetworkAction::Bandwidth {
                rate_bits_per_sec: rate?,
                burst_bytes: burst,
            }
        }
        FaultKind::NetworkDuplicate | FaultKind::NetworkCorrupt => {
            if !required(checks, "probability", p.probability.is_some(), "1%") {
                return None;
            }
            let probability = share(checks, &p.probability);
            if kind == FaultKind::NetworkDuplicate {
                NetworkAction::Duplicate { probability }
            } else {
                NetworkAction::Corrupt { probability }
            }
        }
        FaultKind::NetworkReorder => {
            let has = required(checks, "probability", p.probability.is_some(), "25%")
                & required(checks, "delay", p.delay.is_some(), "10ms");
            if !has {
                return None;
            }
            NetworkAction::Reorder {
                probability: share(checks, &p.probability),
                delay: p.delay.as_ref().map_or(Duration::ZERO, |d| d.get()),
                gap: p.gap.as_ref().map(|g| g.value),
            }
        }
        _ => return None,
    };
    ok.then_some(action)
}

impl KindPlan for NetworkAction {
    fn summary(&self) -> String {
        effect_summary(self)
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        build(self, ctx)
    }
}

/// Build a network fault. Backends are chosen when it is prepared, from what this host has;
/// `shared` records the tc trees and iptables tables the run's faults share.
fn build(action: &NetworkAction, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
    Box::new(NetworkFault {
        target: ctx.target_name.to_string(),
        selector: ctx.network.cloned(),
        action: Some(action.clone()),
        protected: ctx.protected.to_vec(),
        trees: ctx.shared.tc_trees.clone(),
        tables: ctx.shared.iptables_tables.clone(),
    })
}

/// One step of a network injection, in the order it is applied (reverted in reverse).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum NetStep {
    /// An in-process NFQUEUE delayer holding packets until their due time. After a crash it
    /// is gone with the process (the rules' `--queue-bypass` lets traffic flow), so its
    /// revert is then a no-op.
    Delayer {
        queue: u16,
        netns: Option<Netns>,
        spec: DelaySpec,
    },
    /// iptables chains and rules, jumped to from INPUT/OUTPUT.
    Iptables { rules: RuleSet },
    /// This fault's part in faultline's tc tree on each interface (classes, qdiscs, filters;
    /// the tree itself, its ingress qdisc and IFB device when it is the last one on it).
    TcTree { install: TcInstall },
    /// A root qdisc of its own per interface, as faultline installed them before trees were
    /// shared: only in records written by an older faultline, reverted the old way.
    Tc { install: LegacyTcInstall },
}

/// Which of the kernel's network structures the reverts of `steps` touch, when they must
/// wait for each other's: tc trees and iptables rule sets are apart (each has its own lock in
/// `sys`), so the reverts of a tc fault and of an iptables fault run side by side. Reverts
/// that touch rule sets only (and a delayer) need no order at all: `sys::iptables` takes
/// them one at a time, and batches those of one namespace into one transaction.
pub fn shared_structure(steps: &[NetStep]) -> Option<&'static str> {
    let tc = steps
        .iter()
        .any(|s| matches!(s, NetStep::TcTree { .. } | NetStep::Tc { .. }));
    let iptables = steps
        .iter()
        .any(|s| matches!(s, NetStep::Iptables { .. } | NetStep::Delayer { .. }));
    match (tc, iptables) {
        (true, false) => Some("tc"),
        (false, true) => None,
        _ => Some("network"),
    }
}

impl NetStep {
    /// The network namespace the step acts in; `None` = faultline's own.
    fn netns(&self) -> Option<&Netns> {
        match self {
            NetStep::Delayer { netns, .. } => netns.as_ref(),
            NetStep::Iptables { rules } => rules.netns.as_ref(),
            NetStep::TcTree { install } => install.netns.as_ref(),
            NetStep::Tc { install } => install.netns.as_ref(),
        }
    }

    fn describe(&self) -> String {
        match self {
            NetStep::Delayer { queue, .. } => format!("NFQUEUE delayer on queue {queue}"),
            NetStep::Iptables { rules } => {
                let chains: Vec<&str> = rules.chains.iter().map(|c| c.name.as_str()).collect();
                format!("iptables chains {}", chains.join(", "))
            }
            NetStep::TcTree { install } => {
                let parts: Vec<String> = install.members.iter().map(|m| m.describe()).collect();
                format!("tc {}", parts.join(", "))
            }
            NetStep::Tc { install } => format!("tc qdiscs in {} step(s)", install.steps.len()),
        }
    }

    /// Install the step; a delayer it starts is returned for the caller to hold.
    fn apply(&self, trees: &TcTrees) -> Result<Option<Delayer>, FaultError> {
        match self {
            NetStep::Delayer { queue, netns, spec } => Ok(Some(delayer::start(
                *queue,
                spec.clone(),
                netns.as_ref(),
                EXPECTED_PPS,
            )?)),
            NetStep::Iptables { rules } => Ok(rules.apply().map(|()| None)?),
            NetStep::TcTree { install } => Ok(install.apply(trees).map(|()| None)?),
            NetStep::Tc { .. } => Err(FaultError::Failed(
                "an old-style tc record can only be reverted".into(),
            )),
        }
    }

    /// Undo the step; returns what it achieved while it was live (counters, statistics).
    /// `delayers` are the ones this process runs, when it applied the step.
    fn revert(&self, delayers: &mut Vec<Delayer>) -> Result<serde_json::Value, FaultError> {
        match self {
            NetStep::Iptables { rules } => {
                // Counters are read from the listing the removal starts from: they vanish with
                // the chains. Their absence (a crash took the chains already) is no error.
                let counters = rules.remove_counted()?;
                Ok(serde_json::to_value(counters).unwrap_or_default())
            }
            // Stopping releases every held packet at once; after a crash there is nothing to stop.
            NetStep::Delayer { queue, .. } => {
                let stopped = delayers
                    .iter()
                    .position(|d| d.queue() == *queue)
                    .map(|at| delayers.swap_remove(at).stop());
                Ok(serde_json::to_value(stopped).unwrap_or_default())
            }
            NetStep::TcTree { install } => {
                install.remove()?;
                Ok(serde_json::Value::Null)
            }
            NetStep::Tc { install } => {
                install.remove()?;
                Ok(serde_json::Value::Null)
            }
        }
    }
}

/// Undo every step, newest first; every step is attempted even when one fails. `delayers`
/// are what this process started for them (none after a crash).
pub fn revert_steps(steps: &[NetStep], mut delayers: Vec<Delayer>) -> Result<Reverted, FaultError> {
    // A namespace that is gone (its container stopped or was recreated, or `ip netns del`)
    // took every rule, qdisc and device the fault put in it: there is nothing left to
    // remove, and whatever now has the container's name is not touched.
    if let Some((namespace, why)) = steps.iter().find_map(|step| {
        let namespace = step.netns()?;
        crate::sys::netns::open(namespace)
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::NotFound)
            .map(|e| (namespace, e))
    }) {
        for delayer in delayers {
            delayer.stop();
        }
        return Ok(Reverted {
            summary: format!(
                "nothing to remove: network namespace {namespace} is gone ({why}), and the fault went with it"
            ),
            details: serde_json::json!([{ "namespace_gone": namespace.to_string(), "why": why.to_string() }]),
        });
    }
    let mut achieved = Vec::new();
    let mut failures = Vec::new();
    let mut steered = None;
    let mut delayed = None;
    for step in steps.iter().rev() {
        match step.revert(&mut delayers) {
            Ok(details) => {
                match step {
                    NetStep::Iptables { .. } => steered = details["action"]["packets"].as_u64(),
                    NetStep::Delayer { .. } => delayed = details["packets_seen"].as_u64(),
                    NetStep::TcTree { .. } | NetStep::Tc { .. } => {}
                }
                achieved.push(serde_json::json!({ "step": step.describe(), "achieved": details }));
            }
            Err(e) => failures.push(format!("{}: {e}", step.describe())),
        }
    }
    if !failures.is_empty() {
        return Err(FaultError::Failed(failures.join("; ")));
    }
    let mut summary = format!(
        "removed {}",
        steps
            .iter()
            .map(NetStep::describe)
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Packets the rules sent to the queue that the delayer never saw went through undelayed
    // (queue full, or no consumer: `--queue-bypass` and fail-open). Say how many.
    if let (Some(steered), Some(delayed)) = (steered, delayed) {
        let bypassed = steered.saturating_sub(delayed);
        summary.push_str(&format!(
            "; {delayed} packets delayed, {bypassed} bypassed the queue"
        ));
        achieved.push(serde_json::json!({
            "packets_steered": steered,
            "packets_delayed": delayed,
            "packets_bypassed": bypassed,
        }));
    }
    Ok(Reverted {
        summary,
        details: serde_json::Value::Array(achieved),
    })
}

pub fn describe_steps(steps: &[NetStep]) -> String {
    format!(
        "remove {}",
        steps
            .iter()
            .map(NetStep::describe)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

struct NetworkFault {
    target: String,
    selector: Option<NetworkTarget>,
    action: Option<NetworkAction>,
    protected: Vec<Protected>,
    trees: Arc<TcTrees>,
    tables: Arc<CreatedTables>,
}

/// A short id for names faultline creates (chains, queues, devices): unique per injection.
fn short_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl Fault for NetworkFault {
    /// Every problem found here is a property of the host or the experiment, not of the
    /// moment, so it is reported as `Unsupported` and stops the run before any injection.
    fn prepare(&self) -> Result<Prepared, FaultError> {
        self.checked_plan(&self.trees)
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        apply_steps(prepared, &self.trees)
    }

    /// Planned against a tree record of its own, so the check reserves no position on the
    /// run's trees.
    fn check(&self) -> Result<(), FaultError> {
        self.checked_plan(&TcTrees::default()).map(drop)
    }
}

impl NetworkFault {
    fn checked_plan(&self, trees: &TcTrees) -> Result<Prepared, FaultError> {
        if !HostCaps::get().cap_net_admin {
            return Err(FaultError::Permission(
                "network faults change rules, qdiscs and devices, which needs root (CAP_NET_ADMIN)"
                    .into(),
            ));
        }
        self.plan_injection(trees).map_err(|e| match e.cause() {
            FaultCause::Failed => FaultError::Unsupported(e.to_string()),
            _ => e,
        })
    }

    fn plan_injection(&self, trees: &TcTrees) -> Result<Prepared, FaultError> {
        let (Some(selector), Some(action)) = (&self.selector, &self.action) else {
            return Err(FaultError::Failed(format!(
                "target `{}` is not a network target",
                self.target
            )));
        };
        let traffic = resolve(selector, &self.protected)?;
        let id = short_id();
        let (steps, backend) = match action {
            NetworkAction::Partition { reject } => {
                let act = if *reject {
                    Action::Reject
                } else {
                    Action::Drop
                };
                (
                    vec![iptables_step(&traffic, act, &id, &self.tables)?],
                    "iptables",
                )
            }
            NetworkAction::Loss {
                probability,
                correlation,
            } if *correlation == 0.0 => (
                vec![iptables_step(
                    &traffic,
                    Action::Loss {
                        probability: *probability,
                    },
                    &id,
                    &self.tables,
                )?],
                "iptables",
            ),
            NetworkAction::Loss {
                probability,
                correlation,
            } => {
                require_netem("correlated loss")?;
                let spec = NetemSpec {
                    loss: Some(*probability),
                    loss_correlation: Some(*correlation),
                    ..NetemSpec::default()
                };
                (vec![netem_step(&traffic, &spec, trees)?], "netem")
            }
            NetworkAction::Delay {
                delay,
                jitter,
                normal,
                correlation,
                backend,
            } => {
                let route = HostCaps::get()
                    .delay_route(*backend)
                    .map_err(FaultError::Failed)?;
                if route == DelayRoute::Netem {
                    let spec = NetemSpec {
                        delay: Some(*delay),
                        jitter: (!jitter.is_zero()).then_some(*jitter),
                        correlation: (*correlation > 0.0).then_some(*correlation),
                        distribution: if *normal {
                            tc::Distribution::Normal
                        } else {
                            tc::Distribution::Uniform
                        },
                        ..NetemSpec::default()
                    };
                    (vec![netem_step(&traffic, &spec, trees)?], "netem")
                } else {
                    let netns = traffic.netns.clone();
                    let queue = delayer::free_queue_number(netns.as_ref())
                        .map_err(|e| FaultError::Failed(format!("no free NFQUEUE number: {e}")))?;
                    let spec = DelaySpec {
                        delay: *delay,
                        jitter: *jitter,
                        distribution: if *normal {
                            delayer::Distribution::Normal
                        } else {
                            delayer::Distribution::Uniform
                        },
                        correlation: *correlation,
                    };
                    let rules =
                        iptables_step(&traffic, Action::Queue { num: queue }, &id, &self.tables)?;
                    // The delayer binds the queue before the rules steer packets to it.
                    (
                        vec![NetStep::Delayer { queue, netns, spec }, rules],
                        "nfqueue",
                    )
                }
            }
            NetworkAction::Bandwidth {
                rate_bits_per_sec,
                burst_bytes,
            } => {
                let install =
                    TcInstall::bandwidth(&traffic, *rate_bits_per_sec, *burst_bytes, trees)?;
                (vec![NetStep::TcTree { install }], "tc")
            }
            NetworkAction::Duplicate { probability } => {
                require_netem("network-duplicate")?;
                let spec = NetemSpec {
                    duplicate: Some(*probability),
                    ..NetemSpec::default()
                };
                (vec![netem_step(&traffic, &spec, trees)?], "netem")
            }
            NetworkAction::Corrupt { probability } => {
                require_netem("network-corrupt")?;
                let spec = NetemSpec {
                    corrupt: Some(*probability),
                    ..NetemSpec::default()
                };
                (vec![netem_step(&traffic, &spec, trees)?], "netem")
            }
            NetworkAction::Reorder {
                probability,
                delay,
                gap,
            } => {
                require_netem("network-reorder")?;
                let spec = NetemSpec {
                    delay: Some(*delay),
                    reorder: Some(*probability),
                    reorder_gap: *gap,
                    ..NetemSpec::default()
                };
                (vec![netem_step(&traffic, &spec, trees)?], "netem")
            }
        };
        let summary = format!(
            "{} on target {} via {backend}",
            effect_summary(action),
            self.target
        );
        Ok(Prepared {
            summary,
            details: serde_json::json!({
                "backend": backend,
                "traffic": traffic,
                "steps": steps,
            }),
            revert: RevertRecipe::Network { steps },
        })
    }
}

fn apply_steps(prepared: &Prepared, trees: &TcTrees) -> Result<Applied, FaultError> {
    let RevertRecipe::Network { steps } = &prepared.revert else {
        return Err(FaultError::Failed("not a network injection".into()));
    };
    // On a failure the delayers started so far stop as they drop: the revert that follows
    // removes what the steps left, and packets still steered to a stopped queue bypass it.
    let mut delayers = Vec::new();
    for step in steps {
        delayers.extend(step.apply(trees)?);
    }
    Ok(Applied {
        summary: prepared.summary.clone(),
        details: serde_json::json!({ "applied": steps.iter().map(NetStep::describe).collect::<Vec<_>>() }),
        live: (!delayers.is_empty()).then_some(super::LiveHandle::Delayers(delayers)),
    })
}

/// Packets per second a delayer sizes its queue for (queue length = pps × delay × 2).
const EXPECTED_PPS: u32 = 20_000;

fn require_netem(what: &str) -> Result<(), FaultError> {
    HostCaps::get()
        .require_netem(what)
        .map_err(FaultError::Failed)
}

fn netem_step(traffic: &Traffic, spec: &NetemSpec, trees: &TcTrees) -> Result<NetStep, FaultError> {
    let install = TcInstall::netem(traffic, spec, trees)?;
    Ok(NetStep::TcTree { install })
}

fn iptables_step(
    traffic: &Traffic,
    action: Action,
    id: &str,
    tables: &CreatedTables,
) -> Result<NetStep, FaultError> {
    let rules = RuleSet::plan_shared(traffic, action, id, None, tables)?;
    Ok(NetStep::Iptables { rules })
}

/// A network target as the plan holds it: everything parsed, defaults filled in; only host
/// names are left to look up and a container's namespace (see [`Traffic`], what it becomes then).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NetworkTarget {
    /// A namespace `ip netns` named (`container` is looked up when the fault is prepared).
    pub netns: Option<Netns>,
    /// The container whose network namespace the fault acts in.
    pub container: Option<ContainerRef>,
    pub interfaces: Vec<String>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub remote: Vec<Endpoint>,
    pub local: Vec<Endpoint>,
    pub remote_ports: Vec<PortRange>,
    pub local_ports: Vec<PortRange>,
    pub cgroup: Option<String>,
    /// Leave the operator's SSH session and the probes' endpoints alone.
    pub lockout_protection: bool,
}

/// A container as a network target names it: a name, an ID of 12 or more characters, or a
/// label as `key=value` that one running container has.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerRef {
    pub reference: String,
    pub runtime: Option<Runtime>,
}

/// Look up the target's host names, and its container's network namespace: the traffic a
/// backend acts on.
pub fn resolve(target: &NetworkTarget, protected: &[Protected]) -> Result<Traffic, FaultError> {
    let netns = match &target.container {
        Some(container) => Some(container_netns(container)?),
        None => target.netns.clone(),
    };
    let addresses = |entries: &[Endpoint]| -> Result<Vec<IpNet>, FaultError> {
        let mut nets = Vec::new();
        for entry in entries {
            match entry {
                Endpoint::Net(net) => nets.push(*net),
                Endpoint::Host(host) => nets.extend(
                    lookup(host)
                        .map_err(FaultError::Failed)?
                        .into_iter()
                        .map(IpNet::host),
                ),
            }
        }
        nets.sort_by_key(|n| (n.addr, n.prefix));
        nets.dedup();
        Ok(nets)
    };
    Ok(Traffic {
        netns,
        interfaces: target.interfaces.clone(),
        direction: target.direction,
        protocol: target.protocol,
        remote: addresses(&target.remote)?,
        local: addresses(&target.local)?,
        remote_ports: target.remote_ports.clone(),
        local_ports: target.local_ports.clone(),
        cgroup: target.cgroup.clone(),
        protected: if target.lockout_protection {
            protected.to_vec()
        } else {
            Vec::new()
        },
    })
}

/// The network namespace of the one running container `container` names, pinned to its main
/// process. A container on the host's network (`--network host`) is refused: its namespace
/// is the host's, and a fault there would hit every service on the host.
fn container_netns(container: &ContainerRef) -> Result<Netns, FaultError> {
    let context = |message: String| format!("container `{}`: {message}", container.reference);
    let found = crate::sys::container::find(&container.reference, container.runtime)
        .map_err(|e| FaultError::of_cause(e.cause(), context(e.to_string())))?;
    let running: Vec<_> = found.iter().filter(|c| c.running && c.pid != 0).collect();
    let one = match running.as_slice() {
        [one] => *one,
        [] => {
            return Err(FaultError::NoTarget(context(
                "no running container (a network fault needs its namespace)".into(),
            )));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
            return Err(FaultError::Failed(context(format!(
                "{} running containers match ({}); a network fault acts in one namespace: name one container",
                many.len(),
                names.join(", ")
            ))));
        }
    };
    let owner = format!(
        "{} container {} ({})",
        one.runtime.as_str(),
        one.name,
        one.short_id()
    );
    let netns = crate::sys::netns::of_process(one.pid, &owner).map_err(|e| {
        FaultError::NoTarget(context(format!(
            "its process {} is gone ({e}); did it just stop?",
            one.pid
        )))
    })?;
    if let (Netns::Process(process), Ok(own)) = (&netns, crate::sys::netns::own_inode())
        && process.inode == own
    {
        return Err(FaultError::Unsupported(context(
            "it shares the host's network namespace (`--network host`): a fault there would hit every service on the host; select its traffic by port or `cgroup` instead".into(),
        )));
    }
    Ok(netns)
}

fn lookup(host: &str) -> Result<Vec<IpAddr>, String> {
    let found: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .map(|a| a.ip())
        .collect();
    if found.is_empty() {
        return Err(format!("`{host}` resolves to no address"));
    }
    Ok(found)
}

/// The addresses `host:port` (or `[v6]:port`) stands for, looked up when it is a name.
pub fn socket_addrs(endpoint: &str) -> Vec<SocketAddr> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return vec![addr];
    }
    // `host:port` with a bare IPv6 host (from a URL) or a host name.
    if let Some((host, port)) = endpoint.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (host.parse::<IpAddr>(), port.parse::<u16>())
    {
        return vec![SocketAddr::new(ip, port)];
    }
    endpoint
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// `SSH_CONNECTION` is "client_ip client_port server_ip server_port".
pub fn parse_ssh_connection(text: &str) -> Option<Protected> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [client, client_port, _server, server_port] = parts.as_slice() else {
        return None;
    };
    Some(Protected {
        addr: client.parse().ok()?,
        remote_port: client_port.parse().ok(),
        local_port: server_port.parse().ok(),
        reason: "the operator's SSH session (SSH_CONNECTION)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_connection_becomes_a_protected_flow() {
        let p = parse_ssh_connection("192.0.2.10 51234 192.0.2.1 22").unwrap();
        assert_eq!(p.addr, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!((p.remote_port, p.local_port), (Some(51234), Some(22)));
        assert!(parse_ssh_connection("garbage").is_none());
    }
}
