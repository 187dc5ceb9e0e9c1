//! The command line as users and CI see it: exit codes, diagnostics, plan output, game
//! days, and runs without root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{self, Proc, Runner, Workspace, events_of, faultline, wait_for};

const MINIMAL: &str = "apiVersion: faultline/v1\nmetadata: {name: minimal}\nmax_duration: 10s\n";

#[test]
fn validate_exits_64_with_file_line_column_and_a_hint() {
    let ws = Workspace::new();
    let bad = ws.write(
        "typo.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: typo}\nmax_duration: 1m\nfaults:\n  - id: a\n    kind: process-kill\n    target: t\n    duraton: 5s\n",
    );
    let out = faultline(&ws).arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("typo.yaml:8:5"), "{stderr}");
    assert!(
        stderr.contains("duraton: 5s"),
        "the offending line is shown: {stderr}"
    );
    assert!(stderr.contains("did you mean `duration`"), "{stderr}");
    assert!(!ws.state_dir().exists(), "validate touches nothing");

    let good = ws.write("good.yaml", MINIMAL);
    let out = faultline(&ws).arg("validate").arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Several files: one bad one makes the whole command fail, and both are reported.
    let out = faultline(&ws)
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: "));
}

#[test]
fn a_missing_file_is_invalid_input() {
    let ws = Workspace::new();
    let out = faultline(&ws)
        .args(["validate", "no-such.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such.yaml"));
}

#[test]
fn plan_shows_the_matching_pids_and_the_timeline_and_injects_nothing() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("454545");
    let file = ws.write(
        "plan.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: planned}\nmax_duration: 1m\n\
         abort: {check_timeout: 40s}\n\
         targets: {victim: {process: {cmdline: '^sleep 300\\.454545$'}}, init: {process: {pid: 1}}}\n\
         faults:\n  - {id: freeze, kind: process-stop, target: victim, at: 2s, duration: 10s}\n\
         \x20 - {id: later, kind: process-kill, target: victim, after: [freeze], delay: 3s}\n",
    );
    let out = faultline(&ws).arg("plan").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("would hit pid {}", victim.pid())),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused pid 1"),
        "PID 1 is protected: {stdout}"
    );
    assert!(stdout.contains("+2s .. +12s"), "{stdout}");
    assert!(stdout.contains("+5s"), "after + delay: {stdout}");
    assert!(
        stdout.contains("revert timeout 10s; checks before injecting given 40s"),
        "{stdout}"
    );
    assert!(victim.running(), "{:?}", victim.state());
    assert!(!ws.state_dir().exists());

    let json = faultline(&ws)
        .arg("plan")
        .arg(&file)
        .arg("--json")
        .output()
        .unwrap();
    let plan: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("plan --json is JSON");
    assert_eq!(plan["faults"][0]["id"], "freeze");
}

#[test]
fn schema_is_json_schema_for_the_format() {
    let ws = Workspace::new();
    let out = faultline(&ws).arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = schema["properties"]
        .as_object()
        .expect("top-level properties");
    for key in [
        "apiVersion",
        "metadata",
        "targets",
        "probes",
        "steady_state",
        "faults",
        "abort",
        "max_duration",
    ] {
        assert!(props.contains_key(key), "schema lacks {key}");
    }
}

