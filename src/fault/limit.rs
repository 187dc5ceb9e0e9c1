//! `cpu-limit` and `disk-io-limit`: throttle a target's processes by moving them into a cgroup
//! of faultline's own, then move each one back to exactly where it was.
//!
//! The faultline cgroup is a child of the cgroup each process came from, in the `cpu` (or
//! `io`/`blkio`) hierarchy only. Being a child keeps every limit the process already had in
//! force (v1 and v2 limits are hierarchical), so the fault can only tighten; on cgroup v2,
//! where all controllers share one tree, it also keeps the process inside its memory cgroup.
//! Processes that came from different cgroups get one faultline cgroup each, each with the
//! full limit. The new cgroup's counters start at zero, so what they read at revert is what
//! the fault achieved.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Applied, Backend, BuildContext, Fault, FaultAction, FaultError, KindPlan, ModuleKind, Prepared,
    ProcRef, RevertRecipe, Reverted,
};
use crate::experiment::model::{FaultDef, FaultKind};
use crate::experiment::params::ParamChecks;
use crate::experiment::{Diagnostic, Sp};
use crate::sys::cgroup::{
    self, CgroupError, Controller, DeviceNumber, Hierarchy, IoLimits, Version,
};
use crate::sys::proc::{self, CompiledSelector, ProcInfo};

/// The CFS period when the experiment names none.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);
/// The kernel's bounds on a CFS period and its smallest quota.
const MIN_PERIOD: Duration = Duration::from_millis(1);
const MAX_PERIOD: Duration = Duration::from_secs(1);
const MIN_QUOTA_US: u64 = 1000;
/// How long revert waits for a cgroup just emptied to be removable.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// `cpu-limit`: the target may use `percent` of one CPU (150 = one and a half) per `period`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuLimitParams {
    pub percent: f64,
    pub period: Duration,
}

impl CpuLimitParams {
    /// The quota and period in microseconds, or why the kernel would refuse them.
    pub fn quota(&self) -> Result<(u64, u64), String> {
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&self.period) {
            return Err(format!(
                "period {:?} is outside the kernel's 1ms..1s",
                self.period
            ));
        }
        let period_us = self.period.as_micros() as u64;
        if !self.percent.is_finite() || self.percent <= 0.0 {
            return Err(format!(
                "percent must be above 0 (got {}); 100 is one whole CPU",
                self.percent
            ));
        }
        let quota_us = (self.percent / 100.0 * period_us as f64).round() as u64;
        if quota_us < MIN_QUOTA_US {
            return Err(format!(
                "{}% of a {:?} period is {quota_us}µs, below the kernel's 1ms minimum quota; raise the percent or the period",
                self.percent, self.period
            ));
        }
        Ok((quota_us, period_us))
    }
}

/// `disk-io-limit`: throttle the target's I/O to the block device holding `path`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IoLimitParams {
    pub path: PathBuf,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl IoLimitParams {
    pub fn limits(&self) -> Result<IoLimits, String> {
        let limits = IoLimits {
            read_bps: self.read_bps,
            write_bps: self.write_bps,
            read_iops: self.read_iops,
            write_iops: self.write_iops,
        };
        let all = [
            limits.read_bps,
            limits.write_bps,
            limits.read_iops,
            limits.write_iops,
        ];
        if all.iter().all(Option::is_none) {
            return Err("give at least one of read_bps, write_bps, read_iops, write_iops".into());
        }
        // v1 reads 0 as "remove the rule", v2 refuses it: neither means "block all I/O".
        if all.contains(&Some(0)) {
            return Err("an I/O limit must be above 0".into());
        }
        Ok(limits)
    }
}

/// The limit written into each faultline cgroup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resource", rename_all = "snake_case")]
pub enum LimitSetting {
    Cpu {
        quota_us: u64,
        period_us: u64,
    },
    Io {
        device: DeviceNumber,
        limits: IoLimits,
    },
}

impl LimitSetting {
    fn controller(&self) -> Controller {
        match self {
            LimitSetting::Cpu { .. } => Controller::Cpu,
            LimitSetting::Io { .. } => Controller::Io,
        }
    }

    fn describe(&self) -> String {
        match self {
            LimitSetting::Cpu {
                quota_us,
                period_us,
            } => format!(
                "CPU limit {:.1}% ({quota_us}µs per {period_us}µs)",
                *quota_us as f64 * 100.0 / *period_us as f64
            ),
            LimitSetting::Io { device, limits } => {
                let mut parts = Vec::new();
                let named = [
                    ("read", limits.read_bps, "B/s"),
                    ("write", limits.write_bps, "B/s"),
                    ("read", limits.read_iops, "IOPS"),
                    ("write", limits.write_iops, "IOPS"),
                ];
                for (what, value, unit) in named {
                    if let Some(value) = value {
                        parts.push(format!("{what} {value} {unit}"));
                    }
                }
                format!("I/O limit on {device}: {}", parts.join(", "))
            }
        }
    }
}

/// A cgroup faultline creates, as a child of the cgroup its processes came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitGroup {
    pub dir: PathBuf,
    pub origin: PathBuf,
}

/// A process faultline moves, and the cgroup (in the limited hierarchy) it goes back to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MovedProcess {
    pub process: ProcRef,
    pub name: String,
    pub origin: PathBuf,
    pub group: PathBuf,
}

/// A controller faultline enables in a v2 `cgroup.subtree_control`, and takes away again on
/// revert once nothing below it uses it any more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtreeChange {
    pub dir: PathBuf,
    pub controller: String,
    /// Already enabled by another faultline limit when this one was planned (the cgroup
    /// lists faultline's holders of the enable): the two share it, and the one reverted last
    /// disables it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// Everything needed to undo a cpu-limit or disk-io-limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitRecipe {
    /// In the cgroup names.
    pub id: String,
    pub setting: LimitSetting,
    pub hierarchy: Hierarchy,
    pub groups: Vec<LimitGroup>,
    pub processes: Vec<MovedProcess>,
    /// In the order applied (top of the tree first).
    pub enabled: Vec<SubtreeChange>,
}

/// What apply saw, for revert's figures: when the limit started and each moved process's
/// CPU ticks then. A crash loses it; revert then reports counters without rates.
#[derive(Debug)]
pub struct Baseline {
    applied_at: Instant,
    cpu_ticks: HashMap<u32, u64>,
}

/// utime + stime of a whole process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..]
        .split_ascii_whitespace()
        .collect();
    // Fields 14 and 15; field N sits at index N - 3 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn failed(error: CgroupError) -> FaultError {
    FaultError::from(error)
}

