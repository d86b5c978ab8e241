"""Curve summaries (docs/fair-comparison.md#curve-summaries): rmse50 and its bootstrap interval,
the normalised AUC and the ranks with their shifts, against hand computations from the per-image
outcomes of compare()."""

import math

import numpy as np
import pandas as pd
import pytest

import fairattack as fa
from fairattack import curves
from test_compare import CLEAN_VALUE, Bright, Changed, PickySurrogate, _hand_case


# ----------------------------------------------------------------------------- by hand

def _curve_by_hand(budgets, asr):
    """rmse50 and auc of one curve through (0, a_0), (r_i, a_i), in plain Python."""
    points = list(zip(budgets, asr))
    if points[0][1] >= 0.5:
        r50 = 0.0
    else:
        r50 = None
        for (r0, a0), (r1, a1) in zip(points, points[1:]):
            if a1 >= 0.5:
                r50 = r0 + (0.5 - a0) / (a1 - a0) * (r1 - r0)
                break
    area = sum((a0 + a1) / 2 * (r1 - r0) for (r0, a0), (r1, a1) in zip(points, points[1:]))
    return r50, area / budgets[-1]


def _percentile(values, q):
    """numpy's linear percentile, None standing for 'not reached' (above everything)."""
    s = sorted(math.inf if v is None else v for v in values)
    h = (len(s) - 1) * q / 100
    lo, hi = math.floor(h), math.ceil(h)
    if lo == hi or s[lo] == s[hi]:
        return s[lo]
    return math.inf if s[hi] == math.inf else s[lo] + (h - lo) * (s[hi] - s[lo])


def _outcomes(df, attack, victim):
    """Per-image outcomes [n] at r = 0 (clean) and at each budget, from the frame's tables."""
    clean = df.clean_per_image
    per = df.per_image[(df.per_image["attack"] == attack) & (df.per_image["how"] != "native")]
    victims = [victim] if victim != "mean" else list(dict.fromkeys(clean["victim"]))

    def cell(table):
        rows = [table[table["victim"] == v].sort_values("image")["fooled"].to_numpy(float)
                for v in victims]
        return np.mean(rows, axis=0)

    budgets = sorted({float(r) for r in per["rmse"]})
    columns = [cell(clean)] + [cell(per[per["rmse"].map(float) == r]) for r in budgets]
    return [0.0] + budgets, np.stack(columns, axis=1)  # [n, m]


def test_rmse50_and_auc_of_the_hand_case():
    clean, labels, up, checker = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up), ("checker", checker)],
                    {"A": Bright(), "B": Changed()}, rmse=[4, 6, 12], n_boot=0)
    got = df.curve_summaries().set_index(["attack", "victim"])
    # ASR read off test_compare's hand count; clean error 0 (no victim is fooled by clean)
    # up/A: (4, 0) (6, 0) (12, .8) -> 6 + .5/.8 * 6 = 9.75; area .8/2 * 6 = 2.4 of 12
    # up/B: (4, 0) (6, .8) (12, .8) -> 4 + .5/.8 * 2 = 5.25; area .8 + 4.8 = 5.6
    # checker/B: (4, 0) (6, 1) (12, 1) -> 5; area 1 + 6 = 7; checker/A never fooled
    # checker/mean: (4, 0) (6, .5) (12, .5) -> 6 exactly at the budget
    expect = {("up", "A"): (9.75, 2.4 / 12), ("up", "B"): (5.25, 5.6 / 12),
              ("checker", "B"): (5.0, 7 / 12), ("checker", "A"): (None, 0.0),
              ("checker", "mean"): (6.0, 3.5 / 12)}
    for key, (r50, area) in expect.items():
        row = got.loc[key]
        assert row["clean_error"] == 0.0
        assert row["auc"] == pytest.approx(area), key
        if r50 is None:
            assert not row["rmse50_reached"] and math.isnan(row["rmse50"])
        else:
            assert row["rmse50_reached"] and row["rmse50"] == pytest.approx(r50), key
    assert (got["n_budgets"] == 3).all()
    assert got["rmse50_low"].isna().all()  # n_boot=0: no interval


