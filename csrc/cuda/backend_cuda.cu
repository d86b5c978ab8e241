/*
 * backend_cuda.cu -- the fa_backend table (core/fa_backend.h documents every entry) on GPU
 * memory, with CUDA kernels fa_k_*.
 *
 * Device and stream: every table function first makes the device of fa_cuda_set_context()
 * current and puts all its work -- kernels and copies -- on that context's stream (torch's
 * current stream of the model's device, handed over by the caller; without a context, the
 * legacy default stream of the current device). The LibTorch shim runs the model on the same
 * stream, so the model's reads of x and writes of the gradient are ordered with the kernels
 * without any device-wide synchronisation. Results the host needs (per-image sums, finished
 * images) are copied with cudaMemcpyAsync and that stream alone is synchronised.
 *
 * Memory: buffers freed by the attack go to a small per-process cache of blocks (keyed by device
 * and size) and come back zeroed (cudaMemsetAsync) from the next alloc of that size, so a study
 * of many equal batches allocates once: no cudaMalloc/cudaFree (a device-wide synchronisation)
 * per fa_attack.
 *
 * Arithmetic: the per-value formulas are fa_math.h's, the very functions backend_cpu.c runs;
 * their products go through fa_mul() (__fmul_rn on the device) so that nvcc never contracts a
 * multiply and an add into one FMA. With nvcc's default IEEE division and square root, every
 * element-wise result is then the CPU backend's, bit for bit. The joint budget's scale (SPEC 8)
 * is solved per image in one block whose sums run in a different order than the CPU's, so
 * under max_rmse the two may differ in the last bits. Per-image sums run in double in a
 * fixed order that depends on dim only (two passes: fixed chunks of a row, then the chunks in
 * order), never on n or on scheduling, so an image's sum never depends on its batch.
 *
 * Scratch: the per-image host arrays (alpha, gscale, pcoef, index) and the partial sums live in
 * one device buffer that grows on demand and is kept for the life of the process. A
 * cudaMalloc/cudaFree pair per call would be simpler, but cudaFree synchronises the whole device
 * and calibration calls step_rmse dozens of times per batch. A mutex held for the whole of each
 * call guards it, so runs on several host threads are safe (they serialise here). If the current
 * device changes, the buffer is reallocated on the new one.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <vector>

#include <cuda_runtime.h>

extern "C" { /* fa_backend.h has no extern "C" guard of its own */
#include "fa_backend.h"
}

namespace {

constexpr int kThreads = 256;            /* threads per block, every kernel               */
constexpr int64_t kMaxGridX = 4096;      /* element-wise blocks along a row (grid-stride) */
constexpr int64_t kMaxGridY = 65535;     /* rows in one grid (grid-stride over the rest)  */
constexpr int64_t kChunkMin = 8 * kThreads; /* reductions: at least this many values a block */
constexpr int64_t kMaxChunks = 64;       /* ... and at most this many blocks per row      */
constexpr int64_t kMaxReduceBlocks = 1 << 20;

/* ---------------------------------------------------------------- errors */

fa_status cuda_fail(cudaError_t err, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so no later check reports it again */
    return fa_set_error(FA_ERR_CUDA, "%s failed: %s", what, cudaGetErrorString(err));
}

fa_status check(cudaError_t err, const char *what) {
    return err == cudaSuccess ? FA_OK : cuda_fail(err, what);
}

/* After every kernel launch: a bad configuration or a fault already known. */
fa_status check_launch(const char *kernel) { return check(cudaGetLastError(), kernel); }

fa_status check_sizes(const char *function, int64_t n, int64_t dim) {
    if (n < 0 || dim < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "%s: n=%lld and dim=%lld must be >= 0", function,
                            (long long)n, (long long)dim);
    return FA_OK;
}

/* ---------------------------------------------------------------- device and stream */

thread_local int context_device = -1;            /* fa_cuda_set_context: -1 = the current one */
thread_local cudaStream_t context_stream = nullptr; /* nullptr: the legacy default stream   */

/* Makes the context's device current; every table function calls it first. */
fa_status enter() {
    if (context_device < 0)
        return FA_OK;
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == context_device)
        return FA_OK;
    return check(cudaSetDevice(context_device), "cudaSetDevice");
}

cudaStream_t stream() { return context_stream; }

/* Device to host: an async copy on the stream, then that stream alone is waited for. */
fa_status to_host(void *dst, const void *src, size_t bytes, const char *what) {
    fa_status status = check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), what);
    if (status == FA_OK)
        status = check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    return status;
}

