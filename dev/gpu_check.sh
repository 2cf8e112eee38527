#!/usr/bin/env bash
# dev/gpu_check.sh -- every check that needs a GPU, in one call, for a lent H100/H200:
#   GPU tests (test_gpt2_sae: fp32 and bf16, three modes, 10 steps, resume), the paper-shape
#   benchmarks (GPT-2 small shape, random weights, d_sae 46080, B 8, T 1024, accumulation 2),
#   compute-sanitizer memcheck / racecheck / initcheck on short runs, train_gpt2_sae (fp32, bf16)
#   against train_gpt2_sae_cpu on one model, data and SAE, the dev/cuda kernel benches (every
#   bench's CPU self-test, GPU checks and timing: dev/cuda/run_all.sh), and issue 16's checks: odd
#   shapes against PyTorch and the CPU trainer, bf16 against fp32 at GPT-2 small's scales (the KL
#   error with W_U shifted and as loaded, in $OUT/issue16.txt), and issue 14's flash attention: its
#   kernel bench (checks and timing against the materialised attention), compute-sanitizer racecheck
#   and memcheck on its kernels, and the trainer's --attention flash pass (test_gpt2_sae [flash]); the
#   fused SAE backward pass and the DGELU epilogue (--fused-backward on: dev/cuda/sae 6 with racecheck and
#   memcheck, test_gpt2_sae [fused], a memcheck run) and the paper-shape bench with both fast paths.
# Build first, here or anywhere with nvcc: dev/gpu_pack.sh puts every binary in .devbin/.
# Usage: OUT=/some/dir [CONTINUE=1] bash dev/gpu_check.sh [session|tests|kernels|core|extra|all|final|flash|peer]
#   session: what a session's 15 device minutes should hold, in the order of the open issues (16, 14, 15, then the
#            standing checks): issue 16's [odd] and [real]; issue 14's [flash] and [fused], the paper-shape e2e L6 bench
#            as it is and with both fast paths; issue 15's GPU dump against the CPU's; then test_gpt2_sae, GPU vs CPU,
#            the new kernels' benches and sanitizers, the e2e_sae peer, --cuda-graph on ([graph], its bench against off),
#            the sweep and [order] (the same bits run to run), then --sae-kernels sparse (sparse_checks). Call it, then at once (the machine
#            stays warm for 30 s) CONTINUE=1 with a short BUDGET for what the first call did not reach
#   tests:   GPU tests (issue 16's and issue 13's sweep as steps of their own), the no-flag demo, GPU vs CPU in e2e, and the
#            GPU's --dump-features against the CPU trainer's (issue 15); about 6 minutes
#   kernels: issue 14's flash attention and fused backward checks, the e2e bf16 layer-6 benchmark as it is and with both
#            (--attention flash --fused-backward on), and that with --cuda-graph off and on, a 4-SAE sweep beside it
#            (issue 13), memcheck e2e+ds, every dev/cuda
#            bench; more than 560 s of timeouts: BUDGET cuts the tail (dev_cuda first), which `final` or `extra` can run
#   core: tests then kernels (more than one `run` call allows: call tests, then kernels at once)
#   flash: issue 14's correctness steps alone: flash attention, the fused SAE pass (dev/cuda/sae 6), the trainer with
#            --fused-backward on ([fused], memcheck); about five minutes; not yet run on a GPU
#   extra: the other sanitizer runs, modes, layers and precisions
#   sparse:  --sae-kernels sparse alone: [sparse], dev/cuda/sae_sparse (checks, timing against dense by L0), the
#            paper-shape bench at L0 ~32 dense against sparse, sanitizers; about 6 minutes; not yet run on a GPU
#   peer:    issue 14's side-by-side: our e2e L6 fp32 and bf16 benches, then the e2e_sae library's step (fp32, tf32,
#            bf16; dev/gpu_peer.sh; run dev/peer_pack.sh here first, carry .devbin, .whl and .peer), then
#            --cuda-graph on against off; not yet run on a GPU
# Logs go to $OUT/logs (tarred into $OUT/logs.tgz after every step); a summary prints last.
# BUDGET (seconds, default 560): each step's timeout is cut to what is left of BUDGET since the start, and
# steps that would start with under MIN_STEP (20) seconds left are skipped and listed, so a stage ends
# inside one `run` call (600 s) with what it could do. Steps run in priority order within a stage.
# CONTINUE=1 skips the steps that passed in an earlier call on the same (warm) machine.
set -u
OUT=${OUT:-/tmp/gpu_check}
LOG=$OUT/logs
mkdir -p "$LOG"
export SAE_REF_PYTHON=${SAE_REF_PYTHON:-python3}
export PYTHONUNBUFFERED=1
stage=${1:-all}
BUDGET=${BUDGET:-560}
MIN_STEP=${MIN_STEP:-20}
# steps that passed, for CONTINUE=1 (build/ is git-ignored, so it stays on a warm machine between calls)
DONE=build/gpu_done
[ "${CONTINUE:-0}" = 1 ] || rm -rf "$DONE"
mkdir -p "$DONE"
script_start=$(date +%s)
summary=()
declare -A ran  # steps this call has run: a stage that lists one twice runs it once
step() {  # name, timeout, command...
    local name=$1 t=$2; shift 2
    [ -n "${ran[$name]:-}" ] && return
    ran[$name]=1
    local start=$(date +%s)
    local left=$(( BUDGET - (start - script_start) ))
    if [ -f "$DONE/$name" ]; then  # CONTINUE=1: it passed in an earlier call on this machine
        summary+=("$(printf '%-26s passed in an earlier call' "$name")")
        echo "== $name passed in an earlier call"
        return
    fi
    if [ "$left" -lt "$MIN_STEP" ]; then
        summary+=("$(printf '%-26s skipped: %ss left of BUDGET %ss' "$name" "$left" "$BUDGET")")
        echo "== $name skipped (budget)"
        return
    fi
    [ "$t" -gt "$left" ] && t=$left  # cut at BUDGET: a step that runs out there still logs what it did
    timeout "$t" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - start ))
    summary+=("$(printf '%-26s rc=%-3s %4ss' "$name" "$rc" "$secs")")
    [ "$rc" = 0 ] && touch "$DONE/$name"
    echo "== $name rc=$rc ${secs}s"
    grep -E "^measured|time per step|host: median|^  [a-zA-Z].* ms  \(|ERROR SUMMARY|FAIL|FAILED|test cases|All tests|worst|error:|CE increase" "$LOG/$name.log" | head -n 25
    tar czf "$OUT/logs.tgz" -C "$OUT" logs
}
if [ -d .devbin ]; then
    cp .devbin/train_gpt2_sae .devbin/train_gpt2_sae_cpu .devbin/test_gpt2_sae .
    cp .devbin/cuda/* dev/cuda/
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$LOG/gpu.txt"

# paper shape model (random weights) and the small references the sanitizer and comparisons use
P=/tmp/gpt2s
bench_args="--overwrite --model $P --train $P/train.bin --val $P/val.bin --init-sae $P/init_sae --batch 8 --seq-len 1024 --grad-accum 2 --eval-samples 0 --samples 400000"
# (init_sae: the library init, L0 about half of d_sae; init_sae_sparse: the same at L0 ~32, for --sae-kernels sparse)
make_paper_model() { [ -f $P/init_sae_sparse/sae_weights.safetensors ] || step make_gpt2s 150 python3 dev/make_random_gpt2.py --out $P --dict-size 46080 --train-tokens 600000 --val-tokens 16384 --target-l0 32 --layer 6; }
R=build/ref/e2e_ds
san_args="--overwrite --model $R/model.safetensors --train $R/train.bin --val $R/val.bin --layer 1 --batch 2 --seq-len 8 --grad-accum 2 --init-sae $R/init_sae --max-steps 2 --samples 200 --eval-samples 2 --eval-every 0"
M=/tmp/cmp_model
cmp_args="--overwrite --model $M --train $M/train.bin --val $M/val.bin --layer 1 --init-sae $M/init_sae --batch 4 --seq-len 64 --grad-accum 2 --lr 1e-3 --warmup-samples 40 --samples 4000 --max-grad-norm 0.05 --max-steps 30 --shuffle 0 --eval-samples 16 --eval-every 0"
compare_mode() {  # GPU fp32 and bf16 against the CPU trainer, 30 updates with accumulation and clipping
    local mode=$1 tag=${1/+/_}
    [ -f $M/init_sae/sae_weights.safetensors ] || python3 dev/make_random_gpt2.py --out $M --n-layer 4 --n-head 4 --d-model 128 --vocab 512 --max-t 64 --train-tokens 200000 --val-tokens 8192 --dict-size 2048 > "$LOG/cmp_model.log" 2>&1
    step "cmp_cpu_$tag" 60 ./train_gpt2_sae_cpu $cmp_args --mode $mode --out /tmp/cmp_cpu_$tag
    step "cmp_gpu_fp32_$tag" 30 ./train_gpt2_sae $cmp_args --mode $mode --precision fp32 --out /tmp/cmp_fp32_$tag
    step "cmp_gpu_bf16_$tag" 30 ./train_gpt2_sae $cmp_args --mode $mode --precision bf16 --out /tmp/cmp_bf16_$tag
    step "agree_fp32_$tag" 20 python3 dev/compare_runs.py /tmp/cmp_fp32_$tag /tmp/cmp_cpu_$tag --tol 1e-4
    step "agree_bf16_$tag" 20 python3 dev/compare_runs.py /tmp/cmp_bf16_$tag /tmp/cmp_cpu_$tag --tol 5e-2
}
median_ms() { grep -o "median [0-9.]* ms" "$LOG/$1.log" 2>/dev/null | awk '{print $2}'; }  # a bench step's median update, from its log
memcheck() { step "memcheck_${1/+/_}_$2" 90 compute-sanitizer --tool memcheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode $1 --precision $2 --out /tmp/san_$1$2; }

# issue 16 (test_gpt2_sae's [odd] and [real] cases, kept out of the test_gpt2_sae step): C 100 with 4
# heads of 25, d_sae 1001, T 17, V 1000 against PyTorch (both precisions, both trainers); bf16
# against fp32 on dev/make_random_gpt2.py --real-scale (GPT-2 small, logits near -80 before W_U's
# shift, position 0 at norm 3000, SAE at KL 0.05): one pass, the KL with and without the shift, 30
# updates through dev/compare_runs.py. The measured lines of both go to $OUT/issue16.txt.
gpu_tests() {
    step test_gpt2_sae 200 ./test_gpt2_sae "~[odd]~[real]~[flash]~[sweep]~[fused]~[graph]~[sparse]~[order]"
    step test_sweep 120 ./test_gpt2_sae "[sweep]"
    step test_graph 90 ./test_gpt2_sae "[graph]"
    step test_order 90 ./test_gpt2_sae "[order]"  # every path's bits run to run: flash, fused, sparse, evals, the dump
    grep -h -E "^measured|passed|failed|FAILED" "$LOG/test_sweep.log" 2>/dev/null | tee "$OUT/issue13.txt"
    printf '%s\n' '{"name": "loc2", "mode": "local", "layer": 2}' '{"name": "e2e0", "mode": "e2e", "layer": 0}' \
        '{"name": "ds1", "mode": "e2e+ds", "layer": 1}' > /tmp/san_sweep.jsonl
    step memcheck_sweep 120 compute-sanitizer --tool memcheck --error-exitcode 9 ./train_gpt2_sae $san_args --precision bf16 --sweep /tmp/san_sweep.jsonl --out /tmp/san_sweep
    step test_odd_shapes 90 ./test_gpt2_sae "[odd]"
    step test_real_scale 150 ./test_gpt2_sae "[real]"
    grep -h "^measured" "$LOG/test_odd_shapes.log" "$LOG/test_real_scale.log" 2>/dev/null | tee "$OUT/issue16.txt"
}

# issue 14's paths that no GPU has run: --attention flash (test_gpt2_sae [flash]: one bf16 pass
# against PyTorch and --attention materialized; dev/cuda/attention variants 2 and 3: checks against
# the CPU reference at T = 2, 17, 100, 130 and GPT-2 small's shape, the same bits on a second run,
# timing against the materialised attention) and --fused-backward on (test_gpt2_sae [fused];
# dev/cuda/sae 6 and kl 4), then compute-sanitizer on each at small shapes (ATTENTION_SMALL,
# SAE_SMALL). In priority order, so BUDGET cuts the sanitizers first. Summary lines: $OUT/issue14.txt.
flash_tests() {  # what decides the defaults: the trainer with each fast path against PyTorch
    step test_flash 90 ./test_gpt2_sae "[flash]"
    # --fused-backward on (one-pass KL, one-pass SAE backward, DGELU): against PyTorch, against off in fp32, resume
    step test_fused 150 ./test_gpt2_sae "[fused]"
    issue14_lines
}
flash_kernels() {
    # the kernels' own checks and timings: flash (attention 2, and 3: tensor cores), the fused SAE
    # pass against the three kernels it replaces (sae 6), the one-pass KL in all three type forms (kl 4)
    step flash_bench 60 dev/cuda/attention 2
    step flash_bench_mma 45 dev/cuda/attention 3
    step sae_fused 90 dev/cuda/sae 6
    step kl_onepass 90 dev/cuda/kl 4
    # then the sanitizers: racecheck and memcheck on each new kernel at small shapes, memcheck on a
    # short bf16 trainer run with --fused-backward on (its model, head size 16, has no flash)
    step memcheck_fused 90 compute-sanitizer --tool memcheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode e2e+ds --precision bf16 \
        --attention materialized --fused-backward on --out /tmp/san_fused
    step sae_fused_racecheck 60 env SAE_SMALL=1 compute-sanitizer --tool racecheck --error-exitcode 9 dev/cuda/sae 6
    step sae_fused_memcheck 60 env SAE_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 9 dev/cuda/sae 6
    for v in 2 3; do
        step "flash_racecheck_$v" 60 env ATTENTION_SMALL=1 compute-sanitizer --tool racecheck --error-exitcode 9 dev/cuda/attention $v
        step "flash_memcheck_$v" 60 env ATTENTION_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 9 dev/cuda/attention $v
    done
    issue14_lines
}
issue14_lines() {  # what the steps above measured, into $OUT/issue14.txt (rewritten from every log there is)
    grep -h -E "variant [0-9] \(flash\)|^measured|ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL|fused v6|kl fused fwd\+bwd v4|time per step|host: median" \
        "$LOG/test_flash.log" "$LOG/test_fused.log" "$LOG"/flash_*.log "$LOG"/sae_fused*.log "$LOG/kl_onepass.log" "$LOG/memcheck_fused.log" \
        "$LOG/bench_e2e_bf16_L6.log" "$LOG/bench_e2e_bf16_L6_fast.log" "$LOG/test_graph.log" "$LOG"/bench_e2e_bf16_L6_*graph.log \
        2>/dev/null > "$OUT/issue14.txt"
    cat "$OUT/graph.txt" >> "$OUT/issue14.txt" 2>/dev/null
}
flash_checks() { flash_tests; flash_kernels; }

# issue 14's target: e2e, layer 6, bf16 at the paper shape with the paths that wait for a device
# (--attention flash --fused-backward on), right after the default bench_e2e_bf16_L6: both medians
# and their ratio into $OUT/issue14.txt (target: >= 455,000 tokens/s)
fast_bench() {
    step bench_e2e_bf16_L6_fast 100 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision bf16 --attention flash --fused-backward on \
        --max-steps 15 --out /tmp/b1f
    issue14_lines
}

# issue 14's last host-side step: a CUDA graph per micro-batch (--cuda-graph on), kept only if
# measured faster. First the same bits as off (test_gpt2_sae [graph]), then the fast paths' bench
# with --cuda-graph off and on, back to back on the same card: both medians and their ratio go into
# $OUT/graph.txt and $OUT/issue14.txt
graph_bench() {
    step test_graph 90 ./test_gpt2_sae "[graph]"
    local fast="--mode e2e --layer 6 --precision bf16 --attention flash --fused-backward on --max-steps 20"
    step bench_e2e_bf16_L6_nograph 100 ./train_gpt2_sae $bench_args $fast --cuda-graph off --out /tmp/bg0
    step bench_e2e_bf16_L6_graph 100 ./train_gpt2_sae $bench_args $fast --cuda-graph on --out /tmp/bg1
    local off on
    off=$(median_ms bench_e2e_bf16_L6_nograph)
    on=$(median_ms bench_e2e_bf16_L6_graph)
    if [ -n "$off" ] && [ -n "$on" ]; then
        awk -v a="$off" -v b="$on" 'BEGIN { printf "measured: e2e L6 bf16 flash+fused, median update %.2f ms with --cuda-graph on against %.2f ms off: %.3fx\n", b, a, a / b }' \
            | tee "$OUT/graph.txt"
    fi
    issue14_lines
}

# issue 13: a 4-SAE e2e sweep at layer 6 (sweeps/paper_e2e_L6_x4.jsonl, four lambdas from the same
# init) at the paper shape, right after the single run bench_e2e_bf16_L6 (call it first); the
# per-SAE speed-up is 4 x the single run's median step over the sweep's, into $OUT/issue13.txt
sweep_bench() {
    step bench_sweep4_e2e_bf16_L6 150 ./train_gpt2_sae $bench_args --precision bf16 --max-steps 12 --sweep sweeps/paper_e2e_L6_x4.jsonl --out /tmp/bs
    local single sweep
    single=$(median_ms bench_e2e_bf16_L6)
    sweep=$(median_ms bench_sweep4_e2e_bf16_L6)
    grep -h "time per step" "$LOG/bench_e2e_bf16_L6.log" "$LOG/bench_sweep4_e2e_bf16_L6.log" 2>/dev/null | tee -a "$OUT/issue13.txt"
    if [ -n "$single" ] && [ -n "$sweep" ]; then
        awk -v a="$single" -v b="$sweep" 'BEGIN { printf "measured: 4-SAE e2e sweep at layer 6: %.2f ms per update against %.2f ms for one SAE: %.2fx per SAE\n", b, a, 4 * a / b }' \
            | tee -a "$OUT/issue13.txt"
    fi
}

# --sae-kernels sparse (llmc/sae_sparse.cuh; no issue asks for it yet, so after every issue's checks):
# the trainer against PyTorch and dense ([sparse]), the kernels against the CPU and timed against the
# dense path at L0 32, 128, 512 and 23040 (dev/cuda/sae_sparse), the sanitizers at small shapes and on
# a short trainer run, then the paper-shape e2e L6 bench with the fast paths from an SAE at L0 ~32
# (init_sae_sparse), --sae-kernels dense and sparse back to back: both medians and their ratio
# into $OUT/sparse.txt
sparse_checks() {
    step test_sparse 150 ./test_gpt2_sae "[sparse]"
    step sae_sparse_bench 180 dev/cuda/sae_sparse  # checks at the paper shape (host references: ~13 GB of host memory), then timing
    make_paper_model
    local fast="--mode e2e --layer 6 --precision bf16 --attention flash --fused-backward on --max-steps 20 --init-sae $P/init_sae_sparse"
    step bench_e2e_bf16_L6_l0_dense 100 ./train_gpt2_sae $bench_args $fast --sae-kernels dense --out /tmp/bsd
    step bench_e2e_bf16_L6_l0_sparse 100 ./train_gpt2_sae $bench_args $fast --sae-kernels sparse --out /tmp/bss
    local dense sparse
    dense=$(median_ms bench_e2e_bf16_L6_l0_dense)
    sparse=$(median_ms bench_e2e_bf16_L6_l0_sparse)
    step sae_sparse_racecheck 60 env SAE_SMALL=1 compute-sanitizer --tool racecheck --error-exitcode 9 dev/cuda/sae_sparse 2
    step sae_sparse_memcheck 60 env SAE_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 9 dev/cuda/sae_sparse 2
    step memcheck_sparse 90 compute-sanitizer --tool memcheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode e2e+ds --precision bf16 \
        --sae-kernels sparse --out /tmp/san_sparse
    grep -h -E "^measured|L0|sparse|dense|PASS|FAIL|ERROR SUMMARY|RACECHECK SUMMARY|test cases|All tests|time per step" \
        "$LOG/test_sparse.log" "$LOG/sae_sparse_bench.log" "$LOG"/bench_e2e_bf16_L6_l0_*.log "$LOG"/sae_sparse_*check.log \
        "$LOG/memcheck_sparse.log" 2>/dev/null > "$OUT/sparse.txt"
    if [ -n "$dense" ] && [ -n "$sparse" ]; then
        awk -v a="$dense" -v b="$sparse" 'BEGIN { printf "measured: e2e L6 bf16 flash+fused at L0 ~32, median update %.2f ms with --sae-kernels sparse against %.2f ms dense: %.3fx\n", b, a, a / b }' \
            | tee -a "$OUT/sparse.txt"
    fi
}

# issue 14 item 3: the e2e_sae library's own training step on the same card, at the paper shape:
# fp32 as shipped, tf32 and bf16 autocast (dev/gpu_peer.sh; carry .whl and .peer, made here by
# dev/peer_pack.sh). Its log and measured lines go to $OUT/peer.txt; about 2 minutes, 5.5 at most.
peer_bench() { step e2e_sae_peer 330 env OUT="$OUT" bash dev/gpu_peer.sh; }

# the no-flag run a new user makes (make demo): the bundled demo model, on the GPU
demo_gpu() { step demo_gpu 90 ./train_gpt2_sae --overwrite --out /tmp/demo_gpu --dump-features /tmp/demo_gpu/features; }

# --dump-features on the GPU against the CPU trainer, same SAE (compare_mode e2e's) and val rows, fp32:
# every tensor (top-K, histograms, band examples, contexts, logit effects, ablation) within
# dev/compare_features.py's bounds; its measured lines go to $OUT/issue15.txt
dump_compare() {
    step dump_cpu 60 ./train_gpt2_sae_cpu $cmp_args --mode e2e --eval-only --init-sae /tmp/cmp_cpu_e2e --dump-features /tmp/dump_cpu --dump-tokens 8192 --out /tmp/dump_cpu_run
    step dump_gpu 30 ./train_gpt2_sae $cmp_args --mode e2e --precision fp32 --eval-only --init-sae /tmp/cmp_cpu_e2e --dump-features /tmp/dump_gpu --dump-tokens 8192 --out /tmp/dump_gpu_run
    step agree_dump 20 python3 dev/compare_features.py /tmp/dump_gpu /tmp/dump_cpu --tol 1e-4
    grep -h "^measured" "$LOG/agree_dump.log" 2>/dev/null | tee "$OUT/issue15.txt"
}

if [ "$stage" = session ]; then  # one device session: the open issues' deciding checks first (see Usage)
    step test_odd_shapes 90 ./test_gpt2_sae "[odd]"        # issue 16
    step test_real_scale 150 ./test_gpt2_sae "[real]"
    grep -h "^measured" "$LOG/test_odd_shapes.log" "$LOG/test_real_scale.log" 2>/dev/null > "$OUT/issue16.txt"
    flash_tests                                             # issue 14: the fast paths against PyTorch, then their speed
    make_paper_model
    step bench_e2e_bf16_L6 100 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision bf16 --max-steps 15 --out /tmp/b1
    fast_bench
    compare_mode e2e                                        # GPU vs CPU, and the SAE dump_compare reads (issue 15)
    dump_compare
    step test_gpt2_sae 200 ./test_gpt2_sae "~[odd]~[real]~[flash]~[sweep]~[fused]~[graph]~[sparse]~[order]"
    flash_kernels
    peer_bench
    graph_bench                                             # issue 14: a CUDA graph per micro-batch, if it pays
    memcheck e2e+ds bf16
    gpu_tests                                               # what is left of it: the sweep (issue 13)
    sweep_bench
    sparse_checks                                           # --sae-kernels sparse, no issue's yet
fi
if [ "$stage" = sparse ]; then
    sparse_checks
fi
if [ "$stage" = peer ]; then  # ours and the library's at the paper shape, same card, one call
    make_paper_model
    step bench_e2e_fp32_L6 60 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision fp32 --max-steps 7 --out /tmp/b6
    step bench_e2e_bf16_L6 100 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision bf16 --max-steps 15 --out /tmp/b1
    fast_bench
    peer_bench
    graph_bench
fi
if [ "$stage" = flash ]; then
    flash_checks
fi
if [ "$stage" = tests ] || [ "$stage" = core ] || [ "$stage" = all ]; then
    gpu_tests
    demo_gpu
    compare_mode e2e
    dump_compare
fi
if [ "$stage" = kernels ] || [ "$stage" = core ] || [ "$stage" = all ]; then
    flash_checks
    make_paper_model
    step bench_e2e_bf16_L6 100 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision bf16 --max-steps 15 --out /tmp/b1
    fast_bench
    graph_bench
    sweep_bench
    memcheck e2e+ds bf16
    sparse_checks
    step dev_cuda 150 env TIMEOUT=60 LOG_DIR="$LOG/dev_cuda" bash dev/cuda/run_all.sh  # each bench in full: checks, timing (attention: ~15 s of CPU reference)
fi
if [ "$stage" = extra ] || [ "$stage" = all ]; then
    make_paper_model
    step bench_local_bf16_L6 80 ./train_gpt2_sae $bench_args --mode local --layer 6 --precision bf16 --max-steps 15 --out /tmp/b2
    step bench_e2e_ds_bf16_L6 100 ./train_gpt2_sae $bench_args --mode e2e+ds --layer 6 --precision bf16 --max-steps 15 --out /tmp/b3
    step bench_e2e_bf16_L2 100 ./train_gpt2_sae $bench_args --mode e2e --layer 2 --precision bf16 --max-steps 12 --out /tmp/b4
    step bench_e2e_bf16_L10 100 ./train_gpt2_sae $bench_args --mode e2e --layer 10 --precision bf16 --max-steps 12 --out /tmp/b5
    step bench_e2e_fp32_L6 150 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision fp32 --max-steps 7 --out /tmp/b6
    memcheck e2e+ds fp32; memcheck local fp32; memcheck local bf16; memcheck e2e fp32
    step racecheck_e2e_ds 150 compute-sanitizer --tool racecheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode e2e+ds --precision bf16 --out /tmp/san_race
    step initcheck_e2e_ds 150 compute-sanitizer --tool initcheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode e2e+ds --precision fp32 --out /tmp/san_init
    compare_mode local
    compare_mode e2e+ds
fi
if [ "$stage" = final ]; then  # one call after a change: everything that can move, in priority order
    gpu_tests
    flash_checks
    demo_gpu
    make_paper_model
    for mode in e2e local e2e+ds; do
        step "bench_${mode/+/_}_bf16_L6" 90 ./train_gpt2_sae $bench_args --mode $mode --layer 6 --precision bf16 --max-steps 20 --out /tmp/b_$mode
    done
    sweep_bench
    step bench_e2e_bf16_L2 90 ./train_gpt2_sae $bench_args --mode e2e --layer 2 --precision bf16 --max-steps 15 --out /tmp/b4
    step bench_e2e_bf16_L10 90 ./train_gpt2_sae $bench_args --mode e2e --layer 10 --precision bf16 --max-steps 15 --out /tmp/b5
    compare_mode e2e; compare_mode local; compare_mode e2e+ds
    dump_compare
    memcheck e2e bf16
    for mode in local e2e; do
        step "racecheck_${mode}" 90 compute-sanitizer --tool racecheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode $mode --precision bf16 --out /tmp/san_r$mode
        step "initcheck_${mode}" 90 compute-sanitizer --tool initcheck --error-exitcode 9 ./train_gpt2_sae $san_args --mode $mode --precision fp32 --out /tmp/san_i$mode
    done
    step dev_cuda 170 env TIMEOUT=60 LOG_DIR="$LOG/dev_cuda" bash dev/cuda/run_all.sh
    step bench_e2e_fp32_L6 60 ./train_gpt2_sae $bench_args --mode e2e --layer 6 --precision fp32 --max-steps 7 --out /tmp/b6
fi
echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$LOG/summary.txt"
tar czf "$OUT/logs.tgz" -C "$OUT" logs
