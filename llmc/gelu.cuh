/*
GELU, tanh approximation (GPT-2's MLP nonlinearity): forward, and backward in place on the
gradient (frozen model: only the activation gradient is needed).

    gelu(x)  = 0.5·x·(1 + tanh(u)),   u = sqrt(2/π)·(x + 0.044715·x³)
    gelu'(x) = 0.5·(1 + tanh(u)) + 0.5·x·(1 − tanh²(u))·sqrt(2/π)·(1 + 3·0.044715·x²)

The same formulas as PyTorch's F.gelu(approximate='tanh') and its backward, in fp32 with tanhf
(not a fast approximation), so fp32 mode matches PyTorch to a few ulp. Elementwise kernels use
128-bit loads when every pointer is 16-byte aligned, else one element per thread. In place
(out == inp) is fine: each element is read and written by the same thread.
*/
#pragma once
#include "cuda_common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
#define GELU_CUBIC_COEF 0.044715f

__device__ __forceinline__ float gelu_tanh(float x) {
    float u = GELU_SCALING_FACTOR * (x + GELU_CUBIC_COEF * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_tanh_grad(float x) {
    float x2 = x * x;
    float th = tanhf(GELU_SCALING_FACTOR * (x + GELU_CUBIC_COEF * x2 * x));
    float du_dx = GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC_COEF * x2);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
}

// ----------------------------------------------------------------------------
// kernels: one element per thread (any alignment), or one 16-byte pack per thread

template <typename floatX>
__global__ void gelu_forward_kernel(floatX* out, const floatX* inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<floatX>(gelu_tanh(to_float(inp[i])));
}

template <typename floatX>
__global__ void gelu_forward_vec_kernel(floatX* out, const floatX* inp, size_t n) {
    constexpr int V = Packed128<floatX>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n) return;
    if (i + V <= n) {
        Packed128<floatX> x = load128(inp + i), y;
        for (int k = 0; k < V; k++) y[k] = from_float<floatX>(gelu_tanh(to_float(x[k])));
        store128(out + i, y);
    } else {  // the tail: fewer than V elements left
        for (size_t j = i; j < n; j++) out[j] = from_float<floatX>(gelu_tanh(to_float(inp[j])));
    }
}

template <typename floatX>
__global__ void gelu_backward_inplace_kernel(floatX* d_in_out, const floatX* inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d_in_out[i] = from_float<floatX>(to_float(d_in_out[i]) * gelu_tanh_grad(to_float(inp[i])));
}

template <typename floatX>
__global__ void gelu_backward_inplace_vec_kernel(floatX* d_in_out, const floatX* inp, size_t n) {
    constexpr int V = Packed128<floatX>::size;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n) return;
    if (i + V <= n) {
        Packed128<floatX> x = load128(inp + i), d = load128(d_in_out + i);
        for (int k = 0; k < V; k++) d[k] = from_float<floatX>(to_float(d[k]) * gelu_tanh_grad(to_float(x[k])));
        store128(d_in_out + i, d);
    } else {
        for (size_t j = i; j < n; j++)
            d_in_out[j] = from_float<floatX>(to_float(d_in_out[j]) * gelu_tanh_grad(to_float(inp[j])));
    }
}

// ----------------------------------------------------------------------------
// launchers

// out (n) = gelu(inp (n))
template <typename floatX>
void gelu_forward(floatX* out, const floatX* inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const int block_size = 256;
    if (is_aligned16(out) && is_aligned16(inp)) {
        const size_t per_block = (size_t)block_size * Packed128<floatX>::size;
        gelu_forward_vec_kernel<<<(unsigned)ceil_div(n, per_block), block_size, 0, stream>>>(out, inp, n);
    } else {
        gelu_forward_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(out, inp, n);
    }
    cudaLaunchCheck();
}

// d_in_out (n) *= gelu'(inp (n)): on entry the gradient wrt gelu's output, on exit wrt its input
template <typename floatX>
void gelu_backward_inplace(floatX* d_in_out, const floatX* inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    const int block_size = 256;
    if (is_aligned16(d_in_out) && is_aligned16(inp)) {
        const size_t per_block = (size_t)block_size * Packed128<floatX>::size;
        gelu_backward_inplace_vec_kernel<<<(unsigned)ceil_div(n, per_block), block_size, 0, stream>>>(d_in_out, inp, n);
    } else {
        gelu_backward_inplace_kernel<<<(unsigned)ceil_div(n, (size_t)block_size), block_size, 0, stream>>>(d_in_out, inp, n);
    }
    cudaLaunchCheck();
}
