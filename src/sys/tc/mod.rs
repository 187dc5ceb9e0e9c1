//! The `tc` backend: netem (delay, jitter, loss, duplicate, corrupt, reorder) and bandwidth
//! caps (tbf/htb), egress on the interface and ingress through an IFB device.
//!
//! Everything one fault installs is a [`TcInstall`]: a serialisable list of steps computed
//! (read-only) before anything is touched, so the engine can write it to the state file first
//! and `recover` can undo it in a fresh process from that value alone.
//!
//! Safety rules this module enforces:
//! - faultline only ever replaces a *default* root qdisc (kernel-attached, handle `0:`), using
//!   `tc qdisc add` so the kernel itself refuses if someone attached their own meanwhile. A
//!   custom root qdisc or an existing ingress/clsact qdisc makes the install fail before
//!   anything changes: their filters and classes cannot be snapshot and rebuilt reliably.
//! - Removal deletes only qdiscs carrying faultline's handles (`fa17:`, `fa18:`), an ingress
//!   qdisc whose filters redirect only to faultline's IFB, and IFB devices named `flifb<id>-N`;
//!   then it checks `tc qdisc show dev X` is byte-for-byte what it was before.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::{Family, IpNet, PortRange, Protocol, Traffic};
use crate::sys::netns;

/// faultline's root qdisc handle on a shaped interface or IFB.
pub const ROOT_HANDLE: &str = "fa17:";
/// The leaf qdisc under the shaped htb class (netem when the selection narrows traffic).
pub const LEAF_HANDLE: &str = "fa18:";
/// IFB devices faultline creates start with this.
pub const IFB_PREFIX: &str = "flifb";
const SHAPED_CLASS: &str = "fa17:1";
/// htb sends packets classified to `MAJOR:0` straight through its direct queue, unshaped.
const DIRECT_FLOW: &str = "fa17:0";
/// Classifying to a class id on the ingress qdisc (no action) ends classification: the packet
/// continues untouched.
const INGRESS_PASS: &str = "ffff:1";
/// Worst common kernel tick rate assumption for burst sizing (this kernel: HZ=250).
const HZ: u64 = 250;
/// Ethernet header on top of the MTU: the largest frame a shaper must be able to pass.
const L2_HEADER: u64 = 14;
/// How long a rate cap may queue packets before dropping (tbf `latency`).
const SHAPER_LATENCY_MS: u64 = 50;
/// Rate of the pass-through htb class that carries netem: high enough not to shape.
const UNSHAPED_RATE: &str = "100gbit";
/// More u32 filters than this is a selection tc should not carry (each is tried per packet).
const MAX_FILTERS: usize = 64;

/// Filter priorities: one protocol per priority (the kernel requires it); protected flows
/// are checked before the selection.
const PRIO_PROTECTED_V4: u32 = 1;
const PRIO_PROTECTED_V6: u32 = 2;
const PRIO_SELECTED_V4: u32 = 3;
const PRIO_SELECTED_V6: u32 = 4;
const PRIO_SELECTED_ALL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The fault's parameters or selection cannot be expressed with tc.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{dev} has a custom root qdisc ({qdisc}); faultline will not replace it. Remove it, \
         pick another interface, or use direction: ingress"
    )]
    ForeignRoot { dev: String, qdisc: String },
    #[error(
        "{dev} already has an ingress qdisc ({qdisc}); faultline will not replace it. Remove \
         it or pick another interface"
    )]
    ForeignIngress { dev: String, qdisc: String },
    #[error("`{argv}` failed{place}: {stderr}{hint}")]
    Command {
        argv: String,
        /// ` in namespace NAME`, or empty.
        place: String,
        stderr: String,
        /// `; <what the user can do>`, or empty.
        hint: String,
    },
    #[error("could not run `{program}`: {error}; install iproute2 (`apt-get install iproute2`)")]
    Spawn { program: String, error: String },
    /// After removal, these things are still there (or the qdiscs differ from before).
    #[error("tc state not restored: {}", .0.join("; "))]
    NotRestored(Vec<String>),
    #[error("{cause}; undoing the partial install also failed: {undo}")]
    UndoFailed {
        cause: Box<TcError>,
        undo: Box<TcError>,
    },
}

/// Whether a kernel/tool feature works here, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Support {
    Available,
    Missing { reason: String },
}

impl Support {
    pub fn is_available(&self) -> bool {
        matches!(self, Support::Available)
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Support::Available => None,
            Support::Missing { reason } => Some(reason),
        }
    }
}

/// What `faultline doctor` reports about tc on this host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcCapabilities {
    pub netem: Support,
    pub tbf: Support,
    pub htb: Support,
    pub ingress: Support,
    pub clsact: Support,
    pub ifb: Support,
    pub u32: Support,
    pub mirred: Support,
}

/// Whether the kernel has `sch_netem`; probed once per process in a scratch namespace.
pub fn netem_support() -> Support {
    capabilities().netem
}

/// Probe every tc feature faultline uses, once per process, in a throwaway network namespace
/// (no real interface is touched; the namespace dies with the probing thread).
pub fn capabilities() -> TcCapabilities {
    static CACHE: OnceLock<TcCapabilities> = OnceLock::new();
    CACHE.get_or_init(probe_capabilities).clone()
}

fn probe_capabilities() -> TcCapabilities {
    let probed = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot create a scratch network namespace ({e}); run as root"))?;
        Ok::<_, String>(probe_in_scratch_namespace())
    })
    .join()
    .unwrap_or_else(|_| Err("the probing thread panicked".into()));
    probed.unwrap_or_else(|reason| {
        let missing = Support::Missing { reason };
        TcCapabilities {
            netem: missing.clone(),
            tbf: missing.clone(),
            htb: missing.clone(),
            ingress: missing.clone(),
            clsact: missing.clone(),
            ifb: missing.clone(),
            u32: missing.clone(),
            mirred: missing,
        }
    })
}

/// Runs on a thread that is alone in a fresh namespace, whose `lo` takes any qdisc.
fn probe_in_scratch_namespace() -> TcCapabilities {
    let support = |done: Result<String, TcError>| match done {
        Ok(_) => Support::Available,
        Err(e) => Support::Missing {
            reason: missing_reason(&e),
        },
    };
    let try_tc = |args: &[&str]| support(run(None, "tc", &strings(args)));
    let root_qdisc = |spec: &[&str]| {
        let mut args = vec!["qdisc", "add", "dev", "lo", "root"];
        args.extend_from_slice(spec);
        let support = try_tc(&args);
        let _ = run(None, "tc", &strings(&["qdisc", "del", "dev", "lo", "root"]));
        support
    };
    let netem = root_qdisc(&["netem", "delay", "1ms"]);
    let tbf = root_qdisc(&["tbf", "rate", "1mbit", "burst", "10kb", "latency", "50ms"]);
    let htb = root_qdisc(&["htb"]);
    let ifb = support(run(
        None,
        "ip",
        &strings(&["link", "add", "flifbprobe", "type", "ifb"]),
    ));
    let ingress = try_tc(&["qdisc", "add", "dev", "lo", "handle", "ffff:", "ingress"]);
    let (u32, mirred) = if ingress.is_available() {
        let u32 = try_tc(&[
            "filter", "add", "dev", "lo", "parent", "ffff:", "protocol", "all", "prio", "1", "u32",
            "match", "u32", "0", "0", "flowid", "ffff:1",
        ]);
        // Redirecting lo to itself is enough to load the action; no packet flows here.
        let mirred = try_tc(&[
            "filter", "add", "dev", "lo", "parent", "ffff:", "protocol", "all", "prio", "2", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "lo",
        ]);
        let _ = run(
            None,
            "tc",
            &strings(&["qdisc", "del", "dev", "lo", "ingress"]),
        );
        (u32, mirred)
    } else {
        let reason = "not checked: needs an ingress qdisc".to_string();
        (
            Support::Missing {
                reason: reason.clone(),
            },
            Support::Missing { reason },
        )
    };
    let clsact = try_tc(&["qdisc", "add", "dev", "lo", "clsact"]);
    let _ = run(
        None,
        "tc",
        &strings(&["qdisc", "del", "dev", "lo", "clsact"]),
    );
    let _ = run(None, "ip", &strings(&["link", "del", "flifbprobe"]));
    TcCapabilities {
        netem,
        tbf,
        htb,
        ingress,
        clsact,
        ifb,
        u32,
        mirred,
    }
}

