//! Reading processes from /proc and selecting the ones a target means.
//!
//! /proc is parsed by hand rather than through the `procfs` crate: faultline needs five fields
//! from three small files, and owning the parsing lets every read treat "the process exited
//! while we looked" (ENOENT, ESRCH) as a silent skip instead of an error.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use regex::Regex;

use super::cgroup::{Membership, parse_proc_cgroup};

/// A process identity that survives PID reuse: the PID plus its start time
/// (`/proc/PID/stat` field 22, clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcRef {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcRef {
    /// Is this process still running (same PID *and* start time)?
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_ok_and(|t| t == self.start_time)
    }
}

/// What a target's process selector says, without its positions in the file: the
/// filters, the excludes and how to pick among the matches (see the experiment format).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Selector {
    pub pid: Option<u32>,
    pub pidfile: Option<String>,
    pub name: Option<String>,
    /// A regular expression searched in the command line.
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// Only the processes of these containers: a name, an ID prefix or a `key=value` label.
    pub container: Option<String>,
    /// Which runtime to ask about `container`; `None`: the first that answers.
    pub runtime: Option<super::container::Runtime>,
    pub uid: Option<u32>,
    pub exclude: Option<Exclude>,
    pub count: Option<u32>,
    pub percent: Option<u32>,
    pub random: bool,
    pub seed: Option<u64>,
    pub force: bool,
}

impl Selector {
    /// The filters and picks that were given, as `plan` and fault messages show them:
    /// `name=worker cmdline=/--role/ count=1`.
    pub fn describe(&self) -> String {
        let s = self;
        let mut parts = Vec::new();
        if let Some(pid) = s.pid {
            parts.push(format!("pid={pid}"));
        }
        if let Some(p) = &s.pidfile {
            parts.push(format!("pidfile={p}"));
        }
        if let Some(n) = &s.name {
            parts.push(format!("name={n}"));
        }
        if let Some(c) = &s.cmdline {
            parts.push(format!("cmdline=/{c}/"));
        }
        if let Some(c) = &s.cgroup {
            parts.push(format!("cgroup={c}"));
        }
        if let Some(c) = &s.container {
            match s.runtime {
                Some(runtime) => parts.push(format!("container={c} ({})", runtime.as_str())),
                None => parts.push(format!("container={c}")),
            }
        }
        if let Some(u) = s.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(c) = &s.count {
            parts.push(format!("count={c}"));
        }
        if let Some(p) = &s.percent {
            parts.push(format!("percent={p}"));
        }
        if s.random {
            parts.push(match s.seed {
                Some(seed) => format!("random(seed={seed})"),
                None => "random".into(),
            });
        }
        if s.force {
            parts.push("force".into());
        }
        parts.join(" ")
    }
}

impl From<&Selector> for Selector {
    fn from(selector: &Selector) -> Self {
        selector.clone()
    }
}

/// Matches a selector leaves alone.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Exclude {
    pub pids: Vec<u32>,
    pub name: Option<String>,
    pub cmdline: Option<String>,
}

/// What faultline knows about one live process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
    /// Arguments joined by single spaces.
    pub cmdline: String,
    /// Real uid. In a selector's [`Matches`] it is read only when the selector filters by
    /// uid ([`UID_UNREAD`] otherwise); picked processes always have it.
    pub uid: u32,
    /// Clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// One-letter state from `/proc/PID/stat` (`R`, `S`, `T`, `Z`, ...).
    pub state: char,
}

impl ProcInfo {
    pub fn proc_ref(&self) -> ProcRef {
        ProcRef {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// Is capability `bit` in this process's effective set?
pub fn has_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

pub const CAP_KILL: u32 = 5;
pub const CAP_NET_ADMIN: u32 = 12;

/// Why a selection found nothing usable, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    /// The container runtime could not say which containers a reference means, and why.
    #[error("{message}")]
    Container {
        message: String,
        cause: super::Cause,
    },
}

impl SelectError {
    /// What the failure means for a fault on the target.
    pub fn cause(&self) -> super::Cause {
        match self {
            SelectError::Container { cause, .. } => *cause,
            SelectError::Invalid(_) | SelectError::Io(_) => super::Cause::Failed,
        }
    }
}

/// The result of resolving a selector now.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Selection {
    /// Picked processes, in the order picked.
    pub picked: Vec<ProcInfo>,
    /// How many processes matched the filters (before `count`/`percent`).
    pub matched: usize,
    /// Matches left out because they are protected (PID 1, faultline, its ancestors) and
    /// `force` is off, with the reason for each.
    pub refused: Vec<(u32, String)>,
    /// The containers the selector's `container` meant, as their runtime described them.
    pub containers: Vec<super::container::Container>,
}

/// The fields faultline uses from one `/proc/PID/stat` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Kernel `task->flags` (field 9).
    pub flags: u32,
    /// Field 22.
    pub start_time: u64,
}

/// `PF_KTHREAD` in `task->flags`: the process is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.pid == 2 || self.flags & PF_KTHREAD != 0
    }
}

