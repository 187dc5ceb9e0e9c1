//! Small figures shared by every layer: a percentile, a byte count for people, a name that
//! is safe in a file name.

/// The nearest-rank percentile (0-100) of `values`: the smallest value with at least
/// `percentile`% of the values at or below it. Reorders `values`; `None` when it is empty.
pub fn nearest_rank<T: Copy + PartialOrd>(values: &mut [T], percentile: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    // Multiply before dividing: 99.9 / 100.0 * 1000.0 is not exactly 999 in floating point.
    let rank = (percentile * values.len() as f64 / 100.0).ceil() as usize;
    let index = rank.clamp(1, values.len()) - 1;
    let (_, value, _) = values.select_nth_unstable_by(index, |a, b| {
        a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal)
    });
    Some(*value)
}

/// `1.5 GiB`, `64 MiB`, `512 B`.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `name` with everything but letters, digits, `-` and `_` replaced by `_`: for file names
/// and ids made from what a user wrote.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Durations in reports are milliseconds as a float (`12.345`), the unit SREs read.
pub fn serialize_ms<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

/// Reads what [`serialize_ms`] wrote.
pub fn deserialize_ms<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let ms = <f64 as serde::Deserialize>::deserialize(d)?;
    std::time::Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
}

/// Milliseconds, rounded to the microsecond.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_agrees_at_the_edges() {
        let mut thousand: Vec<u32> = (1..=1000).collect();
        assert_eq!(nearest_rank(&mut thousand, 99.9), Some(999));
        assert_eq!(nearest_rank(&mut thousand, 100.0), Some(1000));
        assert_eq!(nearest_rank(&mut thousand, 0.0), Some(1));
        let mut hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&mut hundred, 99.0), Some(99.0));
        assert_eq!(nearest_rank::<u32>(&mut [], 50.0), None);
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(file_safe("a b/c..d"), "a_b_c__d");
    }
}