/// Turn a failed probe command into the missing kernel option behind it.
fn missing_reason(error: &TcError) -> String {
    let TcError::Command { argv, stderr, .. } = error else {
        return error.to_string();
    };
    let config = if stderr.contains("Specified qdisc kind is unknown") {
        let kind = ["netem", "tbf", "htb", "clsact", "ingress"]
            .into_iter()
            .find(|k| argv.split(' ').any(|w| w == *k))
            .unwrap_or("?");
        let option = if kind == "clsact" { "ingress" } else { kind };
        format!(
            "kernel lacks sch_{kind} (CONFIG_NET_SCH_{})",
            option.to_uppercase()
        )
    } else if stderr.contains("TC classifier not found") {
        "kernel lacks cls_u32 (CONFIG_NET_CLS_U32)".into()
    } else if stderr.contains("Failed to load TC action module") {
        "kernel lacks act_mirred (CONFIG_NET_ACT_MIRRED)".into()
    } else if stderr.contains("Unknown device type") {
        "kernel lacks ifb (CONFIG_IFB)".into()
    } else {
        return error.to_string();
    };
    format!("{config}: `{argv}` said `{}`", first_line(stderr))
}

/// Delay distribution of the jitter. `Uniform` is netem's own default (no table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

/// One netem qdisc's parameters. Percentages are 0 to 100.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetemSpec {
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    /// Correlation of successive delays, percent.
    pub correlation: Option<f64>,
    pub distribution: Distribution,
    pub loss: Option<f64>,
    pub loss_correlation: Option<f64>,
    pub duplicate: Option<f64>,
    pub corrupt: Option<f64>,
    /// Percent of packets sent at once (needs a delay; the others wait the delay).
    pub reorder: Option<f64>,
    /// With `reorder`: reorder every Nth packet instead of randomly.
    pub reorder_gap: Option<u32>,
    pub rate_bits_per_sec: Option<u64>,
    /// Packets netem may hold (its default is 1000); needs ≥ packets/s × delay.
    pub limit: Option<u32>,
}

impl NetemSpec {
    pub fn validate(&self) -> Result<(), TcError> {
        let invalid = |m: &str| Err(TcError::Invalid(format!("netem: {m}")));
        let percents = [
            ("correlation", self.correlation),
            ("loss", self.loss),
            ("loss correlation", self.loss_correlation),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ];
        for (name, value) in percents {
            if let Some(p) = value
                && !(0.0..=100.0).contains(&p)
            {
                return invalid(&format!("{name} must be 0% to 100%, not {p}%"));
            }
        }
        if self.delay.is_none() {
            if self.jitter.is_some() {
                return invalid("jitter needs a delay");
            }
            if self.reorder.is_some() {
                return invalid("reorder needs a delay (the packets not reordered wait it)");
            }
        }
        if self.jitter.is_none() {
            if self.correlation.is_some() {
                return invalid("delay correlation needs a jitter");
            }
            if self.distribution != Distribution::Uniform {
                return invalid("a delay distribution needs a jitter");
            }
        }
        if self.loss.is_none() && self.loss_correlation.is_some() {
            return invalid("loss correlation needs a loss");
        }
        if self.reorder.is_none() && self.reorder_gap.is_some() {
            return invalid("reorder gap needs reorder");
        }
        if self.rate_bits_per_sec == Some(0) {
            return invalid("rate must be above 0");
        }
        let nothing = NetemSpec {
            limit: self.limit,
            ..NetemSpec::default()
        };
        if *self == nothing {
            return invalid("nothing to do: give a delay, loss, duplicate, corrupt or rate");
        }
        Ok(())
    }
}

/// The netem arguments for `spec` (after `netem`), in netem's documented order.
pub fn netem_args(spec: &NetemSpec) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(limit) = spec.limit {
        args.extend(["limit".into(), limit.to_string()]);
    }
    if let Some(delay) = spec.delay {
        args.extend(["delay".into(), tc_time(delay)]);
        if let Some(jitter) = spec.jitter {
            args.push(tc_time(jitter));
            if let Some(c) = spec.correlation {
                args.push(percent(c));
            }
            let table = match spec.distribution {
                Distribution::Uniform => None,
                Distribution::Normal => Some("normal"),
                Distribution::Pareto => Some("pareto"),
                Distribution::Paretonormal => Some("paretonormal"),
            };
            if let Some(table) = table {
                args.extend(["distribution".into(), table.into()]);
            }
        }
    }
    if let Some(loss) = spec.loss {
        args.extend(["loss".into(), percent(loss)]);
        if let Some(c) = spec.loss_correlation {
            args.push(percent(c));
        }
    }
    if let Some(p) = spec.duplicate {
        args.extend(["duplicate".into(), percent(p)]);
    }
    if let Some(p) = spec.corrupt {
        args.extend(["corrupt".into(), percent(p)]);
    }
    if let Some(p) = spec.reorder {
        args.extend(["reorder".into(), percent(p)]);
        if let Some(gap) = spec.reorder_gap {
            args.extend(["gap".into(), gap.to_string()]);
        }
    }
    if let Some(rate) = spec.rate_bits_per_sec {
        args.extend(["rate".into(), format!("{rate}bit")]);
    }
    args
}

/// tc's time syntax at microsecond resolution (netem's own resolution is finer, but nobody
/// asks for nanoseconds of delay).
fn tc_time(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

fn percent(p: f64) -> String {
    format!("{p}%")
}

/// The token bucket size for a rate cap: `max(ceil(rate_bytes_per_sec / HZ), MTU + 14)`.
/// The kernel refills buckets at most once per tick, so a bucket smaller than one tick's
/// worth of bytes cannot sustain the rate (HZ=250 is the common worst case; higher HZ needs
/// less); and a bucket smaller than one full frame would never pass that frame.
pub fn default_burst(rate_bits_per_sec: u64, mtu: u64) -> u64 {
    (rate_bits_per_sec / 8).div_ceil(HZ).max(mtu + L2_HEADER)
}

/// One change to the kernel's tc state, as faultline will make it and later undo it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum TcStep {
    /// `ip link add NAME type ifb` + up; undone by deleting the device.
    CreateIfb { name: String },
    /// faultline's root qdisc (handle `fa17:`) where the kernel's default one was. `before`
    /// is `tc qdisc show dev DEV` at planning time; undo deletes ours (the kernel reattaches
    /// its default) and checks the text is `before` again.
    RootQdisc {
        dev: String,
        tc: Vec<String>,
        before: String,
    },
    /// An ingress qdisc where there was none; it exists to redirect into `ifb`. Undone by
    /// deleting it while its filters redirect only to `ifb`.
    IngressQdisc {
        dev: String,
        ifb: String,
        tc: Vec<String>,
        before: String,
    },
    /// A class, leaf qdisc or filter inside one of the above (or on an IFB); it goes away
    /// with its parent.
    InTree { dev: String, tc: Vec<String> },
}

/// Everything one fault installs with tc, in the order it is installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcInstall {
    /// `/run/netns/NAME` to act in; `None` = faultline's own.
    pub netns: Option<String>,
    pub steps: Vec<TcStep>,
}

/// What sits on the shaped path: a netem qdisc, or a rate cap.
enum Shaper {
    Netem(Vec<String>),
    Rate {
        bits_per_sec: u64,
        burst: Option<u64>,
    },
}

impl TcInstall {
    /// netem on `traffic` (egress on its interfaces; ingress through an IFB per interface).
    /// Reads the current state (interfaces, qdiscs) but changes nothing.
    pub fn netem(traffic: &Traffic, spec: &NetemSpec, id: &str) -> Result<TcInstall, TcError> {
        spec.validate()?;
        plan(traffic, &Shaper::Netem(netem_args(spec)), id)
    }

