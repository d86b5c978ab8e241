"""The fair transfer leaderboard: every attack (fairattack's own, `NAME=OPT,k=v` specs, peers by
name or object) on every surrogate, evaluated on every victim natively and at matched RMSE, with
the curve summaries (docs/fair-comparison.md#curve-summaries), in one call.

    import fairattack as fa
    board = fa.leaderboard(["efficientnet-lite0", "mobilenet-v2"], images, labels,
                           attacks=["FGSM", "PGD", "MI-FGSM", "ta:PGD,steps=10,alpha=1.6"],
                           victims=["efficientnet-lite1", "efficientnet-lite2"],
                           rmse=[1, 2, 4, 8], out="board")

A cell is one (surrogate, attack): `fa.compare` of that attack on that surrogate. With `out`, each
finished cell is kept under out/cells keyed by what determines it (the images and labels, the
surrogate's and victims' contents, the attack's identity, the budgets, ε, mode, seed, bootstrap
and fairattack's version): the same call resumes, reusing finished cells, and a cell whose
inputs changed is recomputed with a RecomputeWarning that says what changed. Callables and
peer objects have no identity and always run. Every surrogate keeps only the images it
classifies correctly (compare's rule), so its attacks share images and ranks compare them.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _core
from ._model import Model, load_spec, model_digest, model_specs, victims_of
from ._validate import images_f32, int_at_least, labels_i64, positive_int
from .board_page import write_board
from .compare import _RESERVED, MODES, ComparisonFrame, _budgets, _eps, compare
from .curves import ranks, summaries
from .spec import ATTACK_KEYS, coerce
from .store import digest_json, digest_parts, read_json, safe_name, write_atomic, write_json
from .study.images import RecomputeWarning


def _digest_or_none(model):
    try:
        return model_digest(model)
    except (ValueError, TypeError, OSError):
        return None  # an object fairattack cannot read the contents of: no cache


def _models(specs, what, device):
    if isinstance(specs, dict) and all(isinstance(m, Model) or hasattr(m, "predict")
                                       for m in specs.values()):
        return dict(specs)
    return {name: load_spec(name, spec, device)
            for name, spec in model_specs(specs, what).items()}


class _Cells:
    """out/cells: one finished (surrogate, attack) comparison per file, keyed by its parts."""

    def __init__(self, out):
        self.folder = None if out is None else Path(out) / "cells"

    def _path(self, surrogate, attack, suffix):
        tag = digest_json([surrogate, attack])[:8]
        return self.folder / f"{safe_name(surrogate)}__{safe_name(attack)}-{tag}{suffix}"

    def get(self, surrogate, attack, parts):
        """The stored frame under these parts, or None (warning why when the stored one's
        parts differ)."""
        if self.folder is None or parts is None:
            return None
        path = self._path(surrogate, attack, ".json")
        if not path.is_file():
            return None
        try:
            record = read_json(path)
        except (OSError, ValueError):
            return None
        if record.get("key") != digest_json(parts):
            from .store import explain_change

            warnings.warn(f"recomputing cell {surrogate}/{attack}: "
                          f"{explain_change(record.get('parts') or {}, parts)}",
                          RecomputeWarning, stacklevel=3)
            return None
        try:
            with np.load(self._path(surrogate, attack, ".npz"), allow_pickle=False) as z:
                examples = z["examples"]
        except (OSError, KeyError, ValueError):
            return None
        return _frame_of(record, attack, examples)

    def put(self, surrogate, attack, parts, frame):
        if self.folder is None or parts is None:
            return
        examples = frame.examples.get(attack, np.zeros((0, 1, 1, 3), np.uint8))
        write_atomic(self._path(surrogate, attack, ".npz"),
                     lambda f: np.savez(f, examples=examples))
        write_json(self._path(surrogate, attack, ".json"), {
            "key": digest_json(parts), "parts": parts,
            "rows": json.loads(pd.DataFrame(frame).to_json(orient="records")),
            "per_image": json.loads(frame.per_image.to_json(orient="records")),
            "clean": json.loads(frame.clean_per_image.to_json(orient="records")),
            "example_images": [int(i) for i in frame.example_images],
            "attrs": {k: frame.attrs[k] for k in ("eps", "mode", "seed", "n_boot", "grad_evals")}})


def _frame_of(record, attack, examples):
    frame = ComparisonFrame(record["rows"])
    frame.per_image = pd.DataFrame(record["per_image"])
    frame.clean_per_image = pd.DataFrame(record["clean"])
    frame.examples = {attack: examples} if len(examples) else {}
    frame.example_images = np.asarray(record["example_images"], np.int64)
    frame.attrs.update(record["attrs"])
    return frame


def _combine(frames):
    """One surrogate's per-attack frames as one compare frame (the same images and victims)."""
    df = ComparisonFrame(pd.concat([pd.DataFrame(f) for f in frames], ignore_index=True))
    df.per_image = pd.concat([f.per_image for f in frames], ignore_index=True)
    df.clean_per_image = frames[0].clean_per_image
    df.examples = {k: v for f in frames for k, v in f.examples.items()}
    df.example_images = frames[0].example_images
    df.attrs.update({k: frames[0].attrs[k] for k in ("eps", "mode", "seed", "n_boot")})
    df.attrs["grad_evals"] = {k: v for f in frames for k, v in f.attrs["grad_evals"].items()}
    return df


