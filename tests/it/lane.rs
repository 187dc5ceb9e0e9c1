//! The stock-kernel lane: what production kernels have and this machine's kernel lacks —
//! netem, cgroup v2 with the cpu, io and memory controllers, tc trees shared by several
//! faults — run for real through the `faultline` binary. `scripts/vm-lane.sh` runs these
//! (with the library's own kernel tests) in a VM booted with a stock Debian kernel; they are
//! ignored elsewhere, and fail rather than skip when the kernel lacks what they test.
//!
//! Emulation (qemu without KVM) makes every packet and system call slow and uneven, so the
//! bounds here check the effect and its direction (the delay is at least what was asked,
//! the rate is capped, the process is throttled) and an exact restore; accuracy is measured
//! by the benchmarks on real hardware.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::sys::netns::{TestNet, command_in, run_in};
use faultline::sys::tc::{self, Support};

use crate::util::{
    self, Runner, Workspace, echo_rtts, echo_server_in, events_of, percentile, wait_for,
};

const V2: &str = "/sys/fs/cgroup";

fn need_netem() {
    if let Support::Missing { reason } = tc::netem_support() {
        panic!("the stock-kernel lane needs netem: {reason}");
    }
}

/// The v2 tree, which must offer cpu, io and memory.
fn need_cgroup_v2() {
    let offered = std::fs::read_to_string(format!("{V2}/cgroup.controllers"))
        .unwrap_or_else(|e| panic!("the stock-kernel lane needs cgroup v2 at {V2}: {e}"));
    for controller in ["cpu", "io", "memory"] {
        assert!(
            offered.split_whitespace().any(|c| c == controller),
            "the v2 tree offers no {controller} controller: {offered}"
        );
    }
}

/// Run `faultline run FILE [ARGS]` to its end (at most `limit`); its exit code and stderr.
fn run_to_end(ws: &Workspace, file: &Path, args: &[&str], limit: Duration) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut runner = Runner::spawn_with(ws, &[file], &args);
    let code = runner
        .wait(limit)
        .unwrap_or_else(|| panic!("the run did not end within {limit:?}:\n{}", runner.stderr()));
    (code, runner.stderr())
}

fn in_ns(ns: &str, argv: &[&str]) -> String {
    let out = command_in(ns, argv).output().expect("nsenter");
    assert!(out.status.success(), "{argv:?} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything tc and ip show of namespace `ns`: qdiscs, classes and filters of every device
/// (ingress included) and the devices themselves (an IFB left behind shows here).
fn tc_state(ns: &str) -> String {
    let links = in_ns(ns, &["ip", "-o", "link", "show"]);
    let mut state = String::new();
    for line in links.lines() {
        let Some(dev) = line
            .split(": ")
            .nth(1)
            .map(|d| d.split('@').next().unwrap_or(d))
        else {
            continue;
        };
        state.push_str(&format!("device {dev}\n"));
        for what in [
            vec!["tc", "qdisc", "show", "dev", dev],
            vec!["tc", "class", "show", "dev", dev],
            vec!["tc", "filter", "show", "dev", dev],
            vec!["tc", "filter", "show", "dev", dev, "ingress"],
        ] {
            state.push_str(&in_ns(ns, &what));
        }
    }
    state
}

/// A clock both ends of a measurement share: they are threads of this process.
fn since(epoch: Instant) -> f64 {
    epoch.elapsed().as_secs_f64() * 1000.0
}

/// What arrived of `sent` numbered UDP datagrams.
struct UdpRun {
    sent: usize,
    /// In arrival order: sequence number, one-way delay (ms), payload as sent.
    arrivals: Vec<(u32, f64, bool)>,
}

impl UdpRun {
    fn received(&self) -> usize {
        self.arrivals.len()
    }
    fn distinct(&self) -> usize {
        let mut seqs: Vec<u32> = self.arrivals.iter().map(|a| a.0).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }
    /// Arrivals that came after a higher sequence number had already arrived.
    fn out_of_order(&self) -> usize {
        let mut highest = None;
        let mut late = 0;
        for (seq, _, _) in &self.arrivals {
            match highest {
                Some(h) if *seq < h => late += 1,
                _ => highest = Some(*seq),
            }
        }
        late
    }
    fn damaged(&self) -> usize {
        self.arrivals.iter().filter(|a| !a.2).count()
    }
    fn delays(&self) -> Vec<f64> {
        self.arrivals.iter().map(|a| a.1).collect()
    }
}

fn payload(seq: u32) -> Vec<u8> {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend((0..60u32).map(|i| (seq.wrapping_mul(31).wrapping_add(i * 7) & 0xff) as u8));
    bytes
}

/// A UDP socket bound in `ns`; the address to send to.
fn udp_receiver(ns: &str, ip: &str) -> (UdpSocket, SocketAddr) {
    let ip = ip.to_string();
    let socket = run_in(ns, move || UdpSocket::bind(format!("{ip}:0")))
        .expect("enter namespace")
        .expect("bind udp");
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Send `n` numbered 64-byte datagrams from namespace `from` to `receiver`, `gap` apart, and
/// collect what arrives until nothing has come for a second.
fn udp_run(from: &str, receiver: UdpSocket, to: SocketAddr, n: u32, gap: Duration) -> UdpRun {
    let epoch = Instant::now();
    let sent_at = Arc::new(Mutex::new(vec![f64::NAN; n as usize]));
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let stamps = sent_at.clone();
    let collecting = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 256];
        // Bounded: n datagrams, duplicates included, plus the quiet second at the end.
        for _ in 0..(4 * n as usize + 16) {
            let Ok(len) = receiver.recv(&mut buf) else {
                break;
            };
            let at = since(epoch);
            if len < 4 {
                continue;
            }
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            let intact = buf[..len] == payload(seq)[..];
            let sent = stamps
                .lock()
                .unwrap()
                .get(seq as usize)
                .copied()
                .unwrap_or(f64::NAN);
            arrivals.push((seq, at - sent, intact));
        }
        arrivals
    });
    run_in(from, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
        for seq in 0..n {
            sent_at.lock().unwrap()[seq as usize] = since(epoch);
            socket.send_to(&payload(seq), to).expect("send");
            std::thread::sleep(gap);
        }
    })
    .unwrap();
    UdpRun {
        sent: n as usize,
        arrivals: collecting.join().unwrap(),
    }
}

