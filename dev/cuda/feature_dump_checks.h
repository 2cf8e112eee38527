// The host side of the --dump-features checks, shared by dev/cuda/feature_dump.cu (the GPU's
// dump) and test/test_feature_dump_emulated.cpp (the same kernels emulated on a CPU): test
// activations, the CPU trainer's dump of them (llmc/feature_dump.h), the comparisons, and the
// device state both set up. Include llmc/feature_dump.cuh first.
#pragma once
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <algorithm>
#include <vector>
#include "rand.h"
#include "../../llmc/feature_dump.h"

// the device's dump state for D features, carved from arena `a` (each file's own: cudaMalloc, or
// host blocks in the emulation) and reset, its histogram edges from a host dump
template <typename Arena>
FeatureDumpDevice device_dump_alloc(Arena* a, int D, int K, int C, int V) {
    FeatureDumpDevice g;
    feature_dump_device_carve(&g, a, D, K, C, V);
    FeatureDump host;
    feature_dump_init(&host, 1, 1);  // only its histogram edges are read
    feature_dump_reset_gpu(g, host, 0);
    return g;
}

template <typename T>
size_t count_diff(const std::vector<T>& a, const std::vector<T>& b) {
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); i++) bad += memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return bad;
}

// every array of the two passes, bit for bit
inline bool same_dump(const FeatureDump& a, const FeatureDump& b, const char* what) {
    struct Part { const char* name; size_t bad; };
    Part parts[] = {{"fire_count", count_diff(a.fire_count, b.fire_count)}, {"top_values", count_diff(a.top_values, b.top_values)},
                    {"top_pos", count_diff(a.top_pos, b.top_pos)}, {"hist_counts", count_diff(a.hist_counts, b.hist_counts)},
                    {"band_values", count_diff(a.band_values, b.band_values)}, {"band_pos", count_diff(a.band_pos, b.band_pos)},
                    {"context_top", count_diff(a.context_top, b.context_top)}, {"context_band", count_diff(a.context_band, b.context_band)},
                    {"tokens", (size_t)(a.tokens != b.tokens)}};
    size_t bad = 0;
    for (const Part& p : parts) {
        if (p.bad) printf("  %s: %zu differences in %s\n", what, p.bad, p.name);
        bad += p.bad;
    }
    for (size_t i = 0, shown = 0; i < a.top_values.size() && shown < 3; i++)
        if (memcmp(&a.top_values[i], &b.top_values[i], sizeof(float)) != 0 || a.top_pos[i] != b.top_pos[i]) {
            printf("  %s top-K mismatch at feature %zu slot %zu: (%.8g, %lld) vs (%.8g, %lld)\n", what, i / a.K, i % a.K, a.top_values[i],
                   a.top_pos[i], b.top_values[i], b.top_pos[i]);
            shown++;
        }
    printf("  %-52s %s\n", what, bad ? "FAIL" : "ok");
    return bad == 0;
}

// ReLU-like test activations with many ties: ~70% zeros, the rest drawn from 8 values or
// continuous; feature 0 never fires (empty slots, NaN contexts), 1 always fires with one value
// (top-K = the first K positions, no band examples), 2 also sees negatives and NaN (neither counts)
inline std::vector<float> make_activations(int N, int D) {
    std::vector<float> c((size_t)N * D);
    for (size_t i = 0; i < c.size(); i++) {
        float u = rand_uniform();
        if (u < 0.7f) c[i] = 0.0f;
        else if (u < 0.85f) c[i] = 0.125f * (float)(1 + (int)(rand_uniform() * 8.0f));  // 8 values: ties
        else c[i] = 2.0f * rand_uniform();
    }
    for (int n = 0; n < N; n++) {
        if (D > 0) c[(size_t)n * D + 0] = 0.0f;
        if (D > 1) c[(size_t)n * D + 1] = 0.5f;
        if (D > 2 && n % 3 == 1) c[(size_t)n * D + 2] = n % 2 ? -1.0f : NAN;
    }
    return c;
}

// both passes on the CPU, in batches of whole rows cut at rows r1 and r2 (0 < r1 <= r2 <= rows)
inline FeatureDump cpu_dump(const float* c, int rows, int T, int D, int K, int r1, int r2) {
    FeatureDump fd;
    feature_dump_init(&fd, D, K);
    const int cuts[4] = {0, r1, r2, rows};
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 3; i++) {
            const int n0 = cuts[i] * T, n = (cuts[i + 1] - cuts[i]) * T;
            if (n == 0) continue;
            if (pass == 0) feature_dump_add(&fd, c + (size_t)n0 * D, n, n0);
            else {
                feature_dump_add_bands(&fd, c + (size_t)n0 * D, n, n0);
                feature_dump_add_contexts(&fd, c + (size_t)n0 * D, n, n0, T);
            }
        }
    feature_dump_order_bands(&fd);
    return fd;
}