/* ---------------------------------------------------------------- scratch */

struct scratch_view {
    float *a;         /* n floats: alpha or gnorm  */
    float *b;         /* n floats: pcoef           */
    float *out;       /* n floats: per-image result */
    int64_t *index;   /* n int64                    */
    double *partial;  /* n * chunks doubles         */
    double *mu;       /* n doubles: the joint budget's scale per row */
};

std::mutex scratch_mutex; /* held by every table function for its whole call */
struct {
    void *base;
    size_t bytes;
    int device;
    cudaStream_t stream; /* the stream that used it last */
} scratch = {nullptr, 0, -1, nullptr};

size_t align_up(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Carves the view for n images (chunks partial sums each); caller holds scratch_mutex. */
fa_status scratch_get(int64_t n, int64_t chunks, scratch_view *view) {
    const size_t f = align_up((size_t)n * sizeof(float));
    const size_t i = align_up((size_t)n * sizeof(int64_t));
    const size_t p = align_up((size_t)n * (size_t)chunks * sizeof(double));
    const size_t dn = align_up((size_t)n * sizeof(double));
    const size_t need = p + i + 3 * f + dn;
    int device = 0;
    fa_status status = check(cudaGetDevice(&device), "cudaGetDevice");
    if (status != FA_OK)
        return status;
    if (scratch.base != nullptr && scratch.stream != stream()) {
        /* work of another stream may still read it */
        if (cudaStreamSynchronize(scratch.stream) != cudaSuccess)
            (void)cudaGetLastError();
    }
    scratch.stream = stream();
    if (need > scratch.bytes || device != scratch.device) {
        if (scratch.base != nullptr)
            (void)cudaFree(scratch.base); /* a failure here only leaks the old buffer */
        (void)cudaGetLastError();
        scratch.base = nullptr;
        scratch.bytes = 0;
        const cudaError_t err = cudaMalloc(&scratch.base, need);
        if (err != cudaSuccess) {
            scratch.base = nullptr;
            (void)cudaGetLastError();
            return fa_set_error(err == cudaErrorMemoryAllocation ? FA_ERR_MEMORY : FA_ERR_CUDA,
                                "cudaMalloc(%zu bytes) for the CUDA backend's scratch failed: %s",
                                need, cudaGetErrorString(err));
        }
        scratch.bytes = need;
        scratch.device = device;
    }
    char *base = static_cast<char *>(scratch.base);
    view->partial = reinterpret_cast<double *>(base);
    view->index = reinterpret_cast<int64_t *>(base + p);
    view->a = reinterpret_cast<float *>(base + p + i);
    view->b = reinterpret_cast<float *>(base + p + i + f);
    view->out = reinterpret_cast<float *>(base + p + i + 2 * f);
    view->mu = reinterpret_cast<double *>(base + p + i + 3 * f);
    return FA_OK;
}

/* Copies n host entries into a scratch array; a NULL host array gives a NULL device one. */
template <class T> fa_status upload(T *device, const T *host, int64_t n, T **out) {
    *out = nullptr;
    if (host == nullptr)
        return FA_OK;
    *out = device;
    /* from pageable host memory: staged before the call returns, so `host` may change after */
    return check(cudaMemcpyAsync(device, host, (size_t)n * sizeof(T), cudaMemcpyHostToDevice,
                                 stream()),
                 "cudaMemcpyAsync of a per-image array (host to device)");
}

/* ---------------------------------------------------------------- device helpers */

/* A double product that nvcc may not fuse with a neighbouring add. */
__device__ __forceinline__ double dmul(double a, double b) { return __dmul_rn(a, b); }

/* Grid-stride over rows (y) and the values of a row (x): each row's scalars are read once and
 * no 64-bit division is needed per value. */
#define FA_FOR_ROWS(i, n) for (int64_t i = blockIdx.y; i < (n); i += gridDim.y)
#define FA_FOR_COLS(j, dim)                                                                    \
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < (dim);                \
         j += (int64_t)gridDim.x * blockDim.x)

dim3 rows_grid(int64_t n, int64_t dim) {
    const int64_t x = (dim + kThreads - 1) / kThreads;
    return dim3((unsigned)(x < kMaxGridX ? x : kMaxGridX), (unsigned)(n < kMaxGridY ? n : kMaxGridY));
}

/* ---------------------------------------------------------------- direction */

