/*
Causal multi-head attention forward and activation-gradient backward, llmc/attention.cuh: CPU
reference in double, checks, timing at GPT-2 small's shape.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make attention
  ./attention [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU checks;
                              cpu: CPU self-test only (no GPU)
One implementation, variant 1 (llm.c's materialised-attention scheme: one kernel splitting the
heads of q, k and v, cuBLASLt q·kᵀ and att·v each batched over all B·NH heads, causal softmax
kernel, one kernel merging the heads). The trainer ships it in fp32 and bf16, with two paths in
the head split / merge: 16-byte packs where hs, the row stride and the pointers allow (GPT-2's
shapes: hs 64), one element per thread otherwise (checked below with hs 15).

Checks, fp32 then bf16, with every output and every scratch buffer poisoned first (the result
must not depend on what scratch held): (B,T,C,NH) = (2,8,32,2) hs 16, (2,64,128,2) hs 64,
(1,1024,128,2) hs 64 (full length), and last (1,37,48,3): odd T, so in bf16 the rows of the
(T,T) matrices are only 2-byte aligned, and (2,19,60,4): hs 15, so the head split/merge take
their one-element path (every other shape moves 16-byte packs). Compared: the split heads in qkvr (exact copies), the
probabilities att (and that every masked entry s > t is exactly 0), out, and dinp (B,T,3C).
Inputs are uniform in [-1, 1] (raw scores q·k up to ~±11 at hs 64, ~±1.4 after scaling).
Before any GPU work, the CPU backward itself is checked against finite differences of the CPU
forward (this part also runs on a machine without a GPU).
Tolerances: fp32 1e-5 relative (double reference). bf16 3e-2, looser than the 1e-2 elsewhere
because the pipeline stores in bf16 between every step: the scores before softmax (an absolute
error of up to 2^-8·|score|·scale in the exponent), the probabilities, the output, and datt,
dpreatt in the backward, each a relative rounding of up to 2^-8. A host emulation of exactly
those roundings on inputs like these needed 1.7e-2 (out) and 1.3e-2 (dinp) at worst, and 2.3e-6
for the fp32 pipeline; index or transpose bugs give errors of order 1. Exit code 1 on any mismatch.
Timing: forward and backward at GPT-2 small's shape, and the head split (q, k, v at once) and
merge kernels alone in GB/s (bytes read + written).
*/
#include "common.h"
#include "../../llmc/attention.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double inside)

// probabilities of row (b,h,t) into p[0..t]; q, k of head h read from inp (B,T,3C)
void attention_row_probs_cpu(double* p, const float* inp, int b, int h, int t, int T, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / sqrt((double)hs);
    const float* q = inp + ((size_t)b * T + t) * 3 * C + (size_t)h * hs;
    double maxv = -INFINITY;
    for (int s = 0; s <= t; s++) {
        const float* k = inp + ((size_t)b * T + s) * 3 * C + C + (size_t)h * hs;
        double dot = 0.0;
        for (int d = 0; d < hs; d++) dot += (double)q[d] * k[d];
        p[s] = dot * scale;
        maxv = fmax(maxv, p[s]);
    }
    double sum = 0.0;
    for (int s = 0; s <= t; s++) { p[s] = exp(p[s] - maxv); sum += p[s]; }
    for (int s = 0; s <= t; s++) p[s] /= sum;
}

// out (B,T,C), att (B,NH,T,T), inp (B,T,3C)
void attention_forward_cpu(float* out, float* att, const float* inp, int B, int T, int C, int NH) {
    const int hs = C / NH;
    std::vector<double> p(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                attention_row_probs_cpu(p.data(), inp, b, h, t, T, C, NH);
                float* att_row = att + (((size_t)b * NH + h) * T + t) * T;
                for (int s = 0; s < T; s++) att_row[s] = s <= t ? (float)p[s] : 0.0f;
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int s = 0; s <= t; s++) acc += p[s] * inp[((size_t)b * T + s) * 3 * C + 2 * C + (size_t)h * hs + d];
                    out[((size_t)b * T + t) * C + (size_t)h * hs + d] = (float)acc;
                }
            }
}

