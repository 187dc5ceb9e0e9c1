//! Reports: the JSON-lines journal written as the run goes, and the terminal summary.

pub mod journal;

use std::time::Duration;

/// Durations in reports are milliseconds as a float (`12.345`), the unit SREs read.
pub fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
