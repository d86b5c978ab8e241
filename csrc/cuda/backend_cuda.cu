/*
 * backend_cuda.cu -- the fa_backend table (core/fa_backend.h documents every entry) on GPU
 * memory: argument checks, the per-image host arrays uploaded into the scratch, the launchers of
 * kernels.cu, results to the host. fa_cuda.h describes the device, stream, memory and
 * arithmetic rules every entry follows.
 *
 * Every entry point opens with a device_guard (the context's device current, the caller's
 * restored on return) and, when it uses the scratch, a scratch_lock on that device.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_cuda.h"

namespace fa_cuda {
namespace {

/* ---------------------------------------------------------------- memory */

/* The table's alloc: zeroed (the optimizer state starts at zero), ordered on the stream. */
fa_status cuda_alloc(void **p, size_t bytes) {
    *p = nullptr;
    const device_guard guard;
    if (guard.status != FA_OK || bytes == 0)
        return guard.status;
    fa_status status = raw_alloc(p, bytes, "an attack buffer");
    if (status == FA_OK &&
        (status = check(cudaMemsetAsync(*p, 0, bytes, stream()), "cudaMemsetAsync of a new "
                                                                 "buffer")) != FA_OK) {
        raw_free(*p);
        *p = nullptr;
    }
    return status;
}

/* Ordered after the attack's last use of the block, which ran on the same stream. */
void cuda_free(void *p) {
    if (p == nullptr)
        return;
    const device_guard guard;
    raw_free(p);
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
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    if (kind == FA_COPY_D2H)
        return to_host(dst, src, bytes, names[kind]);
    return check(cudaMemcpyAsync(dst, src, bytes, kinds[kind], stream()), names[kind]);
}

/* ---------------------------------------------------------------- element-wise */

