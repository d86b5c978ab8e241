"""Fair comparison (SPEC §8): the joint ℓ∞ + RMSE projection, RMSE matching on uint8 images,
compare()'s numbers against a hand count, the paired test and the ASR-at-RMSE figure."""

import math
import sys

import numpy as np
import pandas as pd
import pytest

import fairattack as fa
from fairattack import _core
from fairattack.settings import OPTIMIZERS, SIGN_OPTIMIZERS
from reference import LinearOracle
from reference_budget import (bounds, feasible, match_scale, max_reachable_rmse, mcnemar_exact_p,
                              project, random_feasible, rmse, scaled)


def _rmse(a, b):
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.sqrt(np.mean(d * d, axis=tuple(range(1, d.ndim))))


def _clean(n=4, size=32, seed=0):
    """Random uint8 images with some values at 0 and 255 (so the box bounds bite)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    x[:, :4] = 0
    x[:, -4:] = 255
    return x


def _adv(clean, spread, eps=16, seed=1):
    """clean + a random perturbation inside the ε-ball and the box, rounded to uint8."""
    rng = np.random.default_rng(seed)
    d = np.clip(rng.standard_normal(clean.shape) * spread, -eps, eps)
    return np.clip(np.rint(clean + d), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- matching

@pytest.mark.parametrize("target", [2.0, 5.0, 9.0, 12.0])
def test_match_rmse_follows_the_reference_rescaling(target):
    clean = _clean()
    adv = _adv(clean, 5.0)
    matched, reached = fa.match_rmse(clean, adv, target, eps=16)
    assert matched.dtype == np.uint8 and matched.shape == clean.shape
    assert reached.dtype == bool and reached.all()
    got = _rmse(matched, clean)
    assert np.all(np.abs(got - target) <= 0.05), got
    for c, a, m in zip(clean, adv, matched):
        s = match_scale(c, a, target, 16)          # independent bisection on the float image
        ref = c + scaled(c, a, s, 16)
        # each value is one of the two integers around the rescaled value
        assert np.abs(m - ref).max() <= 1.0 + 1e-4
        assert abs(float(np.mean(m - ref))) < 0.05
        assert np.mean(np.abs(m - ref) < 0.5 + 1e-4) > 0.8  # mostly the nearer integer


def test_match_rmse_shrinks_and_amplifies():
    clean = _clean(n=2)
    adv = _adv(clean, 4.0)
    own = _rmse(adv, clean)
    for target in (own.mean() / 2, own.mean() * 2):
        matched, reached = fa.match_rmse(clean, adv, target, eps=16)
        assert reached.all()
        np.testing.assert_allclose(_rmse(matched, clean), target, atol=0.05)
        d_in = adv.astype(np.float64) - clean
        d_out = matched.astype(np.float64) - clean
        # same direction: the perturbation is scaled, never turned
        moved = np.abs(d_out) >= 1
        assert np.all(np.sign(d_out[moved]) == np.sign(d_in[moved]))


def test_match_rmse_per_image_targets_and_float_input():
    clean = _clean(n=3)
    adv = _adv(clean, 6.0)
    targets = np.array([3.0, 7.5, 10.0])
    matched, reached = fa.match_rmse(clean.astype(np.float32), adv.astype(np.float64), targets)
    assert reached.all() and matched.dtype == np.uint8
    np.testing.assert_allclose(_rmse(matched, clean), targets, atol=0.05)


def test_match_rmse_is_idempotent():
    clean = _clean(n=3)
    adv = _adv(clean, 6.0)
    once, reached = fa.match_rmse(clean, adv, 4.0)
    twice, reached2 = fa.match_rmse(clean, once, 4.0)
    assert reached.all() and reached2.all()
    assert np.abs(twice.astype(int) - once).max() <= 1
    np.testing.assert_allclose(_rmse(twice, clean), _rmse(once, clean), atol=0.05)


@pytest.mark.parametrize("eps", [4, 8, 16])
def test_match_rmse_keeps_the_linf_budget_even_for_a_larger_eps_attack(eps):
    clean = _clean(n=2)
    adv = _adv(clean, 20.0, eps=40)          # a peer attack with a larger ε
    target = 0.6 * eps
    matched, reached = fa.match_rmse(clean, adv, target, eps=eps)
    d = matched.astype(np.float64) - clean
    assert np.abs(d).max() <= eps
    lo, hi = bounds(clean, eps)
    assert np.all(d >= lo) and np.all(d <= hi)
    assert reached.all()
    np.testing.assert_allclose(_rmse(matched, clean), target, atol=0.05)


def test_unreachable_images_are_flagged_and_saturated():
    clean = _clean(n=3)
    adv = _adv(clean, 6.0)
    adv[1] = clean[1]                         # no perturbation: nothing to scale
    matched, reached = fa.match_rmse(clean, adv, [6.0, 6.0, 17.0], eps=16)  # 17 > ε
    assert reached.tolist() == [True, False, False]
    np.testing.assert_array_equal(matched[1], clean[1])
    # image 2: the largest-RMSE image, every moved value at its bound
    ref = clean[2] + scaled(clean[2], adv[2], np.inf, 16)
    np.testing.assert_array_equal(matched[2], ref.astype(np.uint8))
    assert _rmse(matched[2:], clean[2:])[0] == pytest.approx(
        max_reachable_rmse(clean[2], adv[2], 16), abs=1e-6)


def test_sign_attack_at_the_bound_cannot_be_amplified():
    clean = np.full((1, 16, 16, 3), 128, np.uint8)
    sign = np.where(np.random.default_rng(0).random(clean.shape) < 0.5, -1, 1)
    adv = (clean + 16 * sign).astype(np.uint8)        # FGSM-like: RMSE 16 = ε
    matched, reached = fa.match_rmse(clean, adv, 8.0)
    assert reached.all() and abs(_rmse(matched, clean)[0] - 8.0) <= 0.05
    _, reached = fa.match_rmse(clean, adv, 16.0)
    assert reached.all()
    _, reached = fa.match_rmse(clean, adv, 16.5)
    assert not reached.any()


@pytest.mark.parametrize("kwargs, message", [
    ({"target": -1.0}, "target"),
    ({"target": float("nan")}, "target"),
    ({"target": [1.0, 2.0]}, "target"),
    ({"target": "6"}, "target"),
    ({"target": 6.0, "eps": 0}, "eps"),
    ({"target": 6.0, "eps": 300}, "eps"),
])
def test_match_rmse_rejects_bad_arguments(kwargs, message):
    clean = _clean(n=3, size=8)
    with pytest.raises((ValueError, TypeError), match=message):
        fa.match_rmse(clean, _adv(clean, 3.0), **kwargs)


def test_match_rmse_rejects_mismatched_images():
    clean = _clean(n=2, size=8)
    with pytest.raises(ValueError, match="adv"):
        fa.match_rmse(clean, clean[:1], 3.0)
    with pytest.raises(ValueError, match="clean"):
        fa.match_rmse(clean[..., :2], clean[..., :2], 3.0)
    with pytest.raises(ValueError, match="adv"):
        fa.match_rmse(clean, clean.astype(np.float32) + 300, 3.0)


# ----------------------------------------------------------------------------- projection

def _projection_case(seed=0):
    rng = np.random.default_rng(seed)
    x0 = _clean(n=5, size=8, seed=seed).astype(np.float32)
    y = x0 + rng.standard_normal(x0.shape).astype(np.float32) * np.array(
        [2, 8, 20, 40, 0.5], np.float32)[:, None, None, None]
    return x0, y


@pytest.mark.parametrize("eps, max_rmse", [(16, 2.0), (16, 6.0), (8, 5.0), (16, 100.0),
                                           (4, 0.5)])
def test_project_rmse_matches_the_numpy_reference(eps, max_rmse):
    x0, y = _projection_case()
    got = _core.project_rmse(x0, y, float(eps), float(max_rmse))
    ref = project(x0, y, eps, max_rmse)
    np.testing.assert_allclose(got, ref, atol=2e-3)
    for a, b in zip(x0, got):
        assert feasible(a, b, eps, max_rmse)


@pytest.mark.parametrize("max_rmse", [1.0, 4.0, 9.0])
def test_project_rmse_is_the_closest_feasible_point(max_rmse):
    eps = 16
    x0, y = _projection_case(seed=3)
    got = np.asarray(_core.project_rmse(x0, y, float(eps), float(max_rmse)), np.float64)
    rng = np.random.default_rng(1)
    for a, b, p in zip(x0.astype(np.float64), y.astype(np.float64), got):
        best = np.linalg.norm(p - b)
        for i in range(300):
            if i % 2:  # anywhere in the feasible set
                q = random_feasible(a, eps, max_rmse, rng, spread=rng.uniform(0.05, 2))
            else:      # close to the projection
                q = random_feasible(a, eps, max_rmse, rng, around=p - a,
                                    spread=rng.uniform(1e-3, 0.05))
            assert feasible(a, q, eps, max_rmse)
            assert np.linalg.norm(q - b) >= best - 1e-3


class Recorder(LinearOracle):
    """A linear oracle that keeps every image it is asked about."""

    def __init__(self, shape, **kwargs):
        super().__init__(shape, **kwargs)
        self.seen = []

    def __call__(self, x, labels, want_grad):
        self.seen.append(np.array(x, np.float64))
        return super().__call__(x, labels, want_grad)


def _budget_images(oracle, n=4, size=8, seed=5):
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    return x, np.array([oracle.predict(xi.astype(np.float64)) for xi in x])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("setting, eps, max_rmse, extra", [
    ("const_loss", 16, 2.0, {}),
    ("fixed", 8, 3.0, {"max_iter": 6}),
    ("rmse_loss", 16, 1.0, {}),
    ("const_rmse", 16, 4.0, {"stop_rmse": 3.5, "max_iter": 12}),
])
def test_joint_budget_holds_on_every_iterate(optimizer, setting, eps, max_rmse, extra):
    oracle = Recorder((8, 8, 3), classes=10, scale=40.0, seed=2)
    x0, y = _budget_images(oracle)
    if optimizer in SIGN_OPTIMIZERS and setting != "fixed":
        extra = dict(extra, first_step_rmse=1.0)
    if optimizer == "FGSM" and setting == "const_rmse":  # one step by definition: refused
        with pytest.raises(ValueError, match="FGSM"):
            fa.attack(oracle, x0, y, optimizer, setting, eps=eps, max_rmse=max_rmse, **extra)
        return
    res = fa.attack(oracle, x0, y, optimizer, setting, eps=eps, max_rmse=max_rmse,
                    stop_loss=math.inf, **extra)
    assert (res.status != "nan").all()
    clean = x0.astype(np.float64).reshape(len(x0), -1)
    asked = np.concatenate(oracle.seen).reshape(-1, clean.shape[1])
    assert len(asked) > len(x0)  # the attack took steps
    if optimizer in ("NI-FGSM", "VMI-FGSM", "VNI-FGSM"):
        # NI's look-ahead point x + α·μ·m is not projected (the reference code, SPEC §3), VMI's
        # neighbours lie in the ball of vmi_beta·ε around x, and which calls are which is not
        # visible here: check what it returns
        asked = asked[:0]
    for x in asked:
        # the image it belongs to: distinct random images are ~100 px apart, a budget ~ a few
        own = clean[np.argmin(np.abs(clean - x).max(axis=1))]
        d = x - own
        assert np.abs(d).max() <= eps + 1e-3
        assert rmse(d) <= max_rmse + 1e-3
        assert x.min() >= 0 and x.max() <= 255
    # what the victims see: the budget holds on the uint8 images too (fa.attack re-quantises an
    # image that rounding lifted above max_rmse)
    assert (res.rmse <= max_rmse * (1 + 1e-6)).all() and (res.linf <= eps).all()


def test_fgsm_under_a_joint_budget_is_the_projected_sign_step():
    oracle = LinearOracle((8, 8, 3), classes=10, scale=40.0, seed=2)
    x0, y = _budget_images(oracle, n=3)
    res = fa.attack(oracle, x0, y, "FGSM", eps=16, max_rmse=3.0)
    for img, clean, label in zip(res.images, x0.astype(np.float64), y):
        _, _, g = oracle.one(clean, int(label))
        ref = project(clean[None], (clean + 16 * np.sign(g))[None], 16, 3.0)[0]
        # rounding, and at most one level more where rounding lifted the RMSE above 3
        assert np.abs(img - ref).max() <= 1.5 + 1e-3
    assert np.all(res.rmse <= 3.0 * (1 + 1e-6)) and np.all(res.rmse > 2.7)


def test_stop_rmse_above_max_rmse_is_rejected():
    with pytest.raises(ValueError, match="stop_rmse"):
        fa.make_config("Adam", "const_rmse", max_rmse=4.0)        # stop_rmse 15 > 4
    fa.make_config("Adam", "const_rmse", max_rmse=4.0, stop_rmse=4.0)


# ----------------------------------------------------------------------------- compare: hand count

CLEAN_VALUE = 100


class Bright:
    """Victim A: class 1 when the image's mean exceeds CLEAN_VALUE + 10, else class 0."""

    def predict(self, images):
        return (np.asarray(images, np.float64).mean(axis=(1, 2, 3)) > CLEAN_VALUE + 10) \
            .astype(np.int64)


