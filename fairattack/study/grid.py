"""`run_study` over a run context: the grid of cells, planned, split into work items (cell x
chunk), crafted and evaluated, and assembled into the table. Content-addressed, resumable and
shardable over processes (torchrun) and machines that share the output folder.

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

import os
import time
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .._model import device_kind, input_size, load_spec, model_digest, model_specs
from .._validate import int_at_least
from ..attack import TARGET_CHOICES, attack, loss_objective
from ..ensemble import FUSES, EnsembleSpec, ensemble_specs
from ..outcome import attacked_mask
from ..settings import PAPER_OPTIMIZERS, default_setting
from ..spec import canonical_setting, resolve, split_overrides, study_attacks
from ..store import (StudyFolder, as_stored, digest_json, explain_change, locked, safe_name,
                     sweep_temps, victim_key)
from .images import ImageSource, RecomputeWarning, version
from .ranks import Ranks, pin_local_gpu
from .tables import frame_of, summarize, write_results

#: Images per work item (the unit a process crafts and records at once).
CHUNK_SIZE = 256


def _check_arguments(data, n_images, seed, batch_size, chunk_size, rounding, image_size, device):
    """Checks of run_study's plain arguments, before any model is loaded."""
    from ..data import Dataset

    if not isinstance(data, (tuple, str, os.PathLike, Dataset)):
        raise ValueError(f"data: expected a folder, a Dataset or a tuple (images, labels[, names]),"
                         f" got {type(data).__name__}")
    int_at_least(n_images, "n_images", 1, optional=True)
    int_at_least(batch_size, "batch_size", 1)
    int_at_least(chunk_size, "chunk_size", 1)
    int_at_least(image_size, "image_size", 1, optional=True)
    int_at_least(seed, "seed", 0)
    if rounding not in ("round", "truncate"):
        raise ValueError(f"rounding={rounding!r}, expected 'round' or 'truncate'")
    device_kind(device)  # ValueError for an unknown device, RuntimeError for a missing GPU


class _Cell:
    """One cell of the grid and what its work items need."""

    def __init__(self, surrogate, setting, spec, resolved, folder, target=None, loss=None):
        self.surrogate, self.setting = surrogate, setting
        #: fa.attack's target= and loss= (none: untargeted CE, the keys of earlier studies)
        self.aim = {k: v for k, v in (("target", target), ("loss", loss)) if v is not None}
        self.name, self.optimizer = spec.name, spec.optimizer
        self.overrides, self.transforms, self.config = resolved
        self.dir = folder.cell_dir(surrogate, setting, self.name)
        self.key = self.parts = self.selection = None

    @property
    def label(self):
        return f"{self.surrogate}/{self.setting}/{self.name}"


