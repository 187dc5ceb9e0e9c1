//! cgroup v1 and v2, detected at run time: where a controller lives, which cgroup a process is
//! in, creating and removing cgroups, moving processes, and the limit and statistics files of
//! the `cpu` and `io`/`blkio` controllers.
//!
//! Our own module rather than a cgroup crate: faultline needs a dozen small files, must treat
//! "the process exited" and "already removed" as success so that reverts are idempotent, and
//! must cope with the hybrid layout (v1 controllers next to a v2 tree without them) that
//! production hosts rarely have but older ones and this test machine do.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where the v1 hierarchies and the v2 tree are mounted on an ordinary host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {action} {}: {source}{}", path.display(), root_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

fn root_hint(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::PermissionDenied {
        "; run faultline as root"
    } else {
        ""
    }
}

impl CgroupError {
    pub fn cause(&self) -> super::Cause {
        use super::Cause;
        match self {
            CgroupError::Unsupported(_) => Cause::Unsupported,
            _ if self.is_gone() => Cause::Gone,
            CgroupError::Io { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(libc::EPERM) =>
            {
                Cause::Permission
            }
            CgroupError::Io { .. } => Cause::Failed,
        }
    }

    /// True when the kernel said "no such process" or "no such file": the thing to undo is
    /// already gone.
    pub fn is_gone(&self) -> bool {
        match self {
            CgroupError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ESRCH)
            }
            CgroupError::Unsupported(_) => false,
        }
    }

    /// True when the kernel said EBUSY: on v2, a controller a child cgroup still hands on
    /// cannot be taken from its parent, and a cgroup that hands on controllers cannot take
    /// processes.
    pub fn is_busy(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// A controller faultline limits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    Cpu,
    Io,
}

impl Controller {
    pub fn v2_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Io => "io",
        }
    }

    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Io => "blkio",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    V1,
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    pub version: Version,
    /// Where it is mounted (`/sys/fs/cgroup/cpu`, `/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// The cgroup shown at `mount` (mountinfo's root field): `/` unless a subtree is
    /// bind-mounted, as in some containers.
    pub root: String,
    /// v1: the controllers bound to it (`cpu`, `cpuacct`, `name=systemd`); v2: the
    /// controllers its root offers (`cgroup.controllers`).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The directory of the cgroup whose path (as in `/proc/PID/cgroup`) is `cgroup`.
    pub fn dir_of(&self, cgroup: &str) -> Result<PathBuf, CgroupError> {
        let root = self.root.trim_end_matches('/');
        let relative = if root.is_empty() {
            Some(cgroup)
        } else if cgroup == root {
            Some("")
        } else {
            cgroup
                .strip_prefix(root)
                .filter(|rest| rest.starts_with('/'))
        };
        let relative = relative.filter(|r| !r.split('/').any(|part| part == ".."));
        match relative {
            Some(relative) => Ok(self.mount.join(relative.trim_start_matches('/'))),
            None => Err(CgroupError::Unsupported(format!(
                "cgroup {cgroup} is outside the part of the hierarchy mounted at {} (mount root {})",
                self.mount.display(),
                self.root
            ))),
        }
    }

    /// The directory of the cgroup `pid` is in, in this hierarchy.
    pub fn dir_of_process(&self, pid: u32) -> Result<PathBuf, CgroupError> {
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
        let memberships = parse_proc_cgroup(&text);
        let found = memberships.iter().find(|m| match self.version {
            Version::V2 => m.hierarchy_id == 0 && m.controllers.is_empty(),
            Version::V1 => m.hierarchy_id != 0 && m.controllers.iter().any(|c| self.has(c)),
        });
        match found {
            Some(membership) => self.dir_of(&membership.path),
            None => Err(CgroupError::Unsupported(format!(
                "pid {pid} has no line for the hierarchy at {} in /proc/{pid}/cgroup",
                self.mount.display()
            ))),
        }
    }

    /// True when `dir` is this hierarchy's top (no parent to enable controllers in).
    pub fn is_top(&self, dir: &Path) -> bool {
        dir == self.mount
    }
}

/// How the host arranges its cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Only the v2 tree (most current distributions).
    Unified,
    /// v1 controller hierarchies next to a v2 tree.
    Hybrid,
    /// Only v1 hierarchies.
    Legacy,
    /// No cgroup file system mounted.
    Missing,
}

/// Every cgroup hierarchy mounted, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    pub v2: Option<Hierarchy>,
    pub v1: Vec<Hierarchy>,
}

