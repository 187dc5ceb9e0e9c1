//! Stage one: YAML text → `Experiment`, with positions.
//!
//! `parse` stops at the first YAML or shape error (serde cannot go on after one), pointing at
//! it and saying how to fix it.

use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

use super::diagnostic::suggest;
use super::model::FaultKind;
use super::vars::{self, Overrides};
use super::{Diagnostic, Diagnostics, Experiment, Pos, Source};

/// Substitute vars (defaults, then `overrides`), then parse the result strictly. Diagnostics
/// point into the file as written: lines never move, and columns on a line with a
/// substitution are mapped back.
pub fn parse(source: &Source, overrides: &Overrides) -> Result<Experiment, Diagnostics> {
    let expansion =
        vars::expand(&source.text, overrides).map_err(|items| Diagnostics::new(source, items))?;
    let mut experiment =
        serde_saphyr::from_str_with_options::<Experiment>(&expansion.text, yaml_options())
            .map_err(|error| {
                let diagnostic = expansion.columns.restore(yaml_diagnostic(&error));
                Diagnostics::new(source, vec![diagnostic])
            })?;
    experiment.vars = expansion.values;
    Ok(experiment)
}

/// How experiment files are read: YAML 1.2 booleans only (`yes`, `no`, `on`, `off` are not
/// booleans: `lockout_protection: no` must not turn protection off by a YAML 1.1 reading).
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

pub(super) fn yaml_diagnostic(error: &YamlError) -> Diagnostic {
    let error = innermost(error);
    let pos = error
        .location()
        .map(|location| Pos {
            line: u32::try_from(location.line()).unwrap_or(u32::MAX),
            column: u32::try_from(location.column()).unwrap_or(u32::MAX),
        })
        .unwrap_or(Pos::UNKNOWN);
    match error {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => Diagnostic::at(pos, format!("unknown key `{field}`"), "not a key here")
            .with_hint(suggest(field, expected.iter().copied(), "keys")),
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let what = if expected.contains(&FaultKind::ProcessKill.as_str()) {
                "fault kind"
            } else {
                "value"
            };
            Diagnostic::at(
                pos,
                format!("unknown {what} `{variant}`"),
                format!("not a {what}"),
            )
            .with_hint(suggest(variant, expected.iter().copied(), "values"))
        }
        // serde-saphyr places a missing key at the last key of the mapping that lacks it.
        YamlError::SerdeMissingField { field, .. } => Diagnostic::at(
            pos,
            format!("missing key `{field}`"),
            format!("the mapping with this key needs `{field}`"),
        )
        .with_hint(format!(
            "add `{}` to this mapping",
            missing_key_example(field)
        )),
        YamlError::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().unwrap_or("?");
            Diagnostic::at(pos, format!("duplicate key `{key}`"), "given again here").with_hint(
                "a key may appear once per mapping (one would silently replace the other); keep the one you mean",
            )
        }
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => Diagnostic::at(
            pos,
            format!("expected {expected}, found {unexpected}"),
            "wrong type",
        )
        .with_hint(format!("write {expected} here")),
        YamlError::Eof { .. } => Diagnostic::at(pos, "the file ends before it says anything", "empty")
            .with_hint("an experiment starts with `apiVersion: faultline/v1`; `faultline schema` describes the rest"),
        YamlError::MultipleDocuments { .. } => Diagnostic::at(pos, "a second YAML document starts here", "`---` starts another document")
            .with_hint("one experiment per file: split it into files at each `---` and give them all to `faultline run` (a game day)"),
        YamlError::Message { msg, .. } => message_diagnostic(pos, strip_location(msg)),
        YamlError::InvalidScalar { ty, .. } => {
            let (what, example) = scalar_words(ty);
            Diagnostic::at(pos, format!("not {what}"), format!("expected {what}"))
                .with_hint(format!("write {what}, such as `{example}`"))
        }
        YamlError::Unexpected { expected, .. } => {
            let (what, example) = match *expected {
                "sequence start" => ("a list", "[kill-worker]"),
                "mapping start" => ("a mapping", "{key: value}"),
                other => (other, "..."),
            };
            Diagnostic::at(pos, format!("expected {what} here"), format!("not {what}"))
                .with_hint(format!(
                    "write {what}, such as `{example}` (one item still goes in brackets)"
                ))
        }
        YamlError::Budget { breach, .. } => Diagnostic::at(
            pos,
            format!("the file is too big or too deeply nested to be an experiment ({})", budget_words(breach)),
            "limit reached here",
        )
        .with_hint("an experiment is a few hundred lines; is this the right file? (aliases that expand many times count too)"),
        YamlError::NonFiniteFloat { value, .. } => Diagnostic::at(
            pos,
            format!("`{value}` is not a finite number"),
            "not finite",
        )
        .with_hint(
            "write a finite number such as `0.5`: NaN passes no comparison, and an infinite \
             bound is no bound (leave the key out instead)",
        ),
        other => {
            let text = UserMessageFormatter.format_message(other);
            let message = strip_location(&text).to_string();
            let hint = if message.contains("tab") {
                "YAML indents with spaces only; replace the tabs at the start of the line"
            } else {
                "the YAML itself is malformed here; `faultline schema` describes the format"
            };
            Diagnostic::at(pos, message, "").with_hint(hint)
        }
    }
}

