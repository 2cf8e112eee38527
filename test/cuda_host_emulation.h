/*
Just enough of CUDA to run llmc's kernels and their launchers on a CPU: the kernel tests
test/test_flash_emulated.cpp (flash attention), test_sae_emulated.cpp (the SAE's elementwise and
statistics kernels, fused and not), test_kl_emulated.cpp (the one-pass KL on a cluster),
test_adamw_emulated.cpp and test_feature_dump_emulated.cpp (the dump), and the whole GPU trainer,
train_gpt2_sae_emulated, with the device tests on it (dev/forecast_gpu_tests.sh --emulated).
A block runs on one CPU thread, its CUDA threads (1D or 2D blocks) as fibers that switch only
where a CUDA thread would wait for others: __syncthreads waits for the block, a warp-collective
operation (shuffle, ldmatrix, mma) for the warp, a cluster barrier for every block of the cluster.
So a warp-collective inside `if (warp == 0)` works as on the GPU, and a barrier some threads never
reach stops the test with a message instead of hanging, as do a warp's lanes meeting at different
kinds of warp operation and a lane running one its mask leaves out. __shared__ is
`static thread_local`: one copy per block, filled with 0xff bytes at the block's start
(emu_shared_poison). Blocks run one after another, except the blocks of a cluster, which run
together (one CPU thread each); cluster.map_shared_rank finds another block's copy of a __shared__
variable at the same offset from that block's thread-local storage. ldmatrix, mma.sync m16n8k16
(bf16 in, fp32 accumulate) and cp.async are written from the PTX ISA's definitions of their
fragment layouts and address rules (16-byte aligned; ldmatrix's rows and cp.async's destination
in the block's __shared__ variables, its source not); a cp.async copy lands at the wait that
covers it (or, in one order below, at once: the two ends of what the GPU allows).
llmc/cuda_common.cuh is compiled as it is (bf16, Packed128, the reductions, deterministic_sum,
the error checks), less its CUDA headers, which come from here. Launchers run as written: the
Makefile copies each header through test/emulate_launches.pl into build/emu/llmc/, turning
`kernel<<<grid, block, smem, stream>>>(args);` into `emu_launch_helper(grid, block, smem, stream)
= [=] { kernel(args); };`. The runtime they call is test/mock_cuda_runtime.h's when it is included
first (the trainer: device memory, copies and events as a device checks them), else the little
below (memset and memcpy on host memory; synchronisation as no-ops). cudaLaunchKernelEx takes a
cluster dimension. cuBLASLt is one CPU loop, emu_cublaslt_matmul: llmc/matmul.cuh's checks and
wrappers run as written and call it where they would call cublasLtMatmul.
EMU_ORDER (emu_order below) picks the order the ready threads, warps and blocks run in: in order,
last first, or each warp as far ahead of the others as CUDA allows. A kernel that reads another
thread's write without the barrier between them reads it in one order and misses it in another,
so make test runs the kernel tests in all four, and test_gpt2_sae's [order] the whole trainer.
This is an emulation from our reading of CUDA and the PTX ISA, not a GPU run: it catches
indexing, masking, tiling, fragment-layout, launch-argument and synchronisation-structure mistakes
before a device sees the kernels, and the missing barriers that one of the four orders exposes,
and nothing about timing, the memory model beyond that, or the rounding order of mma and cuBLAS.
*/
#pragma once
#ifndef HOST_EMULATION
#define HOST_EMULATION
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#include <limits.h>
#include <ucontext.h>
#include <setjmp.h>
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
#include <memory>
#include <type_traits>
#include <algorithm>
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) float4 { float x, y, z, w; };
inline thread_local EmuDim3 threadIdx, blockIdx, blockDim, gridDim;  // per block's CPU thread; threadIdx set at each fiber switch
inline thread_local unsigned emu_tid;  // the running thread's linear index in its block (x fastest, as CUDA numbers lanes)

[[noreturn]] inline void emu_fail(const char* what) {
    fprintf(stderr, "cuda_host_emulation: %s (block %u,%u)\n", what, blockIdx.x, blockIdx.y);
    abort();
}

// ----------------------------------------------------------------------------
// fibers: the threads of one block, on the CPU thread that runs the block

enum EmuWait { EMU_RUN, EMU_WARP, EMU_BLOCK, EMU_CLUSTER, EMU_DONE };
struct EmuCopy { void* dst; const void* src; int bytes; };
struct EmuThread {
    jmp_buf resume;  // where it waits
    bool started = false;
    EmuWait wait = EMU_RUN;
    const char* warp_op = nullptr;  // the warp operation it waits at (EMU_WARP)
    unsigned warp_mask = 0;         // and that operation's mask
    std::vector<std::vector<EmuCopy>> groups;  // cp.async: committed groups in flight, oldest first
    std::vector<EmuCopy> open;                 // cp.async: not yet committed
};
struct EmuBlock {
    jmp_buf sched;  // the scheduler, where a thread that waits or ends goes back to
    std::vector<EmuThread> threads;
    const std::function<void()>* kernel = nullptr;
    std::barrier<>* cluster = nullptr;  // the cluster's blocks' barrier, or none
    int cluster_syncs = 0;
    std::vector<std::pair<char*, size_t>> shared_filled;  // the __shared__ variables emu_shared_poison has filled for this block
};
inline thread_local EmuBlock* emu_block = nullptr;

