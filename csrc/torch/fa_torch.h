/*
 * fa_torch.h -- the extern "C" shim over LibTorch: load a TorchScript classifier and get
 * cross-entropy, logits and input gradients for a batch, on CPU or CUDA.
 *
 * C++ exceptions never cross this boundary: each entry point catches c10::Error (its message
 * without the C++ backtrace), std::exception and ..., and returns a status with the message
 * in fa_last_error(). Only csrc/torch/ includes torch headers.
 *
 * Model convention: input float NCHW RGB in [0, 255]; output logits [N, K]. Callers hand the
 * shim NHWC images (the NumPy layout), which is channels_last memory of the NCHW tensor: the
 * shim feeds that memory to the model as it is (no permuted copy) and writes the input gradient
 * straight back into the caller's NHWC buffer. The module is put in eval mode at load, its
 * parameters never require grad, and on CUDA its 4-D (convolution) weights are converted to
 * channels_last once. The model must not modify its input in place (FA_ERR_MODEL).
 *
 * Grad mode: the shim sets the calling thread's autograd mode itself, so every call works inside
 * torch.no_grad() and torch.inference_mode() (LibTorch keeps that mode per thread, and the C
 * calls run on the caller's thread).
 *
 * Non-finite logits: a row whose logits contain NaN or +-inf gets pred = -1 and loss = NaN
 * (never argmax = 0 and a finite CE); its logits are returned as they are.
 *
 * TorchScript: the module runs with the graph executor's optimisations off for each call (a
 * thread-local guard; the caller's own TorchScript is unaffected): no profiling runs, no
 * respecialisation, no fusion, so a result never depends on the call number or on the batch
 * shape.
 *
 * Devices and streams: a model lives on the CPU or on one GPU (cuda:device_index). Every call
 * makes that GPU current for its own duration (a device guard), whatever the calling thread had
 * current, and runs on torch's current CUDA stream of that GPU for the calling thread
 * (fa_model_cuda_stream). Nothing synchronises the device: the shim waits for that stream only
 * where the host reads results (loss, logits, pred, and host gradients).
 *
 * Ownership: fa_model_load* returns a handle owned by the caller, released by fa_model_free
 * (NULL is a no-op). Every buffer argument is borrowed for the call only.
 */
#ifndef FA_TORCH_H
#define FA_TORCH_H

#include "fairattack.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fa_model fa_model;

/* device: FA_DEVICE_CPU or FA_DEVICE_CUDA (FA_ERR_NO_CUDA when torch sees no CUDA device);
 * device_index: the GPU's ordinal for FA_DEVICE_CUDA, in [0, number of GPUs) (else
 * FA_ERR_ARGUMENT naming the count); -1 or 0 for FA_DEVICE_CPU.
 * Missing or unreadable file: FA_ERR_IO; not a TorchScript archive: FA_ERR_IO naming the path. */
fa_status fa_model_load(const char *path, int device, int device_index, fa_model **out);
/* The same from an in-memory TorchScript archive (what torch.jit.save writes to a BytesIO). */
fa_status fa_model_load_buffer(const void *data, size_t size, int device, int device_index,
                               fa_model **out);
void fa_model_free(fa_model *model);
/* FA_DEVICE_CPU or FA_DEVICE_CUDA; -1 for NULL. */
int fa_model_device(const fa_model *model);
/* The GPU ordinal of a CUDA model (what the attack's CUDA backend must use); -1 for a CPU model
 * and for NULL. */
int fa_model_device_index(const fa_model *model);
/* torch's current CUDA stream on the model's GPU for the calling thread, as a cudaStream_t cast
 * to void * (kernels that touch the model's inputs and gradients launch on it, so that no
 * synchronisation is needed between them and the model). NULL for a CPU model and for NULL; note
 * that NULL is also the legacy default stream, torch's default. */
void *fa_model_cuda_stream(const fa_model *model);

/* Number of classes K: one forward of a zero image of h x w x c (cached per size). Checks that
 * the output is a 2-D [1, K] float tensor (else FA_ERR_MODEL naming the shape). */
