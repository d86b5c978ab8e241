/*
 * test_core.c -- the C core alone: a synthetic oracle (a linear softmax classifier with an
 * exact gradient, evaluated image by image), no model, no Python, no LibTorch.
 * Built and run by csrc/tests/Makefile, also under AddressSanitizer and UBSan.
 * Exit status: the number of failed checks (0: all passed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fairattack.h"

static int checks, failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s -- ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

/* ---------------------------------------------------------------- the synthetic oracle */

enum { H = 6, W = 5, C = 3, DIM = H * W * C, K = 4, MAX_N = 8 };

typedef struct {
    float w[K][DIM], b[K];
    int64_t calls_per_image[64]; /* by image index                          */
    int64_t nan_index;           /* this image's loss becomes NaN (-1: none) */
    int fail_after;              /* the oracle fails on this call (-1: never) */
    int calls;
    int zero_grad;               /* the gradient is 0 everywhere             */
    int stop;                    /* should_stop answers this                 */
} linear_oracle;

static void oracle_init(linear_oracle *o, unsigned seed) {
    memset(o, 0, sizeof *o);
    srand(seed);
    for (int k = 0; k < K; k++) {
        for (int j = 0; j < DIM; j++)
            o->w[k][j] = (float)(rand() % 2001 - 1000) / 1000.0f * 3.0f;
        o->b[k] = (float)(rand() % 201 - 100) / 1000.0f;
    }
    o->nan_index = -1;
    o->fail_after = -1;
}

/* CE, argmax and d CE / d x of one image, in double. */
static void one_image(const linear_oracle *o, const float *x, int64_t y, float *loss,
                      int64_t *pred, float *grad) {
    double z[K], zmax = -INFINITY, sum = 0.0;
    int64_t best = 0;
    for (int k = 0; k < K; k++) {
        z[k] = o->b[k];
        for (int j = 0; j < DIM; j++)
            z[k] += (double)o->w[k][j] * x[j] / 255.0;
        if (z[k] > zmax)
            zmax = z[k], best = k;
    }
    for (int k = 0; k < K; k++)
        sum += exp(z[k] - zmax);
    *loss = (float)(log(sum) - (z[y] - zmax));
    *pred = best;
    if (grad)
        for (int j = 0; j < DIM; j++) {
            double g = 0.0;
            for (int k = 0; k < K; k++)
                g += (exp(z[k] - zmax) / sum - (k == y)) * o->w[k][j] / 255.0;
            grad[j] = o->zero_grad ? 0.0f : (float)g;
        }
}

static fa_status oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                             const float *x, int want_grad, float *loss, int64_t *pred,
                             float *grad) {
    linear_oracle *o = ctx;
    if (o->fail_after >= 0 && o->calls >= o->fail_after)
        return fa_set_error(FA_ERR_MODEL, "synthetic oracle failure on call %d", o->calls);
    o->calls++;
    for (int64_t i = 0; i < n; i++) {
        o->calls_per_image[index[i]]++;
        one_image(o, x + i * DIM, labels[i], &loss[i], &pred[i],
                  want_grad ? grad + i * DIM : NULL);
        if (index[i] == o->nan_index)
            loss[i] = NAN;
    }
    return FA_OK;
}

static int stop_now(void *ctx) { return ((linear_oracle *)ctx)->stop; }

/* ---------------------------------------------------------------- a batch and its result */

typedef struct {
    float adv[MAX_N * DIM], loss[MAX_N], clean_loss[MAX_N], alpha[MAX_N];
    int64_t clean_pred[MAX_N];
    int32_t iterations[MAX_N], status[MAX_N];
} result_store;

static fa_result result_of(result_store *r) {
    fa_result out = {r->adv, r->loss, r->clean_loss, r->clean_pred, r->iterations, r->alpha,
                     r->status};
    return out;
}

static float x0[MAX_N * DIM];
static int64_t labels[MAX_N];

/* MAX_N images with random pixels (some saturated) labelled with the oracle's own prediction,
 * so that every image is attacked. */
