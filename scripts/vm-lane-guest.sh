#!/usr/bin/env bash
# Runs inside the stock-kernel VM (see scripts/vm-lane.sh): each lane test on its own, one at a
# time, with FAULTLINE_LANE=1 so a test that finds its kernel feature missing fails instead of
# skipping. Writes `BINARY TEST RESULT SECONDS` lines to OUT/results and each test's output
# to OUT/logs/TEST.log.
#
#   vm-lane-guest.sh OUT LIB_TEST_BINARY IT_TEST_BINARY BUDGET_SECONDS
#
# BUDGET_SECONDS bounds the tests (counted from the guest kernel's start): a test gets at most
# 300 s, and never more than what is left of the budget. A test that cannot start because the
# budget is spent is `not-reached`; one stopped by the budget rather than by its own 300 s is
# `cut`. Neither says anything about the test; `fail` does (an exit other than 0, or its own
# 300 s ran out).
set -uo pipefail
out=$1
lib_bin=$2
it_bin=$3
budget=$4
per_test=300
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export FAULTLINE_LANE=1
export RUST_BACKTRACE=1
unset FAULTLINE_STATE_DIR FAULTLINE_LOG SSH_CONNECTION
mkdir -p "$out/logs"
controllers=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || echo "no cgroup v2")
echo "$(uname -r), cgroup v2 controllers: $controllers" >"$out/booted"

# The namespaces the tests create are bind-mounted here; the read-only root has the directory
# but the VM starts with no mount on it.
mkdir -p /run/netns
# Loop devices for the disk tests; the qdiscs and classifiers load on first use.
modprobe loop 2>/dev/null || true
# Run the tests from a leaf cgroup of their own, as under systemd on a production host (not
# from the root, which v2's no-internal-processes rule exempts): a target that shares the
# tests' cgroup is then refused exactly as it would be there.
# Like systemd's default accounting, memory and pids are on below the root; cpu and io are
# left for faultline to enable (and disable again).
if [ -w /sys/fs/cgroup/cgroup.procs ]; then
  echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
  mkdir -p /sys/fs/cgroup/lane
  echo $$ >/sys/fs/cgroup/lane/cgroup.procs
fi

while read -r binary name <&3; do
  case "$binary" in
    lib) bin=$lib_bin ;;
    it) bin=$it_bin ;;
    *) echo "$binary $name unknown-binary -" >>"$out/results"; continue ;;
  esac
  log="$out/logs/$name.log"
  uptime=$(cut -d. -f1 /proc/uptime)
  left=$((budget - uptime))
  if [ "$left" -lt 20 ]; then
    echo "$binary $name not-reached -" >>"$out/results"
    continue
  fi
  allowed=$((left < per_test ? left : per_test))
  start=$(date +%s.%N)
  timeout --kill-after=10s "${allowed}s" "$bin" --include-ignored --exact --nocapture --test-threads=1 "$name" \
    </dev/null >"$log" 2>&1
  status=$?
  seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
  if { [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; } && [ "$allowed" -lt "$per_test" ]; then
    result=cut
  elif [ "$status" -ne 0 ]; then
    result=fail
  elif grep -q "running 0 tests" "$log"; then
    result=missing
  elif grep -qiE "(^|\.\.\. )skipped: " "$log"; then
    # In the lane a skip is a failure: this kernel is the one that has what the test needs.
    result=skipped
  else
    result=pass
  fi
  echo "$binary $name $result $seconds" >>"$out/results"
done 3<"$out/tests"
sync
