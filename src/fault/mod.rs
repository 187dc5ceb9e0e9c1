//! The fault kinds, listed once ([`FaultAction`], [`RevertRecipe`], [`MODULE_KINDS`]), and
//! `trait Fault`: one implementation per kind. A kind's module checks and compiles its
//! parameters (for the plan), says what it does, and prepares, applies and reverts it.
//!
//! A fault is injected in two steps so that nothing is ever done to the host before the way
//! to undo it is on disk:
//! 1. [`Fault::prepare`] decides what will be touched (resolves targets) and returns a
//!    [`Prepared`] holding a serialisable [`RevertRecipe`];
//! 2. the engine writes that recipe to the state file (fsynced), and only then calls
//!    [`Fault::apply`].
//!
//! Reverting is done from the recipe ([`RevertRecipe::revert`]), so a live run and
//! `faultline recover` after a crash take the same path. What an injection keeps running
//! inside this process (CPU burners, the memory hog, I/O workers, a delayer) is a
//! [`LiveHandle`] that `apply` returns: the engine holds it and hands it to the revert, which
//! stops it; a crash ends it with the process and the recipe undoes the rest.

use serde::{Deserialize, Serialize};

use crate::experiment::Sp;
use crate::experiment::model::{FaultDef, FaultKind};
use crate::experiment::params::ParamChecks;

/// `impl Fault` for a kind whose `prepare_recipe` / `apply_recipe` work on the recipe of one
/// [`RevertRecipe`] variant: prepare wraps it, apply takes it back out.
macro_rules! fault_with_recipe {
    ($fault:ty, $variant:ident) => {
        impl $crate::fault::Fault for $fault {
            fn prepare(&self) -> Result<$crate::fault::Prepared, $crate::fault::FaultError> {
                let (summary, recipe, details) = self.prepare_recipe()?;
                Ok($crate::fault::Prepared {
                    summary,
                    revert: $crate::fault::RevertRecipe::$variant(recipe),
                    details,
                })
            }

            fn apply(
                &self,
                prepared: &$crate::fault::Prepared,
            ) -> Result<$crate::fault::Applied, $crate::fault::FaultError> {
                match &prepared.revert {
                    $crate::fault::RevertRecipe::$variant(recipe) => self.apply_recipe(recipe),
                    _ => Err($crate::fault::FaultError::Failed(
                        "recipe of another fault kind".into(),
                    )),
                }
            }
        }
    };
}

pub mod cpu;
pub mod disk;
pub mod disk_fill;
pub mod limit;
pub mod memory;
pub mod network;
pub mod process;
pub mod sim;
pub mod summary;

pub use network::{DelayBackend, NetworkAction};

/// What one fault of a plan does, checked: one variant per fault kind's compiled effect.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum FaultAction {
    ProcessKill(process::Kill),
    ProcessStop(process::Stop),
    Network(NetworkAction),
    CpuPressure(cpu::CpuPressureParams),
    CpuLimit(limit::CpuLimitParams),
    MemoryPressure(memory::MemoryPressureParams),
    DiskIoPressure(disk::DiskIoPressureSpec),
    DiskIoLimit(limit::IoLimitParams),
    DiskFill(disk_fill::DiskFill),
}

/// A fault kind whose module owns all of it: parameters (keys, checks, compiled form),
/// summary, apply, recipe and revert.
pub struct ModuleKind {
    pub kind: FaultKind,
    /// The keys of `params` it takes.
    pub keys: &'static [&'static str],
    /// Check a fault's `params` and compile them; `None` after reporting what is wrong.
    pub compile: fn(&Sp<FaultDef>, &mut ParamChecks<'_>) -> Option<FaultAction>,
    /// How it acts on this host, for `doctor`.
    pub backend: fn(&HostFacts<'_>) -> Backend,
}

/// What `doctor` found about the host (or the namespace it examines), for each kind to say
/// how it would act there.
pub struct HostFacts<'a> {
    pub host: &'a crate::host::HostCaps,
    /// Whether iptables rules can be installed, or why not.
    pub iptables: Result<(), String>,
    /// Whether the NFQUEUE delayer can bind a queue, or why not.
    pub nfqueue: Result<(), String>,
}

