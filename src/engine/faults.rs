//! The fault scheduler: one task per fault, each waiting for its start (offset from T0,
//! other faults, delay), injecting through the write-ahead state file, holding for its
//! duration (repeating if asked) and reverting at its natural end.
//!
//! Cancellation (abort) never interrupts an `apply` that is under way — reverting a
//! half-applied fault concurrently would race it — but every wait is cancelled at once.
//! After cancelling, the engine joins the tasks and reverts whatever is still live, newest
//! first, from the shared [`Registry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::fault::{LiveHandle, Prepared, RevertRecipe};
use crate::plan::FaultSpec;
use crate::report::event::{Event, RevertCause};
use crate::state::FaultRecord;
use crate::units::ms;
use std::borrow::Cow;

/// How long a kill without a `duration` watches the containers it ended for a restart.
const RESTART_WATCH: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the watch asks the runtime.
const RESTART_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// One injection that may still need reverting.
#[derive(Debug)]
pub struct Live {
    /// As written to the state directory before the injection.
    pub record: FaultRecord,
    /// What its `apply` left running in this process, for the revert to stop.
    pub running: Option<LiveHandle>,
}

/// Live injections in start order.
#[derive(Default)]
pub struct Registry(Mutex<Vec<Live>>);

impl Registry {
    fn push(&self, live: Live) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(live);
    }

    fn take_fault(&self, fault_id: &str) -> Vec<Live> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<Live>, Vec<Live>) =
            all.drain(..).partition(|l| l.record.fault_id == fault_id);
        *all = rest;
        mine
    }

    /// Hand the injection what its `apply` started. A handle whose record is gone (it cannot
    /// be: reverts run after the fault tasks end) is dropped, which stops it.
    fn attach(&self, record_id: &str, running: Option<LiveHandle>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = all.iter_mut().find(|l| l.record.id == record_id) {
            live.running = running;
        }
    }

    fn take_record(&self, record_id: &str) -> Option<Live> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let index = all.iter().position(|l| l.record.id == record_id)?;
        Some(all.remove(index))
    }

    /// Everything still live, newest first (the order to revert in).
    pub fn drain_newest_first(&self) -> Vec<Live> {
        let mut all: Vec<Live> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        all.reverse();
        all
    }

    /// Distinct faults with a live injection, in start order.
    pub fn fault_ids(&self) -> Vec<String> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = Vec::new();
        for live in all.iter() {
            if !ids.contains(&live.record.fault_id) {
                ids.push(live.record.fault_id.clone());
            }
        }
        ids
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an injection did not happen.
enum Injection {
    Failed(String),
    /// The run stopped first.
    Abandoned,
}

/// What fault tasks tell the engine.
#[derive(Debug)]
pub enum FaultEvent {
    Injected { fault_id: String },
    Failed { fault_id: String, error: String },
}

/// Start one task per fault. Returns the task set; the engine watches `events`.
pub fn spawn_all(
    shared: &Arc<Shared>,
    t0: Instant,
    cancel: &CancellationToken,
    events: mpsc::UnboundedSender<FaultEvent>,
) -> JoinSet<()> {
    let mut started_tx: HashMap<String, watch::Sender<Option<Instant>>> = HashMap::new();
    let mut started_rx: HashMap<String, watch::Receiver<Option<Instant>>> = HashMap::new();
    for spec in &shared.plan.faults {
        let (tx, rx) = watch::channel(None);
        started_tx.insert(spec.id.clone(), tx);
        started_rx.insert(spec.id.clone(), rx);
    }
    let mut tasks = JoinSet::new();
    for (index, spec) in shared.plan.faults.iter().enumerate() {
        let deps: Vec<watch::Receiver<Option<Instant>>> = spec
            .after
            .iter()
            .filter_map(|id| started_rx.get(id).cloned())
            .collect();
        let started = started_tx.remove(&spec.id).expect("one sender per fault");
        let task = FaultTask {
            shared: shared.clone(),
            index,
            t0,
            cancel: cancel.clone(),
            events: events.clone(),
            started,
            deps,
        };
        tasks.spawn(task.run());
    }
    tasks
}

struct FaultTask {
    shared: Arc<Shared>,
    index: usize,
    t0: Instant,
    cancel: CancellationToken,
    events: mpsc::UnboundedSender<FaultEvent>,
    started: watch::Sender<Option<Instant>>,
    deps: Vec<watch::Receiver<Option<Instant>>>,
}

impl FaultTask {
    fn spec(&self) -> &FaultSpec {
        &self.shared.plan.faults[self.index]
    }

