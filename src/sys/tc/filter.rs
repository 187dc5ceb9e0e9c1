//! u32 filters: a fault's traffic selection (and its lockout-protected flows) as tc filter
//! keys, and the intersection of two selections, which is how faultline's shared tree gives a
//! packet every fault whose selection matches it.

use serde::{Deserialize, Serialize};

use super::TcError;
use crate::net::{Family, IpNet, PortRange, Protocol, Traffic};

/// More u32 filters than this is a selection tc should not carry (each is tried per packet).
pub const MAX_FILTERS: usize = 64;

/// Which packets a filter is tried on (`tc filter ... protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L3 {
    Ip,
    Ipv6,
    All,
}

impl L3 {
    fn of(family: Family) -> L3 {
        match family {
            Family::V4 => L3::Ip,
            Family::V6 => L3::Ipv6,
        }
    }

    pub fn tc_name(self) -> &'static str {
        match self {
            L3::Ip => "ip",
            L3::Ipv6 => "ipv6",
            L3::All => "all",
        }
    }

    /// 0, 1, 2: the kernel wants one protocol per filter priority, so each gets its own.
    pub fn index(self) -> u32 {
        match self {
            L3::Ip => 0,
            L3::Ipv6 => 1,
            L3::All => 2,
        }
    }

    /// The u32 match keyword family (`match ip ...` / `match ip6 ...`).
    fn keyword(self) -> &'static str {
        match self {
            L3::Ipv6 => "ip6",
            L3::Ip | L3::All => "ip",
        }
    }
}

/// Which end of a packet an address or port key is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Src,
    Dst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Protocol,
    Port(End),
}

/// One `match` of a u32 filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "key", rename_all = "snake_case")]
pub enum Key {
    /// `match ip dst 10.0.0.0/8`
    Net { end: End, net: IpNet },
    /// `match ip protocol 6 0xff`, `match ip dport 8000 0xfff0`
    Value { field: Field, value: u16, mask: u16 },
    /// `match u32 0 0`: every packet.
    Everything,
}

impl Key {
    fn words(&self, keyword: &str) -> Vec<String> {
        let end = |e: End| match e {
            End::Src => "src",
            End::Dst => "dst",
        };
        match self {
            Key::Net { end: e, net } => {
                vec![
                    "match".into(),
                    keyword.into(),
                    end(*e).into(),
                    net.to_string(),
                ]
            }
            Key::Value {
                field: Field::Protocol,
                value,
                ..
            } => vec![
                "match".into(),
                keyword.into(),
                "protocol".into(),
                value.to_string(),
                "0xff".into(),
            ],
            Key::Value {
                field: Field::Port(e),
                value,
                mask,
            } => {
                let port = match e {
                    End::Src => "sport",
                    End::Dst => "dport",
                };
                vec![
                    "match".into(),
                    keyword.into(),
                    port.into(),
                    value.to_string(),
                    format!("{mask:#06x}"),
                ]
            }
            Key::Everything => ["match", "u32", "0", "0"].map(String::from).to_vec(),
        }
    }

    /// True when no packet can match both keys.
    fn contradicts(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Net { end: a, net: n }, Key::Net { end: b, net: m }) if a == b => {
                !(n.contains(m.addr) && n.prefix <= m.prefix
                    || m.contains(n.addr) && m.prefix <= n.prefix)
            }
            (
                Key::Value {
                    field: f,
                    value: v,
                    mask: k,
                },
                Key::Value {
                    field: g,
                    value: w,
                    mask: l,
                },
            ) if f == g => (v ^ w) & k & l != 0,
            _ => false,
        }
    }
}

/// One u32 filter: which packets it is tried on and the keys all of which must match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct U32Filter {
    pub protocol: L3,
    pub keys: Vec<Key>,
}

impl U32Filter {
    pub fn everything() -> U32Filter {
        U32Filter {
            protocol: L3::All,
            keys: vec![Key::Everything],
        }
    }

    fn is_everything(&self) -> bool {
        self.protocol == L3::All && self.keys.iter().all(|k| *k == Key::Everything)
    }

    /// `filter add dev DEV parent PARENT protocol P prio N u32 <matches> <then>`.
    pub fn argv(&self, dev: &str, parent: &str, prio: u32, then: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = ["filter", "add", "dev", dev, "parent", parent, "protocol"]
            .map(String::from)
            .to_vec();
        argv.extend([
            self.protocol.tc_name().to_string(),
            "prio".into(),
            prio.to_string(),
            "u32".into(),
        ]);
        let keyword = self.protocol.keyword();
        for key in &self.keys {
            argv.extend(key.words(keyword));
        }
        argv.extend(then.iter().map(|w| w.to_string()));
        argv
    }

