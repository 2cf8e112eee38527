#!/bin/bash
# The CPU trainer's sweep against single runs: one --sweep of the six SAEs of
# sweeps/shakespeare_local_e2e.jsonl against the six single runs with the same flags, each for
# N updates (default 20) on the bundled demo model, evals off. Prints each run's median tokens/s
# over its updates after the first two (warm-up), and the sweep's speed-up per SAE:
# (6 x sweep tokens/s) / (6 / sum over the singles of 1/tokens/s), i.e. SAE-tokens/s of the
# sweep over SAE-tokens/s of the six singles run one after the other.
#   bash dev/bench_sweep_cpu.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
SWEEP=sweeps/shakespeare_local_e2e.jsonl
OUT=$(mktemp -d /tmp/bench_sweep.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
make -s train_gpt2_sae_cpu
FLAGS="--max-steps $N --eval-samples 0"
median_tps() {  # median tokens_per_s of a log's training lines, the first two dropped
    /usr/bin/python3 -c '
import json, statistics, sys
t = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if "\"eval\"" not in l][2:]
print(statistics.median(t))' "$1"
}
./train_gpt2_sae_cpu --sweep $SWEEP --out "$OUT/sweep" $FLAGS > "$OUT/sweep.txt"
sweep=$(median_tps "$OUT/sweep/$(head -1 $SWEEP | /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["name"])')/log.jsonl")
inv_sum=0
while read -r line; do
    [ -z "$line" ] && continue
    flags=$(echo "$line" | /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print(d["name"], " ".join("--" + k.replace("_", "-") + " " + str(v) for k, v in d.items() if k != "name"))')
    name=${flags%% *}
    ./train_gpt2_sae_cpu ${flags#* } --out "$OUT/$name" $FLAGS > "$OUT/$name.txt"
    tps=$(median_tps "$OUT/$name/log.jsonl")
    echo "single $name: median $tps tokens/s"
    inv_sum=$(/usr/bin/python3 -c "print($inv_sum + 1 / $tps)")
done < $SWEEP
n=$(grep -c . $SWEEP)
/usr/bin/python3 -c "
sweep, inv, n = $sweep, $inv_sum, $n
single = n / inv
print(f'sweep of {n}: median {sweep:.0f} tokens/s = {n * sweep:.0f} SAE-tokens/s')
print(f'{n} singles one after the other: {single:.0f} SAE-tokens/s')
print(f'speed-up per SAE: {n * sweep / single:.2f}x')"
