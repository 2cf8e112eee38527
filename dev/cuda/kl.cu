/*
Logit-level kernels, llmc/kl.cuh: KL(clean ‖ spliced) forward + backward fused (d logits written
over the spliced logits), cross-entropy per row, top-1 agreement. CPU references in double,
checks on poisoned outputs, timing at the paper's shape (N = 8192 rows, V = 50257, Vp = 50304).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make kl
  ./kl [check|cpu|N]   no argument: everything; check: CPU self-test and every GPU check (fp32
                       and bf16); cpu: CPU self-test only (no GPU): the KL gradient reference
                       against finite differences, the KL / CE references against direct
                       formulas, the kernels' block-reduction order (online softmax merge,
                       argmax ties) replayed on the CPU with llmc's own merge functions, and
                       variant 4's split of a row over its cluster replayed on the CPU (every
                       pack held once, every real column counted once); N: check and time KL
                       variant N (CE and argmax, one version each, run without N)
KL variants (1-3: one block of LOGITS_BLOCK_SIZE = 1024 threads per row):
  1  three passes over the row: max, then Σ exp(x − max), then KL and gradient (3 reads)
  2  online (max, Σ exp) in one pass, then KL and gradient (2 reads); llmc's scalar fallback
  3  llmc (kl_forward_backward): as 2 with 16-byte packs (8 bf16 / 4 fp32 per load); needs
     Vp a multiple of the pack and 16-byte aligned rows (falls back to 2 otherwise); the pad
     columns ride along in the packs
  4  llmc (kl_forward_backward_onepass, the trainer's with --fused-backward on): one read. A row pair is split
     over a cluster of blocks (sm_90; 2 blocks of 256 threads per row in bf16, 4 in fp32 at
     Vp = 50304), each thread keeping its 16-byte packs of both rows in registers from the
     stats to the KL and gradient step; stats merged across the cluster through distributed
     shared memory in rank order. Falls back to 3 where it cannot serve the shape (Vp not a
     multiple of the pack, unaligned rows, Vp over 212,992 in bf16 / 106,496 in fp32, a device
     below sm_90): here (2,999,1001) falls back to 3 and so to 2
The trainer ships KL variant 3 (variant 4 with --fused-backward on) on fp32 logits in both precisions, with the gradient written in
place in fp32 and as bf16 beside the logits in bf16 (its Vp is a multiple of 128 and its buffers
are 256-byte aligned, so the fallback to variant 2 never happens there), and the one ce_forward
and argmax_agree. Variants 2 and 3 are checked for fp32 logits with an fp32 gradient in place,
fp32 logits with a bf16 gradient (the bf16 trainer's form), and bf16 logits with a bf16 gradient
in place, and so is 4 (in the trainer with --fused-backward on); 1 writes in place only, so it
runs in the two in-place forms.
Checks: (N,V,Vp) = (3,1,8) (5,100,128) (V < threads per block) (7,1000,1000) (no padding)
(2,999,1001) (odd row stride: variant 3 falls back to 2) (64,50257,50304); the pad columns of every input are NaN, so reading them fails the
check; logits either independent U(-10,10) per row (large KL) or spliced = clean + U(-0.05,0.05)
(small KL, as in training); at (8192,50257,50304) 16 rows are compared. Every KL check runs the
variant a second time on the same inputs and requires the same bits (KL rows and gradient).
Variant 4 is also compared with variant 3 run on the same inputs, on the same rows and with the
same tolerances as against the CPU: both evaluate the same per-element formulas with the same row
max (a max is exact in any order), so they differ only by the rounding of Σ exp (a few 1e-7
relative) and of the KL sum, well inside them. CE targets are random,
with -1 (ignored) on every 5th row and the first / last vocab entry on rows 1 / 2. Argmax checks
use logits clamped at 9.0 too, so that every row has many tied maxima (first index must win).
Tolerances: KL and CE rows 1e-5 relative + 5e-6 absolute (log-probs carry ~1e-6 absolute
error in fp32; the reference is double); gradient 1e-5 (fp32) or 1e-2 (bf16 storage) relative
plus 1e-5·grad_scale·(p_s + p_c) absolute (each probability good to ~1e-5 relative); argmax
counts exact. Exit code 1 on any mismatch.
Timing: the GB/s line counts both rows read once and the gradient written once, 3·N·Vp elements.
Variants 2 and 3 read each row pair twice (the second read hoped to hit L2), variant 4 once: it
reads half of variant 3's bytes per row (2·Vp elements instead of 4·Vp; Vp written by both), so
its GB/s is its real traffic, and it should beat 3 most where 3's second read misses L2 (fp32:
two 1024-thread blocks per SM keep 264 row pairs of 402 KB, 106 MB, in flight on 132 SMs,
against 50 MB of L2).
*/
#include "common.h"
#include "../../llmc/kl.cuh"

