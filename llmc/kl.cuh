/*
Logit-level loss and metrics, one thread block per row of logits (a cluster of blocks in
kl_forward_backward_onepass) (SPEC §4 KL, §6 CE and top-1 agreement):
  kl_forward_backward  KL(clean ‖ spliced) per row, and its gradient wrt the spliced logits
  kl_forward_backward_onepass  the same, each row pair read from memory once (sm_90 clusters;
                       dev/cuda/kl.cu variant 4; the trainer's with --fused-backward on;
                       test/test_kl_emulated.cpp runs its kernel on the CPU)
  ce_forward           next-token cross-entropy per row
  argmax_agree         count of rows whose clean and spliced argmax agree
Logits are (N, Vp), fp32 in the trainer in both precisions (any floatX here), with only the first V columns real (llm.c pads the vocab to Vp);
columns V..Vp-1 never enter a softmax. Probabilities are never materialised: a row is read once
for a running (max, Σ exp(x − max)) pair, then once more to use the resulting log-softmax
(kl_forward_backward_onepass keeps the row in registers instead of reading it again).
Per-row outputs, no atomics on floats: sum kl_rows / ce_rows with deterministic_sum
(cuda_common.cuh) for bit-reproducible scalars.
*/
#pragma once
#include <float.h>
#include <limits.h>
#ifndef HOST_EMULATION  // test/cuda_host_emulation.h stands in (test/test_kl_emulated.cpp)
#include <cooperative_groups.h>
#endif
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
// Pass 1 gathers the softmax stats of both rows, pass 2 computes KL and writes the gradient into
// dlogits (floatG; may be the spliced logits themselves when the types match: every element is
// read and written by the same thread, after the block's reduction; null: no gradient, the eval).
// The trainer's logits are fp32 in both precisions (bf16 rounding of logits biases the KL, issue
// 16) and its gradient floatX, the LM head backward's input.
// lp = (z − max) − log(sum) is PyTorch's log_softmax order of operations.
// Each thread loads 16-byte packs of logits (4 fp32 / 8 bf16): 1.7x faster than one element per
// load at GPT-2's vocabulary (dev/cuda/kl.cu). The packs cover [0, Vp), so the launcher needs Vp a
// multiple of the pack and 16-byte aligned rows; elements at v >= V (padding) are skipped in both
// passes and written as 0.

// the P gradient values of one logits pack, as floatG: 16 bytes when floatG has the logits' size,
// 8 when bf16 from fp32 logits
template <typename floatG, int P>
__device__ __forceinline__ void store_grad_pack(floatG* dst, const float (&g)[P]) {
    if constexpr (Packed128<floatG>::size == P) {
        Packed128<floatG> pack;
        #pragma unroll
        for (int k = 0; k < P; k++) pack[k] = from_float<floatG>(g[k]);
        store128(dst, pack);
    } else {
        static_assert(sizeof(floatG) * P == 8, "fp32 logits packs give 8 bytes of bf16 gradient");
        struct alignas(8) Half { floatG v[P]; } half;
        #pragma unroll
        for (int k = 0; k < P; k++) half.v[k] = from_float<floatG>(g[k]);
        *reinterpret_cast<Half*>(dst) = half;
    }
}

template <typename floatL, typename floatG>
__global__ void kl_forward_backward_kernel(float* kl_rows, floatG* dlogits, const floatL* logits_spliced, const floatL* logits_clean,
                                           float grad_scale, int V, int Vp) {
    constexpr int P = Packed128<floatL>::size;
    const floatL* zs = logits_spliced + (size_t)blockIdx.x * Vp;
    const floatL* zc = logits_clean + (size_t)blockIdx.x * Vp;
    floatG* dz = dlogits ? dlogits + (size_t)blockIdx.x * Vp : nullptr;
    const int num_packs = Vp / P;
    SoftmaxStats stats_s = softmax_stats_empty(), stats_c = softmax_stats_empty();
    for (int p = threadIdx.x; p < num_packs; p += blockDim.x) {
        const Packed128<floatL> s_pack = load128(zs + p * P), c_pack = load128(zc + p * P);
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
        const Packed128<floatL> s_pack = load128(zs + p * P), c_pack = load128(zc + p * P);
        float g[P];
        #pragma unroll
        for (int k = 0; k < P; k++) {
            g[k] = 0.0f;  // padding: no gradient
            if (p * P + k < V) {
                const float lp_s = (to_float(s_pack[k]) - stats_s.max) - log_sum_s;
                const float lp_c = (to_float(c_pack[k]) - stats_c.max) - log_sum_c;
                const float p_s = expf(lp_s), p_c = expf(lp_c);
                kl += p_c * (lp_c - lp_s);
                g[k] = grad_scale * (p_s - p_c);
            }
        }
        if (dz) store_grad_pack<floatG, P>(dz + p * P, g);
    }
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) kl_rows[blockIdx.x] = kl;
}

