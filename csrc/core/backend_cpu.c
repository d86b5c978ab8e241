/*
 * backend_cpu.c -- the fa_backend table (fa_backend.h documents every entry) on host memory.
 *
 * Plain loops the compiler vectorises; per-image sums run in double, in element order, so an
 * image's sum never depends on its batch. Element-wise formulas follow fa_backend.h in the same
 * order as the CUDA kernels, so both backends agree bit for bit (the C build uses
 * -ffp-contract=off so no multiply-add is fused here either).
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
        memcpy(dst, src, bytes);
    return FA_OK;
}

/* The projection P of SPEC 1, NaN-propagating (see fa_backend.h). */
static inline float project(float y, float x0, float eps) {
    y = y < 0.0f ? 0.0f : (y > 255.0f ? 255.0f : y);
    const float lo = x0 - eps, hi = x0 + eps;
    return y < lo ? lo : (y > hi ? hi : y);
}

static inline float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

static fa_status cpu_direction(const fa_config *cfg, int k, int64_t n, int64_t dim,
                               const float *x, const float *x0, const float *g,
                               const float *gscale, const float *pcoef, float *m, float *v,
                               float *d) {
    const int opt = cfg->optimizer;
    const float mu = cfg->momentum, b1 = cfg->beta1, b2 = cfg->beta2, delta = cfg->delta;
    const float bm = cfg->msvag_beta, rho_rms = cfg->rmsprop_rho;
    float rho = 0.0f;
    if (opt == FA_OPT_MSVAG) {
        const float bk = powf(bm, (float)(k + 2)); /* float, as the CUDA backend has it */
        rho = (1.0f - bm) * (1.0f + bk) / ((1.0f + bm) * (1.0f - bk));
    }
    for (int64_t i = 0; i < n; i++) {
        const float gs = gscale ? gscale[i] : 1.0f, pc = pcoef ? pcoef[i] : 0.0f;
        const int64_t o = i * dim;
        for (int64_t j = o; j < o + dim; j++) {
            float ge = gs * g[j] + pc * (x[j] - x0[j]);
            if (opt == FA_OPT_LADAM)
                ge = ge - cfg->ladam_lambda * x[j];
            switch (opt) {
            case FA_OPT_GD:
                d[j] = ge;
                break;
            case FA_OPT_MGD:
            case FA_OPT_NAGD:
                m[j] = mu * m[j] + ge;
                d[j] = m[j];
                break;
            case FA_OPT_ADAM:
            case FA_OPT_LADAM:
            case FA_OPT_ADAMW:
                m[j] = b1 * m[j] + (1.0f - b1) * ge;
                v[j] = b2 * v[j] + (1.0f - b2) * (ge * ge);
                d[j] = m[j] / (sqrtf(v[j]) + delta);
                if (opt == FA_OPT_ADAMW)
                    d[j] = d[j] + cfg->adamw_decay * x[j];
                break;
            case FA_OPT_ADABELIEF: {
                m[j] = b1 * m[j] + (1.0f - b1) * ge;
                const float r = ge - m[j];
                v[j] = b2 * v[j] + (1.0f - b2) * (r * r);
                d[j] = m[j] / (sqrtf(v[j]) + delta);
                break;
            }
            case FA_OPT_MSVAG: {
                m[j] = bm * m[j] + (1.0f - bm) * ge;
                v[j] = bm * v[j] + (1.0f - bm) * (ge * ge);
                const float m2 = m[j] * m[j];
                const float den = (1.0f - 2.0f * rho) * m2 + rho * v[j];
                d[j] = den == 0.0f ? 0.0f : (1.0f - rho) * m2 / den * m[j];
                break;
            }
            case FA_OPT_RMSPROP:
                v[j] = rho_rms * v[j] + (1.0f - rho_rms) * (ge * ge);
                d[j] = ge / sqrtf(v[j] + delta);
                break;
            case FA_OPT_YOGI: {
                m[j] = b1 * m[j] + (1.0f - b1) * ge;
                const float g2 = ge * ge;
                v[j] = v[j] - (1.0f - b2) * g2 * sign(v[j] - g2);
                d[j] = m[j] / (sqrtf(v[j]) + delta);
                break;
            }
            case FA_OPT_FGSM:
            case FA_OPT_PGD:
                d[j] = sign(ge);
                break;
            case FA_OPT_MIFGSM:
            case FA_OPT_NIFGSM:
                m[j] = mu * m[j] + ge;
                d[j] = sign(m[j]);
                break;
            default:
                return fa_set_error(FA_ERR_INTERNAL, "direction: optimizer %d", opt);
            }
        }
    }
    return FA_OK;
}

static fa_status cpu_step(int64_t n, int64_t dim, const float *x, const float *x0, const float *d,
                          const float *alpha, float scale, float eps, float *out) {
    for (int64_t i = 0; i < n; i++) {
        const float a = scale * alpha[i];
        for (int64_t j = i * dim; j < (i + 1) * dim; j++)
            out[j] = project(x[j] + a * d[j], x0[j], eps);
    }
    return FA_OK;
}

static fa_status cpu_step_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                               const float *d, const float *alpha, float eps, float *out_host) {
    for (int64_t i = 0; i < n; i++) {
        const float a = alpha[i];
        double s = 0.0;
        for (int64_t j = i * dim; j < (i + 1) * dim; j++) {
            const float e = project(x[j] + a * d[j], x0[j], eps) - x0[j];
            s += (double)e * (double)e;
        }
        out_host[i] = (float)sqrt(s / (double)dim);
    }
    return FA_OK;
}

static fa_status cpu_rmse(int64_t n, int64_t dim, const float *x, const float *x0,
                          float *out_host) {
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = i * dim; j < (i + 1) * dim; j++) {
            const float e = x[j] - x0[j];
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
        for (int64_t j = 0; j < dim; j++) {
            const int64_t e = i * dim + j;
            out[e] = project(x0[e] + eps * fa_uniform_pm1(seed, index[i], j), x0[e], eps);
        }
    return FA_OK;
}

static fa_status cpu_compact(float *buf, int64_t dim, int64_t n_new, const int64_t *src) {
    for (int64_t j = 0; j < n_new; j++)
        if (src[j] != j)
            memmove(buf + j * dim, buf + src[j] * dim, (size_t)dim * sizeof(float));
    return FA_OK;
}

static const fa_backend cpu_backend = {
    "cpu",         cpu_alloc, cpu_free,         cpu_copy,         cpu_direction,
    cpu_step,      cpu_step_rmse, cpu_rmse,     cpu_abs_sum,      cpu_random_start,
    cpu_compact,
};

const fa_backend *fa_backend_cpu(void) { return &cpu_backend; }
