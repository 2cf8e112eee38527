#!/usr/bin/env bash
# dev/gpu_pack.sh -- builds every binary the GPU checks run (train_gpt2_sae, test_gpt2_sae, the
# train_gpt2_sae_cpu they are compared with, and the dev/cuda benches) for sm_90 (H100 / H200)
# on any machine with nvcc, no GPU needed, and collects them in .devbin/ (git-ignored). Copy the
# clone, .devbin/ included, to the GPU box and run dev/gpu_check.sh there: it puts the binaries
# in place first, so that box needs the CUDA driver, compute-sanitizer and python3 with torch,
# not nvcc.
# On a GPU box with nvcc, build there instead (make; make -C dev/cuda) and run dev/gpu_check.sh.
set -eu
cd "$(dirname "$0")/.."
make -j2 GPU_ARCHS="-gencode arch=compute_90,code=sm_90" train_gpt2_sae test_gpt2_sae train_gpt2_sae_cpu
(cd dev/cuda && make -j2)
rm -rf .devbin && mkdir -p .devbin/cuda
cp train_gpt2_sae test_gpt2_sae train_gpt2_sae_cpu .devbin/
for src in dev/cuda/*.cu; do cp "${src%.cu}" .devbin/cuda/; done
du -sh .devbin