// test/emulate_launches.pl puts this after each __shared__ declaration: the first of a block's
// threads to pass it fills the variable with 0xff bytes (NaN as a float or bf16, -1 as an int). A
// GPU says nothing of what a block's shared memory holds at its start, and here it would hold what
// the previous block on this CPU thread left, often the very bytes a missing write would have put
// there. (No thread can touch the variable before its declaration: it has no name there.)
inline void emu_shared_poison(void* p, size_t bytes) {
    for (const auto& v : emu_block->shared_filled)
        if (v.first == p) return;
    emu_block->shared_filled.push_back({(char*)p, bytes});
    memset(p, 0xff, bytes);
}
// whether [p, p + bytes) lies in one of the block's __shared__ variables (declared so far)
inline bool emu_in_shared(const void* p, size_t bytes) {
    for (const auto& v : emu_block->shared_filled)
        if ((const char*)p >= v.first && (const char*)p + bytes <= v.first + v.second) return true;
    return false;
}

// The order the scheduler runs ready threads in, from EMU_ORDER. CUDA promises no order between
// threads until they synchronise, so a race-free kernel gives the same bits in every order, while
// one that reads another thread's write without the barrier between them reads it in one order
// and misses it in another:
//   forward        (unset) each round runs every ready thread, in order, to its next wait: a warp
//                  operation then holds its warp until every thread has had its turn
//   reverse        the same, last thread first, and a grid's blocks last first
//   ahead          each warp in turn runs as far as it can (through its warp operations, to a block
//                  barrier or its end) before the next starts: the warps as far apart as CUDA allows
//   ahead-reverse  the same, last warp (and lane, and block) first, and each cp.async copy lands at
//                  once, the earliest it may (in the others, at the wait that covers it, the latest)
struct EmuOrder { bool reverse, ahead, early_copies; };
inline EmuOrder emu_order() {
    static const EmuOrder order = [] {
        const char* o = getenv("EMU_ORDER");
        if (!o || !strcmp(o, "forward")) return EmuOrder{false, false, false};
        if (!strcmp(o, "reverse")) return EmuOrder{true, false, false};
        if (!strcmp(o, "ahead")) return EmuOrder{false, true, false};
        if (!strcmp(o, "ahead-reverse")) return EmuOrder{true, true, true};
        fprintf(stderr, "cuda_host_emulation: EMU_ORDER=%s: expected forward, reverse, ahead or ahead-reverse\n", o);
        exit(1);
    }();
    return order;
}

// The fibers' stacks, one slot per thread of a block, kept by each CPU thread for its next block.
// A fiber that has run a kernel to its end waits at its slot's `restart` for the next block's
// thread of its index, so only a slot's first fiber is started through ucontext (whose calls make
// a system call each); the rest is _setjmp / _longjmp.
struct EmuSlot {
    jmp_buf restart;
    void* asan_fake = nullptr;  // ASan's state of this fiber while it is switched out
};
struct EmuSlots {
    static constexpr size_t stack_size = 64 * 1024;
    std::unique_ptr<char[]> stacks;  // uninitialised
    unsigned count = 0;              // slots with a stack
    unsigned ready = 0;              // slots [0, ready) hold a fiber waiting at restart
    std::unique_ptr<EmuSlot[]> slot;
};
inline thread_local EmuSlots emu_slots;

// Under ASan (make sanitize), every switch between a fiber's stack and the scheduler's is announced
// to it, as its fiber interface asks, so that it knows which stack is live
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
inline thread_local const void* emu_sched_bottom = nullptr;
inline thread_local size_t emu_sched_size = 0;
inline thread_local void* emu_sched_fake = nullptr;
inline void emu_asan_to_fiber(unsigned t) {
    __sanitizer_start_switch_fiber(&emu_sched_fake, emu_slots.stacks.get() + EmuSlots::stack_size * t, EmuSlots::stack_size);
}
inline void emu_asan_in_fiber() { __sanitizer_finish_switch_fiber(emu_slots.slot[emu_tid].asan_fake, &emu_sched_bottom, &emu_sched_size); }
inline void emu_asan_to_sched() { __sanitizer_start_switch_fiber(&emu_slots.slot[emu_tid].asan_fake, emu_sched_bottom, emu_sched_size); }
inline void emu_asan_in_sched() { __sanitizer_finish_switch_fiber(emu_sched_fake, nullptr, nullptr); }
#else
inline void emu_asan_to_fiber(unsigned) {}
inline void emu_asan_in_fiber() {}
inline void emu_asan_to_sched() {}
inline void emu_asan_in_sched() {}
#endif