/// Parse a `/proc/PID/stat` line. The name may contain spaces and parentheses (a process can
/// call itself `a) (b`), so it runs from the first `(` to the *last* `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 1..close].to_string();
    // Fields from 3 (state) on; field N is at index N - 3.
    let fields: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some(Stat {
        pid,
        comm,
        state,
        ppid: fields.get(1)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True when `error` only means the process exited while we were reading it.
pub fn is_vanished(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ESRCH)
}

/// A /proc file, read in as few calls as it takes: these files report no size, so
/// `fs::read` would ask for one (statx) and then grow its buffer a read at a time, and a
/// `plan` over a thousand processes reads two or three files of each. procfs answers a read
/// with all of the file that fits (`seq_file`, and `cmdline` page by page to the end of the
/// arguments), so a read that leaves room in the buffer was the end: no second read to see
/// the zero (2,000 system calls of a `plan` over a thousand processes).
fn proc_file(pid: u32, file: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut opened = std::fs::File::open(format!("/proc/{pid}/{file}"))?;
    let mut bytes = vec![0; 4096];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        match opened.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled < bytes.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

pub fn read_stat(pid: u32) -> io::Result<Stat> {
    let bytes = proc_file(pid, "stat")?;
    let line = String::from_utf8_lossy(&bytes);
    parse_stat(&line).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {line:?}"),
        )
    })
}

fn read_cmdline(pid: u32) -> io::Result<String> {
    let bytes = proc_file(pid, "cmdline")?;
    let args: Vec<_> = bytes
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    Ok(args.join(" "))
}

fn read_real_uid(pid: u32) -> io::Result<u32> {
    let bytes = proc_file(pid, "status")?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_ascii_whitespace().next())
        .and_then(|real| real.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no Uid line in /proc/{pid}/status"),
            )
        })
}

/// Start time of a live process (`/proc/PID/stat` field 22).
pub fn start_time(pid: u32) -> io::Result<u64> {
    Ok(read_stat(pid)?.start_time)
}

/// Read one process.
pub fn read(pid: u32) -> io::Result<ProcInfo> {
    complete(read_stat(pid)?)
}

/// Stands for a uid not read (yet): /proc/PID/status is the costliest file of the three, and
/// a `plan` over a thousand candidates needs it only for the few it picks.
pub const UID_UNREAD: u32 = u32::MAX;

fn complete(stat: Stat) -> io::Result<ProcInfo> {
    let uid = read_real_uid(stat.pid)?;
    Ok(ProcInfo {
        uid,
        ..complete_without_uid(stat)?
    })
}

fn complete_without_uid(stat: Stat) -> io::Result<ProcInfo> {
    Ok(ProcInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        cmdline: read_cmdline(stat.pid)?,
        uid: UID_UNREAD,
        name: stat.comm,
        start_time: stat.start_time,
        state: stat.state,
    })
}

/// Every PID in /proc right now (thread-group leaders only).
pub fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// True when a line of `/proc/PID/cgroup` (`N:controllers:/path`, `0::/path` on v2) puts the
/// process in `wanted` or below it.
pub fn cgroup_line_matches(line: &str, wanted: &str) -> bool {
    let Some(path) = line.splitn(3, ':').nth(2) else {
        return false;
    };
    let wanted = wanted.trim_end_matches('/');
    if wanted.is_empty() {
        return path.starts_with('/');
    }
    at_or_below(path, wanted)
}

