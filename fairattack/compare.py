"""Fair comparison: put any attack on the same ℓ∞ AND ℓ2 (RMSE) footing (docs/fair-comparison.md).

    import fairattack as fa
    matched, reached = fa.match_rmse(clean, adv, 6.0, eps=16)      # any attack's uint8 images
    df = fa.compare(surrogate, images, labels,
                    attacks=["FGSM", "PGD", "MI-FGSM", {"name": "PGD+DI", "optimizer": "PGD",
                             "di_prob": 0.5}, ("mine", my_fn)],
                    victims={"lite1": v1, "lite2": v2}, rmse=[4, 8, 12])
    fa.paired_test(df, "PGD", "MI-FGSM", rmse=8, victim="lite1")   # McNemar on the same images
    fa.figures.plot_asr_at_rmse(df)

Two ways to bring an attack to an RMSE budget r (`mode`):

- "rescale" (any attack, any source): the finished adversarial image's perturbation δ is
  rescaled, δ_r = clip(s·δ, l, u), l = max(−ε, −x0), u = min(ε, 255 − x0), with the per-image
  s at which the uint8 image has RMSE r (within 0.05 px). It keeps the attack's *direction* and
  changes its size uniformly.
- "budget" (fairattack's own attacks): the attack is run again with `max_rmse=r`: every iterate
  is projected exactly onto {‖δ‖∞ ≤ ε} ∩ {RMSE(δ) ≤ r} ∩ box, so the optimizer spends the RMSE
  where its loss gains most. Attacks that fairattack cannot re-run (callables, peer objects,
  precomputed images) fall back to "rescale"; the column `how` says which was used. The
  attack meets the budget on its float iterates; rounding to uint8 moves an image's RMSE by up
  to 0.5 px, so images that end within 0.5 px of r are re-quantised to r (never above it).

The two differ whenever the budget changes what the optimizer does: shrinking a finished sign
attack uniformly keeps its every-pixel-moves pattern at lower amplitude, whereas optimising
under the budget can concentrate the perturbation; amplifying (r above the attack's own RMSE)
is capped by ε, and sign attacks that already saturate ℓ∞ (FGSM: every value at ±ε, RMSE near
ε) cannot be amplified at all — those images are "unreachable". Budget mode never amplifies: an
attack that stops early (loss reached, step cap) stays below r.

Rules that keep the numbers comparable:

- Same images for every attack: only images the surrogate classifies correctly count (as in
  `fa.attack`); they are chosen once, before any attack, so every attack, budget and victim is
  evaluated on exactly the same images (`n_images`), which is what the paired test needs.
- Unreachable images are neither dropped nor counted as failures: an image that cannot be
  brought to r (rescale: no s reaches it, e.g. δ = 0 or every value already at its bound;
  budget: the attack ended more than 0.05 px below r) is evaluated at the largest RMSE it
  reaches within the budget (≤ r), exactly as a budget "RMSE ≤ r" means. `n_unreachable`
  counts them per (attack, budget); the per-image table has `reached` for any other choice.
- ASR is the victim's error rate on the uint8 images (docs/protocol.md#transferability); an image with non-finite
  logits is a failure for that victim, counted (n_failed) and left out of its rate, never a
  success; "mean" averages, per image, the victims that judged it. The 95% interval is a
  seeded percentile bootstrap over images (`fairattack.outcome.bootstrap_ci`): cells over the
  same images use the same resamples, and "mean" is the bootstrap of the per-image mean.
"""

import math
import warnings

import numpy as np
import pandas as pd

from . import _core, peers
from ._model import Model, check_labels, model_identity, predict_any, victims_of
from ._validate import images_f32, int_at_least, positive_int, round_to_uint8
from .attack import SPENT, loss_objective, resolve_targets
from .outcome import bootstrap_ci, error_rate, mean_over_victims, victim_outcome
from .settings import check_pixel_units, make_config
from .spec import ATTACK_KEYS, RUN_KEYWORDS, coerce
from .store import CompareCache, digest_parts

#: Matched images are within this many pixels (RMSE) of their target where reachable.
RMSE_TOL = 0.05
MODES = ("rescale", "budget")
#: Version of the cached outcome records (2: per-victim failures recorded apart from fooled;
#: 3: what the attack spent, grad_evals / forward_evals per image).
CACHE_FORMAT = 3
#: fa.attack keywords that compare() sets itself (one ε for all attacks, the budget in budget mode)
_RESERVED = ("eps", "max_rmse", "batch_size", "progress", "model", "images", "labels")


