/*
Causal multi-head attention forward and activation-gradient backward, llmc/attention.cuh: CPU
reference in double, checks, timing at GPT-2 small's shape.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make attention
  ./attention [check|cpu|N]   no argument: everything; check: CPU self-test and GPU checks;
                              cpu: CPU self-test only (no GPU); N: variant N's checks and timing
  ATTENTION_SMALL=1 ./attention 2   (or 3) the flash checks at the small shapes only, no timing
                              (for compute-sanitizer, dev/gpu_check.sh)
Variants:
  1. materialised, llm.c's scheme (the trainer's default, fp32 and bf16): one kernel splitting the
     heads of q, k and v, cuBLASLt q·kᵀ and att·v each batched over all B·NH heads, causal softmax
     kernel, one kernel merging the heads; two paths in the head split / merge: 16-byte packs where
     hs, the row stride and the pointers allow (GPT-2's shapes: hs 64), one element per thread
     otherwise (checked below with hs 15).
  2. flash, the simple tiled kernels (the trainer's --attention flash; head size 64): q, k, v read
     in place from (B,T,3C), scores and softmax in fp32, no (T,T) matrix; the backward recomputes
     the probabilities from the stored log-sum-exp and writes each output element once (no atomics).
  3. flash on tensor cores, FA2's scheme (the trainer's --attention flash in bf16; head size 64):
     mma.sync m16n8k16 with fp32 accumulation, ldmatrix, cp.async double buffering; forward with
     q in registers, backward in two kernels as variant 2's (dq per query tile, dk and dv per key
     tile, no atomics), P and dS rounded to bf16 only as mma operands. See the comments above
     flash_forward_mma_kernel and flash_backward_dq_mma_kernel in llmc/flash_attention.cuh.
     test_flash_emulated runs variants 2 and 3 on the CPU (an emulation of the PTX, no GPU).

Checks of variant 1, fp32 then bf16, with every output and every scratch buffer poisoned first
(the result must not depend on what scratch held): (B,T,C,NH) = (2,8,32,2) hs 16, (2,64,128,2)
hs 64, (1,1024,128,2) hs 64 (full length), and last (1,37,48,3): odd T, so in bf16 the rows of the
(T,T) matrices are only 2-byte aligned, and (2,19,60,4): hs 15, so the head split/merge take
their one-element path (every other shape moves 16-byte packs). Compared: the split heads in qkvr
(exact copies), the probabilities att (and that every masked entry s > t is exactly 0), out, and
dinp (B,T,3C). Inputs are uniform in [-1, 1] (raw scores q·k up to ~±11 at hs 64, ~±1.4 after
scaling).
Before any GPU work, the CPU backward itself is checked against finite differences of the CPU
forward (this part also runs on a machine without a GPU).
Tolerances of variant 1: fp32 1e-5 relative (double reference). bf16 3e-2, looser than the 1e-2
elsewhere because the pipeline stores in bf16 between every step: the scores before softmax (an
absolute error of up to 2^-8·|score|·scale in the exponent), the probabilities, the output, and
datt, dpreatt in the backward, each a relative rounding of up to 2^-8. A host emulation of exactly
those roundings on inputs like these needed 1.7e-2 (out) and 1.3e-2 (dinp) at worst, and 2.3e-6
for the fp32 pipeline; index or transpose bugs give errors of order 1. Exit code 1 on any mismatch.

Checks of variant 2, bf16 then fp32 storage, outputs poisoned first, at (B,T,C,NH) = (1,2,64,1),
(1,17,64,1), (2,100,128,2), (1,130,64,1) (T = 2, and T not a multiple of the 64-row tile: one,
two and three tiles, the last partial) and (8,1024,768,12) (GPT-2 small, the CPU reference one
thread per batch row). Compared: out, the log-sum-exp lse (B,NH,T) and dinp (B,T,3C), and that a
second run gives the same bits (out, lse, dinp). Tolerances: lse 1e-5 in both precisions (it is
computed in fp32 from the same rounded inputs, so it is the sharp check of the scale and the mask:
one key too many or too few moves it by ~1/T). bf16 2e-2 on out and dinp: only out and dinp are
rounded (2^-8 relative each), plus D = dy·y in the backward, formed from the rounded out as every
flash backward does, which moves dq by up to ~3e-2 of dq's own scale at T = 1024 (~5e-3 of
dinp's). The kernels' own code run on the host (each CUDA thread a CPU thread, the same fp32
operations; not the GPU) needed at worst 3.2e-3 (out) and 4.9e-3 (dinp) over these small shapes
and T = 64, 256, 300, 512, 1024, and ~2e-6 in fp32 storage, whose tolerance is 1e-5.
Checks of variant 3: as variant 2's, bf16 only, its forward and backward. Tolerances as variant
2's: its scores are exact products of bf16 inputs summed in fp32, so lse stays within 1e-5; out
also carries the rounding of P to bf16 before P·v, and dinp that of P and dS before their
products, which the host emulation of the kernels (test/cuda_host_emulation.h: ldmatrix, mma and
cp.async from their PTX definitions) put at 1.0e-2 (out) and 1.1e-2 (dinp) at worst over the
small shapes and T = 300, 1024 (2e-2 allowed).
Timing: variant 1's forward and backward at GPT-2 small's shape, and the head split (q, k, v at
once) and merge kernels alone in GB/s (bytes read + written); variants 2 and 3 (forward and
backward each) against variant 1 at the same shape.
*/
#include "common.h"
#include "../../llmc/attention.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double inside)