// The running thread stops until the scheduler releases `w` (its warp, block or cluster).
// Switches are _setjmp / _longjmp between the fibers' stacks and the scheduler's (no signal mask
// saved: ucontext's swapcontext makes a system call each time).
inline void emu_wait(EmuWait w) {
    EmuThread& me = emu_block->threads[emu_tid];
    me.wait = w;
    if (!_setjmp(me.resume)) {
        emu_asan_to_sched();
        _longjmp(emu_block->sched, 1);
    }
    emu_asan_in_fiber();
}
inline void __syncthreads() { emu_wait(EMU_BLOCK); }
// `op`: which warp operation (a shuffle, ldmatrix, ...): a warp's lanes must all wait at the same kind.
// `mask`: the lanes it names (ldmatrix and mma are .aligned: the whole warp)
inline void emu_syncwarp(const char* op, unsigned mask = 0xffffffffu) {
    emu_block->threads[emu_tid].warp_op = op;
    emu_block->threads[emu_tid].warp_mask = mask;
    emu_wait(EMU_WARP);
}
// a warp operation's mask must name the lane that runs it (PTX ISA: undefined otherwise)
inline void emu_check_mask(unsigned mask, const char* op) {
    if (!((mask >> (emu_tid % 32)) & 1)) {
        char what[96];
        snprintf(what, sizeof what, "%s: the mask 0x%08x leaves out lane %u, which runs it", op, mask, emu_tid % 32);
        emu_fail(what);
    }
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_check_mask(mask, "__syncwarp");
    emu_syncwarp("__syncwarp", mask);
}

inline void emu_fiber_main() {
    emu_asan_in_fiber();
    for (;;) {  // one kernel per block this slot serves
        (*emu_block->kernel)();
        emu_block->threads[emu_tid].wait = EMU_DONE;
        if (!_setjmp(emu_slots.slot[emu_tid].restart)) {
            emu_asan_to_sched();
            _longjmp(emu_block->sched, 1);
        }
        emu_asan_in_fiber();
    }
}

// The warp of threads lo .. lo + n goes on when its live threads all wait at a warp operation.
// Every live lane a waiting lane's mask names must wait there with the same mask (CUDA: undefined
// otherwise). Returns how many it released.
inline unsigned emu_release_warp(EmuBlock& blk, unsigned lo, unsigned n) {
    unsigned waiting = 0, live = 0;
    for (unsigned t = lo; t < lo + n; t++) {
        waiting += blk.threads[t].wait == EMU_WARP;
        live += blk.threads[t].wait != EMU_DONE;
    }
    if (waiting == 0 || waiting != live) return 0;
    const char* op = nullptr;  // the first waiting lane's: every other one must wait at the same kind
    unsigned mask = 0;
    bool one_mask = true;
    for (unsigned t = lo; t < lo + n; t++)
        if (blk.threads[t].wait == EMU_WARP) {
            if (op && strcmp(op, blk.threads[t].warp_op) != 0) {
                char what[160];
                snprintf(what, sizeof what, "a warp's lanes wait at different warp operations: lane %u at %s, an earlier one at %s", t % 32,
                         blk.threads[t].warp_op, op);
                emu_fail(what);
            }
            one_mask = one_mask && (!op || blk.threads[t].warp_mask == mask);
            op = blk.threads[t].warp_op;
            mask = blk.threads[t].warp_mask;
        }
    for (unsigned t = lo; !one_mask && t < lo + n; t++)  // lanes in groups of their own: each group one mask
        for (unsigned u = lo; u < lo + n; u++) {
            const EmuThread &a = blk.threads[t], &b = blk.threads[u];
            if (a.wait == EMU_WARP && b.wait == EMU_WARP && ((a.warp_mask >> (u % 32)) & 1) && b.warp_mask != a.warp_mask) {
                char what[160];
                snprintf(what, sizeof what, "%s: lane %u's mask 0x%08x names lane %u, which runs it with the mask 0x%08x", op, t % 32,
                         a.warp_mask, u % 32, b.warp_mask);
                emu_fail(what);
            }
        }
    for (unsigned t = lo; t < lo + n; t++)
        if (blk.threads[t].wait == EMU_WARP) blk.threads[t].wait = EMU_RUN;
    return waiting;
}

// Runs thread t of the block until it waits or ends (its own frame: nothing here is live across the jumps)
[[gnu::noinline]] inline void emu_run_thread(EmuBlock& blk, unsigned t, unsigned block_x) {
    threadIdx = {t % block_x, t / block_x, 0};
    emu_tid = t;
    if (!_setjmp(blk.sched)) {  // back here when thread t waits or ends
        EmuThread& th = blk.threads[t];
        emu_asan_to_fiber(t);
        if (!th.started) {
            th.started = true;
            if (t < emu_slots.ready) _longjmp(emu_slots.slot[t].restart, 1);
            static thread_local ucontext_t first;  // setcontext reads it at once
            getcontext(&first);
            first.uc_stack.ss_sp = emu_slots.stacks.get() + EmuSlots::stack_size * t;
            first.uc_stack.ss_size = EmuSlots::stack_size;
            first.uc_link = nullptr;
            makecontext(&first, emu_fiber_main, 0);
            setcontext(&first);
        }
        _longjmp(th.resume, 1);
    }
    emu_asan_in_sched();
}

