//! Experiment variables: a top-level `vars:` mapping of defaults, `${vars.NAME}` references
//! anywhere in the text, and `--var NAME=VALUE` overrides, so one file can serve several
//! ports, hosts or PID files.
//!
//! Substitution works on the text, before the strict parse, so a reference can stand for a
//! number too (`port: ${vars.port}`). It never adds or removes a line (values hold no
//! newline), so every later diagnostic keeps its line; columns are mapped back to the file
//! as written ([`ColumnMap`]). The environment is deliberately not read (no `${env.X}`): a
//! run depends only on its file and its command line.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::diagnostic::{nearest, suggest};
use super::parse::yaml_diagnostic;
use super::spanned::Sp;
use super::{Diagnostic, Pos};

/// `--var NAME=VALUE` values from the command line; a name given twice keeps the last value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    values: BTreeMap<String, String>,
}

/// A `--var` argument that is not `NAME=VALUE`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OverrideError {
    #[error("--var `{0}`: expected NAME=VALUE (for example `--var listen=127.0.0.1:9090`)")]
    NoEquals(String),
    #[error(
        "--var `{0}`: `{1}` is not a var name; names start with a letter or `_` and hold letters, digits, `_` and `-`"
    )]
    BadName(String, String),
    #[error("--var {0}: the value holds a newline; var values are single-line")]
    Newline(String),
    #[error(
        "--var {0}: the value holds `${{`; var values are literal text and cannot refer to vars"
    )]
    Reference(String),
}

impl Overrides {
    pub fn none() -> Overrides {
        Overrides::default()
    }