// probabilities of row (b,h,t) into p[0..t]; q, k of head h read from inp (B,T,3C). Returns the
// row's log-sum-exp of the scaled scores (what the flash forward stores).
double attention_row_probs_cpu(double* p, const float* inp, int b, int h, int t, int T, int C, int NH) {
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
    return maxv + log(sum);
}

// out (B,T,C), att (B,NH,T,T) or null, lse (B,NH,T) or null, inp (B,T,3C)
void attention_forward_cpu(float* out, float* att, float* lse, const float* inp, int B, int T, int C, int NH) {
    const int hs = C / NH;
    std::vector<double> p(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double row_lse = attention_row_probs_cpu(p.data(), inp, b, h, t, T, C, NH);
                if (lse) lse[((size_t)b * NH + h) * T + t] = (float)row_lse;
                if (att) {
                    float* att_row = att + (((size_t)b * NH + h) * T + t) * T;
                    for (int s = 0; s < T; s++) att_row[s] = s <= t ? (float)p[s] : 0.0f;
                }
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

// out (B,T,C), lse (B,NH,T) and dinp (B,T,3C) in one call, one host thread per batch row (the
// reference at GPT-2 small's shape takes ~30 s on one core; each b touches only its own rows)
void attention_reference_cpu(float* out, float* lse, float* dinp, const float* dout, const float* inp, int B, int T, int C, int NH) {
    std::vector<std::thread> threads;
    for (int b = 0; b < B; b++)
        threads.emplace_back([=] {
            const size_t rows = (size_t)b * T;
            attention_forward_cpu(out + rows * C, nullptr, lse + (size_t)b * NH * T, inp + rows * 3 * C, 1, T, C, NH);
            attention_backward_cpu(dinp + rows * 3 * C, dout + rows * C, inp + rows * 3 * C, 1, T, C, NH);
        });
    for (auto& th : threads) th.join();
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
        attention_forward_cpu(out.data(), att.data(), nullptr, inp, B, T, C, NH);
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

    // the flash checks' reference (one thread per batch row, lse too) against the calls above, bit
    // for bit; and exp(score - lse) summed over a row is 1
    std::vector<float> out2(n_out), lse(B * NH * T), dinp2(n_inp);
    attention_reference_cpu(out2.data(), lse.data(), dinp2.data(), dout, inp, B, T, C, NH);
    attention_forward_cpu(out.data(), att.data(), nullptr, inp, B, T, C, NH);
    const bool same = out == out2 && dinp == dinp2;
    double worst_sum = 0.0;
    const int hs = C / NH;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double sum = 0.0;
                for (int s = 0; s <= t; s++) {
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++)
                        dot += (double)inp[((size_t)b * T + t) * 3 * C + h * hs + d] * inp[((size_t)b * T + s) * 3 * C + C + h * hs + d];
                    sum += exp(dot / sqrt((double)hs) - lse[((size_t)b * NH + h) * T + t]);
                }
                worst_sum = fmax(worst_sum, fabs(sum - 1.0));
            }
    printf("  threaded reference = one-thread reference: %s; rows of exp(score - lse): |sum - 1| <= %.1e %s\n",
           same ? "ok" : "FAIL", worst_sum, worst_sum <= 1e-6 ? "ok" : "FAIL");
    ok = ok && same && worst_sum <= 1e-6;
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
    attention_forward_cpu(ref_out.data(), ref_att.data(), nullptr, inp, B, T, C, NH);
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
// the raw bytes of a device array, for the same-bits check
template <typename T>
std::vector<char> device_bytes(const T* d, size_t n) {
    std::vector<char> h(n * sizeof(T));
    cudaCheck(cudaMemcpy(h.data(), d, h.size(), cudaMemcpyDeviceToHost));
    return h;
}

// one flash variant's forward: out (B,T,C), lse (B,NH,T); variant 3 is bf16 only
template <typename floatX>
void flash_forward_variant(int variant, floatX* out, float* lse, const floatX* inp, int B, int T, int C, int NH) {
    if (variant == 2) flash_attention_forward_simple(out, lse, inp, B, T, C, NH, 0);
    if constexpr (std::is_same<floatX, bf16>::value)
        if (variant == 3) flash_attention_forward(out, lse, inp, B, T, C, NH, 0);  // the tensor-core kernels in bf16
}

// one flash variant's backward: dinp (B,T,3C), dsum (B,NH,T) scratch
template <typename floatX>
void flash_backward_variant(int variant, floatX* dinp, float* dsum, const floatX* dout, const floatX* out, const floatX* inp,
                            const float* lse, int B, int T, int C, int NH) {
    if (variant == 2) flash_attention_backward_simple(dinp, dsum, dout, out, inp, lse, B, T, C, NH, 0);
    if constexpr (std::is_same<floatX, bf16>::value)
        if (variant == 3) flash_attention_backward(dinp, dsum, dout, out, inp, lse, B, T, C, NH, 0);
}

// one flash variant's forward and backward: out (B,T,C), lse (B,NH,T), dinp (B,T,3C), dsum (B,NH,T) scratch
template <typename floatX>
void flash_run(int variant, floatX* out, float* lse, floatX* dinp, float* dsum, const floatX* dout, const floatX* inp,
               int B, int T, int C, int NH) {
    flash_forward_variant(variant, out, lse, inp, B, T, C, NH);
    flash_backward_variant(variant, dinp, dsum, dout, out, inp, lse, B, T, C, NH);
}

template <typename floatX>
int check_flash(int variant, int B, int T, int C, int NH, float tol) {
    printf("variant %d (flash) %s B=%d T=%d C=%d NH=%d (hs %d):\n", variant, type_name<floatX>(), B, T, C, NH, C / NH);
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_lse = (size_t)B * NH * T;
    float* inp = make_random_float(n_inp);
    float* dout = make_random_float(n_out);
    round_to_storage<floatX>(inp, n_inp);
    round_to_storage<floatX>(dout, n_out);
    std::vector<float> ref_out(n_out), ref_lse(n_lse), ref_dinp(n_inp);
    attention_reference_cpu(ref_out.data(), ref_lse.data(), ref_dinp.data(), dout, inp, B, T, C, NH);

    floatX* d_inp = to_device<floatX>(inp, n_inp);
    floatX* d_dout = to_device<floatX>(dout, n_out);
    floatX* d_out = device_alloc<floatX>(n_out);
    floatX* d_dinp = device_alloc<floatX>(n_inp);
    float* d_lse = device_alloc<float>(n_lse);
    float* d_dsum = device_alloc<float>(n_lse);
    auto poison_all = [&] {
        poison(d_out, n_out * sizeof(floatX)); poison(d_dinp, n_inp * sizeof(floatX));
        poison(d_lse, n_lse * sizeof(float)); poison(d_dsum, n_lse * sizeof(float));
    };
    poison_all();
    flash_run(variant, d_out, d_lse, d_dinp, d_dsum, d_dout, d_inp, B, T, C, NH);

    int failures = 0;
    failures += !check_result(d_out, ref_out.data(), "out", n_out, tol);
    failures += !check_result(d_lse, ref_lse.data(), "lse", n_lse, 1e-5f);
    failures += !check_result(d_dinp, ref_dinp.data(), "dinp", n_inp, tol);
    // every element is written by one thread in a fixed order: a second run gives the same bits
    std::vector<char> out1 = device_bytes(d_out, n_out), lse1 = device_bytes(d_lse, n_lse), dinp1 = device_bytes(d_dinp, n_inp);
    poison_all();
    flash_run(variant, d_out, d_lse, d_dinp, d_dsum, d_dout, d_inp, B, T, C, NH);
    const bool same = out1 == device_bytes(d_out, n_out) && lse1 == device_bytes(d_lse, n_lse) && dinp1 == device_bytes(d_dinp, n_inp);
    printf("  %-28s %s\n", "second run, same bits", same ? "ok" : "FAIL");
    failures += !same;

    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_dinp));
    cudaCheck(cudaFree(d_lse)); cudaCheck(cudaFree(d_dsum));
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

