//! Network namespaces: run code in one (setns on a dedicated thread, which keeps cgroupfs
//! visible — unlike `ip netns exec`), and build throwaway test networks that remove
//! themselves.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::net::{Netns, ProcessNetns};

/// The bind-mount `ip netns add NAME` creates.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// The namespace process `pid` is in now, pinned to it; `owner` says whose it is.
pub fn of_process(pid: u32, owner: &str) -> std::io::Result<Netns> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(format!("/proc/{pid}/ns/net"))?;
    let inode = file.metadata()?.ino();
    let start_time = super::proc::start_time(pid)?;
    Ok(Netns::Process(ProcessNetns {
        pid,
        start_time,
        inode,
        owner: owner.to_string(),
    }))
}

/// The inode of this process's own network namespace.
pub fn own_inode() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// Open the namespace. A process namespace whose process has exited (or whose PID now
/// belongs to another process), or that the process has left, is `NotFound`: whatever
/// faultline put in it went with it.
pub fn open(ns: &Netns) -> std::io::Result<File> {
    match ns {
        Netns::Named(name) => File::open(path(name)),
        Netns::Process(process) => {
            use std::os::unix::fs::MetadataExt;
            let gone = |why: String| std::io::Error::new(std::io::ErrorKind::NotFound, why);
            let file = File::open(format!("/proc/{}/ns/net", process.pid))
                .map_err(|_| gone(format!("process {} has exited", process.pid)))?;
            // The start time after the open: a match means the file is that process's.
            if super::proc::start_time(process.pid).ok() != Some(process.start_time) {
                return Err(gone(format!("process {} has exited", process.pid)));
            }
            if file.metadata()?.ino() != process.inode {
                return Err(gone(format!(
                    "process {} is no longer in net:[{}]",
                    process.pid, process.inode
                )));
            }
            Ok(file)
        }
    }
}

/// Whether the namespace still exists (see [`open`]).
pub fn exists(ns: &Netns) -> bool {
    open(ns).is_ok()
}

/// Run `f` on a new thread that has entered the network namespace `ns`. Only that thread
/// changes namespace; sockets it creates live in `ns`.
pub fn run_in<T: Send + 'static>(
    ns: impl Into<Netns>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let ns = open(&ns.into())?;
    std::thread::spawn(move || -> std::io::Result<T> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("thread in namespace panicked"))?
}

/// A command that runs inside the namespace (argv only; see [`enter`]).
pub fn command_in(ns: impl Into<Netns>, argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    enter(&mut cmd, &ns.into());
    cmd
}

/// Make `cmd` start inside network namespace `ns`: the child joins it with setns(2)
/// between fork and exec. Like `nsenter --net=`, it leaves /sys (and so cgroupfs) alone, and
/// it saves nsenter's own exec on every tool call of a revert. A namespace that cannot be
/// opened makes the spawn fail with that error.
pub fn enter(cmd: &mut Command, ns: &Netns) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let namespace: Result<OwnedFd, i32> = open(ns)
        .map(OwnedFd::from)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL));
    // SAFETY: only setns(2), async-signal-safe, between fork and exec; the descriptor is
    // owned by the closure, so it is open for as long as the command can be spawned.
    unsafe {
        cmd.pre_exec(move || match &namespace {
            Ok(fd) => {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
            Err(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
        });
    }
}

/// Run `ip` (argv) and fail loudly with its stderr.
pub fn ip(args: &[&str]) -> std::io::Result<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out =
        super::tool::run(&super::tool::Call::new("ip", &args)).map_err(std::io::Error::other)?;
    if out.success {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            out.stderr.trim()
        )))
    }
}

/// Two namespaces joined by a veth pair, for tests:
/// `a` 10.x.y.1/24 + fd00:x:y::1/64 on `veth_a`  <->  `b` 10.x.y.2/24 + fd00:x:y::2/64 on `veth_b`.
/// Addresses exist only inside these namespaces. Dropping it deletes both namespaces (which
/// removes the veth pair and every rule, qdisc and address inside them).
pub struct TestNet {
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub ip_a: String,
    pub ip_b: String,
    pub ip6_a: String,
    pub ip6_b: String,
}