    /// A bandwidth cap of `rate_bits_per_sec` on `traffic`; `burst_bytes` defaults to
    /// [`default_burst`]. Reads the current state but changes nothing.
    pub fn bandwidth(
        traffic: &Traffic,
        rate_bits_per_sec: u64,
        burst_bytes: Option<u64>,
        id: &str,
    ) -> Result<TcInstall, TcError> {
        if rate_bits_per_sec == 0 {
            return Err(TcError::Invalid(
                "bandwidth: the rate must be above 0".into(),
            ));
        }
        let shaper = Shaper::Rate {
            bits_per_sec: rate_bits_per_sec,
            burst: burst_bytes,
        };
        plan(traffic, &shaper, id)
    }

    /// IFB devices this install creates.
    pub fn ifbs(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                TcStep::CreateIfb { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Install every step in order; on failure undo what was done and return the cause.
    pub fn apply(&self) -> Result<(), TcError> {
        let ns = self.netns.as_deref();
        for step in &self.steps {
            let done = match step {
                TcStep::CreateIfb { name } => {
                    run(ns, "ip", &strings(&["link", "add", name, "type", "ifb"]))
                        .and_then(|_| run(ns, "ip", &strings(&["link", "set", "dev", name, "up"])))
                }
                TcStep::RootQdisc { tc, .. }
                | TcStep::IngressQdisc { tc, .. }
                | TcStep::InTree { tc, .. } => run(ns, "tc", tc),
            };
            if let Err(cause) = done {
                return match self.remove() {
                    Ok(()) => Err(cause),
                    Err(undo) => Err(TcError::UndoFailed {
                        cause: Box::new(cause),
                        undo: Box::new(undo),
                    }),
                };
            }
        }
        Ok(())
    }

    /// Undo everything this install may have created, in reverse order, whatever part of it
    /// exists (idempotent; works from the deserialised value after a crash), then verify.
    pub fn remove(&self) -> Result<(), TcError> {
        let ns = self.netns.as_deref();
        if let Some(name) = ns
            && !netns::path(name).exists()
        {
            // The namespace is gone, and everything inside it went with it.
            return Ok(());
        }
        let mut problems = Vec::new();
        for step in self.steps.iter().rev() {
            let undone = match step {
                TcStep::CreateIfb { name } => remove_ifb(ns, name),
                TcStep::RootQdisc { dev, .. } => remove_root(ns, dev),
                TcStep::IngressQdisc { dev, ifb, .. } => remove_ingress(ns, dev, ifb),
                TcStep::InTree { .. } => Ok(()),
            };
            if let Err(e) = undone {
                problems.push(e.to_string());
            }
        }
        problems.extend(self.still_present(ns));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TcError::NotRestored(problems))
        }
    }

    /// What remains of this install, and qdisc listings that differ from before it.
    fn still_present(&self, ns: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut checked = BTreeSet::new();
        for step in &self.steps {
            match step {
                TcStep::CreateIfb { name } => {
                    if link_exists(ns, name) {
                        problems.push(format!("IFB device {name} still exists"));
                    }
                }
                TcStep::RootQdisc { dev, before, .. }
                | TcStep::IngressQdisc { dev, before, .. } => {
                    if !checked.insert(dev.clone()) {
                        continue;
                    }
                    match qdisc_show(ns, dev) {
                        Ok(Some(now)) if now != *before => problems.push(format!(
                            "qdiscs on {dev} differ from before the fault: before `{}`, now `{}`",
                            before.trim(),
                            now.trim()
                        )),
                        Ok(_) => {}
                        Err(e) => problems.push(e.to_string()),
                    }
                }
                TcStep::InTree { .. } => {}
            }
        }
        problems
    }
}

fn remove_ifb(ns: Option<&str>, name: &str) -> Result<(), TcError> {
    if link_exists(ns, name) {
        run(ns, "ip", &strings(&["link", "del", "dev", name]))?;
    }
    Ok(())
}

fn remove_root(ns: Option<&str>, dev: &str) -> Result<(), TcError> {
    let Some(root) = first_qdisc(ns, dev, "root")? else {
        return Ok(());
    };
    if root.handle == ROOT_HANDLE {
        run(ns, "tc", &strings(&["qdisc", "del", "dev", dev, "root"]))?;
    }
    Ok(())
}

fn remove_ingress(ns: Option<&str>, dev: &str, ifb: &str) -> Result<(), TcError> {
    if first_qdisc(ns, dev, "ingress")?.is_none() {
        return Ok(());
    }
    let filters = run(
        ns,
        "tc",
        &strings(&["filter", "show", "dev", dev, "ingress"]),
    )?;
    let ours = format!("to device {ifb})");
    let foreign: Vec<&str> = filters
        .lines()
        .filter(|l| l.contains("action order") && !l.contains(&ours))
        .collect();
    if !foreign.is_empty() {
        return Err(TcError::NotRestored(vec![format!(
            "the ingress qdisc on {dev} has filters faultline did not add ({}); left in place",
            foreign.join(", ").trim()
        )]));
    }
    run(ns, "tc", &strings(&["qdisc", "del", "dev", dev, "ingress"]))?;
    Ok(())
}

/// faultline qdiscs and IFB devices present in `netns` (for `doctor` and `status`).
pub fn leftovers(netns: Option<&str>) -> Result<Vec<String>, TcError> {
    let mut found = Vec::new();
    for line in run(netns, "tc", &strings(&["qdisc", "show"]))?.lines() {
        let Some(q) = parse_qdisc_line(line) else {
            continue;
        };
        let dev = q.dev.as_deref().unwrap_or("?");
        if q.handle == ROOT_HANDLE || q.handle == LEAF_HANDLE {
            found.push(format!("qdisc {} {} on {dev}", q.kind, q.handle));
        } else if q.kind == "ingress" || q.kind == "clsact" {
            let filters = run(
                netns,
                "tc",
                &strings(&["filter", "show", "dev", dev, "ingress"]),
            )?;
            if filters.contains(&format!("to device {IFB_PREFIX}")) {
                found.push(format!(
                    "ingress qdisc on {dev} redirecting to a faultline IFB"
                ));
            }
        }
    }
    for link in links(netns)? {
        if link.name.starts_with(IFB_PREFIX) {
            found.push(format!("IFB device {}", link.name));
        }
    }
    Ok(found)
}

fn plan(traffic: &Traffic, shaper: &Shaper, id: &str) -> Result<TcInstall, TcError> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.is_empty() {
        return Err(TcError::Invalid(format!(
            "fault id `{id}` must be letters and digits (it names IFB devices)"
        )));
    }
    if traffic.cgroup.is_some() {
        return Err(TcError::Invalid(
            "tc cannot select traffic by cgroup; use the iptables/NFQUEUE backend".into(),
        ));
    }
    let ns = traffic.netns.as_deref();
    if let Some(name) = ns
        && !netns::path(name).exists()
    {
        return Err(TcError::Invalid(format!(
            "network namespace `{name}` does not exist (no {})",
            netns::path(name).display()
        )));
    }
    let devices = devices(traffic)?;
    let mut steps = Vec::new();
    if traffic.direction.egress() {
        let selection = selection_filters(traffic, true)?;
        let protected = protected_filters(traffic, true);
        for dev in &devices {
            steps.extend(egress_steps(ns, dev, shaper, &selection, &protected)?);
        }
    }
    if traffic.direction.ingress() {
        let selection = selection_filters(traffic, false)?;
        let protected = protected_filters(traffic, false);
        for (n, dev) in devices.iter().enumerate() {
            let ifb = format!("{IFB_PREFIX}{id}-{n}");
            if ifb.len() > 15 {
                return Err(TcError::Invalid(format!(
                    "fault id `{id}` is too long: the IFB name `{ifb}` exceeds 15 characters"
                )));
            }
            steps.extend(ingress_steps(
                ns, dev, &ifb, shaper, &selection, &protected,
            )?);
        }
    }
    Ok(TcInstall {
        netns: traffic.netns.clone(),
        steps,
    })
}