// a flash variant against variant 1 (materialised) at one shape, forward and backward. FLOP/s
// count the causal half of the matmul work: 2 matmuls forward, 5 backward (q·kᵀ recomputed once)
template <typename floatX>
void time_flash(int variant, int B, int T, int C, int NH) {
    const size_t n_inp = (size_t)B * T * 3 * C, n_out = (size_t)B * T * C, n_att = (size_t)B * NH * T * T, n_lse = (size_t)B * NH * T;
    floatX* d_inp = device_alloc<floatX>(n_inp);
    floatX* d_dout = device_alloc<floatX>(n_out);
    fill_random(d_inp, n_inp, 1, -1.0f, 1.0f);
    fill_random(d_dout, n_out, 2, -1.0f, 1.0f);
    floatX* d_out = device_alloc<floatX>(n_out);
    floatX* d_dinp = device_alloc<floatX>(n_inp);
    float* d_lse = device_alloc<float>(n_lse);
    float* d_dsum = device_alloc<float>(n_lse);
    floatX* d_qkvr = device_alloc<floatX>(n_inp);
    floatX* d_att = device_alloc<floatX>(n_att);
    floatX* d_dqkvr = device_alloc<floatX>(n_inp);
    floatX* d_datt = device_alloc<floatX>(n_att);
    floatX* d_scratch = device_alloc<floatX>(n_out);
    const float mat_f = benchmark_kernel(2, 10, [&] { attention_forward(d_out, d_qkvr, d_att, d_scratch, d_inp, B, T, C, NH, 0); });
    const float mat_b = benchmark_kernel(2, 10, [&] {
        attention_backward(d_dinp, d_dqkvr, d_datt, d_scratch, d_dout, d_qkvr, d_att, B, T, C, NH, 0); });
    const float flash_f = benchmark_kernel(2, 10, [&] { flash_forward_variant(variant, d_out, d_lse, d_inp, B, T, C, NH); });
    const float flash_b = benchmark_kernel(2, 10, [&] { flash_backward_variant(variant, d_dinp, d_dsum, d_dout, d_out, d_inp, d_lse, B, T, C, NH); });
    const double causal_gflop = 2.0 * B * NH * (double)T * T * (C / NH) / 2.0 / 1e9;  // one (T,T,hs) matmul, causal half
    printf("  variant %d (flash) %s B=%d T=%d C=%d NH=%d: forward %.3f ms (%.1f TFLOP/s causal) vs materialized %.3f ms: %.2fx; "
           "backward %.3f ms (%.1f TFLOP/s causal) vs materialized %.3f ms: %.2fx\n", variant, type_name<floatX>(), B, T, C, NH,
           flash_f, 2.0 * causal_gflop / flash_f, mat_f, mat_f / flash_f, flash_b, 5.0 * causal_gflop / flash_b, mat_b, mat_b / flash_b);
    cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_out)); cudaCheck(cudaFree(d_dinp));
    cudaCheck(cudaFree(d_lse)); cudaCheck(cudaFree(d_dsum)); cudaCheck(cudaFree(d_qkvr)); cudaCheck(cudaFree(d_att));
    cudaCheck(cudaFree(d_dqkvr)); cudaCheck(cudaFree(d_datt)); cudaCheck(cudaFree(d_scratch));
}

