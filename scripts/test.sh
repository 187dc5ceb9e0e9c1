#!/usr/bin/env bash
# The test command: installs the system packages the tests use (Debian, via apt-get), then
# runs the whole suite — unit tests, engine tests, end-to-end tests against real processes.
# Run it as root on a Linux host (the tests stop, resume and kill processes they start).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(coreutils procps iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads=2
