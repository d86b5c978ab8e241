/*
 * test_core.c -- the fairattack C core tested alone: no Python, no LibTorch, no test framework.
 *
 * The "model" is a linear softmax classifier, logits = W * (x / 255) + b, whose cross-entropy
 * and exact gradient are computed in double, image by image, so that nothing it returns can
 * depend on the batch an image was sent in. The oracle around it also polices the core: it
 * counts how often each image is asked about and flags any point it is given that lies outside
 * the pixel box or the eps-ball of that image.
 *
 * Built and run by csrc/tests/Makefile (also under ASan + UBSan). Prints every failed check as
 * file:line, then "test_core: N checks, F failed"; the exit status is nonzero on any failure.
 *
 * Naming: ft_ ("fairattack test") for everything here, so nothing clashes with the library's fa_.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fa_math.h" /* internal: the random start's draw, for test_calibration_random_start */
#include "fairattack.h"

/* ================================================================ the assert macro */

static int ft_checks, ft_failed;

#define FT_CHECK(cond, ...)                                                                    \
    do {                                                                                       \
        ft_checks++;                                                                           \
        if (!(cond)) {                                                                         \
            ft_failed++;                                                                       \
            fprintf(stderr, "%s:%d: FAILED %s -- ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

/* ================================================================ sizes and random numbers */

enum {
    FT_H = 6, FT_W = 5, FT_C = 3,
    FT_DIM = FT_H * FT_W * FT_C, /* values per image                */
    FT_K = 4,                    /* classes                         */
    FT_N = 8                     /* images in the test data set     */
};

/* xorshift32: the same numbers on every platform (rand() is not). */
static uint32_t ft_next(uint32_t *s) {
    *s ^= *s << 13, *s ^= *s >> 17, *s ^= *s << 5;
    return *s;
}

/* ================================================================ the model */

typedef struct {
    float w[FT_K][FT_DIM], b[FT_K];
} ft_model;

static void ft_model_init(ft_model *m, uint32_t seed) {
    for (int k = 0; k < FT_K; k++) {
        for (int j = 0; j < FT_DIM; j++)
            m->w[k][j] = (float)((int)(ft_next(&seed) % 2001) - 1000) * 0.003f;
        m->b[k] = (float)((int)(ft_next(&seed) % 201) - 100) * 0.001f;
    }
}

/* CE = -log p_y of one image, its argmax, and (grad != NULL) d CE / d x, all in double. */
static float ft_ce(const ft_model *m, const float *x, int64_t y, int64_t *pred, float *grad) {
    double z[FT_K], zmax = -INFINITY, sum = 0.0;
    for (int k = 0; k < FT_K; k++) {
        z[k] = m->b[k];
        for (int j = 0; j < FT_DIM; j++)
            z[k] += (double)m->w[k][j] * (double)x[j] / 255.0;
        if (z[k] > zmax)
            zmax = z[k], *pred = k;
    }
    for (int k = 0; k < FT_K; k++)
        sum += exp(z[k] - zmax);
    if (grad)
        for (int j = 0; j < FT_DIM; j++) {
            double g = 0.0;
            for (int k = 0; k < FT_K; k++)
                g += (exp(z[k] - zmax) / sum - (k == y)) * (double)m->w[k][j] / 255.0;
            grad[j] = (float)g;
        }
    return (float)(log(sum) - (z[y] - zmax));
}

/* ================================================================ the data set */

static ft_model ft_net;
static float ft_x0[FT_N * FT_DIM];
static int64_t ft_y[FT_N];       /* the model's own predictions: every image is attacked */
static int64_t ft_y_wrong[FT_N]; /* the same, but image 2 mislabelled (it gets skipped)   */

/* Random pixels, some runs saturated at 0 and 255 so that the box projection matters. */
static void ft_make_data(uint32_t seed) {
    ft_model_init(&ft_net, seed);
    for (int j = 0; j < FT_N * FT_DIM; j++)
        ft_x0[j] = (float)(ft_next(&seed) % 256);
    for (int j = 0; j < 9; j++)
        ft_x0[j] = 255.0f, ft_x0[FT_DIM + j] = 0.0f, ft_x0[3 * FT_DIM + 20 + j] = 255.0f;
    for (int i = 0; i < FT_N; i++) {
        ft_ce(&ft_net, ft_x0 + i * FT_DIM, 0, &ft_y[i], NULL);
        ft_y_wrong[i] = i == 2 ? (ft_y[i] + 1) % FT_K : ft_y[i];
    }
}

/* ================================================================ the oracle */

typedef struct {
    const int64_t *labels; /* the labels the run was given, by image index              */
    float eps;             /* for the ball check                                        */
    int calls;             /* grad() calls so far                                       */
    int seen[FT_N];        /* how many times each image index was asked about           */
    int outside;           /* points given outside [0, 255] or the eps-ball             */
    int bad_args;          /* an index out of range or a label that is not the image's  */
    int nan_loss_index;    /* this image's loss is NaN once seen nan_after times (-1)   */
    int nan_grad_index;    /* this image's gradient is NaN once seen nan_after times    */
    int nan_after;
    int nan_seen;          /* seen[] of that image when its first NaN went out (-1)     */
    int fail_on_call;      /* this call fails (-1: never) with fail_status              */
    fa_status fail_status;
    int fail_silent;       /* ... without calling fa_set_error                          */
    int zero_grad;         /* the gradient is 0 everywhere                              */
    int scramble;          /* flip signs and rescale the gradient, per (image, call, j) */
    int stop_after;        /* should_stop answers 1 from its stop_after-th poll (-1)    */
    int polls;
    int loss_free_calls;   /* rows asked about with loss == NULL (gradient only)         */
} ft_oracle;

/* Forgets what the oracle saw (not how it behaves) and points it at a run's labels. */
static void ft_oracle_reset(ft_oracle *o, const int64_t *labels, float eps) {
    o->labels = labels, o->eps = eps;
    o->calls = o->outside = o->bad_args = o->polls = o->loss_free_calls = 0;
    memset(o->seen, 0, sizeof o->seen);
    o->nan_seen = -1;
}

/* An oracle that behaves: exact gradients, no NaN, no failure, never stops. */
static ft_oracle ft_oracle_plain(void) {
    ft_oracle o;
    memset(&o, 0, sizeof o);
    o.nan_loss_index = o.nan_grad_index = o.fail_on_call = o.stop_after = -1;
    ft_oracle_reset(&o, ft_y, 16.0f);
    return o;
}

static void ft_oracle_init(ft_oracle *o, const int64_t *labels, float eps) {
    *o = ft_oracle_plain();
    ft_oracle_reset(o, labels, eps);
}

/*
 * scramble: gradient value j of image idx on its `seen`-th call is multiplied by +-10^(idx%3-1)
 * (the sign from a hash). Still a pure function of the image's own history, so batching must
 * not change anything; but successive gradients now disagree in sign and images differ in
 * gradient norm by 100x, as they do for real networks.
 */
static void ft_scramble(float *g, int64_t idx, int seen) {
    const float scale = idx % 3 == 0 ? 0.1f : idx % 3 == 1 ? 1.0f : 10.0f;
    for (int j = 0; j < FT_DIM; j++) {
        uint32_t h = (uint32_t)(idx * 1000003 + seen * 7919 + j) * 2654435761u;
        h ^= h >> 15;
        g[j] *= (h & 4u) ? -scale : scale;
    }
}

/* The joint RMSE budget of the run under test (0: none), for ft_police. */
static float ft_budget;

/* Counts points outside the box, the ball or the RMSE budget of image `idx`. */
static void ft_police(ft_oracle *o, int64_t idx, const float *x) {
    const float *x0 = ft_x0 + idx * FT_DIM;
    double s = 0.0;
    for (int j = 0; j < FT_DIM; j++) {
        if (!(x[j] >= 0.0f && x[j] <= 255.0f && fabsf(x[j] - x0[j]) <= o->eps * (1 + 1e-6f)))
            o->outside++;
        s += ((double)x[j] - x0[j]) * ((double)x[j] - x0[j]);
    }
    if (ft_budget > 0.0f && sqrt(s / FT_DIM) > ft_budget * (1.0 + 1e-5))
        o->outside++;
}

static fa_status ft_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                         const float *x, int want_grad, float *loss, int64_t *pred, float *grad) {
    ft_oracle *o = ctx;
    if (o->calls++ == o->fail_on_call)
        return o->fail_silent ? o->fail_status
                              : fa_set_error(o->fail_status, "ft oracle fails on call %d",
                                             o->calls - 1);
    for (int64_t i = 0; i < n; i++) {
        const int64_t idx = index[i];
        if (idx < 0 || idx >= FT_N || labels[i] != o->labels[idx]) {
            o->bad_args++;
            return fa_set_error(FA_ERR_MODEL, "ft oracle: bad index %lld", (long long)idx);
        }
        const float *xi = x + i * FT_DIM;
        float *gi = want_grad ? grad + i * FT_DIM : NULL;
        ft_police(o, idx, xi);
        o->loss_free_calls += loss == NULL;
        float loss_i;
        int64_t pred_i;
        loss_i = ft_ce(&ft_net, xi, labels[i], &pred_i, gi);
        const int late = o->seen[idx]++ >= o->nan_after;
        if (gi && o->zero_grad)
            memset(gi, 0, FT_DIM * sizeof(float));
        if (gi && o->scramble)
            ft_scramble(gi, idx, o->seen[idx]);
        const int poison = late && (idx == o->nan_loss_index || (gi && idx == o->nan_grad_index));
        if (poison && idx == o->nan_loss_index)
            loss_i = NAN;
        if (loss != NULL) /* NULL: the core does not need them for this call */
            loss[i] = loss_i;
        if (pred != NULL)
            pred[i] = pred_i;
        if (poison && gi && idx == o->nan_grad_index)
            gi[FT_DIM / 2] = NAN;
        if (poison && o->nan_seen < 0)
            o->nan_seen = o->seen[idx];
    }
    return FA_OK;
}

static int ft_should_stop(void *ctx) {
    ft_oracle *o = ctx;
    return o->stop_after >= 0 && o->polls++ >= o->stop_after;
}

/* ================================================================ running the core */

typedef struct {
    float adv[FT_N * FT_DIM], loss[FT_N], clean_loss[FT_N], alpha[FT_N];
    int64_t clean_pred[FT_N];
    int32_t iterations[FT_N], status[FT_N];
} ft_result;

/* The fa_result view of images [first, first + n) of r. */
static fa_result ft_view(ft_result *r, int64_t first) {
    fa_result v = {r->adv + first * FT_DIM, r->loss + first,       r->clean_loss + first,
                   r->clean_pred + first,   r->iterations + first, r->alpha + first,
                   r->status + first};
    return v;
}

/*
 * Runs images [first, first + n) of the data set with labels o->labels as one call
 * (index_offset = first) and writes their results at the same positions of r. The outputs are
 * filled with garbage first: the core must write every one of them.
 */
static fa_status ft_run(fa_config cfg, ft_oracle *o, int64_t first, int64_t n, ft_result *r) {
    cfg.index_offset = first;
    fa_result out = ft_view(r, first);
    memset(out.adv, 0xA5, (size_t)(n * FT_DIM) * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        out.loss[i] = out.clean_loss[i] = out.alpha[i] = -7.0f;
        out.clean_pred[i] = 99, out.iterations[i] = -7, out.status[i] = -7;
    }
    fa_oracle oracle = {ft_grad, ft_should_stop, o};
    return fa_attack(&cfg, FA_DEVICE_CPU, n, FT_DIM, ft_x0 + first * FT_DIM, o->labels + first,
                     &oracle, &out);
}

/* The oracle reset to labels and cfg.eps (its behaviour kept), then ft_run; reports a failing
 * call and any point outside the ball the oracle was given. */
static fa_status ft_attack(const fa_config *cfg, ft_oracle *o, const int64_t *labels,
                           int64_t first, int64_t n, ft_result *r, const char *what) {
    ft_oracle_reset(o, labels, cfg->eps);
    ft_budget = cfg->max_rmse;
    const fa_status st = ft_run(*cfg, o, first, n, r);
    ft_budget = 0.0f;
    FT_CHECK(st == FA_OK, "%s: %s %s", what, fa_status_name(st), fa_last_error());
    /* NI-FGSM's look-ahead point is unprojected, as in the reference code (SPEC 3); VMI/VNI's
     * neighbours lie in the ball of vmi_beta * eps around the iterate */
    FT_CHECK((o->outside == 0 || cfg->optimizer == FA_OPT_NIFGSM ||
              cfg->optimizer >= FA_OPT_VMIFGSM) && o->bad_args == 0,
             "%s: the oracle got %d values outside the box/ball, %d bad indices", what,
             o->outside, o->bad_args);
    return st;
}

static fa_config ft_default(int optimizer) {
    fa_config cfg;
    if (fa_config_default(optimizer, &cfg) != FA_OK)
        fprintf(stderr, "fa_config_default(%d) failed: %s\n", optimizer, fa_last_error());
    return cfg;
}

static double ft_rmse(const float *a, const float *b) {
    double s = 0.0;
    for (int j = 0; j < FT_DIM; j++)
        s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
    return sqrt(s / FT_DIM);
}

static int ft_is_x0(const ft_result *r, int i) {
    return memcmp(r->adv + i * FT_DIM, ft_x0 + i * FT_DIM, FT_DIM * sizeof(float)) == 0;
}

/* Bit-identical results for image i (NaN losses compare equal to themselves here). */
static int ft_same(const ft_result *a, const ft_result *b, int i) {
    return memcmp(a->adv + i * FT_DIM, b->adv + i * FT_DIM, FT_DIM * sizeof(float)) == 0 &&
           memcmp(&a->loss[i], &b->loss[i], sizeof(float)) == 0 &&
           memcmp(&a->clean_loss[i], &b->clean_loss[i], sizeof(float)) == 0 &&
           memcmp(&a->alpha[i], &b->alpha[i], sizeof(float)) == 0 &&
           a->clean_pred[i] == b->clean_pred[i] && a->iterations[i] == b->iterations[i] &&
           a->status[i] == b->status[i];
}

/* ================================================================ invariants */

/* What every returned image must satisfy, whatever the optimizer (the header's contract). */
static void ft_check_image(const char *what, const fa_config *cfg, const ft_result *r, int i) {
    const float *adv = r->adv + i * FT_DIM, *x0 = ft_x0 + i * FT_DIM;
    int outside = 0;
    for (int j = 0; j < FT_DIM; j++)
        outside += !(adv[j] >= 0.0f && adv[j] <= 255.0f &&
                     fabsf(adv[j] - x0[j]) <= cfg->eps + 1e-4f);
    FT_CHECK(outside == 0, "%s image %d: %d values outside [0,255] or the eps-ball", what, i,
             outside);
    if (cfg->max_rmse > 0.0f)
        FT_CHECK(ft_rmse(adv, x0) <= cfg->max_rmse * (1.0 + 1e-5), "%s image %d: RMSE %g > %g",
                 what, i, ft_rmse(adv, x0), (double)cfg->max_rmse);
    const int st = r->status[i];
    FT_CHECK(st == FA_IMAGE_STOP_LOSS || st == FA_IMAGE_MAX_ITER || st == FA_IMAGE_STOP_RMSE,
             "%s image %d: status %d", what, i, st);
    FT_CHECK(r->iterations[i] >= 0 && r->iterations[i] <= cfg->max_iter &&
                 (st != FA_IMAGE_MAX_ITER || r->iterations[i] == cfg->max_iter),
             "%s image %d: %d iterations, status %d", what, i, r->iterations[i], st);
    FT_CHECK(r->iterations[i] == 0 || r->alpha[i] > 0.0f, "%s image %d: alpha %g", what, i,
             (double)r->alpha[i]);
    /* the reported losses are the model's CE at x0 and at the returned image */
    int64_t pred;
    const float clean = ft_ce(&ft_net, x0, ft_y[i], &pred, NULL);
    FT_CHECK(r->clean_loss[i] == clean && r->clean_pred[i] == pred,
             "%s image %d: clean loss %g (model %g), pred %lld", what, i,
             (double)r->clean_loss[i], (double)clean, (long long)r->clean_pred[i]);
    const float at_adv = ft_ce(&ft_net, adv, ft_y[i], &pred, NULL);
    FT_CHECK(fabsf(r->loss[i] - at_adv) <= 1e-5f * (1.0f + at_adv),
             "%s image %d: reported loss %g, CE at adv %g", what, i, (double)r->loss[i],
             (double)at_adv);
    /* best-iterate tracking: x0 is a candidate, so the cap never returns less than x0's CE */
    if (st == FA_IMAGE_MAX_ITER && !cfg->random_start)
        FT_CHECK(r->loss[i] >= r->clean_loss[i], "%s image %d: best loss %g < clean loss %g",
                 what, i, (double)r->loss[i], (double)r->clean_loss[i]);
    if (st == FA_IMAGE_STOP_LOSS)
        FT_CHECK(r->loss[i] >= cfg->stop_loss, "%s image %d: stopped at loss %g", what, i,
                 (double)r->loss[i]);
}

/* Every optimizer under its defaults plus a few variants: the contract holds for every image. */
static void test_invariants(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    char what[96];
    for (int opt = 0; opt < FA_OPT_COUNT; opt++)
        for (int variant = 0; variant < 6; variant++) {
            fa_config cfg = ft_default(opt);
            cfg.max_iter = cfg.max_iter < 6 ? cfg.max_iter : 6;
            if (variant == 1) /* a small ball and a loss most images reach */
                cfg.eps = 4.0f, cfg.stop_loss = 1.0f;
            if (variant == 2) /* rmse_loss, textbook Nesterov */
                cfg.rmse_weight = 6.0f, cfg.nesterov = FA_NESTEROV_TEXTBOOK;
            if (variant == 3) /* a random start for everyone */
                cfg.random_start = 1, cfg.seed = 5;
            if (variant == 4) /* a joint budget (SPEC 8): the oracle checks every point */
                cfg.max_rmse = 1.5f;
            if (variant == 5) /* the budget from a random start, with rmse_loss */
                cfg.max_rmse = 2.5f, cfg.random_start = 1, cfg.seed = 7, cfg.rmse_weight = 6.0f;
            snprintf(what, sizeof what, "%s variant %d", fa_optimizer_name(opt), variant);
            if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, what) != FA_OK)
                continue;
            for (int i = 0; i < FT_N; i++)
                ft_check_image(what, &cfg, &r, i);
        }
}