// ATTENTION_SMALL set: the flash checks at the small shapes only and no timing (compute-sanitizer runs)
static bool small_only() { return getenv("ATTENTION_SMALL") != nullptr; }

static const int NUM_VARIANTS = 3;

int gpu_checks(int only) {
    if (only == 0 || only == 1) matmul_init();  // variant 1 only: the flash checks need no cuBLASLt handle
    int failures = 0;
    if (only == 0 || only == 1) {
        const int shapes[][4] = {{2, 8, 32, 2}, {2, 64, 128, 2}, {1, 1024, 128, 2}};
        for (const auto& s : shapes) failures += check_attention<float>(s[0], s[1], s[2], s[3], 1e-5f);
        for (const auto& s : shapes) failures += check_attention<bf16>(s[0], s[1], s[2], s[3], 3e-2f);
        // odd T last: should cuBLASLt have no kernel for 2-byte-aligned bf16 rows, matmul ends the
        // program with a message, and everything above has been reported by then
        failures += check_attention<float>(1, 37, 48, 3, 1e-5f);
        failures += check_attention<bf16>(1, 37, 48, 3, 3e-2f);
        failures += check_attention<float>(2, 19, 60, 4, 1e-5f);
        failures += check_attention<bf16>(2, 19, 60, 4, 3e-2f);
    }
    // T = 2; T of one, two and three tiles with the last one partial; GPT-2 small last
    const int flash_shapes[][4] = {{1, 2, 64, 1}, {1, 17, 64, 1}, {2, 100, 128, 2}, {1, 130, 64, 1}, {8, 1024, 768, 12}};
    const int n_flash_shapes = small_only() ? 4 : 5;
    for (int v = 2; v <= NUM_VARIANTS; v++) {
        if (only != 0 && only != v) continue;
        for (int i = 0; i < n_flash_shapes; i++) {
            const int* s = flash_shapes[i];
            failures += check_flash<bf16>(v, s[0], s[1], s[2], s[3], 2e-2f);
            if (v == 2) failures += check_flash<float>(v, s[0], s[1], s[2], s[3], 1e-5f);  // variant 3 is bf16 only
        }
    }
    matmul_destroy();
    return failures;
}

void timing(int only) {
    if (small_only()) return;
    matmul_init();
    printf("timing, GPT-2 small (median of 10):\n");
    if (only == 0 || only == 1) {
        run_benchmark<bf16>(8, 1024, 768, 12);
        run_benchmark<float>(8, 1024, 768, 12);
    }
    for (int v = 2; v <= NUM_VARIANTS; v++)
        if (only == 0 || only == v) {
            time_flash<bf16>(v, 8, 1024, 768, 12);
            if (v == 2) time_flash<float>(v, 8, 1024, 768, 12);
        }
    matmul_destroy();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "attention", NUM_VARIANTS, cpu_self_test, gpu_checks, timing); }
