#!/usr/bin/env bash
# dev/gpu_pack.sh -- builds every CUDA binary for sm_90 here (no GPU needed) and collects them
# in .devbin/ (git-ignored), which a lent GPU machine receives; dev/gpu_check.sh unpacks them.
set -eu
cd "$(dirname "$0")/.."
make -j2 GPU_ARCHS="-gencode arch=compute_90,code=sm_90" train_gpt2_sae test_gpt2_sae train_gpt2_sae_cpu
(cd dev/cuda && make -j2)
rm -rf .devbin && mkdir -p .devbin/cuda
cp train_gpt2_sae test_gpt2_sae train_gpt2_sae_cpu .devbin/
for src in dev/cuda/*.cu; do cp "${src%.cu}" .devbin/cuda/; done
du -sh .devbin