// Runs f as one block of `threads` threads on this CPU thread. The scheduler runs every runnable
// fiber until it waits (in emu_order's order), then releases what is complete: a warp whose live threads all wait at a
// warp operation, or the block when all its live threads wait at __syncthreads (the cluster: and
// every other block of the cluster has arrived too).
// Returns the number of cluster barriers the block passed.
inline int emu_run_block(EmuDim3 block, const std::function<void()>& f, std::barrier<>* cluster) {
    const unsigned threads = block.x * block.y;
    EmuSlots& slots = emu_slots;
    if (slots.count < threads) {  // new stacks: the fibers waiting on the old ones are dropped
        slots.stacks.reset(new char[EmuSlots::stack_size * threads]);
        slots.slot.reset(new EmuSlot[threads]);
        slots.count = threads;
        slots.ready = 0;
    }
    EmuBlock blk;
    blk.threads.resize(threads);
    blk.kernel = &f;
    blk.cluster = cluster;
    emu_block = &blk;
    blockDim = {block.x, block.y, 1};
    const EmuOrder order = emu_order();
    const unsigned warps = (threads + 31) / 32;
    for (;;) {
        unsigned released = 0;
        for (unsigned wi = 0; wi < warps; wi++) {
            const unsigned w = order.reverse ? warps - 1 - wi : wi;
            const unsigned lo = 32 * w, n = std::min(threads, lo + 32) - lo;
            do {
                for (unsigned i = 0; i < n; i++) {
                    const unsigned t = lo + (order.reverse ? n - 1 - i : i);
                    if (blk.threads[t].wait == EMU_RUN) emu_run_thread(blk, t, block.x);
                }
            } while (order.ahead && emu_release_warp(blk, lo, n));  // ahead: on with this warp while it can go on
        }
        unsigned done = 0, at_block = 0, at_cluster = 0;
        for (const EmuThread& th : blk.threads) {
            done += th.wait == EMU_DONE;
            at_block += th.wait == EMU_BLOCK;
            at_cluster += th.wait == EMU_CLUSTER;
        }
        if (done == threads) break;
        for (unsigned w = 0; w < warps; w++) released += emu_release_warp(blk, 32 * w, std::min(threads, 32 * w + 32) - 32 * w);
        if (released) continue;
        if (at_block && at_block + done == threads) {
            if (done) emu_fail("__syncthreads after some of the block's threads returned");
            for (EmuThread& th : blk.threads) th.wait = EMU_RUN;
        } else if (at_cluster && at_cluster + done == threads) {
            if (done) emu_fail("a cluster barrier after some of the block's threads returned");
            if (!cluster) emu_fail("a cluster barrier in a launch without a cluster");
            cluster->arrive_and_wait();
            blk.cluster_syncs++;
            for (EmuThread& th : blk.threads) th.wait = EMU_RUN;
        } else {
            emu_fail("deadlock: threads wait at different barriers (a warp operation or __syncthreads not reached by all)");
        }
    }
    slots.ready = std::max(slots.ready, threads);
    emu_block = nullptr;
    return blk.cluster_syncs;
}

// runs kernel f on a (gx, gy) grid of blocks of `block` (x, y) threads, one block after another
// (the last first with EMU_ORDER=reverse or ahead-reverse)
inline void emu_launch(unsigned gx, unsigned gy, EmuDim3 block, const std::function<void()>& f) {
    const bool reverse = emu_order().reverse;
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            gridDim = {gx, gy, 1};
            blockIdx = reverse ? EmuDim3{gx - 1 - bx, gy - 1 - by, 0} : EmuDim3{bx, by, 0};
            emu_run_block(block, f, nullptr);
        }
}
inline void emu_launch(unsigned gx, unsigned gy, unsigned threads, const std::function<void()>& f) { emu_launch(gx, gy, EmuDim3{threads, 1, 1}, f); }

// ----------------------------------------------------------------------------
// thread block clusters (sm_90): cooperative_groups::this_cluster() for a 1D grid of 1D clusters

inline thread_local char emu_tls_anchor;  // where this block's thread-local storage is
inline thread_local int emu_tls_probe;    // a second variable, to check that every block's storage has one layout
struct EmuCluster {
    unsigned size = 0;
    std::vector<char*> anchor;  // each rank's emu_tls_anchor
};
inline thread_local EmuCluster* emu_cluster = nullptr;
inline thread_local unsigned emu_rank = 0;

