#!/usr/bin/env python3
"""Resource-pressure benchmark: faultline's cpu-pressure vs stress-ng, disk-io-pressure vs fio.

  cpu   For each load (20, 50, 80 %) and core count (1, 2), side by side in one run:
          faultline  `faultline run` of a one-fault experiment (`cpu-pressure`, `load: P%`,
                     `cores: N`, 6 s); the cores it loaded come from its journal
          stress-ng  `taskset -c <same cores> stress-ng --cpu N --cpu-load P
                     --cpu-load-slice 10 -t 6s`, and again with stress-ng's default slice
        This script samples /proc/stat every 100 ms itself: the busy % of each selected core
        (user+nice+system+irq+softirq over all fields), first 0.5 s and the last window
        trimmed. mean error = mean busy - P; window stdev = stdev of every (core, 100 ms
        window) busy %. "own" columns: the tool's own CPU time over its process tree from
        /proc/<pid>/task/*/schedstat (ns-precise, blind to other load on the cores), in % per
        core. "background" = the cores' busy % in the 1 s before the tool started; "others
        during" = mean busy - own mean (everything else on those cores, this sampler too).
        This kernel accounts /proc/stat by sampling at each tick (TICK_CPU_ACCOUNTING,
        HZ=250): a 100 ms window is 25 samples per core, so its busy % has a sampling noise
        of several points whatever the load does; the "own" figures have none.
  disk  A ~512 MiB ext4 image, loop-mounted here (truncate, mkfs.ext4 -q -F -m 0,
        losetup -f --show, mount; unmounted, detached and deleted on every exit). Sequential
        1 MiB O_DIRECT writes, one worker, as fast as possible:
          faultline  `disk-io-pressure` (`mode: write`, `block_size: 1MiB`, no rate, 1 worker)
          fio        `--name=w --rw=write --bs=1M --direct=1 --ioengine=psync --size=256M
                     --runtime=4 --time_based`
        Both measured from the loop device's /proc/diskstats over the same 4 s window (after
        0.5 s of warm-up); fio's own JSON figure and faultline's journal figure are shown too.

Targets (issue #4): CPU mean error <= 1 point and window stdev <= 3 points; disk >= 90 % of
fio's throughput.

Usage: scripts/bench_resources.py [--faultline target/release/faultline] [--disk-runs 3]
                                  [--skip-cpu] [--skip-disk]
Needs root. Installs nothing: without stress-ng or fio their rows are skipped (install them
with `apt-get install -y stress-ng fio`). Every process started is stopped by PID; every wait
is bounded.
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

from benchlib import FaultlineRun, LoopFs, interrupted, stop

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOADS = [20, 50, 80]
CORE_COUNTS = [1, 2]
CPU_SECONDS = 6
WINDOW_S = 0.1
TRIM_S = 0.5
MEAN_TARGET, STDEV_TARGET, FIO_SHARE_TARGET = 1.0, 3.0, 0.90
IMAGE_BYTES = 512 * 1024 * 1024
DISK_MEASURE_S = 4
DISK_WARMUP_S = 0.5
MIB = 1024 * 1024
SECTOR = 512
INSTALL_HINT = "apt-get install -y stress-ng fio"


# ---------------------------------------------------------------- sampling

def cpu_times():
    """{cpu: (busy_jiffies, total_jiffies)} from /proc/stat."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6], sum(v))
    return times


def tree_tasks(pid):
    """Every thread of `pid` and of its descendants."""
    tasks, pending = [], [pid]
    while pending:
        p = pending.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            tasks.append((p, tid))
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return tasks


