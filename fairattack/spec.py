"""Attack specs: the one way an attack is named, written and resolved to the C core's config.

Forms an attack can be given in (`fa.compare`, `fa.run_study`, the CLI):

- an optimizer name: "PGD", "mi-fgsm" (any case, aliases of `settings.optimizer_index`), or a
  named attack of `settings.NAMED_ATTACKS` ("Admix", "BSR", "SIA": MI-FGSM with that transform),
  also as the OPTIMIZER of the grammar and of a dict;
- the text grammar NAME=OPTIMIZER[:SETTING][,key=value...], e.g. "pgd-di=PGD:fixed,di_prob=0.5"
  (keys may be spelled with "-"; values are int, float or text);
- a dict {"optimizer": ..., "setting": ..., hyper-parameters and transforms}, with "name" in a
  list (compare) or keyed by its name (run_study);
- compare only: (name, fn), (name, peer attack object), (name, adversarial images), or a peer
  attack by name in the same grammar, [NAME=]LIBRARY:ATTACK[,key=value...]
  ("ta:PGD,steps=20,alpha=1.6", "torchattack:VMIFGSM", "transferattack:MIFGSM": fairattack.peers
  says what the values mean).

`resolve` applies the override layers of a study (its flat overrides, then those per setting,
per optimizer, the attack's own, then those per attack name) and returns the resolved config.
The gradient-pass transforms are `TRANSFORMS` (settings.TRANSFORM_FIELDS), in every form.
"""

import dataclasses

import numpy as np

from . import peers
from ._validate import images_f32
from .settings import (CONFIG_FIELDS, NAMED_ATTACKS, OPTIMIZERS, SETTINGS, TRANSFORM_FIELDS,
                       check_transforms, make_config, named_attack, optimizer_index)

#: The input transforms of the gradient pass (DI, SI, TI, Admix, BSR, SIA;
#: docs/protocol.md#input-transforms): the one list.
TRANSFORMS = TRANSFORM_FIELDS
#: The config fields an attack spec may set (the core's fields less the two the runner sets).
CONFIG_KEYS = tuple(f for f in CONFIG_FIELDS if f not in ("optimizer", "index_offset"))
#: fa.attack keywords a spec of compare or the leaderboard may carry that are not config fields
#: (make_config does not take them; `AttackSpec.config_params` leaves them out).
RUN_KEYWORDS = ("rounding", "max_grads")
#: Every key such a spec may set.
ATTACK_KEYS = CONFIG_KEYS + TRANSFORMS + ("allow_subpixel",) + RUN_KEYWORDS
GRAMMAR = "NAME=OPTIMIZER[:SETTING][,key=value...]"


@dataclasses.dataclass
class AttackSpec:
    """One attack, normalised. kind: "fairattack" (an optimizer with a setting or None and
    params: config overrides and transforms), "callable" (fn(images, labels) -> adv), "peer"
    (a peer library's attack object in fn) or "images" (precomputed adversarial images)."""

    name: str
    kind: str
    optimizer: str = None
    setting: str = None
    params: dict = dataclasses.field(default_factory=dict)
    fn: object = None
    images: np.ndarray = None
    #: a peer built by name: (library kind, attack name) of fairattack.peers
    peer: tuple = None

    @property
    def reruns(self):
        """fairattack can run it again (under another budget)."""
        return self.kind == "fairattack"

    def attack_kwargs(self):
        """fa.attack keywords of a fairattack spec: the setting (if fixed) and its params."""
        return dict({"setting": self.setting} if self.setting else {}, **self.params)

    def config_params(self):
        """The params that make_config takes (the run keywords left out)."""
        return {k: v for k, v in self.params.items() if k not in RUN_KEYWORDS}

    def identity(self):
        """What determines the attack's output besides the images and models (a JSON-able
        dict), or {"kind": ...} for attacks fairattack does not run."""
        if self.kind == "fairattack":
            return {"optimizer": self.optimizer, **self.attack_kwargs()}
        if self.kind == "peer" and self.peer is not None:
            return {"kind": "peer", "peer": list(self.peer), "params": self.params,
                    "version": peers.library_version(self.peer[0])}
        return {"kind": self.kind}

    def build(self, surrogate, eps):
        """A peer named by text, made on the surrogate (fn set; peers.build)."""
        if self.kind == "peer" and self.fn is None:
            self.fn = peers.build(*self.peer, self.params, surrogate, eps, what=self.name)
        return self


def _value(text):
    """A grammar value: int, float, or the text itself ("textbook", "best")."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_text(text):
    """NAME=OPTIMIZER[:SETTING][,key=value...] -> (name, spec dict); ValueError names the text."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise ValueError(f"attack {text!r}: expected {GRAMMAR}")
    head, *pairs = rest.split(",")
    optimizer, _, setting = head.partition(":")
    spec = {"optimizer": optimizer.strip()}
    if setting.strip():
        spec["setting"] = setting.strip()
    spec.update(_pairs(text, pairs, reserved=("optimizer", "setting")))
    return name, spec


