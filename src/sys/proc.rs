//! Reading processes from /proc and selecting the ones a target means.

use crate::experiment::model::ProcessSelector;
use crate::fault::ProcRef;

/// What faultline knows about one live process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
    /// Arguments joined by single spaces.
    pub cmdline: String,
    /// Real uid.
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

/// Why a selection found nothing usable, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
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
}

/// Start time of a live process (`/proc/PID/stat` field 22).
pub fn start_time(_pid: u32) -> std::io::Result<u64> {
    unimplemented!("helper C")
}

/// Read one process.
pub fn read(_pid: u32) -> std::io::Result<ProcInfo> {
    unimplemented!("helper C")
}

/// Resolve `selector` against the processes running now. Never signals anything.
pub fn select(_selector: &ProcessSelector) -> Result<Selection, SelectError> {
    unimplemented!("helper C")
}