// kernel f on gx blocks of `threads` threads, in clusters of `cluster` consecutive blocks, each
// cluster's blocks at the same time on CPU threads of their own
inline int emu_cluster_launches = 0;  // for tests that must know a launcher took its cluster path
inline void emu_launch_cluster(unsigned gx, unsigned cluster, unsigned threads, const std::function<void()>& f) {
    emu_cluster_launches++;
    if (cluster == 0 || gx % cluster != 0) emu_fail("the grid is not a whole number of clusters");
    for (unsigned first = 0; first < gx; first += cluster) {
        EmuCluster cl;
        cl.size = cluster;
        cl.anchor.assign(cluster, nullptr);
        std::vector<ptrdiff_t> probe(cluster);
        std::vector<int> syncs_passed(cluster);
        std::barrier<> started(cluster), syncs(cluster);
        std::vector<std::thread> blocks;
        for (unsigned r = 0; r < cluster; r++)
            blocks.emplace_back([&, r] {
                gridDim = {gx, 1, 1};
                blockIdx = {first + r, 0, 0};
                emu_cluster = &cl;
                emu_rank = r;
                cl.anchor[r] = &emu_tls_anchor;
                probe[r] = (char*)&emu_tls_probe - &emu_tls_anchor;
                started.arrive_and_wait();  // every block's storage is known before any block maps another's
                if (probe[r] != probe[0]) emu_fail("the blocks' thread-local storage differs in layout: map_shared_rank cannot be emulated");
                syncs_passed[r] = emu_run_block(EmuDim3{threads, 1, 1}, f, &syncs);
                syncs.arrive_and_drop();  // a block that ends leaves the barrier: a missing sync is reported below, not hung on
                emu_cluster = nullptr;
            });
        for (auto& b : blocks) b.join();
        for (unsigned r = 1; r < cluster; r++)
            if (syncs_passed[r] != syncs_passed[0]) emu_fail("the blocks of a cluster passed different numbers of cluster barriers");
    }
}

namespace cooperative_groups {
struct cluster_group {
    unsigned num_blocks() const { return emu_cluster->size; }
    unsigned block_rank() const { return emu_rank; }
    // arrive and wait are one barrier here: every thread of every block reaches the wait
    void barrier_arrive() const {}
    void barrier_wait() const { emu_wait(EMU_CLUSTER); }
    void sync() const { emu_wait(EMU_CLUSTER); }
    // the same __shared__ variable in block `rank` of the cluster
    template <typename T>
    T* map_shared_rank(T* p, int rank) const {
        if (rank < 0 || (unsigned)rank >= emu_cluster->size) emu_fail("map_shared_rank: rank outside the cluster");
        return reinterpret_cast<T*>(reinterpret_cast<char*>(p) + (emu_cluster->anchor[rank] - emu_cluster->anchor[emu_rank]));
    }
};
inline cluster_group this_cluster() {
    if (!emu_cluster) emu_fail("this_cluster() in a launch without a cluster");
    return {};
}
}  // namespace cooperative_groups

// ----------------------------------------------------------------------------
// the runtime calls the launchers make. With test/mock_cuda_runtime.h included first (the
// emulated trainer), they are its calls, on its device memory; otherwise (the kernel tests) the
// little below, on host memory, where every call succeeds and a failed launch stops the test itself.

#ifndef MOCK_CUDA_RUNTIME
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
inline const char* cudaGetErrorString(cudaError_t) { return "error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline void nvtxRangePushA(const char*) {}
inline void nvtxRangePop() {}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = 0) { memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = 0) { memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 9; return cudaSuccess; }  // an sm_90 device: clusters
template <typename T>
cudaError_t cudaGetSymbolAddress(void** p, T& symbol) { *p = (void*)&symbol; return cudaSuccess; }  // a __device__ array is a host one here
inline cudaError_t cudaMalloc(void** p, size_t n) { *p = malloc(n ? n : 1); return cudaSuccess; }
template <typename T> cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
inline cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
inline void emu_device_span(const char*, const void*, size_t) {}
inline bool mock_captured(const char*, cudaStream_t, const std::function<cudaError_t()>&) { return false; }  // no capture: run now
#else
// an operand the emulated cuBLASLt reads or writes lies inside one cudaMalloc block
inline void emu_device_span(const char* what, const void* p, size_t bytes) { mock_device_arg("matmul_cublaslt_core", what, (const char*)p, bytes); }
#endif  // MOCK_CUDA_RUNTIME

enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    struct { struct { unsigned x, y, z; } clusterDim; } val;
};
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute* attrs;
    unsigned numAttrs;
};
inline float __fmul_rn(float a, float b) { return a * b; }  // no contraction into an FMA (ISO C++: -ffp-contract=off)

// kernel<<<grid, block, smem, stream>>>(args); as test/emulate_launches.pl writes it:
// emu_launch_helper(grid, block, smem, stream) = [=] { kernel(args); };
// the call holds copies of the arguments, so a stream capture can keep it for the graph's launches
struct EmuLaunch {
    dim3 grid, block;
    cudaStream_t stream;
    template <typename F>
    void operator=(const F& kernel_call) const {
        if (block.z != 1 || grid.z != 1 || block.x * block.y > 1024) emu_fail("the emulation runs 1D or 2D blocks of up to 1024 threads on 1D or 2D grids");
        const unsigned gx = grid.x, gy = grid.y;
        const EmuDim3 b{block.x, block.y, 1};
        if (mock_captured("a kernel launch", stream, [=] { emu_launch(gx, gy, b, kernel_call); return (cudaError_t)cudaSuccess; })) return;
        emu_launch(gx, gy, b, kernel_call);
    }
};
inline EmuLaunch emu_launch_helper(dim3 grid, dim3 block, size_t = 0, cudaStream_t stream = 0) { return {grid, block, stream}; }

