"""Tiny TorchScript classifiers (1000 ImageNet classes, any input size) for fast study and CLI
tests, where real weights are not the point."""

import numpy as np
import torch


class TinyImageNet(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6 * 2 * 2, 1000)

    def forward(self, x):
        h = torch.relu(self.conv(x / 127.5 - 1.0))
        h = torch.nn.functional.adaptive_avg_pool2d(h, 2)
        return self.head(h.flatten(1)) * 3.0


class SmallNet(torch.nn.Module):
    """A small convolutional classifier on [0, 255] NCHW input (10 classes), any input size:
    the API, trust and parity tests' model (seeded: the same weights every time)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x / 127.5 - 1.0))
        h = torch.nn.functional.adaptive_avg_pool2d(h, 4)
        return self.head(h.flatten(1)) * 4.0


def save_tiny(path, seed):
    """A TorchScript file of a tiny classifier; returns its path."""
    from fairattack.models import _quiet_jit

    with _quiet_jit():
        torch.jit.save(torch.jit.script(TinyImageNet(seed).eval()), str(path))
    return path


def save_scripted(net, path):
    """A TorchScript file of any module (its path)."""
    from fairattack.models import _quiet_jit

    with _quiet_jit():
        torch.jit.save(torch.jit.script(net), str(path))
    return path


def png_folder(folder, images, labels):
    """Write uint8 NHWC images as SYNSET_img<i>.png files (labels in their names, as a user's
    folder says them) into a new folder; returns the file names."""
    from fairattack.data import synset_of
    from PIL import Image

    folder.mkdir()
    names = [f"{synset_of(int(label))}_img{i}.png" for i, label in enumerate(labels)]
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)
    return names


def images_it_gets_right(model, n=4, size=16, seed=0):
    """Random uint8 images labelled with the model's own predictions (so all are attacked)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x), [f"img{i}" for i in range(n)]


def user_folder(root, n=12):
    """Tiny TorchScript surrogate (seed 0) and victim (seed 1) and a flat folder of n
    SYNSET_name.png images (20x24) labelled with what the surrogate sees in their 16x16 centre
    crop. Returns (root, surrogate path, victim path, folder)."""
    import fairattack as fa
    from fairattack import data
    from PIL import Image

    s = save_tiny(root / "surrogate.pt", 0)
    v = save_tiny(root / "victim.pt", 1)
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    model = fa.load_model(s)
    for i in range(n):
        x = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
        label = int(model.predict(x[2:18, 4:20][None])[0])  # what the centre crop shows it
        Image.fromarray(x).save(folder / f"{data.synset_of(label)}_img{i}.png")
    return root, s, v, folder
