#!/usr/bin/env bash
# dev/gpu_peer.sh -- on the GPU box: times the e2e_sae library's training step (dev/bench_e2e_sae.py)
# at the paper shape (GPT-2 small shape, random weights, layer 6, d_sae 46080, B 8, T 1024,
# accumulation 2, e2e) in fp32 as shipped, tf32 and bf16 autocast, for the side-by-side with our
# engine's bench_e2e_*_L6 runs on the same card. Needs what dev/peer_pack.sh put in .whl/ and .peer/
# (carry both); the box has torch and transformers, and reaches no registry.
# Installs the wheels into /tmp/site (for this script's processes only), unpacks the library's source
# into /tmp/peer, tries the import (one line naming a missing module if it fails), then runs the
# three precisions, each under its own timeout: about 2 minutes in all if the fp32 update takes
# 2-4 s, under 5 at the very most (the timeouts). The whole log, then the measured lines, go to $OUT/peer.txt.
# Usage, from the repo root: OUT=/some/dir bash dev/gpu_peer.sh   (dev/gpu_check.sh calls it)
#   PEER_BENCH_ARGS is added to every timed run: '--small --device cpu' checks this script on a CPU.
set -u
OUT=${OUT:-/tmp/gpu_peer}
mkdir -p "$OUT"
R=$OUT/peer.txt
export PYTHONUNBUFFERED=1
run() {
    echo "== box: $(python3 -c 'import importlib.metadata as m, sys; print("python", sys.version.split()[0], *(f"{n} {m.version(n)}" for n in ("torch", "transformers", "typing-extensions", "pyarrow", "fsspec", "numpy", "pandas")))' 2>&1)"
    ls .whl/*.whl .peer/e2e_sae-2.1.1.tar.gz > /dev/null || { echo "peer: .whl or .peer missing: run dev/peer_pack.sh here and carry both"; return 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "peer: wheel install failed"; return 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    rm -rf /tmp/peer && mkdir -p /tmp/peer && tar xzf .peer/e2e_sae-2.1.1.tar.gz -C /tmp/peer || { echo "peer: untar failed"; return 1; }
    local bench="python3 dev/bench_e2e_sae.py --src /tmp/peer/e2e_sae"
    timeout 60 $bench --import-only || { echo "peer: import failed (the line above says what); nothing timed"; return 1; }
    # fp32 first and with the most room: the slowest, and the library as shipped
    local p t rc
    for p in fp32:90 tf32:60 bf16:60; do
        t=${p#*:}; p=${p%:*}
        timeout "$t" $bench --precision "$p" --layer 6 --ratio 60 --batch 8 --seq 1024 --accum 2 --warmup 2 --steps 5 ${PEER_BENCH_ARGS:-}
        rc=$?
        [ $rc -eq 0 ] || echo "peer: $p rc=$rc$([ $rc -eq 124 ] && echo " (over its ${t} s timeout)")"
    done
}
start=$(date +%s)
run > "$R" 2>&1
echo "peer: $(( $(date +%s) - start )) s in all" >> "$R"
grep -E "^(== box|peer:|import failed|imported|measured)" "$R"
measured=$(grep "^measured" "$R")
printf '=== measured\n%s\n' "${measured:-(none)}" >> "$R"
[ "$(grep -c "^measured" <<< "$measured")" -eq 3 ]  # fails unless all three precisions were timed
