//! The write-ahead state file: every injection's revert recipe is written (and fsynced)
//! *before* the injection happens, and removed only after its revert succeeded. After a
//! crash or `kill -9`, whatever is left here is exactly what `faultline recover` must undo.
//!
//! Layout: one JSON file per live injection under `<state-dir>/faults/`, written to a
//! temporary name, fsynced, renamed, and the directory fsynced — so a record is either whole
//! or absent, and concurrent runs never rewrite each other's records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::{LiveHandle, ProcRef, RevertRecipe, Reverted};

pub mod recover;

/// One live injection, as recorded on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Unique: `<run id>-<fault id>-<n>`.
    pub id: String,
    pub run_id: String,
    pub experiment: String,
    pub fault_id: String,
    /// The faultline process that made the injection; when it is gone, the record is orphaned.
    pub owner: ProcRef,
    /// RFC 3339.
    pub recorded_at: String,
    pub summary: String,
    pub revert: RevertRecipe,
    /// How long a revert of this record may take (the run's `revert_timeout`); records
    /// written before it was kept get [`DEFAULT_REVERT_TIMEOUT`].
    #[serde(default = "default_revert_timeout_ms")]
    pub revert_timeout_ms: u64,
}

/// What a revert gets when the record does not say (the experiment format's default).
pub const DEFAULT_REVERT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_revert_timeout_ms() -> u64 {
    DEFAULT_REVERT_TIMEOUT.as_millis() as u64
}

impl FaultRecord {
    pub fn revert_timeout(&self) -> Duration {
        Duration::from_millis(self.revert_timeout_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state record {path} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A state directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// `--state-dir`, else `$FAULTLINE_STATE_DIR`, else `/var/lib/faultline` for root and
    /// `$XDG_STATE_HOME/faultline` (or `~/.local/state/faultline`) for everyone else.
    pub fn default_location() -> PathBuf {
        if let Some(dir) = std::env::var_os("FAULTLINE_STATE_DIR") {
            return PathBuf::from(dir);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/faultline");
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
            return PathBuf::from(dir).join("faultline");
        }
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(".local/state/faultline");
        }
        PathBuf::from("/tmp/faultline-state")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn faults_dir(&self) -> PathBuf {
        self.root.join("faults")
    }

    /// Create the directory (0700) if needed. Called before the first record of a run, so
    /// `validate` and `plan` never create anything.
    pub fn ensure(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.faults_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.faults_dir().join(format!("{id}.json"))
    }

    /// Durably write `record`. Returns only once the record survives a crash.
    pub fn write(&self, record: &FaultRecord) -> Result<(), StateError> {
        self.ensure()?;
        let dir = self.faults_dir();
        let path = self.record_path(&record.id);
        let tmp = dir.join(format!(".{}.tmp", record.id));
        let json = serde_json::to_vec_pretty(record).expect("records serialise");
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            file.write_all(&json).map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&dir)
    }

    /// Forget a record whose revert succeeded. Removing an absent record is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.faults_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every record, oldest first. Unreadable files are reported, not skipped silently.
    pub fn list(&self) -> Result<Vec<Result<FaultRecord, StateError>>, StateError> {
        let dir = self.faults_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut records: Vec<Result<FaultRecord, StateError>> = paths
            .into_iter()
            .map(|path| {
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })
            })
            .collect();
        records.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.recorded_at.cmp(&b.recorded_at).then(a.id.cmp(&b.id)),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        Ok(records)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Revert one record: the one way faultline undoes an injection, for the engine, `recover`
/// and the watchdog alike. The recipe runs on a thread of its own and gets at most the
/// record's `revert_timeout` (a revert stuck on a hung mount or tool must not hold up the
/// others, nor the operator); the record is dropped only once its revert succeeded, so a
/// failed or timed-out revert stays for `recover`. `live` is what the injection's `apply`
/// left running in this process (the engine holds it; `recover` and the watchdog have none).
pub fn revert_record(
    state: &StateDir,
    record: &FaultRecord,
    live: Option<LiveHandle>,
) -> Result<Reverted, RevertFailure> {
    let recipe = record.revert.clone();
    let (done, outcome) = std::sync::mpsc::sync_channel(1);
    let (dir, id) = (state.clone(), record.id.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("revert {}", record.fault_id))
        .spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recipe.revert(live)));
            // Dropped here, not by the caller: a revert that finishes after its timeout still
            // leaves no record behind for `recover` to do again.
            if matches!(result, Ok(Ok(_)))
                && let Err(e) = dir.remove(&id)
            {
                tracing::warn!("reverted {id} but could not drop its state record: {e}");
            }
            let _ = done.send(result);
        });
    if let Err(e) = spawned {
        return Err(RevertFailure::Failed(format!(
            "cannot start the revert: {e}"
        )));
    }
    match outcome.recv_timeout(record.revert_timeout()) {
        Ok(Ok(Ok(reverted))) => Ok(reverted),
        Ok(Ok(Err(e))) => Err(RevertFailure::Failed(e.to_string())),
        Ok(Err(_)) => Err(RevertFailure::Failed("the revert panicked".into())),
        Err(_) => Err(RevertFailure::TimedOut(format!(
            "revert did not finish within {} (it goes on; if it ends well its record goes)",
            humantime::format_duration(record.revert_timeout())
        ))),
    }
}

/// Why a revert did not happen; the record stays.
#[derive(Debug, thiserror::Error)]
pub enum RevertFailure {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    TimedOut(String),
}

/// Is the process that owns a record still running (same PID *and* start time)?
pub fn owner_alive(owner: &ProcRef) -> bool {
    owner.is_alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> FaultRecord {
        FaultRecord {
            id: id.into(),
            run_id: "r1".into(),
            experiment: "e".into(),
            fault_id: "f".into(),
            owner: ProcRef {
                pid: 1,
                start_time: 1,
            },
            recorded_at: "2026-01-01T00:00:00Z".into(),
            summary: "s".into(),
            revert: RevertRecipe::Nothing,
            revert_timeout_ms: 10_000,
        }
    }

    #[test]
    fn write_list_remove_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path().join("state"));
        assert!(
            state.list().unwrap().is_empty(),
            "absent dir lists as empty"
        );
        state.write(&record("a")).unwrap();
        state.write(&record("b")).unwrap();
        let ids: Vec<String> = state
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        state.remove("a").unwrap();
        state.remove("a").unwrap();
        assert_eq!(state.list().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        state.ensure().unwrap();
        fs::write(tmp.path().join("faults/x.json"), b"{not json").unwrap();
        let listed = state.list().unwrap();
        assert!(matches!(listed[0], Err(StateError::Corrupt { .. })));
    }
}
