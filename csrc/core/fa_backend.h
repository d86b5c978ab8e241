/*
 * fa_backend.h -- internal: the element-wise and per-image work of the attack loop, behind one
 * table so that the same loop (attack.c) runs on host memory (backend_cpu.c) or on GPU memory
 * (csrc/cuda/backend_cuda.cu). Not part of the public contract.
 *
 * Every buffer argument named x, x0, g, m, v, d, out, dst, src lives in the backend's memory
 * and holds `n` rows of `dim` floats (row i = image i of the active batch). Arrays of per-image
 * scalars (alpha, gscale, pcoef, out_host, index) are HOST arrays of n entries; a GPU backend
 * copies them itself. Every function returns fa_status and sets fa_last_error on failure.
 *
 * Projection P (SPEC 1), written so that NaN propagates (no fminf/fmaxf):
 *     y = x < 0 ? 0 : (x > 255 ? 255 : x);  lo = x0 - eps; hi = x0 + eps;
 *     y = y < lo ? lo : (y > hi ? hi : y)
 */
#ifndef FA_BACKEND_H
#define FA_BACKEND_H

#include "fairattack.h"

typedef enum fa_copy_kind {
    FA_COPY_H2D = 0, /* host -> backend   */
    FA_COPY_D2H = 1, /* backend -> host   */
    FA_COPY_D2D = 2  /* backend -> backend (regions may not overlap) */
} fa_copy_kind;

typedef struct fa_backend {
    const char *name; /* "cpu" or "cuda" */

    /* memory: alloc returns zeroed memory; free(NULL) does nothing */
    fa_status (*alloc)(void **p, size_t bytes);
    void (*free)(void *p);
    fa_status (*copy)(void *dst, const void *src, size_t bytes, int kind);

    /*
     * One optimizer step's direction for step index k (0-based, the same for every active
     * image because all images start together). First the effective gradient
     *     ge = gscale[i] * g + pcoef[i] * (x - x0)        (gscale NULL: 1; pcoef NULL: 0)
     *     LAdam: ge -= ladam_lambda * x
     * then the rule of cfg->optimizer (SPEC 3) updates m, v in place and writes d:
     *   GD       d = ge
     *   MGD/NAGD m = mu*m + ge; d = m
     *   Adam/LAdam m = b1*m + (1-b1)*ge; v = b2*v + (1-b2)*ge^2; d = m/(sqrt(v)+delta)
     *   AdaB     m = b1*m + (1-b1)*ge; v = b2*v + (1-b2)*(ge-m)^2; d = m/(sqrt(v)+delta)
     *   MSVAG    m = b*m + (1-b)*ge; v = b*v + (1-b)*ge^2;
     *            rho = (1-b)(1+b^(k+2)) / ((1+b)(1-b^(k+2)));
     *            den = (1-2rho)*m^2 + rho*v; d = den == 0 ? 0 : (1-rho)*m^2/den * m
     *   RMSProp  v = rho*v + (1-rho)*ge^2; d = ge / sqrt(v + delta)
     *   AdamW    as Adam, then d += adamw_decay * x
     *   Yogi     m = b1*m + (1-b1)*ge; v = v - (1-b2)*ge^2*sign(v - ge^2); d = m/(sqrt(v)+delta)
     *   FGSM/PGD d = sign(ge)
     *   MI/NI    m = mu*m + ge (the loop passes gscale = 1/||g||_1); d = sign(m)
     * sign(0) = 0.
     */
    fa_status (*direction)(const fa_config *cfg, int k, int64_t n, int64_t dim, const float *x,
                           const float *x0, const float *g, const float *gscale,
                           const float *pcoef, float *m, float *v, float *d);

    /* out = P(x + scale * alpha[i] * d); out may alias x. */
    fa_status (*step)(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha, float scale, float eps, float *out);

    /* out_host[i] = RMSE(P(x + alpha[i] * d) - x0) without writing anything (calibration and
     * the shortened last step of stop_rmse). */
    fa_status (*step_rmse)(int64_t n, int64_t dim, const float *x, const float *x0,
                           const float *d, const float *alpha, float eps, float *out_host);

    /* out_host[i] = RMSE(x - x0) = sqrt(mean((x - x0)^2)); NaN if any value is NaN. */
    fa_status (*rmse)(int64_t n, int64_t dim, const float *x, const float *x0, float *out_host);

    /* out_host[i] = sum |g|; NaN/inf propagate (the loop's NaN check). */
    fa_status (*abs_sum)(int64_t n, int64_t dim, const float *g, float *out_host);

    /* out = P(x0 + u), u uniform in [-eps, eps] drawn from a counter-based hash of
     * (seed, index[i], element j) -- identical on every backend and for every batching. */
    fa_status (*random_start)(int64_t n, int64_t dim, const float *x0, float eps, uint64_t seed,
                              const int64_t *index, float *out);

    /* Row moves inside one buffer: row j = row src[j] for j in [0, n_new), src[j] >= j and
     * strictly increasing (the compaction after images leave the batch). */
    fa_status (*compact)(float *buf, int64_t dim, int64_t n_new, const int64_t *src);
} fa_backend;

const fa_backend *fa_backend_cpu(void);
/* Defined in csrc/cuda/backend_cuda.cu when built with CUDA, else in core/no_cuda.c (NULL). */
const fa_backend *fa_backend_cuda(void);

/* The counter-based uniform draw used by random_start on every backend: a splitmix64 mix of
 * (seed, index, j) mapped to [-1, 1). Defined inline so CUDA uses the same arithmetic. */
#if defined(__CUDACC__)
#define FA_HD __host__ __device__
#else
#define FA_HD
#endif
static inline FA_HD float fa_uniform_pm1(uint64_t seed, int64_t index, int64_t j) {
    uint64_t z = seed ^ ((uint64_t)index * 0x9E3779B97F4A7C15ULL) ^
                 ((uint64_t)j * 0xD1B54A32D192ED03ULL);
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    /* 24 high bits -> [0, 1) exactly representable in float, then to [-1, 1) */
    return (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

/* ---------------------------------------------------------------- built on the table (calibrate.c) */

/*
 * Per-image step size for the first step (SPEC 4): alpha_out[i] (host) is the alpha whose step
 * P(x + alpha * d) from x has RMSE (against x0) r1, within r1 * 1e-4. Uses only step_rmse and
 * rmse: no model calls. A zero direction gives alpha 0; a target the projection cannot reach
 * gives the smallest alpha that reaches the largest RMSE possible (within the tolerance).
 */
fa_status fa_calibrate(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *d, float eps, float r1, float *alpha_out);

/*
 * The stop_rmse rule's shortened last step: for each image whose full step P(x + alpha * d)
 * would pass `target` RMSE, alpha_io[i] is reduced to t * alpha_io[i], t in [0, 1], so that the
 * step lands on target (within target * 1e-4). Other images keep their alpha.
 */
fa_status fa_shorten(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                     const float *x0, const float *d, float eps, float target, float *alpha_io);

#endif /* FA_BACKEND_H */
