//! Durations as people write them: `500ms`, `30s`, `5m`, `1h 30m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);

    pub fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }

    pub fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "0" {
            return Ok(Dur::ZERO);
        }
        if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
            return Err(format!(
                "`{text}` has no unit; write it with one, for example `{text}s` or `{text}ms`"
            ));
        }
        humantime::parse_duration(text).map(Dur).map_err(|e| {
            let why = match e {
                _ if text.starts_with('-') => "a duration is never negative".to_string(),
                humantime::DurationError::NumberOverflow => {
                    "it is longer than any clock counts".to_string()
                }
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!("`{unit}` is not a unit")
                }
                _ => "it is not a number with a unit".to_string(),
            };
            format!(
                "`{text}` is not a duration: {why}; write it like `500ms`, `30s`, `5m` or `1h 30m` (units: ms, s, m, h, d)"
            )
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit: `500ms`, `30s`, `5m`, `1h 30m`.",
            "pattern": "^\\s*(0|([0-9]+\\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d)\\s*)+)$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!("500ms".parse::<Dur>().unwrap(), Dur::from_millis(500));
        assert_eq!("30s".parse::<Dur>().unwrap(), Dur::from_secs(30));
        assert_eq!("5m".parse::<Dur>().unwrap(), Dur::from_secs(300));
        assert_eq!("1m 30s".parse::<Dur>().unwrap(), Dur::from_secs(90));
    }

    #[test]
    fn rejects_bare_numbers_with_a_hint() {
        let err = "30".parse::<Dur>().unwrap_err();
        assert!(err.contains("30s"), "{err}");
    }

    #[test]
    fn displays_round_trip() {
        for text in ["500ms", "30s", "5m", "1h 30m"] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
    }
}
