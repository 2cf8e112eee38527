/*
Causal multi-head self-attention: forward and activation-gradient backward, two ways.

inp (B,T,3C) holds q in [0,C), k in [C,2C), v in [2C,3C), head h at offset h*hs in each (hs =
C/NH); out (B,T,C) holds head h's output at columns h*hs.. .

1. Materialised, llm.c style (attention_forward / attention_backward): the full (T,T) attention
matrix is stored, and the backward reuses it. Any head size, fp32 and bf16. Forward:
  1. split the heads: q, k, v (B,NH,T,hs) each, contiguous, in qkvr (3,B,NH,T,hs)   one kernel
  2. preatt (B,NH,T,T) = q·kᵀ                 one strided-batched matmul, into att
  3. att = softmax(preatt / sqrt(hs)) causal   in place; positions s > t are written as exact 0
  4. y (B,NH,T,hs) = att·v                     one strided-batched matmul, into scratch
  5. out (B,T,C) = y with the heads merged     one kernel
Backward (dout (B,T,C) -> dinp (B,T,3C)):
  dy = dout split into heads (B,NH,T,hs)       in scratch
  datt = dy·vᵀ,  dv = attᵀ·dy
  dpreatt = softmax backward of datt           in place in datt, scale included
  dq = dpreatt·k,  dk = dpreattᵀ·q
  dinp = the heads of dq, dk, dv merged back into (B,T,3C)   one kernel
Every matmul is one call batched over all B·NH heads (a per-head output written straight into
(B,T,C) would need a batch stride per b and another per h, which strided batching lacks: that
was NH calls, each with its host overhead, for a merge that costs one pass over (B,T,C)).
Matmuls use cuBLASLt with fp32 compute (no TF32). In bf16 the scores and probabilities are
stored in bf16 between steps (as in llm.c), which costs accuracy on large logits. The masked
upper triangle is computed and then zeroed (no causal skipping).

2. Flash (flash_attention_forward / flash_attention_backward; kernels in flash_attention.cuh):
nothing of size (T,T) is stored. Head size 64 only (GPT-2's; flash_attention_supported says), any
T. q, k, v are read in place from inp and the results written in place into out and dinp (no
head split or merge). In bf16 it runs on tensor cores, FA2's scheme (mma.sync with fp32
accumulation; P and dS rounded to bf16 only as mma operands); any other floatX runs the simple
tiled kernels (*_simple: fp32 FMA, scores, probabilities and every sum in fp32, so in bf16 only
out and dinp are rounded), which are the correctness reference for the tensor-core ones. Tiles of 64 query rows by 64 key rows; key tiles above the diagonal are
skipped, the diagonal one is masked. Forward, per (b,h) and query tile: the online softmax (a
running max m and sum l per row) over the key tiles, then out = o/l and the row's log-sum-exp
lse = m + log l, fp32 (B,NH,T), which the backward uses to recompute the probabilities
    P[t,s] = exp(scale·q_t·k_s − lse_t),  scale = 1/sqrt(hs).
Backward, with dS[t,s] = P[t,s]·(dy_t·v_s − D_t) and D_t = Σ_s P[t,s]·(dy_t·v_s) = dy_t·y_t:
    dq_t = scale·Σ_{s<=t} dS[t,s]·k_s     one kernel per query tile over key tiles s <= t; it also
                                          stores D_t, from the rounded y the forward wrote
    dk_s = scale·Σ_{t>=s} dS[t,s]·q_t,  dv_s = Σ_{t>=s} P[t,s]·dy_t
                                          one kernel per key tile over query tiles t >= s
Each output element is written by one thread and summed in a fixed order, with no atomics: the
results are the same bits on every run.
*/
#pragma once
#include <math.h>
#include "cuda_common.cuh"
#include "matmul.cuh"
#include "flash_attention.cuh"  // the flash kernels; their launchers are below

// ----------------------------------------------------------------------------
// head split/merge, `parts` tensors at once:
//   rows (B,T,·) with row stride ld, part p's head h at column p*C + h*hs  <->  (parts,B,NH,T,hs)
// One thread moves P consecutive elements of one head row: a 16-byte pack where the launcher
// found every address aligned (hs, ld and both pointers), else one element.

template <int P, typename floatX>
__device__ inline void copy_elems(floatX* dst, const floatX* src) {
    if constexpr (P == 1) *dst = *src;
    else store128(dst, load128(src));
}

// offset into the (B,T,·) rows of element d of head row (part, b, h, t), from its index in (parts,B,NH,T,hs)
__device__ inline size_t head_row_offset(size_t idx, int B, int T, int NH, int hs, int ld) {
    const int d = (int)(idx % hs);
    size_t r = idx / hs;
    const int t = (int)(r % T); r /= T;
    const int h = (int)(r % NH); r /= NH;
    const size_t b = r % B, part = r / B;
    return (b * T + t) * ld + (part * NH + h) * hs + d;
}