class Changed:
    """Victim B: class 1 when some value differs from CLEAN_VALUE by 5 or more, else 0."""

    def predict(self, images):
        d = np.abs(np.asarray(images, np.float64) - CLEAN_VALUE)
        return (d.max(axis=(1, 2, 3)) >= 5).astype(np.int64)


class PickySurrogate:
    """Gets every image right except those whose value is CLEAN_VALUE + 1."""

    def predict(self, images):
        return (np.asarray(images)[:, 0, 0, 0] == CLEAN_VALUE + 1).astype(np.int64)


def _hand_case():
    n, shape = 6, (8, 8, 3)
    clean = np.full((n,) + shape, CLEAN_VALUE, np.uint8)
    clean[2] = CLEAN_VALUE + 1                 # the surrogate gets image 2 wrong: it never counts
    labels = np.zeros(n, np.int64)
    up_k = np.array([2, 4, 8, 12, 16, 0])      # "up": every value + k (image 5: no change)
    up = (clean.astype(int) + up_k[:, None, None, None]).astype(np.uint8)
    pattern = np.where(np.indices(shape).sum(axis=0) % 2 == 0, 1, -1)  # half +, half -
    checker = (clean.astype(int) + 6 * pattern).astype(np.uint8)        # RMSE 6, mean unchanged
    return clean, labels, up, checker


