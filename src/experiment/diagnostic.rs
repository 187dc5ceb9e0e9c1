//! Errors that point into the experiment file: file, line, column, the line itself, and a
//! hint ("did you mean `duration`?"). Rendered with annotate-snippets.

use std::borrow::Cow;
use std::path::Path;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

use super::Source;
use super::spanned::Pos;

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where in the file; `None` for whole-file problems (unreadable file).
    pub pos: Option<Pos>,
    /// Short text under the caret.
    pub label: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `pos`; an unknown position (a value built in code) renders without a snippet.
    pub fn at(pos: Pos, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            pos: pos.is_known().then_some(pos),
            label: label.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }
}

/// All the problems found in one file.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub source: Option<Source>,
    pub path: std::path::PathBuf,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(source: &Source, items: Vec<Diagnostic>) -> Diagnostics {
        Diagnostics {
            source: Some(source.clone()),
            path: source.path.clone(),
            items,
        }
    }

    pub fn io(path: &Path, error: &std::io::Error) -> Diagnostics {
        Diagnostics::whole_file(
            path,
            format!("cannot read {}: {error}", path.display()),
            None,
        )
    }

    /// The file could not be read as an experiment at all.
    pub fn unreadable(path: &Path, error: &crate::sys::file::ReadError) -> Diagnostics {
        use crate::sys::file::ReadError;
        let hint = match error {
            ReadError::NotRegular { .. } => Some(
                "give the path of an experiment file (a FIFO or device would stall or flood the run)",
            ),
            ReadError::TooLarge { .. } => {
                Some("is this the right file? split a game day into several files")
            }
            ReadError::NotText { .. } => Some("save the file as UTF-8"),
            ReadError::Io { .. } => None,
        };
        Diagnostics::whole_file(path, error.to_string(), hint)
    }

    fn whole_file(path: &Path, message: String, hint: Option<&str>) -> Diagnostics {
        Diagnostics {
            source: None,
            path: path.to_path_buf(),
            items: vec![Diagnostic {
                message,
                pos: None,
                label: String::new(),
                hint: hint.map(str::to_string),
            }],
        }
    }

    /// How many problems were found.
    pub fn count(&self) -> usize {
        self.items.len()
    }

    /// Human-readable report of every item: `error: ...` then ` --> file:line:col`, the line
    /// with a caret, and `= help: ...`, then a one-line summary. Deterministic
    /// (snapshot-tested); colour only when asked.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let path = self.path.display().to_string();
        let mut out = String::new();
        for item in &self.items {
            // What the file holds is quoted in messages: its invisible characters (a line
            // separator, an escape sequence) must show, and never act on the terminal.
            let mut group = Group::with_title(Level::ERROR.primary_title(visible(&item.message)));
            let shown = self.shown_line(item);
            if let Some(snippet) = self.snippet(item, &path, shown.as_ref()) {
                group = group.element(snippet);
            }
            if let Some(hint) = &item.hint {
                group = group.element(Level::HELP.message(visible(hint)));
            }
            out.push_str(&renderer.render(&[group]));
            out.push_str("\n\n");
        }
        let summary = match self.items.len() {
            1 => format!("1 problem in {path}; nothing was run"),
            n => format!("{n} problems in {path}; nothing was run"),
        };
        out.push_str(&renderer.render(&[Group::with_title(Level::ERROR.primary_title(summary))]));
        out.push('\n');
        out
    }

    /// The offending line as shown (invisible characters written out) and the span of the
    /// value in it, when the position and text are known.
    fn shown_line(&self, item: &Diagnostic) -> Option<(String, std::ops::Range<usize>)> {
        let pos = item.pos?;
        let text = &self.source.as_ref()?.text;
        let line = yaml_lines(text).nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
        let start = byte_offset(line, pos.column);
        // At least the character under the caret, ending on a character boundary.
        let first = line[start..].chars().next().map_or(0, char::len_utf8);
        let end = token_end(line, start).max(start + first);
        Some(shown_with_span(line, start..end))
    }

    fn snippet<'a>(
        &'a self,
        item: &'a Diagnostic,
        path: &str,
        shown: Option<&'a (String, std::ops::Range<usize>)>,
    ) -> Option<Snippet<'a, annotate_snippets::Annotation<'a>>> {
        let (line, span) = shown?;
        let pos = item.pos?;
        let mut annotation = AnnotationKind::Primary.span(span.clone());
        if !item.label.is_empty() {
            annotation = annotation.label(visible(&item.label));
        }
        Some(
            Snippet::source(line.as_str())
                .line_start(pos.line as usize)
                .path(path.to_string())
                .annotation(annotation),
        )
    }
}

