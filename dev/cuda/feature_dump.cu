/*
--dump-features kernels, llmc/feature_dump.cuh: pass 1 (firing count, histogram, running top-K),
pass 2 (band examples, contexts of the examples), the logit effects (decoder rows times lnfw, an
fp32 matmul against W_U, a top/bottom-10 selection per row). The CPU references are the
trainer's own, in llmc/feature_dump.h. From the same activations the GPU must equal them exactly
(counts, values, positions, F16 context bits): both make every choice with the same helpers on a
total order. The logit effects agree to fp32 rounding of the sums (cuBLAS sums in another order).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make feature_dump
  ./feature_dump [check|cpu|N]   no argument: everything; check: CPU self-test and GPU checks;
                                 cpu: CPU self-test only (no GPU); N: check and time variant N
                                 of the pass-1 kernel (the other kernels have one version each)
CPU self-test: both passes, streamed whole and in uneven batches of whole rows, against a brute
  force that sorts every firing (top-K by value then position, each band by hash then position),
  bins each activation by a linear scan of the edges and reads each context directly; the
  logit effects against a double-precision brute force with a full sort (values to 1e-5 of the
  scale, tokens equal unless two effects are that close), with the mean row added back.
Variants of the pass-1 kernel:
  1  one row per loop step: each load waits for the previous one to be used
  2  llmc: loads for 8 rows issued before any is used (more memory requests in flight: there
     are only D threads)
The trainer ships variant 2 (feature_dump_add_gpu), in fp32 and bf16.
GPU checks, in fp32 and bf16, each shape streamed as three uneven batches of whole rows onto
state the GPU reset itself (buffers poisoned first, so a slot the reset or a kernel misses
fails): (rows, T, D, K) = (1,1,1,1) (7,1,33,3) (3,12,4099,10) (10,10,1000,32) (4,64,46080,10).
Inputs ~70% zeros, the rest drawn from 8 values (many ties) or continuous; feature 0 never
fires (empty slots, NaN contexts), 1 always fires with one value (top-K = the first K
positions, no band examples), 2 also sees negatives and NaN (neither counts). Then the paper
shape (8 rows of 1024, D 46080, K 10) from fill_random, ReLU-like. The selection kernel alone
on given effects with ties, V = 7, 1000 and 50257; the logit pipeline against the CPU at
(D, C, V) = (300, 64, 1000), (70, 100, 7), and 512 of the paper shape's 46080 features (C 768,
V 50257). Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/feature_dump.cuh"
#include "feature_dump_checks.h"  // the activations, the CPU's dump and the comparisons (test_feature_dump_emulated.cpp's too)

// ----------------------------------------------------------------------------
// brute force for the CPU self-test: every firing of every feature sorted, binned, windowed

FeatureDump feature_dump_bruteforce(const float* c, int N, int D, int K, int T) {
    const int NB = FEATURE_DUMP_BANDS, S = FEATURE_DUMP_BAND_SIZE, W = FEATURE_DUMP_CONTEXT;
    FeatureDump fd;
    feature_dump_init(&fd, D, K);
    auto window = [&](uint16_t* out, long long p, int d) {
        for (int w = 0; w < W; w++) {
            long long q = p + FEATURE_DUMP_CONTEXT_FIRST + w;
            out[w] = feature_dump_f16(q / T == p / T && q >= 0 ? c[(size_t)q * D + d] : NAN);
        }
    };
    for (int d = 0; d < D; d++) {
        std::vector<std::pair<float, long long>> fired;
        for (int n = 0; n < N; n++) {
            float v = c[(size_t)n * D + d];
            if (!(v > 0.0f)) continue;
            fired.push_back({v, n});
            int bin = 0;
            while (bin < FEATURE_DUMP_HIST_EDGES && fd.hist_edges[bin] <= v) bin++;
            fd.hist_counts[(size_t)d * FEATURE_DUMP_HIST_BINS + bin]++;
        }
        std::sort(fired.begin(), fired.end(), [](const std::pair<float, long long>& a, const std::pair<float, long long>& b) {
            return a.first != b.first ? a.first > b.first : a.second < b.second; });
        fd.fire_count[d] = (long long)fired.size();
        for (int k = 0; k < K && k < (int)fired.size(); k++) {
            fd.top_values[(size_t)d * K + k] = fired[k].first;
            fd.top_pos[(size_t)d * K + k] = fired[k].second;
            window(fd.context_top.data() + ((size_t)d * K + k) * W, fired[k].second, d);
        }
        if (fired.empty()) continue;
        const float vmax = fired[0].first;
        const float fr[NB + 1] = {0.0f, 0.25f, 0.5f, 0.75f};
        for (int b = 0; b < NB; b++) {
            std::vector<std::pair<uint64_t, long long>> members;  // (hash, position)
            for (auto& f : fired)
                if (f.first > fr[b] * vmax && f.first <= fr[b + 1] * vmax) members.push_back({feature_dump_hash(d, f.second), f.second});
            std::sort(members.begin(), members.end());
            for (int s = 0; s < S && s < (int)members.size(); s++) {
                const size_t at = ((size_t)d * NB + b) * S + s;
                fd.band_pos[at] = members[s].second;
                fd.band_values[at] = c[(size_t)members[s].second * D + d];
                window(fd.context_band.data() + at * W, members[s].second, d);
            }
        }
    }
    fd.tokens = N;
    return fd;
}

int cpu_self_test() {
    int failures = 0;
    const int shapes[][4] = {{1, 1, 1, 1}, {7, 1, 33, 3}, {5, 10, 300, 10}, {30, 10, 17, 32}, {4, 37, 60, 7}};  // rows, T, D, K
    for (auto& s : shapes) {
        const int rows = s[0], T = s[1], D = s[2], K = s[3], N = rows * T;
        std::vector<float> c = make_activations(N, D);
        FeatureDump ref = feature_dump_bruteforce(c.data(), N, D, K, T);
        char name[96];
        snprintf(name, sizeof(name), "cpu passes vs brute force, whole, rows=%d T=%d D=%d K=%d", rows, T, D, K);
        failures += !same_dump(cpu_dump(c.data(), rows, T, D, K, rows, rows), ref, name);
        snprintf(name, sizeof(name), "cpu passes vs brute force, 3 batches, rows=%d T=%d D=%d K=%d", rows, T, D, K);
        failures += !same_dump(cpu_dump(c.data(), rows, T, D, K, rows / 3, rows - rows / 5), ref, name);
    }
    const int lshapes[][3] = {{37, 24, 1000}, {20, 16, 7}, {70, 100, 257}};
    for (auto& s : lshapes) {
        LogitCase lc = make_logit_case(s[0], s[1], s[2]);
        std::vector<float> Wn = normalize_rows(lc.W_dec, lc.D, lc.C);
        FeatureDump ref = logits_bruteforce(Wn, lc.gamma, lc.W_U, lc.mean, lc.D, lc.C, lc.V), got;
        feature_dump_init(&got, lc.D, 1);
        feature_dump_logit_effects(&got, Wn.data(), lc.gamma.data(), lc.W_U.data(), lc.mean.data(), lc.C, lc.V);
        char name[96];
        snprintf(name, sizeof(name), "cpu logit effects vs brute force D=%d C=%d V=%d", lc.D, lc.C, lc.V);
        failures += !same_logits(got, ref, 1e-5, name);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// variant 1 (timing baseline): the pass-1 kernel with one row per loop step

template <typename floatX>
void feature_dump_variant(int variant, const FeatureDumpDevice& g, const floatX* c, int N, long long first_pos) {
    if (variant == 1) {
        feature_dump_add_kernel<floatX, 1><<<ceil_div(g.D, 128), 128>>>(g.fire_count, g.top_values, g.top_pos, g.hist_counts, g.hist_edges,
                                                                       c, N, g.D, g.K, first_pos);
        cudaLaunchCheck();
    } else {
        feature_dump_add_gpu(g, c, N, first_pos, 0);
    }
}

// ----------------------------------------------------------------------------
// GPU checks

// the device state from cudaMalloc, every buffer poisoned (NaN bytes), then the reset under test
struct BenchArena {
    std::vector<void*> blocks;
    template <typename T>
    T* take(size_t n) {
        T* p = device_alloc<T>(n);
        poison(p, std::max(n, (size_t)1) * sizeof(T));
        blocks.push_back(p);
        return p;
    }
    void free_all() { for (void* p : blocks) cudaCheck(cudaFree(p)); blocks.clear(); }
};

// the GPU's passes, downloaded and ordered as the trainer does
FeatureDump device_dump_read(const FeatureDumpDevice& g, long long tokens) {
    FeatureDump fd;
    feature_dump_init(&fd, g.D, g.K);
    feature_dump_download(&fd, g, tokens);
    feature_dump_order_bands(&fd);
    return fd;
}

template <typename floatX>
void gpu_passes(int variant, const FeatureDumpDevice& g, const floatX* d_c, int rows, int T, int r1, int r2) {
    const int cuts[4] = {0, r1, r2, rows};
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 3; i++) {
            const int n0 = cuts[i] * T, n = (cuts[i + 1] - cuts[i]) * T;
            if (n == 0) continue;
            const floatX* c = d_c + (size_t)n0 * g.D;
            if (pass == 0) feature_dump_variant(variant, g, c, n, n0);
            else {
                feature_dump_add_bands_gpu(g, c, n, n0, 0);
                feature_dump_add_contexts_gpu(g, c, n, T, n0, 0);
            }
        }
}

template <typename floatX>
int check_shape(int variant, int rows, int T, int D, int K) {
    const int N = rows * T, r1 = rows / 3, r2 = rows - rows / 5;
    std::vector<float> c = make_activations(N, D);
    round_to_storage<floatX>(c.data(), c.size());  // the CPU sees what the GPU sees
    FeatureDump ref = cpu_dump(c.data(), rows, T, D, K, r1, r2);
    floatX* d_c = to_device<floatX>(c.data(), c.size());
    BenchArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, K, 1, 1);
    gpu_passes(variant, g, d_c, rows, T, r1, r2);
    char name[96];
    snprintf(name, sizeof(name), "v%d rows=%d T=%d D=%d K=%d", variant, rows, T, D, K);
    int failures = !same_dump(device_dump_read(g, N), ref, name);
    a.free_all();
    cudaCheck(cudaFree(d_c));
    return failures;
}

// the paper shape from fill_random (no ties to speak of in fp32; plenty in bf16); the host
// reference is built once and the variants are checked against it
template <typename floatX>
int check_big(int only, int rows, int T, int D, int K) {
    const int N = rows * T;
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    fill_random(d_c, n, 71, -1.0f, 1.0f, 0.8f);
    FeatureDump ref;
    {
        std::vector<float> c = host_random_array<floatX>(n, 71, -1.0f, 1.0f, 0.8f);
        ref = cpu_dump(c.data(), rows, T, D, K, rows / 2, rows / 2);
    }
    int failures = 0;
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        BenchArena a;
        FeatureDumpDevice g = device_dump_alloc(&a, D, K, 1, 1);
        gpu_passes(variant, g, d_c, rows, T, rows / 2, rows / 2);
        char name[96];
        snprintf(name, sizeof(name), "v%d rows=%d T=%d D=%d K=%d (paper shape)", variant, rows, T, D, K);
        failures += !same_dump(device_dump_read(g, N), ref, name);
        a.free_all();
    }
    cudaCheck(cudaFree(d_c));
    return failures;
}

template <typename floatX>
int run_checks(int only) {
    int failures = 0;
    const int shapes[][4] = {{1, 1, 1, 1}, {7, 1, 33, 3}, {3, 12, 4099, 10}, {10, 10, 1000, 32}, {4, 64, 46080, 10}};
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        for (auto& s : shapes) failures += check_shape<floatX>(variant, s[0], s[1], s[2], s[3]);
    }
    failures += check_big<floatX>(only, 8, 1024, 46080, 10);
    return failures;
}

// the selection kernel alone on given effects (values from a small set: ties everywhere) and
// constants: exactly the CPU's selection (feature_dump_logit_insert over the row in id order);
// F <= FEATURE_DUMP_LOGIT_CHUNK, the rows the scratch holds
int check_logit_select(int F, int V) {
    const int L = FEATURE_DUMP_LOGITS;
    std::vector<float> e((size_t)F * V), k(F);
    for (float& x : e) x = 0.25f * (float)(int)(rand_uniform() * 16.0f) - 2.0f;
    for (float& x : k) x = 0.5f * (float)(int)(rand_uniform() * 8.0f);
    BenchArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, F, 1, 1, V);
    cudaCheck(cudaMemcpy(g.logit_effects, e.data(), e.size() * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.logit_consts, k.data(), k.size() * sizeof(float), cudaMemcpyHostToDevice));
    feature_dump_logit_select_kernel<<<F, 128>>>(g.logit_top_tokens, g.logit_top_values, g.logit_bottom_tokens, g.logit_bottom_values,
                                                 g.logit_effects, g.logit_consts, V);
    cudaLaunchCheck();
    FeatureDump got, ref;
    feature_dump_init(&got, F, 1);
    feature_dump_init(&ref, F, 1);
    feature_dump_download(&got, g, 0);
    for (int f = 0; f < F; f++) {
        float tv[L], bv[L];
        int ti[L], bi[L];
        for (int j = 0; j < L; j++) { tv[j] = -INFINITY; bv[j] = INFINITY; ti[j] = bi[j] = INT_MAX; }
        for (int v = 0; v < V; v++) {
            const float x = e[(size_t)f * V + v] + k[f];
            feature_dump_logit_insert(tv, ti, x, v, true);
            feature_dump_logit_insert(bv, bi, x, v, false);
        }
        for (int j = 0; j < L; j++) {
            const size_t o = (size_t)f * L + j;
            ref.logit_top_tokens[o] = ti[j] == INT_MAX ? -1 : ti[j];
            ref.logit_top_values[o] = ti[j] == INT_MAX ? NAN : tv[j];
            ref.logit_bottom_tokens[o] = bi[j] == INT_MAX ? -1 : bi[j];
            ref.logit_bottom_values[o] = bi[j] == INT_MAX ? NAN : bv[j];
        }
    }
    size_t bad = count_diff(got.logit_top_tokens, ref.logit_top_tokens) + count_diff(got.logit_top_values, ref.logit_top_values) +
                 count_diff(got.logit_bottom_tokens, ref.logit_bottom_tokens) + count_diff(got.logit_bottom_values, ref.logit_bottom_values);
    char name[96];
    snprintf(name, sizeof(name), "logit selection F=%d V=%d (ties)", F, V);
    printf("  %-52s %s\n", name, bad ? "FAIL" : "ok");
    if (bad) printf("  %s: %zu differences\n", name, bad);
    a.free_all();
    return bad != 0;
}

// the whole logit pipeline against the CPU's feature_dump_logit_effects, on features [0, Dcheck)
// of a D-feature decoder (the CPU reference of the paper shape for every feature would take minutes)
int check_logits(int D, int C, int V, int Dcheck) {
    LogitCase lc = make_logit_case(D, C, V);
    const FeatureDump ref = cpu_logits(lc, Dcheck);
    BenchArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, 1, C, V);
    float* d_W_dec = to_device<float>(lc.W_dec.data(), lc.W_dec.size());
    float* d_W_U = to_device<float>(lc.W_U.data(), lc.W_U.size());
    cudaCheck(cudaMemcpy(g.gamma, lc.gamma.data(), C * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(g.unembed_mean, lc.mean.data(), C * sizeof(float), cudaMemcpyHostToDevice));
    feature_dump_logit_effects_gpu(g, d_W_dec, g.gamma, d_W_U, g.unembed_mean, 0);
    FeatureDump all, got;
    feature_dump_init(&all, D, 1);
    feature_dump_download(&all, g, 0);
    feature_dump_init(&got, Dcheck, 1);
    const size_t n = (size_t)Dcheck * FEATURE_DUMP_LOGITS;
    got.logit_top_tokens.assign(all.logit_top_tokens.begin(), all.logit_top_tokens.begin() + n);
    got.logit_top_values.assign(all.logit_top_values.begin(), all.logit_top_values.begin() + n);
    got.logit_bottom_tokens.assign(all.logit_bottom_tokens.begin(), all.logit_bottom_tokens.begin() + n);
    got.logit_bottom_values.assign(all.logit_bottom_values.begin(), all.logit_bottom_values.begin() + n);
    char name[96];
    snprintf(name, sizeof(name), "logit effects D=%d C=%d V=%d (first %d)", D, C, V, Dcheck);
    int failures = !same_logits(got, ref, 1e-5, name);
    a.free_all();
    cudaCheck(cudaFree(d_W_dec));
    cudaCheck(cudaFree(d_W_U));
    return failures;
}

int gpu_checks(int only) {
    printf("fp32:\n");
    int failures = run_checks<float>(only);
    printf("bf16:\n");
    failures += run_checks<bf16>(only);
    if (only != 1) {  // one version of each: with variant 2 (the shipped one) or everything
        printf("logit effects (fp32 always):\n");
        matmul_init();
        failures += check_logit_select(5, 7) + check_logit_select(33, 1000) + check_logit_select(FEATURE_DUMP_LOGIT_CHUNK, 50257);
        failures += check_logits(300, 64, 1000, 300) + check_logits(70, 100, 7, 70) + check_logits(46080, 768, 50257, 512);
        matmul_destroy();
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing at the paper shape: pass 1 reads c once and the (D,K) state once; pass 2 reads c once
// more; the logit effects are 46080 x 50257 x 768 multiply-adds

template <typename floatX>
void time_variants(int only) {
    const int N = 8192, D = 46080, K = 10, T = 1024;
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    fill_random(d_c, n, 81, -1.0f, 1.0f, 0.9f);  // ~5% nonzero, as a trained SAE's c is sparser still
    BenchArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, K, 1, 1);
    const double bytes = n * (double)sizeof(floatX) + 2.0 * D * (8.0 + K * 12.0);
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        long long first_pos = 0;
        float ms = benchmark_kernel(3, 20, [&] {
            feature_dump_variant(variant, g, d_c, N, first_pos);
            first_pos += N;  // a stream of batches, as in the trainer
        });
        char what[64];
        snprintf(what, sizeof(what), "%s pass 1 v%d N=%d D=%d K=%d", type_name<floatX>(), variant, N, D, K);
        report_bandwidth(what, ms, bytes);
    }
    if (only != 1) {
        long long first_pos = 0;
        float ms = benchmark_kernel(3, 20, [&] {
            feature_dump_add_bands_gpu(g, d_c, N, first_pos, 0);
            feature_dump_add_contexts_gpu(g, d_c, N, T, first_pos, 0);
            first_pos += N;
        });
        char what[64];
        snprintf(what, sizeof(what), "%s pass 2 N=%d D=%d", type_name<floatX>(), N, D);
        report_bandwidth(what, ms, n * (double)sizeof(floatX));
    }
    a.free_all();
    cudaCheck(cudaFree(d_c));
}

void time_logits() {
    const int D = 46080, C = 768, V = 50257;
    float* d_W_dec = device_alloc<float>((size_t)D * C);
    float* d_W_U = device_alloc<float>((size_t)V * C);
    fill_random(d_W_dec, (size_t)D * C, 91, -1.0f, 1.0f);
    fill_random(d_W_U, (size_t)V * C, 92, -0.1f, 0.1f);
    BenchArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, 1, C, V);
    fill_random(g.gamma, C, 93, 0.5f, 1.5f);
    fill_random(g.unembed_mean, C, 94, -0.1f, 0.1f);
    matmul_init();
    float ms = benchmark_kernel(1, 3, [&] { feature_dump_logit_effects_gpu(g, d_W_dec, g.gamma, d_W_U, g.unembed_mean, 0); });
    printf("  %-40s %8.3f ms  %7.1f TFLOP/s (fp32)\n", "logit effects D=46080 C=768 V=50257", ms, 2.0 * D * C * (double)V / (ms / 1e3) / 1e12);
    matmul_destroy();
    a.free_all();
    cudaCheck(cudaFree(d_W_dec));
    cudaCheck(cudaFree(d_W_U));
}

void timing(int only) {
    printf("timing, N=8192 D=46080 K=10 (median of 20):\n");
    time_variants<float>(only);
    time_variants<bf16>(only);
    if (only != 1) time_logits();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "feature_dump", 2, cpu_self_test, gpu_checks, timing); }
