"""fairattack.data: class table, preprocessing, dataset layouts, seeded streaming selection."""

import numpy as np
import pytest
from PIL import Image

from fairattack import data

SIZE = 8  # tiny images keep the layout and selection tests fast


def _write(path, rgb=(0, 0, 0), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(v) for v in rgb)).save(path)
    return path


def _read_tsv(shared_dir):
    rows = [line.split("\t") for line in
            (shared_dir / "imagenet_classes.tsv").read_text().splitlines()[1:]]
    return [r[1] for r in rows], [r[2] for r in rows]


# ----------------------------------------------------------------------------- class table

def test_class_table_matches_shared_tsv(shared_dir):
    synsets, names = _read_tsv(shared_dir)
    assert data.synsets() == synsets
    assert data.class_names() == names
    assert synsets == sorted(synsets)  # class index = position in sorted synset order
    for i in (0, 1, 499, 999):
        assert data.synset_of(i) == synsets[i]
        assert data.name_of(i) == names[i]
        assert data.index_of(synsets[i]) == i


def test_class_table_errors():
    with pytest.raises(KeyError, match="n00000000"):
        data.index_of("n00000000")
    with pytest.raises(IndexError, match="1000"):
        data.synset_of(1000)
    with pytest.raises(IndexError, match="-1"):
        data.name_of(-1)


# ----------------------------------------------------------------------------- load_image

@pytest.mark.parametrize("size", [224, 299])
def test_load_image_real_jpegs(samples_dir, size):
    files = sorted(samples_dir.iterdir())[:3]
    for path in files:
        image = data.load_image(path, size)
        assert image.dtype == np.uint8 and image.shape == (size, size, 3)
        assert image.std() > 1  # real content, not a blank crop