impl Mounts {
    /// Read the mounts and, for v2, the controllers its root offers.
    pub fn detect() -> Result<Mounts, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
        let mut mounts = Mounts::default();
        for hierarchy in parse_mountinfo(&text) {
            match hierarchy.version {
                Version::V1 => mounts.v1.push(hierarchy),
                // Several v2 mounts show the same tree; the canonical place wins.
                Version::V2 => {
                    let canonical = hierarchy.mount == Path::new(CGROUP_ROOT);
                    if mounts.v2.is_none() || canonical {
                        mounts.v2 = Some(hierarchy);
                    }
                }
            }
        }
        if let Some(v2) = &mut mounts.v2 {
            v2.controllers = read_words(&v2.mount.join("cgroup.controllers"))?;
        }
        Ok(mounts)
    }

    pub fn layout(&self) -> Layout {
        match (&self.v2, self.v1.is_empty()) {
            (Some(_), true) => Layout::Unified,
            (Some(_), false) => Layout::Hybrid,
            (None, false) => Layout::Legacy,
            (None, true) => Layout::Missing,
        }
    }

    /// The hierarchy that holds `controller`: v2 when its root offers it, the v1 hierarchy it
    /// is bound to otherwise.
    pub fn find(&self, controller: Controller) -> Result<&Hierarchy, CgroupError> {
        if let Some(v2) = self.v2.as_ref().filter(|h| h.has(controller.v2_name())) {
            return Ok(v2);
        }
        if let Some(v1) = self.v1.iter().find(|h| h.has(controller.v1_name())) {
            return Ok(v1);
        }
        Err(CgroupError::Unsupported(format!(
            "no cgroup hierarchy offers the {} controller (layout {:?}; v2 offers [{}]); mount the v1 `{}` hierarchy or boot with it on cgroup v2",
            controller.v2_name(),
            self.layout(),
            self.v2
                .as_ref()
                .map(|h| h.controllers.join(" "))
                .unwrap_or_default(),
            controller.v1_name(),
        )))
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space) in a path field.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount options of a v1 cgroup mount that are not controllers.
const V1_FLAGS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "favordynmods",
];

/// The cgroup hierarchies in a mountinfo text. v2 hierarchies come with no controllers (they
/// are read from the tree itself).
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((mount_part, fs_part)) = line.split_once(" - ") else {
            continue;
        };
        let mount_fields: Vec<&str> = mount_part.split(' ').collect();
        let fs_fields: Vec<&str> = fs_part.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fs_type)) =
            (mount_fields.get(3), mount_fields.get(4), fs_fields.first())
        else {
            continue;
        };
        let version = match *fs_type {
            "cgroup2" => Version::V2,
            "cgroup" => Version::V1,
            _ => continue,
        };
        let controllers = match version {
            Version::V2 => Vec::new(),
            Version::V1 => fs_fields
                .get(2)
                .map(|options| {
                    options
                        .split(',')
                        .filter(|o| {
                            !V1_FLAGS.contains(o) && (!o.contains('=') || o.starts_with("name="))
                        })
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        };
        found.push(Hierarchy {
            version,
            mount: PathBuf::from(unescape_mount_field(mount_point)),
            root: unescape_mount_field(root),
            controllers,
        });
    }
    found
}

/// One line of `/proc/PID/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// 0 for the v2 tree.
    pub hierarchy_id: u32,
    /// Empty for the v2 tree.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parse `/proc/PID/cgroup`: `4:memory:/a/b` (v1), `1:cpu,cpuacct:/`, `0::/user.slice` (v2).
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                hierarchy_id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

fn read_words(path: &Path) -> Result<Vec<String>, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    Ok(text.split_ascii_whitespace().map(str::to_string).collect())
}

/// Write `content` in one write(2): cgroup files act on each write separately.
fn write_file(path: &Path, content: &str) -> Result<(), CgroupError> {
    std::fs::write(path, content).map_err(io_error("write", path))
}

/// Create a cgroup; one that exists already is fine (a retried apply).
pub fn create(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(io_error("create cgroup", dir)(e))
        }
        _ => Ok(()),
    }
}

/// Move a whole process (every thread) into the cgroup at `dir`.
pub fn move_process(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    write_file(&dir.join("cgroup.procs"), &format!("{pid}\n"))
}

