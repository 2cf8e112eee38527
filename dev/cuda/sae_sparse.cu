/*
The SAE's sparse kernels, llmc/sae_sparse.cuh (--sae-kernels sparse): the index of c
(sae_sparse_index), the decoder over each row's features (sae_sparse_decoder_forward) and the
backward over each feature's rows (sae_sparse_backward), checked against the dense math computed
on the CPU in double, and timed against the dense path they replace at the paper's shape.

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make sae_sparse
  ./sae_sparse [check|cpu|N]   no argument: everything; check: CPU self-test and the GPU checks
                               (fp32 and bf16); cpu: CPU self-test only (no GPU): the dense
                               reference on hand-worked examples (N=2 C=2 D=3, and a bf16 dpre
                               whose two roundings differ from one), and the generator of c;
                               N: check and time variant N alone
  SAE_SMALL=1 ./sae_sparse 2   the checks below the paper shape only, no timing
                               (compute-sanitizer runs)
Variants (the whole SAE decoder and backward, one path each):
  1  dense (llmc/sae.cuh, the reference timing): sae_decoder_forward (one cuBLASLt matmul with
     the bias epilogue); backward sae_decoder_backward (db_dec colsum, dW_dec_norm = cᵀ·dx_hat
     and dc = dx_hat·W_dec_normᵀ matmuls), sae_l1_relu_backward_stats (dpre, db_enc, Σ|c|, L0,
     fired in one pass), sae_encoder_backward (dW_enc = xᵀ·dpre matmul). Its kernels are checked
     by dev/cuda/sae.cu and matmul.cu, so `./sae_sparse 1` only times it.
  2  sparse (llmc/sae_sparse.cuh): forward sae_sparse_index (which also makes Σ|c|, L0, fired)
     and sae_sparse_decoder_forward; backward bias_grad_colsum (db_dec) and sae_sparse_backward.
c is made as the encoder's ReLU leaves it, at a controlled density: each row fires L0 distinct
features, each 0.05 + U(0,1): feature D-1 (so it fires on every row, as a trained SAE's densest
features nearly do: the backward cuts its rows into many segments) and L0-1 chosen at random;
feature D/3 never fires, nor row N/2 (if N > 1).
The other inputs are the emulated test's: x U(-1,1), dx_hat 1e-2·U(-1,1), W_dec_norm 0.1·U(-1,1),
b_dec 0.2·U(-1,1), l1_scale 1.5e-3 (so dc + l1_scale often cancels).
Checks (variant 2), fp32 and bf16, (N,C,D) leaving partial warps, 16-column tiles, 8-feature
blocks, 256-column chunks and 16-byte packs: (37,40,1000) (37,300,1001) (5,256,48) (1,40,1001)
(64,768,4096) (300,300,132) (the last with segments of more than 32 entries: N·L0 / D > 32), each
at L0 = 32 (at most D-1) and D/2, in full; (8192,768,46080) at L0 = 128 (fp32, bf16) and D/2
(bf16), the index in full, x_hat on 65 rows and the backward on 65 features (a full double
reference is too slow there), every output scanned for unwritten (NaN) elements. Each check:
  index     col_cnt, col_rows (ascending), row_cnt, row_cols (ascending) exact; L0 exact, fired
            exact (a preset flag on the feature that never fires stays set), Σ|c| within 1e-5;
            onto l1 = 0.25, l0 = 3; a second run on re-poisoned buffers bit-identical
  decoder   x_hat on poisoned output; a rerun bit-identical
  backward  dpre (read from dpre_csc, feature j's k-th row at j·N + k), db_enc, dW_dec_norm,
            dW_enc, overwriting poisoned outputs and accumulating onto random ones (the
            backward's scratch in SaeSparse poisoned first too); the overwrite rerun bit-identical
Tolerances, from test/test_sae_sparse_emulated.cpp (which checks the same kernels emulated on
the CPU): each error relative to the sum of its terms' magnitudes (the scale of any fp32
summation error), 3e-5 for fp32 and bf16 alike (the sums are fp32 in both); outputs stored in
floatX may be off by their rounding on top: x_hat half an ulp of floatX of the value; dpre (dc
rounded to floatX, then dc + l1_scale rounded again, as the dense path stores them) two ulps of
the value, and here also one ulp of the rounded dc: where the GPU's fp32 dot and the double one
straddle a rounding boundary of dc (rare: they differ by ~2^-24 of the terms), the two dc differ
by an ulp of dc, far more than an ulp of dpre where dc + l1_scale cancels. Two ulps cannot tell
one rounding of dc + l1_scale from the dense path's two, so bf16 dpre must also have the
reference's exact bits on all but 1% (+1) of its entries. db_enc and dW_enc are summed from the
GPU's own dpre, as the dense path sums its stored dpre. Exit code 1 on any mismatch.
Timing: bf16 at the paper shape (N 8192, C 768, D 46080) for L0 = 32, 128, 512 (trained SAEs)
and 23040 (= D/2, a fresh SAE): the dense forward decoder against the index + sparse decoder, and
the dense backward from dx_hat against the sparse one, by CUDA events (median after warm-up),
with the speed-ups (dense / sparse) in one table. The index and the backward's scratch take
3.6 GB at that shape.
*/
#include <cmath>
#include "common.h"
#include "../../llmc/sae.cuh"
#include "../../llmc/sae_sparse.cuh"

const float L1_SCALE = 1.5e-3f;

// a value as floatX stores it (round to nearest even; identity for fp32)
template <typename T>
float round_to(float v) { return (float)(T)v; }