# ----------------------------------------------------------------------------- matching

def _eps(eps, allow_subpixel=False):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(eps) or not 0 < eps <= 255:
        raise ValueError(f"eps must be a number of pixels in [0.5, 255] (uint8 images need at "
                         f"least half a level), got {eps!r}")
    check_pixel_units("eps", float(eps), allow_subpixel)
    if eps < 0.5:
        raise ValueError(f"eps must be a number of pixels in [0.5, 255] (uint8 images need at "
                         f"least half a level), got {eps!r}")
    return float(eps)


def _targets(target, n, name="target"):
    t = np.asarray(target, dtype=np.float64) if not isinstance(target, (str, bytes)) else None
    if t is None or t.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a number or one number per image, got {target!r}")
    if t.ndim == 0:
        t = np.full(n, float(t))
    if t.shape != (n,):
        raise ValueError(f"{name} must be one RMSE or one per image ({n}), got shape {t.shape}")
    bad = ~(np.isfinite(t) & (t >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}]={t[i]!r} must be a finite RMSE >= 0 (pixels)")
    return np.ascontiguousarray(t, np.float32)


def match_rmse(clean, adv, target, eps=16):
    """Rescale each adversarial perturbation to a target RMSE, on uint8 images
    (docs/fair-comparison.md#matching-after-the-fact).

    clean, adv: uint8 or float NHWC RGB in [0, 255], the same shape (adv from any attack).
    target: an RMSE in pixels, or one per image. eps: the ℓ∞ budget the output must respect.
    Returns (matched uint8 [N, H, W, 3], reached bool [N]). matched = clean + clip(s·δ, l, u)
    with δ = adv − clean, chosen per value between the two integers around it so that the
    uint8 image's RMSE is within 0.05 px of the target; s < 1 shrinks, s > 1 amplifies up to the
    ℓ∞ budget. Where no s reaches the target (δ = 0, or every moved value at its bound first)
    reached is False and the image is the largest-RMSE one (every moved value at its bound).
    """
    c = images_f32(clean, "clean")
    a = images_f32(adv, "adv")
    if a.shape != c.shape:
        raise ValueError(f"adv must have the shape of clean {c.shape}, got {a.shape}")
    t = _targets(target, c.shape[0])
    return _match(c, a, t, _eps(eps), _core.MATCH_UINT8)


def _match(clean_f32, adv_f32, target_f32, eps, mode):
    matched, reached, _, _ = _core.match_rmse(clean_f32, adv_f32, target_f32, eps, mode, RMSE_TOL)
    return round_to_uint8(matched), np.asarray(reached, bool)


def _round_to_budget(adv, x, x_f, r, eps):
    """Budget mode: the float iterate met RMSE <= r, but rounding to uint8 moves the RMSE by up
    to 0.5 px either way. Images that end within 0.5 px of r (the budget bound them, or nearly)
    are brought back to r, never above it (MATCH_UINT8_AT_MOST); the others stay as they are."""
    rmse_img, _ = _image_rmse(adv, x_f)
    near = (np.abs(rmse_img - r) <= 0.5) & (np.abs(rmse_img - r) > 1e-9)
    if near.any():
        adv = adv.copy()
        adv[near] = _match(x_f[near], adv[near].astype(np.float32),
                           np.full(int(near.sum()), r, np.float32), eps,
                           _core.MATCH_UINT8_AT_MOST)[0]
        rmse_img, _ = _image_rmse(adv, x_f)
    return adv, rmse_img


def _image_rmse(adv_u8, clean):
    d = adv_u8.astype(np.float64) - clean
    return np.sqrt(np.mean(d * d, axis=(1, 2, 3))), np.abs(d).max(axis=(1, 2, 3))


# ----------------------------------------------------------------------------- attacks

