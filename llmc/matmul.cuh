/*
Matrix multiplication through cuBLASLt: one general row-major wrapper (plus a strided-batched
one for attention), and the GPT-2 shapes: matmul_forward (nn.Linear), matmul_forward_fp32_out
(the LM head: floatX inputs, fp32 logits) and matmul_backward_dinp (the activation gradient;
GPT-2 is frozen, so no weight gradients here).

Row-major API, column-major cuBLAS. Every matrix in this codebase is row-major. A row-major
(r,c) matrix with row stride ld is, byte for byte, the column-major (c,r) matrix with leading
dimension ld, i.e. its transpose. So for the row-major problem
    D (m,n) = op(A) (m,k) · op(B) (k,n)
we ask cuBLAS for the column-major problem
    Dᵀ (n,m) = op(B)ᵀ (n,k) · op(A)ᵀ (k,m)
with the operands swapped (our B is cuBLAS's first operand, our A its second), the same
transpose flags, and M = n, N = m, K = k. A bias of length n (one per output column, as in
nn.Linear) is then cuBLAS's per-row bias, which is what its BIAS epilogues add.

Precision: compute type CUBLAS_COMPUTE_32F always, scale type fp32. For fp32 operands that is
true fp32 FFMA (no TF32: fp32 mode must match PyTorch fp32 to ~1e-5); for bf16 operands it is
tensor cores with fp32 accumulation. Supported types: bf16·bf16 -> bf16, bf16·bf16 -> fp32 (fp32
weight gradients of the SAE from bf16 activations), fp32·fp32 -> fp32. The bias and the GELU aux
matrix always have D's type (cuBLASLt's rule for these types).

The cuBLASLt handle and its 32 MiB workspace are global (matmul_init / matmul_destroy). The
workspace is shared by every call: matmuls on two streams must not run concurrently.

Plan cache: creating the descriptors and layouts and running cublasLtMatmulAlgoGetHeuristic costs
tens of microseconds of host time per call, as much as a small GPT-2 matmul takes on the GPU. A
training step repeats a few dozen distinct calls thousands of times, so each distinct call (every
field the descriptors, layouts or heuristic see, alignments included) builds its plan once and
keeps it until matmul_destroy(); a repeat only sets the bias / aux pointers and calls
cublasLtMatmul. The heuristic sees exactly what it saw uncached, so it picks the same algorithm and
the results are bit-identical (dev/cuda/matmul.cu checks this). Host code is single-threaded.

Built with HOST_EMULATION (test/cuda_host_emulation.h), the checks below run as they are and the
product itself is the emulation's CPU loop (emu_cublaslt_matmul); the plans stay out.
*/
#pragma once
#include <string.h>
#include <type_traits>
#include <unordered_map>
#include <algorithm>
#include "cuda_common.cuh"
#include "gelu.cuh"

inline cublasLtHandle_t cublaslt_handle = NULL;
inline void* cublaslt_workspace = NULL;
inline constexpr size_t cublaslt_workspace_size = 32 * 1024 * 1024;

inline void matmul_init() {
    if (cublaslt_handle != NULL) return;
    cublasCheck(cublasLtCreate(&cublaslt_handle));
    cudaCheck(cudaMalloc(&cublaslt_workspace, cublaslt_workspace_size));
}

inline void matmul_plan_cache_clear();

inline void matmul_destroy() {
    if (cublaslt_handle == NULL) return;
#ifndef HOST_EMULATION
    matmul_plan_cache_clear();  // the plans belong to the handle
#endif
    cudaCheck(cudaFree(cublaslt_workspace));
    cublasCheck(cublasLtDestroy(cublaslt_handle));
    cublaslt_workspace = NULL;
    cublaslt_handle = NULL;
}

// ----------------------------------------------------------------------------
// helpers