/// TCP goodput (bit/s) from namespace `from` to `listener`, over `secs` after `warmup`.
fn goodput(from: &str, listener: &TcpListener, warmup: f64, secs: f64) -> f64 {
    use std::io::{Read, Write};
    let addr = listener.local_addr().unwrap();
    let mut sender = run_in(from, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
    })
    .unwrap();
    let (mut receiver, _) = listener.accept().unwrap();
    let stop = Duration::from_secs_f64(warmup + secs + 5.0);
    let writer = std::thread::spawn(move || {
        sender
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let chunk = vec![7u8; 16 * 1024];
        let start = Instant::now();
        while start.elapsed() < stop && sender.write_all(&chunk).is_ok() {}
    });
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut counted = 0u64;
    let mut window_start = None;
    while start.elapsed().as_secs_f64() < warmup + secs {
        let n = receiver.read(&mut buf).expect("receive");
        assert!(n > 0, "sender closed early");
        if start.elapsed().as_secs_f64() >= warmup {
            window_start.get_or_insert_with(Instant::now);
            counted += n as u64;
        }
    }
    let window = window_start.map_or(secs, |w| w.elapsed().as_secs_f64());
    drop(receiver);
    writer.join().unwrap();
    counted as f64 * 8.0 / window
}

fn listener_in(ns: &str, ip: &str) -> TcpListener {
    let ip = ip.to_string();
    run_in(ns, move || TcpListener::bind(format!("{ip}:0")))
        .unwrap()
        .unwrap()
}

fn network_experiment(name: &str, targets: &str, faults: &str) -> String {
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 2m\n\
         targets: {{{targets}}}\nfaults:\n{faults}"
    )
}

