/*
--dump-features merge, llmc/feature_dump.cuh: each feature's firing count and running top-K
(value descending, earlier stream position first on a tie) updated by a batch of SAE
activations c (N,D). The CPU reference is the trainer's own: feature_dump_add in
llmc/feature_dump.h. The GPU result must equal it exactly (counts, values and positions), since
both are the unique top-K of a total order.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make feature_dump
  ./feature_dump [check|cpu|N]   no argument: everything; check: CPU self-test and GPU checks of
                                 both variants (fp32 and bf16); cpu: CPU self-test only (no
                                 GPU): feature_dump_add against a brute-force full sort, whole
                                 and in batches; N: check and time variant N
Variants:
  1  one row per loop step: each load waits for the previous one to be used
  2  llmc: loads for 8 rows issued before any is used (more memory requests in flight: there
     are only D threads)
The trainer ships variant 2 (feature_dump_add_gpu), in fp32 and bf16.
Checks, in fp32 and bf16, each shape streamed as three batches of uneven sizes onto state the
GPU reset itself (buffers poisoned first, so a slot the reset or the merge misses fails):
  (N,D,K) = (1,1,1) (7,33,3) (37,4099,10) (100,1000,32) (257,46080,10). Inputs ~70% zeros, the
  rest drawn from 8 values (many ties) or continuous; feature 0 never fires (empty slots), 1
  always fires with one value (top-K = the first K positions), 2 also sees negatives and NaN
  (neither counts). Then the paper shape (8192,46080,10) from fill_random, ReLU-like.
Exit code 1 on any mismatch.
*/
#include "common.h"
#include "../../llmc/feature_dump.cuh"

// ----------------------------------------------------------------------------
// brute force for the CPU self-test: per feature, sort every firing by (value desc, pos asc)

void feature_dump_bruteforce(FeatureDump* fd, const float* c, int N, int D, int K, long long first_pos) {
    feature_dump_init(fd, D, K);
    for (int d = 0; d < D; d++) {
        std::vector<std::pair<float, long long>> fired;
        for (int n = 0; n < N; n++) {
            float v = c[(size_t)n * D + d];
            if (v > 0.0f) fired.push_back({v, first_pos + n});
        }
        std::sort(fired.begin(), fired.end(), [](const std::pair<float, long long>& a, const std::pair<float, long long>& b) {
            return a.first != b.first ? a.first > b.first : a.second < b.second; });
        fd->fire_count[d] = (long long)fired.size();
        for (int k = 0; k < K && k < (int)fired.size(); k++) {
            fd->top_values[(size_t)d * K + k] = fired[k].first;
            fd->top_pos[(size_t)d * K + k] = fired[k].second;
        }
    }
    fd->tokens = N;
}

bool same_dump(const FeatureDump& a, const FeatureDump& b, const char* what) {
    size_t bad = 0;
    for (int d = 0; d < a.D; d++) bad += a.fire_count[d] != b.fire_count[d];
    for (size_t i = 0; i < a.top_values.size(); i++)
        bad += memcmp(&a.top_values[i], &b.top_values[i], sizeof(float)) != 0 || a.top_pos[i] != b.top_pos[i];
    for (size_t i = 0, shown = 0; i < a.top_values.size() && bad && shown < 5; i++)
        if (memcmp(&a.top_values[i], &b.top_values[i], sizeof(float)) != 0 || a.top_pos[i] != b.top_pos[i]) {
            printf("  %s mismatch at feature %zu slot %zu: (%.8g, %lld) vs (%.8g, %lld)\n", what, i / a.K, i % a.K, a.top_values[i],
                   a.top_pos[i], b.top_values[i], b.top_pos[i]);
            shown++;
        }
    bad += a.tokens != b.tokens;
    printf("  %-44s %s\n", what, bad ? "FAIL" : "ok");
    if (bad) printf("  %s: %zu differences\n", what, bad);
    return bad == 0;
}