/* max_iter = 0: only x0 is evaluated, and it is what comes back. */
static void test_max_iter_zero(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_ADAM);
    cfg.max_iter = 0;
    ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "max_iter 0");
    for (int i = 0; i < FT_N; i++) {
        FT_CHECK(r.status[i] == FA_IMAGE_MAX_ITER && r.iterations[i] == 0 && ft_is_x0(&r, i) &&
                     r.loss[i] == r.clean_loss[i],
                 "image %d: status %d, %d iterations", i, r.status[i], r.iterations[i]);
        FT_CHECK(o.seen[i] == 1, "image %d asked %d times", i, o.seen[i]);
    }
}

/* ================================================================ update rules (SPEC 2 and 3) */

/* P of SPEC 1: the box, then the ball. */
static float ft_project(float v, float x0, float eps) {
    v = fminf(fmaxf(v, 0.0f), 255.0f);
    return fminf(fmaxf(v, x0 - eps), x0 + eps);
}

static float ft_sign(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

/* Whether the core evaluates the loss at every iterate (SPEC 2: the best iterate, the loss
 * stop and the loss of an image stopped on RMSE need it). */
static int ft_needs_loss(const fa_config *c) {
    return c->returns == FA_RETURNS_BEST || isfinite(c->stop_loss) || c->stop_rmse > 0.0f;
}

/* The effective gradient of step k at point `at` (MI/NI's g / mean|g|, rmse_loss term, LAdam). */
static void ft_effective_grad(const fa_config *c, int k, const float *at, const float *x0,
                              float *g) {
    float gn = 1.0f, pc = 0.0f;
    if (c->optimizer == FA_OPT_MIFGSM || c->optimizer == FA_OPT_NIFGSM) {
        double l1 = 0.0;
        for (int j = 0; j < FT_DIM; j++)
            l1 += fabs((double)g[j]);
        gn = l1 > 0.0 ? (float)l1 / (float)FT_DIM : 1.0f;
    }
    if (c->rmse_weight > 0.0f && k >= 1) {
        const float rm = (float)ft_rmse(at, x0);
        pc = rm > 0.0f ? c->rmse_weight / ((float)FT_DIM * rm) : 0.0f;
    }
    for (int j = 0; j < FT_DIM; j++) {
        g[j] = g[j] / gn + pc * (at[j] - x0[j]);
        if (c->optimizer == FA_OPT_LADAM)
            g[j] = g[j] - c->ladam_lambda * at[j];
    }
}

/* One element of SPEC 3 (and of the extras the header documents): updates m, v, returns d. */
static float ft_rule(const fa_config *c, float rho, float g, float at, float *m, float *v) {
    const float b1 = c->beta1, b2 = c->beta2, mu = c->momentum;
    switch (c->optimizer) {
    case FA_OPT_GD:
        return g;
    case FA_OPT_MGD:
    case FA_OPT_NAGD:
        return *m = mu * *m + g;
    case FA_OPT_ADAM:
    case FA_OPT_LADAM:
    case FA_OPT_ADAMW:
        *m = b1 * *m + (1.0f - b1) * g;
        *v = b2 * *v + (1.0f - b2) * (g * g);
        return *m / (sqrtf(*v) + c->delta) +
               (c->optimizer == FA_OPT_ADAMW ? c->adamw_decay * at : 0.0f);
    case FA_OPT_ADABELIEF:
        *m = b1 * *m + (1.0f - b1) * g;
        *v = b2 * *v + (1.0f - b2) * ((g - *m) * (g - *m));
        return *m / (sqrtf(*v) + c->delta);
    case FA_OPT_MSVAG: {
        const float b = c->msvag_beta;
        *m = b * *m + (1.0f - b) * g;
        *v = b * *v + (1.0f - b) * (g * g);
        const float m2 = *m * *m, den = (1.0f - 2.0f * rho) * m2 + rho * *v;
        return den == 0.0f ? 0.0f : (1.0f - rho) * m2 / den * *m;
    }
    case FA_OPT_RMSPROP:
        *v = c->rmsprop_rho * *v + (1.0f - c->rmsprop_rho) * (g * g);
        return g / sqrtf(*v + c->delta);
    case FA_OPT_YOGI:
        *m = b1 * *m + (1.0f - b1) * g;
        *v = *v - (1.0f - b2) * (g * g) * ft_sign(*v - g * g);
        return *m / (sqrtf(*v) + c->delta);
    case FA_OPT_FGSM:
    case FA_OPT_PGD:
        return ft_sign(g);
    default: /* MI-FGSM, NI-FGSM */
        *m = mu * *m + g;
        return ft_sign(*m);
    }
}

typedef struct {
    float adv[FT_DIM], loss;
    int status, iterations;
} ft_reference;

/* SPEC 2's loop for one image with step size alpha, written from the SPEC (no random start).
 * scramble: the gradient is the scrambled one the oracle gives image idx (ft_scramble), whose
 * gradient calls are its 1st, 2nd, ... calls, or 1st, 3rd, 5th ... with a look-ahead (there
 * the loss at x is asked for on its own first). */
static void ft_reference_run(const fa_config *c, const float *x0, int64_t y, float alpha,
                             int scramble, int64_t idx, ft_reference *out) {
    float x[FT_DIM], best[FT_DIM], xt[FT_DIM], g[FT_DIM], m[FT_DIM] = {0}, v[FT_DIM] = {0};
    float best_loss = -INFINITY;
    const int opt = c->optimizer, ahead = opt == FA_OPT_NAGD || opt == FA_OPT_NIFGSM;
    const int jump = opt == FA_OPT_NAGD && c->nesterov == FA_NESTEROV_AUTHORS;
    int64_t pred;
    memcpy(x, x0, sizeof x), memcpy(best, x0, sizeof best);
    for (int k = 0;; k++) {
        const float L = ft_ce(&ft_net, x, y, &pred, NULL);
        if (L > best_loss)
            best_loss = L, memcpy(best, x, sizeof x);
        out->iterations = k;
        if (k >= c->max_iter || L >= c->stop_loss) {
            const int cap = k >= c->max_iter && c->returns == FA_RETURNS_BEST;
            memcpy(out->adv, cap ? best : x, sizeof x);
            out->loss = cap ? best_loss : L;
            out->status = k >= c->max_iter ? FA_IMAGE_MAX_ITER : FA_IMAGE_STOP_LOSS;
            return;
        }
        const float *at = x;
        if (ahead && k >= 1) { /* x~ = x + mu * alpha * m: projected for NAGD, not for NI */
            for (int j = 0; j < FT_DIM; j++) {
                xt[j] = x[j] + (c->momentum * alpha) * m[j];
                if (opt == FA_OPT_NAGD)
                    xt[j] = ft_project(xt[j], x0[j], c->eps);
            }
            at = xt;
        }
        ft_ce(&ft_net, at, y, &pred, g);
        if (scramble) /* with a look-ahead the loss at x takes a call of its own when needed */
            ft_scramble(g, idx, ahead && k >= 1 && ft_needs_loss(c) ? 2 * k + 1 : k + 1);
        ft_effective_grad(c, k, at, x0, g);
        const float bk = powf(c->msvag_beta, (float)(k + 2));
        const float b = c->msvag_beta; /* M-SVAG's rho_k */
        const float rho = (1.0f - b) * (1.0f + bk) / ((1.0f + b) * (1.0f - bk));
        const float *base = jump && k >= 1 ? xt : x;
        for (int j = 0; j < FT_DIM; j++) {
            const float d = ft_rule(c, rho, g[j], at[j], &m[j], &v[j]);
            x[j] = ft_project(base[j] + alpha * d, x0[j], c->eps);
        }
    }
}

/* The core's result for every image equals the SPEC loop run here with the alpha it reports. */
static void ft_compare_reference(const char *what, const fa_config *cfg, int scramble) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    o.scramble = scramble;
    if (ft_attack(cfg, &o, ft_y, 0, FT_N, &r, what) != FA_OK)
        return;
    for (int i = 0; i < FT_N; i++) {
        ft_reference ref;
        ft_reference_run(cfg, ft_x0 + i * FT_DIM, ft_y[i], r.alpha[i], scramble, i, &ref);
        float worst = 0.0f;
        for (int j = 0; j < FT_DIM; j++)
            worst = fmaxf(worst, fabsf(ref.adv[j] - r.adv[i * FT_DIM + j]));
        FT_CHECK(r.status[i] == ref.status && r.iterations[i] == ref.iterations,
                 "%s image %d: status %d after %d steps, reference %d after %d", what, i,
                 r.status[i], r.iterations[i], ref.status, ref.iterations);
        FT_CHECK(worst <= 1e-3f && fabsf(r.loss[i] - ref.loss) <= 1e-4f * (1.0f + ref.loss),
                 "%s image %d: max |adv - reference| %g, loss %g vs %g", what, i, (double)worst,
                 (double)r.loss[i], (double)ref.loss);
    }
}

