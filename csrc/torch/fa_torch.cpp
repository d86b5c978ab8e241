/*
 * fa_torch.cpp -- the extern "C" LibTorch shim of fa_torch.h: load a TorchScript classifier and
 * run it on NHWC batches for cross-entropy, logits, predictions and input gradients, with the
 * optional DI/TI/SI input transforms.
 *
 * Every entry point runs its body inside guarded(): no C++ exception crosses the C boundary,
 * each failure becomes a status with a message in fa_last_error().
 */
#include "fa_torch.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <c10/core/Allocator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

struct fa_model {
    torch::jit::Module module;
    int device;       /* fa_device */
    int device_index; /* the GPU ordinal; -1 on the CPU */
    std::mutex mutex; /* guards classes and taps */
    std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> classes; /* (h, w, c) -> K */
    std::map<int, at::Tensor> taps; /* TI kernel size -> its 1-D Gaussian on the model's device */
};

namespace {

/* The concise message of an exception: c10::Error without its C++ backtrace, and a TorchScript
 * interpreter error without its traceback (the error itself follows the last "<--- HERE"
 * source excerpt, on the first line that is not indented). */
std::string message_of(const std::exception &e) {
    const auto *torch_error = dynamic_cast<const c10::Error *>(&e);
    std::string text = torch_error != nullptr ? torch_error->what_without_backtrace() : e.what();
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
        text.pop_back();
    const size_t here = text.rfind("<--- HERE");
    if (text.find("Traceback of TorchScript") == std::string::npos || here == std::string::npos)
        return text;
    for (size_t line = text.find('\n', here); line != std::string::npos;
         line = text.find('\n', line + 1))
        if (line + 1 < text.size() && !std::isspace(static_cast<unsigned char>(text[line + 1])))
            return "in TorchScript: " + text.substr(line + 1);
    return text;
}

/* Runs body (which returns fa_status) and turns any exception into a status and a message. */
template <typename Body> fa_status guarded(const char *where, Body &&body) noexcept {
    try {
        return body();
    } catch (const c10::OutOfMemoryError &e) {
        return fa_set_error(FA_ERR_MEMORY, "%s: out of memory: %s", where, message_of(e).c_str());
    } catch (const c10::AcceleratorError &e) {
        return fa_set_error(FA_ERR_CUDA, "%s: CUDA error: %s", where, message_of(e).c_str());
    } catch (const std::bad_alloc &) {
        return fa_set_error(FA_ERR_MEMORY, "%s: out of memory", where);
    } catch (const std::exception &e) {
        return fa_set_error(FA_ERR_MODEL, "%s: LibTorch error: %s", where, message_of(e).c_str());
    } catch (...) {
        return fa_set_error(FA_ERR_INTERNAL, "%s: unknown C++ exception", where);
    }
}

long long ll(int64_t v) { return static_cast<long long>(v); }

fa_status check_device(int device, int index) {
    if (device != FA_DEVICE_CPU && device != FA_DEVICE_CUDA)
        return fa_set_error(FA_ERR_ARGUMENT,
                            "device=%d must be FA_DEVICE_CPU (0) or FA_DEVICE_CUDA (1)", device);
    if (device == FA_DEVICE_CPU) {
        if (index != -1 && index != 0)
            return fa_set_error(FA_ERR_ARGUMENT,
                                "device_index=%d must be -1 or 0 for FA_DEVICE_CPU", index);
        return FA_OK;
    }
    if (!torch::cuda::is_available())
        return fa_set_error(FA_ERR_NO_CUDA,
                            "device='cuda' requested but no CUDA device is available");
    const int count = static_cast<int>(torch::cuda::device_count());
    if (index < 0 || index >= count)
        return fa_set_error(FA_ERR_ARGUMENT,
                            "device_index=%d out of range: torch sees %d CUDA device%s [0, %d)",
                            index, count, count == 1 ? "" : "s", count);
    return FA_OK;
}

torch::Device torch_device(int device, int index) {
    return device == FA_DEVICE_CUDA
               ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index))
               : torch::Device(torch::kCPU);
}

torch::Device torch_device(const fa_model *model) {
    return torch_device(model->device, model->device_index);
}

torch::TensorOptions floats_on(const torch::Device &device) {
    return torch::TensorOptions().dtype(torch::kFloat).device(device);
}

/* Wraps a loaded module into a new handle: eval mode, parameters frozen; on CUDA the 4-D
 * (convolution) weights become channels_last once, the layout of every input. */
fa_status adopt(torch::jit::Module module, int device, int index, fa_model **out) {
    module.eval();
    for (at::Tensor parameter : module.parameters()) {
        parameter.requires_grad_(false);
        if (device == FA_DEVICE_CUDA && parameter.dim() == 4)
            parameter.set_data(parameter.contiguous(at::MemoryFormat::ChannelsLast));
    }
    fa_model *model = new fa_model();
    model->module = std::move(module);
    model->device = device;
    model->device_index = device == FA_DEVICE_CUDA ? index : -1;
    *out = model;
    return FA_OK;
}

std::string describe(const at::Tensor &t) {
    std::ostringstream text;
    text << t.sizes() << " " << c10::toString(t.scalar_type());
    return text.str();
}

/* One forward of input (NCHW, `rows` images); *logits is the checked [rows, K] output. The
 * input may be the caller's own memory: a model that writes into it is an error. */
fa_status forward(fa_model *model, const at::Tensor &input, int64_t rows, at::Tensor *logits) {
    const bool tracked = !input.is_inference(); /* inference tensors have no version */
    const auto version = tracked ? input._version() : 0;
    /* TorchScript's graph executor without its optimisations (thread-local, this call only):
     * its profiling executor would respecialise the graph after the first calls and fuse
     * element-wise groups on the GPU (e.g. x / 127.5 - 1.0 as one kernel), so a result would
     * depend on the call number and on the batch shape (compaction changes N). Unoptimised, every
     * call runs the same eager kernels. */
    const torch::jit::GraphOptimizerEnabledGuard unoptimised(false);
    const c10::IValue output = model->module.forward({input});
    if (tracked && input._version() != version)
        return fa_set_error(FA_ERR_MODEL, "the model modified its input in place (e.g. x.div_() "
                            "in forward): use out-of-place operations (x = x / 255)");
    if (!output.isTensor())
        return fa_set_error(FA_ERR_MODEL,
                            "model output must be logits of shape [N, classes]; got a %s, not a "
                            "Tensor",
                            output.tagKind().c_str());
    const at::Tensor t = output.toTensor();
    if (t.dim() != 2 || t.size(0) != rows || t.size(1) < 1 || !t.is_floating_point())
        return fa_set_error(FA_ERR_MODEL,
                            "model output must be logits of shape [N, classes] (float, N=%lld); "
                            "got %s",
                            ll(rows), describe(t).c_str());
    *logits = t;
    return FA_OK;
}

/* Rows whose logits are all finite. */
at::Tensor finite_rows(const at::Tensor &logits) { return at::isfinite(logits).all(1); }

/* -log softmax(logits)[label] per row, in float32; NaN for a row with a non-finite logit. */
at::Tensor cross_entropy(const at::Tensor &logits, const at::Tensor &labels) {
    const at::Tensor log_p = at::log_softmax(logits.to(torch::kFloat), 1);
    return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1);
}

