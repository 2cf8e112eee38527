#!/usr/bin/env bash
# dev/forecast_gpu_tests.sh -- runs test/test_gpt2_sae.cu's GPU tests on the CPU, through the mock:
# test_gpt2_sae.cu built by g++ against test/mock_cuda.h (CPU stand-ins for the CUDA runtime and
# every kernel launcher, bf16 storage rounded as the GPU stores it), in build/forecast/, where
# ./train_gpt2_sae is the mocked trainer. Not a GPU run: the kernels are the mock's, and cuBLAS's
# summation order is not modelled. What it forecasts is whether a test's design and bounds hold
# (bf16 tolerances, gate flips, orchestration) before a device session spends time on it.
# Usage: bash dev/forecast_gpu_tests.sh ["Catch2 test spec"]   e.g. "[odd]" or "real scale: one pass*"
# (default "~[real]": the real-scale cases run GPT-2 small on the CPU, ~10 minutes on 2 cores)
set -eu
cd "$(dirname "$0")/.."
spec=${1:-"~[real]"}
make -s train_gpt2_sae_mocked train_gpt2_sae_cpu
F=build/forecast
mkdir -p $F
g++ -O2 -std=c++17 -fopenmp -w -DMOCK_CUDA -x c++ test/test_gpt2_sae.cu -o $F/test_gpt2_sae_mocked
# the repo's files as the tests expect them, with the mocked trainer as ./train_gpt2_sae
for f in data models scripts test dev llmc build train_gpt2_sae_cpu; do ln -sfn "$PWD/$f" "$F/$f"; done
ln -sfn "$PWD/train_gpt2_sae_mocked" $F/train_gpt2_sae
cd $F && ./test_gpt2_sae_mocked "$spec"
