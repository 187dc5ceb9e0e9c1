//! `faultline demo-target`: a tiny HTTP service with a worker child process, so the
//! quickstart has something real to break.
//!
//! `GET /health` asks the worker (over loopback TCP) for a `pong`: 200 when it answers, 503
//! when it is gone, and a hang when it is frozen — exactly what a real service does when
//! its backend is killed or stopped. The supervisor restarts a dead worker after a short
//! delay and keeps its PID in `--pidfile`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::RwLock;

/// The worker's process name (`/proc/PID/comm`), for targets such as `name: demo-worker`.
pub const WORKER_NAME: &str = "demo-worker";

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub pidfile: Option<PathBuf>,
    pub restart_delay: Duration,
    /// The worker's loopback port (0: any free port). A fixed port lets a network fault
    /// target the service's dependency.
    pub worker_port: u16,
}

/// Run the service until SIGTERM/SIGINT.
pub async fn serve(options: DemoOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.listen).await?;
    let worker_port: Arc<RwLock<Option<u16>>> = Arc::new(RwLock::new(None));
    eprintln!("demo-target listening on http://{}", listener.local_addr()?);

    let supervisor = tokio::spawn(supervise(options.clone(), worker_port.clone()));
    let server = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(_) => continue,
            };
            let worker_port = worker_port.clone();
            tokio::spawn(async move {
                let _ = handle(stream, worker_port).await;
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
async fn supervise(options: DemoOptions, worker_port: Arc<RwLock<Option<u16>>>) {
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
        *worker_port.write().await = port;
        let _ = child.wait().await;
        *worker_port.write().await = None;
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
    worker_port: Arc<RwLock<Option<u16>>>,
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
    let (status, body) = match path.as_str() {
        "/health" => {
            let port = *worker_port.read().await;
            match port {
                Some(port) if ping_worker(port).await => (200, r#"{"status":"ok","worker":"up"}"#),
                _ => (503, r#"{"status":"degraded","worker":"down"}"#),
            }
        }
        // A request that needs CPU: 4 ms of computation, so CPU pressure shows in latency.
        "/work" => {
            let _ = tokio::task::spawn_blocking(|| burn_cpu(Duration::from_millis(4))).await;
            (200, r#"{"work":"done"}"#)
        }
        "/" => (200, r#"{"service":"faultline demo-target"}"#),
        _ => (404, r#"{"error":"not found"}"#),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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

/// A frozen worker accepts the connection (the kernel does) but never answers: the request
/// hangs for up to 5 s, as a real dependency would.
async fn ping_worker(port: u16) -> bool {
    let attempt = async {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        conn.write_all(b"ping\n").await.ok()?;
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).await.ok()?;
        (&reply == b"pong\n").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(()))
    )
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