/* The per-row objective of a gradient pass (fa_loss), float32, from logits and classes. */
at::Tensor objective_of(const at::Tensor &logits, const at::Tensor &classes, int objective) {
    if (objective == FA_LOSS_CE)
        return cross_entropy(logits, classes);
    if (objective == FA_LOSS_TARGET_CE)
        return -cross_entropy(logits, classes);
    const at::Tensor z = logits.to(torch::kFloat);
    const at::Tensor mine = z.gather(1, classes.unsqueeze(1)).squeeze(1);
    if (objective == FA_LOSS_LOGIT)
        return mine;
    /* FA_LOSS_MARGIN: the largest other logit minus the class's own */
    const at::Tensor others =
        z.scatter(1, classes.unsqueeze(1), -std::numeric_limits<float>::infinity());
    return std::get<0>(others.max(1)) - mine;
}

/* The labels (host) on `device`; a CUDA copy goes through pinned memory without blocking. */
at::Tensor labels_on(const int64_t *labels, int64_t n, const torch::Device &device) {
    const at::Tensor host = torch::from_blob(const_cast<int64_t *>(labels), {n}, torch::kLong);
    if (device.is_cpu())
        return host;
    return host.pin_memory().to(device, /*non_blocking=*/true);
}

bool transform_is_off(const fa_transform &t) {
    return t.di_prob == 0.0f && (t.si_copies == 0 || t.si_copies == 1) &&
           (t.ti_kernel == 0 || t.ti_kernel == 1) && t.admix_copies == 0 && t.bsr_copies == 0 &&
           t.sia_copies == 0;
}

/* Admix, BSR and SIA (their own checks; the image size is the call's). */
fa_status check_native_transforms(const fa_transform &t, int64_t h, int64_t w) {
    if (t.admix_copies < 0 || t.bsr_copies < 0 || t.sia_copies < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "transform.%s=%d must be >= 0 (0: off)",
                            t.admix_copies < 0 ? "admix_copies"
                            : t.bsr_copies < 0 ? "bsr_copies" : "sia_copies",
                            std::min({t.admix_copies, t.bsr_copies, t.sia_copies}));
    if (t.admix_copies > 0) {
        if (t.admix_scales < 1)
            return fa_set_error(FA_ERR_ARGUMENT, "transform.admix_scales=%d must be >= 1",
                                t.admix_scales);
        if (!std::isfinite(t.admix_eta) || t.admix_eta < 0.0f)
            return fa_set_error(FA_ERR_ARGUMENT, "transform.admix_eta=%g must be >= 0",
                                static_cast<double>(t.admix_eta));
        if (t.admix_pool == nullptr || t.admix_pool_labels == nullptr || t.admix_pool_n < 1)
            return fa_set_error(FA_ERR_ARGUMENT, "transform.admix_pool is empty: Admix needs the "
                                "images (and labels) to mix in");
    }
    if (t.bsr_copies > 0 && (t.bsr_blocks < 1 || t.bsr_blocks > std::min(h, w)))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.bsr_blocks=%d must be in [1, %lld] (the "
                            "image's smaller side)", t.bsr_blocks, ll(std::min(h, w)));
    if (t.bsr_copies > 0 && !(t.bsr_angle >= 0.0f && t.bsr_angle <= 180.0f))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.bsr_angle=%g must be in [0, 180] degrees",
                            static_cast<double>(t.bsr_angle));
    if (t.sia_copies > 0 && (t.sia_blocks < 1 || t.sia_blocks > std::min(h, w)))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.sia_blocks=%d must be in [1, %lld] (the "
                            "image's smaller side)", t.sia_blocks, ll(std::min(h, w)));
    return FA_OK;
}

fa_status check_transform(const fa_transform &t) {
    if (!(t.di_prob >= 0.0f && t.di_prob <= 1.0f))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.di_prob=%g must be in [0, 1]",
                            static_cast<double>(t.di_prob));
    if (t.di_prob > 0.0f && !(t.di_min_scale > 0.0f && t.di_min_scale <= 1.0f))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.di_min_scale=%g must be in (0, 1]",
                            static_cast<double>(t.di_min_scale));
    if (t.si_copies < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "transform.si_copies=%d must be >= 0", t.si_copies);
    if (t.ti_kernel < 0 || (t.ti_kernel > 0 && t.ti_kernel % 2 == 0))
        return fa_set_error(FA_ERR_ARGUMENT, "transform.ti_kernel=%d must be 0 or odd",
                            t.ti_kernel);
    if (t.pass_rows < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "transform.pass_rows=%lld must be >= 0 (0: all "
                            "rows in one pass)", ll(t.pass_rows));
    return FA_OK;
}

fa_status check_run(const fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                    const float *x, const int64_t *labels, int want_grad, float *grad,
                    const fa_transform *transform) {
    if (model == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "model is NULL");
    if (n < 0)
        return fa_set_error(FA_ERR_ARGUMENT, "n=%lld must be >= 0", ll(n));
    if (h < 1 || w < 1 || c < 1)
        return fa_set_error(FA_ERR_ARGUMENT, "image shape h=%lld, w=%lld, c=%lld must be >= 1",
                            ll(h), ll(w), ll(c));
    if (x == nullptr && n > 0)
        return fa_set_error(FA_ERR_ARGUMENT, "x is NULL");
    if (want_grad && labels == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "want_grad=1 needs labels, but labels is NULL");
    if (want_grad && grad == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "want_grad=1 needs grad, but grad is NULL");
    if (want_grad && transform != nullptr) {
        const fa_status status = check_transform(*transform);
        return status != FA_OK ? status : check_native_transforms(*transform, h, w);
    }
    return FA_OK;
}

fa_status check_labels(int64_t n, const int64_t *labels, int64_t k) {
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k)
            return fa_set_error(FA_ERR_ARGUMENT, "labels[%lld]=%lld out of range [0, %lld)", ll(i),
                                ll(labels[i]), ll(k));
    return FA_OK;
}

uint64_t mix(uint64_t z) { /* the splitmix64 finaliser */
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * DI: row r of input (copy r / n of image r % n) is, with probability di_prob, resized
 * bilinearly to a random height in [ceil(di_min_scale * h), h] (width in proportion) and
 * zero-padded back to h x w at a random offset. The draws depend only on (seed, index, call,
 * copy), so batching never changes them.
 */
at::Tensor diverse(const at::Tensor &input, int64_t n, const fa_transform &t,
                   const int64_t *index, int64_t call) {
    const int64_t rows = input.size(0), h = input.size(2), w = input.size(3);
    const double want = static_cast<double>(t.di_min_scale) * static_cast<double>(h);
    const int64_t low = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(want - 1e-4)), 1, h);
    std::vector<at::Tensor> parts;
    parts.reserve(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = r % n, copy = r / n;
        const uint64_t id = static_cast<uint64_t>(index != nullptr ? index[i] : i);
        std::mt19937_64 rng(mix(mix(mix(mix(t.seed) ^ id) ^ static_cast<uint64_t>(call)) ^
                                static_cast<uint64_t>(copy)));
        const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
        at::Tensor row = input.narrow(0, r, 1);
        if (u >= static_cast<double>(t.di_prob)) {
            parts.push_back(row);
            continue;
        }
        const int64_t rh = low + static_cast<int64_t>(rng() % static_cast<uint64_t>(h - low + 1));
        const int64_t rw =
            std::clamp<int64_t>(std::llround(static_cast<double>(rh) * w / h), 1, w);
        const int64_t top = static_cast<int64_t>(rng() % static_cast<uint64_t>(h - rh + 1));
        const int64_t left = static_cast<int64_t>(rng() % static_cast<uint64_t>(w - rw + 1));
        const at::Tensor resized = at::upsample_bilinear2d(row, {rh, rw}, false);
        parts.push_back(at::constant_pad_nd(resized, {left, w - rw - left, top, h - rh - top}, 0));
    }
    return at::cat(parts);
}

