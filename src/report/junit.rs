//! JUnit XML for CI pipelines: one test suite per experiment, one test case per thing that
//! can go wrong (the steady state before, each injection and its revert, each SLO watched
//! while faults were live, the recovery after, the outcome), so a pipeline's test view says
//! which part failed and why without opening the journal.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::event::{AbortTrigger, Phase};
use super::view::{FaultView, GateView, ProbeView};
use super::{Reporter, RunView};
use crate::outcome::Outcome;

pub struct Junit;

impl Reporter for Junit {
    fn extension(&self) -> &'static str {
        "junit.xml"
    }

    fn render(&self, title: &str, runs: &[RunView]) -> String {
        let mut report = Report::new(title);
        report.add_test_suites(runs.iter().map(suite));
        report
            .to_string()
            .unwrap_or_else(|e| format!("<!-- cannot render the JUnit report: {e} -->\n"))
    }
}

fn suite(run: &RunView) -> TestSuite {
    let mut suite = TestSuite::new(run.name.as_str());
    suite.set_time(millis(run.duration_ms()));
    suite.add_properties([
        Property::new("run_id", run.run_id.as_str()),
        Property::new("host", run.host.as_str()),
        Property::new("started_at", run.started_at.as_str()),
        Property::new("faultline_version", run.tool_version.as_str()),
        Property::new("journal", run.journal.display().to_string()),
    ]);
    if let Some(outcome) = &run.outcome {
        suite.add_properties([
            Property::new("outcome", outcome.outcome.as_str()),
            Property::new("exit_code", outcome.exit_code.to_string()),
        ]);
    }
    let class = format!("faultline.{}", run.name);
    let mut cases = Vec::new();
    if let Some(gate) = run.gate(Phase::Before) {
        cases.push(gate_case("steady state before", gate));
    }
    cases.extend(run.faults.iter().map(fault_case));
    cases.extend(
        run.probes
            .iter()
            .filter(|p| p.samples.iter().any(|s| s.phase == Phase::During))
            .map(|p| slo_case(run, p)),
    );
    if let Some(gate) = run.gate(Phase::After) {
        cases.push(gate_case("recovery after", gate));
    }
    cases.push(outcome_case(run));
    for case in &mut cases {
        case.set_classname(class.as_str());
    }
    suite.add_test_cases(cases);
    suite
}

fn gate_case(name: &str, gate: &GateView) -> TestCase {
    let status = if gate.passed {
        TestCaseStatus::success()
    } else {
        failure(
            NonSuccessKind::Failure,
            gate.reason.as_deref().unwrap_or("the checks did not pass"),
            "steady_state",
        )
    };
    let mut case = TestCase::new(name, status);
    case.set_system_out(format!("{} attempt(s)", gate.attempts));
    case
}

fn fault_case(fault: &FaultView) -> TestCase {
    let name = match &fault.record {
        Some(record) => format!("fault {} ({record})", fault.fault),
        None => format!("fault {}", fault.fault),
    };
    let status = if let Some(error) = &fault.injection_error {
        // A failed injection may have been partly applied; unreverted, it may still be live.
        let left = fault
            .never_reverted_message()
            .map(|message| format!("; {message}"))
            .unwrap_or_default();
        failure(
            NonSuccessKind::Error,
            &format!("injection failed: {error}{left}"),
            "injection_failed",
        )
    } else if let Some(error) = &fault.revert_error {
        let remedy = fault.revert_remedy.as_deref().unwrap_or("");
        failure(
            NonSuccessKind::Error,
            &format!("revert failed: {error}. {remedy}"),
            "revert_failed",
        )
    } else if let Some(message) = fault.never_reverted_message() {
        failure(NonSuccessKind::Error, message, "not_reverted")
    } else {
        TestCaseStatus::success()
    };
    let mut case = TestCase::new(name, status);
    if let (Some(from), Some(to)) = (fault.injected_ms, fault.reverted_ms) {
        case.set_time(millis(to - from));
    }
    let mut out = vec![fault.summary.clone()];
    if let Some(t) = fault.injected_ms {
        out.push(format!("injected at {}", seconds(t)));
    }
    if let Some(t) = fault.reverted_ms {
        let cause = fault.revert_cause.map_or("-", |c| c.as_str());
        out.push(format!("reverted at {} ({cause})", seconds(t)));
    }
    if !fault.achieved.is_null() {
        out.push(format!("achieved: {}", fault.achieved));
    }
    out.extend(fault.restarts.iter().cloned());
    case.set_system_out(out.join("\n"));
    case
}

