"""`attack`: craft adversarial examples on a surrogate under the paper's protocols, and the
`AttackResult` that carries images and per-image measurements."""

import dataclasses
import math
import os

import numpy as np

from . import _core, peers
from ._model import Model, check_labels, predict_any
from .ensemble import Ensemble
from ._validate import (check_pixels, images_f32, is_integral, labels_i64, positive_int, real,
                        round_to_uint8)
from .outcome import attacked_mask
from .settings import (OPTIMIZERS, STOP_LOSS_TARGETED, core_config, default_setting, make_config,
                       grad_passes_per_step, readable_config, transform_copies,
                       transform_of)

STATUS = tuple(_core.IMAGE_STATUS)
METRICS = ("rmse", "linf", "l2", "l1", "l0", "psnr", "ssim")
#: What an attack spends per image: gradient passes and loss-only forwards
#: (docs/protocol.md#what-an-attack-spends).
SPENT = ("grad_evals", "forward_evals")
#: The losses a gradient may ascend, by (name, targeted): the shim's fa_loss values
#: (docs/protocol.md#targeted-attacks).
LOSSES = {("ce", False): "ce", ("margin", False): "margin", ("ce", True): "target_ce",
          ("logit", True): "logit"}
#: The named ways of choosing targets; an array of classes is the third.
TARGET_CHOICES = ("random", "least_likely")