def run_study(surrogates, victims, data, optimizers=None, settings=None,
              out_dir="fairattack-study", n_images=None, seed=0, batch_size=16, overrides=None,
              resume=True, progress=True, *, attacks=None, labels=None,
              device="cpu", rounding="round", image_size=None, chunk_size=CHUNK_SIZE,
              target=None, loss=None, fuse="logits", weights=None):
    """Run every (surrogate, setting, attack) cell and return the table (pandas DataFrame).

    surrogates, victims: registry names (`fairattack.models.available_models()`, any case),
        TorchScript paths, fairattack Models, or a dict name -> any of those. A surrogate may be
        an ensemble (`fairattack.ensemble`), or a text joining members with "+"
        ("efficientnet-lite0+mobilenet-v2", fused by `fuse` with `weights`, one per member of
        each such text, default equal, as in `fairattack.ensemble`); its cell is keyed
        by its members' contents, fuse and weights, and its images are selected at its largest
        member's input size.
    data: a folder in a layout `fairattack.data.open_dataset` reads (or a Dataset; `labels` names a
        val label file), selected per surrogate at its input size by the paper's protocol
        (`fairattack.data.select`: seeded shuffle, first n_images it classifies correctly;
        default N = 1000); or explicit uint8 NHWC (images, labels[, names]), used as given
        (the first n_images if given; images the surrogate gets wrong are skipped by the attack).
    optimizers: names from fairattack.OPTIMIZERS (any case), each an attack named by itself;
        default: the paper's seven unless `attacks` is given.
    attacks: named attack specs, {"pgd-di": {"optimizer": "PGD", "di_prob": 0.5}, ...}: an
        optimizer, optionally a setting (else the spec runs under every setting of `settings`, or
        its default setting),
        any hyper-parameter of `make_config` (eps, max_iter, returns, max_rmse, ...) and the
        input transforms of `attack` (di_prob, ti_kernel, si_copies, ...).
    settings: names from fairattack.SETTINGS; default None: each attack under its own default
        setting (`fairattack.settings.default_setting`: fixed for the sign attacks FGSM, PGD,
        MI-FGSM, NI-FGSM, const_loss for the others), as `fairattack.attack` runs it.
    overrides: hyper-parameters for every cell (eps=..., max_iter=...), optionally nested per
        setting, optimizer or attack name: {"eps": 8, "adam": {"max_iter": 50}}; a nested key
        that names none of them raises ValueError.
    resume: reuse the records on disk computed under the same key (cells whose inputs changed
        are recomputed with a RecomputeWarning saying why); resume=False recomputes the grid.
    image_size: the input size of surrogates whose size cannot be read from the model (a
        registered model's or an exported file's own size is always used).
    chunk_size: images per work item (part of a cell's key: the per-image randomness of DI,
        random starts and random targets follows the image's place in its chunk).
    target: None (untargeted), "random", "least_likely", or a mapping image name -> class
        (a label file read by `fairattack.data.read_label_file`; matched by name, file name or
        stem, every selected image must have one, never its label): every attack runs targeted
        (`fa.attack`'s target), and the error rates, surrogate_fooling_rate and asr are
        targeted success rates (the model predicts the image's target); the column `targeted`
        says so. loss: the loss every attack's gradient ascends ("ce", "logit", "margin"; as in
        `fa.attack`). Both are part of a cell's key.
    The adversarial PNGs are always stored (victims added later are evaluated on them).

    Under torchrun (`torchrun --nproc-per-node K -m fairattack run ...`, or a script calling
    run_study), the work items are shared by the ranks and every rank returns the same table.

    One row per cell: surrogate, attack, optimizer, setting, targeted; counts n_images (attacked),
    n_skipped, n_failed, n_stop_loss, n_stop_rmse, n_max_iter, n_target_not_reached (max_iter
    under a stop_rmse target); the means over attacked images of rmse, linf, l2, l1, l0, psnr,
    ssim, loss (CE nats), iterations, grad_evals and forward_evals; surrogate_fooling_rate;
    err_<victim> and n_failed_<victim> (images with non-finite logits: left out of its rate) per
    victim; asr (per image the mean over the victims that judged it, then over images) with its
    bootstrap 95% interval asr_ci_low / asr_ci_high; seconds (crafting).
    Every rate is over the attacked images (those the surrogate classifies correctly, not
    failed); clean_err_<victim> is the victim's error on the same clean images, the baseline of
    err_<victim> (a victim that already misclassifies an image is counted as fooled on it).
    """
    pin_local_gpu(device)
    from tqdm.auto import tqdm

    if optimizers is None:
        optimizers = list(PAPER_OPTIMIZERS) if attacks is None else []
    optimizers = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    defaults = settings is None  # each attack under its own default setting
    settings = [] if defaults else [settings] if isinstance(settings, str) else list(settings)
    if not optimizers and not attacks:
        raise ValueError("optimizers: expected at least one optimizer (or attacks=...)")
    if not settings and not defaults:
        raise ValueError("settings: expected at least one setting (or None: each attack's "
                         "default)")
    settings = list(dict.fromkeys(canonical_setting(s) for s in settings))
    if isinstance(target, Mapping):
        target = _target_table(target)
    elif target is not None and (not isinstance(target, str) or target not in TARGET_CHOICES):
        raise ValueError(f"target={target!r}; a study's targets follow its images: expected "
                         f"None, one of {TARGET_CHOICES} or a mapping image name -> class")
    loss_objective(loss, target is not None)  # ValueError naming an unknown loss
    attack_specs = study_attacks(optimizers, attacks)
    _check_arguments(data, n_images, seed, batch_size, chunk_size, rounding, image_size, device)
    if not isinstance(fuse, str) or fuse not in FUSES:
        raise ValueError(f"fuse={fuse!r}; expected one of {FUSES}")
    surrogate_specs = _surrogate_specs(surrogates, fuse, weights)
    victim_specs = model_specs(victims, "victims")
    flat, nested = split_overrides(overrides, [a.name for a in attack_specs])
    for what, names in (("surrogates", surrogate_specs), ("victims", victim_specs),
                        ("attacks", [a.name for a in attack_specs])):
        files = {}
        for name in names:  # names become folder names: they must stay distinct
            other = files.setdefault(safe_name(name).lower(), name)
            if other != name:
                raise ValueError(f"{what}: {other!r} and {name!r} would share the folder "
                                 f"{safe_name(name)!r}; rename one")

    # the grid, validated before any work: surrogate, then setting, then attack
    pairs = []
    for spec in attack_specs:
        for setting in ([spec.setting] if spec.setting else settings
                        or [default_setting(spec.optimizer)]):
            pairs.append((setting, spec))
    setting_order = list(dict.fromkeys(settings + [s for s, _ in pairs]))
    pairs.sort(key=lambda p: setting_order.index(p[0]))  # stable: attacks keep their order
    resolved = {(st, a.name): resolve(a, st, flat, nested) for st, a in pairs}
    folder = StudyFolder(out_dir)
    cells = [_Cell(s, st, a, resolved[(st, a.name)], folder, target, loss)
             for s in surrogate_specs for st, a in pairs]

    ranks = Ranks(device)
    try:
        source = ImageSource(data, labels, n_images, seed, batch_size, folder, progress)
        sizes = {s: (spec.input_size() if isinstance(spec, EnsembleSpec) else input_size(spec))
                 or image_size for s, spec in surrogate_specs.items()}
        unknown = [s for s, size in sizes.items() if size is None]
        if unknown and source.arrays is None:  # before the folder is made: no half-made study
            raise ValueError(f"surrogate {unknown[0]!r}: unknown input size (a TorchScript "
                             "file without fairattack's metadata); pass image_size=... "
                             "(--image-size), or export it with fairattack.models.export")
        folder.root.mkdir(parents=True, exist_ok=True)
        models = {}

        def surrogate_model(name):
            if name not in models:
                spec = surrogate_specs[name]
                models[name] = spec.load(device) if isinstance(spec, EnsembleSpec) \
                    else load_spec(name, spec, device)
            return models[name]

        victim_models = {}

        def victim_model(name):
            if name not in victim_models:
                victim_models[name] = load_spec(name, victim_specs[name], device)
            return victim_models[name]

        clean_preds = {}

        def clean_predictions(cell):
            """The victims' predictions of a cell's clean images (once per surrogate)."""
            if cell.surrogate not in clean_preds:
                images = cell.selection.images
                clean_preds[cell.surrogate] = {
                    v: victim_model(v).predict(np.asarray(images), batch_size=batch_size)
                    for v in victim_specs} if len(images) else {}
            return clean_preds[cell.surrogate]

        digests = {s: spec.digest() if isinstance(spec, EnsembleSpec) else model_digest(spec)
                   for s, spec in surrogate_specs.items()}
        victim_digests = {v: model_digest(spec) for v, spec in victim_specs.items()}

        # plan: rank 0 selects and resets stale cells, then every rank derives the same keys
        for stage in ((0,) if ranks.world == 1 else (0, 1)):
            if (ranks.rank == 0) == (stage == 0):
                selections = {s: source.get(s, digests[s], lambda s=s: surrogate_model(s),
                                            sizes[s], select=ranks.rank == 0)
                              for s in surrogate_specs}
                for cell in cells:
                    plan_cell(cell, selections[cell.surrogate], digests[cell.surrogate], rounding,
                          chunk_size, folder, victim_digests, resume,
                          is_planner=ranks.rank == 0)
            ranks.barrier()
        for cell in cells:  # every selected image has its target: before any work
            if isinstance(target, dict):
                _targets_of(target, cell.selection.names, cell.selection.labels)

        items = [(cell, start) for cell in cells
                 for start in range(0, len(cell.selection), chunk_size)]
        # this rank's share first, then the others' (taken over when their process is slower)
        in_my_order = items[ranks.rank::ranks.world] + [it for i, it in enumerate(items)
                                                        if i % ranks.world != ranks.rank]
        bar = tqdm(total=len(items), desc="study", unit="item",
                   disable=not progress or ranks.rank != 0)
        try:
            waiting = []
            for cell, start in in_my_order:
                with locked(folder.lock_path("item", cell.label, str(start)),
                            blocking=False) as got:
                    if not got:
                        waiting.append((cell, start))
                        continue
                    bar.set_postfix_str(cell.label)
                    _work_item(cell, start, chunk_size, batch_size, rounding, surrogate_model,
                               victim_model, victim_digests, folder)
                bar.update(1)
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed,
                                      clean_predictions)
            for cell, start in waiting:  # held by another process: wait, then check
                with locked(folder.lock_path("item", cell.label, str(start))):
                    _work_item(cell, start, chunk_size, batch_size, rounding, surrogate_model,
                               victim_model, victim_digests, folder)
                bar.update(1)
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed,
                                      clean_predictions)
        finally:
            bar.close()
        ranks.barrier()
        if ranks.rank == 0:
            for cell in cells:
                _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed,
                                      clean_predictions)
            write_results(folder)
            sweep_temps(folder.root)
        ranks.barrier()
        rows = [_grid_row(cell, chunk_size, victim_digests, folder, seed,
                          clean_predictions(cell)) for cell in cells]
        return frame_of(rows, list(victim_specs))
    finally:
        ranks.close()


