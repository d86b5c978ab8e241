"""The LibTorch shim (csrc/torch/fa_torch.cpp) through its C driver, against PyTorch autograd.

Builds csrc/torch/build/fa_shim_driver with `make -C csrc/torch`, saves small TorchScript models,
and checks loss, logits, predictions and input gradients (plain and with SI/TI/DI) against
references computed here with PyTorch, plus every error path of the C API.
"""

import itertools
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "csrc" / "torch"
K = 10


class TinyNet(torch.nn.Module):
    """conv + batch norm (eval, non-trivial statistics) + ReLU + pooling + linear."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6 * 4, K)
        self.bn.running_mean.uniform_(-0.2, 0.2)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = (x - 127.5) / 64.0
        x = F.relu(self.bn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


class Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = TinyNet()

    def forward(self, x):
        return self.net(x).flatten()


class Pair(Flat):
    def forward(self, x):
        y = self.net(x)
        return y, y


class Indices(Flat):
    def forward(self, x):
        return self.net(x).argmax(1, keepdim=True)


def save(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(module.eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def driver():
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("no C++ toolchain")
    subprocess.run(
        ["make", "-s", "-C", str(SHIM), f"PYTHON={sys.executable}"],
        check=True,
        capture_output=True,
    )
    return SHIM / "build" / "fa_shim_driver"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    net = TinyNet().eval()
    paths = {"tiny": save(net, folder / "tiny.pt")}
    for name, cls in [("flat", Flat), ("pair", Pair), ("indices", Indices)]:
        paths[name] = save(cls(), folder / f"{name}.pt")
    (folder / "text.pt").write_text("this is not a TorchScript archive\n")
    paths["text"] = folder / "text.pt"
    return net, paths


def call(driver, *args):
    out = subprocess.run(
        [str(driver), *map(str, args)], capture_output=True, text=True, check=True
    ).stdout
    status, message = out.splitlines()[0].split("\t", 1)
    values = dict(line.split("=", 1) for line in out.splitlines()[1:])
    return status, message, values


def run(driver, model, x, labels=None, want_grad=0, k=-1, transform=None, index=None, tmp=None):
    """fa_model_run on x (NHWC float32); returns status, message and the outputs read back."""
    n, h, w, c = x.shape
    for name in ["labels.bin", "index.bin", "loss.bin", "logits.bin", "pred.bin", "grad.bin"]:
        (tmp / name).unlink(missing_ok=True)
    x.astype(np.float32).tofile(tmp / "x.bin")
    if labels is not None:
        np.asarray(labels, dtype=np.int64).tofile(tmp / "labels.bin")
    if index is not None:
        np.asarray(index, dtype=np.int64).tofile(tmp / "index.bin")
    args = [model, n, h, w, c, tmp, want_grad, k]
    if transform is not None:
        args += [transform.get(key, 0) for key in ["di_prob", "di_min", "si", "ti", "seed", "call"]]
    status, message, values = call(driver, "run", *args)
    out = {}
    if status == "FA_OK":
        assert values["x_unchanged"] == "1"
        kk = int(values["k"])
        out["pred"] = np.fromfile(tmp / "pred.bin", dtype=np.int64)
        if labels is not None:
            out["loss"] = np.fromfile(tmp / "loss.bin", dtype=np.float32)
        if kk > 0:
            out["logits"] = np.fromfile(tmp / "logits.bin", dtype=np.float32).reshape(n, kk)
        if want_grad:
            out["grad"] = np.fromfile(tmp / "grad.bin", dtype=np.float32).reshape(x.shape)
    return status, message, out


def images(n, h, w, c=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, h, w, c)).astype(np.float32)


def reference(net, x, labels, scales=(1.0,)):
    """Logits, CE and the (scale-averaged) NHWC input gradient computed with PyTorch."""
    leaf = torch.from_numpy(x).requires_grad_(True)
    y = torch.as_tensor(labels)
    total = 0
    for s in scales:
        total = total + F.cross_entropy(net((leaf * s).permute(0, 3, 1, 2)), y, reduction="sum")
    (grad,) = torch.autograd.grad(total, leaf)
    with torch.no_grad():
        logits = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    loss = F.cross_entropy(logits, y, reduction="none")
    return logits.numpy(), loss.numpy(), (grad / len(scales)).numpy()


def test_load_from_file_and_buffer(driver, models):
    _, paths = models
    cpu = {"device": "0", "device_index": "-1", "stream_null": "1", "handle_null": "0"}
    for verb in ["load", "loadbuf"]:
        for index in [0, -1]:
            assert call(driver, verb, paths["tiny"], 0, index)[::2] == ("FA_OK", cpu)


@pytest.mark.parametrize(
    "name, status, match",
    [
        ("missing", "FA_ERR_IO", "model file '.*missing.pt' does not exist"),
        ("folder", "FA_ERR_IO", "is a directory"),
        ("text", "FA_ERR_IO", "cannot load TorchScript model from '.*text.pt': .+"),
    ],
)
def test_load_errors(driver, models, name, status, match):
    _, paths = models
    path = {"missing": paths["tiny"].parent / "missing.pt", "folder": paths["tiny"].parent}.get(
        name, paths.get(name)
    )
    got, message, values = call(driver, "load", path, 0)
    assert got == status
    assert values["handle_null"] == "1"
    import re

    assert re.search(match, message), message


def test_load_buffer_rejects_garbage(driver, models):
    _, paths = models
    status, message, _ = call(driver, "loadbuf", paths["text"], 0)
    assert status == "FA_ERR_IO"
    assert "cannot load TorchScript model from a buffer of 34 bytes" in message


def test_bad_device(driver, models):
    _, paths = models
    status, message, _ = call(driver, "load", paths["tiny"], 7)
    assert (status, message) == ("FA_ERR_ARGUMENT", "device=7 must be FA_DEVICE_CPU (0) or FA_DEVICE_CUDA (1)")
    status, message, values = call(driver, "loadbuf", paths["tiny"], 0, 2)
    assert (status, message) == ("FA_ERR_ARGUMENT", "device_index=2 must be -1 or 0 for FA_DEVICE_CPU")
    assert values["handle_null"] == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu(driver, models):
    _, paths = models
    for verb in ["load", "loadbuf"]:
        status, message, _ = call(driver, verb, paths["tiny"], 1)
        assert status == "FA_ERR_NO_CUDA"
        assert message == "device='cuda' requested but no CUDA device is available"


def test_num_classes(driver, models):
    _, paths = models
    assert call(driver, "classes", paths["tiny"], 17, 9, 3)[::2] == ("FA_OK", {"k": "10", "k_again": "10"})


@pytest.mark.parametrize(
    "name, match",
    [("flat", r"got \[10\] Float"), ("pair", "got a Tuple, not a Tensor"), ("indices", r"got \[1, 1\] Long")],
)
def test_num_classes_rejects_non_logits(driver, models, name, match):
    _, paths = models
    status, message, _ = call(driver, "classes", paths[name], 8, 8, 3)
    assert status == "FA_ERR_MODEL"
    assert "model output must be logits of shape [N, classes]" in message
    assert __import__("re").search(match, message), message


@pytest.mark.parametrize("name", ["flat", "pair"])
def test_run_rejects_non_logits(driver, models, tmp_path, name):
    _, paths = models
    for want_grad in [0, 1]:
        status, message, _ = run(driver, paths[name], images(2, 8, 8), [1, 2], want_grad, 0, tmp=tmp_path)
        assert status == "FA_ERR_MODEL"
        assert "model output must be logits" in message


def test_forward_matches_pytorch(driver, models, tmp_path):
    net, paths = models
    x, labels = images(5, 13, 11), [0, 9, 3, 3, 7]
    status, message, out = run(driver, paths["tiny"], x, labels, 0, tmp=tmp_path)
    assert status == "FA_OK", message
    logits, loss, _ = reference(net, x, labels)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["pred"], logits.argmax(1))


def test_forward_without_labels(driver, models, tmp_path):
    net, paths = models
    x = images(3, 8, 8)
    status, _, out = run(driver, paths["tiny"], x, None, 0, k=0, tmp=tmp_path)
    assert status == "FA_OK"
    logits, _, _ = reference(net, x, [0, 0, 0])
    np.testing.assert_array_equal(out["pred"], logits.argmax(1))


@pytest.mark.parametrize("shape", [(4, 16, 16, 3), (3, 13, 11, 3), (1, 7, 9, 3)])
def test_gradient_matches_autograd(driver, models, tmp_path, shape):
    net, paths = models
    x = images(*shape, seed=shape[1])
    labels = np.arange(shape[0]) % K
    status, message, out = run(driver, paths["tiny"], x, labels, 1, tmp=tmp_path)
    assert status == "FA_OK", message
    logits, loss, grad = reference(net, x, labels)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(out["grad"], grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["pred"], logits.argmax(1))


def test_batch_of_four_equals_four_batches_of_one(driver, models, tmp_path):
    _, paths = models
    x, labels = images(4, 12, 12, seed=4), [1, 2, 3, 4]
    _, _, batch = run(driver, paths["tiny"], x, labels, 1, tmp=tmp_path)
    for i in range(4):
        _, _, one = run(driver, paths["tiny"], x[i : i + 1], labels[i : i + 1], 1, tmp=tmp_path)
        np.testing.assert_allclose(one["grad"][0], batch["grad"][i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(one["loss"][0], batch["loss"][i], rtol=1e-6)


@pytest.mark.parametrize("want_grad", [0, 1])
@pytest.mark.parametrize("bad", [10, 1000, -1])
def test_labels_out_of_range(driver, models, tmp_path, want_grad, bad):
    _, paths = models
    status, message, _ = run(driver, paths["tiny"], images(4, 8, 8), [0, 1, 2, bad], want_grad, tmp=tmp_path)
    assert (status, message) == ("FA_ERR_ARGUMENT", f"labels[3]={bad} out of range [0, 10)")


@pytest.mark.parametrize("want_grad", [0, 1])
def test_k_expected_mismatch(driver, models, tmp_path, want_grad):
    _, paths = models
    status, message, _ = run(driver, paths["tiny"], images(2, 8, 8), [0, 1], want_grad, k=7, tmp=tmp_path)
    assert status == "FA_ERR_ARGUMENT"
    assert message == "k_expected=7 does not match the model's 10 classes"


def test_want_grad_needs_labels(driver, models, tmp_path):
    _, paths = models
    status, message, _ = run(driver, paths["tiny"], images(2, 8, 8), None, 1, tmp=tmp_path)
    assert status == "FA_ERR_ARGUMENT"
    assert "labels is NULL" in message


def test_model_failure_is_a_status(driver, models, tmp_path):
    _, paths = models  # the model's conv wants 3 channels; 4 make it throw inside TorchScript
    for want_grad in [0, 1]:
        status, message, _ = run(driver, paths["tiny"], images(2, 8, 8, c=4), [0, 1], want_grad, k=0, tmp=tmp_path)
        assert status == "FA_ERR_MODEL"
        # the TorchScript traceback is cut: the error itself comes first, within the message size
        assert message.startswith("fa_model_run: LibTorch error: in TorchScript: RuntimeError: Given groups=1")
        assert "expected input[2, 4, 8, 8] to have 3 channels" in message


@pytest.mark.parametrize(
    "transform, message",
    [
        ({"di_prob": 1.5, "di_min": 0.9}, "transform.di_prob=1.5 must be in [0, 1]"),
        ({"di_prob": 0.5, "di_min": 0.0}, "transform.di_min_scale=0 must be in (0, 1]"),
        ({"si": -2}, "transform.si_copies=-2 must be >= 0"),
        ({"ti": 4}, "transform.ti_kernel=4 must be 0 or odd"),
    ],
)
def test_bad_transform(driver, models, tmp_path, transform, message):
    _, paths = models
    got = run(driver, paths["tiny"], images(2, 8, 8), [0, 1], 1, transform=transform, tmp=tmp_path)
    assert got[:2] == ("FA_ERR_ARGUMENT", message)


def test_scale_invariance_averages_scaled_gradients(driver, models, tmp_path):
    net, paths = models
    x, labels = images(3, 10, 10, seed=7), [4, 5, 6]
    status, message, out = run(driver, paths["tiny"], x, labels, 1, transform={"si": 5}, tmp=tmp_path)
    assert status == "FA_OK", message
    logits, loss, grad = reference(net, x, labels, scales=[0.5**i for i in range(5)])
    _, _, plain = reference(net, x, labels)
    assert not np.allclose(grad, plain, rtol=1e-2)
    np.testing.assert_allclose(out["grad"], grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)  # loss at plain x
    np.testing.assert_array_equal(out["pred"], logits.argmax(1))


def gaussian(k):
    """The k x k TI kernel, written independently: exp(-r^2 / (2 sigma^2)), sigma = (k-1)/6, sum 1
    (the reference code's kernel spans +-3 sigma)."""
    offsets = np.arange(k) - k // 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    kernel = np.exp(-(yy**2 + xx**2) / (2 * ((k - 1) / 6) ** 2))
    return kernel / kernel.sum()


@pytest.mark.parametrize("k", [3, 7])
def test_translation_invariance_smooths_the_gradient(driver, models, tmp_path, k):
    net, paths = models
    x, labels = images(2, 12, 9, seed=9), [1, 8]
    status, message, out = run(driver, paths["tiny"], x, labels, 1, transform={"ti": k}, tmp=tmp_path)
    assert status == "FA_OK", message
    _, loss, grad = reference(net, x, labels)
    g = torch.from_numpy(grad).permute(0, 3, 1, 2)
    weight = torch.from_numpy(gaussian(k)).float().expand(3, 1, k, k)
    smooth = F.conv2d(g, weight, padding=k // 2, groups=3).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out["grad"], smooth, rtol=1e-4, atol=1e-5 * np.abs(smooth).max())
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)


def diverse_candidates(net, x, label, low):
    """Every gradient DI can produce for one square image: each size r in [low, S], offset."""
    s = x.shape[1]
    out = []
    for r in range(low, s + 1):
        for top, left in itertools.product(range(s - r + 1), repeat=2):
            leaf = torch.from_numpy(x[None]).requires_grad_(True)
            z = F.interpolate(leaf.permute(0, 3, 1, 2), size=(r, r), mode="bilinear", align_corners=False)
            z = F.pad(z, (left, s - r - left, top, s - r - top))
            loss = F.cross_entropy(net(z), torch.tensor([label]))
            out.append(torch.autograd.grad(loss, leaf)[0][0].numpy())
    return out


def test_input_diversity_is_a_resize_and_pad(driver, models, tmp_path):
    net, paths = models
    x, labels = images(3, 8, 8, seed=11), [2, 3, 4]
    index = [40, 41, 42]
    _, _, plain = reference(net, x, labels)
    seen = []
    for call_number in range(4):
        transform = {"di_prob": 1.0, "di_min": 0.75, "seed": 5, "call": call_number}
        status, message, out = run(driver, paths["tiny"], x, labels, 1, transform=transform, index=index, tmp=tmp_path)
        assert status == "FA_OK", message
        for i in range(3):
            candidates = diverse_candidates(net, x[i], labels[i], low=6)  # ceil(0.75 * 8) = 6
            errors = [np.abs(out["grad"][i] - g).max() / np.abs(g).max() for g in candidates]
            assert min(errors) < 1e-4
            seen.append(int(np.argmin(errors)))
        # the loss is the plain CE, whatever the transform
        np.testing.assert_allclose(out["loss"], reference(net, x, labels)[1], rtol=1e-5)
    assert len(set(seen)) > 2  # the draws vary across images and calls
    assert not np.allclose(out["grad"], plain)


def test_input_diversity_is_deterministic_and_batch_independent(driver, models, tmp_path):
    _, paths = models
    x, labels, index = images(4, 10, 10, seed=12), [1, 2, 3, 4], [7, 3, 9, 100]
    transform = {"di_prob": 0.5, "di_min": 0.7, "seed": 99, "call": 3}
    _, _, batch = run(driver, paths["tiny"], x, labels, 1, transform=transform, index=index, tmp=tmp_path)
    _, _, again = run(driver, paths["tiny"], x, labels, 1, transform=transform, index=index, tmp=tmp_path)
    np.testing.assert_array_equal(batch["grad"], again["grad"])
    for i in [3, 0]:
        _, _, one = run(driver, paths["tiny"], x[i : i + 1], labels[i : i + 1], 1, transform=transform, index=index[i : i + 1], tmp=tmp_path)
        np.testing.assert_allclose(one["grad"][0], batch["grad"][i], rtol=1e-5, atol=1e-7)
    off = dict(transform, di_prob=0.0)
    _, _, plain = run(driver, paths["tiny"], x, labels, 1, transform=off, index=index, tmp=tmp_path)
    _, _, none = run(driver, paths["tiny"], x, labels, 1, tmp=tmp_path)
    np.testing.assert_array_equal(plain["grad"], none["grad"])


def test_oracle_adapter_counts_calls(driver, models, tmp_path):
    net, paths = models
    x, labels = images(2, 9, 9, seed=13), [3, 6]
    x.tofile(tmp_path / "x.bin")
    np.asarray(labels, dtype=np.int64).tofile(tmp_path / "labels.bin")
    status, _, values = call(driver, "oracle", paths["tiny"], 2, 9, 9, 3, tmp_path, 3)
    assert (status, values["calls"]) == ("FA_OK", "3")
    grad = np.fromfile(tmp_path / "grad.bin", dtype=np.float32).reshape(x.shape)
    np.testing.assert_allclose(grad, reference(net, x, labels)[2], rtol=1e-4, atol=1e-8)


class Counting(torch.nn.Module):
    """TinyNet that prints one line per forward, so that a test can count the forwards."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet()

    def forward(self, x):
        print("forward_rows=" + str(x.size(0)))
        return self.net(x)


@pytest.mark.parametrize(
    "outputs, di_prob, forwards",
    [("none", 1.0, 1), ("loss", 1.0, 2), ("pred", 1.0, 2), ("loss+pred", 1.0, 2),
     ("none", 0.0, 1), ("loss+pred", 0.0, 1)],
)
def test_oracle_skips_the_plain_forward_when_loss_and_pred_are_null(driver, tmp_path, outputs, di_prob, forwards):
    """The core passes loss = pred = NULL when it needs neither: under DI the gradient pass sees
    transformed images, and only loss/pred need the extra plain forward."""
    torch.manual_seed(0)
    net = Counting().eval()
    path = save(net, tmp_path / "counting.pt")
    x, labels = images(3, 10, 10, seed=21), [1, 4, 7]
    x.tofile(tmp_path / "x.bin")
    np.asarray(labels, dtype=np.int64).tofile(tmp_path / "labels.bin")
    out = subprocess.run([str(driver), "oracle", str(path), "3", "10", "10", "3", str(tmp_path), "2", outputs, str(di_prob)],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "FA_OK\t" in lines, out
    assert lines.count("forward_rows=3") == 2 * forwards, out  # two calls
    assert "calls=2" in lines
    grad = np.fromfile(tmp_path / "grad.bin", dtype=np.float32).reshape(x.shape)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    logits, loss, plain = reference(net, x, labels)
    if di_prob == 0:
        np.testing.assert_allclose(grad, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
    if "loss" in outputs:  # the plain CE, whatever the transform
        np.testing.assert_allclose(np.fromfile(tmp_path / "loss.bin", dtype=np.float32), loss, rtol=1e-5)
    if "pred" in outputs:
        np.testing.assert_array_equal(np.fromfile(tmp_path / "pred.bin", dtype=np.int64), logits.argmax(1))
    for name in ["loss", "pred"]:
        assert (tmp_path / f"{name}.bin").exists() == (name in outputs)
