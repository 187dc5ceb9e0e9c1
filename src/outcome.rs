//! How a run ended, and the exit code for each ending. One place, documented in the README.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Ordered by precedence: when several apply (a game day, or an abort whose revert also
/// failed), the greatest wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check passed.
    Passed,
    /// The `after` checks failed: the system did not recover in time (or a `during`
    /// probe failed while `abort.on_probe_failure` was off).
    Deviated,
    /// The `before` gate failed (or setup failed): nothing was injected.
    NotReady,
    /// A `during` probe breached its SLO (or `max_duration` was reached): faults were
    /// cancelled and reverted at once.
    Aborted,
    /// A fault could not be applied. Never reported as passed.
    InjectionFailed,
    /// The operator interrupted the run (SIGINT/SIGTERM); faults were reverted.
    Interrupted,
    /// A revert failed: the host may still carry a fault.
    RevertFailed,
}

/// Invalid input (bad file, bad flag): exit code, nothing injected.
pub const EXIT_INVALID_INPUT: u8 = 64;
/// An internal or environment error outside the outcome table (cannot write reports, etc.).
pub const EXIT_ERROR: u8 = 70;

impl Outcome {
    /// The system under test misbehaved (a test failure in CI's terms); the other
    /// non-passing outcomes say the experiment itself could not be carried out as asked.
    pub fn is_system_failure(self) -> bool {
        match self {
            Outcome::Deviated | Outcome::Aborted | Outcome::NotReady => true,
            Outcome::Passed
            | Outcome::InjectionFailed
            | Outcome::Interrupted
            | Outcome::RevertFailed => false,
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Deviated => 1,
            Outcome::Aborted => 2,
            Outcome::NotReady => 3,
            Outcome::InjectionFailed => 4,
            Outcome::RevertFailed => 5,
            Outcome::Interrupted => 130,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Deviated => "deviated",
            Outcome::NotReady => "not_ready",
            Outcome::Aborted => "aborted",
            Outcome::InjectionFailed => "injection_failed",
            Outcome::Interrupted => "interrupted",
            Outcome::RevertFailed => "revert_failed",
        }
    }

    /// The outcome of several runs (a game day): the worst one.
    pub fn worst(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
        outcomes.into_iter().max().unwrap_or(Outcome::Passed)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_puts_a_dirty_host_first() {
        use Outcome::*;
        assert_eq!(
            Outcome::worst([Passed, Aborted, RevertFailed]),
            RevertFailed
        );
        assert_eq!(Outcome::worst([Deviated, NotReady]), NotReady);
        assert_eq!(Outcome::worst([Aborted, InjectionFailed]), InjectionFailed);
        assert_eq!(Outcome::worst([Interrupted, InjectionFailed]), Interrupted);
        assert_eq!(Outcome::worst([]), Passed);
    }

    #[test]
    fn exit_codes_are_distinct() {
        use Outcome::*;
        let all = [
            Passed,
            Deviated,
            NotReady,
            Aborted,
            InjectionFailed,
            Interrupted,
            RevertFailed,
        ];
        let mut codes: Vec<u8> = all.iter().map(|o| o.exit_code()).collect();
        codes.push(EXIT_INVALID_INPUT);
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len() + 1);
    }
}