@dataclasses.dataclass
class AttackResult:
    """Adversarial images and per-image arrays (NumPy, one entry per input image).

    images: uint8 [N, H, W, 3], what victims see; labels: int64 [N].
    Metrics (float32 [N]) are measured on the uint8 images against the clean input:
    rmse = sqrt(mean(δ²)) in pixels, linf = max|δ|, l2 = ‖δ‖₂, l1 = mean|δ|, l0 = share of values
    changed by more than 0.5, psnr in dB, ssim. loss / clean_loss (float32) are the surrogate's
    cross-entropy in nats at the returned (float) iterate and at the clean image (of a targeted
    attack: the cross-entropy to the target; `targets` then holds each image's target class,
    None for an untargeted attack; loss_name is the loss its gradient ascended).
    clean_pred / pred: int64 [N], the surrogate's class of the clean and of the returned uint8
    image. iterations: int32 [N], steps taken; alpha: float32 [N], the step size used.
    status: str [N], one of
      "stop_loss"  stopped when the loss reached stop_loss (const_loss, rmse_loss; targeted:
                   when CE(z, t) reached stop_loss_targeted)
      "stop_rmse"  stopped when the RMSE reached stop_rmse (const_rmse)
      "max_iter"   ran the step cap (every image of `fixed`)
      "skipped"    not attacked: the surrogate misclassifies the clean image (returned as is)
      "nan"        failed: a non-finite loss or logit (returned unchanged, never a success)
    attacked_mask: the images that count (neither skipped nor failed).
    index: int64 [N], each image's number (index_offset + i), the key of its randomness.
    What the attack spent on each image (docs/protocol.md#what-an-attack-spends):
    grad_evals = gradient passes through the surrogate (one per transformed copy: the product
    of SI's, Admix's, BSR's and SIA's copies; VMI/VNI's neighbours count as passes of their own;
    the step-size calibration reuses the first gradient and adds none; a callable oracle counts
    the rows it was asked a gradient for), forward_evals = forwards that only served the loss
    or the prediction (the best-iterate rule, the final loss, the plain loss under DI, Admix,
    BSR or SIA, and the one that gives `pred` of the returned uint8 image).
    optimizer, setting: names; config: the resolved configuration as given (names, not the
    core's codes: {"optimizer": "PGD", "returns": "last", "momentum": 0.9, ...}).
    """

    images: np.ndarray
    labels: np.ndarray
    rmse: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    l1: np.ndarray
    l0: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    loss: np.ndarray
    clean_loss: np.ndarray
    clean_pred: np.ndarray
    iterations: np.ndarray
    alpha: np.ndarray
    status: np.ndarray
    grad_evals: np.ndarray
    forward_evals: np.ndarray
    optimizer: str
    setting: str
    config: dict
    pred: np.ndarray = None
    index: np.ndarray = None
    targets: np.ndarray = None
    loss_name: str = "ce"

    @property
    def targeted(self):
        """Whether the attack aimed at target classes (then loss / clean_loss are CE(z, t))."""
        return self.targets is not None

    @property
    def attacked_mask(self):
        """Boolean mask [N] of the images that count: attacked (not skipped as misclassified)
        and not failed (NaN); `fairattack.outcome.attacked_mask`."""
        return attacked_mask(self.status)

    def __len__(self):
        return len(self.images)

    @property
    def target_not_reached(self):
        """Images of an RMSE-stopped run (stop_rmse > 0) that hit the step cap below the target
        RMSE (the box and ε kept them there): attacked, but not at the protocol's RMSE."""
        if self.config.get("stop_rmse", 0) > 0:
            return self.status == "max_iter"
        return np.zeros(len(self.status), bool)

    def summary(self):
        """Counts (per outcome) and the means over attacked images of every measurement."""
        ok = self.attacked_mask
        out = {"optimizer": self.optimizer, "setting": self.setting,
               "targeted": self.targeted, "loss_name": self.loss_name,
               "n_images": int(ok.sum()), "n_skipped": int((self.status == "skipped").sum()),
               "n_failed": int((self.status == "nan").sum())}
        for status in ("stop_loss", "stop_rmse", "max_iter"):
            out[f"n_{status}"] = int((self.status == status).sum())
        out["n_target_not_reached"] = int(self.target_not_reached.sum())
        for key in METRICS + ("loss", "iterations") + SPENT:
            values = getattr(self, key)[ok].astype(np.float64)
            out[key] = float(values.mean()) if values.size else float("nan")
        return out

    def to_frame(self, names=None):
        """One row per image (pandas DataFrame): image (its index), name (when `names`, one
        per image, is given), label, status, target (a targeted attack's), the metrics, loss,
        clean_loss, clean_pred, pred (the surrogate's class after the attack), iterations,
        alpha, grad_evals, forward_evals."""
        import pandas as pd

        n = len(self.images)
        columns = {"image": self.index if self.index is not None else np.arange(n)}
        if names is not None:
            names = [str(name) for name in names]
            if len(names) != n:
                raise ValueError(f"names: expected {n} names (one per image), got {len(names)}")
            columns["name"] = names
        columns.update(label=self.labels, status=self.status)
        if self.targeted:
            columns["target"] = self.targets
        for key in METRICS + ("loss", "clean_loss", "clean_pred", "pred", "iterations",
                              "alpha") + SPENT:
            value = getattr(self, key)
            if value is not None:
                columns[key] = value
        return pd.DataFrame(columns)

    def save(self, folder, names=None):
        """Write the adversarial images as folder/<name>.png (names: one per image, e.g. the
        clean files' names; default image_00000 ...), their rows as folder/attack.csv
        (to_frame with a png column) and the configuration as folder/attack.json. Returns the
        folder. Re-read the PNGs with fairattack.data.read_image_folder; compare them with
        `fairattack compare --clean CLEAN --adv NAME=folder`."""
        import json
        from pathlib import Path

        from .store import png_names, write_atomic, write_png

        n = len(self.images)
        if names is None:
            names = [f"image_{int(i):05d}" for i in self.to_frame()["image"]]
        frame = self.to_frame(names)
        pngs = png_names(list(frame["name"]))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for image, png in zip(self.images, pngs):
            write_png(folder / png, image)
        frame.insert(2, "png", pngs)
        write_atomic(folder / "attack.csv", frame.to_csv(index=False).encode())
        meta = {"optimizer": self.optimizer, "setting": self.setting, "n_images": n,
                "config": self.config}
        write_atomic(folder / "attack.json", (json.dumps(meta, indent=1) + "\n").encode())
        return folder

    def __repr__(self):
        s = self.summary()
        return (f"AttackResult({s['optimizer']}, {s['setting']}: {s['n_images']} attacked, "
                f"{s['n_skipped']} skipped, {s['n_failed']} failed; mean RMSE {s['rmse']:.3f}, "
                f"CE {s['loss']:.2f}, {s['iterations']:.1f} steps)")


def to_uint8(images, rounding="round"):
    """Float images in [0, 255] -> uint8, by rounding (default) or by truncation (the authors'
    `astype(uint8)`)."""
    if rounding == "round":
        return round_to_uint8(images)
    if rounding == "truncate":
        return np.clip(images, 0, 255).astype(np.uint8)
    raise ValueError(f"rounding must be 'round' or 'truncate', got {rounding!r}")


