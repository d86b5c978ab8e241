"""The study's images: a folder selected per surrogate by the paper's protocol (docs/protocol.md#data) and
cached under a content key in the study folder, or explicit arrays used as given."""

import warnings

import numpy as np

from .. import _core, data as fa_data
from ..store import (digest_array, digest_files, digest_images, digest_json, explain_change,
                     locked, png_names)

#: N of the paper's selection when a folder is given and n_images is not.
PAPER_N = 1000


class RecomputeWarning(RuntimeWarning):
    """A stored result no longer matches its inputs and is recomputed; the message says why."""


def version():
    return str(_core.VERSION)


class Selection:
    """One surrogate's images: arrays (explicit data) or a memory-mapped stored selection."""

    def __init__(self, images, labels, names, images_digest):
        self.images, self.labels, self.names = images, np.asarray(labels, np.int64), list(names)
        self.pngs = png_names(self.names)
        self.parts = {"images": images_digest, "labels": digest_array(self.labels),
                      "names": digest_json(self.names)}

    def __len__(self):
        return len(self.labels)


class ImageSource:
    """The study's images: a folder (selected per surrogate, cached under a content key) or
    explicit arrays."""

    def __init__(self, data, labels, n_images, seed, batch_size, folder, progress):
        self.folder, self.seed, self.batch_size, self.progress = folder, seed, batch_size, progress
        self.arrays = None
        if isinstance(data, tuple):
            if len(data) not in (2, 3):
                raise ValueError("data: expected a folder, a Dataset, or a tuple "
                                 "(images, labels) or (images, labels, names)")
            images, y = np.asarray(data[0]), np.asarray(data[1])
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"data: images must be uint8 [N, H, W, 3], got {images.dtype} "
                                 f"{images.shape}")
            if y.shape != (images.shape[0],):
                raise ValueError(f"data: {images.shape[0]} images but labels of shape {y.shape}")
            if y.dtype.kind not in "iu":
                raise TypeError(f"data: labels must be integers, got dtype {y.dtype}")
            names = [str(n) for n in data[2]] if len(data) == 3 else \
                [f"{i:05d}" for i in range(len(y))]
            if len(names) != len(y):
                raise ValueError(f"data: {len(y)} images but {len(names)} names")
            first = {}
            for i, name in enumerate(names):
                if name in first:
                    raise ValueError(f"data: two images have the same name {name!r} (images "
                                     f"{first[name]} and {i})")
                first[name] = i
            if n_images is not None:
                images, y, names = images[:n_images], y[:n_images], names[:n_images]
            self.arrays = (images, y, names)
            self._selection = None
        else:
            self.dataset = data if isinstance(data, fa_data.Dataset) else \
                fa_data.open_dataset(data, labels=labels)
            self.n = PAPER_N if n_images is None else int(n_images)
            self._files = None

    def _dataset_parts(self):
        if self._files is None:
            digests = digest_files(self.dataset.root, self.dataset.names,
                                   self.folder.root / "files.json")
            self._files = {"files": digest_json(list(zip(self.dataset.names, digests))),
                           "labels": digest_array(np.asarray(self.dataset.labels, np.int64))}
        return self._files

    def get(self, surrogate_name, surrogate_digest, load_model_fn, size, select):
        """The surrogate's Selection. select=True (rank 0) selects when the cache is stale;
        otherwise the cache must be current."""
        if self.arrays is not None:
            if self._selection is None:
                images, y, names = self.arrays
                self._selection = Selection(images, y, names, digest_json(digest_images(images)))
            return self._selection
        if size is None:
            raise ValueError(f"surrogate {surrogate_name!r}: unknown input size; pass "
                             "image_size=... to run_study")
        parts = dict(self._dataset_parts(), surrogate=surrogate_digest, n=self.n,
                     seed=int(self.seed), size=int(size), version=version())
        key = digest_json(parts)
        lock = self.folder.lock_path("selection", surrogate_name)
        with locked(lock):
            found = self.folder.read_selection(surrogate_name, key)
            if found is None:
                if not select:
                    raise RuntimeError(f"surrogate {surrogate_name!r}: its selection is missing "
                                       "or stale although rank 0 made it; is the output folder "
                                       "shared by all ranks?")
                old = self.folder.selection_meta(surrogate_name)
                if old and isinstance(old.get("parts"), dict):
                    warnings.warn(f"selecting the images of {surrogate_name!r} again: "
                                  f"{explain_change(old['parts'], parts)}", RecomputeWarning, stacklevel=3)
                images, y, names = fa_data.select(self.dataset, load_model_fn(), self.n, size,
                                                  seed=self.seed, batch_size=self.batch_size,
                                                  progress=self.progress)
                if len(names) == 0:
                    raise RuntimeError(f"surrogate {surrogate_name!r} classifies none of the "
                                       f"images in {self.dataset.root} correctly")
                meta = {"key": key, "parts": parts, "n": len(names),
                        "images_digest": digest_json(digest_images(images))}
                self.folder.write_selection(surrogate_name, images, y, names, meta)
                found = self.folder.read_selection(surrogate_name, key)
        images, y, names, meta = found
        return Selection(images, y, names, meta["images_digest"])
