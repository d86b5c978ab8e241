/*
 * attack.c -- the attack loop of SPEC 2 for a whole batch: per-image state, step size,
 * stopping and best-iterate tracking, on either backend (fa_backend.h).
 *
 * Every image runs the loop on its own; the batch only shares the oracle calls. Images that
 * stop leave the batch at once: their result is written out and the rows behind them move up
 * (compact), so later oracle calls see only images still running.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_backend.h"

/* backend buffers, n * dim floats each; NULL when the optimizer does not need one */
enum { B_X0, B_X, B_G, B_D, B_M, B_V, B_XT, B_BEST, B_ACC, B_NB, B_COUNT };

typedef struct {
    const fa_config *cfg;
    const fa_backend *be;
    const fa_oracle *oracle;
    const float *x0_host;
    fa_result *out;
    int64_t dim, n;       /* n: images still running (rows of every buffer)              */
    float *buf[B_COUNT];
    /* host, one entry per running row */
    int64_t *orig;        /* the image's position in the call                             */
    int64_t *index;       /* index_offset + orig, for per-image randomness                */
    int64_t *labels, *pred, *src;
    int64_t *from;        /* the buffer a finished row's result comes from (B_X, B_BEST)   */
    int64_t *fin;         /* the image position of a finished row (orig[r] is then -1)      */
    int64_t *rows;        /* scratch: row numbers for copy_rows / fetch_rows               */
    float **dst;          /* scratch: destinations of fetch_rows                           */
    float *loss, *best_loss, *alpha, *step, *rm, *asum, *gnorm, *pcoef, *coef;
    int need_loss;        /* a rule looks at the per-step loss (best iterate, loss stop)      */
    void *host_block;
} run_state;

static int variance_tuned(int opt) { return opt == FA_OPT_VMIFGSM || opt == FA_OPT_VNIFGSM; }

static int needs_v(int opt) {
    return variance_tuned(opt) || opt == FA_OPT_ADAM || opt == FA_OPT_LADAM ||
           opt == FA_OPT_ADABELIEF ||
           opt == FA_OPT_MSVAG || opt == FA_OPT_RMSPROP || opt == FA_OPT_ADAMW ||
           opt == FA_OPT_YOGI;
}

static int needs_m(int opt) {
    return opt != FA_OPT_GD && opt != FA_OPT_FGSM && opt != FA_OPT_PGD && opt != FA_OPT_RMSPROP;
}

static int lookahead(int opt) {
    return opt == FA_OPT_NAGD || opt == FA_OPT_NIFGSM || opt == FA_OPT_VNIFGSM;
}

static void state_free(run_state *s) {
    for (int b = 0; b < B_COUNT; b++)
        s->be->free(s->buf[b]);
    free(s->host_block);
}

static fa_status state_new(run_state *s) {
    const size_t rows = (size_t)s->n, bytes = rows * (size_t)s->dim * sizeof(float);
    const int opt = s->cfg->optimizer;
    fa_status st;
    for (int b = 0; b < B_COUNT; b++) {
        const int want = (b == B_M && !needs_m(opt)) || (b == B_V && !needs_v(opt)) ||
                                 (b == B_XT && !lookahead(opt)) ||
                                 ((b == B_ACC || b == B_NB) && !variance_tuned(opt)) ||
                                 (b == B_BEST && s->cfg->returns != FA_RETURNS_BEST)
                             ? 0
                             : 1;
        if (want && (st = s->be->alloc((void **)&s->buf[b], bytes)) != FA_OK)
            return st;
    }
    s->host_block = malloc(rows * (8 * sizeof(int64_t) + sizeof(float *) + 9 * sizeof(float)) + 1);
    if (s->host_block == NULL)
        return fa_set_error(FA_ERR_MEMORY, "fa_attack: out of host memory");
    int64_t *p = (int64_t *)s->host_block;
    s->orig = p, s->index = p + rows, s->labels = p + 2 * rows, s->pred = p + 3 * rows;
    s->src = p + 4 * rows, s->from = p + 5 * rows, s->rows = p + 6 * rows, s->fin = p + 7 * rows;
    s->dst = (float **)(p + 8 * rows);
    float *f = (float *)(s->dst + rows);
    s->loss = f, s->best_loss = f + rows, s->alpha = f + 2 * rows, s->step = f + 3 * rows;
    s->rm = f + 4 * rows, s->asum = f + 5 * rows, s->gnorm = f + 6 * rows;
    s->pcoef = f + 7 * rows, s->coef = f + 8 * rows;
    return FA_OK;
}

