/*
Logit-level loss and metrics, one thread block per row of logits (SPEC §4 KL, §6 CE and top-1
agreement):
  kl_forward_backward  KL(clean ‖ spliced) per row, and d logits_spliced written in place
  ce_forward           next-token cross-entropy per row
  argmax_agree         count of rows whose clean and spliced argmax agree
Logits are (N, Vp) floatX with only the first V columns real (llm.c pads the vocab to Vp);
columns V..Vp-1 never enter a softmax. Probabilities are never materialised: a row is read once
for a running (max, Σ exp(x − max)) pair, then once more to use the resulting log-softmax.
Per-row outputs, no atomics on floats: sum kl_rows / ce_rows with deterministic_sum
(cuda_common.cuh) for bit-reproducible scalars.
*/
#pragma once
#include <float.h>
#include <limits.h>
#include "cuda_common.cuh"

// threads per block for every kernel here (KL, CE, argmax): one block per row of logits,
// 50257 / 1024: ~49 logits per thread per row
#define LOGITS_BLOCK_SIZE 1024

// ----------------------------------------------------------------------------
// online softmax statistics: running max m and s = Σ exp(x − m) over the values seen
// (__host__ too: dev/cuda/kl.cu replays the block's reduction order on the CPU)

struct SoftmaxStats {
    float max;
    float sum;
};

__host__ __device__ inline SoftmaxStats softmax_stats_empty() { return {-FLT_MAX, 0.0f}; }  // -FLT_MAX, not -inf: exp(m1 − m2) stays 0 or finite

__host__ __device__ inline void softmax_stats_add(SoftmaxStats& s, float x) {
    if (x > s.max) {  // new max: rescale what was summed so far
        s.sum = s.sum * expf(s.max - x) + 1.0f;
        s.max = x;
    } else {
        s.sum += expf(x - s.max);
    }
}

__host__ __device__ inline SoftmaxStats softmax_stats_merge(SoftmaxStats a, SoftmaxStats b) {
    const float m = fmaxf(a.max, b.max);
    return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// Merge over a 1D block (blockDim.x a multiple of 32); every thread gets the same result, the
// one computed by thread 0 (a tree in a fixed order, so the same bits on every run).
__device__ inline SoftmaxStats block_reduce_softmax_stats(SoftmaxStats s) {
    __shared__ SoftmaxStats warp_stats[32];
    __shared__ SoftmaxStats result;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) {  // lane 0 ends with the warp's stats
        SoftmaxStats other = {__shfl_down_sync(0xffffffffu, s.max, offset), __shfl_down_sync(0xffffffffu, s.sum, offset)};
        s = softmax_stats_merge(s, other);
    }
    __syncthreads();  // an earlier call may still be reading warp_stats / result
    if (lane == 0) warp_stats[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < num_warps ? warp_stats[lane] : softmax_stats_empty();
        for (int offset = 16; offset > 0; offset >>= 1) {
            SoftmaxStats other = {__shfl_down_sync(0xffffffffu, s.max, offset), __shfl_down_sync(0xffffffffu, s.sum, offset)};
            s = softmax_stats_merge(s, other);
        }
        if (lane == 0) result = s;
    }
    __syncthreads();
    return result;
}

// ----------------------------------------------------------------------------
// KL(clean ‖ spliced) forward and backward, fused

