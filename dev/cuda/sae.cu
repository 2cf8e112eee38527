/*
SAE kernels, llmc/sae.cuh: decoder normalisation forward and backward, the L1 + ReLU backward,
bias-gradient column sums, and the sparsity / L0 / fired statistics; and the encoder forward
c (N,D) = relu(x (N,C) · W_enc (C,D) + b_enc (D)) in the layout sae.cuh documents (W_enc
row-major (C,D) used without a transpose: in cuBLAS's column-major terms cᵀ = W_enc_cm · xᵀ with
m = D, n = N, k = C, lda = D, ldb = C, ldc = D). CPU references in plain loops (double inside),
checks of every kernel on poisoned outputs, timing at the paper's shape (N = 8192 tokens,
C = 768, D = 46080).

Build and run (the command line of every bench, dev/cuda/common.h):
  cd dev/cuda && make sae
  ./sae [check|cpu|N]   no argument: everything; check: CPU self-test and every GPU check (fp32
                        and bf16); cpu: CPU self-test only (no GPU): finite-difference checks of
                        the normalisation backward and the L1 + ReLU backward references, the
                        encoder reference on a hand example, and the sparsity kernel's grid
                        (sae_sparsity_grid) walked on the CPU for d_sae up to 2^30; N: check and
                        time variant N alone
                        (the kernels with one version run without N)
  SAE_SMALL=1 ./sae 6   the fused pass's checks at the shapes up to (256,46080) only, no timing
                        (compute-sanitizer runs)
Variants, of two kernels (the others have one version each, the llmc one, shipped in fp32 and
bf16):
  L1 + ReLU backward
  1  llmc (sae_l1_relu_backward): one element per thread per grid-stride step, scalar loads
  2  one 16-byte pack (4 fp32 / 8 bf16) per thread per step, scalar tail; needs 16-byte
     aligned pointers (falls back to 1 otherwise); fewer, wider memory instructions
  encoder forward
  3  cublasGemmEx writes x·W_enc into c, then bias and ReLU as two separate passes
     (add_bias_relu_inplace without ReLU, then a ReLU kernel)
  4  cublasGemmEx, then bias + ReLU fused in one pass (add_bias_relu_inplace with relu)
  5  the trainer's call: matmul_cublaslt(c, x, W_enc, b_enc, N, D, C, no transposes, RELU_BIAS)
     with b_enc cast to floatX (run on the 16-byte aligned shapes only: cuBLASLt may have no
     algorithm for odd row strides, and this bench should not die on that)
  the backward's elementwise pass
  6  llmc (sae_l1_relu_backward_stats, sae_fused.cuh): the L1 + ReLU backward, db_enc =
     colsum(dpre), Σ|c|, L0 and the fired flags in one pass over (N,D), 16-byte packs where D
     allows; replaces variant 1 + bias_grad_colsum + sae_sparsity_l0 in training (reads c and dc
     once and writes dpre once, instead of reading (N,D) five times)
The trainer ships variants 1 (eval and the fused pass's reference), 5 and 6, in fp32 and bf16; 3 and 4 time what the epilogue
saves (the fp32 bias added to a plain matmul's output by extra passes over c).
Checks, each shape chosen to leave partial warps / blocks / packs:
  normalise  (D,C) = (1,1) (37,100) (1000,768) (46080,768), one all-zero row and one row of
             norm 1e-13 < eps in each (the clamp branch); backward out of place and in place
  L1+ReLU    (N,D) = (1,1) (3,1000) (37,4099) (256,46080), in place too; (8192,46080) sampled rows
  colsum     (N,OC) = (1,1) (7,33) (37,4099) (1000,768) (256,46080) (8192,768) (8192,46080),
             overwrite and accumulate, and bit-identical on a second run
  stats      (N,D) = (1,1) (3,1000) (3,1001) (37,4099) (256,46080) (2,2^20+1001) (1,2^22+3)
             (8192,46080): l1 and l0 accumulated onto nonzero values, fired flags OR-ed onto
             preset ones, alive count; past D = 2^20 each thread walks several column tiles
  fused (6)  (N,D) = (1,1) (3,1000) (3,1001) (37,4099) (256,46080) (2,2^20+1000) (2,2^20+1001)
             (8192,46080): dpre against the CPU reference, db_enc (overwrite and accumulate),
             Σ|c|, L0 and flags bit-identical to the unfused kernels (the same summation order for
             db_enc), Σ|c| and L0 against the CPU; past 4096 tiles the grid strides
  encoder    (N,C,D) = (37,100,1000) (5,768,4099) (variants 3, 4) and (64,768,4096) (all) in full,
             (8192,768,46080) on 8 rows (all); c poisoned first
Tolerances: fp32 outputs 1e-5 relative (reference in double; the GPU sums in fp32 in another
order); bf16 outputs 1e-2 (inputs are bf16 on both sides, so one output rounding of 2^-9
remains); counts and flags exact. Encoder, per element: rtol · (Σ_k |x_k W_kj| + |b_j|) with
rtol 1e-5 (fp32: cuBLAS in true fp32 sums in another order than the double reference) or 8e-3
(bf16: the matmul output and the biased value are each rounded to bf16, 2^-9 relative each).
Exit code 1 on any mismatch.
*/
#include <cublas_v2.h>
#include "common.h"
#include "../../llmc/sae.cuh"
#include "../../llmc/matmul.cuh"

// ----------------------------------------------------------------------------
// CPU references

void sae_decoder_normalize_cpu(float* W_dec_norm, float* inv_norm, const float* W_dec, int D, int C) {
    for (int d = 0; d < D; d++) {
        const float* w = W_dec + (size_t)d * C;
        double sum_sq = 0.0;
        for (int i = 0; i < C; i++) sum_sq += (double)w[i] * w[i];
        double norm = fmax(sqrt(sum_sq), 1e-12);
        for (int i = 0; i < C; i++) W_dec_norm[(size_t)d * C + i] = (float)(w[i] / norm);
        inv_norm[d] = (float)(1.0 / norm);
    }
}

// dw = (dy − y (y·dy)) / ||w|| if ||w|| > eps, else dy / eps  (derivation in llmc/sae.cuh)
void sae_decoder_normalize_backward_cpu(float* dW_dec, const float* dW_dec_norm, const float* W_dec, int D, int C) {
    for (int d = 0; d < D; d++) {
        const float* w = W_dec + (size_t)d * C;
        const float* dy = dW_dec_norm + (size_t)d * C;
        double sum_sq = 0.0, w_dot_dy = 0.0;
        for (int i = 0; i < C; i++) { sum_sq += (double)w[i] * w[i]; w_dot_dy += (double)w[i] * dy[i]; }
        double norm = sqrt(sum_sq);
        bool above = norm > 1e-12;
        double n = above ? norm : 1e-12;
        double y_dot_dy = above ? w_dot_dy / n : 0.0;
        for (int i = 0; i < C; i++) dW_dec[(size_t)d * C + i] = (float)((dy[i] - (w[i] / n) * y_dot_dy) / n);
    }
}

