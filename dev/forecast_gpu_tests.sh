#!/usr/bin/env bash
# dev/forecast_gpu_tests.sh -- runs test/test_gpt2_sae.cu's GPU tests on the CPU, in one of two builds:
#   (default)   through the mock: test_gpt2_sae.cu built by g++ against test/mock_cuda.h (CPU
#               stand-ins for the CUDA runtime and every kernel launcher, bf16 storage rounded as the
#               GPU stores it), in build/forecast/, with the mocked trainer as ./train_gpt2_sae.
#               What it forecasts is whether a test's design and bounds hold (bf16 tolerances, gate
#               flips, orchestration) before a device session spends time on it.
#   --emulated  with llmc's kernels and launchers as written (test/cuda_host_emulation.h: threads as
#               fibers, warp operations, mma.sync and clusters from their definitions; cuBLASLt's
#               matmul a CPU loop) on test/mock_cuda_runtime.h, in build/forecast_emu/, with
#               train_gpt2_sae_emulated as ./train_gpt2_sae: the device tests run the GPU code
#               itself, slowly, and catch what the mock's stand-ins cannot (a launcher's arguments,
#               a kernel's indexing, tiling or synchronisation).
# Neither is a GPU run: no timing, no hardware rounding order (cuBLAS's, mma's), and races only as far
# as the emulation's thread orders expose them ([order] runs the trainer in each: EMU_ORDER).
# Usage: bash dev/forecast_gpu_tests.sh [--emulated] ["Catch2 test spec"]   e.g. "[odd]"
# (default spec "~[real]": the real-scale cases run GPT-2 small, ~10 minutes on 2 cores through the
# mock and far longer emulated; through the mock also "~[graph]~[order]": its launchers cannot be
# captured, and it has no thread order to vary)
set -eu
cd "$(dirname "$0")/.."
emulated=0
if [ "${1:-}" = "--emulated" ]; then emulated=1; shift; fi
if [ $emulated = 1 ]; then spec=${1:-"~[real]"}; else spec=${1:-"~[real]~[graph]~[order]"}; fi
if [ $emulated = 1 ]; then
    make -s train_gpt2_sae_emulated build/emu/test_gpt2_sae_emulated train_gpt2_sae_cpu
    F=build/forecast_emu
    mkdir -p $F
    cp build/emu/test_gpt2_sae_emulated $F/test_gpt2_sae_forecast
    trainer=train_gpt2_sae_emulated
else
    make -s train_gpt2_sae_mocked train_gpt2_sae_cpu
    F=build/forecast
    mkdir -p $F
    g++ -O2 -std=c++17 -fopenmp -w -DMOCK_CUDA -x c++ test/test_gpt2_sae.cu -o $F/test_gpt2_sae_forecast
    trainer=train_gpt2_sae_mocked
fi
# the repo's files as the tests expect them, with the trainer of this build as ./train_gpt2_sae
for f in data models scripts test dev llmc build train_gpt2_sae_cpu; do ln -sfn "$PWD/$f" "$F/$f"; done
ln -sfn "$PWD/$trainer" $F/train_gpt2_sae
cd $F && ./test_gpt2_sae_forecast "$spec"