// the same, one element per load: for rows that are not 16-byte aligned or a Vp that is not a
// multiple of the pack
template <typename floatL, typename floatG>
__global__ void kl_forward_backward_scalar_kernel(float* kl_rows, floatG* dlogits, const floatL* logits_spliced,
                                                  const floatL* logits_clean, float grad_scale, int V, int Vp) {
    const floatL* zs = logits_spliced + (size_t)blockIdx.x * Vp;
    const floatL* zc = logits_clean + (size_t)blockIdx.x * Vp;
    floatG* dz = dlogits ? dlogits + (size_t)blockIdx.x * Vp : nullptr;
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
        if (dz) dz[v] = from_float<floatG>(grad_scale * (p_s - p_c));
    }
    if (dz)
        for (int v = V + threadIdx.x; v < Vp; v += blockDim.x) dz[v] = from_float<floatG>(0.0f);  // padding: no gradient
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) kl_rows[blockIdx.x] = kl;
}

// kl_rows (N) fp32 out: KL of each row (sum and divide by N for the §4 KL);
// dlogits (N,Vp) out: grad_scale · (p_s − p_c), padding columns 0; the spliced logits themselves
// (in place, when floatG is floatL) or null (no gradient: the eval);
// logits_spliced, logits_clean (N,Vp) in; grad_scale = kl_coeff / (N·grad_accum)
template <typename floatL, typename floatG>
void kl_forward_backward(float* kl_rows, floatG* dlogits, const floatL* logits_spliced, const floatL* logits_clean, float grad_scale,
                         int N, int V, int Vp, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    // every row start is aligned when the base pointers are and Vp is a multiple of the pack
    // (the gradient's too: its packs are 16 or 8 bytes at the same element offsets)
    if (Vp % Packed128<floatL>::size == 0 && is_aligned16(logits_spliced) && is_aligned16(logits_clean) && is_aligned16(dlogits)) {
        kl_forward_backward_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(kl_rows, dlogits, logits_spliced, logits_clean, grad_scale, V, Vp);
    } else {
        kl_forward_backward_scalar_kernel<<<N, LOGITS_BLOCK_SIZE, 0, stream>>>(kl_rows, dlogits, logits_spliced, logits_clean, grad_scale,
                                                                               V, Vp);
    }
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// KL forward and backward in one read of the logits (issue 14, "fewer passes")

// kl_forward_backward reads each row pair twice (stats, then KL and gradient); here every thread
// keeps its share of both rows in registers between the two steps, so a row pair crosses the
// memory bus once: per row, 2·Vp reads + Vp writes instead of 4·Vp + Vp.
// Budget: a row pair is 2·Vp·sizeof(floatX) bytes, at GPT-2's Vp = 50304 201 KB in bf16 and
// 402 KB in fp32, against 256 KB of registers per SM (64K 32-bit registers) and 227 KB of shared
// memory. An fp32 pair fits in neither. A bf16 pair in one block of 1024 threads (64 registers a
// thread at most) would take 56 of them for data alone (7 packs per row per thread, 4 registers a
// pack, 2 rows), too few left for the rest; in shared memory it would fit, but one block per SM
// could not load while it computes, and every value would go global -> register -> shared ->
// register. So a row is split across the blocks of a thread block cluster (sm_90), each thread
// holding KL_ONEPASS_PACKS = 13 packs of each row: 2·13·4 = 104 registers of data, bf16 kept
// packed and converted on use. KL_ONEPASS_THREADS = 256 and __launch_bounds__(256, 2) cap a
// thread at 128 registers (65536 / 512), so two blocks share an SM and one can load while the
// other computes; ptxas (CUDA 13.0, sm_90) fits fp32 logits with a bf16 gradient (the bf16
// trainer's form) in 128 with no spill, fp32 in place with a 4-byte spill and bf16 with 8 bytes. A block covers 256·13 = 3328 packs of a row; at Vp = 50304 a row takes 2 blocks in bf16
// (6288 packs) and 4 in fp32 (12576). Portable clusters have at most 8 blocks: Vp up to
// 8·3328·P = 212,992 (bf16) or 106,496 (fp32). The launcher falls back to kl_forward_backward
// (two reads) for a larger Vp, a Vp that is not a multiple of the pack, unaligned rows, or a
// device below sm_90. The gradient goes to dlogits, of the logits' type (in place over the spliced
// logits allowed) or bf16 beside fp32 logits: the bf16 trainer's form (--fused-backward on).
// Determinism: each block reduces its threads in llmc's fixed order, then the blocks' stats go
// through distributed shared memory to every block of the cluster, where they are merged in
// rank order (every block gets the same bits); the KL partials are summed in rank order by rank 0.
// Within a thread the stats take the max first, then Σ exp(x − max): one exp per element and no
// rescaling, which the values in registers allow (kl_forward_backward adds them online). The
// per-element formulas are kl_forward_backward's, and the row max is the same (a max is exact in
// any order), so the results differ from its by the rounding of the sums only.
#define KL_ONEPASS_THREADS 256
#define KL_ONEPASS_PACKS 13
#define KL_ONEPASS_MAX_RANKS 8  // portable cluster size

// What thread tid of cluster rank `rank` holds of a row. Rank r holds the packs [first, end), a
// chunk of ceil(num_packs / ranks) (the last rank's is at most ranks − 1 packs short), and thread
// tid its packs i = 0, 1, .. at first_pack + i·T while i·T < packs_here; element k of pack i is a
// real column (held and < V) if i·T·P + k < cols_here. The offsets i·T·P are compile-time, so an
// address is one register plus an immediate (offsets computed from the cluster size cost
// registers: they spilled). __host__ too: dev/cuda/kl.cu replays the coverage on the CPU.
struct OnepassShare {
    int first_pack, packs_here, cols_here;
};

__host__ __device__ inline OnepassShare kl_onepass_share(int rank, int ranks, int tid, int V, int Vp, int P) {
    const int num_packs = Vp / P, chunk = (num_packs + ranks - 1) / ranks;
    const int first = rank * chunk, end = first + chunk < num_packs ? first + chunk : num_packs;
    const int end_col = end * P < V ? end * P : V;
    return {first + tid, end - first - tid, end_col - (first + tid) * P};
}

// blocks per row (the cluster size) for a row of Vp elements in packs of P
inline int kl_onepass_ranks(int Vp, int P) { return ceil_div(Vp / P, KL_ONEPASS_THREADS * KL_ONEPASS_PACKS); }

// An empty asm that "changes" each 32-bit word of the packs: the compiler can no longer reuse
// floats it converted from them in the stats step, so bf16 stays 2 values per register until the
// KL step instead of being kept unpacked (ptxas spilled 584 bytes in bf16 without it); it emits
// no instruction.
template <typename floatX>
__device__ __forceinline__ void launder_packs(Packed128<floatX> (&packs)[KL_ONEPASS_PACKS]) {
    #pragma unroll
    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {
        unsigned int* words = reinterpret_cast<unsigned int*>(&packs[i]);
        #pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+r"(words[j]));
    }
}

template <typename floatX, typename floatG>
__global__ void __launch_bounds__(KL_ONEPASS_THREADS, 2)
kl_forward_backward_onepass_kernel(float* kl_rows, floatG* dlogits, const floatX* logits_spliced, const floatX* logits_clean,
                                   float grad_scale, int V, int Vp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    __trap();  // clusters need sm_90: the launcher never launches this on an older device
#else
    namespace cg = cooperative_groups;
    constexpr int P = Packed128<floatX>::size, T = KL_ONEPASS_THREADS;
    __shared__ SoftmaxStats cluster_stats[KL_ONEPASS_MAX_RANKS][2];  // [rank][spliced, clean]
    __shared__ float cluster_kl[KL_ONEPASS_MAX_RANKS];               // rank 0's is the one used
    cg::cluster_group cluster = cg::this_cluster();
    cluster.barrier_arrive();  // waited on before the first store into another block's shared memory
    const int ranks = (int)cluster.num_blocks(), rank = (int)cluster.block_rank();
    const int row = blockIdx.x / ranks;
    const OnepassShare share = kl_onepass_share(rank, ranks, threadIdx.x, V, Vp, P);
    const int packs_here = share.packs_here, cols_here = share.cols_here;
    const floatX* zs = logits_spliced + (size_t)row * Vp + share.first_pack * P;
    const floatX* zc = logits_clean + (size_t)row * Vp + share.first_pack * P;
    floatG* dz = dlogits + (size_t)row * Vp + share.first_pack * P;  // may be zs itself: each thread has read its packs

    Packed128<floatX> s[KL_ONEPASS_PACKS], c[KL_ONEPASS_PACKS];  // every index compile-time: registers
    #pragma unroll
    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {  // the only read of the row pair
        if (i * T < packs_here) { s[i] = load128(zs + i * T * P); c[i] = load128(zc + i * T * P); }
    }
    float max_s = -FLT_MAX, max_c = -FLT_MAX;  // softmax_stats_empty's max: a thread with no column merges as empty
    #pragma unroll
    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {
        #pragma unroll
        for (int k = 0; k < P; k++) {
            if (i * T * P + k < cols_here) {
                max_s = fmaxf(max_s, to_float(s[i][k]));
                max_c = fmaxf(max_c, to_float(c[i][k]));
            }
        }
    }
    float sum_s = 0.0f, sum_c = 0.0f;
    #pragma unroll
    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {
        #pragma unroll
        for (int k = 0; k < P; k++) {
            if (i * T * P + k < cols_here) {
                sum_s += expf(to_float(s[i][k]) - max_s);
                sum_c += expf(to_float(c[i][k]) - max_c);
            }
        }
    }
    SoftmaxStats stats_s = block_reduce_softmax_stats({max_s, sum_s});
    SoftmaxStats stats_c = block_reduce_softmax_stats({max_c, sum_c});
    cluster.barrier_wait();  // every block of the cluster has started: its shared memory exists
    if ((int)threadIdx.x < ranks) {  // thread r puts this block's stats in rank r's slot for this rank
        SoftmaxStats* slot = cluster.map_shared_rank(&cluster_stats[rank][0], (int)threadIdx.x);
        slot[0] = stats_s;
        slot[1] = stats_c;
    }
    cluster.sync();  // the stores are visible (release / acquire at cluster scope)
    stats_s = cluster_stats[0][0];
    stats_c = cluster_stats[0][1];
    for (int r = 1; r < ranks; r++) {
        stats_s = softmax_stats_merge(stats_s, cluster_stats[r][0]);
        stats_c = softmax_stats_merge(stats_c, cluster_stats[r][1]);
    }

    launder_packs(s); launder_packs(c);
    const float log_sum_s = logf(stats_s.sum), log_sum_c = logf(stats_c.sum);
    float kl = 0.0f;
    #pragma unroll
    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {
        if (i * T < packs_here) {
            float g[P];
            #pragma unroll
            for (int k = 0; k < P; k++) {
                g[k] = 0.0f;  // padding: no gradient
                if (i * T * P + k < cols_here) {
                    const float lp_s = (to_float(s[i][k]) - stats_s.max) - log_sum_s;
                    const float lp_c = (to_float(c[i][k]) - stats_c.max) - log_sum_c;
                    const float p_s = expf(lp_s), p_c = expf(lp_c);
                    kl += p_c * (lp_c - lp_s);
                    g[k] = grad_scale * (p_s - p_c);
                }
            }
            store_grad_pack<floatG, P>(dz + i * T * P, g);
        }
    }
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) *cluster.map_shared_rank(&cluster_kl[rank], 0) = kl;
    cluster.sync();  // rank 0 has every partial; after this no block touches another's memory
    if (rank == 0 && threadIdx.x == 0) {
        float total = cluster_kl[0];
        for (int r = 1; r < ranks; r++) total += cluster_kl[r];
        kl_rows[row] = total;
    }
#endif
}

