/*
 * fa_torch.h -- the extern "C" shim over LibTorch: load a TorchScript classifier and get
 * cross-entropy, logits and input gradients for a batch, on CPU or CUDA.
 *
 * C++ exceptions never cross this boundary: each entry point catches c10::Error (its message
 * without the C++ backtrace), std::exception and ..., and returns a status with the message
 * in fa_last_error(). Only csrc/torch/ includes torch headers.
 *
 * Model convention: input float NCHW RGB in [0, 255]; output logits [N, K]. Callers hand the
 * shim NHWC images (the NumPy layout); the shim permutes. Parameters never require grad; the
 * module is put in eval mode at load.
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

/* device: FA_DEVICE_CPU or FA_DEVICE_CUDA (FA_ERR_NO_CUDA when torch sees no CUDA device).
 * Missing or unreadable file: FA_ERR_IO; not a TorchScript archive: FA_ERR_IO naming the path. */
fa_status fa_model_load(const char *path, int device, fa_model **out);
/* The same from an in-memory TorchScript archive (what torch.jit.save writes to a BytesIO). */
fa_status fa_model_load_buffer(const void *data, size_t size, int device, fa_model **out);
void fa_model_free(fa_model *model);
int fa_model_device(const fa_model *model);

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
    uint64_t seed;     /* DI draws from (seed, image index, call number)                      */
} fa_transform;

/*
 * One batch of n NHWC images x (n*h*w*c floats). x and grad are host memory, or, with
 * device_io = 1 and a model on CUDA, device memory of the model's GPU (the attack's own buffers:
 * no copies through the host).
 *   labels     host n, or NULL (then loss and grad are not computed); checked in [0, K)
 *   want_grad  compute grad (needs labels)
 *   loss       host n or NULL: CE in nats, -log softmax(logits)[y]
 *   logits     host n*k_expected or NULL (then k_expected is ignored)
 *   pred       host n or NULL: argmax of the logits
 *   grad       n*h*w*c or NULL: d loss_i / d x_i in NHWC order
 *   transform  NULL or the DI/TI/SI options (only used when want_grad)
 *   index      host n or NULL: the images' positions, for DI's per-image randomness
 *   call       the call number, for DI's per-image randomness
 * No gradient graph is built when want_grad is 0.
 */
fa_status fa_model_run(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float *x, const int64_t *labels, int want_grad, float *loss,
                       float *logits, int64_t k_expected, int64_t *pred, float *grad,
                       int device_io, const fa_transform *transform, const int64_t *index,
                       int64_t call);

/* fa_oracle adapter: ctx is a fa_model_oracle; calls fa_model_run with its shape and transform
 * and counts calls. Matches fa_grad_fn. */
typedef struct fa_model_oracle {
    fa_model *model;
    int64_t h, w, c;
    fa_transform transform;
    int device_io; /* x and grad are device memory (an attack running on FA_DEVICE_CUDA)  */
    int64_t calls; /* incremented by each call */
} fa_model_oracle;

fa_status fa_model_oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                               const float *x, int want_grad, float *loss, int64_t *pred,
                               float *grad);

#ifdef __cplusplus
}
#endif

#endif /* FA_TORCH_H */
