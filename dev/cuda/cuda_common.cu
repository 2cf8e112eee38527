/*
cast_copy, llmc/cuda_common.cuh: a whole array converted between storage types (the trainer's
bf16 copies of the fp32 SAE weights and biases, and GPT-2's weights uploaded into bf16 storage),
compared exactly with the host's conversion; then timing at the paper's W_enc size. The other
helpers of cuda_common.cuh (block reductions, deterministic_sum, 128-bit packs) are checked
through the kernels that use them, in the other benches.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make cuda_common
  ./cuda_common [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU
                                checks; cpu: CPU self-test only (no GPU)
One implementation (variant 1, llmc's cast_copy: one element per thread), which the trainer ships
for fp32 -> bf16 (bf16 mode) and fp32 -> fp32 (fp32 mode).

CPU self-test: the host's fp32 -> bf16 conversion, which the checks take as the reference,
rounds to nearest even on hand-picked ties. Checks: fp32 -> bf16, bf16 -> fp32, fp32 -> fp32,
bf16 -> bf16 at n = 1 and 1,000,003 on poisoned outputs, exact (tolerance 0). Exit code 1 on any
mismatch.
*/
#include "common.h"

// ----------------------------------------------------------------------------
// CPU self-test: bf16 has 7 stored mantissa bits, so on [1, 2) its spacing is 2^-7

int cpu_self_test() {
    const float h = 1.0f / 256.0f;  // 2^-8: half the spacing
    struct { float in, expect; } cases[] = {
        {1.0f + h, 1.0f},                          // a tie: to the even neighbour, 1
        {1.0f + 3.0f * h, 1.0f + 4.0f * h},        // a tie: to the even neighbour, 1 + 2^-6
        {1.0f + h + h / 4096.0f, 1.0f + 2.0f * h}, // just above the tie: up
        {-(1.0f + h), -1.0f},                      // the sign does not change the rounding
        {3.0f, 3.0f},                              // exact
    };
    int failures = 0;
    for (const auto& c : cases) {
        const float got = (float)(bf16)c.in;
        const bool ok = got == c.expect;
        printf("  host fp32 -> bf16: %.9g -> %.9g (expected %.9g) %s\n", c.in, got, c.expect, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    return failures;
}

// ----------------------------------------------------------------------------
// checks

template <typename Tout, typename Tin>
int check_cast(size_t n) {
    float* h = make_random_float(n, -100.0f, 100.0f);
    std::vector<float> in(h, h + n);
    round_to_storage<Tin>(in.data(), n);  // what the input buffer holds
    std::vector<float> ref(in);
    round_to_storage<Tout>(ref.data(), n);
    Tin* d_in = to_device<Tin>(in.data(), n);
    Tout* d_out = device_alloc<Tout>(n);
    poison(d_out, n * sizeof(Tout));
    cast_copy(d_out, d_in, n, 0);
    char name[96];
    snprintf(name, sizeof(name), "cast_copy %s->%s n=%zu", type_name<Tin>(), type_name<Tout>(), n);
    int failures = !check_close(d_out, ref.data(), name, n, 0.0, 0.0);
    cudaCheck(cudaFree(d_in)); cudaCheck(cudaFree(d_out));
    free(h);
    return failures;
}

int gpu_checks(int) {
    printf("casts:\n");
    int failures = 0;
    for (size_t n : {(size_t)1, (size_t)1000003}) {
        failures += check_cast<bf16, float>(n);
        failures += check_cast<float, bf16>(n);
        failures += check_cast<float, float>(n);
        failures += check_cast<bf16, bf16>(n);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing

void timing(int) {
    printf("timing (median of 20):\n");
    const size_t n = (size_t)768 * 46080;  // W_enc of the paper's SAE
    float* h = make_random_float(n);
    float* d_in = to_device<float>(h, n);
    bf16* d_out = device_alloc<bf16>(n);
    float ms = benchmark_kernel(3, 20, [&] { cast_copy(d_out, d_in, n, 0); });
    report_bandwidth("cast_copy fp32->bf16 W_enc", ms, 6.0 * n);  // 4 bytes read, 2 written
    cudaCheck(cudaFree(d_in)); cudaCheck(cudaFree(d_out));
    free(h);
}

int main(int argc, char** argv) { return bench_main(argc, argv, "cuda_common", 1, cpu_self_test, gpu_checks, timing); }
