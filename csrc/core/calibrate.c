/*
 * calibrate.c -- per-image step sizes found by bracketing search on step_rmse (SPEC 4), and the
 * shortened last step of stop_rmse. Both solve f_i(s) = target for a non-decreasing
 * f_i(s) = RMSE(P(x + s * d) - ref) per image (ref = x for calibration, which measures the
 * first step from its start point, SPEC 4; ref = x0 for stop_rmse), on the whole batch at once: every trial is one
 * step_rmse call, never a model call. Deterministic: no clock, a fixed iteration budget.
 */
#include <math.h>
#include <stdlib.h>

#include "fa_backend.h"

#define FA_REL_TOL 1e-4     /* |f(s) - target| <= target * FA_REL_TOL ends the search      */
#define FA_MAX_DOUBLING 64  /* bracket growth (f flat: the target cannot be reached)          */
#define FA_MAX_BISECT 60

/*
 * Solves per image on [lo[i], hi[i]] with f(lo) <= target known. hi[i] < 0 means "no upper
 * bracket yet": it doubles lo until f reaches target or stops growing. Images with
 * active[i] == 0 are left alone. On return s[i] is the solution (the bracket's lower end when
 * the tolerance was not met: it never passes the target by more than the tolerance).
 */
static fa_status solve(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *ref, const float *d, float eps,
                       float max_rmse, float target,
                       const unsigned char *active, double *lo, double *hi, float *s,
                       float *f, float *fprev) {
    const double tol = (double)target * FA_REL_TOL;
    fa_status st;
    /* grow the bracket; an image whose f stops growing has reached its largest RMSE */
    for (int64_t i = 0; i < n; i++)
        fprev[i] = -1.0f;
    for (int it = 0; it < FA_MAX_DOUBLING; it++) {
        int64_t open = 0;
        for (int64_t i = 0; i < n; i++) {
            s[i] = (float)lo[i];
            if (active[i] && hi[i] < 0.0) {
                s[i] = (float)(2.0 * lo[i]);
                open++;
            }
        }
        if (open == 0)
            break;
        if ((st = be->step_rmse(n, dim, x, x0, ref, d, s, eps, max_rmse, f)) != FA_OK)
            return st;
        for (int64_t i = 0; i < n; i++) {
            if (!active[i] || hi[i] >= 0.0)
                continue;
            if ((double)f[i] >= (double)target - tol) {
                hi[i] = 2.0 * lo[i];
            } else if (!(f[i] > fprev[i])) {
                hi[i] = lo[i]; /* flat (or NaN): keep lo */
            } else {
                fprev[i] = f[i];
                lo[i] = 2.0 * lo[i];
            }
        }
    }
    /* images whose f never reached the target: the largest RMSE is reached at lo already */
    for (int64_t i = 0; i < n; i++)
        if (active[i] && hi[i] < 0.0)
            hi[i] = lo[i];
    /* bisection */
    for (int it = 0; it < FA_MAX_BISECT; it++) {
        int64_t open = 0;
        for (int64_t i = 0; i < n; i++) {
            s[i] = (float)lo[i];
            if (active[i] && hi[i] > lo[i] && (float)hi[i] != (float)lo[i]) {
                s[i] = (float)(0.5 * (lo[i] + hi[i]));
                open++;
            }
        }
        if (open == 0)
            break;
        if ((st = be->step_rmse(n, dim, x, x0, ref, d, s, eps, max_rmse, f)) != FA_OK)
            return st;
        for (int64_t i = 0; i < n; i++) {
            if (!active[i] || !(hi[i] > lo[i]) || (float)hi[i] == (float)lo[i])
                continue;
            const double fi = (double)f[i];
            if (fabs(fi - (double)target) <= tol) {
                lo[i] = hi[i] = (double)s[i]; /* done */
            } else if (fi < (double)target) {
                lo[i] = (double)s[i];
            } else {
                hi[i] = (double)s[i];
            }
        }
    }
    for (int64_t i = 0; i < n; i++)
        s[i] = (float)lo[i];
    return FA_OK;
}

/* scratch: lo, hi (double), s, f, fprev (float), active (byte), one allocation */
typedef struct {
    double *lo, *hi;
    float *s, *f, *fprev;
    unsigned char *active;
    void *block;
} scratch;

