/*
Host utilities shared by both trainers: checked file I/O and allocation, and `die(...)`,
which prints one line a user can act on and exits non-zero. No error is swallowed.
*/
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <errno.h>
#include <stdint.h>
#include <string>
#include <sys/stat.h>
#include <dirent.h>
#include <signal.h>
#include <unistd.h>
#include <algorithm>
#include <vector>
#include <math.h>
#include <time.h>

// what die() names before its message while one part of an input is read, e.g. "sweep.jsonl line 3: "
inline std::string& die_context() {
    static std::string context;
    return context;
}

[[noreturn]] inline void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s", die_context().c_str());
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

inline FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    FILE* fp = fopen(path, mode);
    if (fp == NULL) die("could not open '%s' (mode %s): %s [%s:%d]", path, mode, strerror(errno), file, line);
    return fp;
}
#define fopenCheck(path, mode) fopen_check(path, mode, __FILE__, __LINE__)

inline void fread_check(void* ptr, size_t size, size_t nmemb, FILE* fp, const char* what, const char* file, int line) {
    size_t got = fread(ptr, size, nmemb, fp);
    if (got != nmemb) die("'%s' is truncated: expected %zu more bytes [%s:%d]", what, size * nmemb, file, line);
}
#define freadCheck(ptr, size, nmemb, fp, what) fread_check(ptr, size, nmemb, fp, what, __FILE__, __LINE__)

inline void fwrite_check(const void* ptr, size_t size, size_t nmemb, FILE* fp, const char* what, const char* file, int line) {
    if (fwrite(ptr, size, nmemb, fp) != nmemb) die("write to '%s' failed: %s [%s:%d]", what, strerror(errno), file, line);
}
#define fwriteCheck(ptr, size, nmemb, fp, what) fwrite_check(ptr, size, nmemb, fp, what, __FILE__, __LINE__)

// a write that failed earlier (fprintf does not say) is caught here, before the file is renamed into place
inline void fclose_check(FILE* fp, const char* what) {
    bool failed = ferror(fp) != 0;
    if (fclose(fp) != 0 || failed) die("writing '%s' failed: %s", what, strerror(errno));
}

inline void* malloc_check(size_t size, const char* file, int line) {
    void* p = malloc(size);
    if (p == NULL && size > 0) die("out of host memory allocating %zu bytes [%s:%d]", size, file, line);
    return p;
}
#define mallocCheck(size) malloc_check(size, __FILE__, __LINE__)

inline bool file_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline long long file_size(const char* path) {
    struct stat st;
    if (stat(path, &st) != 0) die("could not stat '%s': %s", path, strerror(errno));
    return (long long)st.st_size;
}

// mkdir -p
inline void make_dir(const std::string& dir) {
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/') continue;
        std::string part = dir.substr(0, i);
        if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) die("could not create directory '%s': %s", part.c_str(), strerror(errno));
    }
}

