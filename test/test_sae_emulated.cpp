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
#include "sae.cuh"  // build/emu/llmc/: llmc's with its launches rewritten for the emulation (it includes sae_fused.cuh)

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

// The trainer's launchers, --fused-backward on against off: sae_l1_relu_backward_stats against
// sae_sparsity_l0, sae_l1_relu_backward and bias_grad_colsum on the same c and dc. dpre and
// db_enc must have the same bits (the fused pass sums db_enc in bias_grad_colsum's order, which
// is what makes the flag train fp32 to the same SAE), L0 and the fired flags must be equal, and
// Σ|c| (partials in another grouping) within 1e-6.
template <typename floatX>
static void check_launchers(int N, int D, bool accumulate) {
    const size_t n = (size_t)N * D;
    const float l1_scale = 2e-3f;
    std::mt19937 rng(11 * N + D);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<floatX> c(n), dc(n);
    for (size_t i = 0; i < n; i++) {
        const float u = U(rng);
        c[i] = from_float<floatX>(u < 0.0f ? 0.0f : u);  // a ReLU's output: half zeros
        dc[i] = from_float<floatX>(1e-2f * U(rng));
    }
    std::vector<float> db0(D);
    for (float& x : db0) x = 0.1f * U(rng);
    // fused
    std::vector<floatX> dpre_f = dc;
    std::vector<float> db_f = db0;
    std::vector<unsigned int> fired_f(D, 0u);
    float l1_f = 0.5f, l0_f = 2.0f;  // both add to what is there
    sae_l1_relu_backward_stats(dpre_f.data(), db_f.data(), &l1_f, &l0_f, fired_f.data(), c.data(), l1_scale, N, D, accumulate, 0);
    // unfused
    std::vector<floatX> dpre_u(n);
    std::vector<float> db_u = db0;
    std::vector<unsigned int> fired_u(D, 0u);
    float l1_u = 0.5f, l0_u = 2.0f;
    sae_sparsity_l0(&l1_u, &l0_u, fired_u.data(), c.data(), N, D, 0);
    sae_l1_relu_backward(dpre_u.data(), dc.data(), c.data(), l1_scale, N, D, 0);
    bias_grad_colsum(db_u.data(), dpre_u.data(), N, D, accumulate, 0);

    size_t dpre_bad = 0, db_bad = 0, fired_bad = 0;
    for (size_t i = 0; i < n; i++) dpre_bad += memcmp(&dpre_f[i], &dpre_u[i], sizeof(floatX)) != 0;
    for (int j = 0; j < D; j++) {
        db_bad += memcmp(&db_f[j], &db_u[j], sizeof(float)) != 0;
        fired_bad += fired_f[j] != fired_u[j];
    }
    double l1_ref = 0.5;
    long long l0_ref = 2;
    for (size_t i = 0; i < n; i++) { l1_ref += fabs(to_float(c[i])); l0_ref += to_float(c[i]) > 0.0f; }
    printf("measured: emulated SAE launchers %s N=%d D=%d%s, fused against unfused: dpre %zu and db_enc %zu bit differences, fired %zu; "
           "L0 %.0f / %.0f (ref %lld); L1 %.9g / %.9g (ref %.9g)\n",
           std::is_same<floatX, float>::value ? "fp32" : "bf16", N, D, accumulate ? " accumulate" : "", dpre_bad, db_bad, fired_bad, l0_f, l0_u,
           l0_ref, l1_f, l1_u, l1_ref);
    CHECK(dpre_bad == 0);
    CHECK(db_bad == 0);
    CHECK(fired_bad == 0);
    CHECK(l0_f == (float)l0_ref);
    CHECK(l0_u == (float)l0_ref);
    CHECK(fabs(l1_f - l1_ref) <= 1e-6 * l1_ref);
    CHECK(fabs(l1_u - l1_ref) <= 1e-6 * l1_ref);
}

TEST_CASE("the fused launcher gives the unfused launchers' dpre and db_enc bits (emulated on the CPU)", "[sae]") {
    check_launchers<float>(37, 1000, false);  // packed
    check_launchers<float>(33, 1001, true);   // one column per thread
    check_launchers<bf16>(37, 1000, true);
    check_launchers<bf16>(5, 1001, false);
}

// issue 16: past 2^20 columns (256 x 4096, the grid's cap) each thread of sae_sparsity_l0 walks
// several column tiles; every column's flag and count must still be found, and the L0 total exact
TEST_CASE("the sparsity statistics cover every column of a dictionary past 2^20 features (emulated on the CPU)", "[sae]") {
    const int N = 3, D = (1 << 20) + 1000;
    std::vector<float> c((size_t)N * D, 0.0f);
    std::mt19937 rng(5);
    std::uniform_int_distribution<int> col(0, D - 1);
    std::vector<int> cols = {0, 255, 256, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, D - 1};
    for (int k = 0; k < 2000; k++) cols.push_back(col(rng));
    long long l0_ref = 0;
    double l1_ref = 0.0;
    std::vector<long long> count_ref(D, 0);
    for (size_t k = 0; k < cols.size(); k++) {
        const int r = (int)(k % N), j = cols[k];
        float& v = c[(size_t)r * D + j];
        if (v != 0.0f) continue;
        v = 0.25f + 0.001f * (float)(k % 97);
        l0_ref++;
        l1_ref += v;
        count_ref[j]++;
    }
    std::vector<unsigned int> fired(D, 0u);
    std::vector<unsigned long long> fire_count(D, 0ull);
    float l1 = 0.0f, l0 = 0.0f;
    sae_sparsity_l0(&l1, &l0, fired.data(), c.data(), N, D, 0, fire_count.data());
    size_t fired_bad = 0, count_bad = 0;
    for (int j = 0; j < D; j++) {
        fired_bad += fired[j] != (count_ref[j] > 0 ? 1u : 0u);
        count_bad += (long long)fire_count[j] != count_ref[j];
    }
    printf("measured: emulated sae_sparsity_l0 at D = 2^20 + 1000: L0 %.0f (ref %lld), L1 %.7g (ref %.7g), fired %zu wrong, counts %zu wrong\n",
           l0, l0_ref, l1, l1_ref, fired_bad, count_bad);
    CHECK(l0 == (float)l0_ref);
    CHECK(fabs(l1 - l1_ref) <= 1e-5 * l1_ref);
    CHECK(fired_bad == 0);
    CHECK(count_bad == 0);
}
