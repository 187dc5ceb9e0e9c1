//! Checks for resource-pressure faults (CPU, memory, disk), and the rules every fault's
//! `target` and `mode` follow.

use std::path::PathBuf;
use std::time::Duration;

use super::{Checker, suggest};
use crate::experiment::model::{CoresSpec, FaultDef, FaultKind, PercentSpec};
use crate::experiment::{Diagnostic, Sp};
use crate::plan::{CoreSelection, IoMode, IoRate, MemorySize, ResourceAction};

const DEFAULT_KEEP_FREE: u64 = 256 << 20;
const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;

impl<'a> Checker<'a> {
    /// The fault's target, when its kind takes one; reports a missing or superfluous target.
    pub(super) fn fault_target<'f>(&mut self, fault: &'f Sp<FaultDef>) -> Option<&'f Sp<String>> {
        let id = fault.id.as_str();
        let kind = fault.kind.value;
        match (&fault.target, kind.takes_target()) {
            (Some(target), true) => Some(target),
            (None, true) => {
                self.report(
                    Diagnostic::at(
                        fault.kind.pos,
                        format!("fault `{id}` ({}) has no `target`", kind.as_str()),
                        "needs a target",
                    )
                    .with_hint("add `target:` naming an entry of `targets`"),
                );
                None
            }
            (Some(target), false) => {
                let limit = match kind {
                    FaultKind::CpuPressure => {
                        "; to squeeze one service's CPU use `cpu-limit` on a process target"
                    }
                    FaultKind::DiskIoPressure => {
                        "; to throttle one service's I/O use `disk-io-limit` on a process target"
                    }
                    _ => "",
                };
                self.report(
                    Diagnostic::at(
                        target.pos,
                        format!(
                            "fault `{id}` ({}) acts on the whole host and takes no `target`",
                            kind.as_str()
                        ),
                        "not used",
                    )
                    .with_hint(format!("remove `target`{limit}")),
                );
                None
            }
            (None, false) => None,
        }
    }

    /// `params.mode`, one of `allowed` (the first is the default).
    pub(super) fn mode(
        &mut self,
        fault: &Sp<FaultDef>,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let Some(mode) = &fault.params.mode else {
            return Some(allowed[0]);
        };
        match allowed.iter().find(|m| **m == mode.as_str()) {
            Some(m) => Some(m),
            None => {
                self.report(
                    Diagnostic::at(
                        mode.pos,
                        format!("`{}` is not a mode of {}", mode.value, fault.kind.as_str()),
                        "unknown mode",
                    )
                    .with_hint(suggest(mode, allowed.iter().copied(), "modes")),
                );
                None
            }
        }
    }

    fn size(&mut self, value: &Sp<String>, what: &str) -> Option<u64> {
        self.params().size(value, what)
    }

    fn share(&mut self, spec: &Sp<PercentSpec>, max: f64) -> Option<f64> {
        self.params().share(spec, max)
    }

    fn required<'p, T>(
        &mut self,
        fault: &Sp<FaultDef>,
        key: &str,
        value: &'p Option<T>,
        example: &str,
    ) -> Option<&'p T> {
        self.params().required(fault, key, value, example)
    }

    fn directory(&mut self, path: &Sp<String>) -> PathBuf {
        self.params().directory(path)
    }

    /// The resource fault's validated effect; `None` after reporting what is wrong.
    pub(super) fn resource_action(&mut self, fault: &Sp<FaultDef>) -> Option<ResourceAction> {
        let p = &fault.params;
        self.params().needs_duration(fault);
        let ramp = p.ramp.as_ref().map_or(Duration::ZERO, |r| r.get());
        if let (Some(r), Some(d)) = (&p.ramp, &fault.duration)
            && r.get() > d.get()
        {
            self.report(
                Diagnostic::at(
                    r.pos,
                    format!(
                        "ramp {} is longer than the fault's duration {}",
                        r.value, d.value
                    ),
                    "never reaches the target",
                )
                .with_hint("make the ramp shorter than the duration"),
            );
        }
        match fault.kind.value {
            FaultKind::CpuPressure => {
                // Both are checked before giving up, so both problems are reported at once.
                let load = self
                    .required(fault, "load", &p.load, "60%")
                    .and_then(|l| self.share(l, 100.0));
                let mode = self.mode(fault, &["added", "total"]);
                let (load, total) = (load?, mode? == "total");
                let cores = p.cores.as_ref().map(|c| match &c.value {
                    CoresSpec::Count(n) => CoreSelection::Count(*n),
                    CoresSpec::List(list) => CoreSelection::List(list.clone()),
                });
                if let Some(c) = &p.cores {
                    let problem = match &c.value {
                        CoresSpec::Count(0) => Some("`cores: 0` selects no core"),
                        CoresSpec::List(list) if list.is_empty() => {
                            Some("an empty core list selects no core")
                        }
                        _ => None,
                    };
                    if let Some(problem) = problem {
                        self.report(
                            Diagnostic::at(c.pos, problem, "no core")
                                .with_hint("give a count (`2`) or core numbers (`[0, 1]`)"),
                        );
                        return None;
                    }
                }
                Some(ResourceAction::CpuPressure {
                    load,
                    cores,
                    total,
                    ramp,
                })
            }
            FaultKind::CpuLimit => {
                let quota = self.required(fault, "quota", &p.quota, "50%")?;
                // Up to 1024 CPUs' worth; more is certainly a typo.
                let cpus = self.share(quota, 102_400.0)?;
                Some(ResourceAction::CpuLimit { cpus })
            }
            FaultKind::MemoryPressure => {
                let size = self.required(fault, "size", &p.size, "512MiB")?;
                let size = if size.trim_end().ends_with('%') {
                    let spec = Sp::at(PercentSpec::Text(size.value.clone()), size.pos);
                    MemorySize::Share(self.share(&spec, 100.0)?)
                } else {
                    MemorySize::Bytes(self.size(size, "`size`")?)
                };
                let keep_free = match &p.keep_free {
                    Some(k) => self.size(k, "`keep_free`")?,
                    None => DEFAULT_KEEP_FREE,
                };
                Some(ResourceAction::MemoryPressure {
                    size,
                    ramp,
                    keep_free,
                })
            }
            FaultKind::DiskIoPressure => {
                let path = self.required(fault, "path", &p.path, "/var/lib/app")?;
                let path = self.directory(path);
                let mode = match self.mode(fault, &["write", "read", "mixed"])? {
                    "read" => IoMode::Read,
                    "write" => IoMode::Write,
                    _ => IoMode::Mixed(match &p.read_share {
                        Some(s) => self.share(s, 100.0)?,
                        None => 0.5,
                    }),
                };
                if let (Some(s), false) = (&p.read_share, matches!(mode, IoMode::Mixed(_))) {
                    self.report(
                        Diagnostic::at(s.pos, "`read_share` without `mode: mixed`", "not mixed")
                            .with_hint("set `mode: mixed`, or drop `read_share`"),
                    );
                }
                let block_size = match &p.block_size {
                    Some(b) => self.size(b, "`block_size`")?,
                    None => DEFAULT_BLOCK_SIZE,
                };
                if block_size % 512 != 0 {
                    let pos = p.block_size.as_ref().map_or(fault.kind.pos, |b| b.pos);
                    self.report(
                        Diagnostic::at(pos, format!("block size {block_size} is not a multiple of 512 bytes"), "unaligned")
                            .with_hint("direct I/O needs sector-aligned requests: use `4KiB`, `64KiB`, `1MiB`..."),
                    );
                }
                let rate = match (&p.throughput, &p.iops) {
                    (Some(t), Some(_)) => {
                        self.report(
                            Diagnostic::at(t.pos, "both `throughput` and `iops`", "two targets")
                                .with_hint(
                                    "give one target rate, or neither for as fast as possible",
                                ),
                        );
                        return None;
                    }
                    (Some(t), None) => IoRate::BytesPerSec(self.size(t, "`throughput`")?),
                    (None, Some(i)) if i.value == 0 => {
                        self.report(
                            Diagnostic::at(i.pos, "`iops: 0` does no I/O", "zero").with_hint(
                                "give a positive rate, or leave it out for as fast as possible",
                            ),
                        );
                        return None;
                    }
                    (None, Some(i)) => IoRate::Iops(i.value),
                    (None, None) => IoRate::Max,
                };
                let workers = p.workers.as_ref().map_or(1, |w| w.value);
                if workers == 0 || workers > 64 {
                    let pos = p.workers.as_ref().map_or(fault.kind.pos, |w| w.pos);
                    self.report(
                        Diagnostic::at(pos, format!("{workers} workers"), "out of range")
                            .with_hint("use 1 to 64 worker threads"),
                    );
                    return None;
                }
                Some(ResourceAction::DiskIoPressure {
                    path,
                    mode,
                    block_size,
                    rate,
                    workers,
                })
            }
            FaultKind::DiskIoLimit => {
                let path = self.required(fault, "path", &p.path, "/var/lib/app")?;
                let path = self.directory(path);
                let read_bytes_per_sec = match &p.read_throughput {
                    Some(t) => Some(self.size(t, "`read_throughput`")?),
                    None => None,
                };
                let write_bytes_per_sec = match &p.write_throughput {
                    Some(t) => Some(self.size(t, "`write_throughput`")?),
                    None => None,
                };
                let (read_iops, write_iops) = (
                    p.read_iops.as_ref().map(|v| v.value),
                    p.write_iops.as_ref().map(|v| v.value),
                );
                if read_bytes_per_sec.is_none()
                    && write_bytes_per_sec.is_none()
                    && read_iops.is_none()
                    && write_iops.is_none()
                {
                    self.report(
                        Diagnostic::at(fault.kind.pos, format!("fault `{}` (disk-io-limit) sets no limit", fault.id.value), "no limit")
                            .with_hint("add one of `read_throughput`, `write_throughput`, `read_iops`, `write_iops`"),
                    );
                    return None;
                }
                Some(ResourceAction::DiskIoLimit {
                    path,
                    read_bytes_per_sec,
                    write_bytes_per_sec,
                    read_iops,
                    write_iops,
                })
            }
            _ => None,
        }
    }
}
