//! `faultline recover` and `faultline status`: undo what a crashed run left behind, and
//! list what is live. Recovery reverts newest first, drops each record only after its
//! revert succeeded, and is idempotent.

use super::{FaultRecord, StateDir, StateError, owner_alive};
use crate::fault::ProcRef;

/// What `recover` did.
#[derive(Debug, Default)]
pub struct RecoverReport {
    pub reverted: Vec<(FaultRecord, String)>,
    pub failed: Vec<(FaultRecord, String)>,
    /// Records of a run that is still going; left alone unless asked.
    pub active: Vec<FaultRecord>,
    /// Records that cannot be read: they need a person.
    pub unreadable: Vec<String>,
}

impl RecoverReport {
    pub fn clean(&self) -> bool {
        self.failed.is_empty() && self.unreadable.is_empty()
    }
}

/// Revert every orphaned record (owner gone); with `include_active`, also those of runs
/// that are still alive (for a run that hangs).
pub fn recover(state: &StateDir, include_active: bool) -> Result<RecoverReport, StateError> {
    recover_where(state, |record| {
        include_active || !owner_alive(&record.owner)
    })
}

/// Revert the records of one run's process, alive or not: its watchdog acts the moment the
/// run died, when the process may still be a zombie.
pub fn recover_owned_by(state: &StateDir, owner: ProcRef) -> Result<RecoverReport, StateError> {
    recover_where(state, |record| record.owner == owner)
}

/// Revert the records `revertible` accepts, newest first; the others are reported active.
fn recover_where(
    state: &StateDir,
    revertible: impl Fn(&FaultRecord) -> bool,
) -> Result<RecoverReport, StateError> {
    let mut report = RecoverReport::default();
    let mut records = Vec::new();
    for entry in state.list()? {
        match entry {
            Ok(record) => records.push(record),
            Err(e) => report.unreadable.push(e.to_string()),
        }
    }
    // Newest first: undo in the reverse of the order things were done.
    records.reverse();
    for record in records {
        if !revertible(&record) {
            report.active.push(record);
            continue;
        }
        match super::revert_record(state, &record, None) {
            Ok(reverted) => report.reverted.push((record, reverted.summary)),
            Err(e) => report.failed.push((record, e.to_string())),
        }
    }
    Ok(report)
}

/// A live record and whether the run that made it is still going.
#[derive(Debug, serde::Serialize)]
pub struct StatusEntry {
    #[serde(flatten)]
    pub record: FaultRecord,
    pub owner_alive: bool,
}

pub fn status(state: &StateDir) -> Result<(Vec<StatusEntry>, Vec<String>), StateError> {
    let mut live = Vec::new();
    let mut unreadable = Vec::new();
    for entry in state.list()? {
        match entry {
            Ok(record) => live.push(StatusEntry {
                owner_alive: owner_alive(&record.owner),
                record,
            }),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    Ok((live, unreadable))
}