def _staircase(n=20):
    """n clean images; "up" moves every value of image i by k_i (some 0); a victim that is
    fooled by some clean images (their first value is CLEAN_VALUE + 2)."""
    clean = np.full((n, 6, 6, 3), CLEAN_VALUE, np.uint8)
    clean[::7, 0, 0, 0] = CLEAN_VALUE + 2
    k = np.array([0, 3, 6, 9, 12, 15, 4, 8, 2, 16] * (n // 10 + 1))[:n]
    up = np.clip(clean.astype(int) + k[:, None, None, None], 0, 255).astype(np.uint8)

    class Odd:
        """Fooled when the first value is odd-offset from the clean level or moved by >= 7."""

        def predict(self, images):
            first = np.asarray(images, np.int64)[:, 0, 0, 0] - CLEAN_VALUE
            return ((first == 2) | (first >= 7)).astype(np.int64)

    victims = {"B": Changed(), "C": Odd()}
    return clean, np.zeros(n, np.int64), up, victims


def test_summaries_match_a_hand_computation_with_the_bootstrap():
    clean, labels, up, victims = _staircase()
    seed, n_boot = 3, 120
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up), ("same", up.copy())],
                    victims, rmse=[2, 5, 7, 10], n_boot=n_boot, seed=seed)
    got = df.curve_summaries().set_index(["attack", "victim"])
    n = df["n_images"].iloc[0]
    assert n == len(clean)
    # the resamples of compare's ASR intervals: blocks of 50 rows from default_rng(seed)
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.integers(0, n, (min(50, n_boot - s), n))
                           for s in range(0, n_boot, 50)])
    for victim in ("B", "C", "mean"):
        budgets, outcome = _outcomes(df, "up", victim)
        r50, area = _curve_by_hand(budgets, list(outcome.mean(axis=0)))
        row = got.loc[("up", victim)]
        assert row["clean_error"] == pytest.approx(outcome[:, 0].mean())
        assert row["auc"] == pytest.approx(area)
        assert row["rmse50"] == pytest.approx(r50)
        boot = [_curve_by_hand(budgets, list(outcome[idx].mean(axis=0)))[0] for idx in rows]
        assert row["rmse50_low"] == pytest.approx(_percentile(boot, 2.5))
        assert row["rmse50_high"] == pytest.approx(_percentile(boot, 97.5))
        assert row["rmse50_low"] <= row["rmse50"] <= row["rmse50_high"]
    assert got.loc[("up", "C"), "clean_error"] > 0  # a_0 counts
    # the same images give the same summaries
    pd.testing.assert_series_equal(got.loc["up"].reset_index(drop=True).iloc[0],
                                   got.loc["same"].reset_index(drop=True).iloc[0],
                                   check_names=False)


def test_rmse50_interval_uses_the_asr_intervals_resamples():
    # one budget: rmse50 = 10 * (0.5 - a_0) / (a_1 - a_0) with a_0 = 0 falls as a_1 rises, so
    # its percentiles are the ASR's, mapped (exactly: (41 - 1) * 2.5% is a whole rank)
    clean, labels, up, victims = _staircase(30)
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up)], {"B": victims["B"]},
                    rmse=[10], n_boot=41, seed=5)
    cell = df[(df["rmse"] == 10) & (df["victim"] == "B")].iloc[0]
    assert cell["ci_low"] >= 0.5
    row = df.curve_summaries().set_index("victim").loc["B"]
    assert row["rmse50"] == pytest.approx(5 / cell["asr"])
    assert row["rmse50_low"] == pytest.approx(5 / cell["ci_high"])
    assert row["rmse50_high"] == pytest.approx(5 / cell["ci_low"])


@pytest.mark.parametrize("asr, expect", [
    ([0.6, 0.7, 0.9], 0.0),              # the clean error is already 50%
    ([0.5, 0.7, 0.9], 0.0),
    ([0.2, 0.6, 0.4], 3.0),              # the first crossing, even if the curve falls again
    ([0.1, 0.3, 0.5], 8.0),              # exactly at the last budget
    ([0.1, 0.3, 0.45], None),            # not reached
    ([0.0, 0.0, 1.0], 6.0)])