def quantize(adv, clean, eps, rounding="round"):
    """uint8 images that victims see, with the ε budget kept on them: round (or truncate), then
    clamp every value to the integers of [clean − ε, clean + ε] ∩ [0, 255]. A float clean image
    with fractional values would otherwise reach ε + 0.5 after rounding. Works in chunks, so its
    float64 temporaries stay small."""
    to_uint8(np.zeros(1), rounding)  # validates `rounding`
    adv, clean = np.asarray(adv), np.asarray(clean)
    if adv.shape != clean.shape:
        raise ValueError(f"adv has shape {adv.shape} but clean has shape {clean.shape}")
    out = np.empty(adv.shape, np.uint8)
    flat_adv, flat_clean, flat_out = adv.reshape(-1), clean.reshape(-1), out.reshape(-1)
    step = 1 << 16
    for start in range(0, flat_adv.size, step):
        part = slice(start, start + step)
        c = flat_clean[part].astype(np.float64)
        q = np.clip(flat_adv[part], 0, 255).astype(np.float64)
        q = np.rint(q) if rounding == "round" else np.trunc(q)
        np.clip(q, np.ceil(c - eps), np.floor(c + eps), out=q)
        flat_out[part] = np.clip(q, 0, 255)
    return out


def _keep_rmse_budget(adv_u8, clean, eps, max_rmse):
    """Rounding to uint8 can lift an image's RMSE a little above max_rmse (the float iterate is
    within it): such images are re-quantised to the integers nearest their perturbation whose
    RMSE is at most max_rmse (the core's MATCH_UINT8_AT_MOST; values move by at most one level).
    adv_u8 is changed in place."""
    d = adv_u8.astype(np.float32) - clean
    over = np.sqrt((d.reshape(len(d), -1) ** 2).mean(axis=1)) > max_rmse
    if over.any():
        target = np.full(int(over.sum()), max_rmse, np.float32)
        fixed = _core.match_rmse(clean[over], adv_u8[over].astype(np.float32), target,
                                 float(max(eps, 0.5)), _core.MATCH_UINT8_AT_MOST, 0.05)[0]
        adv_u8[over] = fixed.astype(np.uint8)


def measure(adv, clean):
    """ℓ∞, ℓ2, RMSE, ℓ1, ℓ0, PSNR and SSIM of adv against clean (NHWC, uint8 or float)."""
    adv, clean = images_f32(adv, "adv"), images_f32(clean, "clean")
    if adv.shape != clean.shape:
        raise ValueError(f"adv has shape {adv.shape} but clean has shape {clean.shape}")
    return _core.metrics(adv, clean)


#: Activation memory of one forward + backward pass as a multiple of its float input: a floor
#: for ImageNet CNNs, used to refuse a batch that cannot fit even when its copies run in chunks.
ACTIVATION_FACTOR = 64
#: The same for sizing the gradient pass's row chunks (EfficientNet-Lite0 measures about 140x).
CHUNK_FACTOR = 160
#: At most this many pixels (rows x height x width) per forward + backward on the CPU, 16 rows
#: of 224²: EfficientNet-Lite0's SIA step on 16 images (320 rows) takes 19.5 s in chunks of 16
#: rows, 24.4 s in 40 and 98 s in 156 (the larger passes spill out of the caches).
CPU_PASS_PIXELS = 16 * 224 * 224
#: Memory of the transformed copies and their backward graph (all held at once), as a multiple
#: of the copies' float size.
TRANSFORM_FACTOR = 8