/* The image of row r leaves the batch with `status`; its result comes from backend buffer
 * `from` (B_X or B_BEST: fetched with the other finished rows by compact()) or, for B_X0, from
 * the caller's clean image. */
static fa_status finish(run_state *s, int64_t r, int status, int from, float loss, int k) {
    const int64_t i = s->orig[r];
    fa_status st = FA_OK;
    if (from == B_X0)
        memcpy(s->out->adv + i * s->dim, s->x0_host + i * s->dim, (size_t)s->dim * sizeof(float));
    s->from[r] = from, s->fin[r] = i;
    s->out->status[i] = status;
    s->out->loss[i] = loss;
    s->out->iterations[i] = k;
    s->out->alpha[i] = status == FA_IMAGE_SKIPPED ? 0.0f : s->alpha[r];
    s->orig[r] = -1; /* marks the row for compaction */
    return st;
}

/* The results finish() deferred: every finished row of one buffer in one backend call. */
static fa_status fetch_finished(run_state *s) {
    const int buffers[2] = {B_X, B_BEST};
    for (int q = 0; q < 2; q++) {
        const int b = buffers[q];
        int64_t count = 0;
        for (int64_t r = 0; r < s->n; r++)
            if (s->orig[r] < 0 && s->from[r] == b) {
                s->rows[count] = r;
                s->dst[count++] = s->out->adv + s->fin[r] * s->dim;
            }
        if (count == 0)
            continue;
        fa_status st = s->be->fetch_rows(s->buf[b], s->dim, count, s->rows, s->dst);
        if (st != FA_OK)
            return st;
    }
    return FA_OK;
}

/* Drops the rows finish() marked (after fetching their results): every buffer and host array
 * moves up. */
static fa_status compact(run_state *s) {
    fa_status st = fetch_finished(s);
    if (st != FA_OK)
        return st;
    int64_t n_new = 0;
    for (int64_t r = 0; r < s->n; r++)
        if (s->orig[r] >= 0)
            s->src[n_new++] = r;
    if (n_new == s->n)
        return FA_OK;
    for (int b = 0; b < B_COUNT; b++)
        if (s->buf[b] && (st = s->be->compact(s->buf[b], s->dim, n_new, s->src)) != FA_OK)
            return st;
    for (int64_t j = 0; j < n_new; j++) {
        const int64_t r = s->src[j];
        s->orig[j] = s->orig[r], s->index[j] = s->index[r], s->labels[j] = s->labels[r];
        s->best_loss[j] = s->best_loss[r], s->alpha[j] = s->alpha[r], s->asum[j] = s->asum[r];
    }
    s->n = n_new;
    return FA_OK;
}

/* One oracle call at x for the running rows. want_loss 0: a gradient-only call (loss and pred
 * are not asked for; s->loss is not touched). */
static fa_status ask(run_state *s, const float *x, int want_grad, int want_loss) {
    const fa_oracle *o = s->oracle;
    fa_status st = o->grad(o->ctx, s->n, s->index, s->labels, x, want_grad,
                           want_loss ? s->loss : NULL, want_loss ? s->pred : NULL,
                           want_grad ? s->buf[B_G] : NULL);
    if (st != FA_OK && fa_last_error()[0] == '\0')
        fa_set_error(st, "the gradient oracle failed (%s)", fa_status_name(st));
    if (st == FA_OK && want_grad)
        st = s->be->abs_sum(s->n, s->dim, s->buf[B_G], s->asum);
    return st;
}

/* One pass of SPEC 2's "L = CE(x_k) ... break" part for every running row. have_loss 0: no
 * loss was computed at x_k (no rule needs it): only the step cap and stop_rmse apply. */
