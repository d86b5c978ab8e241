"""The paper's settings (docs/protocol.md#settings) as presets of the C core's configuration.

Every value can be overridden by keyword. Defaults come from the compiled core
(`fa_config_default`): one source of truth for the per-optimizer caps and first-step RMSEs.
Losses are cross-entropies in nats (the authors' code printed CE/1000; their 0.03 is 30 here).
"""

import math

from . import _core
from ._validate import integer, real

OPTIMIZERS = tuple(_core.OPTIMIZERS)
PAPER_OPTIMIZERS = ("GD", "MGD", "NAGD", "Adam", "LAdam", "MSVAG", "AdaB")
SIGN_OPTIMIZERS = ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "VMI-FGSM", "VNI-FGSM")
SETTINGS = ("const_loss", "rmse_loss", "const_rmse", "const_rmse_authors", "fixed")

#: γ of the RMSE-augmented loss CE + γ·RMSE (the authors' 0.006 on their CE/1000 scale).
RMSE_WEIGHT = 6.0
#: Target RMSE of the paper's constant-RMSE study (§3.3).
TARGET_RMSE = 15.0
#: Step cap of `const_rmse`: images stop at the target long before it.
CONST_RMSE_MAX_ITER = 100
#: First-step RMSE of the authors' constant-RMSE code (10 steps, no loss stop).
CONST_RMSE_FIRST_STEP = {"GD": 8.0, "MGD": 2.0, "NAGD": 2.0, "Adam": 4.0, "LAdam": 4.0,
                         "MSVAG": 2.0, "AdaB": 4.0, "RMSProp": 4.0, "AdamW": 4.0, "Yogi": 4.0}
#: Stopping loss of const_loss / rmse_loss, in nats.
STOP_LOSS = 30.0
#: Their targeted meaning (docs/protocol.md#targeted-attacks): stop an image once the target's
#: cross-entropy CE(z, t) falls to this many nats (p_t >= 0.99, the target predicted with
#: confidence, as CE = 30 is the label's probability e^-30 untargeted).
STOP_LOSS_TARGETED = 0.01

_NESTEROV = {"authors": _core.NESTEROV_AUTHORS, "textbook": _core.NESTEROV_TEXTBOOK}
#: Which iterate an attack returns: the max-loss one of an image that hit max_iter, or always
#: the last one (docs/protocol.md#the-attack-loop).
_RETURNS = {"best": _core.RETURNS_BEST, "last": _core.RETURNS_LAST}
#: The fields of the C core's fa_config and their Python type (int or float).
_DEFAULT = _core.default_config(0)
CONFIG_FIELDS = tuple(_DEFAULT)
_FIELD_TYPES = {key: int if isinstance(value, int) else float for key, value in _DEFAULT.items()}
#: Integer fields that are 0/1 switches: True / False are accepted there (and only there).
FLAG_FIELDS = ("random_start", "skip_misclassified")
#: The C type of the integer fields that are not a C int (fa_config in fairattack.h).
_C_INTS = {"seed": (64, False), "index_offset": (64, True)}
#: The input transforms of the gradient pass and their defaults (all off; docs/protocol.md):
#: DI / SI / TI, and Admix / BSR / SIA (on with their *_copies; their other values are
#: TransferAttack's defaults). Part of a resolved configuration (make_config returns them),
#: applied by the model's gradient pass.
TRANSFORM_DEFAULTS = {"di_prob": 0.0, "di_min_scale": 0.9, "si_copies": 0, "ti_kernel": 0,
                      "admix_copies": 0, "admix_scales": 5, "admix_eta": 0.2,
                      "bsr_copies": 0, "bsr_blocks": 3, "bsr_angle": 24.0,
                      "sia_copies": 0, "sia_blocks": 3}
TRANSFORM_FIELDS = tuple(TRANSFORM_DEFAULTS)
#: The named transfer attacks: MI-FGSM with one input transform, as TransferAttack defines them
#: (Admix: 3 partners x 5 scales, eta 0.2; BSR: 3x3 blocks, +-24 degrees, 20 copies; SIA: 3x3
#: blocks, 20 copies; docs/protocol.md#input-transforms).
NAMED_ATTACKS = {"Admix": {"optimizer": "MI-FGSM", "admix_copies": 3},
                 "BSR": {"optimizer": "MI-FGSM", "bsr_copies": 20},
                 "SIA": {"optimizer": "MI-FGSM", "sia_copies": 20}}

#: The fields in pixels (of [0, 255] images) that a [0, 1] habit gets wrong by a factor 255:
#: given below one pixel level (8/255 for 8), `make_config` refuses them unless allow_subpixel.
PIXEL_FIELDS = ("eps", "alpha", "stop_rmse", "max_rmse")