def _pairs(text, pairs, reserved=()):
    """The key=value pairs of the grammar -> dict (keys with "_" for "-")."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ValueError(f"attack {text!r}: {pair!r} is not key=value")
        if key in out or key in reserved:
            raise ValueError(f"attack {text!r}: {key!r} given twice")
        out[key] = _value(value.strip())
    return out


def is_named_peer(text):
    """"NAME=ta:PGD,..." (a peer under a name of its own)."""
    if not isinstance(text, str):
        return False
    name, sep, rest = text.partition("=")
    return bool(sep) and not peers.is_peer_name(text) and "," not in name \
        and peers.is_peer_name(rest)


def parse_peer(text, where="attack", reserved=()):
    """A peer by name in the grammar, [NAME=]LIBRARY:ATTACK[,key=value...] (fairattack.peers:
    "ta:PGD,steps=20,alpha=1.6", "torchattack:VMIFGSM", "mine=transferattack:MIFGSM,epoch=5")
    -> AttackSpec of kind "peer" with fn None (peers.build makes it on a surrogate). Its name is
    NAME, else the text itself."""
    name, rest = (None, text) if peers.is_peer_name(text) else text.split("=", 1)
    head, *pairs = rest.split(",")
    kind, attack = peers.split_name(head)
    params = _pairs(text, pairs)
    eps_key = peers.EPS_KEY[kind]
    if "eps" in reserved and eps_key in params:
        raise ValueError(f"{where} ({text!r}): {eps_key!r} is set by the caller (the common ε "
                         "in pixels); remove it")
    name = (name or text).strip()
    return AttackSpec(name, "peer", params=params, peer=(kind, attack))


def canonical_optimizer(optimizer):
    return OPTIMIZERS[optimizer_index(optimizer)]


def named_spec(name, optimizer, params=None):
    """The AttackSpec of an optimizer or a named attack ("Admix": MI-FGSM with admix_copies=3)
    called `name`; params override the named attack's transform."""
    named = named_attack(optimizer)
    if named is None:
        return AttackSpec(name, "fairattack", optimizer=canonical_optimizer(optimizer),
                          params=dict(params or {}))
    base, transform = named
    return AttackSpec(name, "fairattack", optimizer=canonical_optimizer(base),
                      params=dict(transform, **(params or {})))


def canonical_attack_name(name):
    """An optimizer's or a named attack's canonical spelling ("admix" -> "Admix")."""
    for key in NAMED_ATTACKS:
        if isinstance(name, str) and key.lower() == name.lower():
            return key
    return canonical_optimizer(name)


def canonical_setting(setting, what="settings"):
    if isinstance(setting, str):
        for s in SETTINGS:
            if s == setting.lower():
                return s
    raise ValueError(f"{what}: unknown setting {setting!r}; expected one of {SETTINGS}")


def from_dict(name, spec, where, allowed=None, reserved=()):
    """A fairattack AttackSpec from {"optimizer": ..., "setting": ..., key: value}. allowed: the
    keys besides optimizer and setting (default: every config key and transform); reserved:
    keys the caller sets itself."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: every attack needs a non-empty str name, got {name!r}")
    if not isinstance(spec, dict):
        raise TypeError(f"{where}: expected a dict with 'optimizer' and hyper-parameters, got "
                        f"{type(spec).__name__}")
    if "optimizer" not in spec:
        raise ValueError(f"{where}: 'optimizer' is missing (one of {OPTIMIZERS})")
    bad = sorted(set(spec) & set(reserved))
    if bad:
        raise ValueError(f"{where} ({name!r}): {bad} are set by the caller; remove them")
    allowed = CONFIG_KEYS + TRANSFORMS + ("allow_subpixel",) if allowed is None \
        else tuple(allowed)
    unknown = [k for k in spec if k not in ("optimizer", "setting") + allowed]
    if unknown:
        raise TypeError(f"{where}: unknown key {unknown[0]!r}; expected 'optimizer', 'setting' "
                        f"or one of {allowed}")
    params = {k: v for k, v in spec.items() if k not in ("optimizer", "setting")}
    out = named_spec(name, spec["optimizer"], params)
    setting = spec.get("setting")
    if setting is not None:
        out.setting = canonical_setting(setting, where)
    return out


def coerce(item, where, shape=None, reserved=(), allowed=None):
    """One attack of a list in any form (module docstring) -> AttackSpec. A peer named by text
    ("ta:PGD") comes back with kind "peer" and fn None: the caller builds it on its surrogate.
    shape: the images' shape (precomputed adversarial images must have it)."""
    if isinstance(item, str) and (peers.is_peer_name(item) or is_named_peer(item)):
        return parse_peer(item, where, reserved)
    if isinstance(item, str) and "=" in item:
        name, spec = parse_text(item)
        return from_dict(name, spec, where, allowed, reserved)
    if isinstance(item, str):
        name = canonical_attack_name(item)
        return named_spec(name, name)
    if isinstance(item, dict):
        spec = dict(item)
        if "optimizer" not in spec:
            raise ValueError(f"{where}: a dict attack needs 'optimizer' (one of {OPTIMIZERS}), "
                             f"got keys {sorted(spec)}")
        name = spec.pop("name", canonical_attack_name(spec["optimizer"]))
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: 'name' must be a non-empty str, got {name!r}")
        return from_dict(name, spec, where, allowed, reserved)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        name, obj = item
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: the name must be a non-empty str, got {name!r}")
        if isinstance(obj, np.ndarray):
            if shape is not None and obj.shape != shape:
                raise ValueError(f"{where} ({name!r}): adversarial images of shape "
                                 f"{obj.shape}, expected the images' shape {shape}")
            images_f32(obj, f"{where} ({name!r})")
            return AttackSpec(name, "images", images=obj)
        if peers.is_peer(obj):
            return AttackSpec(name, "peer", fn=obj)
        if peers.looks_like_peer(obj) or _is_torch_module(obj):
            raise TypeError(f"{where} ({name!r}): {type(obj).__name__} is neither fn(images, "
                            f"labels) nor a peer attack of a known kind ({', '.join(peers.KINDS)}"
                            "; fairattack.peers says how each is recognised)")
        if callable(obj):
            return AttackSpec(name, "callable", fn=obj)
        raise TypeError(f"{where} ({name!r}): expected fn(images, labels) -> adv uint8, a "
                        f"torchattacks attack or an array of adversarial images, got "
                        f"{type(obj).__name__}")
    raise TypeError(f"{where}: expected an optimizer name, a dict spec, a text "
                    f"{GRAMMAR}, or a tuple (name, fn | torchattacks attack | images), got "
                    f"{item!r}")


