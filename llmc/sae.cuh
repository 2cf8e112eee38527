/*
SAE kernels (SPEC §3, the sparsity term of §4, L0 and alive of §6): everything around the
SAE's four matmuls. The matmuls themselves go through matmul_cublaslt (llmc/matmul.cuh); this
file holds the decoder normalisation and its backward, the L1 + ReLU backward, the bias
gradients, and the sparsity / L0 / fired statistics.

Shapes: N = B*T tokens, C = d_in, D = d_sae.
  W_enc (C,D) b_enc (D) W_dec (D,C) raw b_dec (C), all fp32 masters (grads and Adam state too).
  W_dec_norm (D,C) floatX: the row-normalised dictionary the decoder matmul reads.
  x (N,C), c (N,D), x_hat (N,C): floatX activations.

Dtypes in bf16 mode: c, dc and dpre (N,D) are all floatX (bf16): at N=8192, D=46080 each is
377M elements, 755 MB in bf16 instead of 1.5 GB in fp32. The L1 + ReLU backward computes in
fp32 and rounds once on store. Bias gradients and statistics always accumulate in fp32.

The matmuls, in matmul_cublaslt's row-major terms (D (m,n) = op(A) (m,k) · op(B) (k,n); transA
means A is stored (k,m), transB that B is stored (n,k)). W_enc is stored (C,D) = [in, out], so
unlike nn.Linear's [out, in] weights it is used without a transpose:
  encoder   c (N,D)           = relu(x (N,C) · W_enc (C,D) + b_enc)  m=N n=D k=C, RELU_BIAS
  decoder   x_hat (N,C)       = c (N,D) · W_dec_norm (D,C) + b_dec   m=N n=C k=D, BIAS
  backward  dc (N,D)          = dx_hat (N,C) · W_dec_normᵀ          m=N n=D k=C, transB
            dW_dec_norm (D,C) = cᵀ · dx_hat            (fp32 out)    m=D n=C k=N, transA, accumulate
            dW_enc (C,D)      = xᵀ · dpre              (fp32 out)    m=C n=D k=N, transA, accumulate
            db_dec = colsum(dx_hat)                                  bias_grad_colsum below
            dpre, db_enc = colsum(dpre), Σ|c|, L0, fired             one fused pass, sae_fused.cuh
            dW_dec = sae_decoder_normalize_backward(dW_dec_norm)    once per update (it is linear
                     in dW_dec_norm, and W_dec is fixed within an update)
(cuBLAS itself is column-major: a row-major (R,K) matrix is a column-major (K,R) one, so the
encoder is cᵀ (D,N) = W_enc_cm (D,C) · xᵀ (C,N) with lda = D, ldb = C, ldc = D, both ops N, and
the bias runs along cuBLAS's m = D; dev/cuda/sae.cu checks that layout, and the trainer's
RELU_BIAS call at the paper shape.) The launchers below carry the CPU trainer's names:
sae_encoder_forward, sae_decoder_forward, and the backward split in two, sae_decoder_backward
and sae_encoder_backward, with the L1 + ReLU backward between them: in training the fused
sae_l1_relu_backward_stats, which also makes db_enc and the sparsity statistics (the unfused
sae_l1_relu_backward, bias_grad_colsum and sae_sparsity_l0 stay: the eval and dev/cuda use them,
and they are the fused pass's references). cuBLASLt's bias has the
output's type, so in bf16 mode the trainer passes bf16 copies of b_enc / b_dec to the epilogues
(dev/cuda/sae.cu also times the alternative: a plain matmul, then the fp32 bias and the ReLU
added by extra passes over c).

Determinism: no float atomics anywhere in this file (the one atomic adds integers). Reductions
to scalars write one partial per block into a static device array and sum the partials in a
fixed order (deterministic_sum), so the same inputs give the same bits on every run.
*/
#pragma once
#include <algorithm>
#include "cuda_common.cuh"
#include "matmul.cuh"
#include "sae_fused.cuh"

#define SAE_NORM_EPS 1e-12f  // F.normalize's eps: rows are divided by max(||row||, eps)

// ----------------------------------------------------------------------------
// decoder normalisation: W_dec_norm = W_dec with each row divided by max(||row||, 1e-12)

