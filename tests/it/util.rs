//! Shared helpers for integration tests: a hermetic workspace per test (state dir, report
//! dir), real child processes that are always killed and reaped, and bounded waits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::net::{SocketAddr, TcpListener, TcpStream};

use faultline::sys::netns::run_in;
use serde_json::Value;

/// Real-process tests measure timings on a 2-core box: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn faultline_bin() -> &'static str {
    env!("CARGO_BIN_EXE_faultline")
}

/// A `faultline` command with a clean environment: no inherited state dir or log settings.
pub fn faultline(ws: &Workspace) -> Command {
    let mut cmd = Command::new(faultline_bin());
    cmd.env_remove("FAULTLINE_STATE_DIR")
        .env_remove("FAULTLINE_LOG")
        .env("FAULTLINE_STATE_DIR", ws.state_dir())
        .current_dir(ws.path());
    cmd
}

/// One test's private directory.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn report_dir(&self) -> PathBuf {
        self.path().join("reports")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    pub fn state_records(&self) -> usize {
        match std::fs::read_dir(self.state_dir().join("faults")) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count(),
            Err(_) => 0,
        }
    }

    /// Events of the only (or last) journal in the report dir.
    pub fn journal(&self) -> Vec<Value> {
        let mut journals: Vec<PathBuf> = std::fs::read_dir(self.report_dir())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        journals.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        journals.sort();
        let Some(last) = journals.last() else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(last).unwrap_or_default();
        // A line the runner is still writing has no newline yet: read it next time.
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("journal lines are JSON"))
            .collect()
    }
}

impl Workspace {
    /// The report files `faultline run` wrote next to its journals, by extension
    /// (`junit.xml`, `html`).
    pub fn reports(&self, extension: &str) -> Vec<PathBuf> {
        let suffix = format!(".{extension}");
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.report_dir())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.to_string_lossy().ends_with(&suffix));
        found.sort();
        found
    }

    /// The only JUnit report in the report dir, parsed.
    pub fn junit(&self) -> quick_junit::Report {
        let reports = self.reports("junit.xml");
        assert_eq!(reports.len(), 1, "one JUnit report: {reports:?}");
        let xml = std::fs::read_to_string(&reports[0]).expect("read the JUnit report");
        quick_junit::Report::deserialize_from_str(&xml).expect("well-formed JUnit")
    }
}

/// The status of the test case `name` in the first suite of a JUnit report.
pub fn junit_case<'a>(report: &'a quick_junit::Report, name: &str) -> &'a quick_junit::TestCase {
    report.test_suites[0]
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == name)
        .unwrap_or_else(|| panic!("no test case {name:?} in the JUnit report"))
}

