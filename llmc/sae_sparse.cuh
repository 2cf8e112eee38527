/*
The SAE's sparse kernels (--sae-kernels sparse): once L0 is far below d_sae, four of the SAE's
five (N, D) matmuls only need the entries where c > 0. The encoder forward stays the dense
cuBLASLt matmul (it is what finds those entries); then, per micro-batch:
  index     from c (N,D): each feature's rows with c > 0 (CSC, rows ascending) with Σ|c|, L0 and
            the fired flags; each row's features with c > 0 (CSR, features ascending)
  decoder   x_hat[n] = b_dec + Σ_{j: c[n,j] > 0} c[n,j]·W_dec_norm[j]            per row (CSR)
  backward  per feature j (CSC), over its rows n:
              dpre[n,j] = (dx_hat[n]·W_dec_norm[j] + l1_scale), rounded as the dense path rounds dc
                          and dpre (floatX), and 0 where c = 0, so never stored there
              db_enc[j]         (+)= Σ_n dpre[n,j]
              dW_dec_norm[j,:]  (+)= Σ_n c[n,j]·dx_hat[n,:]
              dW_enc[:,j]       (+)= Σ_n dpre[n,j]·x[n,:]
db_dec = colsum(dx_hat) stays bias_grad_colsum (sae.cuh). These are the dense path's numbers with
the sums in another order: dpre rounds the same way, the fp32 sums run over the same terms.

At L0 = 32 of D = 46080 the four matmuls' 2.3 TFLOP per micro-batch at the paper shape become
~2 GFLOP of gathers; what remains is two reads of c (the index), and the gathers of W_dec_norm,
x and dx_hat rows, mostly from L2. At high L0 (a fresh SAE fires on about half its features) the
gathers are far slower than the dense matmuls: sparse is for SAEs that are sparse.

Capacity: the index holds every entry of c, N·D of each kind (int32), so it never overflows and
needs no host sync: 3 GB at the paper shape (N 8192, D 46080), printed in the memory plan.
Each feature's rows start at j·N, each row's features at n·D. The backward's partial sums take
2·D·C floats twice more (0.57 GB there).

Determinism: no atomics. Each count is a warp's ballot and population count in a fixed order;
every sum runs over its entries in index order, and the warp sums are xor butterflies, which
leave the same bits in every lane. The same c gives the same index and the same bits.

Built with HOST_EMULATION, the CUDA built-ins come from test/cuda_host_emulation.h, so
test/test_sae_sparse_emulated.cpp checks these kernels against a dense CPU reference without a GPU.
*/
#pragma once
#include "cuda_common.cuh"

#define SAE_SPARSE_TILE 16    // columns of c per warp in the column pass: a lane reads 32 bytes of its row in bf16
#define SAE_SPARSE_WARPS 8    // warps per block in every kernel here
#define SAE_SPARSE_CHUNK 256  // columns of C per pass in the decoder and the backward: 8 per lane, in registers

// the sparse index of one micro-batch's c and the backward's scratch, device memory the trainer carves (engine_carve)
struct SaeSparse {
    int* col_cnt;   // (D) rows with c > 0 per feature
    int* col_rows;  // (D,N) feature j's rows at j·N .. j·N + col_cnt[j], ascending
    float* col_l1;  // (D) Σ|c| per feature
    int* row_cnt;   // (N) features with c > 0 per row
    int* row_cols;  // (N,D) row n's features at n·D .. n·D + row_cnt[n], ascending
    // the backward's segments (sae_sparse_backward): at most 2·D of them
    int* seg_ptr;     // (D+1) feature j's segments are seg_ptr[j] .. seg_ptr[j+1]
    int* seg_info;    // (2) entries per segment, segments in all
    float* part_dec;  // (2·D, C) each segment's Σ c·dx_hat
    float* part_enc;  // (2·D, C) each segment's Σ dpre·x
    float* part_db;   // (2·D) each segment's Σ dpre
};

