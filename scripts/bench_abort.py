#!/usr/bin/env python3
"""Abort-latency benchmark: how long does a fault stay on the host after the SLO breaks?

Scenario (identical for every tool): faultline's demo service runs on loopback; each tool
freezes the service's worker (SIGSTOP) for 10 s while probing /health every 200 ms with an
80 ms timeout, must abort on the first failed sample, and must thaw the worker (SIGCONT).
A neutral monitor thread polls /proc/<worker>/stat every millisecond and measures how long
the worker really stayed frozen. Tools compared side by side in one run:

  faultline       `faultline run` (abort on probe failure is the default)
  chaostoolkit    `chaos run --hypothesis-strategy continuously --hypothesis-frequency 0.2
                   --fail-fast --rollback-strategy always` (its fastest documented abort
                   path that still rolls back)

Usage: scripts/bench_abort.py [--runs 3] [--faultline target/release/faultline] [--no-ctk]
Chaos Toolkit is installed into a private venv (pip, from PyPI) on first use.
Only 127.0.0.1 is contacted. Every process started is stopped by PID.
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import proc_state  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FREEZE_SECONDS = 10
VENV = pathlib.Path(os.environ.get("FAULTLINE_BENCH_VENV", "/tmp/faultline-bench-venv"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FreezeMonitor(threading.Thread):
    """Records when the worker entered and left the stopped state (T)."""

    def __init__(self, pid, limit):
        super().__init__(daemon=True)
        self.pid, self.limit = pid, limit
        self.frozen_at = self.thawed_at = None

    def run(self):
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            state = proc_state(self.pid)
            now = time.monotonic()
            if state == "T" and self.frozen_at is None:
                self.frozen_at = now
            elif state != "T" and self.frozen_at is not None:
                self.thawed_at = now
                return
            time.sleep(0.001)

    def frozen_ms(self):
        if self.frozen_at is None:
            return None
        end = self.thawed_at if self.thawed_at is not None else time.monotonic()
        return (end - self.frozen_at) * 1000


class Demo:
    def __init__(self, faultline, workdir):
        self.port = free_port()
        self.pidfile = workdir / "worker.pid"
        self.proc = subprocess.Popen(
            [faultline, "demo-target", "--listen", f"127.0.0.1:{self.port}",
             "--pidfile", str(self.pidfile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pidfile.exists() and self.pidfile.read_text().strip():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        break
                except OSError:
                    pass
            time.sleep(0.05)
        self.worker = int(self.pidfile.read_text().strip())

    def stop(self):
        os.kill(self.worker, signal.SIGCONT) if proc_state(self.worker) else None
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def faultline_run(faultline, demo, workdir):
    exp = workdir / "freeze.yaml"
    exp.write_text(f"""apiVersion: faultline/v1
metadata: {{name: bench-freeze}}
targets: {{worker: {{process: {{pidfile: {demo.pidfile}}}}}}}
probes:
  health:
    http: {{url: "http://127.0.0.1:{demo.port}/health"}}
    interval: 200ms
    timeout: 80ms
steady_state:
  before: {{probes: [health], wait_until: 5s}}
  during: {{probes: [health]}}
faults: [{{id: freeze, kind: process-stop, target: worker, at: 500ms, duration: {FREEZE_SECONDS}s}}]
max_duration: 1m
""")
    cmd = [faultline, "run", str(exp), "--quiet", "--report-dir", str(workdir / "reports")]
    env = dict(os.environ, FAULTLINE_STATE_DIR=str(workdir / "state"))
    return cmd, env


def ctk_run(demo, workdir):
    exp = workdir / "freeze.json"
    kill = shutil.which("kill") or "/bin/kill"
    exp.write_text(json.dumps({
        "title": "bench-freeze",
        "description": "freeze the demo worker",
        "steady-state-hypothesis": {
            "title": "healthy",
            "probes": [{"type": "probe", "name": "health", "tolerance": 200,
                        "provider": {"type": "http", "timeout": 0.08,
                                     "url": f"http://127.0.0.1:{demo.port}/health"}}]},
        "method": [
            {"type": "action", "name": "wait", "provider": {"type": "process", "path": "true"},
             "pauses": {"after": 0.5}},
            {"type": "action", "name": "freeze",
             "provider": {"type": "process", "path": kill, "arguments": ["-STOP", str(demo.worker)]},
             "pauses": {"after": FREEZE_SECONDS}}],
        "rollbacks": [{"type": "action", "name": "thaw",
                       "provider": {"type": "process", "path": kill,
                                    "arguments": ["-CONT", str(demo.worker)]}}],
    }))
    cmd = [str(VENV / "bin" / "chaos"), "--no-log-file", "run", str(exp),
           "--journal-path", str(workdir / "journal.json"),
           "--hypothesis-strategy", "continuously", "--hypothesis-frequency", "0.2",
           "--fail-fast", "--rollback-strategy", "always"]
    return cmd, dict(os.environ)


def ensure_ctk():
    if (VENV / "bin" / "chaos").exists():
        return True
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q",
                        "chaostoolkit==1.19.0", "chaostoolkit-lib==1.44.0"], check=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"chaostoolkit unavailable ({e}); measuring faultline only", file=sys.stderr)
        return False


def one_run(tool, faultline):
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        demo = Demo(faultline, workdir)
        try:
            cmd, env = faultline_run(faultline, demo, workdir) if tool == "faultline" else ctk_run(demo, workdir)
            monitor = FreezeMonitor(demo.worker, FREEZE_SECONDS + 30)
            monitor.start()
            started = time.monotonic()
            proc = subprocess.run(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=FREEZE_SECONDS + 60)
            wall = time.monotonic() - started
            monitor.join(1)
            return {"frozen_ms": monitor.frozen_ms(), "wall_s": wall, "exit": proc.returncode,
                    "thawed": monitor.thawed_at is not None}
        finally:
            demo.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--faultline", default=str(ROOT / "target" / "release" / "faultline"))
    parser.add_argument("--no-ctk", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(args.faultline):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tools = ["faultline"] + ([] if args.no_ctk or not ensure_ctk() else ["chaostoolkit"])
    results = {t: [one_run(t, args.faultline) for _ in range(args.runs)] for t in tools}

    print(f"\nfault left on the host after the SLO broke (worker frozen, {FREEZE_SECONDS} s fault, "
          f"200 ms probe interval, {args.runs} runs each)\n")
    print("| tool | frozen ms mean | min | max | thawed | exit codes | wall s mean | vs faultline |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for tool in tools:
        rs = results[tool]
        frozen = [r["frozen_ms"] for r in rs if r["frozen_ms"] is not None]
        mean = statistics.mean(frozen) if frozen else float("nan")
        base = base or mean
        print(f"| {tool} | {mean:.0f} | {min(frozen):.0f} | {max(frozen):.0f} | "
              f"{sum(r['thawed'] for r in rs)}/{len(rs)} | {sorted(set(r['exit'] for r in rs))} | "
              f"{statistics.mean(r['wall_s'] for r in rs):.1f} | {mean / base:.1f}x |")


if __name__ == "__main__":
    main()
