//! The runner: lifecycle, scheduler, abort, outcomes.
//!
//! validate → resolve → `setup` → `before` gate → T0 → fault scheduler and `during` probes
//! run concurrently → on abort or completion every live fault is reverted (those sharing host
//! structures newest first, the others at the same time) →
//! `after` checks → `cleanup` → outcome. Reverts run on every path; the cancellation that
//! drives an abort is an input (probe breach, deadline, operator interrupt).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub mod checks;
pub mod commands;
pub mod faults;
pub mod interrupt;
pub mod ui;

use crate::fault::{Fault, FaultCause, FaultError, ProcRef};
use crate::outcome::Outcome;
use crate::plan::{FaultSpec, Plan, ProbeSpec};
use crate::probe::slo::{SloTracker, Verdict};
use crate::probe::{Probe, Sample};
use crate::report::event::{AbortRecord, AbortSample, AbortTrigger, Event, Phase, RevertCause};
use crate::report::journal::Journal;
use crate::report::ms;
use crate::state::StateDir;
use faults::{FaultEvent, Live, Registry};
use interrupt::{Interrupt, Level};
use std::borrow::Cow;
use ui::Ui;

/// The seam between the engine and the host: real faults and probes, or simulated ones for
/// deterministic engine tests.
pub trait Backend: Send + Sync {
    fn fault(&self, spec: &FaultSpec, plan: &Plan) -> Box<dyn Fault>;
    fn probe(&self, spec: &ProbeSpec) -> Box<dyn Probe>;
}

/// Faults and probes that act on this host.
#[derive(Default)]
pub struct RealBackend {
    shared: crate::fault::RunShared,
    /// Put into the probes that send them, and only there.
    secrets: crate::secrets::Secrets,
}

impl RealBackend {
    pub fn with_secrets(secrets: crate::secrets::Secrets) -> RealBackend {
        RealBackend {
            secrets,
            ..RealBackend::default()
        }
    }
}

impl Backend for RealBackend {
    fn fault(&self, spec: &FaultSpec, plan: &Plan) -> Box<dyn Fault> {
        spec.build(plan, &self.shared)
    }

    fn probe(&self, spec: &ProbeSpec) -> Box<dyn Probe> {
        if self.secrets.is_empty() {
            return crate::probe::build(spec);
        }
        crate::probe::build(&spec.revealed(&self.secrets))
    }
}

/// Why the checks before T0 stopped the run.
enum Preflight {
    Refused(String),
    Interrupted,
}

/// Everything a run needs besides the plan.
pub struct RunContext {
    pub backend: Arc<dyn Backend>,
    pub state: StateDir,
    pub journal: Journal,
    pub run_id: String,
    pub interrupt: Interrupt,
    pub quiet: bool,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub name: String,
    pub outcome: Outcome,
    pub reason: String,
    pub abort: Option<AbortRecord>,
    /// Reverts that failed: the host may still carry these faults.
    pub revert_failures: Vec<String>,
    pub duration: Duration,
}

/// State shared by the engine's tasks.
pub struct Shared {
    pub plan: Arc<Plan>,
    pub backend: Arc<dyn Backend>,
    pub state: StateDir,
    pub journal: Journal,
    pub run_id: String,
    pub owner: ProcRef,
    pub ui: Ui,
    pub registry: Registry,
    start: Instant,
    record_seq: AtomicU64,
    revert_failures: Mutex<Vec<String>>,
}

impl Shared {
    pub fn t_ms(&self) -> f64 {
        ms(self.start.elapsed())
    }

    /// Journal `event` and show its terminal line, if it has one: each step said once.
    pub fn emit(&self, event: &Event<'_>) {
        self.journal.write(event);
        if let Some(line) = event.terminal_line() {
            self.ui.line(line);
        }
    }

