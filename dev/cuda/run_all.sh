#!/usr/bin/env bash
# Runs every bench in dev/cuda (each NAME.cu here, built as ./NAME by `make`) one after another
# with the same argument, shows its full output, then prints one PASS/FAIL line per bench.
# Exit code 1 if any bench failed, timed out or was not built.
#   cd dev/cuda && make && ./run_all.sh [check|cpu]
# The argument is the benches' own (dev/cuda/common.h): none runs each bench in full (CPU
# self-test, GPU checks, timing), check leaves out the timing, cpu runs only the CPU self-tests
# (no GPU needed). LOG_DIR (default ./logs) receives NAME.log for each bench; TIMEOUT (seconds
# per bench, default 300) bounds a hung kernel. Binaries are git-ignored: build them before
# copying this folder.
set -u
cd "$(dirname "$0")"
mode="${1:-}"
case "$mode" in
    ""|check|cpu) ;;
    *) echo "usage: ./run_all.sh [check|cpu]" >&2; exit 2 ;;
esac
log_dir="${LOG_DIR:-logs}"
timeout_s="${TIMEOUT:-300}"
mkdir -p "$log_dir"
summary=()
failed=0
for src in *.cu; do
    [ -e "$src" ] || continue
    name="${src%.cu}"
    if [ ! -x "./$name" ]; then
        summary+=("FAIL  $name  (not built: run make)")
        failed=1
        continue
    fi
    echo "=== $name $mode"
    start=$(date +%s.%N)
    timeout "$timeout_s" "./$name" $mode 2>&1 | tee "$log_dir/$name.log"
    rc=${PIPESTATUS[0]}
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then
        summary+=("PASS  $name  (${secs} s)")
    else
        why="exit $rc"
        [ "$rc" -eq 124 ] && why="timed out after ${timeout_s} s"
        summary+=("FAIL  $name  ($why, ${secs} s, log $log_dir/$name.log)")
        failed=1
    fi
done
echo "=== summary"
if [ ${#summary[@]} -eq 0 ]; then echo "no benches found"; exit 1; fi
printf '%s\n' "${summary[@]}"
exit $failed