/* The normalised 1-D Gaussian of TI (k taps, sigma = (k - 1) / 6), a float tensor on the
 * host. */
at::Tensor gaussian_taps(int k) {
    const int64_t half = k / 2;
    const double sigma = (k - 1) / 6.0; /* the kernel spans +-3 sigma, as the reference code */
    std::vector<float> taps(static_cast<size_t>(k));
    double sum = 0.0;
    for (int j = 0; j < k; j++) {
        const double d = j - half;
        taps[static_cast<size_t>(j)] = static_cast<float>(std::exp(-d * d / (2.0 * sigma * sigma)));
        sum += taps[static_cast<size_t>(j)];
    }
    for (float &tap : taps)
        tap = static_cast<float>(tap / sum);
    return torch::from_blob(taps.data(), {k}, torch::kFloat).clone();
}

/* TI: depthwise convolution of the NCHW gradient with a normalised k x k Gaussian
 * (sigma = (k - 1) / 6, zero padding k / 2), done as two separable 1-D passes. The taps are built
 * once per model and size, so that no call copies them to the GPU (a stream synchronisation). */
at::Tensor smooth(fa_model *model, const at::Tensor &g, int k) {
    const int64_t c = g.size(1);
    at::Tensor line;
    {
        std::lock_guard<std::mutex> lock(model->mutex);
        const auto found = model->taps.find(k);
        if (found != model->taps.end())
            line = found->second;
    }
    if (!line.defined()) {
        line = gaussian_taps(k).to(g.device());
        std::lock_guard<std::mutex> lock(model->mutex);
        model->taps[k] = line;
    }
    const int64_t half = k / 2;
    const at::Tensor vertical = line.view({1, 1, k, 1}).expand({c, 1, k, 1}).contiguous();
    const at::Tensor horizontal = line.view({1, 1, 1, k}).expand({c, 1, 1, k}).contiguous();
    const std::vector<int64_t> one{1, 1}, pad_rows{half, 0}, pad_cols{0, half};
    const at::Tensor once = at::conv2d(g, vertical, std::nullopt, one, pad_rows, one, c);
    return at::conv2d(once, horizontal, std::nullopt, one, pad_cols, one, c);
}

/* ---------------------------------------------------------------- Admix, BSR, SIA
 * Each transform maps the rows of the gradient pass (R = copies * n, copy-major: row r is image
 * r % n) to more rows, copy-major again, so that they compose with SI and DI. Every draw comes
 * from (seed, image index, call, copy, kind): batching never changes one. The draws are one
 * vector of doubles per copy (fa_transform_draws exposes them to the tests). */

enum : uint64_t { SALT_ADMIX = 0xad31c5ULL, SALT_BSR = 0xb5b5ULL, SALT_SIA = 0x51a51aULL };

std::mt19937_64 stream(uint64_t seed, int64_t index, int64_t call, int64_t copy, uint64_t salt) {
    return std::mt19937_64(mix(mix(mix(mix(mix(seed) ^ static_cast<uint64_t>(index)) ^
                                       static_cast<uint64_t>(call)) ^
                                   static_cast<uint64_t>(copy)) ^
                               salt));
}

double uniform01(std::mt19937_64 &rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

int64_t below(std::mt19937_64 &rng, int64_t m) {
    return static_cast<int64_t>(rng() % static_cast<uint64_t>(m));
}

/* A uniform permutation of 0..m-1 appended to out (Fisher-Yates). */
void permutation(std::mt19937_64 &rng, int64_t m, std::vector<double> &out) {
    std::vector<int64_t> p(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; i++)
        p[static_cast<size_t>(i)] = i;
    for (int64_t i = m - 1; i > 0; i--)
        std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(below(rng, i + 1))]);
    out.insert(out.end(), p.begin(), p.end());
}

/* b random lengths that sum to size: uniform weights, rounded shares, the largest absorbing
 * the rounding (BSR's cut, as TransferAttack's get_length). */
void lengths(std::mt19937_64 &rng, int64_t b, int64_t size, std::vector<double> &out) {
    std::vector<double> u(static_cast<size_t>(b));
    double sum = 0.0;
    for (double &v : u)
        sum += (v = uniform01(rng) + 1e-12);
    std::vector<int64_t> len(static_cast<size_t>(b));
    int64_t total = 0, largest = 0;
    for (int64_t i = 0; i < b; i++) {
        len[static_cast<size_t>(i)] = std::llround(u[static_cast<size_t>(i)] / sum * size);
        total += len[static_cast<size_t>(i)];
        if (u[static_cast<size_t>(i)] > u[static_cast<size_t>(largest)])
            largest = i;
    }
    len[static_cast<size_t>(largest)] += size - total;
    out.insert(out.end(), len.begin(), len.end());
}

/* b + 1 sorted cuts 0 < c_1 < ... < c_{b-1} < size (distinct, uniform) with 0 and size. */
void cuts(std::mt19937_64 &rng, int64_t b, int64_t size, std::vector<double> &out) {
    std::vector<int64_t> pool(static_cast<size_t>(size - 1));
    for (int64_t i = 0; i < size - 1; i++)
        pool[static_cast<size_t>(i)] = i + 1;
    for (int64_t i = 0; i < b - 1; i++)
        std::swap(pool[static_cast<size_t>(i)],
                  pool[static_cast<size_t>(i + below(rng, size - 1 - i))]);
    std::vector<int64_t> c(pool.begin(), pool.begin() + (b - 1));
    std::sort(c.begin(), c.end());
    out.push_back(0.0);
    out.insert(out.end(), c.begin(), c.end());
    out.push_back(static_cast<double>(size));
}

fa_status admix_draws(const fa_transform &t, int64_t label, int64_t index, int64_t call,
                      int64_t copy, std::vector<double> &out) {
    int64_t others = 0;
    for (int64_t p = 0; p < t.admix_pool_n; p++)
        others += t.admix_pool_labels[p] != label;
    if (others == 0)
        return fa_set_error(FA_ERR_ARGUMENT, "transform.admix_pool: Admix mixes in images of "
                            "other classes, but all %lld pool images have label %lld",
                            ll(t.admix_pool_n), ll(label));
    std::mt19937_64 rng = stream(t.seed, index, call, copy, SALT_ADMIX);
    int64_t pick = below(rng, others);
    for (int64_t p = 0; p < t.admix_pool_n; p++)
        if (t.admix_pool_labels[p] != label && pick-- == 0) {
            out.push_back(static_cast<double>(p));
            break;
        }
    return FA_OK;
}

void bsr_draws(const fa_transform &t, int64_t h, int64_t w, int64_t index, int64_t call,
               int64_t copy, std::vector<double> &out) {
    std::mt19937_64 rng = stream(t.seed, index, call, copy, SALT_BSR);
    const int64_t b = t.bsr_blocks;
    const int64_t axis = below(rng, 2);
    const int64_t first = axis == 0 ? h : w, second = axis == 0 ? w : h;
    out.push_back(static_cast<double>(axis));
    lengths(rng, b, first, out);
    permutation(rng, b, out);
    for (int64_t s = 0; s < b; s++) {
        lengths(rng, b, second, out);
        permutation(rng, b, out);
    }
    for (int64_t j = 0; j < b * b; j++)
        out.push_back((2.0 * uniform01(rng) - 1.0) * static_cast<double>(t.bsr_angle));
}

