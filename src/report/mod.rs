//! Reports: the JSON-lines journal written as the run goes, and the reports derived from
//! journals afterwards (JUnit XML for CI, HTML with a timeline for people).

pub mod html;
pub mod journal;
pub mod junit;
pub mod view;

use std::time::Duration;

pub use view::{RunRecord, RunView};

/// Durations in reports are milliseconds as a float (`12.345`), the unit SREs read.
pub fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
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
