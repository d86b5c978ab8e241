"""Models: TorchScript classifiers run by the C++ LibTorch shim (float NCHW RGB in [0, 255] ->
logits). NumPy in, NumPy out.

Also the one place that turns what a user names a model by (a registry name, a TorchScript path,
a fairattack Model, a dict name -> any of those) into loaded models (`model_specs`, `load_spec`,
`victims_of`), tells what a model is made of (`model_digest`: its content) and its input size.
"""

import copy
import io
import os
import re
import warnings

import numpy as np

from . import _core, models
from ._validate import check_pixels, images_f32, labels_i64, positive_int
from .store import digest_bytes, digest_file, digest_json

_DEVICES = {"cpu": _core.DEVICE_CPU, "cuda": _core.DEVICE_CUDA}


def _parse_device(device):
    """"cpu", "cuda" (torch's current GPU), "cuda:N" or a torch.device -> (kind, GPU ordinal or
    -1, canonical name "cpu" / "cuda:N"). ValueError for a malformed device or a GPU torch does
    not see, RuntimeError without CUDA."""
    text = str(device).strip().lower()
    name, _, number = text.partition(":")
    if name not in _DEVICES or (name == "cpu" and number not in ("", "0")):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    if name == "cpu":
        return _DEVICES["cpu"], -1, "cpu"
    if number and not number.isdigit():
        raise ValueError(f"device={device!r}: the GPU number after 'cuda:' must be an integer "
                         ">= 0")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but no CUDA device is available")
    count = torch.cuda.device_count()
    index = int(number) if number else torch.cuda.current_device()
    if index >= count:
        raise ValueError(f"device={device!r}: torch sees {count} CUDA device"
                         f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    # without fairattack's CUDA kernels the model still runs on the GPU; the attack's own
    # state then lives on the host (see Model._attack_device)
    return _DEVICES["cuda"], index, f"cuda:{index}"


def device_kind(device):
    """The device kind (_core.DEVICE_CPU or DEVICE_CUDA) of a device name; see _parse_device."""
    return _parse_device(device)[0]


#: What torch says when a tensor's shape does not fit a layer (the only errors blamed on size).
_SHAPE_ERROR = re.compile(r"shape|size|dimension|mat1|mat2", re.IGNORECASE)

_CHECKED_GPUS = set()  # GPU ordinals on which fairattack's CUDA kernels are known to run


class Model:
    """A classifier for attacks and evaluation; create it with `load_model`."""

    def __init__(self, core, name, device, source=None):
        self._core = core
        self.name = name
        self.device = device
        self.source = source
        self._classes = {}
        self._convention = None  # how load_model wrapped a torch module (mode, size, ...)

    def __repr__(self):
        return f"Model(name={self.name!r}, device={self.device!r})"

    @property
    def device_index(self):
        """The GPU ordinal of a CUDA model (cuda:N), -1 on the CPU."""
        return self._core.index

    def _attack_device(self):
        """Where fa.attack keeps its state: on the model's GPU when fairattack's CUDA kernels are
        built and run there (checked once per GPU: RuntimeError if they have no image for it),
        else on the host."""
        if self._core.device != _core.DEVICE_CUDA or not _core.cuda_available():
            return _core.DEVICE_CPU
        if self.device_index not in _CHECKED_GPUS:
            _core.cuda_check_device(self.device_index)
            _CHECKED_GPUS.add(self.device_index)
        return _core.DEVICE_CUDA

    def num_classes(self, height=224, width=224):
        """Number of classes K (one forward of a zero image of that size, cached). A model that
        cannot take images of that size (a shape error) raises ValueError naming the size; any
        other error of its forward is re-raised as RuntimeError naming the model."""
        key = (int(height), int(width))
        if key not in self._classes:
            try:
                self._classes[key] = self._core.num_classes(key[0], key[1], 3)
            except RuntimeError as error:
                if not _SHAPE_ERROR.search(str(error)):  # the model's own failure, not the size
                    raise RuntimeError(f"model {self.name!r} failed on a {key[0]}x{key[1]} "
                                       f"image: {error}") from error
                raise ValueError(f"model {self.name!r} cannot take images of size "
                                 f"{key[0]}x{key[1]} (height x width): {error}. Resize the "
                                 "images to its input size, or export the network with "
                                 "fairattack.models.export, which resizes inside the model"
                                 ) from error
        return self._classes[key]

    def _batches(self, x, batch_size):
        batch_size = positive_int(batch_size, "batch_size")
        for start in range(0, x.shape[0], batch_size):
            yield start, x[start:start + batch_size]

    def _forward(self, images, batch_size):
        """(logits [N, K], predictions [N]) of checked images, one batch of floats at a time."""
        images = check_pixels(images)
        batch_size = positive_int(batch_size, "batch_size")
        k = self.num_classes(images.shape[1], images.shape[2])
        logits = np.empty((images.shape[0], k), np.float32)
        pred = np.empty(images.shape[0], np.int64)
        for start in range(0, images.shape[0], batch_size):
            chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
            _, logits[start:start + len(chunk)], pred[start:start + len(chunk)], _ = \
                self._core.run(chunk, None, False, k)
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            pred[~finite] = -1
            warnings.warn(f"model {self.name!r} gave non-finite logits for "
                          f"{int((~finite).sum())} of {len(finite)} images (first: "
                          f"{int(np.argmin(finite))}); their prediction is -1", RuntimeWarning,
                          stacklevel=3)
        return logits, pred

    def logits(self, images, batch_size=64):
        """Logits [N, K] float32 of uint8/float NHWC images in [0, 255] (non-finite logits are
        returned as they are, with a RuntimeWarning)."""
        return self._forward(images, batch_size)[0]

    def predict(self, images, batch_size=64):
        """Predicted classes [N] int64 (no gradients are computed). An image whose logits are
        not all finite has no prediction: -1, with a RuntimeWarning."""
        return self._forward(images, batch_size)[1]

    def as_torch_module(self, range="unit"):  # noqa: A002 - the convention's usual name
        """This model as a plain torch.nn.Module, to hand to another library's attack (any peer:
        torchattacks, torchattack, TransferAttack, your own loop) on the same surrogate.

        range: "unit" (default) takes float NCHW RGB in [0, 1], the convention of those libraries
            (multiplied by 255 inside); "pixels" takes fairattack's [0, 255] NCHW.
        Returns logits [N, K], in eval mode, on the model's device, its parameters frozen
        (requires_grad False: input gradients only). A fresh module each call, rebuilt from what
        the model was loaded from: a copy of the torch module, or the TorchScript file or bytes
        loaded again by torch (so it runs in Python, not in fairattack's C++ shim).
        """
        import torch

        if range not in ("unit", "pixels"):
            raise ValueError(f"range must be 'unit' ([0, 1] input) or 'pixels' ([0, 255]), got "
                             f"{range!r}")
        source, where = self.source, torch.device(self.device)
        if isinstance(source, torch.nn.Module):
            net = _private_copy(source)
        elif isinstance(source, (str, os.PathLike)):
            net = torch.jit.load(os.fspath(source), map_location=where)
        elif isinstance(source, (bytes, bytearray)):
            net = torch.jit.load(io.BytesIO(bytes(source)), map_location=where)
        else:
            raise TypeError(f"model {self.name!r} was not loaded from a torch module, a "
                            "TorchScript file or its bytes; it has no torch module to hand out")
        net = net.to(where).eval()
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        return _scaled_module(net, 255.0 if range == "unit" else 1.0)

    def loss_and_grad(self, images, labels, batch_size=64):
        """Per-image cross-entropy (nats) [N] and its input gradient [N, H, W, 3] float32."""
        x = images_f32(images)
        y = labels_i64(labels, x.shape[0], self.num_classes(x.shape[1], x.shape[2]))
        loss = np.empty(x.shape[0], np.float32)
        grad = np.empty_like(x)
        for start, chunk in self._batches(x, batch_size):
            stop = start + len(chunk)
            loss[start:stop], _, _, grad[start:stop] = self._core.run(chunk, y[start:stop],
                                                                      True, 0)
        return loss, grad


def _scaled_module(net, scale):
    """net behind an input scaling: forward(x) = net(x * scale) (scale 1: net itself, wrapped)."""
    import torch

    class InputScaled(torch.nn.Module):
        """A fairattack model for [0, 1] (scale 255) or [0, 255] (scale 1) NCHW input."""

        def __init__(self, inner, factor):
            super().__init__()
            self.inner = inner
            self.scale = float(factor)

        def forward(self, x):
            return self.inner(x * self.scale if self.scale != 1.0 else x)

    return InputScaled(net, scale).eval()


def _private_copy(module):
    """A deep copy of a user's module, so that eval() and requires_grad changes stay ours."""
    try:
        return copy.deepcopy(module)
    except Exception as error:  # noqa: BLE001 - any copy failure gets the same advice
        raise TypeError(f"cannot copy the module {type(module).__name__} ({error}); fairattack "
                        "works on a copy so that your module is not changed: save it with "
                        "fairattack.models.export and load the file") from error


#: The input conventions a bare torch module may declare to load_model: the normalisations of
#: fairattack.models.export, or "pixels" (it already takes float NCHW RGB in [0, 255]).
INPUT_MODES = models.MODES + ("pixels",)


def _module_convention(source, mode, input_size, mean, std):
    """A user's torch module as a module that follows fairattack's convention (float NCHW RGB in
    [0, 255] -> logits): wrapped as export wraps it, or as it is for mode="pixels". A bare module
    without a declared convention is refused: its input could be [0, 1] or normalised."""
    from .models import ImageNetWrapper

    if isinstance(source, ImageNetWrapper):
        if mode is not None or mean is not None or std is not None:
            raise ValueError("mode/mean/std: source is an ImageNetWrapper, which already "
                             "resizes and normalises; pass it without them")
        return source
    if mode is None and mean is None and std is None:
        raise ValueError(
            f"source is a torch.nn.Module ({type(source).__name__}) of unknown input convention: "
            "fairattack feeds float NCHW RGB in [0, 255]. Say what it expects: "
            "load_model(net, mode='torch', input_size=224) for a torchvision-style net ([0, 1] "
            "then ImageNet mean/std), mode='caffe' or 'tf' (or mean=..., std=... in pixels), "
            "which wrap it as fairattack.models.export does; mode='pixels' if it already takes "
            "[0, 255] pixels")
    if mode == "pixels":
        if mean is not None or std is not None:
            raise ValueError("mode='pixels' takes no mean/std (the module normalises itself)")
        return source
    if mode is not None and mode not in models.MODES:
        raise ValueError(f"mode={mode!r}; expected one of {INPUT_MODES} (or mean/std)")
    if input_size is None:
        raise ValueError(f"input_size: mode={mode!r} wraps the module as export does, which "
                         "resizes every image to the network's input size; pass "
                         "input_size=224 (or (height, width))")
    return ImageNetWrapper(source, input_size, mode, mean, std)


def load_model(source, device="cpu", name=None, *, mode=None, input_size=None, mean=None,
               std=None):
    """Load a classifier for fairattack.

    source: a TorchScript file path (e.g. from `fairattack.models.export` or `fairattack
    export`), the bytes of one, or a torch.nn.Module. A file follows fairattack's convention:
    float NCHW RGB in [0, 255] in, logits [N, K] out. A module must say its input convention:
      mode="torch" | "caffe" | "tf" (or mean=, std= in pixels) with input_size=...: wrapped as
        `fairattack.models.export` wraps it (resize to input_size, normalise), e.g.
        load_model(torchvision_net, mode="torch", input_size=224);
      mode="pixels": the module already takes float NCHW RGB in [0, 255];
      a `fairattack.models.ImageNetWrapper` needs neither.
    A copy is scripted (or traced if scripting fails); the module itself is left as it was.
    device: "cpu", "cuda" (torch's current GPU) or "cuda:N"; the model then runs there whatever
    device the calling thread has current.
    Returns a `Model` (predict, logits, loss_and_grad; the surrogate or victim of every call).
    """
    kind, index, device_name = _parse_device(device)
    if isinstance(source, (str, os.PathLike, bytes, bytearray)) and (
            mode is not None or input_size is not None or mean is not None or std is not None):
        raise ValueError("mode/input_size/mean/std are for a torch.nn.Module source; a "
                         "TorchScript file already takes [0, 255] pixels")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path!r} does not exist")
        core = _core.Model(path, kind, index)
        default_name = os.path.splitext(os.path.basename(path))[0]
    elif isinstance(source, (bytes, bytearray)):
        core = _core.Model(bytes(source), kind, index)
        default_name = "model"
    else:
        import torch

        if not isinstance(source, torch.nn.Module):
            raise TypeError("source must be a TorchScript file path, its bytes or a "
                            f"torch.nn.Module, got {type(source).__name__}")
        from .models import ImageNetWrapper, _quiet_jit, _script

        with _quiet_jit():  # torch.jit is deprecated upstream; the C++ shim still needs it
            module = _module_convention(_private_copy(source), mode, input_size, mean,
                                        std).eval()
            if isinstance(module, ImageNetWrapper):
                for p in module.parameters():
                    p.requires_grad_(False)
                module = _script(module)[0]  # keeps the resize branch dynamic
            elif not isinstance(module, torch.jit.ScriptModule):
                try:
                    module = torch.jit.script(module)
                except Exception:  # not scriptable: trace it on an ImageNet-sized input
                    with torch.no_grad():
                        module = torch.jit.trace(module, torch.zeros(1, 3, 224, 224))
            buffer = io.BytesIO()
            torch.jit.save(module, buffer)
        core = _core.Model(buffer.getvalue(), kind, index)
        default_name = type(source).__name__
    model = Model(core, name or default_name, device_name, source)
    if mode not in (None, "pixels") or mean is not None:  # part of what the model is made of
        model._convention = [mode, input_size, mean, std]
    return model