/* Every optimizer, a few variants: the update rules, projection and best iterate of the SPEC. */
static void test_update_rules(void) {
    char what[96];
    /* VMI/VNI-FGSM (several gradients per step): tests/reference.py's NumPy reference */
    for (int opt = 0; opt < FA_OPT_VMIFGSM; opt++)
        for (int variant = 0; variant < 5; variant++) {
            fa_config cfg = ft_default(opt);
            cfg.eps = 8.0f, cfg.max_iter = 5, cfg.stop_loss = INFINITY;
            if (cfg.first_step_rmse > 0.0f)
                cfg.first_step_rmse = 1.0f;
            if (variant == 1)
                cfg.rmse_weight = 6.0f;
            if (variant == 2)
                cfg.nesterov = FA_NESTEROV_TEXTBOOK, cfg.eps = 3.0f;
            if (variant == 3) /* a loss threshold that some images cross on the way */
                cfg.stop_loss = 1.5f;
            /* variant 4: scrambled gradients (signs that change between steps, norms 100x
             * apart), where a wrong momentum or l1 scaling shows in sign(m) */
            snprintf(what, sizeof what, "reference %s variant %d", fa_optimizer_name(opt),
                     variant);
            ft_compare_reference(what, &cfg, variant == 4);
        }
}

/* ================================================================ batching */

/*
 * One call with 6 images equals calls of 1 + 2 + 3 and six calls of 1, bit for bit. Image 2
 * is mislabelled (skipped at step 0) and the loss threshold is set between the images' final
 * losses, so images leave the batch at different steps: the compaction of every per-image
 * state is exercised.
 */
static void ft_batching_case(const char *what, fa_config cfg, int scramble) {
    static ft_result whole, split, single, probe;
    ft_oracle o = ft_oracle_plain();
    o.scramble = scramble;
    cfg.stop_loss = INFINITY;
    ft_attack(&cfg, &o, ft_y_wrong, 0, 6, &probe, what);
    float sorted[6];
    int m = 0;
    for (int i = 0; i < 6; i++)
        if (i != 2)
            sorted[m++] = probe.loss[i];
    for (int a = 0; a < m; a++) /* threshold: between the 2nd and 3rd lowest final loss */
        for (int b = a + 1; b < m; b++)
            if (sorted[b] < sorted[a]) {
                const float t = sorted[a];
                sorted[a] = sorted[b], sorted[b] = t;
            }
    cfg.stop_loss = 0.5f * (sorted[1] + sorted[2]);

    ft_attack(&cfg, &o, ft_y_wrong, 0, 6, &whole, what);
    unsigned exits = 0; /* the steps at which attacked images left the batch */
    for (int i = 0; i < 6; i++)
        if (i != 2)
            exits |= 1u << (whole.iterations[i] < 31 ? whole.iterations[i] : 31);
    int distinct = 0;
    for (; exits; exits &= exits - 1)
        distinct++;
    FT_CHECK(whole.status[2] == FA_IMAGE_SKIPPED && distinct >= 2,
             "%s: images do not leave at different steps (%d distinct)", what, distinct);
    const int first[] = {0, 1, 3}, count[] = {1, 2, 3};
    for (int p = 0; p < 3; p++)
        ft_attack(&cfg, &o, ft_y_wrong, first[p], count[p], &split, what);
    for (int i = 0; i < 6; i++)
        ft_attack(&cfg, &o, ft_y_wrong, i, 1, &single, what);
    for (int i = 0; i < 6; i++) {
        FT_CHECK(ft_same(&whole, &split, i), "%s image %d: batches 1+2+3 differ from one of 6",
                 what, i);
        FT_CHECK(ft_same(&whole, &single, i), "%s image %d: a batch of 1 differs from one of 6",
                 what, i);
    }
}

static void test_batching(void) {
    char what[96];
    /* GD, NAGD, Adam, MSVAG and PGD with a random start as asked; the others as well, since
     * MI/NI-FGSM carry per-image gradient norms and NAGD a look-ahead buffer. */
    for (int opt = 0; opt < FA_OPT_COUNT; opt++) {
        fa_config cfg = ft_default(opt);
        cfg.max_iter = 6, cfg.eps = 8.0f;
        if (cfg.first_step_rmse > 0.0f)
            cfg.first_step_rmse = 1.0f;
        cfg.random_start = opt == FA_OPT_PGD, cfg.seed = 99;
        snprintf(what, sizeof what, "%s", fa_optimizer_name(opt));
        ft_batching_case(what, cfg, 0);
        /*
         * CORE BUG (attack.c): for MI-FGSM and NI-FGSM this fails. compact() moves orig, index,
         * labels, best_loss and alpha but not asum, and direction() reads s->asum[r] (the
         * gradient's l1 norm, for gscale = 1/||g||_1) after check_rows() or drop_nan_grads()
         * have moved rows up: a row then uses the norm of the image that sat there before, so
         * m = mu*m + g/||g||_1 is scaled by another image's norm whenever an image has just
         * left the batch. Scrambled gradients (norms 100x apart, signs that disagree between
         * steps) make the wrong scale show in sign(m). Fix: add `s->asum[j] = s->asum[r];`
         * to the host-array loop of compact().
         */
        snprintf(what, sizeof what, "%s, scrambled gradients", fa_optimizer_name(opt));
        ft_batching_case(what, cfg, 1);
    }
    fa_config cfg = ft_default(FA_OPT_GD); /* stop_rmse shortens steps per image */
    cfg.max_iter = 4, cfg.first_step_rmse = 1.0f, cfg.stop_rmse = 3.5f;
    ft_batching_case("GD with stop_rmse", cfg, 0);
    cfg = ft_default(FA_OPT_ADAM); /* rmse_loss */
    cfg.max_iter = 6, cfg.rmse_weight = 6.0f;
    ft_batching_case("Adam with rmse_weight", cfg, 1);
}

