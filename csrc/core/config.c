/* config.c -- names, the SPEC's default configuration per optimizer, and argument checks. */
#include <math.h>
#include <string.h>

#include "fairattack.h"

static const char *const optimizer_names[FA_OPT_COUNT] = {
    "GD",      "MGD",  "NAGD", "Adam", "LAdam", "AdaB",    "MSVAG",
    "RMSProp", "AdamW", "Yogi", "FGSM", "PGD",  "MI-FGSM", "NI-FGSM", "VMI-FGSM", "VNI-FGSM",
};

static const char *const image_status_names[FA_IMAGE_STATUS_COUNT] = {
    "running", "stop_loss", "stop_rmse", "max_iter", "skipped", "nan",
};

const char *fa_optimizer_name(int optimizer) {
    return optimizer >= 0 && optimizer < FA_OPT_COUNT ? optimizer_names[optimizer] : NULL;
}

const char *fa_image_status_name(int status) {
    return status >= 0 && status < FA_IMAGE_STATUS_COUNT ? image_status_names[status] : NULL;
}

/* SPEC 2's table (const_loss / rmse_loss): step cap and first-step RMSE of the paper's seven;
 * the extras borrow Adam's. */
static const struct {
    int max_iter;
    float first_step_rmse;
} paper_table[FA_OPT_FGSM] = {
    {100, 0.3f}, {30, 0.01f}, {15, 0.01f}, {10, 1.0f}, {10, 1.0f},
    {10, 1.0f},  {8, 0.01f},  {10, 1.0f},  {10, 1.0f}, {10, 1.0f},
};

fa_status fa_config_default(int optimizer, fa_config *out) {
    if (out == NULL)
        return fa_set_error(FA_ERR_ARGUMENT, "fa_config_default: out is NULL");
    if (optimizer < 0 || optimizer >= FA_OPT_COUNT)
        return fa_set_error(FA_ERR_ARGUMENT, "optimizer=%d is not one of 0..%d", optimizer,
                            FA_OPT_COUNT - 1);
    memset(out, 0, sizeof *out);
    out->optimizer = optimizer;
    out->eps = 16.0f;
    out->stop_loss = 30.0f;
    out->momentum = 0.9f;
    out->beta1 = 0.9f;
    out->beta2 = 0.999f;
    out->delta = 1e-8f;
    out->ladam_lambda = 1e-12f;
    out->adamw_decay = 0.005f;
    out->msvag_beta = 0.9f;
    out->rmsprop_rho = 0.9f;
    out->nesterov = FA_NESTEROV_AUTHORS;
    out->skip_misclassified = 1;
    out->returns = FA_RETURNS_BEST;
    out->vmi_neighbours = 20; /* Wang & He 2021, TransferAttack's VMIFGSM defaults */
    out->vmi_beta = 1.5f;
    if (optimizer < FA_OPT_FGSM) {
        out->max_iter = paper_table[optimizer].max_iter;
        out->first_step_rmse = paper_table[optimizer].first_step_rmse;
        return FA_OK;
    }
    /* sign attacks: fixed alpha, no loss stop, the last iterate as every peer returns it */
    out->stop_loss = INFINITY;
    out->returns = FA_RETURNS_LAST;
    out->max_iter = optimizer == FA_OPT_FGSM ? 1 : 10;
    out->alpha = out->eps / (float)out->max_iter;
    if (optimizer >= FA_OPT_MIFGSM)
        out->momentum = 1.0f;
    return FA_OK;
}

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond))                                                                           \
            return fa_set_error(FA_ERR_ARGUMENT, __VA_ARGS__);                                 \
    } while (0)

/* finite and in [lo, hi] */
static int in_range(float x, float lo, float hi) { return isfinite(x) && x >= lo && x <= hi; }