def get_model(name, device="cpu", cache_dir=None):
    """A registered model as a fairattack Model (built once into the cache folder)."""
    return load_model(str(models.export_registered(name, cache_dir)), device=device, name=name)


models.set_loader(get_model)  # models.get_model, without models importing this module


# ----------------------------------------------------------------------------- naming models

def registry_name(name):
    """The registered name of `name` (any case), or None."""
    by_lower = {n.lower(): n for n in models.available_models()}
    return by_lower.get(str(name).lower())


def is_file_spec(spec):
    """A model named by its TorchScript file (a path, or a str that looks like one)."""
    return isinstance(spec, os.PathLike) or (isinstance(spec, str) and (
        spec.endswith((".pt", ".pth", ".ts")) or os.sep in spec or os.path.isfile(spec)))


def model_specs(specs, what):
    """names / paths / Models / a dict name -> any of those -> ordered {name: spec}; registry
    names are canonical, unknown names and missing files raise before any work."""
    if isinstance(specs, (str, os.PathLike, Model)):
        specs = [specs]
    if isinstance(specs, dict):
        items = list(specs.items())
    else:
        items = []
        for m in specs:
            if isinstance(m, Model):
                items.append((m.name, m))
            elif isinstance(m, (str, os.PathLike)):
                name = os.fspath(m)
                if is_file_spec(m):
                    name = os.path.splitext(os.path.basename(name))[0]
                else:
                    name = registry_name(name) or name
                items.append((name, m))
            else:
                raise TypeError(f"{what}: expected model names, TorchScript paths or "
                                f"fairattack Models, got {type(m).__name__}")
    if not items:
        raise ValueError(f"{what}: expected at least one model")
    out = {}
    for name, spec in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: every model needs a non-empty str name, got {name!r}")
        if name in out:
            raise ValueError(f"{what}: the name {name!r} appears twice")
        if isinstance(spec, (str, os.PathLike)) and not isinstance(spec, Model):
            if is_file_spec(spec):
                if not os.path.isfile(spec):
                    raise FileNotFoundError(f"{what}: model file {os.fspath(spec)!r} does not "
                                            "exist")
                if not models.is_torchscript(spec):
                    raise ValueError(
                        f"{what}: {os.fspath(spec)!r} is not a TorchScript model (a state dict "
                        "or checkpoint?); fairattack runs TorchScript files that take [0, 255] "
                        "pixels. Export the network with its weights first: fairattack export "
                        f"ARCH {os.fspath(spec)} model.pt (torchvision or --library timm), or "
                        "fairattack.models.export(net, 'model.pt', input_size=224)")
            elif registry_name(spec) is None:
                raise ValueError(f"{what}: unknown model {spec!r}; expected a registered name "
                                 f"({', '.join(models.available_models())}) or a TorchScript "
                                 "file")
            else:
                spec = registry_name(spec)
        elif not isinstance(spec, Model):
            raise TypeError(f"{what}[{name!r}]: expected a model name, a TorchScript path or a "
                            f"fairattack Model, got {type(spec).__name__}")
        out[name] = spec
    return out


