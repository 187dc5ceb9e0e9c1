//! A simulated probe for deterministic engine tests.