// the column pass: warp w of block b owns columns col0 = (b·WARPS + w)·TILE .. +TILE and walks
// the rows 32 at a time, a row per lane. A column's ballot orders its rows by lane, so each
// column's rows land ascending, and its count is the running sum of the ballots' population
// counts. VEC: a lane loads its TILE columns as 16-byte packs (needs D % pack == 0 and c aligned).
template <typename floatX, bool VEC>
__global__ void __launch_bounds__(32 * SAE_SPARSE_WARPS)
sae_sparse_cols_kernel(int* col_cnt, int* col_rows, float* col_l1, unsigned int* fired, const floatX* c, int N, int D) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int col0 = (blockIdx.x * SAE_SPARSE_WARPS + warp) * SAE_SPARSE_TILE;
    if (col0 >= D) return;  // the whole warp: nothing below waits for the block
    const int ncols = min(SAE_SPARSE_TILE, D - col0);  // with VEC a multiple of the pack (D % pack == 0, col0 % TILE == 0)
    int cnt[SAE_SPARSE_TILE];
    float l1[SAE_SPARSE_TILE];
    #pragma unroll
    for (int t = 0; t < SAE_SPARSE_TILE; t++) { cnt[t] = 0; l1[t] = 0.0f; }
    for (int r0 = 0; r0 < N; r0 += 32) {
        const int row = r0 + lane;
        float v[SAE_SPARSE_TILE];
        #pragma unroll
        for (int t = 0; t < SAE_SPARSE_TILE; t++) v[t] = 0.0f;
        if (row < N) {
            const floatX* p = c + (size_t)row * D + col0;
            if (VEC) {
                constexpr int P = Packed128<floatX>::size;
                #pragma unroll
                for (int q = 0; q < SAE_SPARSE_TILE / P; q++)
                    if (q * P < ncols) {
                        const Packed128<floatX> pk = load128(p + q * P);
                        #pragma unroll
                        for (int k = 0; k < P; k++) v[q * P + k] = to_float(pk[k]);
                    }
            } else {
                #pragma unroll
                for (int t = 0; t < SAE_SPARSE_TILE; t++)
                    if (t < ncols) v[t] = to_float(p[t]);
            }
        }
        #pragma unroll
        for (int t = 0; t < SAE_SPARSE_TILE; t++) {
            const bool on = v[t] > 0.0f;
            const unsigned m = __ballot_sync(0xffffffffu, on);
            if (on) col_rows[(size_t)(col0 + t) * N + cnt[t] + __popc(m & ((1u << lane) - 1u))] = row;
            cnt[t] += __popc(m);
            l1[t] += fabsf(v[t]);
        }
    }
    #pragma unroll
    for (int t = 0; t < SAE_SPARSE_TILE; t++) {
        const float s = warp_reduce_sum(l1[t]);
        if (lane == 0 && t < ncols) {
            col_l1[col0 + t] = s;
            col_cnt[col0 + t] = cnt[t];
            if (cnt[t] > 0) fired[col0 + t] = 1u;  // set, never cleared here
        }
    }
}

// the row pass: a warp per row walks its D columns 32·VEC at a time (VEC consecutive per lane);
// a warp scan of the lanes' counts places each lane's features after the lower lanes'
template <typename floatX, int VEC>
__global__ void __launch_bounds__(32 * SAE_SPARSE_WARPS)
sae_sparse_rows_kernel(int* row_cnt, int* row_cols, const floatX* c, int N, int D) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * SAE_SPARSE_WARPS + warp;
    if (row >= N) return;
    const floatX* cr = c + (size_t)row * D;
    int* out = row_cols + (size_t)row * D;
    int cnt = 0;
    for (int base = 0; base < D; base += 32 * VEC) {
        const int col = base + lane * VEC;
        float v[VEC];
        int k = 0;
        #pragma unroll
        for (int e = 0; e < VEC; e++) v[e] = 0.0f;
        if (col < D) {  // VEC > 1 only when D % VEC == 0: a pack is wholly in or out
            if (VEC > 1) {
                const Packed128<floatX> pk = load128(cr + col);
                #pragma unroll
                for (int e = 0; e < VEC; e++) v[e] = to_float(pk[e]);
            } else {
                v[0] = to_float(cr[col]);
            }
            #pragma unroll
            for (int e = 0; e < VEC; e++) k += v[e] > 0.0f ? 1 : 0;
        }
        int incl = k;  // inclusive scan over the lanes
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += y;
        }
        int at = cnt + incl - k;
        #pragma unroll
        for (int e = 0; e < VEC; e++)
            if (v[e] > 0.0f) out[at++] = col + e;
        cnt += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) row_cnt[row] = cnt;
}