def load_spec(name, spec, device):
    """A fairattack Model from a registry name, a TorchScript path or a Model."""
    if isinstance(spec, Model):
        return spec
    if is_file_spec(spec):
        return load_model(os.fspath(spec), device=device, name=name)
    return get_model(spec, device=device)


def victims_of(victims, need="predict", device="cpu"):
    """Victims as {name: model}, in the forms run_study and the CLI take too: a dict name ->
    model, one model, or a list of models (named by their .name), where a model is a fairattack
    Model, a registry name or a TorchScript path (loaded on `device`), or any object with the
    method `need` (predict for compare, logits for evaluate). Names are unique non-empty strs
    other than "mean"."""
    named = isinstance(victims, (str, os.PathLike))
    if isinstance(victims, dict):
        items = list(victims.items())
    elif named or hasattr(victims, need) or hasattr(victims, "predict"):
        items = [(None, victims)]
    else:
        items = [(None, v) for v in victims]
    if not items:
        raise ValueError("victims: expected at least one model")
    loaded = []
    for name, victim in items:
        if isinstance(victim, (str, os.PathLike)):  # a registry name or a file, as run_study
            (default, spec), = model_specs([victim], "victims").items()
            name = default if name is None else name
            victim = load_spec(name, spec, device)
        elif name is None:
            name = getattr(victim, "name", None)
        loaded.append((name, victim))
    names = [n for n, _ in loaded]
    for name, victim in loaded:
        if not isinstance(name, str) or not name:
            raise ValueError(f"victims: every victim needs a non-empty str name, got {name!r}")
        if not callable(getattr(victim, need, None)):
            raise TypeError(f"victims[{name!r}]: expected a fairattack Model, a registry name, a "
                            f"TorchScript path or an object with {need}(images uint8), got "
                            f"{type(victim).__name__}")
    if "mean" in names or len(set(names)) != len(names):
        raise ValueError(f"victims: names must be unique and not 'mean', got {names}")
    return dict(loaded)


