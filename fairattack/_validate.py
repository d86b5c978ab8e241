"""Argument checks shared by the public functions: each error names the argument and what was
expected. The C core checks again; these come first so that messages speak Python."""

import numpy as np


def images_f32(images, name="images"):
    """uint8 or float NHWC RGB in [0, 255] -> C-contiguous float32 (a copy only when needed)."""
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB images of shape (N, H, W, 3), got shape "
                         f"{images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one image")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32)
    if images.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be uint8 or float, got dtype {images.dtype}")
    out = np.ascontiguousarray(images, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.unravel_index(np.argmin(finite), out.shape)
        raise ValueError(f"{name} contains NaN or inf (first at index {tuple(map(int, bad))})")
    low, high = float(out.min()), float(out.max())
    if low < 0 or high > 255:
        raise ValueError(f"{name} must be pixel values in [0, 255], got values in "
                         f"[{low:g}, {high:g}] (scale [0, 1] images by 255)")
    return out


def labels_i64(labels, n, num_classes=None, name="labels"):
    """Integer class labels of length n in [0, num_classes) -> int64 array."""
    labels = np.asarray(labels)
    if labels.ndim == 0:
        labels = labels.reshape(1)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-d sequence of class indices, got shape "
                         f"{labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) \
                and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {n} images")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        i = int(np.argmin(labels))
        raise ValueError(f"{name}[{i}]={labels[i]} is negative")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        i = int(np.argmax(labels))
        raise ValueError(f"{name}[{i}]={labels[i]} out of range [0, {num_classes})")
    return labels


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
