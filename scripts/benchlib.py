"""What the benchmark scripts share: running commands, stopping what they started (by PID,
always reaped, every wait bounded), and one `faultline run` whose journal is read as it is
written."""
import json
import os
import signal
import subprocess
import time


def run(argv, timeout=60, check=True):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=check)


def in_ns(ns, argv):
    """argv run in network namespace `ns` by nsenter: unlike `ip netns exec`, it leaves /sys
    (and so the cgroup tree) as it is."""
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def stop(proc, sig=signal.SIGTERM, grace=10):
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


def proc_state(pid):
    """The one-letter state of a process (`T` when stopped), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2]


def interrupted(_signum, _frame):
    """SIGTERM handler: the same cleanup path as Ctrl-C."""
    raise KeyboardInterrupt


class FaultlineRun:
    """One `faultline run` of `experiment` (YAML text) in its own directory under `workdir`,
    with its own state directory; its journal read as it is written."""

    def __init__(self, faultline, workdir, name, experiment, extra_args=()):
        self.dir = workdir / name
        self.dir.mkdir()
        exp = self.dir / "experiment.yaml"
        exp.write_text(experiment)
        self.reports = self.dir / "reports"
        env = dict(os.environ, FAULTLINE_STATE_DIR=str(self.dir / "state"))
        env.pop("FAULTLINE_LOG", None)
        self.stderr = open(self.dir / "stderr", "w+")
        self.proc = subprocess.Popen(
            [faultline, "run", str(exp), "--quiet", "--report-dir", str(self.reports),
             *extra_args],
            env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.stderr)

    def journal(self):
        files = sorted(self.reports.glob("*.jsonl")) if self.reports.exists() else []
        events = []
        for line in (files[-1].read_text().splitlines() if files else []):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line still being written
        return events

    def events(self, kind):
        return [e for e in self.journal() if e.get("event") == kind]

    def wait_injected(self, timeout=20):
        """The first `fault_injected` event; raises with faultline's error if there is none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            injected = self.events("fault_injected")
            if injected:
                return injected[0]
            if self.proc.poll() is not None or self.events("fault_injection_failed"):
                break
            time.sleep(0.01)
        raise RuntimeError(f"fault not injected within {timeout} s: {self.error()}")

    def error(self):
        failed = self.events("fault_injection_failed")
        if failed:
            return failed[0].get("error")
        self.stderr.seek(0)
        return self.stderr.read().strip()[-500:] or "no error output"

    def wait(self, timeout):
        """Let the run end by itself (its faults' durations), at most `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        """SIGINT if still running (faultline reverts and ends `interrupted`), reaped."""
        stop(self.proc, signal.SIGINT, grace=20)
        if not self.stderr.closed:
            self.stderr.close()

    def reverted(self):
        """The first `fault_reverted` record (`{}` if there was none)."""
        reverted = self.events("fault_reverted")
        return reverted[0] if reverted else {}
