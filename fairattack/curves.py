"""Summaries of an ASR-vs-RMSE curve (docs/fair-comparison.md#curve-summaries): rmse50 with its
bootstrap interval, the normalised area under the curve, and each attack's rank natively and at
every matched RMSE, with the rank shift.

For one attack and victim, budgets r_1 < ... < r_k with ASR a_1 ... a_k on the same images and
a_0 = the victim's clean error on those images at r_0 = 0; a(r) is the piecewise-linear curve
through (r_i, a_i):

- rmse50 = the smallest r <= r_k with a(r) >= 0.5: 0 when a_0 >= 0.5, else interpolated on the
  first segment that reaches 0.5; "not reached" (NaN, `rmse50_reached` False) when a(r) < 0.5 on
  all of [0, r_k] (for a curve that rises, exactly when a_k < 0.5). Its 95% interval comes from
  the same bootstrap resamples of images as the ASR intervals (outcome.bootstrap_resamples):
  rmse50 of every resampled curve, a resample that does not reach 0.5 counting as above every
  budget, so an upper end of +inf says more than 2.5% of resamples never reach 50%.
- auc = (1 / r_k) ∫_0^{r_k} a(r) dr (trapezoids through the points; in [0, 1]).
- rank: per victim and per budget (and natively), attacks ordered by ASR, highest first; ties
  share the lower rank (1, 1, 3). shift = native rank − matched rank: > 0 when an attack ranks
  better at matched RMSE than by its own output.

"mean" is the victim whose per-image outcome is the mean over the victims (as in compare).
"""

import numpy as np
import pandas as pd

from .outcome import bootstrap_resamples

#: The ASR level of rmse50.
LEVEL = 0.5
#: ASRs equal to this many decimals tie (a mean over victims may differ in the last bits).
_DECIMALS = 12