fa_status fa_model_num_classes(fa_model *model, int64_t h, int64_t w, int64_t c, int64_t *k);

/* Optional input transforms of the gradient (the DI/TI/SI attacks). All zero: none. */
typedef struct fa_transform {
    float di_prob;     /* DI: with this probability per image and call, resize to a random
                          size in [di_min_scale*S, S] and zero-pad back at a random offset   */
    float di_min_scale;/* DI: smallest scale (0.9)                                           */
    int si_copies;     /* SI: average gradients at x * 0.5^i, i = 0..si_copies-1 (0/1: off)  */
    int ti_kernel;     /* TI: smooth the gradient with a ti_kernel^2 Gaussian, sigma =
                          (kernel-1)/6, per channel (0: off; odd, e.g. 15)                    */
    uint64_t seed;     /* DI, Admix, BSR and SIA draw from (seed, image index, call number,
                          copy): batching never changes a draw                                */
    /* Admix: admix_copies partners per image and call, each row x + admix_eta * x' with x' the
     * clean image of a pool image of another class (uniform, drawn per (seed, index, call,
     * partner)), then scaled by 0.5^s, s = 0..admix_scales-1 (admix_copies * admix_scales
     * copies; 0: off). The pool is every image the attack was given, so that the partners never
     * depend on the batch or on which images are still running. */
    int admix_copies;
    int admix_scales;                  /* 5 */
    float admix_eta;                   /* 0.2 */
    const float *admix_pool;           /* host, admix_pool_n NHWC images of the call's shape  */
    const int64_t *admix_pool_labels;  /* host, admix_pool_n labels                           */
    int64_t admix_pool_n;
    /* BSR: bsr_copies copies (0: off), each cut into bsr_blocks strips along a random axis
     * (random lengths), the strips shuffled, each strip cut into bsr_blocks pieces along the
     * other axis and those shuffled, every piece rotated about its centre by a uniform angle in
     * [-bsr_angle, bsr_angle] degrees (bilinear, zero fill). */
    int bsr_copies;
    int bsr_blocks;                    /* 3 */
    float bsr_angle;                   /* 24 */
    /* SIA: sia_copies copies (0: off), each cut into sia_blocks x sia_blocks blocks at random
     * cuts; each block gets one of 7 transforms: roll rows, roll columns, flip rows, flip
     * columns, rotate 180, scale by U[0, 1), add U[-16, 16] noise and clip to [0, 255]. */
    int sia_copies;
    int sia_blocks;                    /* 3 */
    /* The most rows one forward + backward of the gradient pass takes (0: all at once): the
     * copies x n rows run in chunks of pass_rows, so memory is bounded by pass_rows, not by
     * n x copies; the gradient is the same (every row's objective is its own). */
    int64_t pass_rows;
} fa_transform;

/*
 * One batch of n NHWC images x (n*h*w*c floats). x and grad are host memory, or, with
 * device_io = 1 and a model on CUDA, device memory of the model's GPU (the attack's own buffers:
 * no copies through the host). Device x must be complete on the model's stream
 * (fa_model_cuda_stream), and device grad is complete on that stream when the call returns (the
 * host does not wait for it unless it also reads loss, logits or pred).
 *   labels     host n, or NULL (then loss and grad are not computed); checked in [0, K)
 *   want_grad  compute grad (needs labels)
 *   loss       host n or NULL: CE in nats, -log softmax(logits)[y]; NaN for non-finite logits
 *   logits     host n*k_expected or NULL (then k_expected is ignored)
 *   pred       host n or NULL: argmax of the logits; -1 for non-finite logits
 *   grad       n*h*w*c or NULL: d loss_i / d x_i in NHWC order
 *   transform  NULL or the DI/TI/SI options (only used when want_grad)
 *   index      host n or NULL: the images' positions, for DI's per-image randomness
 *   call       the call number, for DI's per-image randomness
 * No gradient graph is built when want_grad is 0. Outputs that are NULL cost nothing: with
 * want_grad and loss, logits and pred all NULL there is no forward beyond the gradient pass
 * (under DI that pass sees transformed images, and the plain logits would need one more
 * forward); with want_grad = 0 and all three NULL the call does nothing.
 */
