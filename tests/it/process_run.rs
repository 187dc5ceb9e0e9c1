//! End-to-end runs of the `faultline` binary against real processes: kills, stops and
//! resumes, the abort path, gate failures, injection failures, SIGINT, and crash recovery.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{
    self, Proc, Runner, Workspace, events_of, faultline, proc_state, run_to_end, wait_for,
};

fn experiment(
    name: &str,
    targets: &str,
    probes: &str,
    steady: &str,
    faults: &str,
    extra: &str,
) -> String {
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 1m\n{targets}{probes}{steady}{faults}{extra}"
    )
}

/// An experiment that SIGSTOPs the `Proc::sleep(tag)` child for 50 s.
fn freeze_for_50s(ws: &Workspace, name: &str, tag: &str) -> std::path::PathBuf {
    ws.write(
        "stop.yaml",
        &experiment(
            name,
            &format!("targets: {{victim: {{process: {{cmdline: '^sleep 300\\.{tag}$'}}}}}}\n"),
            "",
            "",
            "faults: [{id: freeze, kind: process-stop, target: victim, duration: 50s}]\n",
            "",
        ),
    )
}

#[test]
fn kill_by_name_kills_exactly_that_process() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let mut victim = Proc::named("fl-it-victim");
    let mut bystander = Proc::named("fl-it-bystand");
    let file = ws.write(
        "kill.yaml",
        &experiment(
            "kill-by-name",
            "targets: {victim: {process: {name: fl-it-victim}}}\n",
            "",
            "",
            "faults: [{id: kill, kind: process-kill, target: victim, params: {signal: SIGTERM}}]\n",
            "",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        victim.wait_signal(),
        Some(libc::SIGTERM),
        "the victim died of SIGTERM"
    );
    assert!(
        bystander.running(),
        concat!("the bystander is untouched", ": {:?}"),
        bystander.state()
    );
    assert!(bystander.child.try_wait().unwrap().is_none());
    let events = ws.journal();
    let injected = events_of(&events, "fault_injected");
    assert_eq!(injected.len(), 1);
    assert_eq!(ws.state_records(), 0);
}

#[test]
fn kill_by_cmdline_regex_and_by_pidfile() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let mut by_regex = Proc::sleep("424242");
    let mut by_pidfile = Proc::sleep("515151");
    let other = Proc::sleep("999999");
    let pidfile = ws.write("victim.pid", &format!("{}\n", by_pidfile.pid()));
    let file = ws.write(
        "kill.yaml",
        &experiment(
            "kill-by-regex-and-pidfile",
            &format!(
                "targets:\n  regex: {{process: {{cmdline: '^sleep 300\\.424242$'}}}}\n  pidfile: {{process: {{pidfile: '{}'}}}}\n",
                pidfile.display()
            ),
            "",
            "",
            "faults:\n  - {id: by-regex, kind: process-kill, target: regex}\n  - {id: by-pidfile, kind: process-kill, target: pidfile, at: 200ms}\n",
            "",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(by_regex.wait_signal(), Some(libc::SIGKILL));
    assert_eq!(by_pidfile.wait_signal(), Some(libc::SIGKILL));
    assert!(other.running(), "{:?}", other.state());
}

#[test]
fn stop_freezes_the_process_for_the_duration_then_resumes_it() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("717171");
    let file = ws.write(
        "stop.yaml",
        &experiment(
            "stop-and-resume",
            "targets: {victim: {process: {cmdline: '^sleep 300\\.717171$'}}}\n",
            "",
            "",
            "faults: [{id: freeze, kind: process-stop, target: victim, at: 100ms, duration: 1500ms}]\n",
            "",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(5), || victim.state() == Some('T')),
        "the victim should be stopped during the fault"
    );
    assert_eq!(
        ws.state_records(),
        1,
        "a live stop is recorded in the state dir"
    );
    let code = runner.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", runner.stderr());
    assert!(
        victim.running(),
        concat!("SIGCONT on revert", ": {:?}"),
        victim.state()
    );
    assert_eq!(ws.state_records(), 0);
    let events = ws.journal();
    let reverted = events_of(&events, "fault_reverted");
    assert_eq!(reverted.len(), 1);
    assert_eq!(reverted[0]["cause"], "duration_elapsed");
}