def _surrogate_specs(surrogates, fuse, weights=None):
    """{name: spec} of the surrogates (model_specs), where ensembles are EnsembleSpecs named by
    their members ("a+b") unless a dict names them."""
    given = ensemble_specs(surrogates, fuse, weights)
    items = list(given.items()) if isinstance(given, dict) else \
        [(spec.name if isinstance(spec, EnsembleSpec) else None, spec) for spec in given]
    out = {}
    for name, spec in items:
        found = {name: spec} if isinstance(spec, EnsembleSpec) else \
            model_specs({name: spec} if name is not None else [spec], "surrogates")
        for key, value in found.items():
            if key in out:
                raise ValueError(f"surrogates: the name {key!r} appears twice")
            out[key] = value
    if not out:
        raise ValueError("surrogates: expected at least one model")
    return out


def _target_table(target):
    """A study's {image name: class} targets, checked: text names, integer classes >= 0."""
    table = {}
    for name, cls in target.items():
        if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)) \
                or cls < 0:
            raise ValueError(f"target[{name!r}]={cls!r}: expected a class index >= 0")
        table[str(name)] = int(cls)
    if not table:
        raise ValueError("target: the mapping image name -> class is empty")
    return table


def _targets_of(table, names, labels):
    """The targets of images `names` from a study's table; ValueError naming the first image
    without one or whose target is its label."""
    from ..data import classes_of_names

    targets = classes_of_names(table, names, "target")
    same = np.flatnonzero(targets == np.asarray(labels))
    if same.size:
        raise ValueError(f"target: image {names[same[0]]!r} aims at its own label "
                         f"{int(targets[same[0]])} ({same.size} image(s) do)")
    return targets


