//! Shared vocabulary of the network faults: which traffic a fault acts on, resolved and
//! validated, independent of the backend (iptables, tc, NFQUEUE) that will act on it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which way the affected packets travel, seen from the host (or namespace) the fault runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Leaving: delay/drop what this host sends.
    Egress,
    /// Arriving: delay/drop what this host receives.
    Ingress,
    Both,
}

impl Direction {
    pub fn egress(self) -> bool {
        matches!(self, Direction::Egress | Direction::Both)
    }
    pub fn ingress(self) -> bool {
        matches!(self, Direction::Ingress | Direction::Both)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// Ports only mean something for TCP and UDP.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// IPv4 or IPv6: which tools, tables and filter keywords a rule needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(net: &IpNet) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn host(addr: IpAddr) -> IpNet {
        IpNet {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The block with its host bits cleared (`10.0.0.1/8` → `10.0.0.0/8`).
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(text: &str) -> Result<PortRange, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!("`{text}` is not a port (1-65535) or a range like `8000-8100`")
                })
        };
        let (lo, hi) = match text.split_once('-') {
            Some((lo, hi)) => (parse(lo)?, parse(hi)?),
            None => {
                let p = parse(text)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("`{text}`: the range is backwards"));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Traffic that must never be touched (lockout protection): the operator's SSH session and
/// the endpoints of the experiment's own probes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Protected {
    pub addr: IpAddr,
    /// The remote port of the flow (the probe's port; the SSH client's port), if known.
    pub remote_port: Option<u16>,
    /// The local port of the flow (the SSH server's port), if known.
    pub local_port: Option<u16>,
    /// Why: `SSH_CONNECTION`, `probe health`.
    pub reason: String,
}

/// One end of the flows a network target names: an address or a block, parsed when the plan
/// is compiled, or a host name, looked up when a fault on the target is prepared.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Net(IpNet),
    Host(String),
}

/// A network namespace faultline acts in: one `ip netns add` named, or the one a process
/// (a container's main process) is in. Records keep it, so a revert after a restart reaches
/// the same namespace or none: never the namespace a reused PID or a recreated container
/// has now.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Netns {
    /// `/run/netns/NAME` (a plain string in records, as older faultlines wrote it).
    Named(String),
    /// `/proc/PID/ns/net`, valid while that process lives and is in that namespace.
    Process(ProcessNetns),
}

/// A process's network namespace, pinned by the process's identity (PID and start time)
/// and by the namespace's own (its nsfs inode, unique among live namespaces).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessNetns {
    pub pid: u32,
    pub start_time: u64,
    pub inode: u64,
    /// Whose namespace it is, for messages (`container web (3f2a9c1b0d4e)`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

impl Netns {
    /// Where it is, for messages: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub fn location(&self) -> String {
        match self {
            Netns::Named(name) => format!("/run/netns/{name}"),
            Netns::Process(process) => format!("/proc/{}/ns/net", process.pid),
        }
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Named(name) => f.write_str(name),
            Netns::Process(p) if p.owner.is_empty() => {
                write!(f, "net:[{}] of pid {}", p.inode, p.pid)
            }
            Netns::Process(p) => write!(f, "{}'s net:[{}] (pid {})", p.owner, p.inode, p.pid),
        }
    }
}

impl From<&str> for Netns {
    fn from(name: &str) -> Netns {
        Netns::Named(name.to_string())
    }
}

impl From<String> for Netns {
    fn from(name: String) -> Netns {
        Netns::Named(name)
    }
}

impl From<&String> for Netns {
    fn from(name: &String) -> Netns {
        Netns::Named(name.clone())
    }
}

impl From<&Netns> for Netns {
    fn from(ns: &Netns) -> Netns {
        ns.clone()
    }
}

/// The traffic one network fault acts on, fully resolved (hostnames already looked up).
/// Empty lists mean "any".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// The network namespace to act in (named, or a container's); `None` = faultline's own.
    pub netns: Option<Netns>,
    /// Interfaces; empty = every interface (iptables) or every non-loopback one (tc).
    pub interfaces: Vec<String>,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The other end of the flow (destination for egress, source for ingress).
    pub remote: Vec<IpNet>,
    /// This end of the flow.
    pub local: Vec<IpNet>,
    pub remote_ports: Vec<PortRange>,
    pub local_ports: Vec<PortRange>,
    /// Only packets of processes in this cgroup (v2 path, egress only).
    pub cgroup: Option<String>,
    /// Flows excluded before anything else matches.
    pub protected: Vec<Protected>,
}

impl Traffic {
    /// Every packet going `direction`, in faultline's own namespace, unprotected.
    pub fn everything(direction: Direction) -> Traffic {
        Traffic {
            netns: None,
            interfaces: Vec::new(),
            direction,
            protocol: Protocol::All,
            remote: Vec::new(),
            local: Vec::new(),
            remote_ports: Vec::new(),
            local_ports: Vec::new(),
            cgroup: None,
            protected: Vec::new(),
        }
    }

    /// Which IP families the selection can match: a family with no remote/local address of
    /// its own is still matched when no addresses are given at all.
    pub fn families(&self) -> (bool, bool) {
        let addrs: Vec<&IpNet> = self.remote.iter().chain(&self.local).collect();
        if addrs.is_empty() {
            return (true, true);
        }
        (
            addrs.iter().any(|n| n.is_ipv4()),
            addrs.iter().any(|n| !n.is_ipv4()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert_eq!("192.0.2.1".parse::<IpNet>().unwrap().prefix, 32);
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("db.internal".parse::<IpNet>().is_err());
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { lo: 80, hi: 80 }
        );
        assert_eq!(
            "8000-8100".parse::<PortRange>().unwrap(),
            PortRange { lo: 8000, hi: 8100 }
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("9-1".parse::<PortRange>().is_err());
    }
}