def test_compare_numbers_match_a_hand_count():
    clean, labels, up, checker = _hand_case()
    calls = []

    def checker_fn(images, y):
        calls.append(len(images))
        return (images.astype(int) + 6 * np.where(
            np.indices(images.shape[1:]).sum(axis=0) % 2 == 0, 1, -1)).astype(np.uint8)

    df = fa.compare(PickySurrogate(), clean, labels,
                    attacks=[("up", up), ("checker", checker_fn)],
                    victims={"A": Bright(), "B": Changed()}, rmse=[4, 6, 12], n_boot=4000)
    assert calls == [5]                       # the callable saw only the 5 images that count
    assert (df["n_images"] == 5).all()
    got = {(r.attack, str(r.rmse), r.victim): r.asr for r in df.itertuples()}
    # kept images 0, 1, 3, 4, 5 with "up" k = 2, 4, 12, 16, 0
    # native: A fooled iff k > 10 (images 3, 4); B iff k >= 5 (images 3, 4)
    # rescaled: δ = r on every value of the 4 images with k > 0; image 5 stays clean
    expect = {("up", "native", "A"): 2 / 5, ("up", "native", "B"): 2 / 5,
              ("up", "4.0", "A"): 0.0, ("up", "4.0", "B"): 0.0,
              ("up", "6.0", "A"): 0.0, ("up", "6.0", "B"): 4 / 5,
              ("up", "12.0", "A"): 4 / 5, ("up", "12.0", "B"): 4 / 5,
              # checker: mean unchanged (A never fooled), B fooled iff the amplitude >= 5
              ("checker", "native", "A"): 0.0, ("checker", "native", "B"): 1.0,
              ("checker", "4.0", "A"): 0.0, ("checker", "4.0", "B"): 0.0,
              ("checker", "6.0", "A"): 0.0, ("checker", "6.0", "B"): 1.0,
              ("checker", "12.0", "A"): 0.0, ("checker", "12.0", "B"): 1.0}
    for key, value in expect.items():
        assert got[key] == pytest.approx(value), key
        attack, r, _ = key
        assert got[(attack, r, "mean")] == pytest.approx(
            (got[(attack, r, "A")] + got[(attack, r, "B")]) / 2)
    unreachable = {(r.attack, str(r.rmse)): r.n_unreachable for r in df.itertuples()}
    assert unreachable[("up", "native")] == 0
    assert all(unreachable[("up", r)] == 1 for r in ("4.0", "6.0", "12.0"))  # image 5: δ = 0
    assert all(unreachable[("checker", r)] == 0 for r in ("4.0", "6.0", "12.0"))
    native = df[(df["how"] == "native") & (df["victim"] == "mean")].set_index("attack")
    assert native.loc["up", "rmse_mean"] == pytest.approx((2 + 4 + 12 + 16 + 0) / 5)
    assert native.loc["up", "linf_mean"] == pytest.approx((2 + 4 + 12 + 16 + 0) / 5)
    assert native.loc["checker", "rmse_mean"] == pytest.approx(6.0)
    matched = df[(df["rmse"].astype(str) == "12.0") & (df["victim"] == "mean")]
    assert matched.set_index("attack").loc["up", "rmse_mean"] == pytest.approx(12 * 4 / 5)
    # intervals: a bootstrap mean of 5 outcomes with rate p is Binomial(5, p) / 5, whose 2.5%
    # and 97.5% quantiles are [0, 0.8] for p = 0.4 and [0.4, 1] for p = 0.8
    assert (df["ci_low"] <= df["asr"] + 1e-12).all() and (df["asr"] <= df["ci_high"] + 1e-12).all()
    single = df[df["victim"] != "mean"]
    for p, low, high in [(0.4, 0.0, 0.8), (0.8, 0.4, 1.0)]:
        rows = single[np.isclose(single["asr"], p)]
        assert len(rows) >= 2
        np.testing.assert_allclose(rows["ci_low"], low, atol=0.02)
        np.testing.assert_allclose(rows["ci_high"], high, atol=0.02)
    sure = df[df["asr"].isin([0.0, 1.0])]
    assert (sure["ci_low"] == sure["asr"]).all() and (sure["ci_high"] == sure["asr"]).all()
    # the paired test, counted by hand
    test = fa.paired_test(df, "up", "checker", rmse="native", victim="A")
    assert (test["b"], test["c"], test["n_images"]) == (2, 0, 5)
    assert test["p_value"] == pytest.approx(mcnemar_exact_p(2, 0)) == pytest.approx(0.5)
    test = fa.paired_test(df, "up", "checker", rmse=6, victim="B")
    assert (test["b"], test["c"]) == (0, 1) and test["p_value"] == pytest.approx(1.0)
    test = fa.paired_test(df, "up", "checker", rmse=6, victim="B", exclude_unreachable=True)
    assert (test["b"], test["c"], test["n_images"]) == (0, 0, 4)
    per_image = df.per_image
    assert set(per_image["image"]) == {0, 1, 3, 4, 5}