// One warp per row: C (768) is 24 elements per lane, and the row's sum of squares is one warp
// reduction. The division mirrors F.normalize (x / max(norm, eps)), so fp32 mode matches
// PyTorch to rounding of the norm's summation order.
template <typename floatX>
__global__ void sae_decoder_normalize_kernel(floatX* W_dec_norm, float* inv_norm, const float* W_dec, int D, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= D) return;  // row is the same for all 32 lanes: whole warps leave together
    const float* w = W_dec + (size_t)row * C;
    float sum_sq = 0.0f;
    for (int i = lane; i < C; i += 32) sum_sq += w[i] * w[i];
    sum_sq = warp_reduce_sum(sum_sq);
    const float norm = fmaxf(sqrtf(sum_sq), SAE_NORM_EPS);
    floatX* y = W_dec_norm + (size_t)row * C;
    for (int i = lane; i < C; i += 32) y[i] = from_float<floatX>(w[i] / norm);
    if (lane == 0) inv_norm[row] = 1.0f / norm;
}

// W_dec_norm (D,C) floatX out; inv_norm (D) fp32 out, 1/max(||row||, eps), kept for the backward;
// W_dec (D,C) fp32 raw in
template <typename floatX>
void sae_decoder_normalize(floatX* W_dec_norm, float* inv_norm, const float* W_dec, int D, int C, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (D == 0) return;
    const int block_size = 256;  // 8 rows per block
    sae_decoder_normalize_kernel<<<ceil_div(D, block_size / 32), block_size, 0, stream>>>(W_dec_norm, inv_norm, W_dec, D, C);
    cudaLaunchCheck();
}

// Backward of y = w / n, n = max(||w||, eps), one row w at a time.
//   ||w|| > eps:  dn/dw = w/||w|| = y, so dy_i/dw_j = (δ_ij − y_i y_j) / n and
//                 dw = (dy − y (y·dy)) / n
//   ||w|| <= eps: n = eps is a constant, dw = dy / eps
// Both cases are dw = (dy − [||w|| > eps] · y (y·dy)) · inv_norm with y = w · inv_norm.
// The norm is recomputed here (the row is read anyway for w·dy) to decide the branch exactly.
// In place (dW_dec == dW_dec_norm) is fine: element i is read and then written by one lane.
static __global__ void sae_decoder_normalize_backward_kernel(float* dW_dec, const float* dW_dec_norm, const float* W_dec,
                                                             const float* inv_norm, int D, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= D) return;
    const float* w = W_dec + (size_t)row * C;
    const float* dy = dW_dec_norm + (size_t)row * C;
    float* dw = dW_dec + (size_t)row * C;
    float sum_sq = 0.0f, w_dot_dy = 0.0f;
    for (int i = lane; i < C; i += 32) {
        sum_sq += w[i] * w[i];
        w_dot_dy += w[i] * dy[i];
    }
    sum_sq = warp_reduce_sum(sum_sq);
    w_dot_dy = warp_reduce_sum(w_dot_dy);
    const float inv = inv_norm[row];
    const float y_dot_dy = sqrtf(sum_sq) > SAE_NORM_EPS ? w_dot_dy * inv : 0.0f;
    for (int i = lane; i < C; i += 32) {
        const float y = w[i] * inv;
        dw[i] = (dy[i] - y * y_dot_dy) * inv;
    }
}

// dW_dec (D,C) fp32 out (overwritten, not accumulated); dW_dec_norm (D,C) fp32 in, may equal
// dW_dec; W_dec (D,C) fp32 raw; inv_norm (D) from sae_decoder_normalize of the same W_dec
inline void sae_decoder_normalize_backward(float* dW_dec, const float* dW_dec_norm, const float* W_dec, const float* inv_norm,
                                           int D, int C, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (D == 0) return;
    const int block_size = 256;
    sae_decoder_normalize_backward_kernel<<<ceil_div(D, block_size / 32), block_size, 0, stream>>>(dW_dec, dW_dec_norm, W_dec, inv_norm, D, C);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// backward through the sparsity term and the ReLU

// sparsity = λ/(N·C) · Σ|c| (per micro-batch, then / grad_accum), so d sparsity/dc = l1_scale ·
// sign(c) with l1_scale = λ/(N·C)/grad_accum; c >= 0 after the ReLU and torch's sign(0) = 0, so
// the L1 term adds l1_scale where c > 0. The ReLU passes gradient where its output c > 0
// (torch's threshold_backward), so both share one mask:
//   dpre = (dc + l1_scale) · [c > 0]
// Elementwise, in place allowed (dpre == dc): each element is read then written by one thread.
template <typename floatX>
__global__ void sae_l1_relu_backward_kernel(floatX* dpre, const floatX* dc, const floatX* c, float l1_scale, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float ci = to_float(c[i]);
        dpre[i] = from_float<floatX>(ci > 0.0f ? to_float(dc[i]) + l1_scale : 0.0f);
    }
}

