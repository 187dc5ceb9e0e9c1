//! `faultline demo-target`: a tiny HTTP service with a worker child process, so the
//! quickstart has something real to break.
//!
//! `GET /health` asks the worker (over loopback TCP) for a `pong`: 200 when it answers, 503
//! when it is gone, and a hang when it is frozen — exactly what a real service does when
//! its backend is killed or stopped. The supervisor restarts a dead worker after a short
//! delay and keeps its PID in `--pidfile`.
//!
//! `GET /metrics` is for Prometheus: the requests the service answered
//! (`demo_requests_total{path,code}`) and whether the worker answers right now
//! (`demo_worker_up`). The supervisor serves it, not the worker, so that a frozen or dead
//! worker shows as a number (0) in a scrape that still succeeds, the way a service reports the
//! health of its own dependency; a scrape target that stopped answering would only make the
//! series go stale.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::RwLock;

/// The worker's process name (`/proc/PID/comm`), for targets such as `name: demo-worker`.
pub const WORKER_NAME: &str = "demo-worker";

/// How long `/health` waits for the worker: long enough that a frozen worker shows as a hung
/// request, the way a real dependency that stopped answering does.
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a scrape of `/metrics` waits for the worker before reporting it down. A healthy
/// worker answers in well under a millisecond; this stays far below any sane scrape timeout.
const METRICS_PING_TIMEOUT: Duration = Duration::from_millis(250);

/// Requests answered, by route and status code, for `/metrics`. Routes are the known paths
/// (anything else counts as `other`), so a scanner cannot grow the label set without bound.
#[derive(Default)]
struct RequestCounts(Mutex<BTreeMap<(&'static str, u16), u64>>);

impl RequestCounts {
    /// Both outcomes of `/health` exist from the start, at 0, so an error-ratio query has
    /// series to divide before the first failure.
    fn new() -> RequestCounts {
        let counts = BTreeMap::from([(("/health", 200), 0), (("/health", 503), 0)]);
        RequestCounts(Mutex::new(counts))
    }

    fn add(&self, route: &'static str, status: u16) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry((route, status)).or_insert(0) += 1;
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, u16), u64> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub pidfile: Option<PathBuf>,
    pub restart_delay: Duration,
    /// The worker's loopback port (0: any free port). A fixed port lets a network fault
    /// target the service's dependency.
    pub worker_port: u16,
    /// A dependency that runs elsewhere (`HOST:PORT`, another container's `--dependency-only`
    /// instance): `/health` asks it, and no worker child is started.
    pub dependency: Option<String>,
}

/// Run the service until SIGTERM/SIGINT.
pub async fn serve(options: DemoOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    let dependency: Arc<RwLock<Option<String>>> = Arc::new(RwLock::new(options.dependency.clone()));
    eprintln!("demo-target listening on http://{}", listener.local_addr()?);

    let supervisor = tokio::spawn({
        let (options, dependency) = (options.clone(), dependency.clone());
        async move {
            if options.dependency.is_none() {
                supervise(options, dependency).await;
            }
        }
    });
    let counts = Arc::new(RequestCounts::new());
    let server = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(_) => continue,
            };
            let dependency = dependency.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let _ = handle(stream, dependency, &counts).await;
            });
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = server => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    supervisor.abort();
    let _ = supervisor.await;
    if let Some(pidfile) = &options.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    Ok(())
}

/// Keep one worker running; restart it `restart_delay` after it dies.
async fn supervise(options: DemoOptions, dependency: Arc<RwLock<Option<String>>>) {
    loop {
        let mut child = match spawn_worker(options.listen, options.worker_port) {
            Ok(child) => child,
            Err(e) => {
                eprintln!("demo-target: cannot start the worker: {e}");
                tokio::time::sleep(options.restart_delay).await;
                continue;
            }
        };
        // kill_on_drop covers the supervisor being aborted at shutdown.
        let port = read_port(&mut child).await;
        if let (Some(pidfile), Some(pid)) = (&options.pidfile, child.id()) {
            let _ = std::fs::write(pidfile, format!("{pid}\n"));
        }
        *dependency.write().await = port.map(|port| format!("127.0.0.1:{port}"));
        let _ = child.wait().await;
        *dependency.write().await = None;
        tokio::time::sleep(options.restart_delay).await;
    }
}

