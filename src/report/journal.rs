//! The journal: one JSON event per line, flushed as it is written.
