/*
test/mock_cuda.h: a CPU stand-in for every launcher train_gpt2_sae.cu takes from the llmc .cuh
files, on test/mock_cuda_runtime.h's CUDA runtime, so the GPU trainer's host code (buffers, layer
indices, stat slots, scales, evals, saves, resume, sweeps, the feature dump) runs fast on a machine
without a GPU:
    make train_gpt2_sae_mocked     (g++ -DMOCK_CUDA -x c++ train_gpt2_sae.cu: the trainer includes this
                                    file instead of the .cuh files)
    make test_gpu_mocked && ./test_gpu_mocked
(train_gpt2_sae_emulated runs the .cuh files' own kernels and launchers instead, far slower:
test/cuda_host_emulation.h.)
Each launcher computes what its kernel computes from the same arguments: fp32 arithmetic, floatX
storage (rounded to bf16 wherever the GPU stores bf16), the same accumulate flags, in-place cases
and padding, and it leaves untouched what the kernel leaves untouched. The math follows
train_gpt2_sae_cpu.cpp and llmc/feature_dump.h (whose helpers the dump calls); sums run in one
fixed order, not cuBLAS's, so results are deterministic and agree with a GPU's to fp32 rounding,
not bit for bit.
What a device would refuse is refused here too, naming the launcher and the argument: a kernel
argument that is not device memory or runs past its cudaMalloc block, a cuBLASLt bias that is not
16-byte aligned, a matmul before matmul_init (and, in the runtime, bad copies and events).
Left out: the kernels themselves (test_gpt2_sae checks those on a device), timing, concurrency
(everything runs in call order, as the trainer's one stream does), cuBLASLt's GELU epilogue's own
approximation, and the tensor-core flash kernels' rounding of P and dS to bf16 (flash attention
runs as the simple kernels do, in any floatX).
*/
#pragma once
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <map>
#include <type_traits>
#include <vector>
#define MOCK_CUDA_NO_CAPTURE              // the launchers below run at once: no stream capture here
#include "mock_cuda_runtime.h"     // the CUDA runtime: device memory, copies, events, the device
#include "../llmc/feature_dump.h"  // FeatureDump and the helpers the dump kernels share with the CPU

// ----------------------------------------------------------------------------
// llmc/cuda_common.cuh: the error check, the NVTX and event scopes

// llmc/cuda_common.cuh cudaCheck: file:line and the error, then exit 1
inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) (cuda_check(err, __FILE__, __LINE__))

// llmc/cuda_common.cuh NvtxRange: nothing to mark without Nsight
struct NvtxRange {
    explicit NvtxRange(const char*) {}
    ~NvtxRange() {}
};

// llmc/cuda_common.cuh EventRange: start recorded now, end when the scope closes
struct EventRange {
    cudaEvent_t end;
    cudaStream_t stream;
    EventRange(cudaEvent_t start, cudaEvent_t end_, cudaStream_t s) : end(end_), stream(s) { cudaCheck(cudaEventRecord(start, stream)); }
    ~EventRange() { cudaCheck(cudaEventRecord(end, stream)); }
    EventRange(const EventRange&) = delete;
    EventRange& operator=(const EventRange&) = delete;
};

// ----------------------------------------------------------------------------
// storage types (llmc/cuda_common.cuh): bf16, to_float / from_float, cast_copy, deterministic_sum

// fp32 -> bf16 bits, round to nearest even (__float2bfloat16_rn); a NaN stays a NaN
inline uint16_t mock_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// __nv_bfloat16: the top 16 bits of an fp32
struct bf16 {
    uint16_t bits;
    bf16() = default;
    bf16(float f) : bits(mock_bf16_bits(f)) {}
    explicit operator float() const {
        uint32_t u = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
};
static_assert(sizeof(bf16) == 2, "bf16 is 2 bytes on the device");

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return (float)x; }
template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16 from_float<bf16>(float x) { return bf16(x); }

template <typename T> inline cudaDataType_t cuda_dtype();
template <> inline cudaDataType_t cuda_dtype<float>() { return CUDA_R_32F; }
template <> inline cudaDataType_t cuda_dtype<bf16>() { return CUDA_R_16BF; }

// llmc/cuda_common.cuh cast_copy: out (n) = in (n) converted (round to nearest even into bf16)
template <typename Tout, typename Tin>
void cast_copy(Tout* out, const Tin* in, size_t n, cudaStream_t) {
    if (n == 0) return;
    MOCK_DEV(out, n); MOCK_DEV(in, n);
    for (size_t i = 0; i < n; i++) out[i] = from_float<Tout>(to_float(in[i]));
}

// llmc/cuda_common.cuh deterministic_sum: out[0] = (accumulate ? out[0] : 0) + Σ in, summed in double
inline void deterministic_sum(float* out, const float* in, int n, bool accumulate, cudaStream_t) {
    MOCK_DEV(out, 1); MOCK_DEV(in, n);
    double acc = 0.0;
    for (int i = 0; i < n; i++) acc += (double)in[i];
    out[0] = (float)((accumulate ? (double)out[0] : 0.0) + acc);
}

// ----------------------------------------------------------------------------
// llmc/encoder.cuh, llmc/layernorm.cuh, llmc/gelu.cuh

// encoder_forward: out (B,T,C) = wte[inp] + wpe[t]; inp (B,T), wte (V,C), wpe (maxT,C)
template <typename floatX>
void encoder_forward(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T, int C, cudaStream_t) {
    const size_t N = (size_t)B * T;
    MOCK_DEV(out, N * C); MOCK_DEV(inp, N); MOCK_DEV(wpe, (size_t)T * C);
    for (size_t bt = 0; bt < N; bt++) {
        MOCK_DEV(wte + (size_t)inp[bt] * C, C);
        for (int c = 0; c < C; c++)
            out[bt * C + c] = from_float<floatX>(to_float(wte[(size_t)inp[bt] * C + c]) + to_float(wpe[(bt % T) * C + c]));
    }
}

#define LAYERNORM_EPS 1e-5f

// the mean and rstd of one row (two passes, as layernorm_row_stats)
template <typename floatX>
void mock_row_stats(const floatX* x, int C, float* mean, float* rstd) {
    float sum = 0.0f;
    for (int c = 0; c < C; c++) sum += to_float(x[c]);
    const float m = sum / C;
    float var = 0.0f;
    for (int c = 0; c < C; c++) { float d = to_float(x[c]) - m; var += d * d; }
    *mean = m;
    *rstd = 1.0f / sqrtf(var / C + LAYERNORM_EPS);
}

// layernorm_forward: out (N,C) = (x - mean)·rstd·weight + bias; mean, rstd (N) or NULL; out may be inp
template <typename floatX>
void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight, const floatX* bias, int N, int C,
                       cudaStream_t) {
    MOCK_DEV(out, (size_t)N * C); MOCK_DEV(inp, (size_t)N * C); MOCK_DEV(weight, C); MOCK_DEV(bias, C);
    if (mean) MOCK_DEV(mean, N);
    if (rstd) MOCK_DEV(rstd, N);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const floatX* x = inp + (size_t)n * C;
        float m, s;
        mock_row_stats(x, C, &m, &s);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = from_float<floatX>((to_float(x[c]) - m) * s * to_float(weight[c]) + to_float(bias[c]));
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

// layernorm_backward_dinp: dinp (N,C) = dresidual + rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)), dxhat = dout·weight;
// dresidual NULL: none, or any (N,C) buffer, dinp included; mean and rstd both NULL: recomputed from inp; dinp may be dout
template <typename floatX>
void layernorm_backward_dinp(floatX* dinp, const floatX* dresidual, const floatX* dout, const floatX* inp, const floatX* weight,
                             const float* mean, const float* rstd, int N, int C, cudaStream_t) {
    MOCK_DEV(dinp, (size_t)N * C); MOCK_DEV(dout, (size_t)N * C); MOCK_DEV(inp, (size_t)N * C); MOCK_DEV(weight, C);
    if (dresidual) MOCK_DEV(dresidual, (size_t)N * C);
    if (mean) MOCK_DEV(mean, N);
    if (rstd) MOCK_DEV(rstd, N);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const floatX* x = inp + (size_t)n * C;
        const floatX* dy = dout + (size_t)n * C;
        floatX* dx = dinp + (size_t)n * C;
        float m, s;
        if (mean && rstd) { m = mean[n]; s = rstd[n]; }
        else mock_row_stats(x, C, &m, &s);
        float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
        for (int c = 0; c < C; c++) {
            float dxhat = to_float(dy[c]) * to_float(weight[c]);
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * (to_float(x[c]) - m) * s;
        }
        const float mean_dxhat = sum_dxhat / C, mean_dxhat_xhat = sum_dxhat_xhat / C;
        for (int c = 0; c < C; c++) {
            float xhat = (to_float(x[c]) - m) * s;
            float g = s * (to_float(dy[c]) * to_float(weight[c]) - mean_dxhat - xhat * mean_dxhat_xhat);
            if (dresidual) g += to_float(dresidual[(size_t)n * C + c]);
            dx[c] = from_float<floatX>(g);
        }
    }
}

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
#define GELU_CUBIC_COEF 0.044715f

