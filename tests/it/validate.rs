//! The experiment file: every mistake in `tests/bad/` renders as a snapshot pointing into the
//! file, and every file in `tests/good/` and `experiments/` compiles to a plan.

use std::path::{Path, PathBuf};
use std::time::Duration;

use faultline::experiment::model::NoData;
use faultline::experiment::{self, Diagnostics, Overrides, Pos, Source};
use faultline::fault::process::Kill;
use faultline::plan::{Comparison, FaultAction, Plan, ProbeKind};
use faultline::view::render;

use crate::util::{Workspace, faultline};

/// Paths relative to the crate root, so rendered diagnostics (and snapshots) are stable.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| Path::new(dir).join(entry.unwrap().file_name()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Result<Plan, Diagnostics> {
    faultline::plan::load_plan(path)
}

fn compile_text(text: &str) -> Result<Plan, Diagnostics> {
    let source = Source {
        path: PathBuf::from("inline.yaml"),
        text: text.to_string(),
    };
    let experiment = experiment::parse(&source)?;
    faultline::plan::compile(&source, experiment)
}

fn plan_of(text: &str) -> Plan {
    compile_text(text).unwrap_or_else(|d| panic!("should compile:\n{}", d.render(false)))
}

fn rejection(name: &str) -> Diagnostics {
    let path = PathBuf::from(format!("tests/bad/{name}.yaml"));
    match load(&path) {
        Ok(_) => panic!("{} should be rejected", path.display()),
        Err(diagnostics) => diagnostics,
    }
}

macro_rules! bad_files {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                let rendered = rejection($name).render(false);
                insta::assert_snapshot!($name, rendered);
            }
        )*

        const BAD_FILES: &[&str] = &[$($name),*];
    };
}

bad_files! {
    after_cycle => "after-cycle",
    after_not_a_list => "after-not-a-list",
    alias_bomb => "alias-bomb",
    bad_duration => "bad-duration",
    bad_duration_bare_number => "bad-duration-bare-number",
    bad_regex => "bad-regex",
    bad_signal => "bad-signal",
    bad_status => "bad-status",
    bidi_override_in_name => "bidi-override-in-name",
    bom_then_typo => "bom-then-typo",
    boolean_as_number => "boolean-as-number",
    carriage_return_lines => "carriage-return-lines",
    cgroup_relative => "cgroup-relative",
    container_path => "container-path",
    cgroup_traversal => "cgroup-traversal",
    cidr_host_bits => "cidr-host-bits",
    cores_wrong_shape => "cores-wrong-shape",
    count_fraction => "count-fraction",
    count_not_a_number => "count-not-a-number",
    count_too_large => "count-too-large",
    deep_nesting => "deep-nesting",
    duplicate_fault_id => "duplicate-fault-id",
    duplicate_yaml_key => "duplicate-yaml-key",
    duration_overflow => "duration-overflow",
    empty_file => "empty-file",
    env_var_reference => "env-var-reference",
    equals_in_env_name => "equals-in-env-name",
    escape_sequence_in_name => "escape-sequence-in-name",
    expect_key_wrong_kind => "expect-key-wrong-kind",
    header_with_newline => "header-with-newline",
    interface_name_too_long => "interface-name-too-long",
    ipv6_host_bits => "ipv6-host-bits",
    key_in_other_case => "key-in-other-case",
    latin1_bytes => "latin1-bytes",
    line_break_in_name => "line-break-in-name",
    line_separator_in_key => "line-separator-in-key",
    long_after_cycle => "long-after-cycle",
    max_duration_zero => "max-duration-zero",
    missing_key => "missing-key",
    multiple_problems => "multiple-problems",
    name_too_long_for_comm => "name-too-long-for-comm",
    negative_duration => "negative-duration",
    network_bad_rate => "network-bad-rate",
    network_fault_on_process_target => "network-fault-on-process-target",
    network_param_wrong_kind => "network-param-wrong-kind",
    network_selector_mistakes => "network-selector-mistakes",
    newline_in_url => "newline-in-url",
    next_line_in_value => "next-line-in-value",
    non_finite_threshold => "non-finite-threshold",
    not_an_ipv4_address => "not-an-ipv4-address",
    nul_in_argv => "nul-in-argv",
    nul_in_env_value => "nul-in-env-value",
    nul_in_name => "nul-in-name",
    nul_in_url => "nul-in-url",
    netns_and_container => "netns-and-container",
    null_target => "null-target",
    offset_beyond_max_duration => "offset-beyond-max-duration",
    percent_over_100 => "percent-over-100",
    pid_negative => "pid-negative",
    port_out_of_range => "port-out-of-range",
    port_range_reversed => "port-range-reversed",
    probability_as_percent_number => "probability-as-percent-number",
    probes_not_a_list => "probes-not-a-list",
    prometheus_expect_key_wrong_kind => "prometheus-expect-key-wrong-kind",
    prometheus_mistakes => "prometheus-mistakes",
    quoted_boolean => "quoted-boolean",
    regex_too_big => "regex-too-big",
    repeat_without_duration => "repeat-without-duration",
    resource_mistakes => "resource-mistakes",
    runtime_without_container => "runtime-without-container",
    secret_outside_a_probe => "secret-outside-a-probe",
    secret_relative_file => "secret-relative-file",
    secret_undeclared => "secret-undeclared",
    secret_without_source => "secret-without-source",
    selector_without_filter => "selector-without-filter",
    separator_as_value => "separator-as-value",
    sexagesimal_duration => "sexagesimal-duration",
    signal_out_of_range => "signal-out-of-range",
    stop_without_duration => "stop-without-duration",
    tab_indentation => "tab-indentation",
    targets_as_list => "targets-as-list",
    tcp_address_without_port => "tcp-address-without-port",
    timeout_over_interval => "timeout-over-interval",
    top_level_list => "top-level-list",
    two_documents => "two-documents",
    unknown_fault_kind => "unknown-fault-kind",
    unknown_key_typo => "unknown-key-typo",
    unknown_probe_ref => "unknown-probe-ref",
    unknown_runtime => "unknown-runtime",
    unknown_target_ref => "unknown-target-ref",
    unknown_var_reference => "unknown-var-reference",
    utf16_file => "utf16-file",
    var_default_with_newline => "var-default-with-newline",
    var_makes_bad_value => "var-makes-bad-value",
    wrong_api_version => "wrong-api-version",
    yaml11_boolean => "yaml11-boolean",
    yaml11_on => "yaml11-on",
    yaml11_yes => "yaml11-yes",
    zero_check_timeout => "zero-check-timeout",
    zero_width_space_in_reference => "zero-width-space-in-reference",
}

