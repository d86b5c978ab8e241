/*
 * fa_torch.cpp -- the extern "C" LibTorch shim of fa_torch.h: load a TorchScript classifier and
 * run it on NHWC batches for cross-entropy, logits, predictions and input gradients, with the
 * optional DI/TI/SI input transforms.
 *
 * Every entry point runs its body inside guarded(): no C++ exception crosses the C boundary,
 * each failure becomes a status with a message in fa_last_error().
 */
#include "fa_torch.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
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
    int device; /* fa_device */
    std::mutex mutex; /* guards classes */
    std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> classes; /* (h, w, c) -> K */
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

fa_status check_device(int device) {
    if (device != FA_DEVICE_CPU && device != FA_DEVICE_CUDA)
        return fa_set_error(FA_ERR_ARGUMENT,
                            "device=%d must be FA_DEVICE_CPU (0) or FA_DEVICE_CUDA (1)", device);
    if (device == FA_DEVICE_CUDA && !torch::cuda::is_available())
        return fa_set_error(FA_ERR_NO_CUDA,
                            "device='cuda' requested but no CUDA device is available");
    return FA_OK;
}

torch::Device torch_device(int device) {
    return device == FA_DEVICE_CUDA ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
}

torch::TensorOptions floats_on(int device) {
    return torch::TensorOptions().dtype(torch::kFloat).device(torch_device(device));
}

/* Wraps a loaded module into a new handle: eval mode, parameters frozen. */
fa_status adopt(torch::jit::Module module, int device, fa_model **out) {
    module.eval();
    for (at::Tensor parameter : module.parameters())
        parameter.requires_grad_(false);
    fa_model *model = new fa_model();
    model->module = std::move(module);
    model->device = device;
    *out = model;
    return FA_OK;
}

std::string describe(const at::Tensor &t) {
    std::ostringstream text;
    text << t.sizes() << " " << c10::toString(t.scalar_type());
    return text.str();
}

/* One forward of input (NCHW, `rows` images); *logits is the checked [rows, K] output. */
fa_status forward(fa_model *model, const at::Tensor &input, int64_t rows, at::Tensor *logits) {
    const c10::IValue output = model->module.forward({input});
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

/* -log softmax(logits)[label] per row, in float32. */
at::Tensor cross_entropy(const at::Tensor &logits, const at::Tensor &labels) {
    const at::Tensor log_p = at::log_softmax(logits.to(torch::kFloat), 1);
    return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1);
}

bool transform_is_off(const fa_transform &t) {
    return t.di_prob == 0.0f && (t.si_copies == 0 || t.si_copies == 1) &&
           (t.ti_kernel == 0 || t.ti_kernel == 1);
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
    if (want_grad && transform != nullptr)
        return check_transform(*transform);
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

/* TI: depthwise convolution of the NCHW gradient with a normalised k x k Gaussian
 * (sigma = (k - 1) / 6, zero padding k / 2), done as two separable 1-D passes. */
at::Tensor smooth(const at::Tensor &g, int k) {
    const int64_t c = g.size(1), half = k / 2;
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
    const at::Tensor line = torch::from_blob(taps.data(), {k}, torch::kFloat).to(g.device());
    const at::Tensor vertical = line.view({1, 1, k, 1}).expand({c, 1, k, 1}).contiguous();
    const at::Tensor horizontal = line.view({1, 1, 1, k}).expand({c, 1, 1, k}).contiguous();
    const std::vector<int64_t> one{1, 1}, pad_rows{half, 0}, pad_cols{0, half};
    const at::Tensor once = at::conv2d(g, vertical, std::nullopt, one, pad_rows, one, c);
    return at::conv2d(once, horizontal, std::nullopt, one, pad_cols, one, c);
}

/*
 * The gradient pass: *gradient (NCHW) = d sum_i CE_i / d x over the transformed inputs, and
 * *logits the plain logits at x when the transformed pass does not already give them.
 */
fa_status gradient_pass(fa_model *model, const at::Tensor &x_nchw, int64_t n,
                        const int64_t *labels, int64_t k_expected, bool want_k,
                        const fa_transform *transform, const int64_t *index, int64_t call,
                        at::Tensor *gradient, at::Tensor *logits) {
    const fa_transform none = {};
    const fa_transform &t = transform != nullptr ? *transform : none;
    const int copies = std::max(t.si_copies, 1);
    const bool di = t.di_prob > 0.0f;

    const at::Tensor leaf = x_nchw.clone(at::MemoryFormat::Contiguous).requires_grad_(true);
    at::Tensor input = leaf;
    if (copies > 1) {
        std::vector<at::Tensor> scaled{leaf};
        for (int i = 1; i < copies; i++)
            scaled.push_back(leaf * std::ldexp(1.0, -i));
        input = at::cat(scaled);
    }
    if (di)
        input = diverse(input, n, t, index, call);

    at::Tensor out;
    fa_status status = forward(model, input, copies * n, &out);
    if (status != FA_OK)
        return status;
    const int64_t k = out.size(1);
    if (want_k && k_expected != k)
        return fa_set_error(FA_ERR_ARGUMENT, "k_expected=%lld does not match the model's %lld "
                            "classes", ll(k_expected), ll(k));
    status = check_labels(n, labels, k);
    if (status != FA_OK)
        return status;

    at::Tensor y = torch::from_blob(const_cast<int64_t *>(labels), {n}, torch::kLong)
                       .to(out.device());
    if (copies > 1)
        y = y.repeat({copies});
    const at::Tensor total = cross_entropy(out, y).sum();
    *gradient = torch::autograd::grad({total}, {leaf})[0];

    torch::NoGradGuard no_grad;
    if (copies > 1)
        gradient->div_(copies);
    if (t.ti_kernel > 1)
        *gradient = smooth(*gradient, t.ti_kernel);
    if (!di)
        *logits = out.narrow(0, 0, n).detach(); /* copy 0 is the plain x */
    return FA_OK;
}

/* Copies src (any strides, any device) into the caller's host or device buffer. */
void copy_out(void *dst, at::IntArrayRef sizes, torch::TensorOptions options,
              const at::Tensor &src) {
    torch::from_blob(dst, sizes, options).copy_(src);
}

} // namespace