inline float gelu_tanh(float x) { return 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + GELU_CUBIC_COEF * x * x * x))); }
inline float gelu_tanh_grad(float x) {
    float x2 = x * x;
    float th = tanhf(GELU_SCALING_FACTOR * (x + GELU_CUBIC_COEF * x2 * x));
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC_COEF * x2);
}

// gelu_backward_inplace: d_in_out (n) *= gelu'(inp (n))
template <typename floatX>
void gelu_backward_inplace(floatX* d_in_out, const floatX* inp, size_t n, cudaStream_t) {
    MOCK_DEV(d_in_out, n); MOCK_DEV(inp, n);
    for (size_t i = 0; i < n; i++) d_in_out[i] = from_float<floatX>(to_float(d_in_out[i]) * gelu_tanh_grad(to_float(inp[i])));
}

// ----------------------------------------------------------------------------
// llmc/matmul.cuh

inline bool mock_matmul_ready = false;  // matmul_init has made the cuBLASLt handle
inline bool matmul_fuse_gelu_bf16 = true;

inline void matmul_init() { mock_matmul_ready = true; }
inline void matmul_destroy() { mock_matmul_ready = false; }

// The product of matmul_cublaslt before its epilogue, fp32, row-major: op(A) (m,k) · op(B) (k,n),
// A stored (k,m) when transA, B stored (n,k) when transB; with the checks matmul_cublaslt_core
// makes of what a caller passes. The launchers below apply their epilogues and round. The operands
// are first converted to fp32 rows of k (op(A)'s rows, op(B)'s columns), so each output is one
// contiguous dot product.
template <typename TA, typename TB>
std::vector<float> mock_matmul(const char* fn, const TA* A, const TB* B, const void* bias, int m, int n, int k, bool transA, bool transB) {
    MOCK_REQUIRE(mock_matmul_ready, "matmul_init() was not called (from %s)", fn);
    MOCK_REQUIRE(k > 0, "k == 0 is not supported (from %s)", fn);
    MOCK_REQUIRE(bias == nullptr || ((uintptr_t)bias & 15) == 0, "bias pointer %p is not 16-byte aligned (from %s)", bias, fn);
    mock_device_arg(fn, "A", A, (size_t)m * k);
    mock_device_arg(fn, "B", B, (size_t)k * n);
    std::vector<float> a((size_t)m * k), b((size_t)n * k), D((size_t)m * n);
    for (size_t i = 0; i < (size_t)m; i++)
        for (size_t p = 0; p < (size_t)k; p++) a[i * k + p] = to_float(transA ? A[p * m + i] : A[i * k + p]);
    for (size_t j = 0; j < (size_t)n; j++)
        for (size_t p = 0; p < (size_t)k; p++) b[j * k + p] = to_float(transB ? B[j * k + p] : B[p * n + j]);
    #pragma omp parallel for
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const float *x = a.data() + (size_t)i * k, *y = b.data() + (size_t)j * k;
            float acc = 0.0f;
            #pragma omp simd reduction(+ : acc)
            for (int p = 0; p < k; p++) acc += x[p] * y[p];
            D[(size_t)i * n + j] = acc;
        }
    return D;
}

// matmul_forward: out (N,OC) = inp (N,C) · weightᵀ + bias (OC, or NULL); with pre_gelu (N,OC):
// pre_gelu = that, out = gelu(it) (bf16 with OC % 8 == 0: the epilogue's gelu of the unrounded sum)
template <typename floatX>
void matmul_forward(floatX* out, const floatX* inp, const floatX* weight, const floatX* bias, int N, int C, int OC, cudaStream_t,
                    floatX* pre_gelu = NULL) {
    MOCK_DEV(out, (size_t)N * OC);
    if (bias) MOCK_DEV(bias, OC);
    if (pre_gelu) MOCK_DEV(pre_gelu, (size_t)N * OC);
    std::vector<float> y = mock_matmul(__func__, inp, weight, bias, N, OC, C, false, true);
    const bool fused = std::is_same<floatX, bf16>::value && matmul_fuse_gelu_bf16 && OC % 8 == 0;
    for (size_t i = 0; i < y.size(); i++) {
        const float v = y[i] + (bias ? to_float(bias[i % OC]) : 0.0f);
        if (!pre_gelu) { out[i] = from_float<floatX>(v); continue; }
        pre_gelu[i] = from_float<floatX>(v);
        out[i] = from_float<floatX>(gelu_tanh(fused ? v : to_float(pre_gelu[i])));
    }
}

// matmul_forward_fp32_out: out (N,OC) fp32 = inp (N,C) · weightᵀ, floatX inputs (the LM head)
template <typename floatX>
void matmul_forward_fp32_out(float* out, const floatX* inp, const floatX* weight, int N, int C, int OC, cudaStream_t) {
    MOCK_DEV(out, (size_t)N * OC);
    std::vector<float> y = mock_matmul(__func__, inp, weight, nullptr, N, OC, C, false, true);
    memcpy(out, y.data(), y.size() * sizeof(float));
}

// matmul_backward_dinp: dinp (N,C) (+)= dout (N,OC) · weight (OC,C)
template <typename floatX>
void matmul_backward_dinp(floatX* dinp, const floatX* dout, const floatX* weight, int N, int C, int OC, bool accumulate, cudaStream_t) {
    MOCK_DEV(dinp, (size_t)N * C);
    std::vector<float> y = mock_matmul(__func__, dout, weight, nullptr, N, C, OC, false, false);
    for (size_t i = 0; i < y.size(); i++) dinp[i] = from_float<floatX>(y[i] + (accumulate ? to_float(dinp[i]) : 0.0f));
}

// matmul_backward_dinp_gelu: dinp (N,C) = gelu'(pre_gelu) ⊙ (dout (N,OC) · weight (OC,C)); bf16 with C % 8 == 0
// (the DGELU epilogue) rounds once, otherwise the matmul's output is rounded before the product
template <typename floatX>
void matmul_backward_dinp_gelu(floatX* dinp, const floatX* dout, const floatX* weight, const floatX* pre_gelu, int N, int C, int OC,
                               cudaStream_t stream) {
    if (std::is_same<floatX, bf16>::value && C % 8 == 0) {
        MOCK_DEV(dinp, (size_t)N * C); MOCK_DEV(pre_gelu, (size_t)N * C);
        std::vector<float> y = mock_matmul(__func__, dout, weight, nullptr, N, C, OC, false, false);
        for (size_t i = 0; i < y.size(); i++) dinp[i] = from_float<floatX>(y[i] * gelu_tanh_grad(to_float(pre_gelu[i])));
    } else {
        matmul_backward_dinp(dinp, dout, weight, N, C, OC, false, stream);
        gelu_backward_inplace(dinp, pre_gelu, (size_t)N * C, stream);
    }
}

// matmul_forward_residual: out (N,OC) = residual (N,OC) + inp (N,C) · weightᵀ + bias (OC); residual may be out
template <typename floatX>
void matmul_forward_residual(floatX* out, const floatX* residual, const floatX* inp, const floatX* weight, const floatX* bias, int N, int C,
                             int OC, cudaStream_t) {
    MOCK_REQUIRE(bias != nullptr, "the BIAS epilogue needs a bias");
    MOCK_DEV(out, (size_t)N * OC); MOCK_DEV(residual, (size_t)N * OC); MOCK_DEV(bias, OC);
    std::vector<float> y = mock_matmul(__func__, inp, weight, bias, N, OC, C, false, true);
    for (size_t i = 0; i < y.size(); i++) out[i] = from_float<floatX>(y[i] + to_float(residual[i]) + to_float(bias[i % OC]));
}