#[test]
fn every_bad_file_has_a_snapshot_test() {
    for path in yaml_files("tests/bad") {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert!(
            BAD_FILES.contains(&stem),
            "{} has no test in bad_files!",
            path.display()
        );
    }
}

#[test]
fn every_bad_file_points_into_itself_with_a_hint() {
    for name in BAD_FILES {
        let diagnostics = rejection(name);
        let rendered = diagnostics.render(false);
        assert!(rendered.contains("= help: "), "{name}: no hint\n{rendered}");
        if diagnostics.source.is_none() {
            // A file that cannot be read as text at all: one whole-file error naming it.
            assert_eq!(diagnostics.count(), 1, "{name}\n{rendered}");
            assert!(
                rendered.contains(&format!("tests/bad/{name}.yaml")),
                "{rendered}"
            );
            continue;
        }
        let location = format!("tests/bad/{name}.yaml:");
        assert!(
            rendered.contains(&location),
            "{name}: no file:line:col\n{rendered}"
        );
        for item in &diagnostics.items {
            assert!(
                item.pos.is_some(),
                "{name}: `{}` has no position",
                item.message
            );
        }
    }
}

/// `validate`, `plan` and `run` all refuse every bad file as invalid input (64), never with a
/// panic (101), and none of them writes a state directory or a journal.
#[test]
fn every_bad_file_is_refused_by_validate_plan_and_run_and_nothing_is_written() {
    let ws = Workspace::new();
    for name in BAD_FILES {
        let path = std::fs::canonicalize(format!("tests/bad/{name}.yaml")).unwrap();
        for command in ["validate", "plan", "run"] {
            let mut cmd = faultline(&ws);
            cmd.arg(command).arg(&path);
            if command == "run" {
                cmd.arg("--report-dir").arg(ws.report_dir());
            }
            let out = cmd.output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(64),
                "{command} {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!ws.state_dir().exists(), "{command} {name} wrote state");
            assert!(
                !ws.report_dir().exists(),
                "{command} {name} wrote a journal"
            );
        }
    }
}

