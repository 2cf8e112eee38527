/*
llmc/sae_sparse.cuh (--sae-kernels sparse) through its launchers, run on the CPU
(test/cuda_host_emulation.h), against the dense math computed here in double:
  the index      each feature's rows and each row's features with c > 0, ascending: exact;
                 L0 and the fired flags exact, Σ|c| within 1e-5 relative
  the decoder    x_hat = c·W_dec_norm + b_dec
  the backward   dpre = round(round(dx_hat·W_dec_norm[j]) + l1_scale) where c > 0, db_enc,
                 dW_dec_norm = cᵀ·dx_hat and dW_enc = xᵀ·dpre, overwritten and accumulated
An emulation, not a GPU run: it checks indexing, tails, the ballots and scans, the chunks of C
and the shared-memory transpose of dW_enc before a device runs dev/cuda/sae.cu's checks.

Shapes (N, C, D): N not a multiple of 32 (37, 5), C below, at and past a 256-column chunk and
not a multiple of 32 (40, 256, 300), D not a multiple of the 16-column tile or of a block's 8
features, with and without 16-byte packs (1000, 1001, 48); densities 3% and 50%; a row and a
feature with no c > 0; N = 1; at N = 100 two features whose rows span several of the backward's
segments, and D = 3 at full density, where a segment holds more than 32 entries.
Bounds, each relative to the sum of its terms' magnitudes (the scale of any summation error):
fp32 sums of at most ~300 terms err by at most ~300·2^-24 = 1.8e-5 of it, so 3e-5; outputs stored
in floatX may add half an ulp of floatX (x_hat), and dpre, rounded twice, one ulp of dc and two of
dpre. A wrong index, tail or chunk is O(1).
*/
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#include <random>
#include <stdio.h>
#include "cuda_host_emulation.h"
#include "sae_sparse.cuh"  // build/emu/llmc/: llmc's with its launches rewritten for the emulation

template <typename floatX>
static double ulp_of(double v) {  // the spacing of floatX at |v|: 2^-23 (fp32) or 2^-7 (bf16) of its power of two
    const int mant = std::is_same<floatX, float>::value ? 23 : 7;
    return v == 0.0 ? 0.0 : ldexp(1.0, ilogb(fabs(v)) - mant);
}