/// For each running container, the cgroups its processes are in: the controller hierarchies
/// of its main process on cgroup v1 (the unified `0::` line of a hybrid host, and named
/// hierarchies such as `name=systemd`, can hold the runtime itself and every other
/// container), its unified cgroup on v2. Each must name the container's ID, as every runtime's
/// layout does (`/docker/ID`, `docker-ID.scope`, `libpod-ID.scope`): a main process whose
/// cgroup does not (a PID reused since the runtime answered, a runtime that leaves its
/// containers in the caller's session) could not be told from other processes, so it is
/// refused rather than matched.
fn container_cgroups(
    containers: &[super::container::Container],
) -> Result<Vec<Vec<Membership>>, SelectError> {
    let mut groups = Vec::new();
    for container in containers.iter().filter(|c| c.running && c.pid > 0) {
        let bytes = match proc_file(container.pid, "cgroup") {
            Ok(bytes) => bytes,
            // Stopped between the runtime's answer and this read: it has no processes.
            Err(e) if is_vanished(&e) => continue,
            Err(e) => {
                return Err(SelectError::Io(format!(
                    "cannot read the cgroup of container {} (pid {}): {e}",
                    container.name, container.pid
                )));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let memberships = container_memberships(&text);
        if memberships.is_empty() || memberships.iter().any(|m| !m.path.contains(&container.id)) {
            return Err(SelectError::Invalid(format!(
                "the cgroup of container {} (main pid {}) does not name its ID ({}), so its \
                 processes cannot be told from others; select them with `pid` or `cmdline` \
                 instead",
                container.name,
                container.pid,
                text.trim().replace('\n', ", ")
            )));
        }
        groups.push(memberships);
    }
    Ok(groups)
}

/// The cgroups of a container's main process that its processes share: the controller
/// hierarchies when there are any (v1, hybrid), else the unified one (v2).
fn container_memberships(text: &str) -> Vec<Membership> {
    let memberships = parse_proc_cgroup(text);
    let controllers: Vec<Membership> = memberships
        .iter()
        .filter(|m| {
            !m.controllers.is_empty() && !m.controllers.iter().any(|c| c.starts_with("name="))
        })
        .cloned()
        .collect();
    if !controllers.is_empty() {
        return controllers;
    }
    memberships
        .into_iter()
        .filter(|m| m.hierarchy_id == 0 && m.controllers.is_empty())
        .collect()
}

/// `path` is `wanted` or below it (`/a/b` is below `/a`, `/ab` is not).
fn at_or_below(path: &str, wanted: &str) -> bool {
    path == wanted
        || path
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// True when a process (its `/proc/PID/cgroup` text) is in one of the containers: in every
/// one of that container's cgroups (each hierarchy), at its path or below.
pub fn in_container_cgroups(process: &str, containers: &[Vec<Membership>]) -> bool {
    let own = parse_proc_cgroup(process);
    containers.iter().any(|container| {
        container.iter().all(|wanted| {
            own.iter().any(|m| {
                m.hierarchy_id == wanted.hierarchy_id
                    && m.controllers == wanted.controllers
                    && at_or_below(&m.path, &wanted.path)
            })
        })
    })
}

fn in_any_container(pid: u32, containers: &[Vec<Membership>]) -> io::Result<bool> {
    let bytes = proc_file(pid, "cgroup")?;
    Ok(in_container_cgroups(
        &String::from_utf8_lossy(&bytes),
        containers,
    ))
}

fn in_cgroup(pid: u32, wanted: &str) -> io::Result<bool> {
    let bytes = proc_file(pid, "cgroup")?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .any(|line| cgroup_line_matches(line, wanted)))
}

/// How [`wait_for_state`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The process reached an accepted state (the state seen).
    Reached(char),
    /// Time ran out; the last state seen.
    TimedOut(char),
    /// The process exited (or its PID now names another process).
    Gone,
}

/// Poll `/proc/PID/stat` every 2 ms until `accept(state)` holds, for at most `timeout`.
pub fn wait_for_state(
    target: ProcRef,
    accept: impl Fn(char) -> bool,
    timeout: Duration,
) -> WaitOutcome {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = match read_stat(target.pid) {
            Ok(stat) if stat.start_time == target.start_time => stat,
            _ => return WaitOutcome::Gone,
        };
        if accept(stat.state) {
            return WaitOutcome::Reached(stat.state);
        }
        if Instant::now() >= deadline {
            return WaitOutcome::TimedOut(stat.state);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A selector with its regexes compiled, to resolve repeatedly (a probe samples every second).
/// Serialised as the selector it was compiled from.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(transparent)]
pub struct CompiledSelector {
    selector: Selector,
    #[serde(skip)]
    cmdline: Option<Regex>,
    #[serde(skip)]
    exclude_cmdline: Option<Regex>,
}

/// Every live process a selector's filters match, before protections and picking.
#[derive(Clone, Debug, Default)]
pub struct Matches {
    /// Oldest first (start time, then PID).
    pub eligible: Vec<ProcInfo>,
    /// Protected matches (PID 1, faultline, its ancestors) with the reason each is protected.
    pub protected: Vec<(ProcInfo, String)>,
    /// The containers the selector's `container` meant, as their runtime described them.
    pub containers: Vec<super::container::Container>,
}

fn compile(what: &str, pattern: &str) -> Result<Regex, SelectError> {
    Regex::new(pattern).map_err(|e| {
        SelectError::Invalid(format!(
            "{what} `{pattern}` is not a valid regular expression: {e}"
        ))
    })
}

impl CompiledSelector {
    pub fn new(selector: impl Into<Selector>) -> Result<CompiledSelector, SelectError> {
        let selector = selector.into();
        let exclude = selector.exclude.as_ref();
        Ok(CompiledSelector {
            cmdline: selector
                .cmdline
                .as_ref()
                .map(|p| compile("cmdline", p))
                .transpose()?,
            exclude_cmdline: exclude
                .and_then(|e| e.cmdline.as_ref())
                .map(|p| compile("exclude.cmdline", p))
                .transpose()?,
            selector,
        })
    }

    /// A selector whose patterns its caller has compiled already (the plan's compile step,
    /// which reports a bad pattern at its place in the file): `cmdline` and
    /// `exclude_cmdline` are `selector`'s two patterns, compiled. `None` when a pattern has
    /// no regex: a selector must never match more than it says.
    pub fn from_compiled(
        selector: Selector,
        cmdline: Option<Regex>,
        exclude_cmdline: Option<Regex>,
    ) -> Option<CompiledSelector> {
        let exclude_pattern = selector.exclude.as_ref().and_then(|e| e.cmdline.as_ref());
        let same = |pattern: Option<&String>, regex: &Option<Regex>| match (pattern, regex) {
            (None, None) => true,
            (Some(pattern), Some(regex)) => regex.as_str() == pattern,
            _ => false,
        };
        (same(selector.cmdline.as_ref(), &cmdline) && same(exclude_pattern, &exclude_cmdline))
            .then_some(CompiledSelector {
                selector,
                cmdline,
                exclude_cmdline,
            })
    }

    /// What the selector says, as written.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Every live, non-zombie process the filters and excludes match. Kernel threads only when
    /// named by `pid`. Protected processes are set apart, whatever `force` says.
    pub fn matches(&self) -> Result<Matches, SelectError> {
        let sel = &self.selector;
        let wanted_pid = match (&sel.pid, &sel.pidfile) {
            (Some(pid), None) => Some(*pid),
            (pid, Some(pidfile)) => {
                let from_file = read_pidfile(Path::new(pidfile))?;
                if pid.is_some_and(|pid| pid != from_file) {
                    return Ok(Matches::default());
                }
                Some(from_file)
            }
            (None, None) => None,
        };
        let pids = match wanted_pid {
            Some(pid) => vec![pid],
            None => list_pids().map_err(|e| SelectError::Io(format!("cannot list /proc: {e}")))?,
        };
        let found = match &sel.container {
            Some(_) => self.containers()?,
            None => Vec::new(),
        };
        let containers = match &sel.container {
            Some(_) => Some(container_cgroups(&found)?),
            None => None,
        };
        if containers.as_ref().is_some_and(Vec::is_empty) {
            // No container of the reference runs now: nothing of it to act on.
            return Ok(Matches {
                containers: found,
                ..Matches::default()
            });
        }
        let protection = Protection::now();
        let mut matches = Matches {
            containers: found,
            ..Matches::default()
        };
        for pid in pids {
            let info = match self.check(pid, wanted_pid.is_some(), containers.as_deref()) {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) if is_vanished(&e) => continue,
                Err(e) => {
                    // One unreadable process (hidepid, a dying task) must not hide the others.
                    tracing::debug!(pid, error = %e, "skipping process that cannot be read");
                    continue;
                }
            };
            match protection.reason(&info) {
                Some(reason) => matches.protected.push((info, reason)),
                None => matches.eligible.push(info),
            }
        }
        matches.eligible.sort_by_key(|p| (p.start_time, p.pid));
        matches
            .protected
            .sort_by_key(|(p, _)| (p.start_time, p.pid));
        Ok(matches)
    }

    /// `Some(info)` when `pid` passes every filter and no exclude; cheap checks first.
    fn check(
        &self,
        pid: u32,
        named_by_pid: bool,
        containers: Option<&[Vec<Membership>]>,
    ) -> io::Result<Option<ProcInfo>> {
        let sel = &self.selector;
        let stat = read_stat(pid)?;
        if stat.state == 'Z' || (stat.is_kernel_thread() && !named_by_pid) {
            return Ok(None);
        }
        let exclude = sel.exclude.as_ref();
        if sel.name.as_ref().is_some_and(|name| *name != stat.comm)
            || exclude.is_some_and(|e| e.pids.contains(&pid) || e.name.as_ref() == Some(&stat.comm))
        {
            return Ok(None);
        }
        let info = if sel.uid.is_some() {
            complete(stat)?
        } else {
            complete_without_uid(stat)?
        };
        if self
            .cmdline
            .as_ref()
            .is_some_and(|re| !re.is_match(&info.cmdline))
            || self
                .exclude_cmdline
                .as_ref()
                .is_some_and(|re| re.is_match(&info.cmdline))
            || sel.uid.is_some_and(|uid| uid != info.uid)
        {
            return Ok(None);
        }
        if let Some(cgroup) = &sel.cgroup
            && !in_cgroup(pid, cgroup)?
        {
            return Ok(None);
        }
        if let Some(containers) = containers
            && !in_any_container(pid, containers)?
        {
            return Ok(None);
        }
        Ok(Some(info))
    }

    /// The containers `container` means now, as their runtime describes them (none when the
    /// selector names no container). Asked at each resolution: a container can be recreated
    /// under its name between two.
    pub fn containers(&self) -> Result<Vec<super::container::Container>, SelectError> {
        let Some(reference) = &self.selector.container else {
            return Ok(Vec::new());
        };
        super::container::find(reference, self.selector.runtime).map_err(|e| {
            SelectError::Container {
                message: e.to_string(),
                cause: e.cause(),
            }
        })
    }

    /// Resolve now: filters, excludes, protections (unless `force`), then `count`/`percent`.
    pub fn select(&self) -> Result<Selection, SelectError> {
        let sel = &self.selector;
        let Matches {
            mut eligible,
            protected,
            containers,
        } = self.matches()?;
        let mut refused = Vec::new();
        for (info, reason) in protected {
            if sel.force {
                eligible.push(info);
            } else {
                refused.push((info.pid, reason));
            }
        }
        eligible.sort_by_key(|p| (p.start_time, p.pid));
        let matched = eligible.len();
        if sel.random {
            // Shuffling the sorted list keeps a seeded pick repeatable for the same processes.
            match sel.seed {
                Some(seed) => eligible.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed)),
                None => eligible.shuffle(&mut rand::rngs::StdRng::from_os_rng()),
            }
        }
        eligible.truncate(pick_count(matched, sel.count, sel.percent));
        // A picked process that exits now is still reported (its fault will find it gone).
        for info in eligible.iter_mut().filter(|p| p.uid == UID_UNREAD) {
            if let Ok(uid) = read_real_uid(info.pid) {
                info.uid = uid;
            }
        }
        Ok(Selection {
            picked: eligible,
            matched,
            refused,
            containers,
        })
    }
}

