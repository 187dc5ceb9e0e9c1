//! Resource faults as the engine sees them: each kind's module decides and applies, this
//! file turns a plan entry into the right one and wraps its recipe for the state file.

use super::cpu::{self, CpuPressure, CpuPressureParams};
use super::disk::{self, DiskIoParams, DiskIoPressure};
use super::limit::{self, CpuLimitFault, CpuLimitParams, IoLimitFault, IoLimitParams};
use super::memory::{self, MemoryPressure, MemoryPressureParams};
use super::{Applied, Fault, FaultError, Prepared, RevertRecipe};
use super::{CoreSelection, IoMode, IoRate, MemorySize, ResourceAction};

pub fn build(action: &ResourceAction, ctx: &super::BuildContext<'_>) -> Box<dyn Fault> {
    let target = ctx.target_name.to_string();
    let selector = ctx.process.cloned().unwrap_or_default();
    match action {
        ResourceAction::CpuLimit { cpus } => Box::new(Limit(LimitKind::Cpu(CpuLimitFault::new(
            CpuLimitParams {
                percent: cpus * 100.0,
                period: limit::DEFAULT_PERIOD,
            },
            &target,
            selector,
        )))),
        ResourceAction::DiskIoLimit {
            path,
            read_bytes_per_sec,
            write_bytes_per_sec,
            read_iops,
            write_iops,
        } => Box::new(Limit(LimitKind::Io(IoLimitFault::new(
            IoLimitParams {
                path: path.clone(),
                read_bps: *read_bytes_per_sec,
                write_bps: *write_bytes_per_sec,
                read_iops: *read_iops,
                write_iops: *write_iops,
            },
            &target,
            selector,
        )))),
        ResourceAction::DiskIoPressure {
            path,
            mode,
            block_size,
            rate,
            workers,
        } => Box::new(DiskIo(DiskIoPressure::new(DiskIoParams {
            path: path.clone(),
            mode: match mode {
                IoMode::Read => disk::IoMode::Read,
                IoMode::Write => disk::IoMode::Write,
                IoMode::Mixed(share) => disk::IoMode::Mixed {
                    read_percent: (share * 100.0).round().clamp(0.0, 100.0) as u8,
                },
            },
            block_size: *block_size,
            target: match rate {
                IoRate::Max => disk::IoTarget::Max,
                IoRate::BytesPerSec(b) => disk::IoTarget::BytesPerSec(*b),
                IoRate::Iops(n) => disk::IoTarget::Iops(*n),
            },
            workers: *workers,
            file_size: work_file_size(path, *workers, *block_size),
        }))),
        ResourceAction::CpuPressure {
            load,
            cores,
            total,
            ramp,
        } => Box::new(Pressure::Cpu(CpuPressure::new(CpuPressureParams {
            percent: load * 100.0,
            cores: match cores {
                None => cpu::Cores::All,
                Some(CoreSelection::Count(n)) => cpu::Cores::Count(*n as usize),
                Some(CoreSelection::List(list)) => {
                    cpu::Cores::List(list.iter().map(|c| *c as usize).collect())
                }
            },
            mode: if *total {
                cpu::CpuMode::Total
            } else {
                cpu::CpuMode::Added
            },
            ramp: *ramp,
        }))),
        ResourceAction::MemoryPressure {
            size,
            ramp,
            keep_free,
        } => Box::new(Pressure::Memory(MemoryPressure::new(
            MemoryPressureParams {
                amount: match size {
                    MemorySize::Bytes(b) => memory::MemoryAmount::Bytes(*b),
                    MemorySize::Share(s) => memory::MemoryAmount::Percent(s * 100.0),
                },
                ramp: *ramp,
                keep_free: *keep_free,
            },
        ))),
    }
}

/// `cpu-pressure` (worker threads in faultline) and `memory-pressure` (a hog child process).
enum Pressure {
    Cpu(CpuPressure),
    Memory(MemoryPressure),
}

impl Fault for Pressure {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        match self {
            Pressure::Cpu(fault) => {
                let (summary, recipe, details) = fault.prepare_recipe()?;
                Ok(Prepared {
                    summary,
                    revert: RevertRecipe::CpuPressure(recipe),
                    details,
                })
            }
            Pressure::Memory(fault) => {
                let (summary, recipe, details) = fault.prepare_recipe()?;
                Ok(Prepared {
                    summary,
                    revert: RevertRecipe::MemoryPressure(recipe),
                    details,
                })
            }
        }
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        match (self, &prepared.revert) {
            (Pressure::Cpu(fault), RevertRecipe::CpuPressure(recipe)) => fault.apply_recipe(recipe),
            (Pressure::Memory(fault), RevertRecipe::MemoryPressure(recipe)) => {
                fault.apply_recipe(recipe)
            }
            _ => Err(FaultError::Failed("recipe of another fault kind".into())),
        }
    }
}

/// The work file: the default size, but never more than half the free space (an I/O fault
/// must take the space it loads), and at least one block per worker.
fn work_file_size(path: &std::path::Path, workers: u32, block_size: u64) -> u64 {
    let floor = u64::from(workers) * block_size;
    let half_free =
        disk::FsSpace::of(path).map_or(disk::DEFAULT_FILE_SIZE, |space| space.available / 2);
    let size = disk::DEFAULT_FILE_SIZE.min(half_free);
    (size - size % block_size.max(1)).max(floor)
}

/// `disk-io-pressure`: a work file of faultline's, recorded before it exists.
struct DiskIo(DiskIoPressure);

impl Fault for DiskIo {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        let (summary, recipe, details) = self.0.prepare_recipe()?;
        Ok(Prepared {
            summary,
            revert: RevertRecipe::DiskIoPressure(recipe),
            details,
        })
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        match &prepared.revert {
            RevertRecipe::DiskIoPressure(recipe) => self.0.apply_recipe(recipe),
            _ => Err(FaultError::Failed("recipe of another fault kind".into())),
        }
    }
}

enum LimitKind {
    Cpu(CpuLimitFault),
    Io(IoLimitFault),
}

/// `cpu-limit` and `disk-io-limit`: the target moves into a cgroup of faultline's with the limit.
struct Limit(LimitKind);

impl Fault for Limit {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        let (summary, recipe, details) = match &self.0 {
            LimitKind::Cpu(fault) => fault.prepare_recipe()?,
            LimitKind::Io(fault) => fault.prepare_recipe()?,
        };
        Ok(Prepared {
            summary,
            revert: RevertRecipe::CgroupLimit(recipe),
            details,
        })
    }

    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        let RevertRecipe::CgroupLimit(recipe) = &prepared.revert else {
            return Err(FaultError::Failed("not a cgroup limit".into()));
        };
        match &self.0 {
            LimitKind::Cpu(fault) => fault.apply_recipe(recipe),
            LimitKind::Io(fault) => fault.apply_recipe(recipe),
        }
    }
}
