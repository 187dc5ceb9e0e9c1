//! The rules every fault's `target` and `params` keys follow (each kind's own parameters
//! are checked by its module in `fault`).

use super::{Checker, pos_of};
use crate::experiment::model::{FaultDef, FaultKind};
use crate::experiment::{Diagnostic, Pos, Sp};

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

    /// Parameters given to a fault kind that does not take them.
    pub(super) fn params_fit(&mut self, fault: &Sp<FaultDef>) {
        let kind = fault.kind.value;
        let p = &fault.params;
        let given: [(&str, Option<Pos>); 28] = [
            ("signal", pos_of(&p.signal)),
            ("delay", pos_of(&p.delay)),
            ("jitter", pos_of(&p.jitter)),
            ("distribution", pos_of(&p.distribution)),
            ("correlation", pos_of(&p.correlation)),
            ("probability", pos_of(&p.probability)),
            ("rate", pos_of(&p.rate)),
            ("burst", pos_of(&p.burst)),
            ("gap", pos_of(&p.gap)),
            ("backend", pos_of(&p.backend)),
            ("load", pos_of(&p.load)),
            ("quota", pos_of(&p.quota)),
            ("cores", pos_of(&p.cores)),
            ("ramp", pos_of(&p.ramp)),
            ("size", pos_of(&p.size)),
            ("leave_free", pos_of(&p.leave_free)),
            ("keep_free", pos_of(&p.keep_free)),
            ("path", pos_of(&p.path)),
            ("block_size", pos_of(&p.block_size)),
            ("throughput", pos_of(&p.throughput)),
            ("iops", pos_of(&p.iops)),
            ("workers", pos_of(&p.workers)),
            ("read_share", pos_of(&p.read_share)),
            ("read_throughput", pos_of(&p.read_throughput)),
            ("write_throughput", pos_of(&p.write_throughput)),
            ("read_iops", pos_of(&p.read_iops)),
            ("write_iops", pos_of(&p.write_iops)),
            ("mode", pos_of(&p.mode)),
        ];
        for (key, pos) in given {
            let Some(pos) = pos else { continue };
            // process-stop's `signal` has its own, more specific message.
            if key == "signal" && kind == FaultKind::ProcessStop {
                continue;
            }
            let takes = crate::fault::module_kind(kind).is_some_and(|m| m.keys.contains(&key));
            if !takes {
                let takers: Vec<&str> = crate::fault::MODULE_KINDS
                    .iter()
                    .filter(|m| m.keys.contains(&key))
                    .map(|m| m.kind.as_str())
                    .collect();
                self.report(
                    Diagnostic::at(
                        pos,
                        format!("`params.{key}` does not apply to a {} fault", kind.as_str()),
                        format!("not a parameter of {}", kind.as_str()),
                    )
                    .with_hint(format!("`{key}` is a parameter of {}", takers.join(", "))),
                );
            }
        }
    }
}