/* The random start is uniform in the ball, drawn from (seed, index): another seed or another
 * index gives another start, the same ones the same start. */
static void test_random_start(void) {
    static ft_result a, b, c;
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_PGD);
    cfg.random_start = 1, cfg.max_iter = 0, cfg.seed = 1;
    ft_attack(&cfg, &o, ft_y, 0, 4, &a, "random start, seed 1");
    ft_attack(&cfg, &o, ft_y, 0, 4, &b, "random start, seed 1 again");
    cfg.seed = 2;
    ft_attack(&cfg, &o, ft_y, 0, 4, &c, "random start, seed 2");
    FT_CHECK(memcmp(a.adv, b.adv, 4 * FT_DIM * sizeof(float)) == 0, "not reproducible");
    FT_CHECK(memcmp(a.adv, c.adv, 4 * FT_DIM * sizeof(float)) != 0, "the seed is ignored");
    /* image 3 sent as image 0 of a call with index_offset 0: another index, another start
     * (the oracle's ball check, keyed by index, is not looked at here) */
    fa_config shifted = cfg;
    shifted.seed = 1;
    fa_result out = ft_view(&c, 0);
    fa_oracle oracle = {ft_grad, NULL, &o};
    ft_oracle_init(&o, ft_y + 3, cfg.eps);
    FT_CHECK(fa_attack(&shifted, FA_DEVICE_CPU, 1, FT_DIM, ft_x0 + 3 * FT_DIM, ft_y + 3, &oracle,
                       &out) == FA_OK,
             "%s", fa_last_error());
    FT_CHECK(memcmp(c.adv, a.adv + 3 * FT_DIM, FT_DIM * sizeof(float)) != 0,
             "the start does not depend on the image index");
    /* the start is spread over the ball: its RMSE is near eps/sqrt(3) away from the box */
    const double rm = ft_rmse(a.adv, ft_x0);
    FT_CHECK(rm > 0.4 * 16.0 / sqrt(3.0) && rm <= 16.0, "random start RMSE %g", rm);
}

/* ================================================================ calibration (SPEC 4) */

/* The largest RMSE a step along direction sign s can reach from x0 (every value at a bound). */
static double ft_reachable_rmse(const float *x0, const float *g, float eps) {
    double s = 0.0;
    for (int j = 0; j < FT_DIM; j++) {
        const double room = g[j] > 0 ? fmin(eps, 255.0 - x0[j]) : g[j] < 0 ? fmin(eps, x0[j]) : 0;
        s += room * room;
    }
    return sqrt(s / FT_DIM);
}

/* max_iter 1, no loss stop: the first step's RMSE is first_step_rmse within 1/100. Every
 * first-step direction has the sign of the gradient, and CE is convex in x for this model,
 * so the step raises the loss and it is the step that comes back. */
static void test_calibration_targets(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    const float targets[] = {0.01f, 0.3f, 2.0f, 8.0f};
    for (int opt = 0; opt < FA_OPT_COUNT; opt++)
        for (int q = 0; q < 4; q++) {
            fa_config cfg = ft_default(opt);
            cfg.max_iter = 1, cfg.stop_loss = INFINITY;
            cfg.alpha = 0.0f, cfg.first_step_rmse = targets[q];
            if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, fa_optimizer_name(opt)) != FA_OK)
                continue;
            for (int i = 0; i < FT_N; i++) {
                const double got = ft_rmse(r.adv + i * FT_DIM, ft_x0 + i * FT_DIM);
                FT_CHECK(fabs(got - targets[q]) <= targets[q] / 100.0 && r.alpha[i] > 0.0f,
                         "%s r1 %g image %d: first step RMSE %.6g, alpha %g",
                         fa_optimizer_name(opt), (double)targets[q], i, got, (double)r.alpha[i]);
            }
        }
}

/* A target beyond reach (r1 20 > eps 16) gives the largest RMSE the projection allows. */
static void test_calibration_unreachable(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_GD);
    cfg.max_iter = 1, cfg.stop_loss = INFINITY, cfg.first_step_rmse = 20.0f;
    ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "unreachable r1");
    for (int i = 0; i < FT_N; i++) {
        float g[FT_DIM];
        int64_t pred;
        ft_ce(&ft_net, ft_x0 + i * FT_DIM, ft_y[i], &pred, g);
        const double most = ft_reachable_rmse(ft_x0 + i * FT_DIM, g, cfg.eps);
        const double got = ft_rmse(r.adv + i * FT_DIM, ft_x0 + i * FT_DIM);
        FT_CHECK(fabs(got - most) <= most / 100.0 && isfinite(r.alpha[i]) && r.alpha[i] > 0.0f,
                 "image %d: RMSE %g, reachable %g, alpha %g", i, got, most, (double)r.alpha[i]);
    }
}

/* A zero gradient: alpha 0, the image never moves (no NaN from 0/0 in any rule). LAdam and
 * AdamW are left out: their direction has a term in x itself. */
static void test_calibration_zero_gradient(void) {
    static ft_result r;
    const int opts[] = {FA_OPT_GD,   FA_OPT_MGD,     FA_OPT_NAGD, FA_OPT_ADAM,
                        FA_OPT_ADABELIEF, FA_OPT_MSVAG, FA_OPT_RMSPROP, FA_OPT_YOGI};
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++) {
        fa_config cfg = ft_default(opts[t]);
        cfg.max_iter = 3;
        ft_oracle o = ft_oracle_plain();
        ft_oracle_init(&o, ft_y, cfg.eps);
        o.zero_grad = 1;
        FT_CHECK(ft_run(cfg, &o, 0, 3, &r) == FA_OK, "%s", fa_last_error());
        for (int i = 0; i < 3; i++)
            FT_CHECK(r.alpha[i] == 0.0f && ft_is_x0(&r, i) && r.status[i] == FA_IMAGE_MAX_ITER,
                     "%s image %d: alpha %g, status %d", fa_optimizer_name(opts[t]), i,
                     (double)r.alpha[i], r.status[i]);
    }
}

/* ================================================================ stopping rules */

/* A low stop_loss: images stop at the first iterate whose CE reaches it, and that iterate is
 * returned; a stop_loss below the clean loss stops at step 0 with x0. */
static void test_stop_loss(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_ADAM);
    cfg.stop_loss = 0.5f, cfg.max_iter = 100;
    ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "stop_loss 0.5");
    int stopped = 0;
    for (int i = 0; i < FT_N; i++) {
        ft_check_image("stop_loss 0.5", &cfg, &r, i);
        /* an image whose largest CE in the ball stays below 0.5 runs to the cap instead */
        FT_CHECK((r.status[i] == FA_IMAGE_STOP_LOSS && r.loss[i] >= 0.5f) ||
                     (r.status[i] == FA_IMAGE_MAX_ITER && r.loss[i] < 0.5f),
                 "image %d: status %d loss %g", i, r.status[i], (double)r.loss[i]);
        /* the oracle was asked about x0 and each of the steps, then no more */
        FT_CHECK(o.seen[i] == r.iterations[i] + 1, "image %d: asked %d times for %d steps", i,
                 o.seen[i], r.iterations[i]);
        stopped += r.status[i] == FA_IMAGE_STOP_LOSS && r.iterations[i] > 0;
    }
    FT_CHECK(stopped >= FT_N / 2, "only %d images reached the loss", stopped);

    cfg.stop_loss = 1e-6f;
    ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "stop_loss below the clean loss");
    for (int i = 0; i < FT_N; i++)
        FT_CHECK(r.status[i] == FA_IMAGE_STOP_LOSS && r.iterations[i] == 0 && ft_is_x0(&r, i) &&
                     r.loss[i] == r.clean_loss[i],
                 "image %d: status %d after %d steps", i, r.status[i], r.iterations[i]);
}

/* stop_rmse: the image stops on the target RMSE (last step shortened), within 1%. */
static void test_stop_rmse(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    char what[64];
    const int opts[] = {FA_OPT_GD, FA_OPT_MGD, FA_OPT_NAGD, FA_OPT_ADAM, FA_OPT_MSVAG, FA_OPT_PGD};
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++)
        for (int nesterov = 0; nesterov < 2; nesterov++) {
            fa_config cfg = ft_default(opts[t]);
            cfg.stop_loss = INFINITY, cfg.max_iter = 300, cfg.stop_rmse = 5.0f;
            cfg.nesterov = nesterov;
            if (cfg.first_step_rmse > 0.0f)
                cfg.first_step_rmse = 0.5f;
            snprintf(what, sizeof what, "stop_rmse %s nesterov %d", fa_optimizer_name(opts[t]),
                     nesterov);
            if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, what) != FA_OK)
                continue;
            for (int i = 0; i < FT_N; i++) {
                const double got = ft_rmse(r.adv + i * FT_DIM, ft_x0 + i * FT_DIM);
                ft_check_image(what, &cfg, &r, i);
                FT_CHECK(r.status[i] == FA_IMAGE_STOP_RMSE && fabs(got - 5.0) <= 0.05,
                         "%s image %d: status %d, RMSE %.5g after %d steps", what, i,
                         r.status[i], got, r.iterations[i]);
            }
        }
}

/* ================================================================ skip_misclassified */

/* Image 2 is mislabelled: skipped, returned unchanged, alpha 0, 0 iterations, loss NaN, and
 * the oracle never hears of it after the clean evaluation. */
static void ft_skip_case(const char *what, fa_config cfg) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    ft_attack(&cfg, &o, ft_y_wrong, 0, 4, &r, what);
    FT_CHECK(r.status[2] == FA_IMAGE_SKIPPED && r.alpha[2] == 0.0f && r.iterations[2] == 0 &&
                 ft_is_x0(&r, 2) && isnan(r.loss[2]),
             "%s: status %d alpha %g iterations %d", what, r.status[2], (double)r.alpha[2],
             r.iterations[2]);
    FT_CHECK(r.clean_pred[2] == ft_y[2] && isfinite(r.clean_loss[2]),
             "%s: clean pred %lld, clean loss %g", what, (long long)r.clean_pred[2],
             (double)r.clean_loss[2]);
    FT_CHECK(o.seen[2] == 1, "%s: the skipped image was asked about %d times", what, o.seen[2]);
    FT_CHECK(r.status[0] == FA_IMAGE_MAX_ITER && r.status[3] == FA_IMAGE_MAX_ITER,
             "%s: neighbours %d %d", what, r.status[0], r.status[3]);
}