template <typename floatX>
static void check_sparse(int N, int C, int D, double density, bool accumulate) {
    const size_t ND = (size_t)N * D, NC = (size_t)N * C, DC = (size_t)D * C;
    const float l1_scale = 1.5e-3f;
    std::mt19937 rng(13 * N + 7 * C + D);
    std::uniform_real_distribution<float> U(-1.0f, 1.0f), P(0.0f, 1.0f);
    std::vector<floatX> c(ND), x(NC), dx_hat(NC), W(DC), b_dec(C);
    for (size_t i = 0; i < ND; i++) {
        const int r = (int)(i / D), j = (int)(i % D);
        // row N/2 and feature D/3 never fire; feature 1 fires on every other row and feature 2 on
        // two in three, so at N >= 64 their rows span several of the backward's segments
        const bool on = (j == 1 || (j == 2 && r % 3 != 0) || P(rng) < density) && r != N / 2 && j != D / 3;
        c[i] = from_float<floatX>(on ? 0.05f + P(rng) : 0.0f);
    }
    for (auto& v : x) v = from_float<floatX>(U(rng));
    for (auto& v : dx_hat) v = from_float<floatX>(1e-2f * U(rng));
    for (auto& v : W) v = from_float<floatX>(0.1f * U(rng));
    for (auto& v : b_dec) v = from_float<floatX>(0.2f * U(rng));

    std::vector<int> col_cnt(D, -1), col_rows(ND, -1), row_cnt(N, -1), row_cols(ND, -1);
    std::vector<float> col_l1(D, NAN);
    std::vector<int> seg_ptr(D + 1, -1), seg_info(2, -1);
    std::vector<float> part_dec((size_t)2 * D * C, NAN), part_enc((size_t)2 * D * C, NAN), part_db((size_t)2 * D, NAN);
    SaeSparse sp{col_cnt.data(), col_rows.data(), col_l1.data(), row_cnt.data(), row_cols.data(),
                 seg_ptr.data(), seg_info.data(), part_dec.data(), part_enc.data(), part_db.data()};
    std::vector<unsigned int> fired(D, 0u);
    fired[D - 1] = 1u;  // preset: set, never cleared
    float l1 = 0.25f, l0 = 3.0f;  // both add to what is there
    sae_sparse_index(&sp, &l1, &l0, fired.data(), c.data(), N, D, 0);

    // the index, exactly
    size_t index_bad = 0, fired_bad = 0;
    double l1_ref = 0.25;
    long long l0_ref = 3;
    std::vector<std::vector<int>> want_cols(N), want_rows(D);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < D; j++)
            if (to_float(c[(size_t)r * D + j]) > 0.0f) {
                want_cols[r].push_back(j);
                want_rows[j].push_back(r);
                l1_ref += to_float(c[(size_t)r * D + j]);
                l0_ref++;
            }
    for (int r = 0; r < N; r++) {
        index_bad += row_cnt[r] != (int)want_cols[r].size();
        for (size_t k = 0; k < want_cols[r].size() && (int)k < row_cnt[r]; k++) index_bad += row_cols[(size_t)r * D + k] != want_cols[r][k];
    }
    for (int j = 0; j < D; j++) {
        index_bad += col_cnt[j] != (int)want_rows[j].size();
        for (size_t k = 0; k < want_rows[j].size() && (int)k < col_cnt[j]; k++) index_bad += col_rows[(size_t)j * N + k] != want_rows[j][k];
        fired_bad += fired[j] != ((want_rows[j].empty() && j != D - 1) ? 0u : 1u);
    }

    // the decoder
    std::vector<floatX> x_hat(NC);
    sae_sparse_decoder_forward(x_hat.data(), &sp, c.data(), W.data(), b_dec.data(), N, C, D, 0);
    double dec_err = 0.0;
    for (int r = 0; r < N; r++)
        for (int col = 0; col < C; col++) {
            double ref = to_float(b_dec[col]), mag = fabs(ref);
            for (int j : want_cols[r]) {
                const double t = (double)to_float(c[(size_t)r * D + j]) * to_float(W[(size_t)j * C + col]);
                ref += t;
                mag += fabs(t);
            }
            const double got = to_float(x_hat[(size_t)r * C + col]);
            const double e = (fabs(got - ref) - ulp_of<floatX>(ref) / 2) / (mag + 1e-30);
            dec_err = std::max(dec_err, std::isnan(got) ? INFINITY : e);
        }

    // the backward
    std::vector<float> dWd(DC), dWe((size_t)C * D), db(D);
    for (size_t i = 0; i < DC; i++) dWd[i] = accumulate ? 0.3f * U(rng) : NAN;  // overwrite must not read them
    for (size_t i = 0; i < DC; i++) dWe[i] = accumulate ? 0.3f * U(rng) : NAN;
    for (int j = 0; j < D; j++) db[j] = accumulate ? 0.3f * U(rng) : NAN;
    const std::vector<float> dWd0 = dWd, dWe0 = dWe, db0 = db;
    std::vector<floatX> dpre_csc(ND);
    sae_sparse_backward(dWd.data(), dWe.data(), db.data(), dpre_csc.data(), &sp, c.data(), dx_hat.data(), x.data(), W.data(), l1_scale, N,
                        C, D, accumulate, 0);
    double dpre_err = 0.0, db_err = 0.0, dWd_err = 0.0, dWe_err = 0.0;
    auto worst = [](double& at, double e) { at = std::max(at, std::isnan(e) ? INFINITY : e); };
    for (int j = 0; j < D; j++) {
        const std::vector<int>& rows = want_rows[j];
        std::vector<double> dp(rows.size());  // the kernel's stored dpre, checked here, then used for the sums
        double dbr = accumulate ? db0[j] : 0.0, dbm = fabs(dbr);
        for (size_t k = 0; k < rows.size(); k++) {
            double dot = 0.0, mag = 0.0;
            for (int col = 0; col < C; col++) {
                const double t = (double)to_float(dx_hat[(size_t)rows[k] * C + col]) * to_float(W[(size_t)j * C + col]);
                dot += t;
                mag += fabs(t);
            }
            const double dc = to_float(from_float<floatX>((float)dot)), ref = dc + l1_scale;
            dp[k] = to_float(dpre_csc[(size_t)j * N + k]);
            // the kernel's fp32 dot and this double one may round dc to neighbouring values of floatX
            // (one ulp of dc), then dpre is rounded (two of dpre, with the reference's own)
            worst(dpre_err, (fabs(dp[k] - ref) - ulp_of<floatX>(dc) - 2 * ulp_of<floatX>(ref)) / (mag + l1_scale));
            dbr += dp[k];
            dbm += fabs(dp[k]);
        }
        worst(db_err, fabs(db[j] - dbr) / (dbm + 1e-30));
        for (int col = 0; col < C; col++) {
            double rd = accumulate ? dWd0[(size_t)j * C + col] : 0.0, md = fabs(rd);
            double re = accumulate ? dWe0[(size_t)col * D + j] : 0.0, me = fabs(re);
            for (size_t k = 0; k < rows.size(); k++) {
                const double td = (double)to_float(c[(size_t)rows[k] * D + j]) * to_float(dx_hat[(size_t)rows[k] * C + col]);
                const double te = dp[k] * to_float(x[(size_t)rows[k] * C + col]);
                rd += td; md += fabs(td);
                re += te; me += fabs(te);
            }
            worst(dWd_err, fabs(dWd[(size_t)j * C + col] - rd) / (md + 1e-30));
            worst(dWe_err, fabs(dWe[(size_t)col * D + j] - re) / (me + 1e-30));
        }
    }
    const double l1_err = fabs(l1 - l1_ref) / l1_ref;
    // the plan: SEG = max(32, ceil(nnz / D)), each feature ceil(cnt / SEG) segments, at most 2·D in all
    const long long nnz = l0_ref - 3;
    const int seg = (int)std::max<long long>(SAE_SPARSE_SEG, (nnz + D - 1) / D);
    int segs = 0, most = 0;
    size_t plan_bad = seg_info[0] != seg;
    for (int j = 0; j < D; j++) {
        plan_bad += seg_ptr[j] != segs;
        const int n = ((int)want_rows[j].size() + seg - 1) / seg;
        segs += n;
        most = std::max(most, n);
    }
    plan_bad += seg_ptr[D] != segs || seg_info[1] != segs || segs > 2 * D;
    printf("measured: emulated sparse SAE %s N=%d C=%d D=%d density %.2f%s: index %zu wrong, fired %zu wrong, L0 %.0f (ref %lld), "
           "L1 %.1e, x_hat %.1e, dpre %.1e, db_enc %.1e, dW_dec_norm %.1e, dW_enc %.1e; %d segments of %d (a feature's most %d), plan %zu wrong\n",
           std::is_same<floatX, float>::value ? "fp32" : "bf16", N, C, D, density, accumulate ? " accumulate" : "", index_bad, fired_bad, l0,
           l0_ref, l1_err, dec_err, dpre_err, db_err, dWd_err, dWe_err, segs, seg, most, plan_bad);
    INFO("N=" << N << " C=" << C << " D=" << D);
    CHECK(index_bad == 0);
    CHECK(fired_bad == 0);
    CHECK(l0 == (float)l0_ref);
    CHECK(l1_err <= 1e-5);
    CHECK(dec_err <= 3e-5);
    CHECK(dpre_err <= 3e-5);
    CHECK(db_err <= 3e-5);
    CHECK(dWd_err <= 3e-5);
    CHECK(dWe_err <= 3e-5);
    CHECK(plan_bad == 0);
}

