"""ImageNet data: class table, image loading, datasets of (path, label) and the selection protocol.

Preprocessing (docs/protocol.md#data): resize so that the shorter side equals `size`, keeping the
aspect ratio, then centre-crop `size` x `size`. The resize uses Pillow's bilinear filter, which
(like Keras' PIL-based loader) widens its support when shrinking, i.e. it antialiases; the longer
side is rounded to the nearest integer. Images are returned as uint8 HWC RGB.

Selection (docs/protocol.md#data): `select` sorts the dataset's file names, shuffles them with
`numpy.random.default_rng(seed).permutation`, walks that order in batches and keeps the first `n`
images that the surrogate classifies correctly. It streams: at most the kept images plus one batch are
held in memory.
"""

import functools
import importlib.resources
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ._validate import int_at_least, round_to_uint8

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LABEL_FILE_NAMES = ("val.txt", "labels.txt", "val_labels.txt")
_SYNSET = re.compile(r"n\d{8}")
_LAYOUTS = (
    "'val': image files plus a label file of lines 'ILSVRC2012_val_00000001.JPEG 65' "
    f"(pass labels=..., or name it one of {', '.join(LABEL_FILE_NAMES)} inside the folder); "
    "'synset_folders': one sub-folder per class named by its synset (n01440764/...); "
    "'flat': files named SYNSET_name.JPEG (n01440764_tench.JPEG); "
    "'class_folders': an ImageFolder tree (cat/, dog/, ...) with a class-index file of lines "
    "'FOLDER INDEX' ('cat 281'), passed as labels=..."
)


# ----------------------------------------------------------------------------- class table

@functools.lru_cache(maxsize=None)
def _class_table():
    text = importlib.resources.files(__package__).joinpath("imagenet_classes.tsv").read_text()
    lines = text.splitlines()
    synset_list, name_list = [], []
    for i, line in enumerate(lines[1:]):
        index, synset, name = line.split("\t")
        if int(index) != i:
            raise RuntimeError(f"imagenet_classes.tsv line {i + 2}: index {index}, expected {i}")
        synset_list.append(synset)
        name_list.append(name)
    return tuple(synset_list), tuple(name_list), {s: i for i, s in enumerate(synset_list)}


def synsets():
    """The 1000 ImageNet synsets in class-index order (sorted synset order)."""
    return list(_class_table()[0])


def class_names():
    """The 1000 human-readable class names in class-index order (two names repeat: crane, maillot)."""
    return list(_class_table()[1])


def index_of(synset):
    """Class index of a synset such as 'n01440764'."""
    table = _class_table()[2]
    if synset not in table:
        raise KeyError(f"synset={synset!r} is not one of the 1000 ImageNet synsets")
    return table[synset]


def _check_index(index):
    if not 0 <= int(index) < 1000:
        raise IndexError(f"index={index} out of range [0, 1000)")
    return int(index)


def synset_of(index):
    """Synset of a class index."""
    return _class_table()[0][_check_index(index)]


def name_of(index):
    """Class name of a class index."""
    return _class_table()[1][_check_index(index)]


# ----------------------------------------------------------------------------- images