fa_status fa_model_run(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float *x, const int64_t *labels, int want_grad, float *loss,
                       float *logits, int64_t k_expected, int64_t *pred, float *grad,
                       int device_io, const fa_transform *transform, const int64_t *index,
                       int64_t call);

/* torch's CUDA caching allocator, for fa_cuda_set_allocator (fairattack.h): `bytes` on GPU
 * device_index through c10's allocator, ordered on torch's current stream there; *p stays NULL
 * (FA_OK) when cuda_stream is not that stream. Out of memory (after torch freed its cache):
 * FA_ERR_MEMORY. fa_torch_cuda_free(NULL) does nothing. */
fa_status fa_torch_cuda_alloc(void **p, size_t bytes, int device_index, void *cuda_stream);
void fa_torch_cuda_free(void *p);

/* The gradient passes one call of a transform makes per image (the product of the copies of
 * SI, Admix, BSR and SIA; 1 without them): what grad_evals counts. NULL: 1. */
int64_t fa_transform_copies(const fa_transform *transform);

/* The random draws of one transformed copy of one image (what the tests' reference rebuilds
 * the transforms from), as doubles in *out (capacity entries; *count gets how many there are,
 * FA_ERR_ARGUMENT naming capacity when they do not fit). kind: "admix" (copy = partner j:
 * [pool position]), "bsr" ([axis (0: strips of rows first, 1: of columns), b strip lengths, b
 * strip order, then per output strip b piece lengths and b piece order, then b*b angles in
 * degrees]; output strip s is input strip order[s]), "sia" ([b+1 row cuts, b+1 column cuts,
 * then per block, row-major, (op, parameter)]: op 0/1 roll rows/columns by parameter, 2/3 flip
 * rows/columns, 4 rotate 180, 5 scale by parameter, 6 noise from a torch CPU generator seeded
 * with parameter, uniform_(-16, 16) of the block's [1, C, bh, bw] shape). label: the image's
 * (admix); h, w: the image's size (bsr, sia). */
fa_status fa_transform_draws(const fa_transform *transform, const char *kind, int64_t h,
                             int64_t w, int64_t label, int64_t index, int64_t call, int64_t copy,
                             double *out, int64_t capacity, int64_t *count);

/* What a gradient pass differentiates (SPEC 10), per row with logits z and class c = labels[r]
 * (the true label of an untargeted attack, the target of a targeted one). Every one is
 * ascended by the attack. */
typedef enum fa_loss {
    FA_LOSS_CE = 0,        /* CE(z, c) = -log softmax(z)_c (untargeted)                       */
    FA_LOSS_TARGET_CE = 1, /* -CE(z, c): the target's cross-entropy, descended (targeted)     */
    FA_LOSS_LOGIT = 2,     /* z_c: the target's logit (targeted)                              */
    FA_LOSS_MARGIN = 3,    /* max_{j != c} z_j - z_c: the CW margin (untargeted)              */
    FA_LOSS_COUNT = 4
} fa_loss;

/* "ce", "target_ce", "logit", "margin"; NULL out of range. */
const char *fa_loss_name(int loss);

/* fa_model_run whose gradient is d objective_i / d x_i for `objective` (fa_loss); the loss
 * output stays CE(z, labels) (fa_model_run is this with FA_LOSS_CE). */
fa_status fa_model_run_loss(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                            const float *x, const int64_t *labels, int want_grad, float *loss,
                            float *logits, int64_t k_expected, int64_t *pred, float *grad,
                            int device_io, const fa_transform *transform, const int64_t *index,
                            int64_t call, int objective);