// l0_sum[0] += Σ col_cnt, summed exactly in 64 bits, then added as deterministic_sum adds
static __global__ void sae_sparse_l0_kernel(float* l0_sum, const int* col_cnt, int D) {
    unsigned long long total = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) total += (unsigned long long)col_cnt[i];
    total = block_reduce_sum(total);
    if (threadIdx.x == 0) l0_sum[0] = (float)((double)l0_sum[0] + (double)total);
}

// The index of c (N,D) floatX into sp; l1_sum += Σ|c|, l0_sum += count(c > 0), fired set where a
// feature has c > 0 (as sae_sparsity_l0, whose place it takes in training). No host sync.
template <typename floatX>
void sae_sparse_index(SaeSparse* sp, float* l1_sum, float* l0_sum, unsigned int* fired, const floatX* c, int N, int D,
                      cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0 || D == 0) return;
    constexpr int P = Packed128<floatX>::size;
    const bool packed = D % P == 0 && is_aligned16(c);
    const int threads = 32 * SAE_SPARSE_WARPS;
    const int col_blocks = ceil_div(ceil_div(D, SAE_SPARSE_TILE), SAE_SPARSE_WARPS);
    if (packed) sae_sparse_cols_kernel<floatX, true><<<col_blocks, threads, 0, stream>>>(sp->col_cnt, sp->col_rows, sp->col_l1, fired, c, N, D);
    else sae_sparse_cols_kernel<floatX, false><<<col_blocks, threads, 0, stream>>>(sp->col_cnt, sp->col_rows, sp->col_l1, fired, c, N, D);
    cudaLaunchCheck();
    const int row_blocks = ceil_div(N, SAE_SPARSE_WARPS);
    if (packed) sae_sparse_rows_kernel<floatX, P><<<row_blocks, threads, 0, stream>>>(sp->row_cnt, sp->row_cols, c, N, D);
    else sae_sparse_rows_kernel<floatX, 1><<<row_blocks, threads, 0, stream>>>(sp->row_cnt, sp->row_cols, c, N, D);
    cudaLaunchCheck();
    deterministic_sum(l1_sum, sp->col_l1, D, true, stream);
    sae_sparse_l0_kernel<<<1, 1024, 0, stream>>>(l0_sum, sp->col_cnt, D);
    cudaLaunchCheck();
}

// A lane's 8 columns of the chunk of 256 at c0: with VEC consecutive, lane·8 + i, one 16-byte load
// of bf16 (two of fp32) per row, which needs C % 8 == 0 and 16-byte aligned rows; without, lane + 32·i,
// a 2- or 4-byte load each (any C). Either way a warp's loads of one row are coalesced.
static_assert(SAE_SPARSE_CHUNK == 32 * 8, "a chunk is 8 columns per lane");
template <bool VEC>
__device__ __forceinline__ int chunk_col(int c0, int lane, int i) { return VEC ? c0 + lane * 8 + i : c0 + lane + 32 * i; }

// v[i] = row[chunk_col(c0, lane, i)], 0 past C
template <bool VEC, typename floatX>
__device__ __forceinline__ void load_chunk(float* v, const floatX* row, int c0, int lane, int C) {
    if (VEC) {
        constexpr int P = Packed128<floatX>::size;
        const int col = c0 + lane * 8;
        #pragma unroll
        for (int q = 0; q < 8 / P; q++) {
            Packed128<floatX> pk;
            if (col < C) pk = load128(row + col + q * P);  // C % 8 == 0: the lane's 8 columns are all in or all out
            #pragma unroll
            for (int e = 0; e < P; e++) v[q * P + e] = col < C ? to_float(pk[e]) : 0.0f;
        }
    } else {
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const int col = c0 + lane + 32 * i;
            v[i] = col < C ? to_float(row[col]) : 0.0f;
        }
    }
}