static fa_status check_rows(run_state *s, int k, int have_grad, int have_loss) {
    const fa_config *c = s->cfg;
    fa_status st;
    if (c->stop_rmse > 0.0f &&
        (st = s->be->rmse(s->n, s->dim, s->buf[B_X], s->buf[B_X0], s->rm)) != FA_OK)
        return st;
    int64_t improved = 0; /* rows whose best iterate is x_k now (s->rows) */
    for (int64_t r = 0; r < s->n; r++) {
        const int64_t i = s->orig[r];
        const float L = have_loss ? s->loss[r] : 0.0f;
        const int best = c->returns == FA_RETURNS_BEST;
        st = FA_OK;
        /* a failed image first: NaN logits must not look like a misclassified one */
        if (!isfinite(L) || (have_grad && !isfinite(s->asum[r])))
            st = finish(s, r, FA_IMAGE_NAN, B_X0, NAN, k);
        else if (k == 0 && c->skip_misclassified && s->out->clean_pred[i] != s->labels[r])
            st = finish(s, r, FA_IMAGE_SKIPPED, B_X0, NAN, 0);
        else if (!have_loss) {
            if (c->stop_rmse > 0.0f && s->rm[r] >= c->stop_rmse * (1.0f - 1e-3f))
                st = finish(s, r, FA_IMAGE_STOP_RMSE, B_X, NAN, k);
        } else {
            if (best && L > s->best_loss[r]) {
                s->best_loss[r] = L;
                s->rows[improved++] = r;
            }
            if (k >= c->max_iter)
                st = best ? finish(s, r, FA_IMAGE_MAX_ITER, B_BEST, s->best_loss[r], k)
                          : finish(s, r, FA_IMAGE_MAX_ITER, B_X, L, k);
            else if (L >= c->stop_loss)
                st = finish(s, r, FA_IMAGE_STOP_LOSS, B_X, L, k);
            else if (c->stop_rmse > 0.0f && s->rm[r] >= c->stop_rmse * (1.0f - 1e-3f))
                st = finish(s, r, FA_IMAGE_STOP_RMSE, B_X, L, k);
        }
        if (st != FA_OK)
            return st;
    }
    /* one backend call for every new best iterate, before compact() fetches results */
    if (improved > 0 &&
        (st = s->be->copy_rows(s->buf[B_BEST], s->buf[B_X], s->dim, improved, s->rows)) != FA_OK)
        return st;
    return compact(s);
}

/* After the look-ahead gradient: rows whose gradient is not finite fail. */
static fa_status drop_nan_grads(run_state *s, int k) {
    fa_status st;
    for (int64_t r = 0; r < s->n; r++)
        if (!isfinite(s->asum[r]) && (st = finish(s, r, FA_IMAGE_NAN, B_X0, NAN, k)) != FA_OK)
            return st;
    return compact(s);
}

/* d_k for the running rows from the gradient at `at` (SPEC 2 and 3). */
static fa_status direction(run_state *s, int k, const float *at) {
    const fa_config *c = s->cfg;
    const float *gnorm = NULL, *pcoef = NULL;
    fa_status st;
    if (c->optimizer == FA_OPT_MIFGSM || c->optimizer == FA_OPT_NIFGSM ||
        variance_tuned(c->optimizer)) {
        /* g / mean |g| over the image's values, as the reference code and every peer (SPEC 3) */
        for (int64_t r = 0; r < s->n; r++)
            s->gnorm[r] = s->asum[r] > 0.0f ? s->asum[r] / (float)s->dim : 1.0f;
        gnorm = s->gnorm;
    }
    if (c->rmse_weight > 0.0f && k >= 1) {
        if ((st = s->be->rmse(s->n, s->dim, at, s->buf[B_X0], s->pcoef)) != FA_OK)
            return st;
        for (int64_t r = 0; r < s->n; r++) {
            const float rm = s->pcoef[r];
            s->pcoef[r] = rm > 0.0f ? c->rmse_weight / ((float)s->dim * rm) : 0.0f;
        }
        pcoef = s->pcoef;
    }
    fa_config as_mi; /* VMI/VNI: MI's rule on g + v (variance()); B_V is theirs, not Adam's */
    if (variance_tuned(c->optimizer)) {
        as_mi = *c;
        as_mi.optimizer = FA_OPT_MIFGSM;
        c = &as_mi;
    }
    return s->be->direction(c, k, s->n, s->dim, at, s->buf[B_X0], s->buf[B_G], gnorm, pcoef,
                            s->buf[B_M], s->buf[B_V], s->buf[B_D]);
}

