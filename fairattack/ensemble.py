"""Surrogate ensembles (docs/protocol.md#surrogate-ensembles): `ensemble([m1, m2, ...],
fuse="logits"|"probs"|"loss", weights=None)` is a `Model` usable wherever a surrogate is
(`fa.attack`, `fa.compare`, `run_study`). Every gradient pass runs inside the LibTorch shim, one
forward and backward per member, with no Python per step; loss, prediction and the stopping
rules read the fused output."""

import math

import numpy as np

from . import _core
from ._model import Model, ensemble_digest, input_size, load_spec, model_digest, model_specs

FUSES = tuple(_core.FUSES)
#: Weights must sum to 1 within this.
WEIGHT_TOL = 1e-6


class _EnsembleCore:
    """What a Model asks of its compiled handle (run, num_classes, device, index), for the
    members' handles fused by the shim (fa_ensemble_run)."""

    def __init__(self, members, weights, fuse):
        self.members = members
        self.spec = (tuple(m._core for m in members), np.asarray(weights, np.float32),
                     FUSES.index(fuse))
        self.device, self.index = members[0]._core.device, members[0]._core.index

    def num_classes(self, h, w, c):
        counts = [m._core.num_classes(h, w, c) for m in self.members]
        if len(set(counts)) != 1:
            raise ValueError(f"the ensemble's members have different numbers of classes: "
                             f"{counts}")
        return counts[0]

    def run(self, x, labels, want_grad, k, objective=0):
        return _core.ensemble_run(self.spec, x, labels, want_grad, k, objective)


class Ensemble(Model):
    """An ensemble of fairattack Models (see `ensemble`). logits() returns the fused output: the
    weighted mean of logits ("logits"), or the log of the weighted mean of softmax ("probs",
    "loss"), whose argmax is the prediction."""

    def __init__(self, members, weights, fuse):
        self.members, self.weights, self.fuse = list(members), list(weights), fuse
        name = "+".join(m.name for m in members)
        super().__init__(_EnsembleCore(self.members, self.weights, fuse),
                         f"ensemble({name}, {fuse})", members[0].device)

    def as_torch_module(self, range="unit"):  # noqa: A002 - Model.as_torch_module's name
        """The ensemble as one torch.nn.Module for a peer library's attack: the members' modules
        (`Model.as_torch_module(range)`) fused so that the cross-entropy of its output is the
        fused loss: fuse "logits" returns Σ w_i z_i, "probs" log Σ w_i softmax(z_i) (its CE is
        −log Σ w_i p_i,y). "loss" (a weighted mean of the members' CEs) is no CE of one output
        and is refused: a peer computes CE(module(x), y) itself."""
        import torch

        if self.fuse == "loss":
            raise ValueError(f"{self.name}: fuse='loss' (the weighted mean of the members' CE) "
                             "is no cross-entropy of one output, which is what a peer's attack "
                             "computes; use fuse='logits' or 'probs' for peers")
        members = [m.as_torch_module(range) for m in self.members]

        class Fused(torch.nn.Module):
            """An ensemble's members fused as fairattack fuses them (see as_torch_module)."""

            def __init__(self, nets, weights, fuse):
                super().__init__()
                self.nets = torch.nn.ModuleList(nets)
                self.weights, self.fuse = [float(w) for w in weights], fuse

            def forward(self, x):
                zs = [net(x) for net in self.nets]
                if self.fuse == "logits":
                    return sum(w * z for w, z in zip(self.weights, zs))
                return torch.log(sum(w * torch.softmax(z, 1) for w, z in zip(self.weights, zs)))

        return Fused(members, self.weights, self.fuse).eval()

    def __repr__(self):
        weights = ", ".join(f"{w:g}" for w in self.weights)
        return (f"Ensemble({[m.name for m in self.members]}, fuse={self.fuse!r}, "
                f"weights=[{weights}])")