// dpre (N,D) out, dc (N,D) in (may equal dpre), c (N,D) the encoder output; all floatX.
// l1_scale = sparsity_coeff / (N·C) / grad_accum, computed in double on the host.
template <typename floatX>
void sae_l1_relu_backward(floatX* dpre, const floatX* dc, const floatX* c, float l1_scale, int N, int D, cudaStream_t stream) {
    NVTX_RANGE_FN();
    const size_t n = (size_t)N * D;
    if (n == 0) return;
    const int block_size = 512;
    const size_t grid = std::min(ceil_div(n, (size_t)block_size), (size_t)(1 << 20));  // grid-stride covers the rest
    sae_l1_relu_backward_kernel<<<(unsigned)grid, block_size, 0, stream>>>(dpre, dc, c, l1_scale, n);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// bias gradients: dbias[j] (+)= Σ_n dout[n, j], deterministic

// One block owns 32 columns and all N rows: threadIdx.x picks the column (a warp reads 32
// consecutive elements of a row), threadIdx.y one of 32 row lanes (rows y, y+32, ...). The 32
// row-lane partials are then added in a fixed order, so no atomics and no second kernel.
// D = 46080 gives 1440 blocks of 1024 threads, enough to keep every SM streaming.
#define COLSUM_ROWS 32
template <typename floatX>
__global__ void bias_grad_colsum_kernel(float* dbias, const floatX* dout, int N, int OC, bool accumulate) {
    __shared__ float partial[COLSUM_ROWS][33];  // +1 pad: the column read below hits distinct banks
    const int col = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (col < OC) {
        #pragma unroll 4
        for (int row = threadIdx.y; row < N; row += COLSUM_ROWS) sum += to_float(dout[(size_t)row * OC + col]);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < OC) {
        float total = 0.0f;
        for (int k = 0; k < COLSUM_ROWS; k++) total += partial[k][threadIdx.x];
        dbias[col] = accumulate ? dbias[col] + total : total;
    }
}

// dbias (OC) fp32 out, overwritten or (accumulate) added to; dout (N,OC) floatX.
// Used for db_enc = colsum(dpre) (N,D) and db_dec = colsum(dx_hat) (N,C).
template <typename floatX>
void bias_grad_colsum(float* dbias, const floatX* dout, int N, int OC, bool accumulate, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (OC == 0) return;
    dim3 block(32, COLSUM_ROWS);
    bias_grad_colsum_kernel<<<ceil_div(OC, 32), block, 0, stream>>>(dbias, dout, N, OC, accumulate);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// sparsity statistics: Σ|c|, count(c > 0), and which features fired

// Grid (X, R): X column tiles of 256 threads, R row slices. Thread (x, y, t) owns columns
// col = 256·x + t, col + 256·X, ... (one column unless D > 256·4096 = 2^20: the largest
// dictionaries take several tiles per thread) and, in each, rows y, y + R, ...; it ORs each
// column's fired flag locally and stores it once, and adds the optional per-feature count with
// one 64-bit integer atomic per column (integer sums are exact, so any order gives the same
// total). Each block writes an L1 partial (fp32) and an L0 partial (a 64-bit count: exact at
// any N·D); a second one-block kernel adds each in a fixed order. The grid depends only on
// (N, D), so the same inputs give the same bits.
#define SAE_STATS_BLOCK 256
#define SAE_STATS_MAX_PARTIALS 4096
// Scratch for the per-block partials, one pair of arrays for the whole program. Rule: call
// sae_sparsity_l0 from one stream at a time (two calls in flight at once would share these
// partials). The trainer launches everything on stream 0, so it holds.
static __device__ float sae_l1_partials[SAE_STATS_MAX_PARTIALS];
static __device__ unsigned long long sae_l0_partials[SAE_STATS_MAX_PARTIALS];

template <typename floatX>
__global__ void sae_sparsity_l0_kernel(float* l1_partials, unsigned long long* l0_partials, unsigned int* fired,
                                       unsigned long long* fire_count, const floatX* c, int N, int D) {
    float l1 = 0.0f;
    unsigned long long l0 = 0;
    // col + 256·X <= D + 2^20 - 1 < 2^31 for every D <= 2^30: the int cannot wrap
    for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < D; col += gridDim.x * blockDim.x) {
        unsigned int count = 0;  // this column's firings in this row slice, <= N
        #pragma unroll 4
        for (int row = blockIdx.y; row < N; row += gridDim.y) {
            const float v = to_float(c[(size_t)row * D + col]);
            l1 += fabsf(v);
            count += v > 0.0f ? 1u : 0u;
        }
        if (count > 0) {
            fired[col] = 1u;  // plain store of the same value: no race on the result
            if (fire_count) atomicAdd(fire_count + col, (unsigned long long)count);
        }
        l0 += count;
    }
    l1 = block_reduce_sum(l1);
    l0 = block_reduce_sum(l0);
    if (threadIdx.x == 0) {
        const int b = blockIdx.y * gridDim.x + blockIdx.x;
        l1_partials[b] = l1;
        l0_partials[b] = l0;
    }
}

// l0_sum[0] += Σ partials: the count summed exactly in 64 bits, then added as deterministic_sum adds
static __global__ void sae_l0_total_kernel(float* l0_sum, const unsigned long long* partials, int n) {
    unsigned long long total = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) total += partials[i];
    total = block_reduce_sum(total);
    if (threadIdx.x == 0) l0_sum[0] = (float)((double)l0_sum[0] + (double)total);
}

