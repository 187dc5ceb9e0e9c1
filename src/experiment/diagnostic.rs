//! Errors that point into the experiment file: file, line, column, the line itself, and a
//! hint ("did you mean `duration`?"). Rendered with annotate-snippets.

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
        Diagnostics {
            source: None,
            path: path.to_path_buf(),
            items: vec![Diagnostic {
                message: format!("cannot read {}: {error}", path.display()),
                pos: None,
                label: String::new(),
                hint: None,
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
            let mut group = Group::with_title(Level::ERROR.primary_title(item.message.as_str()));
            if let Some(snippet) = self.snippet(item, &path) {
                group = group.element(snippet);
            }
            if let Some(hint) = &item.hint {
                group = group.element(Level::HELP.message(hint.as_str()));
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

    /// The offending line with the value under the caret, when the position and text are known.
    fn snippet<'a>(
        &'a self,
        item: &'a Diagnostic,
        path: &str,
    ) -> Option<Snippet<'a, annotate_snippets::Annotation<'a>>> {
        let pos = item.pos?;
        let text = &self.source.as_ref()?.text;
        let line_text = text
            .lines()
            .nth(usize::try_from(pos.line).ok()?.checked_sub(1)?)?;
        let start = byte_offset(line_text, pos.column);
        let end = token_end(line_text, start)
            .max(start + 1)
            .min(line_text.len().max(start + 1));
        let mut annotation = AnnotationKind::Primary.span(start..end);
        if !item.label.is_empty() {
            annotation = annotation.label(item.label.as_str());
        }
        Some(
            Snippet::source(line_text)
                .line_start(pos.line as usize)
                .path(path.to_string())
                .annotation(annotation),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
