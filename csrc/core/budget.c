/*
 * budget.c -- the public entry points of the fair comparison's exact budgets (SPEC 8) on host
 * memory: the joint projection of whole images (fa_project_rmse, the CPU backend's step) and
 * the matching of any adversarial image to a target RMSE (fa_match_rmse, scale.c's solver),
 * optionally quantised to the integer values a uint8 image holds.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_backend.h"

/* ---------------------------------------------------------------- argument checks */

static fa_status check_images(const char *function, int64_t n, int64_t dim, const float *x0,
                              const float *other, const char *other_name, float eps) {
    if (n < 0 || dim <= 0)
        return fa_set_error(FA_ERR_ARGUMENT, "%s: n=%lld, dim=%lld: need n >= 0 and dim > 0",
                            function, (long long)n, (long long)dim);
    if (!(eps > 0.0f) || eps > 255.0f)
        return fa_set_error(FA_ERR_ARGUMENT, "%s: eps=%g must be in (0, 255]", function,
                            (double)eps);
    if (n > 0 && (x0 == NULL || other == NULL))
        return fa_set_error(FA_ERR_ARGUMENT, "%s: the image arrays must not be NULL", function);
    for (int64_t e = 0; e < n * dim; e++) {
        if (!(x0[e] >= 0.0f && x0[e] <= 255.0f))
            return fa_set_error(FA_ERR_ARGUMENT,
                                "%s: clean[%lld] (image %lld) = %g: pixels must be in [0, 255]",
                                function, (long long)e, (long long)(e / dim), (double)x0[e]);
        if (!isfinite(other[e]))
            return fa_set_error(FA_ERR_ARGUMENT, "%s: %s[%lld] (image %lld) is not finite",
                                function, other_name, (long long)e, (long long)(e / dim));
    }
    return FA_OK;
}

/* ---------------------------------------------------------------- the joint projection */

fa_status fa_project_rmse(int64_t n, int64_t dim, const float *x0, const float *y, float eps,
                          float max_rmse, float *out) {
    fa_clear_error();
    fa_status st = check_images("fa_project_rmse", n, dim, x0, y, "y", eps);
    if (st != FA_OK)
        return st;
    if (!(max_rmse >= 0.0f) || !isfinite(max_rmse))
        return fa_set_error(FA_ERR_ARGUMENT, "fa_project_rmse: max_rmse=%g must be >= 0",
                            (double)max_rmse);
    if (n > 0 && out == NULL)
        return fa_set_error(FA_ERR_ARGUMENT, "fa_project_rmse: out must not be NULL");
    const fa_backend *be = fa_backend_cpu();
    float *alpha = calloc((size_t)n + 1, sizeof(float));
    if (alpha == NULL)
        return fa_set_error(FA_ERR_MEMORY, "fa_project_rmse: out of host memory");
    /* P(y + 0 * y): the step of the attack loop itself, so both agree by construction */
    st = be->step(n, dim, y, x0, y, alpha, 1.0f, eps, max_rmse, out);
    free(alpha);
    return st;
}

/* ---------------------------------------------------------------- RMSE matching */

/* A value that may move to its second candidate: priority p (how far toward the candidate the
 * scaled value already is), the extra squared distance that costs, and its position. */
typedef struct {
    float p;
    uint32_t tie; /* a hash of the position: ties (sign attacks) do not follow raster order */
    int64_t j;
    double extra;
} candidate;

static int by_priority(const void *a, const void *b) {
    const candidate *u = a, *v = b;
    if (u->p != v->p)
        return u->p > v->p ? -1 : 1;
    if (u->tie != v->tie)
        return u->tie < v->tie ? -1 : 1;
    return u->j < v->j ? -1 : (u->j > v->j);
}

/*
 * Integer values near c + delta (scaled, clipped perturbation) whose squared distance to c sums
 * to as close to R as the choice of floor / ceil per value allows: each value starts at the
 * integer nearer to c ("near") and the values already closest to the other one ("far") move
 * there first, until the sum crosses R (at_most: until one more would cross it). Every value
 * stays inside [lo_int, hi_int].
 */
static fa_status quantise(int64_t dim, const float *c, const double *delta, float eps, double R,
                          int at_most, candidate *cand, float *out) {
    double s = 0.0;
    int64_t m = 0;
    for (int64_t j = 0; j < dim; j++) {
        double lo_int = ceil((double)c[j] - (double)eps), hi_int = floor((double)c[j] + eps);
        lo_int = lo_int < 0.0 ? 0.0 : lo_int;
        hi_int = hi_int > 255.0 ? 255.0 : hi_int;
        const double y = (double)c[j] + delta[j];
        double a = floor(y), b = ceil(y);
        a = a < lo_int ? lo_int : (a > hi_int ? hi_int : a);
        b = b < lo_int ? lo_int : (b > hi_int ? hi_int : b);
        const double ea = (a - c[j]) * (a - c[j]), eb = (b - c[j]) * (b - c[j]);
        const double near = ea <= eb ? a : b, far = ea <= eb ? b : a;
        const double en = ea <= eb ? ea : eb, ef = ea <= eb ? eb : ea;
        out[j] = (float)near;
        s += en;
        if (far != near && ef > en) {
            cand[m].p = (float)(fabs(y - near) / fabs(far - near));
            cand[m].tie = (uint32_t)((fa_uniform_pm1(0x5eedULL, 0, j) + 1.0f) * 8388608.0f);
            cand[m].j = j;
            cand[m].extra = ef - en;
            m++;
        }
    }
    qsort(cand, (size_t)m, sizeof *cand, by_priority);
    int64_t k = 0;
    while (k < m && s + cand[k].extra <= R)
        s += cand[k++].extra;
    /* one more value may land closer to R than stopping short of it (not for a budget) */
    if (!at_most && k < m && fabs(s + cand[k].extra - R) < fabs(s - R))
        s += cand[k++].extra;
    for (int64_t q = 0; q < k; q++) {
        const int64_t j = cand[q].j;
        const double y = (double)c[j] + delta[j];
        double a = floor(y), b = ceil(y);
        double lo_int = ceil((double)c[j] - (double)eps), hi_int = floor((double)c[j] + eps);
        lo_int = lo_int < 0.0 ? 0.0 : lo_int;
        hi_int = hi_int > 255.0 ? 255.0 : hi_int;
        a = a < lo_int ? lo_int : (a > hi_int ? hi_int : a);
        b = b < lo_int ? lo_int : (b > hi_int ? hi_int : b);
        out[j] = (float)((double)out[j] == a ? b : a);
    }
    return FA_OK;
}