fn egress_steps(
    ns: Option<&str>,
    dev: &Link,
    shaper: &Shaper,
    selection: &Option<Vec<U32Filter>>,
    protected: &[U32Filter],
) -> Result<Vec<TcStep>, TcError> {
    let name = dev.name.as_str();
    let before = qdisc_show(ns, name)?.unwrap_or_default();
    let root = first_qdisc(ns, name, "root")?;
    if let Some(root) = root.filter(|q| !q.is_kernel_default()) {
        return Err(TcError::ForeignRoot {
            dev: name.into(),
            qdisc: format!("{} {}", root.kind, root.handle),
        });
    }
    let tc_on = |words: &[&str], rest: Vec<String>| {
        let mut tc = strings(words);
        tc.extend(rest);
        TcStep::InTree {
            dev: name.into(),
            tc,
        }
    };
    let root_add = ["qdisc", "add", "dev", name, "root", "handle", ROOT_HANDLE];
    if selection.is_none() && protected.is_empty() {
        let mut tc = strings(&root_add);
        tc.extend(shaper_args(shaper, dev)?);
        return Ok(vec![TcStep::RootQdisc {
            dev: name.into(),
            tc,
            before,
        }]);
    }
    // Unclassified traffic goes through htb's direct queue untouched; only what the filters
    // steer into the class is shaped. direct_qlen: the device's queue, at least 1000, so the
    // untouched traffic does not see a smaller queue than before.
    let mut tc = strings(&root_add);
    tc.extend(strings(&["htb", "direct_qlen"]));
    tc.push(dev.txqlen.max(1000).to_string());
    let mut steps = vec![TcStep::RootQdisc {
        dev: name.into(),
        tc,
        before,
    }];
    // The class only steers: it passes whatever the filters send it at (practically) any
    // rate, and its leaf qdisc — the same netem or tbf a whole interface gets — does the
    // shaping. htb itself would not segment GSO packets the way tbf does.
    let mut class = strings(&["class", "add", "dev", name, "parent", ROOT_HANDLE]);
    class.extend(strings(&[
        "classid",
        SHAPED_CLASS,
        "htb",
        "rate",
        UNSHAPED_RATE,
    ]));
    class.extend(strings(&[
        "ceil",
        UNSHAPED_RATE,
        "burst",
        "1mb",
        "cburst",
        "1mb",
    ]));
    class.extend(strings(&["quantum", "200000"]));
    steps.push(tc_on(&[], class));
    let mut leaf = strings(&["qdisc", "add", "dev", name, "parent", SHAPED_CLASS]);
    leaf.extend(strings(&["handle", LEAF_HANDLE]));
    leaf.extend(shaper_args(shaper, dev)?);
    steps.push(tc_on(&[], leaf));
    for filter in protected {
        steps.push(tc_on(
            &[],
            filter.argv(name, ROOT_HANDLE, &["flowid", DIRECT_FLOW]),
        ));
    }
    let all = [U32Filter::everything()];
    let selected = selection.as_deref().unwrap_or(&all);
    for filter in selected {
        steps.push(tc_on(
            &[],
            filter.argv(name, ROOT_HANDLE, &["flowid", SHAPED_CLASS]),
        ));
    }
    Ok(steps)
}

fn ingress_steps(
    ns: Option<&str>,
    dev: &Link,
    ifb: &str,
    shaper: &Shaper,
    selection: &Option<Vec<U32Filter>>,
    protected: &[U32Filter],
) -> Result<Vec<TcStep>, TcError> {
    let name = dev.name.as_str();
    if let Some(q) = first_qdisc(ns, name, "ingress")? {
        return Err(TcError::ForeignIngress {
            dev: name.into(),
            qdisc: format!("{} {}", q.kind, q.handle),
        });
    }
    let before = qdisc_show(ns, name)?.unwrap_or_default();
    let mut ifb_root = strings(&["qdisc", "add", "dev", ifb, "root", "handle", ROOT_HANDLE]);
    // The IFB sees what `dev` received, so frames are `dev`-sized.
    ifb_root.extend(shaper_args(shaper, dev)?);
    let mut steps = vec![
        TcStep::CreateIfb { name: ifb.into() },
        TcStep::InTree {
            dev: ifb.into(),
            tc: ifb_root,
        },
        TcStep::IngressQdisc {
            dev: name.into(),
            ifb: ifb.into(),
            tc: strings(&["qdisc", "add", "dev", name, "handle", "ffff:", "ingress"]),
            before,
        },
    ];
    // Narrowing happens here, at the redirect: only selected packets enter the IFB.
    for filter in protected {
        steps.push(TcStep::InTree {
            dev: name.into(),
            tc: filter.argv(name, "ffff:", &["flowid", INGRESS_PASS]),
        });
    }
    let redirect = ["action", "mirred", "egress", "redirect", "dev", ifb];
    let all = [U32Filter::everything()];
    for filter in selection.as_deref().unwrap_or(&all) {
        steps.push(TcStep::InTree {
            dev: name.into(),
            tc: filter.argv(name, "ffff:", &redirect),
        });
    }
    Ok(steps)
}

/// The qdisc (after `handle X:`) that shapes a whole device.
fn shaper_args(shaper: &Shaper, dev: &Link) -> Result<Vec<String>, TcError> {
    Ok(match shaper {
        Shaper::Netem(args) => {
            let mut all = vec!["netem".to_string()];
            all.extend(args.iter().cloned());
            all
        }
        Shaper::Rate {
            bits_per_sec,
            burst,
        } => {
            // `latency` bounds the queue (limit = rate × latency + burst): enough for TCP
            // to fill the link, short enough not to add a second fault (bufferbloat).
            let burst = checked_burst(*bits_per_sec, *burst, dev)?;
            vec![
                "tbf".into(),
                "rate".into(),
                format!("{bits_per_sec}bit"),
                "burst".into(),
                burst.to_string(),
                "latency".into(),
                format!("{SHAPER_LATENCY_MS}ms"),
            ]
        }
    })
}

fn checked_burst(rate: u64, burst: Option<u64>, dev: &Link) -> Result<u64, TcError> {
    let frame = dev.mtu + L2_HEADER;
    match burst {
        None => Ok(default_burst(rate, dev.mtu)),
        Some(b) if b < frame => Err(TcError::Invalid(format!(
            "bandwidth: burst {b} bytes is smaller than one full frame on {} ({frame} bytes: \
             MTU {} + 14); such frames could never pass",
            dev.name, dev.mtu
        ))),
        Some(b) => Ok(b),
    }
}

/// One u32 filter: which L3 protocol it applies to and its `match` words.
#[derive(Clone, Debug, PartialEq)]
struct U32Filter {
    /// `ip`, `ipv6`, or `all`.
    protocol: &'static str,
    matches: Vec<String>,
    /// A lockout-protected flow: checked first, never shaped.
    protected: bool,
}

impl U32Filter {
    fn everything() -> U32Filter {
        U32Filter {
            protocol: "all",
            matches: strings(&["match", "u32", "0", "0"]),
            protected: false,
        }
    }

    fn prio(&self) -> u32 {
        match (self.protocol, self.protected) {
            ("ip", true) => PRIO_PROTECTED_V4,
            ("ipv6", true) => PRIO_PROTECTED_V6,
            ("ip", false) => PRIO_SELECTED_V4,
            ("ipv6", false) => PRIO_SELECTED_V6,
            _ => PRIO_SELECTED_ALL,
        }
    }

    /// `filter add dev DEV parent PARENT protocol P prio N u32 <matches> <then>`.
    fn argv(&self, dev: &str, parent: &str, then: &[&str]) -> Vec<String> {
        let mut argv = strings(&["filter", "add", "dev", dev, "parent", parent, "protocol"]);
        argv.extend([
            self.protocol.to_string(),
            "prio".into(),
            self.prio().to_string(),
            "u32".into(),
        ]);
        argv.extend(self.matches.iter().cloned());
        argv.extend(strings(then));
        argv
    }
}

impl Family {
    /// The `tc filter ... protocol` name.
    fn protocol(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ipv6",
        }
    }
    /// The u32 match keyword family (`match ip ...` / `match ip6 ...`).
    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// u32 filters matching the selection, or `None` when it selects everything. `egress`: the