def check_pixel_units(name, value, allow_subpixel=False):
    """The one rule for a budget or step in pixels: a value in (0, 1) is below one pixel level
    of [0, 255] images, almost surely a [0, 1] unit (8/255 meant as 8): ValueError naming the
    argument, unless allow_subpixel. Returns value."""
    if not allow_subpixel and 0 < value < 1:
        raise ValueError(f"{name}={value:.3g} is below one pixel level: fairattack measures "
                         f"{name} in pixels of [0, 255] images, so {value:.3g} in [0, 1] units "
                         f"is {name}={value * 255:.4g} here; pass {name}={value * 255:.4g}, or "
                         f"allow_subpixel=True if {value:.3g} pixels is meant")
    return value


def named_attack(name):
    """(optimizer, transform values) of a named attack ("admix", any case), or None."""
    if isinstance(name, str):
        for key, spec in NAMED_ATTACKS.items():
            if key.lower() == name.lower():
                return spec["optimizer"], {k: v for k, v in spec.items() if k != "optimizer"}
    return None


def transform_copies(transform):
    """Gradient passes per image and call of a transform dict (None: 1): SI x Admix x BSR x SIA,
    as the shim's fa_transform_copies."""
    if not transform:
        return 1
    copies = max(transform.get("si_copies", 0), 1)
    if transform.get("admix_copies", 0) > 0:
        copies *= transform["admix_copies"] * max(transform.get("admix_scales", 5), 1)
    for key in ("bsr_copies", "sia_copies"):
        if transform.get(key, 0) > 0:
            copies *= transform[key]
    return copies


def grad_passes_per_step(cfg, members=1):
    """Gradient passes per image and step of a make_config configuration, as the shim counts
    them (AttackResult.grad_evals): the transform's copies (`transform_copies`) x the surrogate's
    members (an ensemble runs one pass per member) x 1 + VMI/VNI's neighbours. The step-size
    calibration reuses the first gradient and NI's look-ahead replaces it: neither adds one."""
    calls = 1 + (int(cfg["vmi_neighbours"]) if OPTIMIZERS[cfg["optimizer"]] in
                 ("VMI-FGSM", "VNI-FGSM") else 0)
    return transform_copies(transform_of(cfg)) * max(int(members), 1) * calls


def optimizer_index(optimizer):
    """The core's enum value of an optimizer name (case-insensitive; "PGD" also as "I-FGSM")."""
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a name, one of {OPTIMIZERS}; got {optimizer!r}")
    aliases = {"I-FGSM": "PGD", "IFGSM": "PGD", "MIFGSM": "MI-FGSM", "NIFGSM": "NI-FGSM",
               "VMIFGSM": "VMI-FGSM", "VNIFGSM": "VNI-FGSM", "VMI": "VMI-FGSM", "VNI": "VNI-FGSM",
               "ADABELIEF": "AdaB", "M-SVAG": "MSVAG", "NA-GD": "NAGD", "M-GD": "MGD"}
    key = aliases.get(optimizer.upper(), optimizer)
    for i, name in enumerate(OPTIMIZERS):
        if name.upper() == key.upper():
            return i
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")


def default_setting(optimizer):
    """`fixed` for the sign attacks (their usual fixed-step run) and the named attacks built on
    them, `const_loss` otherwise."""
    named = named_attack(optimizer)
    if named is not None:
        optimizer = named[0]
    return "fixed" if OPTIMIZERS[optimizer_index(optimizer)] in SIGN_OPTIMIZERS else "const_loss"