static void test_skip(void) {
    fa_config cfg = ft_default(FA_OPT_GD);
    cfg.stop_loss = INFINITY, cfg.max_iter = 5;
    ft_skip_case("skip, GD", cfg);
    cfg = ft_default(FA_OPT_NAGD);
    cfg.max_iter = 5;
    ft_skip_case("skip, NAGD", cfg);
    /*
     * CORE BUG (attack.c, fa_attack + loop): with random_start = 1 the clean pass over x0
     * already shows that the image is misclassified, yet the image stays in the batch and is
     * sent to the oracle once more (with a gradient) at the random start of step 0, before
     * check_rows() skips it: seen[2] == 2. The header says only running images are asked.
     * Fix: in fa_attack, after the clean pass, finish() the misclassified rows as SKIPPED,
     * compact(), then draw the random start for the s.n rows left.
     */
    cfg = ft_default(FA_OPT_PGD);
    cfg.random_start = 1, cfg.seed = 3;
    ft_skip_case("skip, PGD with random start", cfg);

    /* skip_misclassified = 0: the mislabelled image is attacked like the others */
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    cfg = ft_default(FA_OPT_GD);
    cfg.stop_loss = INFINITY, cfg.max_iter = 5, cfg.skip_misclassified = 0;
    ft_attack(&cfg, &o, ft_y_wrong, 0, 4, &r, "no skip");
    FT_CHECK(r.status[2] == FA_IMAGE_MAX_ITER && r.alpha[2] > 0.0f && r.iterations[2] == 5 &&
                 o.seen[2] == 6,
             "no skip: status %d, alpha %g, asked %d times", r.status[2], (double)r.alpha[2],
             o.seen[2]);
}

/* ================================================================ NaN, oracle errors, stop */

/* One image's loss or gradient turns NaN: that image fails with x0 returned, the others are
 * bit for bit those of a run without the NaN. */
static void ft_nan_case(const char *what, const fa_config *cfg, int nan_loss, int after) {
    static ft_result clean, r;
    ft_oracle o = ft_oracle_plain();
    ft_attack(cfg, &o, ft_y, 0, 4, &clean, what);
    ft_oracle_init(&o, ft_y, cfg->eps);
    o.nan_after = after;
    if (nan_loss)
        o.nan_loss_index = 1;
    else
        o.nan_grad_index = 1;
    FT_CHECK(ft_run(*cfg, &o, 0, 4, &r) == FA_OK, "%s: %s", what, fa_last_error());
    FT_CHECK(r.status[1] == FA_IMAGE_NAN && ft_is_x0(&r, 1) && isnan(r.loss[1]),
             "%s: status %d after %d steps", what, r.status[1], r.iterations[1]);
    for (int i = 0; i < 4; i++)
        if (i != 1)
            FT_CHECK(ft_same(&clean, &r, i), "%s: image %d changed by its neighbour's NaN",
                     what, i);
    /* a NaN loss shows where the loss is evaluated: every step, or (no rule needs it) only at
     * the end; a NaN gradient at once */
    if (!nan_loss || ft_needs_loss(cfg))
        FT_CHECK(o.nan_seen > 0 && o.seen[1] == o.nan_seen,
                 "%s: the failed image was asked about %d more times", what,
                 o.seen[1] - o.nan_seen);
}

/*
 * CORE BUG (attack.c, compact() and direction(); see test_batching): MI-FGSM and NI-FGSM with a
 * NaN gradient from call 0 fail here. The NaN image leaves the batch at step 0, the rows behind
 * it move up but asum does not, so the next image reads the NaN image's l1 norm: gscale becomes
 * 0 (1/NaN fails the > 0 test), m stays 0 and that image does not move at step 0. Fix: add
 * `s->asum[j] = s->asum[r];` to the host-array loop of compact().
 */
static void test_nan(void) {
    char what[96];
    const int opts[] = {FA_OPT_GD, FA_OPT_NAGD, FA_OPT_ADAM, FA_OPT_MSVAG, FA_OPT_MIFGSM,
                        FA_OPT_NIFGSM};
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++)
        for (int after = 0; after < 4; after += 3)
            for (int nan_loss = 0; nan_loss < 2; nan_loss++) {
                fa_config cfg = ft_default(opts[t]);
                cfg.max_iter = 6, cfg.stop_loss = INFINITY;
                snprintf(what, sizeof what, "%s, NaN %s from call %d", fa_optimizer_name(opts[t]),
                         nan_loss ? "loss" : "gradient", after);
                ft_nan_case(what, &cfg, nan_loss, after);
            }
}

/* An oracle error ends the run with the oracle's status and message. */
static void ft_error_case(const char *what, fa_config cfg, int call, fa_status status, int silent) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    ft_oracle_init(&o, ft_y, cfg.eps);
    o.fail_on_call = call, o.fail_status = status, o.fail_silent = silent;
    const fa_status st = ft_run(cfg, &o, 0, 3, &r);
    FT_CHECK(st == status, "%s: returned %s", what, fa_status_name(st));
    if (silent)
        FT_CHECK(fa_last_error()[0] != '\0', "%s: an error without a message", what);
    else
        FT_CHECK(strstr(fa_last_error(), "ft oracle fails on call") != NULL,
                 "%s: message '%s'", what, fa_last_error());
    FT_CHECK(o.calls == call + 1, "%s: the oracle was called again after failing", what);
}

static void test_oracle_errors(void) {
    fa_config cfg = ft_default(FA_OPT_ADAM);
    ft_error_case("error on the first call", cfg, 0, FA_ERR_MODEL, 0);
    ft_error_case("error on call 3", cfg, 3, FA_ERR_IO, 0);
    ft_error_case("silent error", cfg, 2, FA_ERR_MODEL, 1);
    cfg = ft_default(FA_OPT_NAGD); /* the look-ahead call */
    ft_error_case("NAGD look-ahead error", cfg, 2, FA_ERR_MEMORY, 0);
    cfg = ft_default(FA_OPT_PGD); /* the clean pass before a random start */
    cfg.random_start = 1;
    ft_error_case("random-start clean pass error", cfg, 0, FA_ERR_MODEL, 0);
}

/* should_stop answering 1 ends the run with FA_ERR_INTERRUPTED; answering 0 changes nothing. */
static void test_interrupt(void) {
    static ft_result r;
    fa_config cfg = ft_default(FA_OPT_GD);
    cfg.max_iter = 10;
    for (int after = 0; after < 6; after += 5) {
        ft_oracle o = ft_oracle_plain();
        ft_oracle_init(&o, ft_y, cfg.eps);
        o.stop_after = after;
        FT_CHECK(ft_run(cfg, &o, 0, 3, &r) == FA_ERR_INTERRUPTED, "stop after %d polls: %s",
                 after, fa_last_error());
        FT_CHECK(o.calls == after, "stop after %d polls: %d oracle calls", after, o.calls);
    }
    ft_oracle o = ft_oracle_plain();
    ft_oracle_init(&o, ft_y, cfg.eps);
    o.stop_after = 1000;
    FT_CHECK(ft_run(cfg, &o, 0, 3, &r) == FA_OK, "%s", fa_last_error());
}

/* ================================================================ argument checks */

/* A config with one bad field: rejected by fa_config_check and fa_attack, the field named,
 * and the oracle never called. */
static void ft_bad_config(const char *field, const fa_config *cfg) {
    static ft_result r;
    FT_CHECK(fa_config_check(cfg) == FA_ERR_ARGUMENT, "fa_config_check accepted a bad %s",
             field);
    FT_CHECK(strstr(fa_last_error(), field) != NULL, "%s: message '%s'", field, fa_last_error());
    ft_oracle o = ft_oracle_plain();
    ft_oracle_init(&o, ft_y, 16.0f);
    FT_CHECK(ft_run(*cfg, &o, 0, 1, &r) == FA_ERR_ARGUMENT, "fa_attack accepted a bad %s", field);
    FT_CHECK(strstr(fa_last_error(), field) != NULL && o.calls == 0,
             "fa_attack, %s: message '%s', %d oracle calls", field, fa_last_error(), o.calls);
}

static void test_config_checks(void) {
    const fa_config base = ft_default(FA_OPT_ADAM);
    fa_config c;
    FT_CHECK(fa_config_check(&base) == FA_OK, "%s", fa_last_error());
    /* index_offset goes through fa_config_check only: ft_run sets it */
#define FT_BAD(field, change) (c = base, change, ft_bad_config(field, &c))
    FT_BAD("optimizer", c.optimizer = 99);
    FT_BAD("optimizer", c.optimizer = -1);
    FT_BAD("eps", c.eps = 0.0f);
    FT_BAD("eps", c.eps = -1.0f);
    FT_BAD("eps", c.eps = NAN);
    FT_BAD("eps", c.eps = INFINITY);
    FT_BAD("max_iter", c.max_iter = -1);
    FT_BAD("first_step_rmse", c.first_step_rmse = -1.0f);
    FT_BAD("first_step_rmse", c.first_step_rmse = NAN);
    FT_BAD("first_step_rmse", c.first_step_rmse = 0.0f);       /* neither of the two */
    FT_BAD("alpha", c.alpha = 1.0f);                            /* both */
    FT_BAD("alpha", (c.first_step_rmse = 0.0f, c.alpha = NAN));
    FT_BAD("alpha", (c.first_step_rmse = 0.0f, c.alpha = -1.0f));
    FT_BAD("stop_loss", c.stop_loss = NAN);
    FT_BAD("stop_rmse", c.stop_rmse = -1.0f);
    FT_BAD("stop_rmse", c.stop_rmse = NAN);
    FT_BAD("rmse_weight", c.rmse_weight = -6.0f);
    FT_BAD("rmse_weight", c.rmse_weight = NAN);
    FT_BAD("momentum", c.momentum = NAN);
    FT_BAD("beta1", c.beta1 = 1.0f);
    FT_BAD("beta1", c.beta1 = -0.1f);
    FT_BAD("beta2", c.beta2 = 1.0f);
    FT_BAD("beta2", c.beta2 = NAN);
    FT_BAD("delta", c.delta = 0.0f);
    FT_BAD("delta", c.delta = -1e-8f);
    FT_BAD("ladam_lambda", c.ladam_lambda = NAN);
    FT_BAD("adamw_decay", c.adamw_decay = INFINITY);
    FT_BAD("msvag_beta", c.msvag_beta = 1.0f);
    FT_BAD("msvag_beta", c.msvag_beta = 0.0f);
    FT_BAD("rmsprop_rho", c.rmsprop_rho = 1.0f);
    FT_BAD("rmsprop_rho", c.rmsprop_rho = NAN);
    FT_BAD("nesterov", c.nesterov = 2);
    FT_BAD("nesterov", c.nesterov = -1);
    FT_BAD("random_start", c.random_start = 2);
    FT_BAD("skip_misclassified", c.skip_misclassified = 2);
#undef FT_BAD
    c = base, c.index_offset = -1;
    FT_CHECK(fa_config_check(&c) == FA_ERR_ARGUMENT &&
                 strstr(fa_last_error(), "index_offset") != NULL,
             "index_offset -1: '%s'", fa_last_error());
    fa_oracle oracle = {ft_grad, NULL, NULL};
    static ft_result r;
    fa_result out = ft_view(&r, 0);
    FT_CHECK(fa_attack(&c, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, ft_y, &oracle, &out) ==
                 FA_ERR_ARGUMENT,
             "fa_attack accepted index_offset -1");
    /* values that are fine: stop_loss -inf and +inf, any seed, no stop_rmse, eps 255 */
    c = base, c.stop_loss = -INFINITY, c.seed = UINT64_MAX, c.eps = 255.0f;
    FT_CHECK(fa_config_check(&c) == FA_OK, "%s", fa_last_error());
    FT_CHECK(fa_config_check(NULL) == FA_ERR_ARGUMENT, "NULL cfg accepted");
    FT_CHECK(fa_config_default(FA_OPT_ADAM, NULL) == FA_ERR_ARGUMENT, "NULL out accepted");
    FT_CHECK(fa_config_default(FA_OPT_COUNT, &c) == FA_ERR_ARGUMENT &&
                 fa_config_default(-1, &c) == FA_ERR_ARGUMENT,
             "defaults of a bad optimizer");
}

