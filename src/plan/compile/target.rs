//! The rules every fault's `target` and `mode` follow (each kind's own parameters are
//! checked by its module in `fault`).

use super::Checker;
use crate::experiment::model::{FaultDef, FaultKind};
use crate::experiment::{Diagnostic, Sp};

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
        self.params().mode(fault, allowed)
    }
}