/* Surrogate ensembles (SPEC 9): members m_i with weights w_i >= 0 summing to 1 (within 1e-4),
 * each with its own wrapper (input size, normalisation) on the same pixels x, z_i = its
 * logits. The fused loss L (of objective c's fa_loss; CE below):
 *   FA_FUSE_LOGITS: L = CE(sum w_i z_i, c)            (the MI-FGSM paper's ensemble)
 *   FA_FUSE_PROBS:  L = -log sum w_i softmax(z_i)_c
 *   FA_FUSE_LOSS:   L = sum w_i CE(z_i, c)
 * The gradient is that of L (one forward and backward pass per member, in one autograd graph);
 * the prediction is the argmax of the fused output (sum w_i z_i, or log sum w_i softmax(z_i)
 * for "probs" and "loss"), which is also what `logits` receives; loss is the fused CE. */
typedef enum fa_fuse {
    FA_FUSE_LOGITS = 0,
    FA_FUSE_PROBS = 1,
    FA_FUSE_LOSS = 2,
    FA_FUSE_COUNT = 3
} fa_fuse;

/* "logits", "probs", "loss"; NULL out of range. */
const char *fa_fuse_name(int fuse);

/* fa_model_run_loss on the ensemble of `count` members (borrowed; one device: else
 * FA_ERR_ARGUMENT naming the member), weights[count] (NULL: equal) and fuse (fa_fuse). */
fa_status fa_ensemble_run(fa_model *const *members, const float *weights, int count, int fuse,
                          int64_t n, int64_t h, int64_t w, int64_t c, const float *x,
                          const int64_t *labels, int want_grad, float *loss, float *logits,
                          int64_t k_expected, int64_t *pred, float *grad, int device_io,
                          const fa_transform *transform, const int64_t *index, int64_t call,
                          int objective);

/* fa_oracle adapter: ctx is a fa_model_oracle; calls fa_model_run with its shape and transform
 * and counts calls. Matches fa_grad_fn; loss and pred may be NULL (see fa_model_run).
 *
 * What an attack spends (SPEC 12), per image, when grad_evals / forward_evals are not NULL:
 * row r of a call is image index[r] - index_base of the caller's arrays (index must then not be
 * NULL). A gradient call adds its gradient passes to grad_evals (one per transformed copy:
 * fa_transform_copies, the product of SI's, Admix's, BSR's and SIA's copies, else 1; VMI/VNI's
 * neighbours are gradient calls of their own); a forward that only serves loss or pred (a call
 * without gradient, or one whose gradient pass saw DI-transformed images and so not x itself)
 * adds 1 to forward_evals.
 *
 * Targeted attacks (SPEC 10), when targets is not NULL: row r's class is the target
 * targets[index[r] - index_base] instead of labels[r] (which stay the true labels: the core's
 * skip rule reads them), and the loss written for the core is -CE(z, target), the measure the
 * stop rules and the best iterate read (larger is further along). objective (fa_loss) picks the
 * gradient: FA_LOSS_CE / FA_LOSS_MARGIN untargeted, FA_LOSS_TARGET_CE / FA_LOSS_LOGIT targeted. */
typedef struct fa_model_oracle {
    fa_model *model;
    int64_t h, w, c;
    fa_transform transform;
    int device_io; /* x and grad are device memory (an attack running on FA_DEVICE_CUDA)  */
    int64_t calls; /* incremented by each call */
    int64_t index_base;     /* the index of the first image of the counters' arrays        */
    int64_t *grad_evals;    /* NULL, or one counter per image: gradient passes             */
    int64_t *forward_evals; /* NULL, or one counter per image: loss-only forwards          */
    int objective;          /* fa_loss of the gradient (FA_LOSS_CE: 0)                     */
    const int64_t *targets; /* NULL: untargeted; else one target class per image           */
    /* n_members > 0: the surrogate is this ensemble (fa_ensemble_run) and model is unused;
     * every pass counts once per member */
    fa_model *const *members;
    const float *weights;
    int n_members;
    int fuse;
} fa_model_oracle;

fa_status fa_model_oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                               const float *x, int want_grad, float *loss, int64_t *pred,
                               float *grad);

#ifdef __cplusplus
}
#endif

#endif /* FA_TORCH_H */
