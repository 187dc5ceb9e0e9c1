//! Careless and hostile input and timing: files that are not files, targets on a hung mount,
//! signals that come before faultline is ready for them. Whatever comes in, the run stays in
//! control: it refuses with a clear error and injects nothing, or it stops and reverts on
//! time.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{self, Proc, Runner, Workspace, events_of, faultline, wait_for};

/// The child's output once it ends, or once it is killed after `limit`; whether it ended.
fn output_within(mut child: std::process::Child, limit: Duration) -> (bool, std::process::Output) {
    let ended = wait_for(limit, || child.try_wait().unwrap().is_some());
    if !ended {
        let _ = child.kill();
    }
    (ended, child.wait_with_output().unwrap())
}

/// `validate`, `plan` and `run` of `path` end at once with invalid input (64), saying `why`.
fn refused_at_once(ws: &Workspace, path: &Path, why: &str) {
    for command in ["validate", "plan", "run"] {
        let mut cmd = faultline(ws);
        cmd.arg(command).arg(path).stdin(Stdio::null());
        if command == "run" {
            cmd.arg("--report-dir").arg(ws.report_dir());
        }
        let started = Instant::now();
        let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let (ended, out) = output_within(child, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(ended, "{command} {} did not end", path.display());
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains(why), "{command}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!ws.state_dir().exists() && !ws.report_dir().exists());
    }
}

#[test]
fn an_experiment_path_that_is_a_fifo_or_a_device_is_refused_at_once() {
    let ws = Workspace::new();
    let fifo = ws.path().join("experiment.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    refused_at_once(&ws, &fifo, "is a FIFO, not a regular file");
    refused_at_once(&ws, Path::new("/dev/zero"), "is a character device");
    let huge = ws.write("huge.yaml", &"# padding\n".repeat(200_000));
    refused_at_once(&ws, &huge, "larger than 1048576 bytes");
    refused_at_once(&ws, ws.path(), "is a directory");
}

/// A FUSE file system whose daemon never answers: anything that touches it blocks, as on a
/// dead NFS server. Dropping it aborts the connection (the blocked calls fail) and unmounts.
struct HungMount {
    mount_point: PathBuf,
    fuse: Option<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl HungMount {
    fn new() -> HungMount {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let mount_point = dir.path().join("hung");
        std::fs::create_dir(&mount_point).unwrap();
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse (needs root)");
        let options = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        ))
        .unwrap();
        let target = CString::new(mount_point.to_str().unwrap()).unwrap();
        // SAFETY: mount(2) with valid C strings; the fuse descriptor stays open while mounted.
        let done = unsafe {
            libc::mount(
                c"faultline-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(done, 0, "mount fuse: {}", std::io::Error::last_os_error());
        HungMount {
            mount_point,
            fuse: Some(fuse),
            _dir: dir,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // Closing the device aborts the connection first, so nothing blocks on it any more.
        drop(self.fuse.take());
        let target = CString::new(self.mount_point.to_str().unwrap()).unwrap();
        // SAFETY: umount2(2) with a valid path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// A run whose second fault's pidfile turns out to be on a hung mount when the fault fires,
/// while the first fault (a freeze) is live: the stop must not wait for the hung resolution.
fn freeze_then_a_hung_pidfile(
    ws: &Workspace,
    victim: &Proc,
    max_duration: &str,
    freeze: &str,
) -> (Runner, PathBuf) {
    let pidfile = ws.write("other.pid", &format!("{}\n", victim.pid()));
    let link = ws.path().join("target.pid");
    std::os::unix::fs::symlink(&pidfile, &link).unwrap();
    let file = ws.write(
        "hung.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: hung-target}}\nmax_duration: {max_duration}\n\
             targets: {{victim: {{process: {{pid: {}}}}}, later: {{process: {{pidfile: '{}'}}}}}}\n\
             faults:\n\
             \x20 - {{id: freeze, kind: process-stop, target: victim, duration: {freeze}}}\n\
             \x20 - {{id: kill-later, kind: process-kill, target: later, at: 2s}}\n",
            victim.pid(),
            link.display()
        ),
    );
    let runner = Runner::spawn(ws, &[&file]);
    util::until_injected(ws, &runner, Duration::from_secs(10));
    (runner, link)
}

#[test]
fn a_target_on_a_hung_mount_does_not_keep_a_stop_from_reverting() {
    let _serial = util::serial();
    let hung = HungMount::new();
    for stop in ["SIGTERM", "SIGINT", "max_duration"] {
        let ws = Workspace::new();
        let victim = Proc::sleep("939393");
        // max_duration counts from T0: the freeze ends by itself at 5 s, the deadline at 6 s
        // finds the second fault still resolving its target.
        let (max_duration, freeze) = match stop {
            "max_duration" => ("6s", "5s"),
            _ => ("2m", "60s"),
        };
        let (mut runner, link) = freeze_then_a_hung_pidfile(&ws, &victim, max_duration, freeze);
        assert_eq!(victim.state(), Some('T'));
        // From now on the second fault's target resolution hangs.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(hung.mount_point.join("app.pid"), &link).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let stopped_at = Instant::now();
        let expected = match stop {
            "SIGTERM" => {
                runner.signal(Signal::SIGTERM);
                130
            }
            "SIGINT" => {
                runner.signal(Signal::SIGINT);
                130
            }
            _ => 2,
        };
        let code = runner.wait(Duration::from_secs(15));
        let took = stopped_at.elapsed();
        assert_eq!(code, Some(expected), "{stop}: {}", runner.stderr());
        assert!(victim.running(), "{stop}: the freeze was reverted");
        assert!(took < Duration::from_secs(6), "{stop}: took {took:?}");
        let events = ws.journal();
        assert_eq!(events_of(&events, "fault_abandoned").len(), 1, "{stop}");
        assert_eq!(ws.state_records(), 0);
    }
}

/// One process-kill whose target's pidfile is on `hung`: its check hangs. `more` goes in at
/// the top level.
fn hung_check(ws: &Workspace, hung: &HungMount, more: &str) -> PathBuf {
    ws.write(
        "hung.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: hung-check}}\nmax_duration: 2m\n{more}\
             targets: {{later: {{process: {{pidfile: '{}'}}}}}}\n\
             faults: [{{id: kill, kind: process-kill, target: later}}]\n",
            hung.mount_point.join("app.pid").display()
        ),
    )
}

#[test]
fn a_check_that_hangs_before_t0_is_interrupted_at_once_and_injects_nothing() {
    let _serial = util::serial();
    let hung = HungMount::new();
    let ws = Workspace::new();
    let file = hung_check(&ws, &hung, "");
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(10), || runner.stderr().contains("T0")),
        "{}",
        runner.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let interrupted_at = Instant::now();
    runner.signal(Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(10)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert!(interrupted_at.elapsed() < Duration::from_secs(3));
    assert!(events_of(&ws.journal(), "fault_intent").is_empty());
}

/// Left alone, a check that hangs ends the run when the experiment's `check_timeout` runs
/// out (default 15 s, here 2 s): injection failed, nothing injected, and the message says which
/// fault and how long it was given.
#[test]
fn a_check_that_hangs_runs_out_of_its_check_timeout_and_injects_nothing() {
    let _serial = util::serial();
    let hung = HungMount::new();
    let ws = Workspace::new();
    let file = hung_check(&ws, &hung, "abort: {check_timeout: 2s}\n");
    let started = Instant::now();
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert_eq!(
        runner.wait(Duration::from_secs(20)),
        Some(4),
        "{}",
        runner.stderr()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "ended after {took:?}: {}",
        runner.stderr()
    );
    assert!(
        runner
            .stderr()
            .contains("checking fault kill did not finish within 2s"),
        "{}",
        runner.stderr()
    );
    assert!(events_of(&ws.journal(), "fault_intent").is_empty());
}

fn freeze_yaml(ws: &Workspace, victim: &Proc) -> PathBuf {
    ws.write(
        "freeze.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: early-signal}}\nmax_duration: 2m\n\
             targets: {{victim: {{process: {{pid: {}}}}}}}\n\
             faults: [{{id: freeze, kind: process-stop, target: victim, at: 1s, duration: 60s}}]\n",
            victim.pid()
        ),
    )
}

/// A signal that comes before the run is ready for it — here sent before faultline even
/// started, and held pending by a blocked mask the parent left it (it could as well come while
/// the files are read or an earlier run's leftovers are settled) — is not lost, even when
/// SIGINT was inherited as ignored (a background job): the run ends interrupted, and injects
/// nothing.
#[test]
fn a_signal_before_the_run_is_ready_is_honoured_and_nothing_is_injected() {
    let _serial = util::serial();
    for (signal, inherited_ignored) in [
        (Signal::SIGINT, true),
        (Signal::SIGINT, false),
        (Signal::SIGTERM, false),
        (Signal::SIGHUP, false),
    ] {
        let ws = Workspace::new();
        let victim = Proc::sleep("929292");
        let file = freeze_yaml(&ws, &victim);
        let mut cmd = faultline(&ws);
        cmd.arg("run")
            .arg(&file)
            .arg("--report-dir")
            .arg(ws.report_dir())
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let number = signal as i32;
        // SAFETY: signal(2) and sigprocmask(2) between fork and exec, as a shell does.
        unsafe {
            cmd.pre_exec(move || {
                // Either way on purpose: the test itself may run under `nohup`.
                let disposition = if inherited_ignored {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(number, disposition);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, number);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut runner = Runner::adopt(cmd.spawn().unwrap());
        runner.signal(signal);
        assert_eq!(
            runner.wait(Duration::from_secs(10)),
            Some(130),
            "{signal} (inherited ignored: {inherited_ignored})"
        );
        assert!(victim.running());
        assert!(
            events_of(&ws.journal(), "fault_injected").is_empty(),
            "{signal}: nothing injected"
        );
        assert_eq!(ws.state_records(), 0);
    }
}

/// `recover` (and the watchdog, which reverts the same way) gives each revert the run's
/// `revert_timeout`: a revert stuck on a hung mount fails on time, the other records are
/// still reverted, and the stuck one stays for a later `recover`.
#[test]
fn recover_gives_up_on_a_hung_revert_on_time_and_reverts_the_others() {
    use faultline::fault::disk_fill::{FillAmount, Recipe as DiskFillRecipe};
    use faultline::fault::{ProcRef, RevertRecipe};
    use faultline::state::{FaultRecord, StateDir};

    let ws = Workspace::new();
    let hung = HungMount::new();
    let marker = ws.write("host-is-dirty", "x");
    let state = StateDir::new(ws.state_dir());
    // A crashed run's records: a PID that is no process's.
    let owner = ProcRef {
        pid: u32::MAX - 7,
        start_time: 1,
    };
    let record = |n: u32, fault: &str, revert: RevertRecipe| FaultRecord {
        id: format!("run-{fault}-{n}"),
        run_id: "run".into(),
        experiment: "hung-revert".into(),
        fault_id: fault.into(),
        owner,
        recorded_at: "2026-12-02T00:00:00Z".into(),
        summary: fault.into(),
        revert,
        revert_timeout_ms: 300,
    };
    state
        .write(&record(
            1,
            "marker",
            RevertRecipe::Simulated {
                marker: marker.clone(),
                fail: false,
            },
        ))
        .unwrap();
    state
        .write(&record(
            2,
            "fill",
            RevertRecipe::DiskFill(DiskFillRecipe {
                file: hung.mount_point.join(".faultline-fill-1"),
                planned_bytes: 1 << 20,
                amount: FillAmount::Bytes(1 << 20),
            }),
        ))
        .unwrap();

    let started = Instant::now();
    let child = faultline(&ws)
        .arg("recover")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ended, out) = output_within(child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(ended, "recover hung on the hung revert: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(5), "revert_failed: {stderr}");
    assert!(stderr.contains("did not finish within 300ms"), "{stderr}");
    assert!(!marker.exists(), "the other record was reverted too");
    let left: Vec<String> = state
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(left, ["run-fill-2"]);
    drop(hung);
}
