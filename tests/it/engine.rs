//! Engine tests on simulated faults and probes, with paused tokio time: the lifecycle, the
//! abort path, outcomes and revert order, exactly and without sleeping.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use faultline::engine::interrupt::{self, Interrupt};
use faultline::engine::{self, Backend, RunContext, RunReport};
use faultline::experiment::model::FaultKind;
use faultline::fault::sim::SimFault;
use faultline::fault::{Applied, Fault, FaultError, Prepared};
use faultline::outcome::Outcome;
use faultline::plan::{
    AfterSpec, Check, FaultAction, FaultSpec, GateSpec, Plan, ProbeKind, ProbeSpec, TargetSpec,
};
use faultline::probe::Probe;
use faultline::probe::sim::{Answer, SimProbe};
use faultline::report::journal::Journal;
use faultline::state::StateDir;
use faultline::sys::proc::CompiledSelector;
use serde_json::Value;
use tokio::time::Instant;

/// Counts calls so tests can prove a fault was (or was never) applied, and checks at each
/// apply that its revert recipe is already on disk.
struct CountingFault {
    inner: SimFault,
    applied: Arc<AtomicU32>,
    state: StateDir,
    unrecorded_applies: Arc<AtomicU32>,
}

impl Fault for CountingFault {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        self.inner.prepare()
    }
    fn apply(&self, prepared: &Prepared) -> Result<Applied, FaultError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        let recorded = self
            .state
            .list()
            .unwrap()
            .into_iter()
            .any(|r| r.is_ok_and(|r| r.revert == prepared.revert));
        if !recorded {
            self.unrecorded_applies.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.apply(prepared)
    }
}

#[derive(Clone, Default)]
struct SimFaultConfig {
    fail_apply: bool,
    fail_revert: bool,
}

struct SimBackend {
    dir: PathBuf,
    state: StateDir,
    unrecorded_applies: Arc<AtomicU32>,
    faults: BTreeMap<String, SimFaultConfig>,
    probes: BTreeMap<String, (Answer, Duration)>,
    applied: BTreeMap<String, Arc<AtomicU32>>,
}

impl SimBackend {
    fn marker(&self, fault: &str) -> PathBuf {
        self.dir.join(format!("{fault}.injected"))
    }
    fn applied(&self, fault: &str) -> u32 {
        self.applied[fault].load(Ordering::SeqCst)
    }
}

impl Backend for SimBackend {
    fn fault(&self, spec: &FaultSpec, _plan: &Plan) -> Box<dyn Fault> {
        let config = self.faults.get(&spec.id).cloned().unwrap_or_default();
        Box::new(CountingFault {
            inner: SimFault {
                marker: self.marker(&spec.id),
                fail_apply: config.fail_apply,
                fail_revert: config.fail_revert,
            },
            applied: self.applied[&spec.id].clone(),
            state: self.state.clone(),
            unrecorded_applies: self.unrecorded_applies.clone(),
        })
    }
    fn probe(&self, spec: &ProbeSpec) -> Box<dyn Probe> {
        let (answer, latency) = self.probes[&spec.name].clone();
        Box::new(SimProbe { answer, latency })
    }
}

struct Scenario {
    plan: Plan,
    backend: SimBackend,
    _tmp: tempfile::TempDir,
    state: StateDir,
}

fn always(ok: bool) -> Answer {
    Arc::new(move || ok)
}

/// Passes until `at` after the scenario starts (virtual time), then fails.
fn healthy_until(at: Duration) -> Answer {
    let start = Instant::now();
    Arc::new(move || Instant::now() < start + at)
}