    fn next_record_id(&self, fault_id: &str) -> String {
        let n = self.record_seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{}-{}",
            self.run_id,
            crate::units::file_safe(fault_id),
            n
        )
    }

    /// Revert one live injection, bounded by the plan's revert timeout. On success the state
    /// record goes; on failure it stays for `faultline recover` and the failure is remembered.
    pub async fn revert(&self, mut live: Live, cause: RevertCause) -> bool {
        let state = self.state.clone();
        let record = live.record.clone();
        let running = live.running.take();
        let reverting = tokio::task::spawn_blocking(move || {
            crate::state::revert_record(&state, &record, running)
        });
        let result = match reverting.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("revert panicked: {e}")),
        };
        match result {
            Ok(reverted) => {
                self.emit(&Event::FaultReverted {
                    t_ms: self.t_ms(),
                    fault: live.record.fault_id.as_str().into(),
                    record: live.record.id.as_str().into(),
                    summary: reverted.summary.as_str().into(),
                    cause,
                    achieved: Cow::Borrowed(&reverted.details),
                });
                true
            }
            Err(error) => {
                let remedy = format!(
                    "the host may still carry this fault ({}); run `faultline recover --state-dir {}` once the cause is fixed",
                    live.record.revert.describe(),
                    self.state.root().display()
                );
                self.emit(&Event::FaultRevertFailed {
                    t_ms: self.t_ms(),
                    fault: live.record.fault_id.as_str().into(),
                    record: live.record.id.as_str().into(),
                    error: error.clone(),
                    remedy: remedy.clone(),
                });
                self.revert_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{}: {error}; {remedy}", live.record.fault_id));
                false
            }
        }
    }

    /// Revert everything still live. Faults that share host structures (see
    /// [`RevertRecipe::shared_with`]) revert one after the other, newest first; the others
    /// at the same time, so a breach does not wait for one revert to end before the next
    /// starts. Returns how many were reverted (a failed revert is not counted).
    pub async fn revert_all(self: &Arc<Self>, cause: RevertCause) -> usize {
        let lives = self.registry.drain_newest_first();
        let mut chains: Vec<(Option<&'static str>, Vec<Live>)> = Vec::new();
        for live in lives {
            let shared_with = live.record.revert.shared_with();
            match chains
                .iter_mut()
                .find(|(key, _)| key.is_some() && *key == shared_with)
            {
                Some((_, chain)) => chain.push(live),
                None => chains.push((shared_with, vec![live])),
            }
        }
        let mut reverting = tokio::task::JoinSet::new();
        for (_, chain) in chains {
            let shared = self.clone();
            reverting.spawn(async move {
                let mut reverted = 0;
                for live in chain {
                    reverted += usize::from(shared.revert(live, cause).await);
                }
                reverted
            });
        }
        let mut count = 0;
        while let Some(done) = reverting.join_next().await {
            match done {
                Ok(reverted) => count += reverted,
                Err(e) => tracing::error!("a revert task failed: {e}"),
            }
        }
        count
    }
}

/// This process, as an owner of state records.
pub fn this_process() -> ProcRef {
    let pid = std::process::id();
    ProcRef {
        pid,
        start_time: crate::sys::proc::start_time(pid).unwrap_or(0),
    }
}

/// Run one experiment to its end. Never returns before every fault it injected has been
/// reverted (or its revert has failed and been recorded).
pub async fn run(plan: Arc<Plan>, ctx: RunContext) -> RunReport {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        backend: ctx.backend,
        state: ctx.state,
        journal: ctx.journal,
        run_id: ctx.run_id,
        owner: this_process(),
        ui: if ctx.quiet {
            Ui::silent(start)
        } else {
            Ui::new(start, false)
        },
        registry: Registry::default(),
        start,
        record_seq: AtomicU64::new(0),
        revert_failures: Mutex::new(Vec::new()),
    });
    let mut runner = Runner {
        shared: shared.clone(),
        interrupt: ctx.interrupt,
        background: Vec::new(),
        verdict: Verdicts::default(),
    };
    let report = runner.run().await;
    shared.ui.clear_status();
    report
}

