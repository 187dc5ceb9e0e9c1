#!/usr/bin/env python3
"""Network-delay benchmark: how exact is faultline's delay, and how many packets/s does it keep?

Two network namespaces joined by a veth pair (10.x addresses, created here, deleted on exit
and on Ctrl-C). A TCP echo server runs in namespace B; faultline delays namespace A's egress
to it (`network-delay`, `netns: A`, `remote: [B]`, the echo port, `protocol: tcp`).

  accuracy   For each delay (1, 10, 50, 100 ms) a client in A measures request/response
             round trips on one connection (--samples, paced 5-10 ms) while the fault is live.
             error = RTT - (delay + baseline p50); the baseline is measured the same way with
             no fault. Done with both CPUs idle, then saturated (stress-ng --cpu 2, or two
             Python busy loops). Backends: nfqueue always; netem when `tc qdisc add ... netem`
             works in a scratch namespace (otherwise a row says why not).
  throughput iperf3 UDP, 64-byte payloads, from A to B at increasing rates through a 1 ms
             nfqueue delay: the highest rate with < 0.1 % loss, and the journal's
             delayed/bypassed counters (bypassed packets went through undelayed).

Targets (issue #3): mean error <= 0.2 ms and p99 error <= 1 ms idle; >= 100k pps lossless.

Usage: scripts/bench_delay.py [--samples 300] [--faultline target/release/faultline]
                              [--skip-saturated] [--skip-throughput]
Needs root. Every process started is stopped by PID; every wait is bounded.
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DELAYS_MS = [1, 10, 50, 100]
RATES_PPS = [25_000, 50_000, 100_000, 150_000, 200_000]
ECHO_PORT = 7007
IPERF_PORT = 5201
PAYLOAD = 64
MEAN_TARGET_MS, P99_TARGET_MS, PPS_TARGET = 0.2, 1.0, 100_000
LOSS_LIMIT_PERCENT = 0.1

ECHO_SERVER = r"""
import socket, sys, threading
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Prints a JSON list of RTTs in ms. Pacing is random in [5, 10) ms so samples do not lock
# onto any timer's phase. A few warm-up echoes are discarded.
ECHO_CLIENT = r"""
import json, random, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
s = socket.create_connection((host, port), timeout=2)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(2)
msg = b"x" * 64
rtts = []
for i in range(n + 5):
    start = time.perf_counter()
    s.sendall(msg)
    got = 0
    while got < len(msg):
        chunk = s.recv(len(msg) - got)
        if not chunk:
            raise SystemExit("echo server closed the connection")
        got += len(chunk)
    if i >= 5:
        rtts.append((time.perf_counter() - start) * 1000)
    time.sleep(rng.uniform(0.005, 0.010))
s.close()
print(json.dumps(rtts))
"""


def run(argv, timeout=30, check=True):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=check)


def in_ns(ns, argv):
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def stop(proc, sig=signal.SIGTERM, grace=5):
    """Stop one process we started, by PID, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class Net:
    """Namespaces A and B joined by a veth pair; `close` deletes both (and so the veth)."""

    def __init__(self):
        pid = os.getpid()
        self.a, self.b = f"flbenchA{pid}", f"flbenchB{pid}"
        self.subnet = f"10.{200 + pid % 50}.{pid % 250}"
        self.ip_a, self.ip_b = f"{self.subnet}.1", f"{self.subnet}.2"
        self.created = []
        try:
            for ns in (self.a, self.b):
                run(["ip", "netns", "add", ns])
                self.created.append(ns)
            veth_a, veth_b = f"flva{pid}", f"flvb{pid}"
            run(["ip", "-n", self.a, "link", "add", veth_a, "type", "veth",
                 "peer", "name", veth_b, "netns", self.b])
            for ns, dev, ip in ((self.a, veth_a, self.ip_a), (self.b, veth_b, self.ip_b)):
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def close(self):
        for ns in reversed(self.created):
            run(["ip", "netns", "del", ns], check=False)
        self.created = []


def netem_support():
    """(True, "") when netem can be installed here, else (False, why not): tried for real in a
    scratch namespace, so the answer is this kernel's, not a guess."""
    ns = f"flbenchN{os.getpid()}"
    try:
        run(["ip", "netns", "add", ns])
    except subprocess.CalledProcessError as e:
        return False, f"scratch namespace: {e.stderr.strip()}"
    try:
        # A veth pair: every kernel with namespaces has it (the dummy driver may be absent).
        run(["ip", "-n", ns, "link", "add", "flscratch0", "type", "veth", "peer", "name",
             "flscratch1"])
        run(["ip", "-n", ns, "link", "set", "flscratch0", "up"])
        out = run(in_ns(ns, ["tc", "qdisc", "add", "dev", "flscratch0", "root", "netem",
                             "delay", "1ms"]), check=False)
        if out.returncode != 0:
            return False, (out.stderr.strip().splitlines() or ["tc failed"])[0]
        return True, ""
    except subprocess.CalledProcessError as e:
        return False, f"scratch network: {e.stderr.strip()}"
    finally:
        run(["ip", "netns", "del", ns], check=False)


