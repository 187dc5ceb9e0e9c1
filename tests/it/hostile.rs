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

/// `validate`, `plan` and `run` of `path` end at once with invalid input (64), saying `why`.
fn refused_at_once(ws: &Workspace, path: &Path, why: &str) {
    for command in ["validate", "plan", "run"] {
        let mut cmd = faultline(ws);
        cmd.arg(command).arg(path).stdin(Stdio::null());
        if command == "run" {
            cmd.arg("--report-dir").arg(ws.report_dir());
        }
        let started = Instant::now();
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let ended = wait_for(Duration::from_secs(10), || {
            child.try_wait().unwrap().is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
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

#[test]
fn a_check_that_hangs_before_t0_is_interrupted_at_once_and_injects_nothing() {
    let _serial = util::serial();
    let hung = HungMount::new();
    let ws = Workspace::new();
    let file = ws.write(
        "hung.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: hung-check}}\nmax_duration: 2m\n\
             targets: {{later: {{process: {{pidfile: '{}'}}}}}}\n\
             faults: [{{id: kill, kind: process-kill, target: later}}]\n",
            hung.mount_point.join("app.pid").display()
        ),
    );
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
                if inherited_ignored {
                    libc::signal(number, libc::SIG_IGN);
                }
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