// ----------------------------------------------------------------------------
// test logits: element i (flat index into (N, Vp)) of a logits array, the same on host and device.
// base U(lo, hi) from seed_a, plus noise · U(-1, 1) from seed_b, clamped at clamp_hi; pad
// columns (col >= V) are NaN

struct LogitSpec {
    unsigned long long seed_a, seed_b;
    float noise;     // 0: no second term
    float clamp_hi;  // values above become clamp_hi (ties at the max)
};

__host__ __device__ inline float logit_value(const LogitSpec& s, size_t i, int V, int Vp) {
    if ((int)(i % (size_t)Vp) >= V) return NAN;
    float x = hash_uniform(s.seed_a, i, -10.0f, 10.0f);
    if (s.noise != 0.0f) x = fmaf(s.noise, hash_uniform(s.seed_b, i, -1.0f, 1.0f), x);
    return fminf(x, s.clamp_hi);
}

template <typename T>
__global__ void fill_logits_kernel(T* out, LogitSpec s, int N, int V, int Vp) {
    const size_t n = (size_t)N * Vp;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_float<T>(logit_value(s, i, V, Vp));
}
template <typename T>
void fill_logits(T* d, LogitSpec s, int N, int V, int Vp) {
    const size_t n = (size_t)N * Vp;
    fill_logits_kernel<<<(unsigned)std::min(ceil_div(n, (size_t)256), (size_t)65536), 256>>>(d, s, N, V, Vp);
    cudaLaunchCheck();
}
// one row as the device holds it (rounded through T), V entries
template <typename T>
std::vector<float> host_logits_row(const LogitSpec& s, int row, int V, int Vp) {
    std::vector<float> z(V);
    for (int v = 0; v < V; v++) z[v] = (float)(T)logit_value(s, (size_t)row * Vp + v, V, Vp);
    return z;
}

// ----------------------------------------------------------------------------
// CPU references, one row at a time (double inside)

static double logsumexp_cpu(const float* z, int V) {
    double m = -INFINITY, s = 0.0;
    for (int v = 0; v < V; v++) m = fmax(m, (double)z[v]);
    for (int v = 0; v < V; v++) s += exp(z[v] - m);
    return m + log(s);
}

// KL of one row; dz (Vp) = grad_scale·(p_s − p_c), pad 0; p_sum (V) = p_s + p_c for the tolerance
double kl_row_cpu(float* dz, float* p_sum, const float* zs, const float* zc, float grad_scale, int V, int Vp) {
    const double lse_s = logsumexp_cpu(zs, V), lse_c = logsumexp_cpu(zc, V);
    double kl = 0.0;
    for (int v = 0; v < V; v++) {
        double lp_s = zs[v] - lse_s, lp_c = zc[v] - lse_c;
        double p_s = exp(lp_s), p_c = exp(lp_c);
        kl += p_c * (lp_c - lp_s);
        dz[v] = (float)(grad_scale * (p_s - p_c));
        if (p_sum) p_sum[v] = (float)(p_s + p_c);
    }
    for (int v = V; v < Vp; v++) dz[v] = 0.0f;
    return kl;
}

double ce_row_cpu(const float* z, int target, int V) {
    if (target < 0) return 0.0;
    return logsumexp_cpu(z, V) - z[target];
}

int argmax_cpu(const float* z, int V) {
    int best = 0;
    for (int v = 1; v < V; v++) if (z[v] > z[best]) best = v;  // strict: the first maximum wins
    return best;
}

// ----------------------------------------------------------------------------
// the kernels' reduction order replayed on the CPU with llmc's own merge functions: per-thread
// strided accumulation, the __shfl_down_sync tree inside each warp (an out-of-range source lane
// returns the caller's own value), then the same tree over the warp results padded with empties

template <typename S, typename Merge>
static void warp_tree(S* lanes, Merge merge) {  // lanes[0] ends with the warp's result
    for (int offset = 16; offset > 0; offset >>= 1) {
        S next[32];
        for (int l = 0; l < 32; l++) next[l] = merge(lanes[l], lanes[l + offset < 32 ? l + offset : l]);
        for (int l = 0; l < 32; l++) lanes[l] = next[l];
    }
}

template <typename S, typename Add, typename Merge>
static S replay_block(int V, int threads, S empty, Add add, Merge merge) {
    std::vector<S> t(threads, empty);
    for (int tid = 0; tid < threads; tid++)
        for (int v = tid; v < V; v += threads) add(t[tid], v);
    std::vector<S> warp_results(32, empty);
    for (int w = 0; w < threads / 32; w++) { warp_tree(&t[w * 32], merge); warp_results[w] = t[w * 32]; }
    warp_tree(warp_results.data(), merge);
    return warp_results[0];
}