// dinp (B,T,3C) from dout (B,T,C); the probabilities are recomputed in double from inp
void attention_backward_cpu(float* dinp, const float* dout, const float* inp, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / sqrt((double)hs);
    const size_t n3 = (size_t)B * T * 3 * C;
    std::vector<double> dacc(n3, 0.0), p(T), datt(T);
    auto at = [&](int b, int t, int part, int h, int d) { return ((size_t)b * T + t) * 3 * C + (size_t)part * C + (size_t)h * hs + d; };
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                attention_row_probs_cpu(p.data(), inp, b, h, t, T, C, NH);
                const float* dy = dout + ((size_t)b * T + t) * C + (size_t)h * hs;
                double dot = 0.0;
                for (int s = 0; s <= t; s++) {
                    double a = 0.0;
                    for (int d = 0; d < hs; d++) a += (double)dy[d] * inp[at(b, s, 2, h, d)];
                    datt[s] = a;
                    dot += p[s] * a;
                    for (int d = 0; d < hs; d++) dacc[at(b, s, 2, h, d)] += p[s] * dy[d];  // dv
                }
                for (int s = 0; s <= t; s++) {
                    double dpre = scale * p[s] * (datt[s] - dot);
                    for (int d = 0; d < hs; d++) {
                        dacc[at(b, t, 0, h, d)] += dpre * inp[at(b, s, 1, h, d)];  // dq
                        dacc[at(b, s, 1, h, d)] += dpre * inp[at(b, t, 0, h, d)];  // dk
                    }
                }
            }
    for (size_t i = 0; i < n3; i++) dinp[i] = (float)dacc[i];
}

// the split heads the forward leaves in qkvr (3,B,NH,T,hs)
void split_qkv_cpu(float* qkvr, const float* inp, int B, int T, int C, int NH) {
    const int hs = C / NH;
    for (int part = 0; part < 3; part++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < hs; d++)
                        qkvr[((((size_t)part * B + b) * NH + h) * T + t) * hs + d] =
                            inp[((size_t)b * T + t) * 3 * C + (size_t)part * C + (size_t)h * hs + d];
}

// The CPU backward checked against finite differences of the CPU forward: with L = Σ out·dout,
// dinp must be dL/dinp. Runs before any GPU work (also on a machine without a GPU).
int cpu_self_test() {
    const int B = 2, T = 5, C = 8, NH = 2;
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_att = (size_t)B * NH * T * T;
    float* inp = make_random_float(n_inp, -2.0f, 2.0f);
    float* dout = make_random_float(n_out);
    std::vector<float> dinp(n_inp), out(n_out), att(n_att);
    attention_backward_cpu(dinp.data(), dout, inp, B, T, C, NH);
    auto loss = [&]() {
        attention_forward_cpu(out.data(), att.data(), inp, B, T, C, NH);
        double l = 0.0;
        for (size_t i = 0; i < n_out; i++) l += (double)out[i] * dout[i];
        return l;
    };
    const float eps = 1e-2f;
    double max_grad = 0.0, max_err = 0.0;
    for (size_t i = 0; i < n_inp; i++) {
        float x = inp[i];
        inp[i] = x + eps; double lp = loss();
        inp[i] = x - eps; double lm = loss();
        inp[i] = x;
        double fd = (lp - lm) / ((double)(x + eps) - (double)(x - eps));
        max_err = fmax(max_err, fabs(fd - dinp[i]));
        max_grad = fmax(max_grad, fabs(dinp[i]));
    }
    // central differences: truncation O(eps^2), float rounding of out ~1e-7/eps
    bool ok = max_err <= 1e-3 * max_grad;
    printf("  cpu backward vs finite differences: max err %.3e (max |grad| %.3e) %s\n", max_err, max_grad, ok ? "ok" : "FAIL");
    free(inp); free(dout);
    return ok ? 0 : 1;
}

// ----------------------------------------------------------------------------
// checks