/// A Python whose `jsonschema` knows draft 2020-12, if the machine has one (the test
/// command installs Debian's `python3-jsonschema`).
fn jsonschema_python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import jsonschema; jsonschema.Draft202012Validator"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// Validate each document against the schema with an independent validator; the errors of
/// those it rejects, in order (`None` for a document it accepts).
fn schema_errors(
    python: &str,
    schema: &std::path::Path,
    docs: &[serde_json::Value],
) -> Vec<Option<String>> {
    const CHECK: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft202012Validator(schema)
for line in sys.stdin:
    errors = [e.message for e in validator.iter_errors(json.loads(line))]
    print(json.dumps("; ".join(errors) if errors else None))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", CHECK])
        .arg(schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = docs.iter().map(|d| format!("{d}\n")).collect();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the validator ran: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn the_schema_accepts_every_example_and_gives_each_fault_kind_only_its_own_params() {
    let Some(python) = jsonschema_python() else {
        eprintln!("SKIPPED: no python3 with jsonschema (Draft 2020-12) on this machine");
        return;
    };
    let ws = Workspace::new();
    let out = faultline(&ws).arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema = ws.write("schema.json", std::str::from_utf8(&out.stdout).unwrap());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = ["experiments", "tests/good"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let fill = |params: &str| {
        format!(
            "apiVersion: faultline/v1\nmetadata: {{name: s}}\nmax_duration: 1m\n\
             faults: [{{id: f, kind: disk-fill, params: {params}, duration: 5s}}]\n"
        )
    };
    let mut texts: Vec<String> = files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    texts.push(fill("{path: /srv, size: 95%}"));
    texts.push(fill("{path: /srv, load: 60%}"));
    let docs: Vec<serde_json::Value> = texts
        .iter()
        .map(|text| serde_saphyr::from_str(text).unwrap())
        .collect();
    let errors = schema_errors(python, &schema, &docs);
    for (path, error) in files.iter().zip(&errors) {
        assert_eq!(error, &None, "{} is valid", path.display());
    }
    assert_eq!(
        errors[files.len()],
        None,
        "a disk-fill with its own params is valid"
    );
    let foreign = errors[files.len() + 1].as_deref().unwrap_or_default();
    assert!(
        foreign.contains("'load'"),
        "a disk-fill's `load` is refused: {foreign}"
    );
}

#[test]
fn a_game_day_runs_in_order_and_exits_with_the_worst_outcome() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let closed = util::free_port();
    let first = ws.write("1-ok.yaml", MINIMAL);
    let second = ws.write(
        "2-not-ready.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: not-ready}}\nmax_duration: 10s\n\
             probes: {{down: {{tcp: {{address: '127.0.0.1:{closed}'}}}}}}\n\
             steady_state: {{before: {{probes: [down]}}}}\n"
        ),
    );
    let out = faultline(&ws)
        .arg("run")
        .arg(&first)
        .arg(&second)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("game day: 2 experiments"), "{stderr}");
    let summary = std::fs::read_dir(ws.report_dir())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with("-summary.json"))
        .expect("a game-day summary");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary.path()).unwrap()).unwrap();
    assert_eq!(summary[0]["outcome"], "passed");
    assert_eq!(summary[1]["outcome"], "not_ready");
    // One JUnit report for the whole game day: a suite per experiment, the second one
    // failing its steady-state gate.
    let junit = ws.junit();
    let suites: Vec<_> = junit.test_suites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(suites, ["minimal", "not-ready"]);
    assert_eq!(junit.test_suites[0].failures, 0);
    let gate = junit.test_suites[1]
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "steady state before")
        .expect("the gate's test case");
    assert!(
        format!("{:?}", gate.status).contains("steady_state"),
        "{gate:?}"
    );
    assert_eq!(ws.reports("html").len(), 1);
}

#[test]
fn report_of_a_missing_journal_is_invalid_input_and_writes_nothing() {
    let ws = Workspace::new();
    let out = faultline(&ws)
        .arg("report")
        .arg(ws.path().join("nope.jsonl"))
        .arg("--out")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.jsonl"), "{stderr}");
    assert!(!ws.report_dir().exists());
}