static int replay_self_test() {
    int failures = 0;
    const int Vs[] = {1, 5, 100, 1000, 1025, 50257};
    for (int V : Vs) {
        std::vector<float> z(V);
        for (int v = 0; v < V; v++) z[v] = rand_uniform() * 100.0f - 50.0f;
        SoftmaxStats s = replay_block<SoftmaxStats>(V, LOGITS_BLOCK_SIZE, softmax_stats_empty(),
            [&](SoftmaxStats& a, int v) { softmax_stats_add(a, z[v]); }, softmax_stats_merge);
        double lse = s.max + log((double)s.sum), lse_ref = logsumexp_cpu(z.data(), V);
        bool ok = fabs(lse - lse_ref) <= 1e-6 * fabs(lse_ref) + 1e-6;
        // argmax with ties: clamp so the maximum appears many times, the first must win
        for (int v = 0; v < V; v++) z[v] = fminf(z[v], 40.0f);
        ArgMax a = replay_block<ArgMax>(V, LOGITS_BLOCK_SIZE, ArgMax{-INFINITY, INT_MAX},
            [&](ArgMax& b, int v) { b = argmax_merge(b, ArgMax{z[v], v}); }, argmax_merge);
        bool ok_arg = a.idx == argmax_cpu(z.data(), V);
        printf("  replayed block reduction V=%d: lse %.9g (cpu %.9g) %s, argmax %d (cpu %d) %s\n", V, lse, lse_ref,
               ok ? "ok" : "FAIL", a.idx, argmax_cpu(z.data(), V), ok_arg ? "ok" : "FAIL");
        failures += !ok + !ok_arg;
    }
    return failures;
}

// variant 4's split of a row over the blocks of its cluster and their threads, replayed with
// llmc's own kl_onepass_share / kl_onepass_ranks: every pack of [0, Vp/P) must be held by exactly
// one (rank, thread, slot), and every column below V counted exactly once (pad columns never)
static int onepass_coverage_self_test() {
    int failures = 0;
    const int T = KL_ONEPASS_THREADS, full = KL_ONEPASS_THREADS * KL_ONEPASS_PACKS;  // packs per block
    for (int P : {4, 8}) {
        // the check shapes, then a row of exactly one block, one pack more (two blocks), and the
        // widest row a cluster of KL_ONEPASS_MAX_RANKS blocks holds
        const int shapes[][2] = {{1, 8}, {100, 128}, {1000, 1000}, {50257, 50304},
                                 {full * P - 5, full * P}, {full * P + 1, (full + 1) * P},
                                 {KL_ONEPASS_MAX_RANKS * full * P - 3, KL_ONEPASS_MAX_RANKS * full * P}};
        for (auto& shape : shapes) {
            const int V = shape[0], Vp = shape[1], num_packs = Vp / P, ranks = kl_onepass_ranks(Vp, P);
            std::vector<int> held(num_packs, 0), counted(Vp, 0);
            int stray = 0;  // a pack outside [0, num_packs) or a counted element of a pack not held
            for (int rank = 0; rank < ranks; rank++) {
                for (int tid = 0; tid < T; tid++) {
                    const OnepassShare share = kl_onepass_share(rank, ranks, tid, V, Vp, P);
                    for (int i = 0; i < KL_ONEPASS_PACKS; i++) {
                        const int pack = share.first_pack + i * T;
                        const bool is_held = i * T < share.packs_here;
                        if (is_held) {
                            if (pack < 0 || pack >= num_packs) { stray++; continue; }
                            held[pack]++;
                        }
                        for (int k = 0; k < P; k++) {
                            if (i * T * P + k >= share.cols_here) continue;
                            if (!is_held || pack < 0 || pack >= num_packs) { stray++; continue; }
                            counted[pack * P + k]++;
                        }
                    }
                }
            }
            int bad = stray;
            for (int p = 0; p < num_packs; p++) bad += held[p] != 1;
            for (int v = 0; v < Vp; v++) bad += counted[v] != (v < V ? 1 : 0);
            const bool ok = ranks <= KL_ONEPASS_MAX_RANKS && bad == 0;
            printf("  v4 row split P=%d V=%d Vp=%d: %d block(s) per row, %d misplaced %s\n", P, V, Vp, ranks, bad,
                   ok ? "ok" : "FAIL");
            failures += !ok;
        }
    }
    return failures;
}

// ----------------------------------------------------------------------------
// CPU self-test