/// The lines of a file as YAML counts them: `\n`, `\r\n` and a lone `\r` end a line.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\n', '\r']) {
            Some(i) => {
                let skip = if current[i..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[i + skip..]).filter(|r| !r.is_empty());
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `line` as shown, and `span` (byte offsets into `line`) moved to match it.
fn shown_with_span(line: &str, span: std::ops::Range<usize>) -> (String, std::ops::Range<usize>) {
    let mut shown = String::with_capacity(line.len());
    let (mut start, mut end) = (None, None);
    for (i, c) in line.char_indices() {
        if i == span.start {
            start = Some(shown.len());
        }
        if i == span.end {
            end = Some(shown.len());
        }
        push_visible(&mut shown, c);
    }
    let start = start.unwrap_or(shown.len());
    let end = end.unwrap_or(shown.len()).max(start);
    (shown, start..end)
}

/// True for characters a terminal shows as nothing, as a break or as a change of direction:
/// control characters (but tab), line and paragraph separators, zero-width characters,
/// bidirectional controls, the byte order mark.
pub fn is_invisible(c: char) -> bool {
    c != '\t'
        && (c.is_control()
            || matches!(
                c,
                '\u{2028}'
                    | '\u{2029}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2060}'..='\u{2064}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{FEFF}'
            ))
}

fn push_visible(out: &mut String, c: char) {
    if is_invisible(c) {
        out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
    } else {
        out.push(c);
    }
}

/// `text` with every invisible character written out (`\u{2028}`).
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_invisible) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_visible(&mut out, c);
    }
    Cow::Owned(out)
}

/// What an invisible character is, for a hint.
pub fn describe_invisible(c: char) -> String {
    let name = match c {
        '\u{0}' => "NUL",
        '\u{1B}' => "ESCAPE, which starts terminal control sequences",
        '\n' => "LINE FEED, a line break",
        '\r' => "CARRIAGE RETURN",
        '\u{85}' => "NEXT LINE",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{FEFF}' => "BYTE ORDER MARK",
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => "a bidirectional text control",
        _ => "a control character",
    };
    format!("U+{:04X} {name}", u32::from(c))
}

impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// Byte offset of a 1-based character column (columns count characters, strings index bytes).
fn byte_offset(line: &str, column: u32) -> usize {
    let skip = (column.max(1) - 1) as usize;
    line.char_indices().nth(skip).map_or(line.len(), |(i, _)| i)
}

/// Where the YAML token starting at `start` ends on its line: a quoted string to its closing
/// quote, a flow collection to its matching bracket, a plain scalar up to the next flow
/// separator, `: ` or comment.
fn token_end(line: &str, start: usize) -> usize {
    let rest = &line[start..];
    // A `${vars.x}` reference is one token, closing brace included.
    if rest.starts_with("${")
        && let Some(close) = rest.find('}')
    {
        return start + close + 1;
    }
    let mut chars = rest.char_indices();
    let Some((_, first)) = chars.next() else {
        return start;
    };
    match first {
        '"' | '\'' => {
            let mut escaped = false;
            for (i, c) in chars {
                if first == '"' && c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                if c == first && !escaped {
                    return start + i + c.len_utf8();
                }
                escaped = false;
            }
            line.len()
        }
        '[' | '{' => {
            let mut depth = 0usize;
            let mut quote: Option<char> = None;
            for (i, c) in rest.char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '[' | '{') => depth += 1,
                    (None, ']' | '}') => {
                        depth -= 1;
                        if depth == 0 {
                            return start + i + 1;
                        }
                    }
                    _ => {}
                }
            }
            line.len()
        }
        _ => {
            let bytes = rest.as_bytes();
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                let next_is_space = bytes.get(i + 1).is_none_or(|b| *b == b' ');
                let stops = matches!(c, ',' | ']' | '}')
                    || (c == ':' && next_is_space)
                    || (c == '#' && i > 0 && bytes[i - 1] == b' ');
                if stops {
                    end = i;
                    break;
                }
            }
            start + rest[..end].trim_end().len()
        }
    }
}

