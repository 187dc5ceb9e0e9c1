//! The journal: one JSON event per line, written and flushed as the run goes, so a crash
//! still leaves a usable record of everything up to the crash.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A shared, append-only JSON-lines writer. Cloning shares the file.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Sink>>,
    path: Option<PathBuf>,
}

struct Sink {
    file: Option<File>,
    /// Kept in memory too, for the final summary and for tests.
    lines: Vec<serde_json::Value>,
    error: Option<io::Error>,
}

impl Journal {
    pub fn create(path: &Path) -> io::Result<Journal> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::commands::REPORT_MODE)
            .open(path)?;
        Ok(Journal {
            inner: Arc::new(Mutex::new(Sink {
                file: Some(file),
                lines: Vec::new(),
                error: None,
            })),
            path: Some(path.to_path_buf()),
        })
    }

    /// A journal that only keeps events in memory (engine tests).
    pub fn in_memory() -> Journal {
        Journal {
            inner: Arc::new(Mutex::new(Sink {
                file: None,
                lines: Vec::new(),
                error: None,
            })),
            path: None,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Append one event. A write error is remembered (and reported at the end of the run)
    /// rather than stopping the run: reverting faults matters more than the record.
    /// No secret of the run reaches the file: each value is written as `${secret.NAME}`.
    pub fn write<E: Serialize>(&self, event: &E) {
        let text = match serde_json::to_string(event) {
            Ok(text) => crate::secrets::redact(&text).into_owned(),
            Err(e) => {
                tracing::error!("cannot serialise journal event: {e}");
                return;
            }
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!("cannot read back a journal event: {e}");
                return;
            }
        };
        let mut sink = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = sink.file.as_mut() {
            let mut line = text.into_bytes();
            line.push(b'\n');
            if let Err(e) = file.write_all(&line).and_then(|()| file.flush())
                && sink.error.is_none()
            {
                sink.error = Some(e);
            }
        }
        sink.lines.push(value);
    }

    /// Every event written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .clone()
    }

    /// The first write error, if any.
    pub fn take_error(&self) -> Option<io::Error> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .take()
    }

    /// Make everything written so far durable.
    pub fn sync(&self) {
        let sink = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = sink.file.as_ref() {
            let _ = file.sync_all();
        }
    }
}
