/*
test/mock_cuda_runtime.h: the CUDA runtime on the CPU, for the two builds of train_gpt2_sae.cu that
run without a GPU: train_gpt2_sae_mocked (test/mock_cuda.h adds a CPU stand-in for every launcher)
and train_gpt2_sae_emulated (test/cuda_host_emulation.h runs llmc's kernels as they are written).
Device memory is host memory that cudaMalloc hands out and remembers, so what a device would refuse
is refused here too: a copy whose kind does not match its pointers, a memset outside device memory,
an event read before it was recorded, a device-to-host async copy into pageable memory.
cudaMalloc fills its block with 0xff bytes (NaN in fp32 and bf16, -1 in integers), so a read of
memory nothing wrote shows up, as compute-sanitizer's initcheck would report it; a device-to-host
cudaMemcpyAsync lands only at the synchronisation that covers it, so a result read too early is
that fill. MOCK_CUDA_MEMORY_GIB sets the device memory cudaMemGetInfo reports (default 80);
MOCK_CUDA_COUNT_SYNCS prints the host's waits for the device at exit. Stream capture and graphs
(--cuda-graph on) are recorded and replayed: see "stream capture" below.
*/
#pragma once
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <functional>
#include <map>
#include <vector>
#include "../llmc/utils.h"  // now_seconds
#define MOCK_CUDA_RUNTIME   // test/cuda_host_emulation.h: the runtime calls are here, not in its own shim

// ----------------------------------------------------------------------------
// the CUDA runtime: errors, device memory, copies, events, the device

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureUnmatched = 903,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
struct MockStream {};
typedef MockStream* cudaStream_t;  // one stream: every call runs at once, in order (D2H async copies: see below)
struct MockEvent {
    double seconds = -1.0;  // the host time it was last recorded, -1 before
    long long seq = -1;     // the async copies enqueued before that record: mock_seq then
};
typedef MockEvent* cudaEvent_t;

inline const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
        case cudaErrorStreamCaptureUnmatched: return "the capture was not initiated in this stream";
    }
    return "unknown error";
}

// ----------------------------------------------------------------------------
// stream capture (the trainer's --cuda-graph on): between cudaStreamBeginCapture and
// cudaStreamEndCapture the capturing stream's work is recorded, not run, and each cudaGraphLaunch
// runs the record in order. What a graph cannot hold fails the capture, as on a device: a host wait
// (synchronous copies and memsets, stream, device and event synchronisation), allocating or
// freeing, work on another stream (the legacy stream 0 here). Stricter than a device in two
// points: a plain cudaEventRecord fails during a capture, since on a device it adds no node (it
// only orders captured streams), so a phase timed with it inside a graph would never be recorded;
// and so does an async copy from or to pageable host memory, which the graph would read or write
// at each launch, long after the host code that filled or reads it has moved on.
// Kernel launches and the emulated cuBLASLt record themselves through mock_captured
// (test/cuda_host_emulation.h); test/mock_cuda.h's launchers run at once, so its build
// (MOCK_CUDA_NO_CAPTURE) refuses to capture.
typedef std::vector<std::function<cudaError_t()>> MockOps;
struct MockGraph { MockOps ops; };
struct MockGraphExec { MockOps ops; };
typedef MockGraph* cudaGraph_t;
typedef MockGraphExec* cudaGraphExec_t;
typedef struct MockGraphNode* cudaGraphNode_t;
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
inline MockGraph* mock_capture = nullptr;  // the graph being captured; null outside a capture
inline cudaStream_t mock_capture_stream = nullptr;

// cudaSuccess outside a capture; inside one, fn is a call no graph can hold: the capture fails
inline cudaError_t mock_capture_refuses(const char* fn) {
    if (!mock_capture) return cudaSuccess;
    fprintf(stderr, "[mock CUDA] %s during a stream capture: a graph cannot hold it (a host wait, an allocation, or an event "
            "record that adds no node)\n", fn);
    return cudaErrorStreamCaptureUnsupported;
}
// true when work on stream s goes into the graph being captured instead of running now; work on
// another stream during a capture invalidates it (the legacy stream synchronises with the
// capturing one), which ends the run here
inline bool mock_captured(const char* fn, cudaStream_t s, std::function<cudaError_t()> op) {
    if (!mock_capture) return false;
    if (s != mock_capture_stream) {
        fprintf(stderr, "[mock CUDA] %s on a stream other than the one being captured (the legacy stream 0?): the capture is invalidated\n", fn);
        exit(EXIT_FAILURE);
    }
    mock_capture->ops.push_back(std::move(op));
    return true;
}