    /// Parse `NAME=VALUE` arguments (split at the first `=`, so values may contain `=`).
    pub fn from_assignments<S: AsRef<str>>(assignments: &[S]) -> Result<Overrides, OverrideError> {
        let mut overrides = Overrides::none();
        for assignment in assignments {
            let assignment = assignment.as_ref();
            let Some((name, value)) = assignment.split_once('=') else {
                return Err(OverrideError::NoEquals(assignment.to_string()));
            };
            if !is_var_name(name) {
                return Err(OverrideError::BadName(
                    assignment.to_string(),
                    name.to_string(),
                ));
            }
            if value.contains(['\n', '\r']) {
                return Err(OverrideError::Newline(name.to_string()));
            }
            if value.contains("${") {
                return Err(OverrideError::Reference(name.to_string()));
            }
            overrides.set(name, value);
        }
        Ok(overrides)
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// `[A-Za-z_][A-Za-z0-9_-]*`
pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const NAME_RULE: &str = "names start with a letter or `_` and hold letters, digits, `_` and `-`";

/// The file's text after substitution, the effective values, and how to map positions back.
#[derive(Debug)]
pub(super) struct Expansion {
    pub text: String,
    /// Every declared var with its effective value (the `--var` override, else the default).
    pub values: BTreeMap<String, String>,
    pub columns: ColumnMap,
}

/// Substitute `${vars.NAME}` in `text`. Every problem is reported at once, each at its place
/// in the file as written: undeclared references, malformed `${`, bad names or values in
/// `vars`, and `--var` overrides of undeclared vars.
pub(super) fn expand(text: &str, overrides: &Overrides) -> Result<Expansion, Vec<Diagnostic>> {
    let tokens = scan(text);
    let declared = read_declared(&mask(text, &tokens)).map_err(|error| vec![error])?;
    let mut problems = Vec::new();

    let mut values = BTreeMap::new();
    for (name, value) in &declared {
        if !is_var_name(&name.value) {
            problems.push(
                Diagnostic::at(
                    name.pos,
                    format!("`{}` is not a var name", name.value),
                    "invalid name",
                )
                .with_hint(NAME_RULE),
            );
        }
        if value.value.contains(MASK) {
            problems.push(
                Diagnostic::at(value.pos, "a var's value cannot contain `${`", "here")
                    .with_hint("var values are literal text and cannot refer to other vars; write the value out in full"),
            );
        } else if value.value.contains(['\n', '\r']) {
            problems.push(
                Diagnostic::at(
                    value.pos,
                    "a var's value cannot span lines",
                    "multi-line value",
                )
                .with_hint(
                    "var values are single-line, so substitution never moves a line of the file",
                ),
            );
        }
        values.insert(name.value.clone(), value.value.clone());
    }
    let names: Vec<String> = values.keys().cloned().collect();
    let declared_names = || names.iter().map(String::as_str);
    for (name, value) in &overrides.values {
        match values.get_mut(name) {
            Some(slot) => slot.clone_from(value),
            None => problems.push(Diagnostic {
                message: format!("--var {name}: this file declares no var `{name}`"),
                pos: None,
                label: String::new(),
                hint: Some(format!(
                    "{} (every --var must name a var under the file's `vars:`)",
                    suggest(name, declared_names(), "vars")
                )),
            }),
        }
    }

    problems.extend(
        tokens
            .iter()
            .filter_map(|token| reference_problem(token, &names)),
    );

    if !problems.is_empty() {
        problems.sort_by_key(|d| d.pos.map_or((u32::MAX, u32::MAX), |p| (p.line, p.column)));
        return Err(problems);
    }
    let (text, columns) = substitute(text, &tokens, &values);
    Ok(Expansion {
        text,
        values,
        columns,
    })
}

/// What is wrong with a `${` token, given the declared names; `None` when nothing is.
fn reference_problem(token: &Token, declared: &[String]) -> Option<Diagnostic> {
    Some(match &token.kind {
        TokenKind::Escape | TokenKind::Secret => return None,
        TokenKind::Reference(name) if declared.contains(name) => return None,
        TokenKind::Reference(name) => Diagnostic::at(
            token.pos,
            format!("unknown var `{name}`"),
            "not declared under `vars:`",
        )
        .with_hint(match nearest(name, declared.iter().map(String::as_str)) {
            Some(best) => format!("did you mean `{best}`?"),
            None => format!(
                "declare it at the top of the file: `vars: {{{name}: \"...\"}}`, then set it with `--var {name}=...` if needed"
            ),
        }),
        TokenKind::Malformed(inner) if inner.starts_with("vars.") => Diagnostic::at(
            token.pos,
            format!("`${{{inner}}}` does not name a var"),
            "invalid name",
        )
        .with_hint(NAME_RULE),
        TokenKind::Malformed(inner) => Diagnostic::at(
            token.pos,
            format!("`${{{inner}}}` is not a var reference"),
            "not `${vars.NAME}`",
        )
        .with_hint("write `${vars.NAME}` for a var (the environment is not read, so runs are reproducible), or `$${` for a literal `${`"),
        TokenKind::Unclosed => Diagnostic::at(token.pos, "`${` is not closed on its line", "unclosed")
            .with_hint("write `${vars.NAME}`, or `$${` for a literal `${`"),
    })
}

/// How columns moved on lines with substitutions, to point diagnostics of the substituted text
/// back into the file as written.
#[derive(Clone, Debug, Default)]
pub(crate) struct ColumnMap {
    /// In file order.
    substitutions: Vec<Substitution>,
}

#[derive(Clone, Debug)]
struct Substitution {
    line: u32,
    /// 1-based character columns and lengths, as written and after substitution.
    written_column: u32,
    written_len: u32,
    expanded_column: u32,
    expanded_len: u32,
    /// `Some((name, value))` for a reference; `None` for a `$${` escape.
    reference: Option<(String, String)>,
}

impl ColumnMap {
    /// The map of `text` substituted with `values` (the effective values an [`Expansion`]
    /// returned): what `compile` uses to point its diagnostics back into the file.
    pub(crate) fn of(text: &str, values: &BTreeMap<String, String>) -> ColumnMap {
        substitute(text, &scan(text), values).1
    }

    /// Move `diagnostic` from the substituted text back to the file as written. When the line
    /// had references at or after that column, the hint says what they stood for, since the
    /// message may quote a value the file does not show.
    pub(crate) fn restore(&self, mut diagnostic: Diagnostic) -> Diagnostic {
        let Some(pos) = diagnostic.pos else {
            return diagnostic;
        };
        let on_line: Vec<&Substitution> = self
            .substitutions
            .iter()
            .filter(|s| s.line == pos.line)
            .collect();
        if on_line.is_empty() {
            return diagnostic;
        }
        let mut column = i64::from(pos.column);
        for substitution in &on_line {
            if pos.column < substitution.expanded_column {
                break;
            }
            if pos.column < substitution.expanded_column + substitution.expanded_len {
                column = i64::from(substitution.written_column);
                break;
            }
            column += i64::from(substitution.written_len) - i64::from(substitution.expanded_len);
        }
        let column = u32::try_from(column.max(1)).unwrap_or(pos.column);
        diagnostic.pos = Some(Pos {
            line: pos.line,
            column,
        });
        let stood_for: Vec<String> = on_line
            .iter()
            .filter(|s| s.written_column >= column)
            .filter_map(|s| s.reference.as_ref())
            .map(|(name, value)| format!("`${{vars.{name}}}` is `{value}`"))
            .collect();
        if !stood_for.is_empty() {
            let note = format!("here {}", stood_for.join(", "));
            diagnostic.hint = Some(match diagnostic.hint.take() {
                Some(hint) => format!("{hint} ({note})"),
                None => note,
            });
        }
        diagnostic
    }
}

// ---------------------------------------------------------------------------------------------
// Scanning

#[derive(Clone, Debug, PartialEq)]
enum TokenKind {
    /// `$${` → `${`
    Escape,
    /// `${vars.NAME}`
    Reference(String),
    /// `${secret.NAME}`: left in the text, revealed in the probes only when a run starts.
    Secret,
    /// `${...}` that is not a var reference; holds what is between the braces.
    Malformed(String),
    /// `${` with no `}` before the end of its line.
    Unclosed,
}

#[derive(Clone, Debug)]
struct Token {
    /// Byte range in the text as written; never spans a line.
    start: usize,
    end: usize,
    pos: Pos,
    kind: TokenKind,
}

fn scan(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let (mut line, mut column) = (1u32, 1u32);
    let mut chars = text.char_indices();
    while let Some((start, c)) = chars.next() {
        let pos = Pos { line, column };
        match token_at(&text[start..]) {
            Some((len, kind)) => {
                let end = start + len;
                tokens.push(Token {
                    start,
                    end,
                    pos,
                    kind,
                });
                let token_chars = text[start..end].chars().count();
                for _ in 1..token_chars {
                    chars.next();
                }
                column += u32::try_from(token_chars).unwrap_or(u32::MAX);
            }
            None if c == '\n' => {
                line += 1;
                column = 1;
            }
            None => column += 1,
        }
    }
    tokens
}

/// The token `rest` starts with, and its length in bytes.
fn token_at(rest: &str) -> Option<(usize, TokenKind)> {
    if rest.starts_with("$${") {
        return Some((3, TokenKind::Escape));
    }
    let after = rest.strip_prefix("${")?;
    Some(match after.find(['}', '\n']) {
        Some(close) if after.as_bytes()[close] == b'}' => {
            let inner = &after[..close];
            let kind = match (inner.strip_prefix("vars."), inner.strip_prefix("secret.")) {
                (Some(name), _) if is_var_name(name) => TokenKind::Reference(name.to_string()),
                (_, Some(name)) if is_var_name(name) => TokenKind::Secret,
                _ => TokenKind::Malformed(inner.to_string()),
            };
            ("${".len() + close + "}".len(), kind)
        }
        _ => ("${".len(), TokenKind::Unclosed),
    })
}

/// A character YAML accepts anywhere a scalar may be (private use, so no file means it), put
/// in place of every token for the first read: `{` and `}` of an unquoted reference inside a
/// flow mapping would otherwise break the YAML before substitution could happen.
const MASK: char = '\u{E000}';

/// `text` with each token's characters replaced one for one, so lines and columns stay put.
fn mask(text: &str, tokens: &[Token]) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut copied = 0;
    for token in tokens {
        masked.push_str(&text[copied..token.start]);
        masked.extend(std::iter::repeat_n(
            MASK,
            text[token.start..token.end].chars().count(),
        ));
        copied = token.end;
    }
    masked.push_str(&text[copied..]);
    masked
}

/// A var name with where it was written; ordered by name so it can key a map.
struct Name(Sp<String>);

impl std::ops::Deref for Name {
    type Target = Sp<String>;
    fn deref(&self) -> &Sp<String> {
        &self.0
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value
    }
}
impl Eq for Name {}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.value.cmp(&other.0.value)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Sp::<String>::deserialize(deserializer).map(Name)
    }
}

