//! What every fault kind's parameter checks share: a place to report problems, and the
//! helpers that read sizes, shares, required keys and paths with the same wording for all.

use std::path::PathBuf;
use std::time::Duration;

use super::diagnostic::suggest;
use super::model::{FaultDef, PercentSpec};
use super::{Diagnostic, Sp};

/// The checks of one fault's `params`, reporting into the compile step's problems (every
/// problem is reported, not only the first).
pub struct ParamChecks<'a> {
    problems: &'a mut Vec<Diagnostic>,
}

impl<'a> ParamChecks<'a> {
    pub fn new(problems: &'a mut Vec<Diagnostic>) -> Self {
        ParamChecks { problems }
    }

    pub fn report(&mut self, diagnostic: Diagnostic) {
        self.problems.push(diagnostic);
    }

    /// Pressure and limit faults are removed when their `duration` is over: they need one.
    pub fn needs_duration(&mut self, fault: &Sp<FaultDef>) {
        if fault.duration.is_none() {
            self.report(
                Diagnostic::at(
                    fault.kind.pos,
                    format!(
                        "fault `{}` ({}) has no `duration`",
                        fault.id.value,
                        fault.kind.as_str()
                    ),
                    "needs a duration",
                )
                .with_hint("add `duration: 30s`: the pressure or limit is removed when it is over"),
            );
        }
    }

    /// `params.mode`, one of `allowed` (the first is the default).
    pub fn mode(&mut self, fault: &Sp<FaultDef>, allowed: &[&'static str]) -> Option<&'static str> {
        let Some(mode) = &fault.params.mode else {
            return Some(allowed[0]);
        };
        match allowed.iter().find(|m| **m == mode.as_str()) {
            Some(m) => Some(m),
            None => {
                self.report(
                    Diagnostic::at(
                        mode.pos,
                        format!("`{}` is not a mode of {}", mode.value, fault.kind.as_str()),
                        "unknown mode",
                    )
                    .with_hint(suggest(mode, allowed.iter().copied(), "modes")),
                );
                None
            }
        }
    }

    /// `params.ramp` (zero when not given), reported when it is longer than the fault lasts.
    pub fn ramp(&mut self, fault: &Sp<FaultDef>) -> Duration {
        let p = &fault.params;
        if let (Some(r), Some(d)) = (&p.ramp, &fault.duration)
            && r.get() > d.get()
        {
            self.report(
                Diagnostic::at(
                    r.pos,
                    format!(
                        "ramp {} is longer than the fault's duration {}",
                        r.value, d.value
                    ),
                    "never reaches the target",
                )
                .with_hint("make the ramp shorter than the duration"),
            );
        }
        p.ramp.as_ref().map_or(Duration::ZERO, |r| r.get())
    }

    pub fn size(&mut self, value: &Sp<String>, what: &str) -> Option<u64> {
        match parse_bytes(value.trim_end_matches("/s")) {
            Ok(0) => {
                self.report(
                    Diagnostic::at(value.pos, format!("{what} must be more than 0"), "zero")
                        .with_hint("write it like `512MiB`"),
                );
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.report(
                    Diagnostic::at(value.pos, e, "not a size")
                        .with_hint(format!("{what} is a size like `64KiB`, `512MiB` or `2GB`")),
                );
                None
            }
        }
    }

    /// A percentage more than 0 and at most `max`, in percent.
    pub fn percent(&mut self, spec: &Sp<PercentSpec>, max: f64) -> Option<f64> {
        match percent_value(spec) {
            Ok(p) if p > 0.0 && p <= max => Some(p),
            Ok(p) => {
                self.report(
                    Diagnostic::at(spec.pos, format!("{p}% is out of range"), "out of range")
                        .with_hint(format!("give more than 0% and at most {max}%")),
                );
                None
            }
            Err(e) => {
                self.report(
                    Diagnostic::at(spec.pos, e, "not a percentage")
                        .with_hint("write it like `60%`"),
                );
                None
            }
        }
    }

    /// A percentage more than 0 and at most `max`, as a fraction (`60%` → 0.6).
    pub fn share(&mut self, spec: &Sp<PercentSpec>, max: f64) -> Option<f64> {
        self.percent(spec, max).map(|p| p / 100.0)
    }

    pub fn required<'p, T>(
        &mut self,
        fault: &Sp<FaultDef>,
        key: &str,
        value: &'p Option<T>,
        example: &str,
    ) -> Option<&'p T> {
        if value.is_none() {
            self.report(
                Diagnostic::at(
                    fault.kind.pos,
                    format!(
                        "fault `{}` ({}) needs `params.{key}`",
                        fault.id.value,
                        fault.kind.as_str()
                    ),
                    format!("no {key}"),
                )
                .with_hint(format!("add `params: {{{key}: {example}}}`")),
            );
        }
        value.as_ref()
    }

    pub fn directory(&mut self, path: &Sp<String>) -> PathBuf {
        if !path.starts_with('/') {
            self.report(
                Diagnostic::at(path.pos, format!("`{}` is not an absolute path", path.value), "relative path")
                    .with_hint("write the full path of a directory on the filesystem to act on, e.g. `/var/lib/app`"),
            );
        }
        PathBuf::from(&path.value)
    }
}

/// `32kb`, `64kib`, `1mb`, `1500b` → bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let factor: u64 = match unit.trim() {
        "b" | "" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" | "t" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size; write it like `64KiB`, `512MiB` or `2GB`"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write it like `64KiB`, `512MiB` or `2GB`"))?;
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A percentage as written, 0 or more (range checks are the caller's).
pub fn percent_value(spec: &PercentSpec) -> Result<f64, String> {
    match spec {
        PercentSpec::Number(n) if *n >= 0.0 => Ok(*n),
        PercentSpec::Number(n) => Err(format!("{n}% is negative")),
        PercentSpec::Text(text) => text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|n| *n >= 0.0)
            .ok_or_else(|| format!("`{text}` is not a percentage; write it like `30%`")),
    }
}

/// A share from 0% to 100%, as a fraction (`30%` → 0.3).
pub fn fraction(spec: &PercentSpec) -> Result<f64, String> {
    let value = match spec {
        PercentSpec::Number(n) => *n,
        PercentSpec::Text(text) => text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("`{text}` is not a percentage; write it like `30%`"))?,
    };
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{value}% is not between 0% and 100%"));
    }
    Ok(value / 100.0)
}

/// `10mbit`, `500kbit`, `1gbit`, `2000bit` (optionally `/s`) → bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix("/s").unwrap_or(&lower);
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let factor: f64 = match unit.trim() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => {
            return Err(format!(
                "`{text}` is not a rate; write it in bits per second like `10mbit`, `500kbit` or `1gbit`"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a rate; write it like `10mbit`"))?;
    let bits = number * factor;
    if !(bits >= 8.0 && bits.is_finite()) {
        return Err(format!("`{text}` is too small a rate"));
    }
    Ok(bits.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_bits_per_second() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1.5Mbit/s").unwrap(), 1_500_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert!(
            parse_rate("10mb").is_err(),
            "bytes are not a rate unit here"
        );
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(parse_bytes("32kb").unwrap(), 32_000);
        assert_eq!(parse_bytes("64kib").unwrap(), 65_536);
        assert_eq!(fraction(&PercentSpec::Text("30%".into())).unwrap(), 0.3);
        assert_eq!(fraction(&PercentSpec::Number(5.0)).unwrap(), 0.05);
        assert!(fraction(&PercentSpec::Text("30".into())).is_err());
        assert!(fraction(&PercentSpec::Number(130.0)).is_err());
    }
}
