"""`run_study`: the paper's experiment grid (surrogates x optimizers x settings), resumable.

Every cell attacks the surrogate's images with one optimizer under one setting, measures the
perturbation on the uint8 adversarial images and evaluates every victim on them (ASR = victim error
rate, SPEC §5). Finished cells are written to disk as soon as they finish, so a run that is stopped
(Ctrl-C, a crash, a lost machine) resumes where it stopped:

    out_dir/
      results.csv, results.json      the table so far (rewritten after every cell)
      cells/<cell>.json              one finished cell: its row, the full attack config and a spec
                                     of its inputs (a cell whose spec changed is recomputed)
      cells/<cell>.images.csv        the cell's per-image measurements
      images/<surrogate>/<setting>/<optimizer>/<name>.png   the adversarial images (uint8)
      selection/<surrogate>.npz      the surrogate's selected clean images (SPEC §6)
"""

import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._model import Model, _device_index, load_model
from .attack import attack
from .settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS, make_config, optimizer_index

METRICS = ("rmse", "linf", "l2", "l1", "l0", "psnr", "ssim", "loss", "iterations")
COLUMNS = ("surrogate", "optimizer", "setting", "n_images", "n_skipped", "n_failed") + METRICS \
    + ("surrogate_fooling_rate",)
#: N of the paper's selection when a folder is given and n_images is not.
PAPER_N = 1000


# ----------------------------------------------------------------------------- small helpers

def _safe(name):
    """A file-name-safe version of a model/optimizer/setting name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "_"


def _cell_key(surrogate, setting, optimizer):
    return f"{_safe(surrogate)}__{_safe(setting)}__{_safe(optimizer)}"


def _write_atomic(path, write):
    """write(file object) into path.tmp, then rename over path (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_bytes(obj):
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.integer,)):
            return int(value)
        if isinstance(value, (np.floating, float)):
            value = float(value)
            return value if math.isfinite(value) else str(value)  # "nan", "inf"
        return value

    return (json.dumps(clean(obj), indent=1, sort_keys=False) + "\n").encode()


def _float(value):
    """JSON cell value back to float ("nan"/"inf" strings included)."""
    return float(value) if value is not None else float("nan")


# ----------------------------------------------------------------------------- models

def _model_dict(models, what):
    """names / Models / a dict name -> (name or Model) -> ordered dict name -> spec."""
    if isinstance(models, (str, os.PathLike, Model)):
        models = [models]
    if isinstance(models, dict):
        items = list(models.items())
    else:
        items = []
        for m in models:
            if isinstance(m, Model):
                items.append((m.name, m))
            elif isinstance(m, (str, os.PathLike)):
                name = os.fspath(m)
                if name.endswith(".pt") or os.sep in name:
                    name = Path(name).stem
                items.append((name, m))
            else:
                raise TypeError(f"{what}: expected model names, TorchScript paths or "
                                f"fairattack Models, got {type(m).__name__}")
    if not items:
        raise ValueError(f"{what}: expected at least one model")
    out = {}
    for name, spec in items:
        if name in out:
            raise ValueError(f"{what}: the name {name!r} appears twice")
        out[str(name)] = spec
    return out


def _is_file_spec(spec):
    return isinstance(spec, os.PathLike) or (isinstance(spec, str) and (
        spec.endswith(".pt") or os.sep in spec or os.path.isfile(spec)))


def _load(name, spec, device):
    """A fairattack Model from a registry name, a TorchScript path or a Model."""
    if isinstance(spec, Model):
        return spec
    if _is_file_spec(spec):
        return load_model(os.fspath(spec), device=device, name=name)
    from . import models

    return models.get_model(spec, device=device)


def input_size(spec):
    """Square input size (pixels) of a registry name, an exported .pt file or a Model from one;
    None when unknown."""
    from . import models

    size = None
    if isinstance(spec, Model):
        spec = spec.source if isinstance(spec.source, (str, os.PathLike)) else None
    if spec is None:
        return None
    if _is_file_spec(spec):
        try:
            size = models.read_metadata(os.fspath(spec)).get("input_size")
        except Exception:  # noqa: BLE001 - not an exported file: size unknown
            return None
    elif spec in models.available_models():
        size = models.input_size(spec)
    if size is None:
        return None
    if isinstance(size, int):
        return size
    height, width = (int(s) for s in size)
    if height != width:
        raise ValueError(f"input size {height}x{width} is not square; pass image_size=...")
    return height


# ----------------------------------------------------------------------------- data