/// Only the top-level `vars`; every other key is read by the strict parse afterwards.
#[derive(Deserialize)]
struct DeclaredOnly {
    #[serde(default)]
    vars: Option<BTreeMap<Name, Sp<String>>>,
}

/// The lenient first read. Numbers and booleans are read as their text (`port: 8080`).
fn read_declared(masked: &str) -> Result<BTreeMap<Name, Sp<String>>, Diagnostic> {
    serde_saphyr::from_str::<DeclaredOnly>(masked)
        .map(|declared| declared.vars.unwrap_or_default())
        .map_err(|error| yaml_diagnostic(&error))
}

fn substitute(
    text: &str,
    tokens: &[Token],
    values: &BTreeMap<String, String>,
) -> (String, ColumnMap) {
    let mut expanded = String::with_capacity(text.len());
    let mut columns = ColumnMap::default();
    let mut copied = 0;
    // Per line: how far columns after the last substitution have moved.
    let (mut line, mut shift) = (0u32, 0i64);
    for token in tokens {
        let (replacement, reference) = match &token.kind {
            TokenKind::Escape => ("${", None),
            TokenKind::Reference(name) => match values.get(name) {
                Some(value) => (value.as_str(), Some((name.clone(), value.clone()))),
                None => continue,
            },
            TokenKind::Malformed(_) | TokenKind::Unclosed | TokenKind::Secret => continue,
        };
        if token.pos.line != line {
            (line, shift) = (token.pos.line, 0);
        }
        let written_len = count_chars(&text[token.start..token.end]);
        let expanded_len = count_chars(replacement);
        let expanded_column = i64::from(token.pos.column) + shift;
        columns.substitutions.push(Substitution {
            line,
            written_column: token.pos.column,
            written_len,
            expanded_column: u32::try_from(expanded_column).unwrap_or(u32::MAX),
            expanded_len,
            reference,
        });
        shift += i64::from(expanded_len) - i64::from(written_len);
        expanded.push_str(&text[copied..token.start]);
        expanded.push_str(replacement);
        copied = token.end;
    }
    expanded.push_str(&text[copied..]);
    (expanded, columns)
}