int cpu_self_test() {
    int failures = 0;
    const int V = 11;
    std::vector<float> zs(V), zc(V), dz(V);
    for (int v = 0; v < V; v++) { zs[v] = rand_uniform() * 6 - 3; zc[v] = rand_uniform() * 6 - 3; }
    const float gs = 0.25f;
    double kl = kl_row_cpu(dz.data(), nullptr, zs.data(), zc.data(), gs, V, V);
    // KL against the textbook form Σ p_c log(p_c / p_s), probabilities computed directly
    double Zs = 0, Zc = 0, kl2 = 0;
    for (int v = 0; v < V; v++) { Zs += exp((double)zs[v]); Zc += exp((double)zc[v]); }
    for (int v = 0; v < V; v++) { double pc = exp((double)zc[v]) / Zc, ps = exp((double)zs[v]) / Zs; kl2 += pc * log(pc / ps); }
    bool ok = fabs(kl - kl2) < 1e-12 && kl > 0.0;
    printf("  cpu KL vs direct formula: %.15f vs %.15f %s\n", kl, kl2, ok ? "ok" : "FAIL");
    failures += !ok;
    // gradient against central finite differences of gs·KL in the spliced logits
    double max_err = 0.0;
    for (int u = 0; u < V; u++) {
        std::vector<float> dummy(V);
        const double h = 1e-3;
        std::vector<float> zp(zs), zm(zs);
        zp[u] = (float)(zs[u] + h); zm[u] = (float)(zs[u] - h);
        double hp = (double)zp[u] - zs[u], hm = (double)zs[u] - zm[u];  // the steps actually taken in float
        double fd = gs * (kl_row_cpu(dummy.data(), nullptr, zp.data(), zc.data(), gs, V, V) -
                          kl_row_cpu(dummy.data(), nullptr, zm.data(), zc.data(), gs, V, V)) / (hp + hm);
        max_err = fmax(max_err, fabs(fd - dz[u]));
    }
    ok = max_err < 1e-6;
    printf("  cpu KL gradient vs finite differences: max abs err %.2e %s\n", max_err, ok ? "ok" : "FAIL");
    failures += !ok;
    // CE: −log softmax[t] directly
    double ce = ce_row_cpu(zc.data(), 4, V), ce2 = -log(exp((double)zc[4]) / Zc);
    ok = fabs(ce - ce2) < 1e-12 && ce_row_cpu(zc.data(), -1, V) == 0.0;
    printf("  cpu CE vs direct formula: %.15f vs %.15f %s\n", ce, ce2, ok ? "ok" : "FAIL");
    failures += !ok;
    // argmax: first of tied maxima
    std::vector<float> t = {1, 3, 2, 3, 3};
    ok = argmax_cpu(t.data(), 5) == 1;
    printf("  cpu argmax first-of-ties: %s\n", ok ? "ok" : "FAIL");
    failures += !ok;
    failures += replay_self_test();
    failures += onepass_coverage_self_test();
    return failures;
}

// ----------------------------------------------------------------------------
// KL variant 1 (2, 3 and 4 are llmc's kernels)

__device__ inline float block_reduce_max(float v) {
    __shared__ float warp_max[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    v = warp_reduce_max(v);
    __syncthreads();
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    v = lane < num_warps ? warp_max[lane] : -FLT_MAX;
    return warp_reduce_max(v);
}

// three passes: max, Σ exp(x − max), then the same KL + gradient pass as llmc
template <typename floatX>
__global__ void kl_fused_kernel1(float* kl_rows, floatX* logits_spliced, const floatX* logits_clean, float grad_scale, int V, int Vp) {
    floatX* zs = logits_spliced + (size_t)blockIdx.x * Vp;
    const floatX* zc = logits_clean + (size_t)blockIdx.x * Vp;
    float max_s = -FLT_MAX, max_c = -FLT_MAX;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        max_s = fmaxf(max_s, to_float(zs[v]));
        max_c = fmaxf(max_c, to_float(zc[v]));
    }
    max_s = block_reduce_max(max_s);
    max_c = block_reduce_max(max_c);
    float sum_s = 0.0f, sum_c = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        sum_s += expf(to_float(zs[v]) - max_s);
        sum_c += expf(to_float(zc[v]) - max_c);
    }
    sum_s = block_reduce_sum(sum_s);
    sum_c = block_reduce_sum(sum_c);
    const float log_sum_s = logf(sum_s), log_sum_c = logf(sum_c);
    float kl = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float lp_s = (to_float(zs[v]) - max_s) - log_sum_s;
        const float lp_c = (to_float(zc[v]) - max_c) - log_sum_c;
        const float p_s = expf(lp_s), p_c = expf(lp_c);
        kl += p_c * (lp_c - lp_s);
        zs[v] = from_float<floatX>(grad_scale * (p_s - p_c));
    }
    for (int v = V + threadIdx.x; v < Vp; v += blockDim.x) zs[v] = from_float<floatX>(0.0f);
    kl = block_reduce_sum(kl);
    if (threadIdx.x == 0) kl_rows[blockIdx.x] = kl;
}

