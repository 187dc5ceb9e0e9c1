//! The `tc` backend: netem (delay, jitter, loss, duplicate, corrupt, reorder) and bandwidth
//! caps (tbf), egress on the interface and ingress through an IFB device, in one faultline
//! tree per interface and direction that every such fault shares ([`tree`]).
//!
//! What one fault installs is a [`TcInstall`]: its part in each tree, computed (read-only)
//! before anything is touched, so the engine can write it to the state file first and
//! `recover` can undo it in a fresh process from that value alone.
//!
//! Safety rules this module enforces:
//! - faultline only ever replaces a *default* root qdisc (kernel-attached, handle `0:`), using
//!   `tc qdisc add` so the kernel itself refuses if someone attached their own meanwhile. A
//!   custom root qdisc or someone else's ingress/clsact qdisc makes the install fail before
//!   anything changes: their filters and classes cannot be snapshot and rebuilt reliably.
//! - Removal deletes only faultline's own classes and filters, its root qdisc (`fa17:`) once
//!   no fault uses it, an ingress qdisc whose filters redirect only to faultline's IFB, and
//!   IFB devices named `flifb*`; then it checks, asking the kernel, that the qdiscs on X are
//!   (kind, handle and place of each) what `tc qdisc show dev X` listed before faultline's
//!   first tree on X. (A default qdisc the kernel reattaches comes back with its defaults;
//!   the tests compare the listing byte for byte.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::Traffic;
use crate::sys::Cause;
use crate::sys::netns::{self, Netns};
use crate::sys::rtnetlink::{self, RouteSocket};
use crate::sys::tool::{self, Call};

pub mod filter;
pub mod legacy;
pub mod tree;

pub use tree::{Side, TcInstall, TcMember, TcTrees};

/// faultline's root qdisc handle on a shaped interface or IFB.
pub const ROOT_HANDLE: &str = "fa17:";
/// The leaf qdisc of faultline's trees before they were shared (found only in old records).
pub const LEAF_HANDLE: &str = "fa18:";
/// IFB devices faultline creates start with this.
pub const IFB_PREFIX: &str = "flifb";
/// Worst common kernel tick rate assumption for burst sizing (this kernel: HZ=250).
const HZ: u64 = 250;
/// Ethernet header on top of the MTU: the largest frame a shaper must be able to pass.
const L2_HEADER: u64 = 14;
/// How long a rate cap may queue packets before dropping (tbf `latency`).
const SHAPER_LATENCY_MS: u64 = 50;

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
        /// What the tool's words mean, read once when it failed.
        cause: Cause,
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

