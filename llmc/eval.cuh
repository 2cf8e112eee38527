/*
Eval-only kernels (SPEC §6) that no training pass needs.
  explained_variance_rows  per token 1 - sum_d (x_hat - x)^2 / sum_d (x - mean_x)^2, where mean_x
                           is the mean of x over the batch's tokens (the standard definition)
dev/cuda/eval.cu checks it against a CPU reference in double and times it.
*/
#pragma once
#include "cuda_common.cuh"
#include "sae.cuh"

// one warp per row; xsum (C) holds the column sums of x over the N rows, divided by N here
template <typename floatX>
__global__ void explained_variance_rows_kernel(float* rows, const floatX* x_hat, const floatX* x, const float* xsum, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;  // row is the same for all 32 lanes: whole warps leave together
    const floatX* xr = x + (size_t)row * C;
    const floatX* hr = x_hat + (size_t)row * C;
    float num = 0.0f, den = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float xi = to_float(xr[i]);
        float d = to_float(hr[i]) - xi;
        float c = xi - xsum[i] / N;
        num += d * d;
        den += c * c;
    }
    num = warp_reduce_sum(num);
    den = warp_reduce_sum(den);
    if (lane == 0) rows[row] = 1.0f - num / den;
}

// rows (N) out; x_hat, x (N,C) floatX; xsum (C) fp32 scratch
template <typename floatX>
void explained_variance_rows(float* rows, const floatX* x_hat, const floatX* x, float* xsum, int N, int C, cudaStream_t stream) {
    if (N == 0) return;
    bias_grad_colsum(xsum, x, N, C, false, stream);
    const int block_size = 256, rows_per_block = block_size / 32;
    explained_variance_rows_kernel<<<ceil_div(N, rows_per_block), block_size, 0, stream>>>(rows, x_hat, x, xsum, N, C);
    cudaLaunchCheck();
}
