/*
Optimiser (SPEC §5): the global gradient norm over all SAE parameters, and one fused kernel
that clips the gradient by that norm and applies PyTorch's Adam(W) update.
Everything here is fp32: SAE master weights, gradients and Adam m, v.

The trainer keeps the four SAE tensors (W_enc, b_enc, W_dec, b_dec) in one contiguous fp32
buffer, and so do their gradients and Adam m, v: one call of each per update covers them all.
Per update (train_gpt2_sae.cu, update()):
    global_norm_squared(norm_sq, grads, P, false, s);   // P = all SAE parameters; overwrites
    adamw_scalars(t, lr, 0.9, 0.999, &step_size, &bc2_sqrt);
    adamw_update(params, m, v, grads, P, lr, 0.9, 0.999, step_size, bc2_sqrt, 1e-8,
                 weight_decay, norm_sq, max_grad_norm, s);
In bf16 the trainer also keeps bf16 copies of W_enc and of both biases (the biases in fp32 too:
16-byte aligned for the epilogues). adamw_update writes them as it writes the masters
(ParamCopies), so no separate pass reads the masters again; cast_copy makes them only when the
masters come from the host (init, resume).
norm_sq is a device scalar (a slot of the trainer's stats array), read by adamw_update on the
device and copied to the host with the other stats for the log: grad_norm = sqrt(norm_sq).
global_norm_squared can also accumulate over several separate tensors (accumulate = true for
all but the first), which dev/cuda/adamw.cu checks. test/test_adamw_emulated.cpp runs both
launchers on a CPU (an emulation), the copies included.
*/
#pragma once
#include <math.h>
#include <algorithm>
#include "cuda_common.cuh"
#include "schedule.h"

// ----------------------------------------------------------------------------
// global gradient norm, squared, deterministic

#define GLOBAL_NORM_BLOCK_SIZE 512
#define GLOBAL_NORM_MAX_BLOCKS 1024
// Scratch for the per-block partials, one array for the whole program. Rule: call
// global_norm_squared from one stream at a time (two calls in flight at once would share these
// partials). The trainer launches everything on stream 0, so it holds.
static __device__ float global_norm_partials[GLOBAL_NORM_MAX_BLOCKS];

static __global__ void global_norm_squared_kernel(float* partials, const float* g, size_t n) {
    float sum_sq = 0.0f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) sum_sq += g[i] * g[i];
    sum_sq = block_reduce_sum(sum_sq);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum_sq;
}

// out[0] = (accumulate ? out[0] : 0) + Σ g²; g (n) fp32. Same bits on every run for a given n.
inline void global_norm_squared(float* out, const float* g, size_t n, bool accumulate, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (n == 0) {
        if (!accumulate) cudaCheck(cudaMemsetAsync(out, 0, sizeof(float), stream));
        return;
    }
    const int grid = (int)std::min(ceil_div(n, (size_t)GLOBAL_NORM_BLOCK_SIZE), (size_t)GLOBAL_NORM_MAX_BLOCKS);
    float* partials;
    cudaCheck(cudaGetSymbolAddress((void**)&partials, global_norm_partials));
    global_norm_squared_kernel<<<grid, GLOBAL_NORM_BLOCK_SIZE, 0, stream>>>(partials, g, n);
    cudaLaunchCheck();
    deterministic_sum(out, partials, grid, accumulate, stream);
}

// ----------------------------------------------------------------------------
// clipped Adam(W) update

// adamw_scalars (the per-update step size and bias correction) is host math: llmc/schedule.h

