/*
Tests for llmc/feature_dump.h (--dump-features): the streaming top-K merge and the files.

Build and run from the repo root:
    g++ -O3 -std=c++17 -Wall -Wextra -Werror -fopenmp test/test_feature_dump.cpp -o test_feature_dump && ./test_feature_dump

What is compared against what:
- feature_dump_add, fed the stream whole or in uneven batches, against a brute force that
  sorts every firing of every feature by (value desc, position asc) and keeps K. Exact
  equality: both pick the same floats and positions, nothing is computed. The data has ~70%
  zeros, values from a set of 8 (ties everywhere), negatives and NaN (which must not count),
  a feature that never fires and one that always fires with the same value.
- feature_dump_write round-trips through llmc/safetensors.h: F32 frequency, log10_frequency and
  top_values, I64 top_pos and fire_count read back bit for bit; features.json is the metadata as
  given; nothing named *.tmp is left; bad metadata ends the process with exit code 1.
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
    const int N = 100, D = 37, K = 5;
    std::vector<float> c = make_activations(N, D);
    FeatureDump fd;
    feature_dump_init(&fd, D, K);
    feature_dump_add(&fd, c.data(), N, 4096);
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

    // writing again replaces the files (atomic rename over the old ones)
    feature_dump_add(&fd, c.data(), N, 4096 + N);
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
