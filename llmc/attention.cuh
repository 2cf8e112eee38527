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

2. Flash (flash_attention_forward / flash_attention_backward): nothing of size (T,T) is stored.
Head size 64 only (GPT-2's; flash_attention_supported says), any T. q, k, v are read in place
from inp and the results written in place into out and dinp (no head split or merge). Scores,
probabilities and every sum stay in fp32 (registers and shared memory; no tensor cores: this is
the simple tiled version, the correctness reference for faster ones), so in bf16 only out and
dinp are rounded. Tiles of 64 query rows by 64 key rows; key tiles above the diagonal are
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
// flash attention (see the top of the file): kernels

// Layout of the work: a block of 128 threads owns one (b,h) and 64 rows (query rows in the
// forward and dq kernels, key rows in the dk/dv kernel), two threads per row. Each of the two
// holds half of the row's 64 dims in registers: float4 chunks alternate between them, dims
// 8i+4·half+j (i < 8, j < 4), so the two threads of a row read neighbouring 16-byte words of a
// shared-memory row and every other row's threads read the same words (broadcast, no bank
// conflict). The other side's rows stream through shared memory in fp32 tiles of 64 x 64.
constexpr int FLASH_HS = 64;        // the one head size served
constexpr int FLASH_TILE = 64;      // rows of a query tile and of a key tile (equal: the diagonal logic needs it)
constexpr int FLASH_THREADS = 2 * FLASH_TILE;
constexpr int FLASH_CHUNK = 16;     // keys per online-softmax update in the forward

// shared tile (FLASH_TILE, FLASH_HS) in fp32 <- rows tile·64.. of batch b of a (B,T,ld) buffer,
// src pointing at the head's first column; rows past T are zeros. 16-byte loads: the launchers
// check that the buffers are aligned, and hs = 64 keeps every row's head columns aligned.
template <typename floatX>
__device__ void flash_load_tile(float (*tile)[FLASH_HS], const floatX* src, int b, int tile_idx, int T, int ld) {
    constexpr int P = Packed128<floatX>::size;
    constexpr int packs_per_row = FLASH_HS / P;
    for (int idx = threadIdx.x; idx < FLASH_TILE * packs_per_row; idx += blockDim.x) {
        const int r = idx / packs_per_row, c = (idx % packs_per_row) * P;
        const int s = tile_idx * FLASH_TILE + r;
        if (s < T) {
            const Packed128<floatX> x = load128(src + ((size_t)b * T + s) * ld + c);
            for (int p = 0; p < P; p++) tile[r][c + p] = to_float(x[p]);
        } else {
            for (int p = 0; p < P; p++) tile[r][c + p] = 0.0f;
        }
    }
}

// a thread's half of a row (HS/2 values, see above) <- the same dims of a global row
template <typename floatX>
__device__ __forceinline__ void flash_load_half(float* x, const floatX* row, int half) {
#pragma unroll
    for (int i = 0; i < FLASH_HS / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) x[4 * i + j] = to_float(row[8 * i + 4 * half + j]);
}

// global row <- a thread's half of a row, times `mul`
template <typename floatX>
__device__ __forceinline__ void flash_store_half(floatX* row, const float* x, float mul, int half) {
#pragma unroll
    for (int i = 0; i < FLASH_HS / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) row[8 * i + 4 * half + j] = from_float<floatX>(x[4 * i + j] * mul);
}

// the dot product of a row held as halves (x, in registers) with a shared-memory row, summed over
// the row's two threads (lanes 2r and 2r+1 of a warp): both get the same bits (a+b = b+a). Every
// thread of the warp must call it.
__device__ __forceinline__ float flash_row_dot(const float* x, const float* row, int half) {
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < FLASH_HS / 8; i++) {
        const float4 r = *reinterpret_cast<const float4*>(row + 8 * i + 4 * half);
        acc = fmaf(x[4 * i + 0], r.x, acc);
        acc = fmaf(x[4 * i + 1], r.y, acc);
        acc = fmaf(x[4 * i + 2], r.z, acc);
        acc = fmaf(x[4 * i + 3], r.w, acc);
    }
    return acc + __shfl_xor_sync(0xffffffffu, acc, 1);
}