/// The worker's command line names its service's address, so an experiment can target the
/// worker of one demo instance and never another's.
fn spawn_worker(service: SocketAddr, port: u16) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args([
            "demo-target",
            "--worker",
            "--worker-port",
            &port.to_string(),
        ])
        .args(["--listen", &service.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

async fn read_port(child: &mut Child) -> Option<u16> {
    let stdout = child.stdout.take()?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    line.trim().parse().ok()
}

async fn handle(
    mut stream: TcpStream,
    dependency: Arc<RwLock<Option<String>>>,
    counts: &RequestCounts,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    // Read the request head; the demo ignores bodies.
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        if read == buf.len() {
            return Ok(());
        }
        let n = stream.read(&mut buf[read..]).await?;
        if n == 0 {
            return Ok(());
        }
        read += n;
    }
    let head = String::from_utf8_lossy(&buf[..read]);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let json = "application/json";
    let (route, status, content_type, body): (&'static str, u16, &str, String) = match path.as_str()
    {
        "/health" => {
            if worker_answers(&dependency, HEALTH_PING_TIMEOUT).await {
                (
                    "/health",
                    200,
                    json,
                    r#"{"status":"ok","worker":"up"}"#.into(),
                )
            } else {
                let body = r#"{"status":"degraded","worker":"down"}"#;
                ("/health", 503, json, body.into())
            }
        }
        // A request that needs CPU: 4 ms of computation, so CPU pressure shows in latency.
        "/work" => {
            let _ = tokio::task::spawn_blocking(|| burn_cpu(Duration::from_millis(4))).await;
            ("/work", 200, json, r#"{"work":"done"}"#.into())
        }
        "/metrics" => {
            let worker_up = worker_answers(&dependency, METRICS_PING_TIMEOUT).await;
            let body = render_metrics(&counts.snapshot(), worker_up);
            ("/metrics", 200, METRICS_CONTENT_TYPE, body)
        }
        "/" => (
            "/",
            200,
            json,
            r#"{"service":"faultline demo-target"}"#.into(),
        ),
        _ => ("other", 404, json, r#"{"error":"not found"}"#.into()),
    };
    // Scrapes are not traffic: counting them would dilute every ratio of the service's own.
    if route != "/metrics" {
        counts.add(route, status);
    }
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The Prometheus text exposition format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn render_metrics(counts: &BTreeMap<(&'static str, u16), u64>, worker_up: bool) -> String {
    let mut text = String::from(
        "# HELP demo_requests_total Requests answered, by path and status code (scrapes of /metrics not counted).\n\
         # TYPE demo_requests_total counter\n",
    );
    for ((route, status), count) in counts {
        let _ = writeln!(
            text,
            "demo_requests_total{{path=\"{route}\",code=\"{status}\"}} {count}"
        );
    }
    let _ = write!(
        text,
        "# HELP demo_worker_up Whether the worker answered a ping within {}ms during this scrape.\n\
         # TYPE demo_worker_up gauge\n\
         demo_worker_up {}\n",
        METRICS_PING_TIMEOUT.as_millis(),
        u8::from(worker_up)
    );
    text
}

/// Spin for `cpu` of this thread's CPU time (not wall time), as real request work would.
fn burn_cpu(cpu: Duration) -> u64 {
    let thread_cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let start = thread_cpu();
    let mut x = 0u64;
    while thread_cpu() - start < cpu {
        for i in 0..1_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
    }
    std::hint::black_box(x)
}

/// False while no worker runs (it died and is not restarted yet).
async fn worker_answers(dependency: &RwLock<Option<String>>, limit: Duration) -> bool {
    let address = dependency.read().await.clone();
    match address {
        Some(address) => ping_worker(&address, limit).await,
        None => false,
    }
}

/// A frozen worker accepts the connection (the kernel does) but never answers, so the ping
/// waits until `limit`. The address is looked up at each ping: a dependency in another
/// container is found by its name, and a recreated one by its new address.
async fn ping_worker(address: &str, limit: Duration) -> bool {
    let attempt = async {
        let mut conn = TcpStream::connect(address).await.ok()?;
        conn.write_all(b"ping\n").await.ok()?;
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).await.ok()?;
        (&reply == b"pong\n").then_some(())
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(())))
}

/// The worker (named `demo-worker` by `main` before the runtime starts): dies with its
/// parent, answers pings.
pub async fn worker(port: u16) -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{}", listener.local_addr()?.port());
    use std::io::Write;
    std::io::stdout().flush()?;
    answer_pings(listener).await
}

/// The dependency alone (`--dependency-only`), for a service that runs elsewhere: answers
/// pings on `listen` until SIGTERM/SIGINT.
pub async fn dependency(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "demo-target dependency listening on {}",
        listener.local_addr()?
    );
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = answer_pings(listener) => result,
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

async fn answer_pings(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 5];
            if conn.read_exact(&mut buf).await.is_ok() {
                let _ = conn.write_all(b"pong\n").await;
            }
        });
    }
}

pub fn set_process_name(name: &str) {
    let mut bytes = [0u8; 16];
    for (slot, b) in bytes.iter_mut().zip(name.bytes().take(15)) {
        *slot = b;
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_with_health_outcomes_from_the_start() {
        let counts = RequestCounts::new();
        counts.add("/health", 200);
        counts.add("/health", 200);
        counts.add("other", 404);
        let text = render_metrics(&counts.snapshot(), false);
        assert_eq!(
            text,
            "# HELP demo_requests_total Requests answered, by path and status code (scrapes of /metrics not counted).\n\
             # TYPE demo_requests_total counter\n\
             demo_requests_total{path=\"/health\",code=\"200\"} 2\n\
             demo_requests_total{path=\"/health\",code=\"503\"} 0\n\
             demo_requests_total{path=\"other\",code=\"404\"} 1\n\
             # HELP demo_worker_up Whether the worker answered a ping within 250ms during this scrape.\n\
             # TYPE demo_worker_up gauge\n\
             demo_worker_up 0\n"
        );
        assert!(render_metrics(&counts.snapshot(), true).ends_with("demo_worker_up 1\n"));
    }
}
