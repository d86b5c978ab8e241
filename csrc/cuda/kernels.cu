/*
 * kernels.cu -- the CUDA backend's kernels fa_k_* and their launchers (fa_cuda.h): every launch
 * on the context's stream, every launch checked. The per-value math is fa_math.h's.
 */
#include <math.h>

#include "fa_cuda.h"

namespace fa_cuda {
namespace {

/* Grid-stride over rows (y) and the values of a row (x): each row's scalars are read once and
 * no 64-bit division is needed per value. */
#define FA_FOR_ROWS(i, n) for (int64_t i = blockIdx.y; i < (n); i += gridDim.y)
#define FA_FOR_COLS(j, dim)                                                                    \
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < (dim);                \
         j += (int64_t)gridDim.x * blockDim.x)

dim3 rows_grid(int64_t n, int64_t dim) {
    const int64_t x = (dim + kThreads - 1) / kThreads;
    return dim3((unsigned)(x < kMaxGridX ? x : kMaxGridX),
                (unsigned)(n < kMaxGridY ? n : kMaxGridY));
}

unsigned row_blocks(int64_t n) { return (unsigned)(n < kMaxReduceBlocks ? n : kMaxReduceBlocks); }

/* A block-wide double sum in a fixed tree (the same order for every launch). */
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

/* ---------------------------------------------------------------- element-wise */

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

/* mu: per row, the joint projection's scale (fa_step_value), or nullptr: plain P for all. */
__global__ void fa_k_step(int64_t n, int64_t dim, const float *x, const float *x0,
                          const float *d, const float *alpha, float scale, float eps,
                          const double *mu, float *out) {
    FA_FOR_ROWS(i, n) {
        const float a = fa_mul(scale, alpha[i]);
        const double mi = mu != nullptr ? mu[i] : -1.0;
        const int64_t row = i * dim;
        FA_FOR_COLS(j, dim) {
            const int64_t e = row + j; /* out may alias x: each value is read, then written */
            out[e] = fa_step_value(x[e], x0[e], d[e], a, eps, mi);
        }
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

__global__ void fa_k_gather_rows(const float *buf, int64_t dim, int64_t n_rows,
                                 const int64_t *src, float *dst) {
    FA_FOR_ROWS(j, n_rows) {
        const float *from = buf + src[j] * dim;
        float *to = dst + j * dim;
        FA_FOR_COLS(e, dim)
        to[e] = from[e];
    }
}

__global__ void fa_k_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                               const int64_t *rows) {
    FA_FOR_ROWS(q, count) {
        const int64_t o = rows[q] * dim;
        FA_FOR_COLS(e, dim)
        dst[o + e] = src[o + e];
    }
}

/* ---------------------------------------------------------------- one block per row */

/*
 * The joint budget (SPEC 8): one block per row finds mu[i] of fa_step_value for the step
 * P(x + scale * alpha[i] * d) -- -1 when the l-inf projection already meets the RMSE budget --
 * by fa_math.h's passes (fa_scale_terms, fa_scale_pass), with block-wide double sums.
 */
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
            part += fa_dmul(e, e);
        }
        const double s = block_sum(part, shared);
        double m = -1.0;
        if (s > R) {
            m = 0.0;
            for (int pass = 0; pass < FA_SCALE_PASSES; pass++) {
                double free_part = 0.0, sat_part = 0.0;
                for (int64_t j = threadIdx.x; j < dim; j += kThreads)
                    fa_scale_terms(m, (xi[j] + fa_mul(a, di[j])) - x0i[j], x0i[j], eps,
                                   &sat_part, &free_part);
                const double s_free = block_sum(free_part, shared);
                const double s_sat = block_sum(sat_part, shared);
                if (!fa_scale_pass(&m, s_free, s_sat, R, 1.0))
                    break;
            }
        }
        if (threadIdx.x == 0)
            mu[i] = m;
    }
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
            part += fa_dmul((double)di[j], (double)di[j]);
        const double rms = (double)(float)sqrt(block_sum(part, shared) / (double)dim);
        const int active = rms > 0.0 && isfinite(rms);
        fa_bracket b;
        fa_bracket_init(&b, active ? (double)r1 / rms : 0.0, -1.0);
        float s = (float)b.lo;
        int first = active; /* alpha0 = r1 / rms(d) first: exact when nothing clips */
        while (first || (active && fa_bracket_next(&b, &s))) {
            part = 0.0;
            for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
                const double e =
                    (double)(fa_project(xi[j] + fa_mul(s, di[j]), x0i[j], eps) - xi[j]);
                part += fa_dmul(e, e);
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

/* ---------------------------------------------------------------- per-image sums */

/* Terms of the three sums; term(i, e) is value e (flat) of image i. */
struct step_rmse_term {
    const float *x, *x0, *ref, *d, *alpha;
    const double *mu; /* nullptr: no joint budget */
    float eps;
    __device__ double operator()(int64_t i, int64_t e) const {
        const float p = fa_step_value(x[e], x0[e], d[e], alpha[i], eps,
                                      mu != nullptr ? mu[i] : -1.0);
        const double t = (double)(p - ref[e]);
        return fa_dmul(t, t);
    }
};

struct rmse_term {
    const float *x, *x0; /* x0 nullptr: the RMS of x */
    __device__ double operator()(int64_t, int64_t e) const {
        const double t = x0 != nullptr ? (double)(x[e] - x0[e]) : (double)x[e];
        return fa_dmul(t, t);
    }
};

struct abs_term {
    const float *g;
    __device__ double operator()(int64_t, int64_t e) const { return fabs((double)g[e]); }
};

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
        const double total = block_sum(s, sum);
        if (threadIdx.x == 0)
            partial[b] = total;
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

/* Both passes on the stream, then the copy to out_host (which waits for that stream). */
template <class Term>
fa_status row_sum(Term term, int64_t n, int64_t dim, int root, const scratch_view &view,
                  float *out_host) {
    const int64_t chunks = row_chunks(dim);
    fa_k_row_partial<<<row_blocks(n * chunks), kThreads, 0, stream()>>>(term, n, dim, chunks,
                                                                        view.partial);
    fa_status status = check_launch("fa_k_row_partial launch");
    if (status != FA_OK)
        return status;
    const int64_t finish = (n + kThreads - 1) / kThreads;
    fa_k_row_finish<<<(unsigned)(finish < kMaxGridX ? finish : kMaxGridX), kThreads, 0,
                      stream()>>>(n, dim, chunks, view.partial, root, view.out);
    if ((status = check_launch("fa_k_row_finish launch")) != FA_OK)
        return status;
    return to_host(out_host, view.out, (size_t)n * sizeof(float),
                   "cudaMemcpyAsync of per-image results (device to host)");
}

} // namespace

