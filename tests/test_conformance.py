"""Backend conformance: every entry of the backend table (csrc/core/fa_backend.h) driven with
identical inputs through `_core.backend_op`, and the attack loop with a synthetic oracle on each
backend.

On every machine (CI): the CPU backend against the independent NumPy references
(tests/reference.py, tests/reference_budget.py) -- exactly where the C code's float32 arithmetic
can be written in NumPy float32 (projection, step, copies), within float32-vs-float64 tolerances
elsewhere -- plus the invariants (budgets hold, NaN propagates, batching changes nothing).

With a GPU (marked `cuda`, skipped without one; benchmarks/gpu_check.sh runs them): the CUDA
backend against the CPU backend on the same inputs, bit for bit where the math is element-wise
(fa_math.h on both sides) and within SUM_ULPS float32 ulps for per-image sums (the two backends
add in different orders: the CPU in element order, CUDA in fixed chunks), and the whole attack
loop on both backends with the same NumPy oracle.
"""

import math

import numpy as np
import pytest

from fairattack import _core
from reference import LinearOracle, Rule, project, reference_attack, solve_increasing
from reference_budget import feasible, project_one

CPU, CUDA = _core.DEVICE_CPU, _core.DEVICE_CUDA
HAVE_CUDA = bool(getattr(_core, "WITH_CUDA", 0)) and _core.cuda_available()
SUM_ULPS = 4  # per-image sums (double accumulation rounded to float32): a few ulps apart
OPTIMIZERS = list(_core.OPTIMIZERS)
# 1 chunk per row on CUDA (dim < 2048), several, and the 64-chunk cap (chunks of > 2048)
DIMS = [1, 37, 2048 * 5 + 3, 2048 * 64 * 2 + 1]


def op(device, name, *args):
    return _core.backend_op(device, name, args)


def rows(rng, n, dim, low=-1.0, high=1.0):
    return rng.uniform(low, high, (n, dim)).astype(np.float32)


