"""`attack`: craft adversarial examples on a surrogate under the paper's protocols, and the
`AttackResult` that carries images and per-image measurements."""

import dataclasses

import numpy as np

from . import _core
from ._model import Model
from ._validate import images_f32, labels_i64, positive_int
from .settings import OPTIMIZERS, default_setting, make_config

STATUS = tuple(_core.IMAGE_STATUS)
METRICS = ("rmse", "linf", "l2", "l1", "l0", "psnr", "ssim")


@dataclasses.dataclass
class AttackResult:
    """Adversarial images and per-image arrays (NumPy, one entry per input image).

    Metrics are measured on the uint8 images (what victims see) against the clean input:
    rmse = sqrt(mean(δ²)) in pixels, linf = max|δ|, l2 = ‖δ‖₂, l1 = mean|δ|, l0 = share of values
    changed by more than 0.5, psnr in dB, ssim. loss / clean_loss are the surrogate's
    cross-entropy in nats at the returned (float) iterate and at the clean image.
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
    optimizer: str
    setting: str
    config: dict

    @property
    def attacked(self):
        """Images that count: attacked (not skipped as misclassified) and not failed (NaN)."""
        return (self.status != "skipped") & (self.status != "nan")

    def __len__(self):
        return len(self.images)

    def summary(self):
        """Counts and the means over attacked images of every measurement."""
        ok = self.attacked
        out = {"optimizer": self.optimizer, "setting": self.setting,
               "n_images": int(ok.sum()), "n_skipped": int((self.status == "skipped").sum()),
               "n_failed": int((self.status == "nan").sum())}
        for key in METRICS + ("loss", "iterations"):
            values = getattr(self, key)[ok].astype(np.float64)
            out[key] = float(values.mean()) if values.size else float("nan")
        return out

    def to_frame(self):
        """One row per image (pandas DataFrame)."""
        import pandas as pd

        columns = {"label": self.labels, "status": self.status}
        for key in METRICS + ("loss", "clean_loss", "clean_pred", "iterations", "alpha"):
            columns[key] = getattr(self, key)
        return pd.DataFrame(columns)

    def __repr__(self):
        s = self.summary()
        return (f"AttackResult({s['optimizer']}, {s['setting']}: {s['n_images']} attacked, "
                f"{s['n_skipped']} skipped, {s['n_failed']} failed; mean RMSE {s['rmse']:.3f}, "
                f"CE {s['loss']:.2f}, {s['iterations']:.1f} steps)")


def to_uint8(images, rounding="round"):
    """Float images in [0, 255] -> uint8, by rounding (default) or by truncation (the authors'
    `astype(uint8)`)."""
    if rounding == "round":
        return np.clip(np.rint(images), 0, 255).astype(np.uint8)
    if rounding == "truncate":
        return np.clip(images, 0, 255).astype(np.uint8)
    raise ValueError(f"rounding must be 'round' or 'truncate', got {rounding!r}")


def measure(adv, clean):
    """ℓ∞, ℓ2, RMSE, ℓ1, ℓ0, PSNR and SSIM of adv against clean (NHWC, uint8 or float)."""
    return _core.metrics(images_f32(adv, "adv"), images_f32(clean, "clean"))


def _transform(di_prob, si_copies, ti_kernel, seed):
    if not 0 <= di_prob <= 1:
        raise ValueError(f"di_prob must be in [0, 1], got {di_prob}")
    if si_copies < 0:
        raise ValueError(f"si_copies must be >= 0, got {si_copies}")
    if ti_kernel < 0 or (ti_kernel and ti_kernel % 2 == 0):
        raise ValueError(f"ti_kernel must be 0 (off) or an odd size, got {ti_kernel}")
    if not (di_prob or si_copies > 1 or ti_kernel):
        return None
    return {"di_prob": float(di_prob), "di_min_scale": 0.9, "si_copies": int(si_copies),
            "ti_kernel": int(ti_kernel), "seed": int(seed)}


def attack(model, images, labels, optimizer="Adam", setting=None, *, batch_size=16,
           rounding="round", progress=False, di_prob=0.0, si_copies=0, ti_kernel=0,
           **overrides):
    """Craft adversarial examples of `images` on the surrogate `model`.

    model: a `fairattack.Model` (from `load_model`), or a Python callable
        `fn(x float32 [n,H,W,3], labels int64 [n], want_grad) -> (loss [n], pred [n], grad)` that
        gives the cross-entropy, the predicted class and the input gradient (CPU only).
    images: uint8 or float NHWC RGB in [0, 255]; labels: int class indices.
    optimizer: one of fairattack.OPTIMIZERS. setting: one of fairattack.SETTINGS (default
        const_loss, or fixed for the sign attacks). overrides: any hyper-parameter of
        `fairattack.make_config` (eps, max_iter, first_step_rmse, alpha, stop_loss, stop_rmse,
        rmse_weight, momentum, beta1, beta2, delta, nesterov, random_start, seed, ...).
    batch_size: images per call of the core; results never depend on it.
    rounding: "round" (default) or "truncate" (the authors' code) to uint8.
    di_prob / si_copies / ti_kernel: the DI, SI and TI input transforms of the gradient.
    The core runs without the GIL; Ctrl-C stops it with KeyboardInterrupt.
    """
    setting = default_setting(optimizer) if setting is None else setting
    cfg = make_config(optimizer, setting, **overrides)
    batch_size = positive_int(batch_size, "batch_size")
    to_uint8(np.zeros(1), rounding)  # validates `rounding` before any work
    x = images_f32(images)
    if isinstance(model, Model):
        core, device = model._core, model._attack_device()  # host state without CUDA kernels
        y = labels_i64(labels, x.shape[0], model.num_classes(x.shape[1], x.shape[2]))
    elif callable(model):
        core, device = model, _core.DEVICE_CPU
        y = labels_i64(labels, x.shape[0])
    else:
        raise TypeError("model must be a fairattack.Model (see fairattack.load_model) or a "
                        f"callable oracle, got {type(model).__name__}")
    transform = _transform(di_prob, si_copies, ti_kernel, cfg["seed"])

    parts = []
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{OPTIMIZERS[cfg['optimizer']]} {setting}", unit="batch")
    for start in starts:
        stop = start + batch_size
        # index_offset: per-image randomness (random start, DI) follows the image, not the batch
        parts.append(_core.attack(core, x[start:stop], y[start:stop],
                                  dict(cfg, index_offset=start), device, transform))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    adv = to_uint8(out["adv"], rounding)
    failed = out["status"] == STATUS.index("nan")
    adv[failed] = np.clip(np.rint(x[failed]), 0, 255).astype(np.uint8)
    metrics = _core.metrics(adv.astype(np.float32), x)
    return AttackResult(images=adv, labels=y, **metrics, loss=out["loss"],
                        clean_loss=out["clean_loss"], clean_pred=out["clean_pred"],
                        iterations=out["iterations"], alpha=out["alpha"],
                        status=np.array(STATUS, dtype=object)[out["status"]].astype(str),
                        optimizer=OPTIMIZERS[cfg["optimizer"]], setting=setting, config=cfg)
