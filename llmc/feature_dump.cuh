/*
--dump-features on the GPU: the same two passes and logit effects as llmc/feature_dump.h on the
CPU, on state that lives on the device (FeatureDumpDevice) and is downloaded once into a host
FeatureDump, which the shared host code orders (feature_dump_order_bands) and writes.
  pass 1  feature_dump_add_gpu: firing count, histogram and top-K (value descending, earlier
          position first on a tie), one thread per feature
  pass 2  feature_dump_add_bands_gpu then feature_dump_add_contexts_gpu: band examples (one
          thread per feature) and the contexts of the examples in the batch (one per slot)
  feature_dump_logit_effects_gpu: chunks of FEATURE_DUMP_LOGIT_CHUNK features: their normalised
          decoder rows times lnfw (fp32, from the fp32 master W_dec), one fp32 matmul against the
          fp32 W_U through the trainer's launcher, then a top/bottom-10 selection per row
Every decision goes through the helpers in feature_dump.h (hash, histogram bin, band, band
offer, logit order, F16 rounding), so from the same activations the results equal the CPU's bit
for bit; the logit effects agree to fp32 rounding of the sums (cuBLAS sums in another order), so
two tokens whose effects differ by less than that may swap. Bench and CPU checks:
dev/cuda/feature_dump.cu; test/test_feature_dump_emulated.cpp runs the kernels and launchers on a
CPU (test/cuda_host_emulation.h) against the CPU trainer's dump.
*/
#pragma once
#include "cuda_common.cuh"
#include "matmul.cuh"
#include "feature_dump.h"  // also the device state's layout, FeatureDumpDevice, and its carve

// ----------------------------------------------------------------------------
// pass 1: firing count, histogram, top-K