def images(rng, n, dim):
    """Clean rows x0 (integers, with saturated pixels) and a nearby iterate x inside eps 8."""
    x0 = rng.integers(0, 256, (n, dim)).astype(np.float32)
    x0[0, : max(dim // 4, 1)] = 255.0
    x0[-1, -max(dim // 4, 1):] = 0.0
    x = project(x0 + rng.uniform(-8, 8, (n, dim)), x0, 8.0).astype(np.float32)
    return x0, x


def f32_project(y, x0, eps):
    """fa_project in float32 (box, then the ball): the C order, exactly."""
    y = np.minimum(np.maximum(y, np.float32(0)), np.float32(255))
    return np.minimum(np.maximum(y, x0 - np.float32(eps)), x0 + np.float32(eps))


def ulps(a, b):
    """|a - b| in float32 ulps of the larger (NaN where both are NaN: 0)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    out = np.abs(a.astype(np.float64) - b.astype(np.float64)) / spacing
    return np.where(both_nan, 0.0, out)


def config(name, **kw):
    cfg = _core.default_config(OPTIMIZERS.index(name))
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------ the same inputs for both


def direction_case(name, dim=37, k=3, seed=0, gnorm=False, pcoef=False):
    rng = np.random.default_rng(seed)
    n = 4
    x0, x = images(rng, n, dim)
    g = rows(rng, n, dim)
    g[0, :3] = 0.0  # sign(0) = 0
    m = rows(rng, n, dim, -0.5, 0.5)
    v = rows(rng, n, dim, 0.0, 0.5)
    gn = rng.uniform(0.5, 2.0, n).astype(np.float32) if gnorm else None
    pc = rng.uniform(0.0, 0.1, n).astype(np.float32) if pcoef else None
    return config(name), k, x, x0, g, gn, pc, m, v


def step_case(dim=37, seed=1, n=5):
    rng = np.random.default_rng(seed)
    x0, x = images(rng, n, dim)
    d = rows(rng, n, dim)
    alpha = rng.uniform(0.5, 6.0, n).astype(np.float32)
    return x, x0, d, alpha


# ------------------------------------------------------------------ direction (SPEC 3)


def reference_direction(cfg, k, x, x0, g, gnorm, pcoef, m, v):
    """tests/reference.py's Rule, row by row, from the given state (float64)."""
    name = OPTIMIZERS[cfg["optimizer"]]
    d, m_out, v_out = [], [], []
    for i in range(len(x)):
        ge = g[i].astype(np.float64) / (gnorm[i] if gnorm is not None else 1.0)
        if pcoef is not None:
            ge = ge + float(pcoef[i]) * (x[i].astype(np.float64) - x0[i])
        rule = Rule(name, cfg, x[i].shape)
        rule.m, rule.v = m[i].astype(np.float64), v[i].astype(np.float64)
        d.append(rule.direction(ge, x[i].astype(np.float64), k))
        m_out.append(rule.m)
        v_out.append(rule.v)
    return np.array(d), np.array(m_out), np.array(v_out)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("k", [0, 3])
def test_direction_matches_the_reference(name, k):
    case = direction_case(name, k=k, gnorm=name in ("MI-FGSM", "NI-FGSM"), pcoef=True)
    d, m, v = op(CPU, "direction", *case)
    want_d, want_m, want_v = reference_direction(*case)
    np.testing.assert_allclose(d, want_d, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(m, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, want_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_direction_per_row_does_not_depend_on_the_batch(name):
    cfg, k, x, x0, g, gn, pc, m, v = direction_case(name, gnorm=True, pcoef=True)
    d, m1, v1 = op(CPU, "direction", cfg, k, x, x0, g, gn, pc, m, v)
    d2, m2, v2 = op(CPU, "direction", cfg, k, x[2:3], x0[2:3], g[2:3], gn[2:3], pc[2:3],
                    m[2:3], v[2:3])
    assert np.array_equal(d[2:3], d2) and np.array_equal(m1[2:3], m2)
    assert np.array_equal(v1[2:3], v2)


# ------------------------------------------------------------------ step (SPEC 1, SPEC 8)


@pytest.mark.parametrize("dim", DIMS[:3])
def test_step_is_the_float32_projection_exactly(dim):
    x, x0, d, alpha = step_case(dim)
    a = (np.float32(0.75) * alpha)[:, None]
    want = f32_project(x + a * d, x0, 8.0)
    assert np.array_equal(op(CPU, "step", x, x0, d, alpha, 0.75, 8.0, 0.0, False), want)
    assert np.array_equal(op(CPU, "step", x, x0, d, alpha, 0.75, 8.0, 0.0, True), want)


def test_step_without_a_projection_for_infinite_eps():
    """eps = INFINITY (NI-FGSM's look-ahead): x + a * d, also with a joint budget set."""
    x, x0, d, alpha = step_case()
    d = d * 100  # far outside the box and any ball
    want = x + alpha[:, None] * d
    for max_rmse in (0.0, 1.0):
        assert np.array_equal(op(CPU, "step", x, x0, d, alpha, 1.0, math.inf, max_rmse, False),
                              want)
        got = op(CPU, "step_rmse", x, x0, x0, d, alpha, math.inf, max_rmse)
        np.testing.assert_allclose(got, np.sqrt(((want - x0).astype(np.float64) ** 2).mean(1)),
                                   rtol=1e-6)


@pytest.mark.parametrize("max_rmse", [0.5, 2.0, 100.0])
def test_step_under_a_joint_budget_is_the_joint_projection(max_rmse):
    x, x0, d, alpha = step_case(dim=300, seed=2)
    out = op(CPU, "step", x, x0, d * 4, alpha, 1.0, 8.0, max_rmse, False)
    y = x.astype(np.float64) + alpha[:, None].astype(np.float64) * (d * 4)
    for i in range(len(x)):
        assert feasible(x0[i], out[i], 8.0, max_rmse)
        np.testing.assert_allclose(out[i], project_one(x0[i], y[i], 8.0, max_rmse), atol=2e-3)


# ------------------------------------------------------------------ per-image sums


@pytest.mark.parametrize("dim", DIMS)
def test_rmse_and_abs_sum_match_numpy(dim):
    rng = np.random.default_rng(dim)
    x0, x = images(rng, 3, dim)
    g = rows(rng, 3, dim, -3, 3)
    d64 = x.astype(np.float64) - x0
    assert ulps(op(CPU, "rmse", x, x0), np.sqrt((d64 ** 2).mean(1))).max() <= 1
    assert ulps(op(CPU, "rmse", x, None), np.sqrt((x.astype(np.float64) ** 2).mean(1))).max() <= 1
    assert ulps(op(CPU, "abs_sum", g), np.abs(g.astype(np.float64)).sum(1)).max() <= 1


def test_sums_propagate_nan_and_inf_per_row():
    rng = np.random.default_rng(4)
    x0, x = images(rng, 3, 50)
    g = rows(rng, 3, 50)
    x[1, 7] = np.nan
    g[1, 3], g[2, 9] = np.nan, np.inf
    r = op(CPU, "rmse", x, x0)
    s = op(CPU, "abs_sum", g)
    assert math.isnan(r[1]) and np.isfinite(r[[0, 2]]).all()
    assert math.isnan(s[1]) and s[2] == np.inf and np.isfinite(s[0])


def test_step_rmse_is_the_rmse_of_the_step_and_skips_nan_rows():
    x, x0, d, alpha = step_case(dim=200, seed=5)
    alpha[3] = np.nan  # a row not asked about
    got = op(CPU, "step_rmse", x, x0, x, d, alpha, 8.0, 0.0)
    a = np.nan_to_num(alpha)[:, None]
    want = np.sqrt(((f32_project(x + a * d, x0, 8.0) - x).astype(np.float64) ** 2).mean(1))
    assert math.isnan(got[3])
    keep = [0, 1, 2, 4]
    assert ulps(got[keep], want[keep]).max() <= 1
    stepped = op(CPU, "step", x, x0, d * 3, np.nan_to_num(alpha), 1.0, 8.0, 1.0, False)
    budget = op(CPU, "step_rmse", x, x0, x0, d * 3, np.nan_to_num(alpha), 8.0, 1.0)
    assert ulps(budget, np.sqrt(((stepped - x0).astype(np.float64) ** 2).mean(1))).max() <= 1


# ------------------------------------------------------------------ random start


def uniform_pm1(seed, index, j):
    """fa_math.h's counter-based draw (splitmix64 of seed, image index, value index)."""
    with np.errstate(over="ignore"):
        m = np.uint64(0xFFFFFFFFFFFFFFFF)
        z = (np.uint64(seed) ^ (np.uint64(index) * np.uint64(0x9E3779B97F4A7C15))
             ^ (j.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03))) & m
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return u * np.float32(2.0) - np.float32(1.0)


def test_random_start_is_the_seeded_draw_and_depends_on_the_image_only():
    rng = np.random.default_rng(6)
    x0, _ = images(rng, 4, 90)
    index = np.array([7, 0, 3, 1000], np.int64)
    out = op(CPU, "random_start", x0, 8.0, 42, index)
    j = np.arange(90)
    want = np.stack([f32_project(x0[i] + np.float32(8.0) * uniform_pm1(42, index[i], j),
                                 x0[i], 8.0) for i in range(4)])
    assert np.array_equal(out, want)
    assert np.array_equal(op(CPU, "random_start", x0[2:3], 8.0, 42, index[2:3]), out[2:3])
    assert not np.array_equal(op(CPU, "random_start", x0, 8.0, 43, index), out)


# ------------------------------------------------------------------ rows


def test_compact_copy_rows_and_fetch_rows():
    rng = np.random.default_rng(7)
    buf = rows(rng, 6, 33)
    src = np.array([0, 2, 3, 5], np.int64)
    assert np.array_equal(op(CPU, "compact", buf, src), buf[src])
    assert np.array_equal(op(CPU, "compact", buf, np.arange(6)), buf)
    other = rows(rng, 6, 33)
    want = buf.copy()
    want[[1, 4]] = other[[1, 4]]
    assert np.array_equal(op(CPU, "copy_rows", buf, other, np.array([1, 4])), want)
    # fetch_rows writes row rows[q] to destination q (backend_op lays them out in reverse)
    assert np.array_equal(op(CPU, "fetch_rows", buf, np.array([5, 0, 2])), buf[[2, 0, 5]])


# ------------------------------------------------------------------ calibration, stop_rmse


@pytest.mark.parametrize("max_rmse", [0.0, 1.0])
def test_calibration_reaches_the_first_step_rmse(max_rmse):
    x, x0, d, _ = step_case(dim=120, seed=8)
    if max_rmse:  # the first step under a joint budget starts inside it: at x0
        x = x0.copy()
    d[2] = 0.0  # a zero direction gets alpha 0
    r1 = 0.8
    alpha = op(CPU, "calibrate", x, x0, d, 8.0, max_rmse, r1)
    assert alpha[2] == 0.0
    f = op(CPU, "step_rmse", x, x0, x, d, alpha, 8.0, max_rmse)
    for i in (0, 1, 3, 4):
        def first_step(a, i=i):
            y = x[i] + a * d[i].astype(np.float64)
            p = project_one(x0[i], y, 8.0, max_rmse) if max_rmse else project(y, x0[i], 8.0)
            return float(np.sqrt(np.mean((p - x[i]) ** 2)))

        assert abs(f[i] - r1) <= r1 * 1e-4 + 1e-6
        assert alpha[i] == pytest.approx(solve_increasing(first_step, r1, 1.0), rel=1e-3)


def test_shorten_lands_on_the_target():
    x, x0, d, alpha = step_case(dim=120, seed=9)
    x = project(x0 + (x - x0) / 8, x0, 8.0).astype(np.float32)  # RMSE(x - x0) about 0.6
    x[4] = project(x0[4] + 8.0, x0[4], 8.0)  # already past the target: its step becomes 0
    alpha = alpha * 3
    target = 3.0
    before = op(CPU, "step_rmse", x, x0, x0, d, alpha, 8.0, 0.0)
    short = op(CPU, "shorten", x, x0, d, 8.0, 0.0, target, alpha)
    after = op(CPU, "step_rmse", x, x0, x0, d, short, 8.0, 0.0)
    assert short[4] == 0.0
    assert (before[:4] > target).sum() >= 2
    for i in range(4):
        if before[i] > target:
            assert short[i] < alpha[i] and abs(after[i] - target) <= target * 1e-4 + 1e-5
        else:
            assert short[i] == alpha[i]


def test_bad_calls_are_errors_naming_the_argument():
    x, x0, d, alpha = step_case()
    with pytest.raises(ValueError, match="alpha has 2 entries"):
        op(CPU, "step", x, x0, d, alpha[:2], 1.0, 8.0, 0.0, False)
    with pytest.raises(ValueError, match="x0 has rows of 5 values"):
        op(CPU, "rmse", x, x0[:, :5])
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        op(CPU, "nope")


# ------------------------------------------------------------------ CUDA against CPU


def both(name, *args):
    return op(CPU, name, *args), op(CUDA, name, *args)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("k", [0, 5])
@pytest.mark.parametrize("dim", [37, 2048 * 5 + 3])
@pytest.mark.parametrize("pattern", [(False, False), (True, True)])
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_direction_is_the_cpu_one_bit_for_bit(name, k, dim, pattern):
    case = direction_case(name, dim=dim, k=k, gnorm=pattern[0], pcoef=pattern[1])
    (d, m, v), (dc, mc, vc) = both("direction", *case)
    assert np.array_equal(d, dc) and np.array_equal(m, mc) and np.array_equal(v, vc)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("eps", [8.0, math.inf])
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_step_random_start_and_rows_are_the_cpu_ones(dim, eps):
    x, x0, d, alpha = step_case(dim=dim, seed=dim)
    for in_place in (False, True):
        cpu, gpu = both("step", x, x0, d, alpha, 0.5, eps, 0.0, in_place)
        assert np.array_equal(cpu, gpu)
    index = np.arange(len(x), dtype=np.int64) * 11
    cpu, gpu = both("random_start", x0, 8.0, 99, index)
    assert np.array_equal(cpu, gpu)
    src = np.array([1, 2, 4], np.int64)
    cpu, gpu = both("compact", x, src)
    assert np.array_equal(cpu, gpu)
    cpu, gpu = both("copy_rows", x, x0, np.array([0, 3]))
    assert np.array_equal(cpu, gpu)
    cpu, gpu = both("fetch_rows", x, np.array([4, 1]))
    assert np.array_equal(cpu, gpu)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_sums_are_the_cpu_ones_within_a_few_ulps(dim):
    rng = np.random.default_rng(dim + 1)
    x0, x = images(rng, 4, dim)
    g = rows(rng, 4, dim, -3, 3)
    g[1, 0] = np.nan
    d = rows(rng, 4, dim)
    alpha = np.array([1.0, np.nan, 2.5, 0.0], np.float32)
    for name, args in [("rmse", (x, x0)), ("rmse", (x, None)), ("abs_sum", (g,)),
                       ("step_rmse", (x, x0, x, d, alpha, 8.0, 0.0)),
                       ("step_rmse", (x, x0, x0, d, alpha, math.inf, 1.0))]:
        cpu, gpu = both(name, *args)
        assert (np.isnan(cpu) == np.isnan(gpu)).all(), name
        assert ulps(cpu, gpu).max() <= SUM_ULPS, (name, cpu, gpu)


@pytest.mark.parametrize("max_rmse", [0.5, 2.0])
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_joint_budget_calibration_and_shorten_match_the_cpu(max_rmse):
    """The joint scale's sums differ in order: the projected values agree to float32 rounding
    of the scale, and both stay inside the budget."""
    x, x0, d, alpha = step_case(dim=2048 * 3 + 1, seed=12)
    cpu, gpu = both("step", x, x0, d * 4, alpha, 1.0, 8.0, max_rmse, False)
    assert np.abs(cpu - gpu).max() <= 1e-3
    for i in range(len(x)):
        assert feasible(x0[i], gpu[i], 8.0, max_rmse)
    a_cpu, a_gpu = both("calibrate", x, x0, d, 8.0, 0.0, 0.8)
    np.testing.assert_allclose(a_cpu, a_gpu, rtol=2e-4)
    a_cpu, a_gpu = both("calibrate", x, x0, d, 8.0, max_rmse, 0.8)
    np.testing.assert_allclose(a_cpu, a_gpu, rtol=2e-4)
    s_cpu, s_gpu = both("shorten", x, x0, d, 8.0, max_rmse, 0.9 * max_rmse, alpha * 3)
    np.testing.assert_allclose(s_cpu, s_gpu, rtol=2e-4)


# ------------------------------------------------------------------ the attack loop


SHAPE = (6, 7, 3)
LOOP_CASES = {
    # images finish at different steps (stop_loss): compaction after every step
    "compaction": ("Adam", dict(stop_loss=1.0, max_iter=12)),
    "stop_rmse": ("MI-FGSM", dict(stop_rmse=2.0, stop_loss=math.inf, max_iter=15)),
    "max_rmse": ("PGD", dict(max_rmse=1.5, max_iter=6, alpha=2.0)),
    "nesterov": ("NI-FGSM", dict(max_iter=5, alpha=1.6, stop_loss=math.inf)),
    "random_start": ("PGD", dict(random_start=1, seed=3, max_iter=4, alpha=1.0)),
    "rmse_loss": ("Adam", dict(rmse_weight=0.5, max_iter=5, stop_loss=math.inf)),
    "returns_last": ("RMSProp", dict(returns=1, max_iter=4)),
}


def loop_batch(n=6, seed=3):
    rng = np.random.default_rng(seed)
    oracle = LinearOracle(SHAPE, scale=20.0, seed=seed)
    x = rng.integers(0, 256, (n, *SHAPE)).astype(np.float32)
    labels = np.array([oracle.predict(xi) for xi in x], np.int64)
    labels[-1] = (labels[-1] + 1) % 10  # one misclassified image: skipped
    return oracle, x, labels


def run_loop(device, case):
    name, kw = LOOP_CASES[case]
    oracle, x, labels = loop_batch()
    cfg = config(name, **kw)
    return _core.attack(oracle, x, labels, cfg, device, None), cfg, oracle, x, labels


@pytest.mark.parametrize("case", ["compaction", "stop_rmse", "nesterov", "returns_last"])
def test_the_loop_matches_the_reference(case):
    res, cfg, oracle, x, labels = run_loop(CPU, case)
    name = LOOP_CASES[case][0]
    statuses = list(_core.IMAGE_STATUS)
    finished = {int(k) for k in res["iterations"]}
    if case == "compaction":
        assert len(finished) > 1  # images left the batch at different steps
    for i in range(len(x)):
        ref_x, status, iters, _, loss = reference_attack(oracle, x[i], int(labels[i]), name, cfg)
        assert statuses[res["status"][i]] == status and res["iterations"][i] == iters, i
        np.testing.assert_allclose(res["adv"][i], ref_x, atol=2e-2)


def test_the_loop_under_a_joint_budget_stays_inside_it():
    res, cfg, _, x, labels = run_loop(CPU, "max_rmse")
    for i in range(len(x) - 1):
        assert feasible(x[i], res["adv"][i], cfg["eps"], cfg["max_rmse"], tol=1e-3)


@pytest.mark.parametrize("case", sorted(LOOP_CASES))
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_loop_is_the_cpu_loop(case):
    """The same NumPy oracle (gradients identical on both sides): same statuses, step counts
    and step sizes; images equal up to the per-image sums' last bits (MI/NI's mean |g|, the
    joint scale, the calibration)."""
    cpu = run_loop(CPU, case)[0]
    gpu = run_loop(CUDA, case)[0]
    assert np.array_equal(cpu["status"], gpu["status"])
    assert np.array_equal(cpu["iterations"], gpu["iterations"])
    np.testing.assert_allclose(cpu["alpha"], gpu["alpha"], rtol=1e-4)
    np.testing.assert_allclose(cpu["adv"], gpu["adv"], atol=1e-2)
    np.testing.assert_allclose(cpu["loss"], gpu["loss"], rtol=1e-4, equal_nan=True)


@pytest.mark.parametrize("transform", [dict(di_prob=0.7, seed=5), dict(ti_kernel=5),
                                       dict(si_copies=3)])
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_transforms_through_the_shim_match_the_cpu(transform):
    """DI/TI/SI run in the shim on the model's device: the attack on CUDA against the CPU with
    TF32 off. The model's kernels differ (cuDNN vs the CPU), so statistically: statuses equal,
    few values more than one level apart."""
    import torch

    import fairattack as fa
    from tiny import SmallNet

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    net = SmallNet().eval()
    cpu, gpu = fa.load_model(net, mode="pixels"), fa.load_model(net, device="cuda", mode="pixels")
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    y = cpu.predict(x)
    kw = dict(optimizer="MI-FGSM", setting="fixed", eps=8, max_iter=5, **transform)
    a, b = fa.attack(cpu, x, y, **kw), fa.attack(gpu, x, y, **kw)
    assert list(a.status) == list(b.status)
    assert np.mean(np.abs(a.images.astype(int) - b.images) > 1) < 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs the CUDA kernels and a GPU")
def test_cuda_many_rows_beyond_one_grid():
    """More rows than one grid's y dimension (65535) and than one reduction launch's blocks:
    the grid-stride loops over rows."""
    n, dim = 70001, 3
    x, x0, d, alpha = step_case(dim=dim, seed=13, n=n)
    cpu, gpu = both("step", x, x0, d, alpha, 1.0, 8.0, 0.0, False)
    assert np.array_equal(cpu, gpu)
    cpu, gpu = both("direction", config("Adam"), 2, x, x0, d, None, None, d * 0, d * 0)
    assert all(np.array_equal(a, b) for a, b in zip(cpu, gpu))
    cpu, gpu = both("rmse", x, x0)
    assert ulps(cpu, gpu).max() <= SUM_ULPS