void sae_l1_relu_backward_cpu(float* dpre, const float* dc, const float* c, float l1_scale, size_t n) {
    for (size_t i = 0; i < n; i++) dpre[i] = c[i] > 0.0f ? dc[i] + l1_scale : 0.0f;
}

void bias_grad_colsum_cpu(float* dbias, const float* dout, int N, int OC, bool accumulate) {
    std::vector<double> sum(OC, 0.0);
    for (int n = 0; n < N; n++)  // rows outer: streams through dout once
        for (int j = 0; j < OC; j++) sum[j] += dout[(size_t)n * OC + j];
    for (int j = 0; j < OC; j++) dbias[j] = (float)((accumulate ? dbias[j] : 0.0) + sum[j]);
}

// l1 += Σ|c|, l0 += count(c > 0), fired[d] |= any(c[:,d] > 0)
void sae_sparsity_l0_cpu(double* l1, double* l0, unsigned int* fired, const float* c, int N, int D) {
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            float v = c[(size_t)n * D + d];
            *l1 += fabs(v);
            if (v > 0.0f) { *l0 += 1.0; fired[d] = 1u; }
        }
}

// the encoder forward for one token: c (D), and the magnitude Σ_k |x_k W_kj| + |b_j| for the
// tolerance
void sae_encoder_forward_row_cpu(float* c, float* mag, const float* x, const float* W_enc, const float* b_enc, int C, int D) {
    std::vector<double> acc(D, 0.0), abs_acc(D, 0.0);
    for (int k = 0; k < C; k++) {  // rows of W_enc outer: streams through it
        const float* w = W_enc + (size_t)k * D;
        for (int j = 0; j < D; j++) { acc[j] += (double)x[k] * w[j]; abs_acc[j] += fabs((double)x[k] * w[j]); }
    }
    for (int j = 0; j < D; j++) {
        double pre = acc[j] + b_enc[j];
        c[j] = (float)(pre > 0.0 ? pre : 0.0);
        mag[j] = (float)(abs_acc[j] + fabs(b_enc[j]));
    }
}

// ----------------------------------------------------------------------------
// CPU self-test: the backward references against central finite differences in double, and the
// encoder reference on a hand example

// L(w) = Σ_i r_i · y_i(w), y = w / max(||w||, eps); dL/dw is the normalisation backward of dy = r
static double normalize_loss(const double* w, const float* r, int C) {
    double sum_sq = 0.0, L = 0.0;
    for (int i = 0; i < C; i++) sum_sq += w[i] * w[i];
    double n = fmax(sqrt(sum_sq), 1e-12);
    for (int i = 0; i < C; i++) L += r[i] * (w[i] / n);
    return L;
}