def wait_connectable(net, port, timeout=10):
    probe = f"import socket; socket.create_connection(('{net.ip_b}', {port}), timeout=0.5).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(in_ns(net.a, [sys.executable, "-c", probe]), check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {net.ip_b}:{port} after {timeout} s")


def measure_rtts(net, samples, slowest_ms):
    timeout = 30 + samples * (slowest_ms + 30) / 1000
    out = run(in_ns(net.a, [sys.executable, "-c", ECHO_CLIENT, net.ip_b, str(ECHO_PORT),
                            str(samples)]), timeout=timeout)
    return json.loads(out.stdout)


def percentile(values, p):
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * p // 100)))
    return ordered[int(rank) - 1]


class Fault:
    """One `faultline run` of a network-delay fault, stopped with SIGINT (which reverts it)."""

    def __init__(self, faultline, net, workdir, name, delay_ms, backend, protocol, port,
                 duration_s):
        self.dir = workdir / name
        self.dir.mkdir()
        exp = self.dir / "delay.yaml"
        exp.write_text(f"""apiVersion: faultline/v1
metadata: {{name: bench-{name}}}
max_duration: {duration_s + 60}s
targets:
  server:
    network: {{netns: {net.a}, remote: ['{net.ip_b}'], remote_ports: [{port}], protocol: {protocol}}}
faults:
  - {{id: slow, kind: network-delay, target: server, duration: {duration_s}s,
     params: {{delay: {delay_ms}ms, backend: {backend}}}}}
""")
        self.reports = self.dir / "reports"
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(self.dir / "state"))
        env.pop("FAULTLINE_LOG", None)
        self.stderr = open(self.dir / "stderr", "w+")
        self.proc = subprocess.Popen(
            [faultline, "run", str(exp), "--quiet", "--report-dir", str(self.reports)],
            env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.stderr)

    def journal(self):
        files = sorted(self.reports.glob("*.jsonl")) if self.reports.exists() else []
        if not files:
            return []
        events = []
        for line in files[-1].read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line still being written
        return events

    def events(self, kind):
        return [e for e in self.journal() if e.get("event") == kind]

    def wait_injected(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events("fault_injected"):
                return
            if self.proc.poll() is not None or self.events("fault_injection_failed"):
                break
            time.sleep(0.02)
        raise RuntimeError(f"fault not injected within {timeout} s: {self.error()}")

    def error(self):
        failed = self.events("fault_injection_failed")
        if failed:
            return failed[0].get("error")
        self.stderr.seek(0)
        return self.stderr.read().strip()[-500:] or "no error output"

    def finish(self):
        """SIGINT (faultline reverts and ends `interrupted`); returns the revert's `achieved`."""
        stop(self.proc, signal.SIGINT, grace=20)
        self.stderr.close()
        reverted = self.events("fault_reverted")
        if not reverted:
            raise RuntimeError(f"no fault_reverted event (exit {self.proc.returncode})")
        return reverted[0].get("achieved") or []

    def kill(self):
        stop(self.proc, signal.SIGINT, grace=20)
        if not self.stderr.closed:
            self.stderr.close()


def achieved_counts(achieved):
    """The delayer's own counters from a revert record (None where the backend has none)."""
    counts = next((a for a in achieved if "packets_delayed" in a), {})
    stats = next((a["achieved"] for a in achieved
                  if isinstance(a.get("achieved"), dict) and "lateness_ms" in a["achieved"]), {})
    return counts, stats


def cpu_hogs():
    """Saturate both CPUs; returns the processes (stopped by PID by the caller)."""
    stress = shutil.which("stress-ng")
    if stress:
        return [subprocess.Popen([stress, "--cpu", "2", "--timeout", "600s", "--quiet"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)], "stress-ng --cpu 2"
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2)], "2 Python busy loops"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def accuracy(faultline, net, workdir, backends, samples, load):
    print(f"{load}: load average before {loadavg()}", file=sys.stderr)
    rows = []
    baseline = measure_rtts(net, samples, 1)
    base_p50 = percentile(baseline, 50)
    rows.append((load, "baseline", 0, baseline, 0.0, None))
    for backend in backends:
        for delay in DELAYS_MS:
            duration = int(samples * (delay + 15) / 1000) + 30
            fault = Fault(faultline, net, workdir, f"{load}-{backend}-{delay}ms", delay,
                          backend, "tcp", ECHO_PORT, duration)
            try:
                fault.wait_injected()
                rtts = measure_rtts(net, samples, delay)
                achieved = fault.finish()
            finally:
                fault.kill()
            errors = [r - (delay + base_p50) for r in rtts]
            rows.append((load, backend, delay, errors, base_p50, achieved))
    return rows


