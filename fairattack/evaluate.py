"""Transferability (SPEC §5): the error rate of victim models on adversarial images.

    import fairattack as fa
    asr = fa.evaluate({"lite1": victim1, "lite2": victim2}, res.images[res.attacked],
                      res.labels[res.attacked])
    asr["mean"]   # the paper's figure: the mean over victims

Victims see what would be saved: uint8 images (float input is rounded, then clipped to [0, 255]).
A victim whose input size differs from the images resizes them inside its own wrapper.
"""

import numpy as np


def _victim_dict(victims):
    if isinstance(victims, dict):
        items = list(victims.items())
    elif hasattr(victims, "predict"):
        items = [(victims.name, victims)]
    else:
        items = [(getattr(v, "name", None), v) for v in victims]
    if not items:
        raise ValueError("victims: expected at least one model")
    names = [name for name, _ in items]
    for name, victim in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"victims: every victim needs a non-empty str name, got {name!r}")
        if not hasattr(victim, "logits"):
            raise TypeError(f"victims[{name!r}]: expected a fairattack Model, got {type(victim)}")
    if "mean" in names or len(set(names)) != len(names):
        raise ValueError(f"victims: names must be unique and not 'mean', got {names}")
    return dict(items)


def _as_uint8(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape [N, H, W, 3] (NHWC RGB), got {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
        raise TypeError(f"images: expected uint8 or float values, got dtype {images.dtype}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise ValueError("images: contains NaN or infinite values")
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def evaluate(victims, images, labels, batch_size=64, progress=False):
    """Error rate (prediction != label) of each victim, plus their "mean", as a pandas Series.

    victims: dict name -> Model, a list of Models (keyed by model.name), or one Model.
    images: [N, H, W, 3] uint8, or float in [0, 255] (rounded and clipped to uint8 first).
    labels: [N] class indices, checked against each victim's number of classes.
    """
    import pandas as pd

    victims = _victim_dict(victims)
    images = _as_uint8(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels: expected shape [{len(images)}] (one per image), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got N=0")
    if labels.min() < 0:
        bad = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(f"labels[{bad}]={labels[bad]} is negative")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size}, expected >= 1")
    batch_size = int(batch_size)
    starts = range(0, len(images), batch_size)
    rates = {}
    for name, victim in victims.items():
        batches = starts
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(starts, desc=f"evaluate {name}", unit="batch")
        errors = 0
        for start in batches:
            logits = np.asarray(victim.logits(images[start:start + batch_size], batch_size=batch_size))
            n_classes = logits.shape[1]
            batch_labels = labels[start:start + batch_size]
            if batch_labels.max() >= n_classes:
                bad = start + int(np.flatnonzero(batch_labels >= n_classes)[0])
                raise ValueError(f"labels[{bad}]={labels[bad]} out of range [0, {n_classes}) "
                                 f"of victim {name!r}")
            errors += int((logits.argmax(axis=1) != batch_labels).sum())
        rates[name] = errors / len(images)
    rates["mean"] = float(np.mean(list(rates.values())))
    return pd.Series(rates, name="error_rate", dtype=np.float64)