void sia_draws(const fa_transform &t, int64_t h, int64_t w, int64_t index, int64_t call,
               int64_t copy, std::vector<double> &out) {
    std::mt19937_64 rng = stream(t.seed, index, call, copy, SALT_SIA);
    const int64_t b = t.sia_blocks;
    cuts(rng, b, h, out);
    cuts(rng, b, w, out);
    for (int64_t i = 0; i < b; i++)
        for (int64_t j = 0; j < b; j++) {
            const int64_t bh = static_cast<int64_t>(out[static_cast<size_t>(i + 1)] -
                                                    out[static_cast<size_t>(i)]);
            const int64_t bw = static_cast<int64_t>(out[static_cast<size_t>(b + 2 + j)] -
                                                    out[static_cast<size_t>(b + 1 + j)]);
            const int64_t op = below(rng, 7);
            double parameter = 0.0;
            if (op == 0)
                parameter = static_cast<double>(below(rng, bh));
            else if (op == 1)
                parameter = static_cast<double>(below(rng, bw));
            else if (op == 5)
                parameter = uniform01(rng);
            else if (op == 6)
                parameter = static_cast<double>(rng() >> 11); /* exact in a double */
            out.push_back(static_cast<double>(op));
            out.push_back(parameter);
        }
}

/* Admix of the rows of input (NCHW, rows = copies * n): for each partner j the rows plus
 * admix_eta times partner j's clean image, then those at scales 0.5^s. */
fa_status admix(const at::Tensor &input, int64_t n, const fa_transform &t, const int64_t *labels,
                const int64_t *index, int64_t call, at::Tensor *out) {
    const int64_t rows = input.size(0), h = input.size(2), w = input.size(3), c = input.size(1);
    const int64_t dim = h * w * c;
    std::vector<at::Tensor> mixed;
    for (int64_t j = 0; j < t.admix_copies; j++) {
        at::Tensor partners = torch::empty({n, h, w, c}, torch::kFloat);
        float *dst = partners.data_ptr<float>();
        for (int64_t i = 0; i < n; i++) {
            std::vector<double> draw;
            const int64_t id = index != nullptr ? index[i] : i;
            const fa_status status = admix_draws(t, labels[i], id, call, j, draw);
            if (status != FA_OK)
                return status;
            const int64_t p = static_cast<int64_t>(draw[0]);
            std::copy(t.admix_pool + p * dim, t.admix_pool + (p + 1) * dim, dst + i * dim);
        }
        const at::Tensor mate = partners.to(input.device()).permute({0, 3, 1, 2});
        const double eta = static_cast<double>(t.admix_eta);
        mixed.push_back(input + eta * mate.repeat({rows / n, 1, 1, 1}));
    }
    const at::Tensor all = at::cat(mixed);
    std::vector<at::Tensor> scaled{all};
    for (int s = 1; s < t.admix_scales; s++)
        scaled.push_back(all * std::ldexp(1.0, -s));
    *out = at::cat(scaled);
    return FA_OK;
}

/* One block [1, C, bh, bw] rotated about its centre by `degrees`: the output at pixel offset p
 * from the centre samples the block at R(degrees) p (bilinear, zero outside). */
at::Tensor rotate(const at::Tensor &block, double degrees) {
    const int64_t bh = block.size(2), bw = block.size(3);
    if (bh == 0 || bw == 0)
        return block;
    const double a = degrees * 3.14159265358979323846 / 180.0, co = std::cos(a), si = std::sin(a);
    const double hw = static_cast<double>(bh) / static_cast<double>(bw);
    const float theta[6] = {static_cast<float>(co), static_cast<float>(-si * hw), 0.0f,
                            static_cast<float>(si / hw), static_cast<float>(co), 0.0f};
    const at::Tensor m =
        torch::from_blob(const_cast<float *>(theta), {1, 2, 3}, torch::kFloat).to(block.device());
    const at::Tensor grid = at::affine_grid_generator(m, block.sizes(), false);
    return at::grid_sampler(block, grid, 0, 0, false);
}

/* The copies of a per-row transform, copy-major: for every copy and row r of input (image
 * r % n), build(row [1, C, H, W], the image's index, its draw number) gives the row's copy; the
 * draw number copy * (rows / n) + r / n keeps the copies of SI's rows apart. */
template <typename Build>
at::Tensor per_row_copies(const at::Tensor &input, int64_t n, int64_t copies,
                          const int64_t *index, Build build) {
    const int64_t rows = input.size(0);
    std::vector<at::Tensor> parts;
    parts.reserve(static_cast<size_t>(copies * rows));
    for (int64_t copy = 0; copy < copies; copy++)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t i = r % n, id = index != nullptr ? index[i] : i;
            parts.push_back(build(input.narrow(0, r, 1), id, copy * (rows / n) + r / n));
        }
    return at::cat(parts);
}

/* BSR: bsr_copies block-shuffled, rotated copies of every row. */
at::Tensor block_shuffle(const at::Tensor &input, int64_t n, const fa_transform &t,
                         const int64_t *index, int64_t call) {
    const int64_t h = input.size(2), w = input.size(3), b = t.bsr_blocks;
    return per_row_copies(input, n, t.bsr_copies, index, [&](const at::Tensor &row, int64_t id,
                                                             int64_t draw) {
        std::vector<double> d;
        bsr_draws(t, h, w, id, call, draw, d);
        const int64_t first = d[0] == 0.0 ? 2 : 3, second = first == 2 ? 3 : 2;
        auto split = [&](const at::Tensor &x, int64_t dim, size_t at_) {
            std::vector<at::Tensor> pieces;
            int64_t start = 0;
            for (int64_t k = 0; k < b; k++) {
                const int64_t len = static_cast<int64_t>(d[at_ + static_cast<size_t>(k)]);
                pieces.push_back(x.narrow(dim, start, len));
                start += len;
            }
            return pieces;
        };
        const std::vector<at::Tensor> strips = split(row, first, 1);
        std::vector<at::Tensor> out_strips;
        for (int64_t s = 0; s < b; s++) {
            const at::Tensor strip = strips[static_cast<size_t>(d[static_cast<size_t>(1 + b + s)])];
            const size_t base = static_cast<size_t>(1 + 2 * b + 2 * b * s);
            const std::vector<at::Tensor> pieces = split(strip, second, base);
            std::vector<at::Tensor> placed;
            for (int64_t k = 0; k < b; k++) {
                const size_t which = static_cast<size_t>(d[base + static_cast<size_t>(b + k)]);
                const double angle = d[static_cast<size_t>(1 + 2 * b + 2 * b * b + s * b + k)];
                placed.push_back(rotate(pieces[which], angle));
            }
            out_strips.push_back(at::cat(placed, second));
        }
        return at::cat(out_strips, first);
    });
}