// the spacing of T at |v|: 2^-23 (fp32) or 2^-7 (bf16) of its power of two
template <typename T>
double ulp_of(double v) {
    const int mant = std::is_same<T, float>::value ? 23 : 7;
    return v == 0.0 ? 0.0 : ldexp(1.0, ilogb(fabs(v)) - mant);
}

// ----------------------------------------------------------------------------
// CPU references: the dense math, in double. A term with c = 0 adds exactly 0 (and dpre is 0
// there), so the loops skip those terms: the same sums, quicker.

// the index as sae_sparse.cuh lays it out, from its definition: feature j's rows with c > 0 at
// j·N.., row n's features at n·D.., both ascending; entries past the counts are left as they are
void index_cpu(int* col_cnt, int* col_rows, int* row_cnt, int* row_cols, const float* c, int N, int D) {
    for (int j = 0; j < D; j++) col_cnt[j] = 0;
    for (int n = 0; n < N; n++) {
        row_cnt[n] = 0;
        for (int j = 0; j < D; j++)
            if (c[(size_t)n * D + j] > 0.0f) {
                row_cols[(size_t)n * D + row_cnt[n]++] = j;
                col_rows[(size_t)j * N + col_cnt[j]++] = n;
            }
    }
}

// x_hat row (C) = b_dec + Σ_j c[j]·W_dec_norm[j,:] for one row c (D), and each element's
// Σ|terms| (the scale of the bound)
void decoder_row_cpu(double* x_hat, double* mag, const float* c_row, const float* W_dec_norm, const float* b_dec, int C, int D) {
    for (int col = 0; col < C; col++) { x_hat[col] = b_dec[col]; mag[col] = fabs(b_dec[col]); }
    for (int j = 0; j < D; j++) {
        if (c_row[j] == 0.0f) continue;
        const float* w = W_dec_norm + (size_t)j * C;
        for (int col = 0; col < C; col++) {
            const double t = (double)c_row[j] * w[col];
            x_hat[col] += t;
            mag[col] += fabs(t);
        }
    }
}

// feature j over the N rows: dc[n] = dx_hat[n,:]·W_dec_norm[j,:] with its Σ|terms| dc_mag[n],
// and dpre[n] as the dense path stores it where c[n,j] > 0: dc rounded to T (the dc matmul's
// output), l1_scale added in fp32 and rounded to T again (the fused pass); 0 elsewhere (dc and
// dc_mag too: not needed there)
template <typename T>
void dpre_col_cpu(float* dpre, double* dc, double* dc_mag, const float* c, const float* dx_hat, const float* W_dec_norm, float l1_scale,
                  int N, int C, int D, int j) {
    const float* w = W_dec_norm + (size_t)j * C;
    for (int n = 0; n < N; n++) {
        dpre[n] = 0.0f; dc[n] = 0.0; dc_mag[n] = 0.0;
        if (!(c[(size_t)n * D + j] > 0.0f)) continue;
        const float* g = dx_hat + (size_t)n * C;
        for (int col = 0; col < C; col++) {
            const double t = (double)g[col] * w[col];
            dc[n] += t;
            dc_mag[n] += fabs(t);
        }
        dpre[n] = round_to<T>(round_to<T>((float)dc[n]) + l1_scale);
    }
}

// feature j's gradients from its dpre column (N): db_enc[j] = Σ_n dpre[n], dW_dec_norm[j,:] =
// Σ_n c[n,j]·dx_hat[n,:], dW_enc[:,j] = Σ_n dpre[n]·x[n,:], added onto db, dWd (C), dWe (C) and
// their Σ|terms| onto db_mag, dWd_mag, dWe_mag (the caller starts them at 0, or at the values
// accumulated onto)
void grads_col_cpu(double* db, double* db_mag, double* dWd, double* dWd_mag, double* dWe, double* dWe_mag, const float* dpre,
                   const float* c, const float* dx_hat, const float* x, int N, int C, int D, int j) {
    for (int n = 0; n < N; n++) {
        const double cv = c[(size_t)n * D + j], dv = dpre[n];
        if (cv == 0.0) continue;
        *db += dv;
        *db_mag += fabs(dv);
        for (int col = 0; col < C; col++) {
            const double td = cv * dx_hat[(size_t)n * C + col], te = dv * x[(size_t)n * C + col];
            dWd[col] += td; dWd_mag[col] += fabs(td);
            dWe[col] += te; dWe_mag[col] += fabs(te);
        }
    }
}

// c (N,D) as the encoder's ReLU leaves it: row n fires min(L0, D-1) distinct features, each
// 0.05 + U(0,1) rounded through T (>= 0.05: no rounding turns one off): feature D-1, which so
// fires on every row (a trained SAE's densest features fire on a tenth of the tokens or more,
// and the backward cuts such a feature's rows into segments), and the others chosen uniformly
// (a partial Fisher-Yates shuffle over every feature but D/3 and D-1). Feature D/3 never fires,
// nor row N/2 when N > 1 (with N = 1 that row would be the whole batch).
template <typename T>
std::vector<float> make_sparse_c(int N, int D, int L0, unsigned long long seed) {
    std::vector<float> c((size_t)N * D, 0.0f);
    std::vector<int> perm;
    for (int j = 0; j < D - 1; j++)
        if (j != D / 3) perm.push_back(j);
    const int m = (int)perm.size(), others = std::min(L0, D - 1) - 1;
    size_t draw = 0;
    for (int n = 0; n < N; n++) {
        if (N > 1 && n == N / 2) continue;
        c[(size_t)n * D + D - 1] = round_to<T>(0.05f + hash_uniform(seed, draw++, 0.0f, 1.0f));
        for (int k = 0; k < others; k++) {
            const int pick = k + std::min((int)(hash_uniform(seed, draw++, 0.0f, 1.0f) * (float)(m - k)), m - k - 1);
            std::swap(perm[k], perm[pick]);
            c[(size_t)n * D + perm[k]] = round_to<T>(0.05f + hash_uniform(seed, draw++, 0.0f, 1.0f));
        }
    }
    return c;
}

