"""Transferability: the error rate of victim models on adversarial images (docs/protocol.md).

    import fairattack as fa
    res = fa.attack(surrogate, images, labels)
    asr = fa.evaluate({"lite1": victim1, "lite2": victim2}, res)
    asr["mean"]   # the paper's figure: the mean over victims

Given an AttackResult, only the images that were attacked count (`res.attacked_mask`: not skipped
as misclassified by the surrogate, not failed); the labels come from the result. Given plain
images and labels, every image counts.

Victims see what would be saved: uint8 images (float input in [0, 255] is rounded first; values
outside [0, 255], NaN, or a float batch entirely within [0, 1] are errors).
A victim whose input size differs from the images resizes them inside its own wrapper.

A victim whose logits for an image are not all finite gives no prediction for it: that image is
a failure for that victim, left out of its error rate (never counted as an error nor as correct),
counted in `rates.attrs["n_failed"][victim]` and reported with a RuntimeWarning.
"""

import warnings

import numpy as np

from ._model import check_labels, victims_of
from ._validate import check_pixels, positive_int, round_to_uint8
from .outcome import victim_outcome


def evaluate(victims, images, labels=None, batch_size=64, progress=False):
    """Error rate (prediction != label) of each victim, plus their "mean", as a pandas Series.

    victims: dict name -> Model, a list of Models (keyed by model.name), or one Model.
    images: an AttackResult (its attacked images and labels: skipped and failed images do not
        count), or [N, H, W, 3] uint8 / float in [0, 255] (float is rounded to uint8 first).
    labels: [N] class indices (only with plain images), checked against each victim's number of
        classes.
    Returns the Series of error rates; `.attrs["n_images"]` is the number of images evaluated and
    `.attrs["n_failed"]` the per-victim number of images with non-finite logits (left out of
    that victim's rate; its rate is NaN when every image failed).
    """
    import pandas as pd

    from .attack import AttackResult

    victims = victims_of(victims, need="logits")
    if isinstance(images, AttackResult):
        if labels is not None:
            raise ValueError("labels: give either an AttackResult (its labels are used) or "
                             "images and labels, not both")
        attacked = np.asarray(images.attacked_mask)
        if not attacked.any():
            raise ValueError("images: the AttackResult has no attacked images (every image was "
                             "skipped or failed)")
        labels = np.asarray(images.labels)[attacked]
        images = images.images[attacked]
    elif labels is None:
        raise TypeError("labels: required with plain images (or pass an AttackResult)")
    images = check_pixels(images)
    labels = check_labels(labels, len(images), victims, *images.shape[1:3])
    batch_size = positive_int(batch_size, "batch_size")
    starts = range(0, len(images), batch_size)
    rates, failures = {}, {}
    for name, victim in victims.items():
        batches = starts
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(starts, desc=f"evaluate {name}", unit="batch")
        errors = failed = 0
        for start in batches:
            with warnings.catch_warnings():  # counted and reported below, once per victim
                warnings.simplefilter("ignore", RuntimeWarning)
                logits = np.asarray(victim.logits(round_to_uint8(images[start:start + batch_size]),
                                                  batch_size=batch_size))
            batch_labels = labels[start:start + batch_size]
            finite = np.isfinite(logits).all(axis=1)
            pred = np.where(finite, np.nan_to_num(logits).argmax(axis=1), -1)  # as Model.predict
            fooled, bad = victim_outcome(pred, batch_labels)
            failed += int(bad.sum())
            errors += int(fooled.sum())
        counted = len(images) - failed
        rates[name] = errors / counted if counted else float("nan")
        failures[name] = failed
        if failed:
            warnings.warn(f"evaluate: victim {name!r} gave non-finite logits for {failed} of "
                          f"{len(images)} images; they are left out of its error rate "
                          "(see .attrs['n_failed'])", RuntimeWarning, stacklevel=2)
    rates["mean"] = float(np.mean(list(rates.values())))
    series = pd.Series(rates, name="error_rate", dtype=np.float64)
    series.attrs["n_images"] = len(images)
    series.attrs["n_failed"] = failures
    return series
