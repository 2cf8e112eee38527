/*
GELU (tanh approximation) forward and in-place backward, llmc/gelu.cuh: CPU reference in double,
kernel variants, checks against the reference, timing at GPT-2 small's MLP size.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make gelu
  ./gelu [check|cpu|N]    no argument: everything; check: CPU self-test and GPU checks of both
                          variants; cpu: CPU self-test only (no GPU); N: check and time variant N
Variants:
  1  one element per thread, scalar loads (llmc's gelu_forward_kernel / gelu_backward_inplace_kernel)
  2  llmc's launcher: one 16-byte pack (4 fp32 / 8 bf16) per thread when all pointers are
     16-byte aligned; more bytes in flight per thread, so closer to DRAM bandwidth
The trainer ships variant 2 (llmc's launchers fall back to variant 1 for unaligned pointers, which
the trainer's 256-byte aligned buffers never are): the backward in fp32 and bf16, the forward in
fp32 only (in bf16 the forward GELU is the fc matmul's cuBLASLt epilogue, llmc/matmul.cuh).
Checks, fp32 then bf16, each on a poisoned output: n of 1, 7 (all tail), 8 (exactly one pack)
and 1,000,003 (odd: a partial last pack), with pointers aligned and offset by one element (which
sends variant 2 down the scalar path), plus in-place forward. Inputs of the large size are
uniform in [-6, 6], so both saturated tails and the curved middle are covered. Tolerances: fp32
1e-5 relative (tanhf is within a few ulp; the reference is double); bf16 1e-2 (inputs are
rounded to bf16 first, so only the one output rounding, 2^-8 relative, remains). Before any GPU
work, the CPU backward itself is checked against finite differences of the CPU forward (this
part also runs on a machine without a GPU). Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/gelu.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double inside)

void gelu_forward_cpu(float* out, const float* inp, size_t n) {
    const double s = sqrt(2.0 / M_PI);
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = (float)(0.5 * x * (1.0 + tanh(s * (x + 0.044715 * x * x * x))));
    }
}

// dinp = dout · gelu'(inp)
void gelu_backward_cpu(float* dinp, const float* dout, const float* inp, size_t n) {
    const double s = sqrt(2.0 / M_PI);
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double th = tanh(s * (x + 0.044715 * x * x * x));
        double grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * s * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (float)(dout[i] * grad);
    }
}

// The CPU backward checked against central differences of the CPU forward over [-6, 6].
// Runs before any GPU work (also on a machine without a GPU).
int cpu_self_test() {
    const int n = 1201;
    const float eps = 1e-2f;
    std::vector<float> x(n), xp(n), xm(n), fp(n), fm(n), ones(n, 1.0f), grad(n);
    for (int i = 0; i < n; i++) { x[i] = -6.0f + 12.0f * i / (n - 1); xp[i] = x[i] + eps; xm[i] = x[i] - eps; }
    gelu_forward_cpu(fp.data(), xp.data(), n);
    gelu_forward_cpu(fm.data(), xm.data(), n);
    gelu_backward_cpu(grad.data(), ones.data(), x.data(), n);
    double max_err = 0.0;
    for (int i = 0; i < n; i++) {
        double fd = ((double)fp[i] - fm[i]) / ((double)xp[i] - xm[i]);
        max_err = fmax(max_err, fabs(fd - grad[i]));
    }
    bool ok = max_err <= 1e-4;  // truncation ~eps^2/6 times gelu's small third derivative; rounding ~1e-7/eps
    printf("  cpu backward vs finite differences: max abs err %.3e %s\n", max_err, ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
}

// ----------------------------------------------------------------------------
// variants

template <typename floatX>
void gelu_forward_variant(int variant, floatX* out, const floatX* inp, size_t n) {
    if (variant == 1) {
        gelu_forward_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(out, inp, n);
        cudaLaunchCheck();
    } else {
        gelu_forward(out, inp, n, 0);
    }
}

template <typename floatX>
void gelu_backward_variant(int variant, floatX* d_in_out, const floatX* inp, size_t n) {
    if (variant == 1) {
        gelu_backward_inplace_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256>>>(d_in_out, inp, n);
        cudaLaunchCheck();
    } else {
        gelu_backward_inplace(d_in_out, inp, n, 0);
    }
}

// ----------------------------------------------------------------------------
// checks

template <typename floatX>
int run_checks(int variant, float tol) {
    int failures = 0;
    const size_t sizes[] = {1, 7, 8, 1000003};
    for (size_t n : sizes) {
        for (int offset = 0; offset <= 1; offset++) {
            // the small sizes test the pack/tail logic, in [-2, 2]: a lone element deep in the negative
            // tail has no larger neighbour to set the tolerance floor, and there fp32's 1 + tanh(u)
            // cancels (PyTorch's formula does the same); the large size covers [-6, 6]
            const float range = n < 1000 ? 2.0f : 6.0f;
            float* inp = make_random_float(n, -range, range);
            float* dout = make_random_float(n, -1.0f, 1.0f);
            round_to_storage<floatX>(inp, n);
            round_to_storage<floatX>(dout, n);
            std::vector<float> ref_out(n), ref_din(n);
            gelu_forward_cpu(ref_out.data(), inp, n);
            gelu_backward_cpu(ref_din.data(), dout, inp, n);

            // device buffers one element longer, used from `offset` (offset 1 = misaligned)
            std::vector<float> inp_pad(n + 1, 0.0f), dout_pad(n + 1, 0.0f);
            std::copy(inp, inp + n, inp_pad.begin() + offset);
            std::copy(dout, dout + n, dout_pad.begin() + offset);
            floatX* d_inp_base = to_device<floatX>(inp_pad.data(), n + 1);
            floatX* d_grad_base = to_device<floatX>(dout_pad.data(), n + 1);
            floatX* d_out_base = device_alloc<floatX>(n + 1);
            poison(d_out_base, (n + 1) * sizeof(floatX));
            floatX* d_inp = d_inp_base + offset;
            floatX* d_grad = d_grad_base + offset;
            floatX* d_out = d_out_base + offset;

            char name[96];
            gelu_forward_variant(variant, d_out, d_inp, n);
            snprintf(name, sizeof(name), "fwd n=%zu off=%d", n, offset);
            failures += !check_result(d_out, ref_out.data(), name, n, tol);

            gelu_backward_variant(variant, d_grad, d_inp, n);
            snprintf(name, sizeof(name), "bwd n=%zu off=%d", n, offset);
            failures += !check_result(d_grad, ref_din.data(), name, n, tol);

            // in place: out == inp
            gelu_forward_variant(variant, d_inp, d_inp, n);
            snprintf(name, sizeof(name), "fwd in-place n=%zu off=%d", n, offset);
            failures += !check_result(d_inp, ref_out.data(), name, n, tol);

            cudaCheck(cudaFree(d_inp_base)); cudaCheck(cudaFree(d_grad_base)); cudaCheck(cudaFree(d_out_base));
            free(inp); free(dout);
        }
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
    const size_t n = (size_t)8 * 1024 * 3072;  // B*T*4C, GPT-2 small's MLP hidden activations
    float* h = make_random_float(n, -6.0f, 6.0f);
    floatX* d_inp = to_device<floatX>(h, n);
    floatX* d_grad = to_device<floatX>(h, n);
    floatX* d_out = device_alloc<floatX>(n);
    char what[64];
    float ms = benchmark_kernel(3, 20, [&] { gelu_forward_variant(variant, d_out, d_inp, n); });
    snprintf(what, sizeof(what), "%s v%d forward", type_name<floatX>(), variant);
    report_bandwidth(what, ms, 2.0 * n * sizeof(floatX));  // read inp, write out
    ms = benchmark_kernel(3, 20, [&] { gelu_backward_variant(variant, d_grad, d_inp, n); });
    snprintf(what, sizeof(what), "%s v%d backward in place", type_name<floatX>(), variant);
    report_bandwidth(what, ms, 3.0 * n * sizeof(floatX));  // read grad, inp, write grad
    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_grad)); cudaCheck(cudaFree(d_out));
    free(h);
}

void timing(int only) {
    printf("timing, n = 8*1024*3072 (median of 20):\n");
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        time_variant<float>(variant);
        time_variant<bf16>(variant);
    }
}

int main(int argc, char** argv) { return bench_main(argc, argv, "gelu", 2, cpu_self_test, gpu_checks, timing); }