// x (halves, registers) += a · shared-memory row
__device__ __forceinline__ void flash_row_axpy(float* x, float a, const float* row, int half) {
#pragma unroll
    for (int i = 0; i < FLASH_HS / 8; i++) {
        const float4 r = *reinterpret_cast<const float4*>(row + 8 * i + 4 * half);
        x[4 * i + 0] = fmaf(a, r.x, x[4 * i + 0]);
        x[4 * i + 1] = fmaf(a, r.y, x[4 * i + 1]);
        x[4 * i + 2] = fmaf(a, r.z, x[4 * i + 2]);
        x[4 * i + 3] = fmaf(a, r.w, x[4 * i + 3]);
    }
}

// out (B,T,C), lse (B,NH,T) fp32, qkv (B,T,3C). Grid (B·NH, query tiles), the last query tile
// (the most key tiles) first. Per row t: m, l and o over the keys s <= t, FLASH_CHUNK keys per
// update: m' = max(m, max_s score), o = o·exp(m − m') + Σ_s exp(score_s − m')·v_s, l likewise.
// A row past T (the last tile's tail) computes row T−1 again and writes nothing, so every thread
// takes part in the loads and shuffles and nothing is ever −inf − (−inf).
template <typename floatX>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_forward_kernel(floatX* out, float* lse, const floatX* qkv, int T, int NH) {
    __shared__ __align__(16) float k_tile[FLASH_TILE][FLASH_HS];
    __shared__ __align__(16) float v_tile[FLASH_TILE][FLASH_HS];
    const int C = NH * FLASH_HS;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q_tile = gridDim.y - 1 - blockIdx.y;
    const int half = threadIdx.x % 2;
    const int t = q_tile * FLASH_TILE + threadIdx.x / 2;
    const int tq = min(t, T - 1);
    const float scale = 1.0f / sqrtf((float)FLASH_HS);

    float q[FLASH_HS / 2], o[FLASH_HS / 2];
    flash_load_half(q, qkv + ((size_t)b * T + tq) * 3 * C + h * FLASH_HS, half);
#pragma unroll
    for (int i = 0; i < FLASH_HS / 2; i++) o[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int kt = 0; kt <= q_tile; kt++) {  // key tiles up to the diagonal
        __syncthreads();  // the previous tile's reads are done
        flash_load_tile(k_tile, qkv + C + h * FLASH_HS, b, kt, T, 3 * C);
        flash_load_tile(v_tile, qkv + 2 * C + h * FLASH_HS, b, kt, T, 3 * C);
        __syncthreads();
        for (int c0 = 0; c0 < FLASH_TILE; c0 += FLASH_CHUNK) {
            float score[FLASH_CHUNK];
            float chunk_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < FLASH_CHUNK; j++) {
                score[j] = flash_row_dot(q, k_tile[c0 + j], half) * scale;
                if (kt == q_tile && kt * FLASH_TILE + c0 + j > tq) score[j] = -INFINITY;  // causal mask, diagonal tile only
                chunk_max = fmaxf(chunk_max, score[j]);
            }
            // key 0 is in every row's first chunk, so m_new is finite; a chunk wholly masked leaves m as it is
            const float m_new = fmaxf(m, chunk_max);
            const float corr = expf(m - m_new);  // 0 on the first chunk, where m = -inf
            l *= corr;
#pragma unroll
            for (int i = 0; i < FLASH_HS / 2; i++) o[i] *= corr;
#pragma unroll
            for (int j = 0; j < FLASH_CHUNK; j++) {
                const float p = expf(score[j] - m_new);
                l += p;
                flash_row_axpy(o, p, v_tile[c0 + j], half);
            }
            m = m_new;
        }
    }
    if (t < T) {
        flash_store_half(out + ((size_t)b * T + t) * C + h * FLASH_HS, o, 1.0f / l, half);
        if (half == 0) lse[(size_t)bh * T + t] = m + logf(l);
    }
}