def _parse_attacks(attacks, surrogate, eps, shape):
    """compare's attacks as AttackSpecs (spec.coerce), peers named by text built on the
    surrogate, fairattack configs checked before any work."""
    if isinstance(attacks, (str, dict, tuple)):
        attacks = [attacks]
    try:
        attacks = list(attacks)
    except TypeError:
        raise TypeError(f"attacks must be a list of attacks, got {type(attacks).__name__}") \
            from None
    if not attacks:
        raise ValueError("attacks: expected at least one attack")
    out = []
    for i, item in enumerate(attacks):
        where = f"attacks[{i}]"
        attack = coerce(item, where, shape=shape, reserved=_RESERVED,
                        allowed=ATTACK_KEYS)
        attack.build(surrogate, eps)  # a peer named by text, on the surrogate
        if attack.kind == "fairattack":  # fails early, naming the attack
            try:
                make_config(attack.optimizer, attack.setting, **attack.config_params())
            except (TypeError, ValueError) as error:
                raise type(error)(f"{where} ({attack.name!r}): {error}") from None
        out.append(attack)
    names = [a.name for a in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"attacks: names must be unique; {duplicates} appear more than once "
                         "(give dict attacks a 'name')")
    return out


def _unknown_spend(n):
    """What an attack spent where nobody counted it: unknown (NaN) per image."""
    return {key: np.full(n, np.nan) for key in SPENT}


def _native(attack, surrogate, x, y, kept, eps, batch_size, progress, seed, max_rmse=None,
            aim=None):
    """(uint8 adversarial images of the kept images, {grad_evals, forward_evals: [n]} what the
    attack spent per image: counted for fairattack's attacks and peers, NaN otherwise);
    attack.kind decides how. aim: a targeted comparison's target (per kept image) and loss."""
    if attack.kind == "images":
        out = attack.images[kept]
    elif attack.kind == "fairattack":
        from .attack import attack as run_attack

        kwargs = attack.attack_kwargs()
        kwargs.setdefault("seed", seed)
        if max_rmse is not None:
            overrides = {k: v for k, v in kwargs.items()
                         if k != "setting" and k not in RUN_KEYWORDS}
            cfg = make_config(attack.optimizer, attack.setting, eps=eps, **overrides)
            kwargs["max_rmse"] = float(max_rmse)
            if cfg["stop_rmse"] > max_rmse:  # stop at the budget, not above it (core rejects)
                kwargs["stop_rmse"] = float(max_rmse)
        kwargs.update(aim or {})  # a targeted comparison: target (per kept image) and loss
        res = run_attack(surrogate, x, y, attack.optimizer, batch_size=batch_size,
                         progress=progress, eps=eps, **kwargs)
        return res.images, {key: getattr(res, key).astype(np.float64) for key in SPENT}
    elif attack.kind == "peer":
        done = peers.run(attack.fn, x, y, eps, batch_size, seed, name=attack.name)
        return done.images, {key: np.asarray(getattr(done, key), np.float64) for key in SPENT}
    else:
        out = attack.fn(x.copy(), y.copy())
    where = f"attack {attack.name!r} returned"
    if hasattr(out, "detach"):  # a torch tensor from a user fn
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if out.shape != x.shape:
        raise ValueError(f"{where} shape {out.shape}, expected the images' shape {x.shape} "
                         "(uint8 NHWC)")
    return round_to_uint8(images_f32(out, where)), _unknown_spend(len(x))


def _budgets(rmse, allow_subpixel=False):
    values = np.atleast_1d(np.asarray(rmse, dtype=object))
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                  np.floating)) \
                or not math.isfinite(v) or v <= 0:
            raise ValueError(f"rmse must be a list of positive RMSE budgets (pixels), got {v!r}")
        out.append(check_pixel_units("rmse", float(v), allow_subpixel))
    if len(set(out)) != len(out):
        raise ValueError(f"rmse: budgets must be distinct, got {out}")
    return sorted(out)


# ----------------------------------------------------------------------------- compare

class ComparisonFrame(pd.DataFrame):
    """The table `compare` returns: a pandas DataFrame that also carries `per_image`, every
    image's outcome, and `clean_per_image`, each victim's outcome on the clean images (columns
    image, victim, fooled: a_0 of the curve summaries) (DataFrames kept through filtering and
    copies). Not in `attrs`: pandas compares attrs when concatenating, which a DataFrame inside
    them breaks."""

    def curve_summaries(self):
        """rmse50 (with its bootstrap interval) and the normalised AUC per (attack, victim):
        `fairattack.curves.summaries`."""
        from .curves import summaries

        return summaries(self)

    def ranks(self):
        """Each attack's rank by ASR natively and at every budget, with the shift:
        `fairattack.curves.ranks`."""
        from .curves import ranks

        return ranks(self)

    _metadata = ["per_image", "clean_per_image", "examples", "example_images"]

    @property
    def _constructor(self):
        return ComparisonFrame


