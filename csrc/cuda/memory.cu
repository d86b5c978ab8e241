/*
 * memory.cu -- the CUDA backend's errors, device and stream context, memory and scratch
 * (fa_cuda.h).
 *
 * Memory: every device buffer comes from the allocator hook of fa_cuda_set_allocator when one is
 * set (the module sets torch's caching allocator: the attack's buffers reuse the memory torch's
 * cache holds, count in torch.cuda's memory statistics, and freeing them synchronises nothing),
 * else from cudaMallocAsync on the context's stream (the stream-ordered pool: no device-wide
 * synchronisation either). Nothing is cached here beyond the scratch.
 *
 * Scratch: the per-image host arrays of a call (alpha, gnorm, pcoef, index) and the partial sums
 * live in one buffer per GPU, which grows on demand and is kept for the life of the process
 * (calibration calls step_rmse dozens of times per batch). Each slot records the stream that
 * used it last: before another stream uses it, that stream is waited for. One mutex, held by
 * every table function for its whole call, guards the slots, so runs on several host threads
 * are safe (they serialise here).
 */
#include <atomic>
#include <mutex>
#include <unordered_map>

#include "fa_cuda.h"

namespace fa_cuda {

/* ---------------------------------------------------------------- errors */

fa_status fail(cudaError_t err, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so no later check reports it again */
    return fa_set_error(err == cudaErrorMemoryAllocation ? FA_ERR_MEMORY : FA_ERR_CUDA,
                        "%s failed: %s", what, cudaGetErrorString(err));
}

fa_status check(cudaError_t err, const char *what) {
    return err == cudaSuccess ? FA_OK : fail(err, what);
}

fa_status check_launch(const char *kernel) { return check(cudaGetLastError(), kernel); }

fa_status check_sizes(const char *function, int64_t n, int64_t dim) {
    if (n < 0 || dim < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "%s: n=%lld and dim=%lld must be >= 0", function,
                            (long long)n, (long long)dim);
    return FA_OK;
}

/* ---------------------------------------------------------------- context */

namespace {
thread_local int context_device = -1;               /* -1: the current device           */
thread_local cudaStream_t context_stream = nullptr; /* nullptr: the legacy default stream */
} // namespace

cudaStream_t stream() { return context_stream; }

device_guard::device_guard() {
    int current = -1;
    const cudaError_t err = cudaGetDevice(&current);
    if (err != cudaSuccess) {
        status = fail(err, "cudaGetDevice");
        return;
    }
    device = current;
    if (context_device < 0 || context_device == current)
        return;
    if ((status = check(cudaSetDevice(context_device), "cudaSetDevice")) != FA_OK)
        return;
    restore_ = current;
    device = context_device;
}

device_guard::~device_guard() {
    if (restore_ >= 0 && cudaSetDevice(restore_) != cudaSuccess)
        (void)cudaGetLastError(); /* nothing to report from a destructor */
}

fa_status to_host(void *dst, const void *src, size_t bytes, const char *what) {
    fa_status status =
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), what);
    if (status == FA_OK)
        status = check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    return status;
}

/* ---------------------------------------------------------------- memory */

namespace {
std::atomic<fa_cuda_alloc_fn> hook_alloc{nullptr};
std::atomic<fa_cuda_free_fn> hook_free{nullptr};
std::mutex owners_mutex;
/* every live pointer -> how to free it (nullptr: cudaFreeAsync) */
std::unordered_map<void *, fa_cuda_free_fn> owners;
} // namespace

fa_status raw_alloc(void **p, size_t bytes, const char *what) {
    *p = nullptr;
    bytes = bytes ? bytes : 1;
    int device = 0;
    fa_status status = check(cudaGetDevice(&device), "cudaGetDevice");
    if (status != FA_OK)
        return status;
    const fa_cuda_alloc_fn alloc = hook_alloc.load();
    fa_cuda_free_fn release = nullptr;
    if (alloc != nullptr) {
        if ((status = alloc(p, bytes, device, stream())) != FA_OK)
            return status;
        if (*p != nullptr)
            release = hook_free.load();
    }
    if (*p == nullptr) {
        const cudaError_t err = cudaMallocAsync(p, bytes, stream());
        if (err != cudaSuccess) {
            *p = nullptr;
            (void)cudaGetLastError();
            return fa_set_error(err == cudaErrorMemoryAllocation ? FA_ERR_MEMORY : FA_ERR_CUDA,
                                "cudaMallocAsync(%zu bytes) for %s on GPU %d failed: %s", bytes,
                                what, device, cudaGetErrorString(err));
        }
    }
    std::lock_guard<std::mutex> lock(owners_mutex);
    owners[*p] = release;
    return FA_OK;
}