/// How a kind acts on a host: the backend's name, or `None` when it cannot run here, and a
/// line saying how (or why not).
pub struct Backend {
    pub name: Option<String>,
    pub detail: String,
}

impl Backend {
    /// A backend that is the same on every host.
    pub fn always(name: &str, detail: &str) -> Backend {
        Backend {
            name: Some(name.into()),
            detail: detail.into(),
        }
    }

    /// The kind cannot run here, for this reason.
    pub fn unavailable(why: impl Into<String>) -> Backend {
        Backend {
            name: None,
            detail: why.into(),
        }
    }
}

/// What the plan holds of a kind with a module of its own, compiled.
pub trait KindPlan {
    /// One line for `plan`, the terminal and the journal.
    fn summary(&self) -> String;
    /// The live fault.
    fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault>;
    /// The directory whose filesystem the fault fills, if it fills one.
    fn fills(&self) -> Option<&std::path::Path> {
        None
    }
}

/// The kinds with a module of their own. Registering one is an entry here, a variant of
/// [`FaultAction`] (and its arm in [`FaultAction::kind`]) and of [`RevertRecipe`].
pub const MODULE_KINDS: &[ModuleKind] = &[
    process::PROCESS_KILL,
    process::PROCESS_STOP,
    network::NETWORK_DELAY,
    network::NETWORK_LOSS,
    network::NETWORK_PARTITION,
    network::NETWORK_BANDWIDTH,
    network::NETWORK_DUPLICATE,
    network::NETWORK_CORRUPT,
    network::NETWORK_REORDER,
    cpu::KIND,
    limit::CPU_LIMIT,
    memory::KIND,
    disk::KIND,
    limit::DISK_IO_LIMIT,
    disk_fill::KIND,
];

/// The module of a kind, if it has one.
pub fn module_kind(kind: FaultKind) -> Option<&'static ModuleKind> {
    MODULE_KINDS.iter().find(|module| module.kind == kind)
}

/// Check and compile a fault's `params` by its kind's module; `None` after reporting what is
/// wrong.
pub fn compile(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<FaultAction> {
    (module_kind(fault.kind.value)?.compile)(fault, checks)
}

/// A fault that can be injected. `Send + Sync` so the engine can run it on blocking threads.
pub trait Fault: Send + Sync {
    /// Decide what will be touched; must not change anything on the host.
    fn prepare(&self) -> Result<Prepared, FaultError>;

    /// Touch the host. Called only after `prepared.revert` has been made durable. On error
    /// the engine still runs the recipe, so a partial injection is undone as well.
    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError>;

    /// Whether the fault could be prepared now, for the check before anything is injected.
    /// Like `prepare`, but holds nothing for a later `apply` (a `prepare` may reserve a place
    /// for its injection, such as a member position on a shared tc tree).
    fn check(&self) -> Result<(), FaultError> {
        self.prepare().map(drop)
    }
}

/// The outcome of [`Fault::prepare`].
#[derive(Clone, Debug)]
pub struct Prepared {
    /// One line for people: `SIGSTOP pid 4242 (demo-worker)`.
    pub summary: String,
    /// How to undo what `apply` is about to do.
    pub revert: RevertRecipe,
    /// Structured facts for the journal (resolved PIDs, their start times, ...).
    pub details: serde_json::Value,
}

/// What [`Fault::apply`] achieved, for the journal.
#[derive(Debug, Default)]
pub struct Applied {
    pub summary: String,
    pub details: serde_json::Value,
    /// What keeps the fault going inside this process, for its revert to stop.
    pub live: Option<LiveHandle>,
}

/// What a live injection runs inside this process, owned by whoever reverts it (the engine)
/// and handed to [`RevertRecipe::revert`]. Dropping one stops what it runs, so nothing
/// outlives its owner even on a path that forgets to revert.
pub enum LiveHandle {
    Cpu(cpu::Running),
    Memory(memory::Hog),
    DiskIo(disk::IoWorkers),
    /// Not a thread: what apply saw, for the revert's figures.
    Limit(limit::Baseline),
    Delayers(Vec<crate::sys::delayer::Delayer>),
}

impl std::fmt::Debug for LiveHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LiveHandle::Cpu(_) => "LiveHandle::Cpu",
            LiveHandle::Memory(_) => "LiveHandle::Memory",
            LiveHandle::DiskIo(_) => "LiveHandle::DiskIo",
            LiveHandle::Limit(_) => "LiveHandle::Limit",
            LiveHandle::Delayers(_) => "LiveHandle::Delayers",
        })
    }
}