int decoder_cpu_self_test() {
    int failures = 0;
    const int C = 13;
    // rows: ordinary, tiny (norm 4e-14 < eps: the clamp branch), all zero
    const double scales[3] = {1.0, 1e-14, 0.0};
    for (int r = 0; r < 3; r++) {
        std::vector<float> w(C), dy(C), dw(C);
        for (int i = 0; i < C; i++) { w[i] = (float)(scales[r] * (rand_uniform() * 2.0 - 1.0)); dy[i] = rand_uniform() * 2.0f - 1.0f; }
        sae_decoder_normalize_backward_cpu(dw.data(), dy.data(), w.data(), 1, C);
        double max_rel = 0.0;
        for (int i = 0; i < C; i++) {
            std::vector<double> wp(w.begin(), w.end()), wm(w.begin(), w.end());
            double h = scales[r] > 0.1 ? 1e-6 : 1e-17;  // inside the branch's region (linear there for the small rows)
            wp[i] += h; wm[i] -= h;
            double fd = (normalize_loss(wp.data(), dy.data(), C) - normalize_loss(wm.data(), dy.data(), C)) / (2.0 * h);
            max_rel = fmax(max_rel, fabs(fd - dw[i]) / (fabs(fd) + 1e-30 + 1e-3 * fabs(dw[i])));
        }
        bool ok = max_rel < 1e-5;
        printf("  cpu normalize backward vs finite differences, row norm scale %g: max rel err %.2e %s\n", scales[r], max_rel, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    // L1 + ReLU: L(pre) = Σ dc·relu(pre) + l1_scale·Σ|relu(pre)|, pre away from 0 so FD is clean
    {
        const int n = 64;
        const float l1_scale = 0.37f;
        std::vector<float> pre(n), c(n), dc(n), dpre(n);
        for (int i = 0; i < n; i++) {
            pre[i] = (rand_uniform() < 0.5f ? -1.0f : 1.0f) * (0.1f + rand_uniform());
            c[i] = fmaxf(pre[i], 0.0f);
            dc[i] = rand_uniform() * 2.0f - 1.0f;
        }
        sae_l1_relu_backward_cpu(dpre.data(), dc.data(), c.data(), l1_scale, n);
        double max_err = 0.0;
        for (int i = 0; i < n; i++) {
            auto L = [&](double p) { double ci = fmax(p, 0.0); return dc[i] * ci + l1_scale * fabs(ci); };
            double h = 1e-4, fd = (L(pre[i] + h) - L(pre[i] - h)) / (2 * h);
            max_err = fmax(max_err, fabs(fd - dpre[i]));
        }
        bool ok = max_err < 1e-6;
        printf("  cpu l1+relu backward vs finite differences: max abs err %.2e %s\n", max_err, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    return failures;
}

int encoder_cpu_self_test() {
    // tiny example by hand: x = (1, 2), W = [[1, -1, 0], [0.5, 0.25, -1]], b = (0, 0.25, 1)
    const float x[2] = {1, 2}, W[6] = {1, -1, 0, 0.5f, 0.25f, -1}, b[3] = {0, 0.25f, 1};
    float c[3], mag[3];
    sae_encoder_forward_row_cpu(c, mag, x, W, b, 2, 3);
    const float expect[3] = {2.0f, 0.0f, 0.0f};  // (1+1+0, relu(-1+0.5+0.25), relu(0-2+1))
    bool ok = memcmp(c, expect, sizeof(c)) == 0;
    printf("  cpu encoder reference on a hand example: %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

// The sparsity kernel's grid for the shapes the trainer can meet, walked on the CPU the way the
// kernel walks it: every column visited by exactly one (block x, thread), no row slice empty,
// the partials within their arrays, and col + stride short of 2^31 (the kernel's int loop); for
// the two largest D only the bounds (a visit count per column would take GiBs).
int stats_grid_cpu_self_test() {
    int failures = 0;
    const int shapes[][2] = {{1, 1}, {3, 1001}, {8192, 46080}, {2, (1 << 20) + 1001}, {1, (1 << 22) + 3}, {16384, 1 << 20},
                             {2, 1 << 30}, {1, (1 << 30) - 1}};
    for (auto& sh : shapes) {
        const int N = sh[0], D = sh[1];
        const dim3 g = sae_sparsity_grid(N, D);
        const long long stride = (long long)g.x * SAE_STATS_BLOCK;
        bool ok = g.x >= 1 && g.y >= 1 && (long long)g.x * g.y <= SAE_STATS_MAX_PARTIALS && (int)g.y <= N &&
                  (long long)D - 1 + stride < (1LL << 31) && stride * ((D + stride - 1) / stride) >= D;
        if (ok && D <= (1 << 23)) {
            std::vector<unsigned char> visits(D, 0);
            for (unsigned bx = 0; bx < g.x; bx++)
                for (int t = 0; t < SAE_STATS_BLOCK; t++)
                    for (long long col = (long long)bx * SAE_STATS_BLOCK + t; col < D; col += stride) visits[col]++;
            for (int d = 0; d < D; d++) ok = ok && visits[d] == 1;
        }
        printf("  cpu stats grid N=%d D=%d: (%u, %u) blocks, %lld column tile(s) per thread %s\n", N, D, g.x, g.y,
               ((long long)D + stride - 1) / stride, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    return failures;
}

int cpu_self_test() {
    int failures = decoder_cpu_self_test();
    failures += encoder_cpu_self_test();
    return failures + stats_grid_cpu_self_test();
}

// ----------------------------------------------------------------------------
// variant 2 of the L1 + ReLU backward

// one 16-byte pack per thread per grid-stride step; the last n % P elements by block 0
template <typename floatX>
__global__ void sae_l1_relu_backward_kernel2(floatX* dpre, const floatX* dc, const floatX* c, float l1_scale, size_t n) {
    constexpr int P = Packed128<floatX>::size;
    const size_t num_packs = n / P;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < num_packs; p += stride) {
        const Packed128<floatX> c_pack = load128(c + p * P), dc_pack = load128(dc + p * P);
        Packed128<floatX> out;
        #pragma unroll
        for (int k = 0; k < P; k++) out[k] = from_float<floatX>(to_float(c_pack[k]) > 0.0f ? to_float(dc_pack[k]) + l1_scale : 0.0f);
        store128(dpre + p * P, out);
    }
    if (blockIdx.x == 0) {
        for (size_t i = num_packs * P + threadIdx.x; i < n; i += blockDim.x)
            dpre[i] = from_float<floatX>(to_float(c[i]) > 0.0f ? to_float(dc[i]) + l1_scale : 0.0f);
    }
}

template <typename floatX>
void l1_relu_variant(int variant, floatX* dpre, const floatX* dc, const floatX* c, float l1_scale, int N, int D) {
    const size_t n = (size_t)N * D;
    if (variant == 2 && is_aligned16(dpre) && is_aligned16(dc) && is_aligned16(c)) {
        const size_t packs = std::max(n / Packed128<floatX>::size, (size_t)1);
        const unsigned grid = (unsigned)std::min(ceil_div(packs, (size_t)512), (size_t)(1 << 20));
        sae_l1_relu_backward_kernel2<<<grid, 512>>>(dpre, dc, c, l1_scale, n);
        cudaLaunchCheck();
    } else {
        sae_l1_relu_backward(dpre, dc, c, l1_scale, N, D, 0);
    }
}

// ----------------------------------------------------------------------------
// encoder forward: the plain matmul and the passes of variants 3 and 4

cublasHandle_t cublas_handle;

// c (N,D) = x (N,C) · W_enc (C,D), row-major; fp32 accumulation (true fp32 for fp32 operands)
template <typename floatX>
void encoder_matmul(floatX* c, const floatX* x, const floatX* W_enc, int N, int C, int D) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cuda_dtype<floatX>();
    cublasCheck(cublasGemmEx(cublas_handle, CUBLAS_OP_N, CUBLAS_OP_N, D, N, C, &alpha, W_enc, t, D, x, t, C, &beta, c, t, D,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// out (N,OC) = [relu](out + bias) in place, bias fp32 (OC): the fp32 master bias added to a matmul's
// output in a separate pass (what the RELU_BIAS epilogue of variant 5 saves). One pass over (N,OC).
template <typename floatX>
__global__ void add_bias_relu_inplace_kernel(floatX* out, const float* bias, size_t n, int OC, bool relu) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = to_float(out[i]) + bias[i % OC];
        out[i] = from_float<floatX>(relu && v < 0.0f ? 0.0f : v);  // a NaN stays NaN, as in torch.relu
    }
}

template <typename floatX>
void add_bias_relu_inplace(floatX* out, const float* bias, int N, int OC, bool relu) {
    const size_t n = (size_t)N * OC;
    if (n == 0) return;
    const int block_size = 512;
    const size_t grid = std::min(ceil_div(n, (size_t)block_size), (size_t)(1 << 20));
    add_bias_relu_inplace_kernel<<<(unsigned)grid, block_size>>>(out, bias, n, OC, relu);
    cudaLaunchCheck();
}

template <typename floatX>
__global__ void relu_inplace_kernel(floatX* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_float(out[i]);
        out[i] = from_float<floatX>(v < 0.0f ? 0.0f : v);
    }
}

// the trainer's encoder: one cuBLASLt call, bias (D) of the output's type, ReLU in the epilogue
template <typename floatX>
void encoder_cublaslt(floatX* c, const floatX* x, const floatX* W_enc, const floatX* b_enc_x, int N, int C, int D) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(c, x, W_enc, b_enc_x, N, D, C, false, false, t, t, false, CUBLASLT_EPILOGUE_RELU_BIAS, nullptr, 0);
}

// variant 3: bias, then ReLU, two passes; variant 4: both in one pass
template <typename floatX>
void bias_relu_variant(int variant, floatX* c, const float* b_enc, int N, int D) {
    if (variant == 3) {
        add_bias_relu_inplace(c, b_enc, N, D, false);
        const size_t n = (size_t)N * D;
        relu_inplace_kernel<<<(unsigned)std::min(ceil_div(n, (size_t)512), (size_t)(1 << 20)), 512>>>(c, n);
        cudaLaunchCheck();
    } else {
        add_bias_relu_inplace(c, b_enc, N, D, true);
    }
}

// ----------------------------------------------------------------------------
// GPU checks

template <typename floatX>
int check_normalize(int D, int C, float tol) {
    int failures = 0;
    const size_t n = (size_t)D * C;
    std::vector<float> W = host_random_array<float>(n, 11 + D, -1.0f, 1.0f);
    if (D >= 2) {  // row 0 all zero, row 1 of norm ~1e-13: both take the clamp at eps
        for (int i = 0; i < C; i++) { W[i] = 0.0f; W[(size_t)C + i] *= 1e-13f / sqrtf((float)C); }
    }
    std::vector<float> dy = host_random_array<float>(n, 12 + D, -1.0f, 1.0f);
    std::vector<float> ref_norm(n), ref_inv(D), ref_dw(n);
    sae_decoder_normalize_cpu(ref_norm.data(), ref_inv.data(), W.data(), D, C);
    sae_decoder_normalize_backward_cpu(ref_dw.data(), dy.data(), W.data(), D, C);

    float* d_W = to_device<float>(W.data(), n);
    float* d_dy = to_device<float>(dy.data(), n);
    floatX* d_norm = device_alloc<floatX>(n);
    float* d_inv = device_alloc<float>(D);
    float* d_dw = device_alloc<float>(n);
    poison(d_norm, n * sizeof(floatX)); poison(d_inv, D * sizeof(float)); poison(d_dw, n * sizeof(float));
    char name[96];
    sae_decoder_normalize(d_norm, d_inv, d_W, D, C, 0);
    snprintf(name, sizeof(name), "normalize D=%d C=%d", D, C);
    failures += !check_result(d_norm, ref_norm.data(), name, n, tol);
    snprintf(name, sizeof(name), "inv_norm D=%d C=%d", D, C);
    failures += !check_close(d_inv, ref_inv.data(), name, D, 1e-5f, 0.0f);
    // backward is fp32 whatever floatX is. dy − y(y·dy) can cancel, so each element may be off
    // by a few ulp of the row's max|dy|/norm (1e-6 of it allowed) on top of 1e-5 relative
    std::vector<float> row_scale(D);
    for (int d = 0; d < D; d++) {
        float m = 0.0f;
        for (int i = 0; i < C; i++) m = fmaxf(m, fabsf(dy[(size_t)d * C + i]));
        row_scale[d] = m * ref_inv[d];
    }
    auto check_bwd = [&](const float* d_out, const char* what) {
        std::vector<float> out = from_device(d_out, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            float r = ref_dw[i];
            if (!(fabsf(out[i] - r) <= 1e-5f * fabsf(r) + 1e-6f * row_scale[i / C])) {
                if (bad < 5) printf("  %s mismatch at %zu: gpu %.8g cpu %.8g\n", what, i, out[i], r);
                bad++;
            }
        }
        printf("  %-28s %s\n", what, bad ? "FAIL" : "ok");
        return bad == 0;
    };
    sae_decoder_normalize_backward(d_dw, d_dy, d_W, d_inv, D, C, 0);
    snprintf(name, sizeof(name), "norm bwd D=%d C=%d", D, C);
    failures += !check_bwd(d_dw, name);
    sae_decoder_normalize_backward(d_dy, d_dy, d_W, d_inv, D, C, 0);  // in place
    snprintf(name, sizeof(name), "norm bwd in-place D=%d C=%d", D, C);
    failures += !check_bwd(d_dy, name);
    cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_dy)); cudaCheck(cudaFree(d_norm)); cudaCheck(cudaFree(d_inv)); cudaCheck(cudaFree(d_dw));
    return failures;
}

// c is ReLU-like (about 10% nonzero), dc small as real gradients are, l1_scale = 1.5/(N_paper·C)/2
const float L1_SCALE = (float)(1.5 / (8192.0 * 768.0) / 2.0);

template <typename floatX>
int check_l1_relu(int variant, int N, int D, float tol) {
    int failures = 0;
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    floatX* d_dc = device_alloc<floatX>(n);
    floatX* d_dpre = device_alloc<floatX>(n);
    fill_random(d_c, n, 21, -1.0f, 1.0f, 0.8f);
    fill_random(d_dc, n, 22, -2e-6f, 2e-6f);
    poison(d_dpre, n * sizeof(floatX));
    std::vector<float> c = host_random_array<floatX>(n, 21, -1.0f, 1.0f, 0.8f);
    std::vector<float> dc = host_random_array<floatX>(n, 22, -2e-6f, 2e-6f);
    std::vector<float> ref(n);
    sae_l1_relu_backward_cpu(ref.data(), dc.data(), c.data(), L1_SCALE, n);
    char name[96];
    l1_relu_variant(variant, d_dpre, d_dc, d_c, L1_SCALE, N, D);
    snprintf(name, sizeof(name), "l1relu v%d N=%d D=%d", variant, N, D);
    failures += !check_result(d_dpre, ref.data(), name, n, tol);
    l1_relu_variant(variant, d_dc, d_dc, d_c, L1_SCALE, N, D);  // in place
    snprintf(name, sizeof(name), "l1relu v%d in-place N=%d", variant, N);
    failures += !check_result(d_dc, ref.data(), name, n, tol);
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_dc)); cudaCheck(cudaFree(d_dpre));
    return failures;
}

template <typename floatX>
int check_colsum(int N, int OC, float tol) {
    int failures = 0;
    const size_t n = (size_t)N * OC;
    floatX* d_dout = device_alloc<floatX>(n);
    fill_random(d_dout, n, 31 + OC, -1.0f, 1.0f);
    std::vector<float> dout = host_random_array<floatX>(n, 31 + OC, -1.0f, 1.0f);
    std::vector<float> init = host_random_array<float>(OC, 32, -5.0f, 5.0f);
    std::vector<float> ref(OC), ref_acc(init);
    bias_grad_colsum_cpu(ref.data(), dout.data(), N, OC, false);
    bias_grad_colsum_cpu(ref_acc.data(), dout.data(), N, OC, true);
    float* d_dbias = device_alloc<float>(OC);
    char name[96];
    poison(d_dbias, OC * sizeof(float));
    bias_grad_colsum(d_dbias, d_dout, N, OC, false, 0);
    snprintf(name, sizeof(name), "colsum N=%d OC=%d", N, OC);
    failures += !check_result(d_dbias, ref.data(), name, OC, tol);
    std::vector<float> first(OC);
    cudaCheck(cudaMemcpy(first.data(), d_dbias, OC * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(d_dbias, init.data(), OC * sizeof(float), cudaMemcpyHostToDevice));
    bias_grad_colsum(d_dbias, d_dout, N, OC, true, 0);
    snprintf(name, sizeof(name), "colsum acc N=%d OC=%d", N, OC);
    failures += !check_result(d_dbias, ref_acc.data(), name, OC, tol);
    bias_grad_colsum(d_dbias, d_dout, N, OC, false, 0);  // determinism: same bits as the first run
    std::vector<float> second(OC);
    cudaCheck(cudaMemcpy(second.data(), d_dbias, OC * sizeof(float), cudaMemcpyDeviceToHost));
    bool same = memcmp(first.data(), second.data(), OC * sizeof(float)) == 0;
    printf("  %-28s %s\n", "colsum bit-identical rerun", same ? "ok" : "FAIL");
    failures += !same;
    cudaCheck(cudaFree(d_dout)); cudaCheck(cudaFree(d_dbias));
    return failures;
}

template <typename floatX>
int check_stats(int N, int D, float tol) {
    int failures = 0;
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    fill_random(d_c, n, 41 + N, -1.0f, 1.0f, 0.9f);  // ~5% nonzero: at small N many features stay unfired
    std::vector<float> c = host_random_array<floatX>(n, 41 + N, -1.0f, 1.0f, 0.9f);
    // preset flags on every 7th feature: must survive (OR, never cleared)
    std::vector<unsigned int> fired_ref(D);
    for (int d = 0; d < D; d++) fired_ref[d] = d % 7 == 3 ? 1u : 0u;
    unsigned int* d_fired = device_alloc<unsigned int>(D);
    cudaCheck(cudaMemcpy(d_fired, fired_ref.data(), D * sizeof(unsigned int), cudaMemcpyHostToDevice));
    double l1_ref = 0.5, l0_ref = 2.0;  // accumulated onto these
    sae_sparsity_l0_cpu(&l1_ref, &l0_ref, fired_ref.data(), c.data(), N, D);
    int alive_ref = 0;
    for (int d = 0; d < D; d++) alive_ref += fired_ref[d] != 0u;

    float* d_sums = device_alloc<float>(2);  // l1, l0
    int* d_alive = device_alloc<int>(1);
    const float init[2] = {0.5f, 2.0f};
    cudaCheck(cudaMemcpy(d_sums, init, sizeof(init), cudaMemcpyHostToDevice));
    poison(d_alive, sizeof(int));
    sae_sparsity_l0(d_sums, d_sums + 1, d_fired, d_c, N, D, 0);
    sae_count_alive(d_alive, d_fired, D, 0);
    float sums[2];
    int alive;
    std::vector<unsigned int> fired(D);
    cudaCheck(cudaMemcpy(sums, d_sums, sizeof(sums), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(&alive, d_alive, sizeof(int), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(fired.data(), d_fired, D * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    int bad_flags = 0;
    for (int d = 0; d < D; d++) bad_flags += (fired[d] != 0u) != (fired_ref[d] != 0u);
    bool ok_l1 = fabs(sums[0] - l1_ref) <= tol * fabs(l1_ref);
    bool ok_l0 = fabs(sums[1] - l0_ref) <= 1e-6 * l0_ref;  // exact below 2^24 (float), else one rounding
    bool ok_alive = alive == alive_ref && bad_flags == 0;
    printf("  stats N=%d D=%d: l1 %.8g (cpu %.8g) %s, l0 %.8g (cpu %.8g) %s, alive %d (cpu %d, %d flags differ) %s\n", N, D,
           sums[0], l1_ref, ok_l1 ? "ok" : "FAIL", sums[1], l0_ref, ok_l0 ? "ok" : "FAIL", alive, alive_ref, bad_flags,
           ok_alive ? "ok" : "FAIL");
    failures += !ok_l1 + !ok_l0 + !ok_alive;
    // determinism: a second accumulation from the same start gives the same bits, also when it
    // adds per-feature firing counts (the eval's, for sparsity.safetensors) onto preset ones
    std::vector<unsigned long long> count_ref(D);
    for (int d = 0; d < D; d++) count_ref[d] = d % 5;
    unsigned long long* d_count = device_alloc<unsigned long long>(D);
    cudaCheck(cudaMemcpy(d_count, count_ref.data(), D * sizeof(unsigned long long), cudaMemcpyHostToDevice));
    for (size_t i = 0; i < n; i++) count_ref[i % D] += c[i] > 0.0f;
    float again[2];
    cudaCheck(cudaMemcpy(d_sums, init, sizeof(init), cudaMemcpyHostToDevice));
    sae_sparsity_l0(d_sums, d_sums + 1, d_fired, d_c, N, D, 0, d_count);
    cudaCheck(cudaMemcpy(again, d_sums, sizeof(again), cudaMemcpyDeviceToHost));
    bool same = memcmp(sums, again, sizeof(sums)) == 0;
    printf("  %-28s %s\n", "stats bit-identical rerun", same ? "ok" : "FAIL");
    std::vector<unsigned long long> count(D);
    cudaCheck(cudaMemcpy(count.data(), d_count, D * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
    int bad_counts = 0;
    for (int d = 0; d < D; d++) bad_counts += count[d] != count_ref[d];
    printf("  %-28s %s (%d of %d differ)\n", "per-feature fire counts", bad_counts ? "FAIL" : "ok", bad_counts, D);
    failures += !same + (bad_counts != 0);
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_fired)); cudaCheck(cudaFree(d_sums)); cudaCheck(cudaFree(d_alive));
    cudaCheck(cudaFree(d_count));
    return failures;
}

// variant 6, the fused pass, on dc in place, against the unfused kernels on copies of the same
// inputs (variant 1, bias_grad_colsum, sae_sparsity_l0: each checked against the CPU above) and
// against the CPU reference for dpre (skipped at the paper shape: 377M elements on the host)
template <typename floatX>
int check_fused(int N, int D, float tol, bool accumulate) {
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    floatX* d_dc = device_alloc<floatX>(n);
    floatX* d_ref = device_alloc<floatX>(n);
    fill_random(d_c, n, 81 + N, -1.0f, 1.0f, 0.8f);
    fill_random(d_dc, n, 82 + N, -2e-6f, 2e-6f);
    float* d_sums = device_alloc<float>(4);  // fused l1, l0, then unfused l1, l0
    float* d_db = device_alloc<float>(2 * (size_t)D);
    unsigned int* d_fired = device_alloc<unsigned int>(2 * (size_t)D);
    const float init[4] = {0.5f, 2.0f, 0.5f, 2.0f};
    cudaCheck(cudaMemcpy(d_sums, init, sizeof(init), cudaMemcpyHostToDevice));
    if (accumulate) {
        fill_random(d_db, D, 83, -1e-3f, 1e-3f);
        fill_random(d_db + D, D, 83, -1e-3f, 1e-3f);
    } else {
        poison(d_db, 2 * (size_t)D * sizeof(float));
    }
    cudaCheck(cudaMemset(d_fired, 0, 2 * (size_t)D * sizeof(unsigned int)));
    // unfused, as the trainer ran them before: stats on c, then dpre out of place, then its colsum
    sae_sparsity_l0(d_sums + 2, d_sums + 3, d_fired + D, d_c, N, D, 0);
    sae_l1_relu_backward(d_ref, d_dc, d_c, L1_SCALE, N, D, 0);
    bias_grad_colsum(d_db + D, d_ref, N, D, accumulate, 0);
    sae_l1_relu_backward_stats(d_dc, d_db, d_sums, d_sums + 1, d_fired, d_c, L1_SCALE, N, D, accumulate, 0);
    int failures = 0;
    char name[96];
    snprintf(name, sizeof(name), "fused v6 N=%d D=%d%s", N, D, accumulate ? " acc" : "");
    if (n <= (size_t)64 << 20) {
        std::vector<float> c = host_random_array<floatX>(n, 81 + N, -1.0f, 1.0f, 0.8f);
        std::vector<float> dc = host_random_array<floatX>(n, 82 + N, -2e-6f, 2e-6f);
        std::vector<float> ref(n);
        sae_l1_relu_backward_cpu(ref.data(), dc.data(), c.data(), L1_SCALE, n);
        failures += !check_result(d_dc, ref.data(), name, n, tol);
        double l1_ref = 0.5, l0_ref = 2.0;
        std::vector<unsigned int> fired_ref(D, 0u);
        sae_sparsity_l0_cpu(&l1_ref, &l0_ref, fired_ref.data(), c.data(), N, D);
        float sums[2];
        cudaCheck(cudaMemcpy(sums, d_sums, sizeof(sums), cudaMemcpyDeviceToHost));
        const bool ok = fabs(sums[0] - l1_ref) <= 1e-5 * fabs(l1_ref) && fabs(sums[1] - l0_ref) <= 1e-6 * l0_ref;
        printf("  %-28s l1 %.8g (cpu %.8g), l0 %.8g (cpu %.8g) %s\n", "fused v6 stats vs cpu", sums[0], l1_ref, sums[1], l0_ref, ok ? "ok" : "FAIL");
        failures += !ok;
    }
    std::vector<float> dpre = from_device(d_dc, n), dpre_ref = from_device(d_ref, n);  // as floats: bit-equal iff the stored values are
    std::vector<float> db = from_device(d_db, 2 * (size_t)D), sums = from_device(d_sums, 4);
    std::vector<unsigned int> fired(2 * (size_t)D);
    cudaCheck(cudaMemcpy(fired.data(), d_fired, fired.size() * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    const bool same_dpre = memcmp(dpre.data(), dpre_ref.data(), n * sizeof(float)) == 0;
    const bool same_db = memcmp(db.data(), db.data() + D, D * sizeof(float)) == 0;
    const bool same_fired = memcmp(fired.data(), fired.data() + D, D * sizeof(unsigned int)) == 0;
    const bool same_l0 = sums[1] == sums[3];
    const bool close_l1 = fabs(sums[0] - sums[2]) <= 1e-5 * fabs(sums[2]);  // another summation order
    printf("  %-28s dpre %s, db_enc %s, fired %s, l0 %s (bit-identical); l1 %.8g vs %.8g %s\n", "fused v6 vs unfused",
           same_dpre ? "ok" : "FAIL", same_db ? "ok" : "FAIL", same_fired ? "ok" : "FAIL", same_l0 ? "ok" : "FAIL", sums[0], sums[2],
           close_l1 ? "ok" : "FAIL");
    failures += !same_dpre + !same_db + !same_fired + !same_l0 + !close_l1;
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_dc)); cudaCheck(cudaFree(d_ref)); cudaCheck(cudaFree(d_sums));
    cudaCheck(cudaFree(d_db)); cudaCheck(cudaFree(d_fired));
    return failures;
}

// the L1 + ReLU backward at the full paper shape: too big for a full host regeneration, so
// compare a sample of whole rows (first, last, and 62 spread over the middle)
template <typename floatX>
int check_l1_relu_sampled(int variant, int N, int D, float tol) {
    const size_t n = (size_t)N * D;
    floatX* d_c = device_alloc<floatX>(n);
    floatX* d_dc = device_alloc<floatX>(n);
    floatX* d_dpre = device_alloc<floatX>(n);
    fill_random(d_c, n, 51, -1.0f, 1.0f, 0.8f);
    fill_random(d_dc, n, 52, -2e-6f, 2e-6f);
    poison(d_dpre, n * sizeof(floatX));
    l1_relu_variant(variant, d_dpre, d_dc, d_c, L1_SCALE, N, D);
    int failures = 0;
    std::vector<float> ref(D);
    for (int k = 0; k < 64; k++) {
        const int row = k == 63 ? N - 1 : (int)((long long)k * (N - 1) / 63);
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)row * D + d;
            float ci = host_random<floatX>(i, 51, -1.0f, 1.0f, 0.8f), dci = host_random<floatX>(i, 52, -2e-6f, 2e-6f);
            ref[d] = ci > 0.0f ? dci + L1_SCALE : 0.0f;
        }
        char name[96];
        snprintf(name, sizeof(name), "l1relu v%d N=%d row %d", variant, N, row);
        if (k == 0 || k == 63) {
            failures += !check_result(d_dpre + (size_t)row * D, ref.data(), name, D, tol);
        } else {  // quiet for the middle rows unless they fail
            std::vector<float> out = from_device(d_dpre + (size_t)row * D, D);
            int bad = 0;
            for (int d = 0; d < D; d++) bad += !(fabs(out[d] - ref[d]) <= tol * (fabs(ref[d]) + 0.1f * (L1_SCALE + 2e-6f)));
            if (bad) { printf("  %s: %d mismatches FAIL\n", name, bad); failures++; }
        }
    }
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_dc)); cudaCheck(cudaFree(d_dpre));
    return failures;
}

// big: also the full paper-shape checks (host regeneration of 377M elements; done for bf16,
// the training type, to keep the run short)
template <typename floatX>
int run_checks(int only, float tol, bool big) {
    int failures = 0;
    if (!only) {
        const int norm_shapes[][2] = {{1, 1}, {37, 100}, {1000, 768}, {46080, 768}};
        for (auto& s : norm_shapes) failures += check_normalize<floatX>(s[0], s[1], tol);
    }
    const int nd_shapes[][2] = {{1, 1}, {3, 1000}, {37, 4099}, {256, 46080}};
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        for (auto& s : nd_shapes) failures += check_l1_relu<floatX>(variant, s[0], s[1], tol);
    }
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        failures += check_l1_relu_sampled<floatX>(variant, 8192, 46080, tol);
    }
    if (!only || only == 6) {
        const bool small = getenv("SAE_SMALL") != nullptr;
        const int fused_shapes[][2] = {{1, 1}, {3, 1000}, {3, 1001}, {37, 4099}, {256, 46080}, {2, (1 << 20) + 1000}, {2, (1 << 20) + 1001}};
        for (auto& s : fused_shapes) {
            if (small && (size_t)s[0] * s[1] > (size_t)256 * 46080) continue;
            failures += check_fused<floatX>(s[0], s[1], tol, false);
            failures += check_fused<floatX>(s[0], s[1], tol, true);
        }
        if (big && !small) failures += check_fused<floatX>(8192, 46080, tol, true);
    }
    if (only) return failures;
    const int colsum_shapes[][2] = {{1, 1}, {7, 33}, {37, 4099}, {1000, 768}, {256, 46080}, {8192, 768}};
    for (auto& s : colsum_shapes) failures += check_colsum<floatX>(s[0], s[1], 1e-5f);  // fp32 sums whatever floatX
    if (big) failures += check_colsum<floatX>(8192, 46080, 1e-5f);
    const int stats_shapes[][2] = {{1, 1}, {3, 1000}, {3, 1001}, {37, 4099}, {256, 46080}, {2, (1 << 20) + 1001}, {1, (1 << 22) + 3}};
    for (auto& s : stats_shapes) failures += check_stats<floatX>(s[0], s[1], 1e-5f);
    if (big) failures += check_stats<floatX>(8192, 46080, 1e-5f);
    return failures;
}