// One thread per feature: a warp reads 32 consecutive features of a row (coalesced) and walks
// down the N rows in order, so positions arrive ascending and a tie never displaces an entry.
// Loads for ROWS rows are issued before any is used: with one thread per feature there are only
// D threads, and independent loads in flight are what keeps the memory system busy. Most values
// are zero or below the K-th, so the insert (local memory) is rare after the first rows; a firing's
// histogram slot is the thread's own counter (no atomics).
template <typename floatX, int ROWS = 8>
__global__ void feature_dump_add_kernel(unsigned long long* fire_count, float* top_values, long long* top_pos,
                                        unsigned long long* hist_counts, const float* hist_edges,
                                        const floatX* __restrict__ c, int N, int D, int K, long long first_pos) {
    __shared__ float edges[FEATURE_DUMP_HIST_EDGES];
    for (int i = threadIdx.x; i < FEATURE_DUMP_HIST_EDGES; i += blockDim.x) edges[i] = hist_edges[i];
    __syncthreads();
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float vals[FEATURE_DUMP_MAX_K];
    long long pos[FEATURE_DUMP_MAX_K];
    for (int k = 0; k < K; k++) { vals[k] = top_values[(size_t)d * K + k]; pos[k] = top_pos[(size_t)d * K + k]; }
    float kth = vals[K - 1];  // the value to beat, kept in a register: most firings stop at this compare
    unsigned long long fires = 0;
    unsigned long long* hist = hist_counts + (size_t)d * FEATURE_DUMP_HIST_BINS;
    for (int n0 = 0; n0 < N; n0 += ROWS) {
        float v[ROWS];
        #pragma unroll
        for (int r = 0; r < ROWS; r++) v[r] = n0 + r < N ? to_float(c[(size_t)(n0 + r) * D + d]) : 0.0f;
        #pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (!(v[r] > 0.0f)) continue;  // zero, negative or NaN: not a firing
            fires++;
            hist[feature_dump_hist_bin(edges, v[r])]++;
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

// c (N,D) merged into g's pass-1 state; batches must come in stream order (first_pos increasing by N each call)
template <typename floatX>
void feature_dump_add_gpu(const FeatureDumpDevice& g, const floatX* c, int N, long long first_pos, cudaStream_t stream) {
    if (g.K < 1 || g.K > FEATURE_DUMP_MAX_K) {
        fprintf(stderr, "feature_dump_add_gpu: K = %d, must be in 1..%d\n", g.K, FEATURE_DUMP_MAX_K);
        exit(EXIT_FAILURE);
    }
    if (N <= 0 || g.D <= 0) return;
    const int block = 128;  // D / 128 blocks: 360 at D = 46080, enough to spread over every SM
    feature_dump_add_kernel<floatX><<<ceil_div(g.D, block), block, 0, stream>>>(g.fire_count, g.top_values, g.top_pos, g.hist_counts,
                                                                              g.hist_edges, c, N, g.D, g.K, first_pos);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// pass 2: band examples, then the contexts of the examples in the batch

// One thread per feature, rows in order as in pass 1; the feature's 15 band slots sit in local
// arrays for the batch. A firing in a band costs a few hashes (feature_dump_band_offer).
template <typename floatX, int ROWS = 8>
__global__ void feature_dump_bands_kernel(float* band_values, long long* band_pos, const float* top_values,
                                          const floatX* __restrict__ c, int N, int D, int K, long long first_pos) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    const float vmax = top_values[(size_t)d * K];
    if (!(vmax > 0.0f)) return;  // never fired
    const int S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE;
    long long pos[S];
    float val[S];
    for (int s = 0; s < S; s++) { pos[s] = band_pos[(size_t)d * S + s]; val[s] = band_values[(size_t)d * S + s]; }
    for (int n0 = 0; n0 < N; n0 += ROWS) {
        float v[ROWS];
        #pragma unroll
        for (int r = 0; r < ROWS; r++) v[r] = n0 + r < N ? to_float(c[(size_t)(n0 + r) * D + d]) : 0.0f;
        #pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (!(v[r] > 0.0f)) continue;
            const int b = feature_dump_band(v[r], vmax);
            if (b < 0) continue;
            feature_dump_band_offer(pos + b * FEATURE_DUMP_BAND_SIZE, val + b * FEATURE_DUMP_BAND_SIZE, d, first_pos + n0 + r, v[r]);
        }
    }
    for (int s = 0; s < S; s++) { band_pos[(size_t)d * S + s] = pos[s]; band_values[(size_t)d * S + s] = val[s]; }
}

// One thread per example slot (pos (D,slots)): a slot whose position is in this batch gets the
// feature's activation on positions p-19 .. p+4 of p's row (NaN outside it), context (D,slots,24)
template <typename floatX>
__global__ void feature_dump_contexts_kernel(uint16_t* context, const long long* pos, int slots, const floatX* __restrict__ c, int N,
                                             int D, int T, long long first_pos) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)D * slots) return;
    const long long p = pos[i];
    if (p < first_pos || p >= first_pos + N) return;  // empty (-1) or in another batch
    const int d = (int)(i / slots);
    const long long row0 = p - p % T;
    for (int w = 0; w < FEATURE_DUMP_CONTEXT; w++) {
        const long long q = p + FEATURE_DUMP_CONTEXT_FIRST + w;
        const float a = q >= row0 && q < row0 + T ? to_float(c[(size_t)(q - first_pos) * D + d]) : NAN;
        context[i * FEATURE_DUMP_CONTEXT + w] = feature_dump_f16(a);
    }
}

// pass 2 for one batch c (N,D) of whole rows of T, the same batches as pass 1 in stream order
template <typename floatX>
void feature_dump_add_bands_gpu(const FeatureDumpDevice& g, const floatX* c, int N, long long first_pos, cudaStream_t stream) {
    if (N <= 0 || g.D <= 0) return;
    feature_dump_bands_kernel<floatX><<<ceil_div(g.D, 128), 128, 0, stream>>>(g.band_values, g.band_pos, g.top_values, c, N, g.D, g.K,
                                                                             first_pos);
    cudaLaunchCheck();
}