static void make_batch(const linear_oracle *o, unsigned seed) {
    srand(seed);
    for (int j = 0; j < MAX_N * DIM; j++)
        x0[j] = (float)(rand() % 256);
    for (int j = 0; j < 6; j++)
        x0[j] = 255.0f, x0[DIM + j] = 0.0f;
    for (int i = 0; i < MAX_N; i++) {
        float loss;
        one_image(o, x0 + i * DIM, 0, &loss, &labels[i], NULL);
    }
}

static fa_status run(const fa_config *cfg, linear_oracle *o, int64_t n, const float *x,
                     const int64_t *y, result_store *r) {
    fa_oracle oracle = {oracle_grad, NULL, o};
    fa_result out = result_of(r);
    return fa_attack(cfg, FA_DEVICE_CPU, n, DIM, x, y, &oracle, &out);
}

static double rmse_of(const float *a, const float *b) {
    double s = 0.0;
    for (int j = 0; j < DIM; j++)
        s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
    return sqrt(s / DIM);
}

/* ---------------------------------------------------------------- tests */

/* Every optimizer: pixels in the box and the eps-ball, a terminal status, best iterate. */
static void test_invariants(void) {
    linear_oracle o;
    oracle_init(&o, 1);
    make_batch(&o, 2);
    for (int opt = 0; opt < FA_OPT_COUNT; opt++) {
        fa_config cfg;
        fa_config_default(opt, &cfg);
        cfg.eps = 8.0f;
        cfg.max_iter = 6;
        static result_store r;
        CHECK(run(&cfg, &o, MAX_N, x0, labels, &r) == FA_OK, "%s: %s", fa_optimizer_name(opt),
              fa_last_error());
        for (int i = 0; i < MAX_N; i++) {
            float worst = 0.0f;
            for (int j = 0; j < DIM; j++) {
                const float v = r.adv[i * DIM + j], d = fabsf(v - x0[i * DIM + j]);
                CHECK(v >= 0.0f && v <= 255.0f, "%s image %d value %g", fa_optimizer_name(opt),
                      i, (double)v);
                worst = d > worst ? d : worst;
            }
            CHECK(worst <= 8.0f + 1e-4f, "%s image %d: |delta| %g > eps", fa_optimizer_name(opt),
                  i, (double)worst);
            CHECK(r.status[i] == FA_IMAGE_STOP_LOSS || r.status[i] == FA_IMAGE_MAX_ITER,
                  "%s image %d status %d", fa_optimizer_name(opt), i, r.status[i]);
            CHECK(r.iterations[i] <= 6 && r.alpha[i] > 0.0f, "%s image %d", fa_optimizer_name(opt),
                  i);
            if (r.status[i] == FA_IMAGE_MAX_ITER)
                CHECK(r.loss[i] >= r.clean_loss[i], "%s image %d: best loss %g < clean %g",
                      fa_optimizer_name(opt), i, (double)r.loss[i], (double)r.clean_loss[i]);
        }
    }
}

/* One batch of 6 equals batches of 1 + 2 + 3, bit for bit (index_offset keeps the randomness). */
static void test_batching(void) {
    const int opts[] = {FA_OPT_GD, FA_OPT_NAGD, FA_OPT_ADAM, FA_OPT_MSVAG, FA_OPT_PGD};
    linear_oracle o;
    oracle_init(&o, 3);
    make_batch(&o, 4);
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++) {
        fa_config cfg;
        fa_config_default(opts[t], &cfg);
        cfg.max_iter = 5;
        cfg.random_start = opts[t] == FA_OPT_PGD;
        cfg.seed = 99;
        static result_store whole, part;
        run(&cfg, &o, 6, x0, labels, &whole);
        const int start[] = {0, 1, 3}, count[] = {1, 2, 3};
        int same = 1;
        for (int p = 0; p < 3; p++) {
            cfg.index_offset = start[p];
            CHECK(run(&cfg, &o, count[p], x0 + start[p] * DIM, labels + start[p], &part) == FA_OK,
                  "%s", fa_last_error());
            for (int i = 0; i < count[p]; i++) {
                const int g = start[p] + i;
                same &= memcmp(part.adv + i * DIM, whole.adv + g * DIM, DIM * sizeof(float)) == 0;
                same &= part.alpha[i] == whole.alpha[g] && part.status[i] == whole.status[g];
                same &= part.iterations[i] == whole.iterations[g];
                same &= memcmp(&part.loss[i], &whole.loss[g], sizeof(float)) == 0;
            }
        }
        CHECK(same, "%s: a split batch differs from the whole", fa_optimizer_name(opts[t]));
    }
}