inline const char* matmul_type_name(cudaDataType_t t) {
    return t == CUDA_R_32F ? "fp32" : t == CUDA_R_16BF ? "bf16" : "unsupported";
}
inline size_t matmul_type_size(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

inline bool epilogue_has_bias(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_BIAS ||
           e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
// the GELU_AUX epilogues write the aux matrix (the pre-GELU values), DGELU reads it
inline bool epilogue_has_aux(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU;
}
inline bool epilogue_is_supported(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_DEFAULT || e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU ||
           e == CUBLASLT_EPILOGUE_RELU_BIAS || e == CUBLASLT_EPILOGUE_GELU || e == CUBLASLT_EPILOGUE_GELU_BIAS ||
           e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU;
}

// Largest power of two (<= 256) dividing every one of the byte offsets. cuBLASLt's heuristic
// assumes 256-byte aligned operands unless told otherwise; telling it the real alignment (of the
// pointer, its row stride and its batch stride) keeps it from picking a kernel that needs more.
inline uint32_t matmul_alignment(const void* p, long long ld_bytes, long long stride_bytes) {
    unsigned long long bits = (unsigned long long)(uintptr_t)p | (unsigned long long)ld_bytes |
                              (unsigned long long)stride_bytes | 256ull;
    uint32_t align = 1;
    while ((bits & align) == 0) align <<= 1;
    return align;
}

// ----------------------------------------------------------------------------
// plan cache
#ifndef HOST_EMULATION

// Everything a plan depends on. alpha and beta (accumulate) are not here: they are arguments of
// cublasLtMatmul, which the heuristic never sees. All fields are 8 bytes, so there is no padding
// and bytewise equality and hashing are exact.
struct MatmulPlanKey {
    long long m, n, k, transA, transB, lda, ldb, ldd, batch, strideA, strideB, strideD;
    long long ab_type, d_type, epilogue, align_first, align_second, align_c, align_d, align_bias, align_aux;
    bool operator==(const MatmulPlanKey& o) const { return memcmp(this, &o, sizeof(*this)) == 0; }
};
struct MatmulPlanKeyHash {
    size_t operator()(const MatmulPlanKey& key) const {  // FNV-1a over the bytes
        const unsigned char* p = (const unsigned char*)&key;
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < sizeof(key); i++) h = (h ^ p[i]) * 1099511628211ull;
        return (size_t)h;
    }
};
// the descriptor (without its per-call bias / aux pointers), the three layouts and the algorithm
struct MatmulPlan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_first, layout_second, layout_d;
    cublasLtMatmulAlgo_t algo;
};

inline std::unordered_map<MatmulPlanKey, MatmulPlan, MatmulPlanKeyHash> matmul_plans;
inline bool matmul_plan_cache_enabled = true;  // false: build and destroy a plan per call (the uncached path, for benches)
inline size_t matmul_plan_hits = 0, matmul_plan_misses = 0;
inline constexpr size_t matmul_plan_cache_max = 1024;  // a training run needs a few dozen; past this, start over

inline void matmul_plan_destroy(MatmulPlan& plan) {
    cublasCheck(cublasLtMatrixLayoutDestroy(plan.layout_first));
    cublasCheck(cublasLtMatrixLayoutDestroy(plan.layout_second));
    cublasCheck(cublasLtMatrixLayoutDestroy(plan.layout_d));
    cublasCheck(cublasLtMatmulDescDestroy(plan.desc));
}

inline void matmul_plan_cache_clear() {
    for (auto& entry : matmul_plans) matmul_plan_destroy(entry.second);
    matmul_plans.clear();
}
#endif  // HOST_EMULATION

// all argument errors end the program with the shapes and types of the offending call
#define matmul_fail(...) do { \
    fprintf(stderr, "[matmul] "); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, " (m %d n %d k %d transA %d transB %d lda %d ldb %d ldd %d batch %d, %s x %s -> %s, epilogue %d, at %s:%d)\n", \
            m, n, k, (int)transA, (int)transB, lda, ldb, ldd, batch, matmul_type_name(ab_type), \
            matmul_type_name(ab_type), matmul_type_name(d_type), (int)epilogue, __FILE__, __LINE__); \
    exit(EXIT_FAILURE); } while (0)

