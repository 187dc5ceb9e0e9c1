"""What the benchmark scripts share: running commands, stopping what they started (by PID,
always reaped, every wait bounded), and one `faultline run` whose journal is read as it is
written."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time


def faultline_binary(path):
    """`path` made absolute (the runs start in directories of their own), built first when
    it is not there."""
    path = pathlib.Path(path).resolve()
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--locked"], check=True, timeout=1800)
    return str(path)


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


class LoopFs:
    """A small ext4 image, loop-mounted; `close` unmounts, detaches and deletes it."""

    def __init__(self, workdir, size=512 * 1024 * 1024):
        self.image = workdir / "disk.img"
        self.mnt = workdir / "mnt"
        self.dev = None
        self.mounted = False
        free = shutil.disk_usage(workdir).free
        if free < 4 * size:
            raise RuntimeError(f"only {free >> 20} MiB free under {workdir}: the image needs "
                               f"{size >> 20} MiB and / must never fill up")
        try:
            run(["truncate", "-s", str(size), str(self.image)])
            run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
            self.dev = run(["losetup", "-f", "--show", str(self.image)]).stdout.strip()
            self.mnt.mkdir()
            run(["mount", self.dev, str(self.mnt)])
            self.mounted = True
        except BaseException:
            self.close()
            raise

    def diskstats(self):
        """(sectors written, writes completed) of the loop device."""
        name = os.path.basename(self.dev)
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if fields[2] == name:
                    return int(fields[9]), int(fields[7])
        raise RuntimeError(f"{name} is not in /proc/diskstats")

    def close(self):
        if self.mounted:
            run(["umount", str(self.mnt)], check=False)
            self.mounted = False
        if self.dev:
            run(["losetup", "-d", self.dev], check=False)
            self.dev = None
        if self.image.exists():
            self.image.unlink()
