#!/usr/bin/env bash
# The first README command (`make demo`): trains an e2e SAE on the bundled demo model
# (models/tinyshakespeare-gpt2-4L128, layer 2) with the trainers' demo presets, dumps its
# features, and writes the HTML report. On the GPU trainer when there is a GPU and nvcc (or an
# already built ./train_gpt2_sae), else on the CPU trainer. Offline; running it again starts
# the run over in the same folder.
#
#   make demo                      (or: bash scripts/demo.sh, after make train_gpt2_sae_cpu)
#   OUT=runs/demo                  where the SAE, log.jsonl, features/ and report.html go
# Needs /usr/bin/python3 with numpy (Debian's python3-numpy) for the report.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo}

if nvidia-smi -L >/dev/null 2>&1 && { command -v "${NVCC:-nvcc}" >/dev/null || [ -x ./train_gpt2_sae ]; }; then
    command -v "${NVCC:-nvcc}" >/dev/null && make --no-print-directory train_gpt2_sae
    TRAINER=./train_gpt2_sae
else
    echo "no GPU (or no nvcc to build the GPU trainer): the demo runs on the CPU trainer"
    make --no-print-directory train_gpt2_sae_cpu
    TRAINER=./train_gpt2_sae_cpu
fi
rm -rf "$OUT/features"  # a feature dump from an earlier run must not outlive it
start=$(date +%s)
$TRAINER --out "$OUT" --overwrite --dump-features "$OUT/features"
echo "training and feature dump took $(( $(date +%s) - start )) s"
/usr/bin/python3 scripts/report.py --log "$OUT/log.jsonl" --features "$OUT/features" --tokenizer data/gpt2 \
    --out "$OUT/report.html"
echo "report: $(realpath "$OUT/report.html")"