/* All running rows' coef = value (the per-row scale of a backend step). */
static const float *fill(run_state *s, float value) {
    for (int64_t r = 0; r < s->n; r++)
        s->coef[r] = value;
    return s->coef;
}

/* Variance tuning (VMI/VNI-FGSM, fa_config): with g_k in B_G and v_{k-1} in B_V, samples the
 * vmi_neighbours gradients around x_k (B_X) and leaves B_G = g_k + v_{k-1} (with its abs sum,
 * the direction's input) and B_V = v_k = mean_j g(x_k + u_j) - g_k. The neighbours' gradient
 * calls go through the same oracle (transforms and counters apply). */
static fa_status variance(run_state *s, int k) {
    const fa_config *c = s->cfg;
    const fa_backend *be = s->be;
    const int nb = c->vmi_neighbours;
    const float inf = INFINITY;
    fa_status st;
    float *swap = s->buf[B_D]; /* g_k moves to B_D (free until the direction is computed) */
    s->buf[B_D] = s->buf[B_G], s->buf[B_G] = swap;
    /* B_ACC = -g_k, then += g_j / N */
    if ((st = be->step(s->n, s->dim, s->buf[B_D], s->buf[B_X0], s->buf[B_D], fill(s, -2.0f),
                       1.0f, inf, 0.0f, s->buf[B_ACC])) != FA_OK)
        return st;
    for (int j = 0; j < nb; j++) {
        const uint64_t seed =
            c->seed + 0x9E3779B97F4A7C15ULL * (1u + (uint64_t)k * (uint64_t)nb + (uint64_t)j);
        if ((st = be->random_start(s->n, s->dim, s->buf[B_X], c->vmi_beta * c->eps, seed,
                                   s->index, s->buf[B_NB])) != FA_OK ||
            (st = ask(s, s->buf[B_NB], 1, 0)) != FA_OK || (st = drop_nan_grads(s, k)) != FA_OK)
            return st;
        if (s->n == 0)
            return FA_OK;
        if ((st = be->step(s->n, s->dim, s->buf[B_ACC], s->buf[B_X0], s->buf[B_G],
                           fill(s, 1.0f / (float)nb), 1.0f, inf, 0.0f, s->buf[B_ACC])) != FA_OK)
            return st;
    }
    /* B_G = g_k + v_{k-1} (v_{-1} = 0: B_V starts at zero like every state), B_V = v_k */
    if ((st = be->step(s->n, s->dim, s->buf[B_D], s->buf[B_X0], s->buf[B_V], fill(s, 1.0f),
                       1.0f, inf, 0.0f, s->buf[B_G])) != FA_OK)
        return st;
    swap = s->buf[B_V];
    s->buf[B_V] = s->buf[B_ACC], s->buf[B_ACC] = swap;
    return be->abs_sum(s->n, s->dim, s->buf[B_G], s->asum);
}

