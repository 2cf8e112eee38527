/*
Helpers for the dev/cuda kernel benches: random inputs, device allocation, the comparison of a
GPU result with its CPU reference (check_close), event timing (median of repeats after warm-up)
with one bandwidth line, and the command line every bench shares (bench_main):

  ./NAME          CPU self-test, GPU checks of every variant, then timing of every variant
  ./NAME check    CPU self-test and the GPU checks of every variant; no timing
  ./NAME cpu      CPU self-test only: the CPU references against finite differences, direct
                  formulas, hand-worked examples or brute force; needs no GPU
  ./NAME N        GPU checks of variant N alone, then its timing
Exit code 0 if every check passed, 1 if one failed, 2 on a bad argument.
*/
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <vector>
#include <algorithm>
#include <thread>
#include "../../llmc/cuda_common.cuh"

#include "rand.h"
inline float* make_random_float(size_t n, float lo = -1.0f, float hi = 1.0f) {
    float* a = (float*)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = lo + (hi - lo) * rand_uniform();
    return a;
}

// a fresh device array of n elements of T (at least one, so n = 0 still gives a valid pointer)
template <typename T>
T* device_alloc(size_t n) {
    T* d;
    cudaCheck(cudaMalloc(&d, std::max(n, (size_t)1) * sizeof(T)));
    return d;
}