fn innermost(mut error: &YamlError) -> &YamlError {
    while let YamlError::WithSnippet { error: inner, .. }
    | YamlError::AliasError { error: inner, .. } = error
    {
        error = inner;
    }
    error
}

/// What a target type expects, in words, with an example.
fn scalar_words(ty: &str) -> (String, &'static str) {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "usize" => {
            let max = match ty {
                "u8" => u64::from(u8::MAX),
                "u16" => u64::from(u16::MAX),
                "u32" => u64::from(u32::MAX),
                _ => u64::MAX,
            };
            (format!("a whole number from 0 to {max}"), "3")
        }
        "i8" | "i16" | "i32" | "i64" | "isize" => ("a whole number".into(), "3"),
        "f32" | "f64" => ("a number".into(), "0.5"),
        "bool" => ("true or false".into(), "true"),
        "char" => ("one character".into(), "x"),
        other => (format!("a {other}"), "..."),
    }
}

fn budget_words(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    match breach {
        BudgetBreach::Depth { depth } => format!("nested {depth} levels deep"),
        BudgetBreach::Nodes { nodes } => format!("more than {nodes} values"),
        BudgetBreach::Events { events } => format!("more than {events} parser events"),
        BudgetBreach::Aliases { aliases } => format!("{aliases} aliases"),
        BudgetBreach::Anchors { anchors } => format!("{anchors} anchors"),
        _ => "over a size limit".into(),
    }
}

/// Names for serde's untagged enums, whose own message says only "did not match any variant".
fn untagged_words(message: &str) -> Option<(&'static str, &'static str)> {
    const KNOWN: [(&str, &str, &str); 6] = [
        (
            "CoresSpec",
            "not a core selection",
            "write a number of cores (`2`) or a list of core numbers (`[0, 1]`)",
        ),
        (
            "PortSpec",
            "not a port",
            "write a port (`5432`) or a range in quotes (`\"8000-8100\"`)",
        ),
        (
            "PercentSpec",
            "not a percentage",
            "write a percentage (`30%`) or a number from 0 to 100",
        ),
        (
            "StatusSet",
            "not an HTTP status",
            "write a code (`200`), a range (`\"200-299\"`) or a list of them (`[200, \"300-399\"]`)",
        ),
        (
            "StatusItem",
            "not an HTTP status",
            "write a code (`200`), a range (`\"200-299\"`) or a list of them (`[200, \"300-399\"]`)",
        ),
        (
            "SignalSpec",
            "not a signal",
            "write a name (`SIGTERM`, `TERM`) or a number (`15`)",
        ),
    ];
    let name = message.strip_prefix("data did not match any variant of untagged enum ")?;
    KNOWN
        .iter()
        .find(|(n, _, _)| *n == name.trim())
        .map(|(_, what, how)| (*what, *how))
}

/// Custom messages from our own `Deserialize` impls read "what is wrong; how to write it".
fn message_diagnostic(pos: Pos, message: &str) -> Diagnostic {
    if let Some((what, how)) = untagged_words(message) {
        return Diagnostic::at(pos, what, "not this").with_hint(how);
    }
    match message.split_once("; ") {
        Some((what, how)) => Diagnostic::at(pos, what, "invalid value").with_hint(how),
        None => Diagnostic::at(pos, message, "invalid value"),
    }
}

/// serde-saphyr appends " at line N, column M"; we print positions ourselves.
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => &message[..i],
        _ => message,
    }
}

fn missing_key_example(field: &str) -> String {
    let example = match field {
        "apiVersion" => "faultline/v1",
        "metadata" => "{name: my-experiment}",
        "name" => "my-experiment",
        "max_duration" => "5m",
        "id" => "kill-worker",
        "kind" => "process-kill",
        "target" => "worker",
        "url" => "\"http://127.0.0.1:8080/health\"",
        "address" => "\"127.0.0.1:8080\"",
        "argv" => "[/bin/true]",
        "probes" => "[health]",
        "window" => "30s",
        "percentile" => "99",
        "below" => "300ms",
        "path" => "$.status",
        "equals" => "ok",
        _ => "...",
    };
    format!("{field}: {example}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_suffixes_are_stripped() {
        assert_eq!(strip_location("bad thing at line 3, column 7"), "bad thing");
        assert_eq!(strip_location("look at line up"), "look at line up");
    }
}
