//! Operator interrupts, injected into the runner (SIGINT/SIGTERM/SIGHUP in production, a
//! handle in tests). Level 1: abort and revert. Level 2: skip probes and cleanup, but still revert.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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

/// The write end of the pipe the early signal handler writes signal numbers into (-1: none).
static SIGNAL_PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Its read end, for [`install_signal_handlers`] to take.
static SIGNAL_PIPE_READ: Mutex<Option<OwnedFd>> = Mutex::new(None);
/// Whether [`take_over`] installed a SIGHUP handler (not under `nohup`).
static HANGUP_TAKEN: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) on a pipe is async-signal-safe; a full pipe drops the byte.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Take over SIGINT, SIGTERM and SIGHUP (unless SIGHUP is ignored, as under `nohup`) as the
/// first thing a run does, before its files are read or an earlier run's leftovers are
/// settled: from here on each of them is written into a pipe and acted on once the runner
/// listens ([`install_signal_handlers`]), instead of killing faultline mid-settle or, when
/// SIGINT was inherited as ignored (a background job), being lost while the run goes on.
pub fn take_over() -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    *SIGNAL_PIPE_READ.lock().unwrap_or_else(|p| p.into_inner()) = Some(read);
    // The write end lives as long as the process: the handler may run at any time.
    SIGNAL_PIPE_WRITE.store(write.into_raw_fd(), Ordering::Relaxed);
    let hangup = !hangup_ignored();
    HANGUP_TAKEN.store(hangup, Ordering::Relaxed);
    for signal in taken_signals(hangup) {
        set_disposition(signal, note_signal as *const () as libc::sighandler_t)?;
    }
    // A parent may have blocked them (inherited across exec): then Ctrl-C would never reach
    // the run. One that came meanwhile is delivered now, to the handler. Threads started
    // later inherit this mask.
    // SAFETY: an empty set with the taken signals added, passed to pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in taken_signals(hangup) {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// Give the signals back to their defaults, for commands that inject nothing (`validate`,
/// `plan`, the demo service): one that arrived since [`take_over`] acts as it would have.
pub fn give_back() {
    let hangup = HANGUP_TAKEN.load(Ordering::Relaxed);
    for signal in taken_signals(hangup) {
        let _ = set_disposition(signal, libc::SIG_DFL);
    }
    if let Some(read) = SIGNAL_PIPE_READ
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        for signal in drain(&read) {
            // SAFETY: raise(3) delivers the signal to this thread under its default action.
            unsafe {
                libc::raise(i32::from(signal));
            }
        }
    }
}

fn taken_signals(hangup: bool) -> Vec<libc::c_int> {
    let mut signals = vec![libc::SIGINT, libc::SIGTERM];
    if hangup {
        signals.push(libc::SIGHUP);
    }
    signals
}

fn set_disposition(signal: libc::c_int, handler: libc::sighandler_t) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler and an empty mask is a valid action.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal numbers waiting in the pipe (non-blocking).
fn drain(read: &OwnedFd) -> Vec<u8> {
    let mut signals = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a buffer of the given length.
        let n = unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return signals;
        }
        signals.extend_from_slice(&buf[..n as usize]);
    }
}

/// Act on SIGINT/SIGTERM by raising `handle` and telling the operator what happens, and on
/// SIGHUP (unless it is ignored, as under `nohup`) by aborting: a hangup is the operator's SSH
/// session or terminal going away, and it aborts and reverts like SIGTERM instead of killing
/// faultline with its faults in place. Signals that came since [`take_over`] (called now if it
/// was not) are acted on before this returns, so nothing starts with an interrupt pending.
pub fn install_signal_handlers(handle: InterruptHandle) -> std::io::Result<()> {
    if SIGNAL_PIPE_WRITE.load(Ordering::Relaxed) < 0 {
        take_over()?;
    }
    let read = SIGNAL_PIPE_READ
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| std::io::Error::other("the signal pipe was already taken"))?;
    let act = move |signal: u8| {
        if i32::from(signal) == libc::SIGHUP {
            // Output to the dead terminal now fails; every write to it ignores that
            // (`say!`), so the run reverts and writes its journal and reports.
            handle.abort();
            return;
        }
        let name = if i32::from(signal) == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        match handle.raise() {
            Level::Abort => crate::say!(
                "\nfaultline: {name}: aborting — reverting every fault (again to skip checks and cleanup)"
            ),
            _ => crate::say!(
                "\nfaultline: {name}: skipping checks and cleanup; still reverting (kill -9 would leave the host for `faultline recover`)"
            ),
        }
    };
    for signal in drain(&read) {
        act(signal);
    }
    // SAFETY: the AsyncFd owns the descriptor (an OwnedFd), which stays open and the same
    // for as long as the AsyncFd lives.
    let readable =
        unsafe { tokio::io::unix::AsyncFd::register(read) }.map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = readable.readable().await else {
                return;
            };
            for signal in drain(readable.get_ref()) {
                act(signal);
            }
            ready.clear_ready();
        }
    });
    Ok(())
}
