//! iptables/ip6tables backend of the loss, partition and NFQUEUE-steering faults.
//!
//! Everything one fault creates is described up front by a [`RuleSet`]: chains of faultline's
//! own (`FAULTLINE-<id>-IN`/`-OUT`) holding the rules, and one jump into each chain from
//! INPUT/OUTPUT. The engine writes the `RuleSet` to the state file, then [`RuleSet::apply`]
//! creates exactly that (jumps last, so a half-built chain never sees a packet), and
//! [`RuleSet::remove`] deletes exactly that (jumps first), from the serialised value alone.
//!
//! The tools run by argv (`iptables-nft`, `iptables-legacy`, ...; inside a namespace they
//! join it with setns(2) before exec), never through a shell. Listing uses the `*-save` tools only: `-S`/`-L`
//! on iptables-legacy instantiate a table in a namespace that has none, and a listing must
//! not change the host.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use crate::net::Family;
use crate::net::{IpNet, PortRange, Protocol, Traffic};
use crate::sys::Cause;
use crate::sys::netns::{self, Netns};
use crate::sys::tool::{self, Call, ToolError};

/// The prefix of every chain faultline creates; `leftovers` looks for it.
pub const CHAIN_PREFIX: &str = "FAULTLINE-";
/// The kernel's limit for chain names (`XT_EXTENSION_MAXNAMELEN` - 1).
const MAX_CHAIN_NAME: usize = 28;
/// `-m multiport` takes at most 15 ports, a range counting as two.
const MAX_MULTIPORT: usize = 15;
/// How long to wait for the xtables lock another tool may hold.
const LOCK_WAIT_SECONDS: &str = "5";
/// Bound on `-D` repetitions when someone inserted the same jump several times.
const MAX_JUMP_DELETES: usize = 64;
/// The table every faultline chain lives in.
const TABLE: &str = "filter";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error(
        "`{binary}` is not installed; install the Debian package `{package}` (apt-get install {package})"
    )]
    Missing {
        binary: String,
        package: &'static str,
    },
    #[error("network namespace {0} does not exist (no {location}); create it or fix `netns`", location = .0.location())]
    NoNamespace(Netns),
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "`{command}` failed: {stderr}; check that the kernel has the needed netfilter matches and targets (`faultline doctor`)"
    )]
    Command {
        command: String,
        stderr: String,
        /// What the tool's words mean, read once when it failed.
        cause: Cause,
    },
    #[error("the traffic selection cannot be expressed as iptables rules: {0}")]
    Invalid(String),
    #[error(
        "faultline's iptables rules are still present after removal: {}; delete them by hand (`iptables -D ...`, `iptables -X CHAIN`) and check with `faultline status`",
        .0.join("; ")
    )]
    StillPresent(Vec<String>),
    #[error("could not read the counters of chain {chain}: unexpected line `{line}`")]
    Counters { chain: String, line: String },
}

impl IptablesError {
    /// The same error again, for each removal of a batch that one failure ended.
    fn duplicate(&self) -> IptablesError {
        match self {
            IptablesError::Missing { binary, package } => IptablesError::Missing {
                binary: binary.clone(),
                package,
            },
            IptablesError::NoNamespace(name) => IptablesError::NoNamespace(name.clone()),
            IptablesError::Spawn { command, source } => IptablesError::Spawn {
                command: command.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            IptablesError::Command {
                command,
                stderr,
                cause,
            } => IptablesError::Command {
                command: command.clone(),
                stderr: stderr.clone(),
                cause: *cause,
            },
            IptablesError::Invalid(why) => IptablesError::Invalid(why.clone()),
            IptablesError::StillPresent(lines) => IptablesError::StillPresent(lines.clone()),
            IptablesError::Counters { chain, line } => IptablesError::Counters {
                chain: chain.clone(),
                line: line.clone(),
            },
        }
    }
}

/// Which iptables implementation owns a namespace's rules. Mixing them works in the kernel
/// but confuses every operator reading one of them, so faultline follows the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Nft,
    Legacy,
}

impl Variant {
    /// `iptables-nft`, `ip6tables-legacy`, ...
    pub fn binary(self, family: Family) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let suffix = match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        };
        format!("{base}-{suffix}")
    }

    pub fn save_binary(self, family: Family) -> String {
        format!("{}-save", self.binary(family))
    }

    pub fn restore_binary(self, family: Family) -> String {
        format!("{}-restore", self.binary(family))
    }
}

impl Family {
    /// The nft table family (`ip`, `ip6`).
    fn nft_name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// The built-in chain a jump hangs off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Input,
    Output,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Input => "INPUT",
            Hook::Output => "OUTPUT",
        })
    }
}

/// `-I <hook> 1 <matches> -j <chain>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Jump {
    pub hook: Hook,
    pub matches: Vec<String>,
}

/// One chain faultline creates, its rules (`-A` arguments after the chain name) in order,
/// and the jumps into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OwnedChain {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub jumps: Vec<Jump>,
    pub rules: Vec<Vec<String>>,
}

/// A table that did not exist when the fault was planned: iptables-nft creates it on first
/// use, so `remove` deletes it again if faultline's chains were all it held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRef {
    pub family: Family,
    pub table: String,
}

/// The tables iptables-nft created for a run's rule sets, by namespace and family.
#[derive(Default)]
pub struct CreatedTables(Mutex<HashSet<(Option<Netns>, Family, String)>>);

impl CreatedTables {
    fn contains(&self, key: &(Option<Netns>, Family, String)) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn insert(&self, key: (Option<Netns>, Family, String)) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
    }
}

/// Everything one fault creates in iptables, and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    pub netns: Option<Netns>,
    pub variant: Variant,
    pub chains: Vec<OwnedChain>,
    /// Only for the nft variant; legacy tables cannot be deleted once a namespace has them.
    #[serde(default)]
    pub created_tables: Vec<TableRef>,
}

