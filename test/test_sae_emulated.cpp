/*
llmc/sae_fused.cuh's kernel, the SAE backward's fused elementwise pass, run on the CPU
(test/cuda_host_emulation.h) against a plain reference: dpre = (dc + l1_scale)·[c > 0], db_enc
(+)= colsum(dpre), Σ|c|, count(c > 0) and the fired flags. An emulation, not a GPU run: it checks
the kernel's indexing, packing, tiling, grid stride and reductions on every machine, before a
device runs dev/cuda/sae.cu's checks of the same kernel.

Shapes (N,D): 16-byte packs (fp32 4, bf16 8 columns per thread) at D = 1000, and one element per
thread at D = 1001 (D not a multiple of the pack, as the launcher picks); N = 1, 5 and 37 (row
lanes left empty, and 37 = 32 + 5 rows). Grids of all tiles and of fewer blocks than tiles (the
grid stride the launcher uses past 4096 tiles). c has negatives and exact zeros, as a ReLU's
input would not but its output's zeros do; dc spans signs.
Bounds: dpre bit-identical (the same fp32 add and one rounding on both sides); db_enc within
1e-5 of the reference's double sum relative to the sum of its terms' magnitudes (an fp32 sum of
at most 38 terms errs by at most ~38·2^-24 = 2.3e-6 of that), Σ|c| within 1e-5 relative; counts
and flags exact. A wrong index, tile or stride is O(1).
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <random>
#include <stdio.h>
#include "cuda_host_emulation.h"
#include "../llmc/sae_fused.cuh"

// one shape through the kernel at VEC (1 or the pack size), on `grid` blocks (0: one per tile)
template <typename floatX, int VEC>
static void check_fused(int N, int D, int grid, bool accumulate) {
    const size_t n = (size_t)N * D;
    const float l1_scale = 3e-3f;
    std::mt19937 rng(7 * N + D);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<floatX> c(n), dpre(n);
    for (size_t i = 0; i < n; i++) {
        const float u = U(rng);
        c[i] = from_float<floatX>(u < -0.5f ? 0.0f : u);  // a quarter exact zeros, a quarter negative
        dpre[i] = from_float<floatX>(1e-2f * U(rng));
    }
    const std::vector<floatX> dc = dpre;
    std::vector<float> db_enc(D);
    for (int j = 0; j < D; j++) db_enc[j] = accumulate ? 0.25f * U(rng) : NAN;  // overwrite must not read it
    const std::vector<float> db_before = db_enc;
    std::vector<unsigned int> fired(D, 0u);
    fired[0] = 1u;  // preset: the kernel sets, never clears
    const int tiles = (D + 32 * VEC - 1) / (32 * VEC);
    const int blocks = grid > 0 ? grid : tiles;
    std::vector<float> l1_partials(blocks, NAN);
    std::vector<unsigned long long> l0_partials(blocks, ~0ull);
    emu_launch(blocks, 1, SAE_FUSED_THREADS, [&] {
        sae_l1_relu_backward_stats_kernel<floatX, VEC>(dpre.data(), db_enc.data(), l1_partials.data(), l0_partials.data(), fired.data(),
                                                       c.data(), l1_scale, N, D, accumulate);
    });

    size_t dpre_bad = 0, fired_bad = 0;
    double db_err = 0.0, l1_ref = 0.0, l1 = 0.0;
    unsigned long long l0_ref = 0, l0 = 0;
    for (int j = 0; j < D; j++) {
        double col = 0.0, col_abs = 0.0;
        bool any = j == 0;
        for (int r = 0; r < N; r++) {
            const size_t i = (size_t)r * D + j;
            const float ci = to_float(c[i]);
            const floatX want = from_float<floatX>(ci > 0.0f ? to_float(dc[i]) + l1_scale : 0.0f);
            dpre_bad += memcmp(&want, &dpre[i], sizeof(floatX)) != 0;
            col += to_float(want);
            col_abs += fabs(to_float(want));
            l1_ref += fabs(ci);
            l0_ref += ci > 0.0f;
            any = any || ci > 0.0f;
        }
        const double ref = (accumulate ? db_before[j] : 0.0) + col;
        // relative to the sum of the terms' magnitudes, the scale of any summation error
        const double e = fabs(db_enc[j] - ref) / ((accumulate ? fabs(db_before[j]) : 0.0) + col_abs + 1e-30);
        if (!(e <= db_err)) db_err = std::isnan(e) ? INFINITY : e;
        fired_bad += fired[j] != (any ? 1u : 0u);
    }
    for (int b = 0; b < blocks; b++) { l1 += l1_partials[b]; l0 += l0_partials[b]; }
    const double l1_err = fabs(l1 - l1_ref) / l1_ref;
    printf("measured: emulated fused SAE pass %s VEC=%d N=%d D=%d grid %d/%d%s: dpre %zu mismatches, db_enc %.2e, l1 %.2e, "
           "l0 %llu/%llu, fired %zu wrong\n",
           std::is_same<floatX, float>::value ? "fp32" : "bf16", VEC, N, D, blocks, tiles, accumulate ? " accumulate" : "", dpre_bad, db_err,
           l1_err, l0, l0_ref, fired_bad);
    INFO("N=" << N << " D=" << D << " VEC=" << VEC << " grid " << blocks);
    CHECK(dpre_bad == 0);
    CHECK(db_err <= 1e-5);
    CHECK(l1_err <= 1e-5);
    CHECK(l0 == l0_ref);
    CHECK(fired_bad == 0);
}

TEST_CASE("the fused SAE backward pass matches the reference in fp32 (emulated on the CPU)", "[sae]") {
    check_fused<float, 4>(37, 1000, 0, false);
    check_fused<float, 4>(5, 1000, 3, true);  // 8 tiles on 3 blocks
    check_fused<float, 4>(1, 1000, 0, true);
    check_fused<float, 1>(37, 1001, 0, true);
    check_fused<float, 1>(5, 1001, 7, false);  // 32 tiles on 7 blocks
}

TEST_CASE("the fused SAE backward pass matches the reference in bf16 (emulated on the CPU)", "[sae]") {
    check_fused<bf16, 8>(37, 1000, 0, true);
    check_fused<bf16, 8>(5, 1000, 3, false);  // 4 tiles on 3 blocks
    check_fused<bf16, 1>(37, 1001, 0, false);
    check_fused<bf16, 1>(1, 1001, 5, true);
}