/* One SIA block transform (op, parameter of sia_draws). */
at::Tensor sia_block(const at::Tensor &x, int64_t op, double parameter) {
    switch (op) {
    case 0:
        return x.roll({static_cast<int64_t>(parameter)}, {2});
    case 1:
        return x.roll({static_cast<int64_t>(parameter)}, {3});
    case 2:
        return x.flip({2});
    case 3:
        return x.flip({3});
    case 4:
        return x.flip({2, 3});
    case 5:
        return x * parameter;
    default: {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
            static_cast<uint64_t>(parameter));
        const at::Tensor noise = torch::empty(x.sizes(), torch::kFloat).uniform_(-16.0, 16.0, gen);
        return at::clamp(x + noise.to(x.device()), 0.0, 255.0);
    }
    }
}

/* SIA: sia_copies structure-invariant copies of every row. */
at::Tensor structure_invariant(const at::Tensor &input, int64_t n, const fa_transform &t,
                               const int64_t *index, int64_t call) {
    const int64_t h = input.size(2), w = input.size(3), b = t.sia_blocks;
    return per_row_copies(input, n, t.sia_copies, index, [&](const at::Tensor &row, int64_t id,
                                                             int64_t draw) {
        std::vector<double> d;
        sia_draws(t, h, w, id, call, draw, d);
        std::vector<at::Tensor> bands;
        for (int64_t bi = 0; bi < b; bi++) {
            const int64_t top = static_cast<int64_t>(d[static_cast<size_t>(bi)]);
            const int64_t bh = static_cast<int64_t>(d[static_cast<size_t>(bi + 1)]) - top;
            std::vector<at::Tensor> blocks;
            for (int64_t bj = 0; bj < b; bj++) {
                const int64_t left = static_cast<int64_t>(d[static_cast<size_t>(b + 1 + bj)]);
                const int64_t bw = static_cast<int64_t>(d[static_cast<size_t>(b + 2 + bj)]) - left;
                const size_t at_ = static_cast<size_t>(2 * b + 2 + 2 * (bi * b + bj));
                blocks.push_back(sia_block(row.narrow(2, top, bh).narrow(3, left, bw),
                                           static_cast<int64_t>(d[at_]), d[at_ + 1]));
            }
            bands.push_back(at::cat(blocks, 3));
        }
        return at::cat(bands, 2);
    });
}

int64_t copies_of(const fa_transform &t) {
    int64_t copies = std::max(t.si_copies, 1);
    if (t.admix_copies > 0)
        copies *= static_cast<int64_t>(t.admix_copies) * std::max(t.admix_scales, 1);
    if (t.bsr_copies > 0)
        copies *= t.bsr_copies;
    if (t.sia_copies > 0)
        copies *= t.sia_copies;
    return copies;
}

/* The surrogate of one call: a model, or an ensemble's members with weights summing to 1 and
 * a fuse rule (fa_fuse, SPEC 9). Members share the device of the first. */
struct surrogate {
    std::vector<fa_model *> models;
    std::vector<float> weights;
    int fuse = FA_FUSE_LOGITS;
    fa_model *first() const { return models.front(); }
};

/* Every member's logits on input (rows images); all must have the same number of classes. */
fa_status forward_all(const surrogate &s, const at::Tensor &input, int64_t rows,
                      std::vector<at::Tensor> *outs) {
    outs->clear();
    for (size_t i = 0; i < s.models.size(); i++) {
        at::Tensor out;
        const fa_status status = forward(s.models[i], input, rows, &out);
        if (status != FA_OK)
            return status;
        if (i > 0 && out.size(1) != outs->front().size(1))
            return fa_set_error(FA_ERR_MODEL, "ensemble members[%zu] has %lld classes, but "
                                "members[0] has %lld", i, ll(out.size(1)),
                                ll(outs->front().size(1)));
        outs->push_back(out);
    }
    return FA_OK;
}

/* log of the weighted mean of the members' softmax (the probs fuse's output). */
at::Tensor log_mean_probs(const surrogate &s, const std::vector<at::Tensor> &outs) {
    at::Tensor p;
    for (size_t i = 0; i < outs.size(); i++) {
        const at::Tensor term = at::softmax(outs[i].to(torch::kFloat), 1) * s.weights[i];
        p = p.defined() ? p + term : term;
    }
    return at::log(p);
}

/* The fused output [rows, K] whose argmax is the prediction: a single model's logits; the
 * weighted mean of logits ("logits"); log of the weighted mean of softmax ("probs", "loss"). */
at::Tensor fused_output(const surrogate &s, const std::vector<at::Tensor> &outs) {
    if (outs.size() == 1 && s.fuse != FA_FUSE_PROBS)
        return outs.front();
    if (s.fuse != FA_FUSE_LOGITS)
        return log_mean_probs(s, outs);
    at::Tensor z;
    for (size_t i = 0; i < outs.size(); i++) {
        const at::Tensor term = outs[i].to(torch::kFloat) * s.weights[i];
        z = z.defined() ? z + term : term;
    }
    return z;
}

/* The per-row objective (fa_loss) of the fused surrogate: of the fused output, or for the
 * "loss" fuse the weighted mean of the members' objectives (SPEC 9). */
at::Tensor fused_objective(const surrogate &s, const std::vector<at::Tensor> &outs,
                           const at::Tensor &classes, int objective) {
    if (s.fuse != FA_FUSE_LOSS || outs.size() == 1)
        return objective_of(fused_output(s, outs), classes, objective);
    at::Tensor total;
    for (size_t i = 0; i < outs.size(); i++) {
        const at::Tensor term = objective_of(outs[i], classes, objective) * s.weights[i];
        total = total.defined() ? total + term : term;
    }
    return total;
}

/* Rows where any member's logits are not all finite. */
at::Tensor nonfinite_rows(const std::vector<at::Tensor> &outs) {
    at::Tensor bad;
    for (const at::Tensor &out : outs) {
        const at::Tensor b = finite_rows(out).logical_not();
        bad = bad.defined() ? bad.logical_or(b) : b;
    }
    return bad;
}

/*
 * The gradient pass on x_nhwc (NHWC, on the model's device, possibly the caller's memory):
 * *gradient = d sum_i objective_i / d x over the transformed inputs (fa_loss; CE by default),
 * as an NCHW tensor whose memory is NHWC (channels_last), and *logits every member's plain
 * logits at x when the transformed pass gives them (no DI, Admix, BSR or SIA). The model sees x as a channels_last NCHW view of the caller's memory: no copy.
 * Autograd never writes into a leaf, and a model that writes into its input fails (a leaf that
 * requires grad cannot be modified in place).
 */