// matmul_forward_gelu: out (N,OC) = gelu(inp (N,C) · weightᵀ + bias), pre_gelu (N,OC) keeps gelu's input
template <typename floatX>
void matmul_forward_gelu(floatX* out, floatX* pre_gelu, const floatX* inp, const floatX* weight, const floatX* bias, int N, int C, int OC,
                         cudaStream_t stream) {
    MOCK_REQUIRE(pre_gelu != nullptr, "pre_gelu is needed");
    matmul_forward(out, inp, weight, bias, N, C, OC, stream, pre_gelu);
}

// ----------------------------------------------------------------------------
// llmc/attention.cuh: materialised, and flash (as its simple kernels)

// head h's row t of part p (0 q, 1 k, 2 v) in the (parts,B,NH,T,hs) layout of qkvr / dqkvr
inline size_t mock_head(int p, int b, int h, int t, int B, int NH, int T, int hs) { return ((((size_t)p * B + b) * NH + h) * T + t) * hs; }

// attention_forward: out (B,T,C); qkvr (3,B,NH,T,hs) the split heads, att (B,NH,T,T) the
// probabilities (0 above the diagonal), scratch (B,T,C) receives y (B,NH,T,hs); inp (B,T,3C) not
// modified. As the kernels: preatt = q·kᵀ rounded into att, the softmax of scale·preatt in place,
// y = att·v rounded, then merged into out.
template <typename floatX>
void attention_forward(floatX* out, floatX* qkvr, floatX* att, floatX* scratch, const floatX* inp, int B, int T, int C, int NH, cudaStream_t) {
    MOCK_REQUIRE(C % NH == 0, "C %d not divisible by NH %d", C, NH);
    MOCK_REQUIRE(mock_matmul_ready, "matmul_init() was not called");
    const size_t N = (size_t)B * T;
    const int hs = C / NH;
    MOCK_DEV(out, N * C); MOCK_DEV(qkvr, 3 * N * C); MOCK_DEV(att, (size_t)B * NH * T * T); MOCK_DEV(scratch, N * C); MOCK_DEV(inp, N * 3 * C);
    for (int p = 0; p < 3; p++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < hs; d++) qkvr[mock_head(p, b, h, t, B, NH, T, hs) + d] = inp[((size_t)b * T + t) * 3 * C + p * C + h * hs + d];
    const float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const floatX *q = qkvr + mock_head(0, b, h, 0, B, NH, T, hs), *k = qkvr + mock_head(1, b, h, 0, B, NH, T, hs),
                         *v = qkvr + mock_head(2, b, h, 0, B, NH, T, hs);
            floatX* a = att + ((size_t)b * NH + h) * T * T;
            floatX* y = scratch + mock_head(0, b, h, 0, B, NH, T, hs);
            for (int t = 0; t < T; t++)
                for (int s = 0; s < T; s++) {
                    float acc = 0.0f;
                    for (int d = 0; d < hs; d++) acc += to_float(q[(size_t)t * hs + d]) * to_float(k[(size_t)s * hs + d]);
                    a[(size_t)t * T + s] = from_float<floatX>(acc);
                }
            for (int t = 0; t < T; t++) {
                floatX* x = a + (size_t)t * T;
                float maxv = -INFINITY, sum = 0.0f;
                for (int s = 0; s <= t; s++) maxv = fmaxf(maxv, to_float(x[s]));
                for (int s = 0; s <= t; s++) sum += expf(scale * (to_float(x[s]) - maxv));
                const float inv_sum = 1.0f / sum;
                for (int s = 0; s < T; s++) x[s] = from_float<floatX>(s <= t ? expf(scale * (to_float(x[s]) - maxv)) * inv_sum : 0.0f);
            }
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    float acc = 0.0f;
                    for (int s = 0; s < T; s++) acc += to_float(a[(size_t)t * T + s]) * to_float(v[(size_t)s * hs + d]);
                    y[(size_t)t * hs + d] = from_float<floatX>(acc);
                }
        }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) out[((size_t)b * T + t) * C + h * hs + d] = scratch[mock_head(0, b, h, t, B, NH, T, hs) + d];
}

// attention_backward: dinp (B,T,3C) written; dqkvr (3,B,NH,T,hs), datt (B,NH,T,T) and scratch
// (B,T,C) scratch; dout (B,T,C); qkvr and att as the forward left them. As the kernels: dy = dout
// split into scratch, datt = dy·vᵀ and dv = attᵀ·dy rounded, the softmax backward in place in datt,
// dq = datt·k and dk = dattᵀ·q rounded, then dq, dk, dv merged into dinp.
template <typename floatX>
void attention_backward(floatX* dinp, floatX* dqkvr, floatX* datt, floatX* scratch, const floatX* dout, const floatX* qkvr, const floatX* att,
                        int B, int T, int C, int NH, cudaStream_t) {
    MOCK_REQUIRE(C % NH == 0, "C %d not divisible by NH %d", C, NH);
    MOCK_REQUIRE(mock_matmul_ready, "matmul_init() was not called");
    const size_t N = (size_t)B * T;
    const int hs = C / NH;
    MOCK_DEV(dinp, N * 3 * C); MOCK_DEV(dqkvr, 3 * N * C); MOCK_DEV(datt, (size_t)B * NH * T * T); MOCK_DEV(scratch, N * C);
    MOCK_DEV(dout, N * C); MOCK_DEV(qkvr, 3 * N * C); MOCK_DEV(att, (size_t)B * NH * T * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) scratch[mock_head(0, b, h, t, B, NH, T, hs) + d] = dout[((size_t)b * T + t) * C + h * hs + d];
    const float scale = 1.0f / sqrtf((float)hs);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const floatX *q = qkvr + mock_head(0, b, h, 0, B, NH, T, hs), *k = qkvr + mock_head(1, b, h, 0, B, NH, T, hs),
                         *v = qkvr + mock_head(2, b, h, 0, B, NH, T, hs), *dy = scratch + mock_head(0, b, h, 0, B, NH, T, hs);
            const floatX* a = att + ((size_t)b * NH + h) * T * T;
            floatX* da = datt + ((size_t)b * NH + h) * T * T;
            floatX *dq = dqkvr + mock_head(0, b, h, 0, B, NH, T, hs), *dk = dqkvr + mock_head(1, b, h, 0, B, NH, T, hs),
                   *dv = dqkvr + mock_head(2, b, h, 0, B, NH, T, hs);
            for (int t = 0; t < T; t++)
                for (int s = 0; s < T; s++) {
                    float acc = 0.0f;
                    for (int d = 0; d < hs; d++) acc += to_float(dy[(size_t)t * hs + d]) * to_float(v[(size_t)s * hs + d]);
                    da[(size_t)t * T + s] = from_float<floatX>(acc);
                }
            for (int s = 0; s < T; s++)
                for (int d = 0; d < hs; d++) {
                    float acc = 0.0f;
                    for (int t = 0; t < T; t++) acc += to_float(a[(size_t)t * T + s]) * to_float(dy[(size_t)t * hs + d]);
                    dv[(size_t)s * hs + d] = from_float<floatX>(acc);
                }
            for (int t = 0; t < T; t++) {
                const floatX* y = a + (size_t)t * T;
                floatX* g = da + (size_t)t * T;
                float dot = 0.0f;
                for (int s = 0; s <= t; s++) dot += to_float(y[s]) * to_float(g[s]);
                for (int s = 0; s < T; s++) g[s] = from_float<floatX>(s <= t ? scale * to_float(y[s]) * (to_float(g[s]) - dot) : 0.0f);
            }
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    float acc_q = 0.0f, acc_k = 0.0f;
                    for (int s = 0; s < T; s++) {
                        acc_q += to_float(da[(size_t)t * T + s]) * to_float(k[(size_t)s * hs + d]);
                        acc_k += to_float(da[(size_t)s * T + t]) * to_float(q[(size_t)s * hs + d]);
                    }
                    dq[(size_t)t * hs + d] = from_float<floatX>(acc_q);
                    dk[(size_t)t * hs + d] = from_float<floatX>(acc_k);
                }
        }
    for (int p = 0; p < 3; p++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                    for (int d = 0; d < hs; d++) dinp[((size_t)b * T + t) * 3 * C + p * C + h * hs + d] = dqkvr[mock_head(p, b, h, t, B, NH, T, hs) + d];
}

constexpr int FLASH_HS = 64;  // the one head size the flash kernels serve

inline bool flash_attention_supported(int C, int NH) { return NH > 0 && C % NH == 0 && C / NH == FLASH_HS; }