def check_labels(labels, n, models, height, width):
    """labels_i64(labels, n), then against the number of classes of every fairattack Model of
    {name: model} at that image size (any object with num_classes(height, width)): the one
    label check of attack, evaluate and compare (a label a model cannot predict would be counted
    as fooled)."""
    labels = labels_i64(labels, n)
    for name, model in models.items():
        if callable(getattr(model, "num_classes", None)) and labels.size:
            k = model.num_classes(height, width)
            if labels.max() >= k:
                i = int(np.flatnonzero(labels >= k)[0])
                raise ValueError(f"labels[{i}]={labels[i]} out of range [0, {k}) of model "
                                 f"{name!r}")
    return labels


def predict_any(model, images, batch_size, name="model"):
    """Predicted labels [n] of a Model, any object with predict(images), or a callable oracle
    fn(x, labels, want_grad) -> (loss, pred, grad). Every batch must give one integer label per
    image (shape (b,)); ValueError naming the model otherwise."""
    parts = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        if isinstance(model, Model) or not callable(model):
            pred = model.predict(chunk)
        else:
            pred = model(chunk.astype(np.float32), np.zeros(len(chunk), np.int64), False)[1]
        if hasattr(pred, "detach"):  # a torch tensor
            pred = pred.detach().cpu().numpy()
        pred = np.asarray(pred)
        if pred.shape != (len(chunk),) or pred.dtype.kind not in "iu":
            raise ValueError(f"{name}: predict gave {pred.dtype} of shape {pred.shape} for "
                             f"{len(chunk)} images; expected one integer label per image, shape "
                             f"({len(chunk)},) (an argmax over the class axis)")
        parts.append(pred.astype(np.int64))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- identity

