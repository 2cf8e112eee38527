/*
The SAE backward's one elementwise pass over (N, D), fused (its launcher,
sae_l1_relu_backward_stats, is in sae.cuh with the unfused kernels it replaces in training):
  dpre = (dc + l1_scale) · [c > 0]     in place over dc (sae_l1_relu_backward)
  db_enc (+)= colsum(dpre)             (bias_grad_colsum)
  Σ|c|, count(c > 0), fired flags      (sae_sparsity_l0)
The three used to read the (N, D) activations five times (c, then dc and c, then dpre) and write
once; fused, c and dc are read once and dpre written once. At the paper shape in bf16 that is
2.3 GB instead of 3.8 GB per micro-batch.

Built with HOST_EMULATION defined, this file takes the CUDA built-ins from
test/cuda_host_emulation.h instead (each block's threads as fibers on a CPU), so
test/test_sae_emulated.cpp checks the kernel against a CPU reference on a machine without a GPU.
That is an emulation, not a GPU run.
*/
#pragma once
#include "cuda_common.cuh"

// Layout: a block of 1024 threads owns tiles of 32·VEC columns and all N rows. Thread
// (tx = id % 32, ty = id / 32) holds VEC consecutive columns (one 16-byte pack, or one element
// when VEC = 1) and rows ty, ty + 32, ...; so a warp reads 32 packs of one row, contiguous. Each
// column's 32 row-lane sums are then added in a fixed order, the order bias_grad_colsum uses, so
// db_enc has the same bits as the unfused path's. The tiles are walked with a grid stride (grid
// capped at SAE_STATS_MAX_PARTIALS), and each block leaves one L1 and one L0 partial, summed
// later in a fixed order: no float atomics, and the grid depends only on (N, D).
#define SAE_FUSED_ROWS 32
#define SAE_FUSED_THREADS 1024

// dpre (N,D) floatX: dc in, dpre out; db_enc (D) fp32, overwritten or (accumulate) added to;
// l1_partials, l0_partials (gridDim.x) out; fired (D) set to 1 where a column has c > 0;
// c (N,D) floatX. VEC > 1 needs D % VEC == 0 and 16-byte aligned dpre and c.
template <typename floatX, int VEC>
__global__ void __launch_bounds__(SAE_FUSED_THREADS)
sae_l1_relu_backward_stats_kernel(floatX* dpre, float* db_enc, float* l1_partials, unsigned long long* l0_partials,
                                  unsigned int* fired, const floatX* c, float l1_scale, int N, int D, bool accumulate) {
    __shared__ float col_part[SAE_FUSED_ROWS][32 * VEC + 1];  // +1: the column reads below spread over banks
    __shared__ float l1_part[SAE_FUSED_THREADS];
    __shared__ unsigned long long l0_part[SAE_FUSED_THREADS];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int tile_cols = 32 * VEC;
    const int tiles = (D + tile_cols - 1) / tile_cols;  // D <= 2^30: no int overflow here or below
    float l1 = 0.0f;
    unsigned long long l0 = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int col0 = tile * tile_cols + tx * VEC;
        float sum[VEC];
        unsigned int count[VEC];  // <= N / 32 each
        for (int k = 0; k < VEC; k++) { sum[k] = 0.0f; count[k] = 0; }
        if (col0 < D) {  // VEC > 1 only when D % VEC == 0: a pack is wholly in or wholly out
            for (int row = ty; row < N; row += SAE_FUSED_ROWS) {
                const size_t at = (size_t)row * D + col0;
                Packed128<floatX> cp, dp;  // VEC == 1 uses element 0
                if (VEC == 1) { cp[0] = c[at]; dp[0] = dpre[at]; }
                else { cp = load128(c + at); dp = load128(dpre + at); }
                for (int k = 0; k < VEC; k++) {
                    const float ci = to_float(cp[k]);
                    dp[k] = from_float<floatX>(ci > 0.0f ? to_float(dp[k]) + l1_scale : 0.0f);
                    sum[k] += to_float(dp[k]);  // the stored value, as the dW_enc matmul reads it
                    l1 += fabsf(ci);
                    count[k] += ci > 0.0f ? 1u : 0u;
                }
                if (VEC == 1) dpre[at] = dp[0];
                else store128(dpre + at, dp);
            }
            for (int k = 0; k < VEC; k++) {
                if (count[k] > 0) fired[col0 + k] = 1u;  // plain store of the same value: no race on the result
                l0 += count[k];
            }
        }
        for (int k = 0; k < VEC; k++) col_part[ty][tx * VEC + k] = sum[k];
        __syncthreads();
        if ((int)threadIdx.x < tile_cols) {  // tile_cols <= 256 < 1024 threads: one column each
            const int col = tile * tile_cols + threadIdx.x;
            if (col < D) {
                float total = 0.0f;
                for (int r = 0; r < SAE_FUSED_ROWS; r++) total += col_part[r][threadIdx.x];
                db_enc[col] = accumulate ? db_enc[col] + total : total;
            }
        }
        __syncthreads();  // col_part is rewritten by the next tile
    }
    // the block's partials: a tree in shared memory, the same order on every run
    l1_part[threadIdx.x] = l1;
    l0_part[threadIdx.x] = l0;
    __syncthreads();
    for (int s = SAE_FUSED_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            l1_part[threadIdx.x] += l1_part[threadIdx.x + s];
            l0_part[threadIdx.x] += l0_part[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        l1_partials[blockIdx.x] = l1_part[0];
        l0_partials[blockIdx.x] = l0_part[0];
    }
}