class _Data:
    """The study's images: a folder (selected per surrogate, cached) or explicit arrays."""

    def __init__(self, data, labels, n_images, seed, batch_size, out_dir, progress):
        self.out_dir, self.seed, self.batch_size, self.progress = out_dir, seed, batch_size, progress
        self.arrays = None
        if isinstance(data, tuple):
            if len(data) not in (2, 3):
                raise ValueError("data: expected a folder, a Dataset, or a tuple "
                                 "(images, labels) or (images, labels, names)")
            images, y = np.asarray(data[0]), np.asarray(data[1])
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"data: images must be uint8 [N, H, W, 3], got {images.dtype} "
                                 f"{images.shape}")
            if y.shape != (images.shape[0],):
                raise ValueError(f"data: {images.shape[0]} images but labels of shape {y.shape}")
            names = list(data[2]) if len(data) == 3 else [f"{i:05d}" for i in range(len(y))]
            if len(names) != len(y):
                raise ValueError(f"data: {len(y)} images but {len(names)} names")
            if n_images is not None:
                images, y, names = images[:n_images], y[:n_images], names[:n_images]
            digest = hashlib.sha1(images.tobytes())
            digest.update(y.astype(np.int64).tobytes())
            self.arrays = (images, y.astype(np.int64), names)
            self.spec = {"kind": "arrays", "n": int(len(y)), "shape": list(images.shape),
                         "sha1": digest.hexdigest()}
        else:
            from . import data as fa_data

            self.dataset = data if isinstance(data, fa_data.Dataset) else \
                fa_data.open_dataset(data, labels=labels)
            self.n = PAPER_N if n_images is None else int(n_images)
            self.spec = {"kind": "folder", "root": str(Path(self.dataset.root).resolve()),
                         "files": len(self.dataset), "n": self.n, "seed": int(seed)}

    def cell_spec(self, size):
        spec = dict(self.spec)
        if self.arrays is None:
            spec["size"] = size
        return spec

    def get(self, surrogate_name, model, size):
        """(images, labels, names) of a surrogate; a folder's selection is cached on disk."""
        if self.arrays is not None:
            return self.arrays
        if size is None:
            raise ValueError(f"surrogate {surrogate_name!r}: unknown input size; pass "
                             "image_size=... to run_study")
        from . import data as fa_data

        spec = self.cell_spec(size)
        path = Path(self.out_dir) / "selection" / f"{_safe(surrogate_name)}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if json.loads(str(z["spec"])) == spec:
                        return z["images"], z["labels"], [str(s) for s in z["names"]]
            except (OSError, ValueError, KeyError):
                pass  # unreadable or stale: select again
        images, y, names = fa_data.select(self.dataset, model, self.n, size, seed=self.seed,
                                          batch_size=self.batch_size, progress=self.progress)
        if len(names) == 0:
            raise RuntimeError(f"surrogate {surrogate_name!r} classifies none of the images in "
                               f"{self.spec['root']} correctly")
        _write_atomic(path, lambda f: np.savez(f, images=images, labels=y,
                                               names=np.array(names, dtype=str),
                                               spec=json.dumps(spec)))
        return images, y, names


# ----------------------------------------------------------------------------- cells

def _cell_overrides(overrides, optimizer, setting):
    """Global overrides, then those given per setting, then per optimizer ({"Adam": {...}})."""
    out = {}
    nested = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            nested[key] = value
        elif value is not None:
            out[key] = value
    for key in (setting, optimizer):
        out.update({k: v for k, v in nested.get(key, {}).items() if v is not None})
    return out


def _error_rate(model, images, labels, batch_size):
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(model.predict(images, batch_size=batch_size) != labels))


def _evaluate(victims, images, labels, batch_size):
    """Error rate of every victim on the images: {victim name: error}."""
    if len(labels) == 0:
        return {name: float("nan") for name in victims}
    from .evaluate import evaluate

    series = evaluate(victims, images, labels, batch_size=batch_size)
    return {name: float(series[name]) for name in victims}


def _run_cell(surrogate, model, victims, images, labels, names, optimizer, setting, overrides,
              rounding, batch_size, out_dir, save_images, progress):
    start = time.perf_counter()
    res = attack(model, images, labels, optimizer=optimizer, setting=setting,
                 batch_size=batch_size, rounding=rounding, progress=progress, **overrides)
    ok = np.asarray(res.attacked)
    adv, y = res.images[ok], np.asarray(labels)[ok]
    row = {"surrogate": surrogate}
    row.update({k: v for k, v in res.summary().items() if k in COLUMNS})
    row["optimizer"], row["setting"] = optimizer, setting
    row["surrogate_fooling_rate"] = _error_rate(model, adv, y, batch_size)
    errors = _evaluate(victims, adv, y, batch_size)
    for name, value in errors.items():
        row[f"err_{name}"] = value
    row["asr"] = float(np.mean(list(errors.values()))) if errors else float("nan")
    row["seconds"] = time.perf_counter() - start

    key = _cell_key(surrogate, setting, optimizer)
    frame = res.to_frame()
    frame.insert(0, "name", names)
    _write_atomic(Path(out_dir) / "cells" / f"{key}.images.csv",
                  lambda f: f.write(frame.to_csv(index=False).encode()))
    if save_images:
        from .data import save_png

        folder = Path(out_dir) / "images" / _safe(surrogate) / _safe(setting) / _safe(optimizer)
        save_png(res.images, names, folder)
    return row, res.config