// copy a host fp32 array to a fresh device array of type T
template <typename T>
T* to_device(const float* h, size_t n) {
    std::vector<T> tmp(n);
    for (size_t i = 0; i < n; i++) tmp[i] = (T)h[i];
    T* d = device_alloc<T>(n);
    cudaCheck(cudaMemcpy(d, tmp.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

// poison a device buffer (NaN bytes) so unwritten outputs fail validation
inline void poison(void* d, size_t bytes) { cudaCheck(cudaMemset(d, 0xff, bytes)); }

// median time in ms of `repeats` runs of f after `warmup` runs, by CUDA events
template <typename F>
float benchmark_kernel(int warmup, int repeats, F f) {
    for (int i = 0; i < warmup; i++) f();
    cudaCheck(cudaDeviceSynchronize());
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start)); cudaCheck(cudaEventCreate(&stop));
    std::vector<float> times;
    for (int i = 0; i < repeats; i++) {
        cudaCheck(cudaEventRecord(start));
        f();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float ms; cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    cudaCheck(cudaEventDestroy(start)); cudaCheck(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// one timing line: the median time, and the bandwidth it implies for `bytes` read + written,
// against ~3.0 TB/s (an H100's device-to-device copy)
inline void report_bandwidth(const char* what, float ms, double bytes) {
    printf("  %-40s %8.3f ms  %7.0f GB/s  (%.0f%% of 3.0 TB/s)\n", what, ms, bytes / (ms / 1e3) / 1e9,
           100.0 * bytes / (ms / 1e3) / 3.0e12);
}

// ----------------------------------------------------------------------------
// comparing a GPU result with its CPU reference. A bench runs every check before deciding
// (one GPU run shows every failure), so these print and return whether they passed.

// |gpu - cpu| <= atol + rtol·|cpu| for every element (NaN fails, so poisoned or unwritten
// outputs fail); prints the relative L2 and the max absolute error, and up to 5 mismatches
template <typename T>
bool check_close(const T* d_result, const float* ref, const char* name, size_t n, double rtol, double atol) {
    std::vector<T> out(n);
    cudaCheck(cudaMemcpy(out.data(), d_result, n * sizeof(T), cudaMemcpyDeviceToHost));
    double max_err = 0.0, num = 0.0, den = 0.0;
    size_t nbad = 0;
    for (size_t i = 0; i < n; i++) {
        double o = (double)(float)out[i], r = ref[i];
        double err = fabs(o - r);
        if (!(err <= atol + rtol * fabs(r))) {
            if (nbad < 5) printf("  %s mismatch at %zu: gpu %.8g cpu %.8g\n", name, i, o, r);
            nbad++;
        }
        if (!(err <= max_err)) max_err = err;  // keeps a NaN visible in the printout
        num += (o - r) * (o - r); den += r * r;
    }
    double rel = sqrt(num / (den > 0 ? den : 1.0));
    printf("  %-28s rel L2 err %.3e  max abs err %.3e  (rtol %.1e atol %.1e) %s\n", name, rel, max_err, rtol, atol,
           nbad ? "FAIL" : "ok");
    if (nbad) printf("  %s: %zu of %zu elements out of tolerance\n", name, nbad, n);
    return nbad == 0;
}

// the usual test: tol relative to |cpu|, plus tol relative to a tenth of the largest |cpu| (so an
// element that is near zero by cancellation is judged against the tensor's scale), i.e.
// |gpu - cpu| <= tol·(|cpu| + 0.1·max|cpu|)
template <typename T>
bool check_result(const T* d_result, const float* ref, const char* name, size_t n, float tol) {
    double max_ref = 0.0;
    for (size_t i = 0; i < n; i++) max_ref = fmax(max_ref, fabs(ref[i]));
    return check_close(d_result, ref, name, n, tol, 0.1 * tol * max_ref);
}

// round a host array through storage type T (identity for float), so a CPU reference sees
// exactly the inputs the GPU sees
template <typename T>
void round_to_storage(float* h, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = (float)(T)h[i];
}

// copy a device array of type T back to host floats
template <typename T>
std::vector<float> from_device(const T* d, size_t n) {
    std::vector<T> tmp(n);
    cudaCheck(cudaMemcpy(tmp.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) out[i] = (float)tmp[i];
    return out;
}

// the name printed for a storage type
template <typename T> inline const char* type_name();
template <> inline const char* type_name<float>() { return "fp32"; }
template <> inline const char* type_name<bf16>() { return "bf16"; }

// ----------------------------------------------------------------------------
// big random inputs filled on the device (no host generation or copy at 400M elements), which
// the host can regenerate element by element: value i depends only on (seed, i), and both sides
// compute it with the same integer hash and one correctly rounded fmaf, so they agree bit for bit

__host__ __device__ inline float hash_uniform(unsigned long long seed, size_t i, float lo, float hi) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ULL + (unsigned long long)i;  // splitmix64 of (seed, i)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    const float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 bits: exact in float, [0, 1)
    return fmaf(hi - lo, u, lo);
}

// relu_shift > 0 gives ReLU-like data: max(0, value - relu_shift), mostly zeros
template <typename T>
__global__ void fill_random_kernel(T* out, size_t n, unsigned long long seed, float lo, float hi, float relu_shift) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = hash_uniform(seed, i, lo, hi);
        if (relu_shift > 0.0f) x = fmaxf(x - relu_shift, 0.0f);
        out[i] = from_float<T>(x);
    }
}
template <typename T>
void fill_random(T* d, size_t n, unsigned long long seed, float lo, float hi, float relu_shift = 0.0f) {
    fill_random_kernel<<<(unsigned)std::min(ceil_div(n, (size_t)256), (size_t)65536), 256>>>(d, n, seed, lo, hi, relu_shift);
    cudaLaunchCheck();
}
// the value fill_random stored at index i, as a float (rounded through T)
template <typename T>
float host_random(size_t i, unsigned long long seed, float lo, float hi, float relu_shift = 0.0f) {
    float x = hash_uniform(seed, i, lo, hi);
    if (relu_shift > 0.0f) x = fmaxf(x - relu_shift, 0.0f);
    return (float)(T)x;
}
// the whole array, on all host cores (each element depends only on its index, so any split gives
// the same result; 377M elements take seconds on one core)
template <typename T>
std::vector<float> host_random_array(size_t n, unsigned long long seed, float lo, float hi, float relu_shift = 0.0f) {
    std::vector<float> h(n);
    auto fill = [&](size_t begin, size_t end) {
        for (size_t i = begin; i < end; i++) h[i] = host_random<T>(i, seed, lo, hi, relu_shift);
    };
    const size_t num_threads = n < (1u << 20) ? 1 : std::min<size_t>(32, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> threads;
    for (size_t t = 1; t < num_threads; t++) threads.emplace_back(fill, n * t / num_threads, n * (t + 1) / num_threads);
    fill(0, n / num_threads);
    for (auto& th : threads) th.join();
    return h;
}

// ----------------------------------------------------------------------------
// the command line every bench shares (see the top of this file): parses it, runs the bench's
// parts in order and prints one closing line; each bench's main is one call of this.
// gpu_checks and timing get `only`: 0 for every variant, else the one variant to run. A bench
// with one implementation has num_variants 1 (`./NAME 1` runs it all); in a bench with variants
// of some kernels and a single version of others, `./NAME N` runs variant N and skips the rest.

inline int bench_main(int argc, char** argv, const char* name, int num_variants, int (*cpu_self_test)(),
                      int (*gpu_checks)(int only), void (*timing)(int only)) {
    setvbuf(stdout, NULL, _IOLBF, 0);  // a fatal error on stderr lands in order in a piped log
    const char* arg = argc > 1 ? argv[1] : "";
    const bool cpu_only = strcmp(arg, "cpu") == 0, check_only = strcmp(arg, "check") == 0;
    int only = 0;
    if (argc > 1 && !cpu_only && !check_only) {
        char* end;
        const long v = strtol(arg, &end, 10);
        if (argc > 2 || *end != '\0' || v < 1 || v > num_variants) {
            fprintf(stderr, "usage: ./%s [check|cpu|N]  (N: variant 1..%d; see the top of %s.cu)\n", name, num_variants, name);
            return 2;
        }
        only = (int)v;
    }
    printf("CPU self-test:\n");
    int failures = cpu_self_test();
    if (!cpu_only) {
        failures += gpu_checks(only);
        if (!check_only) timing(only);
    }
    printf("%s%s: %s (%d failed checks)\n", name, cpu_only ? " cpu" : "", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