def checked_budgets(rmse, eps):
    """The sorted RMSE budgets, each in (0, eps] (ValueError naming rmse otherwise)."""
    budgets = _budgets(rmse)
    if budgets[-1] > _eps(eps):
        raise ValueError(f"rmse: the budget {budgets[-1]:g} is above eps={eps:g}; an RMSE "
                         "budget cannot exceed the l-inf budget (RMSE <= l-inf)")
    return budgets


def leaderboard(surrogates, images, labels, attacks, victims, rmse=(1, 2, 4, 8), eps=16,
                mode="rescale", out=None, n_boot=1000, seed=0, batch_size=16, examples=3,
                device="cpu", progress=False, max_grads=None):
    """Every attack on every surrogate, natively and at each RMSE budget, with curve summaries.

    surrogates: model names, TorchScript paths, fairattack Models, or a dict name -> any of them.
    images, labels: uint8 (or float) NHWC RGB in [0, 255] and class indices; each surrogate
        keeps those it classifies correctly.
    attacks: as for fa.compare (optimizer names, NAME=OPT[:SETTING][,k=v] texts, dicts, peers by
        name "ta:PGD,steps=10", (name, fn | peer object | images)).
    victims: as for fa.compare (names and paths are loaded on `device`).
    rmse, eps, mode, n_boot, seed, batch_size, max_grads: as for fa.compare (max_grads: every
        fairattack attack within K gradient passes per image; peers that spent more are
        flagged in over_max_grads). examples: adversarial images
        kept per attack for the page. out: a folder: cells are kept there (resumable) and
        leaderboard.csv, leaderboard.md and leaderboard.html are written into it.

    Returns the tidy table (one row per surrogate, attack, victim and "mean"): n_images,
    grad_evals (mean per image, where the attack reports it), over_max_grads, linf, rmse (its
    own output), asr with asr_low/asr_high, asr@r with asr@r_low/asr@r_high per budget, rmse50 with
    rmse50_low/rmse50_high, auc, rank and rank@r/shift@r. table.attrs: "frames" {surrogate:
    compare frame}, "cells", "reused" (cells taken from out), "files" (written paths).
    """
    eps = _eps(eps)
    budgets = checked_budgets(rmse, eps)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n_boot = int_at_least(n_boot, "n_boot", 0)
    seed = int_at_least(seed, "seed", 0)
    batch_size = positive_int(batch_size, "batch_size")
    examples = int_at_least(examples, "examples", 0)
    if max_grads is not None:
        max_grads = positive_int(max_grads, "max_grads")
    x = images_f32(images)
    y = labels_i64(labels, x.shape[0])
    if isinstance(attacks, (str, dict, tuple)):
        attacks = [attacks]
    attacks = list(attacks)
    if not attacks:
        raise ValueError("attacks: expected at least one attack")
    specs = [coerce(a, f"attacks[{i}]", shape=x.shape, reserved=_RESERVED,
                    allowed=ATTACK_KEYS)
             for i, a in enumerate(attacks)]  # every name checked before any work
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"attacks: names must be unique, got {names}")
    surrogate_models = _models(surrogates, "surrogates", device)
    victim_models = victims_of(_models(victims, "victims", device)
                               if not hasattr(victims, "predict") else victims)
    victim_ids = {name: _digest_or_none(v) for name, v in victim_models.items()}
    common = {"images": digest_parts(x, y), "budgets": budgets, "eps": eps, "mode": mode,
              "seed": seed, "n_boot": n_boot, "examples": examples, "victims": victim_ids,
              "version": str(_core.VERSION)}
    if max_grads is not None:  # (boards without one keep their cells' keys)
        common["max_grads"] = max_grads
    cells = _Cells(out)
    work = [(s, a, spec) for s in surrogate_models for a, spec in zip(attacks, specs)]
    if progress:
        from tqdm.auto import tqdm

        work = tqdm(work, desc="leaderboard", unit="cell")
    by_surrogate, reused = {s: [] for s in surrogate_models}, []
    surrogate_ids = {s: _digest_or_none(m) for s, m in surrogate_models.items()}
    for surrogate, attack, spec in work:
        identity = spec.identity()
        cacheable = (spec.kind in ("fairattack", "images") or spec.peer is not None) and \
            surrogate_ids[surrogate] is not None and None not in victim_ids.values()
        if spec.kind == "images":
            identity = {"kind": "images", "digest": digest_parts(spec.images)}
        parts = dict(common, surrogate=surrogate_ids[surrogate], attack=identity) \
            if cacheable else None
        frame = cells.get(surrogate, spec.name, parts)
        if frame is not None:
            reused.append((surrogate, spec.name))
        else:
            frame = compare(surrogate_models[surrogate], x, y, [attack], victim_models,
                            rmse=budgets, mode=mode, eps=eps, batch_size=batch_size,
                            progress=False, seed=seed, n_boot=n_boot, examples=examples,
                            max_grads=max_grads)
            cells.put(surrogate, spec.name, parts, frame)
        by_surrogate[surrogate].append(frame)
    frames = {s: _combine(f) for s, f in by_surrogate.items()}
    table = board_table(frames)
    table.attrs["frames"] = frames
    table.attrs["cells"], table.attrs["reused"] = len(surrogate_models) * len(specs), reused
    if out is not None:
        meta = {"eps": eps, "mode": mode, "rmse": budgets, "victims": list(victim_models),
                "surrogates": list(surrogate_models), "n_given": int(len(y)), "seed": seed,
                "n_boot": n_boot}
        table.attrs["files"] = write_board(out, table, frames, x, meta)
    return table