// variant 1 writes in place (dz must be zs, the same type); 2, 3 and 4 take any dz
template <typename floatL, typename floatG>
constexpr bool in_place_only_ok() { return std::is_same<floatL, floatG>::value; }

template <typename floatL, typename floatG>
void kl_variant(int variant, float* kl_rows, floatG* dz, floatL* zs, const floatL* zc, float grad_scale, int N, int V, int Vp) {
    if (variant == 2) {
        kl_forward_backward_scalar_kernel<<<N, LOGITS_BLOCK_SIZE>>>(kl_rows, dz, zs, zc, grad_scale, V, Vp);
        cudaLaunchCheck();
    } else if (variant == 3) {
        kl_forward_backward(kl_rows, dz, zs, zc, grad_scale, N, V, Vp, 0);
    } else if (variant == 4) {
        kl_forward_backward_onepass(kl_rows, dz, zs, zc, grad_scale, N, V, Vp, 0);
    } else if constexpr (in_place_only_ok<floatL, floatG>()) {
        if ((void*)dz != (void*)zs) { fprintf(stderr, "kl variant %d writes in place only\n", variant); exit(1); }
        kl_fused_kernel1<<<N, LOGITS_BLOCK_SIZE>>>(kl_rows, zs, zc, grad_scale, V, Vp);
        cudaLaunchCheck();
    } else {
        fprintf(stderr, "kl variant %d writes in place only\n", variant);
        exit(1);
    }
}

// ----------------------------------------------------------------------------
// GPU checks

const float GRAD_SCALE = 1.0f / (8192.0f * 2.0f);  // kl_coeff / (N · grad_accum) at the defaults

// the raw bytes of a device array, for the same-bits check
template <typename T>
std::vector<char> device_bytes(const T* d, size_t n) {
    std::vector<char> h(n * sizeof(T));
    cudaCheck(cudaMemcpy(h.data(), d, h.size(), cudaMemcpyDeviceToHost));
    return h;
}

// compares rows `rows` of the device KL outputs with the CPU reference, or, when d_kl_expected
// and d_grad_expected are given, with those (another variant's outputs on the same inputs) under
// the same tolerances, p_s + p_c still from the CPU; returns failures
template <typename floatL, typename floatG>
int compare_kl_rows(const std::vector<int>& rows, const float* d_kl, const floatG* d_grad, const float* d_kl_expected,
                    const floatG* d_grad_expected, const LogitSpec& s_spec, const LogitSpec& c_spec, int V, int Vp,
                    float grad_rtol, const char* label) {
    int bad_kl = 0, bad_grad = 0;
    std::vector<float> ref_dz(Vp), p_sum(V);
    double max_kl_err = 0.0, max_grad_err = 0.0;
    for (int row : rows) {
        std::vector<float> zs = host_logits_row<floatL>(s_spec, row, V, Vp), zc = host_logits_row<floatL>(c_spec, row, V, Vp);
        double kl_ref = kl_row_cpu(ref_dz.data(), p_sum.data(), zs.data(), zc.data(), GRAD_SCALE, V, Vp);
        if (d_kl_expected) {
            float kl_expected;
            cudaCheck(cudaMemcpy(&kl_expected, d_kl_expected + row, sizeof(float), cudaMemcpyDeviceToHost));
            kl_ref = kl_expected;
            ref_dz = from_device(d_grad_expected + (size_t)row * Vp, Vp);
        }
        float kl_gpu;
        cudaCheck(cudaMemcpy(&kl_gpu, d_kl + row, sizeof(float), cudaMemcpyDeviceToHost));
        double err = fabs(kl_gpu - kl_ref);
        max_kl_err = fmax(max_kl_err, err);
        if (!(err <= 1e-5 * fabs(kl_ref) + 5e-6)) {
            if (bad_kl < 5) printf("  %s KL row %d: gpu %.8g expected %.8g\n", label, row, kl_gpu, kl_ref);
            bad_kl++;
        }
        std::vector<float> g = from_device(d_grad + (size_t)row * Vp, Vp);
        for (int v = 0; v < Vp; v++) {
            double r = ref_dz[v], e = fabs(g[v] - r);
            double tol = grad_rtol * fabs(r) + (v < V ? 1e-5 * GRAD_SCALE * p_sum[v] : 0.0);
            max_grad_err = fmax(max_grad_err, e);
            if (!(e <= tol)) {
                if (bad_grad < 5) printf("  %s grad row %d col %d: gpu %.8g expected %.8g\n", label, row, v, g[v], r);
                bad_grad++;
            }
        }
    }
    printf("  %-48s KL max err %.2e %s, grad max err %.2e %s\n", label, max_kl_err, bad_kl ? "FAIL" : "ok", max_grad_err,
           bad_grad ? "FAIL" : "ok");
    return (bad_kl > 0) + (bad_grad > 0);
}