/// The accumulated facts from which the outcome is decided.
#[derive(Default)]
struct Verdicts {
    not_ready: Option<String>,
    injection_failed: Option<String>,
    aborted: Option<String>,
    interrupted: Option<String>,
    deviated: Option<String>,
    abort: Option<AbortRecord>,
}

struct Runner {
    shared: Arc<Shared>,
    interrupt: Interrupt,
    background: Vec<commands::Background>,
    verdict: Verdicts,
}

impl Runner {
    fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    fn phase(&self, phase: Phase) {
        self.shared.journal.write(&Event::Phase {
            t_ms: self.shared.t_ms(),
            phase,
        });
    }

    /// Record how a foreground setup or cleanup command ended.
    fn journal_command(
        &self,
        phase: Phase,
        spec: &crate::plan::CommandSpec,
        began: Instant,
        finished: &commands::Finished,
    ) {
        self.shared.emit(&Event::Command {
            t_ms: self.shared.t_ms(),
            phase,
            name: spec.name.as_str().into(),
            argv: Cow::Borrowed(&spec.argv),
            pid: None,
            exit_code: finished.exit_code,
            background: false,
            duration_ms: ms(began.elapsed()),
            error: finished.error.clone(),
        });
    }

    fn interrupted(&self) -> bool {
        self.interrupt.level() >= Level::Abort
    }

    fn hurry(&self) -> bool {
        self.interrupt.level() >= Level::Hurry
    }

    fn note_interrupt(&mut self) {
        if self.interrupted() && self.verdict.interrupted.is_none() {
            self.verdict.interrupted = Some("interrupted by the operator (SIGINT/SIGTERM)".into());
        }
    }

    async fn run(&mut self) -> RunReport {
        let shared = self.shared.clone();
        let plan = self.plan().clone();
        shared.journal.write(&Event::RunStarted {
            t_ms: 0.0,
            run_id: shared.run_id.as_str().into(),
            experiment_name: plan.name.as_str().into(),
            source: plan.source.display().to_string().into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
                .into(),
            pid: std::process::id(),
            started_at: jiff::Timestamp::now().to_string().into(),
            experiment: Some(&plan.experiment),
        });
        shared.ui.line(format!(
            "experiment {} ({})",
            plan.name,
            plan.source.display()
        ));

        if self.setup().await && self.before_gate().await {
            self.inject_and_watch().await;
        }
        // Whatever happened above, nothing may stay injected.
        let reverted = shared.revert_all(RevertCause::EndOfRun).await;
        if reverted > 0 {
            tracing::debug!("{reverted} injections reverted at the end of the run");
        }
        if self.verdict.not_ready.is_none() && !self.hurry() {
            self.after_checks().await;
        }
        self.cleanup().await;
        self.note_interrupt();
        self.finish()
    }

    async fn setup(&mut self) -> bool {
        if self.plan().setup.is_empty() {
            return true;
        }
        self.phase(Phase::Setup);
        let specs = self.plan().setup.clone();
        for spec in &specs {
            if self.interrupted() {
                self.note_interrupt();
                return false;
            }
            let began = Instant::now();
            if spec.background {
                let result = commands::spawn_background(spec);
                let (pid, error) = match result {
                    Ok(bg) => {
                        let pid = bg.child.id();
                        self.background.push(bg);
                        (pid, None)
                    }
                    Err(e) => (None, Some(e)),
                };
                self.shared.emit(&Event::Command {
                    t_ms: self.shared.t_ms(),
                    phase: Phase::Setup,
                    name: spec.name.as_str().into(),
                    argv: Cow::Borrowed(&spec.argv),
                    pid,
                    exit_code: None,
                    background: true,
                    duration_ms: ms(began.elapsed()),
                    error: error.clone(),
                });
                if let Some(e) = error {
                    self.verdict.not_ready = Some(format!("setup failed: {e}"));
                    return false;
                }
            } else {
                let finished = tokio::select! {
                    f = commands::run(spec) => f,
                    _ = self.interrupt.reached(Level::Abort) => {
                        self.note_interrupt();
                        return false;
                    }
                };
                self.journal_command(Phase::Setup, spec, began, &finished);
                if let Some(e) = finished.error {
                    self.verdict.not_ready = Some(format!("setup failed: {e}"));
                    return false;
                }
            }
        }
        true
    }