#[test]
fn a_gate_failure_injects_nothing() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("838383");
    let closed = util::free_port();
    let file = ws.write(
        "gate.yaml",
        &experiment(
            "gate-fails",
            "targets: {victim: {process: {cmdline: '^sleep 300\\.838383$'}}}\n",
            &format!(
                "probes: {{down: {{tcp: {{address: '127.0.0.1:{closed}'}}, interval: 100ms}}}}\n"
            ),
            "steady_state: {before: {probes: [down], wait_until: 300ms}}\n",
            "faults: [{id: freeze, kind: process-stop, target: victim, duration: 5s}]\n",
            "",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_eq!(code, 3, "not_ready: {stderr}");
    assert!(stderr.contains("NOT_READY"), "{stderr}");
    assert!(victim.running(), "{:?}", victim.state());
    let events = ws.journal();
    assert!(
        events_of(&events, "fault_intent").is_empty(),
        "nothing was even prepared for injection"
    );
    assert_eq!(events_of(&events, "outcome")[0]["outcome"], "not_ready");
}

#[test]
fn a_fault_that_cannot_be_applied_is_injection_failed() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let file = ws.write(
        "missing.yaml",
        &experiment(
            "no-such-target",
            "targets: {ghost: {process: {name: fl-no-such-proc}}}\n",
            "",
            "",
            "faults: [{id: kill-ghost, kind: process-kill, target: ghost}]\n",
            "",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("INJECTION_FAILED"), "{stderr}");
    let events = ws.journal();
    let failed = events_of(&events, "fault_injection_failed");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("matched no process"),
        "{:?}",
        failed[0]
    );
}

#[test]
fn sigint_mid_run_reverts_and_exits_130() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("929292");
    let file = freeze_for_50s(&ws, "interrupted", "929292");
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(wait_for(Duration::from_secs(5), || victim.state() == Some('T')));
    runner.signal(Signal::SIGINT);
    let code = runner.wait(Duration::from_secs(5));
    assert_eq!(code, Some(130), "{}", runner.stderr());
    assert!(
        victim.running(),
        concat!("the stopped process runs again", ": {:?}"),
        victim.state()
    );
    assert_eq!(ws.state_records(), 0);
    let events = ws.journal();
    assert_eq!(events_of(&events, "outcome")[0]["outcome"], "interrupted");
    assert_eq!(events_of(&events, "abort")[0]["trigger"], "interrupted");
}

/// The operator's SSH session drops: the kernel hangs up the run's terminal (SIGHUP, and
/// every later write to it fails with EIO). The run must abort and revert, not die with the
/// fault in place or panic on its next progress line.
#[test]
fn a_hangup_of_the_operators_terminal_aborts_and_reverts() {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("646464");
    let file = freeze_for_50s(&ws, "hangup", "646464");
    let terminal = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    // openpty's descriptors are inheritable: a master the runner inherited would keep the
    // terminal from ever hanging up.
    for fd in [&terminal.master, &terminal.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .expect("FD_CLOEXEC");
    }
    let mut command = faultline(&ws);
    command
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .stdin(Stdio::from(terminal.slave.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.slave.try_clone().unwrap()))
        .stderr(Stdio::from(terminal.slave.try_clone().unwrap()));
    // SAFETY: signal, setsid and ioctl only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // A login shell's default: the suite itself may run under `nohup`.
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            // A session of its own whose controlling terminal is the pty, as a login shell's.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut runner = Runner::adopt(command.spawn().expect("spawn faultline run"));
    drop(terminal.slave);
    assert!(wait_for(Duration::from_secs(5), || victim.state() == Some('T')));

    drop(terminal.master);
    let code = runner.wait(Duration::from_secs(10));
    assert_eq!(code, Some(130), "interrupted, not killed by the hangup");
    assert!(victim.running(), "{:?}", victim.state());
    assert_eq!(ws.state_records(), 0);
    let events = ws.journal();
    assert_eq!(events_of(&events, "outcome")[0]["outcome"], "interrupted");
    assert_eq!(
        ws.reports("junit.xml").len(),
        1,
        "reports are still written"
    );
}