_FILE_DIGESTS = {}  # (real path, size, mtime, ctime, inode) -> content digest: only a cache


def file_digest(path):
    """The content digest of a file, computed once per file version in this process: the cache
    key includes the inode change time, which a rewrite always moves (cp -p and rsync -a keep
    the size and mtime of retrained weights, never the ctime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = digest_file(path)
    return _FILE_DIGESTS[key]


def model_digest(spec):
    """The content digest of a model (its identity): its TorchScript file's bytes (a registered
    model's exported file), the bytes it was loaded from, or the weights of the torch module it
    was loaded from; of an ensemble (fairattack.ensemble), its members' digests, fuse and
    weights (`ensemble_digest`)."""
    if isinstance(spec, Model):
        if getattr(spec, "members", None) is not None:  # an Ensemble
            return ensemble_digest([model_digest(m) for m in spec.members], spec.fuse,
                                   spec.weights)
        source = spec.source
        if isinstance(source, (str, os.PathLike)):
            return file_digest(source)
        if isinstance(source, (bytes, bytearray)):
            return digest_bytes(bytes(source))
        import torch

        if isinstance(source, torch.nn.Module):
            digest = [type(source).__qualname__]
            if getattr(spec, "_convention", None) is not None:  # the wrapping load_model added
                digest.append(["convention", *map(str, spec._convention)])
            for key, value in source.state_dict().items():
                value = value.detach().cpu().contiguous()
                digest.append([key, str(value.dtype), list(value.shape),
                               digest_bytes(value.numpy().tobytes()
                                            if value.dtype != torch.bfloat16
                                            else value.float().numpy().tobytes())])
            return digest_json(digest)
        raise ValueError(f"model {spec.name!r}: cannot tell what it is made of (no file, bytes "
                         "or torch module); pass its TorchScript path")
    if is_file_spec(spec):
        return file_digest(spec)
    return file_digest(models.export_registered(spec))


def ensemble_digest(member_digests, fuse, weights=None):
    """The identity of an ensemble: its members' content digests, fuse and weights (None: equal,
    the same identity as explicit equal weights)."""
    n = len(member_digests)
    weights = [1.0 / n] * n if weights is None else weights
    return digest_json({"ensemble": list(member_digests), "fuse": fuse,
                        "weights": [round(float(w), 6) for w in weights]})


def model_identity(model):
    """What identifies a model in compare's cache: [name, content digest] of a fairattack Model,
    None for other objects (a callable oracle, an object with predict): nothing to key them by."""
    if not isinstance(model, Model):
        return None
    return [model.name, model_digest(model)]


def input_size(spec):
    """Square input size (pixels) of a registry name, an exported .pt file or a Model from one;
    None when unknown."""
    if isinstance(spec, Model):
        spec = spec.source if isinstance(spec.source, (str, os.PathLike)) else None
    if spec is None:
        return None
    size = None
    if is_file_spec(spec):
        try:
            size = models.read_metadata(os.fspath(spec)).get("input_size")
        except Exception:  # noqa: BLE001 - not an exported file: size unknown
            return None
    elif registry_name(spec) is not None:
        size = models.input_size(registry_name(spec))
    if size is None:
        return None
    if isinstance(size, int):
        return size
    height, width = (int(s) for s in size)
    if height != width:
        raise ValueError(f"input size {height}x{width} is not square; pass image_size=...")
    return height
