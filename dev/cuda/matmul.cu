/*
cuBLASLt matmuls, llmc/matmul.cuh: the general row-major wrapper (every type combination,
transpose, epilogue and the accumulate flag), the strided-batched one attention uses, and the
GPT-2 wrappers, against a CPU reference in double; then TFLOP/s at GPT-2 small and SAE shapes.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make matmul
  ./matmul [check|cpu|1]   no argument or 1: everything; check: CPU self-test and GPU checks;
                           cpu: CPU self-test only (no GPU): the reference on hand-worked products
There is one implementation (variant 1, cuBLASLt through llmc's wrappers), which the trainer
ships in fp32 and bf16; the timing compares fused and unfused GELU and fp32 against bf16. The
fc forward fuses GELU into cuBLASLt's epilogue in bf16 (when OC % 8 == 0); fp32 runs
gelu_forward after the matmul (see the GELU tolerance below for why).

Checks (every output poisoned, or pre-filled with random values where accumulate or untouched
gaps are being tested), for fp32·fp32->fp32, bf16·bf16->bf16 and bf16·bf16->fp32, once with
every size a multiple of 8 (m 40, n 56, k 32) and once with none (m 37, n 53, k 29; run last):
  - all four transpose combinations
  - accumulate (D += A·B) in the weight-gradient form (transA), and with a bias (D += A·B + b)
  - epilogues BIAS, RELU_BIAS, and GELU_AUX_BIAS (out and pre-GELU aux), GELU_AUX for bf16 out
    (the GELU epilogues with fp32 outputs, which nothing uses, are checked at the very end)
  - one GPT-2-sized product (m 128, n 3072, k 768) with bias
  - strided batched: attention's three shapes (one with a row stride wider than the row, as the
    per-head output into (B,T,C)), and odd row/batch strides with gaps, alpha 0.5, with and
    without accumulate; the gaps must come back untouched
  - matmul_backward_dinp_gelu (--fused-backward: the DGELU epilogue in bf16 when C % 8 == 0, else
    matmul_backward_dinp then gelu_backward_inplace) against the tanh GELU's derivative in double
    (2e-3 for the epilogue, as for its GELU), timed against the separate pair at fc_proj's shape
  - matmul_forward (no bias, bias, pre_gelu fused and unfused), matmul_forward_residual (the
    residual as a separate C, which must come back untouched, and in place), matmul_forward_fp32_out (the LM
    head's fp32 logits; 1e-5 in both precisions, as its products are exact) and matmul_backward_dinp
  - the plan cache: every matmul_cublaslt / batched check above runs three times, uncached, cached
    (the plan may be built here) and cached again (must hit the cache), and the three outputs (aux
    included) must agree bit for bit; and a cached plan reused with other bias / aux pointers must
    read and write the new ones
Tolerances: inputs are rounded to the operand type first, so products are exact in fp32 and only
the fp32 accumulation (and the output rounding) differ from the double reference: 1e-5 relative
for fp32 outputs, 1e-2 for bf16 outputs (output rounding 2^-8). cuBLASLt's own GELU epilogue
is checked at 2e-3: its approximation is not documented (tanh-form or erf-form differ by up to
4e-4); the max difference from our tanh GELU is printed. That is why fp32 matmul_forward never
fuses GELU. Exit code 1 on any mismatch.
Timing also reports the host time per call with and without the plan cache (tiny shape, so the
GPU keeps up with the launches).
*/
#include <chrono>
#include "common.h"
#include "../../llmc/matmul.cuh"

// ----------------------------------------------------------------------------
// CPU reference (double accumulation)

enum Act { ACT_NONE, ACT_RELU, ACT_GELU };

double gelu_tanh_cpu(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// d (m,n) = act(op(a)·op(b) + bias + (accumulate ? d : 0)); aux (m,n) gets the value before act.
// Row-major, packed: a is (m,k), or (k,m) when transA; b is (k,n), or (n,k) when transB.
void matmul_cpu(float* d, float* aux, const float* a, const float* b, const float* bias, int m, int n, int k,
                bool transA, bool transB, bool accumulate, Act act) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double acc = 0.0;
            for (int p = 0; p < k; p++) {
                double av = transA ? a[(size_t)p * m + i] : a[(size_t)i * k + p];
                double bv = transB ? b[(size_t)j * k + p] : b[(size_t)p * n + j];
                acc += av * bv;
            }
            if (bias != NULL) acc += bias[j];
            if (accumulate) acc += d[(size_t)i * n + j];
            if (aux != NULL) aux[(size_t)i * n + j] = (float)acc;
            if (act == ACT_RELU) acc = acc > 0.0 ? acc : 0.0;
            if (act == ACT_GELU) acc = gelu_tanh_cpu(acc);
            d[(size_t)i * n + j] = (float)acc;
        }
    }
}

