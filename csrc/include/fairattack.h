/*
 * fairattack.h -- the contract of the fairattack C core (pure C11).
 *
 * The core crafts adversarial examples for a batch of images under the protocol of
 * docs/protocol.md: optimizer update rules, projection onto the l-inf ball and the pixel box,
 * per-image step-size calibration, per-image stopping and best-iterate tracking, and metrics.
 * It knows neither Python nor LibTorch: gradients arrive through a callback (fa_oracle).
 *
 * Conventions
 *   - Pixels are float, in [0, 255]. An image is `dim` contiguous floats (H*W*C, NHWC order on
 *     the caller's side; the core itself never looks at the layout except in fa_metrics).
 *   - Every fallible function returns fa_status; results go through out-parameters. A failing
 *     call leaves a message readable with fa_last_error() (thread-local, owned by the library,
 *     valid until the next failing call on the same thread).
 *   - Ownership: every buffer passed in is borrowed for the duration of the call only; the core
 *     never frees or keeps a caller's pointer. Output arrays are allocated by the caller.
 *   - The library never prints, exits or aborts.
 */
#ifndef FAIRATTACK_H
#define FAIRATTACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_VERSION "0.1.0"

/* ---------------------------------------------------------------- status codes and errors */

typedef enum fa_status {
    FA_OK = 0,
    FA_ERR_ARGUMENT = 1,    /* a bad argument; the message names it (Python: ValueError)   */
    FA_ERR_TYPE = 2,        /* wrong kind of object / dtype (Python: TypeError)             */
    FA_ERR_MEMORY = 3,      /* allocation failed (Python: MemoryError)                      */
    FA_ERR_MODEL = 4,       /* the model or gradient oracle failed (Python: RuntimeError)   */
    FA_ERR_IO = 5,          /* a file is missing, unreadable or corrupt (Python: OSError)   */
    FA_ERR_CUDA = 6,        /* a CUDA call failed (Python: RuntimeError)                    */
    FA_ERR_NO_CUDA = 7,     /* CUDA asked for, but not built in or no device (RuntimeError) */
    FA_ERR_INTERRUPTED = 8, /* the stop callback asked to stop (Python: KeyboardInterrupt)  */
    FA_ERR_INTERNAL = 9     /* a bug in fairattack (Python: RuntimeError)                   */
} fa_status;

/* Message of the last failing call on this thread ("" if none). Owned by the library. */
const char *fa_last_error(void);
/* Sets the thread's message (printf-style) and returns `status`; for the layers above the core
 * (shim, module, callbacks) so that one mechanism carries every message. */
