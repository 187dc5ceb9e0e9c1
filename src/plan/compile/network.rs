//! Checks for network targets and network faults.

use std::time::Duration;

use super::{Checker, dur, pos_of};
use crate::experiment::model::{
    BackendChoice, FaultDef, FaultKind, JitterDistribution, NetworkSelector, PercentSpec, PortSpec,
};
use crate::experiment::{Diagnostic, Pos, Sp};
use crate::net::{Direction, Endpoint, IpNet, NetworkTarget, PortRange, Protocol};
use crate::plan::{DelayBackend, NetworkAction};

/// Which of the kinds without a module of their own take each parameter (the others say
/// which they take in their module: `crate::fault::MODULE_KINDS`).
const PARAMS: &[(&str, &[FaultKind])] = &[
    ("signal", &[FaultKind::ProcessKill]),
    (
        "delay",
        &[FaultKind::NetworkDelay, FaultKind::NetworkReorder],
    ),
    ("jitter", &[FaultKind::NetworkDelay]),
    ("distribution", &[FaultKind::NetworkDelay]),
    (
        "correlation",
        &[FaultKind::NetworkDelay, FaultKind::NetworkLoss],
    ),
    (
        "probability",
        &[
            FaultKind::NetworkLoss,
            FaultKind::NetworkDuplicate,
            FaultKind::NetworkCorrupt,
            FaultKind::NetworkReorder,
        ],
    ),
    ("mode", &[FaultKind::NetworkPartition]),
    ("rate", &[FaultKind::NetworkBandwidth]),
    ("burst", &[FaultKind::NetworkBandwidth]),
    ("gap", &[FaultKind::NetworkReorder]),
    ("backend", &[FaultKind::NetworkDelay]),
];

/// The keys of `params` a fault kind takes, in the order of the model's fields.
pub fn params_of(kind: FaultKind) -> Vec<&'static str> {
    match crate::fault::module_kind(kind) {
        Some(module) => module.keys.to_vec(),
        None => PARAMS
            .iter()
            .filter(|(_, kinds)| kinds.contains(&kind))
            .map(|(key, _)| *key)
            .collect(),
    }
}

/// A host name as DNS allows it (letters, digits, `-`, dots between labels), whose last label
/// is not all digits: `256.1.1.1` is a mistyped address, not a name to look up.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        })
        && !text
            .rsplit('.')
            .next()
            .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
}

/// `10mbit`, `500kbit`, `1gbit`, `2000bit` (optionally `/s`) → bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix("/s").unwrap_or(&lower);
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let factor: f64 = match unit.trim() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => {
            return Err(format!(
                "`{text}` is not a rate; write it in bits per second like `10mbit`, `500kbit` or `1gbit`"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a rate; write it like `10mbit`"))?;
    let bits = number * factor;
    if !(bits >= 8.0 && bits.is_finite()) {
        return Err(format!("`{text}` is too small a rate"));
    }
    Ok(bits.round() as u64)
}

pub use crate::experiment::params::parse_bytes;

fn percent(spec: &PercentSpec) -> Result<f64, String> {
    let value = match spec {
        PercentSpec::Number(n) => *n,
        PercentSpec::Text(text) => text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("`{text}` is not a percentage; write it like `30%`"))?,
    };
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{value}% is not between 0% and 100%"));
    }
    Ok(value / 100.0)
}

