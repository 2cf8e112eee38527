/*
Tests for llmc/feature_dump.h (--dump-features): both passes over the stream, the logit effects
and the files.

Build and run from the repo root:
    make test_feature_dump && ./test_feature_dump

What is compared against what:
- feature_dump_add, fed the stream whole or in uneven batches, against a brute force that
  sorts every firing of every feature by (value desc, position asc) and keeps K. Exact
  equality: both pick the same floats and positions, nothing is computed. The data has ~70%
  zeros, values from a set of 8 (ties everywhere), negatives and NaN (which must not count),
  a feature that never fires and one that always fires with the same value.
- Hand-derived cases, exact: the hash (splitmix64's known first output, and utils.h's
  splitmix64 as an independent copy), F16 rounding (known bit patterns, every half value and
  every midpoint between two), histogram slots of values at, just below and just above the
  edges, band membership at the band bounds and selection by hash, context windows at a row's
  start and end and in its middle (NaN outside the row and for empty slots), and logit effects
  of a 2-feature, 12-token model in dyadic numbers (so every sum is exact): values, the
  lower-id-first ties, and the mean row added back (shifted W_U plus its constant = the
  unshifted computation, bit for bit). A random case checks the tiled loop against a
  double-precision brute force (to 1e-5 of the scale: fp32 sums of 40 terms).
- The whole dump (both passes, bands ordered) is the same bits for batches of 1, 2, 3 and 5
  rows as for the stream whole.
- feature_dump_write round-trips through llmc/safetensors.h: every tensor read back bit for bit
  (F32, I64, and F16 for the contexts); features.json is the metadata as given; nothing named
  *.tmp is left; bad metadata ends the process with exit code 1.
- safetensors_write keeps writing F32 for {name, shape, data} entries (every existing call).
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>
#include "../llmc/feature_dump.h"

static uint64_t rng_state = 42;
static float uniform01() { return (float)(splitmix64(&rng_state) >> 40) / 16777216.0f; }

// ReLU-like activations with ties, plus the special features described above
static std::vector<float> make_activations(int N, int D) {
    std::vector<float> c((size_t)N * D);
    for (size_t i = 0; i < c.size(); i++) {
        float u = uniform01();
        if (u < 0.7f) c[i] = 0.0f;
        else if (u < 0.85f) c[i] = 0.125f * (float)(1 + (int)(uniform01() * 8.0f));
        else if (u < 0.9f) c[i] = u < 0.87f ? -0.5f : NAN;
        else c[i] = 3.0f * uniform01();
    }
    for (int n = 0; n < N; n++) {
        if (D > 0) c[(size_t)n * D + 0] = 0.0f;
        if (D > 1) c[(size_t)n * D + 1] = 0.75f;
    }
    return c;
}

static FeatureDump brute_force(const std::vector<float>& c, int N, int D, int K, long long first_pos) {
    FeatureDump fd;
    feature_dump_init(&fd, D, K);
    for (int d = 0; d < D; d++) {
        std::vector<std::pair<float, long long>> fired;
        for (int n = 0; n < N; n++) {
            float v = c[(size_t)n * D + d];
            if (v > 0.0f) fired.push_back({v, first_pos + n});
        }
        std::sort(fired.begin(), fired.end(), [](const std::pair<float, long long>& a, const std::pair<float, long long>& b) {
            return a.first != b.first ? a.first > b.first : a.second < b.second; });
        fd.fire_count[d] = (long long)fired.size();
        for (int k = 0; k < K && k < (int)fired.size(); k++) {
            fd.top_values[(size_t)d * K + k] = fired[k].first;
            fd.top_pos[(size_t)d * K + k] = fired[k].second;
        }
    }
    fd.tokens = N;
    return fd;
}

static void require_same(const FeatureDump& a, const FeatureDump& b) {
    REQUIRE(a.D == b.D);
    REQUIRE(a.K == b.K);
    REQUIRE(a.tokens == b.tokens);
    REQUIRE(a.fire_count == b.fire_count);
    REQUIRE(a.top_pos == b.top_pos);
    REQUIRE(memcmp(a.top_values.data(), b.top_values.data(), a.top_values.size() * sizeof(float)) == 0);
}

TEST_CASE("feature_dump_add equals a full sort, whole or in batches", "[feature_dump]") {
    const int shapes[][3] = {{1, 1, 1}, {5, 3, 10}, {64, 300, 10}, {200, 513, 7}, {333, 40, 32}};
    for (auto& s : shapes) {
        const int N = s[0], D = s[1], K = s[2];
        CAPTURE(N, D, K);
        std::vector<float> c = make_activations(N, D);
        const long long base = 12345;  // the stream need not start at 0
        FeatureDump ref = brute_force(c, N, D, K, base);
        FeatureDump whole;
        feature_dump_init(&whole, D, K);
        feature_dump_add(&whole, c.data(), N, base);
        require_same(whole, ref);
        // batches of 1, 7 and 64 rows (the last one short)
        for (int bs : {1, 7, 64}) {
            CAPTURE(bs);
            FeatureDump parts;
            feature_dump_init(&parts, D, K);
            for (int n0 = 0; n0 < N; n0 += bs) feature_dump_add(&parts, c.data() + (size_t)n0 * D, std::min(bs, N - n0), base + n0);
            require_same(parts, ref);
        }
    }
    SECTION("ties keep the earliest positions; empty slots are (0, -1) at the end") {
        const int N = 20, D = 3, K = 4;
        std::vector<float> c((size_t)N * D, 0.0f);
        for (int n = 0; n < N; n++) c[(size_t)n * D + 1] = 0.75f;  // always the same value
        c[(size_t)5 * D + 2] = 2.0f;
        c[(size_t)9 * D + 2] = 1.0f;
        FeatureDump fd;
        feature_dump_init(&fd, D, K);
        feature_dump_add(&fd, c.data(), 10, 0);
        feature_dump_add(&fd, c.data() + (size_t)10 * D, 10, 10);
        CHECK(fd.tokens == 20);
        CHECK(fd.fire_count == std::vector<long long>{0, 20, 2});
        CHECK(std::vector<long long>(fd.top_pos.begin(), fd.top_pos.begin() + K) == std::vector<long long>{-1, -1, -1, -1});
        CHECK(std::vector<long long>(fd.top_pos.begin() + K, fd.top_pos.begin() + 2 * K) == std::vector<long long>{0, 1, 2, 3});
        CHECK(std::vector<long long>(fd.top_pos.begin() + 2 * K, fd.top_pos.end()) == std::vector<long long>{5, 9, -1, -1});
        CHECK(std::vector<float>(fd.top_values.begin() + 2 * K, fd.top_values.end()) == std::vector<float>{2.0f, 1.0f, 0.0f, 0.0f});
    }
}

// both passes over c (rows of T, D features), B rows a batch, then the bands ordered: as a trainer runs them
static FeatureDump full_dump(const std::vector<float>& c, int rows, int T, int D, int K, int B) {
    FeatureDump fd;
    feature_dump_init(&fd, D, K);
    for (int r = 0; r < rows; r += B) {
        int n = std::min(B, rows - r) * T;
        feature_dump_add(&fd, c.data() + (size_t)r * T * D, n, (long long)r * T);
    }
    for (int r = 0; r < rows; r += B) {
        int n = std::min(B, rows - r) * T;
        feature_dump_add_bands(&fd, c.data() + (size_t)r * T * D, n, (long long)r * T);
        feature_dump_add_contexts(&fd, c.data() + (size_t)r * T * D, n, (long long)r * T, T);
    }
    feature_dump_order_bands(&fd);
    return fd;
}

template <typename T>
static bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

static float f16_value(uint16_t h) { return half_to_float(h); }

TEST_CASE("the band hash is splitmix64 of (feature << 40) ^ position", "[feature_dump]") {
    CHECK(feature_dump_hash(0, 0) == 0xe220a8397b1dcdafULL);  // splitmix64's first output from seed 0
    for (long long f : {0LL, 1LL, 46079LL, (1LL << 24) - 1})
        for (long long p : {0LL, 1LL, 12345LL, (1LL << 40) - 1}) {
            uint64_t state = ((uint64_t)f << 40) ^ (uint64_t)p;
            CHECK(feature_dump_hash(f, p) == splitmix64(&state));
        }
}

TEST_CASE("F16 rounding: nearest even, NaN stays NaN, inf from 65520", "[feature_dump]") {
    CHECK(feature_dump_f16(1.0f) == 0x3c00);
    CHECK(feature_dump_f16(-2.0f) == 0xc000);
    CHECK(feature_dump_f16(0.0f) == 0x0000);
    CHECK(feature_dump_f16(-0.0f) == 0x8000);
    CHECK(feature_dump_f16(65504.0f) == 0x7bff);
    CHECK(feature_dump_f16(65519.99f) == 0x7bff);
    CHECK(feature_dump_f16(65520.0f) == 0x7c00);   // the midpoint to 65536 rounds to even: inf
    CHECK(feature_dump_f16(INFINITY) == 0x7c00);
    CHECK(feature_dump_f16(NAN) == 0x7e00);
    CHECK(feature_dump_f16(1.0f + 1.0f / 2048) == 0x3c00);  // a tie: to the even 1.0
    CHECK(feature_dump_f16(1.0f + 3.0f / 2048) == 0x3c02);  // a tie: to the even 1 + 2/1024
    CHECK(feature_dump_f16(ldexpf(1.0f, -24)) == 0x0001);   // the smallest subnormal
    CHECK(feature_dump_f16(ldexpf(1.0f, -25)) == 0x0000);   // half of it: a tie, to even 0
    CHECK(feature_dump_f16(ldexpf(1.5f, -25)) == 0x0001);
    CHECK(feature_dump_f16(ldexpf(1.0f, -14)) == 0x0400);   // the smallest normal
    // every finite half comes back as itself, and the midpoint between two neighbours goes to the even one
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        for (uint16_t sign : {(uint16_t)0, (uint16_t)0x8000}) {
            uint16_t a = (uint16_t)h | sign;
            bad += feature_dump_f16(f16_value(a)) != a;
            if (h + 1 < 0x7c00) {
                float mid = (f16_value(a) + f16_value((uint16_t)(a + 1))) * 0.5f;  // exact in fp32
                bad += feature_dump_f16(mid) != ((h & 1) ? (uint16_t)(a + 1) : a);
            }
        }
    }
    CHECK(bad == 0);
}

TEST_CASE("histogram slots at, just below and just above the edges", "[feature_dump]") {
    std::vector<float> e = feature_dump_hist_edges();
    REQUIRE(e.size() == 57);
    CHECK(e[0] == 1e-4f);
    CHECK(e[8] == 1e-3f);
    CHECK(e[32] == 1.0f);
    CHECK(e[56] == 1000.0f);
    CHECK(e[4] == (float)pow(10.0, -3.5));
    // one feature; each value's slot is the number of edges <= it
    const std::vector<std::pair<float, int>> cases = {
        {nextafterf(e[0], 0.0f), 0}, {1e-7f, 0}, {e[0], 1}, {nextafterf(e[0], 1.0f), 1}, {nextafterf(e[1], 0.0f), 1}, {e[1], 2},
        {1.0f, 33}, {nextafterf(1.0f, 0.0f), 32}, {e[55], 56}, {nextafterf(e[56], 0.0f), 56}, {e[56], 57}, {5000.0f, 57}, {INFINITY, 57}};
    std::vector<float> c;
    std::vector<long long> want(FEATURE_DUMP_HIST_BINS, 0);
    for (auto& cs : cases) {
        c.push_back(cs.first);
        want[cs.second]++;
        CHECK(feature_dump_hist_bin(e.data(), cs.first) == cs.second);
    }
    c.push_back(0.0f);   // none of these three fires
    c.push_back(-1.0f);
    c.push_back(NAN);
    FeatureDump fd;
    feature_dump_init(&fd, 1, 3);
    feature_dump_add(&fd, c.data(), (int)c.size(), 0);
    CHECK(fd.hist_counts == want);
    CHECK(fd.fire_count[0] == (long long)cases.size());
}

TEST_CASE("band examples: bounds, selection by hash, order, batching", "[feature_dump]") {
    // feature 1 of 2, rows of T = 8: max 8 at position 5; band 0 (0, 2], band 1 (2, 4], band 2 (4, 6]
    const int T = 8, rows = 4, N = rows * T, D = 2, K = 2;
    std::vector<float> c((size_t)N * D, 0.0f);
    auto at = [&](int n) -> float& { return c[(size_t)n * D + 1]; };
    at(5) = 8.0f;
    at(6) = 7.0f;                                           // top-K, above 0.75 max: in no band
    at(7) = 6.5f;                                           // above 0.75 max: in no band
    at(9) = 6.0f;                                           // exactly 0.75 max: band 2
    at(10) = 4.0f;                                          // exactly 0.5 max: band 1
    at(11) = 3.0f; at(30) = 2.5f;                           // band 1 (three members: all kept)
    at(12) = nextafterf(2.0f, 3.0f);                        // just above 0.25 max: band 1
    at(13) = 2.0f;                                          // exactly 0.25 max: band 0
    const std::vector<int> band0 = {13, 14, 15, 16, 17, 20, 21, 25, 26, 31};  // ten members of band 0
    for (int n : band0) if (n != 13) at(n) = 1.0f;
    FeatureDump fd = full_dump(c, rows, T, D, K, 1);
    auto slots = [&](int b) { return std::vector<long long>(fd.band_pos.begin() + (1 * 3 + b) * 5, fd.band_pos.begin() + (1 * 3 + b) * 5 + 5); };
    auto by_hash = [&](std::vector<long long> pos) {  // the definition: smallest hash first
        std::sort(pos.begin(), pos.end(), [](long long p, long long q) { return feature_dump_hash(1, p) < feature_dump_hash(1, q); });
        while (pos.size() < 5) pos.push_back(-1);
        pos.resize(5);
        return pos;
    };
    CHECK(slots(0) == by_hash(std::vector<long long>(band0.begin(), band0.end())));
    CHECK(slots(1) == by_hash({10, 11, 12, 30}));
    CHECK(slots(2) == std::vector<long long>{9, -1, -1, -1, -1});
    for (int b = 0; b < 3; b++)
        for (int s = 0; s < 5; s++) {
            long long p = fd.band_pos[(1 * 3 + b) * 5 + s];
            CHECK(fd.band_values[(1 * 3 + b) * 5 + s] == (p < 0 ? 0.0f : at((int)p)));
        }
    // feature 0 never fires: no band examples, NaN contexts
    CHECK(std::vector<long long>(fd.band_pos.begin(), fd.band_pos.begin() + 15) == std::vector<long long>(15, -1));
    for (int i = 0; i < 15 * 24; i++) CHECK(fd.context_band[i] == 0x7e00);
    // the same selection whatever the batch size
    for (int B : {2, 3, 4}) {
        FeatureDump other = full_dump(c, rows, T, D, K, B);
        CHECK(other.band_pos == fd.band_pos);
        CHECK(same_bits(other.band_values, fd.band_values));
    }
}

TEST_CASE("context windows: NaN outside the row, at its start, its end and in its middle", "[feature_dump]") {
    // one feature, rows of T = 8 (a window of 24 spans the whole row and more) and of T = 32
    for (int T : {8, 32}) {
        CAPTURE(T);
        const int rows = 4, N = rows * T, K = 4;
        std::vector<float> c(N, 0.0f);
        auto value = [](long long q) { return 1.0f + 0.125f * (float)q; };  // exact in F16
        // the top-K: a row's first token (p = T), its last (p = 2T - 1), one T/2 + 4 into a row (T 32:
        // its window lies inside the row), and the token before that one
        const long long p_first = T, p_last = 2 * T - 1, p_mid = 2 * T + T / 2 + 4;
        for (long long p : {p_first, p_last, p_mid}) c[p] = 100.0f - (float)p;  // ranked by value: first, last, mid
        c[T + 3] = value(T + 3);  // a smaller activation inside the first window
        c[p_mid - 1] = value(p_mid - 1);
        FeatureDump fd = full_dump(c, rows, T, 1, K, 2);
        REQUIRE(std::vector<long long>(fd.top_pos.begin(), fd.top_pos.end()) == std::vector<long long>{p_first, p_last, p_mid, p_mid - 1});
        for (int k = 0; k < K; k++) {
            long long p = fd.top_pos[k], row0 = p - p % T;
            for (int w = 0; w < 24; w++) {
                long long q = p - 19 + w;
                uint16_t got = fd.context_top[k * 24 + w];
                CAPTURE(k, p, w, q);
                if (q < row0 || q >= row0 + T) CHECK(got == 0x7e00);  // outside the row
                else CHECK(got == feature_dump_f16(c[q]));           // the activation there, 0 included
            }
        }
        // the row's first token: nothing before it in its row, so w < 19 are all NaN and w = 19 is p itself
        CHECK(fd.context_top[0 * 24 + 18] == 0x7e00);
        CHECK(f16_value(fd.context_top[0 * 24 + 19]) == 100.0f - (float)p_first);
        // the row's last token: nothing after it (w > 19 NaN)
        CHECK(fd.context_top[1 * 24 + 20] == 0x7e00);
        CHECK(f16_value(fd.context_top[1 * 24 + 19]) == 100.0f - (float)p_last);
        if (T == 32) {  // the middle one's window lies inside its row: no NaN
            for (int w = 0; w < 24; w++) CHECK(fd.context_top[2 * 24 + w] != 0x7e00);
            CHECK(f16_value(fd.context_top[2 * 24 + 18]) == value(p_mid - 1));
        }
    }
}

TEST_CASE("the whole dump is the same bits however the stream is cut", "[feature_dump]") {
    const int T = 16, rows = 11, D = 130, K = 6;
    std::vector<float> c = make_activations(rows * T, D);
    FeatureDump whole = full_dump(c, rows, T, D, K, rows);
    for (int B : {1, 2, 3, 5}) {
        CAPTURE(B);
        FeatureDump parts = full_dump(c, rows, T, D, K, B);
        CHECK(parts.tokens == whole.tokens);
        CHECK(parts.fire_count == whole.fire_count);
        CHECK(parts.top_pos == whole.top_pos);
        CHECK(same_bits(parts.top_values, whole.top_values));
        CHECK(parts.hist_counts == whole.hist_counts);
        CHECK(parts.band_pos == whole.band_pos);
        CHECK(same_bits(parts.band_values, whole.band_values));
        CHECK(parts.context_top == whole.context_top);
        CHECK(parts.context_band == whole.context_band);
    }
    long long filled = 0;  // not a vacuous comparison: the bands hold examples
    for (long long p : whole.band_pos) filled += p >= 0;
    CHECK(filled > D);
}

TEST_CASE("logit effects: hand-derived values, ties, the mean row added back", "[feature_dump]") {
    // C = 2, V = 12, dyadic numbers throughout: every product and sum below is exact in fp32.
    // W_dec_norm rows (1, 0) and (0, -1), γ = (2, 0.5): a_0 = (2, 0), a_1 = (0, -0.5).
    // W_U row v = (v - 5, v % 3): effect_0[v] = 2 (v - 5), effect_1[v] = -0.5 (v % 3).
    const int C = 2, V = 12, D = 2;
    const std::vector<float> Wn = {1.0f, 0.0f, 0.0f, -1.0f}, gamma = {2.0f, 0.5f};
    std::vector<float> W_U(V * C);
    for (int v = 0; v < V; v++) { W_U[v * C] = (float)(v - 5); W_U[v * C + 1] = (float)(v % 3); }
    FeatureDump fd;
    feature_dump_init(&fd, D, 1);
    feature_dump_logit_effects(&fd, Wn.data(), gamma.data(), W_U.data(), nullptr, C, V);
    auto row = [](const std::vector<long long>& t, int f) { return std::vector<long long>(t.begin() + f * 10, t.begin() + f * 10 + 10); };
    auto rowf = [](const std::vector<float>& t, int f) { return std::vector<float>(t.begin() + f * 10, t.begin() + f * 10 + 10); };
    CHECK(row(fd.logit_top_tokens, 0) == std::vector<long long>{11, 10, 9, 8, 7, 6, 5, 4, 3, 2});
    CHECK(rowf(fd.logit_top_values, 0) == std::vector<float>{12, 10, 8, 6, 4, 2, 0, -2, -4, -6});
    CHECK(row(fd.logit_bottom_tokens, 0) == std::vector<long long>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    CHECK(rowf(fd.logit_bottom_values, 0) == std::vector<float>{-10, -8, -6, -4, -2, 0, 2, 4, 6, 8});
    // feature 1: four tokens tie at each value; the lower id comes first, on both sides
    CHECK(row(fd.logit_top_tokens, 1) == std::vector<long long>{0, 3, 6, 9, 1, 4, 7, 10, 2, 5});
    CHECK(rowf(fd.logit_top_values, 1) == std::vector<float>{0, 0, 0, 0, -0.5f, -0.5f, -0.5f, -0.5f, -1, -1});
    CHECK(row(fd.logit_bottom_tokens, 1) == std::vector<long long>{2, 5, 8, 11, 1, 4, 7, 10, 0, 3});
    CHECK(rowf(fd.logit_bottom_values, 1) == std::vector<float>{-1, -1, -1, -1, -0.5f, -0.5f, -0.5f, -0.5f, 0, 0});

    SECTION("the trainers' W_U less its mean row, with the mean's constant added back, gives the same bits") {
        const std::vector<float> mean = {0.25f, -1.0f};  // (W_dec_norm∘γ)·mean: 0.5 for feature 0, 0.5 for feature 1
        std::vector<float> shifted(W_U);
        for (int v = 0; v < V; v++) for (int i = 0; i < C; i++) shifted[v * C + i] -= mean[i];
        FeatureDump sh, no_add;
        feature_dump_init(&sh, D, 1);
        feature_dump_init(&no_add, D, 1);
        feature_dump_logit_effects(&sh, Wn.data(), gamma.data(), shifted.data(), mean.data(), C, V);
        feature_dump_logit_effects(&no_add, Wn.data(), gamma.data(), shifted.data(), nullptr, C, V);
        CHECK(sh.logit_top_tokens == fd.logit_top_tokens);
        CHECK(sh.logit_bottom_tokens == fd.logit_bottom_tokens);
        CHECK(same_bits(sh.logit_top_values, fd.logit_top_values));
        CHECK(same_bits(sh.logit_bottom_values, fd.logit_bottom_values));
        CHECK(no_add.logit_top_values[0] == 11.5f);  // without the constant every effect is 0.5 lower
        CHECK(no_add.logit_top_values[10] == -0.5f);
    }
    SECTION("a vocabulary under 10 tokens leaves -1, NaN at the end") {
        FeatureDump small;
        feature_dump_init(&small, D, 1);
        feature_dump_logit_effects(&small, Wn.data(), gamma.data(), W_U.data(), nullptr, C, 7);
        CHECK(row(small.logit_top_tokens, 0) == std::vector<long long>{6, 5, 4, 3, 2, 1, 0, -1, -1, -1});
        CHECK(std::isnan(small.logit_top_values[9]));
        CHECK(row(small.logit_bottom_tokens, 1) == std::vector<long long>{2, 5, 1, 4, 0, 3, 6, -1, -1, -1});
    }
}

TEST_CASE("logit effects of the tiled loop against a double-precision brute force", "[feature_dump]") {
    const int D = 70, C = 40, V = 1000;  // neither D nor V a multiple of the 64-wide tiles
    std::vector<float> Wn((size_t)D * C), gamma(C), W_U((size_t)V * C), mean(C);
    for (float& x : Wn) x = uniform01() - 0.5f;
    for (float& x : gamma) x = 0.5f + uniform01();
    for (float& x : W_U) x = 0.2f * (uniform01() - 0.5f);
    for (float& x : mean) x = 0.1f * (uniform01() - 0.5f);
    FeatureDump fd;
    feature_dump_init(&fd, D, 1);
    feature_dump_logit_effects(&fd, Wn.data(), gamma.data(), W_U.data(), mean.data(), C, V);
    double worst = 0.0;
    int swaps = 0;
    for (int f = 0; f < D; f++) {
        std::vector<std::pair<double, int>> e(V);
        for (int v = 0; v < V; v++) {
            double acc = 0.0;
            for (int i = 0; i < C; i++) acc += (double)Wn[(size_t)f * C + i] * gamma[i] * ((double)W_U[(size_t)v * C + i] + mean[i]);
            e[v] = {acc, v};
        }
        std::sort(e.begin(), e.end());
        for (int j = 0; j < 10; j++) {
            worst = std::max(worst, fabs(fd.logit_top_values[f * 10 + j] - e[V - 1 - j].first));
            worst = std::max(worst, fabs(fd.logit_bottom_values[f * 10 + j] - e[j].first));
            swaps += fd.logit_top_tokens[f * 10 + j] != e[V - 1 - j].second;
            swaps += fd.logit_bottom_tokens[f * 10 + j] != e[j].second;
        }
    }
    INFO("largest error " << worst << ", token swaps " << swaps);
    CHECK(worst < 1e-6);  // the effects are ~0.3: fp32 sums of 40 terms
    CHECK(swaps == 0);    // no two effects this close in the random data
}

static bool any_tmp_file(const std::string& dir) {
    DIR* dp = opendir(dir.c_str());
    if (!dp) return false;
    bool found = false;
    while (struct dirent* e = readdir(dp)) {
        std::string n = e->d_name;
        if (n.size() >= 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) found = true;
    }
    closedir(dp);
    return found;
}

TEST_CASE("feature_dump_write round-trips through safetensors.h", "[feature_dump]") {
    const int T = 10, N = 100, D = 37, K = 5, C = 8, V = 50;
    std::vector<float> c = make_activations(N, D);
    FeatureDump fd = full_dump(c, N / T, T, D, K, 3);
    std::vector<float> Wn((size_t)D * C), gamma(C, 1.5f), W_U((size_t)V * C);
    for (float& x : Wn) x = uniform01() - 0.5f;
    for (float& x : W_U) x = uniform01() - 0.5f;
    feature_dump_logit_effects(&fd, Wn.data(), gamma.data(), W_U.data(), nullptr, C, V);
    std::string dir = "build/test_out/feature_dump/nested/dir";
    REQUIRE(system("rm -rf build/test_out/feature_dump") == 0);
    std::string meta = feature_dump_meta("data/x_val_*.bin", {"data/x_val_000.bin", "data/x \"quoted\".bin"}, 64, N, D, K, 2,
                                         "models/m/model.safetensors", "e2e");
    feature_dump_write(&fd, dir, meta);
    CHECK(!any_tmp_file(dir));
    CHECK(read_text_file(dir + "/features.json") == meta);
    JsonValue j;
    REQUIRE(json_parse(meta, j));
    REQUIRE(j.get("val_shards"));
    CHECK(j.get("val_shards")->items.size() == 2);
    CHECK(j.get("val_shards")->items[1].str == "data/x \"quoted\".bin");
    CHECK(j.get("seq_len")->num == 64);
    CHECK(j.get("topk")->num == K);
    REQUIRE(j.get("cwd"));
    CHECK(!j.get("cwd")->str.empty());  // relative shard paths resolve against it
    REQUIRE(j.get("bands"));
    CHECK(j.get("bands")->get("fracs")->items.size() == 4);
    CHECK(j.get("context")->get("first")->num == -19);
    CHECK(j.get("context")->get("width")->num == 24);

    SafeTensors st;
    safetensors_open(&st, dir + "/features.safetensors");
    REQUIRE(safetensors_find(&st, "top_pos")->dtype == "I64");
    REQUIRE(safetensors_find(&st, "fire_count")->dtype == "I64");
    REQUIRE(safetensors_find(&st, "top_values")->dtype == "F32");
    std::vector<float> vals = safetensors_read_vec(&st, "top_values", {D, K});
    std::vector<int64_t> pos((size_t)D * K), fires(D);
    safetensors_read_i64(&st, "top_pos", {D, K}, pos.data());
    safetensors_read_i64(&st, "fire_count", {D}, fires.data());
    CHECK(memcmp(vals.data(), fd.top_values.data(), vals.size() * sizeof(float)) == 0);
    CHECK(std::vector<long long>(pos.begin(), pos.end()) == fd.top_pos);
    CHECK(std::vector<long long>(fires.begin(), fires.end()) == fd.fire_count);
    std::vector<float> freq = safetensors_read_vec(&st, "frequency", {D});
    std::vector<float> lf = safetensors_read_vec(&st, "log10_frequency", {D});
    for (int d = 0; d < D; d++) {
        CHECK(freq[d] == (float)((double)fd.fire_count[d] / N));
        CHECK(lf[d] == (float)log10((double)fd.fire_count[d] / N + 1e-10));
    }
    CHECK(lf[0] == (float)-10.0);  // feature 0 never fires: SAELens's floor
    CHECK(freq[1] == 1.0f);        // feature 1 always does
    bool tokens_meta = false;
    for (auto& kv : st.metadata) if (kv.first == "tokens") tokens_meta = kv.second == std::to_string(N);
    CHECK(tokens_meta);

    // the dashboard tensors: dtypes, shapes, values
    auto i64 = [&](const char* name, const std::vector<int64_t>& shape) {
        REQUIRE(safetensors_find(&st, name)->dtype == "I64");
        size_t n = 1;
        for (int64_t d : shape) n *= (size_t)d;
        std::vector<int64_t> out(n);
        safetensors_read_i64(&st, name, shape, out.data());
        return std::vector<long long>(out.begin(), out.end());
    };
    auto f32 = [&](const char* name, const std::vector<int64_t>& shape) {
        REQUIRE(safetensors_find(&st, name)->dtype == "F32");
        return safetensors_read_vec(&st, name, shape);
    };
    CHECK(i64("logit_top_tokens", {D, 10}) == fd.logit_top_tokens);
    CHECK(i64("logit_bottom_tokens", {D, 10}) == fd.logit_bottom_tokens);
    CHECK(same_bits(f32("logit_top_values", {D, 10}), fd.logit_top_values));
    CHECK(same_bits(f32("logit_bottom_values", {D, 10}), fd.logit_bottom_values));
    CHECK(same_bits(f32("hist_edges", {57}), fd.hist_edges));
    CHECK(i64("hist_counts", {D, 58}) == fd.hist_counts);
    CHECK(f32("band_fracs", {4}) == std::vector<float>{0.0f, 0.25f, 0.5f, 0.75f});
    CHECK(i64("band_pos", {D, 3, 5}) == fd.band_pos);
    CHECK(same_bits(f32("band_values", {D, 3, 5}), fd.band_values));
    CHECK(i64("context_first", {1}) == std::vector<long long>{-19});
    const char* ctx_names[2] = {"context_acts_top", "context_acts_band"};
    const std::vector<uint16_t>* ctx[2] = {&fd.context_top, &fd.context_band};
    const std::vector<int64_t> ctx_shapes[2] = {{D, K, 24}, {D, 3, 5, 24}};
    for (int i = 0; i < 2; i++) {
        REQUIRE(safetensors_find(&st, ctx_names[i])->dtype == "F16");
        std::vector<float> back = safetensors_read_vec(&st, ctx_names[i], ctx_shapes[i]);  // F16 -> float
        REQUIRE(back.size() == ctx[i]->size());
        int bad = 0, nan = 0;
        for (size_t k = 0; k < back.size(); k++) {
            float want = f16_value((*ctx[i])[k]);
            nan += std::isnan(want);
            bad += std::isnan(want) ? !std::isnan(back[k]) : back[k] != want;
        }
        CHECK(bad == 0);
        CHECK(nan > 0);  // row edges and empty slots
    }

    // writing again replaces the files (atomic rename over the old ones)
    feature_dump_add(&fd, c.data(), N, N);
    feature_dump_write(&fd, dir, meta);
    SafeTensors st2;
    safetensors_open(&st2, dir + "/features.safetensors");
    CHECK(safetensors_read_vec(&st2, "frequency", {D})[1] == 1.0f);
    std::vector<int64_t> fires2(D);
    safetensors_read_i64(&st2, "fire_count", {D}, fires2.data());
    CHECK(fires2[1] == 2 * N);
}

TEST_CASE("bad metadata ends the process with exit code 1 and writes nothing", "[feature_dump]") {
    FeatureDump fd;
    feature_dump_init(&fd, 4, 2);
    std::string dir = "build/test_out/feature_dump_bad";
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        feature_dump_write(&fd, dir, "{\"val\": ");  // truncated JSON
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
    CHECK(!file_exists(dir + "/features.safetensors"));
    CHECK(!file_exists(dir + "/features.json"));
}

TEST_CASE("safetensors_write: F32 by default, I32 and I64 on request", "[safetensors]") {
    REQUIRE(system("mkdir -p build/test_out") == 0);
    std::string path = "build/test_out/dtypes.safetensors";
    std::vector<float> f = {1.5f, -2.0f, 3.25f};
    std::vector<int32_t> i32 = {-7, 0, 2147483647};
    std::vector<long long> i64 = {-1, 1LL << 40};
    safetensors_write(path, {{"f", {3}, f.data()}, {"i32", {3}, i32.data(), "I32"}, {"i64", {1, 2}, i64.data(), "I64"}});
    SafeTensors st;
    safetensors_open(&st, path);
    CHECK(safetensors_find(&st, "f")->dtype == "F32");
    CHECK(safetensors_read_vec(&st, "f", {3}) == f);
    std::vector<int64_t> a(3), b(2);
    safetensors_read_i64(&st, "i32", {3}, a.data());
    safetensors_read_i64(&st, "i64", {1, 2}, b.data());
    CHECK(a == std::vector<int64_t>{-7, 0, 2147483647});
    CHECK(b == std::vector<int64_t>{-1, 1LL << 40});
}