// the encoder forward, variants 3 to 5

template <typename floatX>
int check_encoder(int variant, int N, int C, int D, int sample_rows, float rtol) {
    const float w_range = 1.0f / sqrtf((float)C);  // nn.Linear's init range, as the SAE's
    floatX* d_x = device_alloc<floatX>((size_t)N * C);
    floatX* d_W = device_alloc<floatX>((size_t)C * D);
    float* d_b = device_alloc<float>(D);
    floatX* d_c = device_alloc<floatX>((size_t)N * D);
    fill_random(d_x, (size_t)N * C, 701, -2.0f, 2.0f);
    fill_random(d_W, (size_t)C * D, 702, -w_range, w_range);
    fill_random(d_b, (size_t)D, 703, -w_range, w_range);
    poison(d_c, (size_t)N * D * sizeof(floatX));
    floatX* d_b_x = device_alloc<floatX>(D);  // variant 5's bias, in the output's type
    fill_random(d_b_x, (size_t)D, 703, -w_range, w_range);
    if (variant == 5) {
        encoder_cublaslt(d_c, d_x, d_W, d_b_x, N, C, D);
    } else {
        encoder_matmul(d_c, d_x, d_W, N, C, D);
        bias_relu_variant(variant, d_c, d_b, N, D);
    }

    std::vector<float> W = host_random_array<floatX>((size_t)C * D, 702, -w_range, w_range);
    std::vector<float> b = variant == 5 ? host_random_array<floatX>(D, 703, -w_range, w_range)
                                        : host_random_array<float>(D, 703, -w_range, w_range);
    std::vector<float> x(C), c_ref(D), mag(D);
    const int rows = sample_rows > 0 ? sample_rows : N;
    size_t bad = 0, positive = 0;
    double max_err = 0.0;
    for (int r = 0; r < rows; r++) {
        const int row = sample_rows > 0 ? (r == rows - 1 ? N - 1 : (int)((long long)r * N / rows)) : r;
        for (int k = 0; k < C; k++) x[k] = host_random<floatX>((size_t)row * C + k, 701, -2.0f, 2.0f);
        sae_encoder_forward_row_cpu(c_ref.data(), mag.data(), x.data(), W.data(), b.data(), C, D);
        std::vector<float> c = from_device(d_c + (size_t)row * D, D);
        for (int j = 0; j < D; j++) {
            double err = fabs(c[j] - c_ref[j]);
            max_err = fmax(max_err, err);
            positive += c_ref[j] > 0.0f;
            if (!(err <= rtol * mag[j])) {
                if (bad < 5) printf("  mismatch row %d col %d: gpu %.8g cpu %.8g (magnitude %.3g)\n", row, j, c[j], c_ref[j], mag[j]);
                bad++;
            }
        }
    }
    printf("  encoder v%d N=%d C=%d D=%d (%d rows, %.0f%% of c > 0): max abs err %.2e %s\n", variant, N, C, D, rows,
           100.0 * positive / ((double)rows * D), max_err, bad ? "FAIL" : "ok");
    cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_b_x));
    return bad > 0;
}