pub use crate::sys::proc::ProcRef;

/// Everything needed to undo one injection, written to the state file before the injection.
/// Every variant's revert is idempotent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "recipe", rename_all = "snake_case")]
pub enum RevertRecipe {
    /// Nothing to undo (a kill).
    Nothing,
    /// SIGCONT each process that is still the same process (PID and start time match).
    ResumeProcesses { processes: Vec<ProcRef> },
    /// Remove what a network fault installed (rules, qdiscs, devices), newest first.
    Network { steps: Vec<network::NetStep> },
    /// Move processes back out of faultline's cgroups (`cpu-limit`, `disk-io-limit`).
    CgroupLimit(limit::LimitRecipe),
    /// Stop faultline's CPU burner threads (`cpu-pressure`); a crash stopped them already.
    CpuPressure(cpu::CpuRecipe),
    /// Kill the memory hog child (`memory-pressure`), checked by PID and start time.
    MemoryPressure(memory::MemoryRecipe),
    /// Delete faultline's fill file (`disk-fill`).
    DiskFill(disk_fill::Recipe),
    /// Stop faultline's I/O workers and delete their work file (`disk-io-pressure`).
    DiskIoPressure(disk::DiskIoRecipe),
    /// Engine tests only: remove this marker file (stands in for "the host is dirty").
    Simulated {
        marker: std::path::PathBuf,
        fail: bool,
    },
}

