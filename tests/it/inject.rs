//! `faultline inject`: one fault from the command line, through the same validation, engine,
//! state file, journal and reports as an experiment file.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{self, Proc, Runner, Workspace, events_of, faultline, wait_for};

fn iptables_save() -> String {
    let out = Command::new("iptables-save")
        .output()
        .expect("run iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Comments carry a timestamp; counters may move while the test runs.
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn a_dry_run_prints_the_experiment_and_its_plan_and_touches_nothing() {
    // Serial: the ruleset compared here must not change under another test.
    let _serial = util::serial();
    let ws = Workspace::new();
    let before = iptables_save();
    let out = faultline(&ws)
        .args([
            "inject",
            "network-delay",
            "delay=200ms",
            "jitter=20ms",
            "--interface",
            "lo",
            "--protocol",
            "tcp",
            "--remote-port",
            "18099",
            "--for",
            "30s",
            "--abort-if-http",
            "http://127.0.0.1:18099/health",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "kind: network-delay",
        "delay: 200ms",
        "remote_ports:",
        "18099",
        "duration: 30s",
        "url: http://127.0.0.1:18099/health",
        "nothing was injected",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    // The plan names the backend and protects the probe's own endpoint from the fault.
    assert!(stdout.contains("backend"), "{stdout}");
    assert_eq!(ws.state_records(), 0);
    assert!(!ws.report_dir().exists(), "a dry run writes no journal");
    assert_eq!(iptables_save(), before, "a dry run adds no rule");
}

#[test]
fn a_saved_injection_is_an_experiment_file_that_validates_and_plans_the_same() {
    let ws = Workspace::new();
    let saved = ws.path().join("freeze.yaml");
    let out = faultline(&ws)
        .args([
            "inject",
            "process-stop",
            "--pidfile",
            "/run/${HOME}/x.pid",
            "--for",
            "5s",
            "--dry-run",
            "--save",
        ])
        .arg(&saved)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&saved).expect("the saved experiment");
    assert!(
        text.contains("faultline inject process-stop --pidfile")
            && !text.contains("--dry-run")
            && !text.contains("--save"),
        "the command line is kept: {text}"
    );
    // Text from the command line is never a var reference.
    assert!(text.contains("$${HOME}"), "{text}");
    let validate = faultline(&ws).arg("validate").arg(&saved).output().unwrap();
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let plan = faultline(&ws).arg("plan").arg(&saved).output().unwrap();
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("${HOME}"),
        "the regex is kept literally: {}",
        String::from_utf8_lossy(&plan.stdout)
    );
}

#[test]
fn a_mistyped_param_is_pointed_at_with_a_hint_and_nothing_runs() {
    let ws = Workspace::new();
    let out = faultline(&ws)
        .args([
            "inject",
            "network-delay",
            "dealy=200ms",
            "--interface",
            "lo",
            "--for",
            "10s",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("<faultline inject>:"), "{stderr}");
    assert!(stderr.contains("did you mean `delay`"), "{stderr}");
    assert_eq!(ws.state_records(), 0);
    assert!(!ws.report_dir().exists());
}

#[test]
fn command_line_mistakes_exit_64_before_anything_runs() {
    let ws = Workspace::new();
    let cases: [(&[&str], &str); 7] = [
        (
            &["inject", "process-stop", "--cmdline", "x"],
            "needs `--for DURATION`",
        ),
        (
            &[
                "inject",
                "network-loss",
                "probability=30%",
                "--pid",
                "1",
                "--for",
                "5s",
            ],
            "--pid select processes, but `network-loss` acts on traffic",
        ),
        (
            &["inject", "process-kill", "--interface", "lo"],
            "--interface select traffic, but `process-kill` acts on processes",
        ),
        (&["inject", "process-kill"], "give --pid, --pidfile"),
        (
            &["inject", "network-partition", "--for", "5s"],
            "for all traffic say so",
        ),
        (
            &[
                "inject",
                "process-stop",
                "--pid",
                "1",
                "--for",
                "5s",
                "--failures",
                "3",
            ],
            "--failures needs --abort-if-http or --abort-if-tcp",
        ),
        (
            &["inject", "cpu-pressure", "load", "--for", "5s"],
            "`load` is not PARAM=VALUE",
        ),
    ];
    for (args, expected) in cases {
        let out = faultline(&ws).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing was run"), "{args:?}: {stderr}");
    }
    assert_eq!(ws.state_records(), 0);
}

/// A `sleep` tagged `tag`, frozen by `faultline inject process-stop --for duration`; returns
/// once the kernel shows it stopped.
fn freeze_by_inject(ws: &Workspace, tag: &str, duration: &str) -> (Proc, Runner) {
    let victim = Proc::sleep(tag);
    let cmdline = format!("^sleep 300\\.{tag}$");
    let runner = Runner::spawn_command(
        ws,
        &strings(&[
            "inject",
            "process-stop",
            "--cmdline",
            &cmdline,
            "--for",
            duration,
        ]),
    );
    assert!(
        wait_for(Duration::from_secs(5), || victim.state() == Some('T')),
        "{}",
        runner.stderr()
    );
    (victim, runner)
}

#[test]
fn an_injected_freeze_stops_the_process_for_its_duration_and_resumes_it() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (victim, mut runner) = freeze_by_inject(&ws, "525252", "2s");
    assert_eq!(ws.state_records(), 1, "the fault is recorded while live");
    assert_eq!(
        runner.wait(Duration::from_secs(15)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert!(victim.running(), "{:?}", victim.state());
    assert_eq!(ws.state_records(), 0);
    let events = ws.journal();
    assert_eq!(events_of(&events, "outcome")[0]["outcome"], "passed");
    let reverted = events_of(&events, "fault_reverted");
    assert_eq!(reverted[0]["cause"], "duration_elapsed", "{reverted:?}");
    assert_eq!(ws.reports("junit.xml").len(), 1);
}

/// The demo service answers /health through its worker: freezing the worker breaks the
/// health check, and `--abort-if-http` must end the fault long before `--for` is over.
#[test]
fn an_abort_probe_ends_the_injection_at_the_first_failed_check() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let listen = format!("127.0.0.1:{}", util::free_port());
    // Killed by PID on drop; its worker dies with it (PR_SET_PDEATHSIG).
    let _demo = Runner::adopt(
        Command::new(util::faultline_bin())
            .args(["demo-target", "--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo service"),
    );
    let worker = format!("demo-target --worker .*--listen {listen}$");
    let health = format!("http://{listen}/health");
    let mut runner = Runner::spawn_command(
        &ws,
        &strings(&[
            "inject",
            "process-stop",
            "--cmdline",
            &worker,
            "--for",
            "60s",
            "--abort-if-http",
            &health,
            "--probe-interval",
            "200ms",
        ]),
    );
    let code = runner.wait(Duration::from_secs(30));
    let stderr = runner.stderr();
    assert_eq!(code, Some(2), "aborted: {stderr}");
    let events = ws.journal();
    let abort = events_of(&events, "abort");
    assert_eq!(abort[0]["trigger"], "probe_failure", "{abort:?}");
    assert!(
        abort[0]["breach_to_all_reverted_ms"].as_f64().unwrap() < 1000.0,
        "{abort:?}"
    );
    let worker_pid = events_of(&events, "fault_intent")[0]["revert"]["processes"][0]["pid"]
        .as_u64()
        .expect("the frozen worker's pid") as u32;
    assert_ne!(
        util::proc_state(worker_pid),
        Some('T'),
        "the worker was thawed"
    );
    assert_eq!(ws.state_records(), 0);
}

/// The network flags reach the kernel as the selector they name: a reject partition of one
/// loopback port refuses connects to it while live, spares a neighbouring port, and is gone
/// after `--for`.
#[test]
fn an_injected_partition_refuses_exactly_the_selected_port_until_it_is_over() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let before = iptables_save();
    let hit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spared = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hit_addr = hit.local_addr().unwrap();
    let spared_addr = spared.local_addr().unwrap();
    let connects =
        |addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
    assert!(connects(hit_addr) && connects(spared_addr));

    let mut runner = Runner::spawn_command(
        &ws,
        &strings(&[
            "inject",
            "network-partition",
            "mode=reject",
            "--interface",
            "lo",
            "--protocol",
            "tcp",
            "--remote-port",
            &hit_addr.port().to_string(),
            "--for",
            "3s",
        ]),
    );
    util::until_injected(&ws, &runner, Duration::from_secs(10));
    assert!(!connects(hit_addr), "the selected port is partitioned");
    assert!(connects(spared_addr), "another port is not");
    assert_eq!(
        runner.wait(Duration::from_secs(15)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert!(connects(hit_addr), "reverted after --for");
    assert_eq!(iptables_save(), before, "the ruleset is as it was");
}

/// Ad-hoc faults are the ones an SRE ends with Ctrl-C: the fault goes with the run.
#[test]
fn ctrl_c_ends_an_injection_and_reverts_it() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (victim, mut runner) = freeze_by_inject(&ws, "535353", "10m");
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(5)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert!(victim.running(), "{:?}", victim.state());
    assert_eq!(ws.state_records(), 0);
    assert_eq!(
        events_of(&ws.journal(), "outcome")[0]["outcome"],
        "interrupted"
    );
}