/// `nohup faultline run ...` asks for the run to outlive the terminal: SIGHUP stays ignored.
#[test]
fn under_nohup_a_hangup_does_not_end_the_run() {
    use std::os::unix::process::CommandExt;
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("656565");
    let file = freeze_for_50s(&ws, "nohup", "656565");
    let mut command = faultline(&ws);
    command
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir());
    // SAFETY: signal() only, between fork and exec, as nohup does before exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut runner = Runner::adopt(command.spawn().expect("spawn faultline run"));
    assert!(wait_for(Duration::from_secs(5), || victim.state() == Some('T')));
    runner.signal(Signal::SIGHUP);
    // An abort would revert and end the run within milliseconds; give it a second.
    assert_eq!(runner.wait(Duration::from_secs(1)), None, "still running");
    assert_eq!(victim.state(), Some('T'), "the fault is still live");
    runner.signal(Signal::SIGINT);
    assert_eq!(runner.wait(Duration::from_secs(5)), Some(130));
    assert!(victim.running(), "{:?}", victim.state());
}

/// The dead-man's switch: a runner killed with SIGKILL cannot revert, so its watchdog does,
/// at once, and says so on the runner's standard error and in its journal.
#[test]
fn kill_9_of_the_runner_is_reverted_at_once_by_its_watchdog() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("676767");
    let file = freeze_for_50s(&ws, "watched", "676767");
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    assert_eq!(victim.state(), Some('T'));
    runner.signal(Signal::SIGKILL);
    assert_eq!(runner.wait(Duration::from_secs(5)), Some(128 + 9));
    assert!(
        wait_for(Duration::from_secs(2), || victim.running()),
        "the watchdog resumed the stopped process: {:?}",
        victim.state()
    );
    assert!(wait_for(Duration::from_secs(2), || ws.state_records() == 0));
    assert!(
        wait_for(Duration::from_secs(2), || runner
            .stderr()
            .contains("faultline watchdog: the run")),
        "{}",
        runner.stderr()
    );
    // Each revert is said in the runner's own words, from the event the journal gets.
    assert!(
        runner.stderr().contains("  revert  freeze: SIGCONT pid "),
        "{}",
        runner.stderr()
    );

    // The journal is written last, after the revert and the message.
    assert!(wait_for(Duration::from_secs(2), || !events_of(
        &ws.journal(),
        "fault_reverted"
    )
    .is_empty()));
    let events = ws.journal();
    let reverted = events_of(&events, "fault_reverted");
    assert_eq!(reverted.len(), 1, "{events:?}");
    assert_eq!(reverted[0]["cause"], "watchdog");
    assert!(
        events_of(&events, "outcome").is_empty(),
        "the run itself never ended"
    );
    // The report says the run crashed, and that its fault was reverted.
    let journal = ws.reports("jsonl").pop().expect("the journal");
    let report = faultline(&ws).arg("report").arg(&journal).output().unwrap();
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let junit = ws.junit();
    assert_eq!(junit.errors, 1, "only the outcome: {junit:?}");
    let recover = util::recover_ok(&ws);
    assert!(String::from_utf8_lossy(&recover.stdout).contains("nothing to recover"));
}