    /// The packets both filters match, or `None` when there cannot be any.
    pub fn intersect(&self, other: &U32Filter) -> Option<U32Filter> {
        if self.is_everything() {
            return Some(other.clone());
        }
        if other.is_everything() {
            return Some(self.clone());
        }
        if self.protocol != other.protocol {
            return None;
        }
        let mut keys = self.keys.clone();
        for key in &other.keys {
            if keys.iter().any(|k| k.contradicts(key)) {
                return None;
            }
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
        Some(U32Filter {
            protocol: self.protocol,
            keys,
        })
    }
}

/// The filters matching what every one of `selections` matches (`None` in it: everything).
/// Empty when no packet can match them all.
pub fn intersection(selections: &[Option<&[U32Filter]>]) -> Result<Vec<U32Filter>, TcError> {
    let mut result = vec![U32Filter::everything()];
    for selection in selections {
        let Some(filters) = selection else { continue };
        let mut next = Vec::new();
        for a in &result {
            for b in filters.iter() {
                if let Some(both) = a.intersect(b)
                    && !next.contains(&both)
                {
                    next.push(both);
                }
            }
        }
        if next.len() > MAX_FILTERS {
            return Err(TcError::Invalid(format!(
                "the faults on one interface overlap in more than {MAX_FILTERS} u32 filters; \
                 select their traffic with fewer addresses and port ranges"
            )));
        }
        result = next;
    }
    Ok(result)
}

/// u32 filters matching the selection, or `None` when it selects everything. `egress`: the
/// remote end is the destination (else the source).
pub fn selection_filters(
    traffic: &Traffic,
    egress: bool,
) -> Result<Option<Vec<U32Filter>>, TcError> {
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
    let (remote_end, local_end) = if egress {
        (End::Dst, End::Src)
    } else {
        (End::Src, End::Dst)
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
        let protocols: Vec<Option<u16>> = match traffic.protocol {
            Protocol::All if ports_given => vec![Some(6), Some(17)],
            Protocol::All => vec![None],
            Protocol::Tcp => vec![Some(6)],
            Protocol::Udp => vec![Some(17)],
            Protocol::Icmp => vec![Some(if family == Family::V4 { 1 } else { 58 })],
        };
        for remote in &remotes {
            for local in &locals {
                for proto in &protocols {
                    for rport in &remote_blocks {
                        for lport in &local_blocks {
                            let mut keys = Vec::new();
                            if let Some(net) = remote {
                                keys.push(Key::Net {
                                    end: remote_end,
                                    net: *net,
                                });
                            }
                            if let Some(net) = local {
                                keys.push(Key::Net {
                                    end: local_end,
                                    net: *net,
                                });
                            }
                            if let Some(p) = proto {
                                keys.push(Key::Value {
                                    field: Field::Protocol,
                                    value: *p,
                                    mask: 0xff,
                                });
                            }
                            for (port, end) in [(rport, remote_end), (lport, local_end)] {
                                if let Some((value, mask)) = port {
                                    keys.push(Key::Value {
                                        field: Field::Port(end),
                                        value: *value,
                                        mask: *mask,
                                    });
                                }
                            }
                            filters.push(U32Filter {
                                protocol: L3::of(family),
                                keys,
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
pub fn port_blocks(range: PortRange) -> Vec<(u16, u16)> {
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

/// Filters matching the lockout-protected flows, checked before any selection.
pub fn protected_filters(traffic: &Traffic, egress: bool) -> Vec<U32Filter> {
    let (addr_end, remote_port_end, local_port_end) = if egress {
        (End::Dst, End::Dst, End::Src)
    } else {
        (End::Src, End::Src, End::Dst)
    };
    traffic
        .protected
        .iter()
        .map(|p| {
            let net = IpNet::host(p.addr);
            let mut keys = vec![Key::Net { end: addr_end, net }];
            // No protocol match: sparing a UDP flow on the same ports is harmless.
            for (port, end) in [
                (p.remote_port, remote_port_end),
                (p.local_port, local_port_end),
            ] {
                if let Some(port) = port {
                    keys.push(Key::Value {
                        field: Field::Port(end),
                        value: port,
                        mask: 0xffff,
                    });
                }
            }
            U32Filter {
                protocol: L3::of(Family::of(&net)),
                keys,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Direction, Protected};

    fn traffic(direction: Direction) -> Traffic {
        Traffic {
            netns: Some("x".into()),
            interfaces: vec!["eth0".into()],
            ..Traffic::everything(direction)
        }
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
        let mut t = traffic(Direction::Egress);
        t.protocol = Protocol::Tcp;
        t.remote = vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()];
        t.remote_ports = vec!["8000-8015".parse().unwrap()];
        let filters = selection_filters(&t, true).unwrap().unwrap();
        let argv: Vec<String> = filters
            .iter()
            .map(|f| {
                let prio = 100 + f.protocol.index();
                f.argv("eth0", "fa17:", prio, &["flowid", "fa17:1"])
                    .join(" ")
            })
            .collect();
        assert_eq!(
            argv,
            vec![
                "filter add dev eth0 parent fa17: protocol ip prio 100 u32 match ip dst \
                 10.1.0.0/16 match ip protocol 6 0xff match ip dport 8000 0xfff0 flowid fa17:1",
                "filter add dev eth0 parent fa17: protocol ipv6 prio 101 u32 match ip6 dst \
                 fd00::/64 match ip6 protocol 6 0xff match ip6 dport 8000 0xfff0 flowid fa17:1",
            ]
        );
        // Ingress: the remote end is the source; ports without a protocol mean TCP and UDP.
        let mut t = traffic(Direction::Ingress);
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
            .map(|f| f.argv("eth0", "ffff:", 1, &["flowid", "x"]).join(" "))
            .collect();
        assert_eq!(
            argv,
            vec![
                "filter add dev eth0 parent ffff: protocol ip prio 1 u32 match ip src \
                 198.51.100.1/32 match ip sport 40000 0xffff match ip dport 22 0xffff flowid x",
                "filter add dev eth0 parent ffff: protocol ip prio 1 u32 match ip dst \
                 192.0.2.7/32 match ip protocol 6 0xff match ip dport 22 0xffff flowid x",
                "filter add dev eth0 parent ffff: protocol ip prio 1 u32 match ip dst \
                 192.0.2.7/32 match ip protocol 17 0xff match ip dport 22 0xffff flowid x",
            ]
        );
        // Everything selected: no filters at all.
        assert_eq!(
            selection_filters(&traffic(Direction::Both), true).unwrap(),
            None
        );
        let mut t = traffic(Direction::Egress);
        t.protocol = Protocol::Icmp;
        t.remote_ports = vec!["80".parse().unwrap()];
        assert!(selection_filters(&t, true).is_err());
        let mut t = traffic(Direction::Egress);
        t.remote_ports = (0..40)
            .map(|i| PortRange {
                lo: 2 * i + 1,
                hi: 2 * i + 1,
            })
            .collect();
        assert!(selection_filters(&t, true).is_err(), "80 filters accepted");
    }

    fn filters(remote: &[&str], ports: &[&str], protocol: Protocol) -> Option<Vec<U32Filter>> {
        let mut t = traffic(Direction::Egress);
        t.remote = remote.iter().map(|r| r.parse().unwrap()).collect();
        t.remote_ports = ports.iter().map(|p| p.parse().unwrap()).collect();
        t.protocol = protocol;
        selection_filters(&t, true).unwrap()
    }

    fn words(filters: &[U32Filter]) -> Vec<String> {
        filters
            .iter()
            .map(|f| {
                let argv = f.argv("d", "p", 1, &[]);
                format!("{} {}", f.protocol.tc_name(), argv[11..].join(" "))
            })
            .collect()
    }

    #[test]
    fn overlapping_selections_intersect_and_disjoint_ones_do_not() {
        let database = filters(&["10.0.0.5"], &["5432"], Protocol::Tcp);
        let cache = filters(&["10.0.0.6"], &["6379"], Protocol::Tcp);
        let subnet = filters(&["10.0.0.0/24"], &[], Protocol::All);
        let port_range = filters(&[], &["5400-5499"], Protocol::Tcp);
        let everything = filters(&[], &[], Protocol::All);
        let v6 = filters(&["fd00::1"], &[], Protocol::All);
        let both = |a: &Option<Vec<U32Filter>>, b: &Option<Vec<U32Filter>>| {
            words(&intersection(&[a.as_deref(), b.as_deref()]).unwrap())
        };
        // Two hosts: nothing in common. Two ports: nothing.
        assert!(both(&database, &cache).is_empty());
        assert!(both(&database, &v6).is_empty());
        // Everything and X: X.
        assert_eq!(
            both(&everything, &database),
            words(database.as_ref().unwrap())
        );
        assert_eq!(
            intersection(&[None, None]).unwrap(),
            vec![U32Filter::everything()]
        );
        // A subnet and a host in it: the host, once.
        assert_eq!(
            both(&subnet, &database),
            vec![
                "ip match ip dst 10.0.0.0/24 match ip dst 10.0.0.5/32 match ip protocol 6 0xff \
                 match ip dport 5432 0xffff"
            ]
        );
        // A port range and a port in it: matched; a port outside it: not.
        let range_blocks = port_blocks(PortRange { lo: 5400, hi: 5499 }).len();
        let with_db = both(&port_range, &database);
        assert_eq!(with_db.len(), 1, "only the block holding 5432: {with_db:?}");
        assert!(range_blocks > 1);
        assert!(both(&port_range, &cache).is_empty());
    }
}