__global__ void fa_k_direction(fa_direction_consts c, int64_t n, int64_t dim, const float *x,
                               const float *x0, const float *g, const float *gnorm,
                               const float *pcoef, float *m, float *v, float *d) {
    float sink_m = 0.0f, sink_v = 0.0f; /* state of rules without m or v */
    FA_FOR_ROWS(i, n) {
        const float gn = gnorm != nullptr ? gnorm[i] : 1.0f;
        const float pc = pcoef != nullptr ? pcoef[i] : 0.0f;
        const int64_t row = i * dim;
        FA_FOR_COLS(j, dim) {
            const int64_t e = row + j;
            d[e] = fa_direction_value(&c, c.optimizer, g[e], gn, pcoef != nullptr, pc, x[e], x0[e],
                                      m != nullptr ? m + e : &sink_m,
                                      v != nullptr ? v + e : &sink_v);
        }
    }
}

/* ---------------------------------------------------------------- step, random start */

/* mu: per row, the joint projection's scale (fa_step_value), or nullptr: plain P for all;
 * eps = INFINITY: no projection. */
__global__ void fa_k_step(int64_t n, int64_t dim, const float *x, const float *x0,
                          const float *d, const float *alpha, float scale, float eps,
                          const double *mu, float *out) {
    FA_FOR_ROWS(i, n) {
        const float a = fa_mul(scale, alpha[i]);
        const double mi = mu != nullptr ? mu[i] : -1.0;
        const int64_t row = i * dim;
        FA_FOR_COLS(j, dim) {
            const int64_t e = row + j; /* out may alias x: each value is read, then written */
            out[e] = isinf(eps) ? x[e] + fa_mul(a, d[e])
                                : fa_step_value(x[e], x0[e], d[e], a, eps, mi);
        }
    }
}

/*
 * The joint budget (SPEC 8): one block per row finds mu[i] of fa_step_value for the step
 * P(x + scale * alpha[i] * d) -- -1 when the l-inf projection already meets the RMSE budget --
 * by fa_solve_scale's active-set iteration (budget.c), with block-wide double sums.
 */
__device__ double block_sum(double value, double *shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w)
            shared[threadIdx.x] += shared[threadIdx.x + w];
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads(); /* every thread has read shared[0] before it is overwritten */
    return total;
}

__global__ void fa_k_joint_scale(int64_t n, int64_t dim, const float *x, const float *x0,
                                 const float *d, const float *alpha, float scale, float eps,
                                 float max_rmse, double *mu) {
    __shared__ double shared[kThreads];
    const double R = (double)max_rmse * (double)max_rmse * (double)dim;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) { /* uniform in the block */
        const float a = fa_mul(scale, alpha[i]);
        const float *xi = x + i * dim, *x0i = x0 + i * dim, *di = d + i * dim;
        double part = 0.0;
        for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
            const double e = (double)fa_project(xi[j] + fa_mul(a, di[j]), x0i[j], eps) -
                             (double)x0i[j];
            part += dmul(e, e);
        }
        const double s = block_sum(part, shared);
        double m = -1.0;
        if (s > R) {
            m = 0.0;
            for (int pass = 0; pass < FA_SCALE_PASSES; pass++) {
                double free_part = 0.0, sat_part = 0.0;
                for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
                    const float t = (xi[j] + fa_mul(a, di[j])) - x0i[j];
                    int sat;
                    const double v =
                        fa_scaled(m, t, fa_lower(x0i[j], eps), fa_upper(x0i[j], eps), &sat);
                    if (sat)
                        sat_part += dmul(v, v);
                    else
                        free_part += dmul((double)t, (double)t);
                }
                const double s_free = block_sum(free_part, shared);
                const double s_sat = block_sum(sat_part, shared);
                if (!(s_free > 0.0))
                    break;
                double next = sqrt((R > s_sat ? R - s_sat : 0.0) / s_free);
                next = next > 1.0 ? 1.0 : next;
                if (!(next > m))
                    break;
                m = next;
                if (m == 1.0)
                    break;
            }
        }
        if (threadIdx.x == 0)
            mu[i] = m;
    }
}

__global__ void fa_k_random_start(int64_t n, int64_t dim, const float *x0, float eps,
                                  uint64_t seed, const int64_t *index, float *out) {
    FA_FOR_ROWS(i, n) {
        const int64_t image = index[i];
        const int64_t row = i * dim;
        FA_FOR_COLS(j, dim) {
            const int64_t e = row + j;
            out[e] = fa_random_value(x0[e], eps, seed, image, j);
        }
    }
}