pub fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// A real process the test owns; killed by PID and reaped when dropped.
pub struct Proc {
    pub child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// `sleep` with a distinctive argument (so a cmdline regex can find exactly it).
    pub fn sleep(tag: &str) -> Proc {
        let child = Command::new("sleep")
            .arg(format!("300.{tag}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Proc { child, _dir: None }
    }

    /// `sleep` under another name, so its /proc comm is `name`.
    pub fn named(name: &str) -> Proc {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(which("sleep"), &link).expect("symlink sleep");
        let child = Command::new(&link)
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn named sleep");
        Proc {
            child,
            _dir: Some(dir),
        }
    }

    /// A child the test spawned itself, killed and reaped on drop like the others.
    pub fn adopt(child: Child) -> Proc {
        Proc { child, _dir: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn state(&self) -> Option<char> {
        proc_state(self.pid())
    }

    /// Alive and not stopped (running or sleeping).
    pub fn running(&self) -> bool {
        matches!(self.state(), Some('R' | 'S' | 'D'))
    }

    /// The signal that ended it, waiting at most 5 s; `None` if it is still running.
    pub fn wait_signal(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.signal();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process that burns one CPU (`yes` into /dev/null) until killed by PID on drop. `tag`,
/// its argument, lets a cmdline regex find exactly it.
pub struct Busy(Child);

impl Busy {
    pub fn start(tag: &str) -> Busy {
        Busy(
            Command::new("yes")
                .arg(tag)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn yes"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(program: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} not found")
}

/// One-letter state from /proc/PID/stat; `None` when the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')')?;
    stat[after + 1..].trim_start().chars().next()
}

/// Poll `cond` every 10 ms for at most `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running `faultline run`, killed and reaped if the test ends early.
pub struct Runner {
    pub child: Child,
    stderr_path: PathBuf,
}

impl Runner {
    pub fn spawn(ws: &Workspace, files: &[&Path]) -> Runner {
        Runner::spawn_with(ws, files, &[])
    }

    /// Without the watchdog, for tests of what a crash leaves for `recover` and the next run.
    pub fn spawn_unwatched(ws: &Workspace, files: &[&Path]) -> Runner {
        Runner::spawn_with(ws, files, &["--no-watchdog".to_string()])
    }

    /// With more arguments for `run`, such as `--var NAME=VALUE`.
    pub fn spawn_with(ws: &Workspace, files: &[&Path], args: &[String]) -> Runner {
        let mut all = vec!["run".to_string()];
        all.extend(files.iter().map(|f| f.display().to_string()));
        all.extend(args.iter().cloned());
        Runner::spawn_command(ws, &all)
    }

    /// `faultline ARGS... --report-dir <the workspace's>`, for `run` and `inject`.
    pub fn spawn_command(ws: &Workspace, args: &[String]) -> Runner {
        // Output goes to a file: a pipe nobody reads could fill and stall the runner.
        static RUNNERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nth = RUNNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = ws.path().join(format!("runner-{nth}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let child = faultline(ws)
            .args(args)
            .arg("--report-dir")
            .arg(ws.report_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn faultline run");
        Runner { child, stderr_path }
    }

    /// A runner the test spawned itself (on a terminal of its own, say); no stderr file.
    pub fn adopt(child: Child) -> Runner {
        Runner {
            child,
            stderr_path: PathBuf::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal runner");
    }

    /// Wait at most `limit` for it to exit; its exit code (or 128+signal).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `kill -9` the runner, as a crash would, and reap it.
    pub fn crash(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(5));
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (at most `limit`) until the run's journal says a fault was injected.
pub fn until_injected(ws: &Workspace, runner: &Runner, limit: Duration) {
    assert!(
        wait_for(limit, || !events_of(&ws.journal(), "fault_injected")
            .is_empty()),
        "no fault was injected within {limit:?}:\n{}",
        runner.stderr()
    );
}

/// `faultline recover` in this workspace, which must succeed.
pub fn recover_ok(ws: &Workspace) -> std::process::Output {
    let out = faultline(ws)
        .arg("recover")
        .output()
        .expect("run faultline recover");
    assert_eq!(
        out.status.code(),
        Some(0),
        "recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// Traffic between the namespaces of a `TestNet`.

/// A listening TCP socket in namespace `ns` (connections complete in the kernel backlog;
/// nobody needs to accept them).
pub fn listen_in(ns: &str, ip: &str) -> (TcpListener, SocketAddr) {
    let ip = ip.to_string();
    let listener = run_in(ns, move || TcpListener::bind(format!("{ip}:0")))
        .expect("enter namespace")
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// How many of `n` connects from namespace `ns` to `addr` succeed within 300 ms each.
pub fn connects(ns: &str, addr: SocketAddr, n: usize) -> usize {
    run_in(ns, move || connects_here(addr, n)).unwrap()
}

/// [`connects`] from this process's own namespace.
pub fn connects_here(addr: SocketAddr, n: usize) -> usize {
    (0..n)
        .filter(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
        .count()
}

/// An echo server in namespace `ns` on a thread of its own; it serves until the test ends
/// (its socket goes with the namespace).
pub fn echo_server_in(ns: &str, ip: &str) -> SocketAddr {
    use std::io::{Read, Write};
    let (listener, addr) = listen_in(ns, ip);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Round-trip times (ms) of `n` 64-byte echoes on one connection from namespace `ns`,
/// paced `gap` apart; bounded by a 2 s read timeout per echo.
pub fn echo_rtts(ns: &str, addr: SocketAddr, n: usize, gap: Duration) -> Vec<f64> {
    run_in(ns, move || echo_rtts_here(addr, n, gap)).unwrap()
}

/// [`echo_rtts`] from this process's own namespace.
pub fn echo_rtts_here(addr: SocketAddr, n: usize, gap: Duration) -> Vec<f64> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let start = std::time::Instant::now();
        stream.write_all(&[7u8; 64]).unwrap();
        stream.read_exact(&mut buf).expect("echo");
        rtts.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(gap);
    }
    rtts
}

pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `faultline run FILE` to its end: its exit code and stderr.
pub fn run_to_end(ws: &Workspace, file: &std::path::Path) -> (i32, String) {
    let output = faultline(ws)
        .arg("run")
        .arg(file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .expect("run faultline");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Share of one CPU `pid` used over `window`.
pub fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (before, start) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / start.elapsed().as_secs_f64()
}