fa_status cuda_direction(const fa_config *cfg, int k, int64_t n, int64_t dim, const float *x,
                         const float *x0, const float *g, const float *gnorm,
                         const float *pcoef, float *m, float *v, float *d) {
    if (cfg == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "direction: cfg must not be NULL");
    if (cfg->optimizer < 0 || cfg->optimizer >= FA_OPT_COUNT)
        return fa_set_error(FA_ERR_ARGUMENT, "cfg.optimizer=%d out of range [0, %d)",
                            cfg->optimizer, (int)FA_OPT_COUNT);
    fa_status status = check_sizes("direction", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    float *gnorm_d = nullptr, *pcoef_d = nullptr;
    if ((status = scratch.get(n, 0, &view)) != FA_OK ||
        (status = upload(view.a, gnorm, n, &gnorm_d)) != FA_OK ||
        (status = upload(view.b, pcoef, n, &pcoef_d)) != FA_OK)
        return status;
    return launch_direction(fa_direction_consts_make(cfg, k), n, dim, x, x0, g, gnorm_d, pcoef_d,
                            m, v, d);
}

/* The joint budget's per-row scale into view.mu, or *mu = nullptr when there is none (no budget,
 * or eps = INFINITY: no projection at all). */
fa_status joint_scale(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha_d, float scale, float eps, float max_rmse,
                      const scratch_view &view, const double **mu) {
    *mu = nullptr;
    if (!(max_rmse > 0.0f) || isinf(eps))
        return FA_OK;
    *mu = view.mu;
    return launch_joint_scale(n, dim, x, x0, d, alpha_d, scale, eps, max_rmse, view.mu);
}

fa_status cuda_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                    const float *alpha, float scale, float eps, float max_rmse, float *out) {
    fa_status status = check_sizes("step", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    if (alpha == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "step: alpha must not be NULL");
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    float *alpha_d = nullptr;
    const double *mu = nullptr;
    if ((status = scratch.get(n, 0, &view)) != FA_OK ||
        (status = upload(view.a, alpha, n, &alpha_d)) != FA_OK ||
        (status = joint_scale(n, dim, x, x0, d, alpha_d, scale, eps, max_rmse, view, &mu)) !=
            FA_OK)
        return status;
    return launch_step(n, dim, x, x0, d, alpha_d, scale, eps, mu, out);
}

fa_status cuda_random_start(int64_t n, int64_t dim, const float *x0, float eps, uint64_t seed,
                            const int64_t *index, float *out) {
    fa_status status = check_sizes("random_start", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    if (index == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "random_start: index must not be NULL");
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    int64_t *index_d = nullptr;
    if ((status = scratch.get(n, 0, &view)) != FA_OK ||
        (status = upload(view.index, index, n, &index_d)) != FA_OK)
        return status;
    return launch_random_start(n, dim, x0, eps, seed, index_d, out);
}

/* ---------------------------------------------------------------- per-image sums */

fa_status cuda_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                         const float *ref, const float *d, const float *alpha, float eps,
                         float max_rmse, float *out_host) {
    fa_status status = check_sizes("step_rmse", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    if (alpha == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "step_rmse: alpha must not be NULL");
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    float *alpha_d = nullptr;
    const double *mu = nullptr;
    if ((status = scratch.get(n, row_chunks(dim), &view)) != FA_OK ||
        (status = upload(view.a, alpha, n, &alpha_d)) != FA_OK ||
        (status = joint_scale(n, dim, x, x0, d, alpha_d, 1.0f, eps, max_rmse, view, &mu)) != FA_OK)
        return status;
    return sum_step_rmse(n, dim, x, x0, ref, d, alpha_d, eps, mu, view, out_host);
}

fa_status cuda_rmse(int64_t n, int64_t dim, const float *x, const float *x0, float *out_host) {
    fa_status status = check_sizes("rmse", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    if ((status = scratch.get(n, row_chunks(dim), &view)) != FA_OK)
        return status;
    return sum_rmse(n, dim, x, x0, view, out_host);
}

fa_status cuda_abs_sum(int64_t n, int64_t dim, const float *g, float *out_host) {
    fa_status status = check_sizes("abs_sum", n, dim);
    if (status != FA_OK || n == 0)
        return status;
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    if ((status = scratch.get(n, row_chunks(dim), &view)) != FA_OK)
        return status;
    return sum_abs(n, dim, g, view, out_host);
}

/* ---------------------------------------------------------------- rows */

/* Rows gathered into a temporary, then copied back: two launches per buffer whatever the
 * number of rows that move (a parallel gather in place could read a row after another thread
 * overwrote it). The temporary is freed in stream order after the copy. */
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
    const int64_t moved = n_new - first;
    const size_t bytes = (size_t)moved * (size_t)dim * sizeof(float);
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    void *tmp = nullptr;
    if ((status = raw_alloc(&tmp, bytes, "the compaction's rows")) != FA_OK)
        return status;
    {
        scratch_lock scratch(guard);
        scratch_view view;
        int64_t *src_d = nullptr;
        if ((status = scratch.get(moved, 0, &view)) == FA_OK &&
            (status = upload(view.index, src + first, moved, &src_d)) == FA_OK &&
            (status = launch_gather_rows(buf, dim, moved, src_d, static_cast<float *>(tmp))) ==
                FA_OK)
            status = check(cudaMemcpyAsync(buf + first * dim, tmp, bytes,
                                           cudaMemcpyDeviceToDevice, stream()),
                           "cudaMemcpyAsync of the compacted rows (device to device)");
    }
    raw_free(tmp);
    return status;
}

fa_status cuda_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                         const int64_t *rows) {
    if (count <= 0 || dim <= 0)
        return FA_OK;
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    int64_t *rows_d = nullptr;
    fa_status status;
    if ((status = scratch.get(count, 0, &view)) != FA_OK ||
        (status = upload(view.index, rows, count, &rows_d)) != FA_OK)
        return status;
    return launch_copy_rows(dst, src, dim, count, rows_d);
}

/* The rows gathered into one temporary, one copy to a host staging buffer, then spread to their
 * destinations: one round trip whatever the count. */
fa_status cuda_fetch_rows(const float *buf, int64_t dim, int64_t count, const int64_t *rows,
                          float *const *dst) {
    if (count <= 0 || dim <= 0)
        return FA_OK;
    const size_t row_bytes = (size_t)dim * sizeof(float), bytes = (size_t)count * row_bytes;
    float *host = static_cast<float *>(malloc(bytes));
    if (host == nullptr)
        return fa_set_error(FA_ERR_MEMORY, "fetch_rows: out of host memory (%zu bytes)", bytes);
    const device_guard guard;
    fa_status status = guard.status;
    void *tmp = nullptr;
    if (status == FA_OK && (status = raw_alloc(&tmp, bytes, "the finished images")) == FA_OK) {
        scratch_lock scratch(guard);
        scratch_view view;
        int64_t *rows_d = nullptr;
        if ((status = scratch.get(count, 0, &view)) == FA_OK &&
            (status = upload(view.index, rows, count, &rows_d)) == FA_OK &&
            (status = launch_gather_rows(buf, dim, count, rows_d, static_cast<float *>(tmp))) ==
                FA_OK)
            status = to_host(host, tmp, bytes,
                             "cudaMemcpyAsync of finished images (device to host)");
    }
    raw_free(tmp);
    if (status == FA_OK)
        for (int64_t q = 0; q < count; q++)
            memcpy(dst[q], host + q * dim, row_bytes);
    free(host);
    return status;
}

/* ---------------------------------------------------------------- calibration */

fa_status cuda_calibrate(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                         float eps, float r1, float *alpha_out) {
    fa_status status = check_sizes("calibrate", n, dim);
    if (status != FA_OK || n == 0 || dim == 0)
        return status;
    const device_guard guard;
    if (guard.status != FA_OK)
        return guard.status;
    scratch_lock scratch(guard);
    scratch_view view;
    if ((status = scratch.get(n, 0, &view)) != FA_OK ||
        (status = launch_calibrate(n, dim, x, x0, d, eps, r1, view.out)) != FA_OK)
        return status;
    return to_host(alpha_out, view.out, (size_t)n * sizeof(float),
                   "cudaMemcpyAsync of the calibrated step sizes (device to host)");
}

const fa_backend table = {
    "cuda",          cuda_alloc,     cuda_free,    cuda_copy,         cuda_direction,
    cuda_step,       cuda_step_rmse, cuda_rmse,    cuda_abs_sum,      cuda_random_start,
    cuda_compact,    cuda_copy_rows, cuda_fetch_rows, cuda_calibrate,
};

} // namespace
} /* namespace fa_cuda */

extern "C" const fa_backend *fa_backend_cuda(void) { return &fa_cuda::table; }
