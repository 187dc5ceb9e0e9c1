//! faultline's tc tree: one per interface and direction, shared by every fault that shapes
//! traffic there (a delay and a bandwidth cap, two delays to different services, a delay and
//! a reorder), created by the first of them, extended by the next and taken down by the last.
//!
//! The tree is an htb root (`fa17:`) whose unclassified traffic leaves untouched through
//! htb's direct queue. Each fault on it is a *member* with a position (0 to 7). For every set
//! of members whose selections can match one packet there is a class `fa17:<set>` (the set
//! as a bit mask) holding a chain of every member's qdisc (netem first, then rate caps), and
//! filters matching the intersection of their selections. Filters of bigger sets are tried
//! first, so a packet goes through every fault whose selection matches it, and only those.
//! Egress trees sit on the interface; ingress trees on an IFB device (`flifb<ifindex>`) that
//! the interface's ingress qdisc redirects each member's traffic into.
//!
//! Class ids and filter priorities encode the members they serve, so a member is removed from
//! its record alone — by the run, by `recover` after a crash, one record at a time — without
//! touching the others' classes; when no class is left, the tree goes and the interface's
//! qdiscs are checked to be what they were (kind, handle and place of each). Adding a member needs the other
//! members' selections and qdiscs, which the kernel cannot tell back: the run that owns them
//! keeps them in a [`TcTrees`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::filter::{self, L3, U32Filter};
use super::{
    IFB_PREFIX, Kernel, L2_HEADER, Link, QdiscPlace, ROOT_HANDLE, SHAPER_LATENCY_MS, TcError,
    default_burst, devices, first_qdisc, link_exists, qdisc_places, qdisc_show, run, strings,
};
use crate::net::Traffic;
use crate::sys::netns::{self, Netns};

/// Faults one tree can hold at once.
pub const MAX_MEMBERS: u8 = 8;
/// htb sends packets classified to `MAJOR:0` straight through its direct queue, unshaped.
const DIRECT_FLOW: &str = "fa17:0";
const INGRESS_HANDLE: &str = "ffff:";
/// Classifying to a class id on the ingress qdisc (no action) ends classification: the packet
/// continues untouched.
const INGRESS_PASS: &str = "ffff:1";
/// Rate of the pass-through htb classes that carry the chains: high enough not to shape.
const UNSHAPED_RATE: &str = "100gbit";
/// Filter priorities (lower is tried first; the kernel wants one protocol per priority):
/// each member's protected flows, then on ingress each member's redirect into the IFB, then
/// the classes' filters, bigger member sets first.
const PROTECTED_PRIO: u32 = 1;
const REDIRECT_PRIO: u32 = 20;
const SET_PRIO: u32 = 100;
/// Room for every mask × protocol of one set size.
const SET_BAND: u32 = 768;

fn protected_prio(position: u8, protocol: L3) -> u32 {
    PROTECTED_PRIO + 2 * u32::from(position) + protocol.index().min(1)
}

fn redirect_prio(position: u8, protocol: L3) -> u32 {
    REDIRECT_PRIO + 3 * u32::from(position) + protocol.index()
}

fn set_prio(mask: u8, protocol: L3) -> u32 {
    SET_PRIO
        + (u32::from(MAX_MEMBERS) - mask.count_ones()) * SET_BAND
        + 3 * u32::from(mask)
        + protocol.index()
}

/// The member set whose class a filter priority steers to.
fn set_of_prio(prio: u32) -> Option<u8> {
    let offset = prio.checked_sub(SET_PRIO)?;
    let mask = u8::try_from(offset % SET_BAND / 3).ok()?;
    let size = u32::from(MAX_MEMBERS).checked_sub(offset / SET_BAND)?;
    (mask.count_ones() == size && mask != 0).then_some(mask)
}

/// The member a protected-flow or redirect priority belongs to.
fn member_of_prio(prio: u32) -> Option<u8> {
    let position = if (PROTECTED_PRIO..REDIRECT_PRIO).contains(&prio) {
        (prio - PROTECTED_PRIO) / 2
    } else if (REDIRECT_PRIO..SET_PRIO).contains(&prio) {
        (prio - REDIRECT_PRIO) / 3
    } else {
        return None;
    };
    u8::try_from(position).ok().filter(|p| *p < MAX_MEMBERS)
}

fn class_id(mask: u8) -> String {
    format!("{ROOT_HANDLE}{mask:x}")
}

/// Handle of the `index`th qdisc in the chain of `mask`'s class: `e<mask><index>:`.
fn chain_handle(mask: u8, index: usize) -> String {
    format!("{:x}:", 0xe000 | (u16::from(mask) << 4) | index as u16)
}

/// Which way the shaped traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Egress,
    Ingress,
}

/// One fault's part in the tree of one interface and side: everything needed to add it (with
/// the other members' parts) and to remove it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcMember {
    pub dev: String,
    pub side: Side,
    /// The IFB carrying an ingress tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifb: Option<String>,
    pub position: u8,
    /// `tc qdisc show dev DEV` before faultline's first tree on it: what the member that
    /// leaves last checks the interface against.
    pub before: String,
    /// htb's direct queue for the traffic no fault selects: the device's own queue length.
    pub direct_qlen: u64,
    /// The member's traffic as u32 filters; `None` for all of it.
    pub selection: Option<Vec<U32Filter>>,
    /// Flows no faultline fault on this interface may touch (lockout protection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected: Vec<U32Filter>,
    /// The qdisc that acts on the member's traffic (`netem delay 30ms`, `tbf rate ...`).
    pub qdisc: Vec<String>,
}

impl TcMember {
    /// The device the member's classes live on.
    fn tree_dev(&self) -> &str {
        self.ifb.as_deref().unwrap_or(&self.dev)
    }

    fn bit(&self) -> u8 {
        1 << self.position
    }

    fn is_netem(&self) -> bool {
        self.qdisc.first().is_some_and(|k| k == "netem")
    }

    fn duplicates(&self) -> bool {
        self.is_netem() && self.qdisc.iter().any(|a| a == "duplicate")
    }

    pub fn describe(&self) -> String {
        match self.side {
            Side::Egress => format!("egress tree on {} (member {})", self.dev, self.position),
            Side::Ingress => format!(
                "ingress tree on {} via {} (member {})",
                self.dev,
                self.tree_dev(),
                self.position
            ),
        }
    }
}