def _cell_parts(cell, selection, surrogate_digest, rounding, chunk_size):
    config = {"optimizer": cell.optimizer, "setting": cell.setting, "config": cell.config,
              "transforms": cell.transforms, "rounding": rounding, "chunk_size": int(chunk_size)}
    if cell.aim:
        config["aim"] = dict(cell.aim)
        if isinstance(cell.aim.get("target"), dict):  # a table of targets: by its content
            config["aim"]["target"] = {"table": digest_json(sorted(cell.aim["target"].items()))}
    return dict(selection.parts, surrogate=surrogate_digest,
                config=as_stored(config), version=version())


def plan_cell(cell, selection, surrogate_digest, rounding, chunk_size, folder, victim_digests,
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
        if found is not None and found.get("key") == cell.key and resume:
            for victim, digest in victim_digests.items():
                if folder.drop_stale_victim(cell.dir, victim, victim_key(cell.key, digest)):
                    warnings.warn(f"evaluating victim {victim!r} on cell {cell.label} again: "
                                  "the victim's file changed", RecomputeWarning, stacklevel=3)
            return
        if found is not None and found.get("key") != cell.key:
            warnings.warn(f"recomputing cell {cell.label}: "
                          f"{explain_change(found.get('parts') or {}, cell.parts)}",
                          RecomputeWarning, stacklevel=3)
        folder.reset_cell(cell.dir)
        folder.new_cell(cell.dir, cell.key, _row_head(cell), cell.parts, len(selection))


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
        aim = cell.aim
        if isinstance(aim.get("target"), dict):  # this chunk's targets, by image name
            aim = dict(aim, target=_targets_of(aim["target"], selection.names[start:stop], y))
        res = attack(model, x, y, optimizer=cell.optimizer, setting=cell.setting,
                     batch_size=batch_size, rounding=rounding, progress=False,
                     **cell.overrides, **cell.transforms, **aim)
        seconds = time.perf_counter() - began
        adv = res.images
        attacked = np.asarray(res.attacked_mask)
        # the surrogate's class of each attacked uint8 image (fa.attack measured it), else -1
        surrogate_pred = np.where(attacked, res.pred, -1).astype(np.int64)
        frame = res.to_frame().drop(columns=["image", "pred"])  # the chunk record's columns
        frame.insert(0, "png", selection.pngs[start:stop])
        frame.insert(0, "name", selection.names[start:stop])
        frame["surrogate_pred"] = surrogate_pred
        folder.write_chunk(cell.dir, cell.key, start, frame, seconds, adv)
        record = (frame, seconds)
    frame = record[0]
    attacked = attacked_mask(frame["status"].to_numpy())
    for victim, digest in victim_digests.items():
        key = victim_key(cell.key, digest)
        if folder.read_victim_chunk(cell.dir, victim, key, start) is not None:
            continue
        if adv is None:
            adv = folder.read_adv(cell.dir, frame["png"])
        pred = np.full(len(attacked), -1, np.int64)
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
    key = victim_key(cell.key, digest)
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
            "setting": cell.setting, "targeted": "target" in cell.aim}