// dq into dinp's q columns (B,T,3C), dsum (B,NH,T) fp32 <- D_t = dy_t·y_t; dout and out (B,T,C),
// qkv (B,T,3C), lse (B,NH,T). Grid and rows as the forward: per query row t, over the keys s <= t,
//   p = exp(scale·q·k_s − lse_t),  dS = p·(dy·v_s − D_t),  dq += dS·k_s;   dq·scale at the end.
template <typename floatX>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_backward_dq_kernel(floatX* dinp, float* dsum, const floatX* dout,
                                                                                    const floatX* out, const floatX* qkv, const float* lse,
                                                                                    int T, int NH) {
    __shared__ __align__(16) float k_tile[FLASH_TILE][FLASH_HS];
    __shared__ __align__(16) float v_tile[FLASH_TILE][FLASH_HS];
    const int C = NH * FLASH_HS;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q_tile = gridDim.y - 1 - blockIdx.y;
    const int half = threadIdx.x % 2;
    const int t = q_tile * FLASH_TILE + threadIdx.x / 2;
    const int tq = min(t, T - 1);  // a row past T recomputes row T-1 and writes nothing
    const float scale = 1.0f / sqrtf((float)FLASH_HS);

    float q[FLASH_HS / 2], dy[FLASH_HS / 2], y[FLASH_HS / 2], dq[FLASH_HS / 2];
    flash_load_half(q, qkv + ((size_t)b * T + tq) * 3 * C + h * FLASH_HS, half);
    flash_load_half(dy, dout + ((size_t)b * T + tq) * C + h * FLASH_HS, half);
    flash_load_half(y, out + ((size_t)b * T + tq) * C + h * FLASH_HS, half);  // as rounded to floatX
    float d_part = 0.0f;
#pragma unroll
    for (int i = 0; i < FLASH_HS / 2; i++) { d_part = fmaf(dy[i], y[i], d_part); dq[i] = 0.0f; }
    const float D = d_part + __shfl_xor_sync(0xffffffffu, d_part, 1);
    const float lse_t = lse[(size_t)bh * T + tq];
    for (int kt = 0; kt <= q_tile; kt++) {
        __syncthreads();
        flash_load_tile(k_tile, qkv + C + h * FLASH_HS, b, kt, T, 3 * C);
        flash_load_tile(v_tile, qkv + 2 * C + h * FLASH_HS, b, kt, T, 3 * C);
        __syncthreads();
        for (int j = 0; j < FLASH_TILE; j++) {
            const float score = flash_row_dot(q, k_tile[j], half) * scale;
            const float dp = flash_row_dot(dy, v_tile[j], half);
            const float p = kt * FLASH_TILE + j <= tq ? expf(score - lse_t) : 0.0f;  // causal mask
            flash_row_axpy(dq, p * (dp - D), k_tile[j], half);
        }
    }
    if (t < T) {
        flash_store_half(dinp + ((size_t)b * T + t) * 3 * C + h * FLASH_HS, dq, scale, half);
        if (half == 0) dsum[(size_t)bh * T + t] = D;
    }
}

