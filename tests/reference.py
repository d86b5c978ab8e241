"""An independent NumPy reference of SPEC §1–§4 (one image at a time, float64), written from the
spec and not from the C code, plus a linear softmax "model" whose gradient is exact. Tests run
the C core on the same oracle and compare."""

import math

import numpy as np


class LinearOracle:
    """logits = scale * W @ (x / 255) + b on the flattened image; CE and its exact gradient.

    Called per image so that its arithmetic never depends on the batch (the core's batching
    test relies on it)."""

    def __init__(self, shape, classes=10, scale=40.0, seed=0):
        rng = np.random.default_rng(seed)
        self.shape = tuple(shape)
        dim = int(np.prod(shape))
        self.W = rng.standard_normal((classes, dim)) / math.sqrt(dim) * scale
        self.b = rng.standard_normal(classes) * 0.1
        self.calls = 0

    def one(self, x, y):
        z = self.W @ (x.reshape(-1).astype(np.float64) / 255.0) + self.b
        z = z - z.max()
        logp = z - np.log(np.exp(z).sum())
        p = np.exp(logp)
        p[y] -= 1.0
        grad = (self.W.T @ p / 255.0).reshape(self.shape)
        return -logp[y], int(np.argmax(z)), grad

    def predict(self, x):
        return int(np.argmax(self.W @ (x.reshape(-1).astype(np.float64) / 255.0) + self.b))

    def __call__(self, x, labels, want_grad):
        self.calls += 1
        out = [self.one(xi, int(yi)) for xi, yi in zip(x, labels)]
        loss = np.array([o[0] for o in out], np.float32)
        pred = np.array([o[1] for o in out], np.int64)
        grad = np.stack([o[2] for o in out]).astype(np.float32)
        return loss, pred, grad


def project(x, x0, eps):
    x = np.minimum(np.maximum(x, 0.0), 255.0)
    return np.minimum(np.maximum(x, x0 - eps), x0 + eps)


def rmse(x, x0):
    return float(np.sqrt(np.mean((x - x0) ** 2)))


def solve_increasing(f, target, hi_start):
    """The smallest-bracket root of a non-decreasing f(s) = target, s >= 0, by bisection."""
    lo, hi = 0.0, hi_start
    for _ in range(200):
        if f(hi) >= target:
            break
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class Rule:
    """The update rules of SPEC §3, element-wise, state starting at zero."""

    def __init__(self, name, cfg, shape):
        self.name, self.c = name, cfg
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)

    def direction(self, g, x, k):
        c, name = self.c, self.name
        if name == "LAdam":
            g = g - c["ladam_lambda"] * x
        if name == "GD":
            return g
        if name in ("MGD", "NAGD"):
            self.m = c["momentum"] * self.m + g
            return self.m
        if name in ("Adam", "LAdam", "AdamW"):
            self.m = c["beta1"] * self.m + (1 - c["beta1"]) * g
            self.v = c["beta2"] * self.v + (1 - c["beta2"]) * g * g
            d = self.m / (np.sqrt(self.v) + c["delta"])
            return d + c["adamw_decay"] * x if name == "AdamW" else d
        if name == "AdaB":
            self.m = c["beta1"] * self.m + (1 - c["beta1"]) * g
            self.v = c["beta2"] * self.v + (1 - c["beta2"]) * (g - self.m) ** 2
            return self.m / (np.sqrt(self.v) + c["delta"])
        if name == "MSVAG":
            b = c["msvag_beta"]
            self.m = b * self.m + (1 - b) * g
            self.v = b * self.v + (1 - b) * g * g
            rho = (1 - b) * (1 + b ** (k + 2)) / ((1 + b) * (1 - b ** (k + 2)))
            den = (1 - 2 * rho) * self.m ** 2 + rho * self.v
            safe = np.where(den == 0, 1.0, den)
            return np.where(den == 0, 0.0, (1 - rho) * self.m ** 2 / safe * self.m)
        if name == "RMSProp":
            self.v = c["rmsprop_rho"] * self.v + (1 - c["rmsprop_rho"]) * g * g
            return g / np.sqrt(self.v + c["delta"])
        if name == "Yogi":
            self.m = c["beta1"] * self.m + (1 - c["beta1"]) * g
            self.v = self.v - (1 - c["beta2"]) * g * g * np.sign(self.v - g * g)
            return self.m / (np.sqrt(self.v) + c["delta"])
        if name in ("FGSM", "PGD"):
            return np.sign(g)
        if name in ("MI-FGSM", "NI-FGSM", "VMI-FGSM", "VNI-FGSM"):
            self.m = c["momentum"] * self.m + g
            return np.sign(self.m)
        raise ValueError(name)