// the reference on a hand-worked product, every transpose form, bias + ReLU with aux, accumulate:
// a (2,3) = [1 2 3; 4 5 6], b (3,2) = [1 0; 0 1; 1 1], a·b = [4 5; 10 11]
int cpu_self_test() {
    const float a[6] = {1, 2, 3, 4, 5, 6}, aT[6] = {1, 4, 2, 5, 3, 6};  // aT: a stored (k,m)
    const float b[6] = {1, 0, 0, 1, 1, 1}, bT[6] = {1, 0, 1, 0, 1, 1};  // bT: b stored (n,k)
    const float ab[4] = {4, 5, 10, 11}, bias[2] = {1, -20};
    int failures = 0;
    for (int tA = 0; tA <= 1; tA++)
        for (int tB = 0; tB <= 1; tB++) {
            float d[4];
            matmul_cpu(d, NULL, tA ? aT : a, tB ? bT : b, NULL, 2, 2, 3, tA, tB, false, ACT_NONE);
            const bool ok = memcmp(d, ab, sizeof(d)) == 0;
            printf("  cpu matmul %c%c on a hand example: %s\n", tA ? 'T' : 'N', tB ? 'T' : 'N', ok ? "ok" : "FAIL");
            failures += !ok;
        }
    float d[4], aux[4];
    const float relu[4] = {5, 0, 11, 0}, pre[4] = {5, -15, 11, -9};
    matmul_cpu(d, aux, a, b, bias, 2, 2, 3, false, false, false, ACT_RELU);
    bool ok = memcmp(d, relu, sizeof(d)) == 0 && memcmp(aux, pre, sizeof(aux)) == 0;
    printf("  cpu matmul + bias + relu, aux before relu: %s\n", ok ? "ok" : "FAIL");
    failures += !ok;
    float acc[4] = {1, 1, 1, 1};
    const float acc_expect[4] = {5, 6, 11, 12};
    matmul_cpu(acc, NULL, a, b, NULL, 2, 2, 3, false, false, true, ACT_NONE);
    ok = memcmp(acc, acc_expect, sizeof(acc)) == 0;
    printf("  cpu matmul accumulate: %s\n", ok ? "ok" : "FAIL");
    return failures + !ok;
}

// ----------------------------------------------------------------------------
// plan cache: the same call uncached, cached, and cached again must give the same bits

struct DeviceBytes { const void* p; size_t bytes; };
static std::vector<unsigned char> snapshot(std::initializer_list<DeviceBytes> outs) {
    std::vector<unsigned char> h;
    for (const DeviceBytes& o : outs) {
        size_t at = h.size();
        h.resize(at + o.bytes);
        cudaCheck(cudaMemcpy(h.data() + at, o.p, o.bytes, cudaMemcpyDeviceToHost));
    }
    return h;
}
static int cache_checks = 0, cache_failures = 0;
// run() must reset every input it overwrites and call the matmul once
template <typename F>
int check_plan_cache(const char* name, F run, std::initializer_list<DeviceBytes> outs) {
    matmul_plan_cache_enabled = false;
    run();
    std::vector<unsigned char> uncached = snapshot(outs);
    matmul_plan_cache_enabled = true;
    run();
    std::vector<unsigned char> first = snapshot(outs);
    const size_t hits = matmul_plan_hits;
    run();
    std::vector<unsigned char> cached = snapshot(outs);
    const bool hit = matmul_plan_hits == hits + 1, same = uncached == first && first == cached;
    cache_checks++;
    if (!hit || !same) {
        printf("  %s: plan cache %s%s FAIL\n", name, same ? "" : "changed the output bits ", hit ? "" : "missed on a repeat");
        cache_failures++;
        return 1;
    }
    return 0;
}

// one plan, two sets of pointers: the repeat (a cache hit) must use its own bias and aux
int check_plan_pointer_rebind() {
    printf("plan cache, one shape with two bias / aux buffers:\n");
    const int m = 40, n = 64, k = 32;
    float* a = make_random_float((size_t)m * k);
    float* b = make_random_float((size_t)n * k);
    float* bias1 = make_random_float(n);
    float* bias2 = make_random_float(n, 2.0f, 3.0f);
    round_to_storage<bf16>(a, (size_t)m * k); round_to_storage<bf16>(b, (size_t)n * k);
    round_to_storage<bf16>(bias1, n); round_to_storage<bf16>(bias2, n);
    bf16* d_a = to_device<bf16>(a, (size_t)m * k);
    bf16* d_b = to_device<bf16>(b, (size_t)n * k);
    bf16* d_bias[2] = {to_device<bf16>(bias1, n), to_device<bf16>(bias2, n)};
    const float* h_bias[2] = {bias1, bias2};
    int failures = 0;
    bf16 *d_d[2], *d_aux[2];  // all four live at once, so set 2 cannot land at set 1's addresses
    for (int i = 0; i < 2; i++) {
        d_d[i] = device_alloc<bf16>((size_t)m * n);
        d_aux[i] = device_alloc<bf16>((size_t)m * n);
        poison(d_d[i], (size_t)m * n * sizeof(bf16)); poison(d_aux[i], (size_t)m * n * sizeof(bf16));
    }
    for (int i = 0; i < 2; i++) {
        const size_t hits = matmul_plan_hits;
        matmul_cublaslt(d_d[i], d_a, d_b, d_bias[i], m, n, k, false, true, CUDA_R_16BF, CUDA_R_16BF, false,
                        CUBLASLT_EPILOGUE_GELU_AUX_BIAS, d_aux[i], 0);
        const bool hit = matmul_plan_hits == hits + 1;
        std::vector<float> ref(m * n), ref_aux(m * n);
        matmul_cpu(ref.data(), ref_aux.data(), a, b, h_bias[i], m, n, k, false, true, false, ACT_GELU);
        char name[64];
        snprintf(name, sizeof(name), "set %d out (cache %s)", i + 1, hit ? "hit" : "miss");
        failures += !check_result(d_d[i], ref.data(), name, (size_t)m * n, 1e-2f);  // bf16 output
        snprintf(name, sizeof(name), "set %d aux", i + 1);
        failures += !check_result(d_aux[i], ref_aux.data(), name, (size_t)m * n, 1e-2f);
        if (i == 1 && !hit) { printf("  the repeat missed the cache FAIL\n"); failures++; }
    }
    for (int i = 0; i < 2; i++) { cudaCheck(cudaFree(d_d[i])); cudaCheck(cudaFree(d_aux[i])); }
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_bias[0])); cudaCheck(cudaFree(d_bias[1]));
    free(a); free(b); free(bias1); free(bias2);
    return failures;
}