/// The processes in the cgroup at `dir` (not its descendants).
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Controllers the v2 cgroup at `dir` can hand to its children (`cgroup.controllers`).
pub fn available_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    read_words(&dir.join("cgroup.controllers"))
}

/// Controllers the v2 cgroup at `dir` hands to its children (`cgroup.subtree_control`).
pub fn subtree_control(dir: &Path) -> Result<Vec<String>, CgroupError> {
    read_words(&dir.join("cgroup.subtree_control"))
}

/// `+name` or `-name` in `cgroup.subtree_control`.
pub fn set_subtree_control(dir: &Path, controller: &str, enabled: bool) -> Result<(), CgroupError> {
    let sign = if enabled { '+' } else { '-' };
    write_file(
        &dir.join("cgroup.subtree_control"),
        &format!("{sign}{controller}"),
    )
}

/// Whether a v2 `cgroup.subtree_control` lists `controller`.
pub fn hands_on(dir: &Path, controller: &str) -> Result<bool, CgroupError> {
    Ok(subtree_control(dir)?.iter().any(|c| c == controller))
}

/// The extended attribute on a v2 cgroup whose `cgroup.subtree_control` faultline enabled
/// `controller` in, holding the ids of the limits that rely on that enable. A limit that finds
/// the controller enabled with holders listed shares the enable; the last holder to leave
/// takes the controller away. An enable without the attribute belongs to someone else and is
/// never touched. cgroupfs keeps `user.*` attributes in memory (Linux 5.7+): they go with the
/// cgroup, and survive a crash of faultline.
fn holders_name(controller: &str) -> String {
    format!("user.faultline.enabled.{controller}")
}

/// The limits holding faultline's enable of `controller` in `dir` (empty: none, or not
/// faultline's); `None` when this kernel keeps no attributes on cgroups.
pub fn enable_holders(dir: &Path, controller: &str) -> Option<Vec<String>> {
    let mut value = [0u8; 1024];
    match rustix::fs::getxattr(dir, holders_name(controller).as_str(), &mut value[..]) {
        Ok(len) => Some(
            String::from_utf8_lossy(&value[..len])
                .split_ascii_whitespace()
                .map(str::to_string)
                .collect(),
        ),
        Err(rustix::io::Errno::OPNOTSUPP) => None,
        Err(_) => Some(Vec::new()),
    }
}

/// Write the holders of faultline's enable of `controller` in `dir`; none removes the
/// attribute.
pub fn set_enable_holders(
    dir: &Path,
    controller: &str,
    holders: &[String],
) -> Result<(), CgroupError> {
    let name = holders_name(controller);
    let done = if holders.is_empty() {
        match rustix::fs::removexattr(dir, name.as_str()) {
            Err(rustix::io::Errno::NODATA) => Ok(()),
            other => other,
        }
    } else {
        rustix::fs::setxattr(
            dir,
            name.as_str(),
            holders.join(" ").as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
    };
    done.map_err(|e| io_error("record faultline's enable on", dir)(e.into()))
}

/// Children of `dir` that are faultline limit groups (`faultline-*`).
pub fn faultline_children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("faultline-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Remove an empty cgroup. A process just moved out may still be counted for a moment
/// (EBUSY), so this retries until `patience` runs out. An absent cgroup is fine.
pub fn remove(dir: &Path, patience: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + patience;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_error("remove cgroup", dir)(e)),
        }
    }
}

/// The v2 `cpu.max` line: `QUOTA PERIOD`, or `max PERIOD` for no limit.
pub fn cpu_max_line(quota_us: Option<u64>, period_us: u64) -> String {
    match quota_us {
        Some(quota) => format!("{quota} {period_us}"),
        None => format!("max {period_us}"),
    }
}