// what flash_check_args refuses: another head size, buffers read in 16-byte packs that are not aligned
inline void mock_flash_check(const char* fn, int C, int NH, const void* a, const void* b) {
    MOCK_REQUIRE(flash_attention_supported(C, NH), "head size C/NH = %d/%d; the flash kernels serve head size %d only (from %s)", C, NH, FLASH_HS, fn);
    MOCK_REQUIRE(((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0, "buffers read in 16-byte packs must be 16-byte aligned (from %s)", fn);
}

// flash_attention_forward: out (B,T,C) = softmax(scale·q·kᵀ) v over the keys s <= t, lse (B,NH,T)
// fp32 = the log-sum-exp of each row's scaled scores; qkv (B,T,3C) read in place
template <typename floatX>
void flash_attention_forward(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int NH, cudaStream_t) {
    mock_flash_check(__func__, C, NH, qkv, qkv);
    const size_t N = (size_t)B * T;
    MOCK_DEV(out, N * C); MOCK_DEV(lse, (size_t)B * NH * T); MOCK_DEV(qkv, N * 3 * C);
    const float scale = 1.0f / sqrtf((float)FLASH_HS);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            std::vector<float> score(T);
            for (int t = 0; t < T; t++) {
                const floatX* q = qkv + ((size_t)b * T + t) * 3 * C + h * FLASH_HS;
                float m = -INFINITY, l = 0.0f;
                for (int s = 0; s <= t; s++) {
                    const floatX* k = qkv + ((size_t)b * T + s) * 3 * C + C + h * FLASH_HS;
                    float acc = 0.0f;
                    for (int d = 0; d < FLASH_HS; d++) acc += to_float(q[d]) * to_float(k[d]);
                    score[s] = acc * scale;
                    m = fmaxf(m, score[s]);
                }
                float o[FLASH_HS] = {0.0f};
                for (int s = 0; s <= t; s++) {
                    const float p = expf(score[s] - m);
                    const floatX* v = qkv + ((size_t)b * T + s) * 3 * C + 2 * C + h * FLASH_HS;
                    l += p;
                    for (int d = 0; d < FLASH_HS; d++) o[d] += p * to_float(v[d]);
                }
                for (int d = 0; d < FLASH_HS; d++) out[((size_t)b * T + t) * C + h * FLASH_HS + d] = from_float<floatX>(o[d] * (1.0f / l));
                lse[((size_t)b * NH + h) * T + t] = m + logf(l);
            }
        }
}

// flash_attention_backward: dinp (B,T,3C) written (dq, dk, dv); dsum (B,NH,T) fp32 <- D_t = dy_t·y_t
// (from the rounded out); dout, out (B,T,C), qkv (B,T,3C) and lse as the forward's. With
// p = exp(scale·q_t·k_s − lse_t) and dS = p·(dy_t·v_s − D_t): dq_t = scale Σ_s dS k_s,
// dk_s = scale Σ_t dS q_t, dv_s = Σ_t p dy_t, over s <= t.
template <typename floatX>
void flash_attention_backward(floatX* dinp, float* dsum, const floatX* dout, const floatX* out, const floatX* qkv, const float* lse, int B, int T,
                              int C, int NH, cudaStream_t) {
    mock_flash_check(__func__, C, NH, qkv, dout);
    const size_t N = (size_t)B * T;
    MOCK_DEV(dinp, N * 3 * C); MOCK_DEV(dsum, (size_t)B * NH * T); MOCK_DEV(dout, N * C); MOCK_DEV(out, N * C); MOCK_DEV(qkv, N * 3 * C);
    MOCK_DEV(lse, (size_t)B * NH * T);
    const float scale = 1.0f / sqrtf((float)FLASH_HS);
    auto row = [&](const floatX* base, int b, int t, int ld, int off, int h) { return base + ((size_t)b * T + t) * ld + off + h * FLASH_HS; };
    auto dot = [](const floatX* x, const floatX* y) {
        float acc = 0.0f;
        for (int d = 0; d < FLASH_HS; d++) acc += to_float(x[d]) * to_float(y[d]);
        return acc;
    };
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float* lse_h = lse + ((size_t)b * NH + h) * T;
            float* D = dsum + ((size_t)b * NH + h) * T;
            for (int t = 0; t < T; t++) D[t] = dot(row(dout, b, t, C, 0, h), row(out, b, t, C, 0, h));
            // dS[t][s] for this head, then the three sums
            std::vector<float> P((size_t)T * T, 0.0f), dS((size_t)T * T, 0.0f);
            for (int t = 0; t < T; t++)
                for (int s = 0; s <= t; s++) {
                    const float p = expf(dot(row(qkv, b, t, 3 * C, 0, h), row(qkv, b, s, 3 * C, C, h)) * scale - lse_h[t]);
                    P[(size_t)t * T + s] = p;
                    dS[(size_t)t * T + s] = p * (dot(row(dout, b, t, C, 0, h), row(qkv, b, s, 3 * C, 2 * C, h)) - D[t]);
                }
            for (int t = 0; t < T; t++)
                for (int d = 0; d < FLASH_HS; d++) {
                    float dq = 0.0f, dk = 0.0f, dv = 0.0f;
                    for (int s = 0; s <= t; s++) dq += dS[(size_t)t * T + s] * to_float(row(qkv, b, s, 3 * C, C, h)[d]);
                    for (int u = t; u < T; u++) {  // t as a key row: the queries u >= t
                        dk += dS[(size_t)u * T + t] * to_float(row(qkv, b, u, 3 * C, 0, h)[d]);
                        dv += P[(size_t)u * T + t] * to_float(row(dout, b, u, C, 0, h)[d]);
                    }
                    floatX* o = dinp + ((size_t)b * T + t) * 3 * C + h * FLASH_HS + d;
                    o[0] = from_float<floatX>(dq * scale);
                    o[C] = from_float<floatX>(dk * scale);
                    o[2 * C] = from_float<floatX>(dv);
                }
        }
}

// ----------------------------------------------------------------------------
// llmc/sae.cuh

#define SAE_NORM_EPS 1e-12f

// sae_decoder_normalize: W_dec_norm (D,C) floatX = each row of W_dec (D,C) fp32 / max(||row||, eps); inv_norm (D) = 1 / that
template <typename floatX>
void sae_decoder_normalize(floatX* W_dec_norm, float* inv_norm, const float* W_dec, int D, int C, cudaStream_t) {
    MOCK_DEV(W_dec_norm, (size_t)D * C); MOCK_DEV(inv_norm, D); MOCK_DEV(W_dec, (size_t)D * C);
    for (int r = 0; r < D; r++) {
        const float* w = W_dec + (size_t)r * C;
        float sum_sq = 0.0f;
        for (int i = 0; i < C; i++) sum_sq += w[i] * w[i];
        const float norm = fmaxf(sqrtf(sum_sq), SAE_NORM_EPS);
        for (int i = 0; i < C; i++) W_dec_norm[(size_t)r * C + i] = from_float<floatX>(w[i] / norm);
        inv_norm[r] = 1.0f / norm;
    }
}

// sae_decoder_normalize_backward: dW_dec (D,C) = (dy − [||w|| > eps]·y (y·dy))·inv_norm, y = w·inv_norm,
// dy = dW_dec_norm (D,C), overwritten; dW_dec may be dW_dec_norm
inline void sae_decoder_normalize_backward(float* dW_dec, const float* dW_dec_norm, const float* W_dec, const float* inv_norm, int D, int C,
                                           cudaStream_t) {
    MOCK_DEV(dW_dec, (size_t)D * C); MOCK_DEV(dW_dec_norm, (size_t)D * C); MOCK_DEV(W_dec, (size_t)D * C); MOCK_DEV(inv_norm, D);
    for (int r = 0; r < D; r++) {
        const float* w = W_dec + (size_t)r * C;
        const float* dy = dW_dec_norm + (size_t)r * C;
        float* dw = dW_dec + (size_t)r * C;
        float sum_sq = 0.0f, w_dot_dy = 0.0f;
        for (int i = 0; i < C; i++) { sum_sq += w[i] * w[i]; w_dot_dy += w[i] * dy[i]; }
        const float inv = inv_norm[r];
        const float y_dot_dy = sqrtf(sum_sq) > SAE_NORM_EPS ? w_dot_dy * inv : 0.0f;
        for (int i = 0; i < C; i++) dw[i] = (dy[i] - w[i] * inv * y_dot_dy) * inv;
    }
}