#[test]
fn kill_9_of_the_runner_leaves_a_state_file_that_recover_turns_into_a_clean_host() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("616161");
    let file = freeze_for_50s(&ws, "crashed", "616161");
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    assert!(wait_for(Duration::from_secs(5), || victim.state() == Some('T')));
    runner.signal(Signal::SIGKILL);
    assert_eq!(runner.wait(Duration::from_secs(5)), Some(128 + 9));
    // The crash left the fault in place, and the record of how to undo it.
    assert_eq!(victim.state(), Some('T'));
    assert_eq!(ws.state_records(), 1);

    // The journal still gives a report, one that says the run never ended and the fault
    // was never reverted.
    assert!(
        ws.reports("junit.xml").is_empty(),
        "a killed run writes no report"
    );
    let journal = ws
        .reports("jsonl")
        .pop()
        .expect("the crashed run's journal");
    let report = faultline(&ws).arg("report").arg(&journal).output().unwrap();
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let junit = ws.junit();
    assert_eq!(junit.errors, 2, "{junit:?}");
    let fault = junit.test_suites[0]
        .test_cases
        .iter()
        .find(|c| c.name.as_str().starts_with("fault freeze"))
        .expect("a test case for the fault");
    assert!(
        format!("{:?}", fault.status).contains("not_reverted"),
        "{fault:?}"
    );
    assert!(format!("{:?}", util::junit_case(&junit, "outcome").status).contains("incomplete"));

    let status = faultline(&ws).arg("status").output().unwrap();
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(
        listed.contains("freeze") && listed.contains("gone"),
        "{listed}"
    );

    let recover = faultline(&ws).arg("recover").output().unwrap();
    assert_eq!(
        recover.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&recover.stderr)
    );
    assert!(String::from_utf8_lossy(&recover.stdout).contains("recovered"));
    assert!(
        victim.running(),
        concat!("recover resumed the stopped process", ": {:?}"),
        victim.state()
    );
    assert_eq!(ws.state_records(), 0);

    // Idempotent: a second recover finds nothing and succeeds.
    let again = faultline(&ws).arg("recover").output().unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to recover"));
}

#[test]
fn the_next_run_restores_what_a_crashed_run_left_behind() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("626262");
    let stop = freeze_for_50s(&ws, "crashed", "626262");
    let mut runner = Runner::spawn_unwatched(&ws, &[&stop]);
    assert!(wait_for(Duration::from_secs(5), || victim.state() == Some('T')));
    runner.signal(Signal::SIGKILL);
    runner.wait(Duration::from_secs(5));
    assert_eq!(victim.state(), Some('T'));

    let empty = ws.write("empty.yaml", &experiment("nothing", "", "", "", "", ""));
    let (code, stderr) = run_to_end(&ws, &empty);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("left behind"), "{stderr}");
    assert!(victim.running(), "{:?}", victim.state());
    assert_eq!(ws.state_records(), 0);
}

#[test]
fn recover_does_not_touch_a_process_that_reused_the_pid() {
    // A record whose start time does not match the live process must not signal it.
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = Proc::sleep("737373");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid() as i32),
        Signal::SIGSTOP,
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(2), || victim.state() == Some('T')));
    let record = serde_json::json!({
        "id": "stale-1", "run_id": "r", "experiment": "e", "fault_id": "f",
        "owner": {"pid": 999_999_999u32, "start_time": 1},
        "recorded_at": "2026-01-01T00:00:00Z", "summary": "SIGSTOP",
        "revert": {"recipe": "resume_processes", "processes": [{"pid": victim.pid(), "start_time": 1}]}
    });
    std::fs::create_dir_all(ws.state_dir().join("faults")).unwrap();
    std::fs::write(
        ws.state_dir().join("faults/stale-1.json"),
        record.to_string(),
    )
    .unwrap();
    let out = faultline(&ws).arg("recover").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        proc_state(victim.pid()),
        Some('T'),
        "a different process (by start time) is left alone"
    );
    assert_eq!(ws.state_records(), 0);
}