/* The first step lands on first_step_rmse within r1/100; a zero gradient gives alpha 0. */
static void test_calibration(void) {
    const int opts[] = {FA_OPT_GD, FA_OPT_MGD, FA_OPT_ADAM, FA_OPT_ADABELIEF, FA_OPT_MSVAG,
                        FA_OPT_RMSPROP};
    const float targets[] = {0.3f, 2.0f, 8.0f};
    linear_oracle o;
    oracle_init(&o, 5);
    make_batch(&o, 6);
    for (size_t t = 0; t < sizeof opts / sizeof opts[0]; t++)
        for (size_t q = 0; q < 3; q++) {
            fa_config cfg;
            fa_config_default(opts[t], &cfg);
            cfg.max_iter = 1;
            cfg.stop_loss = INFINITY;
            cfg.first_step_rmse = targets[q];
            static result_store r;
            run(&cfg, &o, MAX_N, x0, labels, &r);
            for (int i = 0; i < MAX_N; i++) {
                /* the step raised the loss (or it is the best iterate anyway): measure it */
                if (r.loss[i] <= r.clean_loss[i])
                    continue;
                const double got = rmse_of(r.adv + i * DIM, x0 + i * DIM);
                CHECK(fabs(got - targets[q]) <= targets[q] / 100.0,
                      "%s r1 %g image %d: first step RMSE %g", fa_optimizer_name(opts[t]),
                      (double)targets[q], i, got);
            }
        }
    o.zero_grad = 1;
    fa_config cfg;
    fa_config_default(FA_OPT_ADAM, &cfg);
    static result_store r;
    CHECK(run(&cfg, &o, 2, x0, labels, &r) == FA_OK, "%s", fa_last_error());
    CHECK(r.alpha[0] == 0.0f && r.alpha[1] == 0.0f, "alpha %g %g", (double)r.alpha[0],
          (double)r.alpha[1]);
    CHECK(memcmp(r.adv, x0, 2 * DIM * sizeof(float)) == 0, "a zero gradient moved the image");
}

/* stop_loss returns the last iterate at or past the threshold; stop_rmse lands on target. */
static void test_stopping(void) {
    linear_oracle o;
    oracle_init(&o, 7);
    make_batch(&o, 8);
    fa_config cfg;
    fa_config_default(FA_OPT_ADAM, &cfg);
    cfg.stop_loss = 0.5f;
    cfg.max_iter = 100;
    static result_store r;
    run(&cfg, &o, MAX_N, x0, labels, &r);
    int stopped = 0;
    for (int i = 0; i < MAX_N; i++) {
        /* an image whose largest CE inside the ball is below the threshold runs to the cap */
        CHECK((r.status[i] == FA_IMAGE_STOP_LOSS && r.loss[i] >= 0.5f) ||
                  (r.status[i] == FA_IMAGE_MAX_ITER && r.loss[i] < 0.5f),
              "image %d status %d loss %g", i, r.status[i], (double)r.loss[i]);
        stopped += r.status[i] == FA_IMAGE_STOP_LOSS;
    }
    CHECK(stopped >= MAX_N / 2, "only %d images reached the loss", stopped);

    fa_config_default(FA_OPT_GD, &cfg);
    cfg.stop_loss = INFINITY;
    cfg.max_iter = 200;
    cfg.first_step_rmse = 1.0f;
    cfg.stop_rmse = 5.0f;
    run(&cfg, &o, MAX_N, x0, labels, &r);
    for (int i = 0; i < MAX_N; i++) {
        const double got = rmse_of(r.adv + i * DIM, x0 + i * DIM);
        CHECK(r.status[i] == FA_IMAGE_STOP_RMSE && fabs(got - 5.0) <= 0.05,
              "image %d status %d RMSE %g", i, r.status[i], got);
    }
}

