//! End-to-end network faults through the `faultline` binary, in namespaces the tests create
//! (`TestNet`: two namespaces joined by a veth pair, removed on drop).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use faultline::sys::iptables::{self, Family};
use faultline::sys::netns::{TestNet, run_in};

use crate::util::{self, Runner, Workspace, events_of, wait_for};

/// A listening TCP socket in namespace `ns` (connections complete in the kernel backlog;
/// nobody needs to accept them).
fn listen_in(ns: &str, ip: &str) -> (TcpListener, SocketAddr) {
    let ip = ip.to_string();
    let listener = run_in(ns, move || TcpListener::bind(format!("{ip}:0")))
        .expect("enter namespace")
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// How many of `n` connects from namespace `ns` to `addr` succeed within 300 ms each.
fn connects(ns: &str, addr: SocketAddr, n: usize) -> usize {
    run_in(ns, move || {
        (0..n)
            .filter(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
            .count()
    })
    .unwrap()
}

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
    let variant = iptables::detect(Some(&net.a)).unwrap();
    let before = iptables::save(Some(&net.a), variant, Family::V4).unwrap();
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
    assert!(
        wait_for(Duration::from_secs(5), || injected(&ws)),
        "{}",
        runner.stderr()
    );
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
    let after = iptables::save(Some(&net.a), variant, Family::V4).unwrap();
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
    let variant = iptables::detect(Some(&net.a)).unwrap();
    let before = iptables::save(Some(&net.a), variant, Family::V4).unwrap();
    let file = ws.write(
        "partition.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: crashed-partition}}\nmax_duration: 1m\n\
             targets: {{server: {{network: {{netns: {}, remote: ['{}'], protocol: tcp}}}}}}\n\
             faults: [{{id: cut, kind: network-partition, target: server, params: {{mode: reject}}, duration: 50s}}]\n",
            net.a, net.ip_b
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(5), || injected(&ws)),
        "{}",
        runner.stderr()
    );
    runner.signal(nix::sys::signal::Signal::SIGKILL);
    runner.wait(Duration::from_secs(5));
    assert_eq!(
        connects(&net.a, addr, 3),
        0,
        "the crash left the partition in place"
    );
    assert!(!iptables::leftovers(Some(&net.a)).is_empty());

    let out = util::faultline(&ws).arg("recover").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(connects(&net.a, addr, 3), 3);
    assert!(iptables::leftovers(Some(&net.a)).is_empty());
    assert_eq!(
        before,
        iptables::save(Some(&net.a), variant, Family::V4).unwrap()
    );
    assert_eq!(ws.state_records(), 0);
}
