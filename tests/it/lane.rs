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

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::sys::netns::{TestNet, command_in, goodput, run_in};
use faultline::sys::tc::{self, Support};
use serde_json::Value;

use crate::util::{
    self, Busy, Runner, Workspace, echo_rtts, echo_server_in, events_of, percentile, wait_for,
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

/// A run the test watches: started, and waited for until `faults` faults are injected.
struct Live {
    ws: Workspace,
    runner: Runner,
}

impl Live {
    fn start(name: &str, yaml: &str, faults: usize) -> Live {
        Live::start_with(name, yaml, faults, false)
    }

    fn start_with(name: &str, yaml: &str, faults: usize, unwatched: bool) -> Live {
        let ws = Workspace::new();
        let file = ws.write(&format!("{name}.yaml"), yaml);
        let runner = if unwatched {
            Runner::spawn_unwatched(&ws, &[&file])
        } else {
            Runner::spawn(&ws, &[&file])
        };
        let live = Live { ws, runner };
        live.wait_until(&format!("{faults} fault(s) injected"), |events| {
            events_of(events, "fault_injected").len() >= faults
        });
        live
    }

    /// Wait (at most 120 s: under emulation two tc faults took 40 s to go in) until the
    /// journal shows `what`.
    fn wait_until(&self, what: &str, mut seen: impl FnMut(&[Value]) -> bool) {
        assert!(
            wait_for(Duration::from_secs(120), || seen(&self.ws.journal())),
            "{what}:\n{}",
            self.runner.stderr()
        );
    }

    /// Ctrl-C: every fault is reverted and the run says `interrupted` (130).
    fn interrupt(self) -> Workspace {
        self.runner.signal(nix::sys::signal::Signal::SIGINT);
        self.end(130)
    }

    /// Wait (at most 60 s) for the run's end, which must be `code`.
    fn end(mut self, code: i32) -> Workspace {
        let ended = self.runner.wait(Duration::from_secs(60));
        assert_eq!(ended, Some(code), "{}", self.runner.stderr());
        self.ws
    }
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

/// Reverts get a minute, not the default 10 s, and the checks before injecting a minute and a
/// half, not 15 s: under the lane's emulated CPU one `tc` call can take a second, a shared
/// tree's revert makes a dozen (CI saw 10 s run out), and checking two tc faults that list the
/// same tree side by side took longer than 15 s on a CI machine slower than this one.
fn network_experiment(name: &str, targets: &str, faults: &[&str]) -> String {
    let faults: String = faults.iter().map(|f| format!("  - {f}\n")).collect();
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 2m\n\
         abort: {{revert_timeout: 60s, check_timeout: 90s}}\n\
         targets: {{{targets}}}\nfaults:\n{faults}"
    )
}

/// A network target: traffic of `dev` in namespace `ns` with the `remote` end, plus `more`
/// selector keys (`, protocol: tcp`).
fn network_target(ns: &str, dev: &str, remote: &str, more: &str) -> String {
    format!("{{network: {{netns: {ns}, interfaces: [{dev}], remote: ['{remote}']{more}}}}}")
}

/// The backends the journal says the faults use, in order.
fn backends(ws: &Workspace) -> Vec<String> {
    let mut used: Vec<String> = events_of(&ws.journal(), "fault_intent")
        .iter()
        .map(|e| e["details"]["backend"].as_str().unwrap_or("?").to_string())
        .collect();
    // Faults that start together are prepared in either order.
    used.sort();
    used
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

fn listener_in(ns: &str, ip: &str) -> TcpListener {
    let ip = ip.to_string();
    run_in(ns, move || TcpListener::bind(format!("{ip}:0")))
        .unwrap()
        .unwrap()
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
    let line_of = |kind: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} line"))
            .to_string()
    };
    assert!(line_of("network-delay").contains("netem"));
    for kind in ["network-duplicate", "network-corrupt", "network-reorder"] {
        let line = line_of(kind);
        assert!(!line.contains("UNAVAILABLE"), "{line}");
    }
}