/* Calls fa_attack on images [0, n) with the given pieces; expects `want` and no oracle call. */
static void ft_bad_call(const char *what, fa_status want, const fa_config *cfg, int device,
                        int64_t n, int64_t dim, const float *x0, const int64_t *labels,
                        int with_oracle, fa_result *out) {
    ft_oracle o = ft_oracle_plain();
    ft_oracle_init(&o, ft_y, 16.0f);
    fa_oracle oracle = {ft_grad, NULL, &o};
    const fa_status st =
        fa_attack(cfg, device, n, dim, x0, labels, with_oracle ? &oracle : NULL, out);
    FT_CHECK(st == want && o.calls == 0, "%s: %s (%s), %d oracle calls", what,
             fa_status_name(st), fa_last_error(), o.calls);
}

static void test_attack_arguments(void) {
    static ft_result r;
    static float bad[3 * FT_DIM];
    const fa_config cfg = ft_default(FA_OPT_ADAM);
    fa_result out = ft_view(&r, 0);
    const float poison[] = {256.0f, -0.5f, NAN, INFINITY};
    for (int p = 0; p < 4; p++) { /* a bad pixel in the last image of three */
        memcpy(bad, ft_x0, sizeof bad);
        bad[2 * FT_DIM + 17] = poison[p];
        ft_bad_call("bad pixel", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 3, FT_DIM, bad, ft_y, 1,
                    &out);
    }
    FT_CHECK(strstr(fa_last_error(), "x0") != NULL, "message '%s'", fa_last_error());
    const int64_t negative[2] = {ft_y[0], -1};
    ft_bad_call("label -1", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 2, FT_DIM, ft_x0, negative, 1,
                &out);
    ft_bad_call("device 7", FA_ERR_ARGUMENT, &cfg, 7, 1, FT_DIM, ft_x0, ft_y, 1, &out);
    ft_bad_call("device -1", FA_ERR_ARGUMENT, &cfg, -1, 1, FT_DIM, ft_x0, ft_y, 1, &out);
    ft_bad_call("dim 0", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, 0, ft_x0, ft_y, 1, &out);
    ft_bad_call("dim -1", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, -1, ft_x0, ft_y, 1, &out);
    ft_bad_call("n -1", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, -1, FT_DIM, ft_x0, ft_y, 1, &out);
    ft_bad_call("NULL cfg", FA_ERR_ARGUMENT, NULL, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, ft_y, 1, &out);
    ft_bad_call("NULL x0", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, FT_DIM, NULL, ft_y, 1, &out);
    ft_bad_call("NULL labels", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, NULL, 1,
                &out);
    ft_bad_call("NULL oracle", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, ft_y, 0,
                &out);
    ft_bad_call("NULL out", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, ft_y, 1, NULL);
    for (int field = 0; field < 7; field++) { /* each output array NULL in turn */
        fa_result missing = out;
        void **slot[] = {(void **)&missing.adv,        (void **)&missing.loss,
                         (void **)&missing.clean_loss, (void **)&missing.clean_pred,
                         (void **)&missing.iterations, (void **)&missing.alpha,
                         (void **)&missing.status};
        *slot[field] = NULL;
        ft_bad_call("NULL output array", FA_ERR_ARGUMENT, &cfg, FA_DEVICE_CPU, 1, FT_DIM, ft_x0,
                    ft_y, 1, &missing);
    }
    fa_oracle no_grad = {NULL, NULL, NULL};
    FT_CHECK(fa_attack(&cfg, FA_DEVICE_CPU, 1, FT_DIM, ft_x0, ft_y, &no_grad, &out) ==
                 FA_ERR_ARGUMENT,
             "oracle.grad NULL accepted");
    /* n = 0 is a valid, empty call; pixels exactly 0 and 255 are fine (the data has both) */
    ft_bad_call("n 0", FA_OK, &cfg, FA_DEVICE_CPU, 0, FT_DIM, ft_x0, ft_y, 1, &out);
    /* this build links no_cuda.c: CUDA is never available and asking for it says so */
    FT_CHECK(fa_cuda_available() == 0, "fa_cuda_available() in a CPU-only build");
    ft_bad_call("device cuda", FA_ERR_NO_CUDA, &cfg, FA_DEVICE_CUDA, 1, FT_DIM, ft_x0, ft_y, 1,
                &out);
    FT_CHECK(strstr(fa_last_error(), "CUDA") != NULL, "message '%s'", fa_last_error());
}

/* The SPEC's defaults (section 2's table, section 3's constants, the sign attacks). */
static void test_defaults(void) {
    const struct { int opt, cap; float r1; } table[] = {
        {FA_OPT_GD, 100, 0.3f}, {FA_OPT_MGD, 30, 0.01f}, {FA_OPT_NAGD, 15, 0.01f},
        {FA_OPT_ADAM, 10, 1.0f}, {FA_OPT_LADAM, 10, 1.0f}, {FA_OPT_MSVAG, 8, 0.01f},
        {FA_OPT_ADABELIEF, 10, 1.0f},
    };
    for (size_t t = 0; t < sizeof table / sizeof table[0]; t++) {
        const fa_config c = ft_default(table[t].opt);
        FT_CHECK(c.max_iter == table[t].cap && c.first_step_rmse == table[t].r1 && c.alpha == 0 &&
                     c.eps == 16.0f && c.stop_loss == 30.0f && c.skip_misclassified == 1 &&
                     c.nesterov == FA_NESTEROV_AUTHORS && c.stop_rmse == 0 && c.rmse_weight == 0,
                 "defaults of %s", fa_optimizer_name(table[t].opt));
        FT_CHECK(c.momentum == 0.9f && c.beta1 == 0.9f && c.beta2 == 0.999f && c.delta == 1e-8f &&
                     c.ladam_lambda == 1e-12f && c.msvag_beta == 0.9f && c.rmsprop_rho == 0.9f &&
                     c.adamw_decay == 0.005f,
                 "constants of %s", fa_optimizer_name(table[t].opt));
    }
    const fa_config fgsm = ft_default(FA_OPT_FGSM), pgd = ft_default(FA_OPT_PGD);
    const fa_config mi = ft_default(FA_OPT_MIFGSM), ni = ft_default(FA_OPT_NIFGSM);
    FT_CHECK(fgsm.max_iter == 1 && fgsm.alpha == 16.0f && fgsm.first_step_rmse == 0 &&
                 isinf(fgsm.stop_loss),
             "FGSM defaults");
    FT_CHECK(pgd.max_iter == 10 && pgd.alpha == 1.6f && isinf(pgd.stop_loss), "PGD defaults");
    FT_CHECK(mi.momentum == 1.0f && ni.momentum == 1.0f && mi.max_iter == 10, "MI/NI defaults");
    for (int opt = 0; opt < FA_OPT_COUNT; opt++) {
        const fa_config c = ft_default(opt);
        FT_CHECK(c.optimizer == opt && fa_config_check(&c) == FA_OK,
                 "defaults of %s fail their own check: %s", fa_optimizer_name(opt),
                 fa_last_error());
    }
}

/* ================================================================ metrics */

/* SSIM the slow way: an 11x11 Gaussian window (sigma 1.5) around every pixel 5 in from the
 * edges, population statistics, mean over the valid region, then over channels. */
static double ft_ssim_reference(int h, int w, int c, const float *a, const float *b) {
    double g[11], sum = 0.0, total = 0.0;
    for (int t = 0; t < 11; t++)
        sum += g[t] = exp(-(t - 5) * (t - 5) / (2 * 1.5 * 1.5));
    const double c1 = 2.55 * 2.55, c2 = 7.65 * 7.65;
    for (int ch = 0; ch < c; ch++)
        for (int y = 5; y < h - 5; y++)
            for (int x = 5; x < w - 5; x++) {
                double ma = 0, mb = 0, aa = 0, bb = 0, ab = 0;
                for (int dy = -5; dy <= 5; dy++)
                    for (int dx = -5; dx <= 5; dx++) {
                        const double k = g[dy + 5] * g[dx + 5] / (sum * sum);
                        const int e = ((y + dy) * w + (x + dx)) * c + ch;
                        ma += k * a[e], mb += k * b[e], aa += k * a[e] * a[e];
                        bb += k * b[e] * b[e], ab += k * a[e] * b[e];
                    }
                const double va = aa - ma * ma, vb = bb - mb * mb, cov = ab - ma * mb;
                total += (2 * ma * mb + c1) * (2 * cov + c2) /
                         ((ma * ma + mb * mb + c1) * (va + vb + c2));
            }
    return total / ((double)(h - 10) * (w - 10) * c);
}