static double row_rmse(int64_t dim, const float *a, const float *b) {
    double s = 0.0;
    for (int64_t j = 0; j < dim; j++) {
        const double e = (double)a[j] - (double)b[j];
        s += e * e;
    }
    return sqrt(s / (double)dim);
}

fa_status fa_match_rmse(int64_t n, int64_t dim, const float *clean, const float *adv,
                        const float *target, float eps, int quantize, float tol, float *out,
                        float *scale, float *rmse, int32_t *reached) {
    fa_clear_error();
    fa_status st = check_images("fa_match_rmse", n, dim, clean, adv, "adv", eps);
    if (st != FA_OK)
        return st;
    if (n > 0 && (target == NULL || out == NULL || scale == NULL || rmse == NULL ||
                  reached == NULL))
        return fa_set_error(FA_ERR_ARGUMENT, "fa_match_rmse: target and the outputs must not "
                                             "be NULL");
    if (quantize < FA_MATCH_FLOAT || quantize > FA_MATCH_UINT8_AT_MOST)
        return fa_set_error(FA_ERR_ARGUMENT, "fa_match_rmse: quantize=%d must be 0, 1 or 2",
                            quantize);
    if (quantize && eps < 0.5f)
        return fa_set_error(FA_ERR_ARGUMENT,
                            "fa_match_rmse: eps=%g must be >= 0.5 for integer (uint8) output",
                            (double)eps);
    if (!(tol >= 0.0f) || !isfinite(tol))
        return fa_set_error(FA_ERR_ARGUMENT, "fa_match_rmse: tol=%g must be >= 0", (double)tol);
    for (int64_t i = 0; i < n; i++)
        if (!(target[i] >= 0.0f) || !isfinite(target[i]))
            return fa_set_error(FA_ERR_ARGUMENT, "fa_match_rmse: target[%lld]=%g must be >= 0",
                                (long long)i, (double)target[i]);
    float *t = malloc((size_t)dim * sizeof(float));
    double *delta = malloc((size_t)dim * sizeof(double));
    candidate *cand = quantize ? malloc((size_t)dim * sizeof(candidate)) : NULL;
    if (t == NULL || delta == NULL || (quantize && cand == NULL)) {
        st = fa_set_error(FA_ERR_MEMORY, "fa_match_rmse: out of host memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        const float *c = clean + i * dim, *a = adv + i * dim;
        float *o = out + i * dim;
        const double r = (double)target[i], R = r * r * (double)dim;
        /* already there (and inside the budget, integer when asked): nothing to do */
        int inside = 1;
        for (int64_t j = 0; j < dim && inside; j++) {
            const float e = a[j] - c[j];
            inside = e >= fa_lower(c[j], eps) && e <= fa_upper(c[j], eps) &&
                     (!quantize || a[j] == rintf(a[j]));
        }
        const double own = row_rmse(dim, a, c);
        if (inside && fabs(own - r) <= (double)tol &&
            (quantize != FA_MATCH_UINT8_AT_MOST || own <= r)) {
            memcpy(o, a, (size_t)dim * sizeof(float));
            scale[i] = 1.0f, rmse[i] = (float)own, reached[i] = 1;
            continue;
        }
        for (int64_t j = 0; j < dim; j++)
            t[j] = a[j] - c[j];
        double s;
        const double mu = fa_solve_scale(dim, t, c, eps, R, INFINITY, &s);
        for (int64_t j = 0; j < dim; j++) {
            int sat;
            delta[j] = fa_scaled(mu, t[j], fa_lower(c[j], eps), fa_upper(c[j], eps), &sat);
        }
        if (quantize) {
            quantise(dim, c, delta, eps, R, quantize == FA_MATCH_UINT8_AT_MOST, cand, o);
        } else {
            for (int64_t j = 0; j < dim; j++)
                o[j] = c[j] + (float)delta[j];
        }
        scale[i] = (float)mu;
        rmse[i] = (float)row_rmse(dim, o, c);
        reached[i] = fabs((double)rmse[i] - r) <= (double)tol &&
                     (quantize != FA_MATCH_UINT8_AT_MOST || rmse[i] <= target[i]);
    }
done:
    free(t), free(delta), free(cand);
    return st;
}