def _available_memory(model):
    """Free bytes on the model's device, or None when unknown."""
    if str(model.device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(max(model.device_index, 0))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _pass_rows(model, transform, batch_size, n, height, width):
    """The most rows one forward + backward of the gradient pass takes (the shim's pass_rows).

    SI, Admix, BSR and SIA make copies x batch rows; they run through the model in chunks that fit
    half the free memory (CHUNK_FACTOR x the float input per row and member), on the CPU of at
    most CPU_PASS_PIXELS (faster), so the model's activations never grow with the copies; the
    gradient is the same. 0 (one pass) when everything fits or the free memory is unknown.
    Refuses before any work a batch whose plain rows (ACTIVATION_FACTOR) or transformed copies
    (TRANSFORM_FACTOR) cannot fit."""
    free = _available_memory(model)
    if free is None:
        return 0
    members = len(model.members) if isinstance(model, Ensemble) else 1
    image = height * width * 3 * 4
    batch, copies = min(batch_size, n), transform_copies(transform)
    plain = batch * image * members * ACTIVATION_FACTOR
    held = batch * copies * image * TRANSFORM_FACTOR
    if plain > free or held > free:
        si_only = copies == max((transform or {}).get("si_copies", 0), 1)
        what = f"si_copies={copies}" if si_only else f"{copies} transformed copies"
        knob = "si_copies" if si_only else "the transform's copies (si/admix/bsr/sia_copies)"
        need, why = ((plain, f"{ACTIVATION_FACTOR}x the float input for activations")
                     if plain > free else
                     (held, f"{TRANSFORM_FACTOR}x the copies' float size"))
        raise MemoryError(
            f"{what} x batch_size={batch} images of {height}x{width} need about "
            f"{need / 2**30:.1f} GiB in one gradient pass (estimate: {why}), more than the "
            f"{free / 2**30:.1f} GiB available on {model.device}: lower batch_size"
            + ("" if plain > free else f" or {knob}"))
    fit = max(int(free // 2 // (image * members * CHUNK_FACTOR)), 1)
    if not str(model.device).startswith("cuda"):
        fit = min(fit, max(CPU_PASS_PIXELS // (height * width), 1))
    return 0 if fit >= batch * copies else fit


def _within_grads(cfg, max_grads, members, optimizer, setting, overrides):
    """The configuration of an attack held to max_grads gradient passes per image: its step
    cap lowered to K // passes per step (remade, so the sign attacks' eps / steps follows)."""
    k = positive_int(max_grads, "max_grads")
    per_step = grad_passes_per_step(cfg, members)
    steps = k // per_step
    if steps < 1:
        raise ValueError(f"max_grads={k}: one step of {OPTIMIZERS[cfg['optimizer']]} costs "
                         f"{per_step} gradient passes per image here (transform copies x "
                         "members x VMI/VNI neighbours); raise max_grads or lower the copies")
    if steps < cfg["max_iter"]:
        cfg = make_config(optimizer, setting, **dict(overrides, max_iter=steps))
    return dict(cfg, max_grads=k)


def _admix_pool(transform, images, labels):
    """Admix mixes in the clean images of other classes: its partners are drawn from every image
    given to `attack` (per image, call and partner from the seed), never from the current batch
    alone, so batch_size and compaction never change them. Adds the pool to the transform."""
    if np.unique(labels).size < 2:
        raise ValueError(f"admix_copies={transform['admix_copies']}: Admix mixes in images of "
                         "other classes, but every image has the same label; pass images of "
                         "at least two classes")
    transform["admix_pool"] = np.ascontiguousarray(images, dtype=np.float32)
    transform["admix_pool_labels"] = np.ascontiguousarray(labels, dtype=np.int64)


def loss_objective(loss, targeted):
    """The shim's loss index (fairattack._core.LOSSES) of loss "ce" | "logit" | "margin" for a
    targeted or untargeted attack; None means "ce"."""
    loss = "ce" if loss is None else loss
    if not isinstance(loss, str) or (loss, bool(targeted)) not in LOSSES:
        allowed = [name for name, t in LOSSES if t == bool(targeted)]
        kind = "a targeted" if targeted else "an untargeted"
        raise ValueError(f"loss={loss!r} is not a loss of {kind} attack; expected one of "
                         f"{allowed}" + ("" if targeted or loss != "logit" else
                                         " ('logit' needs target=...)"))
    return list(_core.LOSSES).index(LOSSES[(loss, bool(targeted))])


def resolve_targets(target, model, images, labels, num_classes, seed=0, index_offset=0):
    """One target class per image (docs/protocol.md#targeted-attacks), never the image's label.

    target: an array of class indices, "random" (per image uniform over the other classes,
    drawn from (seed, index_offset + i): batching never changes it) or "least_likely" (the
    surrogate's least likely class on the clean image; where that is the label, as it can be
    for a misclassified image, the next least likely). num_classes: K (None for a callable)."""
    n = len(labels)
    if isinstance(target, str):
        if target not in TARGET_CHOICES:
            raise ValueError(f"target={target!r}; expected an array of classes or one of "
                             f"{TARGET_CHOICES}")
        if num_classes is None:
            raise ValueError(f"target={target!r} needs the model's classes: give a "
                             "fairattack Model (or an array of targets for a callable)")
        if num_classes < 2:
            raise ValueError(f"target={target!r}: the model has one class, no other to aim at")
        if target == "random":
            draws = np.array([np.random.default_rng([int(seed), int(index_offset) + i])
                              .integers(num_classes - 1) for i in range(n)], np.int64)
            return (labels + 1 + draws) % num_classes
        order = np.argsort(model.logits(images), axis=1, kind="stable")
        return np.where(order[:, 0] == labels, order[:, 1], order[:, 0]).astype(np.int64)
    targets = labels_i64(target, n, num_classes, name="target")
    same = np.flatnonzero(targets == labels)
    if same.size:
        i = int(same[0])
        raise ValueError(f"target[{i}]={targets[i]} is the label of image {i}: a targeted "
                         "attack needs another class")
    return targets


def _is_torch_module(model):
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def attack(model, images, labels, optimizer="Adam", setting=None, *, target=None, loss=None,
           stop_loss_targeted=None, max_grads=None, batch_size=16, rounding="round",
           progress=False, di_prob=None, di_min_scale=None, si_copies=None, ti_kernel=None,
           **overrides):
    """Craft adversarial examples of `images` on the surrogate `model`.

    model: a `fairattack.Model` (from `load_model`, or an ensemble from `fairattack.ensemble`),
        or a Python callable
        `fn(x float32 [n,H,W,3], labels int64 [n], want_grad) -> (loss [n], pred [n], grad)` that
        gives the cross-entropy, the predicted class and the input gradient [n,H,W,3] (CPU only;
        float outputs of any precision are cast to float32, shapes must be exact).
    images: uint8 or float NHWC RGB in [0, 255] (a float batch entirely within [0, 1] is refused
        as a forgotten ×255); labels: int class indices.
    optimizer: one of fairattack.OPTIMIZERS. setting: one of fairattack.SETTINGS (default
        const_loss, or fixed for the sign attacks). overrides: any hyper-parameter of
        `fairattack.make_config` (eps, max_iter, first_step_rmse, alpha, stop_loss, stop_rmse,
        rmse_weight, momentum, beta1, beta2, delta, nesterov, random_start, seed,
        index_offset, ...). index_offset numbers the images for per-image randomness (random
        start, DI): image i of `images` is image index_offset + i.
    batch_size: images per call of the core; results never depend on it.
    rounding: "round" (default) or "truncate" (the authors' code) to uint8. Either way every
        returned value stays within eps of the clean image (see `quantize`).
    di_prob / di_min_scale / si_copies / ti_kernel: the DI, SI and TI input transforms of the
        gradient (docs/protocol.md#input-transforms), applied by a Model's gradient pass; a Python
        callable cannot take them. The Admix, BSR and SIA transforms are keywords too
        (admix_copies, admix_scales, admix_eta, bsr_copies, bsr_blocks, bsr_angle, sia_copies,
        sia_blocks), with any optimizer; optimizer="Admix" / "BSR" / "SIA" is MI-FGSM with that
        transform at TransferAttack's defaults. Admix draws its partners (clean images of
        another class) from all of `images`, so it needs at least two classes among them.
    allow_subpixel: eps, alpha, stop_rmse and max_rmse are pixels of [0, 255] images; a value
        in (0, 1) is refused as a [0, 1] unit (eps=8/255 meant as eps=8) unless True.
    target: None (untargeted), an array of class indices, "random" or "least_likely"
        (`resolve_targets`; docs/protocol.md#targeted-attacks). A targeted attack makes the
        surrogate predict the target; res.loss / res.clean_loss are then CE(z, t), the stopping
        settings stop an image once CE(z, t) <= stop_loss_targeted (default 0.01 nats; the
        untargeted stop_loss may not be given) and the best iterate is the lowest CE(z, t).
    loss: the loss the gradient ascends: "ce" (default: CE to the label, or CE to the target
        descended), "margin" (untargeted: max_{j≠y} z_j − z_y) or "logit" (targeted: the
        target's logit z_t). A Python callable gives "ce" only.
    max_grads: a compute budget, K gradient passes per image (counted as res.grad_evals): the
        step cap becomes min(max_iter, K // passes per step), the passes per step being the
        transform's copies x an ensemble's members x (1 + VMI/VNI's neighbours)
        (`settings.grad_passes_per_step`); the sign attacks' default step stays eps / steps.
        A K below one step's passes is refused. None: no compute budget.
    Memory: the output is one preallocated uint8 array and metrics are measured per batch, so
    the attack holds about one uint8 copy of the input plus a batch of floats. A transform's
    copies (SI, Admix, BSR, SIA: batch x copies rows) go through the model in row chunks sized
    to the free memory, so the model's activations never grow with the copies.
    The core runs without the GIL; Ctrl-C stops it with KeyboardInterrupt.

    Returns an `AttackResult`: .images (uint8 [N, H, W, 3], within eps of the clean images),
    per-image arrays (rmse, linf, l2, l1, l0, psnr, ssim, loss, clean_loss, clean_pred, pred,
    iterations, alpha, status: "stop_loss" / "stop_rmse" / "max_iter" / "skipped" / "nan"),
    .attacked_mask, .summary(), .to_frame(names), .save(folder, names) and .config, the
    resolved configuration by name.
    """
    if isinstance(model, Model):
        pass
    elif _is_torch_module(model):
        raise TypeError(f"model is a torch.nn.Module ({type(model).__name__}): load it with "
                        "fairattack.load_model(module, mode=..., input_size=...) first (mode "
                        "'torch', 'caffe' or 'tf' wraps it with resizing and normalisation; "
                        "'pixels' for a network that takes float NCHW RGB in [0, 255])")
    elif peers.is_peer(model) or peers.looks_like_peer(model):
        raise TypeError(f"model is a peer library's attack ({type(model).__name__}), not a "
                        "surrogate: fa.attack runs fairattack's own attacks. Run the peer on the "
                        "same images, ε and budgets with fa.compare(surrogate, images, labels, "
                        "attacks=[('name', attack_object)], ...), or alone with "
                        "fairattack.peers.run(attack_object, images, labels, eps)")
    elif not callable(model):
        raise TypeError("model must be a fairattack.Model (see fairattack.load_model) or a "
                        f"callable oracle, got {type(model).__name__}")
    if peers.is_peer_name(optimizer):
        raise ValueError(f"optimizer {optimizer!r} names a peer library's attack: run it with "
                         f"fa.compare(surrogate, images, labels, attacks=[{optimizer!r}], ...)")
    setting = default_setting(optimizer) if setting is None else setting
    targeted = target is not None
    objective = loss_objective(loss, targeted)
    if targeted and overrides.get("stop_loss") is not None:
        raise ValueError("stop_loss is the untargeted threshold (CE to the label, ascended); a "
                         "targeted attack stops at CE(z, t) <= stop_loss_targeted")
    if not targeted and stop_loss_targeted is not None:
        raise ValueError("stop_loss_targeted applies to targeted attacks only (give target=...)")
    if stop_loss_targeted is None:
        stop_loss_targeted = STOP_LOSS_TARGETED
    stop_loss_targeted = real(stop_loss_targeted, "stop_loss_targeted")
    if not stop_loss_targeted >= 0:
        raise ValueError(f"stop_loss_targeted={stop_loss_targeted!r} must be a CE >= 0 (nats)")
    transform_args = {"di_prob": di_prob, "di_min_scale": di_min_scale, "si_copies": si_copies,
                      "ti_kernel": ti_kernel}
    cfg = make_config(optimizer, setting, **transform_args, **overrides)
    if max_grads is not None:
        members = len(model.members) if isinstance(model, Ensemble) else 1
        cfg = _within_grads(cfg, max_grads, members, optimizer, setting,
                            dict(transform_args, **overrides))
    batch_size = positive_int(batch_size, "batch_size")
    to_uint8(np.zeros(1), rounding)  # validates `rounding` before any work
    images = check_pixels(images)
    n, height, width = images.shape[:3]
    transform = transform_of(cfg)
    if isinstance(model, Model):
        core, device = model._core, model._attack_device()  # host state without CUDA kernels
        if isinstance(model, Ensemble):  # the members, weights and fuse: fused in the shim
            core = core.spec
        y = check_labels(labels, n, {model.name: model}, height, width)
        rows = _pass_rows(model, transform, batch_size, n, height, width)
        if transform is not None:
            transform["pass_rows"] = rows
    else:
        if transform is not None:
            given = [k for k in ("di_prob", "si_copies", "ti_kernel", "admix_copies",
                                 "bsr_copies", "sia_copies") if k in transform
                     and transform[k] > (1 if k == "si_copies" else 0)]
            raise ValueError(f"{', '.join(given)}: the DI/SI/TI input transforms are applied by "
                             "a fairattack Model's gradient pass and cannot be applied to a "
                             "Python callable oracle; apply them inside the callable, or load "
                             "the network with fairattack.load_model")
        core, device = model, _core.DEVICE_CPU
        y = labels_i64(labels, n)
        if objective not in (list(_core.LOSSES).index("ce"),
                             list(_core.LOSSES).index("target_ce")):
            raise ValueError(f"loss={loss!r}: a Python callable oracle gives the cross-entropy "
                             "only; use loss='ce' or load the network with fairattack.load_model")
    targets = None
    if targeted:
        classes = model.num_classes(height, width) if isinstance(model, Model) else None
        targets = resolve_targets(target, model, images, y, classes, cfg["seed"],
                                  cfg["index_offset"])
    if transform is not None and transform["admix_copies"] > 0:
        _admix_pool(transform, images, y)
    eps = float(cfg["eps"])
    if eps < 0.5 and not is_integral(images):
        raise ValueError(f"eps={eps:g} < 0.5 with non-integer clean images: no uint8 image lies "
                         "within eps of them; round the clean images first or use eps >= 0.5")

    adv = np.empty(images.shape, np.uint8)
    per_image = {key: np.empty(n, np.float32) for key in METRICS + ("loss", "clean_loss",
                                                                    "alpha")}
    per_image.update(clean_pred=np.empty(n, np.int64), pred=np.empty(n, np.int64),
                     iterations=np.empty(n, np.int32), status=np.empty(n, np.int32),
                     grad_evals=np.empty(n, np.int64), forward_evals=np.empty(n, np.int64))
    failed_code = STATUS.index("nan")
    max_rmse = float(cfg["max_rmse"])
    base = core_config(cfg)
    if targeted:  # the core ascends -CE(z, t): stop once -CE >= -threshold
        base["stop_loss"] = -stop_loss_targeted if math.isfinite(cfg["stop_loss"]) else math.inf
        cfg = dict(cfg, stop_loss_targeted=stop_loss_targeted)
    offset = int(cfg["index_offset"])
    members = len(model.members) if isinstance(model, Ensemble) else 1  # passes per forward
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{OPTIMIZERS[cfg['optimizer']]} {setting}", unit="batch")
    for start in starts:
        stop = min(start + batch_size, n)
        clean = np.ascontiguousarray(images[start:stop], dtype=np.float32)
        # index_offset: per-image randomness (random start, DI) follows the image, not the batch
        out = _core.attack(core, clean, y[start:stop], dict(base, index_offset=offset + start),
                           device, transform, objective,
                           None if targets is None else targets[start:stop])
        if targeted:  # the core's measure is -CE(z, t): report CE(z, t)
            out["loss"], out["clean_loss"] = -out["loss"], -out["clean_loss"]
        result = out["adv"]
        failed = out["status"] == failed_code
        result[failed] = clean[failed]  # a failed (NaN) image is returned unchanged
        adv[start:stop] = quantize(result, clean, eps, rounding)
        if max_rmse > 0:  # the joint budget holds on the uint8 images too, not only the floats
            _keep_rmse_budget(adv[start:stop], clean, eps, max_rmse)
        del result, out["adv"]
        # the surrogate's class of what victims see (the returned uint8 image)
        per_image["pred"][start:stop] = predict_any(model, adv[start:stop], stop - start)
        metrics = _core.metrics(adv[start:stop].astype(np.float32), clean)
        for key, values in list(metrics.items()) + list(out.items()):
            per_image[key][start:stop] = values
        per_image["forward_evals"][start:stop] += members  # the forward that gave res.pred
    status = np.array(STATUS, dtype=object)[per_image.pop("status")].astype(str)
    return AttackResult(images=adv, labels=y, status=status, **per_image,
                        optimizer=OPTIMIZERS[cfg["optimizer"]], setting=setting,
                        config=readable_config(cfg), index=np.arange(offset, offset + n,
                                                                     dtype=np.int64),
                        targets=targets, loss_name="ce" if loss is None else loss)
