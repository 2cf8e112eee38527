/*
Eval-only kernels, llmc/eval.cuh: explained_variance_rows, per token
    ev[n] = 1 − Σ_c (x_hat[n,c] − x[n,c])² / Σ_c (x[n,c] − mean_x[c])²
with mean_x (C) the mean of x over the N rows of the batch, against a CPU reference in double
(the CPU trainer's formula, evaluate() in train_gpt2_sae_cpu.cpp); then timing at the paper's
eval shape (N = 8192 tokens, C = 768).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make eval
  ./eval [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU checks; cpu:
                         CPU self-test only (no GPU)
One implementation (variant 1, llmc's: bias_grad_colsum for the column sums into the xsum
scratch, then one warp per row), which the trainer ships for its eval in fp32 and bf16.

CPU self-test: the reference on inputs whose answer is known, per row: x_hat = x gives 1,
x_hat = the column means gives 0, x_hat = x + (x − mean_x)/2 gives 1 − 1/4.
Checks, fp32 then bf16 (x and x_hat rounded to the storage type on both sides; rows and the
xsum scratch poisoned first): (N,C) = (2,1) (7,33) (37,768) (1000,100) (8192,768), partial
warps of channels and partial blocks of rows; x with a per-column offset (so the mean
subtraction matters) plus noise, x_hat either x + small noise (ev ≈ 0.99, a trained SAE) or
independent of x (ev ≈ −1). N = 1 is left out: its only row is the mean, ev is 1 − num/0.
Tolerance per row: |gpu − cpu| <= 1e-5·num/den + 2^-23. The kernel sums C squares and the N
column values in fp32 (relative error of num/den a few 1e-6 at these shapes), then rounds
1 − num/den once (2^-23 covers half an ulp of a result up to 2 in magnitude). The same holds in
bf16: only the inputs are bf16, and both sides see the same rounded inputs. Exit code 1 on any
mismatch.
*/
#include "common.h"
#include "../../llmc/eval.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double inside); ratio (N), if given, gets num/den per row for the tolerance

void explained_variance_rows_cpu(float* rows, double* ratio, const float* x_hat, const float* x, int N, int C) {
    std::vector<double> mean(C, 0.0);
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) mean[c] += x[(size_t)n * C + c];
    for (int c = 0; c < C; c++) mean[c] /= N;
    for (int n = 0; n < N; n++) {
        double num = 0.0, den = 0.0;
        for (int c = 0; c < C; c++) {
            const double xi = x[(size_t)n * C + c], d = x_hat[(size_t)n * C + c] - xi;
            num += d * d;
            den += (xi - mean[c]) * (xi - mean[c]);
        }
        rows[n] = (float)(1.0 - num / den);
        if (ratio) ratio[n] = num / den;
    }
}

