"""`run_study`: the paper's experiment grid (surrogates x settings x attacks), content-addressed,
resumable and shardable over processes (torchrun) and machines that share the output folder.

A cell is one surrogate attacked by one attack (an optimizer with hyper-parameters and input
transforms) under one setting. Its key is a hash of everything that determines it: the surrogate's
file, the resolved configuration, the selected images and labels, and the fairattack version. A
cell on disk under another key is recomputed, with a `RecomputeWarning` that says which part
changed; one under the same key is never recomputed.

Work is split into items (cell x chunk of `chunk_size` images). An item crafts its chunk once
(adversarial PNGs and per-image records: status, metrics, loss, iterations, alpha) and evaluates
every victim on it (per-image predictions); a later run with another victim only evaluates. Under
`torchrun`, every rank takes items (a lock per item), and rank 0 assembles the table, which is the
table one process gives. The files are described in `fairattack.store`.
"""

import inspect
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _core
from ._model import Model, _device_index, load_model
from .attack import attack
from .settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS, make_config, optimizer_index
from .store import (StudyFolder, digest_array, digest_bytes, digest_file, digest_files,
                    digest_images, digest_json, locked, png_names, safe_name, sweep_temps,
                    to_json)

METRICS = ("rmse", "linf", "l2", "l1", "l0", "psnr", "ssim", "loss", "iterations")
COUNTS = ("n_images", "n_skipped", "n_failed", "n_stop_loss", "n_stop_rmse", "n_max_iter",
          "n_target_not_reached")
NAME_COLUMNS = ("surrogate", "attack", "optimizer", "setting")
COLUMNS = NAME_COLUMNS + COUNTS + METRICS + ("surrogate_fooling_rate",)
TAIL_COLUMNS = ("asr", "asr_ci_low", "asr_ci_high", "seconds")
#: N of the paper's selection when a folder is given and n_images is not.
PAPER_N = 1000
#: Bootstrap resamples of the ASR confidence interval.
BOOTSTRAP = 1000
#: Images per work item (the unit a process crafts and records at once).
CHUNK_SIZE = 256
#: Keyword arguments of `attack` that are input transforms (di_*, ti_*, si_*), not config fields.
TRANSFORMS = tuple(name for name, p in inspect.signature(attack).parameters.items()
                   if p.kind == p.KEYWORD_ONLY and name.startswith(("di_", "ti_", "si_")))
CONFIG_KEYS = tuple(f for f in make_config("GD") if f not in ("optimizer", "index_offset"))


class RecomputeWarning(RuntimeWarning):
    """A stored result no longer matches its inputs and is recomputed; the message says why."""


def _version():
    return str(_core.VERSION)


# ----------------------------------------------------------------------------- models

def _registry_name(name):
    from . import models

    by_lower = {n.lower(): n for n in models.available_models()}
    return by_lower.get(str(name).lower())


def _is_file_spec(spec):
    return isinstance(spec, os.PathLike) or (isinstance(spec, str) and (
        spec.endswith((".pt", ".pth", ".ts")) or os.sep in spec or os.path.isfile(spec)))


def _model_dict(models, what):
    """names / paths / Models / a dict name -> any of those -> ordered {name: spec}; registry
    names are canonical, unknown names and missing files raise before any work."""
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
                if _is_file_spec(m):
                    name = Path(name).stem
                else:
                    name = _registry_name(name) or name
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
            if _is_file_spec(spec):
                if not os.path.isfile(spec):
                    raise FileNotFoundError(f"{what}: model file {os.fspath(spec)!r} does not "
                                            "exist")
            elif _registry_name(spec) is None:
                from . import models

                raise ValueError(f"{what}: unknown model {spec!r}; expected a registered name "
                                 f"({', '.join(models.available_models())}) or a TorchScript "
                                 "file")
            else:
                spec = _registry_name(spec)
        elif not isinstance(spec, Model):
            raise TypeError(f"{what}[{name!r}]: expected a model name, a TorchScript path or a "
                            f"fairattack Model, got {type(spec).__name__}")
        out[name] = spec
    return out


def _load(name, spec, device):
    """A fairattack Model from a registry name, a TorchScript path or a Model."""
    if isinstance(spec, Model):
        return spec
    if _is_file_spec(spec):
        return load_model(os.fspath(spec), device=device, name=name)
    from . import models

    return models.get_model(spec, device=device)