// the device's memory: every cudaMalloc block, start -> bytes
inline std::map<uintptr_t, size_t> mock_blocks;
inline size_t mock_bytes_in_use = 0;

inline size_t mock_memory_total() {
    const char* gib = getenv("MOCK_CUDA_MEMORY_GIB");
    return (size_t)((gib ? atof(gib) : 80.0) * 1073741824.0);
}

// whether [p, p + bytes) lies inside one of `blocks` (start -> bytes)
inline bool mock_in_one_block(const std::map<uintptr_t, size_t>& blocks, const void* p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    auto it = blocks.upper_bound(a);
    if (it == blocks.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}
inline bool mock_is_device(const void* p, size_t bytes) { return mock_in_one_block(mock_blocks, p, bytes); }

// a kernel argument: n elements of device memory, or the run ends naming the launcher and argument
template <typename T>
inline void mock_device_arg(const char* fn, const char* arg, const T* p, size_t n) {
    if (mock_is_device(p, n * sizeof(T))) return;
    fprintf(stderr, "[mock CUDA] %s: %s = %p is not %zu elements of device memory (a host pointer, or past its cudaMalloc block)\n", fn,
            arg, (const void*)p, n);
    exit(EXIT_FAILURE);
}
#define MOCK_DEV(p, n) mock_device_arg(__func__, #p, p, (size_t)(n))

// a launcher's own precondition, as the device code checks or relies on it
#define MOCK_REQUIRE(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "[mock CUDA] %s: ", __func__); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(EXIT_FAILURE); } } while (0)

// 256-byte aligned as cudaMalloc's, filled with 0xff so that reading unwritten memory gives NaN;
// exactly `bytes` long, so that under ASan an access past the end is reported, as compute-sanitizer's
// memcheck reports one past the size asked for
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
    *p = nullptr;
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    if (mock_bytes_in_use + bytes > mock_memory_total()) return cudaErrorMemoryAllocation;
    if (posix_memalign(p, 256, bytes ? bytes : 1) != 0) {
        *p = nullptr;
        return cudaErrorMemoryAllocation;
    }
    memset(*p, 0xff, bytes);
    mock_blocks[(uintptr_t)*p] = bytes;
    mock_bytes_in_use += bytes;
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }

inline cudaError_t cudaFree(void* p) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    if (!p) return cudaSuccess;
    auto it = mock_blocks.find((uintptr_t)p);
    if (it == mock_blocks.end()) return cudaErrorInvalidValue;
    mock_bytes_in_use -= it->second;
    mock_blocks.erase(it);
    free(p);
    return cudaSuccess;
}

// a copy of `span` bytes from src to dst is of the kind it claims: device pointers in device memory, host pointers not
inline cudaError_t mock_copy_kind(const char* fn, void* dst, const void* src, size_t span, cudaMemcpyKind kind) {
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (mock_is_device(dst, span) == dst_dev && mock_is_device(src, span) == src_dev) return cudaSuccess;
    fprintf(stderr, "[mock CUDA] %s of %zu bytes, kind %d: dst %p is %sdevice memory, src %p is %sdevice memory\n", fn, span, (int)kind,
            dst, mock_is_device(dst, span) ? "" : "not ", src, mock_is_device(src, span) ? "" : "not ");
    return cudaErrorInvalidValue;
}

// pinned host memory (cudaMallocHost): start -> bytes; filled with 0xff as device memory is
inline std::map<uintptr_t, size_t> mock_pinned;
inline cudaError_t cudaMallocHost(void** p, size_t bytes) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);
    mock_pinned[(uintptr_t)*p] = bytes;
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMallocHost(T** p, size_t bytes) { return cudaMallocHost((void**)p, bytes); }
inline cudaError_t cudaFreeHost(void* p) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    if (!p) return cudaSuccess;
    if (!mock_pinned.erase((uintptr_t)p)) return cudaErrorInvalidValue;
    free(p);
    return cudaSuccess;
}
inline bool mock_is_pinned(const void* p, size_t bytes) { return mock_in_one_block(mock_pinned, p, bytes); }

// Device-to-host cudaMemcpyAsync: the bytes are taken when the call is made (the kernels before it
// have all run here) but land in host memory only at the next synchronisation that covers them
// (cudaStreamSynchronize, cudaDeviceSynchronize, a synchronous cudaMemcpy, or cudaEventSynchronize
// of an event recorded after the copy). Host code that reads the result before it synchronises
// reads the 0xff fill or the previous update's values, and the tests see it. The destination must
// be pinned: to pageable memory the copy would synchronise, which the trainer's loop must not.
struct MockPendingCopy { long long seq; void* dst; std::vector<char> bytes; };
inline std::vector<MockPendingCopy> mock_pending;
inline long long mock_seq = 0;     // async copies enqueued so far
inline long long mock_synced = 0;  // all of them up to here are known complete (the last full synchronisation)

