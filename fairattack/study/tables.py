"""A study's table: one row per cell from its per-image records and victims' predictions
(`summarize`), the table of every finished cell on disk (results.csv / results.json) and
`load_results`."""

from pathlib import Path

import numpy as np
import pandas as pd

from ..attack import SPENT
from ..outcome import (attacked_mask, bootstrap_ci, error_rate, mean_over_victims,
                       victim_outcome)
from ..settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS
from ..store import StudyFolder

#: Means over attacked images; grad_evals / forward_evals: what the attack spent
#: (docs/protocol.md#what-an-attack-spends).
METRICS = ("rmse", "linf", "l2", "l1", "l0", "psnr", "ssim", "loss", "iterations") + SPENT
COUNTS = ("n_images", "n_skipped", "n_failed", "n_stop_loss", "n_stop_rmse", "n_max_iter",
          "n_target_not_reached")
NAME_COLUMNS = ("surrogate", "attack", "optimizer", "setting")
#: targeted: whether the cell's attack aimed at targets (then every error rate, the fooling rate
#: and asr are targeted success rates: the model predicts the target).
COLUMNS = NAME_COLUMNS + ("targeted",) + COUNTS + METRICS + ("surrogate_fooling_rate",)
TAIL_COLUMNS = ("asr", "asr_ci_low", "asr_ci_high", "seconds")
#: Bootstrap resamples of the ASR confidence interval.
BOOTSTRAP = 1000


def summarize(frame, predictions, stop_rmse, seed=0, clean_predictions=None):
    """One table row from per-image records (frame: label, status, metrics...; predictions:
    {victim: [n] predicted class, -1 where not evaluated}): counts, means over attacked images,
    victim error rates and failures (-1 among attacked images: no finite logits; left out of
    the rate, counted in n_failed_<victim>), ASR (per image, the mean over the victims that
    judged it; then over images) and its bootstrap 95% interval. clean_predictions:
    {victim: [n] predicted class of the clean images}: clean_err_<victim>, the victim's error on
    the same (attacked) clean images, the baseline of its err_<victim> (of a targeted cell: the
    rate at which the clean images are already classified as their targets)."""
    status = frame["status"].to_numpy().astype(str)
    attacked = attacked_mask(status)
    labels = frame["label"].to_numpy()
    # a targeted cell's records hold each image's target: success is predicting it
    targets = frame["target"].to_numpy()[attacked] if "target" in frame else None
    row = {"n_images": int(attacked.sum()), "n_skipped": int((status == "skipped").sum()),
           "n_failed": int((status == "nan").sum())}
    for name in ("stop_loss", "stop_rmse", "max_iter"):
        row[f"n_{name}"] = int((status == name).sum())
    row["n_target_not_reached"] = row["n_max_iter"] if stop_rmse > 0 else 0
    for key in METRICS:  # records written before a measurement existed lack its column: NaN
        values = frame[key].to_numpy(np.float64)[attacked] if key in frame else np.zeros(0)
        row[key] = float(values.mean()) if values.size else float("nan")
    surrogate = frame["surrogate_pred"].to_numpy()[attacked]
    row["surrogate_fooling_rate"] = error_rate(*victim_outcome(surrogate, labels[attacked],
                                                                  targets))
    fooled, failed = [], []
    for victim, pred in predictions.items():
        f, bad = victim_outcome(np.asarray(pred)[attacked], labels[attacked], targets)
        fooled.append(f)
        failed.append(bad)
        row[f"err_{victim}"] = error_rate(f, bad)
        row[f"n_failed_{victim}"] = int(bad.sum())
        if clean_predictions is not None and victim in clean_predictions:
            row[f"clean_err_{victim}"] = error_rate(*victim_outcome(
                np.asarray(clean_predictions[victim])[attacked], labels[attacked], targets))
    per_image, judged = mean_over_victims(fooled, failed) if fooled else (None, None)
    if fooled and judged.any():
        per_image = per_image[judged]
        row["asr"] = float(per_image.mean())
        row["asr_ci_low"], row["asr_ci_high"] = bootstrap_ci(per_image, seed, BOOTSTRAP)
    else:
        row["asr"] = row["asr_ci_low"] = row["asr_ci_high"] = float("nan")
    return row


def frame_of(rows, victim_names=None):
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS) + list(TAIL_COLUMNS))
    if victim_names is None:
        victim_names = [c[4:] for c in df.columns if c.startswith("err_")]
    # each victim's error after the attack, then its clean error on the same images (baseline)
    errs = [c for v in victim_names for c in (f"err_{v}", f"clean_err_{v}")
            if c.startswith("err_") or c in df.columns]
    failed = [f"n_failed_{v}" for v in victim_names]  # images each victim failed on
    columns = [c for c in COLUMNS if c in df.columns] + errs + failed + list(TAIL_COLUMNS)
    df = df.reindex(columns=columns)
    for c in COUNTS + tuple(failed):
        if c in df.columns and not df[c].isna().any():  # a row stored before n_failed_<v>
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
        if k == "targeted":
            return bool(v)
        return float(v) if v is not None else float("nan")

    return frame_of([{k: value(k, v) for k, v in row.items()} for row in rows])


def write_results(folder):
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
