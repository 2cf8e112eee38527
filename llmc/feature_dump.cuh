/*
--dump-features on the GPU: merges a batch of SAE activations c (N,D) into each feature's
running firing count and top-K (value, stream position), exactly as feature_dump_add in
llmc/feature_dump.h does on the CPU (same order: value descending, earlier position first on a
tie; same result bit for bit, since both are the unique top-K of a total order). The running
state lives on the device, (D) + (D,K) + (D,K); feature_dump_download copies it into a host
FeatureDump, which feature_dump_write turns into files. Bench and CPU check:
dev/cuda/feature_dump.cu.
*/
#pragma once
#include "cuda_common.cuh"
#include "feature_dump.h"

#define FEATURE_DUMP_MAX_K 32  // the per-thread list is a local array of this size

// One thread per feature: a warp reads 32 consecutive features of a row (coalesced) and walks
// down the N rows in order, so positions arrive ascending and a tie never displaces an entry.
// Loads for ROWS rows are issued before any is used: with one thread per feature there are only
// D threads, and independent loads in flight are what keeps the memory system busy. Most values
// are zero or below the K-th, so the insert (local memory) is rare after the first rows.
template <typename floatX, int ROWS = 8>
__global__ void feature_dump_add_kernel(unsigned long long* fire_count, float* top_values, long long* top_pos,
                                        const floatX* __restrict__ c, int N, int D, int K, long long first_pos) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float vals[FEATURE_DUMP_MAX_K];
    long long pos[FEATURE_DUMP_MAX_K];
    for (int k = 0; k < K; k++) { vals[k] = top_values[(size_t)d * K + k]; pos[k] = top_pos[(size_t)d * K + k]; }
    float kth = vals[K - 1];  // the value to beat, kept in a register: most firings stop at this compare
    unsigned long long fires = 0;
    for (int n0 = 0; n0 < N; n0 += ROWS) {
        float v[ROWS];
        #pragma unroll
        for (int r = 0; r < ROWS; r++) v[r] = n0 + r < N ? to_float(c[(size_t)(n0 + r) * D + d]) : 0.0f;
        #pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (!(v[r] > 0.0f)) continue;  // zero, negative or NaN: not a firing
            fires++;
            if (!(v[r] > kth)) continue;
            int j = K - 1;  // shift down everything strictly smaller, then insert
            while (j > 0 && vals[j - 1] < v[r]) { vals[j] = vals[j - 1]; pos[j] = pos[j - 1]; j--; }
            vals[j] = v[r];
            pos[j] = first_pos + n0 + r;
            kth = vals[K - 1];
        }
    }
    fire_count[d] += fires;
    for (int k = 0; k < K; k++) { top_values[(size_t)d * K + k] = vals[k]; top_pos[(size_t)d * K + k] = pos[k]; }
}

// fire_count (D), top_values (D,K), top_pos (D,K) on the device, updated in place; c (N,D);
// batches must come in stream order (first_pos increasing by N each call)
template <typename floatX>
void feature_dump_add_gpu(unsigned long long* fire_count, float* top_values, long long* top_pos, const floatX* c, int N, int D,
                          int K, long long first_pos, cudaStream_t stream) {
    if (K < 1 || K > FEATURE_DUMP_MAX_K) {
        fprintf(stderr, "feature_dump_add_gpu: K = %d, must be in 1..%d\n", K, FEATURE_DUMP_MAX_K);
        exit(EXIT_FAILURE);
    }
    if (N <= 0 || D <= 0) return;
    const int block = 128;  // D / 128 blocks: 360 at D = 46080, enough to spread over every SM
    feature_dump_add_kernel<floatX><<<ceil_div(D, block), block, 0, stream>>>(fire_count, top_values, top_pos, c, N, D, K, first_pos);
    cudaLaunchCheck();
}

// the empty state: no firings, values 0, positions -1 (all bytes 0xff is -1 in two's complement)
inline void feature_dump_reset_gpu(unsigned long long* fire_count, float* top_values, long long* top_pos, int D, int K,
                                   cudaStream_t stream) {
    cudaCheck(cudaMemsetAsync(fire_count, 0, (size_t)D * sizeof(unsigned long long), stream));
    cudaCheck(cudaMemsetAsync(top_values, 0, (size_t)D * K * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(top_pos, 0xff, (size_t)D * K * sizeof(long long), stream));
}

// device state -> host FeatureDump (already feature_dump_init-ed to D, K), with the token count
inline void feature_dump_download(FeatureDump* fd, const unsigned long long* fire_count, const float* top_values,
                                  const long long* top_pos, long long tokens) {
    static_assert(sizeof(unsigned long long) == sizeof(long long), "fire_count is copied as is");
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(fd->fire_count.data(), fire_count, (size_t)fd->D * sizeof(long long), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(fd->top_values.data(), top_values, (size_t)fd->D * fd->K * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(fd->top_pos.data(), top_pos, (size_t)fd->D * fd->K * sizeof(long long), cudaMemcpyDeviceToHost));
    fd->tokens = tokens;
}