template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
    unsigned cluster = 1;
    for (unsigned i = 0; i < config->numAttrs; i++)
        if (config->attrs[i].id == cudaLaunchAttributeClusterDimension) {
            if (config->attrs[i].val.clusterDim.y != 1 || config->attrs[i].val.clusterDim.z != 1) emu_fail("the emulation runs 1D clusters");
            cluster = config->attrs[i].val.clusterDim.x;
        }
    if (config->gridDim.y != 1 || config->blockDim.y != 1) emu_fail("the emulation runs clusters on 1D grids of 1D blocks");
    const unsigned gx = config->gridDim.x, threads = config->blockDim.x;
    auto call = [=] { kernel(args...); };  // copies of the arguments, as a capture keeps them
    if (mock_captured("cudaLaunchKernelEx", config->stream, [=] { emu_launch_cluster(gx, cluster, threads, call); return (cudaError_t)cudaSuccess; }))
        return cudaSuccess;
    emu_launch_cluster(gx, cluster, threads, call);
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// warp shuffles: every lane posts its value, the warp waits, each reads its source lane's. The
// running lane must be in the mask (PTX ISA: undefined otherwise). A lane of the warp that has
// returned, or that the block does not have, posts nothing: reading it, or a lane the reader's
// mask leaves out, gives the undefined value as 0xff bytes (NaN, -1), and its ballot bit is 0.

inline thread_local uint64_t emu_shfl_buf[1024];
inline bool emu_lane_live(unsigned lane) {  // in the running warp
    const unsigned t = emu_tid / 32 * 32 + lane;
    return t < emu_block->threads.size() && emu_block->threads[t].wait != EMU_DONE;
}
template <typename T>
T emu_shfl(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "a shuffle moves one register or a pair");
    emu_check_mask(mask, "a warp shuffle");
    memcpy(&emu_shfl_buf[emu_tid], &v, sizeof(T));
    emu_syncwarp("a shuffle", mask);
    T r;
    if (emu_lane_live(src_lane) && ((mask >> src_lane) & 1)) memcpy(&r, &emu_shfl_buf[emu_tid / 32 * 32 + src_lane], sizeof(T));
    else memset(&r, 0xff, sizeof(T));
    emu_syncwarp("a shuffle", mask);  // nobody posts the next value before every lane has read this one
    return r;
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask) { return emu_shfl(mask, v, (int)(emu_tid % 32) ^ lane_mask); }
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta) {  // a source past lane 31 gives the lane its own value
    const int lane = emu_tid % 32, src = lane + (int)delta;
    return emu_shfl(mask, v, src < 32 ? src : lane);
}

template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta) {  // a source below lane 0 gives the lane its own value
    const int lane = emu_tid % 32, src = lane - (int)delta;
    return emu_shfl(mask, v, src >= 0 ? src : lane);
}
template <typename T> T __shfl_sync(unsigned mask, T v, int src_lane) { return emu_shfl(mask, v, src_lane & 31); }
// bit i of the result is lane i's predicate
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu_check_mask(mask, "__ballot_sync");
    const unsigned lane = emu_tid % 32;
    unsigned mine = pred ? 1u << lane : 0u, all = 0;
    emu_shfl_buf[emu_tid] = mine;
    emu_syncwarp("__ballot_sync", mask);
    for (unsigned i = 0; i < 32; i++)
        if (emu_lane_live(i)) all |= (unsigned)emu_shfl_buf[emu_tid / 32 * 32 + i];
    emu_syncwarp("__ballot_sync", mask);
    return all & mask;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }  // integers: order-independent
inline void __trap() { emu_fail("__trap"); }

// ----------------------------------------------------------------------------
// bf16 as cuda_bf16.h's conversions see it, round-to-nearest-even as __float2bfloat16_rn; then
// llmc/cuda_common.cuh itself (build/emu's copy, its launches rewritten), which defines bf16,
// to_float / from_float, Packed128, the reductions, deterministic_sum and cast_copy