// dz: the gradient goes over the spliced logits (in place, same types) or into its own buffer
template <typename floatL, typename floatG>
int check_kl(int variant, int N, int V, int Vp, bool close, bool sampled, float grad_rtol) {
    const size_t n = (size_t)N * Vp;
    constexpr bool in_place = std::is_same<floatL, floatG>::value;
    LogitSpec c_spec = {101, 0, 0.0f, INFINITY};
    LogitSpec s_spec = close ? LogitSpec{101, 102, 0.05f, INFINITY} : LogitSpec{103, 0, 0.0f, INFINITY};
    floatL* d_zs = device_alloc<floatL>(n);
    floatL* d_zc = device_alloc<floatL>(n);
    floatG* d_dz = in_place ? (floatG*)d_zs : device_alloc<floatG>(n);
    float* d_kl = device_alloc<float>(N);
    auto run = [&](int v, float* kl, floatG* dz, floatL* zs) {  // fresh inputs (in place, the last run overwrote them), poisoned outputs
        fill_logits(zs, s_spec, N, V, Vp);
        if (!in_place) poison(dz, n * sizeof(floatG));
        poison(kl, N * sizeof(float));
        kl_variant(v, kl, dz, zs, d_zc, GRAD_SCALE, N, V, Vp);
    };
    fill_logits(d_zc, c_spec, N, V, Vp);
    run(variant, d_kl, d_dz, d_zs);
    std::vector<int> rows;
    if (sampled) { for (int k = 0; k < 16; k++) rows.push_back(k == 15 ? N - 1 : k * (N / 15)); }
    else { for (int r = 0; r < N; r++) rows.push_back(r); }
    char label[96];
    const char* form = in_place ? "" : " grad bf16";
    snprintf(label, sizeof(label), "kl v%d N=%d V=%d Vp=%d %s%s%s", variant, N, V, Vp, close ? "close" : "indep", sampled ? " (16 rows)" : "", form);
    int failures = compare_kl_rows<floatL, floatG>(rows, d_kl, d_dz, nullptr, nullptr, s_spec, c_spec, V, Vp, grad_rtol, label);

    // a second run on the same inputs: the same bits (fixed reduction order, no float atomics)
    std::vector<char> kl_bits = device_bytes(d_kl, N), grad_bits = device_bytes(d_dz, n);
    run(variant, d_kl, d_dz, d_zs);
    const bool same = device_bytes(d_kl, N) == kl_bits && device_bytes(d_dz, n) == grad_bits;
    printf("  %-48s second run bit-identical: %s\n", label, same ? "ok" : "FAIL");
    failures += !same;

    if (in_place && variant == 4) {  // against the trainer's kernel, variant 3, on the same inputs (in place, as 4)
        floatL* d_zs3 = device_alloc<floatL>(n);
        float* d_kl3 = device_alloc<float>(N);
        run(3, d_kl3, (floatG*)d_zs3, d_zs3);
        snprintf(label, sizeof(label), "kl v4 vs v3 N=%d V=%d Vp=%d %s%s", N, V, Vp, close ? "close" : "indep", sampled ? " (16 rows)" : "");
        failures += compare_kl_rows<floatL, floatG>(rows, d_kl, d_dz, d_kl3, (floatG*)d_zs3, s_spec, c_spec, V, Vp, grad_rtol, label);
        cudaCheck(cudaFree(d_zs3)); cudaCheck(cudaFree(d_kl3));
    }
    if (!in_place) cudaCheck(cudaFree(d_dz));
    cudaCheck(cudaFree(d_zs)); cudaCheck(cudaFree(d_zc)); cudaCheck(cudaFree(d_kl));
    return failures;
}

static int ce_target(int row, int V) {
    if (row % 5 == 4) return -1;
    if (row == 1) return 0;
    if (row == 2) return V - 1;
    return (int)(hash_uniform(7, (size_t)row, 0.0f, 1.0f) * V) % V;
}