// Host waits for the device: full synchronisations, synchronous copies, and cudaEventSynchronize
// of an event not already known complete. With MOCK_CUDA_COUNT_SYNCS set, the count is printed at
// exit ("mock CUDA: N host waits"), so a test can count the training loop's waits per update.
struct MockWaitCounter {
    long long n = 0;
    ~MockWaitCounter() { if (getenv("MOCK_CUDA_COUNT_SYNCS")) fprintf(stderr, "mock CUDA: %lld host waits\n", n); }
};
inline MockWaitCounter mock_waits;

inline void mock_deliver(long long up_to) {
    std::vector<MockPendingCopy> rest;
    for (MockPendingCopy& c : mock_pending) {
        if (c.seq <= up_to) memcpy(c.dst, c.bytes.data(), c.bytes.size());
        else rest.push_back(std::move(c));
    }
    mock_pending.swap(rest);
}

inline void mock_full_sync() {
    mock_deliver(mock_seq);
    mock_synced = mock_seq;
    mock_waits.n++;
}

inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    mock_full_sync();
    if (bytes == 0) return cudaSuccess;
    cudaError_t err = mock_copy_kind(__func__, dst, src, bytes, kind);
    if (err == cudaSuccess) memmove(dst, src, bytes);
    return err;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    const bool pageable = (kind == cudaMemcpyHostToDevice && !mock_is_pinned(src, bytes)) ||
                          (kind == cudaMemcpyDeviceToHost && !mock_is_pinned(dst, bytes));
    if (mock_capture && pageable) return mock_capture_refuses("cudaMemcpyAsync with pageable host memory");
    if (mock_captured(__func__, s, [=] { return cudaMemcpyAsync(dst, src, bytes, kind, s); })) return cudaSuccess;
    if (kind != cudaMemcpyDeviceToHost || bytes == 0) {  // into device memory: at once, in stream order
        if (bytes == 0) return cudaSuccess;
        ++mock_seq;
        cudaError_t err = mock_copy_kind(__func__, dst, src, bytes, kind);
        if (err == cudaSuccess) memmove(dst, src, bytes);
        return err;
    }
    cudaError_t err = mock_copy_kind(__func__, dst, src, bytes, kind);
    if (err != cudaSuccess) return err;
    if (!mock_is_pinned(dst, bytes)) {
        fprintf(stderr, "[mock CUDA] cudaMemcpyAsync of %zu bytes to pageable host memory %p: that copy synchronises; use cudaMallocHost\n",
                bytes, dst);
        return cudaErrorInvalidValue;
    }
    mock_pending.push_back({++mock_seq, dst, std::vector<char>((const char*)src, (const char*)src + bytes)});
    return cudaSuccess;
}

// height rows of width bytes, rows dpitch / spitch bytes apart
inline cudaError_t mock_copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height, cudaMemcpyKind kind) {
    if (width == 0 || height == 0) return cudaSuccess;
    if (width > dpitch || width > spitch) return cudaErrorInvalidValue;
    cudaError_t err = mock_copy_kind(__func__, dst, src, 0, kind);  // the pointers' kinds; the spans below
    if (err == cudaSuccess) err = mock_copy_kind(__func__, (char*)dst + (height - 1) * dpitch, (const char*)src + (height - 1) * spitch, width, kind);
    if (err != cudaSuccess) return err;
    for (size_t r = 0; r < height; r++) memmove((char*)dst + r * dpitch, (const char*)src + r * spitch, width);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height, cudaMemcpyKind kind) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    return mock_copy_2d(dst, dpitch, src, spitch, width, height, kind);
}
inline cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                                     cudaMemcpyKind kind, cudaStream_t s) {
    if (mock_captured(__func__, s, [=] { return cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, s); })) return cudaSuccess;
    return mock_copy_2d(dst, dpitch, src, spitch, width, height, kind);
}

inline cudaError_t mock_memset(void* p, int value, size_t bytes) {
    if (bytes == 0) return cudaSuccess;
    if (!mock_is_device(p, bytes)) {
        fprintf(stderr, "[mock CUDA] cudaMemset: %p is not %zu bytes of device memory\n", p, bytes);
        return cudaErrorInvalidValue;
    }
    memset(p, value, bytes);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    return mock_memset(p, value, bytes);
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
    if (mock_captured(__func__, s, [=] { return cudaMemsetAsync(p, value, bytes, s); })) return cudaSuccess;
    return mock_memset(p, value, bytes);
}