// dk, dv into dinp's k and v columns (B,T,3C); dout (B,T,C), qkv (B,T,3C), lse and dsum (B,NH,T)
// as the forward and the dq kernel left them. Grid (B·NH, key tiles); a thread pair owns key row s
// and runs over the query rows t >= s, a query tile at a time:
//   p = exp(scale·q_t·k − lse_t),  dv += p·dy_t,  dk += p·(dy_t·v − D_t)·q_t;   dk·scale at the end.
// A key row past T computes row T-1's dot products, masks them all (s > t) and writes nothing.
template <typename floatX>
__global__ void __launch_bounds__(FLASH_THREADS) flash_attention_backward_dkdv_kernel(floatX* dinp, const floatX* dout, const floatX* qkv,
                                                                                      const float* lse, const float* dsum, int T, int NH) {
    __shared__ __align__(16) float q_tile[FLASH_TILE][FLASH_HS];
    __shared__ __align__(16) float dy_tile[FLASH_TILE][FLASH_HS];
    __shared__ float lse_tile[FLASH_TILE], dsum_tile[FLASH_TILE];
    const int C = NH * FLASH_HS;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int k_tile_idx = blockIdx.y;  // tile 0 (the most query tiles) first
    const int half = threadIdx.x % 2;
    const int s = k_tile_idx * FLASH_TILE + threadIdx.x / 2;
    const int sk = min(s, T - 1);
    const float scale = 1.0f / sqrtf((float)FLASH_HS);

    float k[FLASH_HS / 2], v[FLASH_HS / 2], dk[FLASH_HS / 2], dv[FLASH_HS / 2];
    flash_load_half(k, qkv + ((size_t)b * T + sk) * 3 * C + C + h * FLASH_HS, half);
    flash_load_half(v, qkv + ((size_t)b * T + sk) * 3 * C + 2 * C + h * FLASH_HS, half);
#pragma unroll
    for (int i = 0; i < FLASH_HS / 2; i++) { dk[i] = 0.0f; dv[i] = 0.0f; }
    for (int qt = k_tile_idx; qt < (int)gridDim.y; qt++) {  // query tiles from the diagonal on
        __syncthreads();
        flash_load_tile(q_tile, qkv + h * FLASH_HS, b, qt, T, 3 * C);
        flash_load_tile(dy_tile, dout + h * FLASH_HS, b, qt, T, C);
        for (int r = threadIdx.x; r < FLASH_TILE; r += blockDim.x) {
            const int t = qt * FLASH_TILE + r;
            lse_tile[r] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
            dsum_tile[r] = t < T ? dsum[(size_t)bh * T + t] : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < FLASH_TILE; r++) {
            const int t = qt * FLASH_TILE + r;
            const float score = flash_row_dot(k, q_tile[r], half) * scale;
            const float dp = flash_row_dot(v, dy_tile[r], half);
            const float p = s <= t && t < T ? expf(score - lse_tile[r]) : 0.0f;  // causal mask; rows past T
            flash_row_axpy(dv, p, dy_tile[r], half);
            flash_row_axpy(dk, p * (dp - dsum_tile[r]), q_tile[r], half);
        }
    }
    if (s < T) {
        flash_store_half(dinp + ((size_t)b * T + s) * 3 * C + C + h * FLASH_HS, dk, scale, half);
        flash_store_half(dinp + ((size_t)b * T + s) * 3 * C + 2 * C + h * FLASH_HS, dv, 1.0f, half);
    }
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

// out (B,T,C), lse (B,NH,T) fp32 for the backward; qkv (B,T,3C) is read in place
template <typename floatX>
void flash_attention_forward(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int NH, cudaStream_t stream) {
    flash_check_args("flash_attention_forward", C, NH, qkv, qkv);
    if (B == 0 || T == 0) return;
    const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
    flash_attention_forward_kernel<<<grid, FLASH_THREADS, 0, stream>>>(out, lse, qkv, T, NH);
    cudaLaunchCheck();
}

// dinp (B,T,3C) = gradient wrt qkv (written, not accumulated); dsum (B,NH,T) fp32 scratch; dout,
// out (B,T,C) and lse as the forward's; qkv (B,T,3C) as the forward read it
template <typename floatX>
void flash_attention_backward(floatX* dinp, float* dsum, const floatX* dout, const floatX* out, const floatX* qkv, const float* lse,
                              int B, int T, int C, int NH, cudaStream_t stream) {
    flash_check_args("flash_attention_backward", C, NH, qkv, dout);
    if (B == 0 || T == 0) return;
    const dim3 grid(B * NH, ceil_div(T, FLASH_TILE));
    flash_attention_backward_dq_kernel<<<grid, FLASH_THREADS, 0, stream>>>(dinp, dsum, dout, out, qkv, lse, T, NH);
    cudaLaunchCheck();
    flash_attention_backward_dkdv_kernel<<<grid, FLASH_THREADS, 0, stream>>>(dinp, dout, qkv, lse, dsum, T, NH);
    cudaLaunchCheck();
}