// sae_l1_relu_backward: dpre (N,D) = (dc + l1_scale)·[c > 0]; dpre may be dc
template <typename floatX>
void sae_l1_relu_backward(floatX* dpre, const floatX* dc, const floatX* c, float l1_scale, int N, int D, cudaStream_t) {
    const size_t n = (size_t)N * D;
    MOCK_DEV(dpre, n); MOCK_DEV(dc, n); MOCK_DEV(c, n);
    for (size_t i = 0; i < n; i++) dpre[i] = from_float<floatX>(to_float(c[i]) > 0.0f ? to_float(dc[i]) + l1_scale : 0.0f);
}

// bias_grad_colsum: dbias (OC) fp32 (+)= the column sums of dout (N,OC)
template <typename floatX>
void bias_grad_colsum(float* dbias, const floatX* dout, int N, int OC, bool accumulate, cudaStream_t) {
    MOCK_DEV(dbias, OC); MOCK_DEV(dout, (size_t)N * OC);
    for (int j = 0; j < OC; j++) {
        float sum = 0.0f;
        for (int n = 0; n < N; n++) sum += to_float(dout[(size_t)n * OC + j]);
        dbias[j] = accumulate ? dbias[j] + sum : sum;
    }
}

// sae_sparsity_l0: l1_sum += Σ|c|, l0_sum += count(c > 0) (device scalars; each sum added in
// double); fired (D) set to 1 where a feature fired, never cleared; fire_count (D), if given, += its firings
template <typename floatX>
void sae_sparsity_l0(float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c, int N, int D, cudaStream_t,
                     unsigned long long* fire_count = nullptr) {
    if (N == 0 || D == 0) return;
    MOCK_DEV(l1_sum, 1); MOCK_DEV(l0_sum, 1); MOCK_DEV(fired, D); MOCK_DEV(c, (size_t)N * D);
    if (fire_count) MOCK_DEV(fire_count, D);
    double l1 = 0.0;
    unsigned long long l0 = 0;
    for (int d = 0; d < D; d++) {
        unsigned long long count = 0;
        for (int n = 0; n < N; n++) {
            const float v = to_float(c[(size_t)n * D + d]);
            l1 += fabsf(v);
            count += v > 0.0f ? 1 : 0;
        }
        if (count > 0) {
            fired[d] = 1u;
            if (fire_count) fire_count[d] += count;
        }
        l0 += count;
    }
    l1_sum[0] = (float)((double)l1_sum[0] + l1);
    l0_sum[0] = (float)((double)l0_sum[0] + (double)l0);
}

// sae_l1_relu_backward_stats: the fused pass, in place over dpre (dc in): dpre = (dc + l1_scale)·[c > 0],
// db_enc (D) (+)= colsum(dpre), then l1_sum, l0_sum and fired as sae_sparsity_l0 (no fire_count)
template <typename floatX>
void sae_l1_relu_backward_stats(floatX* dpre, float* db_enc, float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c,
                                float l1_scale, int N, int D, bool accumulate, cudaStream_t stream) {
    if (N == 0 || D == 0) return;
    sae_l1_relu_backward(dpre, dpre, c, l1_scale, N, D, stream);
    bias_grad_colsum(db_enc, dpre, N, D, accumulate, stream);
    sae_sparsity_l0(l1_sum, l0_sum, fired, c, N, D, stream);
}

// sae_count_alive: alive[0] = the number of features with fired != 0 (overwritten)
inline void sae_count_alive(int* alive, const unsigned int* fired, int D, cudaStream_t) {
    MOCK_DEV(alive, 1); MOCK_DEV(fired, D);
    int count = 0;
    for (int i = 0; i < D; i++) count += fired[i] != 0u ? 1 : 0;
    alive[0] = count;
}

// sae_encoder_forward: c (N,D) = relu(x (N,C) · W_enc (C,D) + b_enc (D)) (a NaN stays NaN, so unwritten input shows)
template <typename floatX>
void sae_encoder_forward(floatX* c, const floatX* x, const floatX* W_enc, const floatX* b_enc, int N, int C, int D, cudaStream_t) {
    MOCK_REQUIRE(b_enc != nullptr, "the RELU_BIAS epilogue needs a bias");
    MOCK_DEV(c, (size_t)N * D); MOCK_DEV(b_enc, D);
    std::vector<float> y = mock_matmul(__func__, x, W_enc, b_enc, N, D, C, false, false);
    for (size_t i = 0; i < y.size(); i++) {
        const float v = y[i] + to_float(b_enc[i % D]);
        c[i] = from_float<floatX>(v < 0.0f ? 0.0f : v);
    }
}

// sae_decoder_forward: x_hat (N,C) = c (N,D) · W_dec_norm (D,C) + b_dec (C)
template <typename floatX>
void sae_decoder_forward(floatX* x_hat, const floatX* c, const floatX* W_dec_norm, const floatX* b_dec, int N, int C, int D, cudaStream_t) {
    MOCK_REQUIRE(b_dec != nullptr, "the BIAS epilogue needs a bias");
    MOCK_DEV(x_hat, (size_t)N * C); MOCK_DEV(b_dec, C);
    std::vector<float> y = mock_matmul(__func__, c, W_dec_norm, b_dec, N, C, D, false, false);
    for (size_t i = 0; i < y.size(); i++) x_hat[i] = from_float<floatX>(y[i] + to_float(b_dec[i % C]));
}

// sae_decoder_backward: db_dec (C) and dW_dec_norm (D,C) = cᵀ · dx_hat, fp32, (+)=; dc (N,D) = dx_hat · W_dec_normᵀ, written
template <typename floatX>
void sae_decoder_backward(float* dW_dec_norm, float* db_dec, floatX* dc, const floatX* dx_hat, const floatX* c, const floatX* W_dec_norm, int N,
                          int C, int D, bool accumulate, cudaStream_t stream) {
    MOCK_DEV(dW_dec_norm, (size_t)D * C); MOCK_DEV(dc, (size_t)N * D);
    bias_grad_colsum(db_dec, dx_hat, N, C, accumulate, stream);
    std::vector<float> g = mock_matmul(__func__, c, dx_hat, nullptr, D, C, N, true, false);
    for (size_t i = 0; i < g.size(); i++) dW_dec_norm[i] = accumulate ? dW_dec_norm[i] + g[i] : g[i];
    std::vector<float> y = mock_matmul(__func__, dx_hat, W_dec_norm, nullptr, N, D, C, false, true);
    for (size_t i = 0; i < y.size(); i++) dc[i] = from_float<floatX>(y[i]);
}

// sae_encoder_backward: dW_enc (C,D) = xᵀ · dpre, fp32, (+)=; dpre (N,D), x (N,C)
template <typename floatX>
void sae_encoder_backward(float* dW_enc, const floatX* dpre, const floatX* x, int N, int C, int D, bool accumulate, cudaStream_t) {
    MOCK_DEV(dW_enc, (size_t)C * D);
    std::vector<float> g = mock_matmul(__func__, x, dpre, nullptr, C, D, N, true, false);
    for (size_t i = 0; i < g.size(); i++) dW_enc[i] = accumulate ? dW_enc[i] + g[i] : g[i];
}

// ----------------------------------------------------------------------------
// llmc/sae_sparse.cuh (--sae-kernels sparse): the index of c, then the decoder and the backward
// over the entries with c > 0, in the kernels' order of summation

struct SaeSparse {
    int* col_cnt;   // (D)
    int* col_rows;  // (D,N) feature j's rows at j·N, ascending
    float* col_l1;  // (D)
    int* row_cnt;   // (N)
    int* row_cols;  // (N,D) row n's features at n·D, ascending
    int *seg_ptr, *seg_info;  // the backward's segments (unused here: the loops below are not split)
    float *part_dec, *part_enc, *part_db;
};

