//! Thin Linux seams. Everything that reads /proc, makes a process-level syscall or runs a
//! network tool lives here.

pub mod cgroup;
pub mod container;
pub mod delayer;
pub mod file;
#[cfg(test)]
pub(crate) mod heavy_tests;
pub mod iptables;
pub mod loopdev;
pub mod netns;
pub mod nfqueue;
pub mod pidfd;
pub mod proc;
pub mod rtnetlink;
pub mod tc;
pub mod tool;

/// What a failed host operation means for a fault, whatever syscall or tool it came from.
/// Each error type of this layer says which it is (`cause()`), so the layers above decide
/// by it and never by an error's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// What was to be changed is no longer there: a process exited, a namespace, device or
    /// cgroup was removed.
    Gone,
    /// faultline lacks a privilege (root, CAP_NET_ADMIN, CAP_KILL).
    Permission,
    /// This host cannot do it: a kernel feature or tool is missing, or someone else's state
    /// is in the way.
    Unsupported,
    /// Anything else: the kernel or tool refused this time.
    Failed,
}

/// At most `arenas` malloc arenas for this process (glibc; elsewhere nothing to do). A
/// `MALLOC_ARENA_MAX` in the environment, set by whoever runs faultline, wins.
pub fn limit_malloc_arenas(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

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