#[test]
fn all_independent_mistakes_are_reported_together() {
    let diagnostics = rejection("multiple-problems");
    assert_eq!(diagnostics.count(), 3, "{}", diagnostics.render(false));
    let messages: Vec<&str> = diagnostics
        .items
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("`timeout`")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("unknown probe `healthz`")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("unknown target `workers`")),
        "{messages:?}"
    );
    let rendered = diagnostics.render(false);
    assert!(
        rendered
            .ends_with("error: 3 problems in tests/bad/multiple-problems.yaml; nothing was run\n"),
        "{rendered}"
    );
}

#[test]
fn plain_rendering_has_no_colour_and_colour_is_opt_in() {
    let diagnostics = rejection("unknown-key-typo");
    assert!(!diagnostics.render(false).contains('\u{1b}'));
    assert!(diagnostics.render(true).contains('\u{1b}'));
}

#[test]
fn good_files_and_shipped_experiments_compile() {
    let mut files = yaml_files("tests/good");
    assert!(files.len() >= 3, "{files:?}");
    let shipped = yaml_files("experiments");
    assert!(shipped.len() >= 2, "{shipped:?}");
    files.extend(shipped);
    for path in files {
        if let Err(diagnostics) = load(&path) {
            panic!(
                "{} should compile:\n{}",
                path.display(),
                diagnostics.render(false)
            );
        }
    }
}

