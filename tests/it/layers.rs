//! The crate's top-level modules form layers: data flows one way (file → experiment → plan,
//! compiled through each fault kind's module → engine → faults and probes → events → state,
//! journal and reports), and a module imports only modules in layers below its own. `sys`
//! (the Linux seams) imports nothing but plain values. This test reads `src/` and fails on
//! any `crate::` path that points sideways or up, so a dependency cycle cannot come back
//! unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom first. Modules in one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    // Plain values and their formatting: they import nothing of the crate.
    &["units", "net", "outcome", "demo"],
    // Linux: /proc, syscalls, cgroups, tc, iptables, nfqueue.
    &["sys"],
    // What the host can do, probed once; which backend a fault takes.
    &["host"],
    &["secrets"],
    // The experiment file: model, parsing, diagnostics.
    &["experiment"],
    // One module per fault kind: its parameters' checks, its compiled effect, its summary,
    // apply and revert. Below the plan, which compiles each fault through its kind.
    &["fault"],
    // Compiled from the experiment: what a run does. What this host can do, per kind.
    &["plan", "doctor"],
    &["probe"],
    &["state"],
    &["report"],
    &["engine"],
    &["watchdog", "view"],
    &["cli"],
    &["adhoc"],
    &["commands"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/fault/network.rs` → `fault`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_string()
}

/// Every `crate::NAME` in the code (comments left out), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `$crate::` in macros, `faultline_crate::` and the like are not paths of ours.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, name));
        }
    }
    found
}

#[test]
fn every_module_imports_only_layers_below_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut top_level = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" || module == "snapshots" {
            continue;
        }
        top_level.insert(module.clone());
        let Some(own) = layer_of(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is in no layer of tests/it/layers.rs: add it where it belongs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (line, target) in crate_paths(&text) {
            if target == module {
                continue;
            }
            if target.is_empty() {
                wrong.push(format!(
                    "{}:{line}: write `crate::MODULE::...` paths, not `crate::{{...}}`, so this test can read them",
                    file.display()
                ));
                continue;
            }
            match layer_of(&target) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: `{module}` imports `crate::{target}`, which is not below it",
                    file.display()
                )),
                // Macros and items at the crate root (`crate::say!`) are fine.
                None => {}
            }
        }
    }
    assert!(
        top_level.contains("sys") && top_level.contains("engine") && top_level.len() > 10,
        "the walk of src/ found only {top_level:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_a_path_that_points_up() {
    let paths = crate_paths(
        "use crate::engine::Event;\n// crate::commands in a comment\nlet x = $crate::sys::f();\n",
    );
    assert_eq!(paths, vec![(1, "engine".to_string())]);
    assert!(layer_of("engine") > layer_of("sys"));
}