    async fn before_gate(&mut self) -> bool {
        let Some(gate) = self.plan().before.clone() else {
            return true;
        };
        self.phase(Phase::Before);
        let probes = self.build_probes(&gate.probes);
        let result = tokio::select! {
            r = checks::until_all_pass(&self.shared, Phase::Before, &probes, gate.wait_until) => r,
            _ = self.interrupt.reached(Level::Abort) => {
                self.note_interrupt();
                return false;
            }
        };
        // A background service that died during setup explains a failed gate better than
        // the probe does.
        for bg in &mut self.background {
            if let Some(status) = bg.exited() {
                self.shared.ui.line(format!(
                    "setup   note: background {} exited ({status})",
                    bg.name
                ));
            }
        }
        match result {
            Ok(_) => true,
            Err(reason) => {
                self.verdict.not_ready =
                    Some(format!("steady state not met before injecting: {reason}"));
                false
            }
        }
    }

    fn build_probes(&self, names: &[String]) -> Vec<(ProbeSpec, Arc<dyn Probe>)> {
        names
            .iter()
            .filter_map(|name| self.plan().probes.get(name))
            .map(|spec| {
                (
                    spec.clone(),
                    Arc::<dyn Probe>::from(self.shared.backend.probe(spec)),
                )
            })
            .collect()
    }

