/*
Token data in llm.c's shard format (SPEC §7): a 256-int32 header (magic 20240520,
version 1, token count n) then n little-endian uint16 tokens, file size exactly 1024 + 2n.
The shards matching a glob are taken in sorted-name order and viewed as one stream; row r
is tokens [r*T, r*T + T), which may span two shards. Micro-batch n holds rows n*B + b.
With shuffling on, each epoch visits the rows in a permutation drawn from (seed, epoch).
The loader's whole state is the number of rows consumed, so resume is exact.
Every token is checked against the vocabulary when the shards are opened.
*/
#pragma once
#include <stdint.h>
#include <glob.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <string>
#include <vector>
#include <algorithm>
#include "utils.h"

struct Shard {
    std::string path;
    const uint16_t* tokens = nullptr;  // mmapped, past the header
    void* map = nullptr;
    size_t map_bytes = 0;
    int64_t num_tokens = 0;
    int64_t first_token = 0;           // position of tokens[0] in the whole stream
};

struct DataLoader {
    std::vector<Shard> shards;
    int B = 0, T = 0;
    int64_t total_tokens = 0;
    int64_t num_rows = 0;              // floor(total_tokens / T)
    bool shuffle = false;
    uint64_t seed = 0;
    int64_t rows_consumed = 0;         // the state: rows handed out so far
    int64_t perm_epoch = -1;           // epoch the permutation below is for
    std::vector<int64_t> perm;
    bool wrapped_warned = false;
};

inline std::vector<std::string> glob_files(const std::string& pattern, const char* flag) {
    glob_t g;
    std::vector<std::string> out;
    int rc = glob(pattern.c_str(), 0, nullptr, &g);
    if (rc == 0) for (size_t i = 0; i < g.gl_pathc; i++) out.push_back(g.gl_pathv[i]);
    globfree(&g);
    if (out.empty()) die("%s '%s' matches no files (run scripts/download_starter_pack.sh, or see dev/data/ to make shards)", flag, pattern.c_str());
    std::sort(out.begin(), out.end());
    return out;
}

inline bool glob_matches(const std::string& pattern) {
    glob_t g;
    bool any = glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0;
    globfree(&g);
    return any;
}

inline void shard_open(Shard* s, const std::string& path, int vocab_size) {
    s->path = path;
    long long size = file_size(path.c_str());
    if (size < 1024) die("token shard '%s' is truncated: %lld bytes, smaller than its 1024-byte header", path.c_str(), size);
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) die("could not open token shard '%s': %s", path.c_str(), strerror(errno));
    void* map = mmap(nullptr, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die("could not map token shard '%s': %s", path.c_str(), strerror(errno));
    const int32_t* header = (const int32_t*)map;
    if (header[0] != 20240520) die("token shard '%s': bad magic %d (expected 20240520)", path.c_str(), header[0]);
    if (header[1] != 1) die("token shard '%s': unsupported version %d (expected 1)", path.c_str(), header[1]);
    int64_t n = (uint32_t)header[2];
    if (1024 + 2 * n != size)
        die("token shard '%s' is %lld bytes but its header says %lld tokens (%lld bytes): truncated or corrupt", path.c_str(), size,
            (long long)n, (long long)(1024 + 2 * n));
    s->map = map;
    s->map_bytes = (size_t)size;
    s->tokens = (const uint16_t*)((const char*)map + 1024);
    s->num_tokens = n;
    for (int64_t i = 0; i < n; i++)
        if (s->tokens[i] >= vocab_size)
            die("token shard '%s': token %d at position %lld is outside the vocabulary (V = %d)", path.c_str(), s->tokens[i], (long long)i, vocab_size);
}

inline void dataloader_init(DataLoader* dl, const std::string& pattern, const char* flag, int B, int T, int vocab_size, bool shuffle, uint64_t seed) {
    dl->B = B; dl->T = T; dl->shuffle = shuffle; dl->seed = seed;
    dl->rows_consumed = 0; dl->perm_epoch = -1; dl->wrapped_warned = false;
    dl->total_tokens = 0;
    for (const std::string& path : glob_files(pattern, flag)) {
        if (!file_exists(path)) die("%s '%s': '%s' is not a regular file (a folder?): give the token shards, e.g. DIR/*.bin", flag,
                                    pattern.c_str(), path.c_str());
        Shard s;
        shard_open(&s, path, vocab_size);
        s.first_token = dl->total_tokens;
        dl->total_tokens += s.num_tokens;
        dl->shards.push_back(s);
    }
    dl->num_rows = dl->total_tokens / T;
    if (dl->num_rows < B)
        die("%s '%s' holds %lld tokens: fewer than one micro-batch of %d rows x %d tokens", flag, pattern.c_str(),
            (long long)dl->total_tokens, B, T);
}

inline void dataloader_free(DataLoader* dl) {
    for (Shard& s : dl->shards) munmap(s.map, s.map_bytes);
    dl->shards.clear();
}

// which row of the stream the i-th row handed out is
inline int64_t dataloader_row_index(DataLoader* dl, int64_t i) {
    int64_t epoch = i / dl->num_rows, pos = i % dl->num_rows;
    if (!dl->shuffle) return pos;
    if (dl->perm_epoch != epoch) {
        dl->perm.resize(dl->num_rows);
        for (int64_t r = 0; r < dl->num_rows; r++) dl->perm[r] = r;
        uint64_t st = dl->seed * 0x100000001B3ULL + (uint64_t)epoch;
        for (int64_t r = dl->num_rows - 1; r > 0; r--) {  // Fisher-Yates
            int64_t j = (int64_t)(splitmix64(&st) % (uint64_t)(r + 1));
            std::swap(dl->perm[r], dl->perm[j]);
        }
        dl->perm_epoch = epoch;
    }
    return dl->perm[pos];
}

// copies tokens [start, start + n) of the stream into out, crossing shard boundaries
inline void dataloader_copy_tokens(const DataLoader* dl, int64_t start, int n, int* out) {
    size_t s = 0;
    while (s + 1 < dl->shards.size() && dl->shards[s + 1].first_token <= start) s++;
    for (int i = 0; i < n; i++) {
        int64_t pos = start + i;
        while (pos >= dl->shards[s].first_token + dl->shards[s].num_tokens) s++;
        out[i] = dl->shards[s].tokens[pos - dl->shards[s].first_token];
    }
}

// fills inputs (B, T) with the next micro-batch
inline void dataloader_next_batch(DataLoader* dl, int* inputs) {
    for (int b = 0; b < dl->B; b++) {
        int64_t i = dl->rows_consumed++;
        if (i >= dl->num_rows && !dl->wrapped_warned) {
            printf("dataloader: all %lld rows used, wrapping to row 0\n", (long long)dl->num_rows);
            dl->wrapped_warned = true;
        }
        int64_t row = dataloader_row_index(dl, i);
        dataloader_copy_tokens(dl, row * dl->T, dl->T, inputs + (size_t)b * dl->T);
    }
}

// the eval set: rows 0..n-1 of the stream, always the same
inline void dataloader_get_rows(const DataLoader* dl, int64_t first_row, int nrows, int* inputs) {
    for (int b = 0; b < nrows; b++) dataloader_copy_tokens(dl, (first_row + b) * dl->T, dl->T, inputs + (size_t)b * dl->T);
}
