//! Thin Linux seams. Everything that reads /proc, makes a process-level syscall or runs a
//! network tool lives here.

pub mod cgroup;
pub mod delayer;
pub mod file;
pub mod iptables;
pub mod loopdev;
pub mod netns;
pub mod nfqueue;
pub mod pidfd;
pub mod proc;
pub mod tc;

/// Make a tool faultline runs (iptables, tc, nsenter) die with the faultline thread that
/// waits for it. Otherwise a runner killed mid-command leaves the tool running: it could add
/// its rule after the watchdog has reverted the run, leaving a rule nothing records.
pub fn dies_with_us(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("faultline exited"));
            }
            Ok(())
        })
    }
}