/// How many of `matched` to pick: `count`, or `percent` rounded up (at least one when any
/// matched); the smaller of the two when both are given.
pub fn pick_count(matched: usize, count: Option<u32>, percent: Option<u32>) -> usize {
    let mut n = matched;
    if let Some(count) = count {
        n = n.min(count as usize);
    }
    if let Some(percent) = percent {
        let share = (matched * percent as usize).div_ceil(100);
        n = n.min(share.max(usize::from(matched > 0)));
    }
    n
}

/// A pidfile holds one number: a regular file, read without blocking, a few bytes at most.
fn read_pidfile(path: &Path) -> Result<u32, SelectError> {
    let text = super::file::read_regular(path, 64, "pidfile")
        .map_err(|e| SelectError::Invalid(format!("pidfile: {e}")))?;
    text.trim().parse().map_err(|_| {
        SelectError::Invalid(format!(
            "pidfile {} does not hold a PID: {:?}",
            path.display(),
            text.chars().take(64).collect::<String>()
        ))
    })
}

/// faultline's own helper processes (the run's watchdog), protected like faultline itself:
/// a broad selector (`cgroup`, `uid`, a `cmdline` matching `faultline`) must not stop the
/// process that would revert the run after a crash.
static HELPERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Protect one of faultline's helper processes from selection.
pub fn protect_helper(pid: u32) {
    HELPERS.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// PID 1, faultline itself, its helpers and its ancestors: never touched without `force`.
struct Protection {
    myself: u32,
    helpers: Vec<u32>,
    /// Ancestor PID → its name.
    ancestors: HashMap<u32, String>,
}

impl Protection {
    fn now() -> Protection {
        let mut ancestors = HashMap::new();
        let mut pid = std::os::unix::process::parent_id();
        // Bounded: a PID chain cannot be longer than the PID space, but /proc could be odd.
        for _ in 0..4096 {
            if pid <= 1 {
                break;
            }
            let Ok(stat) = read_stat(pid) else { break };
            ancestors.insert(pid, stat.comm);
            pid = stat.ppid;
        }
        Protection {
            myself: std::process::id(),
            helpers: HELPERS.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ancestors,
        }
    }

    fn reason(&self, info: &ProcInfo) -> Option<String> {
        if info.pid == 1 {
            Some("pid 1 (init)".into())
        } else if info.pid == self.myself {
            Some("faultline itself".into())
        } else if self.helpers.contains(&info.pid) {
            Some("faultline's watchdog".into())
        } else {
            self.ancestors
                .get(&info.pid)
                .map(|name| format!("ancestor of faultline ({name})"))
        }
    }
}

/// Resolve `selector` against the processes running now. Never signals anything.
pub fn select(selector: impl Into<Selector>) -> Result<Selection, SelectError> {
    CompiledSelector::new(selector)?.select()
}

/// Real child processes for tests, killed by PID and reaped on drop.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{ProcRef, Selector, read_cmdline, read_stat};

    pub struct TestChild {
        child: Child,
        reaped: Option<ExitStatus>,
        /// Keeps the symlink that gives the child its name alive while it runs.
        _dir: Option<tempfile::TempDir>,
    }

    impl TestChild {
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn proc_ref(&self) -> ProcRef {
            ProcRef {
                pid: self.pid(),
                start_time: super::start_time(self.pid()).expect("child is alive"),
            }
        }

        pub fn state(&self) -> char {
            super::read_stat(self.pid())
                .expect("child has a /proc entry")
                .state
        }

        /// Wait (at most 5 s) for the child to exit and return the signal that ended it.
        pub fn reap_signal(&mut self) -> Option<i32> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    self.reaped = Some(status);
                    return status.signal();
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            panic!("child {} did not exit within 5 s", self.pid());
        }

        /// Block in wait(2) and return the signal that ended the child (for latency timing).
        pub fn reap_blocking_signal(&mut self) -> Option<i32> {
            let status = self.child.wait().expect("wait");
            self.reaped = Some(status);
            status.signal()
        }

        /// Kill and reap now, so the PID is really gone.
        pub fn kill_and_reap(&mut self) {
            if self.reaped.is_none() {
                let _ = self.child.kill();
                self.reaped = Some(self.child.wait().expect("wait"));
            }
        }
    }

    impl Drop for TestChild {
        fn drop(&mut self) {
            // `Child::kill` is kill(2) on this child's own PID; SIGKILL also ends stopped ones.
            self.kill_and_reap();
        }
    }

    fn spawn(mut command: Command, dir: Option<tempfile::TempDir>) -> TestChild {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn test child");
        // `spawn` returns once exec has closed the close-on-exec pipe, which the kernel does
        // before it sets up the new program's arguments: until then /proc/PID/cmdline reads
        // empty. Wait (bounded) for them, so a test never races the exec.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let exec_pending = |pid| {
            read_cmdline(pid).is_ok_and(|c| c.is_empty())
                && read_stat(pid).is_ok_and(|s| s.state != 'Z' && s.state != 'X')
        };
        while exec_pending(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        TestChild {
            child,
            reaped: None,
            _dir: dir,
        }
    }

    /// A unique token per call, so parallel tests never see each other's children.
    pub fn unique(tag: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("fl{tag}{}{n}", std::process::id() % 100_000)
    }

    /// `sleep 30.<digits>`: a distinctive cmdline.
    pub fn sleep_with_arg(arg: &str) -> TestChild {
        let mut command = Command::new("sleep");
        command.arg(arg);
        spawn(command, None)
    }

    /// A `sleep 30` whose comm is `name` (exec'd through a symlink called `name`).
    pub fn sleep_named(name: &str) -> TestChild {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/usr/bin/sleep", &link).expect("symlink sleep");
        let mut command = Command::new(&link);
        command.arg("30");
        spawn(command, Some(dir))
    }

    /// A child that exits at once and is left unreaped: a zombie until dropped.
    pub fn zombie() -> TestChild {
        let child = spawn(Command::new("true"), None);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while child.state() != 'Z' {
            assert!(
                std::time::Instant::now() < deadline,
                "child never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child
    }

    pub fn by_name(name: &str) -> Selector {
        Selector {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    pub fn by_cmdline(pattern: &str) -> Selector {
        Selector {
            cmdline: Some(pattern.into()),
            ..Default::default()
        }
    }

    pub fn pids(selection: &super::Selection) -> Vec<u32> {
        selection.picked.iter().map(|p| p.pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::testing::*;
    use super::*;

    #[test]
    fn stat_line_with_parentheses_and_spaces_in_comm_parses_at_last_paren() {
        let fields_after_comm: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let line = format!("4242 (a) (b x) S {}", fields_after_comm[1..].join(" "));
        let stat = parse_stat(&line).expect("parses");
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "a) (b x");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 4);
        assert_eq!(stat.flags, 9);
        assert_eq!(stat.start_time, 22);
        assert_eq!(parse_stat("12 (truncated"), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn own_stat_parses_with_real_values() {
        let stat = read_stat(std::process::id()).expect("read own stat");
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(!stat.is_kernel_thread());
        assert!(stat.start_time > 0);
    }

    #[test]
    fn cgroup_lines_match_the_path_and_below_but_not_siblings() {
        assert!(cgroup_line_matches(
            "0::/system.slice/nginx.service",
            "/system.slice"
        ));
        assert!(cgroup_line_matches("4:memory:/a/b", "/a/b"));
        assert!(cgroup_line_matches("4:memory:/a/b", "/a/b/"));
        assert!(cgroup_line_matches("9:name=systemd:/x", "/"));
        assert!(!cgroup_line_matches("0::/ab", "/a"));
        assert!(!cgroup_line_matches("0::/a", "/a/b"));
        assert!(!cgroup_line_matches("garbage", "/"));
    }

    #[test]
    fn a_container_holds_the_processes_at_or_below_its_cgroup_in_the_same_hierarchy() {
        // cgroup v1 on a hybrid host, as Docker's cgroupfs driver lays it out: the unified
        // line and the named systemd hierarchy are not the container's to match by.
        let main = "12:cpu,cpuacct:/docker/4f1c\n4:memory:/docker/4f1c\n\
                    1:name=systemd:/docker/4f1c\n0::/system.slice/containerd.service\n";
        let v1 = container_memberships(main);
        let kept: Vec<(u32, &str)> = v1
            .iter()
            .map(|m| (m.hierarchy_id, m.path.as_str()))
            .collect();
        assert_eq!(kept, [(12, "/docker/4f1c"), (4, "/docker/4f1c")]);
        assert!(in_container_cgroups(main, std::slice::from_ref(&v1)));
        // containerd (and every other container) shares the unified line: not in it.
        let containerd = "12:cpu,cpuacct:/\n4:memory:/\n1:name=systemd:/system.slice/containerd.service\n\
                          0::/system.slice/containerd.service\n";
        assert!(!in_container_cgroups(containerd, std::slice::from_ref(&v1)));
        // One hierarchy of the container's is not enough: every one must match.
        assert!(!in_container_cgroups(
            "12:cpu,cpuacct:/docker/4f1c\n4:memory:/\n",
            std::slice::from_ref(&v1)
        ));
        // A sibling container, a prefix that is not a parent: not in it.
        assert!(!in_container_cgroups(
            "12:cpu,cpuacct:/docker/9e2a\n4:memory:/docker/9e2a\n",
            std::slice::from_ref(&v1)
        ));
        assert!(!in_container_cgroups(
            "12:cpu,cpuacct:/docker/4f1cd\n4:memory:/docker/4f1cd\n",
            std::slice::from_ref(&v1)
        ));
        // cgroup v2, a process in a sub-cgroup of the container's scope (a cpu-limit's).
        let v2 = container_memberships("0::/system.slice/docker-4f1c.scope\n");
        assert!(in_container_cgroups(
            "0::/system.slice/docker-4f1c.scope/faultline-x\n",
            std::slice::from_ref(&v2)
        ));
        assert!(!in_container_cgroups(
            "0::/system.slice/ssh.service\n",
            &[v1, v2]
        ));
        // No container running: nothing is in one.
        assert!(!in_container_cgroups("0::/x\n", &[]));
    }
    #[test]
    fn pick_count_rounds_percent_up_and_takes_at_least_one() {
        assert_eq!(pick_count(5, None, None), 5);
        assert_eq!(pick_count(5, Some(2), None), 2);
        assert_eq!(pick_count(5, Some(9), None), 5);
        assert_eq!(pick_count(5, None, Some(50)), 3);
        assert_eq!(pick_count(5, None, Some(1)), 1);
        assert_eq!(pick_count(5, None, Some(100)), 5);
        assert_eq!(pick_count(0, None, Some(50)), 0);
        assert_eq!(pick_count(10, Some(2), Some(50)), 2);
    }

    #[test]
    fn selects_by_exact_name_only() {
        let name = unique("nm");
        let child = sleep_named(&name);
        let _other = sleep_named(&format!("{name}x"));
        let selection = select(by_name(&name)).expect("select");
        assert_eq!(pids(&selection), vec![child.pid()]);
        assert_eq!(selection.matched, 1);
        let info = &selection.picked[0];
        assert_eq!(info.name, name);
        assert!(info.cmdline.ends_with(&format!("{name} 30")));
        assert_eq!(info.ppid, std::process::id());
    }

    #[test]
    fn selects_by_cmdline_regex_over_joined_arguments() {
        let arg = format!("30.{}", std::process::id());
        let child = sleep_with_arg(&arg);
        let selection =
            select(by_cmdline(&format!(r"^sleep {}$", regex::escape(&arg)))).expect("select");
        assert_eq!(pids(&selection), vec![child.pid()]);
        assert_eq!(selection.picked[0].cmdline, format!("sleep {arg}"));
    }

    /// Arguments past the first read's 4 KiB, and exactly at its end, are read whole.
    #[test]
    fn a_command_line_longer_than_one_read_is_read_whole() {
        for length in [4096 - "sleep ".len() - 1, 10_000] {
            let arg = format!("30.{:0>width$}", std::process::id(), width = length - 3);
            let child = sleep_with_arg(&arg);
            let cmdline = read_cmdline(child.pid()).expect("readable");
            assert_eq!(cmdline.len(), "sleep ".len() + arg.len());
            assert_eq!(cmdline, format!("sleep {arg}"));
        }
    }

    #[test]
    fn selects_by_pidfile_and_rejects_missing_or_garbled_files() {
        let child = sleep_with_arg("30");
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("app.pid");
        std::fs::write(&pidfile, format!("{}\n", child.pid())).expect("write pidfile");
        let selector = Selector {
            pidfile: Some(pidfile.display().to_string()),
            ..Default::default()
        };
        assert_eq!(pids(&select(&selector).expect("select")), vec![child.pid()]);

        std::fs::write(&pidfile, "not-a-pid\n").expect("write pidfile");
        let error = select(&selector).expect_err("garbled pidfile").to_string();
        assert!(
            error.contains(&pidfile.display().to_string()) && error.contains("not-a-pid"),
            "{error}"
        );

        let missing = Selector {
            pidfile: Some(dir.path().join("missing.pid").display().to_string()),
            ..Default::default()
        };
        let error = select(&missing).expect_err("missing pidfile").to_string();
        assert!(error.contains("missing.pid"), "{error}");
    }

    #[test]
    fn selects_by_uid() {
        let name = unique("uid");
        let child = sleep_named(&name);
        let our_uid = rustix::process::getuid().as_raw();
        let mut selector = by_name(&name);
        selector.uid = Some(our_uid);
        let selection = select(&selector).expect("select");
        assert_eq!(pids(&selection), vec![child.pid()]);
        assert_eq!(selection.picked[0].uid, our_uid);
        selector.uid = Some(our_uid + 1);
        assert!(select(&selector).expect("select").picked.is_empty());
    }

    #[test]
    fn selects_by_cgroup_path_from_the_childs_own_cgroup_file() {
        let name = unique("cg");
        let child = sleep_named(&name);
        let cgroup_file =
            std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid())).expect("read cgroup");
        let deepest = cgroup_file
            .lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .max_by_key(|path| path.len())
            .expect("a cgroup line")
            .to_string();
        let mut selector = by_name(&name);
        selector.cgroup = Some(deepest.clone());
        assert_eq!(
            pids(&select(&selector).expect("select")),
            vec![child.pid()],
            "cgroup {deepest}"
        );
        selector.cgroup = Some(format!("{deepest}/not-here-{name}"));
        assert!(select(&selector).expect("select").picked.is_empty());
    }

    #[test]
    fn excludes_remove_matches_by_pid_name_and_cmdline() {
        let arg = format!("30.{}1", std::process::id());
        let first = sleep_with_arg(&arg);
        let second = sleep_with_arg(&format!("{arg}2"));
        let third = sleep_with_arg(&format!("{arg}3"));
        let base = by_cmdline(&format!("^sleep {}", regex::escape(&arg)));
        assert_eq!(select(&base).expect("select").matched, 3);

        let with_exclude = |exclude: Exclude| Selector {
            exclude: Some(exclude),
            ..base.clone()
        };
        let by_pid = with_exclude(Exclude {
            pids: vec![first.pid()],
            ..Default::default()
        });
        assert_eq!(
            pids(&select(&by_pid).expect("select")),
            vec![second.pid(), third.pid()]
        );
        let by_cmdline = with_exclude(Exclude {
            cmdline: Some(format!("{}3$", regex::escape(&arg))),
            ..Default::default()
        });
        assert_eq!(
            pids(&select(&by_cmdline).expect("select")),
            vec![first.pid(), second.pid()]
        );
        let by_name = with_exclude(Exclude {
            name: Some("sleep".into()),
            ..Default::default()
        });
        let selection = select(&by_name).expect("select");
        assert!(selection.picked.is_empty());
        assert_eq!(selection.matched, 0);
    }

    fn five_children(tag: &str) -> (Vec<TestChild>, Selector) {
        let name = unique(tag);
        let children: Vec<TestChild> = (0..5).map(|_| sleep_named(&name)).collect();
        (children, by_name(&name))
    }

    #[test]
    fn count_and_percent_pick_oldest_first() {
        let (children, selector) = five_children("cnt");
        let spawned: Vec<u32> = children.iter().map(TestChild::pid).collect();
        let count = Selector {
            count: Some(2),
            ..selector.clone()
        };
        let selection = select(&count).expect("select");
        assert_eq!(pids(&selection), spawned[..2].to_vec());
        assert_eq!(selection.matched, 5);
        let percent = Selector {
            percent: Some(50),
            ..selector.clone()
        };
        assert_eq!(
            pids(&select(&percent).expect("select")),
            spawned[..3].to_vec()
        );
        let tiny = Selector {
            percent: Some(1),
            ..selector
        };
        assert_eq!(pids(&select(&tiny).expect("select")), spawned[..1].to_vec());
    }

    #[test]
    fn seeded_random_picks_are_repeatable() {
        let (children, selector) = five_children("rnd");
        let seeded = |seed| Selector {
            count: Some(2),
            random: true,
            seed: Some(seed),
            ..selector.clone()
        };
        let first = pids(&select(seeded(7)).expect("select"));
        assert_eq!(first.len(), 2);
        for _ in 0..5 {
            assert_eq!(pids(&select(seeded(7)).expect("select")), first);
        }
        // Over 20 seeds a shuffle of five must produce more than one pick.
        let distinct: std::collections::HashSet<Vec<u32>> = (0..20)
            .map(|seed| pids(&select(seeded(seed)).expect("select")))
            .collect();
        assert!(distinct.len() > 1);
        let unseeded = Selector {
            seed: None,
            ..seeded(0)
        };
        let picked = pids(&select(&unseeded).expect("select"));
        assert_eq!(picked.len(), 2);
        assert!(
            picked
                .iter()
                .all(|pid| children.iter().any(|c| c.pid() == *pid))
        );
    }

    fn by_pid(pid: u32, force: bool) -> Selector {
        Selector {
            pid: Some(pid),
            force,
            ..Default::default()
        }
    }

    // Selection only: nothing here is ever signalled.
    #[test]
    fn init_self_and_ancestors_are_refused_unless_forced() {
        let parent = std::os::unix::process::parent_id();
        let parent_name = read_stat(parent).expect("parent stat").comm;
        let cases = [
            (1, "pid 1 (init)".to_string()),
            (std::process::id(), "faultline itself".to_string()),
            (parent, format!("ancestor of faultline ({parent_name})")),
        ];
        for (pid, reason) in cases {
            let refused = select(by_pid(pid, false)).expect("select");
            assert!(refused.picked.is_empty(), "pid {pid} picked without force");
            assert_eq!(refused.refused, vec![(pid, reason)]);
            assert_eq!(refused.matched, 0);
            let forced = select(by_pid(pid, true)).expect("select");
            assert_eq!(pids(&forced), vec![pid]);
            assert!(forced.refused.is_empty());
        }
    }

    #[test]
    fn the_runs_watchdog_is_refused_unless_forced() {
        let watchdog = testing::sleep_with_arg("300.919191");
        protect_helper(watchdog.pid());
        let refused = select(by_pid(watchdog.pid(), false)).expect("select");
        assert!(refused.picked.is_empty());
        assert_eq!(
            refused.refused,
            vec![(watchdog.pid(), "faultline's watchdog".to_string())]
        );
        let forced = select(by_pid(watchdog.pid(), true)).expect("select");
        assert_eq!(pids(&forced), vec![watchdog.pid()]);
    }

    #[test]
    fn zombies_are_never_picked() {
        let zombie = zombie();
        let selection = select(by_pid(zombie.pid(), true)).expect("select");
        assert!(selection.picked.is_empty());
        assert_eq!(selection.matched, 0);
    }

    #[test]
    fn kernel_threads_only_when_named_by_pid() {
        let kthreadd = read_stat(2).expect("pid 2 is kthreadd");
        assert!(kthreadd.is_kernel_thread());
        assert!(
            select(by_name(&kthreadd.comm))
                .expect("select")
                .picked
                .is_empty()
        );
        assert_eq!(pids(&select(by_pid(2, false)).expect("select")), vec![2]);
    }

    #[test]
    fn wait_for_state_sees_a_stop_and_a_gone_process() {
        let mut child = sleep_with_arg("30");
        let target = child.proc_ref();
        assert_eq!(
            wait_for_state(target, |s| s == 'S', Duration::from_secs(1)),
            WaitOutcome::Reached('S')
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.pid() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stop child");
        assert_eq!(
            wait_for_state(target, |s| s == 'T', Duration::from_secs(1)),
            WaitOutcome::Reached('T')
        );
        let started = Instant::now();
        assert_eq!(
            wait_for_state(target, |s| s == 'R', Duration::from_millis(50)),
            WaitOutcome::TimedOut('T')
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        child.kill_and_reap();
        assert_eq!(
            wait_for_state(target, |_| true, Duration::from_secs(1)),
            WaitOutcome::Gone
        );
    }

    /// `cargo test --lib sys::proc::tests::measure -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, prints timings"]
    fn measure_select_over_all_of_proc() {
        let everything = Selector::default();
        let mut times: Vec<Duration> = (0..20)
            .map(|_| {
                let started = Instant::now();
                let selection = select(&everything).expect("select");
                assert!(selection.matched > 0);
                started.elapsed()
            })
            .collect();
        times.sort();
        let processes = list_pids().expect("list").len();
        println!(
            "select over /proc ({processes} pids): p50 {:?}, min {:?}, max {:?}",
            times[10], times[0], times[19]
        );
    }
}