def test_compare_is_seeded_and_ordered():
    clean, labels, up, checker = _hand_case()
    kwargs = dict(attacks=[("up", up), ("checker", checker)], victims={"A": Bright(),
                  "B": Changed()}, rmse=[12, 4], n_boot=100)
    one = fa.compare(PickySurrogate(), clean, labels, seed=3, **kwargs)
    two = fa.compare(PickySurrogate(), clean, labels, seed=3, **kwargs)
    pd.testing.assert_frame_equal(one, two)
    assert list(dict.fromkeys(one["attack"])) == ["up", "checker"]
    assert list(dict.fromkeys(one["rmse"].astype(str))) == ["native", "4.0", "12.0"]
    assert list(dict.fromkeys(one["victim"])) == ["A", "B", "mean"]
    for column in ("attack", "rmse", "victim", "asr", "ci_low", "ci_high", "n_images",
                   "n_unreachable", "how", "rmse_mean", "linf_mean"):
        assert column in one.columns
    assert fa.compare(None, clean, labels, **kwargs)["n_images"].eq(6).all()
    # a DataFrame: filters, copies and concatenation work and keep the per-image table
    both = pd.concat([one[one["victim"] == "A"], two[two["how"] != "native"]])
    assert len(both) == 6 + 12
    assert one[one["victim"] == "A"].copy().per_image is one.per_image


