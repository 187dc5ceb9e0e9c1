//! The journal: one JSON event per line, written and flushed as the run goes, so a crash
//! still leaves a usable record of everything up to the crash.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A shared, append-only JSON-lines writer. Cloning shares the file.
///
/// Events are not kept in memory: the file is the record, read back when the run ends, so a
/// day-long run holds no more than a short one. Only an event that could not be written (the
/// journal's filesystem filled by a fault) is kept, in its place, so reports stay complete.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Sink>>,
    path: Option<PathBuf>,
}

struct Sink {
    file: Option<File>,
    /// Where this journal's lines begin in the file (`create` appends to what is there).
    start: u64,
    /// Bytes in the file that hold whole lines.
    length: u64,
    /// Lines written to the file.
    written: usize,
    /// Events the file does not hold, each after that many written lines: every event of an
    /// in-memory journal, and those whose write failed.
    kept: Vec<(usize, serde_json::Value)>,
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
            .mode(super::REPORT_MODE)
            .open(path)?;
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Journal {
            inner: Arc::new(Mutex::new(Sink {
                file: Some(file),
                start: length,
                length,
                written: 0,
                kept: Vec::new(),
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
                start: 0,
                length: 0,
                written: 0,
                kept: Vec::new(),
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
        let mut sink = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let sink = &mut *sink;
        if let Some(file) = sink.file.as_mut() {
            let mut line = text.into_bytes();
            line.push(b'\n');
            match file.write_all(&line).and_then(|()| file.flush()) {
                Ok(()) => {
                    sink.length += line.len() as u64;
                    sink.written += 1;
                }
                Err(e) => {
                    // A line cut short would spoil the next one written after it.
                    let _ = file.set_len(sink.length);
                    if sink.error.is_none() {
                        sink.error = Some(e);
                    }
                    line.pop();
                    match serde_json::from_slice(&line) {
                        Ok(value) => sink.kept.push((sink.written, value)),
                        Err(e) => tracing::error!("cannot read back a journal event: {e}"),
                    }
                }
            }
        } else {
            match serde_json::from_str(&text) {
                Ok(value) => sink.kept.push((sink.written, value)),
                Err(e) => tracing::error!("cannot read back a journal event: {e}"),
            }
        }
    }

    /// Every event written so far, in order: read back from the file (streamed, whatever its
    /// size), with those it could not take in their places.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        self.replay(|event| events.push(event));
        events
    }

    /// Hand each event written so far to `each`, in order, one at a time: a report is built
    /// from a day-long journal without holding it.
    pub fn replay(&self, mut each: impl FnMut(serde_json::Value)) {
        use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
        let sink = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = sink.kept.iter().peekable();
        if let (Some(path), 1..) = (&self.path, sink.written) {
            let lines = File::open(path).and_then(|mut file| {
                file.seek(SeekFrom::Start(sink.start))?;
                Ok(BufReader::new(file.take(sink.length - sink.start)))
            });
            match lines {
                Ok(reader) => {
                    for (n, line) in reader.split(b'\n').enumerate() {
                        let Ok(line) = line else { break };
                        while let Some((_, value)) = kept.next_if(|(after, _)| *after <= n) {
                            each(value.clone());
                        }
                        if let Ok(value) = serde_json::from_slice(&line) {
                            each(value);
                        }
                    }
                }
                Err(e) => tracing::error!("cannot read the journal {} back: {e}", path.display()),
            }
        }
        for (_, value) in kept {
            each(value.clone());
        }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kept(journal: &Journal) -> usize {
        journal.inner.lock().unwrap().kept.len()
    }

    #[test]
    fn a_journal_on_disk_keeps_nothing_in_memory_and_reads_its_own_lines_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        // An earlier journal in the same file is not this one's.
        std::fs::write(&path, "{\"event\":\"older\"}\n").unwrap();
        let journal = Journal::create(&path).unwrap();
        for n in 0..3 {
            journal.write(&json!({"event": "sample", "n": n}));
        }
        assert_eq!(kept(&journal), 0);
        let events = journal.events();
        let ns: Vec<_> = events.iter().map(|e| e["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [0, 1, 2]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
        assert!(journal.take_error().is_none());
    }

    #[test]
    fn events_the_file_would_not_take_are_kept_in_their_places() {
        // /dev/full refuses every write with ENOSPC, as a filled filesystem does.
        let journal = Journal::create(Path::new("/dev/full")).unwrap();
        journal.write(&json!({"event": "phase", "phase": "t0"}));
        journal.write(&json!({"event": "outcome"}));
        let events = journal.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["event"], "outcome");
        let error = journal.take_error().expect("the write error is remembered");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));

        // Lines that did reach the file and events that did not, interleaved as written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        std::fs::write(&path, "{\"n\":0}\n{\"n\":2}\n").unwrap();
        let journal = Journal {
            inner: Arc::new(Mutex::new(Sink {
                file: None,
                start: 0,
                length: 16,
                written: 2,
                kept: vec![(1, json!({"n": 1})), (2, json!({"n": 3}))],
                error: None,
            })),
            path: Some(path),
        };
        let ns: Vec<_> = journal
            .events()
            .iter()
            .map(|e| e["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [0, 1, 2, 3]);
    }
}
