"""Adapters for other libraries' attacks, so that `fa.compare` runs them on the same images, ε and
budgets as fairattack's own (docs/fair-comparison.md).

Three kinds of peer attack objects, told apart by duck typing (no clone of any library needed):

- "torchattacks": `atk(images, labels) -> adversarial images`, both [0, 1] NCHW, the surrogate
  as `atk.model` (a torchattacks Attack, or anything with get_logits and set_model_training_mode);
- "torchattack" (PyPI `torchattack`): `atk(x, y) -> adversarial images` on [0, 1] NCHW, the
  surrogate as `atk.model`, the normalisation as `atk.normalize` (a torchattack Attack, or
  anything with model, normalize and forward);
- "transferattack" (TransferAttack, cloned, not on PyPI): `atk.forward(data, label)` returns the
  *perturbation* on [0, 1] NCHW, the surrogate as `atk.model`, the budget as `atk.epsilon`.

`run` feeds a peer the uint8 images in its convention, counts the gradient evaluations made
through the model it holds (rows of the input that received a gradient: one per image per step,
times the copies a transform averages) and returns uint8 images. A peer whose output is more
than ε from the clean image raises `PeerBudgetError`: it is reported, never silently clipped
(values within ε stay within it after rounding: ε's integer part bounds them).

Peers by name, in the attack grammar of fairattack.spec: "LIBRARY:ATTACK[,key=value...]" with
LIBRARY "ta" / "torchattacks", "torchattack" or "transferattack" (e.g.
"ta:PGD,steps=20,alpha=1.6", "torchattack:VMIFGSM,steps=10"), built on the surrogate by `build`.
Values in pixels as everywhere in fairattack: ε and the step size (`PIXEL_KEYS`) are divided by
255 for the peer; "true", "false", "none" are Python's True, False, None; every other parameter
keeps the peer's own default.
"""

import dataclasses
import importlib
import inspect

import numpy as np

from ._validate import check_pixels, labels_i64, positive_int

#: How to install the optional peer libraries (from a clone of fairattack).
PEERS_HINT = ('the fairattack[peers] extra: pip install torchattacks==3.5.1 torchattack==1.7.2 '
              '(from a clone: pip install --no-build-isolation ".[peers]")')
#: Name prefix -> library kind of a peer attack given by name.
PREFIXES = {"ta:": "torchattacks", "torchattacks:": "torchattacks",
            "torchattacks.": "torchattacks", "torchattack:": "torchattack",
            "transferattack:": "transferattack"}
KINDS = ("torchattacks", "torchattack", "transferattack")
#: Parameters in pixels (fairattack's unit), divided by 255 for the peer, per library.
PIXEL_KEYS = {"torchattacks": ("eps", "alpha"), "torchattack": ("eps", "alpha"),
              "transferattack": ("epsilon", "alpha")}
#: The parameter that carries the ℓ∞ budget, per library.
EPS_KEY = {"torchattacks": "eps", "torchattack": "eps", "transferattack": "epsilon"}
#: A peer's float output may exceed ε by this much (pixels: float32 [0, 1] round-off) and count
#: as within it.
EPS_TOL = 0.01


class PeerBudgetError(ValueError):
    """A peer attack returned images more than ε from the clean ones."""


def is_peer_name(text):
    """True for an attack named as a peer library's ("ta:PGD", "torchattack:MIFGSM,steps=5")."""
    return isinstance(text, str) and text.strip().lower().startswith(tuple(PREFIXES))


def _root(cls):
    return (getattr(cls, "__module__", "") or "").split(".")[0]


def peer_kind(obj):
    """The library kind of a peer attack object (KINDS), or None: by the module of its class or
    of a base class, else by the shape of its interface (module docstring)."""
    for cls in type(obj).__mro__:
        if _root(cls) in KINDS:
            return _root(cls)
    if all(hasattr(obj, a) for a in ("get_logits", "set_model_training_mode")):
        return "torchattacks"
    if hasattr(obj, "model") and callable(getattr(obj, "forward", None)):
        if hasattr(obj, "epsilon"):
            return "transferattack"
        if hasattr(obj, "normalize"):
            return "torchattack"
    return None


def is_peer(obj):
    """True for a peer attack object of a known kind (peer_kind)."""
    return peer_kind(obj) is not None


def looks_like_peer(obj):
    """An object shaped like some library's attack (a model and a forward) that no adapter
    knows: compare refuses it rather than call it as fn(images uint8 NHWC, labels)."""
    return hasattr(obj, "model") and callable(getattr(obj, "forward", None))