#: Pillow modes of 16- and 32-bit integer greyscale images (16-bit PNGs load as one of these).
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb(img):
    """An RGB Pillow image. 16-bit greyscale is scaled to 8 bits (v / 257, rounded): Pillow's own
    convert would clip every value above 255 to white."""
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(round_to_uint8(values / 257.0), "L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        high = 1.0 if values.size and values.max() <= 1.0 else 255.0
        img = Image.fromarray(round_to_uint8(values * 255.0 / high), "L")
    return img.convert("RGB")


def read_rgb(path):
    """A file's pixels as they are: uint8 HWC RGB (no resize), e.g. a stored adversarial PNG."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path, size):
    """Load an image as uint8 [size, size, 3] RGB: shorter side resized to `size`, then centre crop.

    16-bit greyscale PNGs are scaled to 8 bits. A file that cannot be read (missing, truncated,
    not an image) raises OSError naming it.
    """
    size = int_at_least(size, "size", 1)
    try:
        with Image.open(path) as img:
            img = _to_rgb(img)
            width, height = img.size
            scale = size / min(width, height)
            new_w = max(size, round(width * scale))
            new_h = max(size, round(height * scale))
            if (new_w, new_h) != (width, height):
                img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise OSError(f"{path}: cannot read the image: {error}") from error


def save_png(images, names, folder):
    """Save uint8 NHWC images as folder/<stem of name>.png; returns the list of written paths."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    names = list(names)
    if len(names) != len(images):
        raise ValueError(f"names: expected {len(images)} names, got {len(names)}")
    stems = [Path(name).stem for name in names]
    if len(set(stems)) != len(stems):
        raise ValueError("names: two names have the same file stem; PNGs would overwrite each other")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, stem in zip(images, stems):
        path = folder / f"{stem}.png"
        Image.fromarray(image, "RGB").save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Dataset:
    """A list of labelled image files, sorted by name; no pixels are loaded.

    `names[i]` is the path relative to `root` (the sort key), `labels[i]` the class index.
    """

    root: Path
    names: tuple
    labels: np.ndarray
    layout: str

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return self.root / self.names[i], int(self.labels[i])

    def path(self, i):
        return self.root / self.names[i]


def _image_files(folder):
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------- folders of PNGs

def list_images(folder, what):
    """The image files of a folder (sorted Paths); ValueError naming `what` when it is no folder
    or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is not a folder")
    files = [folder / n for n in _image_files(folder)]
    if not files:
        raise ValueError(f"{what} {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image_folder(folder, what):
    """(files, uint8 [N, H, W, 3]) of every image of a folder as it is (no resize); they must
    share one size."""
    files = list_images(folder, what)
    images = [read_rgb(f) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{what}: images of different sizes {sorted(shapes)}; compare needs "
                         "one size (resize and crop them first)")
    return files, np.stack(images)


def read_matching_folder(folder, files, clean, what):
    """uint8 images of `folder` with the stems of `files` (e.g. an attack's adversarial PNGs of
    the clean images `clean`), in their order, each of its clean image's shape."""
    found = {p.stem: p for p in list_images(folder, what)}
    missing = [f.name for f in files if f.stem not in found]
    if missing:
        raise ValueError(f"{what}: no image for {missing[0]!r} ({len(missing)} of {len(files)} "
                         "clean images missing)")
    out = []
    for f, c in zip(files, clean):
        image = read_rgb(found[f.stem])
        if image.shape != c.shape:
            raise ValueError(f"{what}: {found[f.stem].name} has shape {image.shape}, its clean "
                             f"image {c.shape}")
        out.append(image)
    return np.stack(out)


def classes_of_names(table, names, what):
    """One class per image name from a {name: class} table (a label file's `read_label_file`),
    matched by the name, its file name or its stem; ValueError naming `what` and the first
    image the table lacks."""
    by_stem = {Path(k).stem: v for k, v in table.items()}
    out = []
    for name in names:
        path = Path(str(name))
        found = table.get(str(name), table.get(path.name, by_stem.get(path.stem)))
        if found is None:
            missing = sum(1 for n in names if str(n) not in table and Path(str(n)).name not in
                          table and Path(str(n)).stem not in by_stem)
            raise ValueError(f"{what}: no entry for {path.name!r} ({missing} image(s) "
                             "without one)")
        out.append(found)
    return np.array(out, np.int64)


def labels_of_files(files, label_file=None, what="--clean"):
    """Class indices of image files: from a label file (lines 'FILE INDEX', matched by name or
    stem), else from SYNSET_name file names."""
    if label_file:
        return classes_of_names(read_label_file(label_file), [f.name for f in files],
                                f"--labels {label_file}")
    out = []
    for f in files:
        match = _SYNSET.match(f.name)
        if not match:
            raise ValueError(f"{what}: {f.name!r} is not named SYNSET_name (n01440764_x.png); "
                             "pass --labels FILE")
        out.append(index_of(match.group(0)))
    return np.array(out, np.int64)


def read_label_file(path):
    """Parse lines 'FILENAME LABEL' into a dict; ValueError names the bad line."""
    path = Path(path)
    table = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            where = f"{path}:{lineno}"
            if len(fields) != 2:
                raise ValueError(f"{where}: expected 'FILENAME LABEL', got {line.rstrip()!r}")
            name, label = fields
            try:
                label = int(label)
            except ValueError:
                raise ValueError(f"{where}: label {label!r} is not an integer") from None
            if not 0 <= label < 1000:
                raise ValueError(f"{where}: label {label} out of range [0, 1000)")
            if name in table:
                raise ValueError(f"{where}: {name!r} is listed twice")
            table[name] = label
    if not table:
        raise ValueError(f"{path}: label file has no entries")
    return table


def _val_layout(root, label_file):
    table = read_label_file(label_file)
    names = _image_files(root)
    if not names:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) next to labels")
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"{label_file}: no label for {missing[0]!r} "
                         f"({len(missing)} of {len(names)} images in {root} unlabelled)")
    return Dataset(root, tuple(names), np.array([table[n] for n in names], np.int64), "val")


def _label_of(synset, path):
    """index_of(synset), with the file or folder that named it in the error."""
    try:
        return index_of(synset)
    except KeyError as error:
        raise KeyError(f"{path}: {error.args[0]}") from None


