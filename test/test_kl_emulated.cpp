/*
llmc/kl.cuh's one-pass KL kernel (kl_forward_backward_onepass_kernel, the trainer's with
--fused-backward on) run on the CPU (test/cuda_host_emulation.h), a row split over the blocks of a
thread block cluster as the launcher splits it, against a double reference: KL(clean ‖ spliced) per
row and its gradient grad_scale·(p_s − p_c), through its launcher (kl_forward_backward_onepass, as
the trainer calls it; the test checks that it took the cluster path). An emulation, not a GPU run: it checks the split of
a row over ranks and threads, the merge of the blocks' softmax stats through another block's
shared memory (map_shared_rank), the cluster barriers and the KL partials' sum, on every machine,
before a device runs dev/cuda/kl.cu's variant 4 on the same kernel.

Forms, as the launcher's: fp32 logits with the gradient in place (dev/cuda's) and beside them,
bf16 in place, fp32 logits with a bf16 gradient (the bf16 trainer's). Shapes (V, Vp): GPT-2's
50257 in 50304 (4 ranks in fp32, 2 in bf16, padding in the last rank), 26620 (2 fp32 ranks, the
second a pack short of the first's chunk), 26628 (3 fp32 ranks; in 26632, 2 bf16 ones), 1000 in 1024
(one rank). Three rows, clean
and spliced logits random around different offsets (as the LM head's are, with W_U's mean row
removed or not), the spliced ones close to the clean ones or not.
Bounds, dev/cuda/kl.cu's: KL within 1e-5 relative + 5e-6; gradient within grad_rtol of |ref|
(fp32 1e-4, bf16 gradient 8e-3: its rounding) + 1e-5·grad_scale·(p_s + p_c); padding exactly 0. A
rank's stats in the wrong slot, a missing merge or a pack held twice is O(1).

And argmax_agree (the evals' top-1 agreement, one block of LOGITS_BLOCK_SIZE threads per row)
against a CPU count, on rows built so that a block reduction that drops a warp's candidate or breaks
a tie the wrong way counts a different number of them.
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <random>
#include <stdio.h>
#include "cuda_host_emulation.h"
#include "kl.cuh"  // build/emu/llmc/kl.cuh: llmc/kl.cuh with its launches rewritten for the emulation

static const float GRAD_SCALE = 1.0f / (8192.0f * 2.0f);  // kl_coeff / (N · grad_accum) at the defaults

// the double reference for one row of the stored (rounded) logits; p_sum = p_s + p_c per column
static double kl_row_reference(std::vector<double>& grad, std::vector<double>& p_sum, const std::vector<float>& zs,
                               const std::vector<float>& zc, int V) {
    auto lse = [&](const std::vector<float>& z) {
        double m = -INFINITY, s = 0.0;
        for (int v = 0; v < V; v++) m = std::max(m, (double)z[v]);
        for (int v = 0; v < V; v++) s += exp(z[v] - m);
        return m + log(s);
    };
    const double lse_s = lse(zs), lse_c = lse(zc);
    double kl = 0.0;
    for (int v = 0; v < V; v++) {
        const double lp_s = zs[v] - lse_s, lp_c = zc[v] - lse_c, p_s = exp(lp_s), p_c = exp(lp_c);
        kl += p_c * (lp_c - lp_s);
        grad[v] = GRAD_SCALE * (p_s - p_c);
        p_sum[v] = p_s + p_c;
    }
    return kl;
}

template <typename floatL, typename floatG>
static void check_onepass(int V, int Vp, bool in_place, bool close, float grad_rtol) {
    constexpr int P = Packed128<floatL>::size;
    const int N = 3, ranks = kl_onepass_ranks(Vp, P);
    REQUIRE(Vp % P == 0);
    REQUIRE(ranks <= KL_ONEPASS_MAX_RANKS);
    const size_t n = (size_t)N * Vp;
    std::mt19937 rng(V + 7 * Vp + (close ? 1 : 0));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<floatL> zs(n), zc(n);
    for (int r = 0; r < N; r++)
        for (int v = 0; v < Vp; v++) {
            const float clean = 2.5f * normal(rng) - 3.0f * r;  // row offsets 0, -3, -6: the softmax must not care
            const float spliced = close ? clean + 0.1f * normal(rng) : 2.5f * normal(rng) + 1.0f;
            const bool pad = v >= V;  // padding holds garbage the kernel must skip
            zc[(size_t)r * Vp + v] = from_float<floatL>(pad ? 1e4f : clean);
            zs[(size_t)r * Vp + v] = from_float<floatL>(pad ? -1e4f : spliced);
        }
    std::vector<floatG> dz_own(in_place ? 0 : n);
    for (auto& g : dz_own) g = from_float<floatG>(NAN);  // poisoned: every element must be written
    floatG* dz = in_place ? reinterpret_cast<floatG*>(zs.data()) : dz_own.data();
    const std::vector<floatL> zs_in = zs;  // in place overwrites them
    std::vector<float> kl_rows(N, NAN);
    const int cluster_launches = emu_cluster_launches;
    kl_forward_backward_onepass(kl_rows.data(), dz, zs.data(), zc.data(), GRAD_SCALE, N, V, Vp, 0);
    REQUIRE(emu_cluster_launches == cluster_launches + 1);  // the launcher took the one-pass path, not its fallback

    int bad_kl = 0, bad_grad = 0, bad_pad = 0;
    double max_kl_err = 0.0, max_grad_share = 0.0;  // the largest gradient error as a fraction of its bound
    std::vector<double> grad(V), p_sum(V);
    for (int r = 0; r < N; r++) {
        std::vector<float> s(Vp), c(Vp);
        for (int v = 0; v < Vp; v++) {
            s[v] = to_float(zs_in[(size_t)r * Vp + v]);
            c[v] = to_float(zc[(size_t)r * Vp + v]);
        }
        const double kl = kl_row_reference(grad, p_sum, s, c, V);
        const double kl_err = fabs(kl_rows[r] - kl);
        max_kl_err = std::max(max_kl_err, kl_err);
        if (!(kl_err <= 1e-5 * fabs(kl) + 5e-6)) {
            if (bad_kl < 3) printf("  KL row %d: emulated %.8g reference %.8g\n", r, kl_rows[r], kl);
            bad_kl++;
        }
        for (int v = 0; v < Vp; v++) {
            const float g = to_float(dz[(size_t)r * Vp + v]);
            if (v >= V) {
                bad_pad += g != 0.0f;
                continue;
            }
            const double e = fabs(g - grad[v]), bound = grad_rtol * fabs(grad[v]) + 1e-5 * GRAD_SCALE * p_sum[v];
            max_grad_share = std::max(max_grad_share, e / bound);
            if (!(e <= bound)) {
                if (bad_grad < 3) printf("  grad row %d col %d: emulated %.8g reference %.8g\n", r, v, g, grad[v]);
                bad_grad++;
            }
        }
    }
    printf("measured: one-pass KL %s logits, %s gradient%s, V %d Vp %d (%d block%s per row)%s: KL max err %.2e, grad max err %.2f of its bound\n",
           sizeof(floatL) == 4 ? "fp32" : "bf16", sizeof(floatG) == 4 ? "fp32" : "bf16", in_place ? " in place" : "", V, Vp, ranks,
           ranks > 1 ? "s" : "", close ? ", spliced close to clean" : "", max_kl_err, max_grad_share);
    CHECK(bad_kl == 0);
    CHECK(bad_grad == 0);
    CHECK(bad_pad == 0);
}

TEST_CASE("the one-pass KL on a cluster matches the double reference, fp32 logits (emulated on the CPU)", "[kl]") {
    check_onepass<float, float>(50257, 50304, true, true, 1e-4f);  // 4 ranks
    check_onepass<float, float>(50257, 50304, false, false, 1e-4f);
    check_onepass<float, float>(26620, 26620, true, false, 1e-4f);  // 2 ranks, the second one pack short
    check_onepass<float, float>(26628, 26628, false, true, 1e-4f);  // 3 ranks
    check_onepass<float, float>(1000, 1024, false, true, 1e-4f);    // 1 rank
}

TEST_CASE("the one-pass KL on a cluster matches the double reference, bf16 gradient (emulated on the CPU)", "[kl]") {
    check_onepass<float, bf16>(50257, 50304, false, true, 8e-3f);  // the bf16 trainer's form: 4 ranks
    check_onepass<float, bf16>(1000, 1024, false, false, 8e-3f);
    check_onepass<bf16, bf16>(50257, 50304, true, true, 8e-3f);    // 2 ranks
    check_onepass<bf16, bf16>(26628, 26632, true, false, 8e-3f);
}

// argmax_agree (the evals' top-1 agreement) against a CPU count. Each row's maximum sits at a
// random column, so in any of the block's 32 warps; in some rows the spliced row's maximum moves
// to another column, in some the clean row's maximum is tied and the first column must win. A
// block reduction that loses a warp's candidate (a missing barrier, a wrong merge) or takes the
// last of tied maxima finds the same column in both rows of such a row and counts it as agreeing.
TEST_CASE("argmax_agree counts the rows whose clean and spliced argmax agree (emulated on the CPU)", "[kl]") {
    const int N = 24, V = 3001, Vp = 3008;  // V: not a whole number of passes of the block
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> column(0, V - 1);
    std::vector<float> za((size_t)N * Vp), zb((size_t)N * Vp);
    auto argmax_first = [&](const float* z) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (z[v] > z[best]) best = v;
        return best;
    };
    int agree_ref = 0;
    for (int r = 0; r < N; r++) {
        float* a = &za[(size_t)r * Vp];
        float* b = &zb[(size_t)r * Vp];
        for (int v = 0; v < Vp; v++) a[v] = v < V ? normal(rng) : 100.0f;  // padding: larger than any column, to be skipped
        const int at = column(rng);
        int other = column(rng);
        while (other == at) other = column(rng);
        a[at] = 10.0f;
        for (int v = 0; v < Vp; v++) b[v] = a[v];
        if (r % 3 == 1) {  // the spliced maximum moves elsewhere
            b[at] = 0.0f;
            b[other] = 10.0f;
        } else if (r % 3 == 2) {  // tied in the clean row: the first of the two is its argmax, the spliced row has only the second
            a[other] = 10.0f;
            b[std::min(at, other)] = 9.5f;
            b[std::max(at, other)] = 10.0f;
        }
        agree_ref += argmax_first(a) == argmax_first(b);
    }
    REQUIRE(agree_ref == N / 3);  // the design: only the rows left alone agree
    int agree = 5;                // the launcher adds to what is there
    argmax_agree(&agree, za.data(), zb.data(), N, V, Vp, 0);
    printf("measured: argmax_agree over %d rows of V %d: %d agree (CPU %d)\n", N, V, agree - 5, agree_ref);
    CHECK(agree - 5 == agree_ref);
}