static fa_status loop(run_state *s) {
    const fa_config *c = s->cfg;
    const fa_backend *be = s->be;
    const int ahead = lookahead(c->optimizer);
    const int jump = c->optimizer == FA_OPT_NAGD && c->nesterov == FA_NESTEROV_AUTHORS;
    /* NI-FGSM's look-ahead point only serves the gradient: unprojected, as in the reference
     * code; NAGD's (authors') jump is an iterate: projected like every other */
    const int ni = c->optimizer == FA_OPT_NIFGSM || c->optimizer == FA_OPT_VNIFGSM;
    const float ahead_eps = ni ? INFINITY : c->eps;
    const float ahead_budget = ni ? 0.0f : c->max_rmse;
    fa_status st;
    for (int k = 0; s->n > 0; k++) {
        if (s->oracle->should_stop && s->oracle->should_stop(s->oracle->ctx))
            return fa_set_error(FA_ERR_INTERRUPTED, "the attack was interrupted");
        /* the loss at x_k: always at x0 (skips, clean loss) and at the cap (the reported loss);
         * in between only when a rule looks at it */
        const int want_loss = k == 0 || k >= c->max_iter || s->need_loss;
        const int want_grad = k < c->max_iter && !(ahead && k >= 1);
        if ((want_loss || want_grad) && (st = ask(s, s->buf[B_X], want_grad, want_loss)) != FA_OK)
            return st;
        if (k == 0 && !c->random_start)
            for (int64_t r = 0; r < s->n; r++) {
                s->out->clean_loss[s->orig[r]] = s->loss[r];
                s->out->clean_pred[s->orig[r]] = s->pred[r];
            }
        if ((st = check_rows(s, k, want_grad, want_loss)) != FA_OK)
            return st;
        if (s->n == 0)
            break;
        const float *at = s->buf[B_X];
        if (ahead && k >= 1) {
            /* x~ = x + mu * alpha * m (projected for NAGD); the gradient is taken there */
            if ((st = be->step(s->n, s->dim, s->buf[B_X], s->buf[B_X0], s->buf[B_M], s->alpha,
                               c->momentum, ahead_eps, ahead_budget, s->buf[B_XT])) != FA_OK ||
                (st = ask(s, s->buf[B_XT], 1, 0)) != FA_OK || (st = drop_nan_grads(s, k)) != FA_OK)
                return st;
            if (s->n == 0)
                break;
            at = s->buf[B_XT];
        }
        if (variance_tuned(c->optimizer)) {
            if ((st = variance(s, k)) != FA_OK)
                return st;
            if (s->n == 0)
                break;
        }
        if ((st = direction(s, k, at)) != FA_OK)
            return st;
        if (k == 0) {
            if (c->alpha > 0.0f)
                for (int64_t r = 0; r < s->n; r++)
                    s->alpha[r] = c->alpha;
            else if ((st = fa_calibrate(be, s->n, s->dim, s->buf[B_X], s->buf[B_X0],
                                        s->buf[B_D], c->eps, c->max_rmse, c->first_step_rmse,
                                        s->alpha)) != FA_OK)
                return st;
        }
        const float *base = jump && k >= 1 ? s->buf[B_XT] : s->buf[B_X];
        memcpy(s->step, s->alpha, (size_t)s->n * sizeof(float));
        if (c->stop_rmse > 0.0f &&
            (st = fa_shorten(be, s->n, s->dim, base, s->buf[B_X0], s->buf[B_D], c->eps,
                             c->max_rmse, c->stop_rmse, s->step)) != FA_OK)
            return st;
        if ((st = be->step(s->n, s->dim, base, s->buf[B_X0], s->buf[B_D], s->step, 1.0f, c->eps,
                           c->max_rmse, s->buf[B_X])) != FA_OK)
            return st;
    }
    return FA_OK;
}

static fa_status check_args(const fa_config *cfg, int device, int64_t n, int64_t dim,
                            const float *x0, const int64_t *labels, const fa_oracle *oracle,
                            const fa_result *out) {
    fa_status st = fa_config_check(cfg);
    if (st != FA_OK)
        return st;
    if (device != FA_DEVICE_CPU && device != FA_DEVICE_CUDA)
        return fa_set_error(FA_ERR_ARGUMENT, "device=%d must be 0 (cpu) or 1 (cuda)", device);
    if (n < 0 || dim <= 0 || (n > 0 && dim > INT64_MAX / n / (int64_t)sizeof(float)))
        return fa_set_error(FA_ERR_ARGUMENT, "n=%lld, dim=%lld: need n >= 0 and dim > 0",
                            (long long)n, (long long)dim);
    if (oracle == NULL || oracle->grad == NULL)
        return fa_set_error(FA_ERR_ARGUMENT, "oracle (and oracle->grad) must not be NULL");
    if (out == NULL || (n > 0 && (!out->adv || !out->loss || !out->clean_loss ||
                                  !out->clean_pred || !out->iterations || !out->alpha ||
                                  !out->status)))
        return fa_set_error(FA_ERR_ARGUMENT, "out and every array in it must not be NULL");
    if (n > 0 && (x0 == NULL || labels == NULL))
        return fa_set_error(FA_ERR_ARGUMENT, "x0 and labels must not be NULL");
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0)
            return fa_set_error(FA_ERR_ARGUMENT, "labels[%lld]=%lld must be >= 0", (long long)i,
                                (long long)labels[i]);
        for (int64_t j = i * dim; j < (i + 1) * dim; j++)
            if (!(x0[j] >= 0.0f && x0[j] <= 255.0f))
                return fa_set_error(FA_ERR_ARGUMENT,
                                    "x0[%lld] (image %lld) = %g: pixels must be in [0, 255]",
                                    (long long)j, (long long)i, (double)x0[j]);
    }
    return FA_OK;
}