// x_hat (N,C) = c · W_dec_norm + b_dec over each row's features: a warp per row, a chunk of 256
// columns at a time (chunk_col). The sum runs over the row's features in ascending order, in
// fp32; the bias is added last and the result rounded once, as the dense matmul's BIAS epilogue does.
template <typename floatX, bool VEC>
__global__ void __launch_bounds__(32 * SAE_SPARSE_WARPS)
sae_sparse_decoder_kernel(floatX* x_hat, const int* row_cnt, const int* row_cols, const floatX* c, const floatX* W_dec_norm,
                          const floatX* b_dec, int N, int C, int D) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row = blockIdx.x * SAE_SPARSE_WARPS + warp;
    if (row >= N) return;
    const int n = row_cnt[row];
    const int* cols = row_cols + (size_t)row * D;
    const floatX* cr = c + (size_t)row * D;
    for (int c0 = 0; c0 < C; c0 += SAE_SPARSE_CHUNK) {
        float acc[8], w[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) acc[i] = 0.0f;
        for (int k = 0; k < n; k++) {
            const int j = cols[k];
            const float v = to_float(cr[j]);
            load_chunk<VEC>(w, W_dec_norm + (size_t)j * C, c0, lane, C);
            #pragma unroll
            for (int i = 0; i < 8; i++) acc[i] += v * w[i];
        }
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const int col = chunk_col<VEC>(c0, lane, i);
            if (col < C) x_hat[(size_t)row * C + col] = from_float<floatX>(acc[i] + to_float(b_dec[col]));
        }
    }
}

// the 16-byte path when every row it loads is aligned (cudaMalloc's are; C % 8 keeps the rows so)
inline bool sae_sparse_vec(int C, const void* a, const void* b = nullptr, const void* c = nullptr) {
    return C % 8 == 0 && is_aligned16(a) && (!b || is_aligned16(b)) && (!c || is_aligned16(c));
}

template <typename floatX>
void sae_sparse_decoder_forward(floatX* x_hat, const SaeSparse* sp, const floatX* c, const floatX* W_dec_norm, const floatX* b_dec,
                                int N, int C, int D, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (N == 0) return;
    const int grid = ceil_div(N, SAE_SPARSE_WARPS), threads = 32 * SAE_SPARSE_WARPS;
    if (sae_sparse_vec(C, W_dec_norm))
        sae_sparse_decoder_kernel<floatX, true><<<grid, threads, 0, stream>>>(x_hat, sp->row_cnt, sp->row_cols, c, W_dec_norm, b_dec, N, C, D);
    else
        sae_sparse_decoder_kernel<floatX, false><<<grid, threads, 0, stream>>>(x_hat, sp->row_cnt, sp->row_cols, c, W_dec_norm, b_dec, N, C, D);
    cudaLaunchCheck();
}

// The backward, balanced over features of any frequency: a trained SAE's densest features fire on
// a tenth of the tokens or more, and one warp walking such a feature's rows alone would outlast
// all the others' work. So each feature's rows are cut into segments of SEG entries, a warp each:
//   plan     (one block) nnz = Σ col_cnt, SEG = max(SAE_SPARSE_SEG, ceil(nnz / D)), each feature's
//            ceil(cnt / SEG) segments and their exclusive scan seg_ptr; so that the segments never
//            exceed 2·D (the partials' capacity) at any density
//   segment  (a warp per segment s of feature j) dpre for its rows, stored at dpre_csc[j·N + k], and
//            its partial sums: part_db[s], and per chunk of 256 columns part_dec[s,:] (Σ c·dx_hat)
//            and part_enc[s,:] (Σ dpre·x), written coalesced
//   finish   (block b: features j0 = b·WARPS .. +WARPS, a warp each) each feature's partials summed
//            in segment order into db_enc, dW_dec_norm's row, and dW_enc's column, which the block
//            writes through shared memory so that each row of dW_enc (C,D) gets WARPS consecutive
//            floats. Every warp runs the same chunks (features past D have no segments), so the
//            block's barriers are met.
#define SAE_SPARSE_SEG 32  // entries per segment at the least: a warp's work

