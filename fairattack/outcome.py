"""What an attack achieved, decided in one place: which images count (attacked), whether a
victim was fooled, bootstrap confidence intervals, McNemar's test and the paired test between
two attacks.

- attacked: an image counts when the surrogate classified it correctly (else "skipped") and the
  attack did not fail on it (non-finite loss: "nan"); `attacked_mask`.
- fooled / failed: a victim that gives no prediction for an image (non-finite logits: Model.predict
  says -1) has failed on it; otherwise it is fooled when its prediction differs from the label
  (a targeted attack: when it predicts the target; `victim_outcome`, `fooled_mask`). A failed
  image is never fooled: it is counted (n_failed, per victim) and left out of that victim's
  error rate (`error_rate`), in evaluate, compare and run_study alike.
  The mean over victims of an image averages the victims that judged it (`mean_over_victims`).
- intervals: a seeded percentile bootstrap of the mean over the image indices. The resamples
  depend only on (seed, n, n_boot), so every cell evaluated on the same n images (every attack,
  budget and victim of a comparison; study cells with the same images) uses the same resamples:
  intervals of paired cells are comparable, and a table is reproducible cell by cell.
"""

import math

import numpy as np

#: Bootstrap resamples of a 95% interval unless told otherwise.
N_BOOT = 1000
#: Resamples drawn at once (bounds the temporary index array to BLOCK x n).
_BLOCK = 50


def attacked_mask(status):
    """Images that count: attacked (not skipped as misclassified) and not failed (NaN)."""
    status = np.asarray(status).astype(str)
    return (status != "skipped") & (status != "nan")


def fooled_mask(pred, labels, targets=None):
    """Per image: the victim's prediction differs from the label (predictions that exist); for
    a targeted attack (targets: one class per image) it predicts the target."""
    if targets is not None:
        return np.asarray(pred) == np.asarray(targets)
    return np.asarray(pred) != np.asarray(labels)


def victim_outcome(pred, labels, targets=None):
    """(fooled, failed) bool [n] of a victim's predictions [n] (-1: no prediction, its logits
    were not finite): failed images are never fooled. targets: fooled means predicting the
    target (fooled_mask)."""
    pred = np.asarray(pred)
    failed = pred < 0
    return ~failed & fooled_mask(pred, labels, targets), failed


def error_rate(fooled, failed):
    """The victim's error rate over the images it judged; nan when it judged none."""
    judged = ~np.asarray(failed, bool)
    return float(np.asarray(fooled, bool)[judged].mean()) if judged.any() else float("nan")


def mean_over_victims(fooled, failed):
    """(per-image mean over the victims that judged it [n], judged by any victim bool [n]) of
    fooled / failed [V, n]."""
    fooled, failed = np.asarray(fooled, bool), np.asarray(failed, bool)
    judged = (~failed).sum(axis=0)
    hits = (fooled & ~failed).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(judged > 0, hits / np.maximum(judged, 1), np.nan)
    return mean, judged > 0


def bootstrap_ci(values, seed=0, n_boot=N_BOOT):
    """95% percentile bootstrap interval of mean(values) ([n] per-image values): n_boot
    resamples of the n image indices drawn from numpy.random.default_rng(seed). (nan, nan)
    without images or with n_boot=0."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0 or not n_boot:
        return float("nan"), float("nan")
    means = [values[idx].mean(axis=1) for idx in bootstrap_resamples(n, seed, n_boot)]
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def bootstrap_resamples(n, seed=0, n_boot=N_BOOT):
    """The bootstrap's resamples of n image positions, in blocks: int arrays [b, n] (b <= 50)
    that together hold n_boot rows, drawn from numpy.random.default_rng(seed). Every interval
    of fairattack over the same n images (ASR, rmse50) uses exactly these rows."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BLOCK):
        yield rng.integers(0, n, (min(_BLOCK, n_boot - start), n))