template <int P, typename floatX>
__global__ void split_heads_kernel(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int parts, int ld) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;  // into out (parts,B,NH,T,hs)
    if (idx >= (size_t)parts * B * NH * T * hs) return;
    copy_elems<P>(out + idx, inp + head_row_offset(idx, B, T, NH, hs, ld));
}

template <int P, typename floatX>
__global__ void merge_heads_kernel(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int parts, int ld) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * P;  // into inp (parts,B,NH,T,hs)
    if (idx >= (size_t)parts * B * NH * T * hs) return;
    copy_elems<P>(out + head_row_offset(idx, B, T, NH, hs, ld), inp + idx);
}

template <typename floatX>
bool heads_packable(const void* a, const void* b, int hs, int ld) {
    constexpr int P = Packed128<floatX>::size;
    return hs % P == 0 && ld % P == 0 && is_aligned16(a) && is_aligned16(b);
}

// out (parts,B,NH,T,hs) <- inp rows (B,T,·) with row stride ld (>= parts·C)
template <typename floatX>
void split_heads(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int parts, int ld, cudaStream_t stream) {
    constexpr int P = Packed128<floatX>::size;
    const size_t n = (size_t)parts * B * NH * T * hs;
    if (n == 0) return;
    const int block_size = 256;
    if (heads_packable<floatX>(out, inp, hs, ld)) {
        split_heads_kernel<P><<<(unsigned)ceil_div(n / P, (size_t)block_size), block_size, 0, stream>>>(out, inp, B, T, NH, hs, parts, ld);
    } else {
        split_heads_kernel<1><<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, B, T, NH, hs, parts, ld);
    }
    cudaLaunchCheck();
}

// out rows (B,T,·) with row stride ld <- inp (parts,B,NH,T,hs); columns past parts·C untouched
template <typename floatX>
void merge_heads(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int parts, int ld, cudaStream_t stream) {
    constexpr int P = Packed128<floatX>::size;
    const size_t n = (size_t)parts * B * NH * T * hs;
    if (n == 0) return;
    const int block_size = 256;
    if (heads_packable<floatX>(out, inp, hs, ld)) {
        merge_heads_kernel<P><<<(unsigned)ceil_div(n / P, (size_t)block_size), block_size, 0, stream>>>(out, inp, B, T, NH, hs, parts, ld);
    } else {
        merge_heads_kernel<1><<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, B, T, NH, hs, parts, ld);
    }
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// causal softmax, one warp per row (b,h,t) of the (B*NH*T, T) matrix, in place.
//   att[t,s] = exp(scale·(x[t,s] − max_s' x[t,s'])) / Σ   for s <= t,   0 for s > t
// scale > 0, so the max of x is the max of scale·x (the max-subtraction keeps exp <= 1). The warp
// finishes all its reads (two reductions) before the last pass writes, and in that pass each lane
// rewrites only what it reads, so in place is safe.

template <typename floatX>
__global__ void attention_softmax_forward_kernel(floatX* att, float scale, int rows, int T) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int t = row % T;
    floatX* x = att + (size_t)row * T;
    float maxv = -INFINITY;
    for (int s = lane; s <= t; s += 32) maxv = fmaxf(maxv, to_float(x[s]));
    maxv = warp_reduce_max(maxv);
    float sum = 0.0f;
    for (int s = lane; s <= t; s += 32) sum += expf(scale * (to_float(x[s]) - maxv));
    sum = warp_reduce_sum(sum);
    const float inv_sum = 1.0f / sum;
    for (int s = lane; s < T; s += 32) {
        float p = s <= t ? expf(scale * (to_float(x[s]) - maxv)) * inv_sum : 0.0f;
        x[s] = from_float<floatX>(p);
    }
}

// softmax backward, in place on datt. With y = softmax(scale·x) over s <= t:
//   dx[t,s] = scale · y[t,s] · (dy[t,s] − Σ_{s'<=t} y[t,s']·dy[t,s'])     (0 for s > t)
template <typename floatX>
__global__ void attention_softmax_backward_kernel(floatX* datt, const floatX* att, float scale, int rows, int T) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int t = row % T;
    const floatX* y = att + (size_t)row * T;
    floatX* dy = datt + (size_t)row * T;
    float dot = 0.0f;
    for (int s = lane; s <= t; s += 32) dot += to_float(y[s]) * to_float(dy[s]);
    dot = warp_reduce_sum(dot);
    for (int s = lane; s < T; s += 32) {
        float g = s <= t ? scale * to_float(y[s]) * (to_float(dy[s]) - dot) : 0.0f;
        dy[s] = from_float<floatX>(g);
    }
}