template <typename floatX>
void sae_sparse_index(SaeSparse* sp, float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c, int N, int D, cudaStream_t) {
    if (N == 0 || D == 0) return;
    MOCK_DEV(sp->col_cnt, D); MOCK_DEV(sp->col_rows, (size_t)N * D); MOCK_DEV(sp->col_l1, D);
    MOCK_DEV(sp->row_cnt, N); MOCK_DEV(sp->row_cols, (size_t)N * D); MOCK_DEV(c, (size_t)N * D);
    for (int n = 0; n < N; n++) sp->row_cnt[n] = 0;
    double l1 = 0.0;
    unsigned long long l0 = 0;
    for (int j = 0; j < D; j++) {
        int cnt = 0;
        float col_l1 = 0.0f;
        for (int n = 0; n < N; n++) {
            const float v = to_float(c[(size_t)n * D + j]);
            col_l1 += fabsf(v);
            if (v > 0.0f) {
                sp->col_rows[(size_t)j * N + cnt++] = n;
                sp->row_cols[(size_t)n * D + sp->row_cnt[n]++] = j;
            }
        }
        sp->col_cnt[j] = cnt;
        sp->col_l1[j] = col_l1;
        if (cnt > 0) fired[j] = 1u;
        l1 += col_l1;
        l0 += (unsigned long long)cnt;
    }
    l1_sum[0] = (float)((double)l1_sum[0] + l1);
    l0_sum[0] = (float)((double)l0_sum[0] + (double)l0);
}

template <typename floatX>
void sae_sparse_decoder_forward(floatX* x_hat, const SaeSparse* sp, const floatX* c, const floatX* W_dec_norm, const floatX* b_dec, int N, int C,
                                int D, cudaStream_t) {
    MOCK_DEV(x_hat, (size_t)N * C); MOCK_DEV(b_dec, C);
    for (int n = 0; n < N; n++)
        for (int col = 0; col < C; col++) {
            float acc = 0.0f;
            for (int k = 0; k < sp->row_cnt[n]; k++) {
                const int j = sp->row_cols[(size_t)n * D + k];
                acc += to_float(c[(size_t)n * D + j]) * to_float(W_dec_norm[(size_t)j * C + col]);
            }
            x_hat[(size_t)n * C + col] = from_float<floatX>(acc + to_float(b_dec[col]));
        }
}

template <typename floatX>
void sae_sparse_backward(float* dW_dec_norm, float* dW_enc, float* db_enc, floatX* dpre_csc, const SaeSparse* sp, const floatX* c,
                         const floatX* dx_hat, const floatX* x, const floatX* W_dec_norm, float l1_scale, int N, int C, int D, bool accumulate,
                         cudaStream_t) {
    MOCK_DEV(dW_dec_norm, (size_t)D * C); MOCK_DEV(dW_enc, (size_t)C * D); MOCK_DEV(db_enc, D); MOCK_DEV(dpre_csc, (size_t)N * D);
    for (int j = 0; j < D; j++) {
        const int n = sp->col_cnt[j];
        const int* rows = sp->col_rows + (size_t)j * N;
        float db = 0.0f;
        for (int k = 0; k < n; k++) {
            float dot = 0.0f;
            for (int col = 0; col < C; col++) dot += to_float(dx_hat[(size_t)rows[k] * C + col]) * to_float(W_dec_norm[(size_t)j * C + col]);
            const floatX d = from_float<floatX>(to_float(from_float<floatX>(dot)) + l1_scale);
            dpre_csc[(size_t)j * N + k] = d;
            db += to_float(d);
        }
        db_enc[j] = accumulate ? db_enc[j] + db : db;
        for (int col = 0; col < C; col++) {
            float acc_dec = 0.0f, acc_enc = 0.0f;
            for (int k = 0; k < n; k++) {
                const size_t r = rows[k];
                acc_dec += to_float(c[r * D + j]) * to_float(dx_hat[r * C + col]);
                acc_enc += to_float(dpre_csc[(size_t)j * N + k]) * to_float(x[r * C + col]);
            }
            float* od = dW_dec_norm + (size_t)j * C + col;
            float* oe = dW_enc + (size_t)col * D + j;
            *od = accumulate ? *od + acc_dec : acc_dec;
            *oe = accumulate ? *oe + acc_enc : acc_enc;
        }
    }
}

// ----------------------------------------------------------------------------
// llmc/kl.cuh: logits (N,Vp), only the first V columns real

// the max and Σ exp(x − max) of the first V entries of a row (the online softmax's result)
template <typename floatL>
void mock_softmax_stats(const floatL* z, int V, float* max, float* log_sum) {
    float m = -FLT_MAX;
    for (int v = 0; v < V; v++) m = fmaxf(m, to_float(z[v]));
    float sum = 0.0f;
    for (int v = 0; v < V; v++) sum += expf(to_float(z[v]) - m);
    *max = m;
    *log_sum = logf(sum);
}

// kl_forward_backward: kl_rows (N) = KL(clean ‖ spliced) per row; dlogits (N,Vp) floatG =
// grad_scale·(p_s − p_c), padding columns 0, or null (no gradient); dlogits may be logits_spliced
// itself (same type: each element is read before it is written)
template <typename floatL, typename floatG>
void kl_forward_backward(float* kl_rows, floatG* dlogits, const floatL* logits_spliced, const floatL* logits_clean, float grad_scale, int N, int V,
                         int Vp, cudaStream_t) {
    MOCK_DEV(kl_rows, N); MOCK_DEV(logits_spliced, (size_t)N * Vp); MOCK_DEV(logits_clean, (size_t)N * Vp);
    if (dlogits) MOCK_DEV(dlogits, (size_t)N * Vp);
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const floatL* zs = logits_spliced + (size_t)n * Vp;
        const floatL* zc = logits_clean + (size_t)n * Vp;
        floatG* dz = dlogits ? dlogits + (size_t)n * Vp : nullptr;
        float max_s, max_c, log_sum_s, log_sum_c;
        mock_softmax_stats(zs, V, &max_s, &log_sum_s);
        mock_softmax_stats(zc, V, &max_c, &log_sum_c);
        float kl = 0.0f;
        for (int v = 0; v < V; v++) {
            const float lp_s = (to_float(zs[v]) - max_s) - log_sum_s;
            const float lp_c = (to_float(zc[v]) - max_c) - log_sum_c;
            const float p_s = expf(lp_s), p_c = expf(lp_c);
            kl += p_c * (lp_c - lp_s);
            if (dz) dz[v] = from_float<floatG>(grad_scale * (p_s - p_c));
        }
        if (dz)
            for (int v = V; v < Vp; v++) dz[v] = from_float<floatG>(0.0f);
        kl_rows[n] = kl;
    }
}

// kl_forward_backward_onepass: kl_forward_backward's results (the GPU reads each row pair once)
template <typename floatL, typename floatG>
void kl_forward_backward_onepass(float* kl_rows, floatG* dlogits, const floatL* logits_spliced, const floatL* logits_clean, float grad_scale,
                                 int N, int V, int Vp, cudaStream_t stream) {
    MOCK_REQUIRE(dlogits != nullptr, "the one-pass KL is for training: it needs the gradient");
    kl_forward_backward(kl_rows, dlogits, logits_spliced, logits_clean, grad_scale, N, V, Vp, stream);
}

// ce_forward: ce_rows (N) = −log p[target] per row, 0 where targets[row] == -1, NaN for a target outside [0, V)
template <typename floatX>
void ce_forward(float* ce_rows, const floatX* logits, const int* targets, int N, int V, int Vp, cudaStream_t) {
    MOCK_DEV(ce_rows, N); MOCK_DEV(logits, (size_t)N * Vp); MOCK_DEV(targets, N);
    for (int n = 0; n < N; n++) {
        const int target = targets[n];
        if (target < 0) { ce_rows[n] = 0.0f; continue; }
        const floatX* z = logits + (size_t)n * Vp;
        float max, log_sum;
        mock_softmax_stats(z, V, &max, &log_sum);
        ce_rows[n] = target < V ? log_sum - (to_float(z[target]) - max) : NAN;
    }
}

// argmax_agree: agree_count[0] += the rows whose argmax over the first V columns (first index on ties) agree
template <typename floatX>
void argmax_agree(int* agree_count, const floatX* logits_a, const floatX* logits_b, int N, int V, int Vp, cudaStream_t) {
    MOCK_DEV(agree_count, 1); MOCK_DEV(logits_a, (size_t)N * Vp); MOCK_DEV(logits_b, (size_t)N * Vp);
    auto argmax = [&](const floatX* z) {
        int best = 0;
        for (int v = 1; v < V; v++) if (to_float(z[v]) > to_float(z[best])) best = v;
        return best;
    };
    for (int n = 0; n < N; n++) agree_count[0] += argmax(logits_a + (size_t)n * Vp) == argmax(logits_b + (size_t)n * Vp) ? 1 : 0;
}