#[test]
fn one_invalid_file_stops_the_game_day_before_anything_runs() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("313131");
    let good = ws.write(
        "good.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: would-kill}\nmax_duration: 10s\n\
         targets: {v: {process: {cmdline: '^sleep 300\\.313131$'}}}\n\
         faults: [{id: k, kind: process-kill, target: v}]\n",
    );
    let bad = ws.write(
        "bad.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: bad}\n",
    );
    let out = faultline(&ws)
        .arg("run")
        .arg(&good)
        .arg(&bad)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        victim.running(),
        concat!("the valid experiment did not run either", ": {:?}"),
        victim.state()
    );
    assert!(!ws.report_dir().exists());
}

fn as_nobody(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.uid(65534).gid(65534).env("HOME", "/nonexistent")
}

fn open_to_everyone(ws: &Workspace) {
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
}

#[test]
fn faults_on_your_own_processes_need_no_root() {
    let _serial = util::serial();
    let ws = Workspace::new();
    open_to_everyone(&ws);
    let file = ws.write(
        "own.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: unprivileged}\nmax_duration: 20s\n\
         targets: {mine: {process: {cmdline: '^sleep 300\\.272727$', uid: 65534}}}\n\
         probes: {mine-alive: {process: {target: mine}, interval: 100ms}}\n\
         steady_state: {before: {probes: [mine-alive], wait_until: 5s}}\n\
         faults: [{id: freeze, kind: process-stop, target: mine, duration: 500ms}]\n\
         setup: [{argv: [sleep, '300.272727'], background: true}]\n",
    );
    let mut cmd = faultline(&ws);
    as_nobody(&mut cmd)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events = ws.journal();
    assert_eq!(events_of(&events, "fault_injected").len(), 1);
    assert_eq!(events_of(&events, "fault_reverted").len(), 1);
}

#[test]
fn a_fault_that_needs_root_says_so_before_anything_is_injected() {
    let _serial = util::serial();
    let ws = Workspace::new();
    open_to_everyone(&ws);
    let roots = Proc::sleep("282828");
    let file = ws.write(
        "root.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: needs-root}\nmax_duration: 20s\n\
         targets: {theirs: {process: {cmdline: '^sleep 300\\.282828$'}}}\n\
         faults: [{id: freeze, kind: process-stop, target: theirs, at: 1s, duration: 5s}]\n",
    );
    let mut cmd = faultline(&ws);
    as_nobody(&mut cmd)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("root"),
        "the error says what privilege is missing: {stderr}"
    );
    let events = ws.journal();
    assert!(
        events_of(&events, "fault_intent").is_empty(),
        "nothing was injected"
    );
    assert!(roots.running(), "{:?}", roots.state());
}

#[test]
fn kill_9_of_the_runner_also_stops_the_services_its_setup_started() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let file = ws.write(
        "bg.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: bg}\nmax_duration: 1m\n\
         targets: {svc: {process: {cmdline: '^sleep 300\\.191919$'}}}\n\
         probes: {svc-up: {process: {target: svc}, interval: 100ms}}\n\
         steady_state: {before: {probes: [svc-up], wait_until: 5s}}\n\
         faults: [{id: freeze, kind: process-stop, target: svc, duration: 50s}]\n\
         setup: [{argv: [sleep, '300.191919'], background: true}]\n",
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(5), || ws.state_records() == 1),
        "{}",
        runner.stderr()
    );
    let events = ws.journal();
    let service = events_of(&events, "command")[0]["pid"].as_u64().unwrap() as u32;
    runner.signal(Signal::SIGKILL);
    runner.wait(Duration::from_secs(5));
    // The service gets SIGTERM when its parent dies; a stopped service acts on it once
    // `recover` resumes it.
    let out = faultline(&ws).arg("recover").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        wait_for(Duration::from_secs(5), || matches!(
            util::proc_state(service),
            None | Some('Z')
        )),
        "the background service outlived the crashed run: state {:?}",
        util::proc_state(service)
    );
}

#[test]
fn a_usage_error_is_invalid_input_not_an_outcome() {
    let ws = Workspace::new();
    let out = faultline(&ws)
        .args(["run", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let help = faultline(&ws).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes"));
}