def tree_cpu_ns(pid):
    """Run time of the process tree in ns (per-thread schedstat, exact)."""
    total = 0
    for p, tid in tree_tasks(pid):
        try:
            with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def sample(cores, seconds, pid=None):
    """Per 100 ms window: busy % of each core in `cores`, and the tree's own CPU % per core."""
    windows = []
    prev_t, prev_cpu = time.monotonic(), cpu_times()
    prev_own = tree_cpu_ns(pid) if pid else 0
    deadline = prev_t
    for _ in range(round(seconds / WINDOW_S)):
        deadline += WINDOW_S
        time.sleep(max(0.0, deadline - time.monotonic()))
        now, cur = time.monotonic(), cpu_times()
        own = tree_cpu_ns(pid) if pid else 0
        busy = []
        for c in cores:
            db, dt = cur[c][0] - prev_cpu[c][0], cur[c][1] - prev_cpu[c][1]
            busy.append(100.0 * db / dt if dt > 0 else float("nan"))
        own_pct = 100.0 * (own - prev_own) / 1e9 / (now - prev_t) / len(cores) if pid else None
        windows.append((busy, own_pct))
        prev_t, prev_cpu, prev_own = now, cur, own
    return windows


def summarise(windows, target):
    kept = windows[round(TRIM_S / WINDOW_S):-1]
    busy = [b for w in kept for b in w[0]]
    own = [w[1] for w in kept if w[1] is not None]
    return {
        "windows": len(kept),
        "busy_mean": statistics.mean(busy),
        "busy_stdev": statistics.pstdev(busy),
        "error": statistics.mean(busy) - target,
        "own_mean": statistics.mean(own) if own else None,
        "own_stdev": statistics.pstdev(own) if own else None,
    }


def background(cores, seconds=1.0):
    ws = sample(cores, seconds)
    return statistics.mean(b for w in ws for b in w[0])


# ---------------------------------------------------------------- faultline

def one_fault(faultline, workdir, name, fault_yaml, duration_s):
    """A `faultline run` of a one-fault experiment."""
    return FaultlineRun(faultline, workdir, name, f"""apiVersion: faultline/v1
metadata: {{name: bench-{name}}}
max_duration: {duration_s + 60}s
faults:
  - {fault_yaml}
""")


def finish(run_, timeout=30):
    """Let the run end by itself; its fault_reverted record."""
    run_.wait(timeout)
    run_.close()
    return run_.reverted()


# ---------------------------------------------------------------- CPU

def cpu_faultline(faultline, workdir, load, ncores):
    run_ = one_fault(faultline, workdir, f"cpu-{load}-{ncores}",
                     f"{{id: burn, kind: cpu-pressure, duration: {CPU_SECONDS}s, "
                     f"params: {{load: {load}%, cores: {ncores}}}}}", CPU_SECONDS)
    try:
        injected = run_.wait_injected()
        cores = injected["details"]["cores"]
        windows = sample(cores, CPU_SECONDS, run_.proc.pid)
        reverted = finish(run_)
        return cores, windows, reverted.get("achieved", {})
    finally:
        run_.close()


