/*
 * fa_cuda.h -- internal to csrc/cuda: what the CUDA backend's three files share.
 *
 *   memory.cu   errors, the device and stream context (a device guard per entry point), the
 *               memory (torch's caching allocator through a hook, else cudaMallocAsync) and the
 *               per-device scratch for the per-image host arrays and partial sums
 *   kernels.cu  the kernels fa_k_* and one launcher each (every launch checked)
 *   backend_cuda.cu  the fa_backend table (core/fa_backend.h): argument checks, uploads of the
 *               per-image arrays, launches, results to the host
 *
 * Device and stream: every table function first makes the device of fa_cuda_set_context()
 * current (device_guard, which restores the caller's device when the function returns) and
 * puts all its work -- kernels and copies -- on that context's stream (torch's current stream of
 * the model's device, handed over by the caller; without a context, the legacy default stream
 * of the current device). The LibTorch shim runs the model on the same stream, so the model's
 * reads of x and writes of the gradient are ordered with the kernels without any device-wide
 * synchronisation. Results the host needs are copied with cudaMemcpyAsync and that stream alone
 * is synchronised.
 *
 * Arithmetic: the per-value formulas are fa_math.h's, the very functions backend_cpu.c runs;
 * their products go through fa_mul() (__fmul_rn on the device) so that nvcc never contracts a
 * multiply and an add into one FMA. With nvcc's default IEEE division and square root, every
 * element-wise result is then the CPU backend's, bit for bit. Per-image sums run in double in a
 * fixed order that depends on dim only (fixed chunks of a row, then the chunks in order), never
 * on n or on scheduling, so an image's sum never depends on its batch; they differ from the CPU
 * backend's element-order sums in the last bits only.
 */
#ifndef FA_CUDA_H
#define FA_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <mutex>

#include <cuda_runtime.h>

extern "C" { /* fa_backend.h has no extern "C" guard of its own */
#include "fa_backend.h"
}

namespace fa_cuda {

constexpr int kThreads = 256;               /* threads per block, every kernel               */
constexpr int64_t kMaxGridX = 4096;         /* element-wise blocks along a row (grid-stride) */
constexpr int64_t kMaxGridY = 65535;        /* rows in one grid (grid-stride over the rest)  */
constexpr int64_t kChunkMin = 8 * kThreads; /* reductions: at least this many values a block */
constexpr int64_t kMaxChunks = 64;          /* ... and at most this many blocks per row      */
constexpr int64_t kMaxReduceBlocks = 1 << 20;
constexpr int kMaxDevices = 64;             /* scratch slots: one per GPU ordinal            */

/* ---------------------------------------------------------------- errors (memory.cu) */

fa_status fail(cudaError_t err, const char *what); /* clears a non-sticky error */
fa_status check(cudaError_t err, const char *what);
fa_status check_launch(const char *kernel); /* after every launch */
fa_status check_sizes(const char *function, int64_t n, int64_t dim);

/* ---------------------------------------------------------------- context (memory.cu) */

/* The context's stream of the calling thread (nullptr: the legacy default stream). */
cudaStream_t stream();

/* Makes the context's device current for its lifetime and restores the caller's device after
 * (also on every early return). status: FA_OK, or why the device could not be made current. */
class device_guard {
  public:
    device_guard();
    ~device_guard();
    device_guard(const device_guard &) = delete;
    device_guard &operator=(const device_guard &) = delete;
    fa_status status = FA_OK;
    int device = -1; /* the device the work runs on */

  private:
    int restore_ = -1;
};

/* Device to host on the stream, then that stream alone is waited for. */
fa_status to_host(void *dst, const void *src, size_t bytes, const char *what);

/* ---------------------------------------------------------------- memory (memory.cu) */

/* Not zeroed, on the current device, ordered on stream(): through the allocator hook of
 * fa_cuda_set_allocator (torch's caching allocator) when one is set, else cudaMallocAsync. */
fa_status raw_alloc(void **p, size_t bytes, const char *what);
void raw_free(void *p); /* nullptr: nothing */

/* The per-image arrays of one call and the partial sums, in the current device's scratch. */
struct scratch_view {
    float *a;        /* n floats: alpha or gnorm   */
    float *b;        /* n floats: pcoef            */
    float *out;      /* n floats: per-image result */
    int64_t *index;  /* n int64                    */
    double *partial; /* n * chunks doubles         */
    double *mu;      /* n doubles: the joint budget's scale per row */
};

/* Held for a whole table call: the scratch of the guard's device is this call's alone. */
class scratch_lock {
  public:
    explicit scratch_lock(const device_guard &guard);
    /* Carves the view for n images with `chunks` partial sums each (grows the buffer). */
    fa_status get(int64_t n, int64_t chunks, scratch_view *view);

  private:
    std::lock_guard<std::mutex> lock_;
    int device_;
};

/* Copies n host entries into a scratch array; a NULL host array gives a NULL device one. From
 * pageable memory the copy is staged before the call returns, so `host` may change after. */
template <class T> fa_status upload(T *device, const T *host, int64_t n, T **out) {
    *out = nullptr;
    if (host == nullptr)
        return FA_OK;
    *out = device;
    return check(cudaMemcpyAsync(device, host, (size_t)n * sizeof(T), cudaMemcpyHostToDevice,
                                 stream()),
                 "cudaMemcpyAsync of a per-image array (host to device)");
}

/* ---------------------------------------------------------------- launchers (kernels.cu) */

/* Fixed split of a row into chunks for the per-image sums (a function of dim only). */
int64_t row_chunks(int64_t dim);

fa_status launch_direction(const fa_direction_consts &c, int64_t n, int64_t dim, const float *x,
                           const float *x0, const float *g, const float *gnorm,
                           const float *pcoef, float *m, float *v, float *d);
/* mu[i]: the joint budget's scale of row i (fa_step_value), -1: the plain projection. */
fa_status launch_joint_scale(int64_t n, int64_t dim, const float *x, const float *x0,
                             const float *d, const float *alpha, float scale, float eps,
                             float max_rmse, double *mu);
/* mu nullptr: the plain projection for every row. */
fa_status launch_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha, float scale, float eps, const double *mu, float *out);
fa_status launch_random_start(int64_t n, int64_t dim, const float *x0, float eps,
                              uint64_t seed, const int64_t *index, float *out);
/* dst row j = buf row src[j], j < n_rows */
fa_status launch_gather_rows(const float *buf, int64_t dim, int64_t n_rows, const int64_t *src,
                             float *dst);
/* dst row rows[q] = src row rows[q], q < count */
fa_status launch_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                           const int64_t *rows);
fa_status launch_calibrate(int64_t n, int64_t dim, const float *x, const float *x0,
                           const float *d, float eps, float r1, float *alpha);

/* Per-image sums into view.out, then to out_host (both passes and the copy on stream()). */
fa_status sum_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                        const float *ref, const float *d, const float *alpha, float eps,
                        const double *mu, const scratch_view &view, float *out_host);
fa_status sum_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                   const scratch_view &view, float *out_host);
fa_status sum_abs(int64_t n, int64_t dim, const float *g, const scratch_view &view,
                  float *out_host);

} /* namespace fa_cuda */

#endif /* FA_CUDA_H */