// kl_forward_backward's arguments and results (see there), dlogits not null (training: the eval
// has no gradient and keeps kl_forward_backward); launches one cluster of ceil(Vp / (P·3328))
// blocks per row when it can, else calls kl_forward_backward
template <typename floatX, typename floatG>
void kl_forward_backward_onepass(float* kl_rows, floatG* dlogits, const floatX* logits_spliced, const floatX* logits_clean, float grad_scale,
                                 int N, int V, int Vp, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const int ranks = kl_onepass_ranks(Vp, P);
    int device, major;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (dlogits == nullptr || Vp % P != 0 || !is_aligned16(logits_spliced) || !is_aligned16(logits_clean) || !is_aligned16(dlogits) ||
        ranks > KL_ONEPASS_MAX_RANKS || major < 9) {
        kl_forward_backward(kl_rows, dlogits, logits_spliced, logits_clean, grad_scale, N, V, Vp, stream);
        return;
    }
    cudaLaunchAttribute cluster_dim;
    cluster_dim.id = cudaLaunchAttributeClusterDimension;
    cluster_dim.val.clusterDim.x = ranks;
    cluster_dim.val.clusterDim.y = 1;
    cluster_dim.val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3((unsigned)N * ranks);
    config.blockDim = dim3(KL_ONEPASS_THREADS);
    config.dynamicSmemBytes = 0;
    config.stream = stream;
    config.attrs = &cluster_dim;
    config.numAttrs = 1;
    cudaCheck(cudaLaunchKernelEx(&config, kl_forward_backward_onepass_kernel<floatX, floatG>, kl_rows, dlogits, logits_spliced, logits_clean,
                                 grad_scale, V, Vp));
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