static fa_status scratch_new(int64_t n, scratch *w) {
    const size_t un = (size_t)n;
    w->block = malloc(un * (2 * sizeof(double) + 3 * sizeof(float) + 1) + 1);
    if (w->block == NULL)
        return fa_set_error(FA_ERR_MEMORY, "calibration: out of host memory");
    w->lo = (double *)w->block;
    w->hi = w->lo + un;
    w->s = (float *)(w->hi + un);
    w->f = w->s + un;
    w->fprev = w->f + un;
    w->active = (unsigned char *)(w->fprev + un);
    return FA_OK;
}

fa_status fa_calibrate(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *d, float eps, float max_rmse, float r1,
                       float *alpha_out) {
    scratch w = {0};
    fa_status st = scratch_new(n, &w);
    if (st != FA_OK)
        return st;
    /* RMSE(alpha * d) without projection: the projection (onto a convex set holding x) only
     * shortens moves, so alpha0 = r1 / rms(d) gives f(alpha0) <= r1 -- a lower bracket, exact
     * when nothing clips */
    if ((st = be->rmse(n, dim, d, NULL, w.f)) != FA_OK)
        goto done;
    for (int64_t i = 0; i < n; i++) {
        const double rms = (double)w.f[i];
        w.active[i] = rms > 0.0 && isfinite(rms);
        w.lo[i] = w.active[i] ? (double)r1 / rms : 0.0;
        w.hi[i] = -1.0;
        w.s[i] = (float)w.lo[i];
    }
    if ((st = be->step_rmse(n, dim, x, x0, x, d, w.s, eps, max_rmse, w.f)) != FA_OK)
        goto done;
    for (int64_t i = 0; i < n; i++)
        if (w.active[i] && fabs((double)w.f[i] - (double)r1) <= (double)r1 * FA_REL_TOL)
            w.active[i] = 0; /* no clipping: alpha0 is the answer */
    st = solve(be, n, dim, x, x0, x, d, eps, max_rmse, r1, w.active, w.lo, w.hi, w.s, w.f,
               w.fprev);
    if (st == FA_OK)
        for (int64_t i = 0; i < n; i++)
            alpha_out[i] = (float)w.lo[i];
done:
    free(w.block);
    return st;
}

fa_status fa_shorten(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                     const float *x0, const float *d, float eps, float max_rmse, float target,
                     float *alpha_io) {
    scratch w = {0};
    fa_status st = scratch_new(n, &w);
    if (st != FA_OK)
        return st;
    if ((st = be->step_rmse(n, dim, x, x0, x0, d, alpha_io, eps, max_rmse, w.f)) != FA_OK)
        goto done;
    int64_t any = 0;
    for (int64_t i = 0; i < n; i++) {
        w.active[i] = w.f[i] > target; /* a NaN image is left as it is (the loop drops it) */
        w.lo[i] = 0.0;
        w.hi[i] = (double)alpha_io[i];
        w.s[i] = 0.0f;
        any += w.active[i];
    }
    if (any == 0)
        goto done;
    unsigned char *shorten = malloc((size_t)n + 1);
    if (shorten == NULL) {
        st = fa_set_error(FA_ERR_MEMORY, "stop_rmse: out of host memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++)
        shorten[i] = w.active[i];
    /* f(0) = RMSE(x) may already pass the target (after the NAGD jump): then the step is 0 */
    if ((st = be->step_rmse(n, dim, x, x0, x0, d, w.s, eps, max_rmse, w.f)) == FA_OK) {
        for (int64_t i = 0; i < n; i++)
            if (w.active[i] && !(w.f[i] < target))
                w.active[i] = 0, w.hi[i] = 0.0;
        st = solve(be, n, dim, x, x0, x0, d, eps, max_rmse, target, w.active, w.lo, w.hi, w.s,
                   w.f, w.fprev);
    }
    if (st == FA_OK)
        for (int64_t i = 0; i < n; i++)
            if (shorten[i])
                alpha_io[i] = (float)w.lo[i];
    free(shorten);
done:
    free(w.block);
    return st;
}
