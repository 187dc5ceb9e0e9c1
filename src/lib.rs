//! faultline: a Linux chaos-engineering fault injector.
//!
//! Data flows one way: experiment file → [`experiment::Experiment`] → [`plan::Plan`] →
//! [`engine`] → faults and probes → events → state file and reports.

/// `eprintln!` that never panics. Standard error may be a terminal or a pipe that is gone (a
/// dropped SSH session, a `| tee` that died with it), and faultline must go on reverting and
/// writing its reports; a failed `eprintln!` would panic instead.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($arg)*);
        let _ = writeln!(std::io::stderr().lock(), "{}", $crate::secrets::redact(&text));
    }};
}

pub mod adhoc;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod doctor;
pub mod engine;
pub mod experiment;
pub mod fault;
pub mod host;
pub mod net;
pub mod outcome;
pub mod plan;
pub mod probe;
pub mod report;
pub mod secrets;
pub mod state;
pub mod sys;
pub mod units;
pub mod view;
pub mod watchdog;

pub use outcome::Outcome;