/// Everything one fault installs with tc: its part in the tree of each interface and side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcInstall {
    /// The namespace to act in; `None` = faultline's own.
    pub netns: Option<Netns>,
    pub members: Vec<TcMember>,
}

/// What sits on a member's path: a netem qdisc, or a rate cap.
pub enum Shaper {
    Netem(Vec<String>),
    Rate {
        bits_per_sec: u64,
        burst: Option<u64>,
    },
}

/// The members this process put on each tree, with their selections and qdiscs (which the
/// kernel cannot tell back), and positions handed out to injections not applied yet. The
/// kernel has the last word: a member whose class is gone (reverted by any path) is forgotten
/// at the next plan.
#[derive(Default)]
pub struct TcTrees(Mutex<HashMap<TreeKey, Book>>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TreeKey {
    netns: Option<Netns>,
    /// The device the classes live on (the interface, or its IFB).
    dev: String,
}

#[derive(Default)]
struct Book {
    before: Option<String>,
    members: BTreeMap<u8, Entry>,
}

struct Entry {
    member: TcMember,
    /// False from the plan until the member is on the tree. A member whose apply failed
    /// keeps its position until the run ends: its record may still be reverted, by position.
    applied: bool,
}

impl TcTrees {
    fn lock(&self) -> MutexGuard<'_, HashMap<TreeKey, Book>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied(&self, key: &TreeKey) -> Vec<TcMember> {
        self.lock()
            .get(key)
            .map(|book| {
                book.members
                    .values()
                    .filter(|e| e.applied)
                    .map(|e| e.member.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_applied(&self, key: &TreeKey, position: u8, applied: bool) {
        if let Some(entry) = self
            .lock()
            .get_mut(key)
            .and_then(|book| book.members.get_mut(&position))
        {
            entry.applied = applied;
        }
    }

    fn release(&self, key: &TreeKey, position: u8) {
        if let Some(book) = self.lock().get_mut(key) {
            book.members.remove(&position);
        }
    }
}

/// Tree changes (adding a member, removing one) run one at a time in this process: a member
/// added while another is being removed could otherwise copy the leaving one's qdisc into a
/// new class. Runs on one host do not overlap (a run starts only once no other live run owns
/// faults), and `recover` runs after the owner died.
static TREE_LOCK: Mutex<()> = Mutex::new(());

fn tree_lock() -> MutexGuard<'static, ()> {
    TREE_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

impl TcInstall {
    /// netem on `traffic` (egress on its interfaces; ingress through an IFB per interface).
    /// Reads the current state (interfaces, qdiscs) but changes nothing.
    pub fn netem(
        traffic: &Traffic,
        spec: &super::NetemSpec,
        trees: &TcTrees,
    ) -> Result<TcInstall, TcError> {
        spec.validate()?;
        plan(traffic, &Shaper::Netem(super::netem_args(spec)), trees)
    }

    /// A bandwidth cap of `rate_bits_per_sec` on `traffic`; `burst_bytes` defaults to
    /// [`default_burst`]. Reads the current state but changes nothing.
    pub fn bandwidth(
        traffic: &Traffic,
        rate_bits_per_sec: u64,
        burst_bytes: Option<u64>,
        trees: &TcTrees,
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
        plan(traffic, &shaper, trees)
    }

    /// IFB devices this install's ingress trees use.
    pub fn ifbs(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter_map(|m| m.ifb.as_deref())
            .collect()
    }

    fn key(&self, member: &TcMember) -> TreeKey {
        TreeKey {
            netns: self.netns.clone(),
            dev: member.tree_dev().to_string(),
        }
    }

    /// Add every member to its tree; on failure take out what was added and return the cause.
    pub fn apply(&self, trees: &TcTrees) -> Result<(), TcError> {
        let _lock = tree_lock();
        let ns = self.netns.as_ref();
        for (done, member) in self.members.iter().enumerate() {
            let key = self.key(member);
            let others: Vec<TcMember> = trees
                .applied(&key)
                .into_iter()
                .filter(|m| m.position != member.position)
                .collect();
            if let Err(cause) = add_member(ns, member, &others) {
                let mut undo = Vec::new();
                for added in self.members[..=done].iter().rev() {
                    undo.extend(remove_member(ns, added));
                    // Off the tree, but its record may still be reverted by position: the
                    // position stays taken until the run ends.
                    trees.set_applied(&self.key(added), added.position, false);
                }
                return Err(if undo.is_empty() {
                    cause
                } else {
                    TcError::UndoFailed {
                        cause: Box::new(cause),
                        undo: Box::new(TcError::NotRestored(undo)),
                    }
                });
            }
            trees.set_applied(&key, member.position, true);
        }
        Ok(())
    }

    /// Take every member out of its tree, whatever part of it exists (idempotent; works from
    /// the deserialised value after a crash), the tree too where it was the last, then verify.
    pub fn remove(&self) -> Result<(), TcError> {
        let ns = self.netns.as_ref();
        if let Some(name) = ns
            && !netns::exists(name)
        {
            // The namespace is gone, and everything inside it went with it.
            return Ok(());
        }
        let _lock = tree_lock();
        // Each member has a tree of its own (one per side of each interface, the interfaces
        // deduplicated when planned): an interface's egress root, an IFB's. Trees are
        // independent, so the members are taken out side by side; on the abort path this
        // halves a fault in both directions (the IFB's `ip link del` alone takes 15-27 ms).
        let problems: Vec<String> = std::thread::scope(|scope| {
            let removals: Vec<_> = self
                .members
                .iter()
                .map(|member| scope.spawn(move || remove_member(ns, member)))
                .collect();
            removals
                .into_iter()
                .flat_map(|removal| {
                    removal
                        .join()
                        .unwrap_or_else(|_| vec!["a tc tree's removal panicked".to_string()])
                })
                .collect()
        });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TcError::NotRestored(problems))
        }
    }
}

fn plan(traffic: &Traffic, shaper: &Shaper, trees: &TcTrees) -> Result<TcInstall, TcError> {
    if traffic.cgroup.is_some() {
        return Err(TcError::Invalid(
            "tc cannot select traffic by cgroup; use the iptables/NFQUEUE backend".into(),
        ));
    }
    let ns = traffic.netns.as_ref();
    if let Some(name) = ns
        && !netns::exists(name)
    {
        return Err(TcError::Invalid(format!(
            "network namespace `{name}` does not exist (no {})",
            name.location()
        )));
    }
    let devices = devices(traffic)?;
    let _lock = tree_lock();
    let mut install = TcInstall {
        netns: traffic.netns.clone(),
        members: Vec::new(),
    };
    let planned = plan_members(traffic, shaper, trees, &devices, &mut install);
    if planned.is_err() {
        for member in &install.members {
            trees.release(&install.key(member), member.position);
        }
    }
    planned.map(|()| install)
}

fn plan_members(
    traffic: &Traffic,
    shaper: &Shaper,
    trees: &TcTrees,
    devices: &[Link],
    install: &mut TcInstall,
) -> Result<(), TcError> {
    let ns = traffic.netns.as_ref();
    for (side, wanted) in [
        (Side::Egress, traffic.direction.egress()),
        (Side::Ingress, traffic.direction.ingress()),
    ] {
        if !wanted {
            continue;
        }
        let egress = side == Side::Egress;
        let selection = filter::selection_filters(traffic, egress)?;
        let protected = filter::protected_filters(traffic, egress);
        for dev in devices {
            let (ifb, tree_exists) = match side {
                Side::Egress => (None, egress_tree_exists(ns, &dev.name)?),
                Side::Ingress => {
                    let ifb = format!("{IFB_PREFIX}{}", dev.ifindex);
                    if ifb.len() > 15 {
                        return Err(TcError::Invalid(format!(
                            "the IFB name `{ifb}` for {} exceeds 15 characters",
                            dev.name
                        )));
                    }
                    let exists = ingress_tree_exists(ns, &dev.name, &ifb)?;
                    (Some(ifb), exists)
                }
            };
            let mut member = TcMember {
                dev: dev.name.clone(),
                side,
                ifb,
                position: 0,
                before: String::new(),
                direct_qlen: dev.txqlen.max(1000),
                selection: selection.clone(),
                protected: protected.clone(),
                qdisc: shaper_args(shaper, dev)?,
            };
            reserve(trees, ns, &mut member, tree_exists)?;
            install.members.push(member);
        }
    }
    Ok(())
}

/// Give `member` a free position on its tree (and the tree's `before`), recorded in `trees`
/// until the member is applied.
fn reserve(
    trees: &TcTrees,
    ns: Option<&Netns>,
    member: &mut TcMember,
    tree_exists: bool,
) -> Result<(), TcError> {
    let tree_dev = member.tree_dev().to_string();
    // Every position a class or filter on the tree names is taken (a member whose revert
    // half failed still has filters there).
    let mut named = class_masks(ns, &tree_dev)?
        .into_iter()
        .fold(0u8, |all, mask| all | mask);
    let mut prios = filter_prios(ns, &tree_dev, ROOT_HANDLE)?;
    if member.side == Side::Ingress && tree_exists {
        prios.extend(filter_prios(ns, &member.dev, INGRESS_HANDLE)?);
    }
    for prio in prios {
        named |= set_of_prio(prio).unwrap_or(0);
        named |= member_of_prio(prio).map_or(0, |p| 1 << p);
    }
    let live: BTreeSet<u8> = (0..MAX_MEMBERS).filter(|p| named & (1 << p) != 0).collect();
    let key = TreeKey {
        netns: ns.cloned(),
        dev: tree_dev.clone(),
    };
    let mut books = trees.lock();
    let book = books.entry(key).or_default();
    book.members
        .retain(|position, entry| !entry.applied || live.contains(position));
    if let Some(stranger) = live.iter().find(|p| !book.members.contains_key(p)) {
        return Err(TcError::Invalid(format!(
            "faultline's tc tree on {tree_dev} holds a fault this run did not add (member \
             {stranger}): another faultline run, or one that crashed; run `faultline recover`"
        )));
    }
    if !tree_exists {
        book.before = Some(qdisc_show(ns, &member.dev)?.unwrap_or_default());
    }
    let Some(before) = book.before.clone() else {
        return Err(TcError::Invalid(format!(
            "an empty faultline tc tree is on {tree_dev} (left by a run that crashed); run \
             `faultline recover`"
        )));
    };
    // The kernel re-queues netem's duplicates at the root, so they would pass the other
    // members' netems twice; kernels since 2025 refuse the mix outright.
    if let Some(other) = book.members.values().map(|e| &e.member).find(|other| {
        (member.duplicates() && other.is_netem()) || (other.duplicates() && member.is_netem())
    }) {
        return Err(TcError::Invalid(format!(
            "a netem that duplicates packets cannot share {} with another netem fault ({}): \
             duplicates re-enter the interface's qdiscs and would pass the other netem twice \
             (recent kernels refuse it); run them on different interfaces or one after the \
             other",
            member.dev,
            other.qdisc.join(" ")
        )));
    }
    let position = (0..MAX_MEMBERS)
        .find(|p| !book.members.contains_key(p))
        .ok_or_else(|| {
            TcError::Invalid(format!(
                "{} already carries {MAX_MEMBERS} faultline faults; that is the most one \
                 interface takes at once",
                member.dev
            ))
        })?;
    member.position = position;
    member.before = before;
    book.members.insert(
        position,
        Entry {
            member: member.clone(),
            applied: false,
        },
    );
    Ok(())
}

/// The qdisc (after `handle X:`) a member's traffic goes through.
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

fn tc(ns: Option<&Netns>, args: &[&str]) -> Result<String, TcError> {
    run(ns, "tc", &strings(args))
}

/// faultline's root is on `dev`; a foreign root refuses the fault.
fn egress_tree_exists(ns: Option<&Netns>, dev: &str) -> Result<bool, TcError> {
    match first_qdisc(ns, dev, "root")? {
        Some(root) if root.handle == ROOT_HANDLE && root.kind == "htb" => Ok(true),
        Some(root) if root.handle == ROOT_HANDLE => Err(TcError::Invalid(format!(
            "{dev} has faultline's {} root qdisc from an older faultline (left by a run that \
             crashed); run `faultline recover`",
            root.kind
        ))),
        Some(root) if !root.is_kernel_default() => Err(TcError::ForeignRoot {
            dev: dev.into(),
            qdisc: format!("{} {}", root.kind, root.handle),
        }),
        _ => Ok(false),
    }
}

/// faultline's ingress qdisc (redirecting only into its IFB) is on `dev`; anyone else's
/// ingress qdisc refuses the fault: its filters cannot be snapshot and rebuilt reliably.
fn ingress_tree_exists(ns: Option<&Netns>, dev: &str, ifb: &str) -> Result<bool, TcError> {
    let Some(qdisc) = first_qdisc(ns, dev, "ingress")? else {
        return Ok(false);
    };
    let foreign = || TcError::ForeignIngress {
        dev: dev.into(),
        qdisc: format!("{} {}", qdisc.kind, qdisc.handle),
    };
    if !link_exists(ns, ifb) {
        return Err(foreign());
    }
    let filters = tc(ns, &["filter", "show", "dev", dev, "ingress"])?;
    if filters
        .lines()
        .any(|l| l.contains("action order") && !l.contains(&format!("to device {ifb})")))
    {
        return Err(foreign());
    }
    Ok(true)
}

/// Whether device `dev` exists; an error when the kernel could not be asked.
fn device_present(ns: Option<&Netns>, dev: &str) -> Result<bool, TcError> {
    Ok(Kernel::at(ns, dev)?.is_some())
}

/// The member sets of faultline's classes on `dev` (none when the device or tree is absent).
fn class_masks(ns: Option<&Netns>, dev: &str) -> Result<BTreeSet<u8>, TcError> {
    let Some(mut kernel) = Kernel::at(ns, dev)? else {
        return Ok(BTreeSet::new());
    };
    let root = handle_id(ROOT_HANDLE);
    Ok(kernel
        .ask("list the classes", |socket, index| socket.classes(index))?
        .into_iter()
        .filter(|class| class.kind == "htb" && class.handle & 0xFFFF_0000 == root)
        .filter_map(|class| u8::try_from(class.handle & 0xFFFF).ok())
        .filter(|mask| *mask != 0)
        .collect())
}

/// The priorities of the filters on `dev` under `parent`.
fn filter_prios(ns: Option<&Netns>, dev: &str, parent: &str) -> Result<BTreeSet<u32>, TcError> {
    let Some(mut kernel) = Kernel::at(ns, dev)? else {
        return Ok(BTreeSet::new());
    };
    let parent = handle_id(parent);
    Ok(kernel
        .ask("list the filters", |socket, index| {
            socket.filters(index, parent)
        })?
        .iter()
        .map(|filter| filter.priority())
        .collect())
}

/// `fa17:` as the kernel's number for it.
fn handle_id(handle: &str) -> u32 {
    let major = handle.trim_end_matches(':');
    u32::from_str_radix(major, 16).map_or(0, |major| major << 16)
}

fn ensure_root(ns: Option<&Netns>, dev: &str, direct_qlen: u64) -> Result<(), TcError> {
    if egress_tree_exists(ns, dev)? {
        return Ok(());
    }
    // `add`, not `replace`: the kernel refuses if anyone attached a root qdisc meanwhile.
    tc(
        ns,
        &[
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "handle",
            ROOT_HANDLE,
            "htb",
            "direct_qlen",
            &direct_qlen.to_string(),
        ],
    )
    .map(drop)
}

fn ensure_ingress(ns: Option<&Netns>, member: &TcMember, ifb: &str) -> Result<(), TcError> {
    if !link_exists(ns, ifb) {
        run(ns, "ip", &strings(&["link", "add", ifb, "type", "ifb"]))?;
        run(ns, "ip", &strings(&["link", "set", "dev", ifb, "up"]))?;
    }
    ensure_root(ns, ifb, member.direct_qlen)?;
    if !ingress_tree_exists(ns, &member.dev, ifb)? {
        tc(
            ns,
            &[
                "qdisc",
                "add",
                "dev",
                &member.dev,
                "handle",
                INGRESS_HANDLE,
                "ingress",
            ],
        )?;
    }
    Ok(())
}

/// Put `member` on its tree next to `others` (the members already on it).
fn add_member(ns: Option<&Netns>, member: &TcMember, others: &[TcMember]) -> Result<(), TcError> {
    let tree_dev = member.tree_dev();
    let run_filter = |dev: &str, parent: &str, filter: &U32Filter, prio: u32, then: &[&str]| {
        run(ns, "tc", &filter.argv(dev, parent, prio, then)).map(drop)
    };
    match (&member.side, &member.ifb) {
        (Side::Ingress, Some(ifb)) => {
            ensure_ingress(ns, member, ifb)?;
            // Narrowing starts at the redirect: only selected packets enter the IFB.
            for filter in &member.protected {
                let prio = protected_prio(member.position, filter.protocol);
                run_filter(
                    &member.dev,
                    INGRESS_HANDLE,
                    filter,
                    prio,
                    &["flowid", INGRESS_PASS],
                )?;
            }
            let all = [U32Filter::everything()];
            let redirect = ["action", "mirred", "egress", "redirect", "dev", ifb];
            for filter in member.selection.as_deref().unwrap_or(&all) {
                let prio = redirect_prio(member.position, filter.protocol);
                run_filter(&member.dev, INGRESS_HANDLE, filter, prio, &redirect)?;
            }
        }
        _ => {
            ensure_root(ns, tree_dev, member.direct_qlen)?;
            for filter in &member.protected {
                let prio = protected_prio(member.position, filter.protocol);
                run_filter(
                    tree_dev,
                    ROOT_HANDLE,
                    filter,
                    prio,
                    &["flowid", DIRECT_FLOW],
                )?;
            }
        }
    }
    let known: u8 = others.iter().map(TcMember::bit).fold(0, |a, b| a | b);
    let existing = class_masks(ns, tree_dev)?;
    if let Some(stranger) = existing.iter().find(|m| *m & !known != 0) {
        return Err(TcError::Invalid(format!(
            "faultline's tc tree on {tree_dev} holds a class this run did not add (fa17:{stranger:x}); run `faultline recover`"
        )));
    }
    // Every set already on the tree can now also match this member's traffic; the empty set
    // is this member alone.
    for mask in std::iter::once(0).chain(existing.iter().copied()) {
        let set = mask | member.bit();
        if existing.contains(&set) {
            continue;
        }
        let mut chain: Vec<&TcMember> = others.iter().filter(|m| mask & m.bit() != 0).collect();
        chain.push(member);
        chain.sort_by_key(|m| (!m.is_netem(), m.position));
        let selections: Vec<Option<&[U32Filter]>> =
            chain.iter().map(|m| m.selection.as_deref()).collect();
        let filters = filter::intersection(&selections)?;
        if filters.is_empty() {
            continue;
        }
        add_class(ns, tree_dev, set, &chain)?;
        for f in &filters {
            let id = class_id(set);
            run_filter(
                tree_dev,
                ROOT_HANDLE,
                f,
                set_prio(set, f.protocol),
                &["flowid", &id],
            )?;
        }
    }
    Ok(())
}

/// The class of member set `set` and the chain of its members' qdiscs (netem first: packets
/// wait their delay, then meet the rate cap).
fn add_class(ns: Option<&Netns>, dev: &str, set: u8, chain: &[&TcMember]) -> Result<(), TcError> {
    let id = class_id(set);
    // The class only steers: it passes whatever the filters send it at (practically) any
    // rate, and the chain does the shaping. htb itself would not segment GSO packets the
    // way tbf does.
    tc(
        ns,
        &[
            "class",
            "add",
            "dev",
            dev,
            "parent",
            ROOT_HANDLE,
            "classid",
            &id,
            "htb",
            "rate",
            UNSHAPED_RATE,
            "ceil",
            UNSHAPED_RATE,
            "burst",
            "1mb",
            "cburst",
            "1mb",
            "quantum",
            "200000",
        ],
    )?;
    let mut parent = id;
    for (index, member) in chain.iter().enumerate() {
        let handle = chain_handle(set, index);
        let mut args = strings(&[
            "qdisc", "add", "dev", dev, "parent", &parent, "handle", &handle,
        ]);
        args.extend(member.qdisc.iter().cloned());
        run(ns, "tc", &args)?;
        parent = format!("{handle}1");
    }
    Ok(())
}

/// Take `member` out of its tree (its filters, then every class it is in), and the tree
/// itself when no class is left. What could not be removed or restored, as text.
fn remove_member(ns: Option<&Netns>, member: &TcMember) -> Vec<String> {
    match take_out(ns, member) {
        Ok(torn_down) => still_present(ns, member, torn_down),
        Err(e) => vec![e.to_string()],
    }
}

/// `Ok(true)` when the tree went with the member. Stops at the first failure, listings
/// included: a tree is never taken down on a guess that nothing else is on it.
fn take_out(ns: Option<&Netns>, member: &TcMember) -> Result<bool, TcError> {
    let tree_dev = member.tree_dev();
    let bit = member.bit();
    let ours = |prio: u32| {
        member_of_prio(prio) == Some(member.position)
            || set_of_prio(prio).is_some_and(|set| set & bit != 0)
    };
    let delete_filter = |dev: &str, parent: &str, prio: u32| {
        let prio = prio.to_string();
        tc(
            ns,
            &["filter", "del", "dev", dev, "parent", parent, "prio", &prio],
        )
        .map(drop)
    };
    let tree_here = match member.side {
        Side::Egress => match egress_tree_exists(ns, tree_dev) {
            Ok(here) => here,
            // Not faultline's root (any more): nothing of this member can be on it.
            Err(TcError::ForeignRoot { .. } | TcError::Invalid(_)) => false,
            Err(e) => return Err(e),
        },
        Side::Ingress => device_present(ns, tree_dev)?,
    };
    if tree_here && member.side == Side::Egress {
        let masks = class_masks(ns, tree_dev)?;
        if masks.iter().all(|mask| mask & !bit == 0) {
            // The last member on the tree: deleting the root takes its classes and filters
            // with it, in one call instead of one per filter and class (a revert is on the
            // abort path).
            tc(ns, &["qdisc", "del", "dev", tree_dev, "root"])?;
            return Ok(true);
        }
    }
    if tree_here && member.side == Side::Ingress {
        let masks = class_masks(ns, tree_dev)?;
        let dev = member.dev.as_str();
        if masks.iter().all(|mask| mask & !bit == 0) {
            let ingress_here = first_qdisc(ns, dev, "ingress")?.is_some();
            let prios = if ingress_here {
                filter_prios(ns, dev, INGRESS_HANDLE)?
            } else {
                BTreeSet::new()
            };
            if prios.iter().all(|prio| ours(*prio)) {
                // The last member, alone on the ingress qdisc: the qdisc takes its redirects
                // with it and the IFB device its tree.
                if ingress_here {
                    tc(ns, &["qdisc", "del", "dev", dev, "ingress"])?;
                }
                run(ns, "ip", &strings(&["link", "del", "dev", tree_dev]))?;
                return Ok(true);
            }
        }
    }
    if tree_here {
        // Filters first: htb refuses to delete a class that filters still steer to.
        for prio in filter_prios(ns, tree_dev, ROOT_HANDLE)? {
            if ours(prio) {
                delete_filter(tree_dev, ROOT_HANDLE, prio)?;
            }
        }
        for mask in class_masks(ns, tree_dev)? {
            if mask & bit != 0 {
                tc(
                    ns,
                    &["class", "del", "dev", tree_dev, "classid", &class_id(mask)],
                )?;
            }
        }
    }
    let classes_left = !class_masks(ns, tree_dev)?.is_empty();
    match member.side {
        Side::Egress => {
            if classes_left {
                return Ok(false);
            }
            // The last member out takes the tree down.
            if tree_here {
                tc(ns, &["qdisc", "del", "dev", tree_dev, "root"])?;
            }
        }
        Side::Ingress => {
            let dev = member.dev.as_str();
            let ingress_here = first_qdisc(ns, dev, "ingress")?.is_some();
            let mut others_left = false;
            let mut strangers = Vec::new();
            if ingress_here {
                for prio in filter_prios(ns, dev, INGRESS_HANDLE)? {
                    if ours(prio) {
                        delete_filter(dev, INGRESS_HANDLE, prio)?;
                    } else if member_of_prio(prio).is_some() {
                        others_left = true;
                    } else {
                        strangers.push(prio.to_string());
                    }
                }
            }
            if classes_left || others_left {
                return Ok(false);
            }
            if !strangers.is_empty() {
                return Err(TcError::NotRestored(vec![format!(
                    "the ingress qdisc on {dev} holds filters faultline did not add (prio {}); \
                     it and {tree_dev} are left in place",
                    strangers.join(", ")
                )]));
            }
            if ingress_here {
                tc(ns, &["qdisc", "del", "dev", dev, "ingress"])?;
            }
            if device_present(ns, tree_dev)? {
                run(ns, "ip", &strings(&["link", "del", "dev", tree_dev]))?;
            }
        }
    }
    Ok(true)
}

/// What remains of `member` that should not; when the tree went with it, also whether the
/// interface's qdiscs are what they were before faultline's first tree.
fn still_present(ns: Option<&Netns>, member: &TcMember, torn_down: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let tree_dev = member.tree_dev();
    let bit = member.bit();
    // A tree taken down has no classes; the qdiscs compared below show that it is gone.
    let tree_gone = torn_down && member.side == Side::Egress;
    if !tree_gone && let Ok(masks) = class_masks(ns, tree_dev) {
        for mask in masks.into_iter().filter(|m| m & bit != 0) {
            problems.push(format!(
                "class {} on {tree_dev} still exists",
                class_id(mask)
            ));
        }
    }
    if !torn_down {
        return problems;
    }
    if member.side == Side::Ingress && link_exists(ns, tree_dev) {
        problems.push(format!("IFB device {tree_dev} still exists"));
    }
    match qdisc_places(ns, &member.dev) {
        Ok(Some(now)) => {
            // Kind, handle and place of each qdisc on this side, compared with the listing
            // taken before faultline's first tree on the interface.
            let ingress = member.side == Side::Ingress;
            let mut now: Vec<QdiscPlace> = now
                .into_iter()
                .filter(|q| q.is_ingress() == ingress)
                .collect();
            let mut before: Vec<QdiscPlace> = member
                .before
                .lines()
                .filter_map(QdiscPlace::parse)
                .filter(|q| q.is_ingress() == ingress)
                .collect();
            now.sort();
            before.sort();
            if now != before {
                let words = |qdiscs: &[QdiscPlace]| {
                    qdiscs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                problems.push(format!(
                    "{} qdiscs on {} differ from before the fault: before `{}`, now `{}`",
                    if ingress { "ingress" } else { "egress" },
                    member.dev,
                    words(&before),
                    words(&now)
                ));
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_name_their_member_sets_and_bigger_sets_come_first() {
        for mask in 1..=u8::MAX {
            for protocol in [L3::Ip, L3::Ipv6, L3::All] {
                let prio = set_prio(mask, protocol);
                assert_eq!(set_of_prio(prio), Some(mask), "prio {prio}");
                assert_eq!(member_of_prio(prio), None);
                assert!(prio < 65536);
            }
        }
        assert!(
            set_prio(0b11, L3::All) < set_prio(0b1, L3::Ip),
            "pairs before singles"
        );
        assert!(set_prio(0xff, L3::All) < set_prio(0b1100_0000, L3::Ip));
        for position in 0..MAX_MEMBERS {
            for protocol in [L3::Ip, L3::Ipv6] {
                let prio = protected_prio(position, protocol);
                assert_eq!(member_of_prio(prio), Some(position));
                assert!(prio < redirect_prio(0, L3::Ip), "protected flows first");
            }
            for protocol in [L3::Ip, L3::Ipv6, L3::All] {
                let prio = redirect_prio(position, protocol);
                assert_eq!(member_of_prio(prio), Some(position));
                assert_eq!(set_of_prio(prio), None);
                assert!(prio < set_prio(0xff, L3::Ip));
            }
        }
        assert_eq!(class_id(0b101), "fa17:5");
        assert_eq!(chain_handle(0b11, 1), "e031:");
        assert_eq!(chain_handle(0xff, 7), "eff7:");
    }
}

/// Against the kernel, in namespaces of their own.
#[cfg(test)]
mod kernel_tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::net::{Direction, PortRange, Protected, Protocol};
    use crate::sys::netns::{TestNet, command_in, goodput, run_in};
    use crate::sys::tc::{NetemSpec, Support, leftovers, netem_support};

    const RATE: u64 = 10_000_000;

    fn traffic(netns: &str, dev: &str, direction: Direction) -> Traffic {
        Traffic {
            netns: Some(netns.into()),
            interfaces: vec![dev.into()],
            ..Traffic::everything(direction)
        }
    }

    fn tcp_port(t: &mut Traffic, remote: &str, port: u16) {
        t.protocol = Protocol::Tcp;
        t.remote = vec![remote.parse().unwrap()];
        t.remote_ports = vec![PortRange { lo: port, hi: port }];
    }

    fn show(ns: &str, args: &[&str]) -> String {
        let mut argv = vec!["tc"];
        argv.extend_from_slice(args);
        let out = command_in(ns, &argv).output().unwrap();
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn qdiscs(ns: &str, dev: &str) -> String {
        show(ns, &["qdisc", "show", "dev", dev])
    }

    /// Serialise and read back, as the state file and `recover` do.
    fn revived(install: &TcInstall) -> TcInstall {
        let back: TcInstall =
            serde_json::from_str(&serde_json::to_string(install).unwrap()).unwrap();
        assert_eq!(&back, install);
        back
    }

    /// Throughput tests measure each other and every other heavy test: one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::sys::heavy_tests::one_at_a_time()
    }

    fn listen(ns: &str, ip: &str) -> TcpListener {
        let addr = format!("{ip}:0");
        run_in(ns, move || TcpListener::bind(addr).unwrap()).unwrap()
    }

    fn port_of(listener: &TcpListener) -> u16 {
        listener.local_addr().unwrap().port()
    }

    /// Goodput from `from` to `listener` is `rate` (less L2 overhead, 1448/1514).
    /// Above the rate is never noise: it fails at once. Below it, a burst of other work on
    /// the box can starve the sender for a moment, so one of three tries must reach 93 %.
    fn assert_shaped(from: &str, listener: &TcpListener, rate: u64, what: &str) {
        let mut ratios = Vec::new();
        for _ in 0..3 {
            let ratio = goodput(from, listener, 1.0, 3.5) / rate as f64;
            println!("{what}: goodput/rate = {ratio:.4}");
            assert!(ratio <= 1.0, "{what}: ratio {ratio:.4}, above the cap");
            if ratio >= 0.93 {
                return;
            }
            ratios.push(ratio);
        }
        panic!("{what}: ratios {ratios:.4?}, below 93 % of the cap three times");
    }

    fn assert_unshaped(from: &str, listener: &TcpListener, what: &str) {
        let bits = goodput(from, listener, 0.2, 1.0);
        println!("{what}: unshaped {:.0} Mbit/s", bits / 1e6);
        assert!(bits > 3.0 * RATE as f64, "{what}: only {bits:.0} bit/s");
    }

    #[test]
    fn bandwidth_egress_caps_goodput_and_remove_restores() {
        let _serial = serial();
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.a, &net.veth_a);
        let trees = TcTrees::default();
        let install = TcInstall::bandwidth(
            &traffic(&net.a, &net.veth_a, Direction::Egress),
            RATE,
            None,
            &trees,
        )
        .unwrap();
        assert_eq!(install.members.len(), 1);
        assert_eq!(
            install.members[0].qdisc.join(" "),
            "tbf rate 10000000bit burst 5000 latency 50ms"
        );
        assert_eq!(install.members[0].selection, None);
        install.apply(&trees).unwrap();
        let tree = qdiscs(&net.a, &net.veth_a);
        assert!(tree.contains("qdisc htb fa17: root"), "{tree}");
        assert!(tree.contains("qdisc tbf e010: parent fa17:1"), "{tree}");
        assert_eq!(
            leftovers(Some(&Netns::from(&net.a))).unwrap(),
            vec![format!(
                "qdisc htb fa17: on {} (faultline's tree)",
                net.veth_a
            )]
        );
        let listener = listen(&net.b, &net.ip_b);
        assert_shaped(&net.a, &listener, RATE, "egress tbf");
        install.remove().unwrap();
        assert_eq!(qdiscs(&net.a, &net.veth_a), before);
        assert_unshaped(&net.a, &listener, "egress after remove");
        // Idempotent, and works from the serialised value alone (a fresh process after a crash).
        install.remove().unwrap();
        revived(&install).remove().unwrap();
        assert!(leftovers(Some(&Netns::from(&net.a))).unwrap().is_empty());
    }

    #[test]
    fn bandwidth_ingress_shapes_through_ifb_and_spares_protected_flows() {
        let _serial = serial();
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.b, &net.veth_b);
        let shaped = listen(&net.b, &net.ip_b);
        let spared = listen(&net.b, &net.ip_b);
        let mut t = traffic(&net.b, &net.veth_b, Direction::Ingress);
        t.protected = vec![Protected {
            addr: net.ip_a.parse().unwrap(),
            remote_port: None,
            local_port: Some(port_of(&spared)),
            reason: "probe".into(),
        }];
        let trees = TcTrees::default();
        let install = TcInstall::bandwidth(&t, RATE, None, &trees).unwrap();
        let ifb = install.ifbs()[0].to_string();
        assert!(ifb.starts_with(IFB_PREFIX), "{ifb}");
        install.apply(&trees).unwrap();
        let found = leftovers(Some(&Netns::from(&net.b))).unwrap();
        assert!(found.contains(&format!("IFB device {ifb}")), "{found:?}");
        assert_shaped(&net.a, &shaped, RATE, "ingress via IFB");
        assert_unshaped(&net.a, &spared, "ingress, protected flow");
        // A crash: the next process only has the state file.
        let revived = revived(&install);
        revived.remove().unwrap();
        revived.remove().unwrap();
        assert_eq!(qdiscs(&net.b, &net.veth_b), before);
        assert!(!link_exists(Some(&Netns::from(&net.b)), &ifb));
        assert!(leftovers(Some(&Netns::from(&net.b))).unwrap().is_empty());
        assert_unshaped(&net.a, &shaped, "ingress after remove");
    }

    #[test]
    fn bandwidth_narrowed_to_one_port_leaves_another_alone() {
        let _serial = serial();
        let net = TestNet::new().unwrap();
        let before = qdiscs(&net.a, &net.veth_a);
        let shaped = listen(&net.b, &net.ip_b);
        let other = listen(&net.b, &net.ip_b);
        let mut t = traffic(&net.a, &net.veth_a, Direction::Egress);
        tcp_port(&mut t, &net.ip_b, port_of(&shaped));
        let trees = TcTrees::default();
        let install = TcInstall::bandwidth(&t, RATE, None, &trees).unwrap();
        install.apply(&trees).unwrap();
        assert_shaped(&net.a, &shaped, RATE, "egress htb, selected port");
        assert_unshaped(&net.a, &other, "egress htb, other port");
        install.remove().unwrap();
        assert_eq!(qdiscs(&net.a, &net.veth_a), before);
    }

    /// A cap on all TCP to b and a tighter one on one port of it share one tree: that port
    /// goes through both (so the tighter holds), other ports through the first alone. The
    /// first leaves by its record alone (as `recover` would): the port keeps the tighter cap,
    /// other ports are free; the last one out restores the interface exactly.
    #[test]
    fn two_caps_on_one_interface_share_a_tree_and_leave_it_one_by_one() {
        let _serial = serial();
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let narrow = listen(&net.b, &net.ip_b);
        let other = listen(&net.b, &net.ip_b);
        let trees = TcTrees::default();
        let mut all_tcp = traffic(a, dev, Direction::Egress);
        all_tcp.protocol = Protocol::Tcp;
        let wide = TcInstall::bandwidth(&all_tcp, 2 * RATE, None, &trees).unwrap();
        wide.apply(&trees).unwrap();
        let mut one_port = traffic(a, dev, Direction::Egress);
        tcp_port(&mut one_port, &net.ip_b, port_of(&narrow));
        let tight = TcInstall::bandwidth(&one_port, RATE, None, &trees).unwrap();
        assert_eq!(
            (wide.members[0].position, tight.members[0].position),
            (0, 1)
        );
        assert_eq!(tight.members[0].before, wide.members[0].before);
        tight.apply(&trees).unwrap();
        let classes = show(a, &["class", "show", "dev", dev]);
        for class in ["fa17:1 ", "fa17:2 ", "fa17:3 "] {
            assert!(classes.contains(class), "{class} in {classes}");
        }
        assert_shaped(a, &narrow, RATE, "the port, through both caps");
        assert_shaped(a, &other, 2 * RATE, "another port, the wide cap alone");

        revived(&wide).remove().unwrap();
        let classes = show(a, &["class", "show", "dev", dev]);
        assert!(
            classes.contains("fa17:2 ")
                && !classes.contains("fa17:1 ")
                && !classes.contains("fa17:3 "),
            "{classes}"
        );
        assert_shaped(a, &narrow, RATE, "the port, after the wide cap left");
        assert_unshaped(a, &other, "another port, after the wide cap left");
        revived(&tight).remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
        assert_eq!(show(a, &["class", "show", "dev", dev]), "");
        assert!(leftovers(Some(&Netns::from(a))).unwrap().is_empty());
    }

    /// Two delays to different ports never meet in one class: their intersection is empty.
    #[test]
    fn disjoint_selections_get_no_shared_class() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let trees = TcTrees::default();
        let installs: Vec<TcInstall> = [5432, 6379]
            .into_iter()
            .map(|port| {
                let mut t = traffic(a, dev, Direction::Egress);
                tcp_port(&mut t, &net.ip_b, port);
                let install = TcInstall::bandwidth(&t, RATE, None, &trees).unwrap();
                install.apply(&trees).unwrap();
                install
            })
            .collect();
        let classes = show(a, &["class", "show", "dev", dev]);
        assert!(
            classes.contains("fa17:1 ") && classes.contains("fa17:2 "),
            "{classes}"
        );
        assert!(!classes.contains("fa17:3 "), "{classes}");
        for install in installs.iter().rev() {
            install.remove().unwrap();
        }
        assert_eq!(qdiscs(a, dev), before);
    }

    /// A tree holding a fault this run does not know (another run's, or a crashed run's that
    /// nobody recovered) is never extended: its classes could not be combined correctly.
    #[test]
    fn a_tree_with_a_stranger_on_it_is_refused() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let theirs = TcTrees::default();
        let t = traffic(a, dev, Direction::Egress);
        let install = TcInstall::bandwidth(&t, RATE, None, &theirs).unwrap();
        install.apply(&theirs).unwrap();
        let refused = TcInstall::bandwidth(&t, RATE, None, &TcTrees::default())
            .expect_err("a stranger's tree");
        assert!(
            refused.to_string().contains("faultline recover"),
            "{refused}"
        );
        install.remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
    }

    /// Refused by the kernel half-way: what went in comes out, and nothing is left.
    #[test]
    fn a_failed_apply_undoes_itself() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let before = qdiscs(a, dev);
        let trees = TcTrees::default();
        let mut install =
            TcInstall::bandwidth(&traffic(a, dev, Direction::Both), RATE, None, &trees).unwrap();
        assert_eq!(install.members.len(), 2);
        install.members[1].qdisc = strings(&["tbf", "rate", "1mbit"]);
        let err = install.apply(&trees).unwrap_err();
        assert!(matches!(err, TcError::Command { .. }), "{err}");
        assert_eq!(qdiscs(a, dev), before);
        assert!(leftovers(Some(&Netns::from(a))).unwrap().is_empty());
        // Its record may still be reverted (by position): a new fault gets another one.
        let again =
            TcInstall::bandwidth(&traffic(a, dev, Direction::Egress), RATE, None, &trees).unwrap();
        assert_eq!(again.members[0].position, 1);
        install.remove().unwrap();
    }

    /// Duplicates re-enter at the root and would pass another netem twice: refused before
    /// anything changes (the kernel's own refusal since 2025 would say the same later).
    #[test]
    fn a_duplicating_netem_is_not_shared_with_another_netem() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let trees = TcTrees::default();
        let t = traffic(a, dev, Direction::Egress);
        let delay = NetemSpec {
            delay: Some(Duration::from_millis(10)),
            ..NetemSpec::default()
        };
        let duplicate = NetemSpec {
            duplicate: Some(0.1),
            ..NetemSpec::default()
        };
        let _planned = TcInstall::netem(&t, &delay, &trees).unwrap();
        let refused = TcInstall::netem(&t, &duplicate, &trees).unwrap_err();
        assert!(
            refused.to_string().contains("duplicates packets"),
            "{refused}"
        );
        // A rate cap is no netem: it may share with either.
        TcInstall::bandwidth(&t, RATE, None, &trees).unwrap();
    }

    #[test]
    fn someone_elses_qdiscs_are_never_replaced_and_survive_byte_for_byte() {
        let net = TestNet::new().unwrap();
        let (a, dev) = (net.a.as_str(), net.veth_a.as_str());
        let trees = TcTrees::default();
        // Another tool's shaper on a's root.
        show(
            a,
            &[
                "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", "50mbit",
                "burst", "20kb", "latency", "40ms",
            ],
        );
        let before = qdiscs(a, dev);
        let refused = TcInstall::bandwidth(&traffic(a, dev, Direction::Egress), RATE, None, &trees)
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
            TcInstall::bandwidth(&traffic(a, dev, Direction::Ingress), RATE, None, &trees).unwrap();
        install.apply(&trees).unwrap();
        let during = qdiscs(a, dev);
        assert!(
            during.starts_with(before.trim_end()) && during.contains("ingress ffff:"),
            "{during}"
        );
        install.remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
        // Another tool's ingress qdisc: an ingress fault is refused, nothing changes.
        show(
            a,
            &["qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        );
        let before = qdiscs(a, dev);
        let refused = TcInstall::bandwidth(&traffic(a, dev, Direction::Both), RATE, None, &trees);
        assert!(matches!(refused, Err(TcError::ForeignRoot { .. })));
        let refused =
            TcInstall::bandwidth(&traffic(a, dev, Direction::Ingress), RATE, None, &trees);
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
        let trees = TcTrees::default();
        let mut t = traffic(a, dev, Direction::Both);
        t.interfaces.clear();
        let install = TcInstall::bandwidth(&t, RATE, Some(20_000), &trees).unwrap();
        let devs: Vec<(&str, Side)> = install
            .members
            .iter()
            .map(|m| (m.dev.as_str(), m.side))
            .collect();
        // Loopback is skipped; the veth gets both directions.
        assert_eq!(devs, vec![(dev, Side::Egress), (dev, Side::Ingress)]);
        install.apply(&trees).unwrap();
        let found = leftovers(Some(&Netns::from(a))).unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        install.remove().unwrap();
        assert_eq!(qdiscs(a, dev), before);
        assert!(leftovers(Some(&Netns::from(a))).unwrap().is_empty());
        // A burst below one full frame could never pass a frame.
        assert!(TcInstall::bandwidth(&t, RATE, Some(1000), &trees).is_err());
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
        let trees = TcTrees::default();
        let install = TcInstall::netem(
            &traffic(&net.a, &net.veth_a, Direction::Egress),
            &NetemSpec {
                delay: Some(Duration::from_millis(50)),
                ..NetemSpec::default()
            },
            &trees,
        )
        .unwrap();
        install.apply(&trees).unwrap();
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
        // Emulated kernels (the stock-kernel lane) add their own slowness on top.
        let slack = if std::env::var_os("FAULTLINE_LANE").is_some() {
            30.0
        } else {
            2.0
        };
        assert!((50.0..50.0 + slack).contains(&p50), "p50 {p50} ms");
    }
}