TEST_CASE("the sparse SAE kernels match the dense math in fp32 (emulated on the CPU)", "[sae_sparse]") {
    check_sparse<float>(37, 40, 1000, 0.03, false);  // packed (D % 4 == 0), a tail tile of 8 columns
    check_sparse<float>(37, 300, 1001, 0.03, true);  // scalar loads, C past one chunk
    check_sparse<float>(5, 256, 48, 0.5, true);      // dense-ish, C exactly one chunk
    check_sparse<float>(1, 40, 1001, 0.5, false);
    check_sparse<float>(100, 40, 64, 0.1, true);  // features 1 and 2 in 2 and 3 segments (SEG 32)
    check_sparse<float>(100, 40, 3, 1.0, false);  // nnz 198 over D 3: SEG 66, not 32
}

TEST_CASE("the sparse SAE kernels match the dense math in bf16 (emulated on the CPU)", "[sae_sparse]") {
    check_sparse<bf16>(37, 40, 1000, 0.03, true);  // packed (D % 8 == 0), a tail tile of 8 columns
    check_sparse<bf16>(37, 300, 1001, 0.03, false);
    check_sparse<bf16>(5, 256, 48, 0.5, false);
    check_sparse<bf16>(33, 40, 1001, 0.5, true);
    check_sparse<bf16>(100, 300, 64, 0.1, false);
}