def _is_torch_module(obj):
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def check_unique(specs, case_insensitive=False, hint=""):
    names = [s.name.lower() if case_insensitive else s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"attacks: the name {specs[i].name!r} appears twice{hint}")
    return specs


def study_attacks(optimizers, attacks):
    """run_study's attacks: one spec per optimizer name (named by itself), then the named specs
    ({name: dict}, or a list of texts / dicts with "name")."""
    out = [named_spec(canonical_attack_name(o), o) for o in optimizers]
    if attacks is None:
        attacks = {}
    if isinstance(attacks, dict):
        out += [from_dict(name, spec, f"attacks[{name!r}]") for name, spec in attacks.items()]
    elif isinstance(attacks, (list, tuple)):
        for i, item in enumerate(attacks):
            spec = coerce(item, f"attacks[{i}]")
            if spec.kind != "fairattack":
                raise TypeError(f"attacks[{i}]: a study runs fairattack's own attacks (optimizer "
                                f"names, dicts or {GRAMMAR}), got {item!r}")
            out.append(spec)
    else:
        raise TypeError("attacks: expected a dict name -> {'optimizer': ..., hyper-parameters}, "
                        f"got {type(attacks).__name__}")
    return check_unique(out, case_insensitive=True, hint=" (names are case-insensitive; an "
                        "optimizer in `optimizers` is named by itself)")


def split_overrides(overrides, attack_names):
    """Flat hyper-parameters and nested ones keyed by setting, optimizer or attack name
    ({"eps": 8, "adam": {"max_iter": 5}}): (flat, {canonical key: dict})."""
    if overrides is None:
        return {}, {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides: expected a dict, got {type(overrides).__name__}")
    flat, nested = {}, {}
    by_lower = {n.lower(): n for n in attack_names}
    for key, value in overrides.items():
        if not isinstance(value, dict):
            if value is not None:
                flat[key] = value
            continue
        if not isinstance(key, str):
            raise TypeError(f"overrides: nested key {key!r} is not a name")
        if key.lower() in SETTINGS:
            canonical = key.lower()
        elif key.lower() in by_lower:
            canonical = by_lower[key.lower()]
        else:
            try:
                canonical = canonical_optimizer(key)
            except ValueError:
                raise ValueError(f"overrides: {key!r} is neither a setting ({', '.join(SETTINGS)})"
                                 ", an optimizer nor an attack of this study") from None
        if canonical in nested:
            raise ValueError(f"overrides: {key!r} appears twice (names are case-insensitive)")
        nested[canonical] = value
    return flat, nested


def resolve(spec, setting, flat=None, nested=None):
    """(config overrides, transforms, resolved config) of a fairattack spec under a setting:
    the flat overrides, then those per setting, per optimizer, the spec's own, then those per
    attack name. The config holds the transforms' defaults; the given ones are apart."""
    nested = nested or {}
    merged = dict(flat or {})
    for layer in (nested.get(setting), nested.get(spec.optimizer), spec.params,
                  nested.get(spec.name) if spec.name != spec.optimizer else None):
        merged.update(layer or {})
    merged = {k: v for k, v in merged.items() if v is not None}
    transforms = {k: merged.pop(k) for k in TRANSFORMS if k in merged}
    where = f"attack {spec.name!r} ({setting})"
    try:
        check_transforms(transforms)
        cfg = make_config(spec.optimizer, setting, **merged)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    return merged, transforms, cfg
