"""Argument checks shared by the public functions: each error names the argument and what was
expected. The C core checks again; these come first so that messages speak Python.

Images: every public function that takes images (attack, evaluate, Model.predict / logits /
loss_and_grad, measure) checks them with `check_pixels`: NHWC RGB, uint8 or a real dtype, finite,
values in [0, 255]. A float batch whose values all lie in [0, 1] (and are not all 0) is refused
as a forgotten ×255; images that really are that dark can be passed as uint8 (integer dtypes are
never taken for [0, 1] images).
"""

import numbers

import numpy as np

#: Images checked per chunk, so that a check never makes a whole-dataset temporary.
_CHUNK = 64


def check_pixels(images, name="images"):
    """Validate NHWC RGB pixel images in [0, 255]; returns them as an ndarray (no copy)."""
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB images of shape (N, H, W, 3), got shape "
                         f"{images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one image")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be uint8 or float pixel values, got dtype {images.dtype}")
    low, high = np.inf, -np.inf
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start:start + _CHUNK]
        if images.dtype.kind == "f":
            finite = np.isfinite(chunk)
            if not finite.all():
                bad = np.unravel_index(np.argmin(finite), chunk.shape)
                bad = (bad[0] + start,) + tuple(bad[1:])
                raise ValueError(f"{name} contains NaN or inf (first at index "
                                 f"{tuple(map(int, bad))})")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if low < 0 or high > 255:
        raise ValueError(f"{name} must be pixel values in [0, 255], got values in "
                         f"[{low:g}, {high:g}]")
    if images.dtype.kind == "f" and 0 < high <= 1:
        raise ValueError(f"{name} are float values all within [0, 1] (max {high:g}): fairattack "
                         "expects pixel values in [0, 255]; multiply [0, 1] images by 255 "
                         "(images that really are this dark: pass them as uint8)")
    return images


def images_f32(images, name="images"):
    """uint8 or float NHWC RGB in [0, 255] -> C-contiguous float32 (a copy only when needed)."""
    images = check_pixels(images, name)
    return np.ascontiguousarray(images, dtype=np.float32)


def is_integral(images):
    """True when every value of the (checked) images is a whole number."""
    if images.dtype.kind in "iu":
        return True
    return all(np.array_equal(c, np.rint(c)) for c in
               (images[s:s + _CHUNK] for s in range(0, images.shape[0], _CHUNK)))


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


def _describe(value):
    return f"{value!r} ({type(value).__name__})"


def integer(value, name, flag=False, bits=None):
    """A Python or NumPy integer -> int; TypeError names the argument. A bool is an integer only
    for a flag (flag=True: 0/1 fields such as random_start): `batch_size=True` is a mistake.
    bits: the C type the value crosses into, (bits, signed), e.g. (32, True); a value outside
    it is refused (ValueError) instead of wrapping in C."""
    if isinstance(value, (bool, np.bool_)):
        if not flag:
            raise TypeError(f"{name} must be an integer, got {_describe(value)}")
        return int(value)
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    value = int(value)
    if bits is not None:
        width, signed = bits
        low, high = (-(2 ** (width - 1)) + 1, 2 ** (width - 1) - 1) if signed \
            else (0, 2 ** width - 1)
        if not low <= value <= high:
            kind = "signed" if signed else "unsigned"
            raise ValueError(f"{name}={value} is out of range: the C core keeps it in a {kind} "
                             f"{width}-bit integer [{low}, {high}]")
    return value


def real(value, name):
    """A Python or NumPy real number -> float; TypeError names the argument."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{name} must be a number, got {_describe(value)}")


def int_at_least(value, name, low, optional=False):
    """A Python or NumPy integer >= low -> int (None when optional and None): the one check of
    an integer argument. TypeError for a non-integer, ValueError below low; both name it."""
    if optional and value is None:
        return None
    value = integer(value, name)
    if value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {what}" + (" or None" if optional else "")
                         + f", got {value!r}")
    return value


def positive_int(value, name):
    """int_at_least(value, name, 1)."""
    return int_at_least(value, name, 1)


def round_to_uint8(images):
    """Float (or integer) pixel values -> uint8: rounded to the nearest integer, clipped to
    [0, 255]. The one rounding of float images to what victims see."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)
