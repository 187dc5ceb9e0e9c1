//! Reports: the JSON-lines journal written as the run goes, and the reports derived from
//! journals afterwards (JUnit XML for CI, HTML with a timeline for people).

pub mod event;
pub mod html;
pub mod journal;
pub mod junit;
pub mod view;

pub use view::{RunRecord, RunView};

pub use crate::units::{ms, serialize_ms};

/// Reports and journals describe a host and the probes' endpoints: readable by the owner and
/// their group only.
pub const REPORT_MODE: u32 = 0o640;

/// Write a report file with [`REPORT_MODE`] (replacing one of the same name).
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(REPORT_MODE)
        .open(path)?
        .write_all(contents)
}

/// One report format. Every format is rendered from the journals alone, so a report can be
/// made again later (`faultline report`), also for a run that crashed.
pub trait Reporter {
    /// What the file name ends with, e.g. `junit.xml`.
    fn extension(&self) -> &'static str;
    /// The whole file. `title` names the run (one experiment) or the game day.
    fn render(&self, title: &str, runs: &[RunView]) -> String;
}

/// Every report format, in the order they are written.
pub fn reporters() -> Vec<Box<dyn Reporter>> {
    vec![Box::new(junit::Junit), Box::new(html::Html)]
}
