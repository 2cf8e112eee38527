/*
GPT-2 embedding, llmc/encoder.cuh: out[b,t,:] = wte[inp[b,t],:] + wpe[t,:], against a plain CPU
loop; then timing at GPT-2 small's shape.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make encoder
  ./encoder [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU checks;
                            cpu: CPU self-test only (no GPU)
One implementation (variant 1, llmc's encoder_forward: one thread per output element), which
the trainer ships in fp32 and bf16.

CPU self-test: the reference on a hand-worked example. Checks, fp32 then bf16, output poisoned
first: (B,T,C,V) = (2,5,7,11) and (4,64,768,1000), token ids including 0 and V-1, T below maxT
(wpe has more rows than are used). Tolerances: fp32 1e-6 relative (one fp32 add, the reference
is the same add in double rounded once); bf16 1e-2 (one output rounding of 2^-8). Exit code 1 on
any mismatch.
*/
#include "common.h"
#include "../../llmc/encoder.cuh"

// ----------------------------------------------------------------------------
// CPU reference

void encoder_forward_cpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float* e = wte + (size_t)inp[b * T + t] * C;
            const float* p = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) out[((size_t)b * T + t) * C + c] = (float)((double)e[c] + p[c]);
        }
}

// a hand-worked example: V 3, C 2, one row of two tokens (2, 0)
int cpu_self_test() {
    const float wte[6] = {1, 2, 3, 4, 5, 6}, wpe[4] = {10, 20, 30, 40};
    const int tokens[2] = {2, 0};
    const float expect[4] = {15, 26, 31, 42};  // wte[2] + wpe[0], wte[0] + wpe[1]
    float out[4];
    encoder_forward_cpu(out, tokens, wte, wpe, 1, 2, 2);
    bool ok = memcmp(out, expect, sizeof(out)) == 0;
    printf("  cpu encoder reference on a hand example: %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

// ----------------------------------------------------------------------------
// checks

template <typename floatX>
int check_encoder(int B, int T, int C, int V, float tol) {
    const int maxT = T + 3;
    const size_t n = (size_t)B * T * C;
    float* wte = make_random_float((size_t)V * C);
    float* wpe = make_random_float((size_t)maxT * C);
    round_to_storage<floatX>(wte, (size_t)V * C); round_to_storage<floatX>(wpe, (size_t)maxT * C);
    std::vector<int> tokens(B * T);
    for (int i = 0; i < B * T; i++) tokens[i] = (int)(rand_uniform() * V) % V;
    tokens[0] = V - 1; tokens[B * T - 1] = 0;
    std::vector<float> ref(n);
    encoder_forward_cpu(ref.data(), tokens.data(), wte, wpe, B, T, C);
    floatX* d_wte = to_device<floatX>(wte, (size_t)V * C);
    floatX* d_wpe = to_device<floatX>(wpe, (size_t)maxT * C);
    int* d_tokens = device_alloc<int>(B * T);
    cudaCheck(cudaMemcpy(d_tokens, tokens.data(), B * T * sizeof(int), cudaMemcpyHostToDevice));
    floatX* d_out = device_alloc<floatX>(n);
    poison(d_out, n * sizeof(floatX));
    encoder_forward(d_out, d_tokens, d_wte, d_wpe, B, T, C, 0);
    char name[96];
    snprintf(name, sizeof(name), "encoder %dx%dx%d V=%d", B, T, C, V);
    int failures = !check_result(d_out, ref.data(), name, n, tol);
    cudaCheck(cudaFree(d_wte)); cudaCheck(cudaFree(d_wpe)); cudaCheck(cudaFree(d_tokens)); cudaCheck(cudaFree(d_out));
    free(wte); free(wpe);
    return failures;
}

template <typename floatX>
int run_checks(float tol) {
    printf("%s:\n", type_name<floatX>());
    int failures = 0;
    failures += check_encoder<floatX>(2, 5, 7, 11, tol);
    failures += check_encoder<floatX>(4, 64, 768, 1000, tol);
    return failures;
}

int gpu_checks(int) {
    int failures = run_checks<float>(1e-6f);
    return failures + run_checks<bf16>(1e-2f);
}

// ----------------------------------------------------------------------------
// timing

template <typename floatX>
void time_encoder() {
    const int B = 8, T = 1024, C = 768, V = 50257;
    const size_t n = (size_t)B * T * C;
    float* h = make_random_float((size_t)V * C);
    floatX* d_wte = to_device<floatX>(h, (size_t)V * C);
    floatX* d_wpe = to_device<floatX>(h, (size_t)T * C);
    std::vector<int> tokens(B * T);
    for (int i = 0; i < B * T; i++) tokens[i] = (int)(rand_uniform() * V) % V;
    int* d_tokens = device_alloc<int>(B * T);
    cudaCheck(cudaMemcpy(d_tokens, tokens.data(), B * T * sizeof(int), cudaMemcpyHostToDevice));
    floatX* d_out = device_alloc<floatX>(n);
    float ms = benchmark_kernel(3, 20, [&] { encoder_forward(d_out, d_tokens, d_wte, d_wpe, B, T, C, 0); });
    char what[64];
    snprintf(what, sizeof(what), "%s encoder_forward", type_name<floatX>());
    report_bandwidth(what, ms, 3.0 * n * sizeof(floatX));  // a wte row and a wpe row read, out written
    cudaCheck(cudaFree(d_wte)); cudaCheck(cudaFree(d_wpe)); cudaCheck(cudaFree(d_tokens)); cudaCheck(cudaFree(d_out));
    free(h);
}

void timing(int) {
    printf("timing, B=8 T=1024 C=768 (median of 20):\n");
    time_encoder<float>();
    time_encoder<bf16>();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "encoder", 1, cpu_self_test, gpu_checks, timing); }
