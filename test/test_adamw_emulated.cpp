/*
llmc/adamw.cuh run on the CPU (test/cuda_host_emulation.h) through its launchers: the global
gradient norm and the clipped Adam(W) update, with the bf16 (or fp32) copies it writes along
(ParamCopies: the trainer's W_enc and bias copies, on by default in both precisions, not yet run
on a GPU). An emulation, not a GPU run.

Checks, on 20,000 parameters (several blocks, and the grid stride with a capped grid), three
copy ranges as the trainer lays them out (W_enc, b_enc, b_dec) and two Adam steps:
- global_norm_squared within 1e-6 of a double sum, and accumulate adds to what is there;
- the masters, m and v with copies bit-identical to the update without them;
- each copy equal to its master range rounded to the copy's type (round to nearest even, as
  cast_copy), every element outside the ranges untouched;
- the update within 1e-6 relative of PyTorch's Adam(W) written out in double (clipping on, weight
  decay on), so a wrong order of terms or a missing clip shows.
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <random>
#include <stdio.h>
#include "cuda_host_emulation.h"
#include "adamw.cuh"  // build/emu/llmc/: llmc's with its launches rewritten for the emulation

template <typename floatX>
static void check_adamw() {
    const size_t n = 20000;
    const double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01, max_norm = 0.5;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<float> p(n), m(n), v(n), g(n);
    for (size_t i = 0; i < n; i++) {
        p[i] = U(rng);
        m[i] = 1e-2f * U(rng);
        v[i] = 1e-4f * fabsf(U(rng));
        g[i] = 2e-2f * U(rng);
    }
    // global norm, overwrite then accumulate
    float norm_sq = NAN;
    global_norm_squared(&norm_sq, g.data(), n, false, 0);
    double ref_sq = 0.0;
    for (float x : g) ref_sq += (double)x * x;
    CHECK(fabs(norm_sq - ref_sq) <= 1e-6 * ref_sq);
    float twice = norm_sq;
    global_norm_squared(&twice, g.data(), n, true, 0);
    CHECK(fabs(twice - 2.0 * ref_sq) <= 2e-6 * ref_sq);

    // three copy ranges, as the trainer's W_enc, b_enc and b_dec in one buffer
    ParamCopies<floatX> copies;
    const size_t begin[3] = {0, 12000, 19000}, count[3] = {12000, 700, 1000};
    std::vector<std::vector<floatX>> dst(3);
    for (int k = 0; k < 3; k++) {
        dst[k].assign(count[k] + 8, from_float<floatX>(NAN));  // 8 past the end: must stay untouched
        copies.dst[k] = dst[k].data();
        copies.begin[k] = begin[k];
        copies.n[k] = count[k];
    }
    std::vector<float> p1 = p, m1 = m, v1 = v, p0 = p, m0 = m, v0 = v;
    std::vector<double> pd(p.begin(), p.end()), md(m.begin(), m.end()), vd(v.begin(), v.end());
    for (int t = 1; t <= 2; t++) {
        double step_size, bc2_sqrt;
        adamw_scalars(t, lr, beta1, beta2, &step_size, &bc2_sqrt);
        adamw_update(p1.data(), m1.data(), v1.data(), g.data(), n, lr, beta1, beta2, step_size, bc2_sqrt, eps, wd, &norm_sq, max_norm, copies, 0);
        adamw_update(p0.data(), m0.data(), v0.data(), g.data(), n, lr, beta1, beta2, step_size, bc2_sqrt, eps, wd, &norm_sq, max_norm, 0);
        // PyTorch's clip_grad_norm_ then AdamW, in double
        const double clip = std::min(1.0, max_norm / (sqrt((double)norm_sq) + 1e-6));
        const double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
        for (size_t i = 0; i < n; i++) {
            const double gi = g[i] * clip;
            pd[i] *= 1.0 - lr * wd;
            md[i] = beta1 * md[i] + (1.0 - beta1) * gi;
            vd[i] = beta2 * vd[i] + (1.0 - beta2) * gi * gi;
            pd[i] -= lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + eps);
        }
    }
    size_t master_bad = 0, copy_bad = 0, outside_bad = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        master_bad += memcmp(&p1[i], &p0[i], 4) != 0 || memcmp(&m1[i], &m0[i], 4) != 0 || memcmp(&v1[i], &v0[i], 4) != 0;
        worst = std::max(worst, fabs(p1[i] - pd[i]) / (fabs(pd[i]) + 1e-3));
    }
    for (int k = 0; k < 3; k++) {
        for (size_t j = 0; j < count[k]; j++) {
            const floatX want = from_float<floatX>(p1[begin[k] + j]);
            copy_bad += memcmp(&want, &dst[k][j], sizeof(floatX)) != 0;
        }
        for (size_t j = count[k]; j < count[k] + 8; j++) outside_bad += !std::isnan(to_float(dst[k][j]));
    }
    printf("measured: emulated Adam(W) with %s copies, 2 steps on %zu parameters: masters %zu differ from the update without copies, "
           "copies %zu wrong, %zu written outside their ranges; against double Adam(W) %.2e relative\n",
           sizeof(floatX) == 4 ? "fp32" : "bf16", n, master_bad, copy_bad, outside_bad, worst);
    CHECK(master_bad == 0);
    CHECK(copy_bad == 0);
    CHECK(outside_bad == 0);
    CHECK(worst <= 1e-6);
}

TEST_CASE("Adam(W) writes the masters and their bf16 and fp32 copies (emulated on the CPU)", "[adamw]") {
    check_adamw<bf16>();
    check_adamw<float>();
}