/* Hand-computed pairs on 16x16x3: a shift of 3, identical images, a noisy pair. */
static void test_metrics_values(void) {
    enum { MH = 16, MW = 16, MC = 3, MD = MH * MW * MC };
    static float clean[4 * MD], adv[4 * MD];
    uint32_t seed = 77;
    for (int j = 0; j < 3 * MD; j++)
        clean[j] = (float)(ft_next(&seed) % 240 + 5);
    for (int j = 0; j < MD; j++) {
        const int y = j / (MW * MC), x = j / MC % MW;
        adv[j] = clean[j] + 3.0f;    /* image 0: shift of 3 */
        adv[MD + j] = clean[MD + j]; /* image 1: identical  */
        /* image 2: a smooth image and the same with integer noise in [-12, 12]: SSIM far
         * from 1, so that it is sensitive to the window, the constants and the region */
        clean[2 * MD + j] = (float)(120.0 + 40.0 * sin(x / 3.0) * cos(y / 4.0) + 5 * (j % MC));
        adv[2 * MD + j] = clean[2 * MD + j] + (float)((int)(ft_next(&seed) % 25) - 12);
        /* image 3: dark, brightened by 0..6: the luminance term and C1 matter */
        clean[3 * MD + j] = (float)(4.0 + 3.0 * sin(x / 2.0 + y / 5.0));
        adv[3 * MD + j] = clean[3 * MD + j] + (float)(ft_next(&seed) % 7);
    }
    float rmse[4], linf[4], l2[4], l1[4], l0[4], psnr[4], ssim[4];
    fa_metrics m = {rmse, linf, l2, l1, l0, psnr, ssim};
    FT_CHECK(fa_metrics_compute(4, MH, MW, MC, adv, clean, &m) == FA_OK, "%s", fa_last_error());
    FT_CHECK(fabsf(rmse[0] - 3) < 1e-5f && fabsf(linf[0] - 3) < 1e-5f && fabsf(l1[0] - 3) < 1e-5f,
             "shift: rmse %g linf %g l1 %g", (double)rmse[0], (double)linf[0], (double)l1[0]);
    FT_CHECK(fabs(l2[0] - 3.0 * sqrt(768.0)) < 1e-3 && l0[0] == 1.0f, "shift: l2 %g l0 %g",
             (double)l2[0], (double)l0[0]);
    FT_CHECK(fabs(psnr[0] - 20.0 * log10(255.0 / 3.0)) < 1e-4, "shift: psnr %g", (double)psnr[0]);
    FT_CHECK(ssim[0] < 1.0f && fabs(ssim[0] - ft_ssim_reference(MH, MW, MC, adv, clean)) < 1e-6,
             "shift: ssim %.7g, reference %.7g", (double)ssim[0],
             ft_ssim_reference(MH, MW, MC, adv, clean));
    FT_CHECK(rmse[1] == 0 && linf[1] == 0 && l2[1] == 0 && l1[1] == 0 && l0[1] == 0 &&
                 isinf(psnr[1]) && psnr[1] > 0 && ssim[1] == 1.0f,
             "identical: rmse %g psnr %g ssim %.9g", (double)rmse[1], (double)psnr[1],
             (double)ssim[1]);
    const double ref2 = ft_ssim_reference(MH, MW, MC, adv + 2 * MD, clean + 2 * MD);
    FT_CHECK(fabs(ssim[2] - ref2) < 1e-6 && ref2 < 0.9, "noise: ssim %.7g, reference %.7g",
             (double)ssim[2], ref2);
    const double ref3 = ft_ssim_reference(MH, MW, MC, adv + 3 * MD, clean + 3 * MD);
    FT_CHECK(fabs(ssim[3] - ref3) < 1e-6 && ref3 < 0.9, "dark: ssim %.7g, reference %.7g",
             (double)ssim[3], ref3);
    double most = 0.0, changed = 0.0;
    for (int j = 2 * MD; j < 3 * MD; j++) {
        const double e = fabs((double)adv[j] - clean[j]);
        most = fmax(most, e), changed += e > 0.5;
    }
    FT_CHECK(fabs(linf[2] - most) < 1e-6 && fabs(l0[2] - changed / MD) < 1e-6,
             "noise: linf %g (%g), l0 %g (%g)", (double)linf[2], most, (double)l0[2],
             changed / MD);
}

/* l0 counts |delta| > 0.5 only; SSIM needs 11x11 (NaN below); NULL arrays are skipped. */
static void test_metrics_edges(void) {
    static float clean[11 * 11 * 2], adv[11 * 11 * 2];
    for (int j = 0; j < 11 * 11 * 2; j++)
        clean[j] = 100.0f, adv[j] = 100.0f + (j % 2 ? 0.5f : 0.75f);
    float l0, ssim = 0.0f, psnr;
    fa_metrics m = {0};
    m.l0 = &l0, m.ssim = &ssim;
    FT_CHECK(fa_metrics_compute(1, 11, 11, 2, adv, clean, &m) == FA_OK && l0 == 0.5f &&
                 isfinite(ssim),
             "l0 %g ssim %g", (double)l0, (double)ssim);
    FT_CHECK(fa_metrics_compute(1, 10, 11, 2, adv, clean, &m) == FA_OK && isnan(ssim),
             "10x11 ssim %g", (double)ssim);
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, adv, clean, &m) == FA_OK && isnan(ssim),
             "5x5 ssim %g", (double)ssim);
    fa_metrics only_psnr = {0};
    only_psnr.psnr = &psnr;
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, adv, clean, &only_psnr) == FA_OK && isfinite(psnr),
             "psnr only");
    fa_metrics none = {0};
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, adv, clean, &none) == FA_OK, "no arrays");
    FT_CHECK(fa_metrics_compute(0, 5, 5, 3, adv, clean, &m) == FA_OK, "n = 0");
    const int64_t bad[][4] = {
        {-1, 5, 5, 3}, {1, 0, 5, 3}, {1, 5, 0, 3}, {1, 5, 5, 0}, {1, -5, 5, 3}};
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++)
        FT_CHECK(fa_metrics_compute(bad[t][0], bad[t][1], bad[t][2], bad[t][3], adv, clean, &m) ==
                     FA_ERR_ARGUMENT,
                 "shape %lld %lld %lld %lld accepted", (long long)bad[t][0], (long long)bad[t][1],
                 (long long)bad[t][2], (long long)bad[t][3]);
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, NULL, clean, &m) == FA_ERR_ARGUMENT, "NULL adv");
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, adv, NULL, &m) == FA_ERR_ARGUMENT, "NULL clean");
    FT_CHECK(fa_metrics_compute(1, 5, 5, 3, adv, clean, NULL) == FA_ERR_ARGUMENT, "NULL out");
}

/* ================================================================ name tables */

static void test_names(void) {
    const char *const opt[] = {"GD",      "MGD",   "NAGD", "Adam", "LAdam", "AdaB",    "MSVAG",
                               "RMSProp", "AdamW", "Yogi", "FGSM", "PGD",   "MI-FGSM", "NI-FGSM",
                               "VMI-FGSM", "VNI-FGSM"};
    const char *const image[] = {"running", "stop_loss", "stop_rmse", "max_iter", "skipped", "nan"};
    const char *const status[] = {"FA_OK",          "FA_ERR_ARGUMENT", "FA_ERR_TYPE",
                                  "FA_ERR_MEMORY",  "FA_ERR_MODEL",    "FA_ERR_IO",
                                  "FA_ERR_CUDA",    "FA_ERR_NO_CUDA",  "FA_ERR_INTERRUPTED",
                                  "FA_ERR_INTERNAL"};
    FT_CHECK(sizeof opt / sizeof opt[0] == FA_OPT_COUNT, "optimizer count");
    for (int i = 0; i < FA_OPT_COUNT; i++)
        FT_CHECK(fa_optimizer_name(i) && strcmp(fa_optimizer_name(i), opt[i]) == 0,
                 "optimizer %d: %s", i, fa_optimizer_name(i));
    FT_CHECK(sizeof image / sizeof image[0] == FA_IMAGE_STATUS_COUNT, "image status count");
    for (int i = 0; i < FA_IMAGE_STATUS_COUNT; i++)
        FT_CHECK(fa_image_status_name(i) && strcmp(fa_image_status_name(i), image[i]) == 0,
                 "image status %d: %s", i, fa_image_status_name(i));
    for (int i = 0; i <= FA_ERR_INTERNAL; i++)
        FT_CHECK(strcmp(fa_status_name(i), status[i]) == 0, "status %d: %s", i, fa_status_name(i));
    FT_CHECK(fa_optimizer_name(-1) == NULL && fa_optimizer_name(FA_OPT_COUNT) == NULL &&
                 fa_optimizer_name(1000) == NULL,
             "optimizer names out of range");
    FT_CHECK(fa_image_status_name(-1) == NULL &&
                 fa_image_status_name(FA_IMAGE_STATUS_COUNT) == NULL,
             "image status names out of range");
    FT_CHECK(strcmp(fa_status_name(-1), "FA_UNKNOWN") == 0 &&
                 strcmp(fa_status_name(FA_ERR_INTERNAL + 1), "FA_UNKNOWN") == 0,
             "status names out of range");
    /* fa_set_error returns its status and formats; fa_clear_error empties the message */
    FT_CHECK(fa_set_error(FA_ERR_IO, "x=%d", 42) == FA_ERR_IO &&
                 strcmp(fa_last_error(), "x=42") == 0,
             "fa_set_error: '%s'", fa_last_error());
    fa_clear_error();
    FT_CHECK(fa_last_error()[0] == '\0', "fa_clear_error");
    FT_CHECK(strcmp(FA_VERSION, "") != 0, "FA_VERSION");
}

/* ================================================================ returns, loss calls (SPEC 2) */

/* returns last: an image at the cap comes back as its last iterate with the loss there; no
 * per-step loss is asked for when no rule needs it (gradient-only calls), one at x0 and one at
 * the end; NI-FGSM then takes one oracle call a step, not two. */
static void test_returns_last(void) {
    static ft_result r;
    char what[96];
    const int opts[] = {FA_OPT_PGD, FA_OPT_MIFGSM, FA_OPT_NIFGSM, FA_OPT_ADAM, FA_OPT_NAGD};
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++) {
        ft_oracle o = ft_oracle_plain();
        fa_config cfg = ft_default(opts[t]);
        cfg.max_iter = 5, cfg.stop_loss = INFINITY, cfg.returns = FA_RETURNS_LAST;
        if (cfg.first_step_rmse > 0.0f)
            cfg.first_step_rmse = 1.0f;
        snprintf(what, sizeof what, "%s returns last", fa_optimizer_name(opts[t]));
        if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, what) != FA_OK)
            continue;
        for (int i = 0; i < FT_N; i++) {
            ft_check_image(what, &cfg, &r, i);
            ft_reference ref;
            ft_reference_run(&cfg, ft_x0 + i * FT_DIM, ft_y[i], r.alpha[i], 0, i, &ref);
            float worst = 0.0f;
            for (int j = 0; j < FT_DIM; j++)
                worst = fmaxf(worst, fabsf(ref.adv[j] - r.adv[i * FT_DIM + j]));
            FT_CHECK(worst <= 1e-3f && r.status[i] == FA_IMAGE_MAX_ITER,
                     "%s image %d: max |adv - reference| %g", what, i, (double)worst);
            /* x0, max_iter steps' gradients (look-ahead ones for NAGD/NI from step 1), the end */
            FT_CHECK(o.seen[i] == cfg.max_iter + 1, "%s image %d: asked %d times, expected %d",
                     what, i, o.seen[i], cfg.max_iter + 1);
        }
        FT_CHECK(o.loss_free_calls == FT_N * (cfg.max_iter - 1),
                 "%s: %d rows asked without the loss, expected %d", what, o.loss_free_calls,
                 FT_N * (cfg.max_iter - 1));
    }
    /* returns best (the default of the loss-stopped settings) still asks for the loss */
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_NIFGSM);
    cfg.max_iter = 5, cfg.returns = FA_RETURNS_BEST;
    if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "NI-FGSM returns best") == FA_OK)
        FT_CHECK(o.seen[0] == 2 * cfg.max_iter, "NI-FGSM returns best: image 0 asked %d times",
                 o.seen[0]);
}