/* ---------------------------------------------------------------- per-image sums */

/* Terms of the three sums; term(i, e) is value e (flat) of image i. */
struct step_rmse_term {
    const float *x, *x0, *ref, *d, *alpha;
    const double *mu; /* nullptr: no joint budget */
    float eps;
    __device__ double operator()(int64_t i, int64_t e) const {
        const float a = alpha[i];
        const float p = isinf(eps) ? x[e] + fa_mul(a, d[e])
                                   : fa_step_value(x[e], x0[e], d[e], a, eps,
                                                   mu != nullptr ? mu[i] : -1.0);
        const double t = (double)(p - ref[e]);
        return dmul(t, t);
    }
};

struct rmse_term {
    const float *x, *x0; /* x0 nullptr: the RMS of x */
    __device__ double operator()(int64_t, int64_t e) const {
        const double t = x0 != nullptr ? (double)(x[e] - x0[e]) : (double)x[e];
        return dmul(t, t);
    }
};

struct abs_term {
    const float *g;
    __device__ double operator()(int64_t, int64_t e) const { return fabs((double)g[e]); }
};

/* Fixed split of a row into chunks (a function of dim only). */
int64_t row_chunks(int64_t dim) {
    const int64_t c = (dim + kChunkMin - 1) / kChunkMin;
    return c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
}

/* Pass 1: partial[b] = sum of chunk b % chunks of row b / chunks, threads in a fixed tree. */
template <class Term>
__global__ void fa_k_row_partial(Term term, int64_t n, int64_t dim, int64_t chunks,
                                 double *partial) {
    __shared__ double sum[kThreads];
    const int64_t chunk = (dim + chunks - 1) / chunks;
    for (int64_t b = blockIdx.x; b < n * chunks; b += gridDim.x) { /* uniform in the block */
        const int64_t i = b / chunks;
        const int64_t begin = (b % chunks) * chunk;
        const int64_t end = begin + chunk < dim ? begin + chunk : dim;
        double s = 0.0;
        for (int64_t j = begin + threadIdx.x; j < end; j += kThreads)
            s += term(i, i * dim + j);
        sum[threadIdx.x] = s;
        __syncthreads();
        for (int w = kThreads / 2; w > 0; w /= 2) {
            if ((int)threadIdx.x < w)
                sum[threadIdx.x] += sum[threadIdx.x + w];
            __syncthreads();
        }
        if (threadIdx.x == 0)
            partial[b] = sum[0];
        __syncthreads(); /* sum[0] is read before the next row overwrites it */
    }
}

/* Pass 2: out[i] = the chunks of row i summed in order; root: sqrt(sum / dim) (RMSE). */
__global__ void fa_k_row_finish(int64_t n, int64_t dim, int64_t chunks, const double *partial,
                                int root, float *out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int64_t c = 0; c < chunks; c++)
            s += partial[i * chunks + c];
        out[i] = root ? (float)sqrt(s / (double)dim) : (float)s;
    }
}

/* Both passes and the copy to out_host; the caller holds scratch_mutex and filled `view`. */
template <class Term>
fa_status row_sum(Term term, int64_t n, int64_t dim, int64_t chunks, int root,
                  const scratch_view &view, float *out_host) {
    const int64_t blocks = n * chunks < kMaxReduceBlocks ? n * chunks : kMaxReduceBlocks;
    fa_k_row_partial<<<(unsigned)blocks, kThreads, 0, stream()>>>(term, n, dim, chunks, view.partial);
    fa_status status = check_launch("fa_k_row_partial launch");
    if (status != FA_OK)
        return status;
    const int64_t finish = (n + kThreads - 1) / kThreads;
    fa_k_row_finish<<<(unsigned)(finish < kMaxGridX ? finish : kMaxGridX), kThreads>>>(
        n, dim, chunks, view.partial, root, view.out);
    status = check_launch("fa_k_row_finish launch");
    if (status != FA_OK)
        return status;
    return to_host(out_host, view.out, (size_t)n * sizeof(float),
                   "cudaMemcpyAsync of per-image results (device to host)");
}

/* ---------------------------------------------------------------- the table's functions */

/* Blocks handed out (to know a freed block's size) and freed blocks kept for reuse: cudaFree
 * synchronises the whole device. */
struct block {
    void *p;
    size_t bytes;
    int device;
    cudaStream_t stream; /* the stream that used it last */
};
constexpr size_t kMaxCached = 64;
std::mutex blocks_mutex;
std::vector<block> live, cache;