// the folder part of a path: "." for a bare name, "/" for a file in the root
inline std::string parent_dir(const std::string& path) {
    size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

// A folder the run makes later (--out, --dump-features), checked before anything is written: it is
// a folder already, or the first of its parts that is missing can be made. That part is made and
// removed at once: access() says yes to root in /proc and on a read-only mount, mkdir does not.
inline void check_dir_creatable(const char* flag, const std::string& dir) {
    std::string d = dir, missing;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    while (true) {
        struct stat st;
        if (stat(d.c_str(), &st) == 0) {
            if (!S_ISDIR(st.st_mode)) die("%s %s: '%s' is a file, not a folder", flag, dir.c_str(), d.c_str());
            break;
        }
        if (errno != ENOENT) die("%s %s: '%s': %s", flag, dir.c_str(), d.c_str(), strerror(errno));
        missing = d;
        d = parent_dir(d);
    }
    if (missing.empty()) {
        if (access(d.c_str(), W_OK) != 0) die("%s %s: the folder is not writable: %s", flag, dir.c_str(), strerror(errno));
        return;
    }
    if (mkdir(missing.c_str(), 0755) != 0) die("%s %s: could not create '%s': %s", flag, dir.c_str(), missing.c_str(), strerror(errno));
    rmdir(missing.c_str());
}

// Test hook for the kill-and-resume tests: with SAE_KILL_AT_FILE_OP=k in the environment, the
// process kills itself (SIGKILL, as a crash or an OOM kill would) at the k-th file write or rename
// of the run, so a test can stop a save at every point of it. Unset, it does nothing.
inline void file_op_point() {
    static long long kill_at = getenv("SAE_KILL_AT_FILE_OP") ? atoll(getenv("SAE_KILL_AT_FILE_OP")) : -1;
    static long long count = 0;
    if (kill_at > 0 && ++count == kill_at) {
        fflush(stdout);
        raise(SIGKILL);
    }
}

// files are written to path.tmp and renamed, so a crash never leaves a half-written file
inline void rename_check(const std::string& from, const std::string& to) {
    file_op_point();
    if (rename(from.c_str(), to.c_str()) != 0) die("could not rename '%s' to '%s': %s", from.c_str(), to.c_str(), strerror(errno));
}

inline bool dir_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// the names of the plain files in dir (not . and .., not subfolders), sorted
inline std::vector<std::string> list_files(const std::string& dir) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (!d) die("could not list '%s': %s", dir.c_str(), strerror(errno));
    while (struct dirent* e = readdir(d))
        if (file_exists(dir + "/" + e->d_name)) names.push_back(e->d_name);
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// the names of the subfolders of dir (not . and ..), sorted
inline std::vector<std::string> list_dirs(const std::string& dir) {
    std::vector<std::string> names;
    DIR* d = opendir(dir.c_str());
    if (!d) die("could not list '%s': %s", dir.c_str(), strerror(errno));
    while (struct dirent* e = readdir(d))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && dir_exists(dir + "/" + e->d_name)) names.push_back(e->d_name);
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// removes a folder of plain files and folders of them (a save's staging folder; a sweep's has one per SAE)
inline void remove_file_dir(const std::string& dir) {
    if (!dir_exists(dir)) return;
    for (const std::string& f : list_files(dir))
        if (unlink((dir + "/" + f).c_str()) != 0) die("could not remove '%s/%s': %s", dir.c_str(), f.c_str(), strerror(errno));
    for (const std::string& sub : list_dirs(dir)) remove_file_dir(dir + "/" + sub);
    if (rmdir(dir.c_str()) != 0) die("could not remove '%s': %s (it should hold only files and folders)", dir.c_str(), strerror(errno));
}

inline std::string read_text_file(const std::string& path) {
    FILE* fp = fopenCheck(path.c_str(), "rb");
    std::string s;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0) s.append(buf, n);
    if (ferror(fp)) die("could not read '%s': %s", path.c_str(), strerror(errno));  // e.g. a directory
    fclose(fp);
    return s;
}

// MemAvailable from /proc/meminfo, in bytes; -1 where the system does not say
inline long long host_memory_available() {
    FILE* fp = fopen("/proc/meminfo", "r");
    if (!fp) return -1;
    char line[256];
    long long kib = -1;
    while (fgets(line, sizeof(line), fp))
        if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1) break;
    fclose(fp);
    return kib < 0 ? -1 : kib * 1024;
}

// Host memory is planned as the GPU trainer plans device memory: what a part of the run needs
// is checked against what the machine has free before it is allocated (with overcommit a big
// allocation succeeds and the OOM killer strikes later, without a word).
inline void check_host_memory(double bytes, const char* what) {
    long long avail = host_memory_available();
    if (avail >= 0 && bytes > (double)avail)
        die("%s needs %.2f GiB of host memory but only %.2f GiB is available: lower --batch, --seq-len or --dict-size", what,
            bytes / 1073741824.0, avail / 1073741824.0);
}

// A 64-bit checksum of n bytes (8 at a time, multiply-xorshift mixing; not cryptographic): what a
// training state stores per tensor, so a flipped or overwritten byte is caught on load. Fast
// enough (GB/s) to run over the paper-sized SAE and its Adam moments at every save.
inline uint64_t checksum64(const void* data, size_t n) {
    const unsigned char* p = (const unsigned char*)data;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x94D049BB133111EBULL;
    return h ^ (h >> 29);
}

// splitmix64: a small, fully specified generator, so permutations are the same on every machine
inline uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline double now_seconds() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// index of the first NaN or Inf in x (n), or -1
inline long long first_non_finite(const float* x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (long long)i;
    return -1;
}

// both trainers stop on a non-finite loss or gradient norm after an update, before anything is saved
inline void check_finite(double loss, double grad_norm, long long step) {
    if (!isfinite(loss) || !isfinite(grad_norm))
        die("loss is %f at step %lld (grad norm %f): NaN/Inf in the model or SAE, or training diverged (try a lower --lr); "
            "nothing was saved", loss, step, grad_norm);
}
