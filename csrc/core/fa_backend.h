/*
 * fa_backend.h -- internal: the element-wise and per-image work of the attack loop, behind one
 * table so that the same loop (attack.c) runs on host memory (backend_cpu.c) or on GPU memory
 * (csrc/cuda/, behind csrc/cuda/fa_cuda.h). Not part of the public contract. The per-value formulas live
 * once, in fa_math.h, which both backends compile.
 *
 * Every buffer argument named x, x0, ref, g, m, v, d, out, dst, src lives in the backend's
 * memory and holds `n` rows of `dim` floats (row i = image i of the active batch). Arrays of
 * per-image scalars (alpha, gnorm, pcoef, out_host, index) are HOST arrays of n entries; a GPU
 * backend copies them itself. Every function returns fa_status and sets fa_last_error on failure.
 */
#ifndef FA_BACKEND_H
#define FA_BACKEND_H

#include "fa_math.h"
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
     * image because all images start together): fa_direction_value() of fa_math.h for every
     * value, i.e. first the effective gradient
     *     ge = g / gnorm[i] + pcoef[i] * (x - x0)     (gnorm NULL: 1; pcoef NULL: no term)
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
     *   MI/NI    m = mu*m + ge (the loop passes gnorm = mean |g|, SPEC 3); d = sign(m)
     * sign(0) = 0.
     */
    fa_status (*direction)(const fa_config *cfg, int k, int64_t n, int64_t dim, const float *x,
                           const float *x0, const float *g, const float *gnorm,
                           const float *pcoef, float *m, float *v, float *d);

    /* out = P(x + scale * alpha[i] * d); out may alias x. P is fa_project (SPEC 1) and, with
     * max_rmse > 0, the joint projection of SPEC 8 onto {l-inf <= eps} n {RMSE <= max_rmse} n
     * box (fa_solve_scale). eps = INFINITY: no projection at all, whatever max_rmse
     * (NI-FGSM's look-ahead; fa_step_value). */
    fa_status (*step)(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                      const float *alpha, float scale, float eps, float max_rmse, float *out);

    /* out_host[i] = RMSE(P(x + alpha[i] * d) - ref) without writing anything (calibration and
     * the shortened last step of stop_rmse); P as in step, around x0 (eps = INFINITY: none).
     * alpha[i] NaN: the row is not asked about (out_host[i] NaN; a backend may skip its
     * work). */
    fa_status (*step_rmse)(int64_t n, int64_t dim, const float *x, const float *x0,
                           const float *ref, const float *d, const float *alpha, float eps,
                           float max_rmse, float *out_host);

    /* out_host[i] = RMSE(x - x0) = sqrt(mean((x - x0)^2)); x0 NULL: the RMS of x. NaN if any
     * value is NaN. */
    fa_status (*rmse)(int64_t n, int64_t dim, const float *x, const float *x0, float *out_host);

    /* out_host[i] = sum |g|; NaN/inf propagate (the loop's NaN check). */
    fa_status (*abs_sum)(int64_t n, int64_t dim, const float *g, float *out_host);

    /* out = fa_random_value(x0, eps, seed, index[i], j) for every value (l-inf ball and box;
     * the loop applies a joint budget after it with step). */
    fa_status (*random_start)(int64_t n, int64_t dim, const float *x0, float eps, uint64_t seed,
                              const int64_t *index, float *out);

    /* Row moves inside one buffer: row j = row src[j] for j in [0, n_new), src[j] >= j and
     * strictly increasing (the compaction after images leave the batch). */
    fa_status (*compact)(float *buf, int64_t dim, int64_t n_new, const int64_t *src);

    /* Row r of dst = row r of src for the count rows r = rows[q] (host array): the best-iterate
     * copies of one step in one call. */
    fa_status (*copy_rows)(float *dst, const float *src, int64_t dim, int64_t count,
                           const int64_t *rows);

    /* Row rows[q] of buf to the host memory dst[q] (dim floats each), q < count: the results of
     * the images that finish in one step, in one call. */
    fa_status (*fetch_rows)(const float *buf, int64_t dim, int64_t count, const int64_t *rows,
                            float *const *dst);

    /* Optional (NULL: fa_calibrate drives the search with step_rmse): the whole calibration of
     * fa_calibrate without a joint budget, on the backend, alpha_out on the host. */
    fa_status (*calibrate)(int64_t n, int64_t dim, const float *x, const float *x0,
                           const float *d, float eps, float r1, float *alpha_out);
} fa_backend;

const fa_backend *fa_backend_cpu(void);
/* Defined in csrc/cuda/backend_cuda.cu when built with CUDA, else in core/no_cuda.c (NULL). */
const fa_backend *fa_backend_cuda(void);

/* ---------------------------------------------------------------- the scale solver (scale.c) */

/*
 * SPEC 8 on one image, host memory: the largest mu in [0, mu_max] with
 *     S(mu) = sum_j clip(mu * t_j, lo_j, hi_j)^2 <= R,   lo/hi = fa_lower/fa_upper(x0_j, eps),
 * by fa_math.h's active-set iteration (fa_scale_terms, fa_scale_pass); *s_out = S(mu) at the
 * returned mu. The joint projection (mu_max = 1, t = y - x0) and the RMSE matching
 * (mu_max = inf, t = the perturbation) both use it; the CUDA backend runs the same passes in
 * one block per image.
 */
double fa_solve_scale(int64_t dim, const float *t, const float *x0, float eps, double R,
                      double mu_max, double *s_out);

/* ---------------------------------------------------------------- built on the table (calibrate.c) */

/*
 * Per-image step size for the first step (SPEC 4): alpha_out[i] (host) is the alpha whose step
 * P(x + alpha * d) has RMSE r1 measured from x itself (x is x0, or the random start), within
 * r1 * 1e-4. Uses only step_rmse and rmse: no model calls. A zero direction gives alpha 0; a
 * target the projection cannot reach gives the smallest alpha that reaches the largest RMSE
 * possible (within the tolerance).
 */
fa_status fa_calibrate(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *d, float eps, float max_rmse, float r1,
                       float *alpha_out);

/*
 * The stop_rmse rule's shortened last step: for each image whose full step P(x + alpha * d)
 * would pass `target` RMSE (against x0), alpha_io[i] is reduced to t * alpha_io[i], t in
 * [0, 1], so that the step lands on target (within target * 1e-4). Other images keep theirs.
 */
fa_status fa_shorten(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                     const float *x0, const float *d, float eps, float max_rmse, float target,
                     float *alpha_io);

#endif /* FA_BACKEND_H */