// the grid of sae_sparsity_l0_kernel: column tiles up to the partials' capacity, then rows split
// so that the partials fit. Host-only arithmetic, so dev/cuda/sae.cu checks it without a GPU.
inline dim3 sae_sparsity_grid(int N, int D) {
    const int grid_x = std::min(ceil_div(D, SAE_STATS_BLOCK), SAE_STATS_MAX_PARTIALS);
    const int grid_y = std::max(1, std::min(N, SAE_STATS_MAX_PARTIALS / grid_x));
    return dim3(grid_x, grid_y);
}

// l1_sum += Σ|c|, l0_sum += count(c > 0): device scalars, accumulated (zero them at the start of
// an accumulation window); fired (D): set to 1 where the feature was > 0 on any token, never
// cleared here (zero it at the start of an alive window). c (N,D) floatX, any D >= 1 (the CLI
// allows up to 2^30). No host sync. sparsity = l1_sum / (N·C) per micro-batch, L0 = l0_sum / N.
// fire_count (D), if given (the eval's, for SAELens's sparsity.safetensors): += tokens on which
// each feature was > 0.
template <typename floatX>
void sae_sparsity_l0(float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c, int N, int D, cudaStream_t stream,
                     unsigned long long* fire_count = nullptr) {
    NVTX_RANGE_FN();
    if (N == 0 || D == 0) return;
    const dim3 grid = sae_sparsity_grid(N, D);
    const int num_partials = (int)(grid.x * grid.y);
    float* l1_partials;
    unsigned long long* l0_partials;
    cudaCheck(cudaGetSymbolAddress((void**)&l1_partials, sae_l1_partials));
    cudaCheck(cudaGetSymbolAddress((void**)&l0_partials, sae_l0_partials));
    sae_sparsity_l0_kernel<<<grid, SAE_STATS_BLOCK, 0, stream>>>(l1_partials, l0_partials, fired, fire_count, c, N, D);
    cudaLaunchCheck();
    deterministic_sum(l1_sum, l1_partials, num_partials, true, stream);
    sae_l0_total_kernel<<<1, 1024, 0, stream>>>(l0_sum, l0_partials, num_partials);
    cudaLaunchCheck();
}

// The training path's fused pass (kernel in sae_fused.cuh): in place over dpre, which holds dc on
// entry, dpre = (dc + l1_scale)·[c > 0]; db_enc (D) fp32 overwritten or (accumulate) added to with
// colsum(dpre); l1_sum += Σ|c|, l0_sum += count(c > 0) and fired as sae_sparsity_l0 (no
// fire_count: only the eval counts firings). One read of c and dc and one write of dpre instead
// of five reads and a write. Same partials and rule as sae_sparsity_l0 (one stream at a time).
template <typename floatX>
void sae_l1_relu_backward_stats(floatX* dpre, float* db_enc, float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c,
                                float l1_scale, int N, int D, bool accumulate, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0 || D == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const bool packed = D % P == 0 && is_aligned16(dpre) && is_aligned16(c);
    const int tiles = ceil_div(D, 32 * (packed ? P : 1));
    const int grid = std::min(tiles, SAE_STATS_MAX_PARTIALS);
    float* l1_partials;
    unsigned long long* l0_partials;
    cudaCheck(cudaGetSymbolAddress((void**)&l1_partials, sae_l1_partials));
    cudaCheck(cudaGetSymbolAddress((void**)&l0_partials, sae_l0_partials));
    if (packed)
        sae_l1_relu_backward_stats_kernel<floatX, P><<<grid, SAE_FUSED_THREADS, 0, stream>>>(dpre, db_enc, l1_partials, l0_partials,
                                                                                            fired, c, l1_scale, N, D, accumulate);
    else
        sae_l1_relu_backward_stats_kernel<floatX, 1><<<grid, SAE_FUSED_THREADS, 0, stream>>>(dpre, db_enc, l1_partials, l0_partials,
                                                                                            fired, c, l1_scale, N, D, accumulate);
    cudaLaunchCheck();
    deterministic_sum(l1_sum, l1_partials, grid, true, stream);
    sae_l0_total_kernel<<<1, 1024, 0, stream>>>(l0_sum, l0_partials, grid);
    cudaLaunchCheck();
}