def test_mcnemar_against_the_exact_sum_and_chi_square():
    from fairattack.outcome import mcnemar

    for b, c in [(0, 0), (3, 0), (7, 2), (12, 12), (1, 20)]:
        stat, p, method = mcnemar(b, c)
        assert method == "exact" and p == pytest.approx(mcnemar_exact_p(b, c), rel=1e-12)
    stat, p, method = mcnemar(30, 12)
    assert method == "chi2" and stat == pytest.approx((18 - 1) ** 2 / 42)
    # chi-square(1) survival at 6.881 (= 17²/42) is 0.00871
    assert p == pytest.approx(0.008711, abs=2e-5)


def _oracle_case(n=6, size=8):
    oracle = LinearOracle((size, size, 3), classes=10, scale=40.0, seed=2)
    x = np.random.default_rng(7).integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    y = np.array([oracle.predict(xi.astype(np.float64)) for xi in x])
    y[0] = (y[0] + 1) % 10                     # one image the surrogate gets wrong

    class Victim:
        def __init__(self, seed):
            self.o = LinearOracle((size, size, 3), classes=10, scale=40.0, seed=seed)

        def predict(self, images):
            return np.array([self.o.predict(im.astype(np.float64)) for im in images])

    return oracle, x, y, {"v1": Victim(3), "v2": Victim(4)}


