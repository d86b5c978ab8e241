"""What an attack spends (SPEC 12): AttackResult.grad_evals / forward_evals per image, counted
where the passes happen (the shim for a Model, the rows a callable oracle was asked), against an
independent count of the oracle's calls and the loop's own arithmetic."""

import math

import numpy as np
import pytest
import torch

import fairattack as fa
from tiny import SmallNet


@pytest.fixture(scope="module")
def net_and_model():
    net = SmallNet().eval()
    return net, fa.load_model(net, mode="pixels")


class CountingOracle:
    """The network as a Python oracle that records every call: (rows, want_grad)."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, x, labels, want_grad):
        self.calls.append((len(x), bool(want_grad)))
        t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(bool(want_grad))
        with torch.set_grad_enabled(bool(want_grad)):
            logits = self.net(t)
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels),
                                                     reduction="none")
        grad = None
        if want_grad:
            grad = np.ascontiguousarray(torch.autograd.grad(loss.sum(), t)[0]
                                        .permute(0, 2, 3, 1).numpy())
        return loss.detach().numpy(), logits.argmax(1).numpy(), grad

    def rows(self, want_grad):
        return sum(n for n, g in self.calls if g == want_grad)


def batch(model, n=5, size=12, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x)


CASES = [  # (optimizer, setting, overrides)
    ("PGD", "fixed", {"max_iter": 4}),
    ("NI-FGSM", "fixed", {"max_iter": 4}),
    ("Adam", "const_loss", {"max_iter": 4, "stop_loss": math.inf}),
    ("NAGD", "const_loss", {"max_iter": 3, "stop_loss": math.inf}),
    ("GD", "const_loss", {"max_iter": 6, "stop_loss": 1.0}),
    ("PGD", "fixed", {"max_iter": 3, "random_start": 1}),
]


@pytest.mark.parametrize("optimizer,setting,overrides", CASES)
def test_callable_counts_are_the_rows_it_was_asked(net_and_model, optimizer, setting, overrides):
    net, model = net_and_model
    x, y = batch(model)
    oracle = CountingOracle(net)
    res = fa.attack(oracle, x, y, optimizer, setting, batch_size=2, **overrides)
    assert res.grad_evals.dtype == np.int64 and res.grad_evals.shape == (len(x),)
    assert res.grad_evals.sum() == oracle.rows(True)
    assert res.forward_evals.sum() == oracle.rows(False)
    # the same attack through the shim counts the same passes (no transform: one per row)
    shim = fa.attack(model, x, y, optimizer, setting, batch_size=3, **overrides)
    np.testing.assert_array_equal(shim.grad_evals, res.grad_evals)
    np.testing.assert_array_equal(shim.forward_evals, res.forward_evals)


@pytest.mark.parametrize("optimizer,setting,overrides", CASES)
def test_counts_follow_the_loop(net_and_model, optimizer, setting, overrides):
    """SPEC 2's loop: a gradient at every step k < max_iter (at x_k, or at the look-ahead point),
    a loss-only forward at the cap, at x_k before a look-ahead gradient when a rule reads the
    loss there, and at x0 before a random start."""
    _, model = net_and_model
    x, y = batch(model)
    res = fa.attack(model, x, y, optimizer, setting, **overrides)
    k, cap = res.iterations.astype(np.int64), overrides["max_iter"]
    capped = res.status == "max_iter"
    grads = np.where(capped, cap, k + 1)  # an image stopped at step k had asked for g(x_k)
    np.testing.assert_array_equal(res.grad_evals, grads)
    loss_read = setting != "fixed"
    forwards = capped.astype(np.int64)
    if optimizer in ("NAGD", "NI-FGSM") and loss_read:
        forwards += np.maximum(k - 1, 0) + (~capped) * (k >= 1)
    forwards += overrides.get("random_start", 0)
    forwards += 1  # the forward of the returned uint8 image that gives res.pred
    np.testing.assert_array_equal(res.forward_evals, forwards)
    if optimizer == "GD":
        assert (res.status == "stop_loss").any()  # the stop rule took part


def test_batching_never_changes_the_counts(net_and_model):
    _, model = net_and_model
    x, y = batch(model, n=6)
    kw = dict(max_iter=8, stop_loss=1.5)
    a = fa.attack(model, x, y, "Adam", batch_size=6, **kw)
    b = fa.attack(model, x, y, "Adam", batch_size=1, **kw)
    np.testing.assert_array_equal(a.grad_evals, b.grad_evals)
    np.testing.assert_array_equal(a.forward_evals, b.forward_evals)


def test_si_copies_are_gradient_passes_and_calibration_adds_none(net_and_model):
    _, model = net_and_model
    x, y = batch(model)
    kw = dict(max_iter=3, stop_loss=math.inf)
    plain = fa.attack(model, x, y, "Adam", **kw)
    fixed_alpha = fa.attack(model, x, y, "Adam", alpha=1.0, first_step_rmse=0, **kw)
    np.testing.assert_array_equal(plain.grad_evals, fixed_alpha.grad_evals)
    si = fa.attack(model, x, y, "Adam", si_copies=3, **kw)
    np.testing.assert_array_equal(si.grad_evals, 3 * plain.grad_evals)
    np.testing.assert_array_equal(si.forward_evals, plain.forward_evals)
    ti = fa.attack(model, x, y, "Adam", ti_kernel=3, **kw)  # TI smooths: no extra pass
    np.testing.assert_array_equal(ti.grad_evals, plain.grad_evals)


def test_admix_bsr_sia_copies_and_vmi_neighbours_are_gradient_passes(net_and_model):
    """Every transformed copy of Admix, BSR and SIA is one gradient pass (the product with SI's);
    their gradient pass does not see x itself, so the loss at the cap is a forward of its own.
    VMI-FGSM adds vmi_neighbours gradient passes per step to MI-FGSM's."""
    _, model = net_and_model
    x, y = batch(model)
    y[:2] = (y[:2] + 1) % 10  # two classes at least for Admix's partners; two skipped images
    kw = dict(max_iter=2, stop_loss=math.inf)
    plain = fa.attack(model, x, y, "Adam", **kw)
    ok = plain.status != "skipped"
    cases = [(dict(admix_copies=2, admix_scales=2), 4), (dict(bsr_copies=2), 2),
             (dict(sia_copies=3), 3), (dict(bsr_copies=2, si_copies=2), 4)]
    for transform, copies in cases:
        res = fa.attack(model, x, y, "Adam", **kw, **transform)
        np.testing.assert_array_equal(res.grad_evals[ok], copies * plain.grad_evals[ok])
        np.testing.assert_array_equal(res.grad_evals[~ok], np.full((~ok).sum(), copies))
        # the plain loss at every step (const_loss reads it) and at the cap, and pred's
        np.testing.assert_array_equal(res.forward_evals[ok], np.full(ok.sum(), kw["max_iter"] + 2))
    mi = fa.attack(model, x, y, "MI-FGSM", max_iter=3)
    vmi = fa.attack(model, x, y, "VMI-FGSM", max_iter=3, vmi_neighbours=4)
    stepped = (mi.status == "max_iter") & (vmi.status == "max_iter")
    assert stepped.any()
    np.testing.assert_array_equal(vmi.grad_evals[stepped], mi.grad_evals[stepped] + 3 * 4)


def test_di_needs_a_plain_forward_for_the_loss(net_and_model):
    """Under DI the gradient pass sees transformed images: the loss at x_k is one more forward
    wherever the loop reads it (every step of const_loss, only k = 0 and the cap of fixed)."""
    _, model = net_and_model
    x, y = batch(model)
    cap = 3
    loss_stopped = fa.attack(model, x, y, "Adam", max_iter=cap, stop_loss=math.inf, di_prob=1.0)
    np.testing.assert_array_equal(loss_stopped.grad_evals, np.full(len(x), cap))
    np.testing.assert_array_equal(loss_stopped.forward_evals, np.full(len(x), cap + 2))  # + pred
    fixed = fa.attack(model, x, y, "PGD", "fixed", max_iter=cap, di_prob=1.0)
    np.testing.assert_array_equal(fixed.forward_evals, np.full(len(x), 3))


def test_skipped_images_count_the_clean_pass_and_summaries_carry_means(net_and_model):
    _, model = net_and_model
    x, y = batch(model)
    y = y.copy()
    y[0] = (y[0] + 1) % 10  # misclassified: skipped after the gradient call at x0
    res = fa.attack(model, x, y, "PGD", "fixed", max_iter=2)
    assert res.status[0] == "skipped" and res.grad_evals[0] == 1
    s = res.summary()
    assert s["grad_evals"] == pytest.approx(res.grad_evals[1:].mean())
    assert s["forward_evals"] == pytest.approx(res.forward_evals[1:].mean())
    frame = res.to_frame()
    np.testing.assert_array_equal(frame["grad_evals"], res.grad_evals)


def test_compare_rows_carry_the_mean_spend(net_and_model):
    net, model = net_and_model
    x, y = batch(model, n=4)
    other = fa.load_model(SmallNet().eval(), mode="pixels")
    df = fa.compare(model, x, y, attacks=[{"name": "pgd3", "optimizer": "PGD", "max_iter": 3},
                                          ("copy", lambda a, b: a)],
                    victims={"v": other}, rmse=[2], n_boot=0)
    pgd = df[df["attack"] == "pgd3"]
    assert (pgd["grad_evals_mean"] == 3).all() and (pgd["forward_evals_mean"] == 2).all()
    assert df[df["attack"] == "copy"]["grad_evals_mean"].isna().all()  # not run by fairattack
    budget = fa.compare(model, x, y, attacks=[{"name": "pgd3", "optimizer": "PGD",
                                               "max_iter": 3}],
                        victims={"v": other}, rmse=[2], mode="budget", n_boot=0)
    assert (budget["grad_evals_mean"] == 3).all()


# ----------------------------------------------------------------- a matched compute budget

BUDGET_CASES = [  # (optimizer, setting, overrides, gradient passes per step, by hand)
    ("PGD", "fixed", {}, 1),
    ("Adam", "const_loss", {"stop_loss": math.inf}, 1),
    ("MI-FGSM", "fixed", {"si_copies": 3}, 3),
    ("MI-FGSM", "fixed", {"admix_copies": 2, "admix_scales": 2}, 4),
    ("VMI-FGSM", "fixed", {"vmi_neighbours": 4}, 5),
    ("PGD", "fixed", {"bsr_copies": 2, "si_copies": 2}, 4),
]


@pytest.mark.parametrize("optimizer,setting,overrides,per_step", BUDGET_CASES)
def test_max_grads_holds_every_image_within_k_passes(net_and_model, optimizer, setting,
                                                     overrides, per_step):
    _, model = net_and_model
    x, y = batch(model, n=6)
    y[:1] = (y[:1] + 1) % 10  # two classes for Admix's partners (and one skipped image)
    for k in (per_step, 2 * per_step + 1, 7 * per_step - 1):
        res = fa.attack(model, x, y, optimizer, setting, max_grads=k, **overrides)
        steps = k // per_step
        assert (res.grad_evals <= k).all(), (k, res.grad_evals)
        assert (res.iterations <= steps).all()
        capped = res.status == "max_iter"
        assert capped.any()
        np.testing.assert_array_equal(res.grad_evals[capped], steps * per_step)
        assert res.config["max_grads"] == k and res.config["max_iter"] == steps


def test_max_grads_is_the_attack_with_that_many_steps(net_and_model):
    """The cap is the step count: PGD within 4 passes is PGD with 4 steps, its default step
    eps / 4 following (TransferAttack's alpha = epsilon / epoch), and a budget above the cap
    changes nothing."""
    _, model = net_and_model
    x, y = batch(model)
    capped = fa.attack(model, x, y, "PGD", max_grads=4)
    four = fa.attack(model, x, y, "PGD", max_iter=4)
    np.testing.assert_array_equal(capped.images, four.images)
    assert capped.config["alpha"] == pytest.approx(16 / 4)
    roomy = fa.attack(model, x, y, "PGD", max_grads=1000)
    np.testing.assert_array_equal(roomy.images, fa.attack(model, x, y, "PGD").images)
    assert roomy.config["max_iter"] == 10
    ens = fa.ensemble([model, fa.load_model(SmallNet().eval(), mode="pixels")])
    two = fa.attack(ens, x, y, "PGD", max_grads=7)  # two passes per step: 3 steps
    assert (two.iterations <= 3).all() and (two.grad_evals <= 7).all()
    assert two.config["max_iter"] == 3


@pytest.mark.parametrize("bad,error", [(0, ValueError), (True, TypeError), (2.5, TypeError),
                                       ("10", TypeError)])
def test_max_grads_bad_values_name_the_argument(net_and_model, bad, error):
    _, model = net_and_model
    x, y = batch(model, n=2)
    with pytest.raises(error, match="max_grads"):
        fa.attack(model, x, y, "PGD", max_grads=bad)


def test_max_grads_below_one_step_is_refused(net_and_model):
    _, model = net_and_model
    x, y = batch(model, n=2)
    with pytest.raises(ValueError, match=r"max_grads=4: one step of MI-FGSM costs 5"):
        fa.attack(model, x, y, "MI-FGSM", si_copies=5, max_grads=4)


def test_compare_max_grads_runs_natives_within_k_and_flags_peers_over_it(net_and_model):
    torchattacks = pytest.importorskip("torchattacks")
    _, model = net_and_model
    x, y = batch(model, n=4)
    other = fa.load_model(SmallNet().eval(), mode="pixels")
    peer = torchattacks.PGD(model.as_torch_module(), eps=16 / 255, alpha=1.6 / 255, steps=10,
                            random_start=False)
    with pytest.warns(UserWarning, match=r"\['ta-pgd10'\] spent more than max_grads=5.*"
                                         r"\['copy'\] did not report"):
        df = fa.compare(model, x, y, attacks=["PGD", {"name": "si", "optimizer": "MI-FGSM",
                                                       "si_copies": 2},
                                              ("ta-pgd10", peer), ("copy", lambda a, b: a)],
                        victims={"v": other}, rmse=[2], n_boot=0, max_grads=5)
    native = df[df["how"] == "native"].groupby("attack").first()
    assert native.loc["PGD", "grad_evals_mean"] <= 5 and native.loc["si", "grad_evals_mean"] <= 4
    assert native.loc["ta-pgd10", "grad_evals_mean"] == 10
    assert df.set_index("attack")["over_max_grads"].groupby(level=0).all().to_dict() == {
        "PGD": False, "si": False, "ta-pgd10": True, "copy": False}
    assert (df["max_grads"] == 5).all()
    plain = fa.compare(model, x, y, attacks=["PGD"], victims={"v": other}, rmse=[2], n_boot=0)
    assert plain["max_grads"].isna().all() and not plain["over_max_grads"].any()
    with pytest.raises(ValueError, match="max_grads"):
        fa.compare(model, x, y, attacks=["PGD"], victims={"v": other}, rmse=[2], max_grads=0)