fn probe_spec(name: &str, interval_ms: u64, threshold: u32) -> ProbeSpec {
    ProbeSpec {
        name: name.into(),
        kind: ProbeKind::Tcp {
            address: "127.0.0.1:1".into(),
        },
        check: Check::default(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(interval_ms),
        failure_threshold: threshold,
        slo: None,
    }
}

fn fault_spec(id: &str, at_ms: u64, duration_ms: Option<u64>) -> FaultSpec {
    FaultSpec {
        id: id.into(),
        kind: FaultKind::ProcessStop,
        target: Some("t".into()),
        action: FaultAction::ProcessStop(faultline::fault::process::Stop),
        at: Duration::from_millis(at_ms),
        after: Vec::new(),
        delay: Duration::ZERO,
        duration: duration_ms.map(Duration::from_millis),
        repeat_every: None,
    }
}

impl Scenario {
    fn new() -> Scenario {
        let tmp = tempfile::tempdir().unwrap();
        let experiment = serde_saphyr::from_str(
            "apiVersion: faultline/v1\nmetadata: {name: engine-test}\nmax_duration: 1m\n",
        )
        .unwrap();
        let mut targets = BTreeMap::new();
        targets.insert(
            "t".to_string(),
            TargetSpec::Process(CompiledSelector::default()),
        );
        let plan = Plan {
            name: "engine-test".into(),
            source: PathBuf::from("engine-test.yaml"),
            experiment,
            targets,
            probes: BTreeMap::new(),
            before: None,
            during: Vec::new(),
            after: None,
            faults: Vec::new(),
            abort_on_probe_failure: true,
            revert_timeout: Duration::from_secs(5),
            check_timeout: Duration::from_secs(15),
            max_duration: Duration::from_secs(60),
            setup: Vec::new(),
            cleanup: Vec::new(),
            secrets: BTreeMap::new(),
        };
        let state = StateDir::new(tmp.path().join("state"));
        Scenario {
            plan,
            backend: SimBackend {
                dir: tmp.path().to_path_buf(),
                state: state.clone(),
                unrecorded_applies: Arc::new(AtomicU32::new(0)),
                faults: BTreeMap::new(),
                probes: BTreeMap::new(),
                applied: BTreeMap::new(),
            },
            state,
            _tmp: tmp,
        }
    }

    fn fault(&mut self, spec: FaultSpec, config: SimFaultConfig) -> &mut Self {
        self.backend
            .applied
            .insert(spec.id.clone(), Arc::new(AtomicU32::new(0)));
        self.backend.faults.insert(spec.id.clone(), config);
        self.plan.faults.push(spec);
        self
    }

    fn probe(&mut self, spec: ProbeSpec, answer: Answer) -> &mut Self {
        self.backend
            .probes
            .insert(spec.name.clone(), (answer, Duration::from_millis(5)));
        self.plan.probes.insert(spec.name.clone(), spec);
        self
    }

    async fn run_with(self, interrupt: Interrupt) -> Finished {
        let journal = Journal::in_memory();
        let backend = Arc::new(self.backend);
        let started = Instant::now();
        let report = engine::run(
            Arc::new(self.plan),
            RunContext {
                backend: backend.clone(),
                state: self.state.clone(),
                journal: journal.clone(),
                run_id: "test".into(),
                interrupt,
                quiet: true,
            },
        )
        .await;
        Finished {
            report,
            events: journal.events(),
            virtual_elapsed: started.elapsed(),
            backend,
            state: self.state,
            _tmp: self._tmp,
        }
    }

    async fn run(self) -> Finished {
        self.run_with(Interrupt::never()).await
    }
}

struct Finished {
    report: RunReport,
    events: Vec<Value>,
    virtual_elapsed: Duration,
    backend: Arc<SimBackend>,
    state: StateDir,
    _tmp: tempfile::TempDir,
}

impl Finished {
    fn events_of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }
    fn injected(&self, fault: &str) -> bool {
        self.backend.marker(fault).exists()
    }
    fn state_records(&self) -> usize {
        self.state.list().unwrap().len()
    }
    fn assert_host_clean(&self) {
        for fault in self.backend.faults.keys() {
            assert!(!self.injected(fault), "fault {fault} left injected");
        }
        assert_eq!(self.state_records(), 0, "state records left behind");
    }
}