// one block of 1024 threads: SEG, seg_ptr (D+1) and the segment count (seg_info = {SEG, total})
static __global__ void sae_sparse_plan_kernel(int* seg_ptr, int* seg_info, const int* col_cnt, int D) {
    __shared__ int thread_segs[1024];
    const int per = (D + blockDim.x - 1) / blockDim.x;  // a contiguous run of features per thread
    const int lo = min(D, (int)threadIdx.x * per), hi = min(D, lo + per);
    unsigned long long nnz = 0;
    for (int j = lo; j < hi; j++) nnz += (unsigned long long)col_cnt[j];
    nnz = block_reduce_sum(nnz);  // every thread gets the total
    const unsigned long long seg_min = (nnz + D - 1) / D;
    const int seg = (int)max((unsigned long long)SAE_SPARSE_SEG, seg_min);  // <= N: fits an int
    int mine = 0;
    for (int j = lo; j < hi; j++) mine += (col_cnt[j] + seg - 1) / seg;
    thread_segs[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {  // 1024 integer adds in thread order: the exclusive scan of the runs
        int run = 0;
        for (int t = 0; t < (int)blockDim.x; t++) {
            const int here = thread_segs[t];
            thread_segs[t] = run;
            run += here;
        }
        seg_ptr[D] = run;
        seg_info[0] = seg;
        seg_info[1] = run;
    }
    __syncthreads();
    int at = thread_segs[threadIdx.x];
    for (int j = lo; j < hi; j++) {
        seg_ptr[j] = at;
        at += (col_cnt[j] + seg - 1) / seg;
    }
}

template <typename floatX, bool VEC>
__global__ void __launch_bounds__(32 * SAE_SPARSE_WARPS)
sae_sparse_segment_kernel(float* part_dec, float* part_enc, float* part_db, floatX* dpre_csc, const int* seg_ptr, const int* seg_info,
                          const int* col_cnt, const int* col_rows, const floatX* c, const floatX* dx_hat, const floatX* x,
                          const floatX* W_dec_norm, float l1_scale, int N, int C, int D) {
    const int lane = threadIdx.x % 32;
    const int s = blockIdx.x * SAE_SPARSE_WARPS + threadIdx.x / 32;
    if (s >= seg_info[1]) return;  // the whole warp: nothing below waits for the block
    int lo = 0, hi = D - 1;  // the feature j with seg_ptr[j] <= s < seg_ptr[j + 1]: the last j with seg_ptr[j] <= s
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (seg_ptr[mid] <= s) lo = mid;
        else hi = mid - 1;
    }
    const int j = lo, seg = seg_info[0];
    const int k0 = (s - seg_ptr[j]) * seg, k1 = min(k0 + seg, col_cnt[j]);
    const int* rows = col_rows + (size_t)j * N;
    floatX* dp = dpre_csc + (size_t)j * N;
    const floatX* w = W_dec_norm + (size_t)j * C;
    float db = 0.0f;
    for (int k = k0; k < k1; k++) {
        const floatX* g = dx_hat + (size_t)rows[k] * C;
        float dot = 0.0f, gv[8], wv[8];
        for (int c0 = 0; c0 < C; c0 += SAE_SPARSE_CHUNK) {
            load_chunk<VEC>(gv, g, c0, lane, C);
            load_chunk<VEC>(wv, w, c0, lane, C);
            #pragma unroll
            for (int i = 0; i < 8; i++) dot += gv[i] * wv[i];
        }
        dot = warp_reduce_sum(dot);  // the same bits in every lane
        const floatX dc = from_float<floatX>(dot);  // the dense path stores dc in floatX ...
        const floatX d = from_float<floatX>(to_float(dc) + l1_scale);  // ... then dpre, c > 0 here
        if (lane == 0) dp[k] = d;
        db += to_float(d);
    }
    if (lane == 0) part_db[s] = db;
    __syncwarp();  // dp written by lane 0, read by every lane below
    for (int c0 = 0; c0 < C; c0 += SAE_SPARSE_CHUNK) {
        float acc_dec[8], acc_enc[8], gv[8], xv[8];
        #pragma unroll
        for (int i = 0; i < 8; i++) { acc_dec[i] = 0.0f; acc_enc[i] = 0.0f; }
        for (int k = k0; k < k1; k++) {
            const size_t r = rows[k];
            const float cv = to_float(c[r * D + j]), dv = to_float(dp[k]);
            load_chunk<VEC>(gv, dx_hat + r * C, c0, lane, C);
            load_chunk<VEC>(xv, x + r * C, c0, lane, C);
            #pragma unroll
            for (int i = 0; i < 8; i++) {
                acc_dec[i] += cv * gv[i];
                acc_enc[i] += dv * xv[i];
            }
        }
        #pragma unroll
        for (int i = 0; i < 8; i++) {
            const int col = chunk_col<VEC>(c0, lane, i);
            if (col < C) {
                part_dec[(size_t)s * C + col] = acc_dec[i];
                part_enc[(size_t)s * C + col] = acc_enc[i];
            }
        }
    }
}

