#!/usr/bin/env bash
# Fuzz the experiment parser, validator and diagnostic renderer (fuzz/fuzz_targets/
# experiment.rs) with libFuzzer through cargo-fuzz, seeded from experiments/ and tests/.
#
#   scripts/fuzz.sh [SECONDS] [JOBS]      default 60 s, 1 job
#
# Prints executions, coverage and crashes; exits non-zero when a crash (a panic: an input
# `validate` would answer with exit 101 instead of 64) or a timeout was found. Crashing inputs
# land in fuzz/artifacts/experiment/. cargo-fuzz needs nightly compiler flags; on the stable
# toolchain this machine has, RUSTC_BOOTSTRAP=1 allows them. No sanitizer: the code under test
# is safe Rust, so a panic is what there is to find, and AddressSanitizer made some seeds
# (alias bombs) take longer than the timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
jobs=${2:-1}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
corpus=fuzz/corpus/experiment
mkdir -p "$corpus" fuzz/artifacts/experiment
# Seeds: every shipped experiment, every good and bad test file.
for file in experiments/*.yaml tests/good/*.yaml tests/bad/*.yaml; do
  cp -f "$file" "$corpus/seed-$(basename "$file")"
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
parallel=()
if [ "$jobs" -gt 1 ]; then
  parallel=(-jobs="$jobs" -workers="$jobs")
fi
RUSTC_BOOTSTRAP=1 cargo fuzz run --release --sanitizer none experiment "$corpus" -- \
  -max_total_time="$seconds" "${parallel[@]}" -timeout=30 -rss_limit_mb=2048 \
  -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
# With -jobs, libFuzzer writes each job's output to fuzz-N.log in the working directory
# (and only a summary to its own output).
outputs=("$log")
if [ "$jobs" -gt 1 ]; then
  outputs=(fuzz-*.log)
fi
cat "${outputs[@]}" 2>/dev/null | grep -E "^(stat::|#[0-9]+ *DONE|==[0-9]+== ERROR|SUMMARY|Test unit written)" | tail -n 20 || true
runs=$(cat "${outputs[@]}" 2>/dev/null | awk '/^stat::number_of_executed_units:/ { n += $2 } END { print n + 0 }')
crashes=$(find fuzz/artifacts/experiment -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
rm -f fuzz-*.log
echo "fuzz: ${seconds}s x ${jobs} job(s): ${runs} executions, ${crashes} crash/timeout/oom input(s) in fuzz/artifacts/experiment"
if [ "$crashes" -gt 0 ] || [ "$status" -ne 0 ]; then
  exit 1
fi