#[tokio::test(start_paused = true)]
async fn a_clean_run_passes_and_reverts_at_the_end_of_the_duration() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 1_000, Some(5_000)),
        SimFaultConfig::default(),
    )
    .probe(probe_spec("health", 500, 3), always(true));
    s.plan.during = vec!["health".into()];
    s.plan.before = Some(GateSpec {
        probes: vec!["health".into()],
        wait_until: Duration::ZERO,
    });
    s.plan.after = Some(AfterSpec {
        probes: vec!["health".into()],
        within: Duration::from_secs(5),
    });
    let f = s.run().await;

    assert_eq!(f.report.outcome, Outcome::Passed, "{}", f.report.reason);
    assert_eq!(f.backend.applied("stop"), 1);
    f.assert_host_clean();
    let reverted = f.events_of("fault_reverted");
    assert_eq!(reverted.len(), 1);
    assert_eq!(reverted[0]["cause"], "duration_elapsed");
    // The fault lived 5 s: injected at ~1 s, reverted at ~6 s (virtual time).
    let injected_at = f.events_of("fault_injected")[0]["t_ms"].as_f64().unwrap();
    let reverted_at = reverted[0]["t_ms"].as_f64().unwrap();
    assert!(
        (reverted_at - injected_at - 5_000.0).abs() < 50.0,
        "{injected_at} -> {reverted_at}"
    );
    // during probes sampled all along the fault window
    let during: Vec<_> = f
        .events
        .iter()
        .filter(|e| e["event"] == "probe_sample" && e["phase"] == "during")
        .collect();
    assert!(during.len() >= 10, "only {} during samples", during.len());
    // The journal walks through every phase once, in order.
    let phases: Vec<_> = f
        .events_of("phase")
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, ["before", "t0", "during", "revert", "after"]);
}

#[tokio::test(start_paused = true)]
async fn the_revert_recipe_is_recorded_before_the_injection() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(1_000)),
        SimFaultConfig::default(),
    );
    let f = s.run().await;
    let kinds: Vec<&str> = f
        .events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|k| k.starts_with("fault_"))
        .collect();
    assert_eq!(kinds, ["fault_intent", "fault_injected", "fault_reverted"]);
    assert_eq!(f.backend.applied("stop"), 1);
    assert_eq!(
        f.backend.unrecorded_applies.load(Ordering::SeqCst),
        0,
        "apply ran before its revert recipe was in the state dir"
    );
    assert_eq!(
        f.events_of("fault_intent")[0]["revert"]["recipe"],
        "simulated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_breach_aborts_at_once_instead_of_waiting_for_the_fault_to_end() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(60_000)),
        SimFaultConfig::default(),
    )
    .probe(
        probe_spec("health", 1_000, 3),
        healthy_until(Duration::from_millis(2_500)),
    );
    s.plan.during = vec!["health".into()];
    s.plan.max_duration = Duration::from_secs(120);
    let f = s.run().await;

    assert_eq!(f.report.outcome, Outcome::Aborted, "{}", f.report.reason);
    f.assert_host_clean();
    let abort = &f.events_of("abort")[0];
    assert_eq!(abort["trigger"], "probe_failure");
    assert_eq!(abort["probe"], "health");
    assert_eq!(abort["failure_threshold"], 3);
    let samples = abort["samples"].as_array().unwrap();
    let failed: Vec<_> = samples.iter().filter(|s| s["ok"] == false).collect();
    assert_eq!(failed.len(), 3, "{samples:?}");
    // Samples at 0,1,2 s pass; 3,4,5 s fail: the third failure (5 s) aborts, not 60 s.
    let breach = abort["breach_t_ms"].as_f64().unwrap();
    assert!((5_000.0..5_100.0).contains(&breach), "breach at {breach}");
    assert!(abort["breach_to_all_reverted_ms"].as_f64().unwrap() < 1.0);
    // Every event is placed in time, the abort record too (written once all is reverted).
    for event in &f.events {
        assert!(event["t_ms"].is_number(), "no t_ms: {event}");
    }
    assert!(abort["t_ms"].as_f64().unwrap() >= abort["all_reverted_t_ms"].as_f64().unwrap());
    assert!(
        f.virtual_elapsed < Duration::from_secs(6),
        "{:?}",
        f.virtual_elapsed
    );
    assert_eq!(f.events_of("fault_reverted")[0]["cause"], "abort");
}

