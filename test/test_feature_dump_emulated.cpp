/*
--dump-features on the GPU, llmc/feature_dump.cuh, run on the CPU (test/cuda_host_emulation.h)
through its own launchers, reset and download, against the CPU trainer's dump (llmc/feature_dump.h)
of the same activations: what the GPU dump against the CPU's on a device (dev/gpu_check.sh's
dump_compare, issue 15) will compare, checked here first. An emulation, not a GPU run: it checks
the kernels' logic (firing counts, histogram bins, top-K order and ties, band offers, contexts,
the logit rows and the top/bottom-10 merge), not the device's memory system.

Passes 1 and 2 (dev/cuda/feature_dump.cu's shapes and activations, dev/cuda/feature_dump_checks.h):
(rows, T, D, K) = (1,1,1,1) (7,1,33,3) (3,12,4099,10) (10,10,1000,32), fp32 and bf16, streamed in
three uneven batches of whole rows onto state the launcher reset (buffers poisoned first): every
array bit for bit equal to the CPU's. Logit effects (fp32): the whole pipeline at (D,C,V) =
(300,64,1000) and (70,100,7) against the CPU's, values within 1e-5 of the scale, a token differing
only where two effects are that close. The matmul goes through matmul.cuh's wrapper to the
emulation's cuBLASLt (a CPU loop summing in its own order, as cuBLAS does).
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <stdio.h>
#include "cuda_host_emulation.h"

#include "feature_dump.cuh"  // build/emu/llmc/feature_dump.cuh: llmc's with its launches rewritten for the emulation
#include "../dev/cuda/feature_dump_checks.h"

// "device" memory: host blocks poisoned with 0xff bytes (NaN floats, -1 ints), so a slot the
// reset or a kernel misses shows
struct EmuArena {
    std::vector<std::unique_ptr<char[]>> blocks;
    template <typename T>
    T* take(size_t n) {
        const size_t bytes = std::max(n, (size_t)1) * sizeof(T);
        blocks.emplace_back(new char[bytes + 16]);
        char* p = blocks.back().get();
        p += (16 - (uintptr_t)p % 16) % 16;
        memset(p, 0xff, bytes);
        return reinterpret_cast<T*>(p);
    }
};


template <typename floatX>
static void check_passes(int rows, int T, int D, int K) {
    const int N = rows * T, r1 = rows / 3, r2 = rows - rows / 5;
    std::vector<float> c = make_activations(N, D);
    std::vector<floatX> cx(c.size());
    for (size_t i = 0; i < c.size(); i++) {  // the CPU sees what the GPU sees
        cx[i] = from_float<floatX>(c[i]);
        c[i] = to_float(cx[i]);
    }
    const FeatureDump ref = cpu_dump(c.data(), rows, T, D, K, r1, r2);
    EmuArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, K, 1, 1);
    const int cuts[4] = {0, r1, r2, rows};
    for (int pass = 0; pass < 2; pass++)  // as the trainer streams them (llmc/run.h)
        for (int i = 0; i < 3; i++) {
            const int n0 = cuts[i] * T, n = (cuts[i + 1] - cuts[i]) * T;
            if (n == 0) continue;
            const floatX* batch = cx.data() + (size_t)n0 * D;
            if (pass == 0) {
                feature_dump_add_gpu(g, batch, n, n0, 0);
            } else {
                feature_dump_add_bands_gpu(g, batch, n, n0, 0);
                feature_dump_add_contexts_gpu(g, batch, n, T, n0, 0);
            }
        }
    FeatureDump got;  // downloaded and ordered as the trainer does (llmc/run.h)
    feature_dump_init(&got, D, K);
    feature_dump_download(&got, g, N);
    feature_dump_order_bands(&got);
    char name[96];
    snprintf(name, sizeof(name), "%s rows=%d T=%d D=%d K=%d", sizeof(floatX) == 4 ? "fp32" : "bf16", rows, T, D, K);
    CHECK(same_dump(got, ref, name));
}

static void check_logits(int D, int C, int V) {
    LogitCase lc = make_logit_case(D, C, V);
    const FeatureDump ref = cpu_logits(lc, D);
    EmuArena a;
    FeatureDumpDevice g = device_dump_alloc(&a, D, 1, C, V);
    memcpy(g.gamma, lc.gamma.data(), C * sizeof(float));
    memcpy(g.unembed_mean, lc.mean.data(), C * sizeof(float));
    matmul_init();
    feature_dump_logit_effects_gpu(g, lc.W_dec.data(), g.gamma, lc.W_U.data(), g.unembed_mean, 0);
    FeatureDump got;
    feature_dump_init(&got, D, 1);
    feature_dump_download(&got, g, 0);
    char name[96];
    snprintf(name, sizeof(name), "logit effects D=%d C=%d V=%d", D, C, V);
    CHECK(same_logits(got, ref, 1e-5, name));
}

TEST_CASE("the GPU dump's two passes equal the CPU's bit for bit, fp32 and bf16 (emulated on the CPU)", "[dump]") {
    const int shapes[][4] = {{1, 1, 1, 1}, {7, 1, 33, 3}, {3, 12, 4099, 10}, {10, 10, 1000, 32}};
    for (auto& s : shapes) check_passes<float>(s[0], s[1], s[2], s[3]);
    for (auto& s : shapes) check_passes<bf16>(s[0], s[1], s[2], s[3]);
}

TEST_CASE("the GPU dump's logit effects match the CPU's (emulated on the CPU)", "[dump]") {
    check_logits(300, 64, 1000);  // more than one chunk of 256 features
    check_logits(70, 100, 7);     // V < 10: empty slots (-1, NaN)
}
