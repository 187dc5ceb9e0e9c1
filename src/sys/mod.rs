//! Thin Linux seams. Everything that reads /proc, makes a process-level syscall or runs a
//! network tool lives here.

pub mod cgroup;
pub mod delayer;
pub mod iptables;
pub mod loopdev;
pub mod netns;
pub mod nfqueue;
pub mod pidfd;
pub mod proc;
pub mod tc;
