#!/usr/bin/env bash
# The test command: installs the system packages the tests use (Debian, via apt-get), then
# runs the whole suite — unit tests, engine tests, end-to-end tests against real processes.
# Run it as root on a Linux host (the tests stop, resume and kill processes they start).
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2: ip, tc, nsenter-free namespaces; iptables (legacy + nft variants) and nftables: the
# network faults; iputils-ping: a cgroup-scoped network test; util-linux: nsenter; prometheus:
# the server the prometheus probe's tests start on their own ports; python3-jsonschema: an
# independent check of `faultline schema`; busybox-static: the one program of the images the
# container tests build (no registry to pull one from).
packages=(coreutils procps iproute2 iptables nftables iputils-ping util-linux mount e2fsprogs python3 python3-jsonschema prometheus busybox-static)
installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
# The prometheus package starts a server on :9090 (and its recommended node exporter on :9100)
# as system services; the tests need only the binary. Stop what this install starts, and
# nothing that was there before.
services=()
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  services+=(prometheus.service)
  installed prometheus-node-exporter || services+=(prometheus-node-exporter.service)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  if [ "${#services[@]}" -gt 0 ]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "${services[@]}" || true
    else
      # No systemd: the package's init script may have started it (unless policy-rc.d
      # forbade it, as in most containers).
      for service in "${services[@]}"; do
        script="/etc/init.d/${service%.service}"
        if [ -x "$script" ]; then "$script" stop >/dev/null 2>&1 || true; fi
      done
    fi
  fi
fi

cargo build --locked --all-targets
# One test at a time: the network and timing tests measure real delays and rates on a
# 2-core box, and parallel tests would measure each other.
cargo test --locked --all-targets -- --test-threads=1

# What this kernel cannot reach (netem, cgroup v2, tc trees shared by faults) runs on a stock
# Debian kernel in a VM; skipped with a message where no VM can start.
scripts/vm-lane.sh

# A random sample of the crash suite: a signal (SIGKILL with and without the watchdog, SIGINT,
# SIGTERM, SIGHUP) to a run at a random moment, host compared byte for byte. The full table
# (every kind x signal, 20 trials each) is `scripts/crash_suite.py`, in docs/benchmarks.md.
python3 scripts/crash_suite.py --sample 12 --faultline target/debug/faultline

# The fuzz target (parser, validator, diagnostics) for a minute, seeded from experiments/ and
# tests/; longer runs: scripts/fuzz.sh SECONDS JOBS.
scripts/fuzz.sh 60
