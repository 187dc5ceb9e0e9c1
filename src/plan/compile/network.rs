//! Checks for network targets: addresses, blocks, host names, ports, protection.

use super::Checker;
use crate::experiment::model::{NetworkSelector, PortSpec};
use crate::experiment::{Diagnostic, Sp};
use crate::fault::network::{ContainerRef, NetworkTarget};
use crate::net::{Direction, Endpoint, IpNet, Netns, PortRange, Protocol};

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
                .with_hint("give the name `ip netns list` shows (a file under /run/netns), or a container as `container:`"),
            );
        }
        if let (Some(netns), Some(_)) = (&selector.netns, &selector.container) {
            self.report(
                Diagnostic::at(netns.pos, format!("{owner} has both `netns` and `container`"), "two namespaces")
                    .with_hint("a network fault acts in one namespace: keep `container:` (its namespace) or `netns:`"),
            );
        }
        self.container_reference(
            selector.container.as_ref(),
            selector.runtime.as_ref(),
            owner,
        );
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
            netns: selector
                .netns
                .as_ref()
                .map(|n| Netns::Named(n.value.clone())),
            container: selector.container.as_ref().map(|c| ContainerRef {
                reference: c.value.clone(),
                runtime: selector.runtime.as_ref().map(|r| r.value),
            }),
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
    fn host_names_are_recognised() {
        assert!(is_host_name("db.internal"));
        assert!(is_host_name("localhost"));
        assert!(!is_host_name("bad host"));
        assert!(!is_host_name("-x.example"));
    }
}