// ----------------------------------------------------------------------------
// CPU self-test

// N=2 C=2 D=3, worked by hand (every value exact in bf16 too, so both types give these):
//   c = [[1, 0, 2], [0, 0.5, 3]], W_dec_norm = [[1, 2], [3, -1], [0.5, 0.25]], b_dec = [0.5, -1]
//   x_hat = [[1+1+0.5, 2+0.5-1], [1.5+1.5+0.5, -0.5+0.75-1]]
//   dx_hat = [[1, -1], [2, 0.5]]: dc = [[-1, (4), 0.25], [(3), 5.5, 1.125]], l1_scale = 0.25
//   dpre = [[-0.75, 0, 0.5], [0, 5.75, 1.375]], db_enc = [-0.75, 5.75, 1.875]
//   dW_dec_norm = [1·dx0, 0.5·dx1, 2·dx0 + 3·dx1] = [[1, -1], [1, 0.25], [8, -0.5]]
//   x = [[2, 1], [-1, 4]]: dW_enc (C,D) = [[-1.5, -5.75, 0.5·2 - 1.375], [-0.75, 23, 0.5 + 1.375·4]]
template <typename T>
int hand_example_test() {
    const int N = 2, C = 2, D = 3;
    const float c[N * D] = {1, 0, 2, 0, 0.5f, 3};
    const float W[D * C] = {1, 2, 3, -1, 0.5f, 0.25f};
    const float b_dec[C] = {0.5f, -1};
    const float x[N * C] = {2, 1, -1, 4};
    const float dx_hat[N * C] = {1, -1, 2, 0.5f};
    const double want_x_hat[N * C] = {2.5, 1.5, 3.5, -0.75}, want_x_hat_mag[N * C] = {2.5, 3.5, 3.5, 2.25};
    const float want_dpre[N * D] = {-0.75f, 0, 0.5f, 0, 5.75f, 1.375f};
    const double want_dc_mag[N * D] = {3, 0, 0.75, 0, 6.5, 1.125};  // |1·1| + |-1·2|, ... where c > 0
    const double want_db[D] = {-0.75, 5.75, 1.875};
    const double want_dWd[D * C] = {1, -1, 1, 0.25, 8, -0.5};
    const double want_dWe[C * D] = {-1.5, -5.75, -0.375, -0.75, 23, 6};
    const int want_col_cnt[D] = {1, 1, 2}, want_row_cnt[N] = {2, 2};
    const int want_col_rows[D][2] = {{0, -1}, {1, -1}, {0, 1}}, want_row_cols[N][2] = {{0, 2}, {1, 2}};
    bool ok = true;
    int col_cnt[D], col_rows[D * N], row_cnt[N], row_cols[N * D];
    index_cpu(col_cnt, col_rows, row_cnt, row_cols, c, N, D);
    for (int j = 0; j < D; j++) {
        ok = ok && col_cnt[j] == want_col_cnt[j];
        for (int k = 0; k < want_col_cnt[j]; k++) ok = ok && col_rows[j * N + k] == want_col_rows[j][k];
    }
    for (int n = 0; n < N; n++) {
        ok = ok && row_cnt[n] == want_row_cnt[n];
        for (int k = 0; k < want_row_cnt[n]; k++) ok = ok && row_cols[n * D + k] == want_row_cols[n][k];
    }
    for (int n = 0; n < N; n++) {
        double xh[C], mag[C];
        decoder_row_cpu(xh, mag, c + n * D, W, b_dec, C, D);
        for (int col = 0; col < C; col++) ok = ok && xh[col] == want_x_hat[n * C + col] && mag[col] == want_x_hat_mag[n * C + col];
    }
    for (int j = 0; j < D; j++) {
        float dpre[N];
        double dc[N], dc_mag[N], db = 0.0, db_mag = 0.0, dWd[C] = {0, 0}, dWd_mag[C] = {0, 0}, dWe[C] = {0, 0}, dWe_mag[C] = {0, 0};
        dpre_col_cpu<T>(dpre, dc, dc_mag, c, dx_hat, W, 0.25f, N, C, D, j);
        grads_col_cpu(&db, &db_mag, dWd, dWd_mag, dWe, dWe_mag, dpre, c, dx_hat, x, N, C, D, j);
        for (int n = 0; n < N; n++) ok = ok && dpre[n] == want_dpre[n * D + j] && dc_mag[n] == want_dc_mag[n * D + j];
        ok = ok && db == want_db[j];
        for (int col = 0; col < C; col++) ok = ok && dWd[col] == want_dWd[j * C + col] && dWe[col] == want_dWe[col * D + j];
    }
    printf("  cpu dense reference on the hand example (N=2 C=2 D=3), %s: %s\n", type_name<T>(), ok ? "ok" : "FAIL");
    return !ok;
}

