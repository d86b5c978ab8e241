/*
 * calibrate.c -- per-image step sizes found by bracketing search on step_rmse (SPEC 4), and the
 * shortened last step of stop_rmse. Both solve f_i(s) = target for a non-decreasing
 * f_i(s) = RMSE(P(x + s * d) - ref) per image (ref = x for calibration, which measures the
 * first step from its start point, SPEC 4; ref = x0 for stop_rmse), on the whole batch at
 * once: every trial is one step_rmse call, never a model call. The search is fa_math.h's
 * fa_bracket, which the CUDA backend also runs on the device (its calibrate entry).
 */
#include <math.h>
#include <stdlib.h>

#include "fa_backend.h"

/*
 * Every active image runs fa_math.h's bracket search (fa_bracket_*) from its bracket b[i]; one
 * round asks every image still searching for one trial, with one step_rmse call for the batch.
 * On return b[i].lo is the answer.
 */
static fa_status solve(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *ref, const float *d, float eps,
                       float max_rmse, float target, const unsigned char *active, fa_bracket *b,
                       float *s, float *f, unsigned char *pending) {
    const double tol = (double)target * FA_REL_TOL;
    for (;;) {
        int64_t open = 0;
        for (int64_t i = 0; i < n; i++) {
            pending[i] = active[i] && fa_bracket_next(&b[i], &s[i]);
            if (!pending[i])
                s[i] = NAN; /* nothing to evaluate: step_rmse may skip the row */
            open += pending[i];
        }
        if (open == 0)
            return FA_OK;
        fa_status st = be->step_rmse(n, dim, x, x0, ref, d, s, eps, max_rmse, f);
        if (st != FA_OK)
            return st;
        for (int64_t i = 0; i < n; i++)
            if (pending[i])
                fa_bracket_update(&b[i], s[i], f[i], target, tol);
    }
}

/* scratch: brackets, s, f (float), active, pending (byte), one allocation */
typedef struct {
    fa_bracket *b;
    float *s, *f;
    unsigned char *active, *pending;
    void *block;
} scratch;

static fa_status scratch_new(int64_t n, scratch *w) {
    const size_t un = (size_t)n;
    w->block = malloc(un * (sizeof(fa_bracket) + 2 * sizeof(float) + 2) + 1);
    if (w->block == NULL)
        return fa_set_error(FA_ERR_MEMORY, "calibration: out of host memory");
    w->b = (fa_bracket *)w->block;
    w->s = (float *)(w->b + un);
    w->f = w->s + un;
    w->active = (unsigned char *)(w->f + un);
    w->pending = w->active + un;
    return FA_OK;
}

fa_status fa_calibrate(const fa_backend *be, int64_t n, int64_t dim, const float *x,
                       const float *x0, const float *d, float eps, float max_rmse, float r1,
                       float *alpha_out) {
    if (be->calibrate != NULL && max_rmse <= 0.0f) /* the whole search on the device */
        return be->calibrate(n, dim, x, x0, d, eps, r1, alpha_out);
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
        fa_bracket_init(&w.b[i], w.active[i] ? (double)r1 / rms : 0.0, -1.0);
        w.s[i] = (float)w.b[i].lo;
    }
    if ((st = be->step_rmse(n, dim, x, x0, x, d, w.s, eps, max_rmse, w.f)) != FA_OK)
        goto done;
    for (int64_t i = 0; i < n; i++)
        if (w.active[i] && fabs((double)w.f[i] - (double)r1) <= (double)r1 * FA_REL_TOL)
            w.active[i] = 0; /* no clipping: alpha0 is the answer */
    st = solve(be, n, dim, x, x0, x, d, eps, max_rmse, r1, w.active, w.b, w.s, w.f, w.pending);
    if (st == FA_OK)
        for (int64_t i = 0; i < n; i++)
            alpha_out[i] = (float)w.b[i].lo;
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
        fa_bracket_init(&w.b[i], 0.0, (double)alpha_io[i]);
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
                w.active[i] = 0, w.b[i].hi = 0.0;
        st = solve(be, n, dim, x, x0, x0, d, eps, max_rmse, target, w.active, w.b, w.s, w.f,
                   w.pending);
    }
    if (st == FA_OK)
        for (int64_t i = 0; i < n; i++)
            if (shorten[i])
                alpha_io[i] = (float)w.b[i].lo;
    free(shorten);
done:
    free(w.block);
    return st;
}