inline float emu_bf16_to_float(uint16_t bits) { uint32_t u = (uint32_t)bits << 16; float f; memcpy(&f, &u, 4); return f; }
struct __nv_bfloat16 {
    uint16_t bits;
    explicit operator float() const { return emu_bf16_to_float(bits); }  // as cuda_bf16.h's conversion, for host code's (float)x
};
inline float __bfloat162float(__nv_bfloat16 x) { return emu_bf16_to_float(x.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (isnan(x)) return __nv_bfloat16{0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

// cuBLASLt's handle, status and epilogues (the values cublasLt.h gives them), for llmc/matmul.cuh;
// its one call into cuBLASLt is emu_cublaslt_matmul below
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0 };
typedef struct EmuCublasLt* cublasLtHandle_t;
enum cublasLtEpilogue_t {
    CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_RELU = 2, CUBLASLT_EPILOGUE_BIAS = 4, CUBLASLT_EPILOGUE_RELU_BIAS = 6,
    CUBLASLT_EPILOGUE_GELU = 32, CUBLASLT_EPILOGUE_GELU_BIAS = 36, CUBLASLT_EPILOGUE_GELU_AUX = 160, CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 164,
    CUBLASLT_EPILOGUE_DGELU = 192,
};
inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    static char handle;
    *h = (cublasLtHandle_t)&handle;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

#include "cuda_common.cuh"
#include "gelu.cuh"  // gelu_tanh and its gradient, for the GELU epilogues below

// ----------------------------------------------------------------------------
// cuBLASLt's matmul, as llmc/matmul.cuh's matmul_cublaslt_core asks for it once its checks have
// passed (row-major, its argument conventions): for each of `batch` matrices,
//   D (m,n) = epilogue(alpha · op(A) · op(B) + beta · C + bias)
// summed in fp32 in k order (cuBLAS's order is its own: results agree to fp32 rounding, not bit for
// bit), then rounded once to D's type. GELU is gelu.cuh's tanh form (cuBLASLt's own
// approximation is not known here); GELU_AUX stores the pre-GELU value (D's type), DGELU multiplies
// by gelu' of the stored one. Every operand must lie in device memory (with the mock runtime).

inline float emu_load(const void* p, size_t i, cudaDataType_t t) {
    return t == CUDA_R_32F ? ((const float*)p)[i] : to_float(((const bf16*)p)[i]);
}
inline void emu_store(void* p, size_t i, cudaDataType_t t, float v) {
    if (t == CUDA_R_32F) ((float*)p)[i] = v;
    else ((bf16*)p)[i] = from_float<bf16>(v);
}
// bytes spanned by `rows` rows of `cols` elements, ld apart, in each of `batch` matrices stride apart
inline size_t emu_span(long long rows, long long cols, long long ld, int batch, long long stride, size_t size) {
    return (size_t)(((long long)(batch - 1) * stride + (rows - 1) * ld + cols) * (long long)size);
}

inline void emu_cublaslt_matmul(void* d, const void* c, const void* a, const void* b, const void* bias, void* aux, int m, int n, int k,
                                bool transA, bool transB, int lda, int ldb, int ldd, int batch, long long strideA, long long strideB,
                                long long strideD, cudaDataType_t ab_type, cudaDataType_t d_type, float alpha, float beta,
                                cublasLtEpilogue_t epilogue, cudaStream_t stream) {
    if (mock_captured("cublasLtMatmul", stream, [=] {
            emu_cublaslt_matmul(d, c, a, b, bias, aux, m, n, k, transA, transB, lda, ldb, ldd, batch, strideA, strideB, strideD, ab_type,
                                d_type, alpha, beta, epilogue, stream);
            return (cudaError_t)cudaSuccess;
        }))
        return;
    const size_t ab = ab_type == CUDA_R_32F ? 4 : 2, ds = d_type == CUDA_R_32F ? 4 : 2;
    emu_device_span("A", a, emu_span(transA ? k : m, transA ? m : k, lda, batch, strideA, ab));
    emu_device_span("B", b, emu_span(transB ? n : k, transB ? k : n, ldb, batch, strideB, ab));
    emu_device_span("D", d, emu_span(m, n, ldd, batch, strideD, ds));
    if (beta != 0.0f && c != d) emu_device_span("C", c, emu_span(m, n, ldd, 1, 0, ds));
    if (bias) emu_device_span("bias", bias, (size_t)n * ds);
    if (aux) emu_device_span("aux", aux, (size_t)m * n * ds);
    const bool relu = epilogue == CUBLASLT_EPILOGUE_RELU || epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
    const bool gelu = epilogue == CUBLASLT_EPILOGUE_GELU || epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
                      epilogue == CUBLASLT_EPILOGUE_GELU_AUX || epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    // op(A)'s rows and op(B)'s columns as contiguous fp32 rows of k; output rows split over CPU
    // threads, each output one dot product in k order, so the bits do not depend on the split
    std::vector<float> Ar((size_t)m * k), Bc((size_t)n * k);
    for (int i = 0; i < batch; i++) {
        const char* A = (const char*)a + (size_t)i * strideA * ab;
        const char* B = (const char*)b + (size_t)i * strideB * ab;
        char* D = (char*)d + (size_t)i * strideD * ds;
        const void* C = c == d ? D : c;  // C is D itself, or (unbatched only) a matrix of its own
        for (int r = 0; r < m; r++)
            for (int p = 0; p < k; p++) Ar[(size_t)r * k + p] = emu_load(A, transA ? (size_t)p * lda + r : (size_t)r * lda + p, ab_type);
        for (int j = 0; j < n; j++)
            for (int p = 0; p < k; p++) Bc[(size_t)j * k + p] = emu_load(B, transB ? (size_t)j * ldb + p : (size_t)p * ldb + j, ab_type);
        auto rows = [&](int r0, int r1) {
            for (int r = r0; r < r1; r++)
                for (int j = 0; j < n; j++) {
                    const float* x = &Ar[(size_t)r * k];
                    const float* y = &Bc[(size_t)j * k];
                    float acc = 0.0f;
                    for (int p = 0; p < k; p++) acc += x[p] * y[p];
                    float v = alpha * acc;
                    if (beta != 0.0f) v += beta * emu_load(C, (size_t)r * ldd + j, d_type);
                    if (bias) v += emu_load(bias, j, d_type);
                    if (relu) v = std::max(v, 0.0f);
                    if (gelu) {
                        if (aux) emu_store(aux, (size_t)r * n + j, d_type, v);
                        v = gelu_tanh(v);
                    }
                    if (epilogue == CUBLASLT_EPILOGUE_DGELU) v *= gelu_tanh_grad(emu_load(aux, (size_t)r * n + j, d_type));
                    emu_store(D, (size_t)r * ldd + j, d_type, v);
                }
        };
        const int threads = (double)m * n * k < 1e7 ? 1 : (int)std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; t++) pool.emplace_back(rows, (int)((long long)m * t / threads), (int)((long long)m * (t + 1) / threads));
        rows(0, (int)((long long)m / threads));
        for (std::thread& th : pool) th.join();
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
inline thread_local const void* emu_rows[1024];
inline void emu_ldmatrix(uint32_t* r, const bf16* row, bool trans) {
    const int tid = emu_tid, lane = tid % 32, w = tid / 32;
    // each row: 8 bf16 of shared memory, 16-byte aligned (PTX ISA, ldmatrix)
    if ((uintptr_t)row % 16 != 0) emu_fail("ldmatrix: a row address is not 16-byte aligned");
    if (!emu_in_shared(row, 16)) emu_fail("ldmatrix: a row is not inside one of the block's __shared__ variables");
    emu_rows[tid] = row;
    emu_syncwarp("ldmatrix");
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
    emu_syncwarp("ldmatrix");
}
inline void ldmatrix_x4(uint32_t* r, const bf16* row) { emu_ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t* r, const bf16* row) { emu_ldmatrix(r, row, true); }

// d (16x8) += a (16x16) · b (16x8) for each warp, products of bf16 values summed in fp32
inline thread_local uint32_t emu_a[1024][4], emu_b[1024][2];
inline thread_local float emu_d[1024][4];
inline void mma_16816(float* d, const uint32_t* a, const uint32_t* b) {
    const int tid = emu_tid, lane = tid % 32, w = tid / 32;
    for (int i = 0; i < 4; i++) emu_a[tid][i] = a[i];
    for (int i = 0; i < 2; i++) emu_b[tid][i] = b[i];
    emu_syncwarp("mma");
    auto A = [&](int row, int k) { return to_float(emu_half(emu_a[w * 32 + (row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2)); };
    auto B = [&](int k, int n) { return to_float(emu_half(emu_b[w * 32 + n * 4 + (k % 8) / 2][k >= 8], k % 2)); };
    const int g = lane / 4, c = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i / 2), col = 2 * c + i % 2;
        float acc = d[i];
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        emu_d[tid][i] = acc;
    }
    emu_syncwarp("mma");
    for (int i = 0; i < 4; i++) d[i] = emu_d[tid][i];
}

// cp.async: a copy may land any time from its issue to the cp_async_wait<N> that covers it. Here it
// lands at the wait, the latest (a read before the wait, or before the barrier after the other
// threads' waits, sees the old bytes), except in EMU_ORDER=ahead-reverse, where it lands at once,
// the earliest (a copy into a buffer that other warps still read overwrites it under them)
inline void emu_cp_land(const EmuCopy& cp) {
    if (cp.bytes) memcpy(cp.dst, cp.src, 16);
    else memset(cp.dst, 0, 16);
}
inline void cp_async16(void* smem, const void* gmem, int src_bytes) {
    // both addresses aligned to the copy's 16 bytes (PTX ISA, cp.async); the destination in shared
    // memory, the source not
    if ((uintptr_t)smem % 16 != 0 || (uintptr_t)gmem % 16 != 0) emu_fail("cp.async: an address is not 16-byte aligned");
    if (!emu_in_shared(smem, 16)) emu_fail("cp.async: the destination is not inside one of the block's __shared__ variables");
    if (emu_in_shared(gmem, 1)) emu_fail("cp.async: the source is in shared memory");
    if (emu_order().early_copies) emu_cp_land({smem, gmem, src_bytes});
    else emu_block->threads[emu_tid].open.push_back({smem, gmem, src_bytes});
}
inline void cp_async_commit() {
    EmuThread& me = emu_block->threads[emu_tid];
    me.groups.push_back(me.open);
    me.open.clear();
}
template <int N> void cp_async_wait() {
    EmuThread& me = emu_block->threads[emu_tid];
    while ((int)me.groups.size() > N) {
        for (const EmuCopy& cp : me.groups.front()) emu_cp_land(cp);
        me.groups.erase(me.groups.begin());
    }
}
