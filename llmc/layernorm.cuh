/*
LayerNorm over the last axis (eps 1e-5, biased variance, as nn.LayerNorm): forward, and the
backward for the activation gradient only (GPT-2 is frozen: no dweight, no dbias).

One warp per row, fp32 statistics: mean first, then the variance as the mean of squared
deviations (two passes over the row, the second mostly from L1), which is as accurate as
PyTorch's Welford in fp32. Rows are independent, so the result does not depend on the launch
shape and is the same bits on every run.
*/
#pragma once
#include "cuda_common.cuh"

#define LAYERNORM_EPS 1e-5f

// mean and rstd of one row x (C), computed by a whole warp (all 32 lanes call it); every lane
// gets both
template <typename floatX>
__device__ __forceinline__ void layernorm_row_stats(const floatX* x, int C, int lane, float& mean, float& rstd) {
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += to_float(x[c]);
    mean = warp_reduce_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) { float d = to_float(x[c]) - mean; var += d * d; }
    var = warp_reduce_sum(var) / C;
    rstd = 1.0f / sqrtf(var + LAYERNORM_EPS);
}

// ----------------------------------------------------------------------------
// forward: out = (x - mean) * rstd * weight + bias

template <typename floatX>
__global__ void layernorm_forward_kernel(floatX* out, float* mean, float* rstd, const floatX* inp,
                                         const floatX* weight, const floatX* bias, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;  // whole warps leave together; nothing below synchronises the block
    const floatX* x = inp + (size_t)row * C;
    floatX* o = out + (size_t)row * C;
    float m, s;
    layernorm_row_stats(x, C, lane, m, s);
    // each lane reads then writes its own elements, so out == inp is allowed
    for (int c = lane; c < C; c += 32) {
        float n = (to_float(x[c]) - m) * s;
        o[c] = from_float<floatX>(n * to_float(weight[c]) + to_float(bias[c]));
    }
    if (lane == 0) {
        if (mean != NULL) mean[row] = m;
        if (rstd != NULL) rstd[row] = s;
    }
}

// out (N,C), mean (N) and rstd (N) fp32 or NULL (not stored), inp (N,C), weight (C), bias (C)
template <typename floatX>
void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                       const floatX* bias, int N, int C, cudaStream_t stream) {
    if (N == 0) return;
    const int block_size = 256, rows_per_block = block_size / 32;
    layernorm_forward_kernel<<<ceil_div(N, rows_per_block), block_size, 0, stream>>>(out, mean, rstd, inp, weight, bias, N, C);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// backward, activation gradient only. With xhat = (x - mean)·rstd and y = xhat·w + b:
//   dxhat = dy·w
//   dx    = rstd · (dxhat − mean_c(dxhat) − xhat · mean_c(dxhat·xhat))
// (the two means are the gradient through mean and through rstd). One warp per row: one pass
// for the two sums, one to write.

template <typename floatX>
__global__ void layernorm_backward_dinp_kernel(floatX* dinp, const floatX* dresidual, const floatX* dout, const floatX* inp,
                                               const floatX* weight, const float* mean, const float* rstd, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const floatX* x = inp + (size_t)row * C;
    const floatX* dy = dout + (size_t)row * C;
    floatX* dx = dinp + (size_t)row * C;
    const floatX* dr = dresidual ? dresidual + (size_t)row * C : nullptr;
    float m, s;
    if (mean != NULL && rstd != NULL) { m = mean[row]; s = rstd[row]; }
    else layernorm_row_stats(x, C, lane, m, s);  // not stored by the forward: recompute

    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dxhat = to_float(dy[c]) * to_float(weight[c]);
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (to_float(x[c]) - m) * s;
    }
    float mean_dxhat = warp_reduce_sum(sum_dxhat) / C;
    float mean_dxhat_xhat = warp_reduce_sum(sum_dxhat_xhat) / C;

    // each lane reads then writes its own elements, so dinp may be dout or dresidual
    for (int c = lane; c < C; c += 32) {
        float xhat = (to_float(x[c]) - m) * s;
        float dxhat = to_float(dy[c]) * to_float(weight[c]);
        float g = s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        if (dr) g += to_float(dr[c]);
        dx[c] = from_float<floatX>(g);
    }
}

// dinp (N,C) = dresidual + dL/dinp, given dout (N,C) = dL/dout, the forward's inp (N,C) and weight
// (C), and its mean/rstd (N) (both NULL: recomputed from inp). dresidual (N,C): the gradient the
// residual path brings to the same input, or NULL (none); it may be dinp itself (accumulate).
template <typename floatX>
void layernorm_backward_dinp(floatX* dinp, const floatX* dresidual, const floatX* dout, const floatX* inp, const floatX* weight,
                             const float* mean, const float* rstd, int N, int C, cudaStream_t stream) {
    if (N == 0) return;
    const int block_size = 256, rows_per_block = block_size / 32;
    layernorm_backward_dinp_kernel<<<ceil_div(N, rows_per_block), block_size, 0, stream>>>(
        dinp, dresidual, dout, inp, weight, mean, rstd, N, C);
    cudaLaunchCheck();
}