/* A misclassified image is skipped, returned as it is, and never asked about again. */
static void test_skip(void) {
    linear_oracle o;
    oracle_init(&o, 9);
    make_batch(&o, 10);
    int64_t y[3] = {labels[0], (labels[1] + 1) % K, labels[2]};
    fa_config cfg;
    fa_config_default(FA_OPT_GD, &cfg);
    cfg.stop_loss = INFINITY;
    cfg.max_iter = 5;
    static result_store r;
    CHECK(run(&cfg, &o, 3, x0, y, &r) == FA_OK, "%s", fa_last_error());
    CHECK(r.status[1] == FA_IMAGE_SKIPPED && r.alpha[1] == 0.0f && r.iterations[1] == 0,
          "status %d", r.status[1]);
    CHECK(memcmp(r.adv + DIM, x0 + DIM, DIM * sizeof(float)) == 0, "a skipped image moved");
    CHECK(o.calls_per_image[1] == 1 && o.calls_per_image[0] == 6,
          "oracle calls: skipped %lld, attacked %lld", (long long)o.calls_per_image[1],
          (long long)o.calls_per_image[0]);
}

/* NaN for one image fails that image only; an oracle error and a stop request end the run. */
static void test_failures(void) {
    linear_oracle o;
    oracle_init(&o, 11);
    make_batch(&o, 12);
    fa_config cfg;
    fa_config_default(FA_OPT_ADAM, &cfg);
    cfg.max_iter = 4;
    cfg.stop_loss = INFINITY;
    static result_store clean, r;
    run(&cfg, &o, 3, x0, labels, &clean);
    o.nan_index = 1;
    run(&cfg, &o, 3, x0, labels, &r);
    CHECK(r.status[1] == FA_IMAGE_NAN && isnan(r.loss[1]), "status %d", r.status[1]);
    CHECK(memcmp(r.adv + DIM, x0 + DIM, DIM * sizeof(float)) == 0, "a NaN image is not x0");
    CHECK(memcmp(r.adv, clean.adv, DIM * sizeof(float)) == 0 &&
              memcmp(r.adv + 2 * DIM, clean.adv + 2 * DIM, DIM * sizeof(float)) == 0,
          "a NaN image changed its neighbours");

    o.nan_index = -1;
    o.fail_after = 2;
    o.calls = 0;
    CHECK(run(&cfg, &o, 3, x0, labels, &r) == FA_ERR_MODEL, "oracle failure not reported");
    CHECK(strstr(fa_last_error(), "synthetic oracle failure") != NULL, "message: %s",
          fa_last_error());

    o.fail_after = -1;
    o.stop = 1;
    fa_oracle oracle = {oracle_grad, stop_now, &o};
    fa_result out = result_of(&r);
    CHECK(fa_attack(&cfg, FA_DEVICE_CPU, 3, DIM, x0, labels, &oracle, &out) ==
              FA_ERR_INTERRUPTED,
          "should_stop ignored");
}

/* Each bad field: FA_ERR_ARGUMENT from fa_config_check and fa_attack, naming the field. */
static void spoil_and_check(const char *field, fa_config cfg) {
    CHECK(fa_config_check(&cfg) == FA_ERR_ARGUMENT, "%s accepted", field);
    CHECK(strstr(fa_last_error(), field) != NULL, "%s: message '%s'", field, fa_last_error());
    linear_oracle o;
    oracle_init(&o, 13);
    static result_store r;
    fa_oracle oracle = {oracle_grad, NULL, &o};
    fa_result out = result_of(&r);
    CHECK(fa_attack(&cfg, FA_DEVICE_CPU, 1, DIM, x0, labels, &oracle, &out) == FA_ERR_ARGUMENT,
          "fa_attack accepted a bad %s", field);
}