// Names: "did you mean"

/// Edits between two names, where swapping two neighbouring letters (`dealy`) is one edit
/// like a wrong, missing or extra letter: the optimal-string-alignment distance.
fn edit_distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (word.len().max(candidate.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// "did you mean `x`?", or the full list when nothing is close. A word that is a candidate
/// but for invisible characters (a line separator pasted in) says so.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
    plural: &str,
) -> String {
    if let Some(c) = word.chars().find(|c| is_invisible(*c)) {
        let seen: String = word.chars().filter(|c| !is_invisible(*c)).collect();
        if candidates
            .clone()
            .into_iter()
            .any(|candidate| candidate == seen)
        {
            return format!(
                "this is `{seen}` with an invisible character in it ({}); delete that character",
                describe_invisible(c)
            );
        }
        if seen.trim().is_empty() {
            let all: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
            return format!(
                "it holds nothing visible, only {}; write one of {}",
                describe_invisible(c),
                all.join(", ")
            );
        }
    }
    if let Some(best) = nearest(word, candidates.clone()) {
        return format!("did you mean `{best}`?");
    }
    let all: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
    if all.is_empty() {
        format!("no {plural} are defined here")
    } else {
        format!("expected one of {}", all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_accepts_typos_and_refuses_strangers() {
        assert_eq!(
            nearest("duraton", ["duration", "delay", "after"]),
            Some("duration")
        );
        assert_eq!(
            nearest("process-kil", ["process-kill", "process-stop"]),
            Some("process-kill")
        );
        assert_eq!(nearest("zzz", ["duration", "delay"]), None);
        // Two neighbouring letters swapped is one slip of the fingers, not two.
        assert_eq!(nearest("dealy", ["delay", "ramp"]), Some("delay"));
        assert_eq!(edit_distance("dealy", "delay"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn invisible_characters_are_written_out_and_named() {
        assert_eq!(visible("plain"), "plain");
        assert_eq!(visible("a\u{2028}b\u{1b}[2J"), "a\\u{2028}b\\u{001B}[2J");
        assert_eq!(visible("tab\tstays"), "tab\tstays");
        assert!(describe_invisible('\u{85}').contains("NEXT LINE"));
        // A span on the original line keeps covering the same characters once shown.
        let line = "kind: \u{2029}x";
        let start = line.find('\u{2029}').unwrap();
        let (shown, span) = shown_with_span(line, start..line.len());
        assert_eq!(&shown[span], "\\u{2029}x");
        assert_eq!(
            suggest("\u{85}kind", ["kind", "id"], "keys"),
            "this is `kind` with an invisible character in it (U+0085 NEXT LINE); delete that character"
        );
    }

    #[test]
    fn lines_end_where_yaml_ends_them() {
        let lines: Vec<&str> = yaml_lines("a\nb\r\nc\rd").collect();
        assert_eq!(lines, ["a", "b", "c", "d"]);
        assert_eq!(yaml_lines("one\n").count(), 1);
    }

    #[test]
    fn token_end_covers_scalars_strings_and_flow_collections() {
        let line = r#"  - {id: kill, kind: process-kil, at: "2s"} # c"#;
        let kind = line.find("process-kil").unwrap();
        assert_eq!(&line[kind..token_end(line, kind)], "process-kil");
        let at = line.find("\"2s\"").unwrap();
        assert_eq!(&line[at..token_end(line, at)], "\"2s\"");
        let flow = line.find('{').unwrap();
        assert_eq!(
            &line[flow..token_end(line, flow)],
            r#"{id: kill, kind: process-kil, at: "2s"}"#
        );
        let reference = "url: ${vars.lisen}/health";
        let at = reference.find("${").unwrap();
        assert_eq!(&reference[at..token_end(reference, at)], "${vars.lisen}");
        let key = "    duraton: 5s";
        assert_eq!(&key[4..token_end(key, 4)], "duraton");
    }

    #[test]
    fn columns_are_characters() {
        assert_eq!(byte_offset("é: x", 4), 4);
        assert_eq!(byte_offset("abc", 9), 3);
    }
}
