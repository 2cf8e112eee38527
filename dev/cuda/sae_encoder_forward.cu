/*
SAE encoder forward, c (N,D) = relu(x (N,C) · W_enc (C,D) + b_enc (D)), done as a plain cuBLAS
matmul plus a pass for the bias and the ReLU. Checks the layout (W_enc row-major (C,D) is used
without a transpose: in cuBLAS's column-major terms cᵀ = W_enc_cm · xᵀ with m = D, n = N, k = C,
lda = D, ldb = C, ldc = D) and llmc's add_bias_relu_inplace, and times what the extra pass costs.
The trainer's path is variant 3, cuBLASLt's RELU_BIAS epilogue through llmc/matmul.cuh (no extra
pass, the bias in the output's type as the trainer's cast copy of b_enc).

Build and run:
  cd dev/cuda && make sae_encoder_forward
  ./sae_encoder_forward         GPU checks (fp32 and bf16), then timings
  ./sae_encoder_forward cpu     CPU self-test only (no GPU needed)
Variants:
  1  cublasGemmEx writes x·W_enc into c, then bias and ReLU as two separate passes
     (add_bias_relu_inplace without ReLU, then a ReLU kernel)
  2  cublasGemmEx, then bias + ReLU fused in one pass (add_bias_relu_inplace with relu)
  3  the trainer's call: matmul_cublaslt(c, x, W_enc, b_enc, N, D, C, no transposes, RELU_BIAS)
     with b_enc cast to floatX (run on the 16-byte aligned shapes only: cuBLASLt may have no
     algorithm for odd row strides, and this bench should not die on that)
Checks: (N,C,D) = (37,100,1000) (5,768,4099) (variants 1, 2) and (64,768,4096) (all) in full,
(8192,768,46080) on 8 rows (all); c poisoned first. Tolerance per element:
rtol · (Σ_k |x_k W_kj| + |b_j|) with rtol 1e-5 (fp32: cuBLAS in true fp32 sums in another order
than the double reference) or 8e-3 (bf16: the matmul output and the biased value are each
rounded to bf16, 2^-9 relative each). Exit code 1 on any mismatch.
*/
#include <string.h>
#include <cublas_v2.h>
#include "common.h"
#include "../../llmc/sae.cuh"
#include "../../llmc/matmul.cuh"

// ----------------------------------------------------------------------------
// CPU reference for one token: c (D) and the magnitude Σ_k |x_k W_kj| + |b_j| for the tolerance

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

int cpu_self_test() {
    // tiny example by hand: x = (1, 2), W = [[1, -1, 0], [0.5, 0.25, -1]], b = (0, 0.25, 1)
    const float x[2] = {1, 2}, W[6] = {1, -1, 0, 0.5f, 0.25f, -1}, b[3] = {0, 0.25f, 1};
    float c[3], mag[3];
    sae_encoder_forward_row_cpu(c, mag, x, W, b, 2, 3);
    const float expect[3] = {2.0f, 0.0f, 0.0f};  // (1+1+0, relu(-1+0.5+0.25), relu(0-2+1))
    bool ok = memcmp(c, expect, sizeof(c)) == 0;
    printf("  cpu encoder reference on a hand example: %s\n", ok ? "ok" : "FAIL");
    return !ok;
}

// ----------------------------------------------------------------------------
// the matmul and the variants

template <typename T>
T* device_alloc(size_t n) {
    T* d;
    cudaCheck(cudaMalloc(&d, std::max(n, (size_t)1) * sizeof(T)));
    return d;
}

cublasHandle_t cublas_handle;