static void test_argument_checks(void) {
    fa_config base, c;
    fa_config_default(FA_OPT_ADAM, &base);
    CHECK(fa_config_check(&base) == FA_OK, "%s", fa_last_error());
#define BAD(field, stmt) (c = base, stmt, spoil_and_check(field, c))
    BAD("optimizer", c.optimizer = 99);
    BAD("eps", c.eps = 0.0f);
    BAD("eps", c.eps = NAN);
    BAD("max_iter", c.max_iter = -1);
    BAD("alpha", c.alpha = 1.0f);                  /* both alpha and first_step_rmse */
    BAD("first_step_rmse", c.first_step_rmse = 0); /* neither */
    BAD("stop_loss", c.stop_loss = NAN);
    BAD("stop_rmse", c.stop_rmse = -1.0f);
    BAD("rmse_weight", c.rmse_weight = -6.0f);
    BAD("beta1", c.beta1 = 1.0f);
    BAD("beta2", c.beta2 = -0.1f);
    BAD("delta", c.delta = 0.0f);
    BAD("msvag_beta", c.msvag_beta = 1.0f);
    BAD("nesterov", c.nesterov = 2);
    BAD("random_start", c.random_start = 5);
    BAD("index_offset", c.index_offset = -1);
#undef BAD

    linear_oracle o;
    oracle_init(&o, 14);
    make_batch(&o, 15);
    static result_store r;
    fa_oracle oracle = {oracle_grad, NULL, &o};
    fa_result out = result_of(&r);
    float bad[DIM];
    memcpy(bad, x0, sizeof bad);
    bad[7] = 256.0f;
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, bad, labels, &oracle, &out) == FA_ERR_ARGUMENT,
          "pixel 256 accepted");
    CHECK(strstr(fa_last_error(), "[0, 255]") != NULL, "message '%s'", fa_last_error());
    bad[7] = NAN;
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, bad, labels, &oracle, &out) == FA_ERR_ARGUMENT,
          "NaN pixel accepted");
    const int64_t negative = -1;
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, x0, &negative, &oracle, &out) ==
              FA_ERR_ARGUMENT,
          "label -1 accepted");
    CHECK(fa_attack(&base, 7, 1, DIM, x0, labels, &oracle, &out) == FA_ERR_ARGUMENT,
          "device 7 accepted");
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, 0, x0, labels, &oracle, &out) == FA_ERR_ARGUMENT,
          "dim 0 accepted");
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, NULL, labels, &oracle, &out) ==
              FA_ERR_ARGUMENT,
          "NULL x0 accepted");
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, x0, labels, NULL, &out) == FA_ERR_ARGUMENT,
          "NULL oracle accepted");
    fa_result missing = out;
    missing.status = NULL;
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 1, DIM, x0, labels, &oracle, &missing) ==
              FA_ERR_ARGUMENT,
          "NULL out->status accepted");
    CHECK(fa_attack(&base, FA_DEVICE_CPU, 0, DIM, x0, labels, &oracle, &out) == FA_OK,
          "n = 0 rejected: %s", fa_last_error());
    if (!fa_cuda_available())
        CHECK(fa_attack(&base, FA_DEVICE_CUDA, 1, DIM, x0, labels, &oracle, &out) ==
                  FA_ERR_NO_CUDA,
              "cuda without a GPU: %s", fa_last_error());
}

