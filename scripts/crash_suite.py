#!/usr/bin/env python3
"""Random-moment crash suite: for every fault kind, the runner gets a signal at a moment drawn
uniformly across its whole run (setup, gate, injection, mid-fault, revert, checks), and the
host must afterwards be byte-identical to before: iptables and nft rulesets, qdiscs, classes,
filters and links, cgroups, fill and work files, process states, leftover processes.

  SIGKILL             the runner dies; its watchdog must restore the host by itself
  SIGKILL+recover     the same with --no-watchdog; then `faultline recover` must
  SIGINT, SIGTERM     the operator stops the run: it reverts and ends (130, or the run's own
                      outcome when the signal came after its end)
  SIGHUP              the terminal or SSH session goes away: the same

Usage: scripts/crash_suite.py [--trials 20] [--sample N] [--seed S] [--kinds a,b]
                              [--faultline target/release/faultline]

--sample N runs N random (kind, signal) trials instead of the full table (CI does this).
Prints a table (kind × signal: trials, clean, the phases the signals hit) and exits non-zero
when any trial left the host different. Needs root; everything it starts it stops by PID.
"""
import argparse
import collections
import contextlib
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import faultline_binary, FaultlineRun, LoopFs, Net, in_ns, interrupted, proc_state, run, stop  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The run's timeline: a 300 ms setup command, the gate, the fault from 300 ms after T0 for
# 1.5 s, the after check; about 2.5 s in all. Signals are drawn over a little more than that.
SIGNAL_WINDOW_S = 2.8
MODES = ["SIGKILL", "SIGKILL+recover", "SIGINT", "SIGTERM", "SIGHUP"]


@contextlib.contextmanager
def fault_targets(workdir):
    """What every fault kind acts on: two namespaces, a small loop-mounted filesystem and a
    sleeping victim; all removed again on the way out."""
    net = fs = victim = None
    try:
        net = Net()
        fs = LoopFs(workdir, size=64 * 1024 * 1024)
        victim = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
        yield net, fs, victim
    finally:
        stop(victim, signal.SIGKILL)
        if fs:
            fs.close()
        if net:
            net.close()


def kinds(net, fs, victim_pid):
    """Each fault kind faultline can inject here: its target and params."""
    network = (f"{{network: {{netns: {net.a}, remote: ['{net.ip_b}'], direction: both}}}}")
    victim = f"{{process: {{pid: {victim_pid}}}}}"
    return {
        "process-stop": (victim, "{}"),
        "network-delay": (network, "{delay: 20ms, backend: nfqueue}"),
        "network-loss": (network, "{probability: 50%}"),
        "network-partition": (network, "{}"),
        "network-bandwidth": (network, "{rate: 5mbit}"),
        "cpu-pressure": (None, "{load: 30%, cores: 1}"),
        "cpu-limit": (victim, "{quota: 20%}"),
        "memory-pressure": (None, "{size: 64MiB}"),
        "disk-io-pressure": (None, f"{{path: '{fs.mnt}', throughput: 5MiB}}"),
        "disk-io-limit": (victim, f"{{path: '{fs.mnt}', write_throughput: 5MiB}}"),
        "disk-fill": (None, f"{{path: '{fs.mnt}', size: 8MiB}}"),
    }


def experiment(kind, target, params):
    targets = f"targets: {{t: {target}}}\n" if target else ""
    on = ", target: t" if target else ""
    return (
        f"apiVersion: faultline/v1\nmetadata: {{name: crash-{kind}}}\nmax_duration: 1m\n"
        "setup: [{name: warm-up, argv: [/bin/sleep, '0.3']}]\n"
        "probes: {ok: {command: {argv: [/bin/true]}, interval: 200ms, timeout: 150ms}}\n"
        "steady_state: {before: {probes: [ok]}, during: {probes: [ok]}, "
        "after: {probes: [ok], within: 5s}}\n"
        f"{targets}"
        f"faults: [{{id: fault, kind: {kind}{on}, params: {params}, at: 300ms, duration: 1500ms}}]\n"
    )


def snapshot(net, fs, victim_pid):
    """Everything a fault could have left, as text."""
    parts = []
    for where in (None, net.a):
        wrap = (lambda argv: in_ns(where, argv)) if where else (lambda argv: argv)
        for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
                     "ip6tables-legacy-save"):
            out = run(wrap([tool]), check=False).stdout
            # The comment lines carry a timestamp, chain policies packet and byte counters.
            parts.append("\n".join(re.sub(r"\[\d+:\d+\]", "[]", l) for l in out.splitlines()
                                   if not l.startswith("#")))
        parts.append(run(wrap(["nft", "list", "ruleset"]), check=False).stdout)
    links = run(in_ns(net.a, ["ip", "-o", "link", "show"]), check=False).stdout
    for line in links.splitlines():
        dev = line.split(": ")[1].split("@")[0]
        parts.append(f"link {dev}")
        for what in (["qdisc"], ["class"], ["filter"]):
            parts.append(run(in_ns(net.a, ["tc", *what, "show", "dev", dev]), check=False).stdout)
        parts.append(run(in_ns(net.a, ["tc", "filter", "show", "dev", dev, "ingress"]),
                         check=False).stdout)
    for top in ("/sys/fs/cgroup",):
        for dirpath, dirnames, _ in os.walk(top):
            for d in dirnames:
                if d.startswith("faultline-"):
                    parts.append(f"cgroup {os.path.join(dirpath, d)}")
            if dirpath.count("/") > 7:
                dirnames.clear()
    with open(f"/proc/{victim_pid}/cgroup") as f:
        parts.append("victim cgroup " + f.read())
    parts.append(f"victim state {proc_state(victim_pid)}")
    parts.append("files " + " ".join(sorted(p.name for p in fs.mnt.iterdir()
                                            if p.name.startswith(".faultline"))))
    parts.append(f"helpers {len(helpers())}")
    return "\n".join(parts)


