/*
Reading the features (--dump-features DIR): per SAE feature, the numbers an SAE-Vis-style
dashboard shows, gathered from the first --dump-tokens tokens of the --val stream (whole rows)
and from the SAE's decoder and GPT-2's unembedding. Memory does not grow with the number of
tokens: each batch of activations (N,D) is merged into per-feature state and dropped; the state is
(D,K) + (D,58) + (D,3,5) numbers and (D,K+15,24) F16 contexts, ~100 MiB at D = 46080, K = 10
(feature_dump_host_bytes).

Two passes over the same rows (llmc/run.h streams them, B whole rows at a time):
  pass 1, feature_dump_add: firing count, the histogram of nonzero activations, the top-K.
  pass 2, feature_dump_add_bands then feature_dump_add_contexts: the band examples (they need
    each feature's maximum, known after pass 1), and the context of every top-K and band
    example. A batch holds whole rows, so an example's window lies in the batch that holds it:
    the top-K positions are final after pass 1, and a band example is captured in the batch it
    enters; it never moves to another slot (a better one replaces the worst slot in place), so
    its context stays with it (so no third pass). feature_dump_order_bands puts the slots in hash
    order at the end.
  feature_dump_logit_effects: from the weights alone.
Every result is a function of the activations and the weights only: not of how the stream is cut
into batches, nor of the thread count. The GPU version (llmc/feature_dump.cuh) makes its choices
with the same helpers (hash, histogram bin, band, band offer, logit order, F16 rounding), so
from the same activations both passes write the same bits (dev/cuda/feature_dump.cu checks it);
the logit effects agree to fp32 rounding (cuBLAS sums in another order). Only c > 0 counts as
firing (c is a ReLU output, as L0 counts it).

Order of the top-K: value descending, then stream position ascending (of two equal values the
earlier token ranks first). That is a total order on the tokens, so the top-K set is the same
however the stream is cut into batches. Empty slots hold value 0 and position -1, after the
real entries.

Files written (atomically: *.tmp then rename), read by scripts/report.py and scripts/features.py:
  DIR/features.safetensors
    frequency (D) F32              fire_count / tokens
    log10_frequency (D) F32        log10(frequency + 1e-10) (SAELens's sparsity)
    top_values (D,K) F32, top_pos (D,K) I64   the K largest activations, at stream positions row*T + t
    fire_count (D) I64
    logit_top_tokens (D,10) I64, logit_top_values (D,10) F32   the tokens whose logits feature f's
        decoder direction raises most: W_dec_norm[f] · diag(lnfw) · W_Uᵀ, W_U the uncentred
        unembedding (HF wte as loaded: the trainers hold it less its mean row, which moves every
        effect of f by one constant, added back), value descending, the lower token id first on a tie
    logit_bottom_tokens (D,10) I64, logit_bottom_values (D,10) F32   the ones it lowers most, most
        negative first (ties: lower id first). With V < 10, the missing entries are -1, NaN.
    hist_edges (57) F32            10^(-4 + i/8), i = 0..56: 8 bins a decade from 1e-4 to 1e3
    hist_counts (D,58) I64         nonzero activations per bin: [< edge 0, [edge i, edge i+1) for
                                   i = 0..55, >= edge 56]; the slot is the number of edges <= c
    band_fracs (4) F32             {0, 0.25, 0.5, 0.75}: band b holds the activations in
                                   (band_fracs[b]·max, band_fracs[b+1]·max], max = top_values[f][0]
                                   (above 0.75·max is the top-K's ground)
    band_pos (D,3,5) I64, band_values (D,3,5) F32   per band, the 5 firings with the smallest
                                   (feature_dump_hash(f, position), position), in that order; empty: -1, 0
    context_acts_top (D,K,24) F16  feature f's activation on positions p-19 .. p+4 of the row of
                                   each top-K example p; NaN outside the row and for empty slots
    context_acts_band (D,3,5,24) F16   the same for the band examples
    context_first (1) I64          -19: the window's first position relative to p
    __metadata__: tokens, d_sae, topk
  DIR/features.json         the caller's JSON; feature_dump_meta makes the one report.py reads:
                            val (glob), cwd, val_shards (sorted, as opened), seq_len, n_tokens,
                            d_sae, topk, layer, hook_name, model, mode, and what the tensors
                            above mean: logits, hist, bands, context
F16 (contexts only): round to nearest even, relative error at most 2^-11 (2^-24 absolute below
2^-14); 65520 and above become inf; NaN stays NaN.
*/
#pragma once
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <algorithm>
#include <string>
#include <vector>
#include "utils.h"
#include "json.h"
#include "safetensors.h"