def import_library(kind, what):
    """The peer library `kind`, or ModuleNotFoundError saying how to install it."""
    module = {"torchattacks": "torchattacks", "torchattack": "torchattack",
              "transferattack": "transferattack"}[kind]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        if kind == "transferattack":
            raise ModuleNotFoundError(
                f"{what} needs TransferAttack, which is not on PyPI: clone it and put the "
                "clone's folder on PYTHONPATH (import transferattack), or build its attack "
                "yourself and pass (name, attack_object)") from None
        raise ModuleNotFoundError(f"{what} needs {kind}, an optional peer library: "
                                  f"{PEERS_HINT}") from None


def library_version(kind):
    """The installed version of a peer library (part of a peer's cache identity), or None."""
    try:
        return getattr(import_library(kind, "version"), "__version__", None)
    except ModuleNotFoundError:
        return None


def split_name(text):
    """"ta:PGD" -> ("torchattacks", "PGD"); ValueError naming the text."""
    low = text.strip().lower()
    for prefix, kind in sorted(PREFIXES.items(), key=lambda p: -len(p[0])):
        if low.startswith(prefix):
            attack = text.strip()[len(prefix):].strip()
            if not attack:
                raise ValueError(f"attack {text!r}: expected {prefix}ATTACK, e.g. {prefix}PGD")
            return kind, attack
    raise ValueError(f"attack {text!r}: not a peer name (prefixes {sorted(PREFIXES)})")


def peer_value(value):
    """A grammar value for a peer: "true"/"false"/"none" -> True/False/None, others as given."""
    if isinstance(value, str):
        return {"true": True, "false": False, "none": None}.get(value.strip().lower(), value)
    return value


def _lookup(kind, attack, what):
    library = import_library(kind, what)
    cls = getattr(library, attack, None)
    if not inspect.isclass(cls) and kind == "transferattack":
        cls = getattr(library, "attack_zoo", {}).get(attack.lower())
    if not inspect.isclass(cls) and kind == "torchattack":
        cls = getattr(library, "ATTACK_REGISTRY", {}).get(attack)
    if not inspect.isclass(cls):
        raise ValueError(f"attacks: {kind} has no attack {attack!r} ({what})")
    return cls


def build(kind, attack, params, surrogate, eps, what=None):
    """The peer attack `attack` of library `kind` built on a fairattack surrogate (its
    `as_torch_module(range="unit")`) with ε = eps pixels and `params` (pixels: PIXEL_KEYS are
    divided by 255); the peer's own defaults otherwise."""
    import torch

    what = what or f"{kind}:{attack}"
    cls = _lookup(kind, attack, what)
    if surrogate is None or not callable(getattr(surrogate, "as_torch_module", None)):
        raise ValueError(f"attacks: {what!r} runs on the surrogate; pass a fairattack Model as "
                         "the surrogate (or build the attack yourself and pass (name, object))")
    params = {k: peer_value(v) for k, v in params.items()}
    for key in PIXEL_KEYS[kind]:
        if isinstance(params.get(key), (int, float)) and not isinstance(params[key], bool):
            params[key] = params[key] / 255.0
    params.setdefault(EPS_KEY[kind], eps / 255.0)
    net = surrogate.as_torch_module(range="unit")
    device = torch.device(getattr(surrogate, "device", "cpu"))
    try:
        if kind == "torchattacks":
            accepted = inspect.signature(cls).parameters
            if "eps" not in accepted:
                params.pop("eps")
            return cls(net, **params)
        if kind == "torchattack":
            if getattr(cls, "attack_category", None) is not None and cls.is_category("GENERATIVE"):
                raise ValueError(f"attacks: {what!r} is a generative attack (its own trained "
                                 "generator), not one that runs on a surrogate")
            if "eps" not in inspect.signature(cls).parameters:
                params.pop("eps")
            return cls(model=net, normalize=None, device=device, **params)
        # TransferAttack loads its surrogate by name in __init__ (load_model, which its
        # docstring says to override for a custom surrogate): hand it ours
        bound = type(cls.__name__, (cls,), {"load_model": lambda self, model_name: net})
        return bound(model_name=getattr(surrogate, "name", "surrogate"), device=device, **params)
    except TypeError as error:
        raise TypeError(f"attacks: {what!r}: {error}") from None


# ----------------------------------------------------------------------------- running

@dataclasses.dataclass
class PeerResult:
    """A peer's adversarial images and what it spent, per image: images uint8 NHWC (within ε),
    linf (pixels, of the uint8 images), grad_evals (input-gradient rows through the surrogate,
    a batch's rows shared equally by its images), forward_evals (rows forwarded without a
    gradient)."""

    images: np.ndarray
    linf: np.ndarray
    grad_evals: np.ndarray
    forward_evals: np.ndarray
    kind: str


class _Counts:
    def __init__(self):
        self.forward_rows = 0
        self.grad_rows = 0

    def add_grad(self, grad):
        self.grad_rows += int(grad.shape[0])


