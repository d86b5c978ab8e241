/*
 * backend_cpu.c -- the fa_backend table (fa_backend.h documents every entry) on host memory.
 *
 * The per-value math is fa_math.h's, shared with the CUDA kernels. The loops here are written so
 * that the compiler vectorises them: the update rule is chosen once per call (a constant
 * optimizer lets fa_direction_value's switch fold away). Per-image sums run in double, in
 * element order, so an image's sum never depends on its batch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_backend.h"

static fa_status cpu_alloc(void **p, size_t bytes) {
    *p = calloc(bytes ? bytes : 1, 1);
    if (*p == NULL)
        return fa_set_error(FA_ERR_MEMORY, "out of host memory (%zu bytes)", bytes);
    return FA_OK;
}

static void cpu_free(void *p) { free(p); }

static fa_status cpu_copy(void *dst, const void *src, size_t bytes, int kind) {
    (void)kind; /* one address space */
    if (bytes)
        memmove(dst, src, bytes);
    return FA_OK;
}

/* One row of the direction with the optimizer known at compile time (after inlining). */
#define DIRECTION_ROW(OPT)                                                                     \
    for (int64_t j = o; j < o + dim; j++)                                                      \
        d[j] = fa_direction_value(&c, OPT, g[j], gn, has_pc, pc, x[j], x0[j], m ? m + j : &dm, \
                                  v ? v + j : &dv)

static fa_status cpu_direction(const fa_config *cfg, int k, int64_t n, int64_t dim,
                               const float *x, const float *x0, const float *g,
                               const float *gnorm, const float *pcoef, float *m, float *v,
                               float *d) {
    const fa_direction_consts c = fa_direction_consts_make(cfg, k);
    const int has_pc = pcoef != NULL;
    float dm = 0.0f, dv = 0.0f; /* state sinks for rules without m or v */
    for (int64_t i = 0; i < n; i++) {
        const float gn = gnorm ? gnorm[i] : 1.0f, pc = pcoef ? pcoef[i] : 0.0f;
        const int64_t o = i * dim;
        switch (c.optimizer) {
        case FA_OPT_GD: DIRECTION_ROW(FA_OPT_GD); break;
        case FA_OPT_MGD: DIRECTION_ROW(FA_OPT_MGD); break;
        case FA_OPT_NAGD: DIRECTION_ROW(FA_OPT_NAGD); break;
        case FA_OPT_ADAM: DIRECTION_ROW(FA_OPT_ADAM); break;
        case FA_OPT_LADAM: DIRECTION_ROW(FA_OPT_LADAM); break;
        case FA_OPT_ADABELIEF: DIRECTION_ROW(FA_OPT_ADABELIEF); break;
        case FA_OPT_MSVAG: DIRECTION_ROW(FA_OPT_MSVAG); break;
        case FA_OPT_RMSPROP: DIRECTION_ROW(FA_OPT_RMSPROP); break;
        case FA_OPT_ADAMW: DIRECTION_ROW(FA_OPT_ADAMW); break;
        case FA_OPT_YOGI: DIRECTION_ROW(FA_OPT_YOGI); break;
        case FA_OPT_FGSM: DIRECTION_ROW(FA_OPT_FGSM); break;
        case FA_OPT_PGD: DIRECTION_ROW(FA_OPT_PGD); break;
        case FA_OPT_MIFGSM: DIRECTION_ROW(FA_OPT_MIFGSM); break;
        case FA_OPT_NIFGSM: DIRECTION_ROW(FA_OPT_NIFGSM); break;
        case FA_OPT_VMIFGSM: /* MI's rule on g + v (the loop forms g + v: attack.c variance()) */
        case FA_OPT_VNIFGSM: DIRECTION_ROW(FA_OPT_MIFGSM); break;
        default: return fa_set_error(FA_ERR_INTERNAL, "direction: optimizer %d", c.optimizer);
        }
    }
    return FA_OK;
}
#undef DIRECTION_ROW

/* The scale of the joint projection of one row's step (fa_step_value's mu): -1 when the l-inf
 * projection already meets the RMSE budget, when the budget is off, and for eps = INFINITY (no
 * projection at all, as on every backend). scratch: dim floats. */
static double joint_scale(int64_t dim, const float *x, const float *x0, const float *d, float a,
                          float eps, float max_rmse, float *scratch) {
    if (max_rmse <= 0.0f || isinf(eps))
        return -1.0;
    double s = 0.0;
    for (int64_t j = 0; j < dim; j++) {
        const double e = (double)fa_project(x[j] + fa_mul(a, d[j]), x0[j], eps) - (double)x0[j];
        s += e * e;
    }
    const double R = (double)max_rmse * (double)max_rmse * (double)dim;
    if (!(s > R)) /* within the budget, or NaN (propagates through the plain projection) */
        return -1.0;
    for (int64_t j = 0; j < dim; j++)
        scratch[j] = (x[j] + fa_mul(a, d[j])) - x0[j];
    double unused;
    return fa_solve_scale(dim, scratch, x0, eps, R, 1.0, &unused);
}