/// What a revert did, for the journal and the terminal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reverted {
    pub summary: String,
    /// What the fault achieved while it was live (packet counters, delay statistics...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl RevertRecipe {
    /// Undo the injection. Safe to call more than once, and after a crash.
    /// Reverts of recipes with the same answer touch shared host structures (rule sets,
    /// tables and tc trees; cgroup controller enables; filesystems; engine tests' ordered
    /// markers) and
    /// run one after the other; `None` reverts alongside anything.
    pub fn shared_with(&self) -> Option<&'static str> {
        match self {
            RevertRecipe::Network { steps } => network::shared_structure(steps),
            RevertRecipe::CgroupLimit(_) => Some("cgroups"),
            RevertRecipe::Simulated { .. } => Some("simulated"),
            // Each reports the free space it saw while in place: another's revert on the same
            // filesystem must not run in between.
            RevertRecipe::DiskFill(_) | RevertRecipe::DiskIoPressure(_) => Some("disk"),
            RevertRecipe::Nothing
            | RevertRecipe::ResumeProcesses { .. }
            | RevertRecipe::CpuPressure(_)
            | RevertRecipe::MemoryPressure(_) => None,
        }
    }

    /// `live` is what the injection's `apply` returned, when this process made it; without
    /// it (`recover`, the watchdog) the recipe undoes what outlived the process that did.
    pub fn revert(&self, live: Option<LiveHandle>) -> Result<Reverted, FaultError> {
        match (self, live) {
            (RevertRecipe::Nothing, _) => Ok(Reverted {
                summary: "nothing to revert".into(),
                ..Reverted::default()
            }),
            (RevertRecipe::ResumeProcesses { processes }, _) => process::resume_all(processes),
            (RevertRecipe::Network { steps }, Some(LiveHandle::Delayers(delayers))) => {
                network::revert_steps(steps, delayers)
            }
            (RevertRecipe::Network { steps }, _) => network::revert_steps(steps, Vec::new()),
            (RevertRecipe::CgroupLimit(recipe), Some(LiveHandle::Limit(baseline))) => {
                limit::revert(recipe, Some(baseline))
            }
            (RevertRecipe::CgroupLimit(recipe), _) => limit::revert(recipe, None),
            (RevertRecipe::CpuPressure(recipe), Some(LiveHandle::Cpu(running))) => {
                cpu::revert(recipe, Some(running))
            }
            (RevertRecipe::CpuPressure(recipe), _) => cpu::revert(recipe, None),
            (RevertRecipe::MemoryPressure(recipe), Some(LiveHandle::Memory(hog))) => {
                memory::revert(recipe, Some(hog))
            }
            (RevertRecipe::MemoryPressure(recipe), _) => memory::revert(recipe, None),
            (RevertRecipe::DiskFill(recipe), _) => recipe.revert(),
            (RevertRecipe::DiskIoPressure(recipe), Some(LiveHandle::DiskIo(workers))) => {
                recipe.revert(Some(workers))
            }
            (RevertRecipe::DiskIoPressure(recipe), _) => recipe.revert(None),
            (RevertRecipe::Simulated { marker, fail }, _) => sim::revert_marker(marker, *fail),
        }
    }

    /// Privilege or other preconditions this recipe's revert will need; shown by `status`.
    pub fn describe(&self) -> String {
        match self {
            RevertRecipe::Nothing => "nothing to revert".into(),
            RevertRecipe::ResumeProcesses { processes } => {
                let pids: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();
                format!("SIGCONT to pid {}", pids.join(", "))
            }
            RevertRecipe::Network { steps } => network::describe_steps(steps),
            RevertRecipe::CgroupLimit(recipe) => limit::describe(recipe),
            RevertRecipe::CpuPressure(recipe) => cpu::describe(recipe),
            RevertRecipe::MemoryPressure(recipe) => memory::describe(recipe),
            RevertRecipe::DiskFill(recipe) => recipe.describe(),
            RevertRecipe::DiskIoPressure(recipe) => recipe.describe(),
            RevertRecipe::Simulated { marker, .. } => format!("remove {}", marker.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The target matched nothing (or only refused processes).
    #[error("target matched no process: {0}")]
    NoTarget(String),
    /// The fault needs a privilege faultline does not have.
    #[error("permission denied: {0}")]
    Permission(String),
    /// This host cannot apply the fault as asked (missing kernel feature or tool, someone
    /// else's qdisc in the way, an unresolvable host name). Known before anything is injected.
    #[error("cannot be applied on this host: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Cgroup(#[from] crate::sys::cgroup::CgroupError),
    #[error(transparent)]
    Tc(#[from] crate::sys::tc::TcError),
    #[error(transparent)]
    Iptables(#[from] crate::sys::iptables::IptablesError),
    #[error(transparent)]
    Delayer(#[from] crate::sys::delayer::DelayerError),
}

impl FaultError {
    /// A target that could not be resolved, classified by why (a container the runtime does
    /// not know has no processes; its API out of reach is a permission or this host's lack).
    pub(crate) fn unresolved(context: String, error: &crate::sys::proc::SelectError) -> FaultError {
        FaultError::of_cause(error.cause(), format!("{context}{error}"))
    }

    /// The error a `sys` failure of this cause is.
    pub(crate) fn of_cause(cause: crate::sys::Cause, message: String) -> FaultError {
        match cause {
            crate::sys::Cause::Gone => FaultError::NoTarget(message),
            crate::sys::Cause::Permission => FaultError::Permission(message),
            crate::sys::Cause::Unsupported => FaultError::Unsupported(message),
            crate::sys::Cause::Failed => FaultError::Failed(message),
        }
    }
}

/// Why a fault could not be prepared, applied or reverted; decided from the typed error, never
/// from its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultCause {
    /// The target matched nothing (or only refused processes).
    NoTarget,
    /// What was to be changed or undone is no longer there.
    Gone,
    Permission,
    /// Not on this host, as asked: known before anything is injected.
    Unsupported,
    Failed,
}

impl FaultError {
    /// The message without the cause's prefix, for a sentence that names the cause itself.
    pub fn detail(&self) -> String {
        match self {
            FaultError::NoTarget(m)
            | FaultError::Permission(m)
            | FaultError::Unsupported(m)
            | FaultError::Failed(m) => m.clone(),
            typed => typed.to_string(),
        }
    }

    pub fn cause(&self) -> FaultCause {
        let of = |cause: crate::sys::Cause| match cause {
            crate::sys::Cause::Gone => FaultCause::Gone,
            crate::sys::Cause::Permission => FaultCause::Permission,
            crate::sys::Cause::Unsupported => FaultCause::Unsupported,
            crate::sys::Cause::Failed => FaultCause::Failed,
        };
        match self {
            FaultError::NoTarget(_) => FaultCause::NoTarget,
            FaultError::Permission(_) => FaultCause::Permission,
            FaultError::Unsupported(_) => FaultCause::Unsupported,
            FaultError::Failed(_) => FaultCause::Failed,
            FaultError::Cgroup(e) => of(e.cause()),
            FaultError::Tc(e) => of(e.cause()),
            FaultError::Iptables(e) => of(e.cause()),
            FaultError::Delayer(e) => of(e.cause()),
        }
    }
}

/// What the faults of one run share while it lasts.
#[derive(Default)]
pub struct RunShared {
    /// The tc trees its network faults put on interfaces.
    pub tc_trees: std::sync::Arc<crate::sys::tc::TcTrees>,
    /// The iptables tables its network faults had iptables-nft create.
    pub iptables_tables: std::sync::Arc<crate::sys::iptables::CreatedTables>,
}

/// What a kind's module needs from the plan to build a live fault: its target, compiled, and
/// the flows a network fault must spare.
pub struct BuildContext<'a> {
    pub fault_id: &'a str,
    /// The target's name in the experiment (empty for host-wide faults).
    pub target_name: &'a str,
    /// The target, when it is a process target.
    pub process: Option<&'a crate::sys::proc::CompiledSelector>,
    /// The target, when it is a network target.
    pub network: Option<&'a crate::fault::network::NetworkTarget>,
    pub protected: &'a [crate::net::Protected],
    pub shared: &'a RunShared,
}

impl FaultAction {
    /// The compiled form, as its kind's module defines it.
    pub fn kind(&self) -> &dyn KindPlan {
        match self {
            FaultAction::ProcessKill(kind) => kind,
            FaultAction::ProcessStop(kind) => kind,
            FaultAction::Network(kind) => kind,
            FaultAction::CpuPressure(kind) => kind,
            FaultAction::CpuLimit(kind) => kind,
            FaultAction::MemoryPressure(kind) => kind,
            FaultAction::DiskIoPressure(kind) => kind,
            FaultAction::DiskIoLimit(kind) => kind,
            FaultAction::DiskFill(kind) => kind,
        }
    }

    /// The live fault, built by its kind's module.
    pub fn build(&self, ctx: &BuildContext<'_>) -> Box<dyn Fault> {
        self.kind().build(ctx)
    }

    /// What the fault does, in a few words: `SIGTERM`, `delay 200ms, backend netem`.
    pub fn effect(&self) -> String {
        self.kind().summary()
    }

    /// The directory whose filesystem the fault fills, if it fills one.
    pub fn fills(&self) -> Option<&std::path::Path> {
        self.kind().fills()
    }
}