template <typename floatX>
void feature_dump_add_contexts_gpu(const FeatureDumpDevice& g, const floatX* c, int N, int T, long long first_pos, cudaStream_t stream) {
    if (N <= 0 || g.D <= 0) return;
    const int S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, block = 256;
    feature_dump_contexts_kernel<floatX><<<(unsigned)ceil_div((size_t)g.D * g.K, (size_t)block), block, 0, stream>>>(
        g.context_top, g.top_pos, g.K, c, N, g.D, T, first_pos);
    cudaLaunchCheck();
    feature_dump_contexts_kernel<floatX><<<(unsigned)ceil_div((size_t)g.D * S, (size_t)block), block, 0, stream>>>(
        g.context_band, g.band_pos, S, c, N, g.D, T, first_pos);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// logit effects

// One warp per decoder row f of a chunk: rows[f] = (W_dec[f] / max(||W_dec[f]||, 1e-12)) ∘ γ, the
// CPU's W_dec_norm times lnfw (the norm is summed in another order), and its constant
// k_f = Σ rows[f][i] mean[i] in double
__global__ void feature_dump_logit_rows_kernel(float* rows, float* consts, const float* W_dec, const float* gamma, const float* mean,
                                               int F, int C) {
    const int lane = threadIdx.x % 32, f = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (f >= F) return;  // whole warps leave together
    const float* w = W_dec + (size_t)f * C;
    float sum_sq = 0.0f;
    for (int i = lane; i < C; i += 32) sum_sq += w[i] * w[i];
    sum_sq = warp_reduce_sum(sum_sq);
    const float norm = fmaxf(sqrtf(sum_sq), 1e-12f);  // SAE_NORM_EPS, as the forward's normalisation
    double k = 0.0;
    for (int i = lane; i < C; i += 32) {
        const float a = (w[i] / norm) * gamma[i];
        rows[(size_t)f * C + i] = a;
        k += (double)a * mean[i];
    }
    k = warp_reduce_sum(k);
    if (lane == 0) consts[f] = (float)k;
}

// One block per row of effects (F,V): value = effects + k_f; each thread keeps the top and bottom
// 10 of its strided share of the vocabulary, then the block merges the lists pairwise in shared
// memory (a total order, so the result does not depend on how the row was shared out). Ids are
// ints in the lists (INT_MAX: empty), I64 in the output (-1, NaN: empty, only when V < 10).
template <int BLOCK = 128>
__global__ void feature_dump_logit_select_kernel(long long* top_tokens, float* top_values, long long* bottom_tokens, float* bottom_values,
                                                 const float* effects, const float* consts, int V) {
    const int L = FEATURE_DUMP_LOGITS, r = blockIdx.x, tid = threadIdx.x;
    const float* e = effects + (size_t)r * V;
    const float k = consts[r];
    float tv[L], bv[L];
    int ti[L], bi[L];
    for (int j = 0; j < L; j++) { tv[j] = -INFINITY; bv[j] = INFINITY; ti[j] = bi[j] = INT_MAX; }
    for (int v = tid; v < V; v += BLOCK) {
        const float x = e[v] + k;
        feature_dump_logit_insert(tv, ti, x, v, true);
        feature_dump_logit_insert(bv, bi, x, v, false);
    }
    __shared__ float sv[BLOCK][L];
    __shared__ int si[BLOCK][L];
    for (int side = 0; side < 2; side++) {  // top, then bottom, through the same shared lists
        const bool top = side == 0;
        for (int j = 0; j < L; j++) { sv[tid][j] = top ? tv[j] : bv[j]; si[tid][j] = top ? ti[j] : bi[j]; }
        __syncthreads();
        for (int s = BLOCK / 2; s > 0; s /= 2) {
            if (tid < s)
                for (int j = 0; j < L; j++) {  // the other list is sorted: once one entry misses, the rest do
                    if (!feature_dump_logit_before(sv[tid + s][j], si[tid + s][j], sv[tid][L - 1], si[tid][L - 1], top)) break;
                    feature_dump_logit_insert(sv[tid], si[tid], sv[tid + s][j], si[tid + s][j], top);
                }
            __syncthreads();
        }
        if (tid < L) {
            const size_t o = (size_t)r * L + tid;
            const bool empty = si[0][tid] == INT_MAX;
            (top ? top_tokens : bottom_tokens)[o] = empty ? -1 : si[0][tid];
            (top ? top_values : bottom_values)[o] = empty ? NAN : sv[0][tid];
        }
        __syncthreads();  // the bottom pass reuses sv, si
    }
}

// Logit effects of features [0, D) in chunks: W_dec (D,C) the fp32 raw decoder (normalised here),
// gamma (C) lnfw, W_U (V,C) fp32, the unembedding the trainer holds (shifted), mean (C) the row the
// shift took out (zeros: none); all fp32 whatever the trainer's precision. Results in g's logit_*.
inline void feature_dump_logit_effects_gpu(const FeatureDumpDevice& g, const float* W_dec, const float* gamma, const float* W_U,
                                           const float* mean, cudaStream_t stream) {
    const int D = g.D, C = g.C, V = g.V, L = FEATURE_DUMP_LOGITS;
    for (int f0 = 0; f0 < D; f0 += FEATURE_DUMP_LOGIT_CHUNK) {
        const int F = std::min(FEATURE_DUMP_LOGIT_CHUNK, D - f0);
        feature_dump_logit_rows_kernel<<<ceil_div(F, 8), 256, 0, stream>>>(g.logit_rows, g.logit_consts, W_dec + (size_t)f0 * C, gamma,
                                                                          mean, F, C);
        cudaLaunchCheck();
        matmul_forward<float>(g.logit_effects, g.logit_rows, W_U, nullptr, F, C, V, stream);  // (F,V) = rows (F,C) . W_U (V,C)^T
        feature_dump_logit_select_kernel<<<F, 128, 0, stream>>>(g.logit_top_tokens + (size_t)f0 * L, g.logit_top_values + (size_t)f0 * L,
                                                                g.logit_bottom_tokens + (size_t)f0 * L, g.logit_bottom_values + (size_t)f0 * L,
                                                                g.logit_effects, g.logit_consts, V);
        cudaLaunchCheck();
    }
}

// ----------------------------------------------------------------------------
// reset and download

// the empty state (no firings, values 0, positions -1: all bytes 0xff is -1 in two's complement;
// contexts 0xffff, a NaN that feature_dump_order_bands makes the canonical one for empty slots),
// and the histogram edges from the host's FeatureDump
inline void feature_dump_reset_gpu(const FeatureDumpDevice& g, const FeatureDump& host, cudaStream_t stream) {
    const size_t D = g.D, K = g.K, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    cudaCheck(cudaMemsetAsync(g.fire_count, 0, D * sizeof(unsigned long long), stream));
    cudaCheck(cudaMemsetAsync(g.top_values, 0, D * K * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(g.top_pos, 0xff, D * K * sizeof(long long), stream));
    cudaCheck(cudaMemsetAsync(g.hist_counts, 0, D * FEATURE_DUMP_HIST_BINS * sizeof(unsigned long long), stream));
    cudaCheck(cudaMemsetAsync(g.band_values, 0, D * S * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(g.band_pos, 0xff, D * S * sizeof(long long), stream));
    cudaCheck(cudaMemsetAsync(g.context_top, 0xff, D * K * W * sizeof(uint16_t), stream));
    cudaCheck(cudaMemsetAsync(g.context_band, 0xff, D * S * W * sizeof(uint16_t), stream));
    cudaCheck(cudaMemcpyAsync(g.hist_edges, host.hist_edges.data(), FEATURE_DUMP_HIST_EDGES * sizeof(float), cudaMemcpyHostToDevice, stream));
    cudaCheck(cudaStreamSynchronize(stream));  // the edges' host memory is pageable
}

// device state -> host FeatureDump (already feature_dump_init-ed to D, K), with the token count
inline void feature_dump_download(FeatureDump* fd, const FeatureDumpDevice& g, long long tokens) {
    static_assert(sizeof(unsigned long long) == sizeof(long long), "the counts are copied as they are");
    const size_t D = g.D, K = g.K, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT, L = FEATURE_DUMP_LOGITS;
    cudaCheck(cudaDeviceSynchronize());
    auto get = [](void* dst, const void* src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)); };
    get(fd->fire_count.data(), g.fire_count, D * sizeof(long long));
    get(fd->top_values.data(), g.top_values, D * K * sizeof(float));
    get(fd->top_pos.data(), g.top_pos, D * K * sizeof(long long));
    get(fd->hist_counts.data(), g.hist_counts, D * FEATURE_DUMP_HIST_BINS * sizeof(long long));
    get(fd->band_values.data(), g.band_values, D * S * sizeof(float));
    get(fd->band_pos.data(), g.band_pos, D * S * sizeof(long long));
    get(fd->context_top.data(), g.context_top, D * K * W * sizeof(uint16_t));
    get(fd->context_band.data(), g.context_band, D * S * W * sizeof(uint16_t));
    get(fd->logit_top_tokens.data(), g.logit_top_tokens, D * L * sizeof(long long));
    get(fd->logit_top_values.data(), g.logit_top_values, D * L * sizeof(float));
    get(fd->logit_bottom_tokens.data(), g.logit_bottom_tokens, D * L * sizeof(long long));
    get(fd->logit_bottom_values.data(), g.logit_bottom_values, D * L * sizeof(float));
    fd->tokens = tokens;
}
