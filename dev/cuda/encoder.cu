/*
The trivial kernels: the GPT-2 embedding (llmc/encoder.cuh) and the residual adds and dtype
copies (llmc/residual.cuh), against plain CPU loops; then timing at GPT-2 small's shape.

Build and run:
  cd dev/cuda && make encoder && ./encoder      # all checks, then timing
  ./encoder check                               # checks only
The residual adds have two paths, picked by the launcher: one 16-byte pack per thread when
every pointer is 16-byte aligned, else one element per thread. The checks run both (pointers
offset by one element take the scalar path) and the timing compares them.

Checks, fp32 then bf16, outputs poisoned first:
  - encoder_forward at (B,T,C,V) = (2,5,7,11) and (4,64,768,1000), token ids including 0 and V-1,
    T below maxT (wpe has more rows than are used)
  - residual_forward with n = 1, 8, 1,000,003, aligned and misaligned, and in place (out == inp1)
  - add_inplace
  - cast_copy fp32 -> bf16, bf16 -> fp32, fp32 -> fp32, bf16 -> bf16: compared exactly with the
    host's round-to-nearest-even conversion
Tolerances: fp32 1e-6 relative (one fp32 add, the reference is the same add in double rounded
once); bf16 1e-2 (one output rounding of 2^-8). Exit code 1 on any mismatch.
*/
#include <string.h>
#include "common.h"
#include "../../llmc/encoder.cuh"
#include "../../llmc/residual.cuh"

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

void residual_forward_cpu(float* out, const float* inp1, const float* inp2, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)inp1[i] + inp2[i]);
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
    int* d_tokens;
    cudaCheck(cudaMalloc(&d_tokens, B * T * sizeof(int)));
    cudaCheck(cudaMemcpy(d_tokens, tokens.data(), B * T * sizeof(int), cudaMemcpyHostToDevice));
    floatX* d_out;
    cudaCheck(cudaMalloc(&d_out, n * sizeof(floatX)));
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
int check_residual(size_t n, int offset, float tol) {
    float* a = make_random_float(n);
    float* b = make_random_float(n);
    round_to_storage<floatX>(a, n); round_to_storage<floatX>(b, n);
    std::vector<float> ref(n);
    residual_forward_cpu(ref.data(), a, b, n);
    // buffers one element longer, used from `offset` (1: misaligned, the scalar path)
    std::vector<float> a_pad(n + 1, 0.0f), b_pad(n + 1, 0.0f);
    std::copy(a, a + n, a_pad.begin() + offset);
    std::copy(b, b + n, b_pad.begin() + offset);
    floatX* d_a = to_device<floatX>(a_pad.data(), n + 1);
    floatX* d_b = to_device<floatX>(b_pad.data(), n + 1);
    floatX* d_out;
    cudaCheck(cudaMalloc(&d_out, (n + 1) * sizeof(floatX)));
    poison(d_out, (n + 1) * sizeof(floatX));
    int failures = 0;
    char name[96];
    residual_forward(d_out + offset, d_a + offset, d_b + offset, n, 0);
    snprintf(name, sizeof(name), "residual n=%zu off=%d", n, offset);
    failures += !check_result(d_out + offset, ref.data(), name, n, tol);
    residual_forward(d_a + offset, d_a + offset, d_b + offset, n, 0);  // in place
    snprintf(name, sizeof(name), "residual in place n=%zu off=%d", n, offset);
    failures += !check_result(d_a + offset, ref.data(), name, n, tol);
    // add_inplace: out (= a from the host again) += b
    cudaCheck(cudaFree(d_a));
    d_a = to_device<floatX>(a_pad.data(), n + 1);
    add_inplace(d_a + offset, d_b + offset, n, 0);
    snprintf(name, sizeof(name), "add_inplace n=%zu off=%d", n, offset);
    failures += !check_result(d_a + offset, ref.data(), name, n, tol);
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_out));
    free(a); free(b);
    return failures;
}

template <typename Tout, typename Tin>
int check_cast(size_t n) {
    float* h = make_random_float(n, -100.0f, 100.0f);
    std::vector<float> in(h, h + n);
    round_to_storage<Tin>(in.data(), n);  // what the input buffer holds
    std::vector<float> ref(in);
    round_to_storage<Tout>(ref.data(), n);
    Tin* d_in = to_device<Tin>(in.data(), n);
    Tout* d_out;
    cudaCheck(cudaMalloc(&d_out, n * sizeof(Tout)));
    poison(d_out, n * sizeof(Tout));
    cast_copy(d_out, d_in, n, 0);
    char name[96];
    snprintf(name, sizeof(name), "cast_copy %s->%s n=%zu", type_name<Tin>(), type_name<Tout>(), n);
    int failures = !check_result(d_out, ref.data(), name, n, 0.0f);
    cudaCheck(cudaFree(d_in)); cudaCheck(cudaFree(d_out));
    free(h);
    return failures;
}