// c (N,D) = x (N,C) · W_enc (C,D), row-major; fp32 accumulation (true fp32 for fp32 operands)
template <typename floatX>
void encoder_matmul(floatX* c, const floatX* x, const floatX* W_enc, int N, int C, int D) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cuda_dtype<floatX>();
    cublasCheck(cublasGemmEx(cublas_handle, CUBLAS_OP_N, CUBLAS_OP_N, D, N, C, &alpha, W_enc, t, D, x, t, C, &beta, c, t, D,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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

template <typename floatX>
void bias_relu_variant(int variant, floatX* c, const float* b_enc, int N, int D) {
    if (variant == 1) {
        add_bias_relu_inplace(c, b_enc, N, D, false, 0);
        const size_t n = (size_t)N * D;
        relu_inplace_kernel<<<(unsigned)std::min(ceil_div(n, (size_t)512), (size_t)(1 << 20)), 512>>>(c, n);
        cudaLaunchCheck();
    } else {
        add_bias_relu_inplace(c, b_enc, N, D, true, 0);
    }
}

// ----------------------------------------------------------------------------
// checks

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
    floatX* d_b_x = device_alloc<floatX>(D);  // variant 3's bias, in the output's type
    fill_random(d_b_x, (size_t)D, 703, -w_range, w_range);
    if (variant == 3) {
        encoder_cublaslt(d_c, d_x, d_W, d_b_x, N, C, D);
    } else {
        encoder_matmul(d_c, d_x, d_W, N, C, D);
        bias_relu_variant(variant, d_c, d_b, N, D);
    }

    std::vector<float> W = host_random_array<floatX>((size_t)C * D, 702, -w_range, w_range);
    std::vector<float> b = variant == 3 ? host_random_array<floatX>(D, 703, -w_range, w_range)
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
int run_checks(float rtol) {
    int failures = 0;
    for (int variant = 1; variant <= 3; variant++) {
        if (variant != 3) {
            failures += check_encoder<floatX>(variant, 37, 100, 1000, 0, rtol);
            failures += check_encoder<floatX>(variant, 5, 768, 4099, 0, rtol);
        }
        failures += check_encoder<floatX>(variant, 64, 768, 4096, 0, rtol);
        failures += check_encoder<floatX>(variant, 8192, 768, 46080, 8, rtol);
    }
    return failures;
}

// ----------------------------------------------------------------------------
// timing at the paper shape: the matmul in TFLOP/s, the extra passes in GB/s against ~3.0 TB/s

template <typename floatX>
void run_benchmarks() {
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
    float ms = benchmark_kernel(2, 10, [&] { encoder_matmul(d_c, d_x, d_W, N, C, D); });
    printf("  %s cublasGemmEx x·W_enc       %8.3f ms  %7.1f TFLOP/s\n", type_name<floatX>(), ms, 2.0 * N * C * D / (ms / 1e3) / 1e12);
    ms = benchmark_kernel(2, 10, [&] { encoder_cublaslt(d_c, d_x, d_W, d_b_x, N, C, D); });
    printf("  %s v3 cuBLASLt RELU_BIAS      %8.3f ms  %7.1f TFLOP/s (matmul + bias + relu)\n", type_name<floatX>(), ms,
           2.0 * N * C * D / (ms / 1e3) / 1e12);
    for (int variant = 1; variant <= 2; variant++) {
        const double bytes = (variant == 1 ? 4.0 : 2.0) * nd * X;  // each pass reads and writes c
        ms = benchmark_kernel(3, 20, [&] { bias_relu_variant(variant, d_c, d_b, N, D); });
        printf("  %s bias+relu v%d (%s)  %8.3f ms  %7.0f GB/s  (%.0f%% of 3.0 TB/s)\n", type_name<floatX>(), variant,
               variant == 1 ? "two passes" : "one pass  ", ms, bytes / (ms / 1e3) / 1e9, 100.0 * bytes / (ms / 1e3) / 3.0e12);
    }
    cudaCheck(cudaFree(d_x)); cudaCheck(cudaFree(d_W)); cudaCheck(cudaFree(d_b)); cudaCheck(cudaFree(d_c)); cudaCheck(cudaFree(d_b_x));
}

int main(int argc, char** argv) {
    const bool cpu_only = argc > 1 && strcmp(argv[1], "cpu") == 0;
    printf("CPU self-test:\n");
    int failures = cpu_self_test();
    if (!cpu_only) {
        cublasCheck(cublasCreate(&cublas_handle));
        matmul_init();
        printf("fp32:\n");
        failures += run_checks<float>(1e-5f);
        printf("bf16:\n");
        failures += run_checks<bf16>(8e-3f);
        printf("timing, N=8192 C=768 D=46080:\n");
        run_benchmarks<float>();
        run_benchmarks<bf16>();
        cublasCheck(cublasDestroy(cublas_handle));
        matmul_destroy();
    }
    printf("sae_encoder_forward: %s (%d failed checks)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