#ifdef __CUDACC__  // the helpers both trainers' kernels share
#define FEATURE_DUMP_HD __host__ __device__
#else
#define FEATURE_DUMP_HD
#endif

#define FEATURE_DUMP_LOGITS 10           // tokens kept on each side of the logit effects
#define FEATURE_DUMP_HIST_EDGES 57       // 8 a decade from 1e-4 to 1e3
#define FEATURE_DUMP_HIST_BINS 58        // below the first edge, 56 bins, from the last edge up
#define FEATURE_DUMP_BANDS 3
#define FEATURE_DUMP_BAND_SIZE 5         // examples kept per band
#define FEATURE_DUMP_CONTEXT 24          // positions p + FIRST .. p + FIRST + 23 around an example p
#define FEATURE_DUMP_CONTEXT_FIRST (-19)
#define FEATURE_DUMP_F16_NAN 0x7e00

// ----------------------------------------------------------------------------
// helpers shared with the GPU kernels: each decision is made by one piece of code on both sides

// the key that picks band examples: splitmix64's output function of (feature << 40) ^ position,
// a fixed integer mix (so both trainers pick the same ones) that looks random across positions
FEATURE_DUMP_HD inline uint64_t feature_dump_hash(long long feature, long long pos) {
    uint64_t z = ((uint64_t)feature << 40) ^ (uint64_t)pos;
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// band order of two positions of feature f: hash ascending, then position (so keys never tie)
FEATURE_DUMP_HD inline bool feature_dump_band_before(long long f, long long p, long long q) {
    uint64_t hp = feature_dump_hash(f, p), hq = feature_dump_hash(f, q);
    return hp != hq ? hp < hq : p < q;
}

// the band (0..2) of an activation v > 0 of a feature whose maximum is vmax, or -1 above 0.75·vmax
FEATURE_DUMP_HD inline int feature_dump_band(float v, float vmax) {
    if (v <= 0.25f * vmax) return 0;
    if (v <= 0.5f * vmax) return 1;
    if (v <= 0.75f * vmax) return 2;
    return -1;
}

// Offers firing (p, v) of feature f to one band's slots pos, val (pos -1: empty): it takes the
// first empty slot, or the slot whose key comes last if its own comes before that. Whatever the
// order of the offers, the slots end up holding the BAND_SIZE first keys, and an entry never
// moves to another slot.
FEATURE_DUMP_HD inline void feature_dump_band_offer(long long* pos, float* val, long long f, long long p, float v) {
    int s = 0;
    while (s < FEATURE_DUMP_BAND_SIZE && pos[s] >= 0) s++;
    if (s == FEATURE_DUMP_BAND_SIZE) {
        s = 0;
        for (int j = 1; j < FEATURE_DUMP_BAND_SIZE; j++)
            if (feature_dump_band_before(f, pos[s], pos[j])) s = j;
        if (!feature_dump_band_before(f, p, pos[s])) return;
    }
    pos[s] = p;
    val[s] = v;
}

// The histogram slot of a nonzero activation v: the number of edges <= v (0: below the first,
// 57: at or above the last). A comparison against the F32 edges, not a log10, so both trainers
// agree bit for bit.
FEATURE_DUMP_HD inline int feature_dump_hist_bin(const float* edges, float v) {
    int lo = 0, hi = FEATURE_DUMP_HIST_EDGES;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (edges[mid] <= v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// The logit lists' order: top by value descending, bottom by value ascending, the lower token
// id first on a tie (INT_MAX marks an empty entry: it comes after every token)
FEATURE_DUMP_HD inline bool feature_dump_logit_before(float va, int ia, float vb, int ib, bool top) {
    if (va != vb) return top ? va > vb : va < vb;
    return ia < ib;
}

// (v, id) into a sorted list vals, ids of FEATURE_DUMP_LOGITS entries, if it comes before the last
FEATURE_DUMP_HD inline void feature_dump_logit_insert(float* vals, int* ids, float v, int id, bool top) {
    const int L = FEATURE_DUMP_LOGITS;
    if (!feature_dump_logit_before(v, id, vals[L - 1], ids[L - 1], top)) return;
    int j = L - 1;
    while (j > 0 && feature_dump_logit_before(v, id, vals[j - 1], ids[j - 1], top)) {
        vals[j] = vals[j - 1];
        ids[j] = ids[j - 1];
        j--;
    }
    vals[j] = v;
    ids[j] = id;
}

// fp32 -> IEEE half bits, round to nearest even, in integer arithmetic (the same bits on both sides)
FEATURE_DUMP_HD inline uint16_t feature_dump_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | FEATURE_DUMP_F16_NAN;
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // 65520 and up (and inf): inf
    const int e = (int)(ax >> 23);               // biased fp32 exponent
    if (e >= 113) {                              // a normal half: drop 13 mantissa bits, rounding (a carry moves the exponent)
        uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
        return sign | (uint16_t)((r >> 13) - (112u << 10));
    }
    if (e < 102) return sign;                    // below 2^-25: 0
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;  // a subnormal half: round(|f| / 2^-24) = round(m / 2^(126-e))
    const int s = 126 - e;                       // 14..24
    uint32_t q = m >> s;
    const uint32_t rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

// ----------------------------------------------------------------------------
// the host state and the two passes

struct FeatureDump {
    int D = 0, K = 0;
    long long tokens = 0;                   // tokens added in pass 1
    std::vector<long long> fire_count;      // (D) tokens on which the feature was > 0
    std::vector<float> top_values;          // (D,K) descending
    std::vector<long long> top_pos;         // (D,K) stream position row*T + t, -1 if empty
    std::vector<float> hist_edges;          // (57)
    std::vector<long long> hist_counts;     // (D,58)
    std::vector<float> band_values;         // (D,3,5)
    std::vector<long long> band_pos;        // (D,3,5) -1 if empty; in hash order after feature_dump_order_bands
    std::vector<uint16_t> context_top;      // (D,K,24) F16 bits
    std::vector<uint16_t> context_band;     // (D,3,5,24) F16 bits
    std::vector<long long> logit_top_tokens, logit_bottom_tokens;  // (D,10)
    std::vector<float> logit_top_values, logit_bottom_values;      // (D,10)
};

// what a FeatureDump of D features and top-K holds, in bytes (the memory plans print it)
inline double feature_dump_host_bytes(long long D, long long K) {
    const double S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    return D * (8.0 + 12.0 * K + 8.0 * FEATURE_DUMP_HIST_BINS + 12.0 * S + 2.0 * W * (K + S) + 24.0 * FEATURE_DUMP_LOGITS);
}

inline std::vector<float> feature_dump_hist_edges() {
    std::vector<float> e(FEATURE_DUMP_HIST_EDGES);
    for (int i = 0; i < FEATURE_DUMP_HIST_EDGES; i++) e[i] = (float)pow(10.0, -4.0 + i / 8.0);
    return e;
}

inline void feature_dump_init(FeatureDump* fd, int D, int K) {
    if (D <= 0 || K <= 0) die("feature_dump_init: D %d and K %d must be positive", D, K);
    const size_t S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT, L = FEATURE_DUMP_LOGITS;
    fd->D = D;
    fd->K = K;
    fd->tokens = 0;
    fd->fire_count.assign(D, 0);
    fd->top_values.assign((size_t)D * K, 0.0f);
    fd->top_pos.assign((size_t)D * K, -1);
    fd->hist_edges = feature_dump_hist_edges();
    fd->hist_counts.assign((size_t)D * FEATURE_DUMP_HIST_BINS, 0);
    fd->band_values.assign((size_t)D * S, 0.0f);
    fd->band_pos.assign((size_t)D * S, -1);
    fd->context_top.assign((size_t)D * K * W, FEATURE_DUMP_F16_NAN);
    fd->context_band.assign((size_t)D * S * W, FEATURE_DUMP_F16_NAN);
    fd->logit_top_tokens.assign((size_t)D * L, -1);
    fd->logit_bottom_tokens.assign((size_t)D * L, -1);
    fd->logit_top_values.assign((size_t)D * L, NAN);
    fd->logit_bottom_values.assign((size_t)D * L, NAN);
}

// Pass 1: merges one batch of activations c (N,D), token n at stream position first_pos + n.
// Batches must come in stream order: every token of this batch is then later than every kept
// entry, so a new value enters only if strictly greater than the K-th (a tie keeps the earlier
// token) and goes after the entries it equals. Features are independent: each is one thread's loop.
inline void feature_dump_add(FeatureDump* fd, const float* c, int N, long long first_pos) {
    const int D = fd->D, K = fd->K;
    const float* edges = fd->hist_edges.data();
    const int FBLOCK = 256;  // features per task: each row's slice of 1 KiB is read contiguously
#ifdef _OPENMP  // dev/cuda builds without -fopenmp; unguarded, -Wall flags the pragma
    #pragma omp parallel for schedule(static)
#endif
    for (int d0 = 0; d0 < D; d0 += FBLOCK) {
        const int d1 = d0 + FBLOCK < D ? d0 + FBLOCK : D;
        for (int n = 0; n < N; n++) {
            const float* row = c + (size_t)n * D;
            for (int d = d0; d < d1; d++) {
                const float v = row[d];
                if (!(v > 0.0f)) continue;  // zero, negative or NaN: not a firing
                fd->fire_count[d]++;
                fd->hist_counts[(size_t)d * FEATURE_DUMP_HIST_BINS + feature_dump_hist_bin(edges, v)]++;
                float* vals = fd->top_values.data() + (size_t)d * K;
                long long* pos = fd->top_pos.data() + (size_t)d * K;
                if (!(v > vals[K - 1])) continue;
                int j = K - 1;  // shift down everything strictly smaller, then insert
                while (j > 0 && vals[j - 1] < v) { vals[j] = vals[j - 1]; pos[j] = pos[j - 1]; j--; }
                vals[j] = v;
                pos[j] = first_pos + n;
            }
        }
    }
    fd->tokens += N;
}

// Pass 2, first half: offers each firing of the batch c (N,D) to its band (feature_dump_band of
// the feature's maximum from pass 1); the same batches as pass 1, in stream order
inline void feature_dump_add_bands(FeatureDump* fd, const float* c, int N, long long first_pos) {
    const int D = fd->D, K = fd->K, S = FEATURE_DUMP_BAND_SIZE;
    const int FBLOCK = 256;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static)
#endif
    for (int d0 = 0; d0 < D; d0 += FBLOCK) {
        const int d1 = d0 + FBLOCK < D ? d0 + FBLOCK : D;
        for (int n = 0; n < N; n++) {
            const float* row = c + (size_t)n * D;
            for (int d = d0; d < d1; d++) {
                const float v = row[d];
                if (!(v > 0.0f)) continue;
                const int b = feature_dump_band(v, fd->top_values[(size_t)d * K]);
                if (b < 0) continue;
                const size_t at = ((size_t)d * FEATURE_DUMP_BANDS + b) * S;
                feature_dump_band_offer(fd->band_pos.data() + at, fd->band_values.data() + at, d, first_pos + n, v);
            }
        }
    }
}

// The context of every example slot (pos (D,slots)) whose position lies in this batch c (N,D):
// the feature's activation on positions p + FIRST .. p + FIRST + 23 of p's row, NaN outside it,
// into context (D,slots,24) as F16
inline void feature_dump_capture(uint16_t* context, const long long* pos, int D, int slots, const float* c, int N, long long first_pos,
                                 int T) {
    const int W = FEATURE_DUMP_CONTEXT;
#ifdef _OPENMP
    #pragma omp parallel for schedule(static)
#endif
    for (int d = 0; d < D; d++)
        for (int j = 0; j < slots; j++) {
            const long long p = pos[(size_t)d * slots + j];
            if (p < first_pos || p >= first_pos + N) continue;  // empty (-1) or in another batch
            const long long row0 = p - p % T;
            uint16_t* out = context + ((size_t)d * slots + j) * W;
            for (int w = 0; w < W; w++) {
                const long long q = p + FEATURE_DUMP_CONTEXT_FIRST + w;
                out[w] = feature_dump_f16(q >= row0 && q < row0 + T ? c[(size_t)(q - first_pos) * D + d] : NAN);
            }
        }
}

// Pass 2, second half (after feature_dump_add_bands of the same batch): the contexts of the
// top-K examples and of the band examples in this batch. The batch must hold whole rows of T.
inline void feature_dump_add_contexts(FeatureDump* fd, const float* c, int N, long long first_pos, int T) {
    if (T <= 0 || N % T != 0 || first_pos % T != 0)
        die("feature_dump_add_contexts: a batch of %d tokens from position %lld is not whole rows of %d", N, first_pos, T);
    feature_dump_capture(fd->context_top.data(), fd->top_pos.data(), fd->D, fd->K, c, N, first_pos, T);
    feature_dump_capture(fd->context_band.data(), fd->band_pos.data(), fd->D, FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, c, N,
                         first_pos, T);
}

// After pass 2 (on either trainer's state): each band's slots in key order (hash, then position;
// empty slots last), their contexts moved with them, and every empty slot's context NaN
inline void feature_dump_order_bands(FeatureDump* fd) {
    const int S = FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    for (int d = 0; d < fd->D; d++)
        for (int b = 0; b < FEATURE_DUMP_BANDS; b++) {
            const size_t at = ((size_t)d * FEATURE_DUMP_BANDS + b) * S;
            long long* pos = fd->band_pos.data() + at;
            float* val = fd->band_values.data() + at;
            uint16_t* ctx = fd->context_band.data() + at * W;
            int order[FEATURE_DUMP_BAND_SIZE];
            for (int s = 0; s < S; s++) order[s] = s;
            std::sort(order, order + S, [&](int i, int j) {
                if ((pos[i] < 0) != (pos[j] < 0)) return pos[j] < 0;
                return pos[i] >= 0 && feature_dump_band_before(d, pos[i], pos[j]); });
            long long p2[FEATURE_DUMP_BAND_SIZE];
            float v2[FEATURE_DUMP_BAND_SIZE];
            std::vector<uint16_t> c2(ctx, ctx + (size_t)S * W);
            for (int s = 0; s < S; s++) {
                p2[s] = pos[order[s]];
                v2[s] = val[order[s]];
                memcpy(ctx + (size_t)s * W, c2.data() + (size_t)order[s] * W, W * sizeof(uint16_t));
            }
            for (int s = 0; s < S; s++) {
                pos[s] = p2[s];
                val[s] = p2[s] < 0 ? 0.0f : v2[s];
                if (p2[s] < 0) std::fill(ctx + (size_t)s * W, ctx + (size_t)(s + 1) * W, (uint16_t)FEATURE_DUMP_F16_NAN);
            }
        }
    for (size_t i = 0; i < fd->top_pos.size(); i++)
        if (fd->top_pos[i] < 0)
            std::fill(fd->context_top.begin() + i * W, fd->context_top.begin() + (i + 1) * W, (uint16_t)FEATURE_DUMP_F16_NAN);
}

// Logit effects of every feature, fp32: E[f][v] = Σ_i a[f][i] W_U[v][i] + k_f with a[f] = W_dec_norm[f]∘γ
// (γ = lnfw), W_U (V,C) the unembedding the trainers hold (HF wte less its mean row: gpt2_shift_unembed),
// and k_f = Σ_i a[f][i] mean[i] (in double), the constant that shift took from every effect of f, added
// back so the values are those of the uncentred W_U; mean null: W_U is as loaded, k_f = 0.
// A block of 64 features meets a tile of 64 vocabulary rows, transposed so the inner loop runs along
// the vocabulary (64 sums side by side, each in i order: no horizontal adds, the same bits for any
// thread count); the transpose costs 1/64 of the multiply-adds.
inline void feature_dump_logit_effects(FeatureDump* fd, const float* W_dec_norm, const float* gamma, const float* W_U, const float* mean,
                                       int C, int V) {
    const int D = fd->D, L = FEATURE_DUMP_LOGITS;
    constexpr int FB = 64, VB = 64;
#ifdef _OPENMP
    #pragma omp parallel for schedule(dynamic)
#endif
    for (int f0 = 0; f0 < D; f0 += FB) {
        const int nf = std::min(FB, D - f0);
        std::vector<float> a((size_t)nf * C), k(nf), wt((size_t)C * VB), tv((size_t)nf * L, -INFINITY), bv((size_t)nf * L, INFINITY);
        std::vector<int> ti((size_t)nf * L, INT_MAX), bi((size_t)nf * L, INT_MAX);
        for (int f = 0; f < nf; f++) {
            double kf = 0.0;
            for (int i = 0; i < C; i++) {
                a[(size_t)f * C + i] = W_dec_norm[(size_t)(f0 + f) * C + i] * gamma[i];
                if (mean) kf += (double)a[(size_t)f * C + i] * mean[i];
            }
            k[f] = (float)kf;
        }
        for (int v0 = 0; v0 < V; v0 += VB) {
            const int nv = std::min(VB, V - v0);
            for (int i = 0; i < C; i++)
                for (int v = 0; v < VB; v++) wt[(size_t)i * VB + v] = v < nv ? W_U[(size_t)(v0 + v) * C + i] : 0.0f;
            for (int f = 0; f < nf; f++) {
                const float* af = a.data() + (size_t)f * C;
                float acc[VB] = {0.0f};
                for (int i = 0; i < C; i++) {
                    const float ai = af[i], *w = wt.data() + (size_t)i * VB;
                    for (int v = 0; v < VB; v++) acc[v] += ai * w[v];
                }
                for (int v = 0; v < nv; v++) {
                    const float e = acc[v] + k[f];
                    feature_dump_logit_insert(tv.data() + (size_t)f * L, ti.data() + (size_t)f * L, e, v0 + v, true);
                    feature_dump_logit_insert(bv.data() + (size_t)f * L, bi.data() + (size_t)f * L, e, v0 + v, false);
                }
            }
        }
        for (size_t j = 0; j < (size_t)nf * L; j++) {
            const size_t o = (size_t)f0 * L + j;
            fd->logit_top_tokens[o] = ti[j] == INT_MAX ? -1 : ti[j];
            fd->logit_top_values[o] = ti[j] == INT_MAX ? NAN : tv[j];
            fd->logit_bottom_tokens[o] = bi[j] == INT_MAX ? -1 : bi[j];
            fd->logit_bottom_values[o] = bi[j] == INT_MAX ? NAN : bv[j];
        }
    }
}

// ----------------------------------------------------------------------------
// the files

// the features.json text both trainers write: where the positions in top_pos point to
inline std::string feature_dump_meta(const std::string& val_glob, const std::vector<std::string>& val_shards, int seq_len,
                                     long long n_tokens, int d_sae, int topk, int layer, const std::string& model,
                                     const std::string& mode) {
    // the shard paths are as the trainer opened them; cwd lets a reader resolve relative ones from anywhere
    char cwd[4096];
    std::string here = getcwd(cwd, sizeof(cwd)) ? cwd : "";
    std::string s = "{\n  \"val\": \"" + json_escape(val_glob) + "\",\n  \"cwd\": \"" + json_escape(here) + "\",\n  \"val_shards\": [";
    for (size_t i = 0; i < val_shards.size(); i++) s += (i ? ", \"" : "\"") + json_escape(val_shards[i]) + "\"";
    s += "],\n  \"seq_len\": " + std::to_string(seq_len) + ",\n  \"n_tokens\": " + std::to_string(n_tokens) +
         ",\n  \"d_sae\": " + std::to_string(d_sae) + ",\n  \"topk\": " + std::to_string(topk) +
         ",\n  \"layer\": " + std::to_string(layer) + ",\n  \"hook_name\": \"blocks." + std::to_string(layer) +
         ".hook_resid_pre\",\n  \"model\": \"" + json_escape(model) + "\",\n  \"mode\": \"" + json_escape(mode) + "\",\n";
    s += "  \"logits\": {\"k\": 10, \"of\": \"W_dec_norm[f] . diag(ln_f.weight) . W_U^T, W_U the uncentred unembedding\"},\n"
         "  \"hist\": {\"first_edge\": 1e-4, \"last_edge\": 1e3, \"per_decade\": 8, \"counts\": \"[below, 56 bins, from the last edge up]\"},\n"
         "  \"bands\": {\"fracs\": [0, 0.25, 0.5, 0.75], \"per_band\": 5, \"order\": \"splitmix64((feature << 40) ^ position) ascending\"},\n"
         "  \"context\": {\"first\": -19, \"width\": 24, \"dtype\": \"F16\"}\n}\n";
    return s;
}

inline void feature_dump_write(const FeatureDump* fd, const std::string& dir, const std::string& json_meta) {
    JsonValue check;
    if (!json_parse(json_meta, check) || check.kind != JsonValue::OBJECT)
        die("feature_dump_write: the metadata for '%s/features.json' is not a JSON object", dir.c_str());
    make_dir(dir);
    const int D = fd->D, K = fd->K, L = FEATURE_DUMP_LOGITS, NB = FEATURE_DUMP_BANDS, S = FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    std::vector<float> freq(D), log10_freq(D);
    for (int d = 0; d < D; d++) {
        double f = fd->tokens > 0 ? (double)fd->fire_count[d] / (double)fd->tokens : 0.0;
        freq[d] = (float)f;
        log10_freq[d] = (float)log10(f + 1e-10);
    }
    const float band_fracs[FEATURE_DUMP_BANDS + 1] = {0.0f, 0.25f, 0.5f, 0.75f};  // feature_dump_band's bounds
    const long long context_first = FEATURE_DUMP_CONTEXT_FIRST;
    std::vector<StWriteEntry> t = {
        {"frequency", {D}, freq.data()},
        {"log10_frequency", {D}, log10_freq.data()},
        {"top_values", {D, K}, fd->top_values.data()},
        {"top_pos", {D, K}, fd->top_pos.data(), "I64"},
        {"fire_count", {D}, fd->fire_count.data(), "I64"},
        {"logit_top_tokens", {D, L}, fd->logit_top_tokens.data(), "I64"},
        {"logit_top_values", {D, L}, fd->logit_top_values.data()},
        {"logit_bottom_tokens", {D, L}, fd->logit_bottom_tokens.data(), "I64"},
        {"logit_bottom_values", {D, L}, fd->logit_bottom_values.data()},
        {"hist_edges", {FEATURE_DUMP_HIST_EDGES}, fd->hist_edges.data()},
        {"hist_counts", {D, FEATURE_DUMP_HIST_BINS}, fd->hist_counts.data(), "I64"},
        {"band_fracs", {NB + 1}, band_fracs},
        {"band_pos", {D, NB, S}, fd->band_pos.data(), "I64"},
        {"band_values", {D, NB, S}, fd->band_values.data()},
        {"context_acts_top", {D, K, W}, fd->context_top.data(), "F16"},
        {"context_acts_band", {D, NB, S, W}, fd->context_band.data(), "F16"},
        {"context_first", {1}, &context_first, "I64"}};
    static_assert(sizeof(long long) == 8, "positions, counts and tokens are written as I64");
    safetensors_write(dir + "/features.safetensors", t,
                      {{"tokens", std::to_string(fd->tokens)}, {"d_sae", std::to_string(D)}, {"topk", std::to_string(K)}});
    std::string tmp = dir + "/features.json.tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fwriteCheck(json_meta.data(), 1, json_meta.size(), fp, tmp.c_str());
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, dir + "/features.json");
}

// ----------------------------------------------------------------------------
// the device dump's layout (feature_dump.cuh's kernels fill it, the trainer carves it out of its
// arena): plain pointers and a carve, host code only, here so that test/mock_cuda.h shares it

#define FEATURE_DUMP_MAX_K 32        // the per-thread top-K is a local array of this size
#define FEATURE_DUMP_LOGIT_CHUNK 256 // features per logit-effects matmul: a (256,V) fp32 scratch, 49 MiB at V = 50257

// the device state of a dump of D features, top-K, for a model of C channels and V tokens
struct FeatureDumpDevice {
    int D = 0, K = 0, C = 0, V = 0;
    unsigned long long* fire_count = nullptr;   // (D)
    float* top_values = nullptr;                // (D,K)
    long long* top_pos = nullptr;               // (D,K)
    float* hist_edges = nullptr;                // (57)
    unsigned long long* hist_counts = nullptr;  // (D,58)
    float* band_values = nullptr;               // (D,3,5)
    long long* band_pos = nullptr;              // (D,3,5)
    uint16_t* context_top = nullptr;            // (D,K,24) F16 bits
    uint16_t* context_band = nullptr;           // (D,3,5,24) F16 bits
    long long *logit_top_tokens = nullptr, *logit_bottom_tokens = nullptr;  // (D,10)
    float *logit_top_values = nullptr, *logit_bottom_values = nullptr;      // (D,10)
    float* gamma = nullptr;                     // (C) lnfw, fp32
    float* unembed_mean = nullptr;              // (C) the mean row taken from W_U (zeros if none)
    float* logit_rows = nullptr;                // (CHUNK,C) scratch: W_dec_norm∘γ of a chunk
    float* logit_consts = nullptr;              // (CHUNK) scratch: each row's constant k_f
    float* logit_effects = nullptr;             // (CHUNK,V) scratch: the chunk's effects less k_f
};

// carves every buffer out of an arena with take<T>(count) (the trainer's DeviceArena, or a
// bench's allocator): the plan pass counts the same bytes
template <typename Arena>
void feature_dump_device_carve(FeatureDumpDevice* g, Arena* a, int D, int K, int C, int V) {
    const size_t d = D, S = FEATURE_DUMP_BANDS * FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT, L = FEATURE_DUMP_LOGITS;
    const size_t CH = FEATURE_DUMP_LOGIT_CHUNK;
    g->D = D; g->K = K; g->C = C; g->V = V;
    g->fire_count = a->template take<unsigned long long>(d);
    g->top_values = a->template take<float>(d * K);
    g->top_pos = a->template take<long long>(d * K);
    g->hist_edges = a->template take<float>(FEATURE_DUMP_HIST_EDGES);
    g->hist_counts = a->template take<unsigned long long>(d * FEATURE_DUMP_HIST_BINS);
    g->band_values = a->template take<float>(d * S);
    g->band_pos = a->template take<long long>(d * S);
    g->context_top = a->template take<uint16_t>(d * K * W);
    g->context_band = a->template take<uint16_t>(d * S * W);
    g->logit_top_tokens = a->template take<long long>(d * L);
    g->logit_bottom_tokens = a->template take<long long>(d * L);
    g->logit_top_values = a->template take<float>(d * L);
    g->logit_bottom_values = a->template take<float>(d * L);
    g->gamma = a->template take<float>(C);
    g->unembed_mean = a->template take<float>(C);
    g->logit_rows = a->template take<float>(CH * C);
    g->logit_consts = a->template take<float>(CH);
    g->logit_effects = a->template take<float>(CH * V);
}