fa_status gradient_pass(const surrogate &s, const at::Tensor &x_nhwc, int64_t n,
                        const int64_t *labels, int64_t k_expected, bool want_k,
                        const fa_transform *transform, const int64_t *index, int64_t call,
                        int objective, at::Tensor *gradient, std::vector<at::Tensor> *logits) {
    const fa_transform none = {};
    const fa_transform &t = transform != nullptr ? *transform : none;
    const int copies = std::max(t.si_copies, 1);
    const bool di = t.di_prob > 0.0f;

    const at::Tensor leaf = x_nhwc.detach().requires_grad_(true);
    const at::Tensor x = leaf.permute({0, 3, 1, 2});
    at::Tensor input = x;
    if (copies > 1) {
        std::vector<at::Tensor> scaled{x};
        for (int i = 1; i < copies; i++)
            scaled.push_back(x * std::ldexp(1.0, -i));
        input = at::cat(scaled);
    }
    fa_status status = FA_OK;
    if (t.admix_copies > 0 && (status = admix(input, n, t, labels, index, call, &input)) != FA_OK)
        return status;
    if (t.bsr_copies > 0)
        input = block_shuffle(input, n, t, index, call);
    if (t.sia_copies > 0)
        input = structure_invariant(input, n, t, index, call);
    const int64_t total = copies_of(t); /* SI x Admix x BSR x SIA rows per image */
    const bool plain_first = !di && total == copies; /* copy 0 is x itself */
    if (di)
        input = diverse(input, n, t, index, call);

    const int64_t rows = total * n;
    const int64_t chunk = t.pass_rows > 0 ? std::min(t.pass_rows, rows) : rows;
    at::Tensor y = labels_on(labels, n, input.device());
    if (total > 1)
        y = y.repeat({total});
    /* The rows in chunks of at most `chunk`: each chunk's forward and backward (one gradient pass
     * per member) to its own leaf, then one backward of the transforms from the joined
     * gradient. One chunk is the plain backward from the objective to x. */
    std::vector<at::Tensor> outs, plain, chunk_grads;
    for (int64_t start = 0; start < rows; start += chunk) {
        const int64_t m = std::min(chunk, rows - start);
        const at::Tensor part =
            chunk == rows ? input : input.narrow(0, start, m).detach().requires_grad_(true);
        status = forward_all(s, part, m, &outs);
        if (status != FA_OK)
            return status;
        const int64_t k = outs.front().size(1);
        if (start == 0 && want_k && k_expected != k)
            return fa_set_error(FA_ERR_ARGUMENT, "k_expected=%lld does not match the model's "
                                "%lld classes", ll(k_expected), ll(k));
        if (start == 0 && (status = check_labels(n, labels, k)) != FA_OK)
            return status;
        const at::Tensor summed =
            fused_objective(s, outs, y.narrow(0, start, m).to(outs.front().device()), objective)
                .sum();
        if (chunk == rows) {
            *gradient = torch::autograd::grad({summed}, {leaf})[0];
        } else {
            chunk_grads.push_back(torch::autograd::grad({summed}, {part})[0]);
        }
        if (plain_first && start < n) /* copy 0 (rows [0, n)) is the plain x */
            for (size_t i = 0; i < outs.size(); i++) {
                const at::Tensor mine = outs[i].narrow(0, 0, std::min(m, n - start)).detach();
                if (plain.size() <= i)
                    plain.push_back(mine);
                else
                    plain[i] = at::cat({plain[i], mine});
            }
    }
    if (chunk < rows)
        *gradient = torch::autograd::grad({input}, {leaf}, {at::cat(chunk_grads)})[0];
    *gradient = gradient->permute({0, 3, 1, 2});

    torch::NoGradGuard no_grad;
    if (total > 1)
        gradient->div_(static_cast<double>(total));
    if (t.ti_kernel > 1)
        *gradient = smooth(s.first(), *gradient, t.ti_kernel);
    *logits = plain;
    return FA_OK;
}

/* Copies src (any strides, any device) into the caller's host or device buffer. */
void copy_out(void *dst, at::IntArrayRef sizes, torch::TensorOptions options,
              const at::Tensor &src) {
    torch::from_blob(dst, sizes, options).copy_(src);
}

} // namespace

extern "C" {

fa_status fa_model_load(const char *path, int device, int device_index, fa_model **out) {
    return guarded("fa_model_load", [&]() -> fa_status {
        if (out == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "out is NULL");
        *out = nullptr;
        if (path == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "path is NULL");
        fa_status status = check_device(device, device_index);
        if (status != FA_OK)
            return status;
        std::error_code code;
        const std::filesystem::file_status info = std::filesystem::status(path, code);
        if (!std::filesystem::exists(info))
            return fa_set_error(FA_ERR_IO, "model file '%s' does not exist", path);
        if (std::filesystem::is_directory(info))
            return fa_set_error(FA_ERR_IO, "model file '%s' is a directory", path);
        if (!std::ifstream(path, std::ios::binary))
            return fa_set_error(FA_ERR_IO, "model file '%s' cannot be read", path);
        const c10::InferenceMode not_inference(false); /* parameters usable by autograd */
        const torch::Device target = torch_device(device, device_index);
        const c10::DeviceGuard on_device(target);
        torch::jit::Module module;
        try {
            module = torch::jit::load(path, target);
        } catch (const std::exception &e) {
            return fa_set_error(FA_ERR_IO, "cannot load TorchScript model from '%s': %s", path,
                                message_of(e).c_str());
        }
        return adopt(std::move(module), device, device_index, out);
    });
}

fa_status fa_model_load_buffer(const void *data, size_t size, int device, int device_index,
                               fa_model **out) {
    return guarded("fa_model_load_buffer", [&]() -> fa_status {
        if (out == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "out is NULL");
        *out = nullptr;
        if (data == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "data is NULL");
        fa_status status = check_device(device, device_index);
        if (status != FA_OK)
            return status;
        const c10::InferenceMode not_inference(false);
        const torch::Device target = torch_device(device, device_index);
        const c10::DeviceGuard on_device(target);
        std::istringstream stream(std::string(static_cast<const char *>(data), size));
        torch::jit::Module module;
        try {
            module = torch::jit::load(stream, target);
        } catch (const std::exception &e) {
            return fa_set_error(FA_ERR_IO,
                                "cannot load TorchScript model from a buffer of %zu bytes: %s",
                                size, message_of(e).c_str());
        }
        return adopt(std::move(module), device, device_index, out);
    });
}

void fa_model_free(fa_model *model) { delete model; }

int fa_model_device(const fa_model *model) { return model != nullptr ? model->device : -1; }

int fa_model_device_index(const fa_model *model) {
    return model != nullptr ? model->device_index : -1;
}

void *fa_model_cuda_stream(const fa_model *model) {
    if (model == nullptr || model->device != FA_DEVICE_CUDA)
        return nullptr;
    try { /* through c10's device-generic interface: no CUDA headers in the shim */
        const torch::Device device = torch_device(model);
        return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
    } catch (...) {
        return nullptr; /* cannot happen for a loaded CUDA model; nothing may cross the boundary */
    }
}

fa_status fa_model_num_classes(fa_model *model, int64_t h, int64_t w, int64_t c, int64_t *k) {
    return guarded("fa_model_num_classes", [&]() -> fa_status {
        if (model == nullptr || k == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "%s is NULL", model == nullptr ? "model" : "k");
        if (h < 1 || w < 1 || c < 1)
            return fa_set_error(FA_ERR_ARGUMENT,
                                "image shape h=%lld, w=%lld, c=%lld must be >= 1", ll(h), ll(w),
                                ll(c));
        const auto key = std::make_tuple(h, w, c);
        {
            std::lock_guard<std::mutex> lock(model->mutex);
            const auto found = model->classes.find(key);
            if (found != model->classes.end()) {
                *k = found->second;
                return FA_OK;
            }
        }
        at::Tensor logits;
        {
            const c10::DeviceGuard on_device(torch_device(model));
            const c10::InferenceMode inference;
            const at::Tensor zeros =
                torch::zeros({1, h, w, c}, floats_on(torch_device(model))).permute({0, 3, 1, 2});
            const fa_status status = forward(model, zeros, 1, &logits);
            if (status != FA_OK)
                return status;
        }
        std::lock_guard<std::mutex> lock(model->mutex);
        model->classes[key] = logits.size(1);
        *k = logits.size(1);
        return FA_OK;
    });
}

const char *fa_loss_name(int loss) {
    static const char *const names[FA_LOSS_COUNT] = {"ce", "target_ce", "logit", "margin"};
    return loss >= 0 && loss < FA_LOSS_COUNT ? names[loss] : nullptr;
}

fa_status fa_model_run(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float *x, const int64_t *labels, int want_grad, float *loss,
                       float *logits, int64_t k_expected, int64_t *pred, float *grad,
                       int device_io, const fa_transform *transform, const int64_t *index,
                       int64_t call) {
    return fa_model_run_loss(model, n, h, w, c, x, labels, want_grad, loss, logits, k_expected,
                             pred, grad, device_io, transform, index, call, FA_LOSS_CE);
}

} // extern "C"