template <typename floatX>
int run_checks(float tol) {
    printf("%s:\n", type_name<floatX>());
    int failures = 0;
    failures += check_encoder<floatX>(2, 5, 7, 11, tol);
    failures += check_encoder<floatX>(4, 64, 768, 1000, tol);
    for (size_t n : {(size_t)1, (size_t)8, (size_t)1000003})
        for (int offset = 0; offset <= 1; offset++) failures += check_residual<floatX>(n, offset, tol);
    return failures;
}

// ----------------------------------------------------------------------------
// timing

template <typename floatX>
void run_benchmarks() {
    const int B = 8, T = 1024, C = 768, V = 50257;
    const size_t n = (size_t)B * T * C;
    float* h = make_random_float((size_t)V * C);
    floatX* d_wte = to_device<floatX>(h, (size_t)V * C);
    floatX* d_wpe = to_device<floatX>(h, (size_t)T * C);
    std::vector<int> tokens(B * T);
    for (int i = 0; i < B * T; i++) tokens[i] = (int)(rand_uniform() * V) % V;
    int* d_tokens;
    cudaCheck(cudaMalloc(&d_tokens, B * T * sizeof(int)));
    cudaCheck(cudaMemcpy(d_tokens, tokens.data(), B * T * sizeof(int), cudaMemcpyHostToDevice));
    floatX *d_out, *d_a, *d_b;
    cudaCheck(cudaMalloc(&d_out, (n + 1) * sizeof(floatX)));
    d_a = to_device<floatX>(h, n + 1);
    d_b = to_device<floatX>(h + 1, n + 1);
    const double gb_res = 3.0 * n * sizeof(floatX) / 1e9;
    float ms = benchmark_kernel(3, 20, [&] { encoder_forward(d_out, d_tokens, d_wte, d_wpe, B, T, C, 0); });
    printf("  %s encoder_forward B=%d T=%d C=%d: %.3f ms (%.0f GB/s)\n", type_name<floatX>(), B, T, C, ms,
           gb_res / (ms / 1e3));
    ms = benchmark_kernel(3, 20, [&] { residual_forward(d_out, d_a, d_b, n, 0); });
    printf("  %s residual_forward n=%zu, 16-byte packs: %.3f ms (%.0f GB/s)\n", type_name<floatX>(), n, ms, gb_res / (ms / 1e3));
    ms = benchmark_kernel(3, 20, [&] { residual_forward(d_out + 1, d_a + 1, d_b + 1, n, 0); });
    printf("  %s residual_forward n=%zu, scalar (misaligned): %.3f ms (%.0f GB/s)\n", type_name<floatX>(), n, ms, gb_res / (ms / 1e3));
    cudaCheck(cudaFree(d_wte)); cudaCheck(cudaFree(d_wpe)); cudaCheck(cudaFree(d_tokens));
    cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b));
    free(h);
}

void run_cast_benchmark() {
    const size_t n = (size_t)768 * 46080;  // W_enc of the paper's SAE
    float* h = make_random_float(n);
    float* d_in = to_device<float>(h, n);
    bf16* d_out;
    cudaCheck(cudaMalloc(&d_out, n * sizeof(bf16)));
    float ms = benchmark_kernel(3, 20, [&] { cast_copy(d_out, d_in, n, 0); });
    printf("  cast_copy fp32->bf16 n=%zu: %.3f ms (%.0f GB/s)\n", n, ms, 6.0 * n / 1e9 / (ms / 1e3));
    cudaCheck(cudaFree(d_in)); cudaCheck(cudaFree(d_out));
    free(h);
}

int main(int argc, char** argv) {
    bool check_only = argc > 1 && strcmp(argv[1], "check") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);  // a fatal error on stderr lands in order in a piped log
    int failures = 0;
    failures += run_checks<float>(1e-6f);
    failures += run_checks<bf16>(1e-2f);
    printf("casts:\n");
    for (size_t n : {(size_t)1, (size_t)1000003}) {
        failures += check_cast<bf16, float>(n);
        failures += check_cast<float, bf16>(n);
        failures += check_cast<float, float>(n);
        failures += check_cast<bf16, bf16>(n);
    }
    if (!check_only) {
        printf("timing, GPT-2 small (median of 20):\n");
        run_benchmarks<float>();
        run_benchmarks<bf16>();
        run_cast_benchmark();
    }
    printf("encoder: %s (%d failed checks)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