// Per element, in PyTorch's order (torch.optim.Adam/AdamW, foreach path, torch 2.x):
//   clip_grad_norm_: coef = max_norm / (total + 1e-6), clamped to <= 1, g *= coef (always;
//                    a NaN total gives NaN, as torch.clamp does)
//   AdamW decay:     p *= 1 − lr·wd               (decay_factor, 1 exactly when wd = 0)
//   m.lerp_(g, 1−β1): m = m + (1−β1)(g − m)      (torch's lerp for a weight < 0.5)
//   v = β2 v + (1−β2) g²                           (mul_ then addcmul_)
//   p += −step_size · m / (sqrt(v)/bc2_sqrt + eps) (addcdiv_ with denom = sqrt(v)/bc2_sqrt + eps)
// The scalars arrive rounded to float, as PyTorch rounds its Python-float scalars.
//
// copies: up to three ranges of params that also go, converted to floatX (round to nearest even,
// as cast_copy), to their own arrays: dst[k][j] = params[begin[k] + j] for j < n[k], null dst: none.
#define ADAMW_MAX_COPIES 3
template <typename floatX>
struct ParamCopies {
    floatX* dst[ADAMW_MAX_COPIES] = {};
    size_t begin[ADAMW_MAX_COPIES] = {}, n[ADAMW_MAX_COPIES] = {};
};

template <typename floatX>
__global__ void adamw_update_kernel(float* params, float* m, float* v, const float* grads, size_t n,
                                    float one_minus_beta1, float beta2, float one_minus_beta2,
                                    float step_size, float bc2_sqrt, float eps, float decay_factor,
                                    const float* grad_norm_sq, float max_grad_norm, ParamCopies<floatX> copies) {
    float clip = 1.0f;
    if (grad_norm_sq != nullptr) {
        const float coef = max_grad_norm / (sqrtf(*grad_norm_sq) + 1e-6f);
        clip = coef > 1.0f ? 1.0f : coef;
    }
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = grads[i] * clip;
        float mi = m[i], vi = v[i];
        mi = mi + one_minus_beta1 * (g - mi);
        vi = vi * beta2;
        vi = vi + one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        const float p = __fmul_rn(params[i], decay_factor);  // rounded on its own, as torch's p.mul_() is
        const float p_new = p - step_size * (mi / denom);
        params[i] = p_new;
        m[i] = mi;
        v[i] = vi;
        for (int k = 0; k < ADAMW_MAX_COPIES; k++)  // i - begin wraps to a huge value below begin
            if (copies.dst[k] != nullptr && i - copies.begin[k] < copies.n[k]) copies.dst[k][i - copies.begin[k]] = from_float<floatX>(p_new);
    }
}

// params, m, v (n) fp32 updated in place; grads (n) fp32 read only (clipping is applied on the
// fly, grads are not rescaled in memory). lr, beta1, beta2, eps, weight_decay: the optimiser's
// settings (pass the config's doubles: 1 − β is formed in double, as in PyTorch);
// step_size, bc2_sqrt from adamw_scalars for this update; grad_norm_sq (device scalar) = Σ g²
// over ALL SAE parameters from global_norm_squared; NULL or max_grad_norm <= 0 turns clipping off.
// copies: the floatX copies to write along (see the kernel); each range within [0, n).
template <typename floatX>
void adamw_update(float* params, float* m, float* v, const float* grads, size_t n,
                  double lr, double beta1, double beta2, double step_size, double bc2_sqrt,
                  double eps, double weight_decay, const float* grad_norm_sq, double max_grad_norm,
                  const ParamCopies<floatX>& copies, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (n == 0) return;
    const int block_size = 512;
    const size_t grid = std::min(ceil_div(n, (size_t)block_size), (size_t)(1 << 16));
    const float* norm_sq = max_grad_norm > 0.0 ? grad_norm_sq : nullptr;
    adamw_update_kernel<floatX><<<(unsigned)grid, block_size, 0, stream>>>(
        params, m, v, grads, n, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), (float)step_size,
        (float)bc2_sqrt, (float)eps, (float)(1.0 - lr * weight_decay), norm_sq, (float)max_grad_norm, copies);
    cudaLaunchCheck();
}

// the same without copies
inline void adamw_update(float* params, float* m, float* v, const float* grads, size_t n,
                         double lr, double beta1, double beta2, double step_size, double bc2_sqrt,
                         double eps, double weight_decay, const float* grad_norm_sq, double max_grad_norm,
                         cudaStream_t stream) {
    adamw_update(params, m, v, grads, n, lr, beta1, beta2, step_size, bc2_sqrt, eps, weight_decay, grad_norm_sq, max_grad_norm,
                 ParamCopies<float>{}, stream);
}
