/*
 * fuzz_core.c -- a libFuzzer target over the core's public entry points (fairattack.h), built
 * with ASan and UBSan (make -C csrc/tests fuzz): every input decodes into a config (any bits:
 * NaN, inf, negative, huge), a shape, values and an oracle whose gradients, losses and
 * predictions come from the input too (NaN and inf included), then drives fa_config_check,
 * fa_attack, fa_metrics_compute, fa_project_rmse and fa_match_rmse. Any status is fine; a crash,
 * a sanitizer report, a hang or a result that breaks the contract (an image outside eps or the
 * box, an unknown status) is not. The CPU backend only (no GPU on a fuzzing machine).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fairattack.h"

typedef struct {
    const uint8_t *p;
    size_t left;
} ft_bytes;

static uint32_t ft_u32(ft_bytes *b) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        v = v << 8 | (b->left ? *b->p : 0x5a);
        if (b->left)
            b->p++, b->left--;
    }
    return v;
}

static float ft_any_float(ft_bytes *b) {
    const uint32_t u = ft_u32(b);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* A float from a small palette of interesting values or the raw bits. */
static float ft_float(ft_bytes *b) {
    static const float palette[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 255.0f, 256.0f, 1e-30f,
                                    1e30f, 16.0f, 0.3f, 2.0f, INFINITY, -INFINITY, NAN};
    const uint32_t pick = ft_u32(b) % 24;
    return pick < 15 ? palette[pick] : ft_any_float(b);
}

typedef struct {
    ft_bytes src; /* the oracle's own stream of bytes */
    int64_t k, calls;
    int64_t dim;
    float eps;
    const float *x0;
    int bad; /* a point outside the box or the eps-ball (beyond rounding) was seen */
} ft_oracle;