fa_status fa_config_check(const fa_config *c) {
    CHECK(c != NULL, "cfg is NULL");
    CHECK(c->optimizer >= 0 && c->optimizer < FA_OPT_COUNT,
          "cfg.optimizer=%d must be one of 0..%d", c->optimizer, FA_OPT_COUNT - 1);
    CHECK(in_range(c->eps, 1e-30f, 255.0f) && c->eps > 0.0f, "cfg.eps=%g must be in (0, 255]",
          (double)c->eps);
    CHECK(c->max_iter >= 0 && c->max_iter <= 1000000, "cfg.max_iter=%d must be in [0, 1e6]",
          c->max_iter);
    CHECK(isfinite(c->first_step_rmse) && c->first_step_rmse >= 0.0f,
          "cfg.first_step_rmse=%g must be >= 0", (double)c->first_step_rmse);
    CHECK(isfinite(c->alpha) && c->alpha >= 0.0f, "cfg.alpha=%g must be >= 0", (double)c->alpha);
    CHECK((c->first_step_rmse > 0.0f) != (c->alpha > 0.0f),
          "exactly one of cfg.first_step_rmse=%g and cfg.alpha=%g must be > 0",
          (double)c->first_step_rmse, (double)c->alpha);
    CHECK(!isnan(c->stop_loss), "cfg.stop_loss must not be NaN (use inf for no loss stop)");
    CHECK(isfinite(c->stop_rmse) && c->stop_rmse >= 0.0f, "cfg.stop_rmse=%g must be >= 0",
          (double)c->stop_rmse);
    CHECK(c->stop_rmse <= c->eps,
          "cfg.stop_rmse=%g > cfg.eps=%g: no image can reach an RMSE above eps",
          (double)c->stop_rmse, (double)c->eps);
    CHECK(isfinite(c->max_rmse) && c->max_rmse >= 0.0f, "cfg.max_rmse=%g must be >= 0 (0: off)",
          (double)c->max_rmse);
    CHECK(c->max_rmse == 0.0f || c->stop_rmse <= c->max_rmse,
          "cfg.stop_rmse=%g > cfg.max_rmse=%g: the stop can never be reached under the budget",
          (double)c->stop_rmse, (double)c->max_rmse);
    CHECK(c->vmi_neighbours >= 1 && c->vmi_neighbours <= 100000,
          "cfg.vmi_neighbours=%d must be in [1, 100000]", c->vmi_neighbours);
    CHECK(in_range(c->vmi_beta, 0.0f, 1e6f), "cfg.vmi_beta=%g must be >= 0", (double)c->vmi_beta);
    CHECK(c->returns == FA_RETURNS_BEST || c->returns == FA_RETURNS_LAST,
          "cfg.returns=%d must be 0 (best) or 1 (last)", c->returns);
    CHECK(isfinite(c->rmse_weight) && c->rmse_weight >= 0.0f, "cfg.rmse_weight=%g must be >= 0",
          (double)c->rmse_weight);
    CHECK(in_range(c->momentum, -10.0f, 10.0f), "cfg.momentum=%g must be in [-10, 10]",
          (double)c->momentum);
    CHECK(in_range(c->beta1, 0.0f, 1.0f) && c->beta1 < 1.0f, "cfg.beta1=%g must be in [0, 1)",
          (double)c->beta1);
    CHECK(in_range(c->beta2, 0.0f, 1.0f) && c->beta2 < 1.0f, "cfg.beta2=%g must be in [0, 1)",
          (double)c->beta2);
    CHECK(isfinite(c->delta) && c->delta > 0.0f, "cfg.delta=%g must be > 0", (double)c->delta);
    CHECK(isfinite(c->ladam_lambda), "cfg.ladam_lambda must be finite");
    CHECK(isfinite(c->adamw_decay), "cfg.adamw_decay must be finite");
    CHECK(in_range(c->msvag_beta, 0.0f, 1.0f) && c->msvag_beta > 0.0f && c->msvag_beta < 1.0f,
          "cfg.msvag_beta=%g must be in (0, 1)", (double)c->msvag_beta);
    CHECK(in_range(c->rmsprop_rho, 0.0f, 1.0f) && c->rmsprop_rho < 1.0f,
          "cfg.rmsprop_rho=%g must be in [0, 1)", (double)c->rmsprop_rho);
    CHECK(c->nesterov == FA_NESTEROV_AUTHORS || c->nesterov == FA_NESTEROV_TEXTBOOK,
          "cfg.nesterov=%d must be 0 (authors) or 1 (textbook)", c->nesterov);
    CHECK(c->random_start == 0 || c->random_start == 1, "cfg.random_start=%d must be 0 or 1",
          c->random_start);
    CHECK(c->skip_misclassified == 0 || c->skip_misclassified == 1,
          "cfg.skip_misclassified=%d must be 0 or 1", c->skip_misclassified);
    CHECK(c->index_offset >= 0, "cfg.index_offset=%lld must be >= 0",
          (long long)c->index_offset);
    return FA_OK;
}
