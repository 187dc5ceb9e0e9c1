//! End-to-end network faults through the `faultline` binary, in namespaces the tests create
//! (`TestNet`: two namespaces joined by a veth pair, removed on drop).

use std::net::TcpStream;
use std::time::Duration;

use faultline::sys::iptables::{self, Family};
use faultline::sys::netns::{Netns, TestNet, run_in};

use crate::util::{
    self, Runner, Workspace, connects, echo_rtts, echo_server_in, events_of, listen_in, percentile,
    wait_for,
};

fn injected(ws: &Workspace) -> bool {
    !events_of(&ws.journal(), "fault_injected").is_empty()
}

#[test]
fn a_partition_cuts_the_flow_and_its_revert_restores_the_ruleset_byte_for_byte() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let (_listener, addr) = listen_in(&net.b, &net.ip_b);
    let (_other, other) = listen_in(&net.b, &net.ip_b);
    let variant = iptables::detect(Some(&Netns::from(&net.a))).unwrap();
    let before = iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap();
    assert_eq!(connects(&net.a, addr, 3), 3);

    let file = ws.write(
        "partition.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: partition}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], remote_ports: [{}], protocol: tcp}}}}}}\n\
             faults: [{{id: cut, kind: network-partition, target: server, duration: 3s}}]\n",
            net.a,
            net.ip_b,
            addr.port()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    assert_eq!(connects(&net.a, addr, 5), 0, "the partitioned flow is cut");
    assert_eq!(
        connects(&net.a, other, 3),
        3,
        "another port of the same host is untouched"
    );
    assert_eq!(
        runner.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        runner.stderr()
    );

    assert_eq!(
        connects(&net.a, addr, 5),
        5,
        "every connect succeeds again after the revert"
    );
    let after = iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap();
    assert_eq!(before, after, "the ruleset is exactly as it was");
    let events = ws.journal();
    let reverted = events_of(&events, "fault_reverted");
    assert_eq!(reverted.len(), 1);
    // The revert reports what the partition did: the SYNs it dropped.
    let dropped = reverted[0]["achieved"][0]["achieved"]["action"]["packets"]
        .as_u64()
        .unwrap();
    assert!(dropped >= 5, "dropped {dropped} packets: {}", reverted[0]);
}

#[test]
fn kill_9_during_a_partition_leaves_rules_that_recover_removes_exactly() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let (_listener, addr) = listen_in(&net.b, &net.ip_b);
    let variant = iptables::detect(Some(&Netns::from(&net.a))).unwrap();
    let before = iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap();
    let file = ws.write(
        "partition.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: crashed-partition}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], protocol: tcp}}}}}}\n\
             faults: [{{id: cut, kind: network-partition, target: server, params: {{mode: reject}}, duration: 50s}}]\n",
            net.a, net.ip_b
        ),
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    runner.crash();
    assert_eq!(
        connects(&net.a, addr, 3),
        0,
        "the crash left the partition in place"
    );
    assert!(!iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());

    util::recover_ok(&ws);
    assert_eq!(connects(&net.a, addr, 3), 3);
    assert!(iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
    assert_eq!(
        before,
        iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap()
    );
    assert_eq!(ws.state_records(), 0);
}