// ----------------------------------------------------------------------------
// checks of matmul_cublaslt

Act epilogue_act(cublasLtEpilogue_t e) {
    if (e == CUBLASLT_EPILOGUE_RELU_BIAS || e == CUBLASLT_EPILOGUE_RELU) return ACT_RELU;
    if (e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX ||
        e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU) return ACT_GELU;
    return ACT_NONE;
}

template <typename Tab, typename Td>
int check_matmul(int m, int n, int k, bool transA, bool transB, bool accumulate, cublasLtEpilogue_t epilogue,
                 float tol) {
    const size_t an = (size_t)m * k, bn = (size_t)k * n, dn = (size_t)m * n;
    const bool has_bias = epilogue_has_bias(epilogue), has_aux = epilogue_has_aux(epilogue);
    const Act act = epilogue_act(epilogue);
    float* a = make_random_float(an);
    float* b = make_random_float(bn);
    float* bias = make_random_float(n);
    float* d0 = make_random_float(dn);
    round_to_storage<Tab>(a, an); round_to_storage<Tab>(b, bn);
    round_to_storage<Td>(bias, n); round_to_storage<Td>(d0, dn);
    std::vector<float> ref(d0, d0 + dn), ref_aux(dn);
    matmul_cpu(ref.data(), ref_aux.data(), a, b, has_bias ? bias : NULL, m, n, k, transA, transB, accumulate, act);

    Tab* d_a = to_device<Tab>(a, an);
    Tab* d_b = to_device<Tab>(b, bn);
    Td* d_bias = to_device<Td>(bias, n);
    Td* d_d0 = to_device<Td>(d0, dn);
    Td* d_d = device_alloc<Td>(dn);
    Td* d_aux = device_alloc<Td>(dn);

    char name[128];
    snprintf(name, sizeof(name), "%s->%s %dx%dx%d %c%c%s epi%d", type_name<Tab>(), type_name<Td>(), m, n, k,
             transA ? 'T' : 'N', transB ? 'T' : 'N', accumulate ? " acc" : "", (int)epilogue);
    int failures = check_plan_cache(name, [&] {
        poison(d_aux, dn * sizeof(Td));
        if (accumulate) cudaCheck(cudaMemcpy(d_d, d_d0, dn * sizeof(Td), cudaMemcpyDeviceToDevice));
        else poison(d_d, dn * sizeof(Td));
        matmul_cublaslt(d_d, d_a, d_b, has_bias ? d_bias : NULL, m, n, k, transA, transB, cuda_dtype<Tab>(),
                        cuda_dtype<Td>(), accumulate, epilogue, has_aux ? d_aux : NULL, 0);
    }, {{d_d, dn * sizeof(Td)}, {d_aux, has_aux ? dn * sizeof(Td) : 0}});

    const float out_tol = act == ACT_GELU ? fmaxf(tol, 2e-3f) : tol;
    failures += !check_result(d_d, ref.data(), name, dn, out_tol);
    if (has_aux) {
        strncat(name, " aux", sizeof(name) - strlen(name) - 1);
        failures += !check_result(d_aux, ref_aux.data(), name, dn, tol);
        if (std::is_same<Td, float>::value) {
            // how far is cuBLASLt's GELU from the tanh GELU at the same pre-GELU values? (fp32 only:
            // in bf16 the rounding of aux alone moves the GELU by ~1e-2)
            std::vector<float> out = from_device(d_d, dn), pre = from_device(d_aux, dn);
            double max_diff = 0.0;
            for (size_t i = 0; i < dn; i++) max_diff = fmax(max_diff, fabs(out[i] - gelu_tanh_cpu(pre[i])));
            printf("    cuBLASLt GELU epilogue vs tanh GELU of its own aux: max abs diff %.3e\n", max_diff);
        }
    }
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_bias));
    cudaCheck(cudaFree(d_d0)); cudaCheck(cudaFree(d_d)); cudaCheck(cudaFree(d_aux));
    free(a); free(b); free(bias); free(d0);
    return failures;
}