fn slo_case(run: &RunView, probe: &ProbeView) -> TestCase {
    let breached = run.abort.as_ref().filter(|a| {
        a.trigger == AbortTrigger::ProbeFailure && a.probe.as_deref() == Some(&probe.name)
    });
    let status = match breached {
        Some(abort) => failure(
            NonSuccessKind::Failure,
            &format!(
                "{} (all faults reverted {:.1} ms after the breach)",
                abort.reason, abort.breach_to_all_reverted_ms
            ),
            "slo_breach",
        ),
        None => TestCaseStatus::success(),
    };
    let during: Vec<_> = probe
        .samples
        .iter()
        .filter(|s| s.phase == Phase::During)
        .collect();
    let failed = during.iter().filter(|s| !s.ok).count();
    let mut out = format!(
        "{} samples while faults were live, {failed} failed",
        during.len()
    );
    if let Some(p99) = probe.latency_percentile(Some(Phase::During), 99.0) {
        out.push_str(&format!(", latency p99 {p99:.1} ms"));
    }
    let mut case = TestCase::new(format!("SLO {}", probe.name), status);
    case.set_system_out(out);
    case
}

fn outcome_case(run: &RunView) -> TestCase {
    let status = match &run.outcome {
        None => failure(NonSuccessKind::Error, super::view::NO_OUTCOME, "incomplete"),
        Some(o) if o.outcome == Outcome::Passed => TestCaseStatus::success(),
        Some(o) if o.outcome.is_system_failure() => {
            failure(NonSuccessKind::Failure, &o.reason, o.outcome.as_str())
        }
        // The experiment itself could not be carried out as asked.
        Some(o) => failure(NonSuccessKind::Error, &o.reason, o.outcome.as_str()),
    };
    let mut case = TestCase::new("outcome", status);
    case.set_time(millis(run.duration_ms()));
    if let Some(o) = &run.outcome {
        case.set_system_out(format!(
            "{} (exit {}): {}",
            o.outcome, o.exit_code, o.reason
        ));
    }
    case
}

fn failure(kind: NonSuccessKind, message: &str, ty: &str) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(kind);
    status.set_message(message).set_type(ty);
    status
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