def test_rmse50_definition(asr, expect):
    got = curves.rmse50([0, 4, 8], asr)
    assert (math.isnan(got) if expect is None else got == pytest.approx(expect))
    assert got == pytest.approx(_curve_by_hand([0, 4, 8], asr)[0]) if expect is not None \
        else _curve_by_hand([0, 4, 8], asr)[0] is None
    assert curves.auc([0, 4, 8], asr) == pytest.approx(_curve_by_hand([0, 4, 8], asr)[1])


def test_percentile_inf_is_numpys_where_finite():
    values = np.array([3.0, 1.0, 7.5, 2.0, 4.0])
    for q in (0, 2.5, 50, 97.5, 100):
        assert curves.percentile_inf(values, q) == pytest.approx(np.percentile(values, q))
    assert curves.percentile_inf(np.array([1.0, np.nan, np.nan]), 97.5) == math.inf
    assert curves.percentile_inf(np.array([1.0, 2.0, np.nan]), 2.5) == pytest.approx(1.05)


# ----------------------------------------------------------------------------- ranks

def test_ranks_and_shifts_by_hand():
    clean, labels, up, checker = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels,
                    [("up", up), ("checker", checker), ("twin", checker.copy())],
                    {"A": Bright(), "B": Changed()}, rmse=[4, 12], n_boot=0)
    got = df.ranks().set_index(["attack", "victim", df.ranks()["rmse"].astype(str)])
    # victim B natively: checker = twin = 1.0 (tie: both rank 1), up .4 (rank 3)
    assert [got.loc[(a, "B", "native"), "rank"] for a in ("checker", "twin", "up")] == [1, 1, 3]
    # B at 12: all three at .8 / 1 / 1 -> up 3; at 4 everyone 0: a three-way tie at rank 1
    assert [got.loc[(a, "B", "4.0"), "rank"] for a in ("checker", "twin", "up")] == [1, 1, 1]
    assert got.loc[("up", "B", "4.0"), "shift"] == 3 - 1
    # A natively: up .4 first, checker and twin 0 (rank 2); at 12 up .8 stays first
    assert got.loc[("up", "A", "native"), "rank"] == 1
    assert got.loc[("twin", "A", "native"), "rank"] == 2
    assert got.loc[("up", "A", "12.0"), "shift"] == 0
    # the shift is native rank - rank, on every row, and native rows have shift 0
    table = df.ranks()
    assert (table["shift"] == table["native_rank"] - table["rank"]).all()
    assert (table[table["rmse"].astype(str) == "native"]["shift"] == 0).all()
    # ranks are those of the asr column: rank = 1 + number of attacks with a higher ASR
    for (victim, r), cell in table.groupby(["victim", table["rmse"].astype(str)]):
        for _, row in cell.iterrows():
            assert row["rank"] == 1 + (cell["asr"] > row["asr"] + 1e-12).sum()


def test_comparison_table_shows_the_summaries():
    clean, labels, up, checker = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up), ("checker", checker)],
                    {"A": Bright(), "B": Changed()}, rmse=[4, 6, 12], n_boot=200)
    table = fa.comparison_table(df, victim="B").set_index("attack")
    assert table.loc["up", "rmse50"].startswith("5.25 [")
    assert table.loc["up", "auc"] == pytest.approx(5.6 / 12)
    assert table.loc["checker", "rank"] == 1 and table.loc["up", "rank"] == 2
    assert table.loc["up", "rank@4"] == 1 and table.loc["up", "shift@4"] == 1
    assert table.loc["up", "rank@12"] == 2 and table.loc["up", "shift@12"] == 0
    a = fa.comparison_table(df, victim="A").set_index("attack")
    assert a.loc["checker", "rmse50"] == "not reached"
    # a plain table (no per-image outcomes) keeps the columns it had
    plain = fa.comparison_table(pd.DataFrame(df), victim="B")
    assert "rmse50" not in plain.columns and "asr@4" in plain.columns


def test_summaries_reject_what_is_not_a_compare_frame():
    with pytest.raises(TypeError, match="df"):
        curves.summaries(pd.DataFrame({"attack": []}))
    clean, labels, up, _ = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up)], {"A": Bright()},
                    rmse=[4], n_boot=0)
    df.clean_per_image = None
    with pytest.raises(ValueError, match="clean"):
        curves.summaries(df)
    with pytest.raises(ValueError, match="column 'how'"):
        curves.ranks(pd.DataFrame(df).drop(columns="how"))
