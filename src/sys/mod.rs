//! Thin Linux seams. Everything that reads /proc or makes a process-level syscall lives here.

pub mod delayer;
pub mod netns;
pub mod nfqueue;
pub mod pidfd;
pub mod proc;
