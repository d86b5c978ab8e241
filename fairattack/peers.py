"""Adapters for other libraries' attacks (torchattacks today), so that `fa.compare` can run them
on the same images, ε and budgets as fairattack's own.

A peer attack works on a torch module that takes [0, 1] NCHW; fairattack's models take [0, 255]
NHWC through NumPy. `unit_range_module` presents a fairattack surrogate to a peer, `run_peer`
converts images there and back (the result is rounded to uint8 by the caller).
"""

import inspect
import io
import os

import numpy as np

#: How to install the optional peer libraries.
PEERS_HINT = ('pip install torchattacks==3.5.1 (from a clone of fairattack: '
              'pip install --no-build-isolation ".[peers]")')
#: Prefixes of a peer attack given by name ("ta:PGD", "torchattacks.PGD").
NAME_PREFIXES = ("ta:", "torchattacks.")


def is_peer_name(text):
    """True for an attack named as a peer library's ("ta:PGD", "torchattacks.PGD")."""
    return isinstance(text, str) and text.startswith(NAME_PREFIXES)


def is_peer(obj):
    """A torchattacks Attack, or an object shaped like one (get_logits, set_model_training_mode)."""
    module = type(obj).__module__ or ""
    return module.split(".")[0] == "torchattacks" or all(
        hasattr(obj, a) for a in ("get_logits", "set_model_training_mode"))


def import_torchattacks(what):
    try:
        import torchattacks
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs torchattacks, an optional peer library: "
                                  f"{PEERS_HINT}") from None
    return torchattacks


def unit_range_module(surrogate):
    """A fairattack surrogate seen as a torch module on [0, 1] NCHW (for torchattacks): the module
    or TorchScript file it was loaded from, its input multiplied by 255."""
    import torch

    source = getattr(surrogate, "source", None)
    if isinstance(source, torch.nn.Module):
        net = source
    elif isinstance(source, (str, os.PathLike)):
        net = torch.jit.load(os.fspath(source), map_location="cpu")
    elif isinstance(source, (bytes, bytearray)):
        net = torch.jit.load(io.BytesIO(bytes(source)), map_location="cpu")
    else:
        raise TypeError("a 'ta:NAME' attack needs the surrogate as a fairattack Model made "
                        "from a torch module or TorchScript file; pass (name, "
                        "torchattacks.NAME(your_model_in_0_1, ...)) instead")

    class UnitRange(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x * 255.0)

    return UnitRange(net).eval()


def peer_by_name(name, surrogate, eps):
    """The torchattacks attack `name` ("ta:PGD") built on the surrogate with eps/255 and
    torchattacks' other defaults."""
    ta = import_torchattacks(f"attack {name!r}")
    cls_name = name.split(":", 1)[1] if name.startswith("ta:") else name.split(".", 1)[1]
    cls = getattr(ta, cls_name, None)
    if cls is None:
        raise ValueError(f"attacks: torchattacks has no attack {cls_name!r}")
    if surrogate is None:
        raise ValueError(f"attacks: {name!r} runs on the surrogate; pass a surrogate model")
    kwargs = {"eps": eps / 255.0} if "eps" in inspect.signature(cls).parameters else {}
    return cls(unit_range_module(surrogate), **kwargs)


def run_peer(obj, x, y, batch_size, seed):
    """A peer attack on uint8 NHWC images: float NHWC in [0, 255] (not yet rounded)."""
    import torch

    torch.manual_seed(seed)
    device = getattr(obj, "device", None) or "cpu"
    parts = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))
        xb = xb.permute(0, 3, 1, 2).float().div(255.0).to(device)
        yb = torch.from_numpy(np.ascontiguousarray(y[start:start + batch_size])).long().to(device)
        adv = obj(xb, yb)
        parts.append(adv.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255.0)
    return np.concatenate(parts)