/// Limit the cgroup at `dir` to `quota_us` of CPU time per `period_us`.
pub fn set_cpu_limit(
    hierarchy: &Hierarchy,
    dir: &Path,
    quota_us: u64,
    period_us: u64,
) -> Result<(), CgroupError> {
    match hierarchy.version {
        Version::V2 => write_file(
            &dir.join("cpu.max"),
            &cpu_max_line(Some(quota_us), period_us),
        ),
        Version::V1 => {
            // The period first: the kernel checks the quota against the period in force.
            write_file(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
            write_file(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())
        }
    }
}

/// Lift a CPU quota (`max` / `-1`). Done before the processes leave a throttled group, so
/// none of them stays parked until the group's next period refill.
pub fn clear_cpu_limit(
    hierarchy: &Hierarchy,
    dir: &Path,
    period_us: u64,
) -> Result<(), CgroupError> {
    match hierarchy.version {
        Version::V2 => write_file(&dir.join("cpu.max"), &cpu_max_line(None, period_us)),
        Version::V1 => write_file(&dir.join("cpu.cfs_quota_us"), "-1"),
    }
}

/// A block device number, `MAJ:MIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DeviceNumber {
    fn parse(text: &str) -> Option<DeviceNumber> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DeviceNumber {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// The block device whose queue throttles I/O to the file system holding `path`: the
/// file system's device, or the whole disk when that device is a partition (the kernel
/// refuses throttle rules on partitions with ENODEV).
pub fn throttle_device_for(path: &Path) -> Result<DeviceNumber, CgroupError> {
    let meta = std::fs::metadata(path).map_err(io_error("stat", path))?;
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    let device = DeviceNumber {
        major: rustix::fs::major(dev),
        minor: rustix::fs::minor(dev),
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{device}"));
    if device.major == 0 || !sys.exists() {
        return Err(CgroupError::Unsupported(format!(
            "{} is on device {device}, which is not a block device (tmpfs, overlay, btrfs subvolume or NFS?); I/O limits need a file system on a block device",
            path.display()
        )));
    }
    if !sys.join("partition").exists() {
        return Ok(device);
    }
    let disk = std::fs::canonicalize(&sys)
        .map_err(io_error("resolve", &sys))?
        .parent()
        .map(|p| p.join("dev"))
        .ok_or_else(|| {
            CgroupError::Unsupported(format!("partition {device} has no parent disk"))
        })?;
    let text = std::fs::read_to_string(&disk).map_err(io_error("read", &disk))?;
    DeviceNumber::parse(&text)
        .ok_or_else(|| CgroupError::Unsupported(format!("unexpected {}: {text:?}", disk.display())))
}

/// Per-device I/O limits; `None` leaves that direction unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// The v2 `io.max` line: `MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..` with `max` for none.
pub fn io_max_line(device: DeviceNumber, limits: &IoLimits) -> String {
    let value = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |v| v.to_string());
    format!(
        "{device} rbps={} wbps={} riops={} wiops={}",
        value(limits.read_bps),
        value(limits.write_bps),
        value(limits.read_iops),
        value(limits.write_iops)
    )
}

/// Throttle I/O of the cgroup at `dir` to `device`.
pub fn set_io_limit(
    hierarchy: &Hierarchy,
    dir: &Path,
    device: DeviceNumber,
    limits: &IoLimits,
) -> Result<(), CgroupError> {
    match hierarchy.version {
        Version::V2 => write_file(&dir.join("io.max"), &io_max_line(device, limits)),
        Version::V1 => {
            let files = [
                ("blkio.throttle.read_bps_device", limits.read_bps),
                ("blkio.throttle.write_bps_device", limits.write_bps),
                ("blkio.throttle.read_iops_device", limits.read_iops),
                ("blkio.throttle.write_iops_device", limits.write_iops),
            ];
            for (file, limit) in files {
                if let Some(limit) = limit {
                    write_file(&dir.join(file), &format!("{device} {limit}"))?;
                }
            }
            Ok(())
        }
    }
}

/// `key value` lines (`cpu.stat`, `cpuacct.stat`) as a map.
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// CPU counters of one cgroup since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuCounters {
    /// CPU time used by its tasks; `None` when the hierarchy does not count it (v1 `cpu`
    /// without `cpuacct`).
    pub usage_usec: Option<u64>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// Read the CPU counters of the cgroup at `dir`.
pub fn cpu_counters(hierarchy: &Hierarchy, dir: &Path) -> Result<CpuCounters, CgroupError> {
    let path = dir.join("cpu.stat");
    let stat = parse_flat_keyed(&std::fs::read_to_string(&path).map_err(io_error("read", &path))?);
    let get = |key: &str| stat.get(key).copied().unwrap_or(0);
    Ok(match hierarchy.version {
        Version::V2 => CpuCounters {
            usage_usec: stat.get("usage_usec").copied(),
            nr_periods: get("nr_periods"),
            nr_throttled: get("nr_throttled"),
            throttled_usec: get("throttled_usec"),
        },
        Version::V1 => {
            let usage_usec = if hierarchy.has("cpuacct") {
                let path = dir.join("cpuacct.usage");
                let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
                text.trim().parse::<u64>().ok().map(|ns| ns / 1000)
            } else {
                None
            };
            CpuCounters {
                usage_usec,
                nr_periods: get("nr_periods"),
                nr_throttled: get("nr_throttled"),
                throttled_usec: get("throttled_time") / 1000,
            }
        }
    })
}

/// I/O a cgroup did to one device since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
}

/// The counters of `device` in a v2 `io.stat` (`8:0 rbytes=.. wbytes=.. rios=.. wios=..`).
pub fn parse_io_stat(text: &str, device: DeviceNumber) -> IoCounters {
    let mut counters = IoCounters::default();
    let wanted = device.to_string();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some(wanted.as_str()) {
            continue;
        }
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = value.parse().unwrap_or(0);
            match key {
                "rbytes" => counters.read_bytes = value,
                "wbytes" => counters.write_bytes = value,
                "rios" => counters.read_ios = value,
                "wios" => counters.write_ios = value,
                _ => {}
            }
        }
    }
    counters
}