impl TcError {
    pub fn cause(&self) -> Cause {
        match self {
            TcError::Command { cause, .. } => *cause,
            TcError::Invalid(_) | TcError::ForeignRoot { .. } | TcError::ForeignIngress { .. } => {
                Cause::Unsupported
            }
            // Not installed.
            TcError::Spawn { .. } => Cause::Unsupported,
            TcError::NotRestored(_) => Cause::Failed,
            TcError::UndoFailed { cause, .. } => cause.cause(),
        }
    }
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

/// Whether the kernel has `sch_netem`, probed now (tests; a run reads `HostCaps`).
pub fn netem_support() -> Support {
    capabilities().netem
}

/// Probe every tc feature faultline uses in a throwaway network namespace (no real interface
/// is touched; the namespace dies with the probing thread). A run probes once, through
/// `HostCaps`.
pub fn capabilities() -> TcCapabilities {
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

/// One netem qdisc's parameters. Probabilities and correlations are fractions (0 to 1), as
/// everywhere else in faultline; netem's own percent syntax appears only in its argv.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetemSpec {
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    /// Correlation of successive delays.
    pub correlation: Option<f64>,
    pub distribution: Distribution,
    pub loss: Option<f64>,
    pub loss_correlation: Option<f64>,
    pub duplicate: Option<f64>,
    pub corrupt: Option<f64>,
    /// Share of packets sent at once (needs a delay; the others wait the delay).
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
        let fractions = [
            ("correlation", self.correlation),
            ("loss", self.loss),
            ("loss correlation", self.loss_correlation),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ];
        for (name, value) in fractions {
            if let Some(p) = value
                && !(0.0..=1.0).contains(&p)
            {
                return invalid(&format!("{name} must be 0% to 100%, not {}", percent(p)));
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

/// A fraction in netem's percent syntax: 0.3 → `30%` (rounded to a millionth of a percent,
/// so 0.3 × 100 does not print as 30.000000000000004).
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 100.0 * 1e6).round() / 1e6)
}

/// The token bucket size for a rate cap: `max(ceil(rate_bytes_per_sec / HZ), MTU + 14)`.
/// The kernel refills buckets at most once per tick, so a bucket smaller than one tick's
/// worth of bytes cannot sustain the rate (HZ=250 is the common worst case; higher HZ needs
/// less); and a bucket smaller than one full frame would never pass that frame.
pub fn default_burst(rate_bits_per_sec: u64, mtu: u64) -> u64 {
    (rate_bits_per_sec / 8).div_ceil(HZ).max(mtu + L2_HEADER)
}

/// faultline qdiscs and IFB devices present in `netns` (for `doctor` and `status`).
pub fn leftovers(netns: Option<&Netns>) -> Result<Vec<String>, TcError> {
    let mut found = Vec::new();
    for line in run(netns, "tc", &strings(&["qdisc", "show"]))?.lines() {
        let Some(q) = parse_qdisc_line(line) else {
            continue;
        };
        let dev = q.dev.as_deref().unwrap_or("?");
        if q.handle == ROOT_HANDLE || q.handle == LEAF_HANDLE {
            found.push(format!(
                "qdisc {} {} on {dev} (faultline's tree)",
                q.kind, q.handle
            ));
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

/// One network interface as `ip -j link show` describes it.
#[derive(Clone, Debug, Deserialize)]
struct Link {
    #[serde(rename = "ifname")]
    name: String,
    #[serde(default)]
    ifindex: u32,
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

fn links(ns: Option<&Netns>) -> Result<Vec<Link>, TcError> {
    let json = run(ns, "ip", &strings(&["-j", "link", "show"]))?;
    serde_json::from_str(&json)
        .map_err(|e| TcError::Invalid(format!("cannot parse `ip -j link show`: {e}")))
}

fn link_exists(ns: Option<&Netns>, name: &str) -> bool {
    matches!(Kernel::at(ns, name), Ok(Some(_)))
}

/// The interfaces to act on: the named ones (which must exist), else every non-loopback
/// interface that is up (faultline's own IFBs excluded).
fn devices(traffic: &Traffic) -> Result<Vec<Link>, TcError> {
    let ns = traffic.netns.as_ref();
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
/// device exists and has one. Asked of the kernel in-process ([`rtnetlink`]).
fn first_qdisc(ns: Option<&Netns>, dev: &str, which: &str) -> Result<Option<QdiscLine>, TcError> {
    let parent = if which == "root" {
        rtnetlink::TC_H_ROOT
    } else {
        rtnetlink::TC_H_INGRESS
    };
    let Some(mut kernel) = Kernel::at(ns, dev)? else {
        return Ok(None);
    };
    Ok(kernel
        .ask("list the qdiscs", |socket, index| socket.qdiscs(index))?
        .into_iter()
        .find(|q| q.parent == parent)
        .map(|q| QdiscLine {
            kind: q.kind,
            handle: rtnetlink::tc_handle(q.handle),
            dev: Some(dev.into()),
        }))
}

/// Where each qdisc on `dev` sits: `(kind, handle, place)` as `tc qdisc show dev DEV` words
/// them (`htb`, `fa17:`, `root` or `parent fa17:1`); `None` when the device is gone.
fn qdisc_places(ns: Option<&Netns>, dev: &str) -> Result<Option<Vec<QdiscPlace>>, TcError> {
    let Some(mut kernel) = Kernel::at(ns, dev)? else {
        return Ok(None);
    };
    let qdiscs = kernel.ask("list the qdiscs", |socket, index| socket.qdiscs(index))?;
    Ok(Some(
        qdiscs
            .into_iter()
            .map(|q| QdiscPlace {
                // As tc words it: no place at all for a parent of 0.
                place: match q.parent {
                    rtnetlink::TC_H_ROOT => "root".into(),
                    0 => String::new(),
                    parent => format!("parent {}", rtnetlink::tc_handle(parent)),
                },
                kind: q.kind,
                handle: rtnetlink::tc_handle(q.handle),
            })
            .collect(),
    ))
}

/// One qdisc's kind, handle and place, from the kernel or from a `tc qdisc show` line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QdiscPlace {
    kind: String,
    handle: String,
    place: String,
}

impl QdiscPlace {
    /// `qdisc KIND HANDLE root ...` or `qdisc KIND HANDLE parent X ...`.
    fn parse(line: &str) -> Option<QdiscPlace> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let place = match words.get(3..5) {
            Some(["parent", parent]) => format!("parent {parent}"),
            _ if words.get(3) == Some(&"root") => "root".into(),
            _ => String::new(),
        };
        (words.first() == Some(&"qdisc") && words.len() >= 3).then(|| QdiscPlace {
            kind: words[1].into(),
            handle: words[2].into(),
            place,
        })
    }

    fn is_ingress(&self) -> bool {
        self.kind == "ingress" || self.kind == "clsact"
    }
}

impl std::fmt::Display for QdiscPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "qdisc {} {} {}", self.kind, self.handle, self.place)
    }
}

/// A route socket in a namespace and the index of one interface there: reads of the tc
/// state on a revert's path cost microseconds instead of a `tc` run each.
struct Kernel<'a> {
    socket: RouteSocket,
    index: u32,
    ns: Option<&'a Netns>,
    dev: &'a str,
}

