/*
MSE forward + backward, llmc/mse.cuh: loss_sum += Σ (a − b)² (deterministic), dA += grad_scale ·
2 (a − b). CPU reference in double, checks on fp32 and bf16, timing at the local-mode shape
(x_hat vs x, N·C = 8192·768).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make mse
  ./mse [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU checks; cpu:
                        CPU self-test only (no GPU): the gradient reference against finite
                        differences of the loss
One implementation (variant 1, llmc's mse_forward_backward), which the trainer ships in fp32 and
bf16 (local mode's MSE(x_hat, x) and e2e+ds's downstream terms).
Checks: n = 1, 7, 1000003, 8192·768 (partial blocks; the grid capped at 1024 blocks so threads
loop), the loss accumulated onto a nonzero value, dA accumulated onto nonzero values, dA = NULL
(forward only: the loss still accumulates), and a bit-identical rerun. Tolerances: loss 1e-5
relative (fp32 block sums vs double); dA 1e-5 (fp32) or 1e-2 (bf16: inputs and the initial dA are
bf16 on both sides, one output rounding remains). Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/mse.cuh"

// ----------------------------------------------------------------------------
// CPU reference

void mse_forward_backward_cpu(double* loss_sum, float* dA, const float* a, const float* b, size_t n, float grad_scale) {
    for (size_t i = 0; i < n; i++) {
        double diff = (double)a[i] - b[i];
        *loss_sum += diff * diff;
        if (dA) dA[i] = (float)(dA[i] + grad_scale * 2.0 * diff);
    }
}

int cpu_self_test() {
    // L(a) = coeff · mean((a − b)²) / accum; the reference's dA (from 0) with grad_scale =
    // coeff/(n·accum) must be dL/da, and its loss_sum · coeff/(n·accum) must be L
    const size_t n = 37;
    const double coeff = 2.5, accum = 2.0;
    std::vector<float> a(n), b(n), dA(n, 0.0f);
    for (size_t i = 0; i < n; i++) { a[i] = rand_uniform() * 2 - 1; b[i] = rand_uniform() * 2 - 1; }
    auto L = [&](const std::vector<double>& x) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += (x[i] - b[i]) * (x[i] - b[i]);
        return coeff * s / n / accum;
    };
    double loss_sum = 0.0;
    mse_forward_backward_cpu(&loss_sum, dA.data(), a.data(), b.data(), n, (float)(coeff / (n * accum)));
    std::vector<double> ad(a.begin(), a.end());
    double max_err = fabs(loss_sum * coeff / (n * accum) - L(ad));
    for (size_t i = 0; i < n; i++) {
        std::vector<double> ap(ad), am(ad);
        ap[i] += 1e-5; am[i] -= 1e-5;
        max_err = fmax(max_err, fabs((L(ap) - L(am)) / 2e-5 - dA[i]));
    }
    bool ok = max_err < 1e-7;
    printf("  cpu mse loss and gradient vs finite differences: max abs err %.2e %s\n", max_err, ok ? "ok" : "FAIL");
    return !ok;
}

// ----------------------------------------------------------------------------
// GPU checks

template <typename floatX>
int check_mse(size_t n, float tol) {
    int failures = 0;
    floatX *d_a = device_alloc<floatX>(n), *d_b = device_alloc<floatX>(n), *d_dA = device_alloc<floatX>(n);
    float* d_loss = device_alloc<float>(1);
    fill_random(d_a, n, 601, -2.0f, 2.0f);
    fill_random(d_b, n, 602, -2.0f, 2.0f);
    const float grad_scale = (float)(1.0 / ((double)n * 2.0));  // mse_coeff 1, grad_accum 2
    const float dA_range = 4.0f * grad_scale;                   // initial dA comparable to the added term
    fill_random(d_dA, n, 603, -dA_range, dA_range);
    std::vector<float> a = host_random_array<floatX>(n, 601, -2.0f, 2.0f), b = host_random_array<floatX>(n, 602, -2.0f, 2.0f);
    std::vector<float> dA = host_random_array<floatX>(n, 603, -dA_range, dA_range);
    double loss_ref = 1.25;
    mse_forward_backward_cpu(&loss_ref, dA.data(), a.data(), b.data(), n, grad_scale);

    const float start = 1.25f;
    cudaCheck(cudaMemcpy(d_loss, &start, sizeof(float), cudaMemcpyHostToDevice));
    mse_forward_backward(d_loss, d_dA, d_a, d_b, n, grad_scale, 0);
    float loss;
    cudaCheck(cudaMemcpy(&loss, d_loss, sizeof(float), cudaMemcpyDeviceToHost));
    bool ok = fabs(loss - loss_ref) <= 1e-5 * loss_ref;
    printf("  mse n=%zu: loss_sum %.9g (cpu %.9g) %s\n", n, loss, loss_ref, ok ? "ok" : "FAIL");
    failures += !ok;
    char name[64];
    snprintf(name, sizeof(name), "mse dA n=%zu", n);
    failures += !check_result(d_dA, dA.data(), name, n, tol);

    // forward only: dA NULL, same loss, bit-identical to the first run
    cudaCheck(cudaMemcpy(d_loss, &start, sizeof(float), cudaMemcpyHostToDevice));
    mse_forward_backward(d_loss, (floatX*)nullptr, d_a, d_b, n, grad_scale, 0);
    float loss2;
    cudaCheck(cudaMemcpy(&loss2, d_loss, sizeof(float), cudaMemcpyDeviceToHost));
    bool same = memcmp(&loss, &loss2, sizeof(float)) == 0;
    printf("  mse n=%zu forward-only rerun bit-identical: %s\n", n, same ? "ok" : "FAIL");
    failures += !same;
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_dA)); cudaCheck(cudaFree(d_loss));
    return failures;
}

template <typename floatX>
int run_checks(float tol) {
    int failures = 0;
    const size_t sizes[] = {1, 7, 1000003, (size_t)8192 * 768};
    for (size_t n : sizes) failures += check_mse<floatX>(n, tol);
    return failures;
}

template <typename floatX>
void time_mse() {
    const size_t n = (size_t)8192 * 768, X = sizeof(floatX);
    floatX *d_a = device_alloc<floatX>(n), *d_b = device_alloc<floatX>(n), *d_dA = device_alloc<floatX>(n);
    float* d_loss = device_alloc<float>(1);
    fill_random(d_a, n, 1, -2.0f, 2.0f);
    fill_random(d_b, n, 2, -2.0f, 2.0f);
    cudaCheck(cudaMemset(d_dA, 0, n * X));
    cudaCheck(cudaMemset(d_loss, 0, sizeof(float)));
    char what[64];
    float ms = benchmark_kernel(3, 20, [&] { mse_forward_backward(d_loss, d_dA, d_a, d_b, n, 1e-7f, 0); });
    snprintf(what, sizeof(what), "%s mse fwd+bwd", type_name<floatX>());
    report_bandwidth(what, ms, 4.0 * n * X);  // read a, b, dA; write dA
    ms = benchmark_kernel(3, 20, [&] { mse_forward_backward(d_loss, (floatX*)nullptr, d_a, d_b, n, 1e-7f, 0); });
    snprintf(what, sizeof(what), "%s mse fwd only", type_name<floatX>());
    report_bandwidth(what, ms, 2.0 * n * X);
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_dA)); cudaCheck(cudaFree(d_loss));
}

int gpu_checks(int) {
    printf("fp32:\n");
    int failures = run_checks<float>(1e-5f);
    printf("bf16:\n");
    return failures + run_checks<bf16>(1e-2f);
}

void timing(int) {
    printf("timing, n = 8192*768 (median of 20):\n");
    time_mse<float>();
    time_mse<bf16>();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "mse", 1, cpu_self_test, gpu_checks, timing); }