fa_status cuda_alloc(void **p, size_t bytes) {
    *p = nullptr;
    fa_status status = enter();
    if (status != FA_OK || bytes == 0)
        return status;
    int device = 0;
    if ((status = check(cudaGetDevice(&device), "cudaGetDevice")) != FA_OK)
        return status;
    std::lock_guard<std::mutex> lock(blocks_mutex);
    for (size_t i = 0; i < cache.size(); i++)
        if (cache[i].bytes == bytes && cache[i].device == device) {
            /* another stream may still use it: wait for that stream (once) */
            if (cache[i].stream != stream() && cudaStreamSynchronize(cache[i].stream) != cudaSuccess)
                (void)cudaGetLastError();
            *p = cache[i].p;
            cache.erase(cache.begin() + (std::ptrdiff_t)i);
            break;
        }
    if (*p == nullptr) {
        const cudaError_t err = cudaMalloc(p, bytes);
        if (err != cudaSuccess) {
            *p = nullptr;
            (void)cudaGetLastError();
            return fa_set_error(err == cudaErrorMemoryAllocation ? FA_ERR_MEMORY : FA_ERR_CUDA,
                                "cudaMalloc(%zu bytes) failed: %s", bytes,
                                cudaGetErrorString(err));
        }
    }
    const cudaError_t err = cudaMemsetAsync(*p, 0, bytes, stream());
    if (err != cudaSuccess) {
        (void)cudaFree(*p);
        *p = nullptr;
        return cuda_fail(err, "cudaMemsetAsync of a new buffer");
    }
    live.push_back({*p, bytes, device, stream()});
    return FA_OK;
}

/* Into the cache: later work on the stream is ordered after the attack's last use of the
 * block, which ran on the same stream. The oldest cached block is really freed when the cache
 * is full. */
void cuda_free(void *p) {
    if (p == nullptr)
        return;
    std::lock_guard<std::mutex> lock(blocks_mutex);
    for (size_t i = 0; i < live.size(); i++)
        if (live[i].p == p) {
            cache.push_back(live[i]);
            live.erase(live.begin() + (std::ptrdiff_t)i);
            break;
        }
    if (cache.size() > kMaxCached) {
        if (cudaFree(cache.front().p) != cudaSuccess)
            (void)cudaGetLastError(); /* nothing to report through a void */
        cache.erase(cache.begin());
    }
}

fa_status cuda_copy(void *dst, const void *src, size_t bytes, int kind) {
    static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                           cudaMemcpyDeviceToDevice};
    static const char *const names[] = {"cudaMemcpyAsync (host to device)",
                                        "cudaMemcpyAsync (device to host)",
                                        "cudaMemcpyAsync (device to device)"};
    if (kind < FA_COPY_H2D || kind > FA_COPY_D2D)
        return fa_set_error(FA_ERR_ARGUMENT,
                            "kind=%d must be FA_COPY_H2D (0), FA_COPY_D2H (1) or FA_COPY_D2D (2)",
                            kind);
    if (bytes == 0)
        return FA_OK;
    if (dst == nullptr || src == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "copy of %zu bytes: dst and src must not be NULL",
                            bytes);
    fa_status status = enter();
    if (status != FA_OK)
        return status;
    if (kind == FA_COPY_D2H)
        return to_host(dst, src, bytes, names[kind]);
    return check(cudaMemcpyAsync(dst, src, bytes, kinds[kind], stream()), names[kind]);
}

fa_status cuda_direction(const fa_config *cfg, int k, int64_t n, int64_t dim, const float *x,
                         const float *x0, const float *g, const float *gnorm,
                         const float *pcoef, float *m, float *v, float *d) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    if (cfg == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "direction: cfg must not be NULL");
    if (cfg->optimizer < 0 || cfg->optimizer >= FA_OPT_COUNT)
        return fa_set_error(FA_ERR_ARGUMENT, "cfg.optimizer=%d out of range [0, %d)",
                            cfg->optimizer, (int)FA_OPT_COUNT);
    fa_status status = check_sizes("direction", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    scratch_view view;
    status = scratch_get(n, 0, &view);
    float *gnorm_d = nullptr, *pcoef_d = nullptr;
    if (status == FA_OK)
        status = upload(view.a, gnorm, n, &gnorm_d);
    if (status == FA_OK)
        status = upload(view.b, pcoef, n, &pcoef_d);
    if (status != FA_OK)
        return status;
    const fa_direction_consts c = fa_direction_consts_make(cfg, k);
    fa_k_direction<<<rows_grid(n, dim), kThreads, 0, stream()>>>(c, n, dim, x, x0, g, gnorm_d, pcoef_d, m, v,
                                                   d);
    return check_launch("fa_k_direction launch");
}