pub fn port_range(spec: &PortSpec) -> Result<PortRange, String> {
    match spec {
        PortSpec::Number(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .map(|p| PortRange { lo: p, hi: p })
            .ok_or_else(|| format!("{n} is not a port (1-65535)")),
        PortSpec::Text(text) => text.parse(),
    }
}

impl<'a> Checker<'a> {
    /// Check a network selector and compile it: addresses, blocks and ports parsed once,
    /// here (what is wrong is reported and left out).
    pub(super) fn network_selector(
        &mut self,
        selector: &NetworkSelector,
        owner: &str,
    ) -> NetworkTarget {
        if let Some(netns) = &selector.netns
            && (netns.is_empty()
                || netns.contains('/')
                || netns.as_str() == "."
                || netns.as_str() == "..")
        {
            self.report(
                Diagnostic::at(
                    netns.pos,
                    format!("{owner}: `{}` is not a network namespace name", netns.value),
                    "not a name",
                )
                .with_hint("give the name `ip netns list` shows (a file under /run/netns)"),
            );
        }
        for interface in &selector.interfaces {
            let name = interface.as_str();
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.contains(char::is_whitespace)
            {
                self.report(
                    Diagnostic::at(interface.pos, format!("{owner}: `{name}` is not an interface name"), "not an interface")
                        .with_hint("interface names have 1 to 15 characters, without `/` or spaces (see `ip link`)"),
                );
            }
        }
        let mut endpoints = [Vec::new(), Vec::new()];
        for ((list, key), compiled) in [(&selector.remote, "remote"), (&selector.local, "local")]
            .into_iter()
            .zip(endpoints.iter_mut())
        {
            for entry in list {
                match entry.parse::<IpNet>() {
                    Ok(net) if net.network() == net => compiled.push(Endpoint::Net(net)),
                    Err(_) if is_host_name(entry) => {
                        compiled.push(Endpoint::Host(entry.value.clone()));
                    }
                    _ => {}
                }
                if let Ok(net) = entry.parse::<IpNet>()
                    && net.network() != net
                {
                    let network = net.network();
                    self.report(
                        Diagnostic::at(
                            entry.pos,
                            format!(
                                "{owner}: `{}` has host bits set beyond its /{}",
                                entry.value, net.prefix
                            ),
                            "not a block",
                        )
                        .with_hint(format!(
                            "write the block as `{network}`, or the one address as `{}`",
                            net.addr
                        )),
                    );
                    continue;
                }
                if entry.parse::<IpNet>().is_err() && !is_host_name(entry) {
                    let dotted_numbers = entry
                        .split('.')
                        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
                    let detail = match entry.value.parse::<IpNet>() {
                        Err(e) if entry.contains('/') => e,
                        _ if dotted_numbers => format!(
                            "`{}` is not an IPv4 address (four numbers from 0 to 255)",
                            entry.value
                        ),
                        _ => format!(
                            "`{}` is neither an address, a CIDR block nor a host name",
                            entry.value
                        ),
                    };
                    self.report(
                        Diagnostic::at(entry.pos, format!("{owner}: {detail}"), format!("not a `{key}` entry"))
                            .with_hint("write an address (`10.0.0.5`, `fd00::5`), a block (`10.0.0.0/8`) or a host name (`db.internal`)"),
                    );
                }
            }
        }
        let protocol = selector.protocol.as_ref().map(|p| p.value);
        let mut port_ranges = [Vec::new(), Vec::new()];
        for ((list, key), compiled) in [
            (&selector.remote_ports, "remote_ports"),
            (&selector.local_ports, "local_ports"),
        ]
        .into_iter()
        .zip(port_ranges.iter_mut())
        {
            for port in list {
                match port_range(port) {
                    Ok(range) => compiled.push(range),
                    Err(e) => self.report(
                        Diagnostic::at(port.pos, format!("{owner}: {e}"), "not a port")
                            .with_hint("write a port (`5432`) or a range (`\"8000-8100\"`)"),
                    ),
                }
            }
            if let (Some(first), Some(Protocol::Icmp)) = (list.first(), protocol) {
                self.report(
                    Diagnostic::at(first.pos, format!("{owner}: `{key}` with `protocol: icmp`"), "ICMP has no ports")
                        .with_hint("ports select TCP or UDP traffic; set `protocol: tcp`/`udp` (or `all`) or drop the ports"),
                );
            }
        }
        if let Some(cgroup) = &selector.cgroup {
            let direction = selector
                .direction
                .as_ref()
                .map_or(Direction::Egress, |d| d.value);
            if direction.ingress() {
                let pos = selector.direction.as_ref().map_or(cgroup.pos, |d| d.pos);
                self.report(
                    Diagnostic::at(pos, format!("{owner}: `cgroup` selects only traffic its processes send"), "cgroup with ingress")
                        .with_hint("the kernel attributes arriving packets to no cgroup; use `direction: egress` with `cgroup`"),
                );
            }
            if !cgroup.starts_with('/') {
                self.report(
                    Diagnostic::at(
                        cgroup.pos,
                        format!("{owner}: cgroup `{}` is not a path", cgroup.value),
                        "relative path",
                    )
                    .with_hint("write it as in /proc/PID/cgroup, e.g. `/system.slice/app.service`"),
                );
            }
        }
        let [remote, local] = endpoints;
        let [remote_ports, local_ports] = port_ranges;
        NetworkTarget {
            netns: selector.netns.as_ref().map(|n| n.value.clone()),
            interfaces: selector
                .interfaces
                .iter()
                .map(|i| i.value.clone())
                .collect(),
            direction: selector
                .direction
                .as_ref()
                .map_or(Direction::Egress, |d| d.value),
            protocol: protocol.unwrap_or(Protocol::All),
            remote,
            local,
            remote_ports,
            local_ports,
            cgroup: selector.cgroup.as_ref().map(|c| c.value.clone()),
            lockout_protection: selector.lockout_protection,
        }
    }

    /// Parameters given to a fault kind that does not take them.
    pub(super) fn params_fit(&mut self, fault: &Sp<FaultDef>) {
        let kind = fault.kind.value;
        let p = &fault.params;
        let given: [(&str, Option<Pos>); 28] = [
            ("signal", pos_of(&p.signal)),
            ("delay", pos_of(&p.delay)),
            ("jitter", pos_of(&p.jitter)),
            ("distribution", pos_of(&p.distribution)),
            ("correlation", pos_of(&p.correlation)),
            ("probability", pos_of(&p.probability)),
            ("rate", pos_of(&p.rate)),
            ("burst", pos_of(&p.burst)),
            ("gap", pos_of(&p.gap)),
            ("backend", pos_of(&p.backend)),
            ("load", pos_of(&p.load)),
            ("quota", pos_of(&p.quota)),
            ("cores", pos_of(&p.cores)),
            ("ramp", pos_of(&p.ramp)),
            ("size", pos_of(&p.size)),
            ("leave_free", pos_of(&p.leave_free)),
            ("keep_free", pos_of(&p.keep_free)),
            ("path", pos_of(&p.path)),
            ("block_size", pos_of(&p.block_size)),
            ("throughput", pos_of(&p.throughput)),
            ("iops", pos_of(&p.iops)),
            ("workers", pos_of(&p.workers)),
            ("read_share", pos_of(&p.read_share)),
            ("read_throughput", pos_of(&p.read_throughput)),
            ("write_throughput", pos_of(&p.write_throughput)),
            ("read_iops", pos_of(&p.read_iops)),
            ("write_iops", pos_of(&p.write_iops)),
            ("mode", pos_of(&p.mode)),
        ];
        for (key, pos) in given {
            let Some(pos) = pos else { continue };
            // process-stop's `signal` has its own, more specific message.
            if key == "signal" && kind == FaultKind::ProcessStop {
                continue;
            }
            let kinds = PARAMS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(&[][..], |(_, kinds)| kinds);
            let takes = match crate::fault::module_kind(kind) {
                Some(module) => module.keys.contains(&key),
                None => kinds.contains(&kind),
            };
            if !takes {
                let modules = crate::fault::MODULE_KINDS.iter();
                let takers: Vec<&str> = kinds
                    .iter()
                    .copied()
                    .chain(modules.filter(|m| m.keys.contains(&key)).map(|m| m.kind))
                    .map(|k| k.as_str())
                    .collect();
                self.report(
                    Diagnostic::at(
                        pos,
                        format!("`params.{key}` does not apply to a {} fault", kind.as_str()),
                        format!("not a parameter of {}", kind.as_str()),
                    )
                    .with_hint(format!("`{key}` is a parameter of {}", takers.join(", "))),
                );
            }
        }
    }

    /// The network fault's validated effect; `None` after reporting what is wrong.
    pub(super) fn network_action(&mut self, fault: &Sp<FaultDef>) -> Option<NetworkAction> {
        let id = fault.id.as_str();
        let kind = fault.kind.value;
        let p = &fault.params;
        if let Some(target) = &fault.target {
            self.network_target_ref(target, &format!("fault `{id}` ({})", kind.as_str()));
        }
        if fault.duration.is_none() {
            self.report(
                Diagnostic::at(
                    fault.kind.pos,
                    format!("fault `{id}` ({}) has no `duration`", kind.as_str()),
                    "needs a duration",
                )
                .with_hint("add `duration: 30s`: the fault is reverted when it is over"),
            );
        }
        let required = |checker: &mut Self, key: &str, present: bool, example: &str| {
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
        let mut fraction = |checker: &mut Self, spec: &Option<Sp<PercentSpec>>| -> f64 {
            match spec {
                None => 0.0,
                Some(spec) => match percent(spec) {
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
                if !required(self, "delay", p.delay.is_some(), "100ms") {
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
                    self.report(
                            Diagnostic::at(j.pos, format!("jitter {} is larger than the delay {}", j.value, dur(delay)), "negative delays")
                                .with_hint("uniform jitter spreads delays over delay ± jitter; keep jitter at most the delay"),
                        );
                }
                if let (Some(d), true) = (&p.distribution, p.jitter.is_none()) {
                    self.report(
                        Diagnostic::at(
                            d.pos,
                            "`distribution` without `jitter`",
                            "nothing to distribute",
                        )
                        .with_hint(
                            "add `jitter:`; the distribution shapes the spread around `delay`",
                        ),
                    );
                }
                let correlation = fraction(self, &p.correlation);
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
                if !required(self, "probability", p.probability.is_some(), "30%") {
                    return None;
                }
                let probability = fraction(self, &p.probability);
                let correlation = fraction(self, &p.correlation);
                NetworkAction::Loss {
                    probability,
                    correlation,
                }
            }
            FaultKind::NetworkPartition => NetworkAction::Partition {
                reject: self.mode(fault, &["drop", "reject"])? == "reject",
            },
            FaultKind::NetworkBandwidth => {
                if !required(self, "rate", p.rate.is_some(), "10mbit") {
                    return None;
                }
                let rate = p.rate.as_ref().and_then(|r| match parse_rate(r) {
                    Ok(bits) => Some(bits),
                    Err(e) => {
                        self.report(
                            Diagnostic::at(r.pos, e, "not a rate")
                                .with_hint("rates are in bits per second: `10mbit`"),
                        );
                        None
                    }
                });
                let burst = p.burst.as_ref().and_then(|b| match parse_bytes(b) {
                    Ok(bytes) if bytes >= 1_500 => Some(bytes),
                    Ok(bytes) => {
                        self.report(
                            Diagnostic::at(b.pos, format!("burst of {bytes} bytes cannot hold one full-size packet"), "too small")
                                .with_hint("a burst must be at least one MTU (1500 bytes); leave it out for a sensible default"),
                        );
                        None
                    }
                    Err(e) => {
                        self.report(Diagnostic::at(b.pos, e, "not a size").with_hint("write it like `32kb`"));
                        None
                    }
                });
                NetworkAction::Bandwidth {
                    rate_bits_per_sec: rate?,
                    burst_bytes: burst,
                }
            }
            FaultKind::NetworkDuplicate | FaultKind::NetworkCorrupt => {
                if !required(self, "probability", p.probability.is_some(), "1%") {
                    return None;
                }
                let probability = fraction(self, &p.probability);
                if kind == FaultKind::NetworkDuplicate {
                    NetworkAction::Duplicate { probability }
                } else {
                    NetworkAction::Corrupt { probability }
                }
            }
            FaultKind::NetworkReorder => {
                let has = required(self, "probability", p.probability.is_some(), "25%")
                    & required(self, "delay", p.delay.is_some(), "10ms");
                if !has {
                    return None;
                }
                NetworkAction::Reorder {
                    probability: fraction(self, &p.probability),
                    delay: p.delay.as_ref().map_or(Duration::ZERO, |d| d.get()),
                    gap: p.gap.as_ref().map(|g| g.value),
                }
            }
            _ => return None,
        };
        ok.then_some(action)
    }

    /// The network target `reference` names; reports unknown and non-network targets.
    pub(super) fn network_target_ref(
        &mut self,
        reference: &Sp<String>,
        owner: &str,
    ) -> Option<NetworkSelector> {
        let targets = &self.exp().targets;
        match targets.get(reference.as_str()) {
            Some(target) => match &target.network {
                Some(selector) => Some(selector.clone()),
                None => {
                    self.report(
                        Diagnostic::at(reference.pos, format!("{owner} needs a network target, but `{}` selects processes", reference.value), "not a network target")
                            .with_hint("network faults act on traffic: define a target with `network: {remote: [...], remote_ports: [...]}`"),
                    );
                    None
                }
            },
            None => {
                self.unknown_target(reference, owner);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bits_per_second() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1.5Mbit/s").unwrap(), 1_500_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert!(
            parse_rate("10mb").is_err(),
            "bytes are not a rate unit here"
        );
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(parse_bytes("32kb").unwrap(), 32_000);
        assert_eq!(parse_bytes("64kib").unwrap(), 65_536);
        assert_eq!(percent(&PercentSpec::Text("30%".into())).unwrap(), 0.3);
        assert_eq!(percent(&PercentSpec::Number(5.0)).unwrap(), 0.05);
        assert!(percent(&PercentSpec::Text("30".into())).is_err());
        assert!(percent(&PercentSpec::Number(130.0)).is_err());
    }

    #[test]
    fn host_names_are_recognised() {
        assert!(is_host_name("db.internal"));
        assert!(is_host_name("localhost"));
        assert!(!is_host_name("bad host"));
        assert!(!is_host_name("-x.example"));
    }
}
