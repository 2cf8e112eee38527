/*
Shared CUDA helpers: error-check macros, the bf16/fp32 storage types, and small
conversions every kernel uses: per-value to_float / from_float, and cast_copy for whole arrays.
Also the fixed-order reductions and the 128-bit packed loads. Kernels are templated on their
storage type `floatX` (float or __nv_bfloat16) and always accumulate in fp32.
*/
#pragma once
#include <stdio.h>
#include <stdlib.h>
// Built with HOST_EMULATION (test/cuda_host_emulation.h, which runs kernels on a CPU), what the
// CUDA headers declare comes from the emulation, and the event scope needs its runtime with events
// (test/mock_cuda_runtime.h); everything else here is compiled as it is.
#ifndef HOST_EMULATION
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <nvtx3/nvToolsExt.h>
#endif

// ----------------------------------------------------------------------------
// error checking: every CUDA / cuBLAS call and every launch goes through one of these

inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) (cuda_check(err, __FILE__, __LINE__))

// after every kernel launch
#define cudaLaunchCheck() (cuda_check(cudaGetLastError(), __FILE__, __LINE__))

inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "[cuBLAS ERROR] %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(status) (cublas_check((status), __FILE__, __LINE__))

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------
// storage types: kernels load/store floatX, compute in float

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// out (n) = in (n) converted to Tout (round to nearest even for fp32 -> bf16): the trainer's bf16
// copies of the fp32 master weights, and weights loaded as fp32 into bf16 storage
template <typename Tout, typename Tin>
__global__ void cast_copy_kernel(Tout* out, const Tin* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<Tout>(to_float(in[i]));
}

template <typename Tout, typename Tin>
void cast_copy(Tout* out, const Tin* in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const int block_size = 256;
    cast_copy_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, in, n);
    cudaLaunchCheck();
}

// NVTX range that closes at the end of the scope, so an Nsight timeline reads like the code
struct NvtxRange {
    NvtxRange(const char* name) { nvtxRangePushA(name); }
    ~NvtxRange() { nvtxRangePop(); }
};
#define NVTX_RANGE_FN() NvtxRange nvtx_range_fn(__func__)

template <typename T> inline cudaDataType_t cuda_dtype();
template <> inline cudaDataType_t cuda_dtype<float>() { return CUDA_R_32F; }
template <> inline cudaDataType_t cuda_dtype<bf16>() { return CUDA_R_16BF; }

#if !defined(HOST_EMULATION) || defined(MOCK_CUDA_RUNTIME)

// CUDA events that bracket a scope on one stream: `start` is recorded now, `end` when the scope
// closes. The scope's GPU time is cudaEventElapsedTime(start, end), read once the stream has
// passed `end`; nothing here waits. Not copyable: each pair is recorded once per scope.
struct EventRange {
    cudaEvent_t end;
    cudaStream_t stream;
    EventRange(cudaEvent_t start, cudaEvent_t end_, cudaStream_t s) : end(end_), stream(s) { cudaCheck(cudaEventRecord(start, stream)); }
    ~EventRange() { cudaCheck(cudaEventRecord(end, stream)); }
    EventRange(const EventRange&) = delete;
    EventRange& operator=(const EventRange&) = delete;
};
#endif

// ----------------------------------------------------------------------------
// reductions in a fixed order: the same inputs and launch shape give the same bits on every
// run (no float atomics), which bit-exact resume relies on

template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;  // every lane holds the warp's sum
}

__device__ __forceinline__ float warp_reduce_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over a 1D block; every thread gets the result. blockDim.x must be a multiple of 32 (at
// most 1024) and every thread of the block must call it: it synchronises.
template <typename T>
__device__ inline T block_reduce_sum(T v) {
    __shared__ T warp_sums[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    v = warp_reduce_sum(v);
    __syncthreads();  // an earlier call in the same kernel may still be reading warp_sums
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = lane < num_warps ? warp_sums[lane] : (T)0;
    return warp_reduce_sum(v);
}

// out[0] = (accumulate ? out[0] : 0) + sum(in[0..n)), one block, summed in double in a fixed
// order. The second pass of every two-pass deterministic reduction (partials -> scalar).
// Kernels in headers are `static` (or templates) so several translation units can include them.
static __global__ void deterministic_sum_kernel(float* out, const float* in, int n, bool accumulate) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += (double)in[i];
    acc = block_reduce_sum(acc);
    if (threadIdx.x == 0) out[0] = (float)((accumulate ? (double)out[0] : 0.0) + acc);
}

inline void deterministic_sum(float* out, const float* in, int n, bool accumulate, cudaStream_t stream) {
    deterministic_sum_kernel<<<1, 1024, 0, stream>>>(out, in, n, accumulate);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// 128-bit packed loads/stores for elementwise kernels (4 floats or 8 bf16 per access). The
// pointer must be 16-byte aligned: launchers check is_aligned16() and fall back to a scalar
// kernel otherwise.
#include <stdint.h>

template <typename T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
    __device__ __forceinline__ T& operator[](int i) { return v[i]; }
    __device__ __forceinline__ const T& operator[](int i) const { return v[i]; }
};
template <typename T>
__device__ __forceinline__ Packed128<T> load128(const T* p) { return *reinterpret_cast<const Packed128<T>*>(p); }
template <typename T>
__device__ __forceinline__ void store128(T* p, const Packed128<T>& x) { *reinterpret_cast<Packed128<T>*>(p) = x; }
inline bool is_aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