// dpre's two roundings, by hand: dc = 1·1 + 1·(159·2^-13) = 1 + 2.484375/128, l1_scale = 2^-8.
// bf16 (spacing 1/128 at 1): dc -> 1 + 2/128, + 0.5/128 is a tie -> even: 1 + 2/128 = 1.015625,
// where one rounding of dc + l1_scale = 1 + 2.984375/128 would give 1 + 3/128. fp32: exact,
// 1 + 191·2^-13 = 1.0233154296875.
int rounding_test() {
    const float c[1] = {1}, W[2] = {1, 0.0194091796875f}, dx_hat[2] = {1, 1};
    float dpre_bf16, dpre_fp32;
    double dc, dc_mag;
    dpre_col_cpu<bf16>(&dpre_bf16, &dc, &dc_mag, c, dx_hat, W, 0.00390625f, 1, 2, 1, 0);
    dpre_col_cpu<float>(&dpre_fp32, &dc, &dc_mag, c, dx_hat, W, 0.00390625f, 1, 2, 1, 0);
    const bool ok = dpre_bf16 == 1.015625f && dpre_fp32 == 1.0233154296875f;
    printf("  cpu dpre rounded twice as the dense path stores it: bf16 %.10g (want 1.015625), fp32 %.14g %s\n", dpre_bf16, dpre_fp32,
           ok ? "ok" : "FAIL");
    return !ok;
}

