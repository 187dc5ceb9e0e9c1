//! The shipped experiments, run for real against the demo service.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Workspace, events_of, faultline};

/// `faultline run` of a shipped experiment with its demo service moved to a free port through
/// the file's own `listen` var, exactly as a user would move it. Returns the command and the
/// address it will use.
fn run_on_free_port(ws: &Workspace, shipped: &str) -> (Command, String) {
    let file: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
    let listen = format!("127.0.0.1:{}", util::free_port());
    let mut command = faultline(ws);
    command
        .args(["run", "--var"])
        .arg(format!("listen={listen}"))
        .arg("--report-dir")
        .arg(ws.report_dir())
        .arg(file);
    (command, listen)
}

/// The journal records the experiment after substitution: the address this run used.
fn assert_journal_used(events: &[serde_json::Value], listen: &str) {
    let experiment = &events_of(events, "run_started")[0]["experiment"];
    assert_eq!(experiment["vars"]["listen"], listen);
    let probes = experiment["probes"].as_object().unwrap();
    let url = probes.values().next().unwrap()["http"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with(&format!("http://{listen}/")), "{url}");
}

/// Run it to the end: the exit code must be `code`; returns the journal's events (checked to
/// use this run's address) and stderr.
fn finish(
    ws: &Workspace,
    mut run: Command,
    listen: &str,
    code: i32,
) -> (Vec<serde_json::Value>, String) {
    let out = run.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let events = ws.journal();
    assert_journal_used(&events, listen);
    (events, stderr)
}

fn no_demo_left(pid: Option<u64>) -> bool {
    let Some(pid) = pid else { return true };
    util::proc_state(pid as u32).is_none()
}

#[test]
fn the_quickstart_passes_and_leaves_nothing_running() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (run, listen) = run_on_free_port(&ws, "experiments/quickstart.yaml");
    let (events, stderr) = finish(&ws, run, &listen, 0);
    assert!(stderr.contains("PASSED"), "{stderr}");
    // Three kills, each of a different worker (the supervisor restarted it in between).
    let pids: Vec<u64> = events_of(&events, "fault_intent")
        .iter()
        .map(|e| e["details"]["picked"][0]["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    for intent in events_of(&events, "fault_intent") {
        let cmdline = intent["details"]["picked"][0]["cmdline"].as_str().unwrap();
        assert!(
            cmdline.ends_with(&format!("--listen {listen}")),
            "only this demo's worker is a target, not another instance's: {cmdline}"
        );
    }
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");
    for pid in &pids {
        assert!(
            util::proc_state(*pid as u32).is_none(),
            "worker {pid} was killed"
        );
    }
    let setup = events_of(&events, "command")[0]["pid"].as_u64();
    assert!(
        no_demo_left(setup),
        "the demo service was stopped at cleanup"
    );
    assert_eq!(ws.state_records(), 0);
    // A pipeline reading the JUnit report sees every check green: the gate, three kills,
    // the health SLO, the recovery, the outcome.
    let junit = ws.junit();
    assert_eq!((junit.tests, junit.failures, junit.errors), (7, 0, 0));
    assert_eq!(ws.reports("html").len(), 1);
}

#[test]
fn a_breach_aborts_within_one_probe_interval_plus_100ms_and_thaws_the_worker() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (run, listen) = run_on_free_port(&ws, "experiments/demo-freeze-aborts.yaml");
    let (events, _) = finish(&ws, run, &listen, 2);
    let injected = events_of(&events, "fault_injected")[0]["t_ms"]
        .as_f64()
        .unwrap();
    let abort = events_of(&events, "abort")[0];
    assert_eq!(abort["trigger"], "probe_failure");
    assert_eq!(abort["probe"], "health");
    assert_eq!(abort["failure_threshold"], 1);
    let failed = abort["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .count();
    assert!(failed >= 1);
    let all_reverted = abort["all_reverted_t_ms"].as_f64().unwrap();
    let breach_to_reverted = abort["breach_to_all_reverted_ms"].as_f64().unwrap();
    let interval_ms = 200.0;
    println!(
        "injected→all reverted {:.1} ms, breach→all reverted {breach_to_reverted:.3} ms",
        all_reverted - injected
    );
    assert!(
        all_reverted - injected <= interval_ms + 100.0,
        "the frozen worker was thawed {:.1} ms after the freeze",
        all_reverted - injected
    );
    // The stopped worker runs again: the after check saw the service healthy.
    let worker = events_of(&events, "fault_intent")[0]["details"]["picked"][0]["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(events_of(&events, "fault_reverted")[0]["cause"], "abort");
    let after_ok = events
        .iter()
        .any(|e| e["event"] == "probe_sample" && e["phase"] == "after" && e["ok"] == true);
    assert!(after_ok, "the service answered again after the revert");
    // By now cleanup stopped the demo (and its worker) — nothing is left frozen.
    assert_ne!(util::proc_state(worker as u32), Some('T'));
    assert_eq!(ws.state_records(), 0);
    // The JUnit report blames the SLO that broke (a test failure, not an error), and
    // nothing else.
    let junit = ws.junit();
    assert_eq!((junit.failures, junit.errors), (2, 0));
    for case in ["SLO health", "outcome"] {
        assert!(
            matches!(
                &util::junit_case(&junit, case).status,
                quick_junit::TestCaseStatus::NonSuccess {
                    kind: quick_junit::NonSuccessKind::Failure,
                    ..
                }
            ),
            "{case}"
        );
    }
}

#[test]
fn a_slow_dependency_breaks_the_latency_slo_and_the_delay_is_removed_at_once() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (mut run, listen) = run_on_free_port(&ws, "experiments/dependency-latency-aborts.yaml");
    run.arg("--var")
        .arg(format!("worker_port={}", util::free_port()));
    let (events, _) = finish(&ws, run, &listen, 2);
    let abort = events_of(&events, "abort")[0];
    assert_eq!(abort["trigger"], "probe_failure");
    assert!(
        abort["reason"].as_str().unwrap().contains("p99 latency"),
        "the window SLO fired: {abort}"
    );
    assert!(
        abort["breach_to_all_reverted_ms"].as_f64().unwrap() < 100.0,
        "{abort}"
    );
    assert_eq!(events_of(&events, "fault_reverted")[0]["cause"], "abort");
    assert!(faultline::sys::iptables::leftovers(None).is_empty());
    let after_ok = events
        .iter()
        .any(|e| e["event"] == "probe_sample" && e["phase"] == "after" && e["ok"] == true);
    assert!(after_ok, "the service is fast again after the revert");
}

#[test]
fn cpu_pressure_breaks_the_latency_slo_and_the_burners_stop_at_once() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (run, listen) = run_on_free_port(&ws, "experiments/cpu-pressure-aborts.yaml");
    let (events, _) = finish(&ws, run, &listen, 2);
    let abort = events_of(&events, "abort")[0];
    assert!(
        abort["reason"].as_str().unwrap().contains("p99 latency"),
        "{abort}"
    );
    assert!(
        abort["breach_to_all_reverted_ms"].as_f64().unwrap() < 100.0,
        "{abort}"
    );
}