# The suite's working directory: watchdogs of other faultline runs on the host (a benchmark
# next to it) are not the suite's.
WORKDIR = None


def helpers():
    """faultline's helper processes alive now (this suite's watchdogs, memory hogs): PID and
    argv."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            ours = WORKDIR is None or any(a.startswith(WORKDIR.encode()) for a in argv)
            if b"__memory-hog" in argv or (b"__watchdog" in argv and ours):
                found.append((int(entry), b" ".join(argv).decode(errors="replace")))
    return found


def phase_at(journal):
    """The phase of the run its journal has reached."""
    phase = "startup"
    for event in journal:
        if event.get("event") == "phase":
            phase = {"before": "gate", "t0": "T0", "during": "T0", "after": "after check"}.get(
                event["phase"], event["phase"])
        elif event.get("event") == "fault_intent":
            phase = "injection"
        elif event.get("event") == "fault_injected":
            phase = "mid-fault"
        elif event.get("event") == "outcome":
            phase = "ended"
    return phase


def trial(faultline, workdir, name, yaml, mode, rng, net, fs, victim_pid, baseline):
    extra = ["--no-watchdog"] if mode == "SIGKILL+recover" else []
    fl = FaultlineRun(faultline, workdir, name, yaml, extra)
    delay = rng.uniform(0, SIGNAL_WINDOW_S)
    code = None
    try:
        time.sleep(delay)
        sig = {"SIGKILL": signal.SIGKILL, "SIGKILL+recover": signal.SIGKILL,
               "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM,
               "SIGHUP": signal.SIGHUP}[mode]
        # Where the run is, as its journal says the moment the signal goes out (the runner's
        # clock starts later than ours, so a time would not place it).
        phase = phase_at(fl.journal())
        if fl.proc.poll() is None:
            os.kill(fl.proc.pid, sig)
        try:
            code = fl.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = "still running"
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(fl.dir / "state"))
        if mode == "SIGKILL":
            records = fl.dir / "state" / "faults"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and records.exists() and any(records.glob("*.json")):
                time.sleep(0.02)
            # The watchdog's own exit, after its last journal line.
            time.sleep(0.2)
        if mode == "SIGKILL+recover":
            subprocess.run([faultline, "recover"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
        # A watchdog exits once it has reverted and journalled; a memory hog once it is killed.
        # Give them a bounded moment, so a slow exit is not taken for a leftover.
        deadline = time.monotonic() + 5
        while helpers() and time.monotonic() < deadline:
            time.sleep(0.02)
        after = snapshot(net, fs, victim_pid)
        diff = None
        if after != baseline:
            lines_before, lines_after = set(baseline.splitlines()), set(after.splitlines())
            extra_lines = sorted(lines_after - lines_before)[:3]
            missing = sorted(lines_before - lines_after)[:3]
            diff = f"+{extra_lines} -{missing}"
            left = helpers()
            if left:
                diff += f" helpers alive: {left}"
        return phase, code, diff
    finally:
        fl.close()
        # Never let one trial's leftovers spoil the next: recover with its own state dir.
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(fl.dir / "state"))
        subprocess.run([faultline, "recover"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kinds", default="")
    parser.add_argument("--modes", default="", help="a comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--faultline", default=str(ROOT / "target/release/faultline"))
    args = parser.parse_args()
    args.faultline = faultline_binary(args.faultline)
    signal.signal(signal.SIGTERM, interrupted)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    results = collections.defaultdict(list)
    dirty = []
    with tempfile.TemporaryDirectory(prefix="faultline-crash-suite-") as tmp:
        workdir = pathlib.Path(tmp)
        global WORKDIR
        WORKDIR = str(workdir)
        with fault_targets(workdir) as (net, fs, victim):
            table = kinds(net, fs, victim.pid)
            chosen = [k for k in table if not args.kinds or k in args.kinds.split(",")]
            modes = [m for m in MODES if not args.modes or m in args.modes.split(",")]
            if args.sample:
                plan = [(rng.choice(chosen), rng.choice(modes)) for _ in range(args.sample)]
            else:
                plan = [(k, m) for k in chosen for m in modes for _ in range(args.trials)]
            baseline = snapshot(net, fs, victim.pid)
            for n, (kind, mode) in enumerate(plan):
                target, params = table[kind]
                phase, code, diff = trial(args.faultline, workdir, f"t{n}",
                                          experiment(kind, target, params), mode, rng, net, fs,
                                          victim.pid, baseline)
                results[(kind, mode)].append((phase, code, diff))
                if diff:
                    dirty.append((kind, mode, phase, code, diff))
                    print(f"DIRTY {kind} {mode} at {phase} (exit {code}): {diff}", flush=True)
                    # Start the next trial from a clean host again.
                    baseline = snapshot(net, fs, victim.pid)
    print(f"\nhost after a signal to the runner at a random moment (seed {seed})\n")
    print("| fault kind | signal | trials | host identical | phases hit |")
    print("|---|---|---|---|---|")
    for (kind, mode), runs in sorted(results.items()):
        clean = sum(1 for r in runs if not r[2])
        phases = collections.Counter(r[0] for r in runs)
        hit = ", ".join(f"{p} {c}" for p, c in sorted(phases.items()))
        print(f"| {kind} | {mode} | {len(runs)} | {clean} | {hit} |")
    total = sum(len(r) for r in results.values())
    print(f"\n{total - len(dirty)} of {total} trials left the host exactly as it was")
    if dirty:
        sys.exit(1)


if __name__ == "__main__":
    main()