/// remote end is the destination (else the source).
fn selection_filters(traffic: &Traffic, egress: bool) -> Result<Option<Vec<U32Filter>>, TcError> {
    let ports_given = !traffic.remote_ports.is_empty() || !traffic.local_ports.is_empty();
    let narrowed = !traffic.remote.is_empty()
        || !traffic.local.is_empty()
        || traffic.protocol != Protocol::All
        || ports_given;
    if !narrowed {
        return Ok(None);
    }
    if ports_given && traffic.protocol == Protocol::Icmp {
        return Err(TcError::Invalid(
            "ICMP has no ports; drop the port selection".into(),
        ));
    }
    let (remote_dir, local_dir) = if egress {
        ("dst", "src")
    } else {
        ("src", "dst")
    };
    let (remote_port_dir, local_port_dir) = if egress {
        ("dport", "sport")
    } else {
        ("sport", "dport")
    };
    let remote_blocks = port_options(&traffic.remote_ports);
    let local_blocks = port_options(&traffic.local_ports);
    let (v4, v6) = traffic.families();
    let mut filters = Vec::new();
    for family in [(v4, Family::V4), (v6, Family::V6)]
        .into_iter()
        .filter_map(|(wanted, f)| wanted.then_some(f))
    {
        let (Some(remotes), Some(locals)) = (
            net_options(&traffic.remote, family),
            net_options(&traffic.local, family),
        ) else {
            continue;
        };
        let protocols: Vec<Option<u8>> = match traffic.protocol {
            Protocol::All if ports_given => vec![Some(6), Some(17)],
            Protocol::All => vec![None],
            Protocol::Tcp => vec![Some(6)],
            Protocol::Udp => vec![Some(17)],
            Protocol::Icmp => vec![Some(if family == Family::V4 { 1 } else { 58 })],
        };
        let kw = family.keyword();
        for remote in &remotes {
            for local in &locals {
                for proto in &protocols {
                    for rport in &remote_blocks {
                        for lport in &local_blocks {
                            let mut m = Vec::new();
                            if let Some(net) = remote {
                                m.extend(strings(&["match", kw, remote_dir]));
                                m.push(net.to_string());
                            }
                            if let Some(net) = local {
                                m.extend(strings(&["match", kw, local_dir]));
                                m.push(net.to_string());
                            }
                            if let Some(p) = proto {
                                m.extend(strings(&["match", kw, "protocol"]));
                                m.extend([p.to_string(), "0xff".into()]);
                            }
                            if let Some((value, mask)) = rport {
                                m.extend(strings(&["match", kw, remote_port_dir]));
                                m.extend([value.to_string(), format!("{mask:#06x}")]);
                            }
                            if let Some((value, mask)) = lport {
                                m.extend(strings(&["match", kw, local_port_dir]));
                                m.extend([value.to_string(), format!("{mask:#06x}")]);
                            }
                            filters.push(U32Filter {
                                protocol: family.protocol(),
                                matches: m,
                                protected: false,
                            });
                            if filters.len() > MAX_FILTERS {
                                return Err(TcError::Invalid(format!(
                                    "the selection needs more than {MAX_FILTERS} u32 filters \
                                     (addresses × protocols × port-range blocks); list fewer \
                                     addresses or use aligned port ranges"
                                )));
                            }
                        }
                    }
                }
            }
        }
    }
    if filters.is_empty() {
        return Err(TcError::Invalid(
            "the selection matches no packet: its remote and local addresses are of \
             different IP families"
                .into(),
        ));
    }
    Ok(Some(filters))
}

/// `[None]` for "any"; the nets of `family`; `None` when nets were given but none is of
/// `family` (so this family cannot match).
fn net_options(nets: &[IpNet], family: Family) -> Option<Vec<Option<IpNet>>> {
    if nets.is_empty() {
        return Some(vec![None]);
    }
    let of_family: Vec<Option<IpNet>> = nets
        .iter()
        .filter(|n| Family::of(n) == family)
        .map(|n| Some(*n))
        .collect();
    (!of_family.is_empty()).then_some(of_family)
}

fn port_options(ranges: &[PortRange]) -> Vec<Option<(u16, u16)>> {
    if ranges.is_empty() {
        return vec![None];
    }
    ranges
        .iter()
        .flat_map(|r| port_blocks(*r))
        .map(Some)
        .collect()
}

/// An inclusive port range as the fewest aligned (value, mask) blocks u32 can match.
fn port_blocks(range: PortRange) -> Vec<(u16, u16)> {
    let mut blocks = Vec::new();
    let (mut start, end) = (u32::from(range.lo), u32::from(range.hi));
    while start <= end {
        let mut size = 1u32;
        while start % (size * 2) == 0 && start + size * 2 - 1 <= end {
            size *= 2;
        }
        blocks.push((start as u16, (!(size - 1) & 0xffff) as u16));
        start += size;
    }
    blocks
}

/// Filters matching the lockout-protected flows, checked before the selection.
fn protected_filters(traffic: &Traffic, egress: bool) -> Vec<U32Filter> {
    let (addr_dir, remote_port_dir, local_port_dir) = if egress {
        ("dst", "dport", "sport")
    } else {
        ("src", "sport", "dport")
    };
    traffic
        .protected
        .iter()
        .map(|p| {
            let net = IpNet::host(p.addr);
            let family = Family::of(&net);
            let kw = family.keyword();
            let mut m = strings(&["match", kw, addr_dir]);
            m.push(net.to_string());
            // No protocol match: sparing a UDP flow on the same ports is harmless.
            for (port, dir) in [
                (p.remote_port, remote_port_dir),
                (p.local_port, local_port_dir),
            ] {
                if let Some(port) = port {
                    m.extend(strings(&["match", kw, dir]));
                    m.extend([port.to_string(), "0xffff".into()]);
                }
            }
            U32Filter {
                protocol: family.protocol(),
                matches: m,
                protected: true,
            }
        })
        .collect()
}

/// One network interface as `ip -j link show` describes it.
#[derive(Clone, Debug, Deserialize)]
struct Link {
    #[serde(rename = "ifname")]
    name: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default = "default_mtu")]
    mtu: u64,
    #[serde(default)]
    txqlen: u64,
}

fn default_mtu() -> u64 {
    1500
}

fn links(ns: Option<&str>) -> Result<Vec<Link>, TcError> {
    let json = run(ns, "ip", &strings(&["-j", "link", "show"]))?;
    serde_json::from_str(&json)
        .map_err(|e| TcError::Invalid(format!("cannot parse `ip -j link show`: {e}")))
}

fn link_exists(ns: Option<&str>, name: &str) -> bool {
    run(ns, "ip", &strings(&["link", "show", "dev", name])).is_ok()
}

/// The interfaces to act on: the named ones (which must exist), else every non-loopback
/// interface that is up (faultline's own IFBs excluded).
fn devices(traffic: &Traffic) -> Result<Vec<Link>, TcError> {
    let ns = traffic.netns.as_deref();
    let all = links(ns)?;
    let place = ns.map(|n| format!(" in namespace {n}")).unwrap_or_default();
    if traffic.interfaces.is_empty() {
        let up: Vec<Link> = all
            .into_iter()
            .filter(|l| {
                l.flags.iter().any(|f| f == "UP")
                    && !l.flags.iter().any(|f| f == "LOOPBACK")
                    && !l.name.starts_with(IFB_PREFIX)
            })
            .collect();
        if up.is_empty() {
            return Err(TcError::Invalid(format!(
                "no non-loopback interface is up{place}; name the interfaces"
            )));
        }
        return Ok(up);
    }
    let mut picked: Vec<Link> = Vec::new();
    for name in &traffic.interfaces {
        if picked.iter().any(|l| &l.name == name) {
            continue;
        }
        match all.iter().find(|l| &l.name == name) {
            Some(link) => picked.push(link.clone()),
            None => {
                return Err(TcError::Invalid(format!(
                    "interface `{name}` does not exist{place}"
                )));
            }
        }
    }
    Ok(picked)
}

/// One line of `tc qdisc show`.
#[derive(Clone, Debug, PartialEq)]
struct QdiscLine {
    kind: String,
    handle: String,
    dev: Option<String>,
}

impl QdiscLine {
    /// Attached by the kernel, not by anyone: handle `0:` and a kind the kernel picks
    /// (`net.core.default_qdisc` or the device default).
    fn is_kernel_default(&self) -> bool {
        const DEFAULT_KINDS: [&str; 9] = [
            "noqueue",
            "noop",
            "pfifo_fast",
            "mq",
            "fq_codel",
            "fq",
            "sfq",
            "cake",
            "pfifo",
        ];
        self.handle == "0:" && DEFAULT_KINDS.contains(&self.kind.as_str())
    }
}