/* The joint budget's per-row scale into view.mu (caller holds scratch_mutex, alpha on device). */
fa_status joint_scale(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha_d, float scale, float eps, float max_rmse,
                      const scratch_view &view, const double **mu) {
    *mu = nullptr;
    if (!(max_rmse > 0.0f) || isinf(eps))
        return FA_OK;
    const int64_t blocks = n < kMaxReduceBlocks ? n : kMaxReduceBlocks;
    fa_k_joint_scale<<<(unsigned)blocks, kThreads, 0, stream()>>>(n, dim, x, x0, d, alpha_d, scale, eps,
                                                    max_rmse, view.mu);
    *mu = view.mu;
    return check_launch("fa_k_joint_scale launch");
}

fa_status cuda_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                    const float *alpha, float scale, float eps, float max_rmse, float *out) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    fa_status status = check_sizes("step", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    scratch_view view;
    float *alpha_d = nullptr;
    status = scratch_get(n, 0, &view);
    if (status == FA_OK)
        status = upload(view.a, alpha, n, &alpha_d);
    if (status != FA_OK)
        return status;
    if (alpha_d == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "step: alpha must not be NULL");
    const double *mu = nullptr;
    status = joint_scale(n, dim, x, x0, d, alpha_d, scale, eps, max_rmse, view, &mu);
    if (status != FA_OK)
        return status;
    fa_k_step<<<rows_grid(n, dim), kThreads, 0, stream()>>>(n, dim, x, x0, d, alpha_d, scale, eps, mu, out);
    return check_launch("fa_k_step launch");
}

fa_status cuda_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                         const float *ref, const float *d, const float *alpha, float eps,
                         float max_rmse, float *out_host) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    fa_status status = check_sizes("step_rmse", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    if (alpha == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "step_rmse: alpha must not be NULL");
    const int64_t chunks = row_chunks(dim);
    scratch_view view;
    float *alpha_d = nullptr;
    status = scratch_get(n, chunks, &view);
    if (status == FA_OK)
        status = upload(view.a, alpha, n, &alpha_d);
    if (status != FA_OK)
        return status;
    const double *mu = nullptr;
    status = joint_scale(n, dim, x, x0, d, alpha_d, 1.0f, eps, max_rmse, view, &mu);
    if (status != FA_OK)
        return status;
    const step_rmse_term term = {x, x0, ref, d, alpha_d, mu, eps};
    return row_sum(term, n, dim, chunks, 1, view, out_host);
}

fa_status cuda_rmse(int64_t n, int64_t dim, const float *x, const float *x0, float *out_host) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    fa_status status = check_sizes("rmse", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    const int64_t chunks = row_chunks(dim);
    scratch_view view;
    status = scratch_get(n, chunks, &view);
    if (status != FA_OK)
        return status;
    const rmse_term term = {x, x0};
    return row_sum(term, n, dim, chunks, 1, view, out_host);
}

fa_status cuda_abs_sum(int64_t n, int64_t dim, const float *g, float *out_host) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    fa_status status = check_sizes("abs_sum", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    const int64_t chunks = row_chunks(dim);
    scratch_view view;
    status = scratch_get(n, chunks, &view);
    if (status != FA_OK)
        return status;
    const abs_term term = {g};
    return row_sum(term, n, dim, chunks, 0, view, out_host);
}

fa_status cuda_random_start(int64_t n, int64_t dim, const float *x0, float eps, uint64_t seed,
                            const int64_t *index, float *out) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    if (enter() != FA_OK)
        return FA_ERR_CUDA;
    fa_status status = check_sizes("random_start", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    if (index == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "random_start: index must not be NULL");
    scratch_view view;
    int64_t *index_d = nullptr;
    status = scratch_get(n, 0, &view);
    if (status == FA_OK)
        status = upload(view.index, index, n, &index_d);
    if (status != FA_OK)
        return status;
    fa_k_random_start<<<rows_grid(n, dim), kThreads, 0, stream()>>>(n, dim, x0, eps, seed, index_d, out);
    return check_launch("fa_k_random_start launch");
}