extern "C" {

fa_status fa_model_load(const char *path, int device, fa_model **out) {
    return guarded("fa_model_load", [&]() -> fa_status {
        if (out == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "out is NULL");
        *out = nullptr;
        if (path == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "path is NULL");
        fa_status status = check_device(device);
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
        torch::jit::Module module;
        try {
            module = torch::jit::load(path, torch_device(device));
        } catch (const std::exception &e) {
            return fa_set_error(FA_ERR_IO, "cannot load TorchScript model from '%s': %s", path,
                                message_of(e).c_str());
        }
        return adopt(std::move(module), device, out);
    });
}

fa_status fa_model_load_buffer(const void *data, size_t size, int device, fa_model **out) {
    return guarded("fa_model_load_buffer", [&]() -> fa_status {
        if (out == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "out is NULL");
        *out = nullptr;
        if (data == nullptr)
            return fa_set_error(FA_ERR_ARGUMENT, "data is NULL");
        fa_status status = check_device(device);
        if (status != FA_OK)
            return status;
        std::istringstream stream(std::string(static_cast<const char *>(data), size));
        torch::jit::Module module;
        try {
            module = torch::jit::load(stream, torch_device(device));
        } catch (const std::exception &e) {
            return fa_set_error(FA_ERR_IO,
                                "cannot load TorchScript model from a buffer of %zu bytes: %s",
                                size, message_of(e).c_str());
        }
        return adopt(std::move(module), device, out);
    });
}

void fa_model_free(fa_model *model) { delete model; }

int fa_model_device(const fa_model *model) { return model != nullptr ? model->device : -1; }

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
            c10::InferenceMode inference;
            const at::Tensor zeros = torch::zeros({1, c, h, w}, floats_on(model->device));
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

fa_status fa_model_run(fa_model *model, int64_t n, int64_t h, int64_t w, int64_t c,
                       const float *x, const int64_t *labels, int want_grad, float *loss,
                       float *logits, int64_t k_expected, int64_t *pred, float *grad,
                       int device_io, const fa_transform *transform, const int64_t *index,
                       int64_t call) {
    return guarded("fa_model_run", [&]() -> fa_status {
        fa_status status = check_run(model, n, h, w, c, x, labels, want_grad, grad, transform);
        if (status != FA_OK || n == 0)
            return status;
        const bool cuda = model->device == FA_DEVICE_CUDA;
        const int io = cuda && device_io ? FA_DEVICE_CUDA : FA_DEVICE_CPU;
        if (io == FA_DEVICE_CUDA)
            torch::cuda::synchronize(); /* the caller's writes to x are done, whatever stream */
        const at::Tensor x_nchw =
            torch::from_blob(const_cast<float *>(x), {n, h, w, c}, floats_on(io))
                .to(torch_device(model->device))
                .permute({0, 3, 1, 2});

        at::Tensor out, gradient;
        if (want_grad) {
            status = gradient_pass(model, x_nchw, n, labels, k_expected, logits != nullptr,
                                   transform, index, call, &gradient, &out);
            if (status != FA_OK)
                return status;
        }
        c10::InferenceMode inference;
        if (!out.defined()) { /* no gradient, or the transformed pass did not see plain x */
            status = forward(model, x_nchw.clone(at::MemoryFormat::Contiguous), n, &out);
            if (status != FA_OK)
                return status;
        }
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
            if (loss != nullptr) {
                const at::Tensor y = torch::from_blob(const_cast<int64_t *>(labels), {n},
                                                      host.dtype(torch::kLong))
                                         .to(out.device());
                copy_out(loss, {n}, host.dtype(torch::kFloat), cross_entropy(out, y));
            }
        }
        if (logits != nullptr)
            copy_out(logits, {n, k}, host.dtype(torch::kFloat), out);
        if (pred != nullptr)
            copy_out(pred, {n}, host.dtype(torch::kLong), out.argmax(1));
        if (want_grad)
            torch::from_blob(grad, {n, h, w, c}, floats_on(io))
                .permute({0, 3, 1, 2})
                .copy_(gradient);
        if (io == FA_DEVICE_CUDA)
            torch::cuda::synchronize(); /* grad is in place before the caller reads it */
        return FA_OK;
    });
}

fa_status fa_model_oracle_grad(void *ctx, int64_t n, const int64_t *index, const int64_t *labels,
                               const float *x, int want_grad, float *loss, int64_t *pred,
                               float *grad) {
    fa_model_oracle *oracle = static_cast<fa_model_oracle *>(ctx);
    if (oracle == nullptr)
        return fa_set_error(FA_ERR_ARGUMENT, "ctx is NULL (expected a fa_model_oracle)");
    const fa_transform *transform = transform_is_off(oracle->transform) ? nullptr
                                                                        : &oracle->transform;
    const fa_status status =
        fa_model_run(oracle->model, n, oracle->h, oracle->w, oracle->c, x, labels, want_grad,
                     loss, nullptr, 0, pred, want_grad ? grad : nullptr, oracle->device_io,
                     transform, index, oracle->calls);
    oracle->calls++;
    return status;
}

} // extern "C"