#[tokio::test(start_paused = true)]
async fn abort_reverts_live_faults_newest_first() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("first", 0, Some(30_000)),
        SimFaultConfig::default(),
    )
    .fault(
        fault_spec("second", 500, Some(30_000)),
        SimFaultConfig::default(),
    )
    .fault(
        fault_spec("third", 1_000, Some(30_000)),
        SimFaultConfig::default(),
    )
    .probe(
        probe_spec("health", 1_000, 1),
        healthy_until(Duration::from_millis(1_500)),
    );
    s.plan.during = vec!["health".into()];
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Aborted);
    let order: Vec<&str> = f
        .events_of("fault_reverted")
        .iter()
        .map(|e| e["fault"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["third", "second", "first"]);
    f.assert_host_clean();
}

#[tokio::test(start_paused = true)]
async fn a_failed_gate_injects_nothing() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(1_000)),
        SimFaultConfig::default(),
    )
    .probe(probe_spec("health", 500, 1), always(false));
    s.plan.before = Some(GateSpec {
        probes: vec!["health".into()],
        wait_until: Duration::from_secs(3),
    });
    s.plan.after = Some(AfterSpec {
        probes: vec!["health".into()],
        within: Duration::from_secs(1),
    });
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::NotReady, "{}", f.report.reason);
    assert_eq!(f.backend.applied("stop"), 0);
    assert!(f.events_of("fault_intent").is_empty());
    let gate = &f.events_of("gate")[0];
    assert_eq!(gate["passed"], false);
    // 3 s of retries at a 500 ms interval: 7 attempts (0, 0.5, ... 3 s).
    assert_eq!(gate["attempts"], 7);
    assert!(
        f.events.iter().all(|e| e["phase"] != "after"),
        "no after checks when nothing was injected"
    );
}

#[tokio::test(start_paused = true)]
async fn the_gate_waits_until_the_system_is_ready() {
    let mut s = Scenario::new();
    let start = Instant::now();
    let ready_after_2s: Answer = Arc::new(move || Instant::now() >= start + Duration::from_secs(2));
    s.fault(
        fault_spec("stop", 0, Some(1_000)),
        SimFaultConfig::default(),
    )
    .probe(probe_spec("health", 500, 1), ready_after_2s);
    s.plan.before = Some(GateSpec {
        probes: vec!["health".into()],
        wait_until: Duration::from_secs(10),
    });
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Passed, "{}", f.report.reason);
    assert_eq!(f.backend.applied("stop"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fault_that_cannot_be_applied_is_injection_failed_and_the_others_are_reverted() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("good", 0, Some(30_000)),
        SimFaultConfig::default(),
    )
    .fault(
        fault_spec("bad", 1_000, Some(30_000)),
        SimFaultConfig {
            fail_apply: true,
            ..Default::default()
        },
    );
    let f = s.run().await;
    assert_eq!(
        f.report.outcome,
        Outcome::InjectionFailed,
        "{}",
        f.report.reason
    );
    assert!(f.report.reason.contains("bad"), "{}", f.report.reason);
    f.assert_host_clean();
    assert!(f.virtual_elapsed < Duration::from_secs(2));
    assert_eq!(f.events_of("fault_injection_failed").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_revert_is_revert_failed_and_the_record_stays_for_recover() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("sticky", 0, Some(1_000)),
        SimFaultConfig {
            fail_revert: true,
            ..Default::default()
        },
    );
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::RevertFailed);
    assert!(f.injected("sticky"));
    assert_eq!(
        f.state_records(),
        1,
        "the record must survive for `faultline recover`"
    );
    let failed = &f.events_of("fault_revert_failed")[0];
    assert!(
        failed["remedy"]
            .as_str()
            .unwrap()
            .contains("faultline recover")
    );
}

#[tokio::test(start_paused = true)]
async fn max_duration_aborts_and_reverts() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(50_000)),
        SimFaultConfig::default(),
    );
    s.plan.max_duration = Duration::from_secs(10);
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Aborted);
    assert_eq!(f.events_of("abort")[0]["trigger"], "max_duration");
    f.assert_host_clean();
    assert!(f.virtual_elapsed < Duration::from_millis(10_100));
}