fn count_chars(text: &str) -> u32 {
    u32::try_from(text.chars().count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_ok(text: &str, overrides: &Overrides) -> Expansion {
        expand(text, overrides).unwrap_or_else(|problems| panic!("{problems:#?}"))
    }

    fn problems(text: &str, overrides: &Overrides) -> Vec<Diagnostic> {
        match expand(text, overrides) {
            Ok(expansion) => panic!("should fail, expanded to:\n{}", expansion.text),
            Err(problems) => problems,
        }
    }

    fn overrides(assignments: &[&str]) -> Overrides {
        Overrides::from_assignments(assignments).unwrap()
    }

    #[test]
    fn references_are_replaced_and_lines_kept() {
        let text = "vars: {listen: \"127.0.0.1:8080\", port: 8080}\n\
                    probes:\n  web: {http: {url: http://${vars.listen}/health}}\n\
                    x: ${vars.port}\n";
        let expansion = expand_ok(text, &Overrides::none());
        assert_eq!(
            expansion.text,
            "vars: {listen: \"127.0.0.1:8080\", port: 8080}\n\
             probes:\n  web: {http: {url: http://127.0.0.1:8080/health}}\n\
             x: 8080\n"
        );
        assert_eq!(expansion.text.lines().count(), text.lines().count());
        assert_eq!(expansion.values["port"], "8080");
    }

    #[test]
    fn a_number_can_come_from_a_var() {
        #[derive(Deserialize)]
        struct Port {
            port: u16,
        }
        let text = "vars: {port: \"9090\"}\nport: ${vars.port}\n";
        let expansion = expand_ok(text, &Overrides::none());
        let parsed: Port = serde_saphyr::from_str(&expansion.text).unwrap();
        assert_eq!(parsed.port, 9090);
        let expansion = expand_ok(text, &overrides(&["port=7070"]));
        let parsed: Port = serde_saphyr::from_str(&expansion.text).unwrap();
        assert_eq!(parsed.port, 7070);
    }

    #[test]
    fn overrides_replace_defaults_and_are_the_effective_values() {
        let text = "vars: {listen: \"127.0.0.1:8080\"}\nurl: ${vars.listen}\n";
        let expansion = expand_ok(text, &overrides(&["listen=127.0.0.1:9=9"]));
        assert_eq!(
            expansion.text,
            "vars: {listen: \"127.0.0.1:8080\"}\nurl: 127.0.0.1:9=9\n"
        );
        assert_eq!(expansion.values["listen"], "127.0.0.1:9=9");
    }

    #[test]
    fn double_dollar_escapes_a_literal_reference() {
        let text = "vars: {a: x}\nargv: [echo, \"$${HOME} $${vars.a} ${vars.a} $$ $x\"]\n";
        let expansion = expand_ok(text, &Overrides::none());
        assert_eq!(
            expansion.text,
            "vars: {a: x}\nargv: [echo, \"${HOME} ${vars.a} x $$ $x\"]\n"
        );
    }

    #[test]
    fn an_undeclared_reference_is_reported_where_it_is_written() {
        let text = "vars: {listen: a}\n\nurl: \"http://é${vars.lisen}/\"\n";
        let found = problems(text, &Overrides::none());
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].message, "unknown var `lisen`");
        assert_eq!(
            found[0].pos,
            Some(Pos {
                line: 3,
                column: 15
            })
        );
        assert_eq!(found[0].hint.as_deref(), Some("did you mean `listen`?"));
    }

    #[test]
    fn every_undeclared_reference_and_malformed_dollar_is_reported() {
        let text = "a: ${vars.one}\nb: ${env.HOME}\nc: ${vars.9}\nd: ${vars.two\n";
        let found = problems(text, &Overrides::none());
        let messages: Vec<(&str, Pos)> = found
            .iter()
            .map(|d| (d.message.as_str(), d.pos.unwrap()))
            .collect();
        assert_eq!(
            messages,
            [
                ("unknown var `one`", Pos { line: 1, column: 4 }),
                (
                    "`${env.HOME}` is not a var reference",
                    Pos { line: 2, column: 4 }
                ),
                (
                    "`${vars.9}` does not name a var",
                    Pos { line: 3, column: 4 }
                ),
                ("`${` is not closed on its line", Pos { line: 4, column: 4 }),
            ]
        );
    }

    #[test]
    fn overriding_an_undeclared_var_is_refused_with_a_hint() {
        let text = "vars: {listen: a}\n";
        let found = problems(text, &overrides(&["lisen=b"]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pos, None);
        assert!(found[0].message.contains("declares no var `lisen`"));
        assert!(
            found[0]
                .hint
                .as_deref()
                .unwrap()
                .starts_with("did you mean `listen`?")
        );
    }

    #[test]
    fn var_values_are_single_line_literals() {
        let text = "vars:\n  a: |\n    one\n    two\n  b: \"x${vars.a}\"\n  9c: d\n";
        let found = problems(text, &Overrides::none());
        let messages: Vec<(&str, u32)> = found
            .iter()
            .map(|d| (d.message.as_str(), d.pos.unwrap().line))
            .collect();
        assert_eq!(
            messages,
            [
                ("a var's value cannot span lines", 3),
                ("a var's value cannot contain `${`", 5),
                ("`9c` is not a var name", 6),
            ]
        );
    }

    #[test]
    fn override_arguments_are_checked() {
        assert_eq!(
            Overrides::from_assignments(&["a=1", "a=2", "b="]).unwrap(),
            overrides(&["b=", "a=2"])
        );
        assert!(matches!(
            Overrides::from_assignments(&["listen"]),
            Err(OverrideError::NoEquals(_))
        ));
        assert!(matches!(
            Overrides::from_assignments(&["1a=x"]),
            Err(OverrideError::BadName(..))
        ));
        assert!(matches!(
            Overrides::from_assignments(&["a=x\ny"]),
            Err(OverrideError::Newline(_))
        ));
    }

    #[test]
    fn columns_map_back_to_the_file_as_written() {
        let text = "vars: {a: \"1234567\", b: \"\"}\nx: [${vars.a}, $${, ${vars.b}, bad]\n";
        let expansion = expand_ok(text, &Overrides::none());
        let line = expansion.text.lines().nth(1).unwrap();
        assert_eq!(line, "x: [1234567, ${, , bad]");
        let at = |column| {
            let diagnostic = Diagnostic::at(Pos { line: 2, column }, "m", "l");
            expansion.columns.restore(diagnostic)
        };
        let column_of = |needle: &str| u32::try_from(line.find(needle).unwrap()).unwrap() + 1;
        let written = text.lines().nth(1).unwrap();
        let written_column =
            |needle: &str| u32::try_from(written.find(needle).unwrap()).unwrap() + 1;
        // After every substitution: shifted by what they added or removed.
        assert_eq!(
            at(column_of("bad")).pos.unwrap().column,
            written_column("bad")
        );
        // Inside a value: the reference that produced it.
        let inside = at(column_of("4567"));
        assert_eq!(inside.pos.unwrap().column, written_column("${vars.a}"));
        assert_eq!(
            inside.hint.as_deref(),
            Some("here `${vars.a}` is `1234567`, `${vars.b}` is ``")
        );
        // Before any substitution, and on other lines: unchanged.
        assert_eq!(at(2).pos.unwrap().column, 2);
        let other = expansion
            .columns
            .restore(Diagnostic::at(Pos { line: 1, column: 9 }, "m", "l"));
        assert_eq!((other.pos.unwrap().column, other.hint), (9, None));
        // `compile` rebuilds the same map from the text and the effective values.
        let rebuilt = ColumnMap::of(text, &expansion.values);
        assert_eq!(
            rebuilt
                .restore(Diagnostic::at(
                    Pos {
                        line: 2,
                        column: column_of("bad")
                    },
                    "m",
                    "l"
                ))
                .pos,
            at(column_of("bad")).pos
        );
    }

    #[test]
    fn a_file_without_vars_is_unchanged() {
        let text = "apiVersion: faultline/v1\nmetadata: {name: x, description: costs $5}\n";
        let expansion = expand_ok(text, &Overrides::none());
        assert_eq!(expansion.text, text);
        assert!(expansion.values.is_empty());
    }
}
