//! One lock for the unit tests that load the machine or measure time. On two cores a CPU
//! burner, a memory toucher or a disk writer running beside a delay or throughput
//! measurement makes that measurement measure the other test, so under a plain
//! `cargo test` (threads in parallel) they take turns across modules, not only within one.
//! `scripts/test.sh` runs one test at a time anyway.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one must still run.
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}
