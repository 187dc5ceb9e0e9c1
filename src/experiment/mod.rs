//! Stage one: the experiment file. Its model, parsing (strict YAML with positions, vars) and
//! the diagnostics that point into the file. `plan::compile` turns a parsed
//! experiment into a plan; nothing here knows the plan. Nothing here needs root or touches
//! the host.

use std::path::{Path, PathBuf};

pub mod diagnostic;
pub mod duration;
pub mod model;
pub mod params;
pub mod parse;
pub mod schema;
pub mod spanned;
pub mod vars;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::Dur;
pub use model::Experiment;
pub use spanned::{Pos, Sp};
pub use vars::{OverrideError, Overrides};

/// The built-in default experiment (`faultline run` with no file).
pub const QUICKSTART_NAME: &str = "experiments/quickstart.yaml (built in)";
pub const QUICKSTART_YAML: &str = include_str!("../../experiments/quickstart.yaml");

/// An experiment file's text, kept so diagnostics can show the offending line.
#[derive(Clone, Debug)]
pub struct Source {
    /// As given on the command line (or the built-in name).
    pub path: PathBuf,
    pub text: String,
}

/// The largest experiment file faultline reads: far more than any experiment needs, and a
/// bound on what a mistaken path (`/dev/zero`, a log file) can make it read.
pub const MAX_EXPERIMENT_BYTES: u64 = 1 << 20;

impl Source {
    /// Only a regular file, read without blocking and up to [`MAX_EXPERIMENT_BYTES`].
    pub fn read(path: &Path) -> Result<Source, Diagnostics> {
        match crate::sys::file::read_regular(path, MAX_EXPERIMENT_BYTES, "experiment file") {
            Ok(text) => Ok(Source {
                path: path.to_path_buf(),
                text,
            }),
            Err(e) => Err(Diagnostics::unreadable(path, &e)),
        }
    }

    pub fn quickstart() -> Source {
        Source {
            path: PathBuf::from(QUICKSTART_NAME),
            text: QUICKSTART_YAML.to_string(),
        }
    }
}

/// Strict parse with the file's own var defaults: unknown keys, wrong types and duplicate
/// keys are errors with positions.
pub fn parse(source: &Source) -> Result<Experiment, Diagnostics> {
    parse_with(source, &Overrides::none())
}

/// Substitute `${vars.NAME}` (defaults, then `overrides`), then parse strictly. Diagnostics
/// point into the file as written; the returned experiment's `vars` holds the effective values.
pub fn parse_with(source: &Source, overrides: &Overrides) -> Result<Experiment, Diagnostics> {
    parse::parse(source, overrides)
}
