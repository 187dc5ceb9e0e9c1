//! Resource faults as the engine sees them: each kind's module decides and applies, this
//! file turns a plan entry into the right one and wraps its recipe for the state file.

use super::limit::{self, CpuLimitFault, CpuLimitParams, IoLimitFault, IoLimitParams};
use super::{Applied, Fault, FaultError, Prepared, RevertRecipe};
use crate::experiment::model::ProcessSelector;
use crate::plan::{FaultSpec, Plan, ResourceAction, TargetSpec};

pub fn build(spec: &FaultSpec, plan: &Plan, action: &ResourceAction) -> Box<dyn Fault> {
    let target = spec.target.clone().unwrap_or_default();
    let selector = match plan.targets.get(&target) {
        Some(TargetSpec::Process(selector)) => selector.clone(),
        _ => ProcessSelector::default(),
    };
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
        _ => Box::new(NotInThisBuild(spec.kind.as_str())),
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

/// A fault kind the format knows but this build cannot inject: refused before anything is
/// injected.
pub struct NotInThisBuild(pub &'static str);

impl Fault for NotInThisBuild {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        Err(FaultError::Unsupported(format!(
            "{} is not available in this build",
            self.0
        )))
    }
    fn apply(&self, _: &Prepared) -> Result<Applied, FaultError> {
        Err(FaultError::Unsupported(format!(
            "{} is not available in this build",
            self.0
        )))
    }
}