static __global__ void __launch_bounds__(32 * SAE_SPARSE_WARPS)
sae_sparse_finish_kernel(float* dW_dec_norm, float* dW_enc, float* db_enc, const float* part_dec, const float* part_enc,
                         const float* part_db, const int* seg_ptr, int C, int D, bool accumulate) {
    __shared__ float enc_tile[SAE_SPARSE_CHUNK][SAE_SPARSE_WARPS + 1];  // +1: the column writes below spread over banks
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int j0 = blockIdx.x * SAE_SPARSE_WARPS, j = j0 + warp;
    const int s0 = j < D ? seg_ptr[j] : 0, s1 = j < D ? seg_ptr[j + 1] : 0;
    if (j < D && lane == 0) {
        float db = 0.0f;
        for (int s = s0; s < s1; s++) db += part_db[s];
        db_enc[j] = accumulate ? db_enc[j] + db : db;
    }
    for (int c0 = 0; c0 < C; c0 += SAE_SPARSE_CHUNK) {
        #pragma unroll
        for (int i = 0; i < SAE_SPARSE_CHUNK / 32; i++) {
            const int col = c0 + lane + 32 * i;
            float dec = 0.0f, enc = 0.0f;
            if (col < C)
                for (int s = s0; s < s1; s++) {
                    dec += part_dec[(size_t)s * C + col];
                    enc += part_enc[(size_t)s * C + col];
                }
            if (j < D && col < C) {
                float* o = dW_dec_norm + (size_t)j * C + col;
                *o = accumulate ? *o + dec : dec;
            }
            enc_tile[lane + 32 * i][warp] = enc;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < SAE_SPARSE_CHUNK * SAE_SPARSE_WARPS; e += blockDim.x) {
            const int r = e / SAE_SPARSE_WARPS, f = e % SAE_SPARSE_WARPS;
            if (c0 + r < C && j0 + f < D) {
                float* o = dW_enc + (size_t)(c0 + r) * D + j0 + f;
                *o = accumulate ? *o + enc_tile[r][f] : enc_tile[r][f];
            }
        }
        __syncthreads();  // enc_tile is rewritten by the next chunk
    }
}

// dW_dec_norm (D,C), dW_enc (C,D), db_enc (D): fp32, overwritten or (accumulate) added to, from
// dx_hat (N,C), the index sp of c (N,D), x (N,C) and W_dec_norm (D,C). dpre_csc (D,N) floatX is
// scratch (the dense path's dc buffer), as are sp's segment arrays. db_dec is not here
// (bias_grad_colsum). No host sync: the segment count stays on the device, and the segment
// kernel's grid is the capacity, 2·D warps, of which those past the count return at once.
template <typename floatX>
void sae_sparse_backward(float* dW_dec_norm, float* dW_enc, float* db_enc, floatX* dpre_csc, const SaeSparse* sp, const floatX* c,
                         const floatX* dx_hat, const floatX* x, const floatX* W_dec_norm, float l1_scale, int N, int C, int D,
                         bool accumulate, cudaStream_t stream) {
    NVTX_RANGE_FN();
    if (D == 0) return;
    sae_sparse_plan_kernel<<<1, 1024, 0, stream>>>(sp->seg_ptr, sp->seg_info, sp->col_cnt, D);
    cudaLaunchCheck();
    const int grid = (int)ceil_div((size_t)2 * D, (size_t)SAE_SPARSE_WARPS), threads = 32 * SAE_SPARSE_WARPS;  // 2·D may pass INT_MAX
    if (sae_sparse_vec(C, dx_hat, x, W_dec_norm))
        sae_sparse_segment_kernel<floatX, true><<<grid, threads, 0, stream>>>(sp->part_dec, sp->part_enc, sp->part_db, dpre_csc, sp->seg_ptr,
            sp->seg_info, sp->col_cnt, sp->col_rows, c, dx_hat, x, W_dec_norm, l1_scale, N, C, D);
    else
        sae_sparse_segment_kernel<floatX, false><<<grid, threads, 0, stream>>>(sp->part_dec, sp->part_enc, sp->part_db, dpre_csc, sp->seg_ptr,
            sp->seg_info, sp->col_cnt, sp->col_rows, c, dx_hat, x, W_dec_norm, l1_scale, N, C, D);
    cudaLaunchCheck();
    sae_sparse_finish_kernel<<<ceil_div(D, SAE_SPARSE_WARPS), 32 * SAE_SPARSE_WARPS, 0, stream>>>(
        dW_dec_norm, dW_enc, db_enc, sp->part_dec, sp->part_enc, sp->part_db, sp->seg_ptr, C, D, accumulate);
    cudaLaunchCheck();
}