// strided batched with explicit row strides; D is pre-filled so untouched gaps can be checked
template <typename Tab, typename Td>
int check_batched(int m, int n, int k, bool transA, bool transB, int lda, int ldb, int ldd, int batch,
                  long long sA, long long sB, long long sD, float alpha, bool accumulate, float tol) {
    const size_t an = (size_t)sA * batch, bn = (size_t)sB * batch, dn = (size_t)sD * batch;
    float* a = make_random_float(an);
    float* b = make_random_float(bn);
    float* d0 = make_random_float(dn);
    round_to_storage<Tab>(a, an); round_to_storage<Tab>(b, bn); round_to_storage<Td>(d0, dn);
    std::vector<float> ref(d0, d0 + dn);
    for (int bi = 0; bi < batch; bi++) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double acc = 0.0;
                for (int p = 0; p < k; p++) {
                    double av = transA ? a[bi * sA + (size_t)p * lda + i] : a[bi * sA + (size_t)i * lda + p];
                    double bv = transB ? b[bi * sB + (size_t)j * ldb + p] : b[bi * sB + (size_t)p * ldb + j];
                    acc += av * bv;
                }
                float& r = ref[bi * sD + (size_t)i * ldd + j];
                r = (float)(alpha * acc + (accumulate ? (double)r : 0.0));
            }
        }
    }
    Tab* d_a = to_device<Tab>(a, an);
    Tab* d_b = to_device<Tab>(b, bn);
    Td* d_d0 = to_device<Td>(d0, dn);
    Td* d_d = device_alloc<Td>(dn);
    char name[128];
    snprintf(name, sizeof(name), "batched %s->%s %dx%dx%d %c%c x%d%s", type_name<Tab>(), type_name<Td>(), m, n, k,
             transA ? 'T' : 'N', transB ? 'T' : 'N', batch, accumulate ? " acc" : "");
    int failures = check_plan_cache(name, [&] {
        cudaCheck(cudaMemcpy(d_d, d_d0, dn * sizeof(Td), cudaMemcpyDeviceToDevice));  // the gaps must stay as d0
        matmul_cublaslt_batched(d_d, d_a, d_b, m, n, k, transA, transB, lda, ldb, ldd, batch, sA, sB, sD,
                                cuda_dtype<Tab>(), cuda_dtype<Td>(), alpha, accumulate, 0);
    }, {{d_d, dn * sizeof(Td)}});
    failures += !check_result(d_d, ref.data(), name, dn, tol);
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_d0)); cudaCheck(cudaFree(d_d));
    free(a); free(b); free(d0);
    return failures;
}

// odd: sizes and strides with no factor of 8 (bf16 rows then only 2-byte aligned); otherwise
// every size and stride is a multiple of 8
template <typename Tab, typename Td>
int check_type_combo(bool odd, float tol) {
    printf("%s x %s -> %s, %s sizes:\n", type_name<Tab>(), type_name<Tab>(), type_name<Td>(), odd ? "odd" : "aligned");
    const bool gelu_in_use = std::is_same<Tab, bf16>::value && std::is_same<Td, bf16>::value;
    int failures = 0;
    const int m = odd ? 37 : 40, n = odd ? 53 : 56, k = odd ? 29 : 32;
    for (int tA = 0; tA <= 1; tA++)
        for (int tB = 0; tB <= 1; tB++)
            failures += check_matmul<Tab, Td>(m, n, k, tA, tB, false, CUBLASLT_EPILOGUE_DEFAULT, tol);
    failures += check_matmul<Tab, Td>(m, n, k, true, false, true, CUBLASLT_EPILOGUE_DEFAULT, tol);
    failures += check_matmul<Tab, Td>(m, n, k, false, true, false, CUBLASLT_EPILOGUE_BIAS, tol);
    failures += check_matmul<Tab, Td>(m, n, k, false, true, true, CUBLASLT_EPILOGUE_BIAS, tol);
    failures += check_matmul<Tab, Td>(m, n, k, false, false, false, CUBLASLT_EPILOGUE_RELU_BIAS, tol);
    if (gelu_in_use) {  // the other types' GELU epilogues are checked last, in check_gelu_epilogues
        failures += check_matmul<Tab, Td>(m, 64, k, false, true, false, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, tol);
        failures += check_matmul<Tab, Td>(m, 64, k, false, true, false, CUBLASLT_EPILOGUE_GELU_AUX, tol);
    }
    if (odd) {
        // row strides wider than the rows, batch strides with gaps, nothing a multiple of 8
        failures += check_batched<Tab, Td>(17, 24, 40, false, true, 40 + 3, 40 + 5, 24 + 7, 3,
                                           17 * 43 + 11, 24 * 45 + 7, 17 * 31 + 13, 0.5f, false, tol);
        failures += check_batched<Tab, Td>(17, 24, 40, true, false, 17 + 1, 24 + 3, 24 + 7, 3,
                                           40 * 18 + 5, 40 * 27 + 3, 17 * 31 + 13, 0.5f, true, tol);
    } else {
        failures += check_matmul<Tab, Td>(128, 3072, 768, false, true, false, CUBLASLT_EPILOGUE_BIAS, tol);
        // attention's shapes: (T,T)=(T,hs)·(T,hs)^T, and a per-head output with row stride C
        failures += check_batched<Tab, Td>(64, 64, 16, false, true, 16, 16, 64, 6, 64 * 16, 64 * 16, 64 * 64,
                                           1.0f, false, tol);
        failures += check_batched<Tab, Td>(64, 16, 64, false, false, 64, 16, 48, 2, 3 * 64 * 64, 3 * 64 * 16,
                                           64 * 48, 1.0f, false, tol);
        failures += check_batched<Tab, Td>(64, 16, 64, true, false, 64, 16, 16, 6, 64 * 64, 64 * 16, 64 * 16,
                                           1.0f, false, tol);
    }
    return failures;
}

// GELU epilogues with fp32 outputs: nothing uses them (fp32 matmul_forward runs gelu_forward), so
// they run last, where a missing cuBLASLt kernel cannot hide other results
template <typename Tab, typename Td>
int check_gelu_epilogues(float tol) {
    printf("%s x %s -> %s, GELU epilogues (unused by the trainer):\n", type_name<Tab>(), type_name<Tab>(), type_name<Td>());
    int failures = 0;
    failures += check_matmul<Tab, Td>(40, 64, 32, false, true, false, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, tol);
    failures += check_matmul<Tab, Td>(40, 64, 32, false, true, false, CUBLASLT_EPILOGUE_GELU_AUX, tol);
    return failures;
}