// ----------------------------------------------------------------------------
// llmc/mse.cuh, llmc/adamw.cuh, llmc/eval.cuh

// mse_forward_backward: loss_sum[0] += Σ (a − b)² (added in double); dA (n) += grad_scale·2(a − b), unless dA is NULL
template <typename floatX>
void mse_forward_backward(float* loss_sum, floatX* dA, const floatX* a, const floatX* b, size_t n, float grad_scale, cudaStream_t) {
    if (n == 0) return;
    MOCK_DEV(loss_sum, 1); MOCK_DEV(a, n); MOCK_DEV(b, n);
    if (dA) MOCK_DEV(dA, n);
    double sum_sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float diff = to_float(a[i]) - to_float(b[i]);
        sum_sq += diff * diff;
        if (dA) dA[i] = from_float<floatX>(to_float(dA[i]) + grad_scale * 2.0f * diff);
    }
    loss_sum[0] = (float)((double)loss_sum[0] + sum_sq);
}

// global_norm_squared: out[0] = (accumulate ? out[0] : 0) + Σ g², g (n) fp32, added in double
inline void global_norm_squared(float* out, const float* g, size_t n, bool accumulate, cudaStream_t) {
    MOCK_DEV(out, 1);
    if (n) MOCK_DEV(g, n);
    double sum_sq = 0.0;
    for (size_t i = 0; i < n; i++) sum_sq += g[i] * g[i];
    out[0] = (float)((accumulate ? (double)out[0] : 0.0) + sum_sq);
}

// adamw_update: params, m, v (n) updated in place in PyTorch's order (adamw.cuh), grads (n) read,
// clipped by max_grad_norm against the device scalar grad_norm_sq (no clipping when it is NULL or
// max_grad_norm <= 0); each copies range gets the new params converted to floatX
#define ADAMW_MAX_COPIES 3
template <typename floatX>
struct ParamCopies {
    floatX* dst[ADAMW_MAX_COPIES] = {};
    size_t begin[ADAMW_MAX_COPIES] = {}, n[ADAMW_MAX_COPIES] = {};
};

template <typename floatX>
void adamw_update(float* params, float* m, float* v, const float* grads, size_t n, double lr, double beta1, double beta2,
                  double step_size, double bc2_sqrt, double eps, double weight_decay, const float* grad_norm_sq,
                  double max_grad_norm, const ParamCopies<floatX>& copies, cudaStream_t) {
    if (n == 0) return;
    MOCK_DEV(params, n); MOCK_DEV(m, n); MOCK_DEV(v, n); MOCK_DEV(grads, n);
    for (int k = 0; k < ADAMW_MAX_COPIES; k++)
        if (copies.dst[k]) {
            MOCK_REQUIRE(copies.begin[k] + copies.n[k] <= n, "a copy range past the parameters");
            MOCK_DEV(copies.dst[k], copies.n[k]);
        }
    float clip = 1.0f;
    if (max_grad_norm > 0.0 && grad_norm_sq != nullptr) {
        MOCK_DEV(grad_norm_sq, 1);
        const float coef = (float)max_grad_norm / (sqrtf(*grad_norm_sq) + 1e-6f);
        clip = coef > 1.0f ? 1.0f : coef;
    }
    const float one_minus_beta1 = (float)(1.0 - beta1), b2 = (float)beta2, one_minus_beta2 = (float)(1.0 - beta2);
    const float step = (float)step_size, bc2 = (float)bc2_sqrt, epsf = (float)eps, decay = (float)(1.0 - lr * weight_decay);
    for (size_t i = 0; i < n; i++) {
        const float g = grads[i] * clip;
        float mi = m[i], vi = v[i];
        mi = mi + one_minus_beta1 * (g - mi);
        vi = vi * b2;
        vi = vi + one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / bc2 + epsf;
        const float p = params[i] * decay;
        params[i] = p - step * (mi / denom);
        m[i] = mi;
        v[i] = vi;
        for (int k = 0; k < ADAMW_MAX_COPIES; k++)
            if (copies.dst[k] && i - copies.begin[k] < copies.n[k]) copies.dst[k][i - copies.begin[k]] = from_float<floatX>(params[i]);
    }
}

// explained_variance_rows: rows (N) = 1 − Σ_i (x_hat − x)² / Σ_i (x − mean_x)², mean_x over the N
// rows; xsum (C) scratch receives the column sums of x
template <typename floatX>
void explained_variance_rows(float* rows, const floatX* x_hat, const floatX* x, float* xsum, int N, int C, cudaStream_t stream) {
    if (N == 0) return;
    MOCK_DEV(rows, N); MOCK_DEV(x_hat, (size_t)N * C);
    bias_grad_colsum(xsum, x, N, C, false, stream);
    for (int n = 0; n < N; n++) {
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < C; i++) {
            const float xi = to_float(x[(size_t)n * C + i]), d = to_float(x_hat[(size_t)n * C + i]) - xi, c = xi - xsum[i] / N;
            num += d * d;
            den += c * c;
        }
        rows[n] = 1.0f - num / den;
    }
}

// ----------------------------------------------------------------------------
// llmc/feature_dump.cuh: the dump's device state and its passes, deciding through feature_dump.h's helpers

// FeatureDumpDevice and feature_dump_device_carve: feature_dump.h's, shared with feature_dump.cuh

// feature_dump_add_gpu: pass 1 of a batch c (N,D) (firing count, histogram, top-K), per feature
// over the rows in order; batches in stream order
template <typename floatX>
void feature_dump_add_gpu(const FeatureDumpDevice& g, const floatX* c, int N, long long first_pos, cudaStream_t) {
    MOCK_REQUIRE(g.K >= 1 && g.K <= FEATURE_DUMP_MAX_K, "K = %d, must be in 1..%d", g.K, FEATURE_DUMP_MAX_K);
    if (N <= 0 || g.D <= 0) return;
    const int D = g.D, K = g.K;
    MOCK_DEV(c, (size_t)N * D); MOCK_DEV(g.fire_count, D); MOCK_DEV(g.top_values, (size_t)D * K); MOCK_DEV(g.top_pos, (size_t)D * K);
    MOCK_DEV(g.hist_counts, (size_t)D * FEATURE_DUMP_HIST_BINS); MOCK_DEV(g.hist_edges, FEATURE_DUMP_HIST_EDGES);
    for (int d = 0; d < D; d++) {
        float* vals = g.top_values + (size_t)d * K;
        long long* pos = g.top_pos + (size_t)d * K;
        unsigned long long* hist = g.hist_counts + (size_t)d * FEATURE_DUMP_HIST_BINS;
        for (int n = 0; n < N; n++) {
            const float v = to_float(c[(size_t)n * D + d]);
            if (!(v > 0.0f)) continue;  // zero, negative or NaN: not a firing
            g.fire_count[d]++;
            hist[feature_dump_hist_bin(g.hist_edges, v)]++;
            if (!(v > vals[K - 1])) continue;
            int j = K - 1;  // shift down everything strictly smaller, then insert
            while (j > 0 && vals[j - 1] < v) { vals[j] = vals[j - 1]; pos[j] = pos[j - 1]; j--; }
            vals[j] = v;
            pos[j] = first_pos + n;
        }
    }
}

// feature_dump_add_bands_gpu: pass 2, first half: each firing of c (N,D) offered to its band
template <typename floatX>
void feature_dump_add_bands_gpu(const FeatureDumpDevice& g, const floatX* c, int N, long long first_pos, cudaStream_t) {
    if (N <= 0 || g.D <= 0) return;
    const int D = g.D, K = g.K, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE;
    MOCK_DEV(c, (size_t)N * D); MOCK_DEV(g.top_values, (size_t)D * K); MOCK_DEV(g.band_values, (size_t)D * S); MOCK_DEV(g.band_pos, (size_t)D * S);
    for (int d = 0; d < D; d++) {
        const float vmax = g.top_values[(size_t)d * K];
        if (!(vmax > 0.0f)) continue;  // never fired
        for (int n = 0; n < N; n++) {
            const float v = to_float(c[(size_t)n * D + d]);
            if (!(v > 0.0f)) continue;
            const int b = feature_dump_band(v, vmax);
            if (b < 0) continue;
            const size_t at = (size_t)d * S + b * FEATURE_DUMP_BAND_SIZE;
            feature_dump_band_offer(g.band_pos + at, g.band_values + at, d, first_pos + n, v);
        }
    }
}