/// `cpu-limit` against one process target.
pub struct CpuLimitFault {
    params: CpuLimitParams,
    target: Target,
}

/// `disk-io-limit` against one process target.
pub struct IoLimitFault {
    params: IoLimitParams,
    target: Target,
}

struct Target {
    name: String,
    selector: CompiledSelector,
}

impl CpuLimitFault {
    pub fn new(params: CpuLimitParams, target_name: &str, selector: CompiledSelector) -> Self {
        CpuLimitFault {
            params,
            target: Target {
                name: target_name.into(),
                selector,
            },
        }
    }

    /// Decide the cgroups, the moves and the limit; touches nothing.
    pub fn prepare_recipe(&self) -> Result<(String, LimitRecipe, serde_json::Value), FaultError> {
        let (quota_us, period_us) = self.params.quota().map_err(FaultError::Unsupported)?;
        self.target.plan(LimitSetting::Cpu {
            quota_us,
            period_us,
        })
    }

    pub fn apply_recipe(&self, recipe: &LimitRecipe) -> Result<Applied, FaultError> {
        apply(recipe)
    }
}

impl IoLimitFault {
    pub fn new(params: IoLimitParams, target_name: &str, selector: CompiledSelector) -> Self {
        IoLimitFault {
            params,
            target: Target {
                name: target_name.into(),
                selector,
            },
        }
    }

    /// Decide the device, the cgroups, the moves and the limit; touches nothing.
    pub fn prepare_recipe(&self) -> Result<(String, LimitRecipe, serde_json::Value), FaultError> {
        let limits = self.params.limits().map_err(FaultError::Unsupported)?;
        let device = cgroup::throttle_device_for(&self.params.path).map_err(failed)?;
        self.target.plan(LimitSetting::Io { device, limits })
    }

    pub fn apply_recipe(&self, recipe: &LimitRecipe) -> Result<Applied, FaultError> {
        apply(recipe)
    }
}

impl Target {
    fn pick(&self) -> Result<Vec<ProcInfo>, FaultError> {
        let selection = self
            .selector
            .select()
            .map_err(|e| FaultError::unresolved(String::new(), &e))?;
        if selection.picked.is_empty() {
            let refused: Vec<String> = selection
                .refused
                .iter()
                .map(|(pid, reason)| format!("pid {pid}: {reason}"))
                .collect();
            let mut message = format!("target `{}`: {} matched", self.name, selection.matched);
            if !refused.is_empty() {
                message.push_str(&format!(
                    ", refused {}; set `force: true` on the target to allow them",
                    refused.join(", ")
                ));
            }
            return Err(FaultError::NoTarget(message));
        }
        Ok(selection.picked)
    }