template <typename floatX>
int run_encoder_checks(int only, float rtol) {
    int failures = 0;
    for (int variant = 3; variant <= 5; variant++) {
        if (only && variant != only) continue;
        if (variant != 5) {
            failures += check_encoder<floatX>(variant, 37, 100, 1000, 0, rtol);
            failures += check_encoder<floatX>(variant, 5, 768, 4099, 0, rtol);
        }
        failures += check_encoder<floatX>(variant, 64, 768, 4096, 0, rtol);
        failures += check_encoder<floatX>(variant, 8192, 768, 46080, 8, rtol);
    }
    return failures;
}

int gpu_checks(int only) {
    int failures = 0;
    if (!only || only <= 2 || only == 6) {
        printf("fp32:\n");
        failures += run_checks<float>(only, 1e-5f, false);
        printf("bf16:\n");
        failures += run_checks<bf16>(only, 1e-2f, true);
    }
    if (!only || (only >= 3 && only <= 5)) {
        cublasCheck(cublasCreate(&cublas_handle));
        matmul_init();
        printf("encoder, fp32:\n");
        failures += run_encoder_checks<float>(only, 1e-5f);
        printf("encoder, bf16:\n");
        failures += run_encoder_checks<bf16>(only, 8e-3f);
        cublasCheck(cublasDestroy(cublas_handle));
        matmul_destroy();
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing at the paper shape; GB/s counts each input read once and each output written once

template <typename floatX>
void time_kernels(int only) {
    const int N = 8192, C = 768, D = 46080;
    const size_t nd = (size_t)N * D, dc_ = (size_t)D * C;
    const size_t X = sizeof(floatX);
    floatX *d_c = device_alloc<floatX>(nd), *d_dc = device_alloc<floatX>(nd), *d_dpre = device_alloc<floatX>(nd);
    floatX* d_W_norm = device_alloc<floatX>(dc_);
    float *d_W = device_alloc<float>(dc_), *d_dW = device_alloc<float>(dc_), *d_dW_out = device_alloc<float>(dc_);
    float* d_inv = device_alloc<float>(D);
    float* d_bias = device_alloc<float>(D);
    float* d_sums = device_alloc<float>(2);
    unsigned int* d_fired = device_alloc<unsigned int>(D);
    fill_random(d_c, nd, 61, -1.0f, 1.0f, 0.9f);
    fill_random(d_dc, nd, 62, -1e-6f, 1e-6f);
    fill_random(d_W, dc_, 63, -1.0f, 1.0f);
    fill_random(d_dW, dc_, 64, -1.0f, 1.0f);
    cudaCheck(cudaMemset(d_fired, 0, D * sizeof(unsigned int)));
    cudaCheck(cudaMemset(d_sums, 0, 2 * sizeof(float)));
    const char* tn = type_name<floatX>();
    char what[64];
    float ms;
    if (!only) {
        ms = benchmark_kernel(3, 20, [&] { sae_decoder_normalize(d_W_norm, d_inv, d_W, D, C, 0); });
        snprintf(what, sizeof(what), "%s normalize fwd (D,C)", tn);
        report_bandwidth(what, ms, dc_ * (4.0 + X) + D * 4.0);
        ms = benchmark_kernel(3, 20, [&] { sae_decoder_normalize_backward(d_dW_out, d_dW, d_W, d_inv, D, C, 0); });
        snprintf(what, sizeof(what), "%s normalize bwd (D,C)", tn);
        report_bandwidth(what, ms, dc_ * 12.0 + D * 4.0);
    }
    for (int variant = 1; variant <= 2; variant++) {
        if (only && variant != only) continue;
        snprintf(what, sizeof(what), "%s l1+relu bwd v%d (N,D)", tn, variant);
        ms = benchmark_kernel(3, 20, [&] { l1_relu_variant(variant, d_dpre, d_dc, d_c, L1_SCALE, N, D); });
        report_bandwidth(what, ms, nd * 3.0 * X);
    }
    if (!only || only == 6) {  // the fused pass against the three it replaces, in place over a scratch copy of dc
        const float ms1 = benchmark_kernel(3, 20, [&] {
            sae_sparsity_l0(d_sums, d_sums + 1, d_fired, d_c, N, D, 0);
            sae_l1_relu_backward(d_dpre, d_dpre, d_c, L1_SCALE, N, D, 0);
            bias_grad_colsum(d_bias, d_dpre, N, D, false, 0);
        });
        snprintf(what, sizeof(what), "%s unfused v1+colsum+stats", tn);
        report_bandwidth(what, ms1, nd * 5.0 * X + D * 4.0);
        const float ms6 = benchmark_kernel(3, 20, [&] {
            sae_l1_relu_backward_stats(d_dpre, d_bias, d_sums, d_sums + 1, d_fired, d_c, L1_SCALE, N, D, false, 0);
        });
        snprintf(what, sizeof(what), "%s fused v6 (N,D)", tn);
        report_bandwidth(what, ms6, nd * 3.0 * X + D * 4.0);
        printf("  %s fused v6 is %.2fx the unfused three\n", tn, ms1 / ms6);
    }
    if (!only) {
        ms = benchmark_kernel(3, 20, [&] { bias_grad_colsum(d_bias, d_dc, N, D, false, 0); });
        snprintf(what, sizeof(what), "%s colsum db_enc (N,D)", tn);
        report_bandwidth(what, ms, nd * (double)X + D * 4.0);
        ms = benchmark_kernel(3, 20, [&] { bias_grad_colsum(d_bias, d_dc, N, C, false, 0); });
        snprintf(what, sizeof(what), "%s colsum db_dec (N,C)", tn);
        report_bandwidth(what, ms, (double)N * C * X + C * 4.0);
        ms = benchmark_kernel(3, 20, [&] { sae_sparsity_l0(d_sums, d_sums + 1, d_fired, d_c, N, D, 0); });
        snprintf(what, sizeof(what), "%s sparsity/l0/fired (N,D)", tn);
        report_bandwidth(what, ms, nd * (double)X + D * 4.0);
    }
    cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_dc)); cudaCheck(cudaFree(d_dpre)); cudaCheck(cudaFree(d_W_norm));
    cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_dW)); cudaCheck(cudaFree(d_dW_out)); cudaCheck(cudaFree(d_inv)); cudaCheck(cudaFree(d_bias));
    cudaCheck(cudaFree(d_sums)); cudaCheck(cudaFree(d_fired));
}