namespace {

/* fa_model_run_loss / fa_ensemble_run for a checked surrogate (inside guarded()). */
fa_status run_surrogate(const surrogate &s, int64_t n, int64_t h, int64_t w, int64_t c,
                        const float *x, const int64_t *labels, int want_grad, float *loss,
                        float *logits, int64_t k_expected, int64_t *pred, float *grad,
                        int device_io, const fa_transform *transform, const int64_t *index,
                        int64_t call, int objective) {
        fa_model *model = s.first();
        fa_status status = check_run(model, n, h, w, c, x, labels, want_grad, grad, transform);
        if (status != FA_OK || n == 0)
            return status;
        if (fa_loss_name(objective) == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "objective=%d must be a fa_loss in [0, %d)",
                                objective, FA_LOSS_COUNT);
        const bool host_reads = loss != nullptr || logits != nullptr || pred != nullptr;
        if (!want_grad && !host_reads)
            return FA_OK; /* nothing asked for */
        /* The caller's thread may be in torch.no_grad() or torch.inference_mode(): tensors made
         * here are normal tensors and the gradient pass records its graph. */
        const c10::InferenceMode not_inference(false);
        const torch::Device device = torch_device(model);
        const c10::DeviceGuard on_device(device);
        const torch::Device io =
            model->device == FA_DEVICE_CUDA && device_io ? device : torch::Device(torch::kCPU);
        /* The NHWC buffer is the channels_last memory of the NCHW batch: the model reads it in
         * place (a copy only to move host images to the GPU). */
        const at::Tensor x_nhwc =
            torch::from_blob(const_cast<float *>(x), {n, h, w, c}, floats_on(io)).to(device);

        std::vector<at::Tensor> outs;
        if (want_grad) {
            at::Tensor gradient;
            status = gradient_pass(s, x_nhwc, n, labels, k_expected, logits != nullptr,
                                   transform, index, call, objective, &gradient, &outs);
            if (status != FA_OK)
                return status;
            /* NCHW over NHWC memory into the caller's NHWC buffer: a plain copy */
            torch::from_blob(grad, {n, h, w, c}, floats_on(io))
                .permute({0, 3, 1, 2})
                .copy_(gradient);
            if (!host_reads)
                return FA_OK; /* device grad stays queued on the model's stream */
        }
        const c10::InferenceMode inference;
        if (outs.empty()) { /* no gradient, or the transformed pass did not see plain x */
            status = forward_all(s, x_nhwc.permute({0, 3, 1, 2}), n, &outs);
            if (status != FA_OK)
                return status;
        }
        const at::Tensor out = fused_output(s, outs);
        const int64_t k = out.size(1);
        if (logits != nullptr && k_expected != k)
            return fa_set_error(FA_ERR_ARGUMENT,
                                "k_expected=%lld does not match the model's %lld classes",
                                ll(k_expected), ll(k));
        const torch::TensorOptions host = torch::TensorOptions().device(torch::kCPU);
        if (labels != nullptr) {
            status = check_labels(n, labels, k);
            if (status != FA_OK)
                return status;
        }
        /* Copies to pageable host memory wait for the model's stream only. */
        const at::Tensor nonfinite = nonfinite_rows(outs);
        if (loss != nullptr && labels != nullptr)
            copy_out(loss, {n}, host.dtype(torch::kFloat),
                     fused_objective(s, outs, labels_on(labels, n, out.device()), FA_LOSS_CE)
                         .masked_fill(nonfinite, std::nanf("")));
        if (logits != nullptr)
            copy_out(logits, {n, k}, host.dtype(torch::kFloat), out);
        if (pred != nullptr)
            copy_out(pred, {n}, host.dtype(torch::kLong), out.argmax(1).masked_fill(nonfinite, -1));
        return FA_OK;
}

/* The checked surrogate of an ensemble (SPEC 9): members on one device, weights >= 0 that sum
 * to 1 (NULL: equal), a known fuse. */
fa_status ensemble_of(fa_model *const *members, const float *weights, int count, int fuse,
                      surrogate *out) {
    if (members == nullptr || count < 1)
        return fa_set_error(FA_ERR_ARGUMENT, "members: an ensemble needs at least one member "
                            "(count=%d)", count);
    if (fuse < 0 || fuse >= FA_FUSE_COUNT)
        return fa_set_error(FA_ERR_ARGUMENT, "fuse=%d must be a fa_fuse in [0, %d)", fuse,
                            FA_FUSE_COUNT);
    double sum = 0.0;
    for (int i = 0; i < count; i++) {
        if (members[i] == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "members[%d] is NULL", i);
        if (members[i]->device != members[0]->device ||
            members[i]->device_index != members[0]->device_index)
            return fa_set_error(FA_ERR_ARGUMENT, "members[%d] is on another device than "
                                "members[0]: an ensemble runs on one device", i);
        const double wi = weights != nullptr ? weights[i] : 1.0 / count;
        if (!(wi >= 0.0) || !std::isfinite(wi))
            return fa_set_error(FA_ERR_ARGUMENT, "weights[%d]=%g must be >= 0", i, wi);
        sum += wi;
        out->models.push_back(members[i]);
        out->weights.push_back(static_cast<float>(wi));
    }
    if (std::fabs(sum - 1.0) > 1e-4)
        return fa_set_error(FA_ERR_ARGUMENT, "weights sum to %g, must sum to 1", sum);
    out->fuse = fuse;
    return FA_OK;
}

} // namespace