def test_compare_runs_fairattack_attacks_in_both_modes():
    oracle, x, y, victims = _oracle_case()
    attacks = ["FGSM", {"name": "PGD-5", "optimizer": "I-FGSM", "max_iter": 5}, "Adam"]
    rescale = fa.compare(oracle, x, y, attacks, victims, rmse=[2, 5], n_boot=50)
    budget = fa.compare(oracle, x, y, attacks, victims, rmse=[2, 5], mode="budget", n_boot=50)
    assert (rescale["n_images"] == 5).all() and (budget["n_images"] == 5).all()
    assert set(rescale["how"]) == {"native", "rescale"}
    assert set(budget["how"]) == {"native", "budget"}
    # the native rows are the same attack runs
    pd.testing.assert_frame_equal(rescale[rescale["how"] == "native"].reset_index(drop=True),
                                  budget[budget["how"] == "native"].reset_index(drop=True))
    for df in (rescale, budget):
        for r in (2.0, 5.0):
            rows = df[df["rmse"].map(lambda v: v == r)]
            assert (rows["rmse_mean"] <= r + 0.05).all()
            assert (rows["linf_mean"] <= 16).all()
    # FGSM's native RMSE is near ε, so it is reached from above at both budgets in both modes
    fgsm = budget[(budget["attack"] == "FGSM") & (budget["how"] == "budget")]
    assert (fgsm["n_unreachable"] == 0).all()
    per = budget.per_image
    assert set(per["image"]) == {1, 2, 3, 4, 5}
    # a dict spec and its name; the per-image rows agree with the table
    pgd = per[(per["attack"] == "PGD-5") & (per["how"] == "native")]
    row = budget[(budget["attack"] == "PGD-5") & (budget["how"] == "native")
                 & (budget["victim"] == "v1")].iloc[0]
    assert row["asr"] == pytest.approx(pgd[pgd["victim"] == "v1"]["fooled"].mean())


