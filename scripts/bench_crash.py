#!/usr/bin/env python3
"""Crash benchmark: how long does a fault stay on the host after faultline is killed -9?

Scenario: a `sleep` process is frozen (process-stop, 60 s); once the journal says it is
injected, the runner gets SIGKILL. A monitor polls /proc/<pid>/stat every millisecond and
measures how long the process stays stopped after the kill, up to LIMIT_S seconds.

  faultline               the default: its watchdog reverts when the runner dies
  faultline --no-watchdog what the peers do (chaosd, ChaosBlade, Chaos Toolkit have no
                          dead-man's switch): the fault stays until `faultline recover`

Usage: scripts/bench_crash.py [--runs 5] [--faultline target/release/faultline]
Every process started is stopped by PID; `faultline recover` cleans up after each run.
"""
import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import FaultlineRun, interrupted, proc_state, run, stop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIMIT_S = 5.0


def one_run(faultline, workdir, index, extra_args):
    tag = f"{os.getpid()}{index:03d}"
    victim = subprocess.Popen(["sleep", f"300.{tag}"], stdin=subprocess.DEVNULL)
    experiment = (
        "apiVersion: faultline/v1\nmetadata: {name: crash}\nmax_duration: 2m\n"
        f"targets: {{victim: {{process: {{cmdline: '^sleep 300\\.{tag}$'}}}}}}\n"
        "faults: [{id: freeze, kind: process-stop, target: victim, duration: 60s}]\n"
    )
    fl = FaultlineRun(faultline, workdir, f"run{index}", experiment, extra_args)
    try:
        fl.wait_injected()
        if proc_state(victim.pid) != "T":
            raise RuntimeError("the victim is not stopped after the injection")
        os.kill(fl.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        fl.proc.wait(5)
        while proc_state(victim.pid) == "T" and time.monotonic() - killed < LIMIT_S:
            time.sleep(0.001)
        stopped_ms = (time.monotonic() - killed) * 1000
        resumed = proc_state(victim.pid) != "T"
        return stopped_ms, resumed
    finally:
        # Whatever the run left: recover with its own state dir, then stop the victim.
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(fl.dir / "state"))
        subprocess.run([faultline, "recover"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30, check=False)
        fl.close()
        stop(victim, signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--faultline", default=str(ROOT / "target/release/faultline"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    if not pathlib.Path(args.faultline).exists():
        run(["cargo", "build", "--release"], timeout=1800)
    modes = [("faultline (watchdog)", []), ("faultline --no-watchdog", ["--no-watchdog"])]
    results = {}
    with tempfile.TemporaryDirectory(prefix="faultline-bench-crash-") as tmp:
        workdir = pathlib.Path(tmp)
        for name, extra in modes:
            results[name] = [one_run(args.faultline, workdir, len(results) * 100 + i, extra)
                             for i in range(args.runs)]
    print(f"\nfault left on the host after `kill -9` of the runner (process-stop, {args.runs} "
          f"runs each, watched up to {LIMIT_S:.0f} s)\n")
    print("| mode | still stopped after the kill, ms: mean | min | max | resumed without a person |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        ms = [r[0] for r in runs]
        resumed = sum(r[1] for r in runs)
        if resumed == 0:
            print(f"| {name} | > {LIMIT_S * 1000:.0f} (until `faultline recover`) | | | 0 of {len(runs)} |")
        else:
            print(f"| {name} | {statistics.mean(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} | "
                  f"{resumed} of {len(runs)} |")


if __name__ == "__main__":
    main()