/// What the action rules do to the selected packets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Drop,
    /// TCP gets a reset, everything else an ICMP port-unreachable.
    Reject,
    Loss {
        probability: f64,
    },
    /// Steer to an NFQUEUE; always with `--queue-bypass`, so traffic flows when no program
    /// holds the queue (after a crash).
    Queue {
        num: u16,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketCount {
    fn add(&mut self, other: PacketCount) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainCounters {
    pub family: Family,
    pub chain: String,
    /// Matched by the action rules (dropped, rejected, queued).
    pub action: PacketCount,
    /// Exempted by the lockout-protection `RETURN` rules.
    pub protected: PacketCount,
}

/// What the rules matched so far, summed over chains and per chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub action: PacketCount,
    pub protected: PacketCount,
    pub chains: Vec<ChainCounters>,
}

// ---------------------------------------------------------------------------------------
// Building the plan (pure)
// ---------------------------------------------------------------------------------------

impl RuleSet {
    /// Everything a fault will create, for the traffic and action given; touches nothing.
    /// `id` must be short (≤ 14 characters of `[A-Za-z0-9_]`) so chain names fit the kernel.
    pub fn build(
        traffic: &Traffic,
        action: Action,
        id: &str,
        variant: Variant,
    ) -> Result<RuleSet, IptablesError> {
        validate(traffic, action, id)?;
        let (v4, v6) = traffic.families();
        let mut chains = Vec::new();
        for (family, wanted) in [(Family::V4, v4), (Family::V6, v6)] {
            if !wanted {
                continue;
            }
            for (hook, on) in [
                (Hook::Input, traffic.direction.ingress()),
                (Hook::Output, traffic.direction.egress()),
            ] {
                if !on {
                    continue;
                }
                let Some(rules) = chain_rules(traffic, action, family, hook)? else {
                    continue;
                };
                chains.push(OwnedChain {
                    family,
                    table: TABLE.to_string(),
                    name: chain_name(id, hook),
                    jumps: jumps(traffic, hook),
                    rules,
                });
            }
        }
        if chains.is_empty() {
            return Err(IptablesError::Invalid(
                "no IP family is left that the addresses can match".into(),
            ));
        }
        Ok(RuleSet {
            netns: traffic.netns.clone(),
            variant,
            chains,
            created_tables: Vec::new(),
        })
    }

    /// The run-time entry: pick the variant the namespace uses (unless given), build, and
    /// note which tables iptables-nft will create so `remove` can take them away again.
    /// Reads the host only.
    pub fn plan(
        traffic: &Traffic,
        action: Action,
        id: &str,
        variant: Option<Variant>,
    ) -> Result<RuleSet, IptablesError> {
        RuleSet::plan_shared(traffic, action, id, variant, &CreatedTables::default())
    }

    /// As [`RuleSet::plan`], for one of several rule sets of a run: a table iptables-nft
    /// creates for the first of them is shared by the next (which finds it, holding the
    /// first one's chains), and the one removed last takes it away.
    pub fn plan_shared(
        traffic: &Traffic,
        action: Action,
        id: &str,
        variant: Option<Variant>,
        created: &CreatedTables,
    ) -> Result<RuleSet, IptablesError> {
        let variant = match variant {
            Some(v) => v,
            None => detect(traffic.netns.as_ref())?,
        };
        let mut set = RuleSet::build(traffic, action, id, variant)?;
        if variant == Variant::Nft {
            for family in set.families() {
                let saved = parse_save(&run_save(set.netns.as_ref(), variant, family)?);
                let table = saved.iter().find(|t| t.name == TABLE);
                let key = (set.netns.clone(), family, TABLE.to_string());
                let ours = match table {
                    None => true,
                    // Created by this run for another rule set, which still uses it.
                    Some(t) => {
                        created.contains(&key)
                            && t.chains.iter().any(|(c, _)| c.starts_with(CHAIN_PREFIX))
                    }
                };
                if ours {
                    created.insert(key);
                    set.created_tables.push(TableRef {
                        family,
                        table: TABLE.to_string(),
                    });
                }
            }
        }
        Ok(set)
    }

    fn families(&self) -> Vec<Family> {
        Family::BOTH
            .into_iter()
            .filter(|f| self.chains.iter().any(|c| c.family == *f))
            .collect()
    }
}

fn validate(traffic: &Traffic, action: Action, id: &str) -> Result<(), IptablesError> {
    let invalid = |m: String| Err(IptablesError::Invalid(m));
    let longest = MAX_CHAIN_NAME - CHAIN_PREFIX.len() - "-OUT".len();
    if id.is_empty()
        || id.len() > longest
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return invalid(format!(
            "fault id `{id}` must be 1 to {longest} characters of letters, digits and `_`"
        ));
    }
    if let Action::Loss { probability } = action
        && !(0.0..=1.0).contains(&probability)
    {
        return invalid(format!(
            "loss probability {probability} is not between 0 and 1"
        ));
    }
    for iface in &traffic.interfaces {
        // IFNAMSIZ - 1; `+` is iptables' wildcard and is fine.
        if iface.is_empty() || iface.len() > 15 || iface.chars().any(|c| c.is_whitespace()) {
            return invalid(format!("`{iface}` is not an interface name"));
        }
    }
    let has_ports = !traffic.remote_ports.is_empty() || !traffic.local_ports.is_empty();
    if has_ports && traffic.protocol == Protocol::Icmp {
        return invalid("ports need protocol tcp or udp (or all), not icmp".into());
    }
    if traffic.cgroup.is_some() && traffic.direction.ingress() {
        return invalid(
            "a cgroup can only select egress traffic: the kernel does not know which \
             process an arriving packet is for until it is delivered"
                .into(),
        );
    }
    for ports in [&traffic.remote_ports, &traffic.local_ports] {
        if multiport_len(ports) > MAX_MULTIPORT {
            return invalid(format!(
                "at most {MAX_MULTIPORT} ports per list (a range counts as two); got {}",
                ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    Ok(())
}

fn chain_name(id: &str, hook: Hook) -> String {
    match hook {
        Hook::Input => format!("{CHAIN_PREFIX}{id}-IN"),
        Hook::Output => format!("{CHAIN_PREFIX}{id}-OUT"),
    }
}

fn jumps(traffic: &Traffic, hook: Hook) -> Vec<Jump> {
    if traffic.interfaces.is_empty() {
        return vec![Jump {
            hook,
            matches: Vec::new(),
        }];
    }
    let flag = match hook {
        Hook::Input => "-i",
        Hook::Output => "-o",
    };
    traffic
        .interfaces
        .iter()
        .map(|iface| Jump {
            hook,
            matches: vec![flag.to_string(), iface.clone()],
        })
        .collect()
}

/// Addresses of one family, with blocks inside another block of the list dropped: CIDR blocks
/// either nest or are disjoint, so what remains is disjoint and a packet matches at most one
/// rule (a loss rule must not roll its dice twice for one packet).
fn disjoint_of_family(nets: &[IpNet], family: Family) -> Vec<IpNet> {
    let same: Vec<IpNet> = nets
        .iter()
        .copied()
        .filter(|n| Family::of(n) == family)
        .collect();
    let mut kept: Vec<IpNet> = Vec::new();
    for (i, net) in same.iter().enumerate() {
        let covered = same.iter().enumerate().any(|(j, other)| {
            j != i
                && other.prefix <= net.prefix
                && other.contains(net.addr)
                && (other.prefix < net.prefix || j < i)
        });
        if !covered {
            kept.push(*net);
        }
    }
    kept
}

/// `Some(options)`: every address (or any, if the list is empty); `None`: the list has
/// addresses, but none of this family, so this family's chain could match nothing.
fn address_options(nets: &[IpNet], family: Family) -> Option<Vec<Option<IpNet>>> {
    if nets.is_empty() {
        return Some(vec![None]);
    }
    let kept = disjoint_of_family(nets, family);
    if kept.is_empty() {
        None
    } else {
        Some(kept.into_iter().map(Some).collect())
    }
}

fn multiport_len(ports: &[PortRange]) -> usize {
    ports.iter().map(|p| if p.lo == p.hi { 1 } else { 2 }).sum()
}

fn port_spec(range: &PortRange) -> String {
    if range.lo == range.hi {
        range.lo.to_string()
    } else {
        format!("{}:{}", range.lo, range.hi)
    }
}

/// `--dport 80`, `--dport 8000:8100`, or `-m multiport --dports 80,443,8000:8100`.
fn port_match(ports: &[PortRange], destination: bool) -> Vec<String> {
    let (single, multi) = if destination {
        ("--dport", "--dports")
    } else {
        ("--sport", "--sports")
    };
    match ports {
        [] => Vec::new(),
        [one] => vec![single.into(), port_spec(one)],
        many => vec![
            "-m".into(),
            "multiport".into(),
            multi.into(),
            many.iter().map(port_spec).collect::<Vec<_>>().join(","),
        ],
    }
}

fn icmp_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "icmp",
        Family::V6 => "icmpv6",
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The rules of one chain: lockout-protection `RETURN`s first, then the action rules.
/// `None` when this family's chain could match nothing.
fn chain_rules(
    traffic: &Traffic,
    action: Action,
    family: Family,
    hook: Hook,
) -> Result<Option<Vec<Vec<String>>>, IptablesError> {
    let egress = hook == Hook::Output;
    let (Some(remotes), Some(locals)) = (
        address_options(&traffic.remote, family),
        address_options(&traffic.local, family),
    ) else {
        return Ok(None);
    };
    let mut rules = protected_rules(traffic, family);

    let has_ports = !traffic.remote_ports.is_empty() || !traffic.local_ports.is_empty();
    let protocols: Vec<Option<&str>> = match (traffic.protocol, has_ports) {
        (Protocol::Tcp, _) => vec![Some("tcp")],
        (Protocol::Udp, _) => vec![Some("udp")],
        (Protocol::Icmp, false) => vec![Some(icmp_name(family))],
        (Protocol::All, true) => vec![Some("tcp"), Some("udp")],
        (Protocol::All, false) => vec![None],
        (Protocol::Icmp, true) => {
            return Err(IptablesError::Invalid(
                "ports need protocol tcp or udp".into(),
            ));
        }
    };
    let (remote_flag, local_flag) = if egress { ("-d", "-s") } else { ("-s", "-d") };

    for remote in &remotes {
        for local in &locals {
            for protocol in &protocols {
                let mut selection = Vec::new();
                if let Some(net) = remote {
                    selection.extend([remote_flag.to_string(), net.to_string()]);
                }
                if let Some(net) = local {
                    selection.extend([local_flag.to_string(), net.to_string()]);
                }
                if let Some(p) = protocol {
                    selection.extend(["-p".to_string(), p.to_string()]);
                }
                // Remote ports are the destination of what leaves, the source of what arrives.
                selection.extend(port_match(&traffic.remote_ports, egress));
                selection.extend(port_match(&traffic.local_ports, !egress));
                if let Some(path) = &traffic.cgroup {
                    selection.extend(["-m".into(), "cgroup".into(), "--path".into(), path.clone()]);
                }
                rules.extend(action_rules(&selection, *protocol, action, family));
            }
        }
    }
    Ok(Some(rules))
}

fn action_rules(
    selection: &[String],
    protocol: Option<&str>,
    action: Action,
    family: Family,
) -> Vec<Vec<String>> {
    let with = |tail: &[&str]| {
        let mut rule = selection.to_vec();
        rule.extend(strings(tail));
        rule
    };
    let unreachable = match family {
        Family::V4 => "icmp-port-unreachable",
        Family::V6 => "icmp6-port-unreachable",
    };
    match action {
        Action::Drop => vec![with(&["-j", "DROP"])],
        Action::Reject => match protocol {
            Some("tcp") => vec![with(&["-j", "REJECT", "--reject-with", "tcp-reset"])],
            Some(_) => vec![with(&["-j", "REJECT", "--reject-with", unreachable])],
            None => vec![
                with(&["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]),
                with(&["-j", "REJECT", "--reject-with", unreachable]),
            ],
        },
        Action::Loss { probability } => vec![with(&[
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability.to_string(),
            "-j",
            "DROP",
        ])],
        Action::Queue { num } => vec![with(&[
            "-j",
            "NFQUEUE",
            "--queue-num",
            &num.to_string(),
            "--queue-bypass",
        ])],
    }
}

/// `RETURN` rules that exempt each protected flow of this family, both ways: towards the
/// protected address (remote port as destination) and from it (remote port as source).
/// Both go in every chain, because over loopback both ways pass through OUTPUT.
fn protected_rules(traffic: &Traffic, family: Family) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for flow in &traffic.protected {
        let addr = IpNet::host(flow.addr);
        if Family::of(&addr) != family {
            continue;
        }
        let has_ports = flow.remote_port.is_some() || flow.local_port.is_some();
        // Protected flows carry no protocol; SSH and probes are TCP, but a UDP probe
        // (DNS) must not be cut off either.
        let protocols: &[Option<&str>] = if has_ports {
            &[Some("tcp"), Some("udp")]
        } else {
            &[None]
        };
        for (addr_flag, remote_port_flag, local_port_flag) in
            [("-d", "--dport", "--sport"), ("-s", "--sport", "--dport")]
        {
            for protocol in protocols {
                let mut rule = vec![addr_flag.to_string(), addr.to_string()];
                if let Some(p) = protocol {
                    rule.extend(["-p".to_string(), p.to_string()]);
                }
                if let Some(port) = flow.remote_port {
                    rule.extend([remote_port_flag.to_string(), port.to_string()]);
                }
                if let Some(port) = flow.local_port {
                    rule.extend([local_port_flag.to_string(), port.to_string()]);
                }
                rule.extend(strings(&["-j", "RETURN"]));
                rules.push(rule);
            }
        }
    }
    rules
}

// ---------------------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------------------

fn package_of(binary: &str) -> &'static str {
    match binary {
        "nsenter" => "util-linux",
        "nft" => "nftables",
        _ => "iptables",
    }
}

/// Run `program args` (inside `netns` if given) through the tool runner and return what it
/// said, failed or not.
fn run_call(call: Call) -> Result<tool::Output, IptablesError> {
    if let Some(name) = &call.netns
        && !netns::exists(name)
    {
        return Err(IptablesError::NoNamespace(name.clone()));
    }
    tool::run(&call).map_err(|e| match e {
        ToolError::Missing { program } => IptablesError::Missing {
            package: package_of(&program),
            binary: program,
        },
        other => IptablesError::Spawn {
            command: call.display(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

fn run(
    netns: Option<&Netns>,
    program: &str,
    args: &[String],
) -> Result<tool::Output, IptablesError> {
    run_call(Call::new(program, args).in_netns(netns))
}

/// Run `program args` (inside `netns` if given) with `input` on its standard input; an error
/// unless it succeeds.
fn run_with_input(
    netns: Option<&Netns>,
    program: &str,
    args: &[String],
    input: &str,
) -> Result<(), IptablesError> {
    let call = Call::new(program, args).in_netns(netns).with_stdin(input);
    let command = call.display();
    let out = run_call(call)?;
    if out.success {
        Ok(())
    } else {
        Err(command_failed(command, &out))
    }
}

fn run_ok(netns: Option<&Netns>, program: &str, args: &[String]) -> Result<String, IptablesError> {
    let out = run(netns, program, args)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(command_failed(
            Call::new(program, args).in_netns(netns).display(),
            &out,
        ))
    }
}

fn command_failed(command: String, out: &tool::Output) -> IptablesError {
    let stderr = out.stderr.trim();
    let diagnosis = tool::diagnose(stderr);
    IptablesError::Command {
        command,
        stderr: match diagnosis {
            Some((_, hint)) => format!("{stderr} ({hint})"),
            None => stderr.to_string(),
        },
        cause: diagnosis.map_or(Cause::Failed, |(cause, _)| cause),
    }
}

impl IptablesError {
    pub fn cause(&self) -> Cause {
        match self {
            IptablesError::Missing { .. } | IptablesError::Invalid(_) => Cause::Unsupported,
            IptablesError::NoNamespace(_) => Cause::Gone,
            IptablesError::Command { cause, .. } => *cause,
            IptablesError::Spawn { .. }
            | IptablesError::StillPresent(_)
            | IptablesError::Counters { .. } => Cause::Failed,
        }
    }
}

fn run_save(
    netns: Option<&Netns>,
    variant: Variant,
    family: Family,
) -> Result<String, IptablesError> {
    run_ok(netns, &variant.save_binary(family), &[])
}

/// One `*table` section of `iptables-save` output.
#[derive(Debug, Default)]
struct SavedTable {
    name: String,
    /// `(chain, policy)`; user-defined chains have policy `-`.
    chains: Vec<(String, String)>,
    /// `-A ...` lines.
    rules: Vec<String>,
}

impl SavedTable {
    /// Holds anything beyond the built-in chains with an ACCEPT policy.
    fn in_use(&self) -> bool {
        !self.rules.is_empty() || self.chains.iter().any(|(_, policy)| policy != "ACCEPT")
    }
}

fn parse_save(text: &str) -> Vec<SavedTable> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.trim().to_string(),
                ..SavedTable::default()
            });
        } else if let Some(table) = tables.last_mut() {
            if let Some(decl) = line.strip_prefix(':') {
                let mut words = decl.split_whitespace();
                if let (Some(chain), Some(policy)) = (words.next(), words.next()) {
                    table.chains.push((chain.to_string(), policy.to_string()));
                }
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_string());
            } else if let Some((_, rule)) = line
                .strip_prefix('[')
                .and_then(|counted| counted.split_once("] "))
                .filter(|(_, rule)| rule.starts_with("-A "))
            {
                // `*-save -c`: `[PACKETS:BYTES] -A ...`.
                table.rules.push(rule.to_string());
            }
        }
    }
    tables
}

fn mentions(line: &str, chain: &str) -> bool {
    save_words(line).iter().any(|word| word == chain)
}

/// The words of one `iptables-save` line as iptables reads them: `"..."` (with `\"` inside)
/// is one word, so a comment mentioning a chain is not a jump to it.
fn save_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The chain an `-A CHAIN ...` line of `*-save` adds to, and the rule's own target: its last
/// `-j`/`-g` (a comment may hold either word, quoted, and is one word here).
fn chain_and_target(rule: &str) -> (String, Option<String>) {
    let words = save_words(rule);
    let target = words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1].clone());
    (words.get(1).cloned().unwrap_or_default(), target)
}