    /// T0: start the scheduler and the `during` probes; watch for a breach, the deadline, an
    /// injection failure or an interrupt; abort at once on any of them.
    async fn inject_and_watch(&mut self) {
        let shared = self.shared.clone();
        let plan = self.plan().clone();
        let t0 = Instant::now();
        self.phase(Phase::T0);
        shared.ui.line(format!(
            "T0      {} fault{} scheduled, {} during-probe{}",
            plan.faults.len(),
            plural(plan.faults.len()),
            plan.during.len(),
            plural(plan.during.len())
        ));

        match self.preflight().await {
            Ok(()) => {}
            Err(Preflight::Refused(reason)) => {
                self.verdict.injection_failed = Some(reason);
                return;
            }
            Err(Preflight::Interrupted) => {
                self.note_interrupt();
                return;
            }
        }
        // T0 marks the instant the schedule starts from (and the preflight); `during` is the
        // window the faults and during-probes live in, as the samples' phase says.
        self.phase(Phase::During);

        let cancel = CancellationToken::new();
        let (fault_tx, mut fault_rx) = mpsc::unbounded_channel();
        let mut fault_tasks = faults::spawn_all(&shared, t0, &cancel, fault_tx);

        let probes_stop = CancellationToken::new();
        let (sample_tx, mut sample_rx) = mpsc::unbounded_channel::<(usize, Instant, Sample)>();
        let during = self.build_probes(&plan.during);
        let mut trackers: Vec<SloTracker> = during
            .iter()
            .map(|(spec, _)| SloTracker::new(spec))
            .collect();
        let mut recent: Vec<Vec<AbortSample>> = vec![Vec::new(); during.len()];
        let mut last_ok: Vec<bool> = vec![true; during.len()];
        let mut deviation_noted: Vec<bool> = vec![false; during.len()];
        let mut probe_tasks = tokio::task::JoinSet::new();
        for (index, (spec, probe)) in during.iter().enumerate() {
            probe_tasks.spawn(checks::sample_loop(
                index,
                spec.clone(),
                probe.clone(),
                sample_tx.clone(),
                probes_stop.clone(),
            ));
        }
        drop(sample_tx);

        let deadline = t0 + plan.max_duration;
        let mut status_tick = tokio::time::interval(Duration::from_millis(250));
        let mut faults_done = plan.faults.is_empty();
        let mut trigger: Option<(AbortTrigger, Option<usize>, String, Instant)> = None;

        while !faults_done && trigger.is_none() {
            tokio::select! {
                biased;
                _ = self.interrupt.reached(Level::Abort) => {
                    trigger = Some((AbortTrigger::Interrupted, None, "interrupted by the operator".into(), Instant::now()));
                }
                Some((index, at, sample)) = sample_rx.recv() => {
                    let (spec, _) = &during[index];
                    let verdict = trackers[index].record(at.into_std(), &sample);
                    let failures = trackers[index].consecutive_failures();
                    shared.journal.write(&Event::ProbeSample {
                        t_ms: ms(at.duration_since(shared.start)),
                        phase: Phase::During,
                        probe: spec.name.as_str().into(),
                        sample: Cow::Borrowed(&sample),
                        consecutive_failures: Some(failures),
                    });
                    push_bounded(&mut recent[index], AbortSample {
                        t_ms: ms(at.duration_since(shared.start)),
                        ok: sample.ok,
                        error: sample.error.clone(),
                    });
                    if !sample.ok {
                        shared.ui.line(format!(
                            "during  {} failed ({failures}/{}): {}",
                            spec.name,
                            spec.failure_threshold,
                            sample.error.as_deref().unwrap_or("failed")
                        ));
                    } else if !last_ok[index] {
                        shared.ui.line(format!("during  {} healthy again", spec.name));
                    }
                    last_ok[index] = sample.ok;
                    if let Verdict::Failing { reason } = verdict {
                        if plan.abort_on_probe_failure {
                            trigger = Some((AbortTrigger::ProbeFailure, Some(index), reason, Instant::now()));
                        } else if !deviation_noted[index] {
                            deviation_noted[index] = true;
                            shared.ui.line(format!("during  {} FAILING (abort disabled): {reason}", spec.name));
                            self.verdict.deviated.get_or_insert(format!("during probe {} failed: {reason}", spec.name));
                        }
                    }
                }
                Some(event) = fault_rx.recv() => {
                    if let FaultEvent::Failed { fault_id, error } = event {
                        let reason = format!("fault {fault_id} could not be injected: {error}");
                        self.verdict.injection_failed = Some(reason.clone());
                        trigger = Some((AbortTrigger::InjectionFailed, None, reason, Instant::now()));
                    }
                }
                joined = fault_tasks.join_next() => {
                    if joined.is_none() {
                        faults_done = true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    trigger = Some((
                        AbortTrigger::MaxDuration,
                        None,
                        format!("max_duration {} reached", humantime::format_duration(plan.max_duration)),
                        Instant::now(),
                    ));
                }
                _ = status_tick.tick() => {
                    shared.ui.status(status_line(&shared, t0, &during, &trackers));
                }
            }
        }

        // Abort or natural end: stop everything that waits, then revert what is live.
        cancel.cancel();
        while fault_tasks.join_next().await.is_some() {}
        probes_stop.cancel();

        if let Some((trigger, probe_index, reason, breach_at)) = trigger {
            self.phase(Phase::Revert);
            shared.ui.line(format!("ABORT   {reason}"));
            let reverted = shared.revert_all(RevertCause::Abort).await;
            let all_reverted_at = Instant::now();
            let (probe, samples, threshold) = match probe_index {
                Some(i) => (
                    Some(during[i].0.name.clone()),
                    std::mem::take(&mut recent[i]),
                    Some(during[i].0.failure_threshold),
                ),
                None => (None, Vec::new(), None),
            };
            let record = AbortRecord {
                trigger,
                probe: probe.clone(),
                reason: match &probe {
                    Some(name) => format!("probe {name}: {reason}"),
                    None => reason.clone(),
                },
                samples,
                failure_threshold: threshold,
                breach_t_ms: ms(breach_at.duration_since(shared.start)),
                all_reverted_t_ms: ms(all_reverted_at.duration_since(shared.start)),
                breach_to_all_reverted_ms: ms(all_reverted_at.duration_since(breach_at)),
                faults_reverted: reverted,
            };
            shared.emit(&Event::Abort {
                t_ms: shared.t_ms(),
                record: Cow::Borrowed(&record),
            });
            match trigger {
                AbortTrigger::ProbeFailure | AbortTrigger::MaxDuration => {
                    self.verdict.aborted = Some(record.reason.clone());
                }
                AbortTrigger::Interrupted => self.note_interrupt(),
                AbortTrigger::InjectionFailed => {}
            }
            self.verdict.abort = Some(record);
        } else {
            self.phase(Phase::Revert);
            shared.revert_all(RevertCause::EndOfFaults).await;
        }
        while probe_tasks.join_next().await.is_some() {}
    }

    /// Before anything is injected: every fault must be possible on this host with the
    /// privileges we have. A target that does not exist yet is fine here (it may appear
    /// later); missing privilege or a missing kernel feature is not. The checks run side by
    /// side, an interrupt ends them at once, and one that does not finish within the plan's
    /// `check_timeout` (resolving a target can hang: a pidfile on a dead mount) stops the run:
    /// nothing is injected.
    async fn preflight(&mut self) -> Result<(), Preflight> {
        let shared = self.shared.clone();
        // The host's capabilities are probed once, here, outside the checks' budget: the
        // tc probe (a scratch namespace, a dozen tool calls, each bounded by the runner's
        // timeout) took most of the default 15 s under an emulated CPU, and it says nothing
        // about a target being on a hung mount. An interrupt still ends the wait at once.
        if shared
            .plan
            .faults
            .iter()
            .any(|f| matches!(f.action, crate::plan::FaultAction::Network(_)))
        {
            let probing = tokio::task::spawn_blocking(|| {
                crate::host::HostCaps::get();
            });
            tokio::select! {
                biased;
                _ = self.interrupt.reached(Level::Abort) => return Err(Preflight::Interrupted),
                _ = probing => {}
            }
        }
        let mut checks = tokio::task::JoinSet::new();
        for (index, spec) in shared.plan.faults.iter().enumerate() {
            let fault: Arc<dyn Fault> = Arc::from(shared.backend.fault(spec, &shared.plan));
            checks.spawn_blocking(move || (index, fault.check()));
        }
        let mut results: Vec<Option<Result<(), FaultError>>> =
            (0..shared.plan.faults.len()).map(|_| None).collect();
        let check_timeout = shared.plan.check_timeout;
        let deadline = tokio::time::Instant::now() + check_timeout;
        loop {
            tokio::select! {
                biased;
                _ = self.interrupt.reached(Level::Abort) => return Err(Preflight::Interrupted),
                _ = tokio::time::sleep_until(deadline) => break,
                done = checks.join_next() => match done {
                    Some(Ok((index, result))) => results[index] = Some(result),
                    Some(Err(_)) => {}
                    None => break,
                },
            }
        }
        // The checks still running hold no state: they are left to finish and dropped.
        checks.detach_all();
        for (spec, result) in shared.plan.faults.iter().zip(results) {
            let reason = match result {
                None => format!(
                    "checking fault {} did not finish within {} (its target may be on a hung mount); nothing was injected",
                    spec.id,
                    humantime::format_duration(check_timeout)
                ),
                Some(Err(e)) if e.cause() == FaultCause::Permission => format!(
                    "fault {} needs more privilege than faultline has: {}; nothing was injected",
                    spec.id,
                    e.detail()
                ),
                Some(Err(e)) if e.cause() == FaultCause::Unsupported => format!(
                    "fault {} cannot be applied on this host: {}; nothing was injected",
                    spec.id,
                    e.detail()
                ),
                // A target that does not exist yet may appear later; it is checked again
                // when the fault fires.
                Some(_) => continue,
            };
            shared.journal.write(&Event::FaultInjectionFailed {
                t_ms: shared.t_ms(),
                fault: spec.id.as_str().into(),
                record: None,
                error: reason.clone(),
            });
            shared.ui.line(format!("FAILED  {reason}"));
            return Err(Preflight::Refused(reason));
        }
        Ok(())
    }

    async fn after_checks(&mut self) {
        let Some(after) = self.plan().after.clone() else {
            return;
        };
        self.phase(Phase::After);
        let probes = self.build_probes(&after.probes);
        let result = tokio::select! {
            r = checks::until_all_pass(&self.shared, Phase::After, &probes, after.within) => Some(r),
            _ = self.interrupt.reached(Level::Hurry) => None,
        };
        match result {
            Some(Ok(_)) => {}
            Some(Err(reason)) => {
                self.verdict.deviated = Some(format!(
                    "did not recover within {}: {reason}",
                    humantime::format_duration(after.within)
                ));
            }
            None => self.shared.ui.line("after   skipped (second interrupt)"),
        }
    }

    async fn cleanup(&mut self) {
        let specs = self.plan().cleanup.clone();
        if !specs.is_empty() || !self.background.is_empty() {
            self.phase(Phase::Cleanup);
        }
        for spec in &specs {
            if self.hurry() {
                self.shared.ui.line("cleanup skipped (second interrupt)");
                break;
            }
            let began = Instant::now();
            let finished = tokio::select! {
                f = commands::run(spec) => f,
                _ = self.interrupt.reached(Level::Hurry) => commands::Finished {
                    exit_code: None,
                    error: Some("abandoned (second interrupt)".into()),
                },
            };
            self.journal_command(Phase::Cleanup, spec, began, &finished);
        }
        // Background processes are our children: they never outlive the run, even in a hurry.
        let grace = if self.hurry() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        };
        for bg in std::mem::take(&mut self.background).into_iter().rev() {
            let said = bg.stop(grace).await;
            self.shared.ui.line(format!("cleanup {said}"));
        }
    }