template <typename floatX>
int check_ce_argmax(int N, int V, int Vp) {
    int failures = 0;
    const size_t n = (size_t)N * Vp;
    floatX* d_a = device_alloc<floatX>(n);
    floatX* d_b = device_alloc<floatX>(n);
    float* d_ce = device_alloc<float>(N);
    int* d_targets = device_alloc<int>(N);
    int* d_agree = device_alloc<int>(1);
    std::vector<int> targets(N);
    for (int r = 0; r < N; r++) targets[r] = ce_target(r, V);
    cudaCheck(cudaMemcpy(d_targets, targets.data(), N * sizeof(int), cudaMemcpyHostToDevice));

    // CE on independent logits
    LogitSpec a_spec = {201, 0, 0.0f, INFINITY};
    fill_logits(d_a, a_spec, N, V, Vp);
    poison(d_ce, N * sizeof(float));
    ce_forward(d_ce, d_a, d_targets, N, V, Vp, 0);
    std::vector<float> ce_ref(N);
    for (int r = 0; r < N; r++) {
        std::vector<float> z = host_logits_row<floatX>(a_spec, r, V, Vp);
        ce_ref[r] = (float)ce_row_cpu(z.data(), targets[r], V);
    }
    char name[96];
    snprintf(name, sizeof(name), "ce N=%d V=%d Vp=%d", N, V, Vp);
    failures += !check_close(d_ce, ce_ref.data(), name, N, 1e-5f, 5e-6f);

    // argmax agreement: b equals a on even rows, independent on odd rows; unclamped and clamped
    for (int clamped = 0; clamped <= 1; clamped++) {
        const float hi = clamped ? 9.0f : INFINITY;
        LogitSpec sa = {211, 0, 0.0f, hi}, sb_even = sa, sb_odd = {212, 0, 0.0f, hi};
        fill_logits(d_a, sa, N, V, Vp);
        fill_logits(d_b, sb_odd, N, V, Vp);
        for (int r = 0; r < N; r += 2)  // even rows of b: copies of a's
            cudaCheck(cudaMemcpy(d_b + (size_t)r * Vp, d_a + (size_t)r * Vp, Vp * sizeof(floatX), cudaMemcpyDeviceToDevice));
        int agree_ref = 0;
        for (int r = 0; r < N; r++) {
            std::vector<float> za = host_logits_row<floatX>(sa, r, V, Vp);
            std::vector<float> zb = host_logits_row<floatX>(r % 2 == 0 ? sb_even : sb_odd, r, V, Vp);
            agree_ref += argmax_cpu(za.data(), V) == argmax_cpu(zb.data(), V);
        }
        const int start = 5;  // accumulates onto the value it finds
        cudaCheck(cudaMemcpy(d_agree, &start, sizeof(int), cudaMemcpyHostToDevice));
        argmax_agree(d_agree, d_a, d_b, N, V, Vp, 0);
        int agree;
        cudaCheck(cudaMemcpy(&agree, d_agree, sizeof(int), cudaMemcpyDeviceToHost));
        bool ok = agree - start == agree_ref;
        printf("  argmax N=%d V=%d %s: agree %d (cpu %d) %s\n", N, V, clamped ? "clamped (ties)" : "unclamped", agree - start,
               agree_ref, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_ce)); cudaCheck(cudaFree(d_targets));
    cudaCheck(cudaFree(d_agree));
    return failures;
}

// argmax index itself (not only agreement): a row whose maximum is tied at several places,
// compared with a copy where the earliest tie is removed, must disagree
template <typename floatX>
int check_argmax_first_index(int V, int Vp) {
    std::vector<float> a(Vp, 0.0f), b(Vp, 0.0f);
    for (int v = 0; v < V; v++) a[v] = b[v] = (float)(v % 17) * 0.25f - 2.0f;  // max 2.0 at v = 16, 33, 50, ...
    b[16] = 1.0f;  // b's first maximum is at 33
    floatX* d_a = to_device<floatX>(a.data(), Vp);
    floatX* d_b = to_device<floatX>(b.data(), Vp);
    int* d_agree = device_alloc<int>(1);
    cudaCheck(cudaMemset(d_agree, 0, sizeof(int)));
    argmax_agree(d_agree, d_a, d_a, 1, V, Vp, 0);  // +1
    argmax_agree(d_agree, d_a, d_b, 1, V, Vp, 0);  // +0 (16 vs 33)
    int agree;
    cudaCheck(cudaMemcpy(&agree, d_agree, sizeof(int), cudaMemcpyDeviceToHost));
    bool ok = agree == 1;
    printf("  argmax first-of-ties V=%d: %s\n", V, ok ? "ok" : "FAIL");
    cudaCheck(cudaFree(d_a)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_agree));
    return !ok;
}

