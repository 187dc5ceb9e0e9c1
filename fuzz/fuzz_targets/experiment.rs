//! Any text as an experiment file: parsing, var substitution, validation and compilation,
//! and the rendering of whatever diagnostics come out, must never panic, hang or blow up —
//! only accept the file or say, with a position and a hint, what is wrong with it.
#![no_main]

use faultline::experiment::{Overrides, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Alias bombs: a few hundred bytes and a few dozen aliases expand to a million nodes. The
    // parser's budget stops them (tests/bad/alias-bomb.yaml, 0.1 s in a release build), but
    // under coverage instrumentation one takes 13-30 s and reads as a hang.
    if text.matches('*').count() > 16 {
        return;
    }
    let source = Source {
        path: "fuzz.yaml".into(),
        text: text.to_string(),
    };
    // With a `--var` too, so substitution of overridden values is covered.
    let overrides = Overrides::from_assignments(&["listen=127.0.0.1:9090"]).unwrap();
    for overrides in [Overrides::none(), overrides] {
        match faultline::plan::plan_source(&source, &overrides) {
            // `faultline plan` asks the host (processes, names) and is not fuzzed.
            Ok(plan) => drop(plan),
            Err(diagnostics) => {
                let _ = diagnostics.render(false);
                let _ = diagnostics.render(true);
            }
        }
    }
});