def compare(surrogate, images, labels, attacks, victims, rmse=(2, 4, 6, 8, 10, 12),
            mode="rescale", eps=16, batch_size=16, progress=False, seed=0, n_boot=1000,
            cache_dir=None, allow_subpixel=False, examples=0, target=None, loss=None,
            max_grads=None):
    """Every attack's own ℓ∞, RMSE and ASR, and its ASR at each common RMSE budget.

    surrogate: the model the attacks run on (a fairattack Model, or a callable oracle for
        fairattack's attacks); it also picks the images that count: those it classifies
        correctly. None: every image counts (only for attacks that need no surrogate).
    images, labels: uint8 (or float) NHWC RGB in [0, 255], and their class indices.
    attacks: a list of
        - fairattack optimizer names ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "Adam", ...), run
          with their default setting;
        - dicts {"name": ..., "optimizer": ..., any fa.attack keyword: setting, di_prob,
          ti_kernel, si_copies, max_iter, ...};
        - (name, fn) with fn(images uint8 NHWC, labels) -> adversarial uint8 NHWC;
        - (name, peer attack object): a torchattacks, torchattack or TransferAttack-style
          attack (fairattack.peers: images converted to [0, 1] NCHW and back, rounded to
          uint8, refused past ε), or a peer by name with parameters in pixels,
          "ta:PGD,steps=20,alpha=1.6", "torchattack:VMIFGSM", "transferattack:MIFGSM",
          "NAME=ta:PGD,...", built on surrogate.as_torch_module() with eps/255 (the `peers`
          extra; docs/fair-comparison.md#peer-attacks);
        - (name, array): precomputed adversarial images of the same shape as `images`.
    victims: dict name -> Model, a list of Models, registry names or TorchScript paths (loaded
        on the surrogate's device), or objects with predict(images uint8) -> labels [n].
    Labels are checked against the number of classes of the surrogate and every victim.
    rmse: the RMSE budgets r (pixels), each at most eps.
    mode: how an attack is brought to each budget r:
        "rescale" (any attack): its finished perturbation is scaled per image, clipped to ε and
            the box, to the uint8 RMSE r (within 0.05 px); it keeps the attack's direction.
        "budget" (fairattack's own attacks; others fall back to rescale): the attack is rerun
            with max_rmse=r, every iterate projected onto ℓ∞ ≤ ε ∩ RMSE ≤ r, so the optimizer
            spends the RMSE where its loss gains most; it never amplifies.
        Images that cannot reach r are evaluated at the largest RMSE ≤ r they reach
        (n_unreachable); docs/fair-comparison.md has the details.
    eps: the common ℓ∞ budget (pixels) for every attack and every matched image.
    seed: attacks' randomness and the bootstrap. n_boot: bootstrap resamples (0: no CI).
    examples: keep the native adversarial images of the first `examples` images that count,
        per attack, in df.examples ({attack: uint8 [k, H, W, 3]}; df.example_images: their
        indices into `images`).
    cache_dir: a folder where per (attack, budget) outcomes and native images are kept, keyed
        by what determines them (images, the models' content, attack, budget, eps, fairattack's
        version): a rerun skips finished parts. Peers by name are keyed by their name,
        parameters and library version; callables and peer objects have no key and always run.
    allow_subpixel: eps and the rmse budgets are pixels of [0, 255] images; one in (0, 1) is
        refused as a [0, 1] unit (8/255 meant as 8) unless allow_subpixel=True.
    target: None (untargeted), an array of classes (one per image), "random" or "least_likely"
        (`fairattack.attack.resolve_targets`, drawn once per image of `images` and shared by
        every attack); then ASR is the targeted success rate (the victim predicts the target)
        and fairattack's attacks run targeted. Callables and peer attacks cannot be told a
        target (precomputed images can: they are judged against it). loss: as in `fa.attack`.
    max_grads: a matched compute budget next to the matched RMSE: K gradient passes per image.
        fairattack's attacks run within it (`fa.attack(max_grads=K)`: their step caps lowered;
        an attack's own max_grads wins); peers and callables cannot be held to it, so a row
        whose attack spent more per image (grad_evals_mean > K) is flagged (over_max_grads)
        and named in a warning, and one whose spending is not counted (NaN) is named too.

    Returns a tidy pandas DataFrame, one row per (attack, rmse, victim): attack, how ("native",
    "rescale" or "budget"), rmse (the budget, or "native" for the attack's own output), targeted
    (whether asr is a targeted success rate), victim (each and "mean"), asr, ci_low, ci_high
    (bootstrap 95%), clean_error (the victim's error on the same clean images: the baseline of
    its asr; of a targeted comparison, the rate at which the clean images are already
    classified as their targets; both are over the images that count, those the surrogate
    classifies correctly), n_images, n_failed, n_unreachable, rmse_mean and linf_mean (of the
    evaluated uint8 images: the native row carries the attack's own RMSE and ℓ∞),
    max_grads (K, or NaN without one) and over_max_grads (the attack spent more than K per
    image; False where nothing was counted), grad_evals_mean and forward_evals_mean (what the
    attack spent per image on the surrogate:
    `AttackResult.grad_evals` for fairattack's attacks, the counted rows for peers; a rescaled
    row spends what its native run did, a budget row its own run; NaN for callables and
    precomputed images). An image whose logits a victim cannot compute (non-finite) is a
    failure for that victim (`fairattack.outcome`): n_failed counts them, and asr and its
    interval are over the other images ("mean": over the victims that judged each image;
    n_failed: images no victim judged). df.per_image holds every image's outcome (columns
    attack, rmse, how, image (index into `images`), victim, fooled, failed, reached,
    rmse_image, linf_image) for `paired_test`; df.clean_per_image each victim's outcome on the
    clean images (image, victim, fooled, failed). df.curve_summaries() and df.ranks() give
    rmse50 (with a bootstrap CI from the same resamples), the normalised AUC and the ranks with
    their shifts (fairattack.curves); df.attrs["grad_evals"] the mean gradient evaluations per
    image of each attack's native run, for the attacks whose spending is counted.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    eps = _eps(eps, allow_subpixel)
    budgets = _budgets(rmse, allow_subpixel)
    if budgets[-1] > eps:
        raise ValueError(f"rmse={budgets[-1]:g} can never be reached with eps={eps:g} (an "
                         "image's RMSE is at most its l-inf distance): lower the budget or "
                         "raise eps")
    batch_size = positive_int(batch_size, "batch_size")
    seed = int_at_least(seed, "seed", 0)
    n_boot = int_at_least(n_boot, "n_boot", 0)
    examples = int_at_least(examples, "examples", 0)
    if max_grads is not None:
        max_grads = positive_int(max_grads, "max_grads")
    x_all = images_f32(images)
    x_u8 = round_to_uint8(x_all)
    victims = victims_of(victims, device=getattr(surrogate, "device", "cpu")
                         if isinstance(surrogate, Model) else "cpu")
    judges = dict({surrogate.name: surrogate} if isinstance(surrogate, Model) else {}, **victims)
    y_all = check_labels(labels, x_all.shape[0], judges, *x_all.shape[1:3])
    attack_list = _parse_attacks(attacks, surrogate, eps, x_all.shape)
    targeted = target is not None
    loss_objective(loss, targeted)  # an unknown loss fails before any work
    if targeted:
        blind = [a.name for a in attack_list if a.kind not in ("fairattack", "images")]
        if blind:
            raise ValueError(f"target: attacks {blind} cannot be told a target (only "
                             "fairattack's attacks and precomputed images take part in a "
                             "targeted comparison)")
        if surrogate is None and isinstance(target, str):
            raise ValueError(f"target={target!r} needs a surrogate")
    for attack in attack_list:
        if allow_subpixel and attack.kind == "fairattack":  # the same eps reaches fa.attack
            attack.params.setdefault("allow_subpixel", True)
        if max_grads is not None and attack.kind == "fairattack":  # part of its identity
            attack.params.setdefault("max_grads", max_grads)

    # the images that count, once for every attack (the paired test needs the same images)
    if surrogate is None:
        needs = [a.name for a in attack_list if a.kind in ("fairattack",)]
        if needs:
            raise ValueError(f"surrogate is None but attacks {needs} run on a surrogate")
        kept = np.arange(len(y_all))
    else:
        if not (isinstance(surrogate, Model) or callable(surrogate)
                or hasattr(surrogate, "predict")):
            raise TypeError("surrogate must be a fairattack Model, a callable oracle or None, "
                            f"got {type(surrogate).__name__}")
        kept = np.flatnonzero(predict_any(surrogate, x_u8, batch_size, "surrogate") == y_all)
    if kept.size == 0:
        raise ValueError("no image counts: the surrogate classifies none of the images "
                         "correctly")
    x, x_f, y = x_u8[kept], x_all[kept], y_all[kept]
    n = len(kept)
    targets, aim = None, None
    if targeted:
        classes = surrogate.num_classes(*x_all.shape[1:3]) if isinstance(surrogate, Model) \
            else None
        targets = resolve_targets(target, surrogate, x_u8, y_all, classes, seed)[kept]
        aim = {"target": targets, "loss": loss}
    elif loss is not None:
        aim = {"loss": loss}

    cache = CompareCache(cache_dir)
    victim_ids = [[name, model_identity(v)] for name, v in victims.items()]
    victims_key = None if any(i is None for _, i in victim_ids) else victim_ids
    surrogate_id = None if surrogate is None else model_identity(surrogate)
    images_key = digest_parts(x_f, y, kept) if aim is None else \
        digest_parts(x_f, y, kept, "untargeted" if targets is None else targets, str(loss))

    def attack_key(attack):
        if attack.kind == "images":
            return digest_parts(attack.images[kept])
        if attack.kind == "fairattack" and surrogate_id is not None:
            return digest_parts(attack.identity(), surrogate_id, seed, _core.VERSION)
        if attack.kind == "peer" and attack.peer is not None and surrogate_id is not None:
            return digest_parts(attack.identity(), surrogate_id, seed, batch_size,
                                _core.VERSION)  # a peer by name: seeded once per run
        return None

    def cell_key(attack, how, r):
        a = attack_key(attack)
        if a is None or victims_key is None:
            return None
        return digest_parts(images_key, a, how, r, eps, victims_key, RMSE_TOL, _core.VERSION,
                            CACHE_FORMAT)

    def evaluate(adv, reached, spent):
        fooled, failed = (np.stack(o) for o in zip(*(
            victim_outcome(predict_any(v, adv, batch_size, f"victim {name!r}"), y, targets)
            for name, v in victims.items())))
        rmse_img, linf_img = _image_rmse(adv, x_f)
        return {"fooled": fooled, "failed": failed, "reached": np.asarray(reached, bool),
                "rmse_image": rmse_img, "linf_image": linf_img, **spent}

    # each victim's outcome on the clean images that count: the baseline of its ASR (an image
    # whose clean logits a victim cannot compute is left out of that victim's rate)
    clean_fooled, clean_failed = [], []
    for name, v in victims.items():
        fooled_clean, failed_clean = victim_outcome(
            predict_any(v, x, batch_size, f"victim {name!r}"), y, targets)
        clean_fooled.append(fooled_clean)
        clean_failed.append(failed_clean)
    clean_error = [error_rate(f, bad) for f, bad in zip(clean_fooled, clean_failed)]
    rows, per_image, hits, shown = [], [], 0, {}
    attacks_iter = attack_list
    if progress:
        from tqdm.auto import tqdm

        attacks_iter = tqdm(attack_list, desc="compare", unit="attack")
    for attack in attacks_iter:
        native, native_spent = None, None

        def native_images(attack=attack):
            nonlocal native, native_spent
            if native is None:
                key = attack_key(attack)
                if key is not None and attack.kind != "images":  # arrays need no cache
                    key = digest_parts(images_key, key, eps, "native")
                else:
                    key = None
                hit = cache.get("native", attack.name, key)
                if hit is not None:
                    native = hit["adv"]
                    native_spent = {k: hit.get(k, np.full(n, np.nan)) for k in SPENT}
                else:
                    native, native_spent = _native(attack, surrogate, x, y, kept, eps,
                                                   batch_size, progress, seed, aim=aim)
                    cache.put("native", attack.name, key, adv=native, **native_spent)
            return native

        cells = [("native", "native")] + [
            (r, "budget" if mode == "budget" and attack.reruns else "rescale") for r in budgets]
        for r, how in cells:
            key = cell_key(attack, how, r)
            result = cache.get("cells", f"{attack.name}__{r}", key)
            hits += result is not None
            if result is None:
                if how == "native":
                    result = evaluate(native_images(), np.ones(n, bool), native_spent)
                elif how == "rescale":  # rescaling spends nothing on the surrogate
                    matched = match_rmse(x, native_images(), r, eps)
                    result = evaluate(*matched, native_spent)
                else:
                    adv, spent = _native(attack, surrogate, x, y, kept, eps, batch_size,
                                         progress, seed, max_rmse=r, aim=aim)
                    adv, rmse_img = _round_to_budget(adv, x, x_f, r, eps)
                    result = evaluate(adv, rmse_img >= r - RMSE_TOL, spent)
                cache.put("cells", f"{attack.name}__{r}", key, **result)
            rows += _rows(attack.name, how, r, list(victims), result, seed, n_boot, clean_error,
                          targeted)
            per_image.append(_per_image(attack.name, how, r, list(victims), kept, result))
        if examples:
            shown[attack.name] = np.array(native_images()[:examples])

    clean, clean_bad = np.stack(clean_fooled), np.stack(clean_failed)
    df = ComparisonFrame(rows)
    _flag_compute(df, max_grads)
    df.per_image = pd.concat(per_image, ignore_index=True)
    df.clean_per_image = pd.DataFrame({
        "image": np.tile(kept, len(victims)),
        "victim": np.repeat(np.array(list(victims), dtype=object), n),
        "fooled": clean.reshape(-1).astype(bool), "failed": clean_bad.reshape(-1)})
    df.attrs["seed"], df.attrs["n_boot"] = seed, n_boot
    df.examples, df.example_images = shown, kept[:examples]
    # the mean gradient evaluations per image of each attack's native run, where counted
    native_rows = df[(df["how"] == "native") & (df["victim"] == "mean")] if len(df) else df
    df.attrs["grad_evals"] = {a: float(g) for a, g in zip(native_rows.get("attack", ()),
                                                          native_rows.get("grad_evals_mean", ()))
                              if math.isfinite(g)}
    df.attrs["eps"], df.attrs["mode"] = eps, mode
    df.attrs["cells"], df.attrs["cached_cells"] = len(attack_list) * (1 + len(budgets)), hits
    return df


def _flag_compute(df, max_grads):
    """compare's max_grads and over_max_grads columns, and a warning naming the attacks that
    spent more than max_grads per image or whose spending nobody counted."""
    if not len(df):
        return
    spent = df["grad_evals_mean"].astype(float)
    df["max_grads"] = float("nan") if max_grads is None else float(max_grads)
    df["over_max_grads"] = (spent > max_grads) if max_grads is not None else False
    if max_grads is None:
        return
    over = list(dict.fromkeys(df.loc[df["over_max_grads"], "attack"]))
    unknown = list(dict.fromkeys(df.loc[spent.isna(), "attack"]))
    if over or unknown:
        parts = ([f"{over} spent more than max_grads={max_grads} gradient passes per image "
                  "(over_max_grads)"] if over else []) + \
                ([f"{unknown} did not report what they spent"] if unknown else [])
        warnings.warn(f"compare: attacks {'; attacks '.join(parts)}", stacklevel=3)


def _rows(attack, how, r, victim_names, result, seed, n_boot, clean_error, targeted=False):
    fooled, failed = result["fooled"], result["failed"]  # [V, n]
    n = fooled.shape[1]
    mean, judged = mean_over_victims(fooled, failed)
    outcomes = [(name, f.astype(np.float64)[~bad], int(bad.sum()))
                for name, f, bad in zip(victim_names, fooled, failed)]
    outcomes.append(("mean", mean[judged], int((~judged).sum())))
    common = {"attack": attack, "how": how, "rmse": r, "targeted": bool(targeted), "n_images": n,
              "n_unreachable": int((~result["reached"]).sum()),
              "rmse_mean": float(result["rmse_image"].mean()),
              "linf_mean": float(result["linf_image"].mean())}
    for key in SPENT:  # what the attack spent per image (NaN: not counted)
        values = np.asarray(result.get(key, np.full(n, np.nan)), np.float64)
        common[f"{key}_mean"] = float(values.mean()) if n else float("nan")
    rows = []
    clean_error = list(clean_error) + [float(np.mean(clean_error))]
    for (name, outcome, n_failed), clean in zip(outcomes, clean_error):
        low, high = bootstrap_ci(outcome, seed, n_boot)
        rows.append({**common, "victim": name,
                     "asr": float(outcome.mean()) if outcome.size else float("nan"),
                     "ci_low": low, "ci_high": high, "clean_error": float(clean),
                     "n_failed": n_failed})
    order = ("attack", "how", "rmse", "targeted", "victim", "asr", "ci_low", "ci_high",
             "clean_error", "n_images", "n_failed", "n_unreachable", "rmse_mean", "linf_mean",
             "grad_evals_mean", "forward_evals_mean")
    return [{k: row[k] for k in order} for row in rows]


def _per_image(attack, how, r, victim_names, kept, result):
    v, n = result["fooled"].shape
    return pd.DataFrame({
        "attack": np.repeat(np.array([attack], dtype=object), v * n),
        "rmse": np.repeat(np.array([r], dtype=object), v * n),
        "how": how,
        "image": np.tile(kept, v),
        "victim": np.repeat(np.array(victim_names, dtype=object), n),
        "fooled": result["fooled"].reshape(-1).astype(bool),
        "failed": result["failed"].reshape(-1).astype(bool),
        "reached": np.tile(result["reached"], v),
        "rmse_image": np.tile(result["rmse_image"], v),
        "linf_image": np.tile(result["linf_image"], v)})


# ----------------------------------------------------------------------------- summaries

def comparison_table(df, victim="mean"):
    """One row per attack: its own ℓ∞ and RMSE, native ASR, and "ASR [low, high]" at each
    budget, for one victim (default the mean), as a pandas DataFrame. From a frame of `compare`
    (which carries the per-image outcomes) also the curve summaries (fairattack.curves):
    rmse50 ("r [low, high]", or "not reached"), auc, rank (native) and at each budget rank@r
    and shift@r (native rank − rank at r)."""
    for column in ("attack", "rmse", "victim", "asr", "ci_low", "ci_high", "rmse_mean",
                   "linf_mean"):
        if column not in getattr(df, "columns", ()):
            raise ValueError(f"df: missing column {column!r}; expected a compare() table")
    if victim not in set(df["victim"]):
        raise ValueError(f"victim must be one of {sorted(set(df['victim']))}, got {victim!r}")
    sub = df[df["victim"] == victim]
    out = []
    for attack in dict.fromkeys(sub["attack"]):
        rows = sub[sub["attack"] == attack]
        native = rows[rows["how"] == "native"].iloc[0]
        entry = {"attack": attack, "linf": native["linf_mean"], "rmse": native["rmse_mean"],
                 "clean_error": native.get("clean_error", float("nan")), "asr": native["asr"]}
        for _, row in rows[rows["how"] != "native"].iterrows():
            entry[f"asr@{row['rmse']:g}"] = (f"{row['asr']:.3f} [{row['ci_low']:.3f}, "
                                              f"{row['ci_high']:.3f}]")
        out.append(entry)
    table = pd.DataFrame(out)
    if getattr(df, "clean_per_image", None) is not None and "how" in df.columns:
        _add_curve_columns(table, df, victim)
    return table


def _add_curve_columns(table, df, victim):
    """comparison_table's rmse50, auc, rank, rank@r and shift@r columns (in place)."""
    from .curves import ranks, summaries

    summary = summaries(df)
    summary = summary[summary["victim"] == victim].set_index("attack")
    order = ranks(df)
    order = order[order["victim"] == victim]

    def text(row):
        if not row["rmse50_reached"]:
            return "not reached"
        if math.isnan(row["rmse50_low"]):
            return f"{row['rmse50']:.2f}"
        return f"{row['rmse50']:.2f} [{row['rmse50_low']:.2f}, {row['rmse50_high']:.2f}]"

    attacks = table["attack"]
    table["rmse50"] = [text(summary.loc[a]) if a in summary.index else "" for a in attacks]
    table["auc"] = [summary.loc[a, "auc"] if a in summary.index else np.nan for a in attacks]
    native = order[order["rmse"].map(lambda r: isinstance(r, str))].set_index("attack")
    table["rank"] = [int(native.loc[a, "rank"]) for a in attacks]
    matched = order[order["rmse"].map(lambda r: not isinstance(r, str))]
    for r in sorted({float(v) for v in matched["rmse"]}):
        cell = matched[matched["rmse"].map(float) == r].set_index("attack")
        table[f"rank@{r:g}"] = [int(cell.loc[a, "rank"]) for a in attacks]
        table[f"shift@{r:g}"] = [int(cell.loc[a, "shift"]) for a in attacks]
