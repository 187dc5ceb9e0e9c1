//! faultline: a Linux chaos-engineering fault injector.
//!
//! Data flows one way: experiment file → [`experiment::Experiment`] → [`plan::Plan`] →
//! [`engine`] → faults and probes → events → state file and reports.

pub mod adhoc;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod doctor;
pub mod engine;
pub mod experiment;
pub mod fault;
pub mod net;
pub mod outcome;
pub mod plan;
pub mod probe;
pub mod report;
pub mod state;
pub mod sys;
pub mod watchdog;

pub use outcome::Outcome;