/* SPEC 4: with a random start the calibrated first step has RMSE r1 measured from the start. */
static void test_calibration_random_start(void) {
    static ft_result r;
    ft_oracle o = ft_oracle_plain();
    fa_config cfg = ft_default(FA_OPT_ADAM);
    cfg.random_start = 1, cfg.seed = 11, cfg.max_iter = 1, cfg.stop_loss = INFINITY;
    cfg.first_step_rmse = 0.5f, cfg.returns = FA_RETURNS_LAST;
    if (ft_attack(&cfg, &o, ft_y, 0, FT_N, &r, "calibration from the random start") != FA_OK)
        return;
    for (int i = 0; i < FT_N; i++) {
        const float *x0 = ft_x0 + i * FT_DIM;
        float start[FT_DIM];
        for (int j = 0; j < FT_DIM; j++)
            start[j] = fa_random_value(x0[j], cfg.eps, cfg.seed, i, j);
        const double step = ft_rmse(r.adv + i * FT_DIM, start);
        FT_CHECK(fabs(step - 0.5) <= 0.5 * 1e-2, "image %d: first step RMSE %g from the start",
                 i, step);
    }
}

/* ================================================================ fair budgets (SPEC 8) */

/* The exact projection written independently: bisection on mu of clip(mu * t, lo, hi). */
static void ft_project_reference(const float *x0, const float *y, float eps, float r,
                                 double *out) {
    double lo[FT_DIM], hi[FT_DIM], t[FT_DIM];
    for (int j = 0; j < FT_DIM; j++) {
        lo[j] = fmax(-eps, -x0[j]), hi[j] = fmin(eps, 255.0 - x0[j]), t[j] = y[j] - x0[j];
    }
    double a = 0.0, b = 1.0;
    for (int it = 0; it < 200; it++) {
        const double mu = it == 0 ? 1.0 : 0.5 * (a + b);
        double s = 0.0;
        for (int j = 0; j < FT_DIM; j++) {
            const double v = fmin(fmax(mu * t[j], lo[j]), hi[j]);
            s += v * v;
        }
        const int ok = sqrt(s / FT_DIM) <= r;
        if (it == 0 && ok) {
            a = 1.0;
            break;
        }
        if (it > 0)
            *(ok ? &a : &b) = mu;
    }
    for (int j = 0; j < FT_DIM; j++)
        out[j] = x0[j] + fmin(fmax(a * t[j], lo[j]), hi[j]);
}

static void test_project_rmse(void) {
    uint32_t seed = 77u;
    float y[FT_N * FT_DIM], out[FT_N * FT_DIM];
    const float eps = 10.0f, budget = 4.0f;
    for (int e = 0; e < FT_N * FT_DIM; e++) /* far outside: the box, the ball and the budget */
        y[e] = ft_x0[e] + (float)((int)(ft_next(&seed) % 81) - 40);
    FT_CHECK(fa_project_rmse(FT_N, FT_DIM, ft_x0, y, eps, budget, out) == FA_OK, "%s",
             fa_last_error());
    for (int i = 0; i < FT_N; i++) {
        const float *x0 = ft_x0 + i * FT_DIM, *p = out + i * FT_DIM;
        double ref[FT_DIM], worst = 0.0, d_p = 0.0;
        ft_project_reference(x0, y + i * FT_DIM, eps, budget, ref);
        for (int j = 0; j < FT_DIM; j++) {
            worst = fmax(worst, fabs(ref[j] - p[j]));
            d_p += ((double)p[j] - y[i * FT_DIM + j]) * ((double)p[j] - y[i * FT_DIM + j]);
        }
        FT_CHECK(worst <= 1e-4, "image %d: max |projection - reference| %g", i, worst);
        FT_CHECK(ft_rmse(p, x0) <= budget * (1 + 1e-5), "image %d: RMSE %g", i, ft_rmse(p, x0));
        /* optimality: feasible points near p are never closer to y */
        int closer = 0;
        for (int trial = 0; trial < 200; trial++) {
            float q[FT_DIM];
            double d_q = 0.0;
            for (int j = 0; j < FT_DIM; j++) {
                const float lo = fmaxf(-eps, -x0[j]), hi = fminf(eps, 255.0f - x0[j]);
                const float dq = (p[j] - x0[j]) + ((float)(ft_next(&seed) % 201) - 100.0f) * 0.01f;
                q[j] = x0[j] + fminf(fmaxf(dq, lo), hi);
            }
            if (ft_rmse(q, x0) > budget)
                continue; /* not feasible */
            for (int j = 0; j < FT_DIM; j++)
                d_q += ((double)q[j] - y[i * FT_DIM + j]) * ((double)q[j] - y[i * FT_DIM + j]);
            closer += d_q < d_p * (1 - 1e-9);
        }
        FT_CHECK(closer == 0, "image %d: %d feasible points closer to y than the projection", i,
                 closer);
    }
    /* inside the budget already: the plain l-inf projection; budget 0: likewise */
    float plain[FT_N * FT_DIM];
    FT_CHECK(fa_project_rmse(FT_N, FT_DIM, ft_x0, y, eps, 0.0f, plain) == FA_OK &&
                 fa_project_rmse(FT_N, FT_DIM, ft_x0, y, eps, 1000.0f, out) == FA_OK &&
                 memcmp(plain, out, sizeof plain) == 0,
             "a budget that does not bind changes the projection");
    FT_CHECK(fa_project_rmse(1, FT_DIM, ft_x0, y, -1.0f, 1.0f, out) == FA_ERR_ARGUMENT &&
                 strstr(fa_last_error(), "eps") != NULL,
             "eps < 0: %s", fa_last_error());
    FT_CHECK(fa_project_rmse(1, FT_DIM, ft_x0, y, 8.0f, -1.0f, out) == FA_ERR_ARGUMENT &&
                 strstr(fa_last_error(), "max_rmse") != NULL,
             "max_rmse < 0: %s", fa_last_error());
}

static void test_match_rmse(void) {
    enum { N = 4 };
    float clean[N * FT_DIM], adv[N * FT_DIM], out[N * FT_DIM], out2[N * FT_DIM];
    float target[N], scale[N], rm[N];
    int32_t reached[N];
    uint32_t seed = 5u;
    const float eps = 16.0f;
    for (int e = 0; e < N * FT_DIM; e++) { /* integer images, sign-attack-like perturbations */
        clean[e] = (float)(ft_next(&seed) % 256);
        const float d = (ft_next(&seed) % 3 == 0) ? 0.0f : ((ft_next(&seed) & 1) ? 16.0f : -16.0f);
        adv[e] = fminf(fmaxf(clean[e] + d, 0.0f), 255.0f);
    }
    for (int e = 0; e < FT_DIM; e++) /* image 3: no perturbation at all */
        adv[3 * FT_DIM + e] = clean[3 * FT_DIM + e];
    const float targets[] = {2.0f, 6.0f, 11.0f};
    for (int q = 0; q < 3; q++)
        for (int mode = FA_MATCH_FLOAT; mode <= FA_MATCH_UINT8_AT_MOST; mode++) {
            for (int i = 0; i < N; i++)
                target[i] = targets[q];
            FT_CHECK(fa_match_rmse(N, FT_DIM, clean, adv, target, eps, mode, 0.05f, out, scale,
                                   rm, reached) == FA_OK,
                     "%s", fa_last_error());
            for (int i = 0; i < 3; i++) {
                const float *c = clean + i * FT_DIM, *o = out + i * FT_DIM;
                int bad = 0;
                for (int j = 0; j < FT_DIM; j++)
                    bad += fabsf(o[j] - c[j]) > eps || o[j] < 0.0f || o[j] > 255.0f ||
                           (mode != FA_MATCH_FLOAT && o[j] != rintf(o[j]));
                const double got = ft_rmse(o, c);
                FT_CHECK(bad == 0 && reached[i] && fabs(got - targets[q]) <= 0.05 &&
                             fabs(got - rm[i]) <= 1e-4 &&
                             (mode != FA_MATCH_UINT8_AT_MOST || got <= targets[q]),
                         "target %g mode %d image %d: RMSE %g (reported %g), reached %d, %d bad "
                         "values", (double)targets[q], mode, i, got, (double)rm[i], reached[i], bad);
            }
            FT_CHECK(!reached[3] && scale[3] == 0.0f, "no perturbation: reached %d, scale %g",
                     reached[3], (double)scale[3]);
            /* idempotent: matching the matched images again changes nothing */
            FT_CHECK(fa_match_rmse(3, FT_DIM, clean, out, target, eps, mode, 0.05f, out2, scale,
                                   rm, reached) == FA_OK &&
                         memcmp(out, out2, 3 * FT_DIM * sizeof(float)) == 0,
                     "matching twice (target %g, mode %d) is not idempotent", (double)targets[q],
                     mode);
        }
    /* a target above what saturating every value gives: unreachable, the saturated image */
    for (int i = 0; i < N; i++)
        target[i] = 15.9f;
    FT_CHECK(fa_match_rmse(1, FT_DIM, clean, adv, target, eps, FA_MATCH_UINT8, 0.05f, out, scale,
                           rm, reached) == FA_OK && !reached[0] && rm[0] < 15.9f &&
                 rm[0] > 10.0f,
             "unreachable: reached %d, RMSE %g", reached[0], (double)rm[0]);
    /* bad arguments name what is wrong */
    target[0] = -1.0f;
    FT_CHECK(fa_match_rmse(1, FT_DIM, clean, adv, target, eps, 1, 0.05f, out, scale, rm,
                           reached) == FA_ERR_ARGUMENT && strstr(fa_last_error(), "target[0]"),
             "negative target: %s", fa_last_error());
    target[0] = 4.0f;
    FT_CHECK(fa_match_rmse(1, FT_DIM, clean, adv, target, eps, 7, 0.05f, out, scale, rm,
                           reached) == FA_ERR_ARGUMENT && strstr(fa_last_error(), "quantize"),
             "bad mode: %s", fa_last_error());
    adv[5] = NAN;
    FT_CHECK(fa_match_rmse(1, FT_DIM, clean, adv, target, eps, 1, 0.05f, out, scale, rm,
                           reached) == FA_ERR_ARGUMENT && strstr(fa_last_error(), "adv[5]"),
             "NaN in adv: %s", fa_last_error());
}

int main(void) {
    ft_make_data(12345u);
    test_names();
    test_defaults();
    test_config_checks();
    test_attack_arguments();
    test_invariants();
    test_max_iter_zero();
    test_update_rules();
    test_batching();
    test_random_start();
    test_calibration_targets();
    test_calibration_unreachable();
    test_calibration_zero_gradient();
    test_stop_loss();
    test_stop_rmse();
    test_skip();
    test_nan();
    test_oracle_errors();
    test_interrupt();
    test_metrics_values();
    test_metrics_edges();
    test_returns_last();
    test_calibration_random_start();
    test_project_rmse();
    test_match_rmse();
    printf("test_core: %d checks, %d failed\n", ft_checks, ft_failed);
    return ft_failed != 0;
}