def test_compare_with_a_stop_rmse_setting_in_budget_mode():
    oracle, x, y, victims = _oracle_case()
    df = fa.compare(oracle, x, y, [{"name": "Adam-cr", "optimizer": "Adam",
                                     "setting": "const_rmse"}],
                    victims, rmse=[3], mode="budget", n_boot=0)
    rows = df[df["how"] == "budget"]
    assert (rows["rmse_mean"] <= 3.05).all() and rows["ci_low"].isna().all()


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fast"}, "mode"),
    ({"rmse": [0, 4]}, "rmse"),
    ({"rmse": [4, 4]}, "rmse"),
    ({"eps": -1}, "eps"),
    ({"n_boot": -1}, "n_boot"),
    ({"batch_size": 0}, "batch_size"),
    ({"attacks": ["Adamax"]}, "Adamax"),
    ({"attacks": [{"optimizer": "PGD", "eps": 8}]}, "eps"),
    ({"attacks": [{"name": "x"}]}, "optimizer"),
    ({"attacks": ["PGD", "PGD"]}, "unique"),
    ({"attacks": [("bad", 3)]}, "bad"),
    ({"attacks": [("short", np.zeros((1, 8, 8, 3), np.uint8))]}, "short"),
    ({"attacks": [{"optimizer": "PGD", "momentum": "x"}]}, "momentum"),
    ({"victims": {}}, "victims"),
    ({"victims": {"mean": Bright()}}, "mean"),
    ({"victims": {"v": object()}}, "victims"),
])
def test_compare_rejects_bad_arguments(kwargs, message):
    oracle, x, y, victims = _oracle_case()
    args = dict(attacks=["FGSM"], victims=victims, rmse=[2])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        fa.compare(oracle, x, y, **args)


def test_compare_rejects_a_callable_returning_the_wrong_shape():
    oracle, x, y, victims = _oracle_case()
    with pytest.raises(ValueError, match="'crop'"):
        fa.compare(oracle, x, y, [("crop", lambda im, lab: im[:, :4])], victims, rmse=[2])


def test_compare_caches_and_resumes(tmp_path, monkeypatch):
    import importlib

    from tiny import save_tiny

    compare_module = importlib.import_module("fairattack.compare")  # fa.compare is the function

    surrogate = fa.load_model(save_tiny(tmp_path / "s.pt", 0))
    victims = {"v": fa.load_model(save_tiny(tmp_path / "v.pt", 1))}
    x = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    y = surrogate.predict(x)
    y[0] = (y[0] + 1) % 1000
    peer = np.clip(x.astype(int) + 8, 0, 255).astype(np.uint8)
    runs = []
    real = compare_module._native
    monkeypatch.setattr(compare_module, "_native",
                        lambda attack, *a, **k: runs.append(attack.name) or real(attack, *a, **k))
    kwargs = dict(attacks=["FGSM", ("peer", peer)], victims=victims, rmse=[2, 4], n_boot=20,
                  mode="budget", cache_dir=tmp_path / "cache")
    first = fa.compare(surrogate, x, y, **kwargs)
    assert first.attrs["cached_cells"] == 0 and first.attrs["cells"] == 6
    assert runs == ["FGSM", "FGSM", "FGSM", "peer"]      # native, then r = 2 and 4 under budget
    runs.clear()
    again = fa.compare(surrogate, x, y, **kwargs)
    assert runs == [] and again.attrs["cached_cells"] == 6
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first.per_image, again.per_image)
    # what determines a cell is in its key: another budget or image set recomputes
    third = fa.compare(surrogate, x, y, **dict(kwargs, rmse=[2, 6]))
    assert third.attrs["cached_cells"] == 4 and runs == ["FGSM", "peer"]  # r = 6 only
    runs.clear()
    fa.compare(surrogate, x[1:], y[1:], **dict(kwargs, attacks=["FGSM", ("peer", peer[1:])]))
    assert runs == ["FGSM", "FGSM", "FGSM", "peer"]
    # callables have no identity: never cached
    runs.clear()
    fa.compare(surrogate, x, y, **dict(kwargs, attacks=[("fn", lambda im, lab: peer[1:])]))
    fa.compare(surrogate, x, y, **dict(kwargs, attacks=[("fn", lambda im, lab: peer[1:])]))
    assert runs == ["fn", "fn"]