// ----------------------------------------------------------------------------
// checks of the GPT-2 wrappers

template <typename floatX>
int check_gpt2_wrappers(bool odd, float tol) {
    printf("matmul_forward / matmul_backward_dinp, %s, %s sizes:\n", type_name<floatX>(), odd ? "odd" : "aligned");
    int failures = 0;
    const int N = odd ? 37 : 40, C = odd ? 29 : 32;
    for (int OC : {64, 60}) {  // 60: not a multiple of 8, so bf16 cannot fuse GELU
        const size_t NC = (size_t)N * C, NOC = (size_t)N * OC, OCC = (size_t)OC * C;
        float* inp = make_random_float(NC);
        float* weight = make_random_float(OCC);
        float* bias = make_random_float(OC);
        float* dout = make_random_float(NOC);
        float* dinp0 = make_random_float(NC);
        round_to_storage<floatX>(inp, NC); round_to_storage<floatX>(weight, OCC); round_to_storage<floatX>(bias, OC);
        round_to_storage<floatX>(dout, NOC); round_to_storage<floatX>(dinp0, NC);
        std::vector<float> ref_nobias(NOC), ref_bias(NOC), ref_gelu(NOC), ref_pre(NOC), ref_dinp(NC), ref_dinp_acc(dinp0, dinp0 + NC);
        matmul_cpu(ref_nobias.data(), NULL, inp, weight, NULL, N, OC, C, false, true, false, ACT_NONE);
        matmul_cpu(ref_bias.data(), NULL, inp, weight, bias, N, OC, C, false, true, false, ACT_NONE);
        matmul_cpu(ref_gelu.data(), ref_pre.data(), inp, weight, bias, N, OC, C, false, true, false, ACT_GELU);
        matmul_cpu(ref_dinp.data(), NULL, dout, weight, NULL, N, C, OC, false, false, false, ACT_NONE);
        matmul_cpu(ref_dinp_acc.data(), NULL, dout, weight, NULL, N, C, OC, false, false, true, ACT_NONE);

        floatX* d_inp = to_device<floatX>(inp, NC);
        floatX* d_weight = to_device<floatX>(weight, OCC);
        floatX* d_bias = to_device<floatX>(bias, OC);
        floatX* d_dout = to_device<floatX>(dout, NOC);
        floatX* d_dinp0 = to_device<floatX>(dinp0, NC);
        floatX* d_out = device_alloc<floatX>(NOC);
        floatX* d_pre = device_alloc<floatX>(NOC);
        floatX* d_dinp = device_alloc<floatX>(NC);
        char name[96];

        poison(d_out, NOC * sizeof(floatX));
        matmul_forward<floatX>(d_out, d_inp, d_weight, NULL, N, C, OC, 0);
        snprintf(name, sizeof(name), "forward OC=%d", OC);
        failures += !check_result(d_out, ref_nobias.data(), name, NOC, tol);

        float* d_out32 = device_alloc<float>(NOC);  // the LM head's form: floatX inputs, fp32 out, products exact
        poison(d_out32, NOC * sizeof(float));
        matmul_forward_fp32_out(d_out32, d_inp, d_weight, N, C, OC, 0);
        snprintf(name, sizeof(name), "forward fp32 out OC=%d", OC);
        failures += !check_result(d_out32, ref_nobias.data(), name, NOC, 1e-5f);
        cudaCheck(cudaFree(d_out32));

        poison(d_out, NOC * sizeof(floatX));
        matmul_forward(d_out, d_inp, d_weight, d_bias, N, C, OC, 0);
        snprintf(name, sizeof(name), "forward bias OC=%d", OC);
        failures += !check_result(d_out, ref_bias.data(), name, NOC, tol);

        {  // the residual add on the matmul's C operand: out = residual + inp·weightᵀ + bias, residual
           // a buffer of its own (read only, must come back untouched) and then out itself
            float* residual = make_random_float(NOC);
            round_to_storage<floatX>(residual, NOC);
            std::vector<float> ref_res(NOC);
            for (size_t i = 0; i < NOC; i++) ref_res[i] = ref_bias[i] + residual[i];
            floatX* d_res = to_device<floatX>(residual, NOC);
            poison(d_out, NOC * sizeof(floatX));
            matmul_forward_residual(d_out, d_res, d_inp, d_weight, d_bias, N, C, OC, 0);
            snprintf(name, sizeof(name), "forward residual (own C) OC=%d", OC);
            failures += !check_result(d_out, ref_res.data(), name, NOC, tol);
            snprintf(name, sizeof(name), "residual untouched OC=%d", OC);
            failures += !check_result(d_res, residual, name, NOC, 0.0f);
            matmul_forward_residual(d_res, d_res, d_inp, d_weight, d_bias, N, C, OC, 0);
            snprintf(name, sizeof(name), "forward residual (in place) OC=%d", OC);
            failures += !check_result(d_res, ref_res.data(), name, NOC, tol);
            cudaCheck(cudaFree(d_res));
            free(residual);
        }

        const bool fused = std::is_same<floatX, bf16>::value && matmul_fuse_gelu_bf16 && OC % 8 == 0;
        poison(d_out, NOC * sizeof(floatX)); poison(d_pre, NOC * sizeof(floatX));
        matmul_forward(d_out, d_inp, d_weight, d_bias, N, C, OC, 0, d_pre);
        snprintf(name, sizeof(name), "forward gelu %s OC=%d", fused ? "fused" : "unfused", OC);
        failures += !check_result(d_out, ref_gelu.data(), name, NOC, fused ? fmaxf(tol, 2e-3f) : tol);
        snprintf(name, sizeof(name), "forward pre_gelu OC=%d", OC);
        failures += !check_result(d_pre, ref_pre.data(), name, NOC, tol);

        poison(d_dinp, NC * sizeof(floatX));
        matmul_backward_dinp(d_dinp, d_dout, d_weight, N, C, OC, false, 0);
        snprintf(name, sizeof(name), "backward dinp OC=%d", OC);
        failures += !check_result(d_dinp, ref_dinp.data(), name, NC, tol);

        matmul_backward_dinp(d_dinp0, d_dout, d_weight, N, C, OC, true, 0);
        snprintf(name, sizeof(name), "backward dinp acc OC=%d", OC);
        failures += !check_result(d_dinp0, ref_dinp_acc.data(), name, NC, tol);

        {  // the GELU backward fused in (--fused-backward): dinp = gelu'(pre_gelu) ⊙ (dout · weight), pre_gelu
           // (N,C) in [-4, 4] (both tails of gelu'); bf16 with C % 8 == 0 takes the DGELU epilogue
            float* pre_c = make_random_float(NC, -4.0f, 4.0f);
            round_to_storage<floatX>(pre_c, NC);
            std::vector<float> ref_dg(NC);
            for (size_t i = 0; i < NC; i++) {
                const double x = pre_c[i], u = sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x), t = tanh(u);
                const double grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * sqrt(2.0 / M_PI) * (1.0 + 3.0 * 0.044715 * x * x);
                ref_dg[i] = (float)(ref_dinp[i] * grad);
            }
            floatX* d_pre_c = to_device<floatX>(pre_c, NC);
            const bool dgelu = std::is_same<floatX, bf16>::value && C % 8 == 0;
            poison(d_dinp, NC * sizeof(floatX));
            matmul_backward_dinp_gelu(d_dinp, d_dout, d_weight, d_pre_c, N, C, OC, 0);
            snprintf(name, sizeof(name), "backward dinp gelu %s OC=%d", dgelu ? "DGELU" : "separate", OC);
            failures += !check_result(d_dinp, ref_dg.data(), name, NC, dgelu ? fmaxf(tol, 2e-3f) : tol);
            cudaCheck(cudaFree(d_pre_c));
            free(pre_c);
        }

        cudaCheck(cudaFree(d_inp)); cudaCheck(cudaFree(d_weight)); cudaCheck(cudaFree(d_bias));
        cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_dinp0)); cudaCheck(cudaFree(d_out));
        cudaCheck(cudaFree(d_pre)); cudaCheck(cudaFree(d_dinp));
        free(inp); free(weight); free(bias); free(dout); free(dinp0);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing

// random [-1,1) device array filled on the device (common.h's fill_random: no host round trip for GBs)
template <typename T>
T* device_random(size_t n, unsigned seed) {
    T* d = device_alloc<T>(n);
    fill_random(d, n, seed, -1.0f, 1.0f);
    return d;
}

void report(const char* what, int m, int n, int k, float ms) {
    printf("  %-44s %6d x %6d x %6d  %8.3f ms  %7.1f TFLOP/s\n", what, m, n, k, ms, 2.0 * m * n * k / (ms / 1e3) / 1e12);
}

template <typename floatX>
void bench_gpt2(int warmup, int repeats) {
    const int N = 8 * 1024, C = 768;
    const char* tn = type_name<floatX>();
    struct Shape { const char* name; int C, OC; bool bias; } shapes[] = {
        {"qkv", C, 3 * C, true}, {"attproj", C, C, true}, {"fcproj", 4 * C, C, true},
        {"lm head V=50304", C, 50304, false}};
    const size_t max_out = (size_t)N * 50304, max_in = (size_t)N * 4 * C;
    floatX* inp = device_random<floatX>(max_in, 1);
    floatX* weight = device_random<floatX>((size_t)50304 * C, 2);
    floatX* bias = device_random<floatX>(50304, 3);
    floatX* dout = device_random<floatX>(max_out, 4);
    floatX* out = device_alloc<floatX>(max_out);
    floatX* pre = device_alloc<floatX>((size_t)N * 4 * C);
    char what[96];
    for (const Shape& s : shapes) {
        float ms = benchmark_kernel(warmup, repeats, [&] {
            matmul_forward(out, inp, weight, s.bias ? bias : NULL, N, s.C, s.OC, 0); });
        snprintf(what, sizeof(what), "%s forward %s", tn, s.name);
        report(what, N, s.OC, s.C, ms);
        ms = benchmark_kernel(warmup, repeats, [&] {
            matmul_backward_dinp(out, dout, weight, N, s.C, s.OC, false, 0); });
        snprintf(what, sizeof(what), "%s backward dinp %s", tn, s.name);
        report(what, N, s.C, s.OC, ms);
    }
    {  // the LM head as the trainer runs it: fp32 logits
        float* out32 = device_alloc<float>(max_out);
        float ms = benchmark_kernel(warmup, repeats, [&] { matmul_forward_fp32_out(out32, inp, weight, N, C, 50304, 0); });
        snprintf(what, sizeof(what), "%s forward lm head, fp32 out", tn);
        report(what, N, 50304, C, ms);
        cudaCheck(cudaFree(out32));
    }
    // fc with GELU: fused epilogue (bf16 default) against matmul + gelu_forward
    for (int fuse = 1; fuse >= 0; fuse--) {
        if (fuse && !std::is_same<floatX, bf16>::value) continue;
        matmul_fuse_gelu_bf16 = fuse;
        float ms = benchmark_kernel(warmup, repeats, [&] { matmul_forward(out, inp, weight, bias, N, C, 4 * C, 0, pre); });
        snprintf(what, sizeof(what), "%s forward fc + gelu %s", tn, fuse ? "fused" : "unfused");
        report(what, N, 4 * C, C, ms);
    }
    matmul_fuse_gelu_bf16 = true;
    float ms = benchmark_kernel(warmup, repeats, [&] { matmul_backward_dinp(out, dout, weight, N, C, 4 * C, false, 0); });
    snprintf(what, sizeof(what), "%s backward dinp fc", tn);
    report(what, N, C, 4 * C, ms);
    // fc_proj's dinp (N,4C) with the GELU backward: the DGELU epilogue (bf16, --fused-backward on)
    // against the matmul then gelu_backward_inplace
    const float ms_sep = benchmark_kernel(warmup, repeats, [&] {
        matmul_backward_dinp(out, dout, weight, N, 4 * C, C, false, 0);
        gelu_backward_inplace(out, pre, (size_t)N * 4 * C, 0);
    });
    snprintf(what, sizeof(what), "%s backward dinp fc_proj + gelu separate", tn);
    report(what, N, 4 * C, C, ms_sep);
    if (std::is_same<floatX, bf16>::value) {
        const float ms_fused = benchmark_kernel(warmup, repeats, [&] { matmul_backward_dinp_gelu(out, dout, weight, pre, N, 4 * C, C, 0); });
        snprintf(what, sizeof(what), "%s backward dinp fc_proj + gelu DGELU", tn);
        report(what, N, 4 * C, C, ms_fused);
        printf("  DGELU epilogue is %.2fx the separate pair\n", ms_sep / ms_fused);
    }
    cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(weight)); cudaCheck(cudaFree(bias));
    cudaCheck(cudaFree(dout)); cudaCheck(cudaFree(out)); cudaCheck(cudaFree(pre));
}