def model_digest(spec):
    """The content digest of a model: its TorchScript file's bytes (a registered model's exported
    file), the bytes it was loaded from, or the weights of the torch module it was loaded from."""
    if isinstance(spec, Model):
        source = spec.source
        if isinstance(source, (str, os.PathLike)):
            return digest_file(source)
        if isinstance(source, (bytes, bytearray)):
            return digest_bytes(bytes(source))
        import torch

        if isinstance(source, torch.nn.Module):
            digest = [type(source).__qualname__]
            for key, value in source.state_dict().items():
                value = value.detach().cpu().contiguous()
                digest.append([key, str(value.dtype), list(value.shape),
                               digest_bytes(value.numpy().tobytes()
                                            if value.dtype != torch.bfloat16
                                            else value.float().numpy().tobytes())])
            return digest_json(digest)
        raise ValueError(f"model {spec.name!r}: cannot tell what it is made of (no file, bytes "
                         "or torch module); pass its TorchScript path")
    if _is_file_spec(spec):
        return digest_file(spec)
    from . import models

    return digest_file(models.export_registered(spec))


def input_size(spec):
    """Square input size (pixels) of a registry name, an exported .pt file or a Model from one;
    None when unknown."""
    from . import models

    if isinstance(spec, Model):
        spec = spec.source if isinstance(spec.source, (str, os.PathLike)) else None
    if spec is None:
        return None
    size = None
    if _is_file_spec(spec):
        try:
            size = models.read_metadata(os.fspath(spec)).get("input_size")
        except Exception:  # noqa: BLE001 - not an exported file: size unknown
            return None
    elif _registry_name(spec) is not None:
        size = models.input_size(_registry_name(spec))
    if size is None:
        return None
    if isinstance(size, int):
        return size
    height, width = (int(s) for s in size)
    if height != width:
        raise ValueError(f"input size {height}x{width} is not square; pass image_size=...")
    return height


# ----------------------------------------------------------------------------- attacks

def _check_transforms(transforms, where):
    for key, value in transforms.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)):
            raise TypeError(f"{where}: {key} must be a number, got {value!r}")
    if "di_prob" in transforms and not 0 <= transforms["di_prob"] <= 1:
        raise ValueError(f"{where}: di_prob={transforms['di_prob']}, expected a value in [0, 1]")
    for key in ("si_copies", "ti_kernel"):
        value = transforms.get(key)
        if value is not None and (value != int(value) or value < 0):
            raise ValueError(f"{where}: {key}={value}, expected a non-negative integer")
    kernel = transforms.get("ti_kernel")
    if kernel and int(kernel) % 2 == 0:
        raise ValueError(f"{where}: ti_kernel={kernel}, expected 0 (off) or an odd size")
    scale = transforms.get("di_min_scale")
    if scale is not None and not 0 < scale <= 1:
        raise ValueError(f"{where}: di_min_scale={scale}, expected a value in (0, 1]")


def _attack_list(optimizers, attacks):
    """[(name, optimizer, setting or None, params)] from optimizer names and named attack specs."""
    out = []
    for optimizer in optimizers:
        name = OPTIMIZERS[optimizer_index(optimizer)]
        out.append((name, name, None, {}))
    if attacks is None:
        attacks = {}
    if not isinstance(attacks, dict):
        raise TypeError("attacks: expected a dict name -> {'optimizer': ..., hyper-parameters}, "
                        f"got {type(attacks).__name__}")
    allowed = ("optimizer", "setting") + CONFIG_KEYS + TRANSFORMS
    for name, spec in attacks.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"attacks: every attack needs a non-empty str name, got {name!r}")
        if not isinstance(spec, dict):
            raise TypeError(f"attacks[{name!r}]: expected a dict with 'optimizer' and "
                            f"hyper-parameters, got {type(spec).__name__}")
        unknown = [k for k in spec if k not in allowed]
        if unknown:
            raise TypeError(f"attacks[{name!r}]: unknown key {unknown[0]!r}; expected "
                            f"'optimizer', 'setting' or one of {CONFIG_KEYS + TRANSFORMS}")
        if "optimizer" not in spec:
            raise ValueError(f"attacks[{name!r}]: 'optimizer' is missing")
        optimizer = OPTIMIZERS[optimizer_index(spec["optimizer"])]
        setting = spec.get("setting")
        if setting is not None:
            setting = _setting(setting, f"attacks[{name!r}]")
        params = {k: v for k, v in spec.items() if k not in ("optimizer", "setting")}
        out.append((name, optimizer, setting, params))
    names = [a[0].lower() for a in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"attacks: the name {out[i][0]!r} appears twice (names are "
                             "case-insensitive; an optimizer in `optimizers` is named by itself)")
    return out


def _setting(setting, what="settings"):
    if isinstance(setting, str):
        for s in SETTINGS:
            if s == setting.lower():
                return s
    raise ValueError(f"{what}: unknown setting {setting!r}; expected one of {SETTINGS}")


