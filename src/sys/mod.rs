//! Thin Linux seams. Everything that reads /proc or makes a process-level syscall lives here.

pub mod netns;
pub mod pidfd;
pub mod proc;
pub mod tc;
