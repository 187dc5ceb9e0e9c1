//! What the operator sees while a run goes: one line per event, and (on a terminal) a live
//! status line at the bottom that is redrawn in place.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use tokio::time::Instant;

pub struct Ui {
    start: Instant,
    quiet: bool,
    live: bool,
    status: Mutex<String>,
}

impl Ui {
    pub fn new(start: Instant, quiet: bool) -> Ui {
        Ui {
            start,
            quiet,
            live: !quiet && std::io::stderr().is_terminal(),
            status: Mutex::new(String::new()),
        }
    }

    pub fn silent(start: Instant) -> Ui {
        Ui::new(start, true)
    }

    fn stamp(&self) -> String {
        format!("[{:>7.2}s]", self.start.elapsed().as_secs_f64())
    }

    /// One event line.
    pub fn line(&self, message: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[2K");
        }
        let message = crate::secrets::redact(message.as_ref());
        let _ = writeln!(err, "{} {message}", self.stamp());
        if self.live {
            let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            let _ = write!(err, "{status}");
        }
    }

    /// Replace the live status line (terminal only).
    pub fn status(&self, text: String) {
        if !self.live {
            return;
        }
        let line = format!("{} {}", self.stamp(), crate::secrets::redact(&text));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = line;
    }

    pub fn clear_status(&self) {
        if !self.live {
            return;
        }
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
}