/* One row of P(x + a * d) into out (may alias x). */
static void step_row(int64_t dim, const float *x, const float *x0, const float *d, float a,
                     float eps, float max_rmse, float *scratch, float *out) {
    const double mu = joint_scale(dim, x, x0, d, a, eps, max_rmse, scratch);
    for (int64_t j = 0; j < dim; j++)
        out[j] = fa_step_value(x[j], x0[j], d[j], a, eps, mu);
}

static fa_status cpu_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                          const float *alpha, float scale, float eps, float max_rmse,
                          float *out) {
    float *scratch = NULL;
    if (max_rmse > 0.0f && !isinf(eps) &&
        (scratch = malloc((size_t)dim * sizeof(float))) == NULL)
        return fa_set_error(FA_ERR_MEMORY, "step: out of host memory");
    for (int64_t i = 0; i < n; i++)
        step_row(dim, x + i * dim, x0 + i * dim, d + i * dim, fa_mul(scale, alpha[i]), eps,
                 max_rmse, scratch, out + i * dim);
    free(scratch);
    return FA_OK;
}

static fa_status cpu_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                               const float *ref, const float *d, const float *alpha, float eps,
                               float max_rmse, float *out_host) {
    float *scratch = NULL;
    if (max_rmse > 0.0f && !isinf(eps) &&
        (scratch = malloc((size_t)dim * sizeof(float))) == NULL)
        return fa_set_error(FA_ERR_MEMORY, "step_rmse: out of host memory");
    for (int64_t i = 0; i < n; i++) {
        const int64_t o = i * dim;
        const float a = alpha[i];
        if (isnan(a)) { /* a row the caller does not ask about (calibration's finished images) */
            out_host[i] = NAN;
            continue;
        }
        const double mu = joint_scale(dim, x + o, x0 + o, d + o, a, eps, max_rmse, scratch);
        double s = 0.0;
        for (int64_t j = o; j < o + dim; j++) {
            const float e = fa_step_value(x[j], x0[j], d[j], a, eps, mu) - ref[j];
            s += (double)e * (double)e;
        }
        out_host[i] = (float)sqrt(s / (double)dim);
    }
    free(scratch);
    return FA_OK;
}

static fa_status cpu_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                          float *out_host) {
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = i * dim; j < (i + 1) * dim; j++) {
            const float e = x0 ? x[j] - x0[j] : x[j];
            s += (double)e * (double)e;
        }
        out_host[i] = (float)sqrt(s / (double)dim);
    }
    return FA_OK;
}

static fa_status cpu_abs_sum(int64_t n, int64_t dim, const float *g, float *out_host) {
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = i * dim; j < (i + 1) * dim; j++)
            s += fabs((double)g[j]);
        out_host[i] = (float)s;
    }
    return FA_OK;
}

static fa_status cpu_random_start(int64_t n, int64_t dim, const float *x0, float eps,
                                  uint64_t seed, const int64_t *index, float *out) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < dim; j++)
            out[i * dim + j] = fa_random_value(x0[i * dim + j], eps, seed, index[i], j);
    return FA_OK;
}

static fa_status cpu_compact(float *buf, int64_t dim, int64_t n_new, const int64_t *src) {
    for (int64_t j = 0; j < n_new; j++)
        if (src[j] != j)
            memmove(buf + j * dim, buf + src[j] * dim, (size_t)dim * sizeof(float));
    return FA_OK;
}

static fa_status cpu_copy_rows(float *dst, const float *src, int64_t dim, int64_t count,
                               const int64_t *rows) {
    for (int64_t q = 0; q < count; q++)
        memcpy(dst + rows[q] * dim, src + rows[q] * dim, (size_t)dim * sizeof(float));
    return FA_OK;
}

static fa_status cpu_fetch_rows(const float *buf, int64_t dim, int64_t count, const int64_t *rows,
                                float *const *dst) {
    for (int64_t q = 0; q < count; q++)
        memcpy(dst[q], buf + rows[q] * dim, (size_t)dim * sizeof(float));
    return FA_OK;
}

static const fa_backend cpu_backend = {
    "cpu",          cpu_alloc,      cpu_free,     cpu_copy,         cpu_direction,
    cpu_step,       cpu_step_rmse,  cpu_rmse,     cpu_abs_sum,      cpu_random_start,
    cpu_compact,    cpu_copy_rows,  cpu_fetch_rows, NULL, /* calibrate: fa_calibrate's loop */
};

const fa_backend *fa_backend_cpu(void) { return &cpu_backend; }
