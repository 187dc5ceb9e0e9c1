//! Operator interrupts, injected into the runner (SIGINT/SIGTERM/SIGHUP in production, a
//! handle in tests). Level 1: abort and revert. Level 2: skip probes and cleanup, but still revert.

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    /// Abort: cancel faults, revert, then after-checks and cleanup as usual.
    Abort,
    /// Hurry: revert only.
    Hurry,
}

/// Raises the interrupt level.
#[derive(Clone)]
pub struct InterruptHandle(watch::Sender<Level>);

/// Observes the interrupt level.
#[derive(Clone)]
pub struct Interrupt(watch::Receiver<Level>);

pub fn channel() -> (InterruptHandle, Interrupt) {
    let (tx, rx) = watch::channel(Level::None);
    (InterruptHandle(tx), Interrupt(rx))
}

impl InterruptHandle {
    /// One more interrupt: None → Abort → Hurry. Returns the new level.
    pub fn raise(&self) -> Level {
        let mut new = Level::None;
        self.0.send_modify(|level| {
            *level = match *level {
                Level::None => Level::Abort,
                _ => Level::Hurry,
            };
            new = *level;
        });
        new
    }
}

impl InterruptHandle {
    /// At least Abort, without escalating an abort already under way: a hangup is one event
    /// however many SIGHUPs it sends.
    pub fn abort(&self) {
        self.0.send_if_modified(|level| {
            let raised = *level == Level::None;
            if raised {
                *level = Level::Abort;
            }
            raised
        });
    }
}

/// Is SIGHUP ignored (`nohup`, or a parent that wants the run to outlive its terminal)?
fn hangup_ignored() -> bool {
    // SAFETY: a null new action only reads the current disposition.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

impl Interrupt {
    /// An interrupt that never fires.
    pub fn never() -> Interrupt {
        let (tx, rx) = watch::channel(Level::None);
        // Keep the sender alive for the life of the program so `changed` just waits.
        std::mem::forget(tx);
        Interrupt(rx)
    }

    pub fn level(&self) -> Level {
        *self.0.borrow()
    }

    /// Wait until the level is at least `level`.
    pub async fn reached(&mut self, level: Level) {
        if self.0.wait_for(|l| *l >= level).await.is_err() {
            // Sender gone: no more interrupts can come.
            std::future::pending::<()>().await;
        }
    }
}

/// Install SIGINT/SIGTERM handlers that raise `handle` and tell the operator what happens,
/// and a SIGHUP handler (unless SIGHUP is ignored, as under `nohup`): a hangup is the
/// operator's SSH session or terminal going away, and it aborts and reverts like SIGTERM
/// instead of killing faultline with its faults in place.
pub fn install_signal_handlers(handle: InterruptHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Registering a handler would override `nohup`'s SIG_IGN, so look first.
    let mut sighup = if hangup_ignored() {
        None
    } else {
        Some(signal(SignalKind::hangup())?)
    };
    tokio::spawn(async move {
        loop {
            let hangup = async {
                match sighup.as_mut() {
                    Some(sighup) => sighup.recv().await,
                    None => std::future::pending().await,
                }
            };
            let name = tokio::select! {
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
                // Output to the dead terminal now fails; every write to it ignores that
                // (`say!`), so the run reverts and writes its journal and reports.
                _ = hangup => {
                    handle.abort();
                    continue;
                }
            };
            match handle.raise() {
                Level::Abort => crate::say!(
                    "\nfaultline: {name}: aborting — reverting every fault (again to skip checks and cleanup)"
                ),
                _ => crate::say!(
                    "\nfaultline: {name}: skipping checks and cleanup; still reverting (kill -9 would leave the host for `faultline recover`)"
                ),
            }
        }
    });
    Ok(())
}