template <typename floatX>
int check_attention(int B, int T, int C, int NH, float tol) {
    printf("%s B=%d T=%d C=%d NH=%d (hs %d):\n", type_name<floatX>(), B, T, C, NH, C / NH);
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_att = (size_t)B * NH * T * T;
    float* inp = make_random_float(n_inp);
    float* dout = make_random_float(n_out);
    round_to_storage<floatX>(inp, n_inp);
    round_to_storage<floatX>(dout, n_out);
    std::vector<float> ref_out(n_out), ref_att(n_att), ref_dinp(n_inp), ref_qkvr(n_inp);
    attention_forward_cpu(ref_out.data(), ref_att.data(), inp, B, T, C, NH);
    attention_backward_cpu(ref_dinp.data(), dout, inp, B, T, C, NH);
    split_qkv_cpu(ref_qkvr.data(), inp, B, T, C, NH);

    floatX* d_inp = to_device<floatX>(inp, n_inp);
    floatX* d_dout = to_device<floatX>(dout, n_out);
    floatX* d_out = device_alloc<floatX>(n_out);
    floatX* d_qkvr = device_alloc<floatX>(n_inp);
    floatX* d_att = device_alloc<floatX>(n_att);
    floatX* d_fscratch = device_alloc<floatX>(n_out);
    floatX* d_dinp = device_alloc<floatX>(n_inp);
    floatX* d_dqkvr = device_alloc<floatX>(n_inp);
    floatX* d_datt = device_alloc<floatX>(n_att);
    floatX* d_scratch = device_alloc<floatX>(n_out);
    poison(d_out, n_out * sizeof(floatX)); poison(d_qkvr, n_inp * sizeof(floatX)); poison(d_att, n_att * sizeof(floatX));
    poison(d_fscratch, n_out * sizeof(floatX)); poison(d_dinp, n_inp * sizeof(floatX)); poison(d_dqkvr, n_inp * sizeof(floatX));
    poison(d_datt, n_att * sizeof(floatX)); poison(d_scratch, n_out * sizeof(floatX));

    attention_forward(d_out, d_qkvr, d_att, d_fscratch, d_inp, B, T, C, NH, 0);
    attention_backward(d_dinp, d_dqkvr, d_datt, d_scratch, d_dout, d_qkvr, d_att, B, T, C, NH, 0);

    int failures = 0;
    failures += !check_result(d_qkvr, ref_qkvr.data(), "qkvr (split heads)", n_inp, 0.0f);
    failures += !check_result(d_att, ref_att.data(), "att", n_att, tol);
    failures += !check_result(d_out, ref_out.data(), "out", n_out, tol);
    failures += !check_result(d_dinp, ref_dinp.data(), "dinp", n_inp, tol);
    // the mask must be exact: every s > t entry of att is 0
    std::vector<float> att = from_device(d_att, n_att);
    size_t nonzero_masked = 0;
    for (size_t row = 0; row < (size_t)B * NH * T; row++) {
        int t = (int)(row % T);
        for (int s = t + 1; s < T; s++) nonzero_masked += att[row * T + s] != 0.0f;
    }
    printf("  %-28s %zu nonzero %s\n", "att masked entries", nonzero_masked, nonzero_masked ? "FAIL" : "ok");
    failures += nonzero_masked != 0;

    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_qkvr));
    cudaCheck(cudaFree(d_att)); cudaCheck(cudaFree(d_fscratch)); cudaCheck(cudaFree(d_dinp)); cudaCheck(cudaFree(d_dqkvr));
    cudaCheck(cudaFree(d_datt)); cudaCheck(cudaFree(d_scratch));
    free(inp); free(dout);
    return failures;
}

// ----------------------------------------------------------------------------
// timing