#[test]
fn probe_defaults_fill_the_plan() {
    let plan = plan_of(
        "apiVersion: faultline/v1
metadata: {name: defaults}
targets:
  worker: {process: {name: demo-worker}}
probes:
  web: {http: {url: 'http://127.0.0.1:18080/'}}
  fast: {tcp: {address: '127.0.0.1:18080'}, interval: 500ms}
  slow: {tcp: {address: '127.0.0.1:18080'}, interval: 5s}
  script: {command: {argv: [/bin/true]}}
  workers: {process: {target: worker}}
steady_state:
  before: {probes: [web]}
  after: {probes: [web]}
max_duration: 1m
",
    );
    let web = &plan.probes["web"];
    assert_eq!(web.interval, Duration::from_secs(1));
    // Default timeout is 2s, but never longer than the interval.
    assert_eq!(web.timeout, Duration::from_secs(1));
    assert_eq!(web.failure_threshold, 1);
    assert_eq!(web.check.status, vec![(200, 299)]);
    match &web.kind {
        ProbeKind::Http { method, .. } => assert_eq!(method, "GET"),
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.probes["fast"].timeout, Duration::from_millis(500));
    assert_eq!(plan.probes["slow"].timeout, Duration::from_secs(2));
    assert_eq!(plan.probes["script"].check.exit_code, Some(0));
    let workers = &plan.probes["workers"];
    assert_eq!(workers.check.min_count, Some(1));
    match &workers.kind {
        ProbeKind::Process { selector } => {
            assert_eq!(selector.selector().name.as_deref(), Some("demo-worker"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.before.as_ref().unwrap().wait_until, Duration::ZERO);
    assert_eq!(plan.after.as_ref().unwrap().within, Duration::from_secs(30));
    assert_eq!(plan.revert_timeout, Duration::from_secs(10));
    assert_eq!(plan.check_timeout, Duration::from_secs(15));
    assert!(plan.abort_on_probe_failure);
}

#[test]
fn a_prometheus_probe_compiles_describes_itself_and_its_server_is_protected() {
    let plan = plan_of(
        "apiVersion: faultline/v1
metadata: {name: slo}
probes:
  errors:
    prometheus:
      url: 'http://127.0.0.1:9090/'
      query: 'sum(rate(errors_total[1m]))'
      headers: {Authorization: 'Bearer t'}
    expect: {below: 0.01}
  replicas:
    prometheus: {url: 'http://127.0.0.1:9091', query: 'count(up{job=\"api\"} == 1)'}
    expect: {at_most: 5, at_least: 2, no_data: pass, max_latency: 250ms}
    interval: 5s
max_duration: 1m
",
    );
    let errors = &plan.probes["errors"];
    assert_eq!(errors.check.comparisons, vec![Comparison::Below(0.01)]);
    assert_eq!(errors.check.no_data, NoData::Fail);
    assert_eq!(errors.check.status, Vec::new(), "no HTTP status check");
    match &errors.kind {
        ProbeKind::Prometheus { url, headers, .. } => {
            assert_eq!(url, "http://127.0.0.1:9090/");
            assert_eq!(headers["Authorization"], "Bearer t");
        }
        other => panic!("{other:?}"),
    }
    let replicas = &plan.probes["replicas"];
    assert_eq!(
        replicas.check.comparisons,
        vec![Comparison::AtLeast(2.0), Comparison::AtMost(5.0)]
    );
    assert_eq!(replicas.check.no_data, NoData::Pass);
    assert_eq!(replicas.check.max_latency, Some(Duration::from_millis(250)));
    assert_eq!(replicas.timeout, Duration::from_secs(2));

    let rendered = render(&plan);
    assert!(
        rendered.contains(
            "errors: prometheus 127.0.0.1:9090: sum(rate(errors_total[1m])) < 0.01; every 1s"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "replicas: prometheus 127.0.0.1:9091: count(up{job=\"api\"} == 1) >= 2 and <= 5; \
             every 5s, timeout 2s, fails after 1 consecutive failure; \
             expect latency <= 250ms, no data passes"
        ),
        "{rendered}"
    );

    // A network fault must not cut faultline off from the server its SLOs are read from.
    let protected = plan.protected_flows();
    for (port, probe) in [(9090, "probe errors"), (9091, "probe replicas")] {
        assert!(
            protected
                .iter()
                .any(|flow| flow.addr.to_string() == "127.0.0.1"
                    && flow.remote_port == Some(port)
                    && flow.reason == probe),
            "{protected:?}"
        );
    }
}

#[test]
fn prometheus_thresholds_are_finite_numbers() {
    for threshold in [".nan", ".inf", "-.inf", "1e400"] {
        let text = format!(
            "apiVersion: faultline/v1
metadata: {{name: finite}}
probes:
  errors:
    prometheus: {{url: 'http://127.0.0.1:9090', query: up}}
    expect: {{below: {threshold}}}
max_duration: 1m
"
        );
        let diagnostics = compile_text(&text).expect_err(threshold);
        assert!(
            diagnostics.items[0]
                .message
                .contains("is not a finite number"),
            "{threshold}: {}",
            diagnostics.render(false)
        );
    }
}

#[test]
fn fault_and_command_defaults_fill_the_plan() {
    let plan = plan_of(
        "apiVersion: faultline/v1
metadata: {name: defaults}
targets:
  worker: {process: {name: demo-worker}}
faults:
  - {id: kill, kind: process-kill, target: worker}
  - {id: term, kind: process-kill, target: worker, params: {signal: term}, after: [kill], delay: 1s}
  - {id: freeze, kind: process-stop, target: worker, at: 5s, duration: 10s, repeat: every 2s}
max_duration: 1m
setup: [{argv: [faultline, demo-target], background: true}]
cleanup: [{argv: [/usr/bin/env, true]}]
",
    );
    let [kill, term, freeze] = &plan.faults[..] else {
        panic!("{:?}", plan.faults)
    };
    assert!(
        matches!(&kill.action, FaultAction::ProcessKill(Kill { signal: 9, signal_name }) if signal_name == "SIGKILL")
    );
    assert_eq!(kill.duration, None);
    assert!(
        matches!(&term.action, FaultAction::ProcessKill(Kill { signal: 15, signal_name }) if signal_name == "SIGTERM")
    );
    assert_eq!(
        (term.after.clone(), term.delay),
        (vec!["kill".to_string()], Duration::from_secs(1))
    );
    assert!(matches!(freeze.action, FaultAction::ProcessStop(_)));
    assert_eq!(freeze.at, Duration::from_secs(5));
    assert_eq!(freeze.duration, Some(Duration::from_secs(10)));
    assert_eq!(freeze.repeat_every, Some(Duration::from_secs(2)));

    let setup = &plan.setup[0];
    assert_eq!(setup.name, "faultline");
    assert_eq!(Path::new(&setup.argv[0]), std::env::current_exe().unwrap());
    assert!(setup.background);
    let cleanup = &plan.cleanup[0];
    assert_eq!(
        (cleanup.name.as_str(), cleanup.timeout),
        ("env", Duration::from_secs(60))
    );
}

#[test]
fn background_commands_are_refused_in_cleanup() {
    let diagnostics = compile_text(
        "apiVersion: faultline/v1
metadata: {name: cleanup}
max_duration: 1m
cleanup: [{argv: [/bin/sleep, '5'], background: true}]
",
    )
    .unwrap_err();
    assert_eq!(diagnostics.count(), 1);
    assert!(
        diagnostics.items[0]
            .message
            .contains("`background: true` in `cleanup`")
    );
}

const WITH_VARS: &str = "apiVersion: faultline/v1
metadata: {name: vars}
vars: {listen: '127.0.0.1:18080', threshold: '3'}
probes:
  web: {http: {url: 'http://${vars.listen}/health'}, failure_threshold: ${vars.threshold}}
max_duration: 1m
setup: [{argv: [faultline, demo-target, --listen, '${vars.listen}'], background: true}]
";

fn inline(text: &str) -> Source {
    Source {
        path: PathBuf::from("inline.yaml"),
        text: text.to_string(),
    }
}

#[test]
fn vars_are_substituted_and_overrides_are_what_the_plan_records() {
    let defaults = plan_of(WITH_VARS);
    assert_eq!(defaults.probes["web"].failure_threshold, 3);
    assert_eq!(defaults.experiment.vars["listen"], "127.0.0.1:18080");

    let mut overrides = Overrides::none();
    overrides.set("listen", "127.0.0.1:9");
    overrides.set("threshold", "5");
    let plan = faultline::plan::plan_source(&inline(WITH_VARS), &overrides).unwrap();
    match &plan.probes["web"].kind {
        ProbeKind::Http { url, .. } => assert_eq!(url.as_str(), "http://127.0.0.1:9/health"),
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.probes["web"].failure_threshold, 5);
    assert_eq!(plan.setup[0].argv[3], "127.0.0.1:9");
    // The journal logs `plan.experiment`: it must show the values that ran, not the defaults.
    let logged = serde_json::to_value(&plan.experiment).unwrap();
    assert_eq!(logged["vars"]["listen"], "127.0.0.1:9");
    assert_eq!(logged["vars"]["threshold"], "5");
    assert_eq!(
        logged["probes"]["web"]["http"]["url"],
        "http://127.0.0.1:9/health"
    );
}

#[test]
fn a_bad_value_from_a_var_is_reported_at_its_reference() {
    let mut overrides = Overrides::none();
    overrides.set("threshold", "lots");
    let diagnostics = faultline::plan::plan_source(&inline(WITH_VARS), &overrides).unwrap_err();
    assert_eq!(diagnostics.count(), 1, "{}", diagnostics.render(false));
    let item = &diagnostics.items[0];
    let line = WITH_VARS.lines().nth(4).unwrap();
    let column = line.find("${vars.threshold}").unwrap() + 1;
    assert_eq!(
        item.pos,
        Some(Pos {
            line: 5,
            column: u32::try_from(column).unwrap()
        })
    );
    assert!(
        item.hint
            .as_deref()
            .is_some_and(|h| h.contains("`${vars.threshold}` is `lots`")),
        "{item:?}"
    );
    // The snippet shows the file as written.
    assert!(
        diagnostics.render(false).contains(line),
        "{}",
        diagnostics.render(false)
    );
}

#[test]
fn validate_takes_var_overrides_and_refuses_undeclared_ones() {
    let ws = Workspace::new();
    let file = ws.write("vars.yaml", WITH_VARS);
    let ok = faultline(&ws)
        .args([
            "validate",
            "--var",
            "listen=127.0.0.1:9",
            "--var",
            "threshold=2",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad_value = faultline(&ws)
        .args(["validate", "--var", "threshold=none"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(bad_value.status.code(), Some(64));

    for (args, expected) in [
        (["--var", "lisen=127.0.0.1:9"], "did you mean `listen`?"),
        (["--var", "listen"], "expected NAME=VALUE"),
    ] {
        let out = faultline(&ws)
            .arg("validate")
            .args(args)
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