    fn finish(&mut self) -> RunReport {
        let shared = &self.shared;
        let failures = shared
            .revert_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let v = &self.verdict;
        let (outcome, reason) = if !failures.is_empty() {
            (
                Outcome::RevertFailed,
                format!(
                    "{} revert(s) failed: {}",
                    failures.len(),
                    failures.join("; ")
                ),
            )
        } else if let Some(r) = &v.interrupted {
            (Outcome::Interrupted, r.clone())
        } else if let Some(r) = &v.injection_failed {
            (Outcome::InjectionFailed, r.clone())
        } else if let Some(r) = &v.aborted {
            (Outcome::Aborted, r.clone())
        } else if let Some(r) = &v.not_ready {
            (Outcome::NotReady, r.clone())
        } else if let Some(r) = &v.deviated {
            (Outcome::Deviated, r.clone())
        } else {
            (
                Outcome::Passed,
                "steady state held before, during and after every fault".to_string(),
            )
        };
        shared.journal.write(&Event::Outcome {
            t_ms: shared.t_ms(),
            outcome,
            exit_code: outcome.exit_code(),
            reason: reason.as_str().into(),
            finished_at: jiff::Timestamp::now().to_string(),
        });
        shared.journal.sync();
        RunReport {
            name: shared.plan.name.clone(),
            outcome,
            reason,
            abort: v.abort.clone(),
            revert_failures: failures,
            duration: shared.start.elapsed(),
        }
    }
}

fn push_bounded(samples: &mut Vec<AbortSample>, sample: AbortSample) {
    const KEEP: usize = 10;
    if samples.len() == KEEP {
        samples.remove(0);
    }
    samples.push(sample);
}

fn status_line(
    shared: &Shared,
    t0: Instant,
    during: &[(ProbeSpec, Arc<dyn Probe>)],
    trackers: &[SloTracker],
) -> String {
    let probes: Vec<String> = during
        .iter()
        .zip(trackers)
        .map(
            |((spec, _), tracker)| match tracker.consecutive_failures() {
                0 => format!("{} ok", spec.name),
                n => format!("{} {n}/{} failed", spec.name, spec.failure_threshold),
            },
        )
        .collect();
    let live = shared.registry.fault_ids();
    format!(
        "T+{:.1}s · live faults: {} · {}",
        t0.elapsed().as_secs_f64(),
        if live.is_empty() {
            "none".to_string()
        } else {
            live.join(", ")
        },
        probes.join(" · ")
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
