/*
Just enough of CUDA to run llmc/flash_attention.cuh's kernels on a CPU (test/test_flash_emulated.cpp):
a launch runs the grid's blocks one after another, each block's threads as CPU threads; __shared__
becomes a static (one block at a time, so one copy is enough); __syncthreads and every
warp-collective operation are a barrier across the block, so each must be reached by all of the
block's threads together, as they are in those kernels. ldmatrix, mma.sync m16n8k16 (bf16 in,
fp32 accumulate) and cp.async are written from the PTX ISA's definitions of their fragment
layouts; cp.async copies land only at the wait that covers them, as on the GPU.
This is an emulation from our reading of the PTX ISA, not a GPU run: it catches indexing,
masking, tiling and fragment-layout mistakes before a device sees the kernels, and nothing about
timing, races or the hardware's own rounding order in mma.
*/
#pragma once
#define HOST_EMULATION
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <barrier>
#include <thread>
#include <vector>
#include <deque>
#include <algorithm>
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) float4 { float x, y, z, w; };
inline thread_local EmuDim3 threadIdx;
inline EmuDim3 blockIdx, blockDim, gridDim;
inline std::barrier<>* emu_barrier = nullptr;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }

// every thread posts its value, then reads its partner's
inline float emu_shfl_buf[1024];
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    emu_shfl_buf[threadIdx.x] = v;
    emu_barrier->arrive_and_wait();
    float r = emu_shfl_buf[threadIdx.x ^ lane_mask];
    emu_barrier->arrive_and_wait();
    return r;
}

// bf16 with round-to-nearest-even, as __float2bfloat16_rn
struct bf16 { uint16_t bits; };
inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { uint32_t u = (uint32_t)x.bits << 16; float f; memcpy(&f, &u, 4); return f; }
template <typename T> T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16 from_float<bf16>(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (isnan(x)) return bf16{0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return bf16{(uint16_t)(u >> 16)};
}

template <typename T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
    T& operator[](int i) { return v[i]; }
    const T& operator[](int i) const { return v[i]; }
};
template <typename T> inline Packed128<T> load128(const T* p) { return *reinterpret_cast<const Packed128<T>*>(p); }
template <typename T> inline void store128(T* p, const Packed128<T>& x) { *reinterpret_cast<Packed128<T>*>(p) = x; }

// runs kernel f on a (gx, gy) grid of blocks of `threads` threads
template <typename F>
void emu_launch(unsigned gx, unsigned gy, unsigned threads, F f) {
    gridDim = {gx, gy, 1};
    blockDim = {threads, 1, 1};
    for (unsigned y = 0; y < gy; y++)
        for (unsigned x = 0; x < gx; x++) {
            blockIdx = {x, y, 0};
            std::barrier<> bar(threads);
            emu_barrier = &bar;
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; t++) pool.emplace_back([&, t] { threadIdx = {t, 0, 0}; f(); });
            for (auto& th : pool) th.join();
        }
}

// ----------------------------------------------------------------------------
// llmc/ptx.cuh's wrappers. Fragments (g = lane/4, c = lane%4): A (16x16) element (row, k) in lane
// (row%8)*4 + (k%8)/2, register (row>=8) + 2*(k>=8), half k%2; B (16x8) element (k, n) in lane
// n*4 + (k%8)/2, register k>=8, half k%2; C/D (16x8) element (g + 8*(i/2), 2c + i%2) in register i.

inline uint32_t emu_pack(bf16 lo, bf16 hi) { return (uint32_t)lo.bits | ((uint32_t)hi.bits << 16); }
inline bf16 emu_half(uint32_t r, int hi) { return bf16{(uint16_t)(hi ? r >> 16 : r & 0xffff)}; }
inline uint32_t pack_bf16x2(float lo, float hi) { return emu_pack(from_float<bf16>(lo), from_float<bf16>(hi)); }

// ldmatrix .x4: lanes 8i..8i+7 address the rows of matrix i; lane receives in register i matrix
// i's row g, columns 2c, 2c+1 (.trans: rows 2c, 2c+1 of column g)
inline const void* emu_rows[1024];
inline void emu_ldmatrix(uint32_t* r, const bf16* row, bool trans) {
    const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
    emu_rows[tid] = row;
    emu_barrier->arrive_and_wait();
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            const bf16* p = (const bf16*)emu_rows[w * 32 + 8 * i + lane / 4];
            r[i] = emu_pack(p[2 * (lane % 4)], p[2 * (lane % 4) + 1]);
        } else {
            const bf16* p0 = (const bf16*)emu_rows[w * 32 + 8 * i + 2 * (lane % 4)];
            const bf16* p1 = (const bf16*)emu_rows[w * 32 + 8 * i + 2 * (lane % 4) + 1];
            r[i] = emu_pack(p0[lane / 4], p1[lane / 4]);
        }
    }
    emu_barrier->arrive_and_wait();
}
inline void ldmatrix_x4(uint32_t* r, const bf16* row) { emu_ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t* r, const bf16* row) { emu_ldmatrix(r, row, true); }

// d (16x8) += a (16x16) · b (16x8) for each warp, products of bf16 values summed in fp32
inline uint32_t emu_a[1024][4], emu_b[1024][2];
inline float emu_d[1024][4];
inline void mma_16816(float* d, const uint32_t* a, const uint32_t* b) {
    const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
    for (int i = 0; i < 4; i++) emu_a[tid][i] = a[i];
    for (int i = 0; i < 2; i++) emu_b[tid][i] = b[i];
    emu_barrier->arrive_and_wait();
    auto A = [&](int row, int k) { return to_float(emu_half(emu_a[w * 32 + (row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2)); };
    auto B = [&](int k, int n) { return to_float(emu_half(emu_b[w * 32 + n * 4 + (k % 8) / 2][k >= 8], k % 2)); };
    const int g = lane / 4, c = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i / 2), col = 2 * c + i % 2;
        float acc = d[i];
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        emu_d[tid][i] = acc;
    }
    emu_barrier->arrive_and_wait();
    for (int i = 0; i < 4; i++) d[i] = emu_d[tid][i];
}

// cp.async: a thread's copies wait in its committed groups until cp_async_wait<N> leaves N in flight
struct EmuCopy { void* dst; const void* src; int bytes; };
inline thread_local std::deque<std::vector<EmuCopy>> emu_groups;
inline thread_local std::vector<EmuCopy> emu_open;
inline void cp_async16(void* smem, const void* gmem, int src_bytes) { emu_open.push_back({smem, gmem, src_bytes}); }
inline void cp_async_commit() { emu_groups.push_back(emu_open); emu_open.clear(); }
template <int N> void cp_async_wait() {
    while ((int)emu_groups.size() > N) {
        for (const EmuCopy& cp : emu_groups.front()) {
            if (cp.bytes) memcpy(cp.dst, cp.src, 16);
            else memset(cp.dst, 0, 16);
        }
        emu_groups.pop_front();
    }
}