def test_load_image_grayscale_jpeg_becomes_rgb(samples_dir):
    gray = next((p for p in sorted(samples_dir.iterdir()) if Image.open(p).mode == "L"), None)
    if gray is None:
        pytest.skip("no grayscale sample")
    image = data.load_image(gray, 64)
    assert image.shape == (64, 64, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


@pytest.mark.parametrize("landscape", [True, False])
def test_load_image_resizes_shorter_side_then_centre_crops(tmp_path, landscape):
    # A 300x200 image whose red channel is a linear ramp along the long side. Shorter side 200 -> 100
    # halves it (long side 150), the centre crop keeps resized columns 25..124, i.e. original
    # coordinates 2*(c + 25) + 0.5 for output column c. A linear ramp survives bilinear filtering.
    long_side, short_side, size = 300, 200, 100
    ramp = np.arange(long_side) * (250 / (long_side - 1))
    pixels = np.zeros((short_side, long_side, 3), np.uint8)
    pixels[..., 0] = np.rint(ramp)
    pixels[..., 1] = 77
    if not landscape:
        pixels = pixels.transpose(1, 0, 2).copy()
    path = tmp_path / "ramp.png"
    Image.fromarray(pixels).save(path)

    image = data.load_image(path, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    along = image[size // 2, :, 0] if landscape else image[:, size // 2, 0]
    across = image[:, size // 2, 0] if landscape else image[size // 2, :, 0]
    expected = (2 * (np.arange(size) + 25) + 0.5) * (250 / (long_side - 1))
    np.testing.assert_allclose(along.astype(float), expected, atol=1.5)
    assert np.ptp(across) <= 1  # constant across the ramp
    assert (image[..., 1] == 77).all()


def test_load_image_exact_size_is_untouched(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(data.load_image(path, 32), pixels)


def test_load_image_bad_size(tmp_path):
    with pytest.raises(ValueError, match="size"):
        data.load_image(_write(tmp_path / "a.png"), 0)


# ----------------------------------------------------------------------------- layouts

def test_flat_layout(tmp_path, shared_dir):
    synsets, _ = _read_tsv(shared_dir)
    _write(tmp_path / f"{synsets[7]}_cock.JPEG")
    _write(tmp_path / f"{synsets[0]}_tench.JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    _write(tmp_path / "holiday.jpg")  # no synset prefix: not part of the dataset
    ds = data.open_dataset(tmp_path)
    assert ds.layout == "flat"
    assert ds.names == (f"{synsets[0]}_tench.JPEG", f"{synsets[7]}_cock.JPEG")
    assert ds.labels.tolist() == [0, 7] and ds.labels.dtype == np.int64
    assert ds[1] == (tmp_path / f"{synsets[7]}_cock.JPEG", 7)


def test_synset_folder_layout(tmp_path, shared_dir):
    synsets, _ = _read_tsv(shared_dir)
    _write(tmp_path / synsets[3] / "b.jpg")
    _write(tmp_path / synsets[3] / "a.png")
    _write(tmp_path / synsets[1] / "z.JPEG")
    ds = data.open_dataset(tmp_path)
    assert ds.layout == "synset_folders"
    assert ds.names == (f"{synsets[1]}/z.JPEG", f"{synsets[3]}/a.png", f"{synsets[3]}/b.jpg")
    assert ds.labels.tolist() == [1, 3, 3]


@pytest.mark.parametrize("where", ["argument", "inside"])
def test_val_layout(tmp_path, where):
    root = tmp_path / "val"
    for i in (3, 1, 2):
        _write(root / f"ILSVRC2012_val_{i:08d}.JPEG")
    lines = "ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n\n" \
            "ILSVRC2012_val_00000003.JPEG 0\nILSVRC2012_val_00000099.JPEG 5\n"
    label_file = (tmp_path / "labels-elsewhere.txt") if where == "argument" else (root / "val.txt")
    label_file.write_text(lines)
    ds = data.open_dataset(root, labels=label_file if where == "argument" else None)
    assert ds.layout == "val"
    assert ds.names == tuple(f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3))
    assert ds.labels.tolist() == [65, 970, 0]


@pytest.mark.parametrize("text, match", [
    ("a.JPEG 1\nb.JPEG\n", r":2: expected 'FILENAME LABEL'"),
    ("a.JPEG 1\nb.JPEG 1 2\n", r":2: expected"),
    ("a.JPEG one\n", r":1: label 'one' is not an integer"),
    ("a.JPEG 1\n\nb.JPEG 1000\n", r":3: label 1000 out of range \[0, 1000\)"),
    ("a.JPEG -1\n", r":1: label -1 out of range"),
    ("a.JPEG 1\na.JPEG 2\n", r":2: 'a.JPEG' is listed twice"),
    ("\n\n", r"no entries"),
    ("a.JPEG 1\n", r"no label for 'b.JPEG'"),
])
def test_bad_label_file(tmp_path, text, match):
    root = tmp_path / "val"
    _write(root / "a.JPEG")
    _write(root / "b.JPEG")
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    with pytest.raises(ValueError, match=match):
        data.open_dataset(root, labels=labels)


def test_no_known_layout(tmp_path):
    _write(tmp_path / "holiday.jpg")
    with pytest.raises(ValueError, match=str(tmp_path) + r".*val.*synset_folders.*flat"):
        data.open_dataset(tmp_path)
    with pytest.raises(ValueError, match="needs labels"):
        data.open_dataset(tmp_path, layout="val")
    with pytest.raises(FileNotFoundError, match="root"):
        data.open_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="layout"):
        data.open_dataset(tmp_path, layout="imagenet")


def test_unknown_synset(tmp_path):
    _write(tmp_path / "n99999999_unicorn.JPEG")
    with pytest.raises(KeyError, match="n99999999"):
        data.open_dataset(tmp_path)


def test_real_samples_layout(samples_dir, shared_dir):
    synsets, _ = _read_tsv(shared_dir)
    ds = data.open_dataset(samples_dir)
    assert ds.layout == "flat" and len(ds) == len(list(samples_dir.glob("*.JPEG")))
    for i in (0, len(ds) // 2, len(ds) - 1):
        assert synsets[ds.labels[i]] == ds.names[i].split("_")[0]


# ----------------------------------------------------------------------------- selection

class ColourStub:
    """predict(): correct for images whose red value is in `good`, wrong otherwise. Images carry
    their own id in the red channel, so which files are 'classified correctly' is known."""

    def __init__(self, labels_by_red, good):
        self.labels_by_red, self.good = labels_by_red, set(good)
        self.batch_sizes = []

    def predict(self, images, batch_size=64):
        self.batch_sizes.append(len(images))
        out = []
        for red in images[:, 0, 0, 0].tolist():
            label = self.labels_by_red[red]
            out.append(label if red in self.good else (label + 1) % 1000)
        return np.array(out, np.int64)


def _colour_dataset(root, shared_dir, count):
    """`count` flat files; image k is uniform with red = k; labels cycle over 5 classes."""
    synsets, _ = _read_tsv(shared_dir)
    labels_by_red = {}
    for k in range(count):
        label = (k * 7) % 5
        _write(root / f"{synsets[label]}_{k:04d}.png", (k, 10, 20), size=(SIZE + 3, SIZE))
        labels_by_red[k] = label
    return data.open_dataset(root), labels_by_red


def _expected_selection(ds, good_names, n, seed):
    order = np.random.default_rng(seed).permutation(len(ds))
    walked = [ds.names[i] for i in order]  # ds.names is sorted
    return [name for name in walked if name in good_names][:n]


def test_select_skips_misclassified_in_seeded_order(tmp_path, shared_dir):
    ds, labels_by_red = _colour_dataset(tmp_path, shared_dir, 40)
    good = [k for k in range(40) if k % 3 != 0]
    stub = ColourStub(labels_by_red, good)
    images, labels, names = data.select(ds, stub, n=9, size=SIZE, seed=5, batch_size=4)

    good_names = {ds.names[i] for i in range(len(ds)) if int(ds.names[i][10:14]) in good}
    assert names == _expected_selection(ds, good_names, 9, seed=5)
    assert images.shape == (9, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    for image, label, name in zip(images, labels, names):
        np.testing.assert_array_equal(image, data.load_image(tmp_path / name, SIZE))
        assert label == ds.labels[ds.names.index(name)]
    assert max(stub.batch_sizes) <= 4


def test_select_is_deterministic_per_seed(tmp_path, shared_dir):
    ds, labels_by_red = _colour_dataset(tmp_path, shared_dir, 30)
    stub = ColourStub(labels_by_red, range(30))
    first = data.select(ds, stub, n=10, size=SIZE, seed=3)
    again = data.select(tmp_path, stub, n=10, size=SIZE, seed=3, batch_size=7)  # folder, other batch
    other = data.select(ds, stub, n=10, size=SIZE, seed=4)
    assert first[2] == again[2]
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] != other[2]


def test_select_streams(tmp_path, shared_dir, monkeypatch):
    ds, labels_by_red = _colour_dataset(tmp_path, shared_dir, 250)
    stub = ColourStub(labels_by_red, range(250))
    calls = []
    real_load = data.load_image

    def counting_load(path, size):
        calls.append(path)
        return real_load(path, size)

    monkeypatch.setattr(data, "load_image", counting_load)
    n, batch_size = 12, 5
    images, _, names = data.select(ds, stub, n=n, size=SIZE, batch_size=batch_size)
    assert len(names) == n
    assert len(calls) <= n + batch_size
    assert len(set(calls)) == len(calls)  # no file loaded twice


def test_select_runs_out_with_warning(tmp_path, shared_dir):
    ds, labels_by_red = _colour_dataset(tmp_path, shared_dir, 10)
    stub = ColourStub(labels_by_red, [2, 5, 7])
    with pytest.warns(RuntimeWarning, match="only 3 of 10"):
        images, labels, names = data.select(ds, stub, n=5, size=SIZE)
    assert len(images) == len(labels) == len(names) == 3
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        data.select(ds, stub, n=0, size=SIZE)


def test_iter_batches_covers_dataset_in_sorted_order(tmp_path, shared_dir):
    ds, _ = _colour_dataset(tmp_path, shared_dir, 11)
    batches = list(data.iter_batches(ds, SIZE, batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 3]
    assert [name for b in batches for name in b[2]] == list(ds.names)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), ds.labels)
    reds = np.concatenate([b[0][:, 0, 0, 0] for b in batches])
    assert reds.tolist() == [int(name[10:14]) for name in ds.names]
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iter_batches(ds, SIZE, batch_size=0))


def test_select_with_real_model(samples_dir, lite0):
    images, labels, names = data.select(samples_dir, lite0, n=3, size=224, seed=0, batch_size=4)
    assert images.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(lite0.predict(images), labels)
    ds = data.open_dataset(samples_dir)
    for label, name in zip(labels, names):
        assert data.index_of(name.split("_")[0]) == label == ds.labels[ds.names.index(name)]


# ----------------------------------------------------------------------------- save_png

def test_save_png_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)
    names = ["n01440764/a.JPEG", "b.JPEG", "c"]
    paths = data.save_png(images, names, tmp_path / "out")
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    for image, path in zip(images, paths):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_save_png_errors(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="same file stem"):
        data.save_png(images, ["x/a.JPEG", "y/a.JPEG"], tmp_path)
    with pytest.raises(ValueError, match="names"):
        data.save_png(images, ["a"], tmp_path)
    with pytest.raises(ValueError, match="images"):
        data.save_png(images.astype(np.float32), ["a", "b"], tmp_path)