def _counting(module, counts):
    """module wrapped so that each forward adds its rows and each gradient reaching its input
    adds the gradient's rows to counts."""
    import torch

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            counts.forward_rows += int(x.shape[0])
            if x.requires_grad and torch.is_grad_enabled():
                x.register_hook(counts.add_grad)
            return self.inner(x)

    # the peer reads and restores its model's mode (torchattacks does): show it the inner one
    return Counting(module).train(module.training)


def _call(obj, kind, xb, yb):
    if kind == "transferattack":
        delta = obj(xb, yb) if callable(obj) else obj.forward(xb, yb)
        if not hasattr(delta, "shape") or tuple(delta.shape) != tuple(xb.shape):
            return delta  # the caller names the shape
        return xb + delta.to(xb.device)
    return obj(xb, yb)


def run(obj, images, labels, eps, batch_size=16, seed=0, name=None):
    """Run a peer attack object on uint8 (or float) NHWC images in [0, 255] -> PeerResult.

    The images go to the peer as float [0, 1] NCHW on its device (`obj.device`, else the CPU),
    batch_size at a time, after torch.manual_seed(seed). Its output (TransferAttack: clean +
    the returned perturbation) is brought back to pixels and rounded to uint8. eps: the ℓ∞
    budget in pixels the output must respect (PeerBudgetError naming the images otherwise).
    """
    import torch

    kind = peer_kind(obj)
    label = repr(name) if name else type(obj).__name__
    if kind is None:
        raise TypeError(f"attack {label}: not a peer attack of a known kind ({', '.join(KINDS)}; "
                        "see fairattack.peers)")
    x = check_pixels(images)
    y = labels_i64(labels, x.shape[0])
    batch_size = positive_int(batch_size, "batch_size")
    x_u8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    n = len(x_u8)
    counts = _Counts()
    inner = getattr(obj, "model", None)
    if inner is None:
        raise TypeError(f"attack {label}: a {kind} attack holds its surrogate as .model; it "
                        "has none")
    training = getattr(inner, "training", None)
    obj.model = _counting(inner, counts)
    device = getattr(obj, "device", None) or "cpu"
    out = np.empty_like(x_u8)
    linf = np.empty(n)
    grads, forwards = np.zeros(n), np.zeros(n)
    try:
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            xb = torch.from_numpy(x_u8[start:stop]).permute(0, 3, 1, 2).float().div(255.0)
            yb = torch.from_numpy(y[start:stop]).to(device)
            before_f, before_g = counts.forward_rows, counts.grad_rows
            adv = _call(obj, kind, xb.to(device), yb)
            if not hasattr(adv, "shape") or tuple(adv.shape) != tuple(xb.shape):
                raise ValueError(f"attack {label} ({kind}) returned "
                                 f"{getattr(adv, 'shape', type(adv).__name__)} for a batch of "
                                 f"shape {tuple(xb.shape)}; expected the same [0, 1] NCHW shape")
            adv = adv.detach().double().cpu().permute(0, 2, 3, 1).numpy() * 255.0
            g, f = counts.grad_rows - before_g, counts.forward_rows - before_f
            grads[start:stop] = g / (stop - start)
            forwards[start:stop] = (f - g) / (stop - start)
            out[start:stop], linf[start:stop] = _within_eps(adv, x_u8[start:stop], eps, label,
                                                            kind, start)
    finally:
        obj.model = inner
        if training is not None:
            inner.train(training)
    return PeerResult(out, linf, grads, forwards, kind)


def _within_eps(adv, clean_u8, eps, label, kind, offset):
    """uint8 images of a peer's float output (pixels), refused past ε + EPS_TOL."""
    clean = clean_u8.astype(np.float64)
    if not np.isfinite(adv).all():
        bad = int(np.flatnonzero(~np.isfinite(adv).reshape(len(adv), -1).all(axis=1))[0])
        raise ValueError(f"attack {label} ({kind}) returned non-finite values (image "
                         f"{offset + bad})")
    dist = np.abs(adv - clean).reshape(len(adv), -1).max(axis=1)
    over = dist > eps + EPS_TOL
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise PeerBudgetError(
            f"attack {label} ({kind}) exceeds the ℓ∞ budget eps={eps:g} px on {int(over.sum())} "
            f"of {len(adv)} images (image {offset + i}: ℓ∞ {dist[i]:.3f} px); it is not clipped: "
            f"build it with its budget at eps/255 (= {eps / 255:.6f}) or compare at a larger eps")
    bound = np.floor(eps + EPS_TOL)
    q = np.clip(np.rint(adv), clean - bound, clean + bound)
    q = np.clip(q, 0, 255).astype(np.uint8)
    return q, np.abs(q.astype(np.float64) - clean).reshape(len(q), -1).max(axis=1)