def board_table(frames):
    """The leaderboard's tidy table from {surrogate: compare frame} (leaderboard's Returns)."""
    out = []
    for surrogate, df in frames.items():
        summary = summaries(df).set_index(["attack", "victim"])
        order = ranks(df)
        is_native = df["rmse"].map(lambda r: isinstance(r, str))
        budgets = sorted({float(r) for r in df.loc[~is_native, "rmse"]})
        spent = df.attrs.get("grad_evals", {})
        for (attack, victim), rows in df.groupby(["attack", "victim"], sort=False):
            native = rows[is_native.loc[rows.index]].iloc[0]
            mine = order[(order["attack"] == attack) & (order["victim"] == victim)]
            entry = {"surrogate": surrogate, "attack": attack, "victim": victim,
                     "n_images": int(native["n_images"]),
                     "grad_evals": spent.get(attack, np.nan),
                     "over_max_grads": bool(native.get("over_max_grads", False)),
                     "linf": float(native["linf_mean"]), "rmse": float(native["rmse_mean"]),
                     "asr": float(native["asr"]), "asr_low": float(native["ci_low"]),
                     "asr_high": float(native["ci_high"])}
            for r in budgets:
                row = rows[rows["rmse"].map(lambda v, r=r: not isinstance(v, str)
                                            and float(v) == r)].iloc[0]
                entry[f"asr@{r:g}"] = float(row["asr"])
                entry[f"asr@{r:g}_low"] = float(row["ci_low"])
                entry[f"asr@{r:g}_high"] = float(row["ci_high"])
            s = summary.loc[(attack, victim)]
            entry.update({"rmse50": s["rmse50"], "rmse50_low": s["rmse50_low"],
                          "rmse50_high": s["rmse50_high"], "auc": s["auc"]})
            for _, row in mine.iterrows():
                if isinstance(row["rmse"], str):
                    entry["rank"] = int(row["rank"])
                else:
                    entry[f"rank@{float(row['rmse']):g}"] = int(row["rank"])
                    entry[f"shift@{float(row['rmse']):g}"] = int(row["shift"])
            out.append(entry)
    return pd.DataFrame(out)