fa_status fa_attack(const fa_config *cfg, int device, int64_t n, int64_t dim, const float *x0,
                    const int64_t *labels, const fa_oracle *oracle, fa_result *out) {
    fa_clear_error();
    fa_status st = check_args(cfg, device, n, dim, x0, labels, oracle, out);
    if (st != FA_OK || n == 0)
        return st;
    run_state s;
    memset(&s, 0, sizeof s);
    s.cfg = cfg, s.oracle = oracle, s.x0_host = x0, s.out = out, s.dim = dim, s.n = n;
    /* the per-step loss serves the best iterate, the loss stop and the loss reported for an
     * image that stops on RMSE; without them gradient calls skip it (SPEC 2) */
    s.need_loss = cfg->returns == FA_RETURNS_BEST || isfinite(cfg->stop_loss) ||
                  cfg->stop_rmse > 0.0f;
    if (device == FA_DEVICE_CUDA) {
        s.be = fa_backend_cuda();
        if (s.be == NULL || !fa_cuda_available())
            return fa_set_error(FA_ERR_NO_CUDA,
                                s.be ? "device=cuda, but no CUDA device is present"
                                     : "device=cuda, but fairattack was built without CUDA");
    } else {
        s.be = fa_backend_cpu();
    }
    const size_t bytes = (size_t)(n * dim) * sizeof(float);
    if ((st = state_new(&s)) != FA_OK ||
        (st = s.be->copy(s.buf[B_X0], x0, bytes, FA_COPY_H2D)) != FA_OK)
        goto done;
    for (int64_t i = 0; i < n; i++) {
        s.orig[i] = i, s.index[i] = cfg->index_offset + i, s.labels[i] = labels[i];
        s.best_loss[i] = -INFINITY, s.alpha[i] = 0.0f;
        out->status[i] = FA_IMAGE_RUNNING, out->iterations[i] = 0, out->alpha[i] = 0.0f;
        out->loss[i] = NAN, out->clean_loss[i] = NAN, out->clean_pred[i] = -1;
    }
    if (cfg->random_start) {
        /* the clean loss and prediction come from x0 itself, the loop starts elsewhere */
        if ((st = ask(&s, s.buf[B_X0], 0, 1)) != FA_OK)
            goto done;
        for (int64_t i = 0; i < n && st == FA_OK; i++) {
            out->clean_loss[i] = s.loss[i], out->clean_pred[i] = s.pred[i];
            if (!isfinite(s.loss[i])) /* never asked again */
                st = finish(&s, i, FA_IMAGE_NAN, B_X0, NAN, 0);
            else if (cfg->skip_misclassified && s.pred[i] != labels[i])
                st = finish(&s, i, FA_IMAGE_SKIPPED, B_X0, NAN, 0);
        }
        if (st == FA_OK && (st = compact(&s)) == FA_OK && s.n > 0)
            st = s.be->random_start(s.n, dim, s.buf[B_X0], cfg->eps, cfg->seed, s.index,
                                    s.buf[B_X]);
        if (st == FA_OK && s.n > 0 && cfg->max_rmse > 0.0f) {
            /* the start point inside the joint budget: P(x_s + 0 * x_s) */
            memset(s.alpha, 0, (size_t)s.n * sizeof(float));
            st = s.be->step(s.n, dim, s.buf[B_X], s.buf[B_X0], s.buf[B_X], s.alpha, 1.0f,
                            cfg->eps, cfg->max_rmse, s.buf[B_X]);
        }
    } else {
        st = s.be->copy(s.buf[B_X], s.buf[B_X0], bytes, FA_COPY_D2D);
    }
    if (st == FA_OK)
        st = loop(&s);
done:
    state_free(&s);
    return st;
}
