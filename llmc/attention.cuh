/*
Causal multi-head self-attention, llm.c style (no flash attention): the full (T,T) attention
matrix is materialised, which the backward reuses. Forward and activation-gradient backward.

inp (B,T,3C) holds q in [0,C), k in [C,2C), v in [2C,3C), head h at offset h*hs in each (hs =
C/NH). Forward:
  1. split the heads: q, k, v (B,NH,T,hs) each, contiguous, in qkvr (3,B,NH,T,hs)
  2. preatt (B,NH,T,T) = q·kᵀ                 one strided-batched matmul, into att
  3. att = softmax(preatt / sqrt(hs)) causal   in place; positions s > t are written as exact 0
  4. out[:, :, h*hs:(h+1)*hs] = att_h · v_h    one batched matmul per head, writing straight into
                                               the (B,T,C) layout (row stride C), so no unpermute
Backward (dout (B,T,C) -> dinp (B,T,3C)):
  dy = dout split into heads (B,NH,T,hs)       in scratch
  datt = dy·vᵀ,  dv = attᵀ·dy
  dpreatt = softmax backward of datt           in place in datt, scale included
  dq = dpreatt·k,  dk = dpreattᵀ·q
  dinp = the heads of dq, dk, dv merged back into (B,T,3C)
Matmuls use cuBLASLt with fp32 compute (no TF32). In bf16 the scores and probabilities are
stored in bf16 between steps (as in llm.c), which costs accuracy on large logits.
*/
#pragma once
#include <math.h>
#include "cuda_common.cuh"
#include "matmul.cuh"

// ----------------------------------------------------------------------------
// head split/merge: (B,T,·) rows with row stride ld, head h at column h*hs  <->  (B,NH,T,hs)

template <typename floatX>
__global__ void split_heads_kernel(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int ld) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // index into out (B,NH,T,hs)
    if (idx >= (size_t)B * NH * T * hs) return;
    int d = (int)(idx % hs);
    size_t r = idx / hs;
    int t = (int)(r % T); r /= T;
    int h = (int)(r % NH);
    size_t b = r / NH;
    out[idx] = inp[(b * T + t) * ld + (size_t)h * hs + d];
}

template <typename floatX>
__global__ void merge_heads_kernel(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int ld) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // index into inp (B,NH,T,hs)
    if (idx >= (size_t)B * NH * T * hs) return;
    int d = (int)(idx % hs);
    size_t r = idx / hs;
    int t = (int)(r % T); r /= T;
    int h = (int)(r % NH);
    size_t b = r / NH;
    out[(b * T + t) * ld + (size_t)h * hs + d] = inp[idx];
}

template <typename floatX>
void split_heads(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int ld, cudaStream_t stream) {
    size_t n = (size_t)B * NH * T * hs;
    if (n == 0) return;
    split_heads_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256, 0, stream>>>(out, inp, B, T, NH, hs, ld);
    cudaLaunchCheck();
}

template <typename floatX>
void merge_heads(floatX* out, const floatX* inp, int B, int T, int NH, int hs, int ld, cudaStream_t stream) {
    size_t n = (size_t)B * NH * T * hs;
    if (n == 0) return;
    merge_heads_kernel<<<(unsigned)ceil_div(n, (size_t)256), 256, 0, stream>>>(out, inp, B, T, NH, hs, ld);
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
// probabilities (the backward reads them); inp (B,T,3C) is not modified
template <typename floatX>
void attention_forward(floatX* out, floatX* qkvr, floatX* att, const floatX* inp,
                       int B, int T, int C, int NH, cudaStream_t stream) {
    if (C % NH != 0) { fprintf(stderr, "attention_forward: C %d not divisible by NH %d\n", C, NH); exit(EXIT_FAILURE); }
    if (B == 0 || T == 0) return;
    const int hs = C / NH;
    const size_t head_elems = (size_t)B * NH * T * hs;
    const cudaDataType_t dt = cuda_dtype<floatX>();
    floatX* q = qkvr;
    floatX* k = qkvr + head_elems;
    floatX* v = qkvr + 2 * head_elems;
    split_heads(q, inp, B, T, NH, hs, 3 * C, stream);
    split_heads(k, inp + C, B, T, NH, hs, 3 * C, stream);
    split_heads(v, inp + 2 * C, B, T, NH, hs, 3 * C, stream);

    // preatt (T,T) = q (T,hs) · kᵀ for each of the B·NH heads
    const long long TT = (long long)T * T, Ths = (long long)T * hs;
    matmul_cublaslt_batched(att, q, k, T, T, hs, false, true, 0, 0, 0, B * NH, Ths, Ths, TT,
                            dt, dt, 1.0f, false, stream);

    const int rows = B * NH * T, block_size = 256;
    const float scale = 1.0f / sqrtf((float)hs);
    attention_softmax_forward_kernel<<<ceil_div(rows, block_size / 32), block_size, 0, stream>>>(att, scale, rows, T);
    cudaLaunchCheck();

    // out[b, :, h*hs:(h+1)*hs] (T,hs), row stride C = att[b,h] (T,T) · v[b,h] (T,hs): per head h,
    // batched over b (batch strides NH·T·T, NH·T·hs and T·C)
    for (int h = 0; h < NH; h++) {
        matmul_cublaslt_batched(out + (size_t)h * hs, att + (size_t)h * TT, v + (size_t)h * Ths, T, hs, T,
                                false, false, T, hs, C, B, NH * TT, NH * Ths, (long long)T * C,
                                dt, dt, 1.0f, false, stream);
    }
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
    split_heads(dy, dout, B, T, NH, hs, C, stream);

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

    merge_heads(dinp, dq, B, T, NH, hs, 3 * C, stream);
    merge_heads(dinp + C, dk, B, T, NH, hs, 3 * C, stream);
    merge_heads(dinp + 2 * C, dv, B, T, NH, hs, 3 * C, stream);
}