/// Whether nft itself, which also shows what `*-save` cannot (native sets, maps, chains and
/// rules someone added with `nft`), finds in `table` only the chains `ours` and base chains
/// whose rules all jump into them. Anything else, or a listing that fails: `false`, and the
/// table is kept.
fn nft_table_holds_only(netns: Option<&Netns>, family: Family, table: &str, ours: &[&str]) -> bool {
    nft_listing(netns, family, table).is_some_and(|text| nft_listing_holds_only(&text, ours))
}

/// `nft list table FAMILY TABLE`, `None` when it failed.
fn nft_listing(netns: Option<&Netns>, family: Family, table: &str) -> Option<String> {
    let args = strings(&["list", "table", family.nft_name(), table]);
    run_ok(netns, "nft", &args).ok()
}

/// What a removal starts from: `*-save -c` of each family, and nft's own listing of each
/// table the run created, taken side by side (both are reads, and on the abort path each is
/// a tool run of its own).
struct Listings {
    saved: Vec<(Family, String)>,
    /// `nft list table` of a created table, by family and name; `None` when it failed.
    nft: Vec<(Family, String, Option<String>)>,
}

impl Listings {
    /// The listing taken of `table` before the removal, else a fresh one.
    fn nft_table_holds_only(
        &self,
        netns: Option<&Netns>,
        family: Family,
        table: &str,
        ours: &[&str],
    ) -> bool {
        match self.nft.iter().find(|(f, t, _)| *f == family && t == table) {
            Some((_, _, listed)) => listed
                .as_deref()
                .is_some_and(|text| nft_listing_holds_only(text, ours)),
            None => nft_table_holds_only(netns, family, table, ours),
        }
    }
}

fn nft_listing_holds_only(text: &str, ours: &[&str]) -> bool {
    let mut chain: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("table ") {
            continue;
        }
        if line == "}" {
            chain = None;
            continue;
        }
        if let Some(name) = line.strip_prefix("chain ") {
            chain = Some(name.trim_end_matches('{').trim().trim_matches('"'));
            continue;
        }
        match chain {
            // A set, map, flowtable or named object at table level.
            None => return false,
            Some(name) if ours.contains(&name) => {}
            Some(_) => {
                if line.starts_with("type ") {
                    continue;
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                let into_ours = words
                    .windows(2)
                    .any(|w| (w[0] == "jump" || w[0] == "goto") && ours.contains(&w[1]));
                if !into_ours {
                    return false;
                }
            }
        }
    }
    true
}