/* ---------------------------------------------------------------- launchers */

int64_t row_chunks(int64_t dim) {
    const int64_t c = (dim + kChunkMin - 1) / kChunkMin;
    return c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
}

fa_status launch_direction(const fa_direction_consts &c, int64_t n, int64_t dim, const float *x,
                           const float *x0, const float *g, const float *gnorm,
                           const float *pcoef, float *m, float *v, float *d) {
    fa_k_direction<<<rows_grid(n, dim), kThreads, 0, stream()>>>(c, n, dim, x, x0, g, gnorm,
                                                                 pcoef, m, v, d);
    return check_launch("fa_k_direction launch");
}

fa_status launch_joint_scale(int64_t n, int64_t dim, const float *x, const float *x0,
                             const float *d, const float *alpha, float scale, float eps,
                             float max_rmse, double *mu) {
    fa_k_joint_scale<<<row_blocks(n), kThreads, 0, stream()>>>(n, dim, x, x0, d, alpha, scale,
                                                               eps, max_rmse, mu);
    return check_launch("fa_k_joint_scale launch");
}

fa_status launch_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha, float scale, float eps, const double *mu, float *out) {
    fa_k_step<<<rows_grid(n, dim), kThreads, 0, stream()>>>(n, dim, x, x0, d, alpha, scale, eps,
                                                            mu, out);
    return check_launch("fa_k_step launch");
}

fa_status launch_random_start(int64_t n, int64_t dim, const float *x0, float eps,
                              uint64_t seed, const int64_t *index, float *out) {
    fa_k_random_start<<<rows_grid(n, dim), kThreads, 0, stream()>>>(n, dim, x0, eps, seed,
                                                                    index, out);
    return check_launch("fa_k_random_start launch");
}

fa_status launch_gather_rows(const float *buf, int64_t dim, int64_t n_rows, const int64_t *src,
                             float *dst) {
    fa_k_gather_rows<<<rows_grid(n_rows, dim), kThreads, 0, stream()>>>(buf, dim, n_rows, src,
                                                                        dst);
    return check_launch("fa_k_gather_rows launch");
}

fa_status launch_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                           const int64_t *rows) {
    fa_k_copy_rows<<<rows_grid(count, dim), kThreads, 0, stream()>>>(dst, src, dim, count, rows);
    return check_launch("fa_k_copy_rows launch");
}

fa_status launch_calibrate(int64_t n, int64_t dim, const float *x, const float *x0,
                           const float *d, float eps, float r1, float *alpha) {
    fa_k_calibrate<<<row_blocks(n), kThreads, 0, stream()>>>(n, dim, x, x0, d, eps, r1, alpha);
    return check_launch("fa_k_calibrate launch");
}

fa_status sum_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                        const float *ref, const float *d, const float *alpha, float eps,
                        const double *mu, const scratch_view &view, float *out_host) {
    const step_rmse_term term = {x, x0, ref, d, alpha, mu, eps};
    return row_sum(term, n, dim, 1, view, out_host);
}

fa_status sum_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                   const scratch_view &view, float *out_host) {
    const rmse_term term = {x, x0};
    return row_sum(term, n, dim, 1, view, out_host);
}

fa_status sum_abs(int64_t n, int64_t dim, const float *g, const scratch_view &view,
                  float *out_host) {
    const abs_term term = {g};
    return row_sum(term, n, dim, 0, view, out_host);
}

} /* namespace fa_cuda */