// host time per matmul_cublaslt call, cached and uncached: a 64x64x64 bf16 product with bias
// (microseconds on the GPU), enqueued 2000 times, so the host is the bottleneck
void bench_host_overhead() {
    const int m = 64, n = 64, k = 64, calls = 2000;
    bf16* a = device_random<bf16>((size_t)m * k, 15);
    bf16* b = device_random<bf16>((size_t)n * k, 16);
    bf16* bias = device_random<bf16>(n, 17);
    bf16* d = device_alloc<bf16>((size_t)m * n);
    for (int cached = 0; cached <= 1; cached++) {
        matmul_plan_cache_enabled = cached;
        matmul_cublaslt(d, a, b, bias, m, n, k, false, true, CUDA_R_16BF, CUDA_R_16BF, false, CUBLASLT_EPILOGUE_BIAS, NULL, 0);
        cudaCheck(cudaDeviceSynchronize());
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; i++)
            matmul_cublaslt(d, a, b, bias, m, n, k, false, true, CUDA_R_16BF, CUDA_R_16BF, false, CUBLASLT_EPILOGUE_BIAS, NULL, 0);
        double host_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / calls;
        cudaCheck(cudaDeviceSynchronize());
        double total_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / calls;
        printf("  host time per call, plan cache %-3s  %7.2f us enqueue, %7.2f us until done\n", cached ? "on" : "off", host_us, total_us);
    }
    matmul_plan_cache_enabled = true;
    cudaCheck(cudaFree(a)); cudaCheck(cudaFree(b)); cudaCheck(cudaFree(bias)); cudaCheck(cudaFree(d));
}

// the LM head at the unpadded vocabulary: rows of 50257 bf16 are only 2-byte aligned
void bench_lm_head_unpadded(int warmup, int repeats) {
    const int N = 8 * 1024, C = 768, V = 50257;
    bf16* inp = device_random<bf16>((size_t)N * C, 12);
    bf16* weight = device_random<bf16>((size_t)V * C, 13);
    bf16* logits = device_random<bf16>((size_t)N * V, 14);
    bf16* dinp = device_alloc<bf16>((size_t)N * C);
    float ms = benchmark_kernel(warmup, repeats, [&] { matmul_forward<bf16>(logits, inp, weight, NULL, N, C, V, 0); });
    report("bf16 forward lm head V=50257", N, V, C, ms);
    ms = benchmark_kernel(warmup, repeats, [&] { matmul_backward_dinp(dinp, logits, weight, N, C, V, false, 0); });
    report("bf16 backward dinp lm head V=50257", N, C, V, ms);
    cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(weight)); cudaCheck(cudaFree(logits)); cudaCheck(cudaFree(dinp));
}

