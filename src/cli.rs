//! The command line: one clap definition serves help and usage errors.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "faultline",
    version,
    about = "Chaos experiments for Linux hosts: inject faults, watch SLOs, abort fast, revert everything",
    after_help = "Exit codes: 0 passed, 1 deviated, 2 aborted, 3 not_ready, 4 injection_failed, \
                  5 revert_failed, 130 interrupted, 64 invalid input."
)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run experiments in order (a game day). Without FILE, runs the built-in quickstart.
    Run(RunArgs),
    /// Check experiment files: schema, references, cycles, schedule. Needs no root, touches nothing.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Show what a run would do and which processes each target matches now. Injects nothing.
    Plan {
        file: PathBuf,
        /// Print the resolved plan as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Print the JSON Schema of the experiment format.
    Schema,
    /// Revert every fault left behind by a run that crashed or was killed.
    Recover {
        #[command(flatten)]
        state: StateArgs,
        /// Also revert faults of runs that are still alive (a hung run).
        #[arg(long)]
        include_active: bool,
    },
    /// List live faults recorded in the state directory.
    Status {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Which fault backends work on this host, and why not where they do not.
    Doctor {
        /// Examine this network namespace (`/run/netns/NAME`) instead of faultline's own.
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make the JUnit and HTML reports again from journals (also of a run that crashed).
    Report {
        /// Journals (`*.jsonl`) written by `faultline run`; several make one game-day report.
        #[arg(required = true)]
        journals: Vec<PathBuf>,
        /// Where to write the reports [default: the first journal's directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The reports' title and file name stem [default: the journal's name, or `game-day`].
        #[arg(long)]
        name: Option<String>,
    },
    /// A tiny HTTP service (`/health`, `/work`, `/metrics`) with a worker child process, for
    /// trying faultline out.
    DemoTarget(DemoArgs),
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Where live faults are recorded [default: /var/lib/faultline for root,
    /// ~/.local/state/faultline otherwise; or $FAULTLINE_STATE_DIR].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `--var NAME=VALUE`, checked (and reported with exit code 64) by the command, not by clap.
#[derive(Debug, Args)]
pub struct VarArgs {
    /// Set the experiment var NAME (declared under `vars:` in the file), overriding its
    /// default. Repeatable; applies to every file given.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Where journals and reports (JUnit XML, HTML) are written [default: ./faultline-reports].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Only the final summary, no progress lines.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Write the worker's PID here (rewritten when it restarts).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// How long the supervisor waits before restarting a dead worker.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub restart_delay: std::time::Duration,
    /// The worker's loopback port; 0 picks a free one. Fix it to target the service's
    /// dependency with a network fault.
    #[arg(long, default_value_t = 0)]
    pub worker_port: u16,
    /// Run as the worker child (internal).
    #[arg(long, hide = true)]
    pub worker: bool,
}