/// The NFQUEUE delayer, also on kernels with netem (whose delays the stock-kernel lane tests).
#[test]
fn a_delay_adds_exactly_the_requested_latency_and_goes_away_on_revert() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let addr = echo_server_in(&net.b, &net.ip_b);
    let baseline = percentile(&echo_rtts(&net.a, addr, 30, Duration::from_millis(5)), 50.0);
    let file = ws.write(
        "delay.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: delay}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], remote_ports: [{}], protocol: tcp}}}}}}\n\
             faults: [{{id: slow, kind: network-delay, target: server, params: {{delay: 50ms, backend: nfqueue}}, duration: 12s}}]\n",
            net.a,
            net.ip_b,
            addr.port()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    let rtts = echo_rtts(&net.a, addr, 150, Duration::from_millis(5));
    let (p50, p95, p99) = (
        percentile(&rtts, 50.0),
        percentile(&rtts, 95.0),
        percentile(&rtts, 99.0),
    );
    println!(
        "baseline p50 {baseline:.3} ms; delayed p50 {p50:.3} ms, p95 {p95:.3} ms, p99 {p99:.3} ms"
    );
    assert!(
        (p50 - (50.0 + baseline)).abs() <= 1.0,
        "p50 {p50:.3} ms for a 50 ms delay (baseline {baseline:.3})"
    );
    let fastest = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(fastest >= 50.0, "an echo came back early: {fastest:.3} ms");
    // Steal time on this shared VM delays a few echoes in 150 by 10 ms or more (p99 64 ms
    // seen in CI), so the tail bound is on p95: a delayer that holds packets too long shows
    // in many samples. The p99 accuracy (within 1 ms when the box is quiet) is measured by
    // the delay benchmark.
    assert!(p95 <= 50.0 * 1.25 + baseline, "p95 {p95:.3} ms");
    assert_eq!(
        runner.wait(Duration::from_secs(15)),
        Some(0),
        "{}",
        runner.stderr()
    );

    let after = percentile(&echo_rtts(&net.a, addr, 20, Duration::from_millis(5)), 50.0);
    assert!(
        after < 5.0,
        "the delay is gone after the revert: p50 {after:.3} ms"
    );
    let events = ws.journal();
    let reverted = events_of(&events, "fault_reverted")[0];
    let summary = reverted["summary"].as_str().unwrap();
    assert!(summary.contains("packets delayed"), "{summary}");
    assert!(iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
}

/// An experiment delaying A's TCP traffic to B by 100 ms through the NFQUEUE delayer for 50 s:
/// long enough for a test to crash the runner while it is live.
fn nfqueue_delay_for_50s(ws: &Workspace, net: &TestNet, name: &str) -> std::path::PathBuf {
    ws.write(
        "delay.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: {name}}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], protocol: tcp}}}}}}\n\
             faults: [{{id: slow, kind: network-delay, target: server, params: {{delay: 100ms, backend: nfqueue}}, duration: 50s}}]\n",
            net.a, net.ip_b
        ),
    )
}

#[test]
fn kill_9_during_an_nfqueue_delay_keeps_traffic_flowing_and_recover_restores_the_ruleset() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let addr = echo_server_in(&net.b, &net.ip_b);
    let variant = iptables::detect(Some(&Netns::from(&net.a))).unwrap();
    let before = iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap();
    let file = nfqueue_delay_for_50s(&ws, &net, "crashed-delay");
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    runner.crash();
    // The delayer died with the runner; `--queue-bypass` lets packets through undelayed.
    let rtts = echo_rtts(&net.a, addr, 10, Duration::from_millis(5));
    assert!(
        percentile(&rtts, 50.0) < 5.0,
        "traffic flows after the crash: {rtts:?}"
    );
    assert!(
        !iptables::leftovers(Some(&Netns::from(&net.a))).is_empty(),
        "the crash left the rules"
    );

    util::recover_ok(&ws);
    assert!(iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
    assert_eq!(
        before,
        iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap()
    );
}

