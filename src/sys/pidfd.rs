//! Signalling through pidfds, so a recycled PID is never hit.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use super::proc::ProcRef;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The process is gone, or its PID now belongs to another process.
    #[error("pid {0} is gone (exited, or its PID was reused)")]
    Gone(u32),
    #[error("not permitted to signal pid {0}: {1}")]
    Permission(u32, String),
    #[error("signalling pid {0} failed: {1}")]
    Other(u32, String),
}

const NEEDS_PRIVILEGE: &str = "needs root or CAP_KILL for processes of other users";

/// A pidfd for exactly the process `target` names.
///
/// The start time is checked *after* opening: the pidfd pins one process, so if /proc still
/// shows the expected start time at that PID, the pidfd refers to the process we chose (a PID
/// cannot be recycled twice back to the same start time).
pub fn open(target: ProcRef) -> Result<OwnedFd, SignalError> {
    let pid = Pid::from_raw(i32::try_from(target.pid).map_err(|_| SignalError::Gone(target.pid))?)
        .ok_or(SignalError::Gone(target.pid))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| match e {
        Errno::SRCH => SignalError::Gone(target.pid),
        Errno::PERM | Errno::ACCESS => SignalError::Permission(target.pid, NEEDS_PRIVILEGE.into()),
        other => SignalError::Other(target.pid, format!("pidfd_open: {other}")),
    })?;
    match super::proc::start_time(target.pid) {
        Ok(start) if start == target.start_time => Ok(pidfd),
        Ok(_) => Err(SignalError::Gone(target.pid)),
        Err(e) if super::proc::is_vanished(&e) => Err(SignalError::Gone(target.pid)),
        Err(e) => Err(SignalError::Other(
            target.pid,
            format!("reading /proc/{}/stat: {e}", target.pid),
        )),
    }
}

/// Send `signal` to exactly the process `target` names: open a pidfd, check the start time
/// still matches, then `pidfd_send_signal`. Signal 0 checks liveness and permission only.
pub fn send_signal(target: ProcRef, signal: i32) -> Result<(), SignalError> {
    let pidfd = open(target)?;
    // rustix's `Signal` cannot carry 0 or real-time signals, both of which the plan allows.
    // SAFETY: plain syscall with a live fd, a null siginfo and no flags; no memory is shared.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ESRCH) => Err(SignalError::Gone(target.pid)),
        Some(libc::EPERM) => Err(SignalError::Permission(target.pid, NEEDS_PRIVILEGE.into())),
        _ => Err(SignalError::Other(
            target.pid,
            format!("pidfd_send_signal({signal}): {error}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sys::proc::testing::sleep_with_arg;

    #[test]
    fn stale_start_time_is_gone_and_the_process_is_not_signalled() {
        let child = sleep_with_arg("30");
        let real = child.proc_ref();
        let recycled = ProcRef {
            start_time: real.start_time + 1,
            ..real
        };
        assert!(
            matches!(send_signal(recycled, libc::SIGKILL), Err(SignalError::Gone(pid)) if pid == real.pid)
        );
        // Had SIGKILL landed, the child would be a zombie or gone within a few ms.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(child.state(), 'S');
        assert!(send_signal(real, 0).is_ok());
    }

    #[test]
    fn signal_zero_checks_liveness_and_a_reaped_child_is_gone() {
        let mut child = sleep_with_arg("30");
        let target = child.proc_ref();
        send_signal(target, 0).expect("live child");
        child.kill_and_reap();
        assert!(matches!(send_signal(target, 0), Err(SignalError::Gone(_))));
        assert!(matches!(
            send_signal(
                ProcRef {
                    pid: u32::MAX,
                    start_time: 0
                },
                0
            ),
            Err(SignalError::Gone(_))
        ));
    }

    /// `cargo test --lib sys::pidfd::tests::measure -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, prints timings"]
    fn measure_sigkill_to_reaped_latency() {
        let mut times: Vec<Duration> = (0..200)
            .map(|_| {
                let mut child = sleep_with_arg("30");
                let target = child.proc_ref();
                let started = Instant::now();
                send_signal(target, libc::SIGKILL).expect("signal");
                assert_eq!(child.reap_blocking_signal(), Some(libc::SIGKILL));
                started.elapsed()
            })
            .collect();
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "pidfd SIGKILL -> reaped, sleep child, n=200: mean {mean:?}, p50 {:?}, p99 {:?}, max {:?}",
            times[100], times[198], times[199]
        );
    }
}