/* dst row j = buf row src[j]: one launch for every moved row (dst is a scratch buffer). */
__global__ void fa_k_gather_rows(const float *buf, int64_t dim, int64_t n_new, const int64_t *src,
                                 float *dst) {
    FA_FOR_ROWS(j, n_new) {
        const float *from = buf + src[j] * dim;
        float *to = dst + j * dim;
        FA_FOR_COLS(e, dim)
        to[e] = from[e];
    }
}

/* Rows gathered into a cached scratch block, then copied back: two launches per buffer
 * whatever the number of rows that move (a parallel gather in place could read a row after
 * another thread overwrote it). */
fa_status cuda_compact(float *buf, int64_t dim, int64_t n_new, const int64_t *src) {
    fa_status status = check_sizes("compact", n_new, dim);
    if (status != FA_OK || n_new == 0 || dim == 0)
        return status;
    for (int64_t j = 0; j < n_new; j++)
        if (src[j] < j || (j > 0 && src[j] <= src[j - 1]))
            return fa_set_error(FA_ERR_INTERNAL,
                                "compact: src[%lld]=%lld must be >= %lld and above src[j-1]",
                                (long long)j, (long long)src[j], (long long)j);
    int64_t first = 0; /* rows before the first moved one stay */
    while (first < n_new && src[first] == first)
        first++;
    if (first == n_new)
        return FA_OK;
    const size_t bytes = (size_t)(n_new - first) * (size_t)dim * sizeof(float);
    void *tmp = nullptr;
    if ((status = cuda_alloc(&tmp, bytes)) != FA_OK)
        return status;
    {
        std::lock_guard<std::mutex> lock(scratch_mutex);
        scratch_view view;
        int64_t *src_d = nullptr;
        status = scratch_get(n_new - first, 0, &view);
        if (status == FA_OK)
            status = upload(view.index, src + first, n_new - first, &src_d);
        if (status == FA_OK) {
            fa_k_gather_rows<<<rows_grid(n_new - first, dim), kThreads, 0, stream()>>>(
                buf, dim, n_new - first, src_d, static_cast<float *>(tmp));
            status = check_launch("fa_k_gather_rows launch");
        }
        if (status == FA_OK)
            status = check(cudaMemcpyAsync(buf + first * dim, tmp, bytes, cudaMemcpyDeviceToDevice,
                                           stream()),
                           "cudaMemcpyAsync of the compacted rows (device to device)");
    }
    cuda_free(tmp);
    return status;
}

/* dst row rows[q] = src row rows[q], q < count: one launch. */
__global__ void fa_k_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                               const int64_t *rows) {
    FA_FOR_ROWS(q, count) {
        const int64_t o = rows[q] * dim;
        FA_FOR_COLS(e, dim)
        dst[o + e] = src[o + e];
    }
}

fa_status cuda_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                         const int64_t *rows) {
    if (count <= 0 || dim <= 0)
        return FA_OK;
    std::lock_guard<std::mutex> lock(scratch_mutex);
    fa_status status = enter();
    scratch_view view;
    int64_t *rows_d = nullptr;
    if (status == FA_OK)
        status = scratch_get(count, 0, &view);
    if (status == FA_OK)
        status = upload(view.index, rows, count, &rows_d);
    if (status != FA_OK)
        return status;
    fa_k_copy_rows<<<rows_grid(count, dim), kThreads, 0, stream()>>>(dst, src, dim, count, rows_d);
    return check_launch("fa_k_copy_rows launch");
}

/* The rows gathered into one cached block, one copy to a host staging buffer, then spread to
 * their destinations: one round trip whatever the count. */
fa_status cuda_fetch_rows(const float *buf, int64_t dim, int64_t count, const int64_t *rows,
                          float *const *dst) {
    if (count <= 0 || dim <= 0)
        return FA_OK;
    const size_t row_bytes = (size_t)dim * sizeof(float), bytes = (size_t)count * row_bytes;
    void *tmp = nullptr;
    fa_status status = cuda_alloc(&tmp, bytes);
    if (status != FA_OK)
        return status;
    float *host = static_cast<float *>(malloc(bytes));
    if (host == nullptr) {
        cuda_free(tmp);
        return fa_set_error(FA_ERR_MEMORY, "fetch_rows: out of host memory (%zu bytes)", bytes);
    }
    {
        std::lock_guard<std::mutex> lock(scratch_mutex);
        scratch_view view;
        int64_t *rows_d = nullptr;
        status = scratch_get(count, 0, &view);
        if (status == FA_OK)
            status = upload(view.index, rows, count, &rows_d);
        if (status == FA_OK) {
            fa_k_gather_rows<<<rows_grid(count, dim), kThreads, 0, stream()>>>(
                buf, dim, count, rows_d, static_cast<float *>(tmp));
            status = check_launch("fa_k_gather_rows launch");
        }
        if (status == FA_OK)
            status = to_host(host, tmp, bytes, "cudaMemcpyAsync of finished images (device to host)");
    }
    if (status == FA_OK)
        for (int64_t q = 0; q < count; q++)
            memcpy(dst[q], host + q * dim, row_bytes);
    free(host);
    cuda_free(tmp);
    return status;
}