void raw_free(void *p) {
    if (p == nullptr)
        return;
    fa_cuda_free_fn release = nullptr;
    {
        std::lock_guard<std::mutex> lock(owners_mutex);
        const auto found = owners.find(p);
        if (found == owners.end())
            return; /* not ours */
        release = found->second;
        owners.erase(found);
    }
    if (release != nullptr)
        release(p);
    else if (cudaFreeAsync(p, stream()) != cudaSuccess)
        (void)cudaGetLastError(); /* nothing to report through a void */
}

/* ---------------------------------------------------------------- scratch */

namespace {
struct slot {
    void *base = nullptr;
    size_t bytes = 0;
    cudaStream_t stream = nullptr; /* the stream that used it last */
    bool used = false;
};
std::mutex scratch_mutex;
slot slots[kMaxDevices];

size_t align_up(size_t bytes) { return (bytes + 255) & ~(size_t)255; }
} // namespace

scratch_lock::scratch_lock(const device_guard &guard) : lock_(scratch_mutex), device_(guard.device) {}

fa_status scratch_lock::get(int64_t n, int64_t chunks, scratch_view *view) {
    if (device_ < 0 || device_ >= kMaxDevices)
        return fa_set_error(FA_ERR_CUDA, "GPU %d: the CUDA backend handles GPUs 0 to %d", device_,
                            kMaxDevices - 1);
    slot &s = slots[device_];
    const size_t f = align_up((size_t)n * sizeof(float));
    const size_t i = align_up((size_t)n * sizeof(int64_t));
    const size_t p = align_up((size_t)n * (size_t)chunks * sizeof(double));
    const size_t dn = align_up((size_t)n * sizeof(double));
    const size_t need = p + i + 3 * f + dn;
    if (s.used && s.stream != stream() && cudaStreamSynchronize(s.stream) != cudaSuccess)
        (void)cudaGetLastError(); /* work of the other stream (on this GPU) may still read it */
    s.used = true;
    s.stream = stream();
    if (need > s.bytes) {
        raw_free(s.base); /* ordered after this stream's earlier work, the other one waited for */
        s.base = nullptr;
        s.bytes = 0;
        const fa_status status = raw_alloc(&s.base, need, "the CUDA backend's scratch");
        if (status != FA_OK)
            return status;
        s.bytes = need;
    }
    char *base = static_cast<char *>(s.base);
    view->partial = reinterpret_cast<double *>(base);
    view->index = reinterpret_cast<int64_t *>(base + p);
    view->a = reinterpret_cast<float *>(base + p + i);
    view->b = reinterpret_cast<float *>(base + p + i + f);
    view->out = reinterpret_cast<float *>(base + p + i + 2 * f);
    view->mu = reinterpret_cast<double *>(base + p + i + 3 * f);
    return FA_OK;
}

} /* namespace fa_cuda */

/* ---------------------------------------------------------------- the public entry points */

extern "C" fa_status fa_cuda_set_context(int device_index, void *cuda_stream) {
    if (device_index < -1)
        return fa_set_error(FA_ERR_ARGUMENT, "device_index=%d must be >= -1", device_index);
    int count = 0;
    if (device_index >= 0 && (cudaGetDeviceCount(&count) != cudaSuccess || device_index >= count)) {
        (void)cudaGetLastError();
        return fa_set_error(FA_ERR_NO_CUDA, "device_index=%d: the machine has %d CUDA device(s)",
                            device_index, count);
    }
    fa_cuda::context_device = device_index;
    fa_cuda::context_stream = static_cast<cudaStream_t>(cuda_stream);
    return FA_OK;
}

extern "C" fa_status fa_cuda_set_allocator(fa_cuda_alloc_fn alloc, fa_cuda_free_fn release) {
    if ((alloc == nullptr) != (release == nullptr))
        return fa_set_error(FA_ERR_ARGUMENT, "alloc and release must both be set or both NULL");
    fa_cuda::hook_free.store(release);
    fa_cuda::hook_alloc.store(alloc);
    return FA_OK;
}

extern "C" int fa_cuda_available(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver or no device: leave no error behind */
        return 0;
    }
    return count > 0;
}
