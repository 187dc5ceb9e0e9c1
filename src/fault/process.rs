//! `process-kill` and `process-stop`.

use super::{Fault, FaultError, ProcRef, Reverted};
use crate::plan::{FaultSpec, Plan};

pub fn build(_spec: &FaultSpec, _plan: &Plan) -> Box<dyn Fault> {
    unimplemented!("helper C")
}

/// SIGCONT every process that is still the same process. Gone processes are not an error.
pub fn resume_all(_processes: &[ProcRef]) -> Result<Reverted, FaultError> {
    unimplemented!("helper C")
}