def test_paired_test_rejects_bad_arguments():
    clean, labels, up, checker = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up), ("checker", checker)],
                    {"A": Bright(), "B": Changed()}, rmse=[4], n_boot=0)
    with pytest.raises(ValueError, match="victim"):
        fa.paired_test(df, "up", "checker", 4, "mean")
    with pytest.raises(ValueError, match="attack_b"):
        fa.paired_test(df, "up", "nope", 4, "A")
    with pytest.raises(ValueError, match="rmse"):
        fa.paired_test(df, "up", "checker", 8, "A")
    with pytest.raises(TypeError, match="df_or_records"):
        fa.paired_test([1, 2], "up", "checker", 4, "A")
    # the per-image table alone works too (e.g. read back from per_image.csv)
    assert fa.paired_test(df.per_image, "up", "checker", 4, "B")["n_images"] == 5


# ----------------------------------------------------------------------------- peers

def test_torchattacks_objects_and_names(tmp_path):
    ta = pytest.importorskip("torchattacks")
    from tiny import TinyImageNet

    net = TinyImageNet(0).eval()
    surrogate = fa.load_model(net, name="tiny", mode="pixels")
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    y = surrogate.predict(x)
    victims = {"self": surrogate}

    class Unit(__import__("torch").nn.Module):
        def forward(self, z):
            return net(z * 255.0)

    df = fa.compare(surrogate, x, y, ["FGSM", ("ta_fgsm", ta.FGSM(Unit(), eps=16 / 255)),
                                      "ta:FGSM"], victims, rmse=[4], n_boot=0)
    native = df[(df["how"] == "native") & (df["victim"] == "mean")].set_index("attack")
    # torchattacks' FGSM is fairattack's FGSM: one sign step of ε
    for name in ("ta_fgsm", "ta:FGSM"):
        assert native.loc[name, "linf_mean"] == pytest.approx(16, abs=1)
        assert native.loc[name, "rmse_mean"] == pytest.approx(native.loc["FGSM", "rmse_mean"],
                                                              abs=0.2)
    per = df.per_image
    a = per[(per["attack"] == "FGSM") & (per["how"] == "native")]["fooled"].to_numpy()
    b = per[(per["attack"] == "ta:FGSM") & (per["how"] == "native")]["fooled"].to_numpy()
    assert (a == b).mean() >= 0.75


def test_missing_torchattacks_names_the_extra(monkeypatch):
    oracle, x, y, victims = _oracle_case()
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install torchattacks==3\.5\.1"):
        fa.compare(oracle, x, y, ["ta:PGD"], victims, rmse=[2])


# ----------------------------------------------------------------------------- figure

def test_plot_asr_at_rmse_draws_every_panel(tmp_path):
    clean, labels, up, checker = _hand_case()
    df = fa.compare(PickySurrogate(), clean, labels, [("up", up), ("checker", checker)],
                    {"A": Bright(), "B": Changed()}, rmse=[4, 6, 12], n_boot=50)
    fig = fa.figures.plot_asr_at_rmse(df, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["A", "B", "mean"]
    # one line per attack per panel, its points at the budgets
    lines = [ln for ln in axes[0].get_lines() if ln.get_label() == "up"]
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_xdata(), [4, 6, 12])
    np.testing.assert_allclose(lines[0].get_ydata(), [0, 0, 80])
    one = fa.figures.plot_asr_at_rmse(df, victims=["B"])
    assert [ax.get_title() for ax in one.axes if ax.get_visible()] == ["B"]
    with pytest.raises(ValueError, match="victims"):
        fa.figures.plot_asr_at_rmse(df, victims=["C"])
    with pytest.raises(ValueError, match="ci_low"):
        fa.figures.plot_asr_at_rmse(df.drop(columns="ci_low"))
    with pytest.raises(TypeError, match="df"):
        fa.figures.plot_asr_at_rmse({"a": 1})
