/*
LayerNorm forward and activation-gradient backward, llmc/layernorm.cuh: CPU reference in double,
kernel variants, checks, timing at GPT-2 small's shape.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make layernorm
  ./layernorm [check|cpu|N]   no argument: everything; check: CPU self-test and GPU checks of
                              both variants; cpu: CPU self-test only (no GPU); N: check and time
                              variant N
Variants:
  1  one thread per row: the plain loops of the reference, on the GPU (uncoalesced: each
     thread walks its own row)
  2  one warp per row (llmc): lanes read consecutive channels, so loads coalesce, and the row
     sums are warp shuffles
The trainer ships variant 2 (layernorm_forward, layernorm_backward_dinp), in fp32 and bf16.
Checks, fp32 then bf16, all outputs poisoned first: rows x channels of 3x7 (fewer channels than
lanes), 37x101 (neither a multiple of 8 rows per block nor of 32 lanes), 130x768 (GPT-2 small)
and 64x1600 (GPT-2 XL). Forward: out, mean, rstd, and out with mean/rstd NULL. Backward: dinp
written (accumulate off), added to a random dinp (accumulate on; llmc's as dresidual == dinp),
llmc's added to a residual gradient in a buffer of its own (which must come back untouched, as the
trainer's blocks pass it), with mean/rstd NULL (recomputed), and in place (dinp == dout). Inputs have a nonzero mean (uniform in [-1.5, 2.5])
so the mean subtraction matters. Tolerances: fp32 1e-5 relative (fp32 sums of at most 1600 terms
against double); bf16 1e-2 (inputs rounded to bf16 first; one output rounding, 2^-8, remains).
Before any GPU work, the CPU backward itself is checked against finite differences of the CPU
forward (this part also runs on a machine without a GPU). Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/layernorm.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double inside)

void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        double m = 0.0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        double v = 0.0;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= C;
        double s = 1.0 / sqrt(v + 1e-5);
        for (int c = 0; c < C; c++) out[(size_t)i * C + c] = (float)((x[c] - m) * s * weight[c] + bias[c]);
        mean[i] = (float)m;
        rstd[i] = (float)s;
    }
}

// dinp = (accumulate ? dinp : 0) + rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)), dxhat = dout·w
void layernorm_backward_dinp_cpu(float* dinp, const float* dout, const float* inp, const float* weight,
                                 const float* mean, const float* rstd, int N, int C, bool accumulate) {
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        const float* dy = dout + (size_t)i * C;
        double m = mean[i], s = rstd[i];
        double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
        for (int c = 0; c < C; c++) {
            double dxhat = (double)dy[c] * weight[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * (x[c] - m) * s;
        }
        double mean_dxhat = sum_dxhat / C, mean_dxhat_xhat = sum_dxhat_xhat / C;
        for (int c = 0; c < C; c++) {
            double dxhat = (double)dy[c] * weight[c];
            double g = s * (dxhat - mean_dxhat - (x[c] - m) * s * mean_dxhat_xhat);
            float* d = dinp + (size_t)i * C + c;
            *d = (float)((accumulate ? *d : 0.0) + g);
        }
    }
}

// The CPU backward checked against finite differences of the CPU forward: with L = Σ out·dout,
// dinp must be dL/dinp. Runs before any GPU work (also on a machine without a GPU).
int cpu_self_test() {
    const int N = 3, C = 7;
    float* inp = make_random_float(N * C, -1.5f, 2.5f);
    float* weight = make_random_float(C, 0.2f, 1.8f);
    float* bias = make_random_float(C, -0.5f, 0.5f);
    float* dout = make_random_float(N * C);
    std::vector<float> out(N * C), mean(N), rstd(N), dinp(N * C);
    layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), inp, weight, bias, N, C);
    layernorm_backward_dinp_cpu(dinp.data(), dout, inp, weight, mean.data(), rstd.data(), N, C, false);
    auto loss = [&]() {
        layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), inp, weight, bias, N, C);
        double l = 0.0;
        for (int i = 0; i < N * C; i++) l += (double)out[i] * dout[i];
        return l;
    };
    const float eps = 1e-2f;
    double max_grad = 0.0, max_err = 0.0;
    for (int i = 0; i < N * C; i++) {
        float x = inp[i];
        inp[i] = x + eps; double lp = loss();
        inp[i] = x - eps; double lm = loss();
        inp[i] = x;
        double fd = (lp - lm) / ((double)(x + eps) - (double)(x - eps));
        max_err = fmax(max_err, fabs(fd - dinp[i]));
        max_grad = fmax(max_grad, fabs(dinp[i]));
    }
    bool ok = max_err <= 1e-3 * max_grad;  // truncation O(eps^2), float rounding of out ~1e-7/eps
    printf("  cpu backward vs finite differences: max err %.3e (max |grad| %.3e) %s\n", max_err, max_grad, ok ? "ok" : "FAIL");
    free(inp); free(weight); free(bias); free(dout);
    return ok ? 0 : 1;
}

// ----------------------------------------------------------------------------
// variant 1: one thread per row

template <typename floatX>
__global__ void layernorm_forward_kernel1(floatX* out, float* mean, float* rstd, const floatX* inp,
                                          const floatX* weight, const floatX* bias, int N, int C) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const floatX* x = inp + (size_t)row * C;
    float m = 0.0f;
    for (int c = 0; c < C; c++) m += to_float(x[c]);
    m /= C;
    float v = 0.0f;
    for (int c = 0; c < C; c++) { float d = to_float(x[c]) - m; v += d * d; }
    v /= C;
    float s = 1.0f / sqrtf(v + LAYERNORM_EPS);
    for (int c = 0; c < C; c++)
        out[(size_t)row * C + c] = from_float<floatX>((to_float(x[c]) - m) * s * to_float(weight[c]) + to_float(bias[c]));
    if (mean != NULL) mean[row] = m;
    if (rstd != NULL) rstd[row] = s;
}

template <typename floatX>
__global__ void layernorm_backward_dinp_kernel1(floatX* dinp, const floatX* dout, const floatX* inp, const floatX* weight,
                                                const float* mean, const float* rstd, int N, int C, bool accumulate) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const floatX* x = inp + (size_t)row * C;
    const floatX* dy = dout + (size_t)row * C;
    floatX* dx = dinp + (size_t)row * C;
    float m, s;
    if (mean != NULL && rstd != NULL) {
        m = mean[row]; s = rstd[row];
    } else {
        m = 0.0f;
        for (int c = 0; c < C; c++) m += to_float(x[c]);
        m /= C;
        float v = 0.0f;
        for (int c = 0; c < C; c++) { float d = to_float(x[c]) - m; v += d * d; }
        s = 1.0f / sqrtf(v / C + LAYERNORM_EPS);
    }
    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
    for (int c = 0; c < C; c++) {
        float dxhat = to_float(dy[c]) * to_float(weight[c]);
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (to_float(x[c]) - m) * s;
    }
    float mean_dxhat = sum_dxhat / C, mean_dxhat_xhat = sum_dxhat_xhat / C;
    for (int c = 0; c < C; c++) {
        float xhat = (to_float(x[c]) - m) * s;
        float g = s * (to_float(dy[c]) * to_float(weight[c]) - mean_dxhat - xhat * mean_dxhat_xhat);
        if (accumulate) g += to_float(dx[c]);
        dx[c] = from_float<floatX>(g);
    }
}

template <typename floatX>
void layernorm_forward_variant(int variant, floatX* out, float* mean, float* rstd, const floatX* inp,
                               const floatX* weight, const floatX* bias, int N, int C) {
    if (variant == 1) {
        layernorm_forward_kernel1<<<ceil_div(N, 128), 128>>>(out, mean, rstd, inp, weight, bias, N, C);
        cudaLaunchCheck();
    } else {
        layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, 0);
    }
}

template <typename floatX>
void layernorm_backward_variant(int variant, floatX* dinp, const floatX* dout, const floatX* inp, const floatX* weight,
                                const float* mean, const float* rstd, int N, int C, bool accumulate) {
    if (variant == 1) {
        layernorm_backward_dinp_kernel1<<<ceil_div(N, 128), 128>>>(dinp, dout, inp, weight, mean, rstd, N, C, accumulate);
        cudaLaunchCheck();
    } else {
        layernorm_backward_dinp(dinp, accumulate ? dinp : (const floatX*)nullptr, dout, inp, weight, mean, rstd, N, C, 0);
    }
}

// ----------------------------------------------------------------------------
// checks

template <typename floatX>
int run_checks(int variant, float tol) {
    int failures = 0;
    const int shapes[][2] = {{3, 7}, {37, 101}, {130, 768}, {64, 1600}};
    for (const auto& shape : shapes) {
        const int N = shape[0], C = shape[1];
        const size_t NC = (size_t)N * C;
        float* inp = make_random_float(NC, -1.5f, 2.5f);
        float* weight = make_random_float(C, 0.2f, 1.8f);
        float* bias = make_random_float(C, -0.5f, 0.5f);
        float* dout = make_random_float(NC, -1.0f, 1.0f);
        float* dinp0 = make_random_float(NC, -1.0f, 1.0f);  // the accumulate test's starting dinp
        round_to_storage<floatX>(inp, NC); round_to_storage<floatX>(weight, C); round_to_storage<floatX>(bias, C);
        round_to_storage<floatX>(dout, NC); round_to_storage<floatX>(dinp0, NC);

        std::vector<float> ref_out(NC), ref_mean(N), ref_rstd(N), ref_dinp(NC, 0.0f), ref_dinp_acc(dinp0, dinp0 + NC);
        layernorm_forward_cpu(ref_out.data(), ref_mean.data(), ref_rstd.data(), inp, weight, bias, N, C);
        layernorm_backward_dinp_cpu(ref_dinp.data(), dout, inp, weight, ref_mean.data(), ref_rstd.data(), N, C, false);
        layernorm_backward_dinp_cpu(ref_dinp_acc.data(), dout, inp, weight, ref_mean.data(), ref_rstd.data(), N, C, true);

        floatX* d_inp = to_device<floatX>(inp, NC);
        floatX* d_weight = to_device<floatX>(weight, C);
        floatX* d_bias = to_device<floatX>(bias, C);
        floatX* d_dout = to_device<floatX>(dout, NC);
        floatX* d_out = device_alloc<floatX>(NC);
        floatX* d_dinp = device_alloc<floatX>(NC);
        float* d_mean = device_alloc<float>(N);
        float* d_rstd = device_alloc<float>(N);
        char name[96];

        // forward, with and without mean/rstd
        poison(d_out, NC * sizeof(floatX)); poison(d_mean, N * sizeof(float)); poison(d_rstd, N * sizeof(float));
        layernorm_forward_variant(variant, d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, N, C);
        snprintf(name, sizeof(name), "fwd out %dx%d", N, C);
        failures += !check_result(d_out, ref_out.data(), name, NC, tol);
        snprintf(name, sizeof(name), "fwd mean %dx%d", N, C);
        failures += !check_result(d_mean, ref_mean.data(), name, N, tol);
        snprintf(name, sizeof(name), "fwd rstd %dx%d", N, C);
        failures += !check_result(d_rstd, ref_rstd.data(), name, N, tol);
        poison(d_out, NC * sizeof(floatX));
        layernorm_forward_variant<floatX>(variant, d_out, NULL, NULL, d_inp, d_weight, d_bias, N, C);
        snprintf(name, sizeof(name), "fwd no stats %dx%d", N, C);
        failures += !check_result(d_out, ref_out.data(), name, NC, tol);

        // backward from the GPU's mean/rstd: written, accumulated, recomputed stats, in place
        poison(d_dinp, NC * sizeof(floatX));
        layernorm_backward_variant(variant, d_dinp, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, false);
        snprintf(name, sizeof(name), "bwd %dx%d", N, C);
        failures += !check_result(d_dinp, ref_dinp.data(), name, NC, tol);

        floatX* d_dinp0 = to_device<floatX>(dinp0, NC);
        layernorm_backward_variant(variant, d_dinp0, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, true);
        snprintf(name, sizeof(name), "bwd accumulate %dx%d", N, C);
        failures += !check_result(d_dinp0, ref_dinp_acc.data(), name, NC, tol);

        if (variant == 2) {  // llmc's: the residual gradient from a buffer of its own (read only), as the trainer's blocks pass it
            floatX* d_dres = to_device<floatX>(dinp0, NC);
            poison(d_dinp, NC * sizeof(floatX));
            layernorm_backward_dinp(d_dinp, (const floatX*)d_dres, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, 0);
            snprintf(name, sizeof(name), "bwd + own residual %dx%d", N, C);
            failures += !check_result(d_dinp, ref_dinp_acc.data(), name, NC, tol);
            snprintf(name, sizeof(name), "residual untouched %dx%d", N, C);
            failures += !check_result(d_dres, dinp0, name, NC, 0.0f);
            cudaCheck(cudaFree(d_dres));
        }

        poison(d_dinp, NC * sizeof(floatX));
        layernorm_backward_variant<floatX>(variant, d_dinp, d_dout, d_inp, d_weight, NULL, NULL, N, C, false);
        snprintf(name, sizeof(name), "bwd no stats %dx%d", N, C);
        failures += !check_result(d_dinp, ref_dinp.data(), name, NC, tol);

        layernorm_backward_variant(variant, d_dout, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, false);
        snprintf(name, sizeof(name), "bwd in place %dx%d", N, C);
        failures += !check_result(d_dout, ref_dinp.data(), name, NC, tol);

        cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_weight)); cudaCheck(cudaFree(d_bias));
        cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_dinp));
        cudaCheck(cudaFree(d_dinp0)); cudaCheck(cudaFree(d_mean)); cudaCheck(cudaFree(d_rstd));
        free(inp); free(weight); free(bias); free(dout); free(dinp0);
    }
    return failures;
}

int gpu_checks(int only) {
    int failures = 0;
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        printf("variant %d, fp32:\n", variant);
        failures += run_checks<float>(variant, 1e-5f);
        printf("variant %d, bf16:\n", variant);
        failures += run_checks<bf16>(variant, 1e-2f);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing

template <typename floatX>
void time_variant(int variant) {
    const int N = 8 * 1024, C = 768;  // B*T, GPT-2 small
    const size_t NC = (size_t)N * C;
    float* h = make_random_float(NC);
    floatX* d_inp = to_device<floatX>(h, NC);
    floatX* d_dout = to_device<floatX>(h, NC);
    floatX* d_weight = to_device<floatX>(h, C);
    floatX* d_bias = to_device<floatX>(h + C, C);
    floatX* d_out = device_alloc<floatX>(NC);
    floatX* d_dinp = device_alloc<floatX>(NC);
    cudaCheck(cudaMemset(d_dinp, 0, NC * sizeof(floatX)));
    float* d_mean = device_alloc<float>(N);
    float* d_rstd = device_alloc<float>(N);
    char what[64];
    // minimum traffic: forward reads inp, writes out; backward reads dout, inp, dinp, writes dinp
    float ms = benchmark_kernel(3, 20, [&] {
        layernorm_forward_variant(variant, d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, N, C); });
    snprintf(what, sizeof(what), "%s v%d forward", type_name<floatX>(), variant);
    report_bandwidth(what, ms, 2.0 * NC * sizeof(floatX));
    ms = benchmark_kernel(3, 20, [&] {
        layernorm_backward_variant(variant, d_dinp, d_dout, d_inp, d_weight, d_mean, d_rstd, N, C, true); });
    snprintf(what, sizeof(what), "%s v%d backward (accumulate)", type_name<floatX>(), variant);
    report_bandwidth(what, ms, 4.0 * NC * sizeof(floatX));
    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_weight)); cudaCheck(cudaFree(d_bias));
    cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_dinp)); cudaCheck(cudaFree(d_mean)); cudaCheck(cudaFree(d_rstd));
    free(h);
}

void timing(int only) {
    printf("timing, N = 8*1024 rows, C = 768 (median of 20):\n");
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        time_variant<float>(variant);
        time_variant<bf16>(variant);
    }
}

int main(int argc, char** argv) { return bench_main(argc, argv, "layernorm", 2, cpu_self_test, gpu_checks, timing); }