/// `qdisc KIND HANDLE [dev DEV] [root | parent X] ...`
fn parse_qdisc_line(line: &str) -> Option<QdiscLine> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"qdisc") || words.len() < 3 {
        return None;
    }
    let dev = words
        .iter()
        .position(|w| *w == "dev")
        .and_then(|i| words.get(i + 1))
        .map(|d| d.to_string());
    Some(QdiscLine {
        kind: words[1].into(),
        handle: words[2].into(),
        dev,
    })
}

/// The first qdisc `tc qdisc show dev DEV <which>` lists (`root` or `ingress`), if the
/// device exists and has one.
fn first_qdisc(ns: Option<&str>, dev: &str, which: &str) -> Result<Option<QdiscLine>, TcError> {
    match run(ns, "tc", &strings(&["qdisc", "show", "dev", dev, which])) {
        Ok(text) => Ok(text.lines().find_map(parse_qdisc_line)),
        Err(e) if device_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `tc qdisc show dev DEV`, or `None` when the device no longer exists.
fn qdisc_show(ns: Option<&str>, dev: &str) -> Result<Option<String>, TcError> {
    match run(ns, "tc", &strings(&["qdisc", "show", "dev", dev])) {
        Ok(text) => Ok(Some(text)),
        Err(e) if device_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn device_missing(e: &TcError) -> bool {
    matches!(e, TcError::Command { stderr, .. } if stderr.contains("Cannot find device"))
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// Run `program args` (in `/run/netns/NS` when given) and return its stdout.
fn run(ns: Option<&str>, program: &str, args: &[String]) -> Result<String, TcError> {
    let mut cmd = match ns {
        Some(name) => {
            let mut argv = vec![program];
            argv.extend(args.iter().map(String::as_str));
            netns::command_in(name, &argv)
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    };
    super::dies_with_us(&mut cmd);
    let out = cmd.output().map_err(|e| TcError::Spawn {
        program: program.into(),
        error: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("We have an error talking to the kernel"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string();
    let hint = hint_for(&stderr);
    Err(TcError::Command {
        argv: format!("{program} {}", args.join(" ")),
        place: ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        stderr,
        hint: hint.map(|h| format!("; {h}")).unwrap_or_default(),
    })
}

/// What the user can do about a tc/ip failure.
fn hint_for(stderr: &str) -> Option<&'static str> {
    let hints = [
        (
            "Specified qdisc kind is unknown",
            "the kernel lacks this qdisc; `faultline doctor` lists what works here",
        ),
        (
            "Exclusivity flag on",
            "another qdisc was attached meanwhile; faultline will not replace it",
        ),
        (
            "Operation not permitted",
            "run as root (needs CAP_NET_ADMIN)",
        ),
        (
            "Cannot find device",
            "the interface does not exist (in that namespace)",
        ),
        (
            "Unknown device type",
            "the kernel lacks IFB (CONFIG_IFB), needed for ingress faults",
        ),
        (
            "TC classifier not found",
            "the kernel lacks cls_u32 (CONFIG_NET_CLS_U32)",
        ),
        (
            "Failed to load TC action module",
            "the kernel lacks act_mirred (CONFIG_NET_ACT_MIRRED), needed for ingress faults",
        ),
    ];
    hints
        .into_iter()
        .find(|(needle, _)| stderr.contains(needle))
        .map(|(_, hint)| hint)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::net::{Direction, Protected};
    use crate::sys::netns::{TestNet, command_in, run_in};

    const RATE: u64 = 10_000_000;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn traffic(netns: &str, dev: &str, direction: Direction) -> Traffic {
        Traffic {
            netns: Some(netns.into()),
            interfaces: vec![dev.into()],
            ..Traffic::everything(direction)
        }
    }

    fn qdiscs(ns: &str, dev: &str) -> String {
        let out = command_in(ns, &["tc", "qdisc", "show", "dev", dev])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    fn tc_in(ns: &str, args: &[&str]) {
        let mut argv = vec!["tc"];
        argv.extend_from_slice(args);
        let out = command_in(ns, &argv).output().unwrap();
        assert!(out.status.success(), "tc {args:?}: {out:?}");
    }

    #[test]
    fn netem_arguments_are_exact() {
        let spec = NetemSpec {
            delay: ms(100),
            jitter: ms(20),
            correlation: Some(25.0),
            distribution: Distribution::Normal,
            loss: Some(1.0),
            ..NetemSpec::default()
        };
        assert_eq!(
            netem_args(&spec).join(" "),
            "delay 100ms 20ms 25% distribution normal loss 1%"
        );
        let spec = NetemSpec {
            limit: Some(5000),
            delay: Some(Duration::from_micros(1500)),
            jitter: Some(Duration::from_micros(250)),
            distribution: Distribution::Paretonormal,
            loss: Some(0.5),
            loss_correlation: Some(10.0),
            duplicate: Some(2.0),
            corrupt: Some(0.1),
            reorder: Some(30.0),
            reorder_gap: Some(5),
            rate_bits_per_sec: Some(1_000_000),
            ..NetemSpec::default()
        };
        assert_eq!(
            netem_args(&spec),
            strings(&[
                "limit",
                "5000",
                "delay",
                "1500us",
                "250us",
                "distribution",
                "paretonormal",
                "loss",
                "0.5%",
                "10%",
                "duplicate",
                "2%",
                "corrupt",
                "0.1%",
                "reorder",
                "30%",
                "gap",
                "5",
                "rate",
                "1000000bit",
            ])
        );
        // Uniform jitter is netem's default: no distribution table named.
        let spec = NetemSpec {
            delay: ms(50),
            jitter: ms(10),
            ..NetemSpec::default()
        };
        assert_eq!(netem_args(&spec).join(" "), "delay 50ms 10ms");
        let spec = NetemSpec {
            loss: Some(30.0),
            ..NetemSpec::default()
        };
        assert_eq!(netem_args(&spec).join(" "), "loss 30%");
    }

    #[test]
    fn netem_specs_that_cannot_work_are_refused() {
        let bad = [
            NetemSpec::default(),
            NetemSpec {
                jitter: ms(5),
                ..NetemSpec::default()
            },
            NetemSpec {
                delay: ms(5),
                distribution: Distribution::Normal,
                ..NetemSpec::default()
            },
            NetemSpec {
                loss: Some(101.0),
                ..NetemSpec::default()
            },
            NetemSpec {
                reorder: Some(10.0),
                ..NetemSpec::default()
            },
            NetemSpec {
                rate_bits_per_sec: Some(0),
                ..NetemSpec::default()
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?} accepted");
        }
        let good = NetemSpec {
            delay: ms(5),
            reorder: Some(10.0),
            ..NetemSpec::default()
        };
        good.validate().unwrap();
    }

    #[test]
    fn port_ranges_become_aligned_masks() {
        let range = |lo, hi| PortRange { lo, hi };
        assert_eq!(port_blocks(range(80, 80)), vec![(80, 0xffff)]);
        assert_eq!(port_blocks(range(8000, 8015)), vec![(8000, 0xfff0)]);
        assert_eq!(
            port_blocks(range(8000, 8100)),
            vec![
                (8000, 0xffc0),
                (8064, 0xffe0),
                (8096, 0xfffc),
                (8100, 0xffff)
            ]
        );
        assert_eq!(port_blocks(range(1, 65535)).len(), 16);
        // Every port in and around a range is matched exactly when it is inside.
        for (lo, hi) in [(1000, 1999), (3, 17), (65530, 65535)] {
            let blocks = port_blocks(range(lo, hi));
            for port in lo.saturating_sub(40)..=hi.saturating_add(40) {
                let hit = blocks.iter().any(|(v, m)| port & m == *v);
                assert_eq!(hit, (lo..=hi).contains(&port), "port {port} in {lo}-{hi}");
            }
        }
    }

    #[test]
    fn narrowed_selection_becomes_u32_filters() {
        let mut t = traffic("x", "eth0", Direction::Egress);
        t.protocol = Protocol::Tcp;
        t.remote = vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()];
        t.remote_ports = vec!["8000-8015".parse().unwrap()];
        let filters = selection_filters(&t, true).unwrap().unwrap();
        let argv: Vec<String> = filters
            .iter()
            .map(|f| {
                f.argv("eth0", ROOT_HANDLE, &["flowid", SHAPED_CLASS])
                    .join(" ")
            })
            .collect();
        assert_eq!(
            argv,
            vec![
                "filter add dev eth0 parent fa17: protocol ip prio 3 u32 match ip dst \
                 10.1.0.0/16 match ip protocol 6 0xff match ip dport 8000 0xfff0 flowid fa17:1",
                "filter add dev eth0 parent fa17: protocol ipv6 prio 4 u32 match ip6 dst \
                 fd00::/64 match ip6 protocol 6 0xff match ip6 dport 8000 0xfff0 flowid fa17:1",
            ]
        );
        // Ingress: the remote end is the source; ports without a protocol mean TCP and UDP.
        let mut t = traffic("x", "eth0", Direction::Ingress);
        t.local = vec!["192.0.2.7".parse().unwrap()];
        t.local_ports = vec!["22".parse().unwrap()];
        t.protected = vec![Protected {
            addr: "198.51.100.1".parse().unwrap(),
            remote_port: Some(40000),
            local_port: Some(22),
            reason: "SSH_CONNECTION".into(),
        }];
        let argv: Vec<String> = protected_filters(&t, false)
            .iter()
            .chain(&selection_filters(&t, false).unwrap().unwrap())
            .map(|f| f.argv("eth0", "ffff:", &["flowid", "x"]).join(" "))
            .collect();
        assert_eq!(
            argv,
            vec![
                "filter add dev eth0 parent ffff: protocol ip prio 1 u32 match ip src \
                 198.51.100.1/32 match ip sport 40000 0xffff match ip dport 22 0xffff flowid x",
                "filter add dev eth0 parent ffff: protocol ip prio 3 u32 match ip dst \
                 192.0.2.7/32 match ip protocol 6 0xff match ip dport 22 0xffff flowid x",
                "filter add dev eth0 parent ffff: protocol ip prio 3 u32 match ip dst \
                 192.0.2.7/32 match ip protocol 17 0xff match ip dport 22 0xffff flowid x",
            ]
        );
        // Everything selected: no filters at all.
        assert_eq!(
            selection_filters(&traffic("x", "eth0", Direction::Both), true).unwrap(),
            None
        );
        let mut t = traffic("x", "eth0", Direction::Egress);
        t.protocol = Protocol::Icmp;
        t.remote_ports = vec!["80".parse().unwrap()];
        assert!(selection_filters(&t, true).is_err());
        let mut t = traffic("x", "eth0", Direction::Egress);
        t.remote_ports = (0..40)
            .map(|i| PortRange {
                lo: 2 * i + 1,
                hi: 2 * i + 1,
            })
            .collect();
        assert!(selection_filters(&t, true).is_err(), "80 filters accepted");
    }

    #[test]
    fn burst_covers_a_tick_and_a_frame() {
        assert_eq!(default_burst(10_000_000, 1500), 5000);
        assert_eq!(default_burst(1_000_000, 1500), 1514);
        assert_eq!(default_burst(1_000_000_000, 9000), 500_000);
    }

    #[test]
    fn capabilities_name_what_is_missing() {
        let caps = capabilities();
        match netem_support() {
            Support::Available => println!("netem available"),
            Support::Missing { reason } => {
                assert!(reason.contains("CONFIG_NET_SCH_NETEM"), "{reason}");
                println!("netem missing: {reason}");
            }
        }
        // What the bandwidth fault needs exists on the project's machines.
        for (name, support) in [
            ("tbf", &caps.tbf),
            ("htb", &caps.htb),
            ("ingress", &caps.ingress),
            ("clsact", &caps.clsact),
            ("ifb", &caps.ifb),
            ("u32", &caps.u32),
            ("mirred", &caps.mirred),
        ] {
            assert!(support.is_available(), "{name}: {support:?}");
        }
        // The scratch namespace took its IFB with it.
        assert!(!link_exists(None, "flifbprobe"));
    }

    /// Bandwidth tests measure throughput: run them one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn listen(ns: &str, ip: &str) -> TcpListener {
        let addr = format!("{ip}:0");
        run_in(ns, move || TcpListener::bind(addr).unwrap()).unwrap()
    }

    /// TCP goodput (bits/s) from a sender in `from` to `listener`, measured at the receiver
    /// over the steady part (`warmup` to `secs` after the first byte) as the least-squares
    /// slope of bytes received over time: after a loss, in-order data arrives in bursts, and
    /// the slope is far less sensitive to where those bursts fall than two end points are.
    fn goodput(from: &str, listener: &TcpListener, warmup: f64, secs: f64) -> f64 {
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut sender = run_in(from, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()
        })
        .unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let deadline = Duration::from_secs_f64(secs + 2.0);
        let writer = std::thread::spawn(move || {
            sender
                .set_write_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let chunk = vec![7u8; 64 * 1024];
            let start = Instant::now();
            while start.elapsed() < deadline && sender.write_all(&chunk).is_ok() {}
        });
        receiver
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        let mut samples: Vec<(f64, f64)> = Vec::new();
        loop {
            let n = receiver.read(&mut buf).expect("receive");
            assert!(n > 0, "sender closed early");
            total += n as u64;
            let now = Instant::now();
            let elapsed = now.duration_since(*first.get_or_insert(now)).as_secs_f64();
            if elapsed >= warmup {
                samples.push((elapsed, total as f64 * 8.0));
            }
            if elapsed >= secs {
                break;
            }
        }
        drop(receiver);
        writer.join().unwrap();
        assert!(samples.len() > 10, "too few samples: {}", samples.len());
        let count = samples.len() as f64;
        let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / count;
        let mean_b = samples.iter().map(|s| s.1).sum::<f64>() / count;
        let cov: f64 = samples
            .iter()
            .map(|(t, b)| (t - mean_t) * (b - mean_b))
            .sum();
        let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
        cov / var
    }

    /// Goodput from `from` to `listener` is the shaped rate (less L2 overhead, 1448/1514).
    fn assert_shaped(from: &str, listener: &TcpListener, what: &str) {
        let ratio = goodput(from, listener, 1.0, 3.5) / RATE as f64;
        println!("{what}: goodput/rate = {ratio:.4}");
        assert!((0.93..=1.0).contains(&ratio), "{what}: ratio {ratio:.4}");
    }

    fn assert_unshaped(from: &str, listener: &TcpListener, what: &str) {
        let bits = goodput(from, listener, 0.2, 1.0);
        println!("{what}: unshaped {:.0} Mbit/s", bits / 1e6);
        assert!(bits > 3.0 * RATE as f64, "{what}: only {bits:.0} bit/s");
    }

    #[test]
    fn bandwidth_egress_caps_goodput_and_remove_restores() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.a, &net.veth_a);
        let install = TcInstall::bandwidth(
            &traffic(&net.a, &net.veth_a, Direction::Egress),
            RATE,
            None,
            "eg1",
        )
        .unwrap();
        assert!(matches!(&install.steps[..], [TcStep::RootQdisc { tc, .. }]
            if tc.join(" ").ends_with("root handle fa17: tbf rate 10000000bit burst 5000 latency 50ms")));
        install.apply().unwrap();
        assert!(qdiscs(&net.a, &net.veth_a).contains("qdisc tbf fa17: root"));
        assert_eq!(
            leftovers(Some(&net.a)).unwrap(),
            vec![format!("qdisc tbf fa17: on {}", net.veth_a)]
        );
        let listener = listen(&net.b, &net.ip_b);
        assert_shaped(&net.a, &listener, "egress tbf");
        install.remove().unwrap();
        assert_eq!(qdiscs(&net.a, &net.veth_a), before);
        assert_unshaped(&net.a, &listener, "egress after remove");
        // Idempotent, and works from the serialised value alone (a fresh process after a crash).
        install.remove().unwrap();
        let json = serde_json::to_string(&install).unwrap();
        let revived: TcInstall = serde_json::from_str(&json).unwrap();
        assert_eq!(revived, install);
        revived.remove().unwrap();
        assert!(leftovers(Some(&net.a)).unwrap().is_empty());
    }

    #[test]
    fn bandwidth_ingress_shapes_through_ifb_and_spares_protected_flows() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.b, &net.veth_b);
        let shaped = listen(&net.b, &net.ip_b);
        let spared = listen(&net.b, &net.ip_b);
        let mut t = traffic(&net.b, &net.veth_b, Direction::Ingress);
        t.protected = vec![Protected {
            addr: net.ip_a.parse().unwrap(),
            remote_port: None,
            local_port: Some(spared.local_addr().unwrap().port()),
            reason: "probe".into(),
        }];
        let install = TcInstall::bandwidth(&t, RATE, None, "in1").unwrap();
        assert_eq!(install.ifbs(), vec!["flifbin1-0"]);
        install.apply().unwrap();
        let found = leftovers(Some(&net.b)).unwrap();
        assert!(
            found.contains(&"IFB device flifbin1-0".to_string()),
            "{found:?}"
        );
        assert_shaped(&net.a, &shaped, "ingress via IFB");
        assert_unshaped(&net.a, &spared, "ingress, protected flow");
        // A crash: the next process only has the state file.
        let revived: TcInstall =
            serde_json::from_str(&serde_json::to_string(&install).unwrap()).unwrap();
        revived.remove().unwrap();
        revived.remove().unwrap();
        assert_eq!(qdiscs(&net.b, &net.veth_b), before);
        assert!(!link_exists(Some(&net.b), "flifbin1-0"));
        assert!(leftovers(Some(&net.b)).unwrap().is_empty());
        assert_unshaped(&net.a, &shaped, "ingress after remove");
    }

    #[test]
    fn bandwidth_narrowed_to_one_port_leaves_another_alone() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.a, &net.veth_a);
        let shaped = listen(&net.b, &net.ip_b);
        let other = listen(&net.b, &net.ip_b);
        let mut t = traffic(&net.a, &net.veth_a, Direction::Egress);
        t.protocol = Protocol::Tcp;
        t.remote = vec![net.ip_b.parse().unwrap()];
        t.remote_ports = vec![PortRange {
            lo: shaped.local_addr().unwrap().port(),
            hi: shaped.local_addr().unwrap().port(),
        }];
        let install = TcInstall::bandwidth(&t, RATE, None, "nr1").unwrap();
        install.apply().unwrap();
        let tree = qdiscs(&net.a, &net.veth_a);
        assert!(tree.contains("qdisc htb fa17: root"), "{tree}");
        assert_shaped(&net.a, &shaped, "egress htb, selected port");
        assert_unshaped(&net.a, &other, "egress htb, other port");
        install.remove().unwrap();
        assert_eq!(qdiscs(&net.a, &net.veth_a), before);
    }

    #[test]
    fn someone_elses_qdiscs_are_never_replaced_and_survive_byte_for_byte() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        // Another tool's shaper on a's root.
        tc_in(
            a,
            &[
                "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", "50mbit",
                "burst", "20kb", "latency", "40ms",
            ],
        );
        let before = qdiscs(a, dev);
        let refused = TcInstall::bandwidth(&traffic(a, dev, Direction::Egress), RATE, None, "fr1")
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!(
                "{dev} has a custom root qdisc (tbf 1:); faultline will not replace it. Remove \
                 it, pick another interface, or use direction: ingress"
            )
        );
        assert_eq!(qdiscs(a, dev), before);
        // Ingress leaves the foreign root alone, and so does its removal.
        let install =
            TcInstall::bandwidth(&traffic(a, dev, Direction::Ingress), RATE, None, "fr2").unwrap();
        install.apply().unwrap();
        let during = qdiscs(a, dev);
        assert!(
            during.starts_with(before.trim_end()) && during.contains("ingress ffff:"),
            "{during}"
        );
        install.remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
        // Another tool's ingress qdisc: an ingress fault is refused, nothing changes.
        tc_in(
            a,
            &["qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        );
        let before = qdiscs(a, dev);
        let refused = TcInstall::bandwidth(&traffic(a, dev, Direction::Both), RATE, None, "fr3");
        assert!(matches!(refused, Err(TcError::ForeignRoot { .. })));
        let refused = TcInstall::bandwidth(&traffic(a, dev, Direction::Ingress), RATE, None, "fr4");
        assert!(
            matches!(refused, Err(TcError::ForeignIngress { .. })),
            "{refused:?}"
        );
        assert_eq!(qdiscs(a, dev), before);
    }

    #[test]
    fn both_directions_on_every_up_interface_install_and_remove_cleanly() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let mut t = traffic(a, dev, Direction::Both);
        t.interfaces.clear();
        let install = TcInstall::bandwidth(&t, RATE, Some(20_000), "bo1").unwrap();
        let devs: Vec<&str> = install
            .steps
            .iter()
            .filter_map(|s| match s {
                TcStep::RootQdisc { dev, .. } | TcStep::IngressQdisc { dev, .. } => {
                    Some(dev.as_str())
                }
                _ => None,
            })
            .collect();
        // Loopback is skipped; the veth gets both directions.
        assert_eq!(devs, vec![dev, dev]);
        install.apply().unwrap();
        let found = leftovers(Some(a)).unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        install.remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
        assert!(leftovers(Some(a)).unwrap().is_empty());
        // A burst below one full frame could never pass a frame.
        assert!(TcInstall::bandwidth(&t, RATE, Some(1000), "bo2").is_err());
    }

    #[test]
    fn narrowed_netem_plan_is_exact_and_a_failed_apply_undoes_itself() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let mut t = traffic(a, dev, Direction::Egress);
        t.protocol = Protocol::Udp;
        t.remote = vec![net.ip_b.parse().unwrap()];
        let spec = NetemSpec {
            delay: ms(50),
            ..NetemSpec::default()
        };
        let install = TcInstall::netem(&t, &spec, "ne1").unwrap();
        let argv: Vec<String> = install
            .steps
            .iter()
            .map(|s| match s {
                TcStep::RootQdisc { tc, .. } | TcStep::InTree { tc, .. } => tc.join(" "),
                other => panic!("unexpected step {other:?}"),
            })
            .collect();
        assert_eq!(
            argv,
            vec![
                format!("qdisc add dev {dev} root handle fa17: htb direct_qlen 1000"),
                format!(
                    "class add dev {dev} parent fa17: classid fa17:1 htb rate 100gbit ceil \
                     100gbit burst 1mb cburst 1mb quantum 200000"
                ),
                format!("qdisc add dev {dev} parent fa17:1 handle fa18: netem delay 50ms"),
                format!(
                    "filter add dev {dev} parent fa17: protocol ip prio 3 u32 match ip dst \
                     {}/32 match ip protocol 17 0xff flowid fa17:1",
                    net.ip_b
                ),
            ]
        );
        match netem_support() {
            Support::Available => {
                install.apply().unwrap();
                install.remove().unwrap();
            }
            Support::Missing { .. } => {
                // The htb root and class go in, netem is refused, the undo takes them out.
                let err = install.apply().unwrap_err();
                assert!(
                    matches!(&err, TcError::Command { stderr, .. }
                        if stderr.contains("Specified qdisc kind is unknown")),
                    "{err}"
                );
            }
        }
        assert_eq!(qdiscs(a, dev), before);
        assert!(leftovers(Some(a)).unwrap().is_empty());
    }

    #[test]
    fn netem_delay_adds_to_round_trips() {
        if let Support::Missing { reason } = netem_support() {
            println!("skipped: {reason}");
            return;
        }
        let net = TestNet::new().unwrap();
        let echo = listen(&net.b, &net.ip_b);
        let addr = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = echo.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut byte = [0u8; 1];
            while conn.read_exact(&mut byte).is_ok() && conn.write_all(&byte).is_ok() {}
        });
        let install = TcInstall::netem(
            &traffic(&net.a, &net.veth_a, Direction::Egress),
            &NetemSpec {
                delay: ms(50),
                ..NetemSpec::default()
            },
            "nd1",
        )
        .unwrap();
        install.apply().unwrap();
        let mut conn = run_in(&net.a, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()
        })
        .unwrap();
        conn.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        for _ in 0..20 {
            let start = Instant::now();
            conn.write_all(&[1]).unwrap();
            conn.read_exact(&mut [0u8; 1]).unwrap();
            rtts.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        install.remove().unwrap();
        drop(conn);
        server.join().unwrap();
        rtts.sort_by(f64::total_cmp);
        let p50 = rtts[rtts.len() / 2];
        assert!((50.0..52.0).contains(&p50), "p50 {p50} ms");
    }
}
