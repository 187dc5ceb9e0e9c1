//! Formatting the kinds' summary lines share: durations as people write them, a ramp.

use std::time::Duration;

/// A duration as people write it (`1m 30s`), `0s` for none.
pub fn dur(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// `, ramp 5s`, or nothing for no ramp.
pub fn ramp(r: Duration) -> String {
    if r.is_zero() {
        String::new()
    } else {
        format!(", ramp {}", dur(r))
    }
}