    fn plan(
        &self,
        setting: LimitSetting,
    ) -> Result<(String, LimitRecipe, serde_json::Value), FaultError> {
        let controller = setting.controller();
        let hierarchy = crate::host::HostCaps::get()
            .cgroup(controller)
            .map_err(FaultError::Unsupported)?
            .clone();
        let picked = self.pick()?;
        let id = format!("{:08x}", rand::random::<u32>());
        let mut groups: Vec<LimitGroup> = Vec::new();
        let mut processes = Vec::new();
        for info in &picked {
            let origin = match hierarchy.dir_of_process(info.pid) {
                Ok(origin) => origin,
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(failed(e)),
            };
            let group = origin.join(format!("faultline-{id}"));
            if !groups.iter().any(|g| g.dir == group) {
                groups.push(LimitGroup {
                    dir: group.clone(),
                    origin: origin.clone(),
                });
            }
            processes.push(MovedProcess {
                process: info.proc_ref(),
                name: info.name.clone(),
                origin,
                group,
            });
        }
        if processes.is_empty() {
            return Err(FaultError::NoTarget(format!(
                "target `{}`: every picked process exited",
                self.name
            )));
        }
        let enabled = match hierarchy.version {
            Version::V1 => Vec::new(),
            Version::V2 => v2_subtree_changes(&hierarchy, controller, &groups, &processes)?,
        };
        let recipe = LimitRecipe {
            id,
            setting,
            hierarchy,
            groups,
            processes,
            enabled,
        };
        let labels: Vec<String> = recipe
            .processes
            .iter()
            .map(|p| format!("pid {} ({})", p.process.pid, p.name))
            .collect();
        // A limit applies per cgroup: processes from N cgroups may use up to N times it.
        let each = match recipe.groups.len() {
            1 => String::new(),
            n => format!(" in each of {n} cgroups"),
        };
        let summary = format!(
            "{}{each} for {} in {}",
            recipe.setting.describe(),
            labels.join(", "),
            recipe
                .groups
                .iter()
                .map(|g| g.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let details = serde_json::to_value(&recipe).unwrap_or_default();
        Ok((summary, recipe, details))
    }
}

/// On v2 a child only gets a controller its parent lists in `cgroup.subtree_control`, and a
/// non-root cgroup that lists any may hold no processes of its own. So every cgroup from the
/// top down to each origin must enable the controller, and each origin must hold nothing but
/// the processes faultline moves out of it.
fn v2_subtree_changes(
    hierarchy: &Hierarchy,
    controller: Controller,
    groups: &[LimitGroup],
    processes: &[MovedProcess],
) -> Result<Vec<SubtreeChange>, FaultError> {
    let name = controller.v2_name();
    let moved: HashSet<u32> = processes.iter().map(|p| p.process.pid).collect();
    let mut changes: Vec<SubtreeChange> = Vec::new();
    for group in groups {
        let relative = group.origin.strip_prefix(&hierarchy.mount).map_err(|_| {
            FaultError::Failed(format!(
                "{} is outside {}",
                group.origin.display(),
                hierarchy.mount.display()
            ))
        })?;
        let mut chain = vec![hierarchy.mount.clone()];
        for part in relative.components() {
            let next = chain[chain.len() - 1].join(part);
            chain.push(next);
        }
        for dir in chain {
            if changes.iter().any(|c| c.dir == dir) {
                continue;
            }
            if cgroup::hands_on(&dir, name).map_err(failed)? {
                // Someone else's enable is theirs; faultline's own (with holders) is shared.
                if cgroup::enable_holders(&dir, name).is_some_and(|h| !h.is_empty()) {
                    changes.push(SubtreeChange {
                        dir,
                        controller: name.to_string(),
                        shared: true,
                    });
                }
                continue;
            }
            if !hierarchy.is_top(&dir) {
                let others: Vec<u32> = cgroup::procs(&dir)
                    .map_err(failed)?
                    .into_iter()
                    .filter(|pid| !moved.contains(pid))
                    .collect();
                if !others.is_empty() {
                    return Err(FaultError::Unsupported(format!(
                        "cgroup v2 can limit {name} only for a whole cgroup: {} also holds pid {}; select every process in it (`cgroup:` target) or enable {name} for it beforehand",
                        dir.display(),
                        others
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            changes.push(SubtreeChange {
                dir,
                controller: name.to_string(),
                shared: false,
            });
        }
    }
    Ok(changes)
}

fn set_limit(recipe: &LimitRecipe, dir: &Path) -> Result<(), CgroupError> {
    match &recipe.setting {
        LimitSetting::Cpu {
            quota_us,
            period_us,
        } => cgroup::set_cpu_limit(&recipe.hierarchy, dir, *quota_us, *period_us),
        LimitSetting::Io { device, limits } => {
            cgroup::set_io_limit(&recipe.hierarchy, dir, *device, limits)
        }
    }
}

/// Create the cgroups, move the processes in, limit. On error the engine runs [`revert`].
fn apply(recipe: &LimitRecipe) -> Result<Applied, FaultError> {
    for group in &recipe.groups {
        cgroup::create(&group.dir).map_err(failed)?;
    }
    // When nothing must be enabled first (always on v1), limit before moving anything, so no
    // process runs unlimited in the new cgroup and a refused limit moves nobody.
    let limit_first = recipe.enabled.is_empty();
    if limit_first {
        for group in &recipe.groups {
            set_limit(recipe, &group.dir).map_err(failed)?;
        }
    }
    let mut cpu_ticks_then = HashMap::new();
    let mut moved = Vec::new();
    let mut gone = Vec::new();
    for process in &recipe.processes {
        let same = proc::start_time(process.process.pid).ok() == Some(process.process.start_time);
        if !same {
            gone.push(process.process.pid);
            continue;
        }
        match cgroup::move_process(&process.group, process.process.pid) {
            Ok(()) => {
                moved.push(process.process.pid);
                if let Some(ticks) = cpu_ticks(process.process.pid) {
                    cpu_ticks_then.insert(process.process.pid, ticks);
                }
            }
            Err(e) if e.is_gone() => gone.push(process.process.pid),
            Err(e) => return Err(failed(e)),
        }
    }
    let baseline = Baseline {
        applied_at: Instant::now(),
        cpu_ticks: cpu_ticks_then,
    };
    {
        let _changing = subtree_lock();
        for change in &recipe.enabled {
            // Holder first, enable second: a crash in between leaves a holder whose revert
            // finds nothing to disable. A kernel that keeps no attributes on cgroups (before
            // 5.7) has no holders: the enable is this limit's own, undone by its revert.
            if let Some(mut holders) = cgroup::enable_holders(&change.dir, &change.controller) {
                if !holders.contains(&recipe.id) {
                    holders.push(recipe.id.clone());
                }
                cgroup::set_enable_holders(&change.dir, &change.controller, &holders)
                    .map_err(failed)?;
            }
            cgroup::set_subtree_control(&change.dir, &change.controller, true).map_err(failed)?;
        }
    }
    if !limit_first {
        for group in &recipe.groups {
            set_limit(recipe, &group.dir).map_err(failed)?;
        }
    }
    if moved.is_empty() {
        return Err(FaultError::NoTarget(format!(
            "every target process exited before it could be limited (pids {gone:?})"
        )));
    }
    Ok(Applied {
        summary: format!(
            "{} for pid {}",
            recipe.setting.describe(),
            moved
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        details: serde_json::json!({
            "moved": moved,
            "gone_before_move": gone,
            "cgroups": recipe.groups.iter().map(|g| &g.dir).collect::<Vec<_>>(),
            "hierarchy": recipe.hierarchy.mount,
            "subtree_control_enabled": recipe.enabled,
        }),
        live: Some(super::LiveHandle::Limit(baseline)),
    })
}

/// What the limited cgroups did while the fault was live; `elapsed` is `None` after a crash.
fn achieved(recipe: &LimitRecipe, baseline: Option<&Baseline>) -> serde_json::Value {
    let elapsed = baseline.map(|b| b.applied_at.elapsed().as_secs_f64());
    let live: Vec<&LimitGroup> = recipe.groups.iter().filter(|g| g.dir.exists()).collect();
    match &recipe.setting {
        LimitSetting::Cpu {
            quota_us,
            period_us,
        } => {
            let mut usage_usec = Some(0);
            let (mut periods, mut throttled, mut throttled_usec) = (0, 0, 0);
            for group in &live {
                let Ok(counters) = cgroup::cpu_counters(&recipe.hierarchy, &group.dir) else {
                    continue;
                };
                usage_usec = usage_usec.zip(counters.usage_usec).map(|(a, b)| a + b);
                periods += counters.nr_periods;
                throttled += counters.nr_throttled;
                throttled_usec += counters.throttled_usec;
            }
            // v1 `cpu` without `cpuacct` counts no usage: sum the processes' own ticks since
            // apply (processes that exited meanwhile are missed).
            let mut source = "cgroup";
            if usage_usec.is_none()
                && let Some(baseline) = baseline
            {
                source = "process ticks";
                let per_tick = 1_000_000 / ticks_per_second();
                let ticks: u64 = live
                    .iter()
                    .filter_map(|g| cgroup::procs(&g.dir).ok())
                    .flatten()
                    .filter_map(|pid| {
                        let now = cpu_ticks(pid)?;
                        Some(now.saturating_sub(*baseline.cpu_ticks.get(&pid).unwrap_or(&0)))
                    })
                    .sum();
                usage_usec = Some(ticks * per_tick);
            }
            let achieved_percent = usage_usec
                .zip(elapsed)
                .filter(|(_, secs)| *secs > 0.0)
                .map(|(usec, secs)| usec as f64 / 1e4 / secs / live.len().max(1) as f64);
            serde_json::json!({
                "requested_percent": *quota_us as f64 * 100.0 / *period_us as f64,
                "achieved_percent_per_cgroup": achieved_percent,
                "usage_usec": usage_usec,
                "usage_source": source,
                "window_seconds": elapsed,
                "nr_periods": periods,
                "nr_throttled": throttled,
                "throttled_usec": throttled_usec,
            })
        }
        LimitSetting::Io { device, limits } => {
            let mut total = cgroup::IoCounters::default();
            for group in &live {
                if let Ok(c) = cgroup::io_counters(&recipe.hierarchy, &group.dir, *device) {
                    total.read_bytes += c.read_bytes;
                    total.write_bytes += c.write_bytes;
                    total.read_ios += c.read_ios;
                    total.write_ios += c.write_ios;
                }
            }
            let rate = |n: u64| {
                elapsed
                    .filter(|s| *s > 0.0)
                    .map(|s| n as f64 / s / live.len().max(1) as f64)
            };
            serde_json::json!({
                "requested": limits,
                "device": device.to_string(),
                "achieved_per_cgroup": {
                    "read_bps": rate(total.read_bytes),
                    "write_bps": rate(total.write_bytes),
                    "read_iops": rate(total.read_ios),
                    "write_iops": rate(total.write_ios),
                },
                "totals": total,
                "window_seconds": elapsed,
            })
        }
    }
}

/// Undo a limit: lift it, take the controller away from every cgroup faultline handed it to
/// (bottom up, once nothing below uses it), move each process that is still the same process
/// and still in faultline's cgroup back to its own cgroup, move any process born in
/// faultline's cgroup to that cgroup's parent (where its parent came from), remove the
/// cgroups. Every step runs even when one fails. Idempotent; works after a crash.
///
/// The order is v2's: a quota can only be lifted while the controller is enabled, and a
/// process can only go back into a cgroup that hands no controller on to children.
pub fn revert(recipe: &LimitRecipe, baseline: Option<Baseline>) -> Result<Reverted, FaultError> {
    let details = achieved(recipe, baseline.as_ref());
    let mut failures = Vec::new();
    // A process that leaves while its group is throttled can stay parked until the group's
    // next refill; lift the quota first so it runs at full speed the moment it is back.
    if let LimitSetting::Cpu { period_us, .. } = &recipe.setting {
        for group in recipe.groups.iter().filter(|g| g.dir.exists()) {
            match cgroup::clear_cpu_limit(&recipe.hierarchy, &group.dir, *period_us) {
                Err(e) if !e.is_gone() => failures.push(e.to_string()),
                _ => {}
            }
        }
    }
    let any_group_left = recipe.groups.iter().any(|g| g.dir.exists());
    let mut still_used = Vec::new();
    {
        let _changing = subtree_lock();
        for change in recipe.enabled.iter().rev() {
            match disable_if_last(recipe, change, any_group_left) {
                Ok(Disabled::Done) => {}
                Ok(Disabled::UsedBelow) => {
                    still_used.push(format!("{} in {}", change.controller, change.dir.display()))
                }
                Err(e) => failures.push(e),
            }
        }
    }
    let mut restored = 0;
    for moved in &recipe.processes {
        let pid = moved.process.pid;
        if proc::start_time(pid).ok() != Some(moved.process.start_time) {
            continue;
        }
        // Someone (or a previous revert) may have moved it already: leave it where it is.
        match recipe.hierarchy.dir_of_process(pid) {
            Ok(now) if now == moved.group => {}
            _ => continue,
        }
        match cgroup::move_process(&moved.origin, pid) {
            Ok(()) => restored += 1,
            Err(e) if e.is_gone() && moved.origin.exists() => {}
            Err(e) => failures.push(format!("pid {pid} back to {}: {e}", moved.origin.display())),
        }
    }
    let mut adopted = 0;
    for group in &recipe.groups {
        for pid in cgroup::procs(&group.dir).unwrap_or_default() {
            match cgroup::move_process(&group.origin, pid) {
                Ok(()) => adopted += 1,
                Err(e) if e.is_gone() => {}
                Err(e) => failures.push(format!("pid {pid} to {}: {e}", group.origin.display())),
            }
        }
        if let Err(e) = cgroup::remove(&group.dir, REMOVE_PATIENCE) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        return Err(FaultError::Failed(format!(
            "{} not fully reverted: {}",
            recipe.setting.describe(),
            failures.join("; ")
        )));
    }
    let mut summary = format!(
        "removed {}; {restored} process(es) back in their cgroups",
        recipe.setting.describe()
    );
    if adopted > 0 {
        summary.push_str(&format!(
            ", {adopted} born under the limit moved to the parent cgroup"
        ));
    }
    if !still_used.is_empty() {
        summary.push_str(&format!(
            "; left enabled while cgroups below still use it: {}",
            still_used.join(", ")
        ));
    }
    Ok(Reverted { summary, details })
}

/// Subtree changes (holders, enables, disables) run one at a time in this process, so two
/// limits never read and write one cgroup's holders over each other.
static SUBTREE_LOCK: Mutex<()> = Mutex::new(());

fn subtree_lock() -> std::sync::MutexGuard<'static, ()> {
    SUBTREE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

enum Disabled {
    /// Taken away, or not this limit's to take (someone else's, shared and still held, or
    /// undone by an earlier revert).
    Done,
    /// Left enabled: a cgroup below that faultline did not make still hands it on.
    UsedBelow,
}

/// Take `change`'s controller away again if this limit is the last faultline limit relying
/// on it.
fn disable_if_last(
    recipe: &LimitRecipe,
    change: &SubtreeChange,
    any_group_left: bool,
) -> Result<Disabled, String> {
    let (dir, controller) = (&change.dir, change.controller.as_str());
    match cgroup::enable_holders(dir, controller) {
        Some(mut holders) => {
            if !holders.contains(&recipe.id) {
                return Ok(Disabled::Done);
            }
            holders.retain(|h| h != &recipe.id);
            let mut outcome = Disabled::Done;
            if holders.is_empty() {
                match cgroup::set_subtree_control(dir, controller, false) {
                    Ok(()) => {}
                    Err(e) if e.is_gone() => {}
                    // Used below by someone else: it cannot be taken away, and waiting will
                    // not change that. Faultline's claim on it goes all the same.
                    Err(e) if e.is_busy() => outcome = Disabled::UsedBelow,
                    Err(e) => return Err(e.to_string()),
                }
            }
            match cgroup::set_enable_holders(dir, controller, &holders) {
                Err(e) if !e.is_gone() => Err(e.to_string()),
                _ => Ok(outcome),
            }
        }
        // No attributes on cgroups: the enable is this limit's alone until its groups are gone
        // (then an earlier revert disabled it, and it may be someone else's since). Another
        // faultline limit's group below means it is still in use: fail, and `recover` retries.
        None => {
            if !any_group_left {
                return Ok(Disabled::Done);
            }
            let ours: Vec<&Path> = recipe.groups.iter().map(|g| g.dir.as_path()).collect();
            if let Some(other) = cgroup::faultline_children(dir)
                .into_iter()
                .find(|c| !ours.contains(&c.as_path()))
            {
                return Err(format!(
                    "{controller} in {} is still used by another faultline limit ({}); `faultline recover` takes it away once that limit is reverted",
                    dir.display(),
                    other.display()
                ));
            }
            match cgroup::set_subtree_control(dir, controller, false) {
                Ok(()) => Ok(Disabled::Done),
                Err(e) if e.is_gone() => Ok(Disabled::Done),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// One line for `faultline status`.
pub fn describe(recipe: &LimitRecipe) -> String {
    let pids: Vec<String> = recipe
        .processes
        .iter()
        .map(|p| p.process.pid.to_string())
        .collect();
    let groups: Vec<String> = recipe
        .groups
        .iter()
        .map(|g| g.dir.display().to_string())
        .collect();
    let mut line = format!(
        "move pid {} back from {} and remove it ({})",
        pids.join(", "),
        groups.join(", "),
        recipe.setting.describe()
    );
    if !recipe.enabled.is_empty() {
        let dirs: Vec<String> = recipe
            .enabled
            .iter()
            .map(|c| {
                let shared = if c.shared {
                    " once no other limit holds it"
                } else {
                    ""
                };
                format!("-{} in {}{shared}", c.controller, c.dir.display())
            })
            .collect();
        line.push_str(&format!("; subtree_control {}", dirs.join(", ")));
    }
    line
}

// ---- the kinds: cpu-limit and disk-io-limit, which share the cgroup work above ----------

/// `cpu-limit`, as the list in [`super::MODULE_KINDS`] registers it.
pub const CPU_LIMIT: ModuleKind = ModuleKind {
    kind: FaultKind::CpuLimit,
    keys: &["quota"],
    compile: |fault, checks| compile_cpu(fault, checks).map(FaultAction::CpuLimit),
    backend: |facts| cgroup_backend(facts.host, Controller::Cpu),
};

/// `disk-io-limit`, as the list in [`super::MODULE_KINDS`] registers it.
pub const DISK_IO_LIMIT: ModuleKind = ModuleKind {
    kind: FaultKind::DiskIoLimit,
    keys: &[
        "path",
        "read_throughput",
        "write_throughput",
        "read_iops",
        "write_iops",
    ],
    compile: |fault, checks| compile_io(fault, checks).map(FaultAction::DiskIoLimit),
    backend: |facts| cgroup_backend(facts.host, Controller::Io),
};

fn cgroup_backend(host: &crate::host::HostCaps, controller: Controller) -> Backend {
    match host.cgroup(controller) {
        Ok(found) => Backend {
            name: Some("cgroup".into()),
            detail: format!("cgroup {:?} at {}", found.version, found.mount.display())
                .to_lowercase(),
        },
        Err(why) => Backend::unavailable(why),
    }
}

/// Check a cpu-limit's `params` and compile them; `None` after reporting what is wrong.
pub fn compile_cpu(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<CpuLimitParams> {
    checks.needs_duration(fault);
    let quota = checks.required(fault, "quota", &fault.params.quota, "50%")?;
    // Up to 1024 CPUs' worth; more is certainly a typo.
    let percent = checks.percent(quota, 102_400.0)?;
    Some(CpuLimitParams {
        percent,
        period: DEFAULT_PERIOD,
    })
}

/// Check a disk-io-limit's `params` and compile them; `None` after reporting what is wrong.
pub fn compile_io(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<IoLimitParams> {
    checks.needs_duration(fault);
    let p = &fault.params;
    let path = checks.required(fault, "path", &p.path, "/var/lib/app")?;
    let path = checks.directory(path);
    let read_bps = match &p.read_throughput {
        Some(t) => Some(checks.size(t, "`read_throughput`")?),
        None => None,
    };
    let write_bps = match &p.write_throughput {
        Some(t) => Some(checks.size(t, "`write_throughput`")?),
        None => None,
    };
    let (read_iops, write_iops) = (
        p.read_iops.as_ref().map(|v| v.value),
        p.write_iops.as_ref().map(|v| v.value),
    );
    if read_bps.is_none() && write_bps.is_none() && read_iops.is_none() && write_iops.is_none() {
        checks.report(
            Diagnostic::at(
                fault.kind.pos,
                format!("fault `{}` (disk-io-limit) sets no limit", fault.id.value),
                "no limit",
            )
            .with_hint(
                "add one of `read_throughput`, `write_throughput`, `read_iops`, `write_iops`",
            ),
        );
        return None;
    }
    Some(IoLimitParams {
        path,
        read_bps,
        write_bps,
        read_iops,
        write_iops,
    })
}

impl KindPlan for CpuLimitParams {
    fn summary(&self) -> String {
        format!("limit to {} CPU(s)", self.percent / 100.0)
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(CpuLimitFault::new(
            self.clone(),
            ctx.target_name,
            ctx.process.cloned().unwrap_or_default(),
        ))
    }
}

impl KindPlan for IoLimitParams {
    fn summary(&self) -> String {
        let mut caps = Vec::new();
        if let Some(b) = self.read_bps {
            caps.push(format!("read {}/s", crate::units::bytes(b)));
        }
        if let Some(b) = self.write_bps {
            caps.push(format!("write {}/s", crate::units::bytes(b)));
        }
        if let Some(n) = self.read_iops {
            caps.push(format!("read {n} IOPS"));
        }
        if let Some(n) = self.write_iops {
            caps.push(format!("write {n} IOPS"));
        }
        format!(
            "limit I/O on the device of {} to {}",
            self.path.display(),
            caps.join(", ")
        )
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(IoLimitFault::new(
            self.clone(),
            ctx.target_name,
            ctx.process.cloned().unwrap_or_default(),
        ))
    }
}

/// The limit's recipe, checked to be one: both kinds revert through [`revert`].
fn limit_recipe(prepared: &Prepared) -> Result<&LimitRecipe, FaultError> {
    match &prepared.revert {
        RevertRecipe::CgroupLimit(recipe) => Ok(recipe),
        _ => Err(FaultError::Failed("not a cgroup limit".into())),
    }
}

fn prepared((summary, recipe, details): (String, LimitRecipe, serde_json::Value)) -> Prepared {
    Prepared {
        summary,
        revert: RevertRecipe::CgroupLimit(recipe),
        details,
    }
}

impl Fault for CpuLimitFault {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        self.prepare_recipe().map(prepared)
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        self.apply_recipe(limit_recipe(prepared)?)
    }
}

impl Fault for IoLimitFault {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        self.prepare_recipe().map(prepared)
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        self.apply_recipe(limit_recipe(prepared)?)
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::sys::cgroup::Mounts;

    fn baseline(applied: Applied) -> Option<Baseline> {
        match applied.live {
            Some(crate::fault::LiveHandle::Limit(baseline)) => Some(baseline),
            other => panic!("apply returned no baseline: {other:?}"),
        }
    }

    /// A child process killed by PID and reaped on drop.
    struct Guarded(Child);

    impl Guarded {
        fn spawn(program: &str, args: &[&str]) -> Guarded {
            let child = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn test child");
            Guarded(child)
        }

        fn busy() -> Guarded {
            Guarded::spawn("python3", &["-c", "while True: pass"])
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }

        fn kill(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for Guarded {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// The rate tests measure a busy process and a fast writer: run beside other heavy
    /// tests on two cores they would measure each other.
    fn measuring() -> std::sync::MutexGuard<'static, ()> {
        crate::sys::heavy_tests::one_at_a_time()
    }

    fn by_pid(pid: u32) -> CompiledSelector {
        CompiledSelector::new(proc::Selector {
            pid: Some(pid),
            ..proc::Selector::default()
        })
        .expect("a valid selector")
    }

    fn cgroup_text(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup")
    }

    /// Percent of one CPU the process used over `window`, from its own utime + stime.
    fn measured_cpu_percent(pid: u32, window: Duration) -> f64 {
        let started = Instant::now();
        let before = cpu_ticks(pid).expect("ticks");
        std::thread::sleep(window);
        let used = cpu_ticks(pid).expect("ticks") - before;
        used as f64 * 100.0 / ticks_per_second() as f64 / started.elapsed().as_secs_f64()
    }

    /// Serialise and read back, as the state file and `recover` do.
    fn round_trip(recipe: &LimitRecipe) -> LimitRecipe {
        let json = serde_json::to_string(recipe).expect("serialise");
        let back: LimitRecipe = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(&back, recipe);
        back
    }

    fn line_for<'a>(text: &'a str, controller: &str) -> &'a str {
        text.lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or("")
    }

    #[test]
    fn cpu_limit_holds_a_busy_process_to_its_quota_and_puts_it_back() {
        let _serial = measuring();
        let busy = Guarded::busy();
        let pid = busy.pid();
        let _alone = alone_on_v2(Controller::Cpu, &[pid]);
        std::thread::sleep(Duration::from_millis(200));
        let before = cgroup_text(pid);
        let fault = CpuLimitFault::new(
            CpuLimitParams {
                percent: 30.0,
                period: DEFAULT_PERIOD,
            },
            "busy",
            by_pid(pid),
        );
        let (summary, recipe, _) = fault.prepare_recipe().expect("prepare");
        assert!(summary.contains("30.0%"), "{summary}");
        assert_eq!(cgroup_text(pid), before, "prepare touched nothing");
        assert_eq!(recipe.groups.len(), 1);
        let group = recipe.groups[0].dir.clone();
        assert!(!group.exists());
        let recipe = round_trip(&recipe);

        let applied = fault.apply_recipe(&recipe).expect("apply");
        let during = cgroup_text(pid);
        assert_eq!(
            recipe.hierarchy.dir_of_process(pid).expect("cgroup now"),
            group
        );
        // Only the limited hierarchy changed: memory and every other line stay.
        let changed: Vec<&str> = before
            .lines()
            .zip(during.lines())
            .filter(|(old, new)| old != new)
            .map(|(_, new)| new)
            .collect();
        let limited_line = match recipe.hierarchy.version {
            Version::V1 => line_for(&during, "cpu"),
            Version::V2 => during.lines().find(|l| l.starts_with("0::")).unwrap_or(""),
        };
        assert_eq!(changed, vec![limited_line], "{during}");
        assert_eq!(line_for(&before, "memory"), line_for(&during, "memory"));

        let limited = measured_cpu_percent(pid, Duration::from_secs(5));
        let reverted = revert(&recipe, baseline(applied)).expect("revert");
        println!(
            "limited to 30%: measured {limited:.1}%; faultline says {}",
            reverted.details
        );
        assert!(
            (25.0..=35.0).contains(&limited),
            "measured {limited:.1}% for a 30% quota"
        );
        let said = reverted.details["achieved_percent_per_cgroup"]
            .as_f64()
            .expect("achieved percent");
        assert!(
            (limited - said).abs() < 5.0,
            "faultline {said:.1}%, measured {limited:.1}%"
        );
        assert!(reverted.details["nr_throttled"].as_u64().unwrap_or(0) > 0);

        assert_eq!(cgroup_text(pid), before, "back in exactly its cgroups");
        assert!(!group.exists(), "{} left behind", group.display());
        // Well above the 30 % quota, below a whole core: other load on this 2-core box (a
        // build, in CI once) took a quarter of it while the quota was already gone.
        let free = measured_cpu_percent(pid, Duration::from_secs(2));
        assert!(free > 50.0, "after revert only {free:.1}% of a CPU");

        let again = revert(&recipe, None).expect("second revert");
        assert_eq!(cgroup_text(pid), before);
        assert!(again.summary.contains("0 process"), "{}", again.summary);
    }

    /// Cgroups a test made, removed on drop; a process still in one (the test failed before
    /// its processes ended) is moved to the hierarchy's top first.
    struct TestCgroups(Vec<PathBuf>);

    impl Drop for TestCgroups {
        fn drop(&mut self) {
            for dir in &self.0 {
                if let Some(top) = dir.parent() {
                    for pid in cgroup::procs(dir).unwrap_or_default() {
                        let _ = cgroup::move_process(top, pid);
                    }
                }
                let _ = cgroup::remove(dir, Duration::from_secs(2));
            }
        }
    }

    /// On cgroup v2 a process can be limited only when its cgroup holds nothing else, and the
    /// test's own cgroup holds the test: give each of `pids` a cgroup of its own under the top
    /// of `controller`'s v2 tree, as a service of its own would have. Nothing on v1.
    fn alone_on_v2(controller: Controller, pids: &[u32]) -> TestCgroups {
        let mounts = Mounts::detect().expect("cgroup mounts");
        let hierarchy = mounts
            .find(controller)
            .expect("a hierarchy for the controller");
        if hierarchy.version == Version::V1 {
            return TestCgroups(Vec::new());
        }
        let dirs: Vec<PathBuf> = pids
            .iter()
            .map(|pid| hierarchy.mount.join(format!("faultline-test-alone-{pid}")))
            .collect();
        let guard = TestCgroups(dirs);
        for (dir, pid) in guard.0.iter().zip(pids) {
            cgroup::create(dir).expect("create a test cgroup");
            cgroup::move_process(dir, *pid).expect("move into a test cgroup");
        }
        guard
    }

    /// A limit is set per cgroup: processes that came from two cgroups each get the full
    /// quota, so together they may use twice it. The summary must say so, and each process
    /// must go back to its own cgroup.
    #[test]
    fn processes_from_two_cgroups_are_limited_per_cgroup_and_each_goes_back_to_its_own() {
        let _serial = measuring();
        let mounts = Mounts::detect().expect("cgroup mounts");
        let hierarchy = mounts
            .find(Controller::Cpu)
            .expect("a cpu hierarchy")
            .clone();
        let tag = format!("faultline-two-origins-{}", std::process::id());
        let origins = TestCgroups(vec![
            hierarchy.mount.join(format!("{tag}-a")),
            hierarchy.mount.join(format!("{tag}-b")),
        ]);
        for dir in &origins.0 {
            cgroup::create(dir).expect("create a test cgroup");
        }
        // `yes` into /dev/null: busy, and one process whatever wraps `python3` on this host.
        let busy: Vec<Guarded> = (0..2).map(|_| Guarded::spawn("yes", &[&tag])).collect();
        for (process, origin) in busy.iter().zip(&origins.0) {
            cgroup::move_process(origin, process.pid()).expect("move into a test cgroup");
        }
        let fault = CpuLimitFault::new(
            CpuLimitParams {
                percent: 20.0,
                period: DEFAULT_PERIOD,
            },
            "busy",
            CompiledSelector::new(proc::Selector {
                cmdline: Some(format!("^yes {tag}$")),
                ..proc::Selector::default()
            })
            .expect("a valid selector"),
        );
        let (summary, recipe, _) = fault.prepare_recipe().expect("prepare");
        assert_eq!(recipe.groups.len(), 2, "{summary}");
        assert!(summary.contains("in each of 2 cgroups"), "{summary}");

        let applied = fault.apply_recipe(&recipe).expect("apply");
        let limited: Vec<f64> = std::thread::scope(|scope| {
            let measuring: Vec<_> = busy
                .iter()
                .map(|p| {
                    let pid = p.pid();
                    scope.spawn(move || measured_cpu_percent(pid, Duration::from_secs(4)))
                })
                .collect();
            measuring.into_iter().map(|m| m.join().unwrap()).collect()
        });
        revert(&recipe, baseline(applied)).expect("revert");
        println!("20% per cgroup: measured {limited:?}");
        for percent in &limited {
            assert!(
                (15.0..=25.0).contains(percent),
                "measured {limited:?} for 20% in each cgroup"
            );
        }
        for (process, origin) in busy.iter().zip(&origins.0) {
            assert_eq!(
                &hierarchy.dir_of_process(process.pid()).expect("cgroup now"),
                origin
            );
        }
        for group in &recipe.groups {
            assert!(!group.dir.exists(), "{} left behind", group.dir.display());
        }
        drop(busy);
    }

    #[test]
    fn revert_after_the_process_died_and_after_a_crash() {
        let mut first = Guarded::spawn("sleep", &["30"]);
        let second = Guarded::spawn("sleep", &["30"]);
        let _alone = alone_on_v2(Controller::Cpu, &[first.pid(), second.pid()]);
        let selector = |pid| {
            CpuLimitFault::new(
                CpuLimitParams {
                    percent: 50.0,
                    period: Duration::from_millis(50),
                },
                "sleepers",
                by_pid(pid),
            )
        };
        // The dead one.
        let fault = selector(first.pid());
        let (_, recipe, _) = fault.prepare_recipe().expect("prepare");
        let applied = fault.apply_recipe(&recipe).expect("apply");
        first.kill();
        let reverted = revert(&recipe, baseline(applied)).expect("revert after the process died");
        assert!(
            reverted.summary.contains("0 process"),
            "{}",
            reverted.summary
        );
        assert!(!recipe.groups[0].dir.exists());

        // The crash: the recipe comes back from the state file into a process that never
        // applied it (the registry has no baseline).
        let before = cgroup_text(second.pid());
        let fault = selector(second.pid());
        let (_, recipe, _) = fault.prepare_recipe().expect("prepare");
        let applied = fault.apply_recipe(&recipe).expect("apply");
        assert_ne!(cgroup_text(second.pid()), before);
        let from_state_file = round_trip(&recipe);
        assert!(
            matches!(applied.live, Some(crate::fault::LiveHandle::Limit(_))),
            "apply left no baseline"
        );
        let reverted = revert(&from_state_file, None).expect("revert after a crash");
        assert!(
            reverted.summary.contains("1 process"),
            "{}",
            reverted.summary
        );
        assert!(reverted.details["window_seconds"].is_null());
        assert_eq!(cgroup_text(second.pid()), before);
        assert!(!recipe.groups[0].dir.exists());
        assert!(describe(&recipe).contains(&second.pid().to_string()));
    }

    #[test]
    fn params_the_kernel_would_refuse_are_refused_early() {
        let cpu = |percent, period| CpuLimitParams { percent, period };
        assert_eq!(cpu(150.0, DEFAULT_PERIOD).quota(), Ok((150_000, 100_000)));
        assert!(cpu(0.0, DEFAULT_PERIOD).quota().is_err());
        assert!(cpu(f64::NAN, DEFAULT_PERIOD).quota().is_err());
        assert!(cpu(0.5, DEFAULT_PERIOD).quota().is_err(), "500µs quota");
        assert!(cpu(50.0, Duration::from_secs(2)).quota().is_err());
        let io = IoLimitParams {
            path: "/".into(),
            read_bps: None,
            write_bps: None,
            read_iops: None,
            write_iops: None,
        };
        assert!(io.limits().is_err());
        assert!(
            IoLimitParams {
                write_bps: Some(0),
                ..io.clone()
            }
            .limits()
            .is_err()
        );
        assert!(
            IoLimitParams {
                write_iops: Some(10),
                ..io
            }
            .limits()
            .is_ok()
        );
    }

    #[test]
    fn no_target_prepares_nothing() {
        let mut gone = Guarded::spawn("sleep", &["30"]);
        let pid = gone.pid();
        gone.kill();
        let fault = CpuLimitFault::new(
            CpuLimitParams {
                percent: 50.0,
                period: DEFAULT_PERIOD,
            },
            "gone",
            by_pid(pid),
        );
        assert!(matches!(
            fault.prepare_recipe(),
            Err(FaultError::NoTarget(_))
        ));
    }

    /// On v2 the controller must be enabled from the top down, and a cgroup that also holds
    /// processes faultline leaves alone cannot hand it to a child. Planned (nothing written)
    /// against this host's real v2 tree.
    #[test]
    fn v2_plans_enable_the_controller_down_to_whole_cgroups_only() {
        let mounts = Mounts::detect().expect("mounts");
        let v2 = mounts.v2.clone().expect("a v2 tree");
        let shared = v2
            .mount
            .join(format!("faultline-plan-{}", std::process::id()));
        cgroup::create(&shared).expect("create");
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                for pid in cgroup::procs(&self.0).unwrap_or_default() {
                    let _ = cgroup::move_process(self.0.parent().expect("parent"), pid);
                }
                let _ = cgroup::remove(&self.0, Duration::from_secs(2));
            }
        }
        let _cleanup = Remove(shared.clone());
        let a = Guarded::spawn("sleep", &["30"]);
        let b = Guarded::spawn("sleep", &["30"]);
        for child in [&a, &b] {
            cgroup::move_process(&shared, child.pid()).expect("move");
        }
        let moved = |child: &Guarded| MovedProcess {
            process: ProcRef {
                pid: child.pid(),
                start_time: proc::start_time(child.pid()).expect("start"),
            },
            name: "sleep".into(),
            origin: shared.clone(),
            group: shared.join("faultline-x"),
        };
        let groups = [LimitGroup {
            dir: shared.join("faultline-x"),
            origin: shared.clone(),
        }];
        let refused = v2_subtree_changes(&v2, Controller::Cpu, &groups, &[moved(&a)])
            .expect_err("b stays behind");
        assert!(
            refused.to_string().contains(&b.pid().to_string()),
            "{refused}"
        );
        let changes = v2_subtree_changes(&v2, Controller::Cpu, &groups, &[moved(&a), moved(&b)])
            .expect("whole cgroup");
        let dirs: Vec<&Path> = changes.iter().map(|c| c.dir.as_path()).collect();
        assert_eq!(dirs, vec![v2.mount.as_path(), shared.as_path()]);
        assert!(changes.iter().all(|c| c.controller == "cpu"));
    }

    /// A small ext4 image on a loop device, mounted in a temp dir under /var/tmp (never a
    /// file system anything else uses); unmounted, detached and deleted on drop.
    struct LoopImage {
        device: String,
        mount: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().expect("run tool");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    impl LoopImage {
        fn new(size: u64) -> LoopImage {
            let dir = tempfile::Builder::new()
                .prefix("faultline-io")
                .tempdir_in("/var/tmp")
                .expect("temp dir");
            let image = dir.path().join("image");
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(size))
                .expect("image file");
            let image = image.to_str().expect("utf-8 path");
            run("mkfs.ext4", &["-q", "-F", "-m", "0", image]);
            let device = run("losetup", &["-f", "--show", image]);
            let mount = dir.path().join("mnt");
            std::fs::create_dir(&mount).expect("mount point");
            let guard = LoopImage {
                device,
                mount,
                _dir: dir,
            };
            run(
                "mount",
                &[&guard.device, guard.mount.to_str().expect("utf-8 path")],
            );
            guard
        }
    }

    impl Drop for LoopImage {
        fn drop(&mut self) {
            let mount = self.mount.to_str().unwrap_or_default();
            for _ in 0..50 {
                let unmounted = Command::new("umount").arg(mount).status();
                if unmounted.is_ok_and(|s| s.success()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
    }

    /// Rewrites the first 32 MiB of `path` with O_DIRECT 256 KiB writes, forever.
    const DIRECT_WRITER: &str = "\
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
block = 256 * 1024
buf = mmap.mmap(-1, block)
buf.write(b'x' * block)
offset = 0
while True:
    os.pwrite(fd, buf, offset)
    offset = (offset + block) % (32 * 1024 * 1024)
";

    fn written_bytes(pid: u32) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
        text.lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("wchar")
    }

    /// Bytes per second the process wrote over `window`, from its own /proc/PID/io.
    fn measured_write_rate(pid: u32, window: Duration) -> f64 {
        let started = Instant::now();
        let before = written_bytes(pid);
        std::thread::sleep(window);
        (written_bytes(pid) - before) as f64 / started.elapsed().as_secs_f64()
    }

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn disk_io_limit_holds_a_direct_writer_to_its_limit() {
        let _serial = measuring();
        let image = LoopImage::new(64 << 20);
        let file = image.mount.join("data");
        let writer = Guarded::spawn(
            "python3",
            &["-c", DIRECT_WRITER, file.to_str().expect("utf-8")],
        );
        let pid = writer.pid();
        let _alone = alone_on_v2(Controller::Io, &[pid]);
        let limit: u64 = 20 << 20;
        // A cold writer (an emulated VM's first writes) can take a few seconds to get going.
        let mut free_before = 0.0;
        for _ in 0..5 {
            free_before = measured_write_rate(pid, Duration::from_secs(1));
            if free_before > 2.0 * limit as f64 {
                break;
            }
        }
        let fault = IoLimitFault::new(
            IoLimitParams {
                path: image.mount.clone(),
                read_bps: None,
                write_bps: Some(limit),
                read_iops: None,
                write_iops: None,
            },
            "writer",
            by_pid(pid),
        );
        let (summary, recipe, _) = fault.prepare_recipe().expect("prepare");
        let LimitSetting::Io { device, .. } = recipe.setting else {
            panic!("not an I/O recipe: {recipe:?}");
        };
        let loop_device = std::fs::metadata(&image.device).expect("stat loop device");
        let rdev = std::os::unix::fs::MetadataExt::rdev(&loop_device);
        assert_eq!(
            (device.major, device.minor),
            (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
            "throttles the loop device itself"
        );
        let before = cgroup_text(pid);
        let recipe = round_trip(&recipe);
        let applied = fault.apply_recipe(&recipe).expect("apply");
        std::thread::sleep(Duration::from_millis(500));
        let limited = measured_write_rate(pid, Duration::from_secs(3));
        let reverted = revert(&recipe, baseline(applied)).expect("revert");
        std::thread::sleep(Duration::from_millis(200));
        let free_after = measured_write_rate(pid, Duration::from_secs(1));
        println!(
            "{summary}: unthrottled {:.0} MiB/s, limited {:.2} MiB/s, after revert {:.0} MiB/s; faultline says {}",
            free_before / MIB,
            limited / MIB,
            free_after / MIB,
            reverted.details
        );
        let limit = limit as f64;
        assert!(
            (limit * 0.9..=limit * 1.1).contains(&limited),
            "limited to 20 MiB/s, measured {:.2} MiB/s",
            limited / MIB
        );
        assert!(free_before > 2.0 * limit, "writer too slow to test a limit");
        assert!(
            free_after > 2.0 * limit,
            "still throttled after revert: {:.1} MiB/s",
            free_after / MIB
        );
        let said = reverted.details["achieved_per_cgroup"]["write_bps"]
            .as_f64()
            .expect("achieved write rate");
        assert!((said - limit).abs() < limit * 0.15, "faultline says {said}");
        assert_eq!(cgroup_text(pid), before);
        assert!(!recipe.groups[0].dir.exists());
    }
}
