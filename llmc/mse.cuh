/*
Mean-squared error, forward and backward in one pass (SPEC §4 MSE): the local-mode loss
MSE(x_hat, x) and the e2e+ds downstream terms MSE(spliced resid_pre_k, clean resid_pre_k).
The sum of squares is reduced deterministically (one partial per block, then a fixed-order sum)
so runs are bit-reproducible.
*/
#pragma once
#include <algorithm>
#include "cuda_common.cuh"

#define MSE_BLOCK_SIZE 512
#define MSE_MAX_BLOCKS 1024
// Scratch for the per-block partials, one array for the whole program. Rule: call
// mse_forward_backward from one stream at a time (two calls in flight at once would share these
// partials). The trainer launches everything on stream 0, so it holds.
static __device__ float mse_partials[MSE_MAX_BLOCKS];

// loss = coeff · mean((a − b)²) / grad_accum  =>  dloss/da = 2 (a − b) · coeff/(n·grad_accum)
template <typename floatX>
__global__ void mse_forward_backward_kernel(float* partials, floatX* dA, const floatX* a, const floatX* b, size_t n, float grad_scale) {
    float sum_sq = 0.0f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float diff = to_float(a[i]) - to_float(b[i]);
        sum_sq += diff * diff;
        if (dA != nullptr) dA[i] = from_float<floatX>(to_float(dA[i]) + grad_scale * 2.0f * diff);
    }
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum_sq;
}

// loss_sum[0] += Σ (a − b)²  (device scalar, fp32; divide by n on the host for the MSE)
// dA (n) += grad_scale · 2 (a − b), skipped when dA is NULL (forward only, e.g. eval)
// a, b (n) floatX; grad_scale = coeff / (n · grad_accum), computed in double on the host.
// Gradient flows to a only (b is the clean / target side).
template <typename floatX>
void mse_forward_backward(float* loss_sum, floatX* dA, const floatX* a, const floatX* b, size_t n, float grad_scale, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (n == 0) return;
    // grid from n alone (not from the device), so the summation order is fixed for a shape
    const int grid = (int)std::min(ceil_div(n, (size_t)MSE_BLOCK_SIZE), (size_t)MSE_MAX_BLOCKS);
    float* partials;
    cudaCheck(cudaGetSymbolAddress((void**)&partials, mse_partials));
    mse_forward_backward_kernel<<<grid, MSE_BLOCK_SIZE, 0, stream>>>(partials, dA, a, b, n, grad_scale);
    cudaLaunchCheck();
    deterministic_sum(loss_sum, partials, grid, true, stream);
}