def _split_overrides(overrides, attack_names):
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
                canonical = OPTIMIZERS[optimizer_index(key)]
            except ValueError:
                raise ValueError(f"overrides: {key!r} is neither a setting ({', '.join(SETTINGS)})"
                                 ", an optimizer nor an attack of this study") from None
        if canonical in nested:
            raise ValueError(f"overrides: {key!r} appears twice (names are case-insensitive)")
        nested[canonical] = value
    return flat, nested


def _resolve(attack_entry, setting, flat, nested):
    """(config overrides, transforms, resolved config) of one cell: the study's overrides, then
    those per setting, per optimizer, the attack's own, then those per attack name."""
    name, optimizer, _, params = attack_entry
    merged = dict(flat)
    for layer in (nested.get(setting), nested.get(optimizer), params,
                  nested.get(name) if name != optimizer else None):
        merged.update(layer or {})
    merged = {k: v for k, v in merged.items() if v is not None}
    transforms = {k: merged.pop(k) for k in TRANSFORMS if k in merged}
    where = f"attack {name!r} ({setting})"
    _check_transforms(transforms, where)
    try:
        cfg = make_config(optimizer, setting, **merged)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    return merged, transforms, cfg


# ----------------------------------------------------------------------------- data

class _Selection:
    """One surrogate's images: arrays (explicit data) or a memory-mapped stored selection."""

    def __init__(self, images, labels, names, images_digest):
        self.images, self.labels, self.names = images, np.asarray(labels, np.int64), list(names)
        self.pngs = png_names(self.names)
        self.parts = {"images": images_digest, "labels": digest_array(self.labels),
                      "names": digest_json(self.names)}

    def __len__(self):
        return len(self.labels)


class _Data:
    """The study's images: a folder (selected per surrogate, cached under a content key) or
    explicit arrays."""

    def __init__(self, data, labels, n_images, seed, batch_size, folder, progress):
        self.folder, self.seed, self.batch_size, self.progress = folder, seed, batch_size, progress
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
            if y.dtype.kind not in "iu":
                raise TypeError(f"data: labels must be integers, got dtype {y.dtype}")
            names = [str(n) for n in data[2]] if len(data) == 3 else \
                [f"{i:05d}" for i in range(len(y))]
            if len(names) != len(y):
                raise ValueError(f"data: {len(y)} images but {len(names)} names")
            if len(set(names)) != len(names):
                raise ValueError("data: two images have the same name")
            if n_images is not None:
                images, y, names = images[:n_images], y[:n_images], names[:n_images]
            self.arrays = (images, y, names)
            self._selection = None
        else:
            from . import data as fa_data

            self.dataset = data if isinstance(data, fa_data.Dataset) else \
                fa_data.open_dataset(data, labels=labels)
            self.n = PAPER_N if n_images is None else int(n_images)
            self._files = None

    def _dataset_parts(self):
        if self._files is None:
            digests = digest_files(self.dataset.root, self.dataset.names,
                                   self.folder.root / "files.json")
            self._files = {"files": digest_json(list(zip(self.dataset.names, digests))),
                           "labels": digest_array(np.asarray(self.dataset.labels, np.int64))}
        return self._files

    def get(self, surrogate_name, surrogate_digest, load_model_fn, size, select):
        """The surrogate's _Selection. select=True (rank 0) selects when the cache is stale;
        otherwise the cache must be current."""
        if self.arrays is not None:
            if self._selection is None:
                images, y, names = self.arrays
                self._selection = _Selection(images, y, names, digest_json(digest_images(images)))
            return self._selection
        if size is None:
            raise ValueError(f"surrogate {surrogate_name!r}: unknown input size; pass "
                             "image_size=... to run_study")
        parts = dict(self._dataset_parts(), surrogate=surrogate_digest, n=self.n,
                     seed=int(self.seed), size=int(size), version=_version())
        key = digest_json(parts)
        lock = self.folder.lock_path("selection", surrogate_name)
        with locked(lock):
            found = self.folder.read_selection(surrogate_name, key)
            if found is None:
                if not select:
                    raise RuntimeError(f"surrogate {surrogate_name!r}: its selection is missing "
                                       "or stale although rank 0 made it; is the output folder "
                                       "shared by all ranks?")
                old = self.folder.selection_meta(surrogate_name)
                if old and isinstance(old.get("parts"), dict):
                    warnings.warn(f"selecting the images of {surrogate_name!r} again: "
                                  f"{_why(old['parts'], parts)}", RecomputeWarning, stacklevel=3)
                from . import data as fa_data

                images, y, names = fa_data.select(self.dataset, load_model_fn(), self.n, size,
                                                  seed=self.seed, batch_size=self.batch_size,
                                                  progress=self.progress)
                if len(names) == 0:
                    raise RuntimeError(f"surrogate {surrogate_name!r} classifies none of the "
                                       f"images in {self.dataset.root} correctly")
                meta = {"key": key, "parts": parts, "n": len(names),
                        "images_digest": digest_json(digest_images(images))}
                self.folder.write_selection(surrogate_name, images, y, names, meta)
                found = self.folder.read_selection(surrogate_name, key)
        images, y, names, meta = found
        return _Selection(images, y, names, meta["images_digest"])