fn backends(ws: &Workspace) -> Vec<String> {
    events_of(&ws.journal(), "fault_intent")
        .iter()
        .map(|e| e["details"]["backend"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn doctor_chooses_netem_for_delays_where_the_kernel_has_it() {
    need_netem();
    let ws = Workspace::new();
    let out = util::faultline(&ws).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("ok") && l.contains("tc") && l.contains("netem")),
        "{text}"
    );
    let delay = text
        .lines()
        .find(|l| l.trim_start().starts_with("network-delay"))
        .expect("a network-delay line");
    assert!(delay.contains("netem"), "{delay}");
    for kind in ["network-duplicate", "network-corrupt", "network-reorder"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} line"));
        assert!(!line.contains("UNAVAILABLE"), "{line}");
    }
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_netem_delay_with_jitter_holds_packets_at_least_the_delay_and_spreads_them() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let addr = echo_server_in(&net.b, &net.ip_b);
    let baseline = percentile(&echo_rtts(&net.a, addr, 20, Duration::from_millis(5)), 50.0);
    let file = ws.write(
        "jitter.yaml",
        &network_experiment(
            "jitter",
            &format!(
                "server: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], protocol: tcp}}}}",
                net.a, net.veth_a, net.ip_b
            ),
            "  - {id: slow, kind: network-delay, target: server, params: {delay: 40ms, jitter: 10ms}, duration: 20s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let during = tc_state(&net.a);
    let rtts = echo_rtts(&net.a, addr, 60, Duration::from_millis(20));
    let (p10, p50, p90) = (
        percentile(&rtts, 10.0),
        percentile(&rtts, 50.0),
        percentile(&rtts, 90.0),
    );
    println!("baseline {baseline:.2} ms; 40±10 ms: p10 {p10:.2}, p50 {p50:.2}, p90 {p90:.2}");
    assert!(
        during.contains("netem") && during.contains("delay 40ms") && during.contains("10ms"),
        "{during}"
    );
    assert!(p10 >= 30.0, "p10 {p10:.2} ms below 40 - 10");
    assert!(
        (38.0..40.0 + baseline + 25.0).contains(&p50),
        "p50 {p50:.2} ms"
    );
    assert!(p90 - p10 >= 6.0, "no spread: p10 {p10:.2}, p90 {p90:.2}");
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(backends(&ws), vec!["netem"]);
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn an_ipv6_delay_goes_through_netem_too() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let addr = echo_server_in(&net.b, &format!("[{}]", net.ip6_b));
    let file = ws.write(
        "delay6.yaml",
        &network_experiment(
            "delay6",
            &format!(
                "server: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], remote_ports: [{}], protocol: tcp}}}}",
                net.a,
                net.veth_a,
                net.ip6_b,
                addr.port()
            ),
            "  - {id: slow, kind: network-delay, target: server, params: {delay: 30ms}, duration: 60s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let p50 = percentile(
        &echo_rtts(&net.a, addr, 20, Duration::from_millis(10)),
        50.0,
    );
    println!("IPv6 30 ms: p50 {p50:.2} ms");
    assert!(
        (30.0..60.0).contains(&p50),
        "IPv6 p50 {p50:.2} ms for a 30 ms delay"
    );
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(backends(&ws), vec!["netem"]);
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
}

/// One netem-only fault against numbered UDP datagrams from a to b; what arrived.
fn netem_udp_fault(name: &str, kind: &str, params: &str, n: u32, gap: Duration) -> UdpRun {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let (receiver, addr) = udp_receiver(&net.b, &net.ip_b);
    let file = ws.write(
        &format!("{name}.yaml"),
        &network_experiment(
            name,
            &format!(
                "peer: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], protocol: udp}}}}",
                net.a, net.veth_a, net.ip_b
            ),
            &format!(
                "  - {{id: {name}, kind: {kind}, target: peer, params: {params}, duration: 60s}}\n"
            ),
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let run = udp_run(&net.a, receiver, addr, n, gap);
    println!(
        "{}",
        in_ns(&net.a, &["tc", "-s", "qdisc", "show", "dev", &net.veth_a])
    );
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(backends(&ws), vec!["netem"]);
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
    println!(
        "{kind} {params}: sent {}, received {} ({} distinct), {} damaged, {} out of order",
        run.sent,
        run.received(),
        run.distinct(),
        run.damaged(),
        run.out_of_order()
    );
    run
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_correlated_loss_drops_about_its_share_through_netem() {
    let run = netem_udp_fault(
        "lossy",
        "network-loss",
        "{probability: 30%, correlation: 25%}",
        600,
        Duration::from_millis(2),
    );
    let kept = run.received() as f64 / run.sent as f64;
    assert!(
        (0.5..=0.9).contains(&kept),
        "kept {kept:.3} of the datagrams for 30% loss"
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_duplicate_fault_delivers_extra_copies() {
    let run = netem_udp_fault(
        "dup",
        "network-duplicate",
        "{probability: 20%}",
        600,
        Duration::from_millis(2),
    );
    let extra = (run.received() - run.distinct()) as f64 / run.sent as f64;
    assert!(
        (0.1..=0.3).contains(&extra),
        "{extra:.3} extra copies for 20%"
    );
    assert!(
        run.distinct() >= run.sent * 95 / 100,
        "lost datagrams: {}",
        run.distinct()
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_corrupt_fault_damages_about_its_share() {
    let run = netem_udp_fault(
        "corrupt",
        "network-corrupt",
        "{probability: 20%}",
        600,
        Duration::from_millis(2),
    );
    // A flipped bit in the IP header is dropped by the receiver's checksum; one in the
    // payload arrives damaged (veth trusts the checksum netem recomputed).
    let hit = (run.sent - run.distinct() + run.damaged()) as f64 / run.sent as f64;
    assert!(
        (0.1..=0.3).contains(&hit),
        "{hit:.3} lost or damaged for 20%"
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_reorder_fault_delivers_some_packets_before_earlier_ones() {
    let run = netem_udp_fault(
        "reorder",
        "network-reorder",
        "{probability: 30%, delay: 40ms}",
        400,
        Duration::from_millis(2),
    );
    let late = run.out_of_order() as f64 / run.sent as f64;
    let median = percentile(&run.delays(), 50.0);
    println!("one-way delay median {median:.2} ms");
    assert!(late >= 0.1, "only {late:.3} arrived out of order");
    assert!(
        median >= 40.0,
        "the packets not reordered wait the delay: {median:.2} ms"
    );
    assert!(
        run.distinct() >= run.sent * 95 / 100,
        "lost datagrams: {}",
        run.distinct()
    );
}

/// The classic WAN emulation: a delay and a bandwidth cap on the same traffic of one
/// interface. Both act on every packet, and the tree goes with the last of them.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_delay_and_a_bandwidth_cap_share_one_interface() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let addr = echo_server_in(&net.b, &net.ip_b);
    let sink = listener_in(&net.b, &net.ip_b);
    let file = ws.write(
        "wan.yaml",
        &network_experiment(
            "wan",
            &format!(
                "peer: {{network: {{netns: {}, interfaces: [{}], remote: ['{}']}}}}",
                net.a, net.veth_a, net.ip_b
            ),
            "  - {id: far, kind: network-delay, target: peer, params: {delay: 30ms}, duration: 60s}\n\
             \x20 - {id: thin, kind: network-bandwidth, target: peer, params: {rate: 4mbit}, duration: 60s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(30), || events_of(
            &ws.journal(),
            "fault_injected"
        )
        .len()
            == 2),
        "both faults injected:\n{}",
        runner.stderr()
    );
    let rtt = percentile(
        &echo_rtts(&net.a, addr, 20, Duration::from_millis(10)),
        50.0,
    );
    let bits = goodput(&net.a, &sink, 2.0, 4.0);
    println!(
        "delay 30 ms + 4 Mbit/s: echo p50 {rtt:.2} ms, goodput {:.2} Mbit/s",
        bits / 1e6
    );
    assert!(rtt >= 30.0, "echo p50 {rtt:.2} ms under a 30 ms delay");
    assert!(
        bits <= 4.0e6 * 1.05,
        "goodput {bits:.0} bit/s over the 4 Mbit/s cap"
    );
    assert!(
        bits >= 4.0e6 * 0.4,
        "goodput {bits:.0} bit/s: the path is broken"
    );
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    let mut used = backends(&ws);
    used.sort();
    assert_eq!(
        used,
        vec!["netem", "tc"],
        "the faults start together, in either order"
    );
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
    assert_eq!(ws.state_records(), 0);
}

/// Two delays on one interface, to different services: each service sees its own.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn two_delays_to_different_ports_of_one_interface_each_hold_their_own() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let database = echo_server_in(&net.b, &net.ip_b);
    let cache = echo_server_in(&net.b, &net.ip_b);
    let file = ws.write(
        "two.yaml",
        &network_experiment(
            "two-delays",
            &format!(
                "database: {{network: {{netns: {a}, interfaces: [{dev}], remote: ['{b}'], remote_ports: [{}], protocol: tcp}}}}, \
                 cache: {{network: {{netns: {a}, interfaces: [{dev}], remote: ['{b}'], remote_ports: [{}], protocol: tcp}}}}",
                database.port(),
                cache.port(),
                a = net.a,
                dev = net.veth_a,
                b = net.ip_b
            ),
            "  - {id: slow-db, kind: network-delay, target: database, params: {delay: 20ms}, duration: 60s}\n\
             \x20 - {id: slow-cache, kind: network-delay, target: cache, params: {delay: 60ms}, duration: 60s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(30), || events_of(
            &ws.journal(),
            "fault_injected"
        )
        .len()
            == 2),
        "both faults injected:\n{}",
        runner.stderr()
    );
    let db = percentile(
        &echo_rtts(&net.a, database, 20, Duration::from_millis(10)),
        50.0,
    );
    let cached = percentile(
        &echo_rtts(&net.a, cache, 20, Duration::from_millis(10)),
        50.0,
    );
    println!("database p50 {db:.2} ms (20 ms), cache p50 {cached:.2} ms (60 ms)");
    assert!((20.0..55.0).contains(&db), "database {db:.2} ms");
    assert!((60.0..95.0).contains(&cached), "cache {cached:.2} ms");
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
}

/// Delays on the same traffic add up; when the shorter fault ends, the longer one stays
/// in place alone, and the tree goes with it.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_fault_that_ends_first_leaves_the_other_on_the_interface() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let addr = echo_server_in(&net.b, &net.ip_b);
    let file = ws.write(
        "staggered.yaml",
        &network_experiment(
            "staggered",
            &format!(
                "peer: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], protocol: tcp}}}}",
                net.a, net.veth_a, net.ip_b
            ),
            "  - {id: long, kind: network-delay, target: peer, params: {delay: 25ms}, duration: 90s}\n\
             \x20 - {id: short, kind: network-delay, target: peer, params: {delay: 50ms}, duration: 12s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(30), || events_of(
            &ws.journal(),
            "fault_injected"
        )
        .len()
            == 2),
        "both faults injected:\n{}",
        runner.stderr()
    );
    let both = percentile(
        &echo_rtts(&net.a, addr, 10, Duration::from_millis(10)),
        50.0,
    );
    assert!(
        wait_for(Duration::from_secs(60), || !events_of(
            &ws.journal(),
            "fault_reverted"
        )
        .is_empty()),
        "the short fault ended:\n{}",
        runner.stderr()
    );
    let alone = percentile(
        &echo_rtts(&net.a, addr, 10, Duration::from_millis(10)),
        50.0,
    );
    println!("25 ms + 50 ms: p50 {both:.2} ms; 25 ms alone: p50 {alone:.2} ms");
    assert!(
        both >= 75.0,
        "delays on the same traffic add up: {both:.2} ms"
    );
    assert!(
        (25.0..60.0).contains(&alone),
        "the long delay alone: {alone:.2} ms"
    );
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
}

/// A delay and a bandwidth cap on what the interface receives (through faultline's IFB).
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn an_ingress_delay_and_an_ingress_cap_share_one_ifb() {
    need_netem();
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.b);
    let addr = echo_server_in(&net.b, &net.ip_b);
    let sink = listener_in(&net.b, &net.ip_b);
    let file = ws.write(
        "ingress.yaml",
        &network_experiment(
            "ingress",
            &format!(
                "inbound: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], direction: ingress}}}}",
                net.b, net.veth_b, net.ip_a
            ),
            "  - {id: far, kind: network-delay, target: inbound, params: {delay: 30ms}, duration: 60s}\n\
             \x20 - {id: thin, kind: network-bandwidth, target: inbound, params: {rate: 4mbit}, duration: 60s}\n",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(30), || events_of(
            &ws.journal(),
            "fault_injected"
        )
        .len()
            == 2),
        "both faults injected:\n{}",
        runner.stderr()
    );
    let rtt = percentile(
        &echo_rtts(&net.a, addr, 20, Duration::from_millis(10)),
        50.0,
    );
    let bits = goodput(&net.a, &sink, 2.0, 4.0);
    println!(
        "ingress 30 ms + 4 Mbit/s: echo p50 {rtt:.2} ms, goodput {:.2} Mbit/s",
        bits / 1e6
    );
    assert!(
        rtt >= 30.0,
        "echo p50 {rtt:.2} ms under a 30 ms ingress delay"
    );
    assert!(
        bits <= 4.0e6 * 1.05,
        "goodput {bits:.0} bit/s over the 4 Mbit/s cap"
    );
    assert!(
        bits >= 4.0e6 * 0.4,
        "goodput {bits:.0} bit/s: the path is broken"
    );
    runner.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(130),
        "{}",
        runner.stderr()
    );
    assert_eq!(
        tc_state(&net.b),
        before,
        "the tree and the IFB are gone, byte for byte"
    );
}

/// `kill -9` of the runner while `yaml` is live, twice: with the watchdog (which must restore
/// the host by itself) and without it (then `recover` must). `live` checks the fault is in
/// place; `restored` that the host is exactly as before. A fault that dies with its runner
/// (a memory hog) is not `left_by_a_crash`.
fn crash_both_ways(
    name: &str,
    yaml: &str,
    left_by_a_crash: bool,
    live: &dyn Fn() -> bool,
    restored: &dyn Fn() -> bool,
) {
    for watched in [true, false] {
        let ws = Workspace::new();
        let file = ws.write(&format!("{name}.yaml"), yaml);
        let mut runner = if watched {
            Runner::spawn(&ws, &[&file])
        } else {
            Runner::spawn_unwatched(&ws, &[&file])
        };
        let faults = yaml.matches("kind:").count();
        assert!(
            wait_for(Duration::from_secs(30), || {
                events_of(&ws.journal(), "fault_injected").len() == faults
            }),
            "{name}: injected:\n{}",
            runner.stderr()
        );
        assert!(live(), "{name}: the fault is in place");
        runner.crash();
        if watched {
            assert!(
                wait_for(Duration::from_secs(30), || ws.state_records() == 0),
                "{name}: the watchdog reverted everything:\n{}",
                runner.stderr()
            );
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(
                live(),
                left_by_a_crash,
                "{name}: what the crash leaves without the watchdog"
            );
            util::recover_ok(&ws);
            assert_eq!(ws.state_records(), 0);
        }
        assert!(
            restored(),
            "{name}: the host is as before (watchdog: {watched})"
        );
    }
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn kill_9_during_a_shared_tc_tree_restores_it_with_the_watchdog_and_with_recover() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let yaml = network_experiment(
        "crash-tree",
        &format!(
            "peer: {{network: {{netns: {}, interfaces: [{}], remote: ['{}'], direction: both}}}}",
            net.a, net.veth_a, net.ip_b
        ),
        "  - {id: far, kind: network-delay, target: peer, params: {delay: 30ms}, duration: 90s}\n\
         \x20 - {id: thin, kind: network-bandwidth, target: peer, params: {rate: 8mbit}, duration: 90s}\n",
    );
    crash_both_ways(
        "crash-tree",
        &yaml,
        true,
        &|| tc_state(&net.a) != before,
        &|| tc_state(&net.a) == before,
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn kill_9_during_a_netem_delay_restores_the_qdiscs_with_the_watchdog_and_with_recover() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let yaml = network_experiment(
        "crash-netem",
        &format!(
            "peer: {{network: {{netns: {}, interfaces: [{}]}}}}",
            net.a, net.veth_a
        ),
        "  - {id: far, kind: network-delay, target: peer, params: {delay: 30ms, backend: netem}, duration: 90s}\n",
    );
    crash_both_ways(
        "crash-netem",
        &yaml,
        true,
        &|| tc_state(&net.a).contains("netem"),
        &|| tc_state(&net.a) == before,
    );
}

// cgroup v2

/// A cgroup the test makes under the v2 root (or under another one); its processes are
/// moved to the root and it is removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        TestCgroup::under(
            Path::new(V2),
            &format!("fl-lane-{name}-{}", std::process::id()),
        )
    }

    fn under(parent: &Path, name: &str) -> TestCgroup {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup { dir }
    }

    /// The path as /proc/PID/cgroup shows it.
    fn path(&self) -> String {
        format!("/{}", self.dir.strip_prefix(V2).unwrap().display())
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), format!("{pid}\n"))
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.dir.display()));
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(Path::new(V2).join("cgroup.procs"), pid);
        }
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// Every cgroup under the v2 root (four levels deep) with what it hands to its children.
fn cgroup_tree() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, String)>) {
        let control =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        out.push((dir.to_path_buf(), control.trim().to_string()));
        if depth == 0 {
            return;
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        children.sort();
        for child in children {
            walk(&child, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    walk(Path::new(V2), 4, &mut out);
    out
}

/// A process that burns one CPU (`yes` into /dev/null) until killed by PID on drop.
struct Busy(Child);

impl Busy {
    fn start(tag: &str) -> Busy {
        Busy(
            Command::new("yes")
                .arg(tag)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn yes"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Shares of one CPU the processes used over `window`, each.
fn cpu_shares(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<u64> = pids.iter().map(|p| ticks(*p)).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let secs = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| (ticks(*p) - b) as f64 / 100.0 / secs)
        .collect()
}

fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

/// The faultline cgroup `pid` is in now.
fn faultline_group_of(pid: u32) -> PathBuf {
    let line = cgroup_of(pid);
    let path = line
        .trim()
        .strip_prefix("0::")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        path.contains("/faultline-"),
        "pid {pid} is not limited: {line}"
    );
    Path::new(V2).join(path.trim_start_matches('/'))
}

fn cpu_limit_experiment(name: &str, target: &str, quota: &str, duration: &str) -> String {
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 2m\n\
         targets: {{busy: {{process: {target}}}}}\n\
         faults: [{{id: squeeze, kind: cpu-limit, target: busy, params: {{quota: {quota}}}, duration: {duration}}}]\n"
    )
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_v2_throttles_and_reverts_to_the_exact_tree() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let app = TestCgroup::new("cpu");
    let busy = Busy::start("lane-cpu");
    app.adopt(busy.pid());
    let tree = cgroup_tree();
    let membership = cgroup_of(busy.pid());
    let file = ws.write(
        "limit.yaml",
        &cpu_limit_experiment("v2-cpu", &format!("{{pid: {}}}", busy.pid()), "25%", "8s"),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let group = faultline_group_of(busy.pid());
    let quota = std::fs::read_to_string(group.join("cpu.max")).unwrap();
    let share = cpu_shares(&[busy.pid()], Duration::from_secs(3))[0];
    println!(
        "cpu.max {}; measured {:.1}% of a CPU",
        quota.trim(),
        share * 100.0
    );
    assert_eq!(quota.trim(), "25000 100000");
    assert!(
        (0.1..=0.4).contains(&share),
        "{:.1}% under a 25% quota",
        share * 100.0
    );
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(cgroup_of(busy.pid()), membership, "back in its own cgroup");
    assert_eq!(
        cgroup_tree(),
        tree,
        "every cgroup and subtree_control as before"
    );
    assert_eq!(ws.state_records(), 0);
    let free = cpu_shares(&[busy.pid()], Duration::from_secs(2))[0];
    assert!(
        free > 0.5,
        "unthrottled after the revert: {:.1}%",
        free * 100.0
    );
}

/// `cgroup: /x/app` selects every process in it; the limit goes one level below it and the
/// controller is enabled from the root down to it (and disabled again on revert).
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_a_whole_nested_v2_cgroup_reverts_to_the_exact_tree() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let outer = TestCgroup::new("outer");
    let app = TestCgroup::under(&outer.dir, "app");
    let workers = [Busy::start("lane-app-1"), Busy::start("lane-app-2")];
    for w in &workers {
        app.adopt(w.pid());
    }
    let tree = cgroup_tree();
    let file = ws.write(
        "limit.yaml",
        &cpu_limit_experiment(
            "v2-cgroup",
            &format!("{{cgroup: '{}'}}", app.path()),
            "30%",
            "8s",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    let group = faultline_group_of(pids[0]);
    assert_eq!(
        group,
        faultline_group_of(pids[1]),
        "one cgroup for the whole target"
    );
    assert_eq!(group.parent(), Some(app.dir.as_path()));
    assert!(outer.file("cgroup.subtree_control").contains("cpu"));
    let shares = cpu_shares(&pids, Duration::from_secs(3));
    let total: f64 = shares.iter().sum();
    println!(
        "30% for the cgroup: measured {shares:?}, together {:.1}%",
        total * 100.0
    );
    assert!(
        (0.12..=0.45).contains(&total),
        "together {:.1}%",
        total * 100.0
    );
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    for pid in &pids {
        assert_eq!(cgroup_of(*pid).trim(), format!("0::{}", app.path()));
    }
    assert_eq!(
        cgroup_tree(),
        tree,
        "every cgroup and subtree_control as before"
    );
    drop(workers);
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_processes_from_two_v2_cgroups_limits_each_and_puts_each_back() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let (a, b) = (TestCgroup::new("two-a"), TestCgroup::new("two-b"));
    let tag = format!("lane-two-{}", std::process::id());
    let workers = [Busy::start(&tag), Busy::start(&tag)];
    a.adopt(workers[0].pid());
    b.adopt(workers[1].pid());
    let tree = cgroup_tree();
    let file = ws.write(
        "limit.yaml",
        &cpu_limit_experiment(
            "v2-two",
            &format!("{{cmdline: '^yes {tag}$'}}"),
            "20%",
            "8s",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    assert_ne!(faultline_group_of(pids[0]), faultline_group_of(pids[1]));
    let shares = cpu_shares(&pids, Duration::from_secs(3));
    println!("20% in each cgroup: measured {shares:?}");
    for share in &shares {
        assert!((0.08..=0.35).contains(share), "{shares:?}");
    }
    let events = ws.journal();
    let intent = events_of(&events, "fault_intent")[0]["summary"].to_string();
    assert!(intent.contains("in each of 2 cgroups"), "{intent}");
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(cgroup_of(pids[0]).trim(), format!("0::{}", a.path()));
    assert_eq!(cgroup_of(pids[1]).trim(), format!("0::{}", b.path()));
    assert_eq!(cgroup_tree(), tree);
    drop(workers);
}

/// Two limits on processes in the root cgroup share faultline's enable of `cpu` there: the one
/// that ends first must leave the other's quota in force, and the last one takes `cpu` away.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn two_cpu_limits_sharing_the_roots_enable_keep_it_until_the_last_one_ends() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let workers = [Busy::start("lane-root-1"), Busy::start("lane-root-2")];
    let root = Path::new(V2);
    for w in &workers {
        std::fs::write(root.join("cgroup.procs"), w.pid().to_string()).unwrap();
    }
    let tree = cgroup_tree();
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    let file = ws.write(
        "two-limits.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: two-limits}}\nmax_duration: 2m\n\
             targets: {{first: {{process: {{pid: {}}}}}, second: {{process: {{pid: {}}}}}}}\n\
             faults:\n\
             \x20 - {{id: short, kind: cpu-limit, target: first, params: {{quota: 20%}}, duration: 6s}}\n\
             \x20 - {{id: long, kind: cpu-limit, target: second, params: {{quota: 20%}}, duration: 20s}}\n",
            pids[0], pids[1]
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(30), || events_of(
            &ws.journal(),
            "fault_injected"
        )
        .len()
            == 2),
        "both limits injected:\n{}",
        runner.stderr()
    );
    assert!(
        wait_for(Duration::from_secs(30), || !events_of(
            &ws.journal(),
            "fault_reverted"
        )
        .is_empty()),
        "the short limit ended:\n{}",
        runner.stderr()
    );
    let group = faultline_group_of(pids[1]);
    let quota = std::fs::read_to_string(group.join("cpu.max")).unwrap_or_default();
    let shares = cpu_shares(&pids, Duration::from_secs(2));
    println!(
        "after the first limit ended: cpu.max {}; shares {shares:?}",
        quota.trim()
    );
    assert_eq!(
        quota.trim(),
        "20000 100000",
        "the second limit is still in force"
    );
    assert!(
        shares[1] <= 0.35,
        "the second process is still throttled: {shares:?}"
    );
    assert!(shares[0] > 0.35, "the first process runs free: {shares:?}");
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(
        cgroup_tree(),
        tree,
        "cpu taken away again by the last limit"
    );
    drop(workers);
}

/// v2 gives a controller to a cgroup's children only when the cgroup holds no process of its
/// own: a target that shares its cgroup with others is refused before anything changes.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_a_process_sharing_its_v2_cgroup_is_refused_before_anything_changes() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let shared = TestCgroup::new("shared");
    let busy = Busy::start("lane-shared");
    let neighbour = util::Proc::sleep("747474");
    shared.adopt(busy.pid());
    shared.adopt(neighbour.pid());
    let tree = cgroup_tree();
    let file = ws.write(
        "limit.yaml",
        &cpu_limit_experiment(
            "v2-shared",
            &format!("{{pid: {}}}", busy.pid()),
            "25%",
            "5s",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file, &[], Duration::from_secs(60));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("whole cgroup"), "{stderr}");
    assert!(
        stderr.contains(&neighbour.pid().to_string()),
        "names the neighbour: {stderr}"
    );
    assert!(
        events_of(&ws.journal(), "fault_intent").is_empty(),
        "nothing was recorded"
    );
    assert_eq!(cgroup_tree(), tree);
    assert_eq!(
        cgroup_of(busy.pid()).trim(),
        format!("0::{}", shared.path())
    );
}

fn written_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Rewrites the first 16 MiB of a file with O_DIRECT 128 KiB writes, forever.
const DIRECT_WRITER: &str = "\
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
block = 128 * 1024
buf = mmap.mmap(-1, block)
buf.write(b'x' * block)
offset = 0
while True:
    os.pwrite(fd, buf, offset)
    offset = (offset + block) % (16 * 1024 * 1024)
";

struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_disk_io_limit_on_v2_writes_io_max_for_the_loop_device_and_reverts_exactly() {
    need_cgroup_v2();
    let _serial = util::serial();
    let ws = Workspace::new();
    let fs = faultline::sys::loopdev::LoopFs::ext4(64 << 20).expect("loop-mounted ext4");
    let app = TestCgroup::new("io");
    let writer = Writer(
        Command::new("python3")
            .args(["-c", DIRECT_WRITER])
            .arg(fs.mount_point().join("data"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the writer"),
    );
    let pid = writer.0.id();
    app.adopt(pid);
    assert!(
        wait_for(Duration::from_secs(20), || written_bytes(pid) > 0),
        "the writer writes"
    );
    let tree = cgroup_tree();
    let file = ws.write(
        "iolimit.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: v2-io}}\nmax_duration: 2m\n\
             targets: {{writer: {{process: {{pid: {pid}}}}}}}\n\
             faults: [{{id: slow-disk, kind: disk-io-limit, target: writer, params: {{path: '{}', write_throughput: 2MiB}}, duration: 10s}}]\n",
            fs.mount_point().display()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(30));
    let group = faultline_group_of(pid);
    let io_max = std::fs::read_to_string(group.join("io.max")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (before, start) = (written_bytes(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let rate = (written_bytes(pid) - before) as f64 / start.elapsed().as_secs_f64();
    println!(
        "io.max {}; measured {:.2} MiB/s",
        io_max.trim(),
        rate / 1048576.0
    );
    assert!(io_max.contains("wbps=2097152"), "{io_max}");
    assert!(
        rate <= 2.0 * 1048576.0 * 1.3,
        "{:.2} MiB/s under 2 MiB/s",
        rate / 1048576.0
    );
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(cgroup_of(pid).trim(), format!("0::{}", app.path()));
    assert_eq!(cgroup_tree(), tree);
    drop(writer);
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn kill_9_during_a_v2_cpu_limit_is_undone_by_the_watchdog_and_by_recover() {
    need_cgroup_v2();
    let _serial = util::serial();
    let app = TestCgroup::new("crash-cpu");
    let busy = Busy::start("lane-crash-cpu");
    app.adopt(busy.pid());
    let tree = cgroup_tree();
    let membership = cgroup_of(busy.pid());
    let yaml = cpu_limit_experiment(
        "crash-cpu",
        &format!("{{pid: {}}}", busy.pid()),
        "20%",
        "90s",
    );
    crash_both_ways(
        "crash-cpu",
        &yaml,
        true,
        &|| cgroup_of(busy.pid()).contains("faultline-"),
        &|| cgroup_of(busy.pid()) == membership && cgroup_tree() == tree,
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn kill_9_during_a_v2_disk_io_limit_is_undone_by_the_watchdog_and_by_recover() {
    need_cgroup_v2();
    let _serial = util::serial();
    let fs = faultline::sys::loopdev::LoopFs::ext4(32 << 20).expect("loop-mounted ext4");
    let app = TestCgroup::new("crash-io");
    let victim = util::Proc::sleep("636363");
    app.adopt(victim.pid());
    let tree = cgroup_tree();
    let membership = cgroup_of(victim.pid());
    let yaml = format!(
        "apiVersion: faultline/v1\nmetadata: {{name: crash-io}}\nmax_duration: 2m\n\
         targets: {{writer: {{process: {{pid: {}}}}}}}\n\
         faults: [{{id: slow-disk, kind: disk-io-limit, target: writer, params: {{path: '{}', write_throughput: 1MiB}}, duration: 90s}}]\n",
        victim.pid(),
        fs.mount_point().display()
    );
    crash_both_ways(
        "crash-io",
        &yaml,
        true,
        &|| cgroup_of(victim.pid()).contains("faultline-"),
        &|| cgroup_of(victim.pid()) == membership && cgroup_tree() == tree,
    );
}

fn hog_pids() -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == b"__memory-hog")
            && util::proc_state(pid).is_some_and(|s| s != 'Z')
        {
            found.push(pid);
        }
    }
    found
}

/// The memory hog is charged to faultline's own v2 memory cgroup and dies with a crashed
/// runner; the record it leaves is cleared by the watchdog or by `recover`.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn kill_9_during_memory_pressure_on_v2_frees_the_memory_with_the_watchdog_and_with_recover() {
    need_cgroup_v2();
    let _serial = util::serial();
    assert!(hog_pids().is_empty(), "a hog from before: {:?}", hog_pids());
    let yaml = "apiVersion: faultline/v1\nmetadata: {name: crash-memory}\nmax_duration: 2m\n\
                faults: [{id: hog, kind: memory-pressure, params: {size: 128MiB}, duration: 90s}]\n";
    crash_both_ways(
        "crash-memory",
        yaml,
        false,
        &|| hog_pids().len() == 1,
        &|| wait_for(Duration::from_secs(5), || hog_pids().is_empty()),
    );
}