def ensemble(models, fuse="logits", weights=None):
    """A surrogate that fuses the members' outputs, z_i the logits of member i:

    fuse="logits": L = CE(Σ w_i z_i, y) (the MI-FGSM paper's ensemble); "probs":
    L = −log Σ w_i softmax(z_i)_y; "loss": L = Σ w_i CE(z_i, y). Targeted attacks and the
    margin / logit losses fuse the same way (of the fused output, or for "loss" the weighted
    mean of the members' losses).
    models: fairattack Models on one device (each resizes inside its wrapper, so their input
        sizes may differ). weights: None (equal) or one weight >= 0 per member summing to 1.
    """
    if isinstance(models, Model) or not hasattr(models, "__iter__"):
        raise TypeError("models must be a list of fairattack Models, got "
                        f"{type(models).__name__}")
    models = list(models)
    if not models:
        raise ValueError("models: an ensemble needs at least one member")
    for i, m in enumerate(models):
        if isinstance(m, Ensemble):
            raise ValueError(f"models[{i}] is an ensemble: ensembles do not nest; list its "
                             "members instead")
        if not isinstance(m, Model):
            raise TypeError(f"models[{i}] must be a fairattack Model (fairattack.load_model), "
                            f"got {type(m).__name__}")
    devices = {m.device for m in models}
    if len(devices) > 1:
        raise ValueError(f"models: the members are on different devices {sorted(devices)}; "
                         "load them on one device")
    if not isinstance(fuse, str) or fuse not in FUSES:
        raise ValueError(f"fuse={fuse!r}; expected one of {FUSES}")
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    else:
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise TypeError(f"weights must be a list of numbers, got {weights!r}") from None
        if len(weights) != len(models):
            raise ValueError(f"weights has {len(weights)} entries for {len(models)} members")
        bad = [i for i, w in enumerate(weights) if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ValueError(f"weights[{bad[0]}]={weights[bad[0]]!r} must be a number >= 0")
        if abs(sum(weights) - 1.0) > WEIGHT_TOL:
            raise ValueError(f"weights sum to {sum(weights):g}; they must sum to 1")
    return Ensemble(models, weights, fuse)


# ----------------------------------------------------------------------------- named ensembles

class EnsembleSpec:
    """An ensemble as a study or the CLI names it: member specs (registry names, TorchScript
    paths or Models: `fairattack._model.model_specs`), fuse and weights. Its identity is its
    members' contents, fuse and weights (`digest`)."""

    def __init__(self, members, fuse="logits", weights=None):
        if isinstance(members, Ensemble):
            members, fuse, weights = members.members, members.fuse, members.weights
        self.members = model_specs(list(members), "surrogates (ensemble members)")
        if any(isinstance(m, Ensemble) for m in self.members.values()):
            raise ValueError("surrogates: ensembles do not nest; list the members instead")
        self.fuse, self.weights = fuse, weights
        self.name = "+".join(self.members)

    def load(self, device):
        return ensemble([load_spec(n, s, device) for n, s in self.members.items()], self.fuse,
                        self.weights)

    def digest(self):
        return ensemble_digest([model_digest(s) for s in self.members.values()], self.fuse,
                               self.weights)

    def input_size(self):
        """The largest member's input size (every member resizes inside), None if unknown."""
        sizes = [input_size(s) for s in self.members.values()]
        return None if None in sizes else max(sizes)


def ensemble_specs(specs, fuse="logits", weights=None):
    """Surrogates as a study takes them, where "a+b" (a text joining member specs with "+") or
    an Ensemble is an `EnsembleSpec` (with this fuse and weights for the texts): the other
    entries are left as they are. A list or dict keeps its form."""
    def one(spec):
        if isinstance(spec, Ensemble):
            return EnsembleSpec(spec)
        if isinstance(spec, str) and "+" in spec:
            parts = spec.split("+")
            if any(not p for p in parts):
                raise ValueError(f"surrogates: {spec!r} has an empty member (expected a+b)")
            return EnsembleSpec(parts, fuse, weights)
        return spec

    if isinstance(specs, dict):
        return {name: one(spec) for name, spec in specs.items()}
    if isinstance(specs, (str, Model)):
        specs = [specs]
    return [one(spec) for spec in specs]