// ReLU-like test activations with many ties and the three special features described above
std::vector<float> make_activations(int N, int D) {
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

int cpu_self_test() {
    int failures = 0;
    const int shapes[][3] = {{1, 1, 1}, {7, 33, 3}, {50, 300, 10}, {300, 17, 32}};
    for (auto& s : shapes) {
        const int N = s[0], D = s[1], K = s[2];
        std::vector<float> c = make_activations(N, D);
        FeatureDump ref, whole, parts;
        feature_dump_bruteforce(&ref, c.data(), N, D, K, 0);
        feature_dump_init(&whole, D, K);
        feature_dump_add(&whole, c.data(), N, 0);
        feature_dump_init(&parts, D, K);  // the same stream in three uneven batches
        const int cut1 = N / 3, cut2 = N - N / 5;
        feature_dump_add(&parts, c.data(), cut1, 0);
        feature_dump_add(&parts, c.data() + (size_t)cut1 * D, cut2 - cut1, cut1);
        feature_dump_add(&parts, c.data() + (size_t)cut2 * D, N - cut2, cut2);
        char name[96];
        snprintf(name, sizeof(name), "cpu add vs full sort N=%d D=%d K=%d", N, D, K);
        failures += !same_dump(whole, ref, name);
        snprintf(name, sizeof(name), "cpu add in 3 batches N=%d D=%d K=%d", N, D, K);
        failures += !same_dump(parts, ref, name);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// variant 1 (timing baseline): the same kernel with one row per loop step

template <typename floatX>
void feature_dump_variant(int variant, unsigned long long* fire_count, float* top_values, long long* top_pos, const floatX* c, int N,
                          int D, int K, long long first_pos) {
    if (variant == 1) {
        feature_dump_add_kernel<floatX, 1><<<ceil_div(D, 128), 128>>>(fire_count, top_values, top_pos, c, N, D, K, first_pos);
        cudaLaunchCheck();
    } else {
        feature_dump_add_gpu(fire_count, top_values, top_pos, c, N, D, K, first_pos, 0);
    }
}

// ----------------------------------------------------------------------------
// GPU checks

struct DeviceDump {
    unsigned long long* fire_count;
    float* top_values;
    long long* top_pos;
    int D, K;
};

DeviceDump device_dump_alloc(int D, int K) {
    DeviceDump g{device_alloc<unsigned long long>(D), device_alloc<float>((size_t)D * K), device_alloc<long long>((size_t)D * K), D, K};
    // poison (NaN values, count and positions 0x5a5a...), then the reset under test
    cudaCheck(cudaMemset(g.fire_count, 0x5a, (size_t)D * sizeof(unsigned long long)));
    poison(g.top_values, (size_t)D * K * sizeof(float));
    cudaCheck(cudaMemset(g.top_pos, 0x5a, (size_t)D * K * sizeof(long long)));
    feature_dump_reset_gpu(g.fire_count, g.top_values, g.top_pos, D, K, 0);
    return g;
}

void device_dump_free(DeviceDump* g) {
    cudaCheck(cudaFree(g->fire_count)); cudaCheck(cudaFree(g->top_values)); cudaCheck(cudaFree(g->top_pos));
}

FeatureDump device_dump_read(const DeviceDump& g, long long tokens) {
    FeatureDump fd;
    feature_dump_init(&fd, g.D, g.K);
    feature_dump_download(&fd, g.fire_count, g.top_values, g.top_pos, tokens);
    return fd;
}

template <typename floatX>
int check_shape(int variant, int N, int D, int K) {
    std::vector<float> c = make_activations(N, D);
    round_to_storage<floatX>(c.data(), c.size());  // the CPU sees what the GPU sees
    FeatureDump ref;
    feature_dump_init(&ref, D, K);
    feature_dump_add(&ref, c.data(), N, 0);
    floatX* d_c = to_device<floatX>(c.data(), c.size());
    DeviceDump g = device_dump_alloc(D, K);
    const int cut1 = N / 3, cut2 = N - N / 5;  // three uneven batches, in stream order
    feature_dump_variant(variant, g.fire_count, g.top_values, g.top_pos, d_c, cut1, D, K, 0);
    feature_dump_variant(variant, g.fire_count, g.top_values, g.top_pos, d_c + (size_t)cut1 * D, cut2 - cut1, D, K, cut1);
    feature_dump_variant(variant, g.fire_count, g.top_values, g.top_pos, d_c + (size_t)cut2 * D, N - cut2, D, K, cut2);
    char name[96];
    snprintf(name, sizeof(name), "v%d N=%d D=%d K=%d", variant, N, D, K);
    int failures = !same_dump(device_dump_read(g, N), ref, name);
    device_dump_free(&g);
    cudaCheck(cudaFree(d_c));
    return failures;
}

// the paper shape from fill_random (no ties to speak of in fp32; plenty in bf16); the host
// reference is built once and the variants are checked against it
template <typename floatX>
int check_big(int only, int N, int D, int K) {
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    fill_random(d_c, n, 71, -1.0f, 1.0f, 0.8f);
    FeatureDump ref;
    {
        std::vector<float> c = host_random_array<floatX>(n, 71, -1.0f, 1.0f, 0.8f);
        feature_dump_init(&ref, D, K);
        feature_dump_add(&ref, c.data(), N, 1000000);
    }
    int failures = 0;
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        DeviceDump g = device_dump_alloc(D, K);
        feature_dump_variant(variant, g.fire_count, g.top_values, g.top_pos, d_c, N, D, K, 1000000);
        char name[96];
        snprintf(name, sizeof(name), "v%d N=%d D=%d K=%d (paper shape)", variant, N, D, K);
        failures += !same_dump(device_dump_read(g, N), ref, name);
        device_dump_free(&g);
    }
    cudaCheck(cudaFree(d_c));
    return failures;
}

template <typename floatX>
int run_checks(int only) {
    int failures = 0;
    const int shapes[][3] = {{1, 1, 1}, {7, 33, 3}, {37, 4099, 10}, {100, 1000, 32}, {257, 46080, 10}};
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        for (auto& s : shapes) failures += check_shape<floatX>(variant, s[0], s[1], s[2]);
    }
    failures += check_big<floatX>(only, 8192, 46080, 10);
    return failures;
}

int gpu_checks(int only) {
    printf("fp32:\n");
    int failures = run_checks<float>(only);
    printf("bf16:\n");
    return failures + run_checks<bf16>(only);
}

// ----------------------------------------------------------------------------
// timing at the paper shape: c read once, the (D,K) state read and written once

template <typename floatX>
void time_variants(int only) {
    const int N = 8192, D = 46080, K = 10;
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    fill_random(d_c, n, 81, -1.0f, 1.0f, 0.9f);  // ~5% nonzero, as a trained SAE's c is sparser still
    DeviceDump g = device_dump_alloc(D, K);
    const double bytes = n * (double)sizeof(floatX) + 2.0 * D * (8.0 + K * 12.0);
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        long long first_pos = 0;
        float ms = benchmark_kernel(3, 20, [&] {
            feature_dump_variant(variant, g.fire_count, g.top_values, g.top_pos, d_c, N, D, K, first_pos);
            first_pos += N;  // a stream of batches, as in the trainer
        });
        char what[64];
        snprintf(what, sizeof(what), "%s v%d N=%d D=%d K=%d", type_name<floatX>(), variant, N, D, K);
        report_bandwidth(what, ms, bytes);
    }
    device_dump_free(&g);
    cudaCheck(cudaFree(d_c));
}

void timing(int only) {
    printf("timing, N=8192 D=46080 K=10 (median of 20):\n");
    time_variants<float>(only);
    time_variants<bf16>(only);
}

int main(int argc, char** argv) { return bench_main(argc, argv, "feature_dump", 2, cpu_self_test, gpu_checks, timing); }
