"""Independent NumPy references of SPEC §8's budgets (one image at a time, float64), written from
the spec and not from the C code: the joint ℓ∞ + RMSE projection (bisection on λ) and the RMSE
matching by a per-image scale (bisection on s)."""

import numpy as np


def bounds(x0, eps):
    """Per-value bounds of δ: l = max(−ε, −x0), u = min(ε, 255 − x0) (0 always inside)."""
    x0 = np.asarray(x0, np.float64)
    return np.maximum(-eps, -x0), np.minimum(eps, 255.0 - x0)


def rmse(delta):
    return float(np.sqrt(np.mean(np.asarray(delta, np.float64) ** 2)))


def project_one(x0, y, eps, max_rmse, iters=200):
    """SPEC §8: δ = clip((y − x0) / (1 + λ), l, u), λ = 0 if that meets RMSE ≤ max_rmse, else the
    λ > 0 with RMSE(δ) = max_rmse (RMSE decreases in λ: bisection). Returns x0 + δ."""
    x0 = np.asarray(x0, np.float64)
    d = np.asarray(y, np.float64) - x0
    lo_b, hi_b = bounds(x0, eps)

    def delta(lam):
        return np.clip(d / (1.0 + lam), lo_b, hi_b)

    if max_rmse <= 0 or rmse(delta(0.0)) <= max_rmse:
        return x0 + delta(0.0)
    lo, hi = 0.0, 1.0
    while rmse(delta(hi)) > max_rmse:
        hi *= 2.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if rmse(delta(mid)) > max_rmse:
            lo = mid
        else:
            hi = mid
    return x0 + delta(hi)


def project(x0, y, eps, max_rmse):
    return np.stack([project_one(a, b, eps, max_rmse) for a, b in zip(x0, y)])


def feasible(x0, x, eps, max_rmse, tol=1e-3):
    """Inside {‖δ‖∞ ≤ ε} ∩ {RMSE(δ) ≤ max_rmse} ∩ box (per image, float64 arithmetic)."""
    d = np.asarray(x, np.float64) - np.asarray(x0, np.float64)
    lo_b, hi_b = bounds(x0, eps)
    return bool((d >= lo_b - tol).all() and (d <= hi_b + tol).all()
                and rmse(d) <= max_rmse + tol)


def random_feasible(x0, eps, max_rmse, rng, around=None, spread=1.0):
    """A random point of the feasible set, made feasible without the projection: clip to the
    box, then shrink toward 0 (the set is convex and holds 0). `around`: a perturbation δ to
    sample near."""
    x0 = np.asarray(x0, np.float64)
    lo_b, hi_b = bounds(x0, eps)
    base = np.zeros_like(x0) if around is None else np.asarray(around, np.float64)
    d = np.clip(base + spread * rng.standard_normal(x0.shape) * eps, lo_b, hi_b)
    r = rmse(d)
    if r > max_rmse:
        d *= max_rmse / r
    return x0 + d


def scaled(x0, adv, s, eps):
    """δ_s = clip(s·(adv − x0), l, u) (SPEC §8's rescaling, float, one image)."""
    x0 = np.asarray(x0, np.float64)
    lo_b, hi_b = bounds(x0, eps)
    d = np.asarray(adv, np.float64) - x0
    if np.isinf(s):
        return np.where(d > 0, hi_b, np.where(d < 0, lo_b, 0.0))
    return np.clip(s * d, lo_b, hi_b)


def max_reachable_rmse(x0, adv, eps):
    """RMSE of clip(s·δ) as s → ∞: every moved value at its bound."""
    return rmse(scaled(x0, adv, np.inf, eps))


def match_scale(x0, adv, target, eps, iters=200):
    """The s >= 0 with RMSE(clip(s·δ, l, u)) = target (float, bisection); None where no s
    reaches it (δ = 0, or the bound-saturated image is below target)."""
    if max_reachable_rmse(x0, adv, eps) < target:
        return None
    lo, hi = 0.0, 1.0
    while rmse(scaled(x0, adv, hi, eps)) < target:
        hi *= 2.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if rmse(scaled(x0, adv, mid, eps)) < target:
            lo = mid
        else:
            hi = mid
    return hi


def mcnemar_exact_p(b, c):
    """Two-sided exact McNemar p-value by summing the binomial(b + c, 1/2) probabilities of every
    outcome at least as extreme as min(b, c) (written as a plain sum, with fractions)."""
    from fractions import Fraction
    from math import comb

    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(Fraction(comb(n, i), 2 ** n) for i in range(k + 1))
    return float(min(Fraction(1), 2 * tail))