inline cudaError_t mock_memset_2d(void* p, size_t pitch, int value, size_t width, size_t height) {
    if (width == 0 || height == 0) return cudaSuccess;
    if (width > pitch || !mock_is_device(p, (height - 1) * pitch + width)) {
        fprintf(stderr, "[mock CUDA] cudaMemset2D: %p is not %zu rows of %zu bytes, %zu apart, of device memory\n", p, height, width, pitch);
        return cudaErrorInvalidValue;
    }
    for (size_t r = 0; r < height; r++) memset((char*)p + r * pitch, value, width);
    return cudaSuccess;
}
inline cudaError_t cudaMemset2D(void* p, size_t pitch, int value, size_t width, size_t height) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    return mock_memset_2d(p, pitch, value, width, height);
}
inline cudaError_t cudaMemset2DAsync(void* p, size_t pitch, int value, size_t width, size_t height, cudaStream_t s) {
    if (mock_captured(__func__, s, [=] { return cudaMemset2DAsync(p, pitch, value, width, height, s); })) return cudaSuccess;
    return mock_memset_2d(p, pitch, value, width, height);
}

inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    *total_bytes = mock_memory_total();
    *free_bytes = *total_bytes > mock_bytes_in_use ? *total_bytes - mock_bytes_in_use : 0;
    return cudaSuccess;
}

inline cudaError_t cudaEventCreate(cudaEvent_t* ev) { *ev = new MockEvent(); return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t ev) { delete ev; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    ev->seconds = now_seconds();
    ev->seq = mock_seq;
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    if (ev->seq > mock_synced) mock_waits.n++;
    mock_deliver(ev->seq);
    return cudaSuccess;
}
// as CUDA: an error unless both events have been recorded
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (start->seconds < 0 || end->seconds < 0) return cudaErrorInvalidResourceHandle;
    *ms = (float)(1000.0 * (end->seconds - start->seconds));
    return cudaSuccess;
}

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int multiProcessorCount, major, minor;
};
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    memset(prop, 0, sizeof(*prop));
    snprintf(prop->name, sizeof(prop->name), "mock CPU device");
    prop->totalGlobalMem = mock_memory_total();
    prop->multiProcessorCount = 1;
    prop->major = 9;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    mock_full_sync();
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;
    mock_full_sync();
    return cudaSuccess;
}
inline MockStream mock_stream;
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = &mock_stream; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { return s == &mock_stream ? cudaSuccess : cudaErrorInvalidResourceHandle; }

// graphs: captured on the stream cudaStreamCreate made (a device cannot capture the legacy stream),
// one capture at a time; a launch runs the captured work in order, returning the first error
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
#ifdef MOCK_CUDA_NO_CAPTURE
    (void)s;
    fprintf(stderr, "[mock CUDA] cudaStreamBeginCapture: test/mock_cuda.h's launchers run at once and cannot be captured "
            "(train_gpt2_sae_emulated captures)\n");
    return cudaErrorStreamCaptureUnsupported;
#else
    if (mock_capture || s != &mock_stream) return cudaErrorStreamCaptureUnsupported;
    mock_capture = new MockGraph();
    mock_capture_stream = s;
    return cudaSuccess;
#endif
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
    if (!mock_capture || s != mock_capture_stream) return cudaErrorStreamCaptureUnmatched;
    *graph = mock_capture;
    mock_capture = nullptr;
    mock_capture_stream = nullptr;
    return cudaSuccess;
}
inline cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* n) {
    if (nodes) return cudaErrorInvalidValue;  // the count only
    *n = graph->ops.size();
    return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0) {
    if (flags) return cudaErrorInvalidValue;
    *exec = new MockGraphExec{graph->ops};
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) { delete graph; return cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) { delete exec; return cudaSuccess; }
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
    if (cudaError_t err = mock_capture_refuses(__func__)) return err;  // a device would nest it; nothing here does
    for (const auto& op : exec->ops)
        if (cudaError_t err = op()) return err;
    return cudaSuccess;
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }  // a launch that fails stops the run where it fails
inline cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75 };
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    if (attr != cudaDevAttrComputeCapabilityMajor) return cudaErrorInvalidValue;
    *value = 9;  // the sm_90 paths (thread block clusters) are the ones a device would take on an H100
    return cudaSuccess;
}
// a __device__ variable is a host one here; its bytes count as device memory from the first lookup
template <typename T>
cudaError_t cudaGetSymbolAddress(void** p, T& symbol) {
    *p = (void*)&symbol;
    mock_blocks[(uintptr_t)&symbol] = sizeof(T);
    return cudaSuccess;
}
inline void nvtxRangePushA(const char*) {}  // nothing to mark without Nsight
inline void nvtxRangePop() {}