static __global__ void sae_count_alive_kernel(int* alive, const unsigned int* fired, int D) {
    int count = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) count += fired[i] != 0u ? 1 : 0;
    count = block_reduce_sum(count);
    if (threadIdx.x == 0) alive[0] = count;
}

// alive[0] = number of features with fired != 0 (overwritten); fired (D) from sae_sparsity_l0
inline void sae_count_alive(int* alive, const unsigned int* fired, int D, cudaStream_t stream) {
    NVTX_RANGE_FN();
    sae_count_alive_kernel<<<1, 1024, 0, stream>>>(alive, fired, D);
    cudaLaunchCheck();
}

// ----------------------------------------------------------------------------
// the SAE's matmuls (see the table at the top), under the CPU trainer's names and argument order

// c (N,D) = relu(x (N,C) · W_enc (C,D) + b_enc (D)): bias and ReLU in the matmul's epilogue
template <typename floatX>
void sae_encoder_forward(floatX* c, const floatX* x, const floatX* W_enc, const floatX* b_enc, int N, int C, int D,
                         cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(c, x, W_enc, b_enc, N, D, C, false, false, t, t, false, CUBLASLT_EPILOGUE_RELU_BIAS, nullptr, stream);
}

// x_hat (N,C) = c (N,D) · W_dec_norm (D,C) + b_dec (C)
template <typename floatX>
void sae_decoder_forward(floatX* x_hat, const floatX* c, const floatX* W_dec_norm, const floatX* b_dec, int N, int C, int D,
                         cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(x_hat, c, W_dec_norm, b_dec, N, C, D, false, false, t, t, false, CUBLASLT_EPILOGUE_BIAS, nullptr, stream);
}

// The decoder's backward from dx_hat (N,C): db_dec (C) and dW_dec_norm (D,C) = cᵀ · dx_hat, fp32,
// overwritten or (accumulate) added to; dc (N,D) = dx_hat · W_dec_normᵀ, overwritten.
template <typename floatX>
void sae_decoder_backward(float* dW_dec_norm, float* db_dec, floatX* dc, const floatX* dx_hat, const floatX* c,
                          const floatX* W_dec_norm, int N, int C, int D, bool accumulate, cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    bias_grad_colsum(db_dec, dx_hat, N, C, accumulate, stream);
    matmul_cublaslt(dW_dec_norm, c, dx_hat, nullptr, D, C, N, true, false, t, CUDA_R_32F, accumulate, CUBLASLT_EPILOGUE_DEFAULT,
                    nullptr, stream);
    matmul_cublaslt(dc, dx_hat, W_dec_norm, nullptr, N, D, C, false, true, t, t, false, CUBLASLT_EPILOGUE_DEFAULT, nullptr, stream);
}

// The encoder's backward from dpre (N,D), the gradient at the ReLU's input: dW_enc (C,D) = xᵀ · dpre,
// fp32, overwritten or (accumulate) added to. db_enc = colsum(dpre) is not here: the trainer gets
// it from the fused pass that makes dpre (sae_l1_relu_backward_stats).
template <typename floatX>
void sae_encoder_backward(float* dW_enc, const floatX* dpre, const floatX* x, int N, int C, int D, bool accumulate,
                          cudaStream_t stream) {
    const cudaDataType_t t = cuda_dtype<floatX>();
    matmul_cublaslt(dW_enc, x, dpre, nullptr, C, D, N, true, false, t, CUDA_R_32F, accumulate, CUBLASLT_EPILOGUE_DEFAULT, nullptr,
                    stream);
}