fa_status fa_set_error(fa_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void fa_clear_error(void);
/* "FA_OK", "FA_ERR_ARGUMENT", ...; "FA_UNKNOWN" for values out of range. */
const char *fa_status_name(int status);

/* ---------------------------------------------------------------- optimizers */

typedef enum fa_optimizer {
    /* the paper's seven attacks (raw directions, docs/protocol.md#update-rules) */
    FA_OPT_GD = 0,
    FA_OPT_MGD = 1,
    FA_OPT_NAGD = 2,
    FA_OPT_ADAM = 3,
    FA_OPT_LADAM = 4,
    FA_OPT_ADABELIEF = 5,
    FA_OPT_MSVAG = 6,
    /* extras of the authors' code */
    FA_OPT_RMSPROP = 7,
    FA_OPT_ADAMW = 8,
    FA_OPT_YOGI = 9,
    /* classic sign attacks */
    FA_OPT_FGSM = 10,
    FA_OPT_PGD = 11, /* I-FGSM; random start with fa_config.random_start */
    FA_OPT_MIFGSM = 12,
    FA_OPT_NIFGSM = 13,
    /* variance tuning (Wang & He 2021): MI/NI-FGSM on g + v, v from vmi_neighbours neighbours */
    FA_OPT_VMIFGSM = 14,
    FA_OPT_VNIFGSM = 15,
    FA_OPT_COUNT = 16
} fa_optimizer;

/* Canonical names: "GD", "MGD", "NAGD", "Adam", "LAdam", "AdaB", "MSVAG", "RMSProp", "AdamW",
 * "Yogi", "FGSM", "PGD", "MI-FGSM", "NI-FGSM", "VMI-FGSM", "VNI-FGSM". NULL for values out of
 * range. */
const char *fa_optimizer_name(int optimizer);

typedef enum fa_nesterov {
    FA_NESTEROV_AUTHORS = 0,  /* jump x~ = P(x + mu*a*m), grad at x~, x' = P(x~ + a*m) (default) */
    FA_NESTEROV_TEXTBOOK = 1  /* same look-ahead gradient, but x' = P(x + a*m)                */
} fa_nesterov;

/* Which iterate an image that runs to max_iter returns (docs/protocol.md#the-attack-loop). */
typedef enum fa_returns {
    FA_RETURNS_BEST = 0, /* the iterate of maximal CE (the loss-stopped protocols' rule)       */
    FA_RETURNS_LAST = 1  /* the last iterate, as every peer library returns it (setting fixed) */
} fa_returns;

/* ---------------------------------------------------------------- per-image outcome */

typedef enum fa_image_status {
    FA_IMAGE_RUNNING = 0,   /* never in a returned result                                     */
    FA_IMAGE_STOP_LOSS = 1, /* CE reached stop_loss: the last iterate is returned             */
    FA_IMAGE_STOP_RMSE = 2, /* RMSE reached stop_rmse: the last iterate is returned           */
    FA_IMAGE_MAX_ITER = 3,  /* hit max_iter: the max-CE iterate (returns best) or the last one */
    FA_IMAGE_SKIPPED = 4,   /* misclassified before the attack: not attacked, x0 returned     */
    FA_IMAGE_NAN = 5,       /* loss, gradient or iterate became NaN/inf: failed, x0 returned  */
    FA_IMAGE_STATUS_COUNT = 6
} fa_image_status;

/* "running", "stop_loss", "stop_rmse", "max_iter", "skipped", "nan"; NULL out of range. */
const char *fa_image_status_name(int status);

/* ---------------------------------------------------------------- configuration */

typedef struct fa_config {
    int optimizer;          /* fa_optimizer                                                 */
    float eps;              /* l-inf budget in pixel units, > 0                             */
    int max_iter;           /* step cap, >= 0 (0: only evaluate x0)                         */
    float first_step_rmse;  /* > 0: calibrate alpha per image so the first step has this RMSE */
    float alpha;            /* > 0: fixed step size instead; exactly one of the two is > 0    */
    float stop_loss;        /* stop an image once CE (nats) >= this; INFINITY: never
                               (targeted: the oracle's -CE(z, t) >= this, i.e. -threshold)   */
    float stop_rmse;        /* > 0: stop an image once its RMSE reaches this (last step is
                               shortened to land on it); 0: off                              */
    float rmse_weight;      /* gamma >= 0: from step 1 on, ascend CE + gamma * RMSE(x, x0)    */
    /* optimizer constants (fa_config_default fills the paper's values) */
    float momentum;         /* MGD/NAGD mu (0.9); MI/NI-FGSM mu (1.0)                        */
    float beta1;            /* Adam family beta1 (0.9)                                       */
    float beta2;            /* Adam family beta2 (0.999)                                     */
    float delta;            /* Adam family / RMSProp epsilon (1e-8)                          */
    float ladam_lambda;     /* LAdam: Adam on g - lambda*x (1e-12)                           */
    float adamw_decay;      /* AdamW-style: d = m/(sqrt(v)+delta) + decay*x (0.005)          */
    float msvag_beta;       /* M-SVAG beta (0.9)                                             */
    float rmsprop_rho;      /* RMSProp rho (0.9)                                             */
    int nesterov;           /* fa_nesterov, for NAGD                                         */
    int random_start;       /* PGD: start from a uniform point of the eps-ball (1) or x0 (0)  */
    uint64_t seed;          /* random start; images draw from (seed, image index): batching
                               never changes a result                                        */
    int64_t index_offset;   /* image i of a call has index index_offset + i (>= 0): a caller
                               that splits a dataset into batches passes each batch's start */
    int skip_misclassified; /* 1: images the model gets wrong at x0 are skipped (default 1)   */
    int returns;            /* fa_returns: what an image that hits max_iter returns (best)    */
    float max_rmse;         /* > 0: joint budget (fair-comparison.md): every iterate is
                               projected exactly onto {l-inf <= eps} n {RMSE <= max_rmse} n
                               box; 0: off                                                    */
    /* VMI/VNI-FGSM (variance tuning): step k's direction is MI's (NI's) on g_k + v_{k-1}, and
     * v_k = mean_j g(x_k + u_j) - g_k over vmi_neighbours points, u_j uniform in the l-inf ball
     * of vmi_beta * eps (clipped to the pixel box), drawn as fa_random_value with the seed
     * cfg.seed + 0x9E3779B97F4A7C15 * (1 + k * vmi_neighbours + j) and the image's index. */
    int vmi_neighbours;     /* N (20)                                                         */
    float vmi_beta;         /* beta (1.5)                                                     */
} fa_config;

/* Fills *out with the paper's defaults for `optimizer` under the const_loss setting: eps 16,
 * stop_loss 30, max_iter and first_step_rmse from the paper's table (protocol.md), returns
 * best (sign attacks: FGSM one step of alpha = eps; PGD/MI/NI 10 steps of alpha = eps/10, no
 * loss stop, returns last). */
fa_status fa_config_default(int optimizer, fa_config *out);
/* Checks every field; the message names the first bad one ("cfg.eps=-1 must be > 0"). */
fa_status fa_config_check(const fa_config *cfg);

/* ---------------------------------------------------------------- gradient oracle */

/*
 * Loss and gradient for a batch of `n` images.
 *   index[n]   host; the caller's position of each image (for per-image randomness)
 *   labels[n]  host; the true label of each image
 *   x          n*dim floats in the run's memory (host for FA_DEVICE_CPU, device for CUDA)
 *   want_grad  0: only loss and pred are needed; grad may be left untouched
 *   loss[n]    host out: per-image cross-entropy in nats (-log p_y). This is the measure the
 *              stop rules (stop_loss) and the best iterate read, larger being further along:
 *              the oracle of a targeted attack gives -CE(z, target) instead (protocol.md), whatever
 *              loss its gradient ascends, and labels stay the true labels (the skip rule)
 *   pred[n]    host out: argmax class per image
 *   grad       out, n*dim floats in the run's memory: d loss_i / d x_i (pixel units)
 * loss and pred may be NULL: the core does not need them for this call (a gradient-only call
 * when no rule looks at the loss), and the oracle may skip the work that only serves them.
 * A row whose logits are not finite gets loss NaN (the core counts the image as failed).
 * Returns FA_OK, or an error status after fa_set_error(). Must not keep any pointer.
 */
typedef fa_status (*fa_grad_fn)(void *ctx, int64_t n, const int64_t *index,
                                const int64_t *labels, const float *x, int want_grad,
                                float *loss, int64_t *pred, float *grad);

/* Polled once per iteration; nonzero stops the run with FA_ERR_INTERRUPTED. May be NULL. */
typedef int (*fa_stop_fn)(void *ctx);

typedef struct fa_oracle {
    fa_grad_fn grad;
    fa_stop_fn should_stop;
    void *ctx; /* passed to both, borrowed */
} fa_oracle;

/* ---------------------------------------------------------------- devices */

typedef enum fa_device { FA_DEVICE_CPU = 0, FA_DEVICE_CUDA = 1 } fa_device;

/* 1 if the core was built with CUDA kernels and a CUDA device is present, else 0. */
int fa_cuda_available(void);

/* The GPU and stream of the calling thread's later fa_attack runs on FA_DEVICE_CUDA: the core
 * makes device_index current (-1: leave the current device) and puts its kernels and copies on
 * cuda_stream (a cudaStream_t; NULL: the legacy default stream). A caller whose model runs on
 * another stream -- torch's current stream of the model's device -- passes that one, so the
 * model and the core are ordered without device-wide synchronisation. Thread-local; FA_OK
 * and nothing else without CUDA. */
fa_status fa_cuda_set_context(int device_index, void *cuda_stream);

/* Device memory of the CUDA backend through the caller's allocator (the module passes torch's
 * caching allocator through the LibTorch shim, so the attack's buffers reuse the memory torch's
 * cache holds and count in torch's memory statistics). alloc sets *p to `bytes` of memory on
 * GPU device_index whose use is ordered on cuda_stream, or leaves *p NULL with FA_OK when it
 * cannot serve that stream (the core then allocates with cudaMallocAsync itself); release frees
 * what alloc returned. Both NULL: the core's own allocation (the default). Process-wide; set it
 * before any attack runs. FA_OK and nothing else without CUDA. */
typedef fa_status (*fa_cuda_alloc_fn)(void **p, size_t bytes, int device_index,
                                      void *cuda_stream);
typedef void (*fa_cuda_free_fn)(void *p);
fa_status fa_cuda_set_allocator(fa_cuda_alloc_fn alloc, fa_cuda_free_fn release);

/* ---------------------------------------------------------------- the attack */

/* Caller-owned output arrays, one entry per image (adv: n*dim floats, host). */
typedef struct fa_result {
    float *adv;          /* the returned iterate, projected, float (host)                    */
    float *loss;         /* CE (nats) at the returned iterate; NaN for skipped/NaN images     */
    float *clean_loss;   /* CE at x0                                                          */
    int64_t *clean_pred; /* argmax at x0                                                      */
    int32_t *iterations; /* steps taken (k when the image stopped)                           */
    float *alpha;        /* step size used (calibrated or fixed); 0 for skipped images        */
    int32_t *status;     /* fa_image_status                                                   */
} fa_result;

/*
 * Runs the attack loop of docs/protocol.md#the-attack-loop on n images of dim floats each.
 *   x0       host, n*dim, values in [0, 255] (checked)
 *   labels   host, n, >= 0 (range against the model is the oracle's check)
 * All images run independently: a result never depends on the batch it was run in.
 * Images that stop leave the batch; the oracle is only asked about images still running.
 * With FA_DEVICE_CUDA the working buffers live on the GPU and the oracle receives device
 * pointers; x0 and the results stay on the host.
 */
fa_status fa_attack(const fa_config *cfg, int device, int64_t n, int64_t dim, const float *x0,
                    const int64_t *labels, const fa_oracle *oracle, fa_result *out);

/* ---------------------------------------------------------------- metrics */

/* Caller-owned arrays of n floats; any may be NULL (not computed). */
typedef struct fa_metrics {
    float *rmse; /* sqrt(mean(delta^2)), pixel units                                        */
    float *linf; /* max |delta|                                                              */
    float *l2;   /* ||delta||_2                                                              */
    float *l1;   /* mean |delta|                                                             */
    float *l0;   /* share of values with |delta| > 0.5                                       */
    float *psnr; /* 10 log10(255^2 / mean(delta^2)); INFINITY when delta == 0                 */
    float *ssim; /* mean SSIM over channels: Gaussian window 11, sigma 1.5, K1 .01, K2 .03,
                    L 255, valid region (equals skimage's structural_similarity with
                    gaussian_weights=True, use_sample_covariance=False, data_range=255)      */
} fa_metrics;

/* ------------------------------------------ fair budgets (docs/fair-comparison.md) */

/*
 * The exact projection of y onto {||delta||_inf <= eps} n {RMSE(delta) <= max_rmse} n [0, 255]
 * around x0 (n images of dim floats, host): delta_j = clip(mu * (y_j - x0_j), l_j, u_j) with
 * l = max(-eps, -x0), u = min(eps, 255 - x0) and the largest mu in [0, 1] that meets the RMSE
 * budget (the joint budget's lambda is 1/mu - 1). max_rmse = 0: the l-inf and box projection
 * alone. The attack loop projects every iterate with the same code.
 */
fa_status fa_project_rmse(int64_t n, int64_t dim, const float *x0, const float *y, float eps,
                          float max_rmse, float *out);

/*
 * RMSE matching (fair-comparison.md): out = clean + clip(s * (adv - clean), l, u) with the
 * per-image s >= 0 at which RMSE(out - clean) = target[i]. quantize (fa_match_mode)
 * FA_MATCH_UINT8: out holds integers (what a uint8 image holds) inside the l-inf ball and the
 * box, chosen per value between the two integers around the scaled value so that the RMSE of
 * the integer image is as close to target as one value's step allows (eps >= 0.5 needed);
 * FA_MATCH_UINT8_AT_MOST: the same, but never above target (a budget). An image already within
 * tol of its target (inside the budget, integer when asked) is returned unchanged (scale 1).
 * Outputs (host, caller-owned): out (n*dim), scale[n], rmse[n] (of out), reached[n] =
 * |rmse - target| <= tol. Where no s reaches the target (no perturbation, or every value at
 * its bound first), reached is 0 and out is the largest-RMSE image.
 */
typedef enum fa_match_mode {
    FA_MATCH_FLOAT = 0,         /* float output, RMSE = target within float precision       */
    FA_MATCH_UINT8 = 1,         /* integer output, RMSE as close to target as possible      */
    FA_MATCH_UINT8_AT_MOST = 2  /* integer output, RMSE as close as possible but <= target  */
} fa_match_mode;

fa_status fa_match_rmse(int64_t n, int64_t dim, const float *clean, const float *adv,
                        const float *target, float eps, int quantize, float tol, float *out,
                        float *scale, float *rmse, int32_t *reached);

/* Metrics of adv against clean, both n*h*w*c floats in NHWC order (host). */
fa_status fa_metrics_compute(int64_t n, int64_t h, int64_t w, int64_t c, const float *adv,
                             const float *clean, fa_metrics *out);

#ifdef __cplusplus
}
#endif

#endif /* FAIRATTACK_H */
