/*
Reading the features (--dump-features DIR): per SAE feature, how often it fires and its K
largest activations with where they happened, gathered while the first --dump-tokens tokens
of the --val stream go through GPT-2 up to the SAE. Memory is (D,K), whatever the number of
tokens: each batch of activations (N,D) is merged into the running top-K and dropped.

Order of the top-K: value descending, then stream position ascending (of two equal values the
earlier token ranks first). That is a total order on the tokens, so the top-K set is the same
however the stream is cut into batches, and the GPU version (llmc/feature_dump.cuh) produces
the same lists bit for bit. Only c > 0 counts as firing (c is a ReLU output, as L0 counts it).
Empty slots hold value 0 and position -1, and always sit after the real entries.

Files written (atomically: *.tmp then rename), read by scripts/report.py:
  DIR/features.safetensors  frequency (D) F32 = fire_count / tokens,
                            log10_frequency (D) F32 = log10(frequency + 1e-10) (SAELens's sparsity),
                            top_values (D,K) F32, top_pos (D,K) I64 (row*T + t in the val stream),
                            fire_count (D) I64; __metadata__ tokens, d_sae, topk
  DIR/features.json         the caller's JSON; feature_dump_meta makes the one report.py reads:
                            val (glob), cwd, val_shards (sorted, as opened), seq_len, n_tokens,
                            d_sae, topk, layer, hook_name, model, mode
*/
#pragma once
#include <math.h>
#include <unistd.h>
#include <string>
#include <vector>
#include "utils.h"
#include "json.h"
#include "safetensors.h"

struct FeatureDump {
    int D = 0, K = 0;
    long long tokens = 0;              // tokens added so far
    std::vector<long long> fire_count; // (D) tokens on which the feature was > 0
    std::vector<float> top_values;     // (D,K) descending
    std::vector<long long> top_pos;    // (D,K) stream position row*T + t, -1 if empty
};

inline void feature_dump_init(FeatureDump* fd, int D, int K) {
    if (D <= 0 || K <= 0) die("feature_dump_init: D %d and K %d must be positive", D, K);
    fd->D = D;
    fd->K = K;
    fd->tokens = 0;
    fd->fire_count.assign(D, 0);
    fd->top_values.assign((size_t)D * K, 0.0f);
    fd->top_pos.assign((size_t)D * K, -1);
}

// Merges one batch of activations c (N,D), token n at stream position first_pos + n. Batches
// must come in stream order: every token of this batch is then later than every kept entry, so
// a new value enters only if strictly greater than the K-th (a tie keeps the earlier token) and
// goes after the entries it equals. Features are independent: each is one thread's loop.
inline void feature_dump_add(FeatureDump* fd, const float* c, int N, long long first_pos) {
    const int D = fd->D, K = fd->K;
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
         ".hook_resid_pre\",\n  \"model\": \"" + json_escape(model) + "\",\n  \"mode\": \"" + json_escape(mode) + "\"\n}\n";
    return s;
}

inline void feature_dump_write(const FeatureDump* fd, const std::string& dir, const std::string& json_meta) {
    JsonValue check;
    if (!json_parse(json_meta, check) || check.kind != JsonValue::OBJECT)
        die("feature_dump_write: the metadata for '%s/features.json' is not a JSON object", dir.c_str());
    make_dir(dir);
    const int D = fd->D, K = fd->K;
    std::vector<float> freq(D), log10_freq(D);
    for (int d = 0; d < D; d++) {
        double f = fd->tokens > 0 ? (double)fd->fire_count[d] / (double)fd->tokens : 0.0;
        freq[d] = (float)f;
        log10_freq[d] = (float)log10(f + 1e-10);
    }
    std::vector<StWriteEntry> t = {
        {"frequency", {D}, freq.data()},
        {"log10_frequency", {D}, log10_freq.data()},
        {"top_values", {D, K}, fd->top_values.data()},
        {"top_pos", {D, K}, fd->top_pos.data(), "I64"},
        {"fire_count", {D}, fd->fire_count.data(), "I64"}};
    static_assert(sizeof(long long) == 8, "top_pos and fire_count are written as I64");
    safetensors_write(dir + "/features.safetensors", t,
                      {{"tokens", std::to_string(fd->tokens)}, {"d_sae", std::to_string(D)}, {"topk", std::to_string(K)}});
    std::string tmp = dir + "/features.json.tmp";
    FILE* fp = fopenCheck(tmp.c_str(), "w");
    fwriteCheck(json_meta.data(), 1, json_meta.size(), fp, tmp.c_str());
    fclose_check(fp, tmp.c_str());
    rename_check(tmp, dir + "/features.json");
}