def print_accuracy(rows, samples, netem_reason):
    print(f"\ndelay accuracy: {samples} TCP echoes (64 B) on one connection per row, "
          f"error = RTT - (delay + baseline p50), ms\n")
    print("| CPUs | backend | delay ms | baseline p50 | mean error | p50 error | p99 error "
          "| max error | delayer lateness p99 | target met? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for load, backend, delay, errors, base_p50, achieved in rows:
        if achieved is None:
            print(f"| {load} | no fault (RTT) | 0 | {percentile(errors, 50):.3f} | "
                  f"mean RTT {statistics.mean(errors):.3f} | - | p99 RTT {percentile(errors, 99):.3f} "
                  f"| max RTT {max(errors):.3f} | - | - |")
            continue
        mean, p50, p99 = statistics.mean(errors), percentile(errors, 50), percentile(errors, 99)
        _, stats = achieved_counts(achieved)
        late = stats.get("lateness_ms", {}).get("p99")
        late = f"{late:.3f}" if late is not None else "-"
        if load == "idle":
            met = "yes" if abs(mean) <= MEAN_TARGET_MS and p99 <= P99_TARGET_MS else "NO"
        else:
            met = ("yes" if abs(mean) <= MEAN_TARGET_MS else "NO") + " (mean; p99 target is idle only)"
        print(f"| {load} | {backend} | {delay} | {base_p50:.3f} | {mean:+.3f} | {p50:+.3f} | "
              f"{p99:+.3f} | {max(errors):+.3f} | {late} | {met} |")
    if netem_reason:
        for load in sorted({r[0] for r in rows}, reverse=True):
            print(f"| {load} | netem: unavailable ({netem_reason}) | - | - | - | - | - | - | - | - |")


def iperf(net, rate_pps, seconds=3):
    bits = rate_pps * PAYLOAD * 8
    out = run(in_ns(net.a, ["iperf3", "-c", net.ip_b, "-p", str(IPERF_PORT), "-u",
                            "-l", str(PAYLOAD), "-b", str(bits), "-w", "2M", "-t", str(seconds),
                            "-J"]),
              timeout=seconds + 20, check=False)
    try:
        result = json.loads(out.stdout)
        total = result["end"]["sum"]
        return {"sent": total["packets"], "lost": total["lost_packets"],
                "loss": total["lost_percent"], "pps": total["packets"] / seconds}
    except (json.JSONDecodeError, KeyError) as e:
        raise RuntimeError(f"iperf3 at {rate_pps} pps: {e}: {out.stdout[-300:]} {out.stderr[-300:]}")


def throughput(faultline, net, workdir):
    server = subprocess.Popen(in_ns(net.b, ["iperf3", "-s", "-p", str(IPERF_PORT), "-B",
                                            net.ip_b]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_connectable(net, IPERF_PORT)
        for rate in RATES_PPS:
            base = iperf(net, rate)
            fault = Fault(faultline, net, workdir, f"pps-{rate}", 1, "nfqueue", "udp",
                          IPERF_PORT, 60)
            try:
                fault.wait_injected()
                delayed = iperf(net, rate)
                achieved = fault.finish()
            finally:
                fault.kill()
            rows.append((rate, base, delayed, achieved))
            time.sleep(0.5)
    finally:
        stop(server)
    return rows


def print_throughput(rows):
    print(f"\nlossless packets/s through a 1 ms nfqueue delay: iperf3 UDP, {PAYLOAD} B payloads, "
          f"3 s per rate, lossless = < {LOSS_LIMIT_PERCENT} % lost\n")
    print("| offered pps | sent pps (no fault) | loss % (no fault) | sent pps (delayed) "
          "| loss % (delayed) | packets delayed | bypassed | delayer max held | lossless? |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = 0
    for rate, base, delayed, achieved in rows:
        counts, stats = achieved_counts(achieved)
        lossless = delayed["loss"] < LOSS_LIMIT_PERCENT and counts.get("packets_bypassed", 0) == 0
        # iperf3 paces a few packets short of the offered rate over 3 s (99,976 of 100,000
        # pps): the offered rate counts when at least 99 % of it was actually sent.
        if lossless and delayed["pps"] >= 0.99 * rate:
            best = max(best, rate)
        print(f"| {rate:,} | {base['pps']:,.0f} | {base['loss']:.3f} | {delayed['pps']:,.0f} | "
              f"{delayed['loss']:.3f} | {counts.get('packets_delayed', '-'):,} | "
              f"{counts.get('packets_bypassed', '-'):,} | {stats.get('max_held', '-')} | "
              f"{'yes' if lossless else 'no'} |")
    met = "yes" if best >= PPS_TARGET else "NO"
    print(f"\n| highest lossless offered rate (delayed, nothing bypassed) | target | target met? |")
    print("|---|---|---|")
    print(f"| {best:,.0f} pps | >= {PPS_TARGET:,} pps | {met} |")


def interrupted(_signum, _frame):
    # SIGTERM takes the same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--faultline", default=str(ROOT / "target" / "release" / "faultline"))
    parser.add_argument("--skip-saturated", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, iptables)")
    if not os.path.exists(args.faultline):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    signal.signal(signal.SIGTERM, interrupted)

    netem_ok, netem_reason = netem_support()
    backends = ["nfqueue"] + (["netem"] if netem_ok else [])
    net = echo = None
    hogs = []
    try:
        net = Net()
        echo = subprocess.Popen(in_ns(net.b, [sys.executable, "-c", ECHO_SERVER, net.ip_b,
                                              str(ECHO_PORT)]))
        wait_connectable(net, ECHO_PORT)
        with tempfile.TemporaryDirectory(prefix="fl-bench-delay-") as tmp:
            workdir = pathlib.Path(tmp)
            rows = accuracy(args.faultline, net, workdir, backends, args.samples, "idle")
            hog_name = None
            if not args.skip_saturated:
                hogs, hog_name = cpu_hogs()
                time.sleep(1)
                try:
                    rows += accuracy(args.faultline, net, workdir, backends, args.samples,
                                     "saturated")
                finally:
                    for hog in hogs:
                        stop(hog, signal.SIGKILL)
                    hogs = []
            pps_rows = [] if args.skip_throughput else throughput(args.faultline, net, workdir)
        if hog_name:
            print(f"\n(saturated = {hog_name}, nice 0, running during baseline and measurement)")
        print_accuracy(rows, args.samples, "" if netem_ok else netem_reason)
        if pps_rows:
            print_throughput(pps_rows)
    finally:
        for hog in hogs:
            stop(hog, signal.SIGKILL)
        stop(echo)
        if net:
            net.close()


if __name__ == "__main__":
    main()