// the encoder: the matmul in TFLOP/s, the extra passes of variants 3 and 4 in GB/s

template <typename floatX>
void time_encoder(int only) {
    const int N = 8192, C = 768, D = 46080;
    const size_t X = sizeof(floatX), nd = (size_t)N * D;
    floatX* d_x = device_alloc<floatX>((size_t)N * C);
    floatX* d_W = device_alloc<floatX>((size_t)C * D);
    float* d_b = device_alloc<float>(D);
    floatX* d_b_x = device_alloc<floatX>(D);
    floatX* d_c = device_alloc<floatX>(nd);
    fill_random(d_x, (size_t)N * C, 1, -2.0f, 2.0f);
    fill_random(d_W, (size_t)C * D, 2, -0.036f, 0.036f);
    fill_random(d_b, (size_t)D, 3, -0.036f, 0.036f);
    fill_random(d_b_x, (size_t)D, 3, -0.036f, 0.036f);
    const double tflop = 2.0 * N * C * D / 1e12;
    float ms;
    if (!only || only == 3 || only == 4) {  // the matmul the extra passes follow
        ms = benchmark_kernel(2, 10, [&] { encoder_matmul(d_c, d_x, d_W, N, C, D); });
        printf("  %s cublasGemmEx x·W_enc        %8.3f ms  %7.1f TFLOP/s\n", type_name<floatX>(), ms, tflop / (ms / 1e3));
    }
    for (int variant = 3; variant <= 4; variant++) {
        if (only && variant != only) continue;
        char what[64];
        snprintf(what, sizeof(what), "%s bias+relu v%d (%s)", type_name<floatX>(), variant, variant == 3 ? "two passes" : "one pass");
        ms = benchmark_kernel(3, 20, [&] { bias_relu_variant(variant, d_c, d_b, N, D); });
        report_bandwidth(what, ms, (variant == 3 ? 4.0 : 2.0) * nd * X);  // each pass reads and writes c
    }
    if (!only || only == 5) {
        ms = benchmark_kernel(2, 10, [&] { encoder_cublaslt(d_c, d_x, d_W, d_b_x, N, C, D); });
        printf("  %s v5 cuBLASLt RELU_BIAS       %8.3f ms  %7.1f TFLOP/s (matmul + bias + relu)\n", type_name<floatX>(), ms,
               tflop / (ms / 1e3));
    }
    cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_b_x));
}

void timing(int only) {
    if (getenv("SAE_SMALL")) return;
    if (!only || only <= 2 || only == 6) {
        printf("timing, N=8192 C=768 D=46080 (median of 20):\n");
        time_kernels<float>(only);
        time_kernels<bf16>(only);
    }
    if (!only || (only >= 3 && only <= 5)) {
        cublasCheck(cublasCreate(&cublas_handle));
        matmul_init();
        printf("timing, encoder forward, N=8192 C=768 D=46080:\n");
        time_encoder<float>(only);
        time_encoder<bf16>(only);
        cublasCheck(cublasDestroy(cublas_handle));
        matmul_destroy();
    }
}

int main(int argc, char** argv) { return bench_main(argc, argv, "sae", 6, cpu_self_test, gpu_checks, timing); }