// ----------------------------------------------------------------------------
// launchers

// out (B,T,C); qkvr (3,B,NH,T,hs) scratch that the backward reads; att (B,NH,T,T) receives the
// probabilities (the backward reads them); scratch (B,T,C) is scratch; inp (B,T,3C) is not modified
template <typename floatX>
void attention_forward(floatX* out, floatX* qkvr, floatX* att, floatX* scratch, const floatX* inp,
                       int B, int T, int C, int NH, cudaStream_t stream) {
    if (C % NH != 0) { fprintf(stderr, "attention_forward: C %d not divisible by NH %d\n", C, NH); exit(EXIT_FAILURE); }
    if (B == 0 || T == 0) return;
    const int hs = C / NH, BNH = B * NH;
    const size_t head_elems = (size_t)B * NH * T * hs;
    const cudaDataType_t dt = cuda_dtype<floatX>();
    const floatX* q = qkvr;
    const floatX* k = qkvr + head_elems;
    const floatX* v = qkvr + 2 * head_elems;
    split_heads(qkvr, inp, B, T, NH, hs, 3, 3 * C, stream);

    // preatt (T,T) = q (T,hs) · kᵀ for each of the B·NH heads
    const long long TT = (long long)T * T, Ths = (long long)T * hs;
    matmul_cublaslt_batched(att, q, k, T, T, hs, false, true, 0, 0, 0, BNH, Ths, Ths, TT, dt, dt, 1.0f, false, stream);

    const int rows = BNH * T, block_size = 256;
    const float scale = 1.0f / sqrtf((float)hs);
    attention_softmax_forward_kernel<<<ceil_div(rows, block_size / 32), block_size, 0, stream>>>(att, scale, rows, T);
    cudaLaunchCheck();

    // y (T,hs) = att (T,T) · v (T,hs) for each head, then merged into out (B,T,C)
    floatX* y = scratch;
    matmul_cublaslt_batched(y, att, v, T, hs, T, false, false, 0, 0, 0, BNH, TT, Ths, Ths, dt, dt, 1.0f, false, stream);
    merge_heads(out, y, B, T, NH, hs, 1, C, stream);
}

// dinp (B,T,3C) = gradient wrt the forward's inp (written, not accumulated); dqkvr (3,B,NH,T,hs),
// datt (B,NH,T,T) and scratch (B,T,C) are scratch; dout (B,T,C); qkvr and att as the forward left them
template <typename floatX>
void attention_backward(floatX* dinp, floatX* dqkvr, floatX* datt, floatX* scratch, const floatX* dout,
                        const floatX* qkvr, const floatX* att, int B, int T, int C, int NH, cudaStream_t stream) {
    if (C % NH != 0) { fprintf(stderr, "attention_backward: C %d not divisible by NH %d\n", C, NH); exit(EXIT_FAILURE); }
    if (B == 0 || T == 0) return;
    const int hs = C / NH;
    const size_t head_elems = (size_t)B * NH * T * hs;
    const cudaDataType_t dt = cuda_dtype<floatX>();
    const floatX* q = qkvr;
    const floatX* k = qkvr + head_elems;
    const floatX* v = qkvr + 2 * head_elems;
    floatX* dq = dqkvr;
    floatX* dk = dqkvr + head_elems;
    floatX* dv = dqkvr + 2 * head_elems;
    floatX* dy = scratch;  // dout split into heads (B,NH,T,hs)
    split_heads(dy, dout, B, T, NH, hs, 1, C, stream);

    const long long TT = (long long)T * T, Ths = (long long)T * hs;
    const int BNH = B * NH;
    // datt (T,T) = dy (T,hs) · vᵀ
    matmul_cublaslt_batched(datt, dy, v, T, T, hs, false, true, 0, 0, 0, BNH, Ths, Ths, TT, dt, dt, 1.0f, false, stream);
    // dv (T,hs) = attᵀ · dy (T,hs)
    matmul_cublaslt_batched(dv, att, dy, T, hs, T, true, false, 0, 0, 0, BNH, TT, Ths, Ths, dt, dt, 1.0f, false, stream);

    const int rows = BNH * T, block_size = 256;
    const float scale = 1.0f / sqrtf((float)hs);
    attention_softmax_backward_kernel<<<ceil_div(rows, block_size / 32), block_size, 0, stream>>>(datt, att, scale, rows, T);
    cudaLaunchCheck();

    // dq (T,hs) = dpreatt (T,T) · k (T,hs);  dk (T,hs) = dpreattᵀ · q (T,hs)
    matmul_cublaslt_batched(dq, datt, k, T, hs, T, false, false, 0, 0, 0, BNH, TT, Ths, Ths, dt, dt, 1.0f, false, stream);
    matmul_cublaslt_batched(dk, datt, q, T, hs, T, true, false, 0, 0, 0, BNH, TT, Ths, Ths, dt, dt, 1.0f, false, stream);

    merge_heads(dinp, dqkvr, B, T, NH, hs, 3, 3 * C, stream);  // dq, dk, dv are consecutive in dqkvr
}