// KL checks for logits floatL and gradient floatG; then, in the in-place forms, CE and argmax on floatL
template <typename floatL, typename floatG>
int run_checks(int only, float grad_rtol) {
    int failures = 0;
    constexpr bool in_place = std::is_same<floatL, floatG>::value;
    const int shapes[][3] = {{3, 1, 8}, {5, 100, 128}, {7, 1000, 1000}, {2, 999, 1001}, {64, 50257, 50304}};
    for (int variant = 1; variant <= 4; variant++) {
        if ((only && variant != only) || (!in_place && variant == 1)) continue;
        for (auto& s : shapes)
            for (int close = 0; close <= 1; close++) failures += check_kl<floatL, floatG>(variant, s[0], s[1], s[2], close, false, grad_rtol);
        failures += check_kl<floatL, floatG>(variant, 8192, 50257, 50304, true, true, grad_rtol);
    }
    if (only || !in_place) return failures;
    for (auto& s : shapes) failures += check_ce_argmax<floatL>(s[0], s[1], s[2]);
    failures += check_argmax_first_index<floatL>(50257, 50304);
    failures += check_argmax_first_index<floatL>(40, 40);
    return failures;
}

int gpu_checks(int only) {
    printf("fp32 logits, fp32 gradient in place (the fp32 trainer):\n");
    int failures = run_checks<float, float>(only, 1e-5f);
    printf("fp32 logits, bf16 gradient (the bf16 trainer):\n");
    failures += run_checks<float, bf16>(only, 1e-2f);
    printf("bf16 logits, bf16 gradient in place:\n");
    return failures + run_checks<bf16, bf16>(only, 1e-2f);
}

// ----------------------------------------------------------------------------
// timing at the paper shape; GB/s counts each row read once and the gradient written once
// (variants 1-3 read each row two or three times, the later reads meant to come from L2;
// variant 4 reads it once)

template <typename floatX, typename floatG>
void time_kernels(int only) {
    constexpr bool in_place = std::is_same<floatX, floatG>::value;
    const int N = 8192, V = 50257, Vp = 50304;
    const size_t n = (size_t)N * Vp, X = sizeof(floatX);
    floatX* d_zs = device_alloc<floatX>(n);
    floatX* d_zc = device_alloc<floatX>(n);
    floatG* d_dz = in_place ? (floatG*)d_zs : device_alloc<floatG>(n);
    float* d_rows = device_alloc<float>(N);
    int* d_targets = device_alloc<int>(N);
    int* d_agree = device_alloc<int>(1);
    std::vector<int> targets(N);
    for (int r = 0; r < N; r++) targets[r] = ce_target(r, V);
    cudaCheck(cudaMemcpy(d_targets, targets.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(d_agree, 0, sizeof(int)));
    LogitSpec c_spec = {101, 0, 0.0f, INFINITY}, s_spec = {101, 102, 0.05f, INFINITY};
    for (int variant = 1; variant <= 4; variant++) {
        if ((only && variant != only) || (!in_place && variant == 1)) continue;
        // the spliced logits are overwritten by the first call: later repeats read gradients,
        // which costs the same (same reads, writes and exps)
        fill_logits(d_zs, s_spec, N, V, Vp);
        fill_logits(d_zc, c_spec, N, V, Vp);
        char what[64];
        snprintf(what, sizeof(what), "%s kl fused fwd+bwd v%d%s", type_name<floatX>(), variant, in_place ? "" : ", grad bf16");
        float ms = benchmark_kernel(2, 10, [&] { kl_variant(variant, d_rows, d_dz, d_zs, d_zc, GRAD_SCALE, N, V, Vp); });
        report_bandwidth(what, ms, 2.0 * n * X + (double)n * sizeof(floatG));
    }
    if (!only && in_place) {
        char what[64];
        fill_logits(d_zs, s_spec, N, V, Vp);
        float ms = benchmark_kernel(2, 10, [&] { ce_forward(d_rows, d_zs, d_targets, N, V, Vp, 0); });
        snprintf(what, sizeof(what), "%s ce forward", type_name<floatX>());
        report_bandwidth(what, ms, (double)n * X);
        ms = benchmark_kernel(2, 10, [&] { argmax_agree(d_agree, d_zs, d_zc, N, V, Vp, 0); });
        snprintf(what, sizeof(what), "%s argmax agree", type_name<floatX>());
        report_bandwidth(what, ms, 2.0 * n * X);
    }
    if (!in_place) cudaCheck(cudaFree(d_dz));
    cudaCheck(cudaFree(d_zs)); cudaCheck(cudaFree(d_zc)); cudaCheck(cudaFree(d_rows)); cudaCheck(cudaFree(d_targets));
    cudaCheck(cudaFree(d_agree));
}

void timing(int only) {
    printf("timing, N=8192 V=50257 Vp=50304 (median of 10):\n");
    time_kernels<float, float>(only);
    time_kernels<float, bf16>(only);
    time_kernels<bf16, bf16>(only);
}

int main(int argc, char** argv) { return bench_main(argc, argv, "kl", 4, cpu_self_test, gpu_checks, timing); }
