//! Network faults: delay, loss, partition, bandwidth (and netem's duplicate, corrupt,
//! reorder). This file resolves *which* traffic (host names, ports, lockout protection) and
//! picks the backend; `sys::iptables`, `sys::tc` and `sys::delayer` do the work.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::{Applied, Fault, FaultError, Prepared};
use crate::experiment::model::{NetworkSelector, PortSpec};
use crate::experiment::validate::port_range;
use crate::net::{Direction, IpNet, PortRange, Protected, Protocol, Traffic};
use crate::plan::{FaultSpec, Plan, ProbeKind};

/// Build a network fault. Backends are chosen when it is prepared, from what this host has.
pub fn build(spec: &FaultSpec, _plan: &Plan) -> Box<dyn Fault> {
    Box::new(Unavailable(spec.kind.as_str()))
}

struct Unavailable(&'static str);

impl Fault for Unavailable {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        Err(FaultError::Failed(format!(
            "{} is not available in this build",
            self.0
        )))
    }
    fn apply(&self, _: &Prepared) -> Result<Applied, FaultError> {
        Err(FaultError::Failed(format!(
            "{} is not available in this build",
            self.0
        )))
    }
}

/// Look up host names and turn a validated selector into the traffic a backend acts on.
pub fn resolve(selector: &NetworkSelector, protected: &[Protected]) -> Result<Traffic, String> {
    let addresses = |entries: &[crate::experiment::Sp<String>]| -> Result<Vec<IpNet>, String> {
        let mut nets = Vec::new();
        for entry in entries {
            match entry.parse::<IpNet>() {
                Ok(net) => nets.push(net),
                Err(_) => {
                    let found = lookup(entry)?;
                    nets.extend(found.into_iter().map(IpNet::host));
                }
            }
        }
        nets.sort_by_key(|n| (n.addr, n.prefix));
        nets.dedup();
        Ok(nets)
    };
    let ports = |entries: &[crate::experiment::Sp<PortSpec>]| -> Result<Vec<PortRange>, String> {
        entries.iter().map(|p| port_range(p)).collect()
    };
    Ok(Traffic {
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
        protocol: selector
            .protocol
            .as_ref()
            .map_or(Protocol::All, |p| p.value),
        remote: addresses(&selector.remote)?,
        local: addresses(&selector.local)?,
        remote_ports: ports(&selector.remote_ports)?,
        local_ports: ports(&selector.local_ports)?,
        cgroup: selector.cgroup.as_ref().map(|c| c.value.clone()),
        protected: if selector.lockout_protection {
            protected.to_vec()
        } else {
            Vec::new()
        },
    })
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

/// Flows no network fault may touch unless its target turns lockout protection off: the
/// operator's SSH session and every endpoint this experiment's probes talk to (so the
/// experiment can still see — and abort — what it breaks).
pub fn protected_flows(plan: &Plan) -> Vec<Protected> {
    let mut flows = Vec::new();
    if let Some(ssh) = std::env::var_os("SSH_CONNECTION") {
        flows.extend(parse_ssh_connection(&ssh.to_string_lossy()));
    }
    for (name, probe) in &plan.probes {
        let endpoint = match &probe.kind {
            ProbeKind::Http { url, .. } => reqwest::Url::parse(url).ok().and_then(|u| {
                let port = u.port_or_known_default()?;
                Some(format!(
                    "{}:{port}",
                    u.host_str()?.trim_start_matches('[').trim_end_matches(']')
                ))
            }),
            ProbeKind::Tcp { address } => Some(address.clone()),
            ProbeKind::Command { .. } | ProbeKind::Process { .. } => None,
        };
        let Some(endpoint) = endpoint else { continue };
        for addr in socket_addrs(&endpoint) {
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

fn socket_addrs(endpoint: &str) -> Vec<SocketAddr> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return vec![addr];
    }
    // `host:port` with a bare IPv6 host (from a URL) or a host name.
    if let Some((host, port)) = endpoint.rsplit_once(':') {
        if let (Ok(ip), Ok(port)) = (host.parse::<IpAddr>(), port.parse::<u16>()) {
            return vec![SocketAddr::new(ip, port)];
        }
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

    #[test]
    fn selectors_resolve_addresses_ports_and_protection() {
        let selector: NetworkSelector = serde_saphyr::from_str(
            "{remote: [10.0.0.0/8, localhost, '::1'], remote_ports: [5432, '8000-8100'], direction: both, protocol: tcp}",
        )
        .unwrap();
        let guard = parse_ssh_connection("192.0.2.10 51234 192.0.2.1 22").unwrap();
        let t = resolve(&selector, std::slice::from_ref(&guard)).unwrap();
        assert_eq!(t.direction, Direction::Both);
        assert!(t.remote.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!(
            t.remote.contains(&"127.0.0.1".parse().unwrap()),
            "localhost was looked up: {:?}",
            t.remote
        );
        assert!(t.remote.contains(&"::1".parse().unwrap()));
        assert_eq!(
            t.remote_ports,
            vec![
                PortRange { lo: 5432, hi: 5432 },
                PortRange { lo: 8000, hi: 8100 }
            ]
        );
        assert_eq!(t.protected, vec![guard]);

        let unprotected: NetworkSelector =
            serde_saphyr::from_str("{lockout_protection: false}").unwrap();
        assert!(
            resolve(
                &unprotected,
                &[parse_ssh_connection("192.0.2.10 1 192.0.2.1 22").unwrap()]
            )
            .unwrap()
            .protected
            .is_empty()
        );
    }
}