// the contexts of the example slots pos (D,slots) whose position is in this batch, into context (D,slots,24)
template <typename floatX>
void mock_dump_contexts(uint16_t* context, const long long* pos, int slots, const floatX* c, int N, int D, int T, long long first_pos) {
    MOCK_DEV(context, (size_t)D * slots * FEATURE_DUMP_CONTEXT); MOCK_DEV(pos, (size_t)D * slots);
    for (size_t i = 0; i < (size_t)D * slots; i++) {
        const long long p = pos[i];
        if (p < first_pos || p >= first_pos + N) continue;  // empty (-1) or in another batch
        const int d = (int)(i / slots);
        const long long row0 = p - p % T;
        for (int w = 0; w < FEATURE_DUMP_CONTEXT; w++) {
            const long long q = p + FEATURE_DUMP_CONTEXT_FIRST + w;
            const float a = q >= row0 && q < row0 + T ? to_float(c[(size_t)(q - first_pos) * D + d]) : NAN;
            context[i * FEATURE_DUMP_CONTEXT + w] = feature_dump_f16(a);
        }
    }
}

// feature_dump_add_contexts_gpu: pass 2, second half: the contexts of the top-K and band examples in c (N,D) of whole rows of T
template <typename floatX>
void feature_dump_add_contexts_gpu(const FeatureDumpDevice& g, const floatX* c, int N, int T, long long first_pos, cudaStream_t) {
    if (N <= 0 || g.D <= 0) return;
    MOCK_DEV(c, (size_t)N * g.D);
    mock_dump_contexts(g.context_top, g.top_pos, g.K, c, N, g.D, T, first_pos);
    mock_dump_contexts(g.context_band, g.band_pos, FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, c, N, g.D, T, first_pos);
}

// feature_dump_logit_effects_gpu: per chunk of features, rows = (W_dec[f] / max(||W_dec[f]||, eps))∘γ
// and k_f = Σ rows·mean (double) into the scratch, effects (F,V) = rows · W_Uᵀ by matmul_forward,
// then the top and bottom 10 of effects + k_f per row (value, then the lower id); W_dec (D,C), gamma,
// mean (C), W_U (V,C), all fp32 device memory
inline void feature_dump_logit_effects_gpu(const FeatureDumpDevice& g, const float* W_dec, const float* gamma, const float* W_U,
                                           const float* mean, cudaStream_t stream) {
    const int D = g.D, C = g.C, V = g.V, L = FEATURE_DUMP_LOGITS;
    MOCK_DEV(W_dec, (size_t)D * C); MOCK_DEV(gamma, C); MOCK_DEV(mean, C); MOCK_DEV(g.logit_rows, (size_t)FEATURE_DUMP_LOGIT_CHUNK * C);
    MOCK_DEV(g.logit_consts, FEATURE_DUMP_LOGIT_CHUNK); MOCK_DEV(g.logit_effects, (size_t)FEATURE_DUMP_LOGIT_CHUNK * V);
    MOCK_DEV(g.logit_top_tokens, (size_t)D * L); MOCK_DEV(g.logit_top_values, (size_t)D * L);
    MOCK_DEV(g.logit_bottom_tokens, (size_t)D * L); MOCK_DEV(g.logit_bottom_values, (size_t)D * L);
    for (int f0 = 0; f0 < D; f0 += FEATURE_DUMP_LOGIT_CHUNK) {
        const int F = std::min(FEATURE_DUMP_LOGIT_CHUNK, D - f0);
        for (int f = 0; f < F; f++) {
            const float* w = W_dec + (size_t)(f0 + f) * C;
            float sum_sq = 0.0f;
            for (int i = 0; i < C; i++) sum_sq += w[i] * w[i];
            const float norm = fmaxf(sqrtf(sum_sq), SAE_NORM_EPS);
            double k = 0.0;
            for (int i = 0; i < C; i++) {
                const float a = (w[i] / norm) * gamma[i];
                g.logit_rows[(size_t)f * C + i] = a;
                k += (double)a * mean[i];
            }
            g.logit_consts[f] = (float)k;
        }
        matmul_forward<float>(g.logit_effects, g.logit_rows, W_U, nullptr, F, C, V, stream);  // (F,V) = rows (F,C) . W_U (V,C)^T
        for (int f = 0; f < F; f++) {
            float tv[FEATURE_DUMP_LOGITS], bv[FEATURE_DUMP_LOGITS];
            int ti[FEATURE_DUMP_LOGITS], bi[FEATURE_DUMP_LOGITS];
            for (int j = 0; j < L; j++) { tv[j] = -INFINITY; bv[j] = INFINITY; ti[j] = bi[j] = INT_MAX; }
            for (int v = 0; v < V; v++) {
                const float x = g.logit_effects[(size_t)f * V + v] + g.logit_consts[f];
                feature_dump_logit_insert(tv, ti, x, v, true);
                feature_dump_logit_insert(bv, bi, x, v, false);
            }
            for (int j = 0; j < L; j++) {
                const size_t o = (size_t)(f0 + f) * L + j;
                g.logit_top_tokens[o] = ti[j] == INT_MAX ? -1 : ti[j];
                g.logit_top_values[o] = ti[j] == INT_MAX ? NAN : tv[j];
                g.logit_bottom_tokens[o] = bi[j] == INT_MAX ? -1 : bi[j];
                g.logit_bottom_values[o] = bi[j] == INT_MAX ? NAN : bv[j];
            }
        }
    }
}

// feature_dump_reset_gpu: the empty state (no firings, values 0, positions -1, contexts 0xffff)
// and the histogram edges from the host's FeatureDump (as feature_dump.cuh's)
inline void feature_dump_reset_gpu(const FeatureDumpDevice& g, const FeatureDump& host, cudaStream_t stream) {
    const size_t D = g.D, K = g.K, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    cudaCheck(cudaMemsetAsync(g.fire_count, 0, D * sizeof(unsigned long long), stream));
    cudaCheck(cudaMemsetAsync(g.top_values, 0, D * K * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(g.top_pos, 0xff, D * K * sizeof(long long), stream));
    cudaCheck(cudaMemsetAsync(g.hist_counts, 0, D * FEATURE_DUMP_HIST_BINS * sizeof(unsigned long long), stream));
    cudaCheck(cudaMemsetAsync(g.band_values, 0, D * S * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(g.band_pos, 0xff, D * S * sizeof(long long), stream));
    cudaCheck(cudaMemsetAsync(g.context_top, 0xff, D * K * W * sizeof(uint16_t), stream));
    cudaCheck(cudaMemsetAsync(g.context_band, 0xff, D * S * W * sizeof(uint16_t), stream));
    cudaCheck(cudaMemcpyAsync(g.hist_edges, host.hist_edges.data(), FEATURE_DUMP_HIST_EDGES * sizeof(float), cudaMemcpyHostToDevice, stream));
    cudaCheck(cudaStreamSynchronize(stream));
}

// feature_dump_download: device state -> host FeatureDump (already sized to D, K), with the token count (as feature_dump.cuh's)
inline void feature_dump_download(FeatureDump* fd, const FeatureDumpDevice& g, long long tokens) {
    const size_t D = g.D, K = g.K, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT, L = FEATURE_DUMP_LOGITS;
    cudaCheck(cudaDeviceSynchronize());
    auto get = [](void* dst, const void* src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)); };
    get(fd->fire_count.data(), g.fire_count, D * sizeof(long long));
    get(fd->top_values.data(), g.top_values, D * K * sizeof(float));
    get(fd->top_pos.data(), g.top_pos, D * K * sizeof(long long));
    get(fd->hist_counts.data(), g.hist_counts, D * FEATURE_DUMP_HIST_BINS * sizeof(long long));
    get(fd->band_values.data(), g.band_values, D * S * sizeof(float));
    get(fd->band_pos.data(), g.band_pos, D * S * sizeof(long long));
    get(fd->context_top.data(), g.context_top, D * K * W * sizeof(uint16_t));
    get(fd->context_band.data(), g.context_band, D * S * W * sizeof(uint16_t));
    get(fd->logit_top_tokens.data(), g.logit_top_tokens, D * L * sizeof(long long));
    get(fd->logit_top_values.data(), g.logit_top_values, D * L * sizeof(float));
    get(fd->logit_bottom_tokens.data(), g.logit_bottom_tokens, D * L * sizeof(long long));
    get(fd->logit_bottom_values.data(), g.logit_bottom_values, D * L * sizeof(float));
    fd->tokens = tokens;
}