// the SAE's matmuls (bf16 operands) in the row-major form the trainer calls them
void bench_sae(int warmup, int repeats) {
    const int N = 8 * 1024, C = 768, D = 60 * 768;
    const cudaDataType_t BF = CUDA_R_16BF, F32 = CUDA_R_32F;
    bf16* x = device_random<bf16>((size_t)N * C, 5);
    bf16* W_enc = device_random<bf16>((size_t)C * D, 6);
    bf16* b_enc = device_random<bf16>(D, 7);
    bf16* W_dec = device_random<bf16>((size_t)D * C, 8);
    bf16* b_dec = device_random<bf16>(C, 9);
    bf16* c = device_random<bf16>((size_t)N * D, 10);
    bf16* dxhat = device_random<bf16>((size_t)N * C, 11);
    bf16* xhat = device_alloc<bf16>((size_t)N * C);
    float* dW = device_alloc<float>((size_t)C * D);
    cudaCheck(cudaMemset(dW, 0, (size_t)C * D * sizeof(float)));
    bf16* c_out = device_alloc<bf16>((size_t)N * D);
    float ms;
    ms = benchmark_kernel(warmup, repeats, [&] {  // c = relu(x·W_enc + b_enc)
        matmul_cublaslt(c_out, x, W_enc, b_enc, N, D, C, false, false, BF, BF, false, CUBLASLT_EPILOGUE_RELU_BIAS, NULL, 0); });
    report("sae encoder relu(x W_enc + b) bf16", N, D, C, ms);
    ms = benchmark_kernel(warmup, repeats, [&] {  // xhat = c·W_dec + b_dec
        matmul_cublaslt(xhat, c, W_dec, b_dec, N, C, D, false, false, BF, BF, false, CUBLASLT_EPILOGUE_BIAS, NULL, 0); });
    report("sae decoder c W_dec + b bf16", N, C, D, ms);
    ms = benchmark_kernel(warmup, repeats, [&] {  // dc = dxhat·W_decᵀ
        matmul_cublaslt(c_out, dxhat, W_dec, NULL, N, D, C, false, true, BF, BF, false, CUBLASLT_EPILOGUE_DEFAULT, NULL, 0); });
    report("sae dc = dxhat W_dec^T bf16", N, D, C, ms);
    ms = benchmark_kernel(warmup, repeats, [&] {  // dW_dec (D,C) = cᵀ·dxhat, fp32 out
        matmul_cublaslt(dW, c, dxhat, NULL, D, C, N, true, false, BF, F32, false, CUBLASLT_EPILOGUE_DEFAULT, NULL, 0); });
    report("sae dW_dec = c^T dxhat bf16->fp32", D, C, N, ms);
    ms = benchmark_kernel(warmup, repeats, [&] {  // dW_enc (C,D) += xᵀ·dpre, fp32 out
        matmul_cublaslt(dW, x, c, NULL, C, D, N, true, false, BF, F32, true, CUBLASLT_EPILOGUE_DEFAULT, NULL, 0); });
    report("sae dW_enc += x^T dpre bf16->fp32", C, D, N, ms);
    cudaCheck(cudaFree(x)); cudaCheck(cudaFree(W_enc)); cudaCheck(cudaFree(b_enc)); cudaCheck(cudaFree(W_dec));
    cudaCheck(cudaFree(b_dec)); cudaCheck(cudaFree(c)); cudaCheck(cudaFree(dxhat)); cudaCheck(cudaFree(xhat));
    cudaCheck(cudaFree(dW)); cudaCheck(cudaFree(c_out));
}

int gpu_checks(int) {
    matmul_init();
    int failures = 0;
    failures += check_type_combo<float, float>(false, 1e-5f);
    failures += check_type_combo<bf16, bf16>(false, 1e-2f);
    failures += check_type_combo<bf16, float>(false, 1e-5f);
    failures += check_gpt2_wrappers<float>(false, 1e-5f);
    failures += check_gpt2_wrappers<bf16>(false, 1e-2f);
    // odd sizes last: should cuBLASLt have no kernel for some 2-byte-aligned bf16 case, matmul
    // ends the program with a message, and everything above has been reported by then
    failures += check_type_combo<float, float>(true, 1e-5f);
    failures += check_type_combo<bf16, bf16>(true, 1e-2f);
    failures += check_type_combo<bf16, float>(true, 1e-5f);
    failures += check_gpt2_wrappers<float>(true, 1e-5f);
    failures += check_gpt2_wrappers<bf16>(true, 1e-2f);
    failures += check_gelu_epilogues<float, float>(1e-5f);
    failures += check_gelu_epilogues<bf16, float>(1e-5f);
    failures += check_plan_pointer_rebind();
    printf("plan cache: %d calls run uncached, cached and cached again: %d differ or missed %s (%zu plans built, %zu hits)\n",
           cache_checks, cache_failures, cache_failures ? "FAIL" : "ok", matmul_plan_misses, matmul_plan_hits);
    matmul_destroy();
    return failures;
}

void timing(int) {
    matmul_init();
    printf("host overhead of matmul_cublaslt:\n");
    bench_host_overhead();
    printf("timing, GPT-2 small at B*T = 8192 (median of 10 in bf16, 3 in fp32):\n");
    bench_gpt2<bf16>(3, 10);
    bench_gpt2<float>(1, 3);
    printf("timing, SAE at N = 8192, C = 768, D = 46080 (median of 10):\n");
    bench_sae(3, 10);
    // unpadded last: 2-byte-aligned bf16 rows, where cuBLASLt might have no kernel
    bench_lm_head_unpadded(3, 10);
    matmul_destroy();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "matmul", 1, cpu_self_test, gpu_checks, timing); }