def _read_cell(path):
    try:
        cell = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return cell if isinstance(cell, dict) and "row" in cell and "spec" in cell else None


def _frame(rows, victim_names=None):
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS) + ["asr", "seconds"])
    errs = [c for c in df.columns if c.startswith("err_")]
    if victim_names is not None:
        errs = [f"err_{v}" for v in victim_names]
    columns = [c for c in COLUMNS if c in df.columns] + errs + ["asr", "seconds"]
    df = df.reindex(columns=columns)
    for c in ("n_images", "n_skipped", "n_failed"):
        df[c] = df[c].astype("int64")
    numeric = [c for c in df.columns if c not in ("surrogate", "optimizer", "setting")]
    df[numeric] = df[numeric].apply(pd.to_numeric)
    return df.reset_index(drop=True)


def _write_results(out_dir, df):
    out_dir = Path(out_dir)
    _write_atomic(out_dir / "results.csv", lambda f: f.write(df.to_csv(index=False).encode()))
    _write_atomic(out_dir / "results.json",
                  lambda f: f.write(df.to_json(orient="records", indent=1).encode()))


def load_results(out_dir):
    """The table of a study folder: results.csv if present, else rebuilt from cells/*.json."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"out_dir={str(out_dir)!r} is not a directory")
    csv = out_dir / "results.csv"
    if csv.is_file():
        return pd.read_csv(csv)
    cells = [c for c in map(_read_cell, sorted((out_dir / "cells").glob("*.json"))) if c]
    if not cells:
        raise FileNotFoundError(f"{out_dir}: no results.csv and no finished cells")
    # the grid's order is not recorded: surrogates by name, then settings and optimizers in
    # their canonical order (that of the default grid)
    optimizer_order = list(dict.fromkeys(PAPER_OPTIMIZERS + OPTIMIZERS))

    def rank(cell):
        row = cell["row"]
        return (str(row.get("surrogate")),
                SETTINGS.index(row["setting"]) if row.get("setting") in SETTINGS else len(SETTINGS),
                optimizer_order.index(row["optimizer"]) if row.get("optimizer") in optimizer_order
                else len(optimizer_order))

    cells.sort(key=rank)
    return _frame([{k: (_float(v) if k not in ("surrogate", "optimizer", "setting") else v)
                    for k, v in c["row"].items()} for c in cells])


# ----------------------------------------------------------------------------- the study

def _check_arguments(data, n_images, seed, batch_size, rounding, image_size, device):
    """Checks of run_study's plain arguments, before any model is loaded."""
    from .data import Dataset

    def positive(value, name, optional):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}, expected a positive integer"
                             + (" or None" if optional else ""))

    if not isinstance(data, (tuple, str, os.PathLike, Dataset)):
        raise ValueError(f"data: expected a folder, a Dataset or a tuple (images, labels[, names]),"
                         f" got {type(data).__name__}")
    positive(n_images, "n_images", True)
    positive(batch_size, "batch_size", False)
    positive(image_size, "image_size", True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}, expected a non-negative integer")
    if rounding not in ("round", "truncate"):
        raise ValueError(f"rounding={rounding!r}, expected 'round' or 'truncate'")
    _device_index(device)  # ValueError for an unknown device, RuntimeError for a missing GPU


