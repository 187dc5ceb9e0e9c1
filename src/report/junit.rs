//! JUnit XML for CI pipelines: one test suite per experiment, one test case per thing that
//! can go wrong (the steady state before, each injection and its revert, each SLO watched
//! while faults were live, the recovery after, the outcome), so a pipeline's test view says
//! which part failed and why without opening the journal.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::view::{FaultView, GateView, ProbeView};
use super::{Reporter, RunView};

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
    if let Some(gate) = run.gate("before") {
        cases.push(gate_case("steady state before", gate));
    }
    cases.extend(run.faults.iter().map(fault_case));
    cases.extend(
        run.probes
            .iter()
            .filter(|p| p.samples.iter().any(|s| s.phase == "during"))
            .map(|p| slo_case(run, p)),
    );
    if let Some(gate) = run.gate("after") {
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
        failure(
            NonSuccessKind::Error,
            &format!("injection failed: {error}"),
            "injection_failed",
        )
    } else if let Some(error) = &fault.revert_error {
        let remedy = fault.revert_remedy.as_deref().unwrap_or("");
        failure(
            NonSuccessKind::Error,
            &format!("revert failed: {error}. {remedy}"),
            "revert_failed",
        )
    } else if fault.never_reverted() {
        failure(
            NonSuccessKind::Error,
            "injected but never reverted in this journal: run `faultline status` / `faultline recover`",
            "not_reverted",
        )
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
        let cause = fault.revert_cause.as_deref().unwrap_or("-");
        out.push(format!("reverted at {} ({cause})", seconds(t)));
    }
    if !fault.achieved.is_null() {
        out.push(format!("achieved: {}", fault.achieved));
    }
    case.set_system_out(out.join("\n"));
    case
}

fn slo_case(run: &RunView, probe: &ProbeView) -> TestCase {
    let breached = run
        .abort
        .as_ref()
        .filter(|a| a.trigger == "probe_failure" && a.probe.as_deref() == Some(&probe.name));
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
        .filter(|s| s.phase == "during")
        .collect();
    let failed = during.iter().filter(|s| !s.ok).count();
    let mut out = format!(
        "{} samples while faults were live, {failed} failed",
        during.len()
    );
    if let Some(p99) = probe.latency_percentile(Some("during"), 99.0) {
        out.push_str(&format!(", latency p99 {p99:.1} ms"));
    }
    let mut case = TestCase::new(format!("SLO {}", probe.name), status);
    case.set_system_out(out);
    case
}

fn outcome_case(run: &RunView) -> TestCase {
    let status = match &run.outcome {
        None => failure(
            NonSuccessKind::Error,
            "the journal ends without an outcome: faultline crashed or was killed; \
             `faultline recover` reverts what it left",
            "incomplete",
        ),
        Some(o) if o.outcome == "passed" => TestCaseStatus::success(),
        // The system under test misbehaved: a test failure.
        Some(o) if matches!(o.outcome.as_str(), "deviated" | "aborted" | "not_ready") => {
            failure(NonSuccessKind::Failure, &o.reason, &o.outcome)
        }
        // The experiment itself could not be carried out as asked.
        Some(o) => failure(NonSuccessKind::Error, &o.reason, &o.outcome),
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