// the generator: each row but N/2 fires exactly min(L0, D-1) features, each in [0.05, 1.05], one
// of them D-1; row N/2 (N > 1) and feature D/3 never
int make_c_test() {
    const int shapes[][3] = {{37, 1001, 32}, {5, 48, 100}, {1, 40, 20}};  // (N, D, L0); L0 past D-1 caps at D-1
    bool ok = true;
    for (auto& s : shapes) {
        const int N = s[0], D = s[1], L0 = s[2];
        std::vector<float> c = make_sparse_c<bf16>(N, D, L0, 5);
        for (int n = 0; n < N; n++) {
            int fired = 0;
            for (int j = 0; j < D; j++) {
                const float v = c[(size_t)n * D + j];
                fired += v > 0.0f;
                ok = ok && (v == 0.0f || (v >= 0.05f && v <= 1.05f)) && !(j == D / 3 && v != 0.0f);
            }
            const bool empty = N > 1 && n == N / 2;
            ok = ok && fired == (empty ? 0 : std::min(L0, D - 1)) && (c[(size_t)n * D + D - 1] > 0.0f) == !empty;
        }
    }
    printf("  cpu c generator: L0 distinct features per row, the dense feature, the empty row and feature: %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

int cpu_self_test() { return hand_example_test<float>() + hand_example_test<bf16>() + rounding_test() + make_c_test(); }

// ----------------------------------------------------------------------------
// GPU checks

template <typename T>
std::vector<T> download(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// the index and the backward's scratch, sized as llmc/sae_sparse.cuh's SaeSparse documents them
SaeSparse sparse_alloc(int N, int C, int D) {
    SaeSparse sp{};
    sp.col_cnt = device_alloc<int>(D);
    sp.col_rows = device_alloc<int>((size_t)D * N);
    sp.col_l1 = device_alloc<float>(D);
    sp.row_cnt = device_alloc<int>(N);
    sp.row_cols = device_alloc<int>((size_t)N * D);
    sp.seg_ptr = device_alloc<int>((size_t)D + 1);
    sp.seg_info = device_alloc<int>(2);
    sp.part_dec = device_alloc<float>((size_t)2 * D * C);
    sp.part_enc = device_alloc<float>((size_t)2 * D * C);
    sp.part_db = device_alloc<float>((size_t)2 * D);
    return sp;
}

// the backward's scratch poisoned: a read of anything the backward did not write shows
void sparse_poison_scratch(const SaeSparse& sp, int C, int D) {
    poison(sp.seg_ptr, ((size_t)D + 1) * sizeof(int));
    poison(sp.seg_info, 2 * sizeof(int));
    poison(sp.part_dec, (size_t)2 * D * C * sizeof(float));
    poison(sp.part_enc, (size_t)2 * D * C * sizeof(float));
    poison(sp.part_db, (size_t)2 * D * sizeof(float));
}

void sparse_free(SaeSparse& sp) {
    cudaCheck(cudaFree(sp.col_cnt)); cudaCheck(cudaFree(sp.col_rows)); cudaCheck(cudaFree(sp.col_l1)); cudaCheck(cudaFree(sp.row_cnt));
    cudaCheck(cudaFree(sp.row_cols)); cudaCheck(cudaFree(sp.seg_ptr)); cudaCheck(cudaFree(sp.seg_info)); cudaCheck(cudaFree(sp.part_dec));
    cudaCheck(cudaFree(sp.part_enc)); cudaCheck(cudaFree(sp.part_db));
}

// h rounded to T into the device array d
template <typename T>
void upload(T* d, const std::vector<float>& h) {
    std::vector<T> tmp(h.size());
    for (size_t i = 0; i < h.size(); i++) tmp[i] = (T)h[i];
    cudaCheck(cudaMemcpy(d, tmp.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

// one output's worst error over the elements checked: |gpu - ref| less the allowance for the
// rounding to floatX, relative to the sum of its terms' magnitudes; NaN (an unwritten, poisoned
// element) counts as infinitely wrong
struct Worst {
    const char* name;
    double err = 0.0;
    size_t bad = 0;
    void add(size_t at, double gpu, double ref, double mag, double allow, double tol) {
        const double e = (fabs(gpu - ref) - allow) / (mag + 1e-30);
        if (!(e <= tol) && bad++ < 3) printf("  %s mismatch at %zu: gpu %.8g ref %.8g (terms' magnitude %.3g)\n", name, at, gpu, ref, mag);
        err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
};

// what a check looks at: every row and feature, or (sampled) 64 spread over 0..n-1 and `extra`
// (the row or feature that never fires)
std::vector<int> checked(int n, bool sampled, int extra) {
    std::vector<int> at;
    if (!sampled) {
        for (int i = 0; i < n; i++) at.push_back(i);
        return at;
    }
    for (int k = 0; k < 64; k++) at.push_back((int)((long long)k * (n - 1) / 63));
    at.push_back(extra);
    return at;
}

template <typename T>
size_t count_nan(const std::vector<T>& v) {
    size_t bad = 0;
    for (const T& e : v) bad += std::isnan((float)e);
    return bad;
}

template <typename T>
int check_sparse(int N, int C, int D, int L0, bool sampled, double tol) {
    const size_t ND = (size_t)N * D, NC = (size_t)N * C, DC = (size_t)D * C;
    const unsigned long long seed = 1000ULL * L0 + 7ULL * N + 3ULL * C + D;
    const char* tn = type_name<T>();
    int failures = 0;

    // inputs: c made on the host; the rest filled on the device and regenerated here
    std::vector<float> c = make_sparse_c<T>(N, D, L0, seed);
    std::vector<float> x = host_random_array<T>(NC, seed + 1, -1.0f, 1.0f);
    std::vector<float> dx_hat = host_random_array<T>(NC, seed + 2, -1e-2f, 1e-2f);
    std::vector<float> W = host_random_array<T>(DC, seed + 3, -0.1f, 0.1f);
    std::vector<float> b_dec = host_random_array<T>(C, seed + 4, -0.2f, 0.2f);
    T* d_c = device_alloc<T>(ND);
    upload(d_c, c);
    T *d_x = device_alloc<T>(NC), *d_dx_hat = device_alloc<T>(NC), *d_W = device_alloc<T>(DC), *d_b_dec = device_alloc<T>(C);
    fill_random(d_x, NC, seed + 1, -1.0f, 1.0f);
    fill_random(d_dx_hat, NC, seed + 2, -1e-2f, 1e-2f);
    fill_random(d_W, DC, seed + 3, -0.1f, 0.1f);
    fill_random(d_b_dec, C, seed + 4, -0.2f, 0.2f);

    // the index, twice on freshly poisoned buffers
    SaeSparse sp = sparse_alloc(N, C, D);
    float* d_sums = device_alloc<float>(2);
    unsigned int* d_fired = device_alloc<unsigned int>(D);
    const float sums0[2] = {0.25f, 3.0f};  // l1, l0: added onto
    std::vector<unsigned int> fired0(D, 0u);
    fired0[D / 3] = 1u;  // preset on the feature that never fires: set, never cleared
    std::vector<int> col_cnt, col_rows, row_cnt, row_cols;
    std::vector<float> col_l1, sums;
    std::vector<unsigned int> fired;
    bool index_same = true;
    for (int run = 0; run < 2; run++) {
        poison(sp.col_cnt, D * sizeof(int)); poison(sp.col_rows, ND * sizeof(int)); poison(sp.col_l1, D * sizeof(float));
        poison(sp.row_cnt, N * sizeof(int)); poison(sp.row_cols, ND * sizeof(int));
        cudaCheck(cudaMemcpy(d_sums, sums0, sizeof(sums0), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_fired, fired0.data(), D * sizeof(unsigned int), cudaMemcpyHostToDevice));
        sae_sparse_index(&sp, d_sums, d_sums + 1, d_fired, d_c, N, D, 0);
        if (run == 0) {
            col_cnt = download(sp.col_cnt, D); col_rows = download(sp.col_rows, ND); col_l1 = download(sp.col_l1, D);
            row_cnt = download(sp.row_cnt, N); row_cols = download(sp.row_cols, ND);
            sums = download(d_sums, 2); fired = download(d_fired, D);
        } else {
            index_same = same_bits(col_cnt, download(sp.col_cnt, D)) && same_bits(col_rows, download(sp.col_rows, ND)) &&
                         same_bits(col_l1, download(sp.col_l1, D)) && same_bits(row_cnt, download(sp.row_cnt, N)) &&
                         same_bits(row_cols, download(sp.row_cols, ND)) && same_bits(sums, download(d_sums, 2)) &&
                         same_bits(fired, download(d_fired, D));
        }
    }
    std::vector<int> ref_col_cnt(D), ref_col_rows(ND, -1), ref_row_cnt(N), ref_row_cols(ND, -1);
    index_cpu(ref_col_cnt.data(), ref_col_rows.data(), ref_row_cnt.data(), ref_row_cols.data(), c.data(), N, D);
    size_t index_bad = 0, fired_bad = 0;
    long long nnz = 0;
    for (int j = 0; j < D; j++) {
        index_bad += col_cnt[j] != ref_col_cnt[j];
        for (int k = 0; k < ref_col_cnt[j]; k++) index_bad += col_rows[(size_t)j * N + k] != ref_col_rows[(size_t)j * N + k];
        fired_bad += fired[j] != (ref_col_cnt[j] > 0 || j == D / 3 ? 1u : 0u);
        nnz += ref_col_cnt[j];
    }
    for (int n = 0; n < N; n++) {
        index_bad += row_cnt[n] != ref_row_cnt[n];
        for (int k = 0; k < ref_row_cnt[n]; k++) index_bad += row_cols[(size_t)n * D + k] != ref_row_cols[(size_t)n * D + k];
    }
    double l1_ref = 0.25;
    for (size_t i = 0; i < ND; i++) l1_ref += c[i];
    const double l1_err = fabs(sums[0] - l1_ref) / l1_ref;
    const bool l0_ok = sums[1] == (float)(3.0 + (double)nnz);
    printf("  %s N=%d C=%d D=%d L0=%d (%.2f%% of c > 0): index %zu wrong %s, fired %zu wrong %s, L0 %.0f (ref %.0f) %s, L1 rel err %.1e %s, "
           "rerun bit-identical %s\n",
           tn, N, C, D, L0, 100.0 * nnz / (double)ND, index_bad, index_bad ? "FAIL" : "ok", fired_bad, fired_bad ? "FAIL" : "ok", sums[1],
           3.0 + nnz, l0_ok ? "ok" : "FAIL", l1_err, l1_err <= 1e-5 ? "ok" : "FAIL", index_same ? "ok" : "FAIL");
    failures += (index_bad > 0) + (fired_bad > 0) + !l0_ok + !(l1_err <= 1e-5) + !index_same;
    col_rows.clear(); col_rows.shrink_to_fit(); row_cols.clear(); row_cols.shrink_to_fit();  // 3 GB at the paper shape

    // the decoder
    T* d_x_hat = device_alloc<T>(NC);
    poison(d_x_hat, NC * sizeof(T));
    sae_sparse_decoder_forward(d_x_hat, &sp, d_c, d_W, d_b_dec, N, C, D, 0);
    std::vector<T> x_hat = download(d_x_hat, NC);
    poison(d_x_hat, NC * sizeof(T));
    sae_sparse_decoder_forward(d_x_hat, &sp, d_c, d_W, d_b_dec, N, C, D, 0);
    const bool dec_same = same_bits(x_hat, download(d_x_hat, NC));
    const size_t dec_nan = count_nan(x_hat);
    Worst e_x_hat{"x_hat"};
    std::vector<double> ref(C), mag(C);
    for (int n : checked(N, sampled, N / 2)) {
        decoder_row_cpu(ref.data(), mag.data(), &c[(size_t)n * D], W.data(), b_dec.data(), C, D);
        for (int col = 0; col < C; col++)
            e_x_hat.add((size_t)n * C + col, (float)x_hat[(size_t)n * C + col], ref[col], mag[col], ulp_of<T>(ref[col]) / 2, tol);
    }
    printf("    decoder: x_hat err %.1e %s, %zu unwritten, rerun bit-identical %s\n", e_x_hat.err, e_x_hat.bad ? "FAIL" : "ok", dec_nan,
           dec_same ? "ok" : "FAIL");
    failures += (e_x_hat.bad > 0) + (dec_nan > 0) + !dec_same;

    // the backward, overwriting poisoned outputs, then accumulating onto random ones
    float *d_dWd = device_alloc<float>(DC), *d_dWe = device_alloc<float>(DC), *d_db = device_alloc<float>(D);
    T* d_dpre = device_alloc<T>(ND);
    const std::vector<int> features = checked(D, sampled, D / 3);
    for (int acc = 0; acc < 2; acc++) {
        std::vector<float> dWd0, dWe0, db0;  // the values accumulated onto
        if (acc) {
            fill_random(d_dWd, DC, seed + 5, -0.3f, 0.3f); dWd0 = host_random_array<float>(DC, seed + 5, -0.3f, 0.3f);
            fill_random(d_dWe, DC, seed + 6, -0.3f, 0.3f); dWe0 = host_random_array<float>(DC, seed + 6, -0.3f, 0.3f);
            fill_random(d_db, D, seed + 7, -0.3f, 0.3f); db0 = host_random_array<float>(D, seed + 7, -0.3f, 0.3f);
        } else {
            poison(d_dWd, DC * sizeof(float)); poison(d_dWe, DC * sizeof(float)); poison(d_db, D * sizeof(float));
        }
        poison(d_dpre, ND * sizeof(T));
        sparse_poison_scratch(sp, C, D);
        sae_sparse_backward(d_dWd, d_dWe, d_db, d_dpre, &sp, d_c, d_dx_hat, d_x, d_W, L1_SCALE, N, C, D, acc != 0, 0);
        std::vector<float> dWd = download(d_dWd, DC), dWe = download(d_dWe, DC), db = download(d_db, D);
        std::vector<T> dpre = download(d_dpre, ND);
        bool bwd_same = true;
        if (!acc) {  // determinism: the overwrite again, on re-poisoned outputs
            poison(d_dWd, DC * sizeof(float)); poison(d_dWe, DC * sizeof(float)); poison(d_db, D * sizeof(float));
            poison(d_dpre, ND * sizeof(T));
            sparse_poison_scratch(sp, C, D);
            sae_sparse_backward(d_dWd, d_dWe, d_db, d_dpre, &sp, d_c, d_dx_hat, d_x, d_W, L1_SCALE, N, C, D, false, 0);
            bwd_same = same_bits(dWd, download(d_dWd, DC)) && same_bits(dWe, download(d_dWe, DC)) && same_bits(db, download(d_db, D)) &&
                       same_bits(dpre, download(d_dpre, ND));
        }
        size_t unwritten = count_nan(dWd) + count_nan(dWe) + count_nan(db);
        for (int j = 0; j < D; j++)
            for (int k = 0; k < ref_col_cnt[j]; k++) unwritten += std::isnan((float)dpre[(size_t)j * N + k]);
        Worst e_dpre{"dpre"}, e_db{"db_enc"}, e_dWd{"dW_dec_norm"}, e_dWe{"dW_enc"};
        std::vector<float> dp_ref(N), dp_gpu(N);
        std::vector<double> dc(N), dc_mag(N), dWd_r(C), dWd_m(C), dWe_r(C), dWe_m(C);
        size_t dpre_n = 0, dpre_same = 0;  // bf16: the stored bits, which the bound's two ulps cannot tell apart
        for (int j : features) {
            dpre_col_cpu<T>(dp_ref.data(), dc.data(), dc_mag.data(), c.data(), dx_hat.data(), W.data(), L1_SCALE, N, C, D, j);
            std::fill(dp_gpu.begin(), dp_gpu.end(), 0.0f);
            for (int k = 0; k < ref_col_cnt[j]; k++) {
                const int n = ref_col_rows[(size_t)j * N + k];
                dp_gpu[n] = (float)dpre[(size_t)j * N + k];
                const double allow = ulp_of<T>(round_to<T>((float)dc[n])) + 2 * ulp_of<T>(dp_ref[n]);
                e_dpre.add((size_t)j * N + k, dp_gpu[n], dp_ref[n], dc_mag[n] + L1_SCALE, allow, tol);
                dpre_n++;
                dpre_same += dp_gpu[n] == dp_ref[n];
            }
            double db_r = acc ? db0[j] : 0.0, db_m = fabs(db_r);
            for (int col = 0; col < C; col++) {
                dWd_r[col] = acc ? dWd0[(size_t)j * C + col] : 0.0; dWd_m[col] = fabs(dWd_r[col]);
                dWe_r[col] = acc ? dWe0[(size_t)col * D + j] : 0.0; dWe_m[col] = fabs(dWe_r[col]);
            }
            grads_col_cpu(&db_r, &db_m, dWd_r.data(), dWd_m.data(), dWe_r.data(), dWe_m.data(), dp_gpu.data(), c.data(), dx_hat.data(),
                          x.data(), N, C, D, j);
            e_db.add(j, db[j], db_r, db_m, 0.0, tol);
            for (int col = 0; col < C; col++) {
                e_dWd.add((size_t)j * C + col, dWd[(size_t)j * C + col], dWd_r[col], dWd_m[col], 0.0, tol);
                e_dWe.add((size_t)col * D + j, dWe[(size_t)col * D + j], dWe_r[col], dWe_m[col], 0.0, tol);
            }
        }
        const bool ok = !e_dpre.bad && !e_db.bad && !e_dWd.bad && !e_dWe.bad;
        printf("    backward %s: dpre %.1e, db_enc %.1e, dW_dec_norm %.1e, dW_enc %.1e %s, %zu unwritten%s\n", acc ? "accumulate" : "overwrite",
               e_dpre.err, e_db.err, e_dWd.err, e_dWe.err, ok ? "ok" : "FAIL", unwritten,
               acc ? "" : (bwd_same ? ", rerun bit-identical ok" : ", rerun bit-identical FAIL"));
        failures += !ok + (unwritten > 0) + !bwd_same;
        if (std::is_same<T, bf16>::value) {  // the same bits but where the fp32 and double dots straddle a rounding of dc (~1e-4)
            const bool bits_ok = dpre_n - dpre_same <= dpre_n / 100 + 1;
            printf("    dpre with the reference's bits: %zu of %zu %s\n", dpre_same, dpre_n, bits_ok ? "ok" : "FAIL");
            failures += !bits_ok;
        }
    }
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_dx_hat)); cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_b_dec));
    sparse_free(sp);
    cudaCheck(cudaFree(d_sums)); cudaCheck(cudaFree(d_fired)); cudaCheck(cudaFree(d_x_hat));
    cudaCheck(cudaFree(d_dWd)); cudaCheck(cudaFree(d_dWe)); cudaCheck(cudaFree(d_db)); cudaCheck(cudaFree(d_dpre));
    return failures;
}

template <typename T>
int run_checks(bool small) {
    int failures = 0;
    // (300,300,132): N·L0 / D > 32 at both densities, so the backward's segments hold more than 32
    // entries (SEG = ceil(nnz / D)), and feature D-1 spans several of them
    const int shapes[][3] = {{37, 40, 1000}, {37, 300, 1001}, {5, 256, 48}, {1, 40, 1001}, {64, 768, 4096}, {300, 300, 132}};
    for (auto& s : shapes) {
        failures += check_sparse<T>(s[0], s[1], s[2], 32, false, 3e-5);
        failures += check_sparse<T>(s[0], s[1], s[2], s[2] / 2, false, 3e-5);
    }
    if (small) return failures;
    failures += check_sparse<T>(8192, 768, 46080, 128, true, 3e-5);
    if (std::is_same<T, bf16>::value) failures += check_sparse<T>(8192, 768, 46080, 46080 / 2, true, 3e-5);
    return failures;
}

int gpu_checks(int only) {
    if (only == 1) {
        printf("variant 1 (the dense path) is checked by dev/cuda/sae.cu and matmul.cu: timing only here\n");
        return 0;
    }
    const bool small = getenv("SAE_SMALL") != nullptr;
    printf("fp32:\n");
    int failures = run_checks<float>(small);
    printf("bf16:\n");
    return failures + run_checks<bf16>(small);
}

// ----------------------------------------------------------------------------
// timing at the paper shape, bf16: the dense path's launchers against the sparse ones; both
// backwards accumulate (a micro-batch after the first) and include db_dec's colsum

void timing(int only) {
    if (getenv("SAE_SMALL")) return;
    typedef bf16 T;
    const int N = 8192, C = 768, D = 46080;
    const size_t ND = (size_t)N * D, NC = (size_t)N * C, DC = (size_t)D * C;
    matmul_init();
    T* d_c = device_alloc<T>(ND);
    T* d_dc = device_alloc<T>(ND);  // dense: dc, then dpre in place; sparse: dpre_csc (the trainer's use of it)
    T *d_x = device_alloc<T>(NC), *d_dx_hat = device_alloc<T>(NC), *d_x_hat = device_alloc<T>(NC);
    T *d_W = device_alloc<T>(DC), *d_b_dec = device_alloc<T>(C);
    float *d_dWd = device_alloc<float>(DC), *d_dWe = device_alloc<float>(DC), *d_db_enc = device_alloc<float>(D);
    float *d_db_dec = device_alloc<float>(C), *d_sums = device_alloc<float>(2);
    unsigned int* d_fired = device_alloc<unsigned int>(D);
    SaeSparse sp = sparse_alloc(N, C, D);
    fill_random(d_x, NC, 1, -1.0f, 1.0f);
    fill_random(d_dx_hat, NC, 2, -1e-2f, 1e-2f);
    fill_random(d_W, DC, 3, -0.1f, 0.1f);
    fill_random(d_b_dec, C, 4, -0.2f, 0.2f);
    cudaCheck(cudaMemset(d_dWd, 0, DC * sizeof(float))); cudaCheck(cudaMemset(d_dWe, 0, DC * sizeof(float)));
    cudaCheck(cudaMemset(d_db_enc, 0, D * sizeof(float))); cudaCheck(cudaMemset(d_db_dec, 0, C * sizeof(float)));
    cudaCheck(cudaMemset(d_sums, 0, 2 * sizeof(float))); cudaCheck(cudaMemset(d_fired, 0, D * sizeof(unsigned int)));
    const int L0s[4] = {32, 128, 512, D / 2};
    float dense_fwd[4], dense_bwd[4], sparse_fwd[4], sparse_bwd[4];
    printf("timing, bf16, N=%d C=%d D=%d (median of 10 after 2 warm-up runs; 5 after 1 at L0 = D/2):\n", N, C, D);
    for (int i = 0; i < 4; i++) {
        const int L0 = L0s[i];
        upload(d_c, make_sparse_c<T>(N, D, L0, 77 + L0));
        const int warm = L0 > 1024 ? 1 : 2, reps = L0 > 1024 ? 5 : 10;
        if (only != 2) {
            const float fwd = benchmark_kernel(warm, reps, [&] { sae_decoder_forward(d_x_hat, d_c, d_W, d_b_dec, N, C, D, 0); });
            const float dec = benchmark_kernel(warm, reps, [&] {
                sae_decoder_backward(d_dWd, d_db_dec, d_dc, d_dx_hat, d_c, d_W, N, C, D, true, 0);
            });
            const float stats = benchmark_kernel(warm, reps, [&] {
                sae_l1_relu_backward_stats(d_dc, d_db_enc, d_sums, d_sums + 1, d_fired, d_c, L1_SCALE, N, D, true, 0);
            });
            const float enc = benchmark_kernel(warm, reps, [&] { sae_encoder_backward(d_dWe, d_dc, d_x, N, C, D, true, 0); });
            dense_fwd[i] = fwd;
            dense_bwd[i] = dec + stats + enc;
            printf("  L0=%-5d dense:  decoder fwd %8.3f ms; bwd: decoder (colsum, 2 matmuls) %8.3f + l1/relu/stats %7.3f + encoder %8.3f = %8.3f ms\n",
                   L0, fwd, dec, stats, enc, dense_bwd[i]);
        }
        if (only != 1) {
            const float index = benchmark_kernel(warm, reps, [&] { sae_sparse_index(&sp, d_sums, d_sums + 1, d_fired, d_c, N, D, 0); });
            const float dec = benchmark_kernel(warm, reps, [&] { sae_sparse_decoder_forward(d_x_hat, &sp, d_c, d_W, d_b_dec, N, C, D, 0); });
            const float colsum = benchmark_kernel(warm, reps, [&] { bias_grad_colsum(d_db_dec, d_dx_hat, N, C, true, 0); });
            const float bwd = benchmark_kernel(warm, reps, [&] {
                sae_sparse_backward(d_dWd, d_dWe, d_db_enc, d_dc, &sp, d_c, d_dx_hat, d_x, d_W, L1_SCALE, N, C, D, true, 0);
            });
            sparse_fwd[i] = index + dec;
            sparse_bwd[i] = colsum + bwd;
            printf("  L0=%-5d sparse: index %8.3f + decoder fwd %8.3f = %8.3f ms; bwd: colsum db_dec %7.3f + backward %8.3f = %8.3f ms\n", L0,
                   index, dec, sparse_fwd[i], colsum, bwd, sparse_bwd[i]);
        }
    }
    if (!only) {
        printf("  speed-up = dense / sparse; fwd: decoder (sparse: + index), bwd: everything after dx_hat\n");
        printf("  %7s %9s | %10s %10s %8s | %10s %10s %8s | %8s\n", "L0", "c > 0", "fwd dense", "sparse", "speed-up", "bwd dense", "sparse",
               "speed-up", "total");
        for (int i = 0; i < 4; i++)
            printf("  %7d %8.2f%% | %7.3f ms %7.3f ms %7.2fx | %7.3f ms %7.3f ms %7.2fx | %7.2fx\n", L0s[i], 100.0 * L0s[i] / D, dense_fwd[i],
                   sparse_fwd[i], dense_fwd[i] / sparse_fwd[i], dense_bwd[i], sparse_bwd[i], dense_bwd[i] / sparse_bwd[i],
                   (dense_fwd[i] + dense_bwd[i]) / (sparse_fwd[i] + sparse_bwd[i]));
    }
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_dc)); cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_dx_hat)); cudaCheck(cudaFree(d_x_hat));
    cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_b_dec)); cudaCheck(cudaFree(d_dWd)); cudaCheck(cudaFree(d_dWe));
    cudaCheck(cudaFree(d_db_enc)); cudaCheck(cudaFree(d_db_dec)); cudaCheck(cudaFree(d_sums)); cudaCheck(cudaFree(d_fired));
    sparse_free(sp);
    matmul_destroy();
}

int main(int argc, char** argv) { return bench_main(argc, argv, "sae_sparse", 2, cpu_self_test, gpu_checks, timing); }