/// The `iptables-restore --noflush` input that removes `chains` as `saved` shows them: every
/// rule jumping to one of them deleted (as listed, so it matches exactly), then each chain
/// flushed and deleted. `None` when none of them is there.
fn removal_script(saved: &[SavedTable], chains: &[&OwnedChain]) -> Option<String> {
    let mut script = String::new();
    for table in saved {
        let ours: Vec<&str> = chains
            .iter()
            .filter(|c| c.table == table.name && table.chains.iter().any(|(n, _)| *n == c.name))
            .map(|c| c.name.as_str())
            .collect();
        if ours.is_empty() {
            continue;
        }
        script.push_str(&format!("*{}\n", table.name));
        for rule in &table.rules {
            let (in_chain, target) = chain_and_target(rule);
            let jumps_to_ours = target.is_some_and(|target| ours.contains(&target.as_str()));
            if jumps_to_ours && !ours.contains(&in_chain.as_str()) {
                script.push_str(&format!("-D{}\n", &rule["-A".len()..]));
            }
        }
        for chain in &ours {
            script.push_str(&format!("-F {chain}\n"));
        }
        for chain in &ours {
            script.push_str(&format!("-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
    }
    (!script.is_empty()).then_some(script)
}

/// Which variant to use in `netns`: legacy if it holds rules there and nft holds none,
/// otherwise nft (Debian's default `iptables` alternative). Reads only.
pub fn detect(netns: Option<&Netns>) -> Result<Variant, IptablesError> {
    let installed = |v: Variant| tool::find_binary(&v.save_binary(Family::V4)).is_some();
    match (installed(Variant::Nft), installed(Variant::Legacy)) {
        (false, false) => {
            return Err(IptablesError::Missing {
                binary: "iptables-nft".into(),
                package: "iptables",
            });
        }
        (true, false) => return Ok(Variant::Nft),
        (false, true) => return Ok(Variant::Legacy),
        (true, true) => {}
    }
    let in_use = |variant: Variant| -> Result<bool, IptablesError> {
        for family in Family::BOTH {
            if parse_save(&run_save(netns, variant, family)?)
                .iter()
                .any(SavedTable::in_use)
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if in_use(Variant::Legacy)? && !in_use(Variant::Nft)? {
        Ok(Variant::Legacy)
    } else {
        Ok(Variant::Nft)
    }
}

/// `iptables-save` of one variant and family without comments and counters, so two
/// snapshots compare equal exactly when the rules are the same.
pub fn save(
    netns: Option<&Netns>,
    variant: Variant,
    family: Family,
) -> Result<String, IptablesError> {
    Ok(normalise_save(&run_save(netns, variant, family)?))
}

fn normalise_save(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let line = match line.rfind(" [") {
            // `:INPUT ACCEPT [12:3456]` → `:INPUT ACCEPT`
            Some(at) if line.starts_with(':') && line.ends_with(']') => &line[..at],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every FAULTLINE chain and jump in `netns`, in any variant and family, as
/// `iptables-nft -t filter: -A INPUT -j FAULTLINE-x-IN`. Tools that are missing or fail
/// are skipped: this feeds `doctor` and `status`, which must not fail on a partial host.
pub fn leftovers(netns: Option<&Netns>) -> Vec<String> {
    let mut found = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        for family in Family::BOTH {
            let Ok(text) = run_save(netns, variant, family) else {
                continue;
            };
            for table in parse_save(&text) {
                let chains = table
                    .chains
                    .iter()
                    .filter(|(c, _)| c.starts_with(CHAIN_PREFIX))
                    .map(|(c, _)| format!("-N {c}"));
                let rules = table
                    .rules
                    .iter()
                    .filter(|r| r.contains(CHAIN_PREFIX))
                    .cloned();
                for line in chains.chain(rules) {
                    found.push(format!(
                        "{} -t {}: {line}",
                        variant.binary(family),
                        table.name
                    ));
                }
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// Applying, removing, counting
// ---------------------------------------------------------------------------------------

fn table_args(chain: &OwnedChain, rest: &[&str]) -> Vec<String> {
    let mut args = strings(&["-w", LOCK_WAIT_SECONDS, "-t", &chain.table]);
    args.extend(strings(rest));
    args
}

fn jump_args(chain: &OwnedChain, jump: &Jump, command: &[&str]) -> Vec<String> {
    let mut args = table_args(chain, command);
    args.extend(jump.matches.iter().cloned());
    args.extend(["-j".to_string(), chain.name.clone()]);
    args
}

/// One rule set changes the host at a time: two faults ending together (or a revert that
/// outlived its timeout and the next one) must not both decide that a table they created is
/// now empty, or list each other's half-removed chains.
static RULESET_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ruleset_lock() -> std::sync::MutexGuard<'static, ()> {
    RULESET_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a removal says: what the rules had matched, or why they could not be removed.
pub type Removal = Result<Option<Counters>, IptablesError>;

/// A removal waiting for the rule-set lock (see [`RuleSet::remove_counted`]).
struct Waiting {
    ticket: u64,
    set: RuleSet,
    done: std::sync::mpsc::Sender<Removal>,
}

static WAITING: Mutex<Vec<Waiting>> = Mutex::new(Vec::new());
static NEXT_TICKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tests only: each batch removed, as (namespace, how many sets).
#[cfg(test)]
static BATCHES: Mutex<Vec<(Option<Netns>, usize)>> = Mutex::new(Vec::new());

fn waiting() -> std::sync::MutexGuard<'static, Vec<Waiting>> {
    WAITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take the waiting removals that `pick` chooses, in the order they arrived.
fn take_waiting(pick: impl Fn(&Waiting) -> bool) -> Vec<Waiting> {
    let mut all = waiting();
    let (taken, left): (Vec<Waiting>, Vec<Waiting>) = all.drain(..).partition(|w| pick(w));
    *all = left;
    taken
}

/// Remove `sets` (one namespace, one variant) with one restore transaction per family,
/// starting from `listings` (`*-save -c` per family, taken under the rule-set lock); what
/// each set's rules matched, or why that set could not be removed, in the order given.
fn remove_listed(sets: &[&RuleSet], listings: &Listings) -> Vec<Removal> {
    let Some(first) = sets.first() else {
        return Vec::new();
    };
    let mut merged = RuleSet {
        netns: first.netns.clone(),
        variant: first.variant,
        chains: Vec::new(),
        created_tables: Vec::new(),
    };
    for set in sets {
        merged.chains.extend(set.chains.iter().cloned());
        for table in &set.created_tables {
            if !merged.created_tables.contains(table) {
                merged.created_tables.push(table.clone());
            }
        }
    }
    let netns = merged.netns.as_ref();
    #[cfg(test)]
    BATCHES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((merged.netns.clone(), sets.len()));
    let mut counted: Vec<Option<Counters>> = vec![Some(Counters::default()); sets.len()];
    for (family, listing) in &listings.saved {
        for (set, counted) in sets.iter().zip(&mut counted) {
            for chain in set.chains.iter().filter(|c| c.family == *family) {
                *counted = counted.take().and_then(|mut total| {
                    let counts = chain_counters(listing, chain).ok()?;
                    total.action.add(counts.action);
                    total.protected.add(counts.protected);
                    total.chains.push(counts);
                    Some(total)
                });
            }
        }
        let chains: Vec<&OwnedChain> = merged
            .chains
            .iter()
            .filter(|c| c.family == *family)
            .collect();
        let mut saved = parse_save(listing);
        // A table iptables-nft created for this run that holds nothing but these chains
        // goes in one call (the restore transaction alone takes longer on nft), and with
        // it the empty base chains it was created with.
        let deleted = merged.delete_created_tables_holding_only(*family, &saved, &chains, listings);
        saved.retain(|table| !deleted.contains(&table.name));
        let Some(script) = removal_script(&saved, &chains) else {
            continue;
        };
        // One transaction: the reverts of a breach wait for one tool call, not a dozen.
        let restore = merged.variant.restore_binary(*family);
        let args = strings(&["-w", LOCK_WAIT_SECONDS, "--noflush"]);
        if run_with_input(netns, &restore, &args, &script).is_err() {
            // Something changed since the listing: delete one rule at a time instead.
            for chain in chains {
                let exists = saved.iter().any(|t| {
                    t.name == chain.table && t.chains.iter().any(|(c, _)| *c == chain.name)
                });
                if exists {
                    merged.delete_chain(chain);
                }
            }
        }
    }
    // One listing per family, for the check and for the tables left to drop.
    let mut now = Vec::new();
    for family in merged.families() {
        match run_save(netns, merged.variant, family) {
            Ok(listing) => now.push((family, parse_save(&listing))),
            Err(e) => return sets.iter().map(|_| Err(e.duplicate())).collect(),
        }
    }
    sets.iter()
        .zip(counted)
        .map(|(set, counted)| {
            let remaining = set.remaining(&now);
            if !remaining.is_empty() {
                return Err(IptablesError::StillPresent(remaining));
            }
            set.drop_created_tables(&now)?;
            Ok(counted)
        })
        .collect()
}

impl RuleSet {
    fn binary(&self, chain: &OwnedChain) -> String {
        self.variant.binary(chain.family)
    }

    /// Create the chains and their rules, then the jumps into them. On a failure half-way,
    /// what was created is removed again and the first error returned.
    pub fn apply(&self) -> Result<(), IptablesError> {
        let _lock = ruleset_lock();
        let result = self.create();
        if let Err(err) = result {
            // The cause matters more than a failed cleanup; `remove` reports leftovers via
            // `status` if this one fails too.
            let _ = self.remove_unlocked();
            return Err(err);
        }
        Ok(())
    }

    fn create(&self) -> Result<(), IptablesError> {
        let netns = self.netns.as_ref();
        for chain in &self.chains {
            let binary = self.binary(chain);
            run_ok(netns, &binary, &table_args(chain, &["-N", &chain.name]))?;
            for rule in &chain.rules {
                let mut args = table_args(chain, &["-A", &chain.name]);
                args.extend(rule.iter().cloned());
                run_ok(netns, &binary, &args)?;
            }
        }
        for chain in &self.chains {
            for jump in &chain.jumps {
                let hook = jump.hook.to_string();
                let args = jump_args(chain, jump, &["-I", &hook, "1"]);
                run_ok(netns, &self.binary(chain), &args)?;
            }
        }
        Ok(())
    }

    /// Delete the jumps, then flush and delete the chains; whatever is already gone is fine.
    /// Then check with `*-save` that nothing of this set is left, and drop tables that
    /// iptables-nft created for it and that hold nothing else.
    pub fn remove(&self) -> Result<(), IptablesError> {
        self.remove_counted().map(drop)
    }

    /// Remove, and say what the rules had matched until then, read from the listing the
    /// removal starts from (`None` when a chain was not there to count).
    ///
    /// Removals of several sets in one namespace go together (group commit): whoever takes
    /// the rule-set lock first lists the rules, then takes with its own every removal for the
    /// same namespace that has arrived meanwhile, and removes them all in one restore
    /// transaction. So the reverts of a breach that ends several rule-set faults in one
    /// namespace wait for one transaction, not one each.
    pub fn remove_counted(&self) -> Removal {
        let ticket = NEXT_TICKET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, result) = std::sync::mpsc::channel();
        waiting().push(Waiting {
            ticket,
            set: self.clone(),
            done,
        });
        let _lock = ruleset_lock();
        if let Ok(removed) = result.try_recv() {
            // Another removal took this one with its own.
            return removed;
        }
        let netns = self.netns.as_ref();
        if let Some(name) = netns
            && !netns::exists(name)
        {
            // The namespace, and everything in it, is gone.
            take_waiting(|w| w.ticket == ticket);
            return Ok(None);
        }
        let listings = match self.removal_listings() {
            Ok(listings) => listings,
            Err(e) => {
                take_waiting(|w| w.ticket == ticket);
                return Err(e);
            }
        };
        let families = self.families();
        let batch = take_waiting(|w| {
            w.ticket == ticket
                || (w.set.netns == self.netns
                    && w.set.variant == self.variant
                    && w.set.families().iter().all(|f| families.contains(f)))
        });
        let sets: Vec<&RuleSet> = batch.iter().map(|w| &w.set).collect();
        let mut mine = Ok(None);
        for (waiter, removed) in batch.iter().zip(remove_listed(&sets, &listings)) {
            if waiter.ticket == ticket {
                mine = removed;
            } else {
                // The waiter may have timed out and gone; nothing else to tell then.
                let _ = waiter.done.send(removed);
            }
        }
        mine
    }

    fn remove_unlocked(&self) -> Removal {
        let netns = self.netns.as_ref();
        if let Some(name) = netns
            && !netns::exists(name)
        {
            return Ok(None);
        }
        remove_listed(&[self], &self.removal_listings()?)
            .pop()
            .unwrap_or(Ok(None))
    }

    /// The counted listings, and on nft the listing of each table the run created, side by
    /// side.
    fn removal_listings(&self) -> Result<Listings, IptablesError> {
        let netns = self.netns.as_ref();
        let runner = tool::current();
        let created: &[TableRef] = if self.variant == Variant::Nft {
            &self.created_tables
        } else {
            &[]
        };
        std::thread::scope(|scope| {
            let nft: Vec<_> = created
                .iter()
                .map(|created| {
                    let runner = runner.clone();
                    let listing = scope.spawn(move || {
                        tool::with_runner(runner, || {
                            nft_listing(netns, created.family, &created.table)
                        })
                    });
                    (created, listing)
                })
                .collect();
            let saved = self.counted_listings();
            let nft = nft
                .into_iter()
                .map(|(created, listing)| {
                    let listed = listing.join().ok().flatten();
                    (created.family, created.table.clone(), listed)
                })
                .collect();
            Ok(Listings { saved: saved?, nft })
        })
    }

    /// `*-save -c` of each family this set has chains in: what a removal starts from.
    fn counted_listings(&self) -> Result<Vec<(Family, String)>, IptablesError> {
        let netns = self.netns.as_ref();
        self.families()
            .into_iter()
            .map(|family| {
                let listing = run_ok(netns, &self.variant.save_binary(family), &strings(&["-c"]))?;
                Ok((family, listing))
            })
            .collect()
    }

    /// Of the tables this set's run created in `family`, delete those that (as `saved`
    /// shows them) hold only `chains` and the jumps into them; the names of those deleted.
    /// Best effort: a table that is not deleted here goes through the restore path.
    fn delete_created_tables_holding_only(
        &self,
        family: Family,
        saved: &[SavedTable],
        chains: &[&OwnedChain],
        listings: &Listings,
    ) -> Vec<String> {
        if self.variant != Variant::Nft {
            return Vec::new();
        }
        let mut deleted = Vec::new();
        for created in self.created_tables.iter().filter(|t| t.family == family) {
            let Some(table) = saved.iter().find(|t| t.name == created.table) else {
                continue;
            };
            let ours: Vec<&str> = chains
                .iter()
                .filter(|c| c.table == table.name)
                .map(|c| c.name.as_str())
                .collect();
            // Ours: a rule in one of our chains, or one whose own target is one of them (as
            // `removal_script` decides; a comment that merely names a chain is not).
            let foreign_rule = table.rules.iter().any(|rule| {
                let (in_chain, target) = chain_and_target(rule);
                !ours.contains(&in_chain.as_str())
                    && !target.is_some_and(|target| ours.contains(&target.as_str()))
            });
            let foreign_chain = table
                .chains
                .iter()
                .any(|(name, policy)| !ours.contains(&name.as_str()) && policy != "ACCEPT");
            if ours.is_empty()
                || foreign_rule
                || foreign_chain
                || !listings.nft_table_holds_only(
                    self.netns.as_ref(),
                    family,
                    &created.table,
                    &ours,
                )
            {
                continue;
            }
            let args = strings(&["delete", "table", family.nft_name(), &created.table]);
            if run_ok(self.netns.as_ref(), "nft", &args).is_ok() {
                deleted.push(created.table.clone());
            }
        }
        deleted
    }

    /// Best effort: failures show up in the verification that follows.
    fn delete_chain(&self, chain: &OwnedChain) {
        let netns = self.netns.as_ref();
        let binary = self.binary(chain);
        for jump in &chain.jumps {
            let hook = jump.hook.to_string();
            let args = jump_args(chain, jump, &["-D", &hook]);
            for _ in 0..MAX_JUMP_DELETES {
                if !matches!(run(netns, &binary, &args), Ok(out) if out.success) {
                    break;
                }
            }
        }
        let _ = run(netns, &binary, &table_args(chain, &["-F", &chain.name]));
        let _ = run(netns, &binary, &table_args(chain, &["-X", &chain.name]));
    }

    /// Lines of `*-save` (`now`, by family) that still name one of this set's chains.
    fn remaining(&self, now: &[(Family, Vec<SavedTable>)]) -> Vec<String> {
        let mut remaining = Vec::new();
        for (family, tables) in now {
            let binary = self.variant.binary(*family);
            for table in tables {
                for chain in self
                    .chains
                    .iter()
                    .filter(|c| c.family == *family && c.table == table.name)
                {
                    if table.chains.iter().any(|(c, _)| *c == chain.name) {
                        remaining.push(format!("{binary} -t {}: chain {}", table.name, chain.name));
                    }
                    for rule in table.rules.iter().filter(|r| mentions(r, &chain.name)) {
                        remaining.push(format!("{binary} -t {}: {rule}", table.name));
                    }
                }
            }
        }
        remaining
    }

    /// The tables the run created that (as `now` shows them) hold nothing any more.
    fn drop_created_tables(&self, now: &[(Family, Vec<SavedTable>)]) -> Result<(), IptablesError> {
        if self.variant != Variant::Nft {
            return Ok(());
        }
        let netns = self.netns.as_ref();
        for created in &self.created_tables {
            let listed;
            let saved = match now.iter().find(|(family, _)| *family == created.family) {
                Some((_, saved)) => saved,
                None => {
                    listed = parse_save(&run_save(netns, self.variant, created.family)?);
                    &listed
                }
            };
            let unused = saved
                .iter()
                .find(|t| t.name == created.table)
                .is_some_and(|t| !t.in_use())
                && nft_table_holds_only(netns, created.family, &created.table, &[]);
            if unused {
                let args = strings(&["delete", "table", created.family.nft_name(), &created.table]);
                run_ok(netns, "nft", &args)?;
            }
        }
        Ok(())
    }

    /// Packets and bytes matched so far by the action rules and by the protection rules:
    /// one `*-save -c` per family (a listing per chain took a tool call each, on the abort
    /// path). A chain that is not there is an error.
    pub fn counters(&self) -> Result<Counters, IptablesError> {
        let mut total = Counters::default();
        for (family, listing) in self.counted_listings()? {
            for chain in self.chains.iter().filter(|c| c.family == family) {
                let counts = chain_counters(&listing, chain)?;
                total.action.add(counts.action);
                total.protected.add(counts.protected);
                total.chains.push(counts);
            }
        }
        Ok(total)
    }
}

/// What the rules of `chain` matched, from `*-save -c` output: `[PACKETS:BYTES] -A CHAIN
/// ... -j TARGET` lines; a rule whose target is RETURN lets a protected flow through.
fn chain_counters(listing: &str, chain: &OwnedChain) -> Result<ChainCounters, IptablesError> {
    let mut counts = ChainCounters {
        family: chain.family,
        chain: chain.name.clone(),
        action: PacketCount::default(),
        protected: PacketCount::default(),
    };
    let mut table = "";
    let mut declared = false;
    for line in listing.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
            continue;
        }
        if table != chain.table {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            declared |= decl.split_whitespace().next() == Some(chain.name.as_str());
            continue;
        }
        let Some((count, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let words = save_words(rule);
        if words.first().map(String::as_str) != Some("-A") || words.get(1) != Some(&chain.name) {
            continue;
        }
        let bad = || IptablesError::Counters {
            chain: chain.name.clone(),
            line: line.to_string(),
        };
        let (packets, bytes) = count.split_once(':').ok_or_else(bad)?;
        let count = PacketCount {
            packets: packets.parse().map_err(|_| bad())?,
            bytes: bytes.parse().map_err(|_| bad())?,
        };
        let target = words
            .windows(2)
            .rev()
            .find(|w| w[0] == "-j" || w[0] == "-g")
            .map(|w| w[1].as_str());
        if target == Some("RETURN") {
            counts.protected.add(count);
        } else {
            counts.action.add(count);
        }
    }
    if !declared {
        return Err(IptablesError::Counters {
            chain: chain.name.clone(),
            line: format!("(no chain {} in table {})", chain.name, chain.table),
        });
    }
    Ok(counts)
}

/// Where the variant's binary is, if installed (for `doctor`).
pub fn installed(variant: Variant, family: Family) -> Option<PathBuf> {
    tool::find_binary(&variant.binary(family))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Direction, Protected};

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    fn rules(lines: &[&str]) -> Vec<Vec<String>> {
        lines.iter().map(|l| words(l)).collect()
    }

    fn any_traffic(direction: Direction) -> Traffic {
        Traffic::everything(direction)
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ports(list: &[&str]) -> Vec<PortRange> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn jump(hook: Hook, matches: &str) -> Jump {
        Jump {
            hook,
            matches: words(matches),
        }
    }

    fn build(traffic: &Traffic, action: Action) -> RuleSet {
        RuleSet::build(traffic, action, "t1", Variant::Nft).unwrap()
    }

    /// A rule set for 192.0.2.0/24 egress: one IPv4 chain, one jump from OUTPUT.
    fn egress_drop() -> RuleSet {
        let mut t = any_traffic(Direction::Egress);
        t.remote = nets(&["192.0.2.0/24"]);
        build(&t, Action::Drop)
    }

    const SAVED_WITH_OURS: &str = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :FAULTLINE-t1-OUT - [0:0]\n-A OUTPUT -j FAULTLINE-t1-OUT\n\
        -A FAULTLINE-t1-OUT -d 192.0.2.0/24 -j DROP\nCOMMIT\n";
    const SAVED_CLEAN: &str = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn a_refused_restore_transaction_falls_back_to_one_rule_at_a_time_and_is_verified() {
        use crate::sys::tool::{self, fake};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let saves = AtomicUsize::new(0);
        let deletes = AtomicUsize::new(0);
        let runner = fake::Recording::answering(move |call| match call.program.as_str() {
            // The removal starts from a listing with counters (`-c`).
            "iptables-nft-save" if saves.fetch_add(1, Ordering::SeqCst) == 0 => {
                fake::ok(&SAVED_WITH_OURS.replace("\n-A ", "\n[3:180] -A "))
            }
            "iptables-nft-save" => fake::ok(SAVED_CLEAN),
            "iptables-nft-restore" => fake::failed("iptables-restore: line 3 failed"),
            // The jump is there once; the second delete finds none.
            "iptables-nft" if call.args.contains(&"-D".to_string()) => {
                if deletes.fetch_add(1, Ordering::SeqCst) == 0 {
                    fake::ok("")
                } else {
                    fake::failed("Bad rule (does a matching rule exist in that chain?).")
                }
            }
            _ => fake::ok(""),
        });
        let set = egress_drop();
        tool::scoped(runner.clone(), || set.remove()).expect("removed");
        assert_eq!(
            runner.lines(),
            [
                "iptables-nft-save -c",
                "iptables-nft-restore -w 5 --noflush",
                "iptables-nft -w 5 -t filter -D OUTPUT -j FAULTLINE-t1-OUT",
                "iptables-nft -w 5 -t filter -D OUTPUT -j FAULTLINE-t1-OUT",
                "iptables-nft -w 5 -t filter -F FAULTLINE-t1-OUT",
                "iptables-nft -w 5 -t filter -X FAULTLINE-t1-OUT",
                "iptables-nft-save ",
            ]
        );
        let script = runner.calls()[1].stdin.clone().unwrap();
        assert_eq!(
            script,
            "*filter\n-D OUTPUT -j FAULTLINE-t1-OUT\n-F FAULTLINE-t1-OUT\n-X FAULTLINE-t1-OUT\nCOMMIT\n"
        );
    }

    #[test]
    fn a_rule_the_kernel_refuses_undoes_the_chain_already_made_and_says_why() {
        use crate::sys::tool::{self, fake};
        let runner = fake::Recording::answering(|call| match call.program.as_str() {
            "iptables-nft" if call.args.contains(&"-A".to_string()) => {
                fake::failed("iptables v1.8.9 (nf_tables): Couldn't load target `DROP'")
            }
            "iptables-nft-save" => fake::ok(
                SAVED_CLEAN
                    .replace("COMMIT", ":FAULTLINE-t1-OUT - [0:0]\nCOMMIT")
                    .as_str(),
            ),
            _ => fake::ok(""),
        });
        let set = egress_drop();
        let err = tool::scoped(runner.clone(), || set.apply()).unwrap_err();
        assert!(err.to_string().contains("Couldn't load target"), "{err}");
        assert!(err.to_string().contains("faultline doctor"), "{err}");
        let lines = runner.lines();
        assert_eq!(
            lines[..3],
            [
                "iptables-nft -w 5 -t filter -N FAULTLINE-t1-OUT",
                "iptables-nft -w 5 -t filter -A FAULTLINE-t1-OUT -d 192.0.2.0/24 -j DROP",
                "iptables-nft-save -c",
            ]
        );
        // No jump was ever inserted; the half-made chain goes in one transaction.
        assert!(!lines.iter().any(|l| l.contains(" -I ")), "{lines:?}");
        assert_eq!(lines[3], "iptables-nft-restore -w 5 --noflush");
        assert_eq!(
            runner.calls()[3].stdin.as_deref(),
            Some("*filter\n-F FAULTLINE-t1-OUT\n-X FAULTLINE-t1-OUT\nCOMMIT\n")
        );
    }

    fn invalid(traffic: &Traffic, action: Action, id: &str) -> String {
        match RuleSet::build(traffic, action, id, Variant::Nft) {
            Err(IptablesError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn egress_tcp_to_a_block_on_one_interface() {
        let mut t = any_traffic(Direction::Egress);
        t.interfaces = vec!["eth0".into()];
        t.protocol = Protocol::Tcp;
        t.remote = nets(&["10.0.0.0/8"]);
        t.remote_ports = ports(&["443"]);
        let set = build(&t, Action::Drop);
        assert_eq!(
            set.chains,
            vec![OwnedChain {
                family: Family::V4,
                table: "filter".into(),
                name: "FAULTLINE-t1-OUT".into(),
                jumps: vec![jump(Hook::Output, "-o eth0")],
                rules: rules(&["-d 10.0.0.0/8 -p tcp --dport 443 -j DROP"]),
            }]
        );
        assert!(set.created_tables.is_empty());
    }

    #[test]
    fn both_directions_ipv6_reject_splits_tcp_reset_from_icmp() {
        let mut t = any_traffic(Direction::Both);
        t.remote = nets(&["fd00::/8"]);
        let set = build(&t, Action::Reject);
        let summary: Vec<_> = set
            .chains
            .iter()
            .map(|c| (c.family, c.name.as_str(), c.jumps.clone(), c.rules.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Family::V6,
                    "FAULTLINE-t1-IN",
                    vec![jump(Hook::Input, "")],
                    rules(&[
                        "-s fd00::/8 -p tcp -j REJECT --reject-with tcp-reset",
                        "-s fd00::/8 -j REJECT --reject-with icmp6-port-unreachable",
                    ])
                ),
                (
                    Family::V6,
                    "FAULTLINE-t1-OUT",
                    vec![jump(Hook::Output, "")],
                    rules(&[
                        "-d fd00::/8 -p tcp -j REJECT --reject-with tcp-reset",
                        "-d fd00::/8 -j REJECT --reject-with icmp6-port-unreachable",
                    ])
                ),
            ]
        );
    }

    #[test]
    fn no_addresses_means_both_families_and_icmp_is_icmpv6_in_ip6tables() {
        let mut t = any_traffic(Direction::Ingress);
        t.protocol = Protocol::Icmp;
        t.interfaces = vec!["veth0".into(), "veth1".into()];
        let set = build(&t, Action::Loss { probability: 0.3 });
        assert_eq!(set.chains.len(), 2);
        assert_eq!(set.chains[0].family, Family::V4);
        assert_eq!(
            set.chains[0].rules,
            rules(&["-p icmp -m statistic --mode random --probability 0.3 -j DROP"])
        );
        assert_eq!(set.chains[1].family, Family::V6);
        assert_eq!(
            set.chains[1].rules,
            rules(&["-p icmpv6 -m statistic --mode random --probability 0.3 -j DROP"])
        );
        assert_eq!(
            set.chains[1].jumps,
            vec![jump(Hook::Input, "-i veth0"), jump(Hook::Input, "-i veth1"),]
        );
    }

    #[test]
    fn ports_with_all_protocols_give_one_rule_per_tcp_and_udp() {
        let mut t = any_traffic(Direction::Egress);
        t.remote = nets(&["192.0.2.0/24"]);
        t.local = nets(&["198.51.100.7"]);
        t.remote_ports = ports(&["80", "8000-8100"]);
        t.local_ports = ports(&["1000-2000"]);
        let set = build(&t, Action::Queue { num: 3 });
        assert_eq!(
            set.chains[0].rules,
            rules(&[
                "-d 192.0.2.0/24 -s 198.51.100.7/32 -p tcp -m multiport --dports 80,8000:8100 --sport 1000:2000 -j NFQUEUE --queue-num 3 --queue-bypass",
                "-d 192.0.2.0/24 -s 198.51.100.7/32 -p udp -m multiport --dports 80,8000:8100 --sport 1000:2000 -j NFQUEUE --queue-num 3 --queue-bypass",
            ])
        );
        // Ingress swaps addresses and ports.
        t.direction = Direction::Ingress;
        t.protocol = Protocol::Udp;
        let set = build(&t, Action::Drop);
        assert_eq!(set.chains[0].name, "FAULTLINE-t1-IN");
        assert_eq!(
            set.chains[0].rules,
            rules(&[
                "-s 192.0.2.0/24 -d 198.51.100.7/32 -p udp -m multiport --sports 80,8000:8100 --dport 1000:2000 -j DROP"
            ])
        );
    }

    #[test]
    fn protected_flows_come_first_in_both_directions_and_only_in_their_family() {
        let mut t = any_traffic(Direction::Ingress);
        t.protocol = Protocol::Tcp;
        t.protected = vec![
            Protected {
                addr: "192.0.2.7".parse().unwrap(),
                remote_port: None,
                local_port: Some(22),
                reason: "SSH_CONNECTION".into(),
            },
            Protected {
                addr: "2001:db8::9".parse().unwrap(),
                remote_port: None,
                local_port: None,
                reason: "probe health".into(),
            },
        ];
        let set = build(&t, Action::Drop);
        assert_eq!(
            set.chains[0].rules,
            rules(&[
                "-d 192.0.2.7/32 -p tcp --sport 22 -j RETURN",
                "-d 192.0.2.7/32 -p udp --sport 22 -j RETURN",
                "-s 192.0.2.7/32 -p tcp --dport 22 -j RETURN",
                "-s 192.0.2.7/32 -p udp --dport 22 -j RETURN",
                "-p tcp -j DROP",
            ])
        );
        assert_eq!(
            set.chains[1].rules,
            rules(&[
                "-d 2001:db8::9/128 -j RETURN",
                "-s 2001:db8::9/128 -j RETURN",
                "-p tcp -j DROP",
            ])
        );
    }

    #[test]
    fn a_family_whose_address_list_excludes_it_gets_no_chain() {
        let mut t = any_traffic(Direction::Egress);
        t.remote = nets(&["10.0.0.1", "fd00::1"]);
        t.local = nets(&["10.0.0.2"]);
        let set = build(&t, Action::Drop);
        assert_eq!(set.chains.len(), 1);
        assert_eq!(
            set.chains[0].rules,
            rules(&["-d 10.0.0.1/32 -s 10.0.0.2/32 -j DROP"])
        );
    }

    #[test]
    fn nested_blocks_are_merged_so_loss_rolls_once_per_packet() {
        let mut t = any_traffic(Direction::Egress);
        t.remote = nets(&["10.1.0.0/16", "10.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12"]);
        let set = build(&t, Action::Loss { probability: 1.0 });
        assert_eq!(
            set.chains[0].rules,
            rules(&[
                "-d 10.0.0.0/8 -m statistic --mode random --probability 1 -j DROP",
                "-d 172.16.0.0/12 -m statistic --mode random --probability 1 -j DROP",
            ])
        );
    }

    #[test]
    fn cgroup_selects_egress_only() {
        let mut t = any_traffic(Direction::Egress);
        t.protocol = Protocol::Udp;
        t.cgroup = Some("system.slice/api.service".into());
        let set = build(&t, Action::Drop);
        assert_eq!(
            set.chains[0].rules,
            rules(&["-p udp -m cgroup --path system.slice/api.service -j DROP"])
        );
        for direction in [Direction::Ingress, Direction::Both] {
            t.direction = direction;
            assert!(invalid(&t, Action::Drop, "t1").contains("egress"));
        }
    }

    #[test]
    fn a_table_is_only_ours_when_nft_shows_nothing_else() {
        let ours = ["FAULTLINE-t1-OUT"];
        let listing = "table ip filter {\n\tchain OUTPUT {\n\t\ttype filter hook output priority filter; policy accept;\n\
                       \t\tcounter packets 3 bytes 180 jump FAULTLINE-t1-OUT\n\t}\n\n\
                       \tchain FAULTLINE-t1-OUT {\n\t\tip daddr 192.0.2.0/24 counter packets 0 bytes 0 drop\n\t}\n}\n";
        assert!(nft_listing_holds_only(listing, &ours));
        assert!(
            !nft_listing_holds_only(listing, &[]),
            "our chain is something else to a table with none"
        );
        let with_set = listing.replace(
            "\n}\n",
            "\n\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 10.1.1.1 }\n\t}\n}\n",
        );
        assert!(!nft_listing_holds_only(&with_set, &ours), "a native set");
        let native_rule = listing.replace(
            "jump FAULTLINE-t1-OUT\n",
            "jump FAULTLINE-t1-OUT\n\t\tudp dport 5353 accept comment \"FAULTLINE-t1-OUT\"\n",
        );
        assert!(
            !nft_listing_holds_only(&native_rule, &ours),
            "a rule of someone else's"
        );
        let (chain, target) =
            chain_and_target("-A INPUT -m comment --comment FAULTLINE-t1-OUT -j ACCEPT");
        assert_eq!(
            (chain.as_str(), target.as_deref()),
            ("INPUT", Some("ACCEPT"))
        );
    }

    #[test]
    fn counters_come_from_one_save_listing_per_family() {
        let chain = egress_drop().chains.remove(0);
        let name = &chain.name;
        let listing = format!(
            "# Generated by iptables-nft-save\n*nat\n:{name} - [0:0]\n[9:9] -A {name} -j DROP\nCOMMIT\n\
             *filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [5:300]\n:{name} - [0:0]\n\
             [7:420] -A OUTPUT -j {name}\n\
             [2:120] -A {name} -d 10.0.0.9/32 -m comment --comment \"-j DROP\" -j RETURN\n\
             [5:300] -A {name} -j DROP\nCOMMIT\n"
        );
        let counts = chain_counters(&listing, &chain).unwrap();
        assert_eq!(
            counts.protected,
            PacketCount {
                packets: 2,
                bytes: 120
            },
            "the RETURN rule, whatever its comment says"
        );
        assert_eq!(
            counts.action,
            PacketCount {
                packets: 5,
                bytes: 300
            },
            "only the chain's own rules in its own table"
        );
        let gone = listing.replace(&format!(":{name} - [0:0]\n"), "");
        assert!(
            chain_counters(&gone, &chain).is_err(),
            "a chain not listed: {gone}"
        );
    }

    #[test]
    fn selections_iptables_cannot_express_are_refused() {
        let mut t = any_traffic(Direction::Egress);
        assert!(invalid(&t, Action::Drop, "this_id_is_too_long").contains("1 to 14"));
        assert!(invalid(&t, Action::Drop, "a-b").contains("letters"));
        assert!(invalid(&t, Action::Loss { probability: 1.5 }, "t1").contains("between 0 and 1"));
        t.interfaces = vec!["an-interface-name".into()];
        assert!(invalid(&t, Action::Drop, "t1").contains("interface"));
        t.interfaces.clear();
        t.remote_ports = (1..=16).map(|p| PortRange { lo: p, hi: p }).collect();
        assert!(invalid(&t, Action::Drop, "t1").contains("at most 15"));
        t.remote_ports = ports(&["53"]);
        t.protocol = Protocol::Icmp;
        assert!(invalid(&t, Action::Drop, "t1").contains("tcp or udp"));
    }

    #[test]
    fn the_longest_id_fits_the_kernel_chain_name_limit_and_the_plan_round_trips() {
        let mut t = any_traffic(Direction::Both);
        t.netns = Some("fl-b-1".into());
        let set = RuleSet::build(
            &t,
            Action::Queue { num: 7 },
            "abcdefghijklmn",
            Variant::Legacy,
        )
        .unwrap();
        assert!(set.chains.iter().all(|c| c.name.len() <= MAX_CHAIN_NAME));
        assert_eq!(set.chains[1].name, "FAULTLINE-abcdefghijklmn-OUT");
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<RuleSet>(&json).unwrap(), set);
    }

    #[test]
    fn save_output_is_compared_without_comments_and_counters() {
        let text = "# Generated by iptables-nft-save v1.8.9 on Mon\n*filter\n:INPUT ACCEPT [12:3456]\n:OTHER - [0:0]\n-A INPUT -s 192.0.2.1/32 -j OTHER\nCOMMIT\n# Completed on Mon\n";
        assert_eq!(
            normalise_save(text),
            "*filter\n:INPUT ACCEPT\n:OTHER -\n-A INPUT -s 192.0.2.1/32 -j OTHER\nCOMMIT\n"
        );
        let tables = parse_save(text);
        assert_eq!(tables.len(), 1);
        assert!(tables[0].in_use());
        let empty = parse_save("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(!empty[0].in_use());
        let policy = parse_save("*filter\n:INPUT DROP [0:0]\nCOMMIT\n");
        assert!(policy[0].in_use());
    }

    #[test]
    fn the_removal_script_deletes_the_listed_jumps_then_the_chains() {
        let chain = |name: &str| OwnedChain {
            family: Family::V4,
            table: "filter".into(),
            name: name.into(),
            jumps: Vec::new(),
            rules: Vec::new(),
        };
        let (inbound, outbound) = (chain("FAULTLINE-1-IN"), chain("FAULTLINE-1-OUT"));
        let saved = parse_save(
            "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n:FAULTLINE-1-IN - [0:0]\n:FAULTLINE-1-OUT - [0:0]\n\
             :OTHER - [0:0]\n-A INPUT -i v0 -j FAULTLINE-1-IN\n-A INPUT -j OTHER\n\
             -A OUTPUT -o v0 -p tcp -j FAULTLINE-1-OUT\n-A FAULTLINE-1-IN -s 10.0.0.1/32 -j DROP\n\
             -A OTHER -j FAULTLINE-1-IN\n\
             -A INPUT -m comment --comment \"undo -j FAULTLINE-1-IN\" -j ACCEPT\n\
             -A INPUT -m comment --comment \"say \\\"-j ACCEPT\\\"\" -j FAULTLINE-1-OUT\nCOMMIT\n",
        );
        assert_eq!(
            removal_script(&saved, &[&inbound, &outbound]).unwrap(),
            "*filter\n-D INPUT -i v0 -j FAULTLINE-1-IN\n-D OUTPUT -o v0 -p tcp -j FAULTLINE-1-OUT\n\
             -D OTHER -j FAULTLINE-1-IN\n\
             -D INPUT -m comment --comment \"say \\\"-j ACCEPT\\\"\" -j FAULTLINE-1-OUT\n\
             -F FAULTLINE-1-IN\n-F FAULTLINE-1-OUT\n\
             -X FAULTLINE-1-IN\n-X FAULTLINE-1-OUT\nCOMMIT\n"
        );
        // Already gone: nothing to run.
        let clean = parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(removal_script(&clean, &[&inbound, &outbound]), None);
    }

    /// Real-kernel tests: rules in namespaces of a `TestNet`, servers in `b`, clients in `a`.
    mod kernel {
        use super::*;
        use crate::sys::netns::{TestNet, command_in, run_in};
        use std::io::ErrorKind;
        use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::thread::JoinHandle;
        use std::time::{Duration, Instant};

        const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
        /// Upper bound on any server thread's life, should a test forget to stop it.
        const SERVER_LIFETIME: Duration = Duration::from_secs(60);

        /// A server thread in a namespace that stops (and is joined) on drop.
        struct Server {
            addr: SocketAddr,
            stop: Arc<AtomicBool>,
            thread: Option<JoinHandle<()>>,
        }

        impl Drop for Server {
            fn drop(&mut self) {
                self.stop.store(true, Ordering::Relaxed);
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }

        impl Server {
            /// Call `step` (which must block briefly, at most tens of ms) until dropped.
            fn spawn(addr: SocketAddr, mut step: impl FnMut() + Send + 'static) -> Server {
                let stop = Arc::new(AtomicBool::new(false));
                let flag = stop.clone();
                let thread = std::thread::spawn(move || {
                    let started = Instant::now();
                    while !flag.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFETIME {
                        step();
                    }
                });
                Server {
                    addr,
                    stop,
                    thread: Some(thread),
                }
            }
        }

        /// Accepts and closes connections on `ip:port` in `ns`.
        fn tcp_server(ns: &str, ip: &str, port: u16) -> Server {
            let bind: SocketAddr = SocketAddr::new(ip.parse().unwrap(), port);
            let listener = run_in(ns, move || TcpListener::bind(bind))
                .unwrap()
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            Server::spawn(listener.local_addr().unwrap(), move || {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            })
        }

        /// Echoes every datagram on `ip:0` in `ns`.
        fn udp_echo_server(ns: &str, ip: &str) -> Server {
            let bind: SocketAddr = SocketAddr::new(ip.parse().unwrap(), 0);
            let socket = run_in(ns, move || UdpSocket::bind(bind)).unwrap().unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut buf = [0u8; 64];
            Server::spawn(socket.local_addr().unwrap(), move || {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            })
        }

        #[derive(Debug, Default, PartialEq)]
        struct Connects {
            ok: usize,
            refused: usize,
            timed_out: usize,
        }

        /// `n` concurrent connects from namespace `ns` (threads spawned there inherit it).
        fn connects(ns: &str, to: SocketAddr, n: usize) -> Connects {
            run_in(ns, move || {
                let threads: Vec<_> = (0..n)
                    .map(|_| {
                        std::thread::spawn(move || {
                            TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map(drop)
                        })
                    })
                    .collect();
                let mut tally = Connects::default();
                for t in threads {
                    match t.join().unwrap() {
                        Ok(()) => tally.ok += 1,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => tally.refused += 1,
                        Err(e) if e.kind() == ErrorKind::TimedOut => tally.timed_out += 1,
                        Err(e) => panic!("connect to {to}: unexpected error {e}"),
                    }
                }
                tally
            })
            .unwrap()
        }

        fn all_ok(n: usize) -> Connects {
            Connects {
                ok: n,
                ..Connects::default()
            }
        }

        fn traffic_in(ns: &str, direction: Direction) -> Traffic {
            let mut t = any_traffic(direction);
            t.netns = Some(ns.into());
            t
        }

        fn unique_id(tag: &str) -> String {
            use std::sync::atomic::AtomicU32;
            static SEQ: AtomicU32 = AtomicU32::new(0);
            format!(
                "{tag}{}x{}",
                std::process::id() % 100_000,
                SEQ.fetch_add(1, Ordering::Relaxed)
            )
        }

        /// Run a tool in `ns` and insist that it worked.
        fn must(ns: &str, argv: &[&str]) {
            let out = command_in(ns, argv).output().unwrap();
            assert!(
                out.status.success(),
                "{argv:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn partition(ipv6: bool) {
            let net = TestNet::new().expect("create test net (needs root)");
            let (ip_a, ip_b) = if ipv6 {
                (net.ip6_a.clone(), net.ip6_b.clone())
            } else {
                (net.ip_a.clone(), net.ip_b.clone())
            };
            let server = tcp_server(&net.b, &ip_b, 0);
            assert_eq!(connects(&net.a, server.addr, 20), all_ok(20));

            let mut t = traffic_in(&net.b, Direction::Ingress);
            t.protocol = Protocol::Tcp;
            t.remote = nets(&[&ip_a]);
            t.local_ports = ports(&[&server.addr.port().to_string()]);

            let drop_set = RuleSet::plan(&t, Action::Drop, &unique_id("p"), None).unwrap();
            assert_eq!(drop_set.variant, Variant::Nft);
            drop_set.apply().unwrap();
            let during = connects(&net.a, server.addr, 20);
            drop_set.remove().unwrap();
            assert_eq!(
                during,
                Connects {
                    timed_out: 20,
                    ..Connects::default()
                }
            );
            assert!(drop_set.counters().is_err(), "the chain is gone");

            let reject_set = RuleSet::plan(&t, Action::Reject, &unique_id("r"), None).unwrap();
            reject_set.apply().unwrap();
            let started = Instant::now();
            let during = connects(&net.a, server.addr, 20);
            let took = started.elapsed();
            let counted = reject_set.counters().unwrap();
            reject_set.remove().unwrap();
            assert_eq!(
                during,
                Connects {
                    refused: 20,
                    ..Connects::default()
                }
            );
            assert!(
                took < CONNECT_TIMEOUT,
                "a reset is immediate; took {took:?}"
            );
            assert_eq!(counted.action.packets, 20, "{counted:?}");

            assert_eq!(connects(&net.a, server.addr, 20), all_ok(20));
            assert_eq!(leftovers(Some(&Netns::from(&net.b))), Vec::<String>::new());
        }

        #[test]
        fn partition_drops_then_rejects_then_heals_ipv4() {
            partition(false);
        }

        #[test]
        fn partition_drops_then_rejects_then_heals_ipv6() {
            partition(true);
        }

        #[test]
        fn loss_of_30_percent_is_measured_within_three_sigma_and_matches_the_counter() {
            const N: u32 = 3000;
            const PACE: Duration = Duration::from_micros(900);
            const REPLY_TIMEOUT: Duration = Duration::from_millis(20);
            let net = TestNet::new().expect("create test net (needs root)");
            let server = udp_echo_server(&net.b, &net.ip_b);
            let mut t = traffic_in(&net.b, Direction::Ingress);
            t.protocol = Protocol::Udp;
            t.local_ports = ports(&[&server.addr.port().to_string()]);
            let set = RuleSet::plan(&t, Action::Loss { probability: 0.3 }, &unique_id("l"), None)
                .unwrap();
            set.apply().unwrap();

            let (to, ip_a) = (server.addr, net.ip_a.clone());
            let (sent_at, replies) = run_in(&net.a, move || {
                let socket = UdpSocket::bind((ip_a.as_str(), 0)).unwrap();
                socket.connect(to).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .unwrap();
                let receiver = socket.try_clone().unwrap();
                let done = Arc::new(AtomicBool::new(false));
                let flag = done.clone();
                let collector = std::thread::spawn(move || {
                    let mut replies = Vec::new();
                    let mut buf = [0u8; 8];
                    let started = Instant::now();
                    while !flag.load(Ordering::Relaxed) && started.elapsed() < SERVER_LIFETIME {
                        if let Ok(4) = receiver.recv(&mut buf) {
                            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                            replies.push((seq, Instant::now()));
                        }
                    }
                    replies
                });
                let start = Instant::now();
                let mut sent_at = Vec::with_capacity(N as usize);
                for seq in 0..N {
                    let due = start + PACE * seq;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    sent_at.push(Instant::now());
                    socket.send(&seq.to_be_bytes()).unwrap();
                }
                // Long enough for a late reply to count as late rather than unanswered.
                std::thread::sleep(REPLY_TIMEOUT * 25);
                done.store(true, Ordering::Relaxed);
                (sent_at, collector.join().unwrap())
            })
            .unwrap();
            let counted = set.counters().unwrap();
            set.remove().unwrap();

            // A reply that never came is a drop (the rule's or the kernel's); one that came
            // later than the timeout is the sender or the echo server waiting for a CPU on a
            // loaded machine. Loss as a client sees it counts both; the rule's counter can
            // only be held to the first.
            let mut first_reply: Vec<Option<Duration>> = vec![None; N as usize];
            for (seq, at) in replies {
                let after = at.duration_since(sent_at[seq as usize]);
                let slot = &mut first_reply[seq as usize];
                if slot.is_none_or(|earlier| after < earlier) {
                    *slot = Some(after);
                }
            }
            let never = first_reply.iter().filter(|r| r.is_none()).count() as u64;
            let late = first_reply
                .iter()
                .filter(|r| r.is_some_and(|after| after > REPLY_TIMEOUT))
                .count() as u64;
            let lost = never + late;
            let loss = lost as f64 / f64::from(N);
            let took = sent_at[N as usize - 1].duration_since(sent_at[0]);
            eprintln!(
                "loss {loss:.4} ({lost}/{N}: {never} unanswered, {late} answered after \
                 {REPLY_TIMEOUT:?}), rule counter {}, protected {}, sending took {took:?}",
                counted.action.packets, counted.protected.packets
            );
            assert!((loss - 0.3).abs() <= 0.025, "loss {loss}");
            assert!(
                counted.action.packets <= never && never <= counted.action.packets + 5,
                "dropped by the rule {} vs never answered {never}",
                counted.action.packets
            );
            assert!(took < Duration::from_millis(3500), "{took:?}");
        }

        fn other_tools_rules(ns: &str, variant: Variant) {
            let v4 = variant.binary(Family::V4);
            let v6 = variant.binary(Family::V6);
            must(ns, &[&v4, "-w", "5", "-N", "OTHER-TOOL"]);
            must(
                ns,
                &[
                    &v4,
                    "-w",
                    "5",
                    "-A",
                    "OTHER-TOOL",
                    "-s",
                    "192.0.2.1",
                    "-j",
                    "DROP",
                ],
            );
            must(
                ns,
                &[
                    &v4,
                    "-w",
                    "5",
                    "-A",
                    "INPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    "9",
                    "-j",
                    "OTHER-TOOL",
                ],
            );
            must(
                ns,
                &[
                    &v6,
                    "-w",
                    "5",
                    "-A",
                    "OUTPUT",
                    "-d",
                    "2001:db8::1",
                    "-j",
                    "DROP",
                ],
            );
        }

        fn snapshot(ns: &str, variant: Variant) -> (String, String) {
            (
                save(Some(&Netns::from(ns)), variant, Family::V4).unwrap(),
                save(Some(&Netns::from(ns)), variant, Family::V6).unwrap(),
            )
        }

        /// A fault touching both families and directions, with protection and ports.
        fn busy_fault(net: &TestNet, ns: &str) -> Traffic {
            let mut t = traffic_in(ns, Direction::Both);
            t.remote = nets(&[&net.ip_a, &net.ip6_a, &net.ip_b, &net.ip6_b]);
            t.local_ports = ports(&["7000-7100", "8080"]);
            t.protected = vec![Protected {
                addr: net.ip_a.parse().unwrap(),
                remote_port: None,
                local_port: Some(22),
                reason: "SSH_CONNECTION".into(),
            }];
            t
        }

        fn survives_byte_for_byte(variant: Variant) {
            let net = TestNet::new().expect("create test net (needs root)");
            other_tools_rules(&net.b, variant);
            assert_eq!(detect(Some(&Netns::from(&net.b))).unwrap(), variant);
            let before = snapshot(&net.b, variant);
            assert!(
                before.0.contains("-A OTHER-TOOL -s 192.0.2.1/32 -j DROP"),
                "{before:?}"
            );

            let t = busy_fault(&net, &net.b);
            let set = RuleSet::plan(&t, Action::Reject, &unique_id("s"), None).unwrap();
            assert_eq!(set.variant, variant);
            assert!(set.created_tables.is_empty(), "filter tables existed");
            set.apply().unwrap();
            let during = snapshot(&net.b, variant);
            assert!(
                during
                    .0
                    .contains(&format!("-A INPUT -j {}", set.chains[0].name)),
                "{during:?}"
            );
            assert!(during.1.contains("FAULTLINE-"), "{during:?}");
            set.remove().unwrap();
            assert_eq!(snapshot(&net.b, variant), before);
        }

        #[test]
        fn someone_elses_rules_survive_byte_for_byte_nft() {
            survives_byte_for_byte(Variant::Nft);
        }

        #[test]
        fn someone_elses_rules_survive_byte_for_byte_legacy() {
            survives_byte_for_byte(Variant::Legacy);
        }

        #[test]
        fn a_namespace_without_tables_is_left_without_tables_nft() {
            let net = TestNet::new().expect("create test net (needs root)");
            let before = snapshot(&net.a, Variant::Nft);
            assert_eq!(before, (String::new(), String::new()));
            let t = busy_fault(&net, &net.a);
            let set = RuleSet::plan(&t, Action::Queue { num: 4 }, &unique_id("f"), None).unwrap();
            assert_eq!(set.created_tables.len(), 2);
            set.apply().unwrap();
            assert!(snapshot(&net.a, Variant::Nft).0.contains("NFQUEUE"));
            set.remove().unwrap();
            assert_eq!(snapshot(&net.a, Variant::Nft), before);
        }

        /// A table faultline created goes in one call when only its chains are in it, but
        /// not when someone added a rule (or a native nft set) of their own meanwhile: that
        /// stays, exactly.
        #[test]
        fn a_created_table_someone_else_used_meanwhile_keeps_their_rule_and_set() {
            let net = TestNet::new().expect("create test net (needs root)");
            let t = busy_fault(&net, &net.a);
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("f"), None).unwrap();
            assert!(!set.created_tables.is_empty());
            set.apply().unwrap();
            let theirs = [
                "iptables-nft",
                "-t",
                "filter",
                "-A",
                "INPUT",
                "-p",
                "udp",
                "--dport",
                "5353",
                "-j",
                "ACCEPT",
            ];
            let out = crate::sys::netns::command_in(&net.a, &theirs)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            set.remove().unwrap();
            let (v4, _) = snapshot(&net.a, Variant::Nft);
            assert!(
                v4.contains("-A INPUT -p udp -m udp --dport 5353 -j ACCEPT"),
                "{v4}"
            );
            assert!(!v4.contains("FAULTLINE"), "{v4}");

            // What iptables-save cannot show either: a native nft set added to the table.
            let net = TestNet::new().expect("create test net (needs root)");
            let t = busy_fault(&net, &net.a);
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("g"), None).unwrap();
            assert!(!set.created_tables.is_empty());
            set.apply().unwrap();
            let native = [
                "nft",
                "add",
                "set",
                "ip",
                "filter",
                "blocked",
                "{",
                "type",
                "ipv4_addr",
                ";",
                "}",
            ];
            let out = crate::sys::netns::command_in(&net.a, &native)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            set.remove().unwrap();
            let listed =
                crate::sys::netns::command_in(&net.a, &["nft", "list", "table", "ip", "filter"])
                    .output()
                    .unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            assert!(listed.contains("set blocked"), "the set stays: {listed}");
            assert!(!listed.contains("FAULTLINE"), "{listed}");
        }

        /// Two rule sets of one run in a namespace without tables: the second one planned
        /// after the first was applied finds the table iptables-nft made for the first. Their
        /// reverts, in either order and from the records alone, leave no table behind (they
        /// once left empty base chains).
        #[test]
        fn rule_sets_sharing_a_table_the_first_one_created_leave_no_table() {
            for first_out_first in [true, false] {
                let net = TestNet::new().expect("create test net (needs root)");
                let nft_ruleset = || {
                    let out = crate::sys::netns::command_in(&net.a, &["nft", "list", "ruleset"])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).into_owned()
                };
                assert_eq!(nft_ruleset(), "");
                let run = CreatedTables::default();
                let t = busy_fault(&net, &net.a);
                let loss = RuleSet::plan_shared(
                    &t,
                    Action::Loss { probability: 0.5 },
                    &unique_id("a"),
                    None,
                    &run,
                )
                .unwrap();
                loss.apply().unwrap();
                let cut =
                    RuleSet::plan_shared(&t, Action::Drop, &unique_id("b"), None, &run).unwrap();
                assert_eq!(cut.created_tables, loss.created_tables, "shared");
                cut.apply().unwrap();
                let revived = |set: &RuleSet| -> RuleSet {
                    serde_json::from_str(&serde_json::to_string(set).unwrap()).unwrap()
                };
                let (first, second) = if first_out_first {
                    (&loss, &cut)
                } else {
                    (&cut, &loss)
                };
                revived(first).remove().unwrap();
                assert!(
                    nft_ruleset().contains("FAULTLINE-"),
                    "the other set is still there"
                );
                revived(second).remove().unwrap();
                assert_eq!(
                    nft_ruleset(),
                    "",
                    "no table left (first out first: {first_out_first})"
                );
            }
        }

        #[test]
        fn removals_arriving_together_go_in_one_transaction_and_each_gets_its_counters() {
            let net = TestNet::new().expect("create test net (needs root)");
            let run = CreatedTables::default();
            let t = busy_fault(&net, &net.a);
            let sets: Vec<RuleSet> = [
                Action::Loss { probability: 0.5 },
                Action::Drop,
                Action::Loss { probability: 0.1 },
            ]
            .into_iter()
            .enumerate()
            .map(|(n, action)| {
                let set =
                    RuleSet::plan_shared(&t, action, &unique_id(&format!("g{n}")), None, &run)
                        .unwrap();
                set.apply().unwrap();
                set
            })
            .collect();
            // Hold the lock until all three wait for it, as the reverts of one breach do.
            let held = ruleset_lock();
            let removing: Vec<_> = sets
                .iter()
                .map(|set| {
                    let set: RuleSet =
                        serde_json::from_str(&serde_json::to_string(set).unwrap()).unwrap();
                    std::thread::spawn(move || set.remove_counted())
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(5);
            while waiting()
                .iter()
                .filter(|w| w.set.netns.as_ref() == Some(&Netns::from(&net.a)))
                .count()
                < 3
            {
                assert!(Instant::now() < deadline, "the removals never arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(held);
            for (set, removing) in sets.iter().zip(removing) {
                let counters = removing.join().unwrap().unwrap().expect("counted");
                let chains: Vec<&str> = counters.chains.iter().map(|c| c.chain.as_str()).collect();
                let own: Vec<&str> = set.chains.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(chains, own, "each set gets the counters of its own chains");
            }
            let batches: Vec<usize> = BATCHES
                .lock()
                .unwrap()
                .iter()
                .filter(|(ns, _)| *ns == Some(Netns::from(&net.a)))
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(batches, [3], "one transaction for the three");
            assert_eq!(leftovers(Some(&Netns::from(&net.a))), Vec::<String>::new());
            let out = crate::sys::netns::command_in(&net.a, &["nft", "list", "ruleset"])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "", "no table left");
        }

        #[test]
        fn detect_follows_the_variant_that_holds_rules() {
            let net = TestNet::new().expect("create test net (needs root)");
            assert_eq!(detect(Some(&Netns::from(&net.a))).unwrap(), Variant::Nft);
            must(
                &net.a,
                &[
                    "iptables-legacy",
                    "-w",
                    "5",
                    "-A",
                    "INPUT",
                    "-s",
                    "192.0.2.1",
                    "-j",
                    "DROP",
                ],
            );
            assert_eq!(detect(Some(&Netns::from(&net.a))).unwrap(), Variant::Legacy);
            must(
                &net.a,
                &[
                    "ip6tables-nft",
                    "-w",
                    "5",
                    "-A",
                    "INPUT",
                    "-s",
                    "2001:db8::1",
                    "-j",
                    "DROP",
                ],
            );
            assert_eq!(detect(Some(&Netns::from(&net.a))).unwrap(), Variant::Nft);
        }

        #[test]
        fn protected_flow_keeps_working_under_total_loss() {
            let net = TestNet::new().expect("create test net (needs root)");
            let protected = tcp_server(&net.b, &net.ip_b, 0);
            let other = tcp_server(&net.b, &net.ip_b, 0);
            let mut t = traffic_in(&net.b, Direction::Both);
            t.protected = vec![Protected {
                addr: net.ip_a.parse().unwrap(),
                remote_port: None,
                local_port: Some(protected.addr.port()),
                reason: "SSH_CONNECTION".into(),
            }];
            let set = RuleSet::plan(&t, Action::Loss { probability: 1.0 }, &unique_id("k"), None)
                .unwrap();
            set.apply().unwrap();
            let kept = connects(&net.a, protected.addr, 5);
            let cut = connects(&net.a, other.addr, 5);
            let counted = set.counters().unwrap();
            set.remove().unwrap();
            assert_eq!(kept, all_ok(5));
            assert_eq!(cut.ok, 0, "{cut:?}");
            // 5 SYNs in, 5 SYN-ACKs out, the handshake ACKs and FINs: both chains exempt.
            assert!(counted.protected.packets >= 10, "{counted:?}");
            assert!(counted.action.packets >= 5, "{counted:?}");
            assert_eq!(connects(&net.a, other.addr, 5), all_ok(5));
        }

        #[test]
        fn port_ranges_and_multiport_select_exactly_their_ports() {
            let net = TestNet::new().expect("create test net (needs root)");
            let servers: Vec<Server> = [7001, 7002, 7003, 7010]
                .into_iter()
                .map(|p| tcp_server(&net.b, &net.ip_b, p))
                .collect();
            let reachable = |net: &TestNet| -> Vec<bool> {
                servers
                    .iter()
                    .map(|s| connects(&net.a, s.addr, 1).ok == 1)
                    .collect()
            };
            assert_eq!(reachable(&net), [true; 4]);

            let mut ingress = traffic_in(&net.b, Direction::Ingress);
            ingress.local_ports = ports(&["7001-7002", "7010"]);
            let set = RuleSet::plan(&ingress, Action::Drop, &unique_id("m"), None).unwrap();
            assert!(set.chains[0].rules[0].contains(&"multiport".to_string()));
            set.apply().unwrap();
            let during = reachable(&net);
            set.remove().unwrap();
            assert_eq!(during, [false, false, true, false]);

            let mut egress = traffic_in(&net.a, Direction::Egress);
            egress.protocol = Protocol::Tcp;
            egress.remote_ports = ports(&["7002-7003"]);
            let set = RuleSet::plan(&egress, Action::Drop, &unique_id("g"), None).unwrap();
            set.apply().unwrap();
            let during = reachable(&net);
            set.remove().unwrap();
            assert_eq!(during, [true, false, false, true]);
            assert_eq!(reachable(&net), [true; 4]);
        }

        /// A v2 cgroup that is removed on drop (after its processes have exited).
        struct Cgroup(PathBuf);

        impl Drop for Cgroup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }

        /// `ping` once from namespace `ns`, optionally from inside a cgroup (joined between
        /// fork and exec, so every socket it makes is the cgroup's).
        fn ping_ok(ns: &str, to: &str, cgroup: Option<&Cgroup>) -> bool {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let mut cmd = command_in(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", to]);
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let procs = cgroup.map(|c| {
                std::fs::File::options()
                    .write(true)
                    .open(c.0.join("cgroup.procs"))
                    .unwrap()
            });
            if let Some(procs) = &procs {
                let fd = procs.as_raw_fd();
                // SAFETY: write(2) on an fd that stays open until exec is async-signal-safe;
                // "0" moves the writing (child) process.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            cmd.status().unwrap().success()
        }

        #[test]
        fn cgroup_match_drops_only_that_cgroups_egress() {
            let net = TestNet::new().expect("create test net (needs root)");
            let name = format!("fl-ipt-test-{}", unique_id("c"));
            let dir = PathBuf::from("/sys/fs/cgroup/unified").join(&name);
            std::fs::create_dir(&dir).unwrap();
            let cgroup = Cgroup(dir);
            assert!(ping_ok(&net.a, &net.ip_b, Some(&cgroup)));

            let mut t = traffic_in(&net.a, Direction::Egress);
            t.cgroup = Some(name);
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("c"), None).unwrap();
            set.apply().unwrap();
            let inside = ping_ok(&net.a, &net.ip_b, Some(&cgroup));
            let outside = ping_ok(&net.a, &net.ip_b, None);
            let counted = set.counters().unwrap();
            set.remove().unwrap();
            assert!(!inside && outside, "inside {inside}, outside {outside}");
            assert!(counted.action.packets >= 1, "{counted:?}");
            assert!(ping_ok(&net.a, &net.ip_b, Some(&cgroup)));
        }

        #[test]
        fn one_restore_transaction_removes_a_rule_set() {
            let net = TestNet::new().expect("create test net (needs root)");
            let t = busy_fault(&net, &net.b);
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("r"), None).unwrap();
            set.apply().unwrap();
            for family in set.families() {
                let saved =
                    parse_save(&run_save(Some(&Netns::from(&net.b)), set.variant, family).unwrap());
                let chains: Vec<&OwnedChain> =
                    set.chains.iter().filter(|c| c.family == family).collect();
                let script = removal_script(&saved, &chains).expect("the chains are there");
                let restore = set.variant.restore_binary(family);
                let args = strings(&["-w", LOCK_WAIT_SECONDS, "--noflush"]);
                run_with_input(Some(&Netns::from(&net.b)), &restore, &args, &script)
                    .unwrap_or_else(|e| panic!("{e}\n{script}"));
            }
            assert_eq!(leftovers(Some(&Netns::from(&net.b))), Vec::<String>::new());
            set.remove().unwrap();
        }

        #[test]
        fn remove_is_idempotent_and_survives_a_half_deleted_chain() {
            let net = TestNet::new().expect("create test net (needs root)");
            let t = busy_fault(&net, &net.b);
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("i"), None).unwrap();
            set.apply().unwrap();
            assert!(!leftovers(Some(&Netns::from(&net.b))).is_empty());
            // Someone deletes the v4 INPUT jump and flushes the chain by hand.
            let chain = &set.chains[0];
            assert_eq!(
                (chain.family, chain.jumps[0].hook),
                (Family::V4, Hook::Input)
            );
            must(
                &net.b,
                &["iptables-nft", "-w", "5", "-D", "INPUT", "-j", &chain.name],
            );
            must(&net.b, &["iptables-nft", "-w", "5", "-F", &chain.name]);
            set.remove().unwrap();
            set.remove().unwrap();
            assert_eq!(leftovers(Some(&Netns::from(&net.b))), Vec::<String>::new());
            // After the namespace itself is gone, there is nothing left to remove.
            let ns = net.b.clone();
            drop(net);
            assert!(
                RuleSet {
                    netns: Some(ns.into()),
                    ..set
                }
                .remove()
                .is_ok()
            );
        }

        #[test]
        fn a_failure_half_way_through_apply_leaves_nothing_behind() {
            let net = TestNet::new().expect("create test net (needs root)");
            let mut t = traffic_in(&net.a, Direction::Egress);
            t.protected = vec![Protected {
                addr: net.ip_b.parse().unwrap(),
                remote_port: Some(80),
                local_port: None,
                reason: "probe health".into(),
            }];
            // The kernel refuses a cgroup path that does not exist, at the action rule: the
            // chain and its RETURN rules exist by then.
            t.cgroup = Some("faultline-no-such-cgroup".into());
            let set = RuleSet::plan(&t, Action::Drop, &unique_id("h"), None).unwrap();
            let err = set.apply().unwrap_err();
            assert!(matches!(err, IptablesError::Command { .. }), "{err}");
            eprintln!("kernel refused: {err}");
            assert_eq!(leftovers(Some(&Netns::from(&net.a))), Vec::<String>::new());
            assert_eq!(
                snapshot(&net.a, Variant::Nft),
                (String::new(), String::new())
            );
        }
    }
}