template <typename floatX>
void run_benchmark(int B, int T, int C, int NH) {
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_att = (size_t)B * NH * T * T;
    float* h_inp = make_random_float(n_inp);
    floatX* d_inp = to_device<floatX>(h_inp, n_inp);
    floatX* d_dout = to_device<floatX>(h_inp, n_out);
    floatX* d_out = device_alloc<floatX>(n_out);
    floatX* d_qkvr = device_alloc<floatX>(n_inp);
    floatX* d_att = device_alloc<floatX>(n_att);
    floatX* d_dinp = device_alloc<floatX>(n_inp);
    floatX* d_dqkvr = device_alloc<floatX>(n_inp);
    floatX* d_datt = device_alloc<floatX>(n_att);
    floatX* d_scratch = device_alloc<floatX>(n_out);
    float ms_f = benchmark_kernel(2, 10, [&] { attention_forward(d_out, d_qkvr, d_att, d_scratch, d_inp, B, T, C, NH, 0); });
    float ms_b = benchmark_kernel(2, 10, [&] {
        attention_backward(d_dinp, d_dqkvr, d_datt, d_scratch, d_dout, d_qkvr, d_att, B, T, C, NH, 0); });
    // matmul work as computed (full T x T, masked half included): 2 matmuls forward, 4 backward
    double gflop = 2.0 * B * NH * (double)T * T * (C / NH) * 2.0 / 1e9;
    // the (T,T) matrices dominate the traffic: softmax reads/writes att (fwd), backward reads att, datt
    double att_gb = (double)n_att * sizeof(floatX) / 1e9;
    printf("  %s B=%d T=%d C=%d NH=%d: forward %.3f ms (%.1f TFLOP/s matmul-equivalent, att %.2f GB), backward %.3f ms (%.1f TFLOP/s)\n",
           type_name<floatX>(), B, T, C, NH, ms_f, gflop / ms_f, att_gb, ms_b, 2.0 * gflop / ms_b);
    const int hs = C / NH;
    float ms_split = benchmark_kernel(2, 10, [&] { split_heads(d_qkvr, d_inp, B, T, NH, hs, 3, 3 * C, 0); });
    float ms_merge = benchmark_kernel(2, 10, [&] { merge_heads(d_out, d_scratch, B, T, NH, hs, 1, C, 0); });
    char what[64];
    snprintf(what, sizeof(what), "%s head split q,k,v", type_name<floatX>());
    report_bandwidth(what, ms_split, 2.0 * n_inp * sizeof(floatX));
    snprintf(what, sizeof(what), "%s head merge", type_name<floatX>());
    report_bandwidth(what, ms_merge, 2.0 * n_out * sizeof(floatX));
    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_qkvr));
    cudaCheck(cudaFree(d_att)); cudaCheck(cudaFree(d_dinp)); cudaCheck(cudaFree(d_dqkvr)); cudaCheck(cudaFree(d_datt));
    cudaCheck(cudaFree(d_scratch));
    free(h_inp);
}

int gpu_checks(int) {
    matmul_init();
    int failures = 0;
    const int shapes[][4] = {{2, 8, 32, 2}, {2, 64, 128, 2}, {1, 1024, 128, 2}};
    for (const auto& s : shapes) failures += check_attention<float>(s[0], s[1], s[2], s[3], 1e-5f);
    for (const auto& s : shapes) failures += check_attention<bf16>(s[0], s[1], s[2], s[3], 3e-2f);
    // odd T last: should cuBLASLt have no kernel for 2-byte-aligned bf16 rows, matmul ends the
    // program with a message, and everything above has been reported by then
    failures += check_attention<float>(1, 37, 48, 3, 1e-5f);
    failures += check_attention<bf16>(1, 37, 48, 3, 3e-2f);
    failures += check_attention<float>(2, 19, 60, 4, 1e-5f);
    failures += check_attention<bf16>(2, 19, 60, 4, 3e-2f);
    matmul_destroy();
    return failures;
}

void timing(int) {
    matmul_init();
    printf("timing, GPT-2 small (median of 10):\n");
    run_benchmark<bf16>(8, 1024, 768, 12);
    run_benchmark<float>(8, 1024, 768, 12);
    matmul_destroy();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "attention", 1, cpu_self_test, gpu_checks, timing); }
