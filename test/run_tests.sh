#!/usr/bin/env bash
# Runs every test binary from the repo root and prints one closing line:
#   N passed, N failed, N skipped
# counting Catch2 test cases. A binary that exits 77 skipped as a whole (the GPU tests
# without a GPU): its test cases count as skipped, never as passed.
set -u
cd "$(dirname "$0")/.."
passed=0; failed=0; skipped=0
run() {  # name, command...
    local name=$1; shift
    local log="build/test_logs/$name.log"
    mkdir -p build/test_logs
    "$@" >"$log" 2>&1
    local rc=$?
    local cases p f
    # Catch2: "All tests passed (A assertions in N test cases)" or "test cases: N | P passed | F failed";
    # python unittest: "Ran N tests" then "OK" or "FAILED (failures=a, errors=b)"
    if grep -q "^Ran [0-9]* test" "$log"; then
        local ran bad sk
        ran=$(grep -o "^Ran [0-9]*" "$log" | tail -1 | grep -o "[0-9]*")
        bad=$(grep -o "failures=[0-9]*\|errors=[0-9]*" "$log" | grep -o "[0-9]*" | awk '{s+=$1} END {print s+0}')
        sk=$(grep -o "skipped=[0-9]*" "$log" | tail -1 | grep -o "[0-9]*"); sk=${sk:-0}
        f=$bad; p=$((ran - bad - sk)); skipped=$((skipped + sk))
        [ "$sk" -gt 0 ] && echo "SKIP $name: $sk test(s): $(grep -m1 "skipped '" "$log")"
    elif grep -q "All tests passed" "$log"; then
        p=$(grep -o "in [0-9]* test case" "$log" | tail -1 | grep -o "[0-9]*"); f=0
    else
        p=$(grep -o "| *[0-9]* passed" "$log" | head -1 | grep -o "[0-9]*"); p=${p:-0}
        f=$(grep -o "| *[0-9]* failed" "$log" | head -1 | grep -o "[0-9]*"); f=${f:-0}
    fi
    if [ $rc -eq 77 ]; then
        cases=$(grep -o "skipped [0-9]* test case" "$log" | grep -o "[0-9]*" | head -1)
        skipped=$((skipped + ${cases:-1}))
        echo "SKIP $name: $(grep -m1 -i "skip" "$log")"
        return
    fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi  # crashed or failed outside a test case
    passed=$((passed + p)); failed=$((failed + f))
    if [ $rc -eq 0 ]; then echo "PASS $name ($p test cases)"; else echo "FAIL $name ($f failed, see $log)"; tail -30 "$log"; fi
}
run cpu ./test_cpu
# the exactness and resume tests again at 1 and 4 threads: results must not depend on the count
run cpu_1_thread env OMP_NUM_THREADS=1 ./test_cpu "[steps],[resume],[threads],[sweep]"
run cpu_4_threads env OMP_NUM_THREADS=4 ./test_cpu "[steps],[resume],[threads],[sweep]"
run gpu_mocked ./test_gpu_mocked  # the GPU trainer's host code on the CPU (test/mock_cuda.h): orchestration, not kernels
# test_gpt2_sae's own cases through the same mock (dev/forecast_gpu_tests.sh), all but the slow real-scale
# ones, [graph] (the mock's launchers run at once and cannot be captured) and [order] (the mock has one
# order): the GPU tests' design and bounds on every submission; not a GPU run (the GPU step below is)
run gpu_tests_mocked bash dev/forecast_gpu_tests.sh "~[real]~[graph]~[order]"
# and again with the GPU code itself: llmc's kernels and launchers as written, emulated on the CPU
# (test/cuda_host_emulation.h), the trainer as train_gpt2_sae_emulated; ~3 minutes on 2 cores
run gpu_tests_emulated bash dev/forecast_gpu_tests.sh --emulated "~[real]"
run tokenizer ./test_tokenizer
run feature_dump ./test_feature_dump
# the GPU kernels on the CPU, emulated (test/cuda_host_emulation.h), in each of the emulation's
# four thread orders: a missing barrier gives wrong numbers in at least one of them
emulated() {  # name, binary
    run "$1" "./$2"
    for order in reverse ahead ahead-reverse; do run "${1}_$order" env EMU_ORDER=$order "./$2"; done
}
emulated flash_emulated test_flash_emulated  # flash attention's kernels against the CPU reference
emulated sae_emulated test_sae_emulated  # the SAE backward's fused pass
emulated sae_sparse_emulated test_sae_sparse_emulated  # --sae-kernels sparse's kernels against the dense math
emulated kl_emulated test_kl_emulated  # the one-pass KL on a thread block cluster, and argmax_agree
emulated adamw_emulated test_adamw_emulated  # Adam(W) and the copies it writes along
emulated feature_dump_emulated test_feature_dump_emulated  # the GPU's --dump-features kernels against the CPU's dump
run report /usr/bin/python3 test/test_report.py -v
run features_viewer /usr/bin/python3 test/test_features_viewer.py -v
run pareto /usr/bin/python3 test/test_pareto.py -v
run saelens_cfg /usr/bin/python3 test/test_saelens_cfg.py -v
run saelens python3 test/test_saelens.py -v  # the PATH python: skips where sae_lens is not installed
if command -v "${NVCC:-nvcc}" >/dev/null; then
    run gpu ./test_gpt2_sae
else
    echo "SKIP gpu: nvcc not found, so test_gpt2_sae was not built (the GPU tests need it and a GPU)"
    skipped=$((skipped + 1))
fi
run kill_resume /usr/bin/python3 test/test_kill_resume.py -v
run corrupt_inputs /usr/bin/python3 test/test_corrupt_inputs.py -v
run starter_pack bash test/test_starter_pack.sh
run openwebtext /usr/bin/python3 test/test_openwebtext.py
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