/// `(read, write)` of `device` in a v1 `blkio.throttle.io_service_bytes` or `io_serviced`
/// (`8:0 Read 4096`, `8:0 Write 0`, ..., `Total 4096`).
pub fn parse_blkio_counts(text: &str, device: DeviceNumber) -> (u64, u64) {
    let wanted = device.to_string();
    let (mut read, mut write) = (0, 0);
    for line in text.lines() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if let [dev, op, value] = words[..] {
            if dev != wanted {
                continue;
            }
            let value = value.parse().unwrap_or(0);
            match op {
                "Read" => read = value,
                "Write" => write = value,
                _ => {}
            }
        }
    }
    (read, write)
}

/// Read the I/O counters of `device` in the cgroup at `dir`.
pub fn io_counters(
    hierarchy: &Hierarchy,
    dir: &Path,
    device: DeviceNumber,
) -> Result<IoCounters, CgroupError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(io_error("read", &path))
    };
    Ok(match hierarchy.version {
        Version::V2 => parse_io_stat(&read("io.stat")?, device),
        Version::V1 => {
            let (read_bytes, write_bytes) =
                parse_blkio_counts(&read("blkio.throttle.io_service_bytes")?, device);
            let (read_ios, write_ios) =
                parse_blkio_counts(&read("blkio.throttle.io_serviced")?, device);
            IoCounters {
                read_bytes,
                write_bytes,
                read_ios,
                write_ios,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 /docker/abc /mnt/my\\040cg rw - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mountinfo_finds_v1_controllers_and_v2_trees() {
        let found = parse_mountinfo(HYBRID);
        let summary: Vec<(Version, &str, &str, Vec<&str>)> = found
            .iter()
            .map(|h| {
                (
                    h.version,
                    h.mount.to_str().unwrap(),
                    h.root.as_str(),
                    h.controllers.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Version::V1, "/sys/fs/cgroup/cpu", "/", vec!["cpu"]),
                (
                    Version::V1,
                    "/sys/fs/cgroup/cpu,cpuacct",
                    "/",
                    vec!["cpu", "cpuacct"]
                ),
                (Version::V1, "/sys/fs/cgroup/blkio", "/", vec!["blkio"]),
                (
                    Version::V1,
                    "/sys/fs/cgroup/systemd",
                    "/",
                    vec!["name=systemd"]
                ),
                (Version::V2, "/sys/fs/cgroup/unified", "/", vec![]),
                (Version::V2, "/mnt/my cg", "/docker/abc", vec![]),
            ]
        );
    }

    #[test]
    fn proc_cgroup_lines_for_v1_and_v2() {
        let text = "12:cpu,cpuacct:/batch\n4:memory:/process_api/b7\n1:name=systemd:/\n0::/user.slice/a b.scope\n";
        let parsed = parse_proc_cgroup(text);
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[0].hierarchy_id, 12);
        assert_eq!(parsed[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(parsed[0].path, "/batch");
        assert_eq!(parsed[2].controllers, vec!["name=systemd"]);
        assert_eq!(parsed[3].hierarchy_id, 0);
        assert!(parsed[3].controllers.is_empty());
        assert_eq!(parsed[3].path, "/user.slice/a b.scope");
    }

    #[test]
    fn cgroup_paths_map_into_the_mount() {
        let hierarchy = |root: &str| Hierarchy {
            version: Version::V2,
            mount: PathBuf::from("/sys/fs/cgroup"),
            root: root.into(),
            controllers: vec![],
        };
        let top = hierarchy("/");
        assert_eq!(top.dir_of("/").unwrap(), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            top.dir_of("/system.slice/x.service").unwrap(),
            PathBuf::from("/sys/fs/cgroup/system.slice/x.service")
        );
        let bound = hierarchy("/docker/abc");
        assert_eq!(
            bound.dir_of("/docker/abc").unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            bound.dir_of("/docker/abc/app").unwrap(),
            PathBuf::from("/sys/fs/cgroup/app")
        );
        assert!(bound.dir_of("/docker/abcd").is_err());
        assert!(top.dir_of("/../outside").is_err());
    }

    #[test]
    fn v2_limit_lines() {
        assert_eq!(cpu_max_line(Some(30_000), 100_000), "30000 100000");
        assert_eq!(cpu_max_line(None, 100_000), "max 100000");
        let device = DeviceNumber {
            major: 254,
            minor: 0,
        };
        let limits = IoLimits {
            write_bps: Some(20 << 20),
            read_iops: Some(500),
            ..IoLimits::default()
        };
        assert_eq!(
            io_max_line(device, &limits),
            "254:0 rbps=max wbps=20971520 riops=500 wiops=max"
        );
    }

    #[test]
    fn v2_stat_files() {
        let cpu = parse_flat_keyed(
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 7\nthrottled_usec 900\n",
        );
        assert_eq!(cpu["usage_usec"], 1500);
        assert_eq!(cpu["nr_throttled"], 7);
        let io = "7:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n";
        assert_eq!(
            parse_io_stat(
                io,
                DeviceNumber {
                    major: 254,
                    minor: 0
                }
            ),
            IoCounters {
                read_bytes: 1,
                write_bytes: 2,
                read_ios: 3,
                write_ios: 4
            }
        );
        assert_eq!(
            parse_io_stat(io, DeviceNumber { major: 8, minor: 0 }),
            IoCounters::default()
        );
    }

    #[test]
    fn v1_blkio_counts() {
        let text = "7:0 Read 4096\n7:0 Write 1048576\n7:0 Sync 0\n7:0 Total 1052672\n254:0 Write 5\nTotal 1052677\n";
        assert_eq!(
            parse_blkio_counts(text, DeviceNumber { major: 7, minor: 0 }),
            (4096, 1_048_576)
        );
    }

    #[test]
    fn this_host_has_a_cpu_and_an_io_hierarchy() {
        let mounts = Mounts::detect().expect("read mountinfo");
        assert_ne!(mounts.layout(), Layout::Missing);
        for controller in [Controller::Cpu, Controller::Io] {
            let hierarchy = mounts.find(controller).expect("controller mounted");
            let own = hierarchy
                .dir_of_process(std::process::id())
                .expect("own cgroup");
            assert!(own.join("cgroup.procs").exists(), "{}", own.display());
        }
    }

    #[test]
    fn the_root_file_system_throttles_on_a_whole_disk() {
        let device = throttle_device_for(Path::new("/")).expect("root device");
        let sys = PathBuf::from(format!("/sys/dev/block/{device}"));
        assert!(sys.exists());
        assert!(!sys.join("partition").exists());
        assert!(throttle_device_for(Path::new("/proc")).is_err());
    }

    /// The v2 tree on this host offers no cpu or io, but moving processes in and out works
    /// the same way whatever the controllers.
    #[test]
    fn a_process_moves_into_a_v2_cgroup_and_back() {
        let mounts = Mounts::detect().expect("read mountinfo");
        let v2 = mounts.v2.expect("a v2 tree is mounted");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let before = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let origin = v2.dir_of_process(pid).expect("origin");
        let dir = origin.join(format!("faultline-test-{}", std::process::id()));
        create(&dir).expect("create");
        create(&dir).expect("create again is fine");
        move_process(&dir, pid).expect("move in");
        assert_eq!(v2.dir_of_process(pid).expect("now"), dir);
        assert_eq!(procs(&dir).expect("procs"), vec![pid]);
        assert!(matches!(
            std::fs::remove_dir(&dir).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EBUSY))
        ));
        move_process(&origin, pid).expect("move back");
        remove(&dir, Duration::from_secs(2)).expect("remove");
        remove(&dir, Duration::from_secs(2)).expect("remove again is fine");
        let after = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        assert_eq!(before, after);
        let _ = child.kill();
        let _ = child.wait();
        let gone = move_process(&origin, pid).expect_err("a reaped pid cannot move");
        assert!(gone.is_gone(), "{gone}");
    }
}