int cpu_self_test() {
    const int N = 5, C = 4;
    float* x = make_random_float((size_t)N * C, -2.0f, 2.0f);
    std::vector<double> mean(C, 0.0);
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) mean[c] += x[n * C + c] / (double)N;
    std::vector<float> same(x, x + N * C), means(N * C), half(N * C), rows(N);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            means[n * C + c] = (float)mean[c];
            half[n * C + c] = (float)(x[n * C + c] + 0.5 * (x[n * C + c] - mean[c]));
        }
    struct { const char* what; const float* x_hat; double expect, tol; } cases[] = {
        {"x_hat = x", same.data(), 1.0, 0.0},                       // num is exactly 0
        {"x_hat = column means", means.data(), 0.0, 1e-6},          // up to the float rounding of the inputs
        {"x_hat = x + (x - mean)/2", half.data(), 0.75, 1e-6},
    };
    int failures = 0;
    for (const auto& t : cases) {
        explained_variance_rows_cpu(rows.data(), nullptr, t.x_hat, x, N, C);
        double max_err = 0.0;
        for (int n = 0; n < N; n++) max_err = fmax(max_err, fabs(rows[n] - t.expect));
        const bool ok = max_err <= t.tol;
        printf("  cpu reference, %-26s every row %.2f: max err %.2e %s\n", t.what, t.expect, max_err, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    free(x);
    return failures;
}

// ----------------------------------------------------------------------------
// checks

template <typename floatX>
int check_ev(int N, int C, bool close) {
    const size_t n = (size_t)N * C;
    std::vector<float> x(n), x_hat(n);
    std::vector<float> offset(C);
    for (int c = 0; c < C; c++) offset[c] = 4.0f * rand_uniform() - 2.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = offset[i % C] + 2.0f * rand_uniform() - 1.0f;
        x_hat[i] = close ? x[i] + 0.1f * (2.0f * rand_uniform() - 1.0f) : offset[i % C] + 2.0f * rand_uniform() - 1.0f;
    }
    round_to_storage<floatX>(x.data(), n);
    round_to_storage<floatX>(x_hat.data(), n);
    std::vector<float> ref(N);
    std::vector<double> ratio(N);
    explained_variance_rows_cpu(ref.data(), ratio.data(), x_hat.data(), x.data(), N, C);

    floatX* d_x = to_device<floatX>(x.data(), n);
    floatX* d_x_hat = to_device<floatX>(x_hat.data(), n);
    float* d_rows = device_alloc<float>(N);
    float* d_xsum = device_alloc<float>(C);
    poison(d_rows, N * sizeof(float));
    poison(d_xsum, C * sizeof(float));
    explained_variance_rows(d_rows, d_x_hat, d_x, d_xsum, N, C, 0);
    std::vector<float> rows = from_device(d_rows, N);
    size_t bad = 0;
    double max_err = 0.0, mean_ev = 0.0;
    for (int r = 0; r < N; r++) {
        const double err = fabs((double)rows[r] - ref[r]);
        if (!(err <= max_err)) max_err = err;  // keeps a NaN visible
        mean_ev += ref[r] / N;
        if (!(err <= 1e-5 * ratio[r] + 0x1p-23)) {
            if (bad < 5) printf("  mismatch at row %d: gpu %.9g cpu %.9g (num/den %.4g)\n", r, rows[r], ref[r], ratio[r]);
            bad++;
        }
    }
    printf("  %s ev N=%d C=%d %s (mean ev %.3f): max abs err %.3e %s\n", type_name<floatX>(), N, C, close ? "close" : "indep",
           mean_ev, max_err, bad ? "FAIL" : "ok");
    cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_x_hat)); cudaCheck(cudaFree(d_rows)); cudaCheck(cudaFree(d_xsum));
    return bad > 0;
}

template <typename floatX>
int run_checks() {
    int failures = 0;
    const int shapes[][2] = {{2, 1}, {7, 33}, {37, 768}, {1000, 100}, {8192, 768}};
    for (auto& s : shapes)
        for (int close = 1; close >= 0; close--) failures += check_ev<floatX>(s[0], s[1], close);
    return failures;
}

int gpu_checks(int) {
    int failures = run_checks<float>();
    return failures + run_checks<bf16>();
}

// ----------------------------------------------------------------------------
// timing

template <typename floatX>
void time_ev() {
    const int N = 8192, C = 768;
    const size_t n = (size_t)N * C;
    floatX* d_x = device_alloc<floatX>(n);
    floatX* d_x_hat = device_alloc<floatX>(n);
    float* d_rows = device_alloc<float>(N);
    float* d_xsum = device_alloc<float>(C);
    fill_random(d_x, n, 1, -2.0f, 2.0f);
    fill_random(d_x_hat, n, 2, -2.0f, 2.0f);
    float ms = benchmark_kernel(3, 20, [&] { explained_variance_rows(d_rows, d_x_hat, d_x, d_xsum, N, C, 0); });
    char what[64];
    snprintf(what, sizeof(what), "%s explained_variance_rows", type_name<floatX>());
    report_bandwidth(what, ms, 3.0 * n * sizeof(floatX) + 4.0 * N);  // x read twice (column sums, rows), x_hat once
    cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_x_hat)); cudaCheck(cudaFree(d_rows)); cudaCheck(cudaFree(d_xsum));
}

void timing(int) {
    printf("timing, N=8192 C=768 (median of 20):\n");
    time_ev<float>();
    time_ev<bf16>();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "eval", 1, cpu_self_test, gpu_checks, timing); }