def _why(old, new):
    """Which key parts differ, in words."""
    words = {"surrogate": "the surrogate's file changed", "images": "the images changed",
             "labels": "the labels changed", "names": "the image names changed",
             "files": "the data files changed", "n": "n_images changed",
             "seed": "the seed changed", "size": "the input size changed"}
    reasons = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "config" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            reasons.append("the configuration changed (" + _diff(old[key], new[key]) + ")")
        elif key == "version":
            reasons.append(f"fairattack {old.get(key)} -> {new.get(key)}")
        else:
            reasons.append(words.get(key, f"{key} changed"))
    return "; ".join(reasons) or "its record is incomplete"


def _diff(old, new, prefix=""):
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes.append(_diff(a, b, f"{prefix}{key}."))
        else:
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return ", ".join(changes)


# ----------------------------------------------------------------------------- tables

def _bootstrap_ci(errors, seed, resamples=BOOTSTRAP, block=50):
    """95% percentile bootstrap interval of mean(errors) (errors: [n] per-image values)."""
    n = len(errors)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, block):
        idx = rng.integers(0, n, (min(block, resamples - start), n))
        means.append(errors[idx].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def summarize(frame, predictions, stop_rmse, seed=0):
    """One table row from per-image records (frame: label, status, metrics...; predictions:
    {victim: [n] predicted class, -1 where not evaluated}): counts, means over attacked images,
    victim error rates, ASR (their mean) and its bootstrap 95% interval."""
    status = frame["status"].to_numpy().astype(str)
    attacked = (status != "skipped") & (status != "nan")
    labels = frame["label"].to_numpy()
    row = {"n_images": int(attacked.sum()), "n_skipped": int((status == "skipped").sum()),
           "n_failed": int((status == "nan").sum())}
    for name in ("stop_loss", "stop_rmse", "max_iter"):
        row[f"n_{name}"] = int((status == name).sum())
    row["n_target_not_reached"] = row["n_max_iter"] if stop_rmse > 0 else 0
    for key in METRICS:
        values = frame[key].to_numpy(np.float64)[attacked]
        row[key] = float(values.mean()) if values.size else float("nan")
    surrogate = frame["surrogate_pred"].to_numpy()[attacked]
    row["surrogate_fooling_rate"] = float(np.mean(surrogate != labels[attacked])) \
        if attacked.any() else float("nan")
    errors = []
    for victim, pred in predictions.items():
        wrong = (np.asarray(pred)[attacked] != labels[attacked]).astype(np.float64)
        errors.append(wrong)
        row[f"err_{victim}"] = float(wrong.mean()) if wrong.size else float("nan")
    if errors and attacked.any():
        per_image = np.mean(errors, axis=0)
        row["asr"] = float(per_image.mean())
        row["asr_ci_low"], row["asr_ci_high"] = _bootstrap_ci(per_image, seed)
    else:
        row["asr"] = row["asr_ci_low"] = row["asr_ci_high"] = float("nan")
    return row


def _frame(rows, victim_names=None):
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS) + list(TAIL_COLUMNS))
    errs = [c for c in df.columns if c.startswith("err_")]
    if victim_names is not None:
        errs = [f"err_{v}" for v in victim_names]
    columns = [c for c in COLUMNS if c in df.columns] + errs + list(TAIL_COLUMNS)
    df = df.reindex(columns=columns)
    for c in COUNTS:
        if c in df.columns:
            df[c] = df[c].astype("int64")
    numeric = [c for c in df.columns if c not in NAME_COLUMNS]
    df[numeric] = df[numeric].apply(pd.to_numeric)
    return df.reset_index(drop=True)


def _order_key(row):
    optimizer_order = list(dict.fromkeys(PAPER_OPTIMIZERS + OPTIMIZERS))
    setting, optimizer = row.get("setting"), row.get("optimizer")
    return (str(row.get("surrogate")),
            SETTINGS.index(setting) if setting in SETTINGS else len(SETTINGS),
            optimizer_order.index(optimizer) if optimizer in optimizer_order
            else len(optimizer_order), str(row.get("attack")))


def _disk_rows(folder):
    """The rows of every complete cell on disk (with every victim evaluated on it)."""
    return sorted(folder.complete_rows(), key=_order_key)


def _rows_frame(rows):
    def value(k, v):
        if k in NAME_COLUMNS:
            return v
        return float(v) if v is not None else float("nan")

    return _frame([{k: value(k, v) for k, v in row.items()} for row in rows])


