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
    /// One fault now, from the command line: `faultline inject network-delay delay=200ms
    /// --interface eth0 --remote-port 5432 --for 30s --dry-run`. Same engine, state file,
    /// journal and reports as `run`; reverted when `--for` is over, on an SLO breach of an
    /// `--abort-if-*` probe, or at Ctrl-C.
    Inject(Box<InjectArgs>),
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
    #[command(flatten)]
    pub runner: RunnerArgs,
}

/// How `run` and `inject` run: where they record and report, how much they say, and
/// whether a crashed run's faults are reverted at once by its watchdog.
#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// Where journals and reports (JUnit XML, HTML) are written [default: ./faultline-reports].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Only the final summary, no progress lines.
    #[arg(short, long)]
    pub quiet: bool,
    /// Start no watchdog: if faultline is killed (kill -9, OOM), its faults stay until
    /// `faultline recover` or the next run (to inspect a crash's leftovers).
    #[arg(long)]
    pub no_watchdog: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "PARAM=VALUE sets one of the fault's params, as in an experiment file \
    (`faultline schema` lists them): delay=200ms jitter=20ms distribution=normal, \
    probability=30%, rate=10mbit, load=60%, quota=50%, size=1GiB, path=/srv, signal=TERM. \
    Values are YAML scalars or flow collections (cores=[0,1])."
)]
pub struct InjectArgs {
    /// The fault kind, as in an experiment file: process-kill, network-delay, cpu-pressure,
    /// ... (`faultline schema` lists them all).
    pub kind: String,
    /// The fault's params.
    #[arg(value_name = "PARAM=VALUE")]
    pub params: Vec<String>,
    /// How long the fault stays (required except for process-kill).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// Print the plan and the equivalent experiment file; inject nothing (needs no root).
    #[arg(long)]
    pub dry_run: bool,
    /// Write the equivalent experiment file here (to edit, review or run again with `run`).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub runner: RunnerArgs,

    // The groups below set their own help headings, which carry on to any later argument.
    #[command(flatten)]
    pub process: ProcessTargetArgs,
    #[command(flatten)]
    pub network: NetworkTargetArgs,
    /// Process or network target: only processes / traffic of this cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Process or network target: this container's processes / its network namespace. A
    /// name, an ID prefix or a label as KEY=VALUE.
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// The runtime to ask about --container: docker or podman (default: the first found).
    #[arg(long, value_name = "RUNTIME", requires = "container")]
    pub runtime: Option<String>,
    #[command(flatten)]
    pub abort: AbortArgs,
}

/// `inject`: which processes a process fault acts on.
#[derive(Debug, Args)]
#[command(next_help_heading = "Process target")]
pub struct ProcessTargetArgs {
    /// This PID.
    #[arg(long)]
    pub pid: Option<u32>,
    /// The PID in this file.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<String>,
    /// Processes with this name (/proc/PID/comm).
    #[arg(long)]
    pub name: Option<String>,
    /// Processes whose command line matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub cmdline: Option<String>,
    /// Of the matching processes, act on this many.
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// Allow PID 1, faultline itself and its ancestors (refused otherwise).
    #[arg(long)]
    pub force: bool,
}

/// `inject`: which traffic a network fault acts on.
#[derive(Debug, Args)]
#[command(next_help_heading = "Network target")]
pub struct NetworkTargetArgs {
    /// Interface (repeatable; default all but loopback).
    #[arg(long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Egress (default), ingress or both.
    #[arg(long)]
    pub direction: Option<String>,
    /// Protocol: tcp, udp, icmp or all.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Remote address, CIDR or hostname (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub remote: Vec<String>,
    /// Remote port or range `8000-8100` (repeatable).
    #[arg(long, value_name = "PORT")]
    pub remote_port: Vec<String>,
    /// Local address or CIDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub local: Vec<String>,
    /// Local port or range (repeatable).
    #[arg(long, value_name = "PORT")]
    pub local_port: Vec<String>,
    /// Act inside this network namespace (`/run/netns/NAME`).
    #[arg(long)]
    pub netns: Option<String>,
    /// Also hit the operator's SSH connection and the probes' endpoints.
    #[arg(long)]
    pub no_lockout_protection: bool,
}

/// `inject`: the probes that abort the fault.
#[derive(Debug, Args)]
#[command(next_help_heading = "Abort when")]
pub struct AbortArgs {
    /// Abort (and revert at once) when this URL stops answering 2xx.
    #[arg(long, value_name = "URL")]
    pub abort_if_http: Vec<String>,
    /// Abort when a TCP connect to HOST:PORT fails.
    #[arg(long, value_name = "HOST:PORT")]
    pub abort_if_tcp: Vec<String>,
    /// With --abort-if-http: also fail a check slower than this.
    #[arg(long, value_name = "DURATION")]
    pub max_latency: Option<String>,
    /// How often the abort probes check [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<String>,
    /// Abort after this many failed checks in a row [default: 1].
    #[arg(long, value_name = "N")]
    pub failures: Option<u32>,
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
    /// The service's dependency runs elsewhere, at HOST:PORT (another container's
    /// `--dependency-only`): /health asks it, and no worker child is started.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "worker_port")]
    pub dependency: Option<String>,
    /// Serve only the dependency (answer pings) on --listen, for a service started with
    /// --dependency elsewhere.
    #[arg(long, conflicts_with_all = ["dependency", "pidfile", "worker"])]
    pub dependency_only: bool,
}