extern "C" {

fa_status fa_model_run_loss(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                            const float *x, const int64_t *labels, int want_grad, float *loss,
                            float *logits, int64_t k_expected, int64_t *pred, float *grad,
                            int device_io, const fa_transform *transform, const int64_t *index,
                            int64_t call, int objective) {
    return guarded("fa_model_run", [&]() -> fa_status {
        if (model == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "model is NULL");
        surrogate s;
        s.models = {model};
        s.weights = {1.0f};
        return run_surrogate(s, n, h, w, c, x, labels, want_grad, loss, logits, k_expected,
                             pred, grad, device_io, transform, index, call, objective);
    });
}

fa_status fa_ensemble_run(fa_model *const *members, const float *weights, int count, int fuse,
                          int64_t n, int64_t h, int64_t w, int64_t c, const float *x,
                          const int64_t *labels, int want_grad, float *loss, float *logits,
                          int64_t k_expected, int64_t *pred, float *grad, int device_io,
                          const fa_transform *transform, const int64_t *index, int64_t call,
                          int objective) {
    return guarded("fa_ensemble_run", [&]() -> fa_status {
        surrogate s;
        const fa_status status = ensemble_of(members, weights, count, fuse, &s);
        if (status != FA_OK)
            return status;
        return run_surrogate(s, n, h, w, c, x, labels, want_grad, loss, logits, k_expected,
                             pred, grad, device_io, transform, index, call, objective);
    });
}

const char *fa_fuse_name(int fuse) {
    static const char *const names[FA_FUSE_COUNT] = {"logits", "probs", "loss"};
    return fuse >= 0 && fuse < FA_FUSE_COUNT ? names[fuse] : nullptr;
}

fa_status fa_torch_cuda_alloc(void **p, size_t bytes, int device_index, void *cuda_stream) {
    return guarded("fa_torch_cuda_alloc", [&]() -> fa_status {
        if (p == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "p is NULL");
        *p = nullptr;
        if (device_index < 0)
            return fa_set_error(FA_ERR_ARGUMENT, "device_index=%d must be >= 0", device_index);
        /* torch's CUDA state (its caching allocator among it) exists after its lazy init only:
         * a process that has not made a CUDA tensor yet (the conformance suite) has none */
        at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
        const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_index));
        const c10::DeviceGuard on_device(device);
        /* torch's caching allocator orders a block on the current stream of its device: serve
         * only that stream (the core allocates for any other one itself) */
        if (c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle() !=
            cuda_stream)
            return FA_OK;
        *p = c10::GetAllocator(c10::DeviceType::CUDA)->raw_allocate(bytes);
        return FA_OK;
    });
}

void fa_torch_cuda_free(void *p) {
    try {
        if (p != nullptr)
            c10::GetAllocator(c10::DeviceType::CUDA)->raw_deallocate(p);
    } catch (...) { /* nothing may cross the boundary, and a free has no status */
    }
}

int64_t fa_transform_copies(const fa_transform *transform) {
    return transform != nullptr ? copies_of(*transform) : 1;
}

fa_status fa_transform_draws(const fa_transform *transform, const char *kind, int64_t h,
                             int64_t w, int64_t label, int64_t index, int64_t call, int64_t copy,
                             double *out, int64_t capacity, int64_t *count) {
    return guarded("fa_transform_draws", [&]() -> fa_status {
        if (transform == nullptr || kind == nullptr || count == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "transform, kind and count must not be NULL");
        if (h < 1 || w < 1)
            return fa_set_error(FA_ERR_ARGUMENT, "h=%lld, w=%lld must be >= 1", ll(h), ll(w));
        const std::string name(kind);
        std::vector<double> d;
        if (name == "admix") {
            fa_transform t = *transform;
            t.admix_copies = std::max(t.admix_copies, 1);
            fa_status status = check_native_transforms(t, h, w);
            if (status == FA_OK)
                status = admix_draws(t, label, index, call, copy, d);
            if (status != FA_OK)
                return status;
        } else if (name == "bsr" || name == "sia") {
            fa_transform t = *transform;
            (name == "bsr" ? t.bsr_copies : t.sia_copies) = 1;
            const fa_status status = check_native_transforms(t, h, w);
            if (status != FA_OK)
                return status;
            if (name == "bsr")
                bsr_draws(t, h, w, index, call, copy, d);
            else
                sia_draws(t, h, w, index, call, copy, d);
        } else {
            return fa_set_error(FA_ERR_ARGUMENT, "kind='%s' must be 'admix', 'bsr' or 'sia'",
                                kind);
        }
        *count = static_cast<int64_t>(d.size());
        if (*count > capacity || (out == nullptr && *count > 0))
            return fa_set_error(FA_ERR_ARGUMENT, "capacity=%lld: the draws need %lld entries",
                                ll(capacity), ll(*count));
        std::copy(d.begin(), d.end(), out);
        return FA_OK;
    });
}

fa_status fa_model_oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                               const float *x, int want_grad, float *loss, int64_t *pred,
                               float *grad) {
    fa_model_oracle *oracle = static_cast<fa_model_oracle *>(ctx);
    if (oracle == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "ctx is NULL (expected a fa_model_oracle)");
    return guarded("fa_model_oracle_grad", [&]() -> fa_status {
    const fa_transform *transform = transform_is_off(oracle->transform) ? nullptr
                                                                        : &oracle->transform;
    const bool counted = oracle->grad_evals != nullptr || oracle->forward_evals != nullptr;
    const bool targeted = oracle->targets != nullptr;
    if ((counted || targeted) && index == nullptr && n > 0)
        return fa_set_error(FA_ERR_ARGUMENT, "index is NULL, but the oracle reads per-image "
                            "arrays (grad_evals / forward_evals / targets)");
    const bool targeted_loss =
        oracle->objective == FA_LOSS_TARGET_CE || oracle->objective == FA_LOSS_LOGIT;
    if (targeted != targeted_loss)
        return fa_set_error(FA_ERR_ARGUMENT, "objective=%s is %s, but targets is %s",
                            fa_loss_name(oracle->objective) ? fa_loss_name(oracle->objective)
                                                            : "(out of range)",
                            targeted_loss ? "a targeted loss" : "an untargeted loss",
                            targeted ? "given" : "NULL");
    std::vector<int64_t> classes;
    if (targeted) { /* the class each row's loss is about: its target */
        classes.resize(static_cast<size_t>(n));
        for (int64_t r = 0; r < n; r++)
            classes[static_cast<size_t>(r)] = oracle->targets[index[r] - oracle->index_base];
    }
    const int64_t *asked = targeted ? classes.data() : labels;
    const fa_status status =
        oracle->n_members > 0
            ? fa_ensemble_run(oracle->members, oracle->weights, oracle->n_members, oracle->fuse,
                              n, oracle->h, oracle->w, oracle->c, x, asked, want_grad, loss,
                              nullptr, 0, pred, want_grad ? grad : nullptr, oracle->device_io,
                              transform, index, oracle->calls, oracle->objective)
            : fa_model_run_loss(oracle->model, n, oracle->h, oracle->w, oracle->c, x, asked,
                                want_grad, loss, nullptr, 0, pred, want_grad ? grad : nullptr,
                                oracle->device_io, transform, index, oracle->calls,
                                oracle->objective);
    oracle->calls++;
    if (status == FA_OK && targeted && loss != nullptr)
        for (int64_t r = 0; r < n; r++) /* the core ascends: -CE(z, target) */
            loss[r] = -loss[r];
    if (status != FA_OK || !counted)
        return status;
    /* the passes fa_model_run made: see fa_model_oracle in fa_torch.h */
    const int64_t members = std::max(oracle->n_members, 1); /* every pass is one per member */
    const int64_t copies = fa_transform_copies(transform); /* SI x Admix x BSR x SIA */
    const int64_t passes = want_grad ? members * copies : 0;
    /* the gradient pass gives the plain logits only when its copy 0 is x (gradient_pass) */
    const bool plain = transform == nullptr ||
                       (transform->di_prob <= 0.0f && copies == std::max(transform->si_copies, 1));
    const int64_t forwards =
        (loss != nullptr || pred != nullptr) && (!want_grad || !plain) ? members : 0;
    for (int64_t r = 0; r < n; r++) {
        const int64_t i = index[r] - oracle->index_base;
        if (oracle->grad_evals != nullptr)
            oracle->grad_evals[i] += passes;
        if (oracle->forward_evals != nullptr)
            oracle->forward_evals[i] += forwards;
    }
    return status;
    });
}

} // extern "C"