def uniform_pm1(seed, index, j):
    """The counter-based draw of fairattack.h's random start and VMI neighbours: splitmix64 of
    (seed, image index, value index j), the top 24 bits mapped to [-1, 1)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) ^ (np.uint64(index) * np.uint64(0x9E3779B97F4A7C15))
             ^ (j.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return (u * np.float32(2.0) - np.float32(1.0)).astype(np.float64)


def neighbour_mean(oracle, x, y, cfg, k, index):
    """VMI's mean gradient over cfg["vmi_neighbours"] points x + U(-beta*eps, beta*eps) (clipped
    to the pixel box), seeded as fairattack.h's fa_config says."""
    n, radius = cfg["vmi_neighbours"], cfg["vmi_beta"] * cfg["eps"]
    j = np.arange(x.size)
    total = np.zeros_like(x)
    for q in range(n):
        seed = (cfg["seed"] + 0x9E3779B97F4A7C15 * (1 + k * n + q)) % 2 ** 64
        u = uniform_pm1(seed, index, j).reshape(x.shape)
        total += oracle.one(np.clip(x + radius * u, 0.0, 255.0), y)[2]
    return total / n


def reference_attack(oracle, x0, y, name, cfg, index=0):
    """SPEC §2's loop for one image (its index: VMI's neighbour draws). Returns (x, status,
    iterations, alpha, loss)."""
    x0 = x0.astype(np.float64)
    eps, lookahead = cfg["eps"], name in ("NAGD", "NI-FGSM", "VNI-FGSM")
    variance = np.zeros_like(x0)
    authors_jump = name == "NAGD" and cfg["nesterov"] in (0, "authors")  # code or name
    rule = Rule(name, cfg, x0.shape)
    loss0, pred0, g = oracle.one(x0, y)
    if cfg["skip_misclassified"] and pred0 != y:
        return x0, "skipped", 0, 0.0, float("nan")
    x, k, alpha = x0.copy(), 0, None
    best, best_loss = x0.copy(), -math.inf
    while True:
        loss, _, g = oracle.one(x, y)
        if loss > best_loss:
            best, best_loss = x.copy(), loss
        if k >= cfg["max_iter"]:  # SPEC §2: the max-CE iterate, or the last one (fixed)
            if cfg.get("returns", 0) == 1:
                return x, "max_iter", k, alpha, loss
            return best, "max_iter", k, alpha, best_loss
        if loss >= cfg["stop_loss"]:
            return x, "stop_loss", k, alpha, loss
        if cfg["stop_rmse"] > 0 and rmse(x, x0) >= cfg["stop_rmse"] * (1 - 1e-3):
            return x, "stop_rmse", k, alpha, loss
        at = x
        if lookahead and k >= 1:  # NI-FGSM's look-ahead is not projected (reference code)
            at = x + cfg["momentum"] * alpha * rule.m
            if name == "NAGD":
                at = project(at, x0, eps)
            _, _, g = oracle.one(at, y)
        if name in ("VMI-FGSM", "VNI-FGSM"):  # variance tuning: g + v_{k-1}; v_k from x
            g, variance = g + variance, neighbour_mean(oracle, x, y, cfg, k, index) - g
        if name in ("MI-FGSM", "NI-FGSM", "VMI-FGSM", "VNI-FGSM"):  # SPEC §3: g / mean|g|
            g = g / np.abs(g).mean() if np.abs(g).sum() > 0 else g
        if cfg["rmse_weight"] > 0 and k >= 1 and rmse(at, x0) > 0:
            g = g + cfg["rmse_weight"] * (at - x0) / (x0.size * rmse(at, x0))
        d = rule.direction(g, at, k)
        if k == 0:
            if cfg["alpha"] > 0:
                alpha = cfg["alpha"]
            else:
                r1 = cfg["first_step_rmse"]
                scale = math.sqrt(np.mean(d * d))
                alpha = 0.0 if scale == 0 else solve_increasing(
                    lambda a: rmse(project(x0 + a * d, x0, eps), x0), r1, r1 / scale)
        base = at if authors_jump else x
        step = alpha
        if cfg["stop_rmse"] > 0 and rmse(project(base + alpha * d, x0, eps), x0) > cfg["stop_rmse"]:
            t = solve_increasing(lambda s: rmse(project(base + s * alpha * d, x0, eps), x0),
                                 cfg["stop_rmse"], 1.0)
            step = min(t, 1.0) * alpha
        x = project(base + step * d, x0, eps)
        k += 1


def reference_metrics(adv, clean):
    """Per-image metrics of SPEC §1 for one HWC image pair (float64)."""
    d = adv.astype(np.float64) - clean.astype(np.float64)
    mse = np.mean(d * d)
    return {"rmse": math.sqrt(mse), "linf": np.abs(d).max(), "l2": math.sqrt((d * d).sum()),
            "l1": np.abs(d).mean(), "l0": float(np.mean(np.abs(d) > 0.5)),
            "psnr": math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)}