def rmse50(budgets, asr):
    """rmse50 of curves through (budgets[i], asr[..., i]); budgets start at 0 (r_0, a_0).
    asr: [..., m]. Returns floats [...], NaN where 50% is not reached."""
    r = np.asarray(budgets, np.float64)
    a = np.asarray(asr, np.float64)
    hit = a >= LEVEL - 1e-12
    first = np.argmax(hit, axis=-1)
    reached = hit.any(axis=-1)
    prev = np.maximum(first - 1, 0)
    a_lo = np.take_along_axis(a, prev[..., None], -1)[..., 0]
    a_hi = np.take_along_axis(a, first[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(a_hi > a_lo, (LEVEL - a_lo) / (a_hi - a_lo), 0.0)
    frac = np.clip(frac, 0.0, 1.0)
    out = r[prev] + frac * (r[first] - r[prev])
    out = np.where(first == 0, 0.0, out)
    return np.where(reached, out, np.nan)


def auc(budgets, asr):
    """(1 / r_k) ∫_0^{r_k} a(r) dr of curves through (budgets[i], asr[..., i]), budgets from 0."""
    r = np.asarray(budgets, np.float64)
    a = np.asarray(asr, np.float64)
    area = ((a[..., 1:] + a[..., :-1]) * 0.5 * np.diff(r)).sum(axis=-1)
    return area / r[-1]


def percentile_inf(values, q):
    """numpy's linear percentile of values where NaN stands for +inf (above every budget)."""
    s = np.sort(np.where(np.isnan(values), np.inf, values))
    h = (len(s) - 1) * q / 100.0
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    if hi == lo or s[hi] == s[lo]:
        return float(s[lo])
    if np.isinf(s[hi]):
        return float("inf")
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def _tables(df, clean):
    """The per-image outcomes of compare's frame: per_image and the clean one, checked."""
    per_image = getattr(df, "per_image", None)
    clean = getattr(df, "clean_per_image", None) if clean is None else clean
    if not isinstance(per_image, pd.DataFrame):
        raise TypeError("df: expected the DataFrame fa.compare() returned (it carries "
                        f"per_image), got {type(df).__name__}")
    if not isinstance(clean, pd.DataFrame) or not {"image", "victim", "fooled"} <= set(clean):
        raise ValueError("clean: the victims' clean outcomes per image (columns image, victim, "
                         "fooled) are missing; pass the frame fa.compare() returned")
    return per_image, clean


def _outcomes(rows, victims, images):
    """fooled [V, n] of one cell's per-image rows, victims and images in the given order."""
    table = rows.pivot(index="victim", columns="image", values="fooled")
    return table.loc[victims, images].to_numpy(np.float64)


def summaries(df, clean=None, seed=None, n_boot=None):
    """One row per (attack, victim, and "mean"): attack, victim, clean_error (a_0), rmse50,
    rmse50_reached, rmse50_low, rmse50_high (95% bootstrap; NaN with n_boot 0), auc, n_budgets.

    df: the frame fa.compare() returned (its per_image and clean_per_image); clean: that clean
    table instead. seed, n_boot: the bootstrap's (default: those compare used, so the
    resamples are the ASR intervals')."""
    per_image, clean = _tables(df, clean)
    attrs = getattr(df, "attrs", {})
    seed = attrs.get("seed", 0) if seed is None else seed
    n_boot = attrs.get("n_boot", 1000) if n_boot is None else n_boot
    images = np.sort(clean["image"].unique())
    victims = list(dict.fromkeys(clean["victim"]))
    clean_fooled = _outcomes(clean, victims, images)  # [V, n]
    matched = per_image[per_image["how"] != "native"]
    resamples = [] if not n_boot else list(bootstrap_resamples(len(images), seed, n_boot))
    out = []
    for attack in dict.fromkeys(per_image["attack"]):
        rows = matched[matched["attack"] == attack]
        budgets = sorted({float(r) for r in rows["rmse"]})
        if not budgets:
            continue
        cells = [rows[rows["rmse"].map(float) == r] for r in budgets]
        fooled = np.stack([clean_fooled] + [_outcomes(c, victims, images) for c in cells],
                          axis=-1)  # [V, n, m]
        r = np.array([0.0] + budgets)
        curves = list(zip(victims, fooled)) + [("mean", fooled.mean(axis=0))]
        for victim, outcome in curves:  # outcome [n, m]
            a = outcome.mean(axis=0)
            value = float(rmse50(r, a))
            low = high = float("nan")
            if resamples:
                boot = np.concatenate([rmse50(r, outcome[idx].mean(axis=1))
                                       for idx in resamples])
                low, high = percentile_inf(boot, 2.5), percentile_inf(boot, 97.5)
            out.append({"attack": attack, "victim": victim, "clean_error": float(a[0]),
                        "rmse50": value, "rmse50_reached": not np.isnan(value),
                        "rmse50_low": low, "rmse50_high": high, "auc": float(auc(r, a)),
                        "n_budgets": len(budgets)})
    return pd.DataFrame(out)


def ranks(df):
    """One row per (attack, victim, budget or "native"): attack, victim, rmse, asr, rank,
    native_rank, shift (native_rank − rank), from compare's table (its asr column)."""
    for column in ("attack", "rmse", "victim", "asr", "how"):
        if column not in getattr(df, "columns", ()):
            raise ValueError(f"df: missing column {column!r}; expected a compare() table")
    frame = pd.DataFrame({"attack": df["attack"], "victim": df["victim"],
                          "rmse": df["rmse"], "asr": df["asr"].astype(float)})
    frame["cell"] = [r if isinstance(r, str) else float(r) for r in frame["rmse"]]
    frame["key"] = frame["asr"].round(_DECIMALS)
    # ties share the lower rank: 1 + the number of attacks with a strictly higher ASR
    frame["rank"] = frame.groupby(["victim", "cell"])["key"].rank(method="min",
                                                                   ascending=False).astype(int)
    native = frame[frame["cell"] == "native"].set_index(["attack", "victim"])["rank"]
    frame["native_rank"] = [native.get((a, v), np.nan) for a, v in
                            zip(frame["attack"], frame["victim"])]
    frame["shift"] = frame["native_rank"] - frame["rank"]
    return frame.drop(columns=["cell", "key"]).reset_index(drop=True)