def _synset_folder_layout(root, folders):
    names, labels = [], []
    for folder in folders:
        label = _label_of(folder.name, folder)
        files = _image_files(folder)
        names += [f"{folder.name}/{f}" for f in files]
        labels += [label] * len(files)
    return Dataset(root, tuple(names), np.array(labels, np.int64), "synset_folders")


def _class_folders(root):
    """Sub-folders of root that hold images, sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _image_files(p))


def _class_folder_layout(root, label_file, folders):
    """An ImageFolder tree: one sub-folder per class, any names, and a class-index file of
    lines 'FOLDER INDEX' (the ImageNet index of each folder's class)."""
    table = read_label_file(label_file)
    missing = [f.name for f in folders if f.name not in table]
    if missing:
        raise ValueError(f"{label_file}: no class index for the folder {missing[0]!r} of {root} "
                         f"({len(missing)} of {len(folders)} folders); add a line "
                         f"'{missing[0]} INDEX' (its ImageNet class index)")
    names, labels = [], []
    for folder in folders:
        files = _image_files(folder)
        names += [f"{folder.name}/{f}" for f in files]
        labels += [table[folder.name]] * len(files)
    return Dataset(root, tuple(names), np.array(labels, np.int64), "class_folders")


def _flat_layout(root, names):
    labels = [_label_of(n.split("_", 1)[0], root / n) for n in names]
    return Dataset(root, tuple(names), np.array(labels, np.int64), "flat")


def open_dataset(root, labels=None, layout="auto"):
    """List the labelled images under `root` without loading them.

    layout: "auto", "val" (needs `labels`, a label file, or one of LABEL_FILE_NAMES inside `root`),
    "synset_folders", "flat" or "class_folders" (an ImageFolder tree cat/, dog/, ... whose
    `labels` file maps each folder to its ImageNet index: lines 'cat 281'). Auto-detection tries
    class folders (sub-folders of images named in the label file), val (when a label file is
    given or found), then synset folders, then flat SYNSET_name files; an ImageFolder tree
    without a class-index file is refused with what to write.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a directory")
    if layout not in ("auto", "val", "synset_folders", "flat", "class_folders"):
        raise ValueError(f"layout={layout!r}, expected 'auto', 'val', 'synset_folders', 'flat' "
                         "or 'class_folders'")
    if labels is None and layout in ("auto", "val", "class_folders"):
        found = [root / n for n in LABEL_FILE_NAMES if (root / n).is_file()]
        labels = found[0] if found else None
    folders = _class_folders(root) if layout in ("auto", "class_folders") else []
    if layout == "class_folders" and labels is None:
        raise ValueError("layout='class_folders' needs labels=...: a file of lines 'FOLDER "
                         "INDEX'")
    if folders and labels is not None and not _image_files(root) and (
            layout == "class_folders" or any(f.name in read_label_file(labels) for f in folders)):
        return _class_folder_layout(root, labels, folders)
    if layout == "val" or (layout == "auto" and labels is not None):
        if labels is None:
            raise ValueError(f"layout='val' needs labels=...: no label file found in {root}")
        return _val_layout(root, labels)
    if layout in ("auto", "synset_folders"):
        synsets = sorted(p for p in root.iterdir() if p.is_dir() and _SYNSET.fullmatch(p.name))
        if synsets:
            return _synset_folder_layout(root, synsets)
    if folders and not _image_files(root):
        shown = ", ".join(f"{f.name}/" for f in folders[:3]) + (", ..." if len(folders) > 3
                                                                 else "")
        raise ValueError(
            f"{root} is an ImageFolder tree ({shown}) whose folder names are not ImageNet "
            "synsets, so fairattack cannot tell their class indices: write a class-index file "
            f"with one line 'FOLDER INDEX' per folder (e.g. '{folders[0].name} 281'; "
            "fairattack.data.index_of('n02123045') gives a synset's index) and pass it as "
            "labels=... (--labels FILE), or rename each folder to its synset (n02123045/)")
    if layout in ("auto", "flat"):
        names = [n for n in _image_files(root) if _SYNSET.fullmatch(n.split("_", 1)[0])]
        if names:
            return _flat_layout(root, names)
    raise ValueError(f"{root}: no images in a known layout (layout={layout!r}); expected {_LAYOUTS}")


# ----------------------------------------------------------------------------- streaming

def _as_dataset(dataset):
    return dataset if isinstance(dataset, Dataset) else open_dataset(dataset)


class UnreadableFiles(list):
    """(path, error message) of the files a dataset scan skipped."""

    def warn(self, where, stacklevel=3):
        if self:
            path, reason = self[0]
            warnings.warn(f"{where}: skipped {len(self)} unreadable image file(s) (first: "
                          f"{reason})", RuntimeWarning, stacklevel=stacklevel)


def _load_batches(dataset, size, batch_size, order, skipped):
    """(images, labels, names) per batch; unreadable files are left out and added to skipped."""
    for start in range(0, len(order), batch_size):
        images, keep = [], []
        for i in order[start:start + batch_size]:
            try:
                images.append(load_image(dataset.path(i), size))
                keep.append(i)
            except OSError as error:  # FileNotFoundError too: a file gone since the listing
                skipped.append((str(dataset.path(i)), str(error)))
        if keep:
            yield (np.stack(images), dataset.labels[np.array(keep)],
                   [dataset.names[i] for i in keep])


def iter_batches(dataset, size, batch_size=32, order=None, skipped=None):
    """Yield (images uint8 [b, size, size, 3], labels int64 [b], names) in `order` (default: sorted).

    Only one batch of pixels exists at a time. Files that cannot be read (truncated, corrupt,
    gone) are skipped: batches are then shorter, and one RuntimeWarning at the end gives their
    count and the first file. Pass a list as `skipped` to receive (path, reason) of each.
    """
    dataset = _as_dataset(dataset)
    batch_size = int_at_least(batch_size, "batch_size", 1)
    order = np.arange(len(dataset)) if order is None else np.asarray(order)
    found = UnreadableFiles()
    try:
        yield from _load_batches(dataset, size, batch_size, order, found)
    finally:
        if skipped is not None:
            skipped.extend(found)
        found.warn("iter_batches")


def select(dataset, model, n, size, seed=0, batch_size=32, progress=False, skipped=None):
    """The first `n` images, in seeded shuffled order, that `model` gets right (docs/protocol.md).

    dataset: a Dataset or a folder for `open_dataset`. model: anything with
    `predict(images uint8 NHWC) -> int labels`. The order is `sorted names` permuted by
    `numpy.random.default_rng(seed).permutation(len(dataset))`, so a seed fixes the selection.
    Returns (images uint8 [n, size, size, 3], labels int64 [n], names). If the dataset runs out first,
    fewer images are returned with a RuntimeWarning. Unreadable files are skipped with one
    RuntimeWarning giving their count (pass a list as `skipped` to receive (path, reason) of each).
    """
    dataset = _as_dataset(dataset)
    n = int_at_least(n, "n", 1)
    size = int_at_least(size, "size", 1)
    batch_size = int_at_least(batch_size, "batch_size", 1)
    order = np.random.default_rng(seed).permutation(len(dataset))
    capacity = min(n, len(dataset))  # n may exceed the dataset: never allocate more than it holds
    images = np.empty((capacity, size, size, 3), np.uint8)
    labels = np.empty(capacity, np.int64)
    names = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="select", unit="img")
    unreadable = UnreadableFiles()
    for batch, batch_labels, batch_names in _load_batches(dataset, size, batch_size, order,
                                                          unreadable):
        correct = np.asarray(model.predict(batch)) == batch_labels
        for i in np.flatnonzero(correct)[:capacity - len(names)]:
            images[len(names)], labels[len(names)] = batch[i], batch_labels[i]
            names.append(batch_names[i])
        if bar is not None:
            bar.update(min(int(correct.sum()), capacity - bar.n))
        if len(names) == capacity:
            break
    if bar is not None:
        bar.close()
    if skipped is not None:
        skipped.extend(unreadable)
    unreadable.warn("select")
    if len(names) < n:
        warnings.warn(f"select: only {len(names)} of {len(dataset)} images are classified correctly, "
                      f"fewer than n={n}", RuntimeWarning, stacklevel=2)
    return images[:len(names)], labels[:len(names)], names


# ----------------------------------------------------------------------------- demo photos

#: Real photos that scikit-image ships (skimage/data), with the ImageNet class of what they show.
#: ImageNet's cat classes are notoriously mixed up; Chelsea is labelled Egyptian cat, the class
#: all three EfficientNet-Lite models give her. There is no motorcycle class: moped is the
#: nearest.
DEMO_PHOTOS = (("chelsea.png", 285), ("coffee.png", 967), ("rocket.jpg", 657),
               ("motorcycle_left.png", 665))


def demo_photos(size=224):
    """(images uint8 [N, size, size, 3], labels, names) of the photos scikit-image ships, resized
    and centre-cropped like ImageNet (docs/protocol.md#data). The demo's default data: nothing is
    downloaded."""
    try:
        import skimage
    except ImportError as error:
        raise ModuleNotFoundError("the demo photos come with scikit-image: pip install "
                                  "scikit-image (or pass a folder of images)") from error
    folder = Path(skimage.__file__).parent / "data"
    images = np.stack([load_image(folder / name, size) for name, _ in DEMO_PHOTOS])
    labels = np.array([label for _, label in DEMO_PHOTOS], np.int64)
    names = [Path(name).stem for name, _ in DEMO_PHOTOS]
    return images, labels, names
