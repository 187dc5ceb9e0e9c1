#!/usr/bin/env python3
"""Footprint benchmark: what the runner costs the host it tests, and how `plan` scales.

  run      10 probes (5 http, 5 tcp) at 10 Hz against a local HTTP server while a process
           is frozen for --seconds: the runner's RSS every second (first, at half time, last,
           peak) and its CPU time as a share of one core. RSS must stay flat in the run's
           length: a run twice as long must not hold more.
  plan     `faultline plan` of a cmdline selector over --processes candidate processes
           (sleeps this script starts): wall and CPU time, best of 3.

Usage: scripts/bench_footprint.py [--seconds 20] [--processes 1000]
                                  [--faultline target/release/faultline]
Prints a table. Only 127.0.0.1 is contacted; every process started is stopped by PID.
"""
import argparse
import http.server
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import faultline_binary, interrupted, stop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


class Server(http.server.ThreadingHTTPServer):
    # Ten probes connect at once every 100 ms: more than socketserver's backlog of 5.
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The runner closes the probes it cancels at the end of a run, and a reply to one of
        # them finds the connection gone: expected, and not worth a traceback in the table.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def experiment(port, victim, seconds):
    probes = []
    for n in range(5):
        probes.append(f"  h{n}: {{http: {{url: 'http://127.0.0.1:{port}/h{n}'}}, "
                      "interval: 100ms, timeout: 80ms}")
        probes.append(f"  t{n}: {{tcp: {{address: '127.0.0.1:{port}'}}, "
                      "interval: 100ms, timeout: 80ms}")
    names = ", ".join(f"h{n}, t{n}" for n in range(5))
    return (
        "apiVersion: faultline/v1\nmetadata: {name: footprint}\n"
        f"max_duration: {seconds + 60}s\n"
        "probes:\n" + "\n".join(probes) + "\n"
        f"steady_state: {{before: {{probes: [{names}], wait_until: 10s}}, "
        f"during: {{probes: [{names}]}}}}\n"
        # A late sample on a loaded box must not end the measurement early.
        "abort: {on_probe_failure: false}\n"
        f"targets: {{victim: {{process: {{pid: {victim}}}}}}}\n"
        f"faults: [{{id: freeze, kind: process-stop, target: victim, duration: {seconds}s}}]\n"
    )


def measure_run(faultline, seconds, tmp):
    server = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    victim = subprocess.Popen(["sleep", str(seconds + 120)])
    runner = None
    try:
        path = tmp / f"footprint-{seconds}.yaml"
        path.write_text(experiment(server.server_address[1], victim.pid, seconds))
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(tmp / f"state-{seconds}"))
        runner = subprocess.Popen(
            [faultline, "run", str(path), "--quiet", "--report-dir", str(tmp / "reports")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = []
        started = time.monotonic()
        cpu_start = None
        while runner.poll() is None and time.monotonic() - started < seconds + 60:
            try:
                if cpu_start is None:
                    cpu_start = (time.monotonic(), cpu_seconds(runner.pid))
                samples.append(rss_kib(runner.pid))
                cpu_end = (time.monotonic(), cpu_seconds(runner.pid))
            except OSError:
                break
            time.sleep(1)
        _, errors = runner.communicate(timeout=60)
        if runner.returncode != 0:
            print(errors[-2000:], file=sys.stderr)
        cpu_share = (cpu_end[1] - cpu_start[1]) / max(cpu_end[0] - cpu_start[0], 1e-9)
        return samples, cpu_share, runner.returncode
    finally:
        stop(runner, signal.SIGINT, grace=20)
        stop(victim, signal.SIGKILL)
        server.shutdown()


def measure_plan(faultline, processes, tmp):
    tag = f"fl-footprint-{os.getpid()}"
    children = []
    try:
        for _ in range(processes):
            # argv[0] is the tag: `tag 600` in /proc/PID/cmdline, sleep's own name in comm.
            children.append(subprocess.Popen([tag, "600"], executable="/bin/sleep"))
        path = tmp / "plan.yaml"
        path.write_text(
            "apiVersion: faultline/v1\nmetadata: {name: plan-scan}\nmax_duration: 1m\n"
            f"targets: {{all: {{process: {{cmdline: '^{tag} 600$', count: 1}}}}}}\n"
            "faults: [{id: freeze, kind: process-stop, target: all, duration: 5s}]\n")
        best = None
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            out = subprocess.run([faultline, "plan", str(path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, check=True, timeout=120)
            wall = time.monotonic() - t0
            if f"{processes} matched" not in out.stdout and str(processes) not in out.stdout:
                sys.exit(f"plan did not see the {processes} processes:\n{out.stdout[-1500:]}")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if best is None or wall < best[0]:
                best = (wall, cpu)
        return best
    finally:
        for child in children:
            stop(child, signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--faultline", default=str(ROOT / "target/release/faultline"))
    args = parser.parse_args()
    args.faultline = faultline_binary(args.faultline)
    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="faultline-footprint-") as tmp:
        tmp = pathlib.Path(tmp)
        rows = []
        for seconds in (args.seconds, 3 * args.seconds):
            samples, cpu, code = measure_run(args.faultline, seconds, tmp)
            if len(samples) < 3:
                sys.exit(f"the run ended early (exit {code})")
            rows.append((seconds, samples, cpu, code))
        wall, cpu = measure_plan(args.faultline, args.processes, tmp)
    print("\nrunner footprint, 10 probes at 10 Hz during a process freeze\n")
    print("| fault | exit | RSS at 2 s | RSS at half | RSS at end | peak | CPU (share of a core) |")
    print("|---|---|---|---|---|---|---|")
    for seconds, samples, cpu_share, code in rows:
        mib = [s / 1024 for s in samples]
        print(f"| {seconds} s | {code} | {mib[min(2, len(mib) - 1)]:.1f} MiB | "
              f"{mib[len(mib) // 2]:.1f} MiB | {mib[-1]:.1f} MiB | {max(mib):.1f} MiB | "
              f"{100 * cpu_share:.1f} % |")
    print(f"\n`faultline plan` over {args.processes} candidate processes: "
          f"{1000 * wall:.0f} ms wall, {1000 * cpu:.0f} ms CPU (best of 3)")


if __name__ == "__main__":
    main()