def _write_results(folder):
    """results.csv / results.json from every complete cell on disk; returns the table."""
    return folder.write_results(lambda: _rows_frame(_disk_rows(folder)))


def load_results(out_dir):
    """The table of a study folder: every complete cell on disk (results.csv if the folder holds
    no cells). ValueError for a malformed results file."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"out_dir={str(out_dir)!r} is not a directory")
    folder = StudyFolder(out_dir)
    if folder.cell_dirs():
        df = _rows_frame(_disk_rows(folder))
        if len(df):
            return df
    csv = out_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{out_dir}: no results.csv and no finished cells")
    try:
        df = pd.read_csv(csv)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(f"{csv}: malformed results file ({error})") from None
    missing = [c for c in ("surrogate", "optimizer", "setting", "rmse", "asr")
               if c not in df.columns]
    if missing:
        raise ValueError(f"{csv}: malformed results file (missing columns {missing})")
    return df


# ----------------------------------------------------------------------------- processes

class _Ranks:
    """This process's place among the study's processes: torch.distributed when launched by
    torchrun (WORLD_SIZE > 1) or already initialised, else one process."""

    def __init__(self, device):
        self.rank, self.world, self.dist, self.owned = 0, 1, None, False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.dist = dist
        elif world > 1:
            import datetime

            cuda = str(device).startswith("cuda")
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(hours=24))
            self.dist, self.owned = dist, True
        if self.dist is not None:
            self.rank, self.world = self.dist.get_rank(), self.dist.get_world_size()

    def barrier(self):
        if self.dist is not None and self.world > 1:
            if self.dist.get_backend() == "nccl":
                import torch

                self.dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                self.dist.barrier()

    def close(self):
        if self.owned:
            self.dist.destroy_process_group()


def _pin_local_gpu(device):
    """Under torchrun with device="cuda", each rank sees only GPU LOCAL_RANK (as cuda:0); done
    before CUDA is initialised in this process."""
    if not str(device).startswith("cuda") or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    local = os.environ.get("LOCAL_RANK")
    if local is None or os.environ.get("FAIRATTACK_PINNED_GPU") == local:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError("run_study under torchrun: CUDA was initialised before run_study, so "
                           "its rank cannot be pinned to GPU LOCAL_RANK; set "
                           "CUDA_VISIBLE_DEVICES per rank or call run_study first")
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local)] if devices else local
    os.environ["FAIRATTACK_PINNED_GPU"] = local


# ----------------------------------------------------------------------------- the study

def _check_arguments(data, n_images, seed, batch_size, chunk_size, rounding, image_size, device):
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
    positive(chunk_size, "chunk_size", False)
    positive(image_size, "image_size", True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}, expected a non-negative integer")
    if rounding not in ("round", "truncate"):
        raise ValueError(f"rounding={rounding!r}, expected 'round' or 'truncate'")
    _device_index(device)  # ValueError for an unknown device, RuntimeError for a missing GPU


class _Cell:
    """One cell of the grid and what its work items need."""

    def __init__(self, surrogate, setting, attack_entry, resolved, folder):
        self.surrogate, self.setting = surrogate, setting
        self.name, self.optimizer = attack_entry[0], attack_entry[1]
        self.overrides, self.transforms, self.config = resolved
        self.dir = folder.cell_dir(surrogate, setting, self.name)
        self.key = self.parts = self.selection = None

    @property
    def label(self):
        return f"{self.surrogate}/{self.setting}/{self.name}"


def _victim_key(cell, victim_digest):
    return digest_json({"cell": cell.key, "victim": victim_digest})


def run_study(surrogates, victims, data, optimizers=None, settings=("const_loss",),
              out_dir="fairattack-study", n_images=None, seed=0, batch_size=16, overrides=None,
              resume=True, progress=True, save_images=True, *, attacks=None, labels=None,
              device="cpu", rounding="round", image_size=None, chunk_size=CHUNK_SIZE):
    """Run every (surrogate, setting, attack) cell and return the table (pandas DataFrame).

    surrogates, victims: registry names (`fairattack.models.available_models()`, any case),
        TorchScript paths, fairattack Models, or a dict name -> any of those.
    data: a folder in a layout `fairattack.data.open_dataset` reads (or a Dataset; `labels` names a
        val label file), selected per surrogate at its input size by the paper's protocol
        (`fairattack.data.select`: seeded shuffle, first n_images it classifies correctly;
        default N = 1000); or explicit uint8 NHWC (images, labels[, names]), used as given
        (the first n_images if given; images the surrogate gets wrong are skipped by the attack).
    optimizers: names from fairattack.OPTIMIZERS (any case), each an attack named by itself;
        default: the paper's seven unless `attacks` is given.
    attacks: named attack specs, {"pgd-di": {"optimizer": "PGD", "di_prob": 0.5}, ...}: an
        optimizer, optionally a setting (else the spec runs under every setting of `settings`),
        any hyper-parameter of `make_config` (eps, max_iter, returns, max_rmse, ...) and the
        input transforms of `attack` (di_prob, ti_kernel, si_copies, ...).
    settings: names from fairattack.SETTINGS.
    overrides: hyper-parameters for every cell (eps=..., max_iter=...), optionally nested per
        setting, optimizer or attack name: {"eps": 8, "adam": {"max_iter": 50}}; a nested key
        that names none of them raises ValueError.
    resume: reuse the records on disk computed under the same key (cells whose inputs changed
        are recomputed with a RecomputeWarning saying why); resume=False recomputes the grid.
    image_size: the input size of surrogates whose size cannot be read from the model (a
        registered model's or an exported file's own size is always used).
    chunk_size: images per work item (part of a cell's key: the per-image randomness of DI and
        random starts follows the image's place in its chunk).
    save_images: kept for compatibility; the adversarial PNGs are always stored (victims added
        later are evaluated on them).

    Under torchrun (`torchrun --nproc-per-node K -m fairattack run ...`, or a script calling
    run_study), the work items are shared by the ranks and every rank returns the same table.

    One row per cell: surrogate, attack, optimizer, setting; counts n_images (attacked),
    n_skipped, n_failed, n_stop_loss, n_stop_rmse, n_max_iter, n_target_not_reached (max_iter
    under a stop_rmse target); the means over attacked images of rmse, linf, l2, l1, l0, psnr,
    ssim, loss (CE nats) and iterations; surrogate_fooling_rate; err_<victim> per victim; asr
    (their mean) with its bootstrap 95% interval asr_ci_low / asr_ci_high; seconds (crafting).
    """
    del save_images
    _pin_local_gpu(device)
    from tqdm.auto import tqdm

    if optimizers is None:
        optimizers = list(PAPER_OPTIMIZERS) if attacks is None else []
    optimizers = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    settings = [settings] if isinstance(settings, str) else list(settings)
    if not optimizers and not attacks:
        raise ValueError("optimizers: expected at least one optimizer (or attacks=...)")
    if not settings:
        raise ValueError("settings: expected at least one setting")
    settings = list(dict.fromkeys(_setting(s) for s in settings))
    attack_entries = _attack_list(optimizers, attacks)
    _check_arguments(data, n_images, seed, batch_size, chunk_size, rounding, image_size, device)
    surrogate_specs = _model_dict(surrogates, "surrogates")
    victim_specs = _model_dict(victims, "victims")
    flat, nested = _split_overrides(overrides, [a[0] for a in attack_entries])
    for what, names in (("surrogates", surrogate_specs), ("victims", victim_specs),
                        ("attacks", [a[0] for a in attack_entries])):
        files = {}
        for name in names:  # names become folder names: they must stay distinct
            other = files.setdefault(safe_name(name).lower(), name)
            if other != name:
                raise ValueError(f"{what}: {other!r} and {name!r} would share the folder "
                                 f"{safe_name(name)!r}; rename one")

    # the grid, validated before any work: surrogate, then setting, then attack
    pairs = []
    for entry in attack_entries:
        for setting in ([entry[2]] if entry[2] else settings):
            pairs.append((setting, entry))
    setting_order = list(dict.fromkeys(settings + [s for s, _ in pairs]))
    pairs.sort(key=lambda p: setting_order.index(p[0]))  # stable: attacks keep their order
    resolved = {(st, e[0]): _resolve(e, st, flat, nested) for st, e in pairs}
    folder = StudyFolder(out_dir)
    cells = [_Cell(s, st, e, resolved[(st, e[0])], folder)
             for s in surrogate_specs for st, e in pairs]

    ranks = _Ranks(device)
    try:
        source = _Data(data, labels, n_images, seed, batch_size, folder, progress)
        folder.root.mkdir(parents=True, exist_ok=True)
        sizes = {s: input_size(spec) or image_size for s, spec in surrogate_specs.items()}
        models = {}

        def surrogate_model(name):
            if name not in models:
                models[name] = _load(name, surrogate_specs[name], device)
            return models[name]

        victim_models = {}

        def victim_model(name):
            if name not in victim_models:
                victim_models[name] = _load(name, victim_specs[name], device)
            return victim_models[name]

        digests = {s: model_digest(spec) for s, spec in surrogate_specs.items()}
        victim_digests = {v: model_digest(spec) for v, spec in victim_specs.items()}

        # plan: rank 0 selects and resets stale cells, then every rank derives the same keys
        for stage in ((0,) if ranks.world == 1 else (0, 1)):
            if (ranks.rank == 0) == (stage == 0):
                selections = {s: source.get(s, digests[s], lambda s=s: surrogate_model(s),
                                            sizes[s], select=ranks.rank == 0)
                              for s in surrogate_specs}
                for cell in cells:
                    _plan(cell, selections[cell.surrogate], digests[cell.surrogate], rounding,
                          chunk_size, folder, victim_digests, resume,
                          is_planner=ranks.rank == 0)
            ranks.barrier()

        items = [(cell, start) for cell in cells
                 for start in range(0, len(cell.selection), chunk_size)]
        mine = items[ranks.rank::ranks.world] + [it for i, it in enumerate(items)
                                                 if i % ranks.world != ranks.rank]
        bar = tqdm(total=len(items), desc="study", unit="item",
                   disable=not progress or ranks.rank != 0)
        try:
            waiting = []
            for cell, start in mine:
                with locked(folder.lock_path("item", cell.label, str(start)),
                            blocking=False) as got:
                    if not got:
                        waiting.append((cell, start))
                        continue
                    bar.set_postfix_str(cell.label)
                    _work_item(cell, start, chunk_size, batch_size, rounding, surrogate_model,
                               victim_model, victim_digests, folder)
                bar.update(1)
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed)
            for cell, start in waiting:  # held by another process: wait, then check
                with locked(folder.lock_path("item", cell.label, str(start))):
                    _work_item(cell, start, chunk_size, batch_size, rounding, surrogate_model,
                               victim_model, victim_digests, folder)
                bar.update(1)
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed)
        finally:
            bar.close()
        ranks.barrier()
        if ranks.rank == 0:
            for cell in cells:
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed)
            _write_results(folder)
            sweep_temps(folder.root)
        ranks.barrier()
        rows = [_grid_row(cell, chunk_size, victim_digests, folder, seed) for cell in cells]
        return _frame(rows, list(victim_specs))
    finally:
        ranks.close()


def _cell_parts(cell, selection, surrogate_digest, rounding, chunk_size):
    config = {"optimizer": cell.optimizer, "setting": cell.setting, "config": cell.config,
              "transforms": cell.transforms, "rounding": rounding, "chunk_size": int(chunk_size)}
    return dict(selection.parts, surrogate=surrogate_digest,
                config=read_back(config), version=_version())


def read_back(obj):
    """obj as it reads back from JSON (so that stored and fresh key parts compare equal)."""
    return json.loads(to_json(obj))


def _plan(cell, selection, surrogate_digest, rounding, chunk_size, folder, victim_digests,
          resume, is_planner):
    """Set the cell's key; the planner (rank 0) resets a cell stored under another key (saying
    why) or every cell when resume=False, and drops victim records of changed victims."""
    cell.selection = selection
    cell.parts = _cell_parts(cell, selection, surrogate_digest, rounding, chunk_size)
    cell.key = digest_json(cell.parts)
    if not is_planner:
        found = folder.read_cell(cell.dir)
        if found is None or found.get("key") != cell.key:
            raise RuntimeError(f"cell {cell.label}: rank 0 planned it under another key; do all "
                               "ranks see the same files and arguments?")
        return
    with locked(folder.lock_path("cell", cell.label)):
        found = folder.read_cell(cell.dir)
        record = {"key": cell.key, "surrogate": cell.surrogate, "attack": cell.name,
                  "optimizer": cell.optimizer, "setting": cell.setting, "parts": cell.parts,
                  "n": len(selection), "complete": False}
        if found is not None and found.get("key") == cell.key and resume:
            for victim, digest in victim_digests.items():
                if folder.drop_stale_victim(cell.dir, victim, _victim_key(cell, digest)):
                    warnings.warn(f"evaluating victim {victim!r} on cell {cell.label} again: "
                                  "the victim's file changed", RecomputeWarning, stacklevel=3)
            return
        if found is not None and found.get("key") != cell.key:
            warnings.warn(f"recomputing cell {cell.label}: "
                          f"{_why(found.get('parts') or {}, cell.parts)}",
                          RecomputeWarning, stacklevel=3)
        folder.reset_cell(cell.dir)
        folder.write_cell(cell.dir, record)


def _work_item(cell, start, chunk_size, batch_size, rounding, surrogate_model, victim_model,
               victim_digests, folder):
    """Craft one chunk of a cell (unless recorded) and evaluate every victim on it (unless
    recorded)."""
    selection = cell.selection
    stop = min(start + chunk_size, len(selection))
    record = folder.read_chunk(cell.dir, cell.key, start)
    adv = None
    if record is None:
        model = surrogate_model(cell.surrogate)
        x = np.asarray(selection.images[start:stop])
        y = selection.labels[start:stop]
        began = time.perf_counter()
        res = attack(model, x, y, optimizer=cell.optimizer, setting=cell.setting,
                     batch_size=batch_size, rounding=rounding, progress=False,
                     **cell.overrides, **cell.transforms)
        seconds = time.perf_counter() - began
        adv = res.images
        attacked = np.asarray(res.attacked)
        surrogate_pred = np.full(len(y), -1, np.int64)
        if attacked.any():
            surrogate_pred[attacked] = model.predict(adv[attacked], batch_size=batch_size)
        frame = res.to_frame()
        frame.insert(0, "png", selection.pngs[start:stop])
        frame.insert(0, "name", selection.names[start:stop])
        frame["surrogate_pred"] = surrogate_pred
        folder.write_chunk(cell.dir, cell.key, start, frame, seconds, adv)
        record = (frame, seconds)
    frame = record[0]
    status = frame["status"].to_numpy().astype(str)
    attacked = (status != "skipped") & (status != "nan")
    for victim, digest in victim_digests.items():
        key = _victim_key(cell, digest)
        if folder.read_victim_chunk(cell.dir, victim, key, start) is not None:
            continue
        if adv is None:
            adv = folder.read_adv(cell.dir, frame["png"])
        pred = np.full(len(status), -1, np.int64)
        if attacked.any():
            pred[attacked] = victim_model(victim).predict(adv[attacked], batch_size=batch_size)
        folder.write_victim_chunk(cell.dir, victim, key, start, pred)


def _chunk_starts(cell, chunk_size):
    return range(0, len(cell.selection), chunk_size)


def _cell_frame(cell, chunk_size, folder):
    """Per-image records of a cell from its chunk records; None while a chunk is missing."""
    parts, seconds = [], 0.0
    for start in _chunk_starts(cell, chunk_size):
        record = folder.read_chunk(cell.dir, cell.key, start)
        if record is None:
            return None, None
        parts.append(record[0])
        seconds += record[1]
    return pd.concat(parts, ignore_index=True), seconds


def _cell_predictions(cell, chunk_size, victim, digest, folder):
    """A victim's predictions on a cell's images, from the assembled record or the chunks;
    None while a chunk is missing."""
    key = _victim_key(cell, digest)
    stored = folder.read_victim(cell.dir, victim, key)
    if stored is not None:
        return stored
    parts = []
    for start in _chunk_starts(cell, chunk_size):
        pred = folder.read_victim_chunk(cell.dir, victim, key, start)
        if pred is None:
            return None
        parts.append(pred)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _row_head(cell):
    return {"surrogate": cell.surrogate, "attack": cell.name, "optimizer": cell.optimizer,
            "setting": cell.setting}


def _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed):
    """When every chunk and every victim's predictions of a cell are recorded: write images.csv,
    victims/<victim>.json and the cell's row, then results.csv."""
    starts = _chunk_starts(cell, chunk_size)
    if not all(folder.has_chunk(cell.dir, s) for s in starts):
        return
    if not all(folder.has_victim(cell.dir, v, starts) for v in victim_digests):
        return
    with locked(folder.lock_path("cell", cell.label)):
        record = folder.read_cell(cell.dir)
        if record is None or record.get("key") != cell.key:
            return
        # assembled victim files exist only under their current key (_plan drops stale ones)
        if record.get("complete") and all(folder.victim_path(cell.dir, v).is_file()
                                          for v in victim_digests):
            return
        frame, seconds = _cell_frame(cell, chunk_size, folder)
        if frame is None:
            return
        predictions = {}
        for victim, digest in victim_digests.items():
            pred = _cell_predictions(cell, chunk_size, victim, digest, folder)
            if pred is None:
                return
            predictions[victim] = pred
        folder.write_cell_tables(cell.dir, frame, {
            v: (_victim_key(cell, victim_digests[v]), cell.key, pred)
            for v, pred in predictions.items()})
        every = folder.read_victims(cell.dir, cell.key)
        row = dict(_row_head(cell), **summarize(frame, every, cell.config["stop_rmse"], seed))
        row["seconds"] = seconds
        record.update(complete=True, victims=sorted(every), row=row, seconds=seconds)
        folder.write_cell(cell.dir, record)
    _write_results(folder)


def _grid_row(cell, chunk_size, victim_digests, folder, seed):
    """The row of a finished cell for this run's victims (in their order)."""
    frame, seconds = _cell_frame(cell, chunk_size, folder)
    if frame is None:
        raise RuntimeError(f"cell {cell.label} is incomplete after every process finished")
    predictions = {v: _cell_predictions(cell, chunk_size, v, d, folder)
                   for v, d in victim_digests.items()}
    row = dict(_row_head(cell), **summarize(frame, predictions, cell.config["stop_rmse"], seed))
    row["seconds"] = seconds
    return row