def run_study(surrogates, victims, data, optimizers=PAPER_OPTIMIZERS, settings=("const_loss",),
              out_dir="fairattack-study", n_images=None, seed=0, batch_size=16, overrides=None,
              resume=True, progress=True, save_images=True, *, labels=None, device="cpu",
              rounding="round", image_size=None):
    """Run every (surrogate, optimizer, setting) cell and return the table (pandas DataFrame).

    surrogates, victims: registry names (`fairattack.models.available_models()`), TorchScript
        paths, fairattack Models, or a dict name -> any of those.
    data: a folder in a layout `fairattack.data.open_dataset` reads (or a Dataset; `labels` names a
        val label file), selected per surrogate at its input size by the paper's protocol
        (`fairattack.data.select`: seeded shuffle, first n_images it classifies correctly;
        default N = 1000); or explicit uint8 NHWC (images, labels[, names]), used as given
        (the first n_images if given; images the surrogate gets wrong are skipped by the attack).
    optimizers, settings: names from fairattack.OPTIMIZERS and fairattack.SETTINGS.
    overrides: hyper-parameters for every cell (eps=..., max_iter=...), optionally nested per
        setting or optimizer: {"eps": 8, "GD": {"max_iter": 50}}.
    resume: skip the cells already finished in out_dir with the same inputs (recomputing those
        whose inputs changed); resume=False recomputes everything.
    image_size: the surrogate's square input size when it cannot be read from the model.

    One row per cell: surrogate, optimizer, setting, n_images (attacked), n_skipped, n_failed,
    the means over attacked images of rmse, linf, l2, l1, l0, psnr, ssim, loss (CE nats) and
    iterations, surrogate_fooling_rate (the surrogate's error on the uint8 adversarial images),
    err_<victim> per victim, asr (their mean) and seconds. Ctrl-C loses only the running cell.
    """
    from tqdm.auto import tqdm

    optimizers = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    settings = [settings] if isinstance(settings, str) else list(settings)
    if not optimizers:
        raise ValueError("optimizers: expected at least one optimizer")
    if not settings:
        raise ValueError("settings: expected at least one setting")
    # canonical names ("adam" -> "Adam", "M-SVAG" -> "MSVAG"), each once, in the given order
    optimizers = list(dict.fromkeys(OPTIMIZERS[optimizer_index(o)] for o in optimizers))
    for setting in settings:
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; expected one of {SETTINGS}")
    settings = list(dict.fromkeys(settings))
    _check_arguments(data, n_images, seed, batch_size, rounding, image_size, device)
    surrogate_specs = _model_dict(surrogates, "surrogates")
    victim_specs = _model_dict(victims, "victims")
    for optimizer in optimizers:  # validates the overrides before any work
        for setting in settings:
            make_config(optimizer, setting, **_cell_overrides(overrides, optimizer, setting))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = _Data(data, labels, n_images, seed, batch_size, out_dir, progress)

    grid = [(s, st, o) for s in surrogate_specs for st in settings for o in optimizers]
    sizes = {s: image_size or input_size(spec) for s, spec in surrogate_specs.items()}

    def spec_of(s, st, o):
        return {"surrogate": s, "optimizer": o, "setting": st, "victims": list(victim_specs),
                "overrides": _cell_overrides(overrides, o, st), "rounding": rounding,
                "data": source.cell_spec(sizes[s])}

    rows = {}
    if resume:
        for cell in grid:
            found = _read_cell(out_dir / "cells" / f"{_cell_key(*cell)}.json")
            if found is None:
                continue
            if json.loads(_json_bytes(found["spec"])) == json.loads(_json_bytes(spec_of(*cell))):
                rows[cell] = found["row"]
            else:
                warnings.warn(f"cell {cell}: its inputs changed since it was computed; "
                              "recomputing it", RuntimeWarning, stacklevel=2)

    def table():
        return _frame([{k: (_float(v) if k not in ("surrogate", "optimizer", "setting") else v)
                        for k, v in rows[c].items()} for c in grid if c in rows],
                      list(victim_specs))

    victim_models = None
    bar = tqdm(total=len(grid), initial=len(rows), desc="study", unit="cell", disable=not progress)
    try:
        for s, surrogate_spec in surrogate_specs.items():
            todo = [c for c in grid if c[0] == s and c not in rows]
            if not todo:
                continue
            if victim_models is None:
                victim_models = {v: _load(v, spec, device) for v, spec in victim_specs.items()}
            model = _load(s, surrogate_spec, device)
            images, y, names = source.get(s, model, sizes[s])
            for cell in todo:
                _, setting, optimizer = cell
                bar.set_postfix_str(f"{s} {setting} {optimizer}")
                row, config = _run_cell(s, model, victim_models, images, y, names, optimizer,
                                        setting, _cell_overrides(overrides, optimizer, setting),
                                        rounding, batch_size, out_dir, save_images, False)
                record = {"row": row, "spec": spec_of(*cell), "config": config}
                _write_atomic(out_dir / "cells" / f"{_cell_key(*cell)}.json",
                              lambda f, r=record: f.write(_json_bytes(r)))
                rows[cell] = json.loads(_json_bytes(row))
                _write_results(out_dir, table())
                bar.update(1)
    finally:
        bar.close()
    df = table()
    _write_results(out_dir, df)
    return df