// Per row, with lp = log_softmax:  KL = Σ_v p_c (lp_c − lp_s)  (F.kl_div(lp_s, lp_c, log_target=True)).
// Only lp_s depends on the spliced logits z_s: ∂lp_s(v)/∂z_s(u) = δ_vu − p_s(u), so
//   ∂KL/∂z_s(u) = −Σ_v p_c(v) (δ_vu − p_s(u)) = p_s(u) − p_c(u)   (using Σ_v p_c = 1).
// The loss is kl_coeff · (1/N) Σ_rows KL / grad_accum, hence grad_scale = kl_coeff/(N·grad_accum).
// Pass 1 gathers the softmax stats of both rows, pass 2 computes KL and overwrites z_s with the
// gradient: every element is read and written by the same thread, after the block's reduction.
// lp = (z − max) − log(sum) is PyTorch's log_softmax order of operations.
// Each thread moves 16-byte packs (8 bf16 / 4 fp32): 1.7x faster than one element per load at
// GPT-2's vocabulary (dev/cuda/kl.cu). The packs cover [0, Vp), so the launcher needs Vp a
// multiple of the pack and 16-byte aligned rows; elements at v >= V (padding) are skipped in both
// passes and written as 0.
template <typename floatX>
__global__ void kl_forward_backward_kernel(float* kl_rows, floatX* logits_spliced, const floatX* logits_clean,
                                                 float grad_scale, int V, int Vp) {
    constexpr int P = Packed128<floatX>::size;
    floatX* zs = logits_spliced + (size_t)blockIdx.x * Vp;
    const floatX* zc = logits_clean + (size_t)blockIdx.x * Vp;
    const int num_packs = Vp / P;
    SoftmaxStats stats_s = softmax_stats_empty(), stats_c = softmax_stats_empty();
    for (int p = threadIdx.x; p < num_packs; p += blockDim.x) {
        const Packed128<floatX> s_pack = load128(zs + p * P), c_pack = load128(zc + p * P);
        #pragma unroll
        for (int k = 0; k < P; k++) {
            if (p * P + k < V) {
                softmax_stats_add(stats_s, to_float(s_pack[k]));
                softmax_stats_add(stats_c, to_float(c_pack[k]));
            }
        }
    }
    stats_s = block_reduce_softmax_stats(stats_s);
    stats_c = block_reduce_softmax_stats(stats_c);
    const float log_sum_s = logf(stats_s.sum), log_sum_c = logf(stats_c.sum);
    float kl = 0.0f;
    for (int p = threadIdx.x; p < num_packs; p += blockDim.x) {
        const Packed128<floatX> s_pack = load128(zs + p * P), c_pack = load128(zc + p * P);
        Packed128<floatX> g_pack;
        #pragma unroll
        for (int k = 0; k < P; k++) {
            float g = 0.0f;  // padding: no gradient
            if (p * P + k < V) {
                const float lp_s = (to_float(s_pack[k]) - stats_s.max) - log_sum_s;
                const float lp_c = (to_float(c_pack[k]) - stats_c.max) - log_sum_c;
                const float p_s = expf(lp_s), p_c = expf(lp_c);
                kl += p_c * (lp_c - lp_s);
                g = grad_scale * (p_s - p_c);
            }
            g_pack[k] = from_float<floatX>(g);
        }
        store128(zs + p * P, g_pack);
    }
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) kl_rows[blockIdx.x] = kl;
}

// the same, one element per load: for rows that are not 16-byte aligned or a Vp that is not a
// multiple of the pack
template <typename floatX>
__global__ void kl_forward_backward_scalar_kernel(float* kl_rows, floatX* logits_spliced, const floatX* logits_clean,
                                                        float grad_scale, int V, int Vp) {
    floatX* zs = logits_spliced + (size_t)blockIdx.x * Vp;
    const floatX* zc = logits_clean + (size_t)blockIdx.x * Vp;
    SoftmaxStats stats_s = softmax_stats_empty(), stats_c = softmax_stats_empty();
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        softmax_stats_add(stats_s, to_float(zs[v]));
        softmax_stats_add(stats_c, to_float(zc[v]));
    }
    stats_s = block_reduce_softmax_stats(stats_s);
    stats_c = block_reduce_softmax_stats(stats_c);
    const float log_sum_s = logf(stats_s.sum), log_sum_c = logf(stats_c.sum);
    float kl = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float lp_s = (to_float(zs[v]) - stats_s.max) - log_sum_s;
        const float lp_c = (to_float(zc[v]) - stats_c.max) - log_sum_c;
        const float p_s = expf(lp_s), p_c = expf(lp_c);
        kl += p_c * (lp_c - lp_s);
        zs[v] = from_float<floatX>(grad_scale * (p_s - p_c));
    }
    for (int v = V + threadIdx.x; v < Vp; v += blockDim.x) zs[v] = from_float<floatX>(0.0f);  // padding: no gradient
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) kl_rows[blockIdx.x] = kl;
}