fn seconds(ms: f64) -> String {
    format!("{:.3} s", ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunRecord;
    use quick_junit::Report;
    use serde_json::json;

    fn view(events: Vec<serde_json::Value>) -> RunView {
        RunView::from_record(&RunRecord {
            journal: "reports/run-checkout.jsonl".into(),
            events,
        })
    }

    fn started() -> serde_json::Value {
        json!({"event": "run_started", "t_ms": 0.0, "run_id": "run-1", "experiment_name": "checkout",
               "host": "box", "started_at": "2026-11-23T10:00:00Z", "tool_version": "0.1.0",
               "source": "x.yaml", "pid": 1, "experiment": {}})
    }

    fn sample(t: f64, phase: &str, ok: bool) -> serde_json::Value {
        let mut s = json!({"event": "probe_sample", "t_ms": t, "phase": phase, "probe": "health",
                           "ok": ok, "latency": 2.5});
        if !ok {
            s["error"] = json!("timed out after 80ms");
        }
        s
    }

    /// A run whose `health` probe breached during the fault: aborted, reverted at once.
    fn aborted_run() -> Vec<serde_json::Value> {
        vec![
            started(),
            json!({"event": "gate", "t_ms": 5.0, "phase": "before", "passed": true, "attempts": 1}),
            json!({"event": "fault_intent", "t_ms": 10.0, "fault": "freeze", "record": "run-1-freeze-0",
                   "summary": "SIGSTOP 1 process", "details": {},
                   "revert": {"recipe": "resume_processes", "processes": []}}),
            json!({"event": "fault_injected", "t_ms": 11.0, "fault": "freeze", "record": "run-1-freeze-0",
                   "summary": "SIGSTOP 1 process", "details": {}}),
            sample(100.0, "during", true),
            sample(300.0, "during", false),
            json!({"event": "fault_reverted", "t_ms": 301.5, "fault": "freeze", "record": "run-1-freeze-0",
                   "summary": "SIGCONT 1 process", "cause": "abort", "achieved": {"resumed": 1}}),
            json!({"event": "abort", "t_ms": 301.5, "trigger": "probe_failure", "probe": "health",
                   "reason": "probe health failed 1 time(s) in a row", "breach_t_ms": 300.2,
                   "all_reverted_t_ms": 301.5, "breach_to_all_reverted_ms": 1.3, "faults_reverted": 1}),
            sample(500.0, "after", true),
            json!({"event": "gate", "t_ms": 500.0, "phase": "after", "passed": true, "attempts": 1}),
            json!({"event": "outcome", "t_ms": 600.0, "outcome": "aborted", "exit_code": 2,
                   "reason": "probe health breached its SLO", "finished_at": "2026-11-23T10:00:01Z"}),
        ]
    }

    fn parse(xml: &str) -> Report {
        Report::deserialize_from_str(xml).expect("well-formed JUnit")
    }

    fn status_of<'a>(report: &'a Report, case: &str) -> &'a TestCaseStatus {
        &report.test_suites[0]
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == case)
            .unwrap_or_else(|| panic!("no test case {case}"))
            .status
    }

    fn kind_and_type(status: &TestCaseStatus) -> Option<(NonSuccessKind, String)> {
        match status {
            TestCaseStatus::NonSuccess { kind, ty, .. } => {
                Some((*kind, ty.as_ref().unwrap().as_str().to_string()))
            }
            _ => None,
        }
    }

    #[test]
    fn an_slo_breach_fails_the_slo_case_and_the_outcome_only() {
        let xml = Junit.render("checkout", &[view(aborted_run())]);
        let report = parse(&xml);
        assert_eq!(report.tests, 5, "{xml}");
        assert_eq!(report.failures, 2, "{xml}");
        assert_eq!(report.errors, 0, "{xml}");
        assert!(matches!(
            status_of(&report, "steady state before"),
            TestCaseStatus::Success { .. }
        ));
        assert!(matches!(
            status_of(&report, "fault freeze (run-1-freeze-0)"),
            TestCaseStatus::Success { .. }
        ));
        assert_eq!(
            kind_and_type(status_of(&report, "SLO health")),
            Some((NonSuccessKind::Failure, "slo_breach".into()))
        );
        assert_eq!(
            kind_and_type(status_of(&report, "outcome")),
            Some((NonSuccessKind::Failure, "aborted".into()))
        );
        insta::assert_snapshot!(xml);
    }

    #[test]
    fn a_failed_revert_is_an_error_that_says_what_to_do() {
        let mut events = aborted_run();
        events.retain(|e| e["event"] != "fault_reverted");
        events.push(
            json!({"event": "fault_revert_failed", "t_ms": 302.0, "fault": "freeze",
                           "record": "run-1-freeze-0", "error": "ESRCH",
                           "remedy": "run `faultline recover`"}),
        );
        let outcome = events.iter_mut().find(|e| e["event"] == "outcome").unwrap();
        *outcome = json!({"event": "outcome", "t_ms": 600.0, "outcome": "revert_failed",
                          "exit_code": 5, "reason": "1 revert failed", "finished_at": "x"});
        let report = parse(&Junit.render("checkout", &[view(events)]));
        assert_eq!(
            kind_and_type(status_of(&report, "fault freeze (run-1-freeze-0)")),
            Some((NonSuccessKind::Error, "revert_failed".into()))
        );
        assert_eq!(
            kind_and_type(status_of(&report, "outcome")),
            Some((NonSuccessKind::Error, "revert_failed".into()))
        );
    }

    #[test]
    fn a_journal_cut_short_by_a_crash_reports_the_live_fault_and_no_outcome() {
        let events: Vec<_> = aborted_run().into_iter().take(5).collect();
        let report = parse(&Junit.render("checkout", &[view(events)]));
        assert_eq!(
            kind_and_type(status_of(&report, "fault freeze (run-1-freeze-0)")),
            Some((NonSuccessKind::Error, "not_reverted".into()))
        );
        assert_eq!(
            kind_and_type(status_of(&report, "outcome")),
            Some((NonSuccessKind::Error, "incomplete".into()))
        );
    }

    /// faultline killed between writing the intent (the SIGSTOP may already be sent) and
    /// confirming the injection: the fault may be live, and the report must say so.
    #[test]
    fn a_journal_cut_short_between_intent_and_injection_reports_the_fault_as_maybe_live() {
        let events: Vec<_> = aborted_run().into_iter().take(3).collect();
        let report = parse(&Junit.render("checkout", &[view(events)]));
        let status = status_of(&report, "fault freeze (run-1-freeze-0)");
        assert_eq!(
            kind_and_type(status),
            Some((NonSuccessKind::Error, "not_reverted".into()))
        );
        assert!(
            format!("{status:?}").contains("never confirmed"),
            "{status:?}"
        );
        assert_eq!(report.errors, 2);
    }

    #[test]
    fn a_failed_injection_never_reverted_says_it_may_be_live() {
        let mut events: Vec<_> = aborted_run().into_iter().take(3).collect();
        events.push(
            json!({"event": "fault_injection_failed", "t_ms": 12.0, "fault": "freeze",
                           "record": "run-1-freeze-0", "error": "EPERM on pid 7"}),
        );
        let report = parse(&Junit.render("checkout", &[view(events)]));
        let status = status_of(&report, "fault freeze (run-1-freeze-0)");
        assert_eq!(
            kind_and_type(status),
            Some((NonSuccessKind::Error, "injection_failed".into()))
        );
        assert!(
            format!("{status:?}").contains("partly applied"),
            "{status:?}"
        );
    }

    #[test]
    fn a_kill_has_nothing_to_revert_and_passes_without_a_revert_event() {
        let events = vec![
            started(),
            json!({"event": "fault_intent", "t_ms": 10.0, "fault": "kill", "record": "run-1-kill-0",
                   "summary": "SIGKILL 1 process", "details": {}, "revert": {"recipe": "nothing"}}),
            json!({"event": "fault_injected", "t_ms": 11.0, "fault": "kill", "record": "run-1-kill-0",
                   "summary": "SIGKILL 1 process", "details": {}}),
            json!({"event": "outcome", "t_ms": 600.0, "outcome": "passed", "exit_code": 0,
                   "reason": "all checks passed", "finished_at": "x"}),
        ];
        let report = parse(&Junit.render("kill", &[view(events)]));
        assert_eq!((report.tests, report.failures, report.errors), (2, 0, 0));
    }

    #[test]
    fn a_game_day_has_one_suite_per_experiment() {
        let mut passed = aborted_run();
        passed.retain(|e| e["event"] != "abort" && e["ok"] != false);
        let outcome = passed.iter_mut().find(|e| e["event"] == "outcome").unwrap();
        outcome["outcome"] = json!("passed");
        outcome["exit_code"] = json!(0);
        let report = parse(&Junit.render("game day", &[view(passed), view(aborted_run())]));
        assert_eq!(report.test_suites.len(), 2);
        assert_eq!(report.test_suites[0].failures, 0);
        assert_eq!(report.test_suites[1].failures, 2);
    }
}