    /// Sleep until `deadline`; false when cancelled first.
    async fn wait_until(&self, deadline: Instant) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep_until(deadline) => true,
        }
    }

    async fn run(mut self) {
        let spec = self.spec().clone();
        // Start at the later of `at` and (the last dependency's injection + `delay`).
        let mut start = self.t0 + spec.at;
        for dep in &mut self.deps {
            let dep_started = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => None,
                r = dep.wait_for(|started| started.is_some()) => r.ok().and_then(|s| *s),
            };
            let Some(dep_started) = dep_started else {
                return;
            };
            start = start.max(dep_started + spec.delay);
        }
        if !self.wait_until(start).await {
            return;
        }

        let began = Instant::now();
        let end = spec.duration.map(|d| began + d);
        let mut injected_once = false;
        let mut killed = Vec::new();
        loop {
            match self.inject_once().await {
                Err(Injection::Abandoned) => return,
                Ok(applied) => {
                    if !injected_once {
                        injected_once = true;
                        killed = crate::fault::process::killed_containers(&applied);
                        let _ = self.started.send(Some(Instant::now()));
                        let _ = self.events.send(FaultEvent::Injected {
                            fault_id: spec.id.clone(),
                        });
                    }
                }
                Err(Injection::Failed(error)) => {
                    let _ = self.events.send(FaultEvent::Failed {
                        fault_id: spec.id.clone(),
                        error,
                    });
                    return;
                }
            }
            let (Some(every), Some(end)) = (spec.repeat_every, end) else {
                break;
            };
            let next = Instant::now() + every;
            if next >= end {
                break;
            }
            if !self.wait_until(next).await {
                return;
            }
        }

        if !killed.is_empty() {
            let until = end.unwrap_or(began + RESTART_WATCH);
            self.watch_restarts(killed, began, until).await;
        }
        if let Some(end) = end {
            if !self.wait_until(end).await {
                return;
            }
            for live in self.shared.registry.take_fault(&spec.id).into_iter().rev() {
                self.shared.revert(live, RevertCause::DurationElapsed).await;
            }
        }
    }

    /// Watch containers a kill ended until each runs again under a new main process, the
    /// watch ends (`until`) or the run stops; journal what became of each.
    async fn watch_restarts(
        &self,
        killed: Vec<crate::fault::process::KilledContainer>,
        began: Instant,
        until: Instant,
    ) {
        let mut waiting: Vec<(crate::fault::process::KilledContainer, Option<String>)> =
            killed.into_iter().map(|k| (k, None)).collect();
        let mut note = None;
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for (killed, _) in waiting {
                let checking = killed.clone();
                let checked = tokio::task::spawn_blocking(move || checking.check_restart())
                    .await
                    .unwrap_or_else(|e| Err(format!("the check panicked: {e}")));
                match checked {
                    Ok(Some(restarted)) => {
                        self.emit_restart(&killed, began, Some(restarted), None);
                    }
                    Ok(None) => still.push((killed, None)),
                    // The runtime may be restarting too: keep asking, and say so if it never
                    // answers again.
                    Err(e) => still.push((killed, Some(e))),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= until {
                note = Some("the watch ended".to_string());
                break;
            }
            if !self.wait_until((now + RESTART_POLL).min(until)).await {
                note = Some("the run stopped first".to_string());
                break;
            }
        }
        for (killed, error) in waiting {
            let note = match error {
                Some(e) => Some(format!(
                    "{}; last answer: {e}",
                    note.clone().unwrap_or_default()
                )),
                None => note.clone(),
            };
            self.emit_restart(&killed, began, None, note);
        }
    }

    fn emit_restart(
        &self,
        killed: &crate::fault::process::KilledContainer,
        began: Instant,
        restarted: Option<crate::fault::process::Restarted>,
        note: Option<String>,
    ) {
        self.shared.emit(&Event::ContainerRestart {
            t_ms: self.shared.t_ms(),
            fault: self.spec().id.as_str().into(),
            container: killed.label().into(),
            id: killed.container.id.as_str().into(),
            restart_policy: killed.container.restart_policy.as_str().into(),
            old_pid: killed.container.pid,
            restarted: restarted.is_some(),
            new_pid: restarted.as_ref().map(|r| r.new_pid),
            restart_ms: restarted.and_then(|r| r.restart_ms),
            watched_ms: ms(began.elapsed()),
            note,
        });
    }

    /// prepare → durable record → apply. On success the injection is live in the registry
    /// (or already forgotten when there is nothing to revert); its details are returned.
    ///
    /// A stop (breach, interrupt, deadline) does not wait for a prepare in flight: resolving a
    /// target can hang (a pidfile on a dead NFS mount), and the reverts of what is live must
    /// not wait for it. The prepare touched nothing, so it is left to finish on its own
    /// thread and its result dropped. An apply is never abandoned: it changes the host.
    async fn inject_once(&self) -> Result<serde_json::Value, Injection> {
        let shared = &self.shared;
        let spec = self.spec();
        let fault = shared.backend.fault(spec, &shared.plan);
        let fault = Arc::<dyn crate::fault::Fault>::from(fault);

        let preparing = fault.clone();
        let preparation = tokio::task::spawn_blocking(move || preparing.prepare());
        let prepared: Prepared = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(self.abandoned()),
            done = preparation => match done {
                Ok(Ok(prepared)) => prepared,
                Ok(Err(e)) => return Err(Injection::Failed(self.failed(None, e.to_string()))),
                Err(e) => {
                    return Err(Injection::Failed(self.failed(None, format!("prepare panicked: {e}"))));
                }
            },
        };
        if self.cancel.is_cancelled() {
            return Err(self.abandoned());
        }

        let record_id = shared.next_record_id(&spec.id);
        let record = FaultRecord {
            id: record_id.clone(),
            run_id: shared.run_id.clone(),
            experiment: shared.plan.name.clone(),
            fault_id: spec.id.clone(),
            owner: shared.owner,
            recorded_at: jiff::Timestamp::now().to_string(),
            summary: prepared.summary.clone(),
            revert: prepared.revert.clone(),
            // Rounded up: a sub-millisecond timeout must not become none at all.
            revert_timeout_ms: shared.plan.revert_timeout.as_micros().div_ceil(1000) as u64,
        };
        let state = shared.state.clone();
        let writing = record.clone();
        match tokio::task::spawn_blocking(move || state.write(&writing)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Injection::Failed(self.failed(
                    None,
                    format!(
                        "cannot record the revert before injecting, so nothing was injected: {e}"
                    ),
                )));
            }
            Err(e) => {
                return Err(Injection::Failed(
                    self.failed(None, format!("state write panicked: {e}")),
                ));
            }
        }
        shared.journal.write(&Event::FaultIntent {
            t_ms: shared.t_ms(),
            fault: spec.id.as_str().into(),
            record: record_id.as_str().into(),
            summary: prepared.summary.as_str().into(),
            details: Cow::Borrowed(&prepared.details),
            revert: Some(Cow::Borrowed(&prepared.revert)),
        });
        shared.registry.push(Live {
            record: record.clone(),
            running: None,
        });

        let applying = fault.clone();
        let prepared_for_apply = prepared.clone();
        let applied =
            tokio::task::spawn_blocking(move || applying.apply(&prepared_for_apply)).await;
        match applied {
            Ok(Ok(mut applied)) => {
                shared.registry.attach(&record_id, applied.live.take());
                shared.emit(&Event::FaultInjected {
                    t_ms: shared.t_ms(),
                    fault: spec.id.as_str().into(),
                    record: record_id.as_str().into(),
                    summary: applied.summary.as_str().into(),
                    details: Cow::Borrowed(&applied.details),
                });
                if prepared.revert == RevertRecipe::Nothing {
                    // Nothing to undo: forget it now rather than at the end.
                    if let Some(live) = shared.registry.take_record(&record_id) {
                        // Off the async threads: removing a record syncs the state directory.
                        let state = shared.state.clone();
                        let id = live.record.id.clone();
                        let _ = tokio::task::spawn_blocking(move || state.remove(&id)).await;
                    }
                }
                Ok(applied.details)
            }
            // The record stays in the registry: the abort that follows reverts the
            // partial injection.
            Ok(Err(e)) => Err(Injection::Failed(
                self.failed(Some(&record_id), e.to_string()),
            )),
            Err(e) => Err(Injection::Failed(
                self.failed(Some(&record_id), format!("apply panicked: {e}")),
            )),
        }
    }

    fn abandoned(&self) -> Injection {
        let spec = self.spec();
        let reason = "the run stopped while its target was being resolved; nothing was injected";
        self.shared.emit(&Event::FaultAbandoned {
            t_ms: self.shared.t_ms(),
            fault: spec.id.as_str().into(),
            reason: reason.into(),
        });
        Injection::Abandoned
    }

    fn failed(&self, record: Option<&str>, error: String) -> String {
        let spec = self.spec();
        self.shared.emit(&Event::FaultInjectionFailed {
            t_ms: self.shared.t_ms(),
            fault: spec.id.as_str().into(),
            record: record.map(Cow::Borrowed),
            error: error.clone(),
        });
        error
    }
}