/*
 * SPEC 4's calibration for every row in one launch (one block per row): the same fa_bracket
 * search as calibrate.c's host loop, each trial's RMSE a block-wide double sum, so there is no
 * round trip to the host per trial. Every thread keeps its own copy of the row's bracket; all
 * copies see the same sums and stay equal.
 */
__global__ void fa_k_calibrate(int64_t n, int64_t dim, const float *x, const float *x0,
                               const float *d, float eps, float r1, float *alpha) {
    __shared__ double shared[kThreads];
    const double tol = (double)r1 * FA_REL_TOL;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) { /* uniform in the block */
        const float *xi = x + i * dim, *x0i = x0 + i * dim, *di = d + i * dim;
        double part = 0.0;
        for (int64_t j = threadIdx.x; j < dim; j += kThreads)
            part += dmul((double)di[j], (double)di[j]);
        const double rms = (double)(float)sqrt(block_sum(part, shared) / (double)dim);
        const int active = rms > 0.0 && isfinite(rms);
        fa_bracket b;
        fa_bracket_init(&b, active ? (double)r1 / rms : 0.0, -1.0);
        float s = (float)b.lo;
        int first = active; /* alpha0 = r1 / rms(d) first: exact when nothing clips */
        while (first || (active && fa_bracket_next(&b, &s))) {
            part = 0.0;
            for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
                const double e = (double)(fa_project(xi[j] + fa_mul(s, di[j]), x0i[j], eps) - xi[j]);
                part += dmul(e, e);
            }
            const float f = (float)sqrt(block_sum(part, shared) / (double)dim);
            if (first) {
                first = 0;
                if (fabs((double)f - (double)r1) <= tol)
                    break;
                continue;
            }
            fa_bracket_update(&b, s, f, r1, tol);
        }
        if (threadIdx.x == 0)
            alpha[i] = (float)b.lo;
    }
}

fa_status cuda_calibrate(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                         float eps, float r1, float *alpha_out) {
    std::lock_guard<std::mutex> lock(scratch_mutex);
    fa_status status = check_sizes("calibrate", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    if ((status = enter()) != FA_OK)
        return status;
    scratch_view view;
    if ((status = scratch_get(n, 0, &view)) != FA_OK)
        return status;
    const int64_t blocks = n < kMaxReduceBlocks ? n : kMaxReduceBlocks;
    fa_k_calibrate<<<(unsigned)blocks, kThreads, 0, stream()>>>(n, dim, x, x0, d, eps, r1,
                                                               view.out);
    if ((status = check_launch("fa_k_calibrate launch")) != FA_OK)
        return status;
    return to_host(alpha_out, view.out, (size_t)n * sizeof(float),
                   "cudaMemcpyAsync of the calibrated step sizes (device to host)");
}

const fa_backend table = {
    "cuda",          cuda_alloc,     cuda_free,    cuda_copy,         cuda_direction,
    cuda_step,       cuda_step_rmse, cuda_rmse,    cuda_abs_sum,      cuda_random_start,
    cuda_compact,    cuda_copy_rows, cuda_fetch_rows, cuda_calibrate,
};

} /* namespace */

extern "C" const fa_backend *fa_backend_cuda(void) { return &table; }

extern "C" fa_status fa_cuda_set_context(int device_index, void *cuda_stream) {
    if (device_index < -1)
        return fa_set_error(FA_ERR_ARGUMENT, "device_index=%d must be >= -1", device_index);
    int count = 0;
    if (device_index >= 0 && (cudaGetDeviceCount(&count) != cudaSuccess || device_index >= count)) {
        (void)cudaGetLastError();
        return fa_set_error(FA_ERR_NO_CUDA, "device_index=%d: the machine has %d CUDA device(s)",
                            device_index, count);
    }
    context_device = device_index;
    context_stream = static_cast<cudaStream_t>(cuda_stream);
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
