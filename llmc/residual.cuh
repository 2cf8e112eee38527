/*
Residual adds and dtype conversion copies: the trivial elementwise kernels.
  residual_forward  out = inp1 + inp2           (the residual stream)
  add_inplace       out += inp                  (gradient accumulation along the residual)
  cast_copy         out = (Tout)in              (fp32 master weights -> bf16 copies and back)
All add in fp32 and round once to the storage type. In-place use (out aliasing an input) is fine:
each element is read and written by the same thread. residual_forward / add_inplace use 128-bit
loads when every pointer is 16-byte aligned, else one element per thread.
*/
#pragma once
#include "cuda_common.cuh"

// ----------------------------------------------------------------------------
// kernels

template <typename floatX>
__global__ void residual_forward_kernel(floatX* out, const floatX* inp1, const floatX* inp2, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<floatX>(to_float(inp1[i]) + to_float(inp2[i]));
}

template <typename floatX>
__global__ void residual_forward_vec_kernel(floatX* out, const floatX* inp1, const floatX* inp2, size_t n) {
    constexpr int V = Packed128<floatX>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n) return;
    if (i + V <= n) {
        Packed128<floatX> a = load128(inp1 + i), b = load128(inp2 + i), o;
        for (int k = 0; k < V; k++) o[k] = from_float<floatX>(to_float(a[k]) + to_float(b[k]));
        store128(out + i, o);
    } else {  // the tail: fewer than V elements left
        for (size_t j = i; j < n; j++) out[j] = from_float<floatX>(to_float(inp1[j]) + to_float(inp2[j]));
    }
}

template <typename Tout, typename Tin>
__global__ void cast_copy_kernel(Tout* out, const Tin* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<Tout>(to_float(in[i]));
}

// ----------------------------------------------------------------------------
// launchers

// out (n) = inp1 (n) + inp2 (n)
template <typename floatX>
void residual_forward(floatX* out, const floatX* inp1, const floatX* inp2, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const int block_size = 256;
    if (is_aligned16(out) && is_aligned16(inp1) && is_aligned16(inp2)) {
        const size_t per_block = (size_t)block_size * Packed128<floatX>::size;
        residual_forward_vec_kernel<<<(unsigned)ceil_div(n, per_block), block_size, 0, stream>>>(out, inp1, inp2, n);
    } else {
        residual_forward_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, inp1, inp2, n);
    }
    cudaLaunchCheck();
}

// out (n) += inp (n)
template <typename floatX>
void add_inplace(floatX* out, const floatX* inp, size_t n, cudaStream_t stream) {
    residual_forward(out, out, inp, n, stream);
}

// out (n) = in (n) converted to Tout (round to nearest even for fp32 -> bf16)
template <typename Tout, typename Tin>
void cast_copy(Tout* out, const Tin* in, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const int block_size = 256;
    cast_copy_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, in, n);
    cudaLaunchCheck();
}