// the CPU trainer's decoder normalisation (train_gpt2_sae_cpu.cpp, sae_decoder_normalize)
inline std::vector<float> normalize_rows(const std::vector<float>& W_dec, int D, int C) {
    std::vector<float> out(W_dec.size());
    for (int d = 0; d < D; d++) {
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += W_dec[(size_t)d * C + i] * W_dec[(size_t)d * C + i];
        float nrm = fmaxf(sqrtf(ss), 1e-12f);
        for (int i = 0; i < C; i++) out[(size_t)d * C + i] = W_dec[(size_t)d * C + i] / nrm;
    }
    return out;
}

// logit effects compared with tolerance: the k-th value of each list within tol of the scale
// (the largest |value|), and a token may differ only where the two lists' values there are
// that close (two near-equal effects swapped)
inline bool same_logits(const FeatureDump& a, const FeatureDump& b, double tol, const char* what) {
    double scale = 0.0;
    for (float v : b.logit_top_values) if (v == v) scale = fmax(scale, fabs(v));
    for (float v : b.logit_bottom_values) if (v == v) scale = fmax(scale, fabs(v));
    size_t bad = 0, swapped = 0;
    double worst = 0.0;
    const std::vector<float>* va[2] = {&a.logit_top_values, &a.logit_bottom_values};
    const std::vector<float>* vb[2] = {&b.logit_top_values, &b.logit_bottom_values};
    const std::vector<long long>* ta[2] = {&a.logit_top_tokens, &a.logit_bottom_tokens};
    const std::vector<long long>* tb[2] = {&b.logit_top_tokens, &b.logit_bottom_tokens};
    for (int side = 0; side < 2; side++)
        for (size_t i = 0; i < va[side]->size(); i++) {
            float x = (*va[side])[i], y = (*vb[side])[i];
            double err = (x != x && y != y) ? 0.0 : fabs((double)x - y);
            if (!(err <= tol * scale)) { if (bad < 5) printf("  %s: slot %zu value %.8g vs %.8g\n", what, i, x, y); bad++; }
            worst = fmax(worst, err);
            if ((*ta[side])[i] != (*tb[side])[i]) swapped++;
        }
    printf("  %-52s max err %.2e of scale %.3g, %zu token swaps (near ties) %s\n", what, worst, scale, swapped, bad ? "FAIL" : "ok");
    return bad == 0;
}

// the definition: every effect in double, fully sorted, with the constant of the mean row
inline FeatureDump logits_bruteforce(const std::vector<float>& Wn, const std::vector<float>& gamma, const std::vector<float>& W_U,
                              const std::vector<float>& mean, int D, int C, int V) {
    const int L = FEATURE_DUMP_LOGITS;
    FeatureDump fd;
    feature_dump_init(&fd, D, 1);
    for (int d = 0; d < D; d++) {
        std::vector<std::pair<double, int>> e(V);
        for (int v = 0; v < V; v++) {
            double acc = 0.0;
            for (int i = 0; i < C; i++) acc += (double)Wn[(size_t)d * C + i] * gamma[i] * ((double)W_U[(size_t)v * C + i] + mean[i]);
            e[v] = {acc, v};
        }
        std::vector<std::pair<double, int>> up = e;
        std::sort(e.begin(), e.end(), [](const std::pair<double, int>& x, const std::pair<double, int>& y) {
            return x.first != y.first ? x.first > y.first : x.second < y.second; });
        std::sort(up.begin(), up.end(), [](const std::pair<double, int>& x, const std::pair<double, int>& y) {
            return x.first != y.first ? x.first < y.first : x.second < y.second; });
        for (int j = 0; j < L && j < V; j++) {
            fd.logit_top_tokens[(size_t)d * L + j] = e[j].second;
            fd.logit_top_values[(size_t)d * L + j] = (float)e[j].first;
            fd.logit_bottom_tokens[(size_t)d * L + j] = up[j].second;
            fd.logit_bottom_values[(size_t)d * L + j] = (float)up[j].first;
        }
    }
    return fd;
}

struct LogitCase {
    int D, C, V;
    std::vector<float> W_dec, gamma, W_U, mean;  // W_U is the shifted one, mean its mean row
};

inline LogitCase make_logit_case(int D, int C, int V) {
    LogitCase lc{D, C, V, {}, {}, {}, {}};
    lc.W_dec.resize((size_t)D * C);
    lc.W_U.resize((size_t)V * C);
    for (float& x : lc.W_dec) x = 2.0f * rand_uniform() - 1.0f;
    for (int i = 0; i < C; i++) lc.gamma.push_back(0.5f + rand_uniform());
    for (int i = 0; i < C; i++) lc.mean.push_back(0.3f * (rand_uniform() - 0.5f));
    for (float& x : lc.W_U) x = 0.2f * (rand_uniform() - 0.5f);
    return lc;
}

// the CPU trainer's logit effects of features [0, D) of a case (its decoder normalised as the
// CPU trainer normalises it)
inline FeatureDump cpu_logits(const LogitCase& lc, int D) {
    std::vector<float> Wn = normalize_rows(lc.W_dec, D, lc.C);
    FeatureDump ref;
    feature_dump_init(&ref, D, 1);
    feature_dump_logit_effects(&ref, Wn.data(), lc.gamma.data(), lc.W_U.data(), lc.mean.data(), lc.C, lc.V);
    return ref;
}