// The one place cuBLASLt is called. Row-major, as documented at the top of this file:
//   D (m,n) = epilogue(alpha · op(A) · op(B) + (accumulate ? C : 0) + bias)
// C is another (m,n) matrix with D's layout, or D itself (c NULL); it is only read.
// op(A) = A (m,k), or Aᵀ when transA and A is stored (k,m); op(B) = B (k,n), or Bᵀ when transB
// and B is stored (n,k). lda, ldb, ldd are the row strides (elements) of A, B, D as stored, 0 for
// packed. With batch > 1, matrix i starts at a + i·strideA, etc. (elements).
inline void matmul_cublaslt_core(void* d, const void* c, const void* a, const void* b, const void* bias, void* aux,
                                 int m, int n, int k, bool transA, bool transB, int lda, int ldb, int ldd,
                                 int batch, long long strideA, long long strideB, long long strideD,
                                 cudaDataType_t ab_type, cudaDataType_t d_type, float alpha, bool accumulate,
                                 cublasLtEpilogue_t epilogue, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (lda == 0) lda = transA ? m : k;
    if (ldb == 0) ldb = transB ? k : n;
    if (ldd == 0) ldd = n;
    if (cublaslt_handle == NULL) matmul_fail("matmul_init() was not called");
    bool types_ok = (ab_type == CUDA_R_32F && d_type == CUDA_R_32F) ||
                    (ab_type == CUDA_R_16BF && (d_type == CUDA_R_16BF || d_type == CUDA_R_32F));
    if (!types_ok) matmul_fail("unsupported type combination");
    if (m < 0 || n < 0 || k < 0 || batch < 0) matmul_fail("negative size");
    if (m == 0 || n == 0 || batch == 0) return;  // nothing to write
    if (k == 0) matmul_fail("k == 0 is not supported");
    if (lda < (transA ? m : k) || ldb < (transB ? k : n) || ldd < n) matmul_fail("row stride smaller than the row");
    if (!epilogue_is_supported(epilogue)) matmul_fail("unsupported epilogue");
    if (c == NULL) c = d;
    if (c != d && (!accumulate || batch > 1)) matmul_fail("a separate C is read only with accumulate, unbatched");
    if (epilogue_has_bias(epilogue) != (bias != NULL)) matmul_fail("bias must be given exactly when the epilogue adds one");
    if (epilogue_has_aux(epilogue) != (aux != NULL)) matmul_fail("aux must be given exactly when the epilogue stores or reads one");
    // No preference states the bias's alignment (only A..D's); the heuristic infers it from the
    // pointer, and kernels for a bias under 16 bytes aligned are untested here (other projects
    // report faults). Every bias the trainer passes is carved 16-byte aligned: anything else is a bug.
    if (bias != NULL && ((uintptr_t)bias & 15) != 0) matmul_fail("bias pointer %p is not 16-byte aligned", bias);
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT && epilogue != CUBLASLT_EPILOGUE_BIAS && accumulate)
        matmul_fail("accumulate with a ReLU/GELU epilogue would apply it to the sum");
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT && batch > 1) matmul_fail("epilogues are not supported for batched matmuls");
    if (epilogue_has_aux(epilogue) && (ldd != n || n % 8 != 0)) matmul_fail("the GELU aux matrix needs packed D with n %% 8 == 0");
    if (epilogue == CUBLASLT_EPILOGUE_DGELU && ab_type != CUDA_R_16BF) matmul_fail("DGELU is used, and checked, in bf16 only");

#ifdef HOST_EMULATION
    emu_cublaslt_matmul(d, c, a, b, bias, aux, m, n, k, transA, transB, lda, ldb, ldd, batch, strideA, strideB, strideD, ab_type, d_type,
                        alpha, accumulate ? 1.0f : 0.0f, epilogue, stream);  // in call order (or into a graph being captured)