/* Metrics of hand-computed pairs. */
static void test_metrics(void) {
    enum { MH = 16, MW = 16, MC = 3, MD = MH * MW * MC };
    static float clean[2 * MD], adv[2 * MD];
    for (int j = 0; j < 2 * MD; j++)
        clean[j] = (float)((j * 37) % 200 + 20);
    for (int j = 0; j < MD; j++)
        adv[j] = clean[j] + 3.0f;         /* image 0: shifted by 3 */
    memcpy(adv + MD, clean + MD, MD * sizeof(float)); /* image 1: identical */
    float rmse[2], linf[2], l2[2], l1[2], l0[2], psnr[2], ssim[2];
    fa_metrics m = {rmse, linf, l2, l1, l0, psnr, ssim};
    CHECK(fa_metrics_compute(2, MH, MW, MC, adv, clean, &m) == FA_OK, "%s", fa_last_error());
    CHECK(fabsf(rmse[0] - 3.0f) < 1e-5f && fabsf(linf[0] - 3.0f) < 1e-5f, "rmse %g linf %g",
          (double)rmse[0], (double)linf[0]);
    CHECK(fabs(l2[0] - 3.0 * sqrt((double)MD)) < 1e-3 && fabsf(l1[0] - 3.0f) < 1e-5f &&
              l0[0] == 1.0f,
          "l2 %g l1 %g l0 %g", (double)l2[0], (double)l1[0], (double)l0[0]);
    CHECK(fabs(psnr[0] - 20.0 * log10(255.0 / 3.0)) < 1e-3, "psnr %g", (double)psnr[0]);
    CHECK(ssim[0] < 1.0f && ssim[0] > 0.9f, "ssim %g", (double)ssim[0]);
    CHECK(rmse[1] == 0.0f && linf[1] == 0.0f && l0[1] == 0.0f && isinf(psnr[1]) &&
              fabsf(ssim[1] - 1.0f) < 1e-6f,
          "identical: rmse %g psnr %g ssim %g", (double)rmse[1], (double)psnr[1],
          (double)ssim[1]);
    fa_metrics only_ssim = {0};
    only_ssim.ssim = ssim;
    CHECK(fa_metrics_compute(1, 5, 5, 3, adv, clean, &only_ssim) == FA_OK && isnan(ssim[0]),
          "5x5 SSIM should be NaN, got %g", (double)ssim[0]);
    CHECK(fa_metrics_compute(1, 0, 5, 3, adv, clean, &m) == FA_ERR_ARGUMENT, "h = 0 accepted");
    CHECK(fa_metrics_compute(1, 5, 5, 3, NULL, clean, &m) == FA_ERR_ARGUMENT, "NULL accepted");
}

static void test_names(void) {
    CHECK(strcmp(fa_optimizer_name(FA_OPT_ADABELIEF), "AdaB") == 0, "AdaB");
    CHECK(strcmp(fa_optimizer_name(FA_OPT_NIFGSM), "NI-FGSM") == 0, "NI-FGSM");
    CHECK(fa_optimizer_name(FA_OPT_COUNT) == NULL && fa_optimizer_name(-1) == NULL, "range");
    CHECK(strcmp(fa_image_status_name(FA_IMAGE_STOP_RMSE), "stop_rmse") == 0, "stop_rmse");
    CHECK(fa_image_status_name(FA_IMAGE_STATUS_COUNT) == NULL, "range");
    CHECK(strcmp(fa_status_name(FA_ERR_NO_CUDA), "FA_ERR_NO_CUDA") == 0, "no cuda");
    CHECK(strcmp(fa_status_name(42), "FA_UNKNOWN") == 0, "unknown");
    fa_config cfg;
    CHECK(fa_config_default(FA_OPT_COUNT, &cfg) == FA_ERR_ARGUMENT, "default of a bad optimizer");
    for (int opt = 0; opt < FA_OPT_COUNT; opt++)
        CHECK(fa_config_default(opt, &cfg) == FA_OK && fa_config_check(&cfg) == FA_OK,
              "default of %s does not pass its own check: %s", fa_optimizer_name(opt),
              fa_last_error());
}

int main(void) {
    test_invariants();
    test_batching();
    test_calibration();
    test_stopping();
    test_skip();
    test_failures();
    test_argument_checks();
    test_metrics();
    test_names();
    printf("test_core: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