/// With its watchdog (the default), a killed runner's rules are gone without anyone running
/// `recover`, and the ruleset is exactly what it was.
#[test]
fn kill_9_during_a_delay_leaves_no_rule_behind_with_the_watchdog() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let variant = iptables::detect(Some(&Netns::from(&net.a))).unwrap();
    let before = iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap();
    let file = nfqueue_delay_for_50s(&ws, &net, "watched-delay");
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    assert!(!iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
    runner.crash();
    // The record goes once the whole revert is done.
    assert!(
        util::wait_for(Duration::from_secs(3), || ws.state_records() == 0),
        "the watchdog reverted the delay: {}",
        runner.stderr()
    );
    assert!(iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
    assert_eq!(
        before,
        iptables::save(Some(&Netns::from(&net.a)), variant, Family::V4).unwrap()
    );
}

#[test]
fn a_netem_only_fault_on_a_kernel_without_netem_fails_before_anything_is_injected() {
    let reason = match faultline::sys::tc::netem_support() {
        faultline::sys::tc::Support::Available => {
            println!("skipped: this kernel has netem, so network-duplicate can be injected here");
            return;
        }
        faultline::sys::tc::Support::Missing { reason } => reason,
    };
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let file = ws.write(
        "dup.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: dup}}\nmax_duration: 1m\n\
             targets: {{peer: {{network: {{netns: {}, remote: ['{}']}}}}}}\n\
             faults: [{{id: dup, kind: network-duplicate, target: peer, params: {{probability: 5%}}, duration: 5s}}]\n",
            net.a, net.ip_b
        ),
    );
    let out = util::faultline(&ws)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("netem"),
        "the error names what is missing: {stderr}"
    );
    let events = ws.journal();
    assert!(events_of(&events, "fault_intent").is_empty());
    let failed = events_of(&events, "fault_injection_failed")[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(failed.contains(&reason[..20]), "{failed}");
}

#[test]
fn ipv6_traffic_is_delayed_too() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    let addr = echo_server_in(&net.b, &format!("[{}]", net.ip6_b));
    let file = ws.write(
        "delay6.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: delay6}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], remote_ports: [{}], protocol: tcp}}}}}}\n\
             faults: [{{id: slow, kind: network-delay, target: server, params: {{delay: 30ms}}, duration: 4s}}]\n",
            net.a,
            net.ip6_b,
            addr.port()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    let p50 = percentile(
        &echo_rtts(&net.a, addr, 30, Duration::from_millis(10)),
        50.0,
    );
    assert!(
        (29.5..32.0).contains(&p50),
        "IPv6 p50 {p50:.3} ms for a 30 ms delay"
    );
    assert_eq!(
        runner.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert!(iptables::leftovers(Some(&Netns::from(&net.a))).is_empty());
}

#[test]
fn the_operators_ssh_session_survives_a_total_loss_fault() {
    use std::io::{Read, Write};
    let _serial = util::serial();
    let ws = Workspace::new();
    let net = TestNet::new().expect("test network (needs root)");
    // "sshd" listens in namespace a (the host faultline acts on); the operator connects from b.
    let (listener, server) = listen_in(&net.a, &net.ip_a);
    let session = run_in(&net.b, move || {
        TcpStream::connect_timeout(&server, Duration::from_secs(2))
    })
    .unwrap()
    .expect("operator connects");
    let (mut server_side, client) = listener.accept().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = server_side.read(&mut buf) {
            if n == 0 || server_side.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let ssh_connection = format!(
        "{} {} {} {}",
        client.ip(),
        client.port(),
        server.ip(),
        server.port()
    );
    let (_other_listener, other) = listen_in(&net.b, &net.ip_b);

    let file = ws.write(
        "loss.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: total-loss}}\nmax_duration: 1m\n\
             targets: {{peer: {{network: {{netns: {}, remote: ['{}'], direction: both}}}}}}\n\
             faults: [{{id: black-hole, kind: network-loss, target: peer, params: {{probability: 100%}}, duration: 3s}}]\n",
            net.a, net.ip_b
        ),
    );
    let stderr_path = ws.path().join("run.stderr");
    let mut child = util::faultline(&ws)
        .env("SSH_CONNECTION", &ssh_connection)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || injected(&ws)));
    // Everything else between the two hosts is gone...
    assert_eq!(
        connects(&net.a, other, 3),
        0,
        "other traffic with the peer is dropped"
    );
    // ...but the operator's session still answers.
    let mut session = session;
    session
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    for _ in 0..5 {
        session.write_all(b"still here").unwrap();
        let mut buf = [0u8; 10];
        session
            .read_exact(&mut buf)
            .expect("the SSH session is untouched");
        assert_eq!(&buf, b"still here");
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&stderr_path).unwrap()
    );
    let events = ws.journal();
    let intent = events_of(&events, "fault_intent")[0];
    assert!(
        intent["details"]["traffic"]["protected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("SSH_CONNECTION")
    );
}
