#!/usr/bin/env python3
"""Revert-latency benchmark: from an SLO breach to every fault reverted, per fault kind.

Each run injects one fault kind (or a mix) for 30 s while a command probe checks every 50 ms
that a marker file is absent; 0.5 s after the injection this script creates the marker, the
probe fails, the run aborts and reverts. The journal's abort record says how long the faults
stayed after the breach was detected (`breach_to_all_reverted_ms`), and each fault_reverted
event when that fault was gone.

Usage: scripts/bench_revert.py [--runs 3] [--kinds a,b] [--faultline target/release/faultline]
Prints a table. Needs root; only namespaces it creates are touched; every process it starts
is stopped by PID.
"""
import argparse
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import faultline_binary, FaultlineRun, interrupted  # noqa: E402
from crash_suite import fault_targets, kinds  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The slow case: two rule sets in one namespace, reverted one after the other.
MIXES = {
    "network-loss + network-partition": ["network-loss", "network-partition"],
    "every kind chosen at once": None,
}


def experiment(name, faults, marker):
    targets = {f"t{n}": target for n, (_, target, _) in enumerate(faults) if target}
    lines = []
    for n, (kind, target, params) in enumerate(faults):
        on = f", target: t{n}" if target else ""
        lines.append(f"  - {{id: f{n}, kind: {kind}{on}, params: {params}, duration: 30s}}")
    target_lines = "".join(f"  {k}: {v}\n" for k, v in targets.items())
    return (
        f"apiVersion: faultline/v1\nmetadata: {{name: '{name}'}}\nmax_duration: 1m\n"
        f"probes: {{marker: {{command: {{argv: [/usr/bin/test, '!', -e, '{marker}']}}, "
        "interval: 50ms, timeout: 40ms}}\n"
        "steady_state: {before: {probes: [marker]}, during: {probes: [marker]}}\n"
        + (f"targets:\n{target_lines}" if targets else "")
        + "faults:\n" + "\n".join(lines) + "\n"
    )


def one_run(faultline, workdir, name, yaml, marker):
    marker.unlink(missing_ok=True)
    run = FaultlineRun(faultline, workdir, name, yaml)
    try:
        deadline = time.monotonic() + 30
        expected = yaml.count("kind: ")
        while len(run.events("fault_injected")) < expected:
            if time.monotonic() > deadline or run.proc.poll() is not None:
                raise RuntimeError(f"{name}: not injected: {run.error()}")
            time.sleep(0.01)
        time.sleep(0.5)
        marker.touch()
        run.wait(30)
        aborts = run.events("abort")
        if not aborts:
            raise RuntimeError(f"{name}: no abort: {run.error()}")
        record = aborts[0]
        return record["breach_to_all_reverted_ms"], record["faults_reverted"]
    finally:
        run.close()
        marker.unlink(missing_ok=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="")
    parser.add_argument("--faultline", default=str(ROOT / "target/release/faultline"))
    args = parser.parse_args()
    args.faultline = faultline_binary(args.faultline)
    signal.signal(signal.SIGTERM, interrupted)
    rows = []
    with tempfile.TemporaryDirectory(prefix="faultline-bench-revert-") as tmp:
        workdir = pathlib.Path(tmp)
        with fault_targets(workdir) as (net, fs, victim):
            table = kinds(net, fs, victim.pid)
            chosen = [k for k in table if not args.kinds or k in args.kinds.split(",")]
            cases = [(k, [k]) for k in chosen]
            for name, mix in MIXES.items():
                members = mix or chosen
                if len(members) > 1 and all(k in chosen for k in members):
                    cases.append((name, members))
            marker = workdir / "breach"
            n = 0
            for name, members in cases:
                faults = [(k, *table[k]) for k in members]
                yaml = experiment(name, faults, marker)
                times = []
                for _ in range(args.runs):
                    n += 1
                    ms, reverted = one_run(args.faultline, workdir, f"r{n}", yaml, marker)
                    if reverted != len(members):
                        raise RuntimeError(f"{name}: {reverted} of {len(members)} reverted")
                    times.append(ms)
                rows.append((name, len(members), times))

    print("\nSLO breach detected -> every fault reverted (journal's breach_to_all_reverted_ms)\n")
    print("| faults | n | runs | median | max |")
    print("|---|---|---|---|---|")
    for name, count, times in rows:
        print(f"| {name} | {count} | {len(times)} | {statistics.median(times):.1f} ms | "
              f"{max(times):.1f} ms |")


if __name__ == "__main__":
    main()