def check_transforms(values):
    """Validated transform values (names as in TRANSFORM_DEFAULTS)."""
    out = dict(TRANSFORM_DEFAULTS)
    for key, value in values.items():
        out[key] = integer(value, key, bits=(32, True)) \
            if isinstance(TRANSFORM_DEFAULTS[key], int) else real(value, key)
    if not 0 <= out["di_prob"] <= 1:
        raise ValueError(f"di_prob must be in [0, 1], got {out['di_prob']:g}")
    if not 0 < out["di_min_scale"] <= 1:
        raise ValueError(f"di_min_scale must be in (0, 1], got {out['di_min_scale']:g}")
    if out["si_copies"] < 0:
        raise ValueError(f"si_copies must be >= 0 (0 or 1: off), got {out['si_copies']}")
    if out["ti_kernel"] < 0 or (out["ti_kernel"] and out["ti_kernel"] % 2 == 0):
        raise ValueError(f"ti_kernel must be 0 (off) or an odd size, got {out['ti_kernel']}")
    for key in ("admix_copies", "bsr_copies", "sia_copies"):
        if out[key] < 0:
            raise ValueError(f"{key} must be >= 0 (0: off), got {out[key]}")
    for key in ("admix_scales", "bsr_blocks", "sia_blocks"):
        if out[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {out[key]}")
    if not (math.isfinite(out["admix_eta"]) and out["admix_eta"] >= 0):
        raise ValueError(f"admix_eta must be >= 0, got {out['admix_eta']:g}")
    if not 0 <= out["bsr_angle"] <= 180:
        raise ValueError(f"bsr_angle must be in [0, 180] degrees, got {out['bsr_angle']:g}")
    return out


def transform_of(cfg):
    """The core's transform dict of a configuration from make_config (None when all are off)."""
    t = {key: cfg.get(key, default) for key, default in TRANSFORM_DEFAULTS.items()}
    if not (t["di_prob"] > 0 or t["si_copies"] > 1 or t["ti_kernel"] > 1
            or t["admix_copies"] > 0 or t["bsr_copies"] > 0 or t["sia_copies"] > 0):
        return None
    return dict(t, seed=int(cfg["seed"]))


def core_config(cfg):
    """The fields of a make_config dict that the C core's fa_config holds."""
    return {key: value for key, value in cfg.items() if key in _FIELD_TYPES}


def make_config(optimizer, setting=None, *, allow_subpixel=False, **overrides):
    """The full, checked configuration of one attack as a dict of the core's fields.

    setting:
      const_loss          stop at CE >= 30 nats, per-optimizer cap and first-step RMSE (paper §3.1)
      rmse_loss           as const_loss, ascending CE + 6·RMSE from the second step on (§3.2)
      const_rmse          stop each image when its RMSE reaches 15, the last step shortened (§3.3)
      const_rmse_authors  the authors' code: exactly 10 steps, larger first steps, no loss stop
      fixed               no loss stop: the per-optimizer cap (sign attacks: FGSM one step of ε,
                          PGD/MI/NI 10 steps of ε/10)
    overrides: any field of the core's fa_config, e.g. eps, max_iter, first_step_rmse, alpha,
      stop_loss, stop_rmse, rmse_weight, momentum, beta1, beta2, delta, ladam_lambda,
      adamw_decay, msvag_beta, rmsprop_rho, nesterov ("authors"/"textbook"), random_start, seed,
      skip_misclassified, index_offset, returns ("best": an image that hits max_iter returns
      its max-CE iterate, the default of the loss-stopped settings; "last": its last iterate, the
      default of `fixed`, as peer libraries do), max_rmse (> 0: a joint ℓ∞ + RMSE budget, every
      iterate projected exactly onto it: docs/fair-comparison.md#the-joint-budget), and the input
      transforms di_prob, di_min_scale, si_copies, ti_kernel, admix_copies, admix_scales,
      admix_eta, bsr_copies, bsr_blocks, bsr_angle, sia_copies, sia_blocks
      (docs/protocol.md#input-transforms; a model's gradient pass applies them).
    optimizer may also be a named attack (NAMED_ATTACKS: "Admix", "BSR", "SIA"): MI-FGSM with
      that transform on, unless the overrides set it.
      Giving `alpha` switches calibration off and vice versa. NumPy scalars are accepted;
      integer fields (max_iter, si_copies, ...) must be integers.
    allow_subpixel: eps, alpha, stop_rmse and max_rmse are pixels of [0, 255]
      images; one given in (0, 1) is refused as a [0, 1] unit (eps=8/255 meant as eps=8) unless
      allow_subpixel=True (`check_pixel_units`).
    """
    named = named_attack(optimizer)
    if named is not None:
        optimizer, defaults = named
        overrides = dict(defaults, **{k: v for k, v in overrides.items() if v is not None})
    index = optimizer_index(optimizer)
    name = OPTIMIZERS[index]
    setting = default_setting(name) if setting is None else setting
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    cfg = _core.default_config(index)
    sign = name in SIGN_OPTIMIZERS
    if setting in ("const_loss", "rmse_loss"):
        cfg["stop_loss"] = STOP_LOSS
        if setting == "rmse_loss":
            cfg["rmse_weight"] = RMSE_WEIGHT
    elif setting in ("const_rmse", "const_rmse_authors"):
        cfg["stop_loss"] = math.inf
        if not sign:
            cfg["first_step_rmse"] = CONST_RMSE_FIRST_STEP.get(name, 4.0)
        if setting == "const_rmse":
            cfg["stop_rmse"] = TARGET_RMSE
            cfg["max_iter"] = CONST_RMSE_MAX_ITER
        else:
            cfg["max_iter"] = 10
    else:  # fixed
        cfg["stop_loss"] = math.inf
    # the loss-stopped protocols return an image's max-CE iterate when it hits the cap; the fixed
    # run returns the last iterate, as every peer library does (docs/protocol.md#the-attack-loop)
    cfg["returns"] = _RETURNS["last" if setting == "fixed" else "best"]

    known = set(CONFIG_FIELDS) | set(TRANSFORM_FIELDS)
    unknown = sorted(set(overrides) - known - {"optimizer"})
    if unknown:
        raise TypeError(f"unknown hyper-parameter {unknown[0]!r}; expected one of "
                        f"{tuple(f for f in CONFIG_FIELDS if f != 'optimizer') + TRANSFORM_FIELDS}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "optimizer" in overrides:
        raise TypeError("give the optimizer as the `optimizer` argument, not as an override")
    transform = check_transforms({k: overrides.pop(k) for k in TRANSFORM_FIELDS
                                  if k in overrides})
    if "returns" in overrides:
        if not isinstance(overrides["returns"], str) or overrides["returns"] not in _RETURNS:
            raise ValueError(f"returns={overrides['returns']!r}; expected 'best' or 'last'")
        overrides["returns"] = _RETURNS[overrides["returns"]]
    if isinstance(overrides.get("nesterov"), str):
        if overrides["nesterov"] not in _NESTEROV:
            raise ValueError(f"nesterov={overrides['nesterov']!r}; expected 'authors' or "
                             "'textbook'")
        overrides["nesterov"] = _NESTEROV[overrides["nesterov"]]
    if "alpha" in overrides and "first_step_rmse" not in overrides:
        cfg["first_step_rmse"] = 0.0
    if "first_step_rmse" in overrides and "alpha" not in overrides:
        cfg["alpha"] = 0.0
    for key, value in overrides.items():
        if _FIELD_TYPES[key] is int:
            cfg[key] = integer(value, key, flag=key in FLAG_FIELDS,
                               bits=_C_INTS.get(key, (32, True)))
        else:
            cfg[key] = real(value, key)
        if key in PIXEL_FIELDS:
            check_pixel_units(key, cfg[key], allow_subpixel)
    if name == "FGSM" and setting in ("const_rmse", "const_rmse_authors"):
        raise ValueError(f"setting={setting!r} does not apply to FGSM, which is one step of eps "
                         "by definition; use setting='fixed' (or PGD for several steps)")
    if cfg["stop_rmse"] > 0 and cfg["stop_rmse"] > cfg["eps"]:
        raise ValueError(f"stop_rmse={cfg['stop_rmse']:g} can never be reached with "
                         f"eps={cfg['eps']:g} (RMSE <= eps): lower stop_rmse or raise eps")
    if sign and "alpha" not in overrides and "first_step_rmse" not in overrides:
        # the sign attacks' usual step: FGSM one step of eps, the iterative ones eps / steps
        steps = 1 if name == "FGSM" else max(int(cfg["max_iter"]), 1)
        cfg["alpha"] = float(cfg["eps"]) / steps
    try:
        cfg = _core.check_config(cfg)
    except ValueError as error:  # the core names its struct's fields: cfg.eps -> eps
        raise ValueError(str(error).replace("cfg.", "")) from None
    cfg.update(transform)
    return cfg


def readable_config(cfg):
    """A make_config dict as a user reads it: the optimizer, `returns` and `nesterov` by name,
    and each float as the shortest decimal that the core's float32 holds (0.9, not
    0.8999999761581421)."""
    import numpy as np

    out = {}
    for key, value in cfg.items():
        if key == "optimizer":
            value = OPTIMIZERS[value]
        elif key == "returns":
            value = next(n for n, v in _RETURNS.items() if v == value)
        elif key == "nesterov":
            value = next((n for n, v in _NESTEROV.items() if v == value), value)
        elif isinstance(value, float) and math.isfinite(value) and \
                float(np.float32(value)) == value:
            value = float(str(np.float32(value)))
        out[key] = value
    return out


def describe(cfg):
    """A short human-readable line for a configuration dict."""
    name = cfg["optimizer"] if isinstance(cfg["optimizer"], str) else OPTIMIZERS[cfg["optimizer"]]
    step = (f"alpha={cfg['alpha']:g}" if cfg["alpha"] > 0
            else f"first_step_rmse={cfg['first_step_rmse']:g}")
    parts = [name, f"eps={cfg['eps']:g}", f"max_iter={cfg['max_iter']}", step]
    if math.isfinite(cfg["stop_loss"]):
        parts.append(f"stop_loss={cfg['stop_loss']:g}")
    if cfg["stop_rmse"] > 0:
        parts.append(f"stop_rmse={cfg['stop_rmse']:g}")
    if cfg["rmse_weight"] > 0:
        parts.append(f"rmse_weight={cfg['rmse_weight']:g}")
    if cfg.get("max_rmse", 0) > 0:
        parts.append(f"max_rmse={cfg['max_rmse']:g}")
    if "returns" in cfg:
        parts.append("returns=" + ("last" if cfg["returns"] in (_RETURNS["last"], "last")
                                   else "best"))
    return " ".join(parts)