def cpu_stress_ng(stress, cores, load, slice_ms):
    argv = ["taskset", "-c", ",".join(map(str, cores)), stress, "--cpu", str(len(cores)),
            "--cpu-load", str(load), "-t", f"{CPU_SECONDS}s", "--quiet"]
    if slice_ms is not None:
        argv[argv.index("-t"):argv.index("-t")] = ["--cpu-load-slice", str(slice_ms)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return sample(cores, CPU_SECONDS, proc.pid)
    finally:
        stop(proc, signal.SIGINT)


def cpu_bench(faultline, workdir, stress):
    rows = []
    for ncores in CORE_COUNTS:
        for load in LOADS:
            bg = background(list(range(ncores)))
            cores, windows, achieved = cpu_faultline(faultline, workdir, load, ncores)
            s = summarise(windows, load)
            s.update(tool="faultline", load=load, cores=cores, background=bg,
                     journal_busy=(achieved.get("mean") or {}).get("core_busy_percent"))
            rows.append(s)
            print(f"faultline {load}% x{ncores} on {cores}: {s['busy_mean']:.1f} "
                  f"sd {s['busy_stdev']:.1f} (background {bg:.1f})", file=sys.stderr)
            if not stress:
                continue
            for label, slice_ms in (("stress-ng (slice 10 ms)", 10),
                                    ("stress-ng (default slice)", None)):
                bg = background(cores)
                s = summarise(cpu_stress_ng(stress, cores, load, slice_ms), load)
                s.update(tool=label, load=load, cores=cores, background=bg, journal_busy=None)
                rows.append(s)
                print(f"{label} {load}% x{ncores}: {s['busy_mean']:.1f} "
                      f"sd {s['busy_stdev']:.1f} (background {bg:.1f})", file=sys.stderr)
    return rows


def met(error, stdev):
    misses = [name for name, bad in (("mean", abs(error) > MEAN_TARGET),
                                     ("stdev", stdev > STDEV_TARGET)) if bad]
    return "yes" if not misses else "NO (" + ", ".join(misses) + ")"


def print_cpu(rows, stress_missing):
    print(f"\nCPU load accuracy: /proc/stat busy % of the selected cores, 100 ms windows, "
          f"{CPU_SECONDS} s runs, first {TRIM_S} s and last window trimmed\n")
    print("| cores | target % | tool | background % | mean busy % | mean error | window stdev "
          "| stdev vs faultline | others during % | own mean % | own error | own stdev | target met? (busy) "
          "| target met? (own) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        key = (tuple(r["cores"]), r["load"])
        if r["tool"] == "faultline":
            base[key] = r["busy_stdev"]
        ratio = r["busy_stdev"] / base[key] if base.get(key) else float("nan")
        own_err = r["own_mean"] - r["load"]
        print(f"| {','.join(map(str, r['cores']))} | {r['load']} | {r['tool']} "
              f"| {r['background']:.1f} | {r['busy_mean']:.2f} | {r['error']:+.2f} "
              f"| {r['busy_stdev']:.2f} | {ratio:.2f}x | {r['busy_mean'] - r['own_mean']:+.1f} "
              f"| {r['own_mean']:.2f} | {own_err:+.2f} "
              f"| {r['own_stdev']:.2f} | {met(r['error'], r['busy_stdev'])} "
              f"| {met(own_err, r['own_stdev'])} |")
    if stress_missing:
        print(f"\nstress-ng rows skipped: stress-ng is not installed ({INSTALL_HINT})")


# ---------------------------------------------------------------- disk

def measure_writes(fs, seconds):
    """MiB/s and writes/s the loop device completed over `seconds`."""
    (s0, w0), t0 = fs.diskstats(), time.monotonic()
    time.sleep(seconds)
    (s1, w1), t1 = fs.diskstats(), time.monotonic()
    return (s1 - s0) * SECTOR / MIB / (t1 - t0), (w1 - w0) / (t1 - t0)


def disk_faultline(faultline, workdir, fs, index):
    duration = DISK_MEASURE_S + 2
    run_ = one_fault(faultline, workdir, f"disk-{index}",
                     f"{{id: io, kind: disk-io-pressure, duration: {duration}s, params: "
                     f"{{path: '{fs.mnt}', mode: write, block_size: 1MiB, workers: 1}}}}",
                     duration)
    try:
        injected = run_.wait_injected()
        time.sleep(DISK_WARMUP_S)
        mibs, iops = measure_writes(fs, DISK_MEASURE_S)
        reverted = finish(run_)
        achieved = reverted.get("achieved") or {}
        own = achieved.get("achieved", achieved)
        own_mibs = None
        if isinstance(own, dict) and own.get("bytes_written") and own.get("seconds"):
            own_mibs = own["bytes_written"] / MIB / own["seconds"]
        return {"mibs": mibs, "iops": iops, "own_mibs": own_mibs,
                "direct": injected["details"].get("direct_io")}
    finally:
        run_.close()


def disk_fio(fio, workdir, fs, index):
    out = workdir / f"fio-{index}.json"
    target = fs.mnt / "fio.dat"
    proc = subprocess.Popen(
        [fio, "--name=w", "--rw=write", "--bs=1M", "--direct=1", "--ioengine=psync",
         "--size=256M", f"--runtime={DISK_MEASURE_S + 1}", "--time_based",
         f"--filename={target}", "--output-format=json", f"--output={out}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # fio lays the file out before its clock starts: wait for writes to begin.
        deadline = time.monotonic() + 30
        start = fs.diskstats()[0]
        while fs.diskstats()[0] - start < 64 * MIB // SECTOR and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(DISK_WARMUP_S)
        mibs, iops = measure_writes(fs, DISK_MEASURE_S)
        proc.wait(30)
    finally:
        stop(proc, signal.SIGINT)
    if target.exists():
        target.unlink()
    own = json.loads(out.read_text())["jobs"][0]["write"]
    return {"mibs": mibs, "iops": iops, "own_mibs": own["bw_bytes"] / MIB, "direct": True}


def disk_bench(faultline, workdir, fio, runs):
    fs = LoopFs(workdir)
    rows = {"faultline": [], "fio": []}
    try:
        for i in range(runs):
            rows["faultline"].append(disk_faultline(faultline, workdir, fs, i))
            print(f"faultline disk run {i}: {rows['faultline'][-1]}", file=sys.stderr)
            if fio:
                rows["fio"].append(disk_fio(fio, workdir, fs, i))
                print(f"fio disk run {i}: {rows['fio'][-1]}", file=sys.stderr)
    finally:
        fs.close()
    return rows


def print_disk(rows, runs, fio_missing):
    print(f"\nSequential 1 MiB O_DIRECT writes, 1 worker (qd1), on a loop-mounted "
          f"{IMAGE_BYTES // MIB} MiB ext4 image; loop device /proc/diskstats over "
          f"{DISK_MEASURE_S} s; {runs} runs each, alternating\n")
    print("| tool | MiB/s (diskstats) mean | min | max | loop writes/s | tool's own MiB/s "
          "| vs fio | target met? |")
    print("|---|---|---|---|---|---|---|---|")
    fio_mean = statistics.mean(r["mibs"] for r in rows["fio"]) if rows["fio"] else None
    for tool in ("faultline", "fio"):
        rs = rows[tool]
        if not rs:
            continue
        mean = statistics.mean(r["mibs"] for r in rs)
        own = [r["own_mibs"] for r in rs if r["own_mibs"] is not None]
        own_text = f"{statistics.mean(own):.0f}" if own else "-"
        ratio = mean / fio_mean if fio_mean else None
        verdict = "-" if tool == "fio" or ratio is None else (
            "yes" if ratio >= FIO_SHARE_TARGET else "NO")
        direct = "" if all(r["direct"] for r in rs) else " (not O_DIRECT!)"
        print(f"| {tool}{direct} | {mean:.0f} | {min(r['mibs'] for r in rs):.0f} "
              f"| {max(r['mibs'] for r in rs):.0f} | {statistics.mean(r['iops'] for r in rs):.0f} "
              f"| {own_text} | {f'{ratio:.1%}' if ratio else '-'} | {verdict} |")
    if fio_missing:
        print(f"\nfio rows skipped: fio is not installed ({INSTALL_HINT})")


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faultline", default=str(ROOT / "target" / "release" / "faultline"))
    parser.add_argument("--disk-runs", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-disk", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, mount)")
    if not os.path.exists(args.faultline):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    signal.signal(signal.SIGTERM, interrupted)
    stress, fio = shutil.which("stress-ng"), shutil.which("fio")
    for name, path in (("stress-ng", stress), ("fio", fio)):
        if not path:
            print(f"{name} not found: its rows are skipped; install it with `{INSTALL_HINT}`",
                  file=sys.stderr)
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="fl-bench-res-", dir="/var/tmp") as tmp:
        workdir = pathlib.Path(tmp)
        cpu_rows = [] if args.skip_cpu else cpu_bench(args.faultline, workdir, stress)
        disk_rows = None if args.skip_disk else disk_bench(args.faultline, workdir, fio,
                                                           args.disk_runs)
    if cpu_rows:
        print_cpu(cpu_rows, not stress)
    if disk_rows:
        print_disk(disk_rows, args.disk_runs, not fio)


if __name__ == "__main__":
    main()