// kl_rows (N) fp32 out: KL of each row (sum and divide by N for the §4 KL);
// logits_spliced (N,Vp) in, overwritten with grad_scale · (p_s − p_c), padding columns 0;
// logits_clean (N,Vp) in; grad_scale = kl_coeff / (N·grad_accum) (0 for eval: the gradient is
// then written as zeros, the logits are gone either way)
template <typename floatX>
void kl_forward_backward(float* kl_rows, floatX* logits_spliced, const floatX* logits_clean, float grad_scale,
                               int N, int V, int Vp, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    // every row start is aligned when the base pointers are and Vp is a multiple of the pack
    if (Vp % Packed128<floatX>::size == 0 && is_aligned16(logits_spliced) && is_aligned16(logits_clean)) {
        kl_forward_backward_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(kl_rows, logits_spliced, logits_clean, grad_scale, V, Vp);
    } else {
        kl_forward_backward_scalar_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(kl_rows, logits_spliced, logits_clean, grad_scale, V, Vp);
    }
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// cross-entropy: ce = −log_softmax(z)[target] = log(sum) − (z_target − max)

template <typename floatX>
__global__ void ce_forward_kernel(float* ce_rows, const floatX* logits, const int* targets, int V, int Vp) {
    const int target = targets[blockIdx.x];  // the same for the whole block, so the early exit is uniform
    if (target < 0) {
        if (threadIdx.x == 0) ce_rows[blockIdx.x] = 0.0f;
        return;
    }
    const floatX* z = logits + (size_t)blockIdx.x * Vp;
    SoftmaxStats stats = softmax_stats_empty();
    for (int v = threadIdx.x; v < V; v += blockDim.x) softmax_stats_add(stats, to_float(z[v]));
    stats = block_reduce_softmax_stats(stats);
    if (threadIdx.x == 0) {
        // a target outside the vocab is a bug upstream: make it visible as NaN
        ce_rows[blockIdx.x] = target < V ? logf(stats.sum) - (to_float(z[target]) - stats.max) : NAN;
    }
}

// ce_rows (N) fp32 out: −log p[target] per row, 0 where targets[row] == -1 (ignored position:
// the last token of each row); logits (N,Vp) floatX; targets (N) int, -1 or in [0, V)
template <typename floatX>
void ce_forward(float* ce_rows, const floatX* logits, const int* targets, int N, int V, int Vp, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    ce_forward_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(ce_rows, logits, targets, V, Vp);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// top-1 agreement: argmax of both rows, first index on ties (torch.argmax); NaN logits are
// not given torch's NaN-is-max treatment (a NaN row is broken anyway)

struct ArgMax {
    float val;
    int idx;
};

__host__ __device__ inline ArgMax argmax_merge(ArgMax a, ArgMax b) {
    return (b.val > a.val || (b.val == a.val && b.idx < a.idx)) ? b : a;
}

__device__ inline ArgMax block_reduce_argmax(ArgMax a) {
    __shared__ ArgMax warp_best[32];
    __shared__ ArgMax result;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) {
        ArgMax other = {__shfl_down_sync(0xffffffffu, a.val, offset), __shfl_down_sync(0xffffffffu, a.idx, offset)};
        a = argmax_merge(a, other);
    }
    __syncthreads();
    if (lane == 0) warp_best[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < num_warps ? warp_best[lane] : ArgMax{-INFINITY, INT_MAX};
        for (int offset = 16; offset > 0; offset >>= 1) {
            ArgMax other = {__shfl_down_sync(0xffffffffu, a.val, offset), __shfl_down_sync(0xffffffffu, a.idx, offset)};
            a = argmax_merge(a, other);
        }
        if (lane == 0) result = a;
    }
    __syncthreads();
    return result;
}

template <typename floatX>
__global__ void argmax_agree_kernel(int* agree_count, const floatX* logits_a, const floatX* logits_b, int V, int Vp) {
    const floatX* za = logits_a + (size_t)blockIdx.x * Vp;
    const floatX* zb = logits_b + (size_t)blockIdx.x * Vp;
    ArgMax best_a = {-INFINITY, INT_MAX}, best_b = {-INFINITY, INT_MAX};
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        best_a = argmax_merge(best_a, ArgMax{to_float(za[v]), v});
        best_b = argmax_merge(best_b, ArgMax{to_float(zb[v]), v});
    }
    best_a = block_reduce_argmax(best_a);
    best_b = block_reduce_argmax(best_b);
    if (threadIdx.x == 0 && best_a.idx == best_b.idx) atomicAdd(agree_count, 1);  // integer: order-independent
}

// agree_count[0] += number of rows whose argmax over the first V columns is the same in
// logits_a and logits_b (N,Vp) floatX; zero it before the first call of an eval
template <typename floatX>
void argmax_agree(int* agree_count, const floatX* logits_a, const floatX* logits_b, int N, int V, int Vp, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    argmax_agree_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(agree_count, logits_a, logits_b, V, Vp);
    cudaLaunchCheck();
}