// ----------------------------------------------------------------------------
// flash attention: launchers

// whether the flash kernels serve this shape (the trainer refuses --attention flash otherwise)
inline bool flash_attention_supported(int C, int NH) { return NH > 0 && C % NH == 0 && C / NH == FLASH_HS; }

inline void flash_check_args(const char* who, int C, int NH, const void* a, const void* b) {
    if (!flash_attention_supported(C, NH)) {
        fprintf(stderr, "%s: head size C/NH = %d/%d; the flash kernels serve head size %d only\n", who, C, NH, FLASH_HS);
        exit(EXIT_FAILURE);
    }
    if (!is_aligned16(a) || !is_aligned16(b)) {
        fprintf(stderr, "%s: the buffers the kernels read in 16-byte packs must be 16-byte aligned\n", who);
        exit(EXIT_FAILURE);
    }
}

// the simple kernels (fp32 FMA, any floatX): the reference the tensor-core kernels are checked
// against (dev/cuda/attention.cu variant 2). out (B,T,C), lse (B,NH,T) fp32 for the backward;
// qkv (B,T,3C) is read in place
template <typename floatX>
void flash_attention_forward_simple(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int NH, cudaStream_t stream) {
    flash_check_args("flash_attention_forward_simple", C, NH, qkv, qkv);
    if (B == 0 || T == 0) return;
    const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
    flash_attention_forward_kernel<<<grid, FLASH_THREADS, 0, stream>>>(out, lse, qkv, T, NH);
    cudaLaunchCheck();
}

// dinp (B,T,3C) = gradient wrt qkv (written, not accumulated); dsum (B,NH,T) fp32 scratch; dout,
// out (B,T,C) and lse as the forward's; qkv (B,T,3C) as the forward read it
template <typename floatX>
void flash_attention_backward_simple(floatX* dinp, float* dsum, const floatX* dout, const floatX* out, const floatX* qkv, const float* lse,
                                     int B, int T, int C, int NH, cudaStream_t stream) {
    flash_check_args("flash_attention_backward_simple", C, NH, qkv, dout);
    if (B == 0 || T == 0) return;
    const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
    flash_attention_backward_dq_kernel<<<grid, FLASH_THREADS, 0, stream>>>(dinp, dsum, dout, out, qkv, lse, T, NH);
    cudaLaunchCheck();
    flash_attention_backward_dkdv_kernel<<<grid, FLASH_THREADS, 0, stream>>>(dinp, dout, qkv, lse, dsum, T, NH);
    cudaLaunchCheck();
}

// The trainer's flash attention: bf16 on tensor cores (FA2), any other floatX by the simple
// kernels. Arguments as flash_attention_forward_simple / flash_attention_backward_simple.
template <typename floatX>
void flash_attention_forward(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int NH, cudaStream_t stream) {
    if constexpr (!std::is_same<floatX, bf16>::value) {
        flash_attention_forward_simple(out, lse, qkv, B, T, C, NH, stream);
    } else {
        flash_check_args("flash_attention_forward", C, NH, qkv, qkv);
        if (B == 0 || T == 0) return;
        const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
        flash_forward_mma_kernel<<<grid, FA2_THREADS, 0, stream>>>(out, lse, qkv, T, NH);
        cudaLaunchCheck();
    }
}

template <typename floatX>
void flash_attention_backward(floatX* dinp, float* dsum, const floatX* dout, const floatX* out, const floatX* qkv, const float* lse,
                              int B, int T, int C, int NH, cudaStream_t stream) {
    if constexpr (!std::is_same<floatX, bf16>::value) {
        flash_attention_backward_simple(dinp, dsum, dout, out, qkv, lse, B, T, C, NH, stream);
    } else {
        flash_check_args("flash_attention_backward", C, NH, qkv, dout);
        if (B == 0 || T == 0) return;
        const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
        flash_backward_dq_mma_kernel<<<grid, FA2_THREADS, 0, stream>>>(dinp, dsum, dout, out, qkv, lse, T, NH);
        cudaLaunchCheck();
        flash_backward_dkdv_mma_kernel<<<grid, FA2_THREADS, 0, stream>>>(dinp, dout, qkv, lse, dsum, T, NH);
        cudaLaunchCheck();
    }
}