/// One delay through netem; the echo round trips it makes; the tree is gone afterwards.
fn netem_delay_rtts(params: &str, v6: bool, echoes: usize) -> Vec<f64> {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let (server, remote) = match v6 {
        false => (echo_server_in(&net.b, &net.ip_b), net.ip_b.clone()),
        true => (
            echo_server_in(&net.b, &format!("[{}]", net.ip6_b)),
            net.ip6_b.clone(),
        ),
    };
    let target = network_target(&net.a, &net.veth_a, &remote, ", protocol: tcp");
    let yaml = network_experiment(
        "netem-delay",
        &format!("server: {target}"),
        &[&format!(
            "{{id: slow, kind: network-delay, target: server, params: {params}, duration: 60s}}"
        )],
    );
    let live = Live::start("netem-delay", &yaml, 1);
    let during = tc_state(&net.a);
    let rtts = echo_rtts(&net.a, server, echoes, Duration::from_millis(20));
    let ws = live.interrupt();
    assert!(during.contains("qdisc netem"), "{during}");
    assert_eq!(backends(&ws), vec!["netem"]);
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
    rtts
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_netem_delay_with_jitter_holds_packets_at_least_the_delay_and_spreads_them() {
    let rtts = netem_delay_rtts("{delay: 40ms, jitter: 10ms}", false, 60);
    let (p10, p50, p90) = (
        percentile(&rtts, 10.0),
        percentile(&rtts, 50.0),
        percentile(&rtts, 90.0),
    );
    println!("40±10 ms: p10 {p10:.2}, p50 {p50:.2}, p90 {p90:.2}");
    assert!(p10 >= 30.0, "p10 {p10:.2} ms below 40 - 10");
    assert!((38.0..70.0).contains(&p50), "p50 {p50:.2} ms");
    assert!(p90 - p10 >= 6.0, "no spread: p10 {p10:.2}, p90 {p90:.2}");
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn an_ipv6_delay_goes_through_netem_too() {
    let p50 = percentile(&netem_delay_rtts("{delay: 30ms}", true, 20), 50.0);
    println!("IPv6 30 ms: p50 {p50:.2} ms");
    assert!((30.0..60.0).contains(&p50), "IPv6 p50 {p50:.2} ms");
}

/// One netem-only fault against numbered UDP datagrams from a to b; what arrived.
fn netem_udp_fault(kind: &str, params: &str, n: u32) -> UdpRun {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let (receiver, addr) = udp_receiver(&net.b, &net.ip_b);
    let target = network_target(&net.a, &net.veth_a, &net.ip_b, ", protocol: udp");
    let yaml = network_experiment(
        "udp",
        &format!("peer: {target}"),
        &[&format!(
            "{{id: it, kind: {kind}, target: peer, params: {params}, duration: 60s}}"
        )],
    );
    let live = Live::start("udp", &yaml, 1);
    let run = udp_run(&net.a, receiver, addr, n, Duration::from_millis(2));
    println!(
        "{}",
        in_ns(&net.a, &["tc", "-s", "qdisc", "show", "dev", &net.veth_a])
    );
    let ws = live.interrupt();
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
    let run = netem_udp_fault("network-loss", "{probability: 30%, correlation: 25%}", 600);
    let kept = run.received() as f64 / run.sent as f64;
    assert!((0.5..=0.9).contains(&kept), "kept {kept:.3} for 30% loss");
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_duplicate_fault_delivers_extra_copies() {
    let run = netem_udp_fault("network-duplicate", "{probability: 20%}", 600);
    let extra = (run.received() - run.distinct()) as f64 / run.sent as f64;
    assert!(
        (0.1..=0.3).contains(&extra),
        "{extra:.3} extra copies for 20%"
    );
    assert!(
        run.distinct() >= run.sent * 95 / 100,
        "lost {}",
        run.distinct()
    );
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_corrupt_fault_damages_about_its_share() {
    let run = netem_udp_fault("network-corrupt", "{probability: 20%}", 600);
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
    let run = netem_udp_fault("network-reorder", "{probability: 30%, delay: 40ms}", 400);
    let late = run.out_of_order() as f64 / run.sent as f64;
    let median = percentile(&run.delays(), 50.0);
    println!("one-way delay median {median:.2} ms");
    assert!(late >= 0.1, "only {late:.3} arrived out of order");
    assert!(median >= 40.0, "the others wait the delay: {median:.2} ms");
    assert!(
        run.distinct() >= run.sent * 95 / 100,
        "lost {}",
        run.distinct()
    );
}

/// A 30 ms delay and a 4 Mbit/s cap on `target` (traffic from a to b, shaped in namespace
/// `shaped`) live together: every packet gets both, and the tree (and an ingress tree's
/// IFB) goes with the last of them.
fn a_delay_and_a_cap_both_act(net: &TestNet, shaped: &str, target: &str) {
    let before = tc_state(shaped);
    let echo = echo_server_in(&net.b, &net.ip_b);
    let sink = listener_in(&net.b, &net.ip_b);
    let yaml = network_experiment(
        "wan",
        &format!("peer: {target}"),
        &[
            "{id: far, kind: network-delay, target: peer, params: {delay: 30ms}, duration: 60s}",
            "{id: thin, kind: network-bandwidth, target: peer, params: {rate: 4mbit}, duration: 60s}",
        ],
    );
    let live = Live::start("wan", &yaml, 2);
    let rtt = percentile(
        &echo_rtts(&net.a, echo, 20, Duration::from_millis(10)),
        50.0,
    );
    let bits = goodput(&net.a, &sink, 2.0, 6.0);
    println!(
        "delay 30 ms + 4 Mbit/s: echo p50 {rtt:.2} ms, goodput {:.2} Mbit/s",
        bits / 1e6
    );
    let ws = live.interrupt();
    assert!(rtt >= 30.0, "echo p50 {rtt:.2} ms under a 30 ms delay");
    assert!(bits <= 4.0e6 * 1.05, "goodput {bits:.0} bit/s over the cap");
    assert!(
        bits >= 4.0e6 * 0.4,
        "goodput {bits:.0} bit/s: the path is broken"
    );
    assert_eq!(backends(&ws), vec!["netem", "tc"]);
    assert_eq!(tc_state(shaped), before, "the tree is gone, byte for byte");
    assert_eq!(ws.state_records(), 0);
}

/// The classic WAN emulation on one interface.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_delay_and_a_bandwidth_cap_share_one_interface() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let target = network_target(&net.a, &net.veth_a, &net.ip_b, "");
    a_delay_and_a_cap_both_act(&net, &net.a, &target);
}

/// The same on what the interface receives (through faultline's IFB).
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn an_ingress_delay_and_an_ingress_cap_share_one_ifb() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let target = network_target(&net.b, &net.veth_b, &net.ip_a, ", direction: ingress");
    a_delay_and_a_cap_both_act(&net, &net.b, &target);
}

/// Two delays on one interface, to different services: each service sees its own.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn two_delays_to_different_ports_of_one_interface_each_hold_their_own() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let database = echo_server_in(&net.b, &net.ip_b);
    let cache = echo_server_in(&net.b, &net.ip_b);
    let to = |port: u16| {
        let more = format!(", remote_ports: [{port}], protocol: tcp");
        network_target(&net.a, &net.veth_a, &net.ip_b, &more)
    };
    let yaml = network_experiment(
        "two-delays",
        &format!(
            "database: {}, cache: {}",
            to(database.port()),
            to(cache.port())
        ),
        &[
            "{id: slow-db, kind: network-delay, target: database, params: {delay: 20ms}, duration: 60s}",
            "{id: slow-cache, kind: network-delay, target: cache, params: {delay: 60ms}, duration: 60s}",
        ],
    );
    let live = Live::start("two-delays", &yaml, 2);
    let db = percentile(
        &echo_rtts(&net.a, database, 20, Duration::from_millis(10)),
        50.0,
    );
    let cached = percentile(
        &echo_rtts(&net.a, cache, 20, Duration::from_millis(10)),
        50.0,
    );
    println!("database p50 {db:.2} ms (20 ms), cache p50 {cached:.2} ms (60 ms)");
    live.interrupt();
    assert!((20.0..55.0).contains(&db), "database {db:.2} ms");
    assert!((60.0..95.0).contains(&cached), "cache {cached:.2} ms");
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
}

/// Delays on the same traffic add up; when the shorter fault ends, the longer one stays in
/// place alone, and the tree goes with it.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_fault_that_ends_first_leaves_the_other_on_the_interface() {
    need_netem();
    let _serial = util::serial();
    let net = TestNet::new().expect("test network");
    let before = tc_state(&net.a);
    let echo = echo_server_in(&net.b, &net.ip_b);
    let target = network_target(&net.a, &net.veth_a, &net.ip_b, ", protocol: tcp");
    let yaml = network_experiment(
        "staggered",
        &format!("peer: {target}"),
        &[
            "{id: long, kind: network-delay, target: peer, params: {delay: 25ms}, duration: 90s}",
            "{id: short, kind: network-delay, target: peer, params: {delay: 50ms}, duration: 12s}",
        ],
    );
    let live = Live::start("staggered", &yaml, 2);
    let both = percentile(
        &echo_rtts(&net.a, echo, 10, Duration::from_millis(10)),
        50.0,
    );
    live.wait_until("the short fault ended", |events| {
        !events_of(events, "fault_reverted").is_empty()
    });
    let alone = percentile(
        &echo_rtts(&net.a, echo, 10, Duration::from_millis(10)),
        50.0,
    );
    println!("25 ms + 50 ms: p50 {both:.2} ms; 25 ms alone: p50 {alone:.2} ms");
    live.interrupt();
    assert!(
        both >= 75.0,
        "delays on the same traffic add up: {both:.2} ms"
    );
    assert!(
        (25.0..60.0).contains(&alone),
        "the long delay alone: {alone:.2} ms"
    );
    assert_eq!(tc_state(&net.a), before, "the tree is gone, byte for byte");
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
        let run = Live::start_with(name, yaml, yaml.matches("kind:").count(), !watched);
        assert!(live(), "{name}: the fault is in place");
        let Live { ws, mut runner } = run;
        runner.crash();
        if watched {
            // Two reverts of one tree run one after the other, each within its timeout.
            assert!(
                wait_for(Duration::from_secs(150), || ws.state_records() == 0),
                "{name}: the watchdog reverted everything:\n{}",
                runner.stderr()
            );
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(live(), left_by_a_crash, "{name}: what the crash leaves");
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
    let target = network_target(&net.a, &net.veth_a, &net.ip_b, ", direction: both");
    let yaml = network_experiment(
        "crash-tree",
        &format!("peer: {target}"),
        &[
            "{id: far, kind: network-delay, target: peer, params: {delay: 30ms}, duration: 90s}",
            "{id: thin, kind: network-bandwidth, target: peer, params: {rate: 8mbit}, duration: 90s}",
        ],
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
        &[
            "{id: far, kind: network-delay, target: peer, params: {delay: 30ms, backend: netem}, duration: 90s}",
        ],
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

    /// /proc/PID/cgroup of a process in it.
    fn membership(&self) -> String {
        format!("0::{}\n", self.path())
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

/// `faults` (`{id: .., kind: .., target: busy ..}` entries) against process `targets`, with
/// the checks and reverts given the same room as in [`network_experiment`].
fn resource_experiment(name: &str, targets: &str, faults: &[String]) -> String {
    let faults: String = faults.iter().map(|f| format!("  - {f}\n")).collect();
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 2m\n\
         abort: {{revert_timeout: 60s, check_timeout: 90s}}\n\
         targets: {{{targets}}}\nfaults:\n{faults}"
    )
}

fn cpu_limit(target: &str, quota: &str, duration: &str) -> String {
    format!(
        "{{id: squeeze-{target}, kind: cpu-limit, target: {target}, params: {{quota: {quota}}}, duration: {duration}}}"
    )
}

/// What a cpu-limit on `pids` did while it was live.
struct Limited {
    /// Share of one CPU each process used.
    shares: Vec<f64>,
    /// The faultline cgroup each was in.
    groups: Vec<PathBuf>,
    /// `cpu.max` of each of those.
    quotas: Vec<String>,
    ws: Workspace,
}

/// A cpu-limit of `quota` for 8 s on `selector`, run to its end (exit 0); `during` runs
/// while it is live. The cgroup tree (every cgroup and what it hands to its children) must
/// be as before afterwards.
fn limited_run(selector: &str, quota: &str, pids: &[u32], during: impl FnOnce()) -> Limited {
    let tree = cgroup_tree();
    let yaml = resource_experiment(
        "v2-limit",
        &format!("busy: {{process: {selector}}}"),
        &[cpu_limit("busy", quota, "8s")],
    );
    let live = Live::start("v2-limit", &yaml, 1);
    let groups: Vec<PathBuf> = pids.iter().map(|p| faultline_group_of(*p)).collect();
    let quotas: Vec<String> = groups
        .iter()
        .map(|g| {
            std::fs::read_to_string(g.join("cpu.max"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    let shares = cpu_shares(pids, Duration::from_secs(3));
    during();
    println!("{quota}: measured shares {shares:?} in {groups:?} ({quotas:?})");
    let ws = live.end(0);
    assert_eq!(
        cgroup_tree(),
        tree,
        "every cgroup and subtree_control as before"
    );
    assert_eq!(ws.state_records(), 0);
    Limited {
        shares,
        groups,
        quotas,
        ws,
    }
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_v2_throttles_and_reverts_to_the_exact_tree() {
    need_cgroup_v2();
    let _serial = util::serial();
    let app = TestCgroup::new("cpu");
    let busy = Busy::start("lane-cpu");
    app.adopt(busy.pid());
    let run = limited_run(
        &format!("{{pid: {}}}", busy.pid()),
        "25%",
        &[busy.pid()],
        || {},
    );
    assert_eq!(run.quotas, vec!["25000 100000"]);
    assert_eq!(run.groups[0].parent(), Some(app.dir.as_path()));
    let share = run.shares[0];
    assert!((0.1..=0.4).contains(&share), "{share:.2} under a 25% quota");
    assert_eq!(
        cgroup_of(busy.pid()),
        app.membership(),
        "back in its own cgroup"
    );
    let free = cpu_shares(&[busy.pid()], Duration::from_secs(2))[0];
    assert!(free > 0.5, "unthrottled after the revert: {free:.2}");
}

/// `cgroup: /x/app` selects every process in it; the limit goes one level below it and the
/// controller is enabled from the root down to it (and disabled again on revert).
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_a_whole_nested_v2_cgroup_reverts_to_the_exact_tree() {
    need_cgroup_v2();
    let _serial = util::serial();
    let outer = TestCgroup::new("outer");
    let app = TestCgroup::under(&outer.dir, "app");
    let workers = [Busy::start("lane-app-1"), Busy::start("lane-app-2")];
    for w in &workers {
        app.adopt(w.pid());
    }
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    let selector = format!("{{cgroup: '{}'}}", app.path());
    let run = limited_run(&selector, "30%", &pids, || {
        let enabled = outer.file("cgroup.subtree_control");
        assert!(
            enabled.contains("cpu"),
            "cpu enabled down the tree: {enabled}"
        );
    });
    assert_eq!(
        run.groups[0], run.groups[1],
        "one cgroup for the whole target"
    );
    assert_eq!(run.groups[0].parent(), Some(app.dir.as_path()));
    let together: f64 = run.shares.iter().sum();
    assert!(
        (0.12..=0.45).contains(&together),
        "together {together:.2} for 30%"
    );
    for pid in &pids {
        assert_eq!(cgroup_of(*pid), app.membership());
    }
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_cpu_limit_on_processes_from_two_v2_cgroups_limits_each_and_puts_each_back() {
    need_cgroup_v2();
    let _serial = util::serial();
    let origins = [TestCgroup::new("two-a"), TestCgroup::new("two-b")];
    let tag = format!("lane-two-{}", std::process::id());
    let workers = [Busy::start(&tag), Busy::start(&tag)];
    for (w, origin) in workers.iter().zip(&origins) {
        origin.adopt(w.pid());
    }
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    let run = limited_run(&format!("{{cmdline: '^yes {tag}$'}}"), "20%", &pids, || {});
    assert_ne!(run.groups[0], run.groups[1]);
    for share in &run.shares {
        assert!(
            (0.08..=0.35).contains(share),
            "{:?} for 20% in each",
            run.shares
        );
    }
    let events = run.ws.journal();
    let intent = events_of(&events, "fault_intent")[0]["summary"].to_string();
    assert!(intent.contains("in each of 2 cgroups"), "{intent}");
    for (pid, origin) in pids.iter().zip(&origins) {
        assert_eq!(cgroup_of(*pid), origin.membership());
    }
}

/// Two limits on processes in the root cgroup share faultline's enable of `cpu` there: the one
/// that ends first must leave the other's quota in force, and the last one takes `cpu` away.
#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn two_cpu_limits_sharing_the_roots_enable_keep_it_until_the_last_one_ends() {
    need_cgroup_v2();
    let _serial = util::serial();
    let workers = [Busy::start("lane-root-1"), Busy::start("lane-root-2")];
    for w in &workers {
        std::fs::write(Path::new(V2).join("cgroup.procs"), w.pid().to_string()).unwrap();
    }
    let pids: Vec<u32> = workers.iter().map(Busy::pid).collect();
    let tree = cgroup_tree();
    let yaml = resource_experiment(
        "two-limits",
        &format!(
            "first: {{process: {{pid: {}}}}}, second: {{process: {{pid: {}}}}}",
            pids[0], pids[1]
        ),
        &[
            cpu_limit("first", "20%", "6s"),
            cpu_limit("second", "20%", "20s"),
        ],
    );
    let live = Live::start("two-limits", &yaml, 2);
    live.wait_until("the first limit ended", |events| {
        !events_of(events, "fault_reverted").is_empty()
    });
    let group = faultline_group_of(pids[1]);
    let quota = std::fs::read_to_string(group.join("cpu.max")).unwrap_or_default();
    let shares = cpu_shares(&pids, Duration::from_secs(2));
    println!(
        "after the first limit ended: cpu.max {}; shares {shares:?}",
        quota.trim()
    );
    live.end(0);
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
        cgroup_tree(),
        tree,
        "cpu taken away again by the last limit"
    );
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
        &resource_experiment(
            "v2-shared",
            &format!("busy: {{process: {{pid: {}}}}}", busy.pid()),
            &[cpu_limit("busy", "25%", "5s")],
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert_eq!(runner.wait(Duration::from_secs(60)), Some(4));
    let stderr = runner.stderr();
    assert!(stderr.contains("whole cgroup"), "{stderr}");
    assert!(
        stderr.contains(&neighbour.pid().to_string()),
        "names the neighbour: {stderr}"
    );
    assert!(
        events_of(&ws.journal(), "fault_intent").is_empty(),
        "nothing recorded"
    );
    assert_eq!(cgroup_tree(), tree);
    assert_eq!(cgroup_of(busy.pid()), shared.membership());
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

fn io_limit(path: &Path, throughput: &str, duration: &str) -> String {
    format!(
        "{{id: slow-disk, kind: disk-io-limit, target: writer, params: {{path: '{}', write_throughput: {throughput}}}, duration: {duration}}}",
        path.display()
    )
}

#[test]
#[ignore = "stock-kernel lane: scripts/vm-lane.sh"]
fn a_disk_io_limit_on_v2_writes_io_max_for_the_loop_device_and_reverts_exactly() {
    need_cgroup_v2();
    let _serial = util::serial();
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
    let yaml = resource_experiment(
        "v2-io",
        &format!("writer: {{process: {{pid: {pid}}}}}"),
        &[io_limit(fs.mount_point(), "2MiB", "10s")],
    );
    let live = Live::start("v2-io", &yaml, 1);
    let io_max = std::fs::read_to_string(faultline_group_of(pid).join("io.max")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (before, start) = (written_bytes(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let rate = (written_bytes(pid) - before) as f64 / start.elapsed().as_secs_f64();
    println!(
        "io.max {}; measured {:.2} MiB/s",
        io_max.trim(),
        rate / 1048576.0
    );
    live.end(0);
    assert!(io_max.contains("wbps=2097152"), "{io_max}");
    assert!(
        rate <= 2.0 * 1048576.0 * 1.3,
        "{:.2} MiB/s",
        rate / 1048576.0
    );
    assert_eq!(cgroup_of(pid), app.membership());
    assert_eq!(cgroup_tree(), tree);
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
    let yaml = resource_experiment(
        "crash-cpu",
        &format!("busy: {{process: {{pid: {}}}}}", busy.pid()),
        &[cpu_limit("busy", "20%", "90s")],
    );
    crash_both_ways(
        "crash-cpu",
        &yaml,
        true,
        &|| cgroup_of(busy.pid()).contains("faultline-"),
        &|| cgroup_of(busy.pid()) == app.membership() && cgroup_tree() == tree,
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
    let yaml = resource_experiment(
        "crash-io",
        &format!("writer: {{process: {{pid: {}}}}}", victim.pid()),
        &[io_limit(fs.mount_point(), "1MiB", "90s")],
    );
    crash_both_ways(
        "crash-io",
        &yaml,
        true,
        &|| cgroup_of(victim.pid()).contains("faultline-"),
        &|| cgroup_of(victim.pid()) == app.membership() && cgroup_tree() == tree,
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
    let yaml = resource_experiment(
        "crash-memory",
        "",
        &["{id: hog, kind: memory-pressure, params: {size: 128MiB}, duration: 90s}".into()],
    );
    crash_both_ways(
        "crash-memory",
        &yaml,
        false,
        &|| hog_pids().len() == 1,
        &|| wait_for(Duration::from_secs(5), || hog_pids().is_empty()),
    );
}