impl<'a> Kernel<'a> {
    /// `None` when `dev` does not exist in `ns`; an error when the namespace is gone.
    fn at(ns: Option<&'a Netns>, dev: &'a str) -> Result<Option<Kernel<'a>>, TcError> {
        if let Some(name) = ns
            && !netns::exists(name)
        {
            return Err(namespace_gone(name));
        }
        let fail = |what: &str, e: std::io::Error| netlink_error(ns, dev, what, e);
        let mut socket = RouteSocket::open(ns).map_err(|e| fail("open a route socket", e))?;
        Ok(socket
            .link_index(dev)
            .map_err(|e| fail("look the interface up", e))?
            .map(|index| Kernel {
                socket,
                index,
                ns,
                dev,
            }))
    }

    fn ask<T>(
        &mut self,
        what: &str,
        request: impl FnOnce(&mut RouteSocket, u32) -> std::io::Result<T>,
    ) -> Result<T, TcError> {
        request(&mut self.socket, self.index).map_err(|e| netlink_error(self.ns, self.dev, what, e))
    }
}

fn netlink_error(ns: Option<&Netns>, dev: &str, what: &str, e: std::io::Error) -> TcError {
    TcError::Command {
        argv: format!("netlink: {what} of {dev}"),
        place: ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        hint: String::new(),
        cause: match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Cause::Permission,
            Some(libc::ENODEV | libc::ENOENT) => Cause::Gone,
            Some(libc::EOPNOTSUPP) => Cause::Unsupported,
            _ => Cause::Failed,
        },
        stderr: e.to_string(),
    }
}

fn namespace_gone(name: &Netns) -> TcError {
    TcError::Invalid(format!(
        "network namespace {name} is gone (no {})",
        name.location()
    ))
}

/// `tc qdisc show dev DEV`, or `None` when the device no longer exists.
fn qdisc_show(ns: Option<&Netns>, dev: &str) -> Result<Option<String>, TcError> {
    match run(ns, "tc", &strings(&["qdisc", "show", "dev", dev])) {
        Ok(text) => Ok(Some(text)),
        Err(e) if device_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn device_missing(e: &TcError) -> bool {
    matches!(
        e,
        TcError::Command {
            cause: Cause::Gone,
            ..
        }
    )
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// Run `program args` (in `/run/netns/NS` when given) and return its stdout.
fn run(ns: Option<&Netns>, program: &str, args: &[String]) -> Result<String, TcError> {
    if let Some(name) = ns
        && !netns::exists(name)
    {
        // Gone (deleted while a fault was live): say so, not "install iproute2".
        return Err(namespace_gone(name));
    }
    let out = tool::run(&Call::new(program, args).in_netns(ns)).map_err(|e| TcError::Spawn {
        program: program.into(),
        error: e.to_string(),
    })?;
    if out.success {
        return Ok(out.stdout);
    }
    let stderr = out
        .stderr
        .lines()
        .filter(|l| !l.contains("We have an error talking to the kernel"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string();
    let diagnosis = tool::diagnose(&stderr);
    Err(TcError::Command {
        argv: format!("{program} {}", args.join(" ")),
        place: ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        stderr,
        hint: diagnosis.map(|(_, h)| format!("; {h}")).unwrap_or_default(),
        cause: diagnosis.map_or(Cause::Failed, |(cause, _)| cause),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn netem_arguments_are_exact() {
        let spec = NetemSpec {
            delay: ms(100),
            jitter: ms(20),
            correlation: Some(0.25),
            distribution: Distribution::Normal,
            loss: Some(0.01),
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
            loss: Some(0.005),
            loss_correlation: Some(0.1),
            duplicate: Some(0.02),
            corrupt: Some(0.001),
            reorder: Some(0.3),
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
            loss: Some(0.3),
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
                loss: Some(1.01),
                ..NetemSpec::default()
            },
            NetemSpec {
                reorder: Some(0.1),
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
            reorder: Some(0.1),
            ..NetemSpec::default()
        };
        good.validate().unwrap();
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
}