#[tokio::test(start_paused = true)]
async fn failing_after_checks_make_the_run_deviated() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(1_000)),
        SimFaultConfig::default(),
    )
    .probe(
        probe_spec("health", 500, 100),
        healthy_until(Duration::from_millis(700)),
    );
    s.plan.during = vec!["health".into()];
    s.plan.after = Some(AfterSpec {
        probes: vec!["health".into()],
        within: Duration::from_secs(2),
    });
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Deviated, "{}", f.report.reason);
    f.assert_host_clean();
}

#[tokio::test(start_paused = true)]
async fn with_abort_disabled_a_failing_probe_deviates_but_faults_run_their_course() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(5_000)),
        SimFaultConfig::default(),
    )
    .probe(
        probe_spec("health", 500, 1),
        healthy_until(Duration::from_millis(1_200)),
    );
    s.plan.during = vec!["health".into()];
    s.plan.abort_on_probe_failure = false;
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Deviated, "{}", f.report.reason);
    assert!(f.events_of("abort").is_empty());
    assert_eq!(
        f.events_of("fault_reverted")[0]["cause"],
        "duration_elapsed"
    );
}

#[tokio::test(start_paused = true)]
async fn after_and_delay_order_the_faults() {
    let mut s = Scenario::new();
    let mut second = fault_spec("second", 0, Some(1_000));
    second.after = vec!["first".into()];
    second.delay = Duration::from_millis(1_500);
    s.fault(
        fault_spec("first", 2_000, Some(10_000)),
        SimFaultConfig::default(),
    )
    .fault(second, SimFaultConfig::default());
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Passed);
    let at = |id: &str| {
        f.events_of("fault_injected")
            .iter()
            .find(|e| e["fault"] == id)
            .unwrap()["t_ms"]
            .as_f64()
            .unwrap()
    };
    assert!((at("first") - 2_000.0).abs() < 20.0, "{}", at("first"));
    assert!((at("second") - 3_500.0).abs() < 20.0, "{}", at("second"));
}

#[tokio::test(start_paused = true)]
async fn repeat_injects_again_every_period_until_the_duration_ends() {
    let mut s = Scenario::new();
    let mut spec = fault_spec("again", 0, Some(5_000));
    spec.repeat_every = Some(Duration::from_secs(2));
    s.fault(spec, SimFaultConfig::default());
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Passed);
    // at 0, 2 and 4 s
    assert_eq!(f.backend.applied("again"), 3);
    f.assert_host_clean();
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_reverts_and_a_second_one_skips_the_after_checks() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(60_000)),
        SimFaultConfig::default(),
    )
    .probe(probe_spec("health", 500, 1), always(true));
    s.plan.during = vec!["health".into()];
    s.plan.after = Some(AfterSpec {
        probes: vec!["health".into()],
        within: Duration::from_secs(5),
    });
    let (handle, interrupt) = interrupt::channel();
    let raiser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        handle.raise();
        handle.raise();
    });
    let f = s.run_with(interrupt).await;
    raiser.await.unwrap();
    assert_eq!(
        f.report.outcome,
        Outcome::Interrupted,
        "{}",
        f.report.reason
    );
    f.assert_host_clean();
    assert_eq!(f.events_of("abort")[0]["trigger"], "interrupted");
    assert!(f.events.iter().all(|e| e["phase"] != "after"));
    assert!(f.virtual_elapsed < Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_does_not_delay_the_abort() {
    let mut s = Scenario::new();
    s.fault(
        fault_spec("stop", 0, Some(60_000)),
        SimFaultConfig::default(),
    )
    .probe(
        probe_spec("fast", 100, 1),
        healthy_until(Duration::from_millis(1_000)),
    )
    .probe(probe_spec("slow", 10_000, 1), always(true));
    s.backend.probes.get_mut("slow").unwrap().1 = Duration::from_secs(9);
    s.plan.during = vec!["fast".into(), "slow".into()];
    let f = s.run().await;
    assert_eq!(f.report.outcome, Outcome::Aborted);
    let breach = f.events_of("abort")[0]["breach_t_ms"].as_f64().unwrap();
    assert!(breach < 1_200.0, "breach detected at {breach} ms");
}