def mcnemar(b, c):
    """McNemar's test on the discordant counts b (A fooled, B not) and c (B fooled, A not):
    exact two-sided binomial when b + c < 25, else chi-square with continuity correction (1 df).
    Returns (statistic, p_value, method)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"b and c must be counts >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 0.0, 1.0, "exact"
    if n < 25:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
        return float(k), min(1.0, 2.0 * tail), "exact"
    stat = (abs(b - c) - 1.0) ** 2 / n
    return stat, math.erfc(math.sqrt(stat / 2.0)), "chi2"


def _budget_value(v):
    """A per-image table's rmse entry: "native", or a budget (a number, or its text as
    pd.read_csv gives it back from per_image.csv: '2.0')."""
    if isinstance(v, str) and v != "native":
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _same_rmse(column, rmse):
    column = column.map(_budget_value)
    if isinstance(rmse, str):
        return column.map(lambda v: isinstance(v, str) and v == rmse).to_numpy(bool)
    return column.map(lambda v: not isinstance(v, str) and abs(float(v) - float(rmse)) < 1e-9
                      ).to_numpy(bool)


def _as_bool(column):
    return column.astype(str).str.lower().isin(("true", "1", "1.0")).to_numpy() \
        if column.dtype == object else column.to_numpy(bool)


def paired_test(df_or_records, attack_a, attack_b, rmse, victim, exclude_unreachable=False):
    """McNemar's test between two attacks at one budget, on the same images, for one victim.

    df_or_records: a `compare` DataFrame (its `per_image`) or that per-image table
        itself (e.g. read back from per_image.csv).
    rmse: a budget of the table, or "native". victim: one victim's name (the test needs a
        binary outcome per image; "mean" is not one).
    exclude_unreachable: keep only images reached by both attacks (default: every image, as
        compare evaluates them). Images the victim failed on (column `failed`) under either
        attack are always left out.
    Returns a dict: attack_a, attack_b, rmse, victim, n_images, asr_a, asr_b, b (A fools the
    victim and B does not), c (B fools, A not), statistic, p_value, method ("exact" or "chi2").
    """
    import pandas as pd

    records = df_or_records
    if getattr(records, "per_image", None) is not None:  # a compare() frame
        records = records.per_image
    if not isinstance(records, pd.DataFrame):
        raise TypeError("df_or_records: expected a compare() DataFrame or its per-image table, "
                        f"got {type(df_or_records).__name__}")
    needed = ("attack", "rmse", "victim", "image", "fooled", "reached")
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise ValueError(f"df_or_records: missing per-image columns {missing}; pass the "
                         "DataFrame compare() returned (or its per_image)")
    if victim == "mean" or victim not in set(records["victim"]):
        raise ValueError(f"victim must be one of {sorted(set(records['victim']))} (the test "
                         f"needs one victim's per-image outcome), got {victim!r}")
    if isinstance(rmse, str) and rmse != "native":
        raise ValueError(f"rmse must be a budget or 'native', got {rmse!r}")
    sides = []
    for which, attack in (("attack_a", attack_a), ("attack_b", attack_b)):
        sel = records[(records["attack"] == attack) & (records["victim"] == victim)]
        if sel.empty:
            raise ValueError(f"{which}: {attack!r} is not in the table (it has "
                             f"{sorted(set(records['attack']))})")
        sel = sel[_same_rmse(sel["rmse"], rmse)]
        if sel.empty:
            raise ValueError(f"rmse: {rmse!r} is not a budget of {attack!r} in the table")
        sides.append(sel.set_index("image"))
    a, b = sides
    if set(a.index) != set(b.index):
        raise ValueError("the two attacks were evaluated on different images; compare them "
                         "from one compare() call")
    b = b.loc[a.index]
    keep = np.ones(len(a), bool)
    if "failed" in a.columns:
        keep = ~(_as_bool(a["failed"]) | _as_bool(b["failed"]))
    if exclude_unreachable:
        keep &= a["reached"].to_numpy(bool) & b["reached"].to_numpy(bool)
    fa_ = a["fooled"].to_numpy(bool)[keep]
    fb_ = b["fooled"].to_numpy(bool)[keep]
    count_b, count_c = int((fa_ & ~fb_).sum()), int((fb_ & ~fa_).sum())
    stat, p, method = mcnemar(count_b, count_c)
    return {"attack_a": attack_a, "attack_b": attack_b, "rmse": rmse, "victim": victim,
            "n_images": int(keep.sum()),
            "asr_a": float(fa_.mean()) if keep.any() else float("nan"),
            "asr_b": float(fb_.mean()) if keep.any() else float("nan"),
            "b": count_b, "c": count_c, "statistic": stat, "p_value": p, "method": method}
