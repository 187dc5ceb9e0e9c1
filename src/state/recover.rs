//! `faultline recover` and `faultline status`.