impl TestNet {
    pub fn new() -> std::io::Result<TestNet> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, seq);
        // 10.<200+seq%50>.<pid%250>.0/24: distinct per test, private to the namespaces.
        let (x, y) = (200 + seq % 50, pid % 250);
        let net = TestNet {
            a: format!("fl-a-{tag}"),
            b: format!("fl-b-{tag}"),
            veth_a: format!("fla{tag}"),
            veth_b: format!("flb{tag}"),
            ip_a: format!("10.{x}.{y}.1"),
            ip_b: format!("10.{x}.{y}.2"),
            ip6_a: format!("fd00:{x}:{y}::1"),
            ip6_b: format!("fd00:{x}:{y}::2"),
        };
        // Build under the guard so a failure half-way still cleans up.
        let guard = net;
        guard.build()?;
        Ok(guard)
    }

    fn build(&self) -> std::io::Result<()> {
        ip(&["netns", "add", &self.a])?;
        ip(&["netns", "add", &self.b])?;
        ip(&[
            "link",
            "add",
            &self.veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &self.veth_b,
        ])?;
        ip(&["link", "set", &self.veth_a, "netns", &self.a])?;
        ip(&["link", "set", &self.veth_b, "netns", &self.b])?;
        for (ns, dev, v4, v6) in [
            (&self.a, &self.veth_a, &self.ip_a, &self.ip6_a),
            (&self.b, &self.veth_b, &self.ip_b, &self.ip6_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
        // The veth pair dies with its namespaces; if building failed before the move, it
        // may still sit in this namespace.
        let _ = ip(&["link", "del", &self.veth_a]);
    }
}

/// TCP goodput (bits/s) from a sender in `from` to `listener`, measured at the receiver
/// over the steady part (`warmup` to `secs` after the first byte) as the least-squares
/// slope of bytes received over time: after a loss, in-order data arrives in bursts, and
/// the slope is far less sensitive to where those bursts fall than two end points are.
/// For tests that measure a rate through a [`TestNet`]; panics when the transfer fails.
pub fn goodput(from: &str, listener: &TcpListener, warmup: f64, secs: f64) -> f64 {
    let addr: SocketAddr = listener.local_addr().unwrap();
    let mut sender = run_in(from, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap()
    })
    .unwrap();
    let (mut receiver, _) = listener.accept().unwrap();
    let deadline = Duration::from_secs_f64(secs + 2.0);
    let writer = std::thread::spawn(move || {
        sender
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let start = Instant::now();
        while start.elapsed() < deadline && sender.write_all(&chunk).is_ok() {}
    });
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    loop {
        let n = receiver.read(&mut buf).expect("receive");
        assert!(n > 0, "sender closed early");
        total += n as u64;
        let now = Instant::now();
        let elapsed = now.duration_since(*first.get_or_insert(now)).as_secs_f64();
        if elapsed >= warmup {
            samples.push((elapsed, total as f64 * 8.0));
        }
        if elapsed >= secs {
            break;
        }
    }
    drop(receiver);
    writer.join().unwrap();
    assert!(samples.len() > 10, "too few samples: {}", samples.len());
    let count = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / count;
    let mean_b = samples.iter().map(|s| s.1).sum::<f64>() / count;
    let cov: f64 = samples
        .iter()
        .map(|(t, b)| (t - mean_t) * (b - mean_b))
        .sum();
    let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    cov / var
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_faultlines_name_their_namespace_with_a_plain_string() {
        let named: Netns = serde_json::from_str(r#""ns1""#).unwrap();
        assert_eq!(named, Netns::Named("ns1".into()));
        let pinned = Netns::Process(ProcessNetns {
            pid: 42,
            start_time: 7,
            inode: 4026532000,
            owner: "docker container web (3f2a9c1b0d4e)".into(),
        });
        let text = serde_json::to_string(&pinned).unwrap();
        assert_eq!(serde_json::from_str::<Netns>(&text).unwrap(), pinned);
        assert_eq!(pinned.location(), "/proc/42/ns/net");
        assert_eq!(
            pinned.to_string(),
            "docker container web (3f2a9c1b0d4e)'s net:[4026532000] (pid 42)"
        );
    }

    #[test]
    fn a_process_namespace_is_reached_only_while_its_process_lives_in_it() {
        use std::os::unix::fs::MetadataExt;
        let net = TestNet::new().expect("create test net (needs root)");
        let mut child = command_in(&net.a, &["sleep", "30"])
            .spawn()
            .expect("sleep in the namespace");
        let pinned = of_process(child.id(), "test").expect("its namespace");
        let Netns::Process(process) = &pinned else {
            panic!("{pinned:?}")
        };
        let named_inode = std::fs::metadata(path(&net.a)).unwrap().ino();
        assert_eq!(process.inode, named_inode, "the child's namespace is `a`");
        assert!(exists(&pinned));
        let inode = open(&pinned).unwrap().metadata().unwrap().ino();
        assert_eq!(inode, named_inode);

        // Another namespace under the same PID and start time is not the one recorded.
        let elsewhere = Netns::Process(ProcessNetns {
            inode: process.inode + 1,
            ..process.clone()
        });
        assert_eq!(
            open(&elsewhere).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        // Nor is a process that took the PID later (another start time).
        let reused = Netns::Process(ProcessNetns {
            start_time: process.start_time + 1,
            ..process.clone()
        });
        assert!(!exists(&reused));

        child.kill().unwrap();
        child.wait().unwrap();
        let error = open(&pinned).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
        assert!(error.to_string().contains("has exited"), "{error}");
        assert!(path(&net.a).exists(), "the namespace itself is still there");
    }

    #[test]
    fn two_namespaces_talk_over_ipv4_and_ipv6_and_vanish_on_drop() {
        let net = TestNet::new().expect("create test net (needs root)");
        let (b, ip_b, ip6_b) = (net.b.clone(), net.ip_b.clone(), net.ip6_b.clone());
        let listener = run_in(&b, move || {
            (
                std::net::TcpListener::bind(format!("{ip_b}:0")).unwrap(),
                std::net::TcpListener::bind(format!("[{ip6_b}]:0")).unwrap(),
            )
        })
        .unwrap();
        let (v4, v6) = (
            listener.0.local_addr().unwrap(),
            listener.1.local_addr().unwrap(),
        );
        let connected = run_in(&net.a, move || {
            let t = std::time::Duration::from_secs(2);
            (
                std::net::TcpStream::connect_timeout(&v4, t).is_ok(),
                std::net::TcpStream::connect_timeout(&v6, t).is_ok(),
            )
        })
        .unwrap();
        assert_eq!(connected, (true, true));
        // From the host namespace the test addresses are unreachable.
        assert!(
            std::net::TcpStream::connect_timeout(&v4, std::time::Duration::from_millis(200))
                .is_err()
        );
        let names = (net.a.clone(), net.b.clone());
        drop(net);
        assert!(!path(&names.0).exists() && !path(&names.1).exists());
    }
}
