//! The runner: lifecycle, scheduler, abort, outcomes, signals.