#else
    // cuBLAS's first operand is our B, its second our A (see the top of the file)
    const long long ab_size = (long long)matmul_type_size(ab_type), d_size = (long long)matmul_type_size(d_type);
    const uint32_t align_first = matmul_alignment(b, ldb * ab_size, batch > 1 ? strideB * ab_size : 0);
    const uint32_t align_second = matmul_alignment(a, lda * ab_size, batch > 1 ? strideA * ab_size : 0);
    const uint32_t align_d = matmul_alignment(d, ldd * d_size, batch > 1 ? strideD * d_size : 0);
    const uint32_t align_c = std::min(align_d, matmul_alignment(c, ldd * d_size, 0));  // C = D: align_d
    const MatmulPlanKey key = {m, n, k, transA, transB, lda, ldb, ldd, batch, batch > 1 ? strideA : 0,
                               batch > 1 ? strideB : 0, batch > 1 ? strideD : 0, ab_type, d_type, epilogue,
                               align_first, align_second, align_c, align_d,
                               // the epilogue pointers' alignments too, in case the heuristic looks at them
                               bias != NULL ? matmul_alignment(bias, 0, 0) : 0, aux != NULL ? matmul_alignment(aux, n * d_size, 0) : 0};
    auto found = matmul_plan_cache_enabled ? matmul_plans.find(key) : matmul_plans.end();
    MatmulPlan plan;
    if (found != matmul_plans.end()) {
        plan = found->second;
        matmul_plan_hits++;
    } else {
        matmul_plan_misses++;
        cublasOperation_t op_first = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasOperation_t op_second = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasCheck(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
        cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
        cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
        // the epilogue pointers are set before the heuristic runs, as they always were (it may look at them)
        if (bias != NULL) {
            cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
        }
        if (aux != NULL) {
            int64_t aux_ld = n;  // aux has D's row-major (m,n) shape: column-major rows n
            cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
            cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
        }

        // column-major layouts (rows, cols, ld) of the stored matrices
        if (transB) cublasCheck(cublasLtMatrixLayoutCreate(&plan.layout_first, ab_type, k, n, ldb));   // B stored (n,k)
        else        cublasCheck(cublasLtMatrixLayoutCreate(&plan.layout_first, ab_type, n, k, ldb));   // B stored (k,n)
        if (transA) cublasCheck(cublasLtMatrixLayoutCreate(&plan.layout_second, ab_type, m, k, lda));  // A stored (k,m)
        else        cublasCheck(cublasLtMatrixLayoutCreate(&plan.layout_second, ab_type, k, m, lda));  // A stored (m,k)
        cublasCheck(cublasLtMatrixLayoutCreate(&plan.layout_d, d_type, n, m, ldd));                    // D stored (m,n)
        if (batch > 1) {
            int32_t count = batch;
            cublasLtMatrixLayout_t layouts[3] = {plan.layout_first, plan.layout_second, plan.layout_d};
            long long strides[3] = {strideB, strideA, strideD};
            for (int i = 0; i < 3; i++) {
                int64_t stride = strides[i];
                cublasCheck(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
                cublasCheck(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
            }
        }

        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t max_ws = cublaslt_workspace_size;
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof(max_ws)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first, sizeof(align_first)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second, sizeof(align_second)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));

        cublasLtMatmulHeuristicResult_t heuristic;
        int returned = 0;
        cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(cublaslt_handle, plan.desc, plan.layout_first, plan.layout_second,
                                                               plan.layout_d, plan.layout_d, pref, 1, &heuristic, &returned);
        cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
        if (status != CUBLAS_STATUS_SUCCESS || returned == 0)
            matmul_fail("cuBLASLt found no algorithm (heuristic status %d, %d results; alignments %u/%u/%u bytes)",
                        (int)status, returned, align_first, align_second, align_d);
        plan.algo = heuristic.algo;
        if (matmul_plan_cache_enabled) {
            if (matmul_plans.size() >= matmul_plan_cache_max) matmul_plan_cache_clear();
            matmul_plans.emplace(key, plan);
        }
    }
    if (found != matmul_plans.end()) {  // a cached plan: only the pointers of this call change
        if (bias != NULL) {
            cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
        }
        if (aux != NULL) {
            cublasCheck(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
        }
    }

    // with accumulate, D = alpha·op(A)·op(B) + 1·C (+ bias); C has D's layout
    const float beta = accumulate ? 1.0f : 0.0f;
    cublasCheck(cublasLtMatmul(cublaslt_handle, plan.desc, &alpha, b, plan.layout_first, a, plan.layout_second, &beta,
                               c, plan.layout_d, d, plan.layout_d, &plan.algo,
                               cublaslt_workspace, cublaslt_workspace_size, stream));
    if (!matmul_plan_cache_enabled) matmul_plan_destroy(plan);
#endif  // HOST_EMULATION
}
#undef matmul_fail

// ----------------------------------------------------------------------------
// public launchers

// D (m,n) = epilogue(op(A) (m,k) · op(B) (k,n) + bias) [+ D if accumulate], all row-major, packed.
//   transA: A is stored (k,m) and used transposed; transB: B is stored (n,k) (nn.Linear weight).
//   ab_type/d_type: CUDA_R_16BF/CUDA_R_16BF, CUDA_R_16BF/CUDA_R_32F or CUDA_R_32F/CUDA_R_32F.
//   bias (n), of type d_type: non-NULL exactly for the *_BIAS epilogues; 16-byte aligned (checked).
//   epilogue: CUBLASLT_EPILOGUE_DEFAULT, BIAS, RELU(_BIAS), GELU(_BIAS), GELU_AUX(_BIAS), DGELU (bf16).
//   aux (m,n), of type d_type: for GELU_AUX(_BIAS), receives the pre-GELU values; for DGELU, holds
//   them, and D = gelu'(aux) ⊙ op(A)·op(B); needs n % 8 == 0.
//   accumulate: D += result (beta = 1); only with DEFAULT or BIAS (D = D + A·B + bias).
inline void matmul_cublaslt(void* d, const void* a, const void* b, const void* bias, int m, int n, int k,
                            bool transA, bool transB, cudaDataType_t ab_type, cudaDataType_t d_type,
                            bool accumulate, cublasLtEpilogue_t epilogue, void* aux, cudaStream_t stream) {
    matmul_cublaslt_core(d, NULL, a, b, bias, aux, m, n, k, transA, transB, 0, 0, 0, 1, 0, 0, 0,
                         ab_type, d_type, 1.0f, accumulate, epilogue, stream);
}

// Strided batched, no epilogue: for i in [0,batch)
//   D_i (m,n) = alpha · op(A_i) · op(B_i) [+ D_i if accumulate]
// with A_i = a + i·strideA (elements) and row strides lda/ldb/ldd (0: packed). Used by attention,
// whose per-head outputs are strided views into (B,T,C).
inline void matmul_cublaslt_batched(void* d, const void* a, const void* b, int m, int n, int k,
                                    bool transA, bool transB, int lda, int ldb, int ldd,
                                    int batch, long long strideA, long long strideB, long long strideD,
                                    cudaDataType_t ab_type, cudaDataType_t d_type, float alpha,
                                    bool accumulate, cudaStream_t stream) {
    matmul_cublaslt_core(d, NULL, a, b, NULL, NULL, m, n, k, transA, transB, lda, ldb, ldd, batch, strideA, strideB,
                         strideD, ab_type, d_type, alpha, accumulate, CUBLASLT_EPILOGUE_DEFAULT, stream);
}

// In bf16, matmul_forward fuses GELU into the matmul (cuBLASLt's GELU_AUX_BIAS epilogue). In fp32
// it never does: it runs gelu_forward (tanhf) so fp32 mode stays at PyTorch fidelity whatever
// approximation cuBLASLt's epilogue uses (dev/cuda/matmul.cu measures the difference).
inline bool matmul_fuse_gelu_bf16 = true;

// nn.Linear: out (N,OC) = inp (N,C) · weightᵀ + bias, weight (OC,C), bias (OC) or NULL.
// With pre_gelu (N,OC) given: pre_gelu = inp · weightᵀ + bias and out = gelu(pre_gelu).
template <typename floatX>
void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, const floatX* bias,
                    int N, int C, int OC, cudaStream_t stream, floatX* pre_gelu = NULL) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    if (pre_gelu == NULL) {
        matmul_cublaslt(out, inp, weight, bias, N, OC, C, false, true, t, t, false,
                        bias != NULL ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
    } else if (std::is_same<floatX, bf16>::value && matmul_fuse_gelu_bf16 && OC % 8 == 0) {
        matmul_cublaslt(out, inp, weight, bias, N, OC, C, false, true, t, t, false,
                        bias != NULL ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, pre_gelu, stream);
    } else {
        matmul_cublaslt(pre_gelu, inp, weight, bias, N, OC, C, false, true, t, t, false,
                        bias != NULL ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
        gelu_forward(out, pre_gelu, (size_t)N * OC, stream);
    }
}

// nn.Linear without bias, fp32 out: out (N,OC) = inp (N,C) · weightᵀ, inputs floatX. The LM head:
// logits stay fp32 in both precisions, as bf16's rounding of them biases the KL upwards (issue 16).
template <typename floatX>
void matmul_forward_fp32_out(float* out, const floatX* inp, const floatX* weight, int N, int C, int OC, cudaStream_t stream) {
    matmul_cublaslt(out, inp, weight, NULL, N, OC, C, false, true, cuda_dtype<floatX>(), CUDA_R_32F, false,
                    CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
}

// Activation gradient of nn.Linear: dinp (N,C) (+)= dout (N,OC) · weight (OC,C).
template <typename floatX>
void matmul_backward_dinp(floatX* dinp, const floatX* dout, const floatX* weight, int N, int C, int OC,
                          bool accumulate, cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(dinp, dout, weight, NULL, N, C, OC, false, false, t, t, accumulate,
                    CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
}

// The GELU's backward fused into the activation gradient of the matmul after it (fc_proj):
//   dinp (N,C) = gelu'(pre_gelu (N,C)) ⊙ (dout (N,OC) · weight (OC,C)),
// the CPU trainer's matmul_backward + gelu_backward pair. In bf16 with C % 8 == 0, cuBLASLt's DGELU
// epilogue applies gelu' to the unrounded matmul output, so dinp is rounded once instead of twice
// and the (N,C) gradient is not read and written again; otherwise (fp32: the reference precision)
// the two run separately.
template <typename floatX>
void matmul_backward_dinp_gelu(floatX* dinp, const floatX* dout, const floatX* weight, const floatX* pre_gelu, int N, int C, int OC,
                               cudaStream_t stream) {
    if (std::is_same<floatX, bf16>::value && C % 8 == 0) {
        matmul_cublaslt(dinp, dout, weight, NULL, N, C, OC, false, false, CUDA_R_16BF, CUDA_R_16BF, false, CUBLASLT_EPILOGUE_DGELU,
                        (void*)pre_gelu, stream);
    } else {
        matmul_backward_dinp(dinp, dout, weight, N, C, OC, false, stream);
        gelu_backward_inplace(dinp, pre_gelu, (size_t)N * C, stream);
    }
}

// out (N,OC) = residual (N,OC) + inp (N,C) · weight (OC,C)ᵀ + bias (OC): the residual add rides on
// the matmul's C operand (residual may be out itself), so the residual stream is read once and no
// copy of it is made. Replaces the CPU trainer's matmul_forward + residual_forward pair.
template <typename floatX>
void matmul_forward_residual(floatX* out, const floatX* residual, const floatX* inp, const floatX* weight, const floatX* bias, int N,
                             int C, int OC, cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt_core(out, residual, inp, weight, bias, NULL, N, OC, C, false, true, 0, 0, 0, 1, 0, 0, 0, t, t, 1.0f, true,
                         CUBLASLT_EPILOGUE_BIAS, stream);
}

// out (N,OC) = gelu(inp (N,C) · weight (OC,C)ᵀ + bias), pre_gelu (N,OC) keeps gelu's input for the
// backward. Replaces the CPU trainer's matmul_forward + gelu_forward pair (one cuBLASLt epilogue in bf16).
template <typename floatX>
void matmul_forward_gelu(floatX* out, floatX* pre_gelu, const floatX* inp, const floatX* weight, const floatX* bias, int N, int C,
                         int OC, cudaStream_t stream) {
    matmul_forward(out, inp, weight, bias, N, C, OC, stream, pre_gelu);
}