def _assemble_if_complete(cell, chunk_size, victim_digests, folder, seed,
                          clean_predictions=None):
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
        # assembled victim files exist only under their current key (plan_cell drops stale ones)
        # (a row stored before failures were counted per victim is summarised again)
        row = record.get("row") or {}
        if record.get("complete") and all(folder.victim_path(cell.dir, v).is_file()
                                          and f"n_failed_{v}" in row for v in victim_digests):
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
            v: (victim_key(cell.key, victim_digests[v]), cell.key, pred)
            for v, pred in predictions.items()})
        every = folder.read_victims(cell.dir, cell.key)
        clean = clean_predictions(cell) if clean_predictions is not None else None
        row = dict(_row_head(cell), **summarize(frame, every, cell.config["stop_rmse"], seed,
                                                clean))
        row["seconds"] = seconds
        folder.complete_cell(cell.dir, record, every, row, seconds)
    write_results(folder)


def _grid_row(cell, chunk_size, victim_digests, folder, seed, clean_predictions=None):
    """The row of a finished cell for this run's victims (in their order)."""
    frame, seconds = _cell_frame(cell, chunk_size, folder)
    if frame is None:
        raise RuntimeError(f"cell {cell.label} is incomplete after every process finished")
    predictions = {v: _cell_predictions(cell, chunk_size, v, d, folder)
                   for v, d in victim_digests.items()}
    row = dict(_row_head(cell), **summarize(frame, predictions, cell.config["stop_rmse"], seed,
                                            clean_predictions))
    row["seconds"] = seconds
    return row