static fa_status ft_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                         const float *x, int want_grad, float *loss, int64_t *pred,
                         float *grad) {
    ft_oracle *o = ctx;
    (void)labels;
    if (++o->calls > 400)
        return fa_set_error(FA_ERR_MODEL, "fuzz oracle: too many calls");
    const uint32_t mode = ft_u32(&o->src);
    if (mode % 97 == 0)
        return fa_set_error(FA_ERR_MODEL, "fuzz oracle: a failing call");
    (void)index;
    for (int64_t i = 0; i < n; i++) {
        int nan_row = 0; /* a model gives NaN logits, so NaN loss, for a NaN input */
        for (int64_t j = 0; j < o->dim; j++) {
            const float v = x[i * o->dim + j];
            nan_row |= isnan(v);
            if (!isnan(v) && !(v >= -1e-3f && v <= 255.001f))
                o->bad = 1;
            if (want_grad)
                grad[i * o->dim + j] = mode % 3 == 0 ? ft_float(&o->src)
                                                     : (float)((int)(ft_u32(&o->src) % 2001) - 1000);
        }
        if (loss)
            loss[i] = nan_row ? NAN
                      : mode % 5 == 0 ? ft_float(&o->src)
                                      : (float)(ft_u32(&o->src) % 4000) / 100;
        if (pred)
            pred[i] = (int64_t)(ft_u32(&o->src) % (uint32_t)o->k);
        if (nan_row && want_grad)
            for (int64_t j = 0; j < o->dim; j++)
                grad[i * o->dim + j] = NAN;
    }
    return FA_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ft_bytes b = {data, size};
    const int64_t n = ft_u32(&b) % 5, h = 1 + ft_u32(&b) % 6, w = 1 + ft_u32(&b) % 6;
    const int64_t c = 1 + ft_u32(&b) % 3, dim = h * w * c;
    fa_config cfg;
    const int opt = (int)(ft_u32(&b) % (FA_OPT_COUNT + 1)); /* one past the end: refused */
    if (fa_config_default(opt, &cfg) != FA_OK)
        fa_config_default(FA_OPT_PGD, &cfg);
    /* each field: the default, or a value from the input */
    float *floats[] = {&cfg.eps, &cfg.first_step_rmse, &cfg.alpha, &cfg.stop_loss,
                       &cfg.stop_rmse, &cfg.rmse_weight, &cfg.momentum, &cfg.beta1,
                       &cfg.beta2, &cfg.delta, &cfg.ladam_lambda, &cfg.adamw_decay,
                       &cfg.msvag_beta, &cfg.rmsprop_rho, &cfg.max_rmse};
    const uint32_t which = ft_u32(&b);
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        if (which >> i & 1)
            *floats[i] = ft_float(&b);
    const uint32_t ints = ft_u32(&b);
    cfg.max_iter = (int)(ints % 9) - 1;                  /* -1 (refused) .. 7 */
    cfg.nesterov = (int)(ints >> 4 & 3) - 1;
    cfg.random_start = (int)(ints >> 6 & 3) - 1;
    cfg.skip_misclassified = (int)(ints >> 8 & 3) - 1;
    cfg.returns = (int)(ints >> 10 & 3) - 1;
    cfg.seed = ft_u32(&b);
    cfg.index_offset = (int64_t)(ints >> 12 & 7) - 1;
    if (cfg.optimizer == FA_OPT_PGD && (ints >> 15 & 1))
        cfg.optimizer = opt; /* also an out-of-range optimizer */
    const fa_status checked = fa_config_check(&cfg);

    float *x0 = calloc((size_t)(n * dim) + 1, sizeof(float));
    float *other = calloc((size_t)(n * dim) + 1, sizeof(float));
    float *out = calloc((size_t)(n * dim) + 1, sizeof(float));
    float *per[8];
    int64_t labels[8], clean_pred[8];
    int32_t iterations[8], status[8], reached[8];
    for (int i = 0; i < 8; i++)
        per[i] = calloc(8, sizeof(float));
    const int raw = ft_u32(&b) % 4 == 0; /* pixels outside [0, 255]: refused */
    for (int64_t e = 0; e < n * dim; e++) {
        x0[e] = raw ? ft_float(&b) : (float)(ft_u32(&b) % 256);
        other[e] = ft_u32(&b) % 3 == 0 ? ft_float(&b) : x0[e] + (float)((int)(ft_u32(&b) % 41) - 20);
    }
    const int64_t k = 1 + ft_u32(&b) % 5;
    for (int64_t i = 0; i < n; i++)
        labels[i] = (int64_t)(ft_u32(&b) % (uint32_t)(k + 1)) - (ft_u32(&b) % 17 == 0);

    ft_oracle o = {b, k, 0, dim, cfg.eps, x0, 0};
    fa_oracle oracle = {ft_grad, NULL, &o};
    fa_result res = {out, per[0], per[1], clean_pred, iterations, per[2], status};
    const fa_status st = fa_attack(&cfg, FA_DEVICE_CPU, n, dim, x0, labels, &oracle, &res);
    if (st == FA_OK && checked == FA_OK) {
        for (int64_t i = 0; i < n; i++) {
            if (status[i] <= FA_IMAGE_RUNNING || status[i] >= FA_IMAGE_STATUS_COUNT)
                abort(); /* every image gets a final status */
            for (int64_t j = 0; j < dim; j++) {
                const float v = out[i * dim + j], d = v - x0[i * dim + j];
                if (!(v >= 0.0f && v <= 255.0f) || !(fabsf(d) <= cfg.eps * 1.0001f + 1e-3f))
                    abort(); /* a returned image outside the box or the eps-ball */
            }
        }
        /* NI's look-ahead is unprojected; VMI/VNI's neighbours lie in the ball of
         * vmi_beta * eps around the iterate (VNI's look-ahead too) */
        if (o.bad && cfg.optimizer != FA_OPT_NIFGSM && cfg.optimizer < FA_OPT_VMIFGSM)
            abort(); /* the oracle was asked about a point outside the box */
    } else if (st == FA_OK && checked != FA_OK) {
        abort(); /* fa_attack accepted a config fa_config_check refuses */
    }

    fa_metrics some = {per[3], NULL, per[5], NULL, per[7], NULL, NULL}; /* NULL: not computed */
    (void)fa_metrics_compute(n, h, w, c, other, x0, &some);
    fa_metrics all = {per[3], per[4], per[5], per[6], per[7], per[0], per[1]};
    (void)fa_metrics_compute(n, h, w, c, other, x0, &all);

    const float eps = ft_float(&b), max_rmse = ft_float(&b);
    if (fa_project_rmse(n, dim, x0, other, eps, max_rmse, out) == FA_OK)
        for (int64_t e = 0; e < n * dim; e++)
            if (!(fabsf(out[e] - x0[e]) <= eps * 1.0001f + 1e-3f))
                abort();
    float target[8];
    for (int i = 0; i < 8; i++)
        target[i] = ft_u32(&b) % 4 == 0 ? ft_float(&b) : (float)(ft_u32(&b) % 3000) / 100;
    const int mode = (int)(ft_u32(&b) % 4);
    (void)fa_match_rmse(n, dim, x0, other, target, eps, mode, ft_float(&b), out, per[5], per[6],
                        reached);

    free(x0), free(other), free(out);
    for (int i = 0; i < 8; i++)
        free(per[i]);
    return 0;
}
