"""Peer parity: FGSM, PGD, MI-FGSM, NI-FGSM, DI and TI against torchattacks on a small
deterministic model and on real images with EfficientNet-Lite0.

Conventions are converted as a torchattacks user would (benchmarks/parity_torchattacks.py holds
the mapping, the README's "Coming from torchattacks" explains it): the model is the same
network behind x * 255, eps/alpha / 255, steps -> max_iter, decay -> momentum, the last iterate
(setting "fixed"), every image attacked (skip_misclassified=0).

Tolerances: the deterministic attacks run the same float32 arithmetic on the same network (the
small model gives bit-identical images); on EfficientNet-Lite0 torchattacks' [0, 1] float32
iterate (pixels off by ~1e-5) flips the sign of near-zero gradient values, so the plain
conversion is compared statistically and, with the network fed exact pixels, pixel by pixel.
DI draws its random resizes differently (one draw per batch from torch's global RNG in
torchattacks, one per image from fairattack's seeded per-image RNG): its pixels cannot be
aligned, so only its statistics are compared.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import fairattack as fa
from tiny import SmallNet

torchattacks = pytest.importorskip("torchattacks")

_spec = importlib.util.spec_from_file_location(
    "parity_torchattacks", Path(__file__).resolve().parents[1] / "benchmarks" /
    "parity_torchattacks.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

DETERMINISTIC = ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "TI")


@pytest.fixture(scope="module")
def small():
    net = SmallNet().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, 16)
    return (fa.load_model(net, name="small", mode="pixels"), parity.UnitRange(net).eval(), images,
            labels)


@pytest.fixture(scope="module")
def real(lite0, samples_dir):
    from fairattack import data, models

    with models._quiet_jit():
        net = torch.jit.load(str(models.export_registered(
            "efficientnet-lite0", Path(lite0.source).parent)))
    ds = data.open_dataset(samples_dir)
    images, labels, _ = next(data.iter_batches(ds, 224, batch_size=4))
    return lite0, parity.UnitRange(net.eval()).eval(), images, labels, net.eval()


def run_both(case, name, steps=10, batch_size=8, seed=0):
    model, net01, images, labels = case[:4]
    return parity.compare(name, model, net01, {"surrogate": model}, images, labels, batch_size,
                          8.0, 2.0, steps, seed=seed)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_attacks_match_on_a_small_model(small, name):
    row = run_both(small, name)
    assert row["values_differ"] <= 0.002, row
    assert row["rmse_between"] <= 0.2, row
    assert row["identical"] >= 14, row
    assert row["rmse_fa"] == pytest.approx(row["rmse_ta"], rel=0.01)


def test_di_matches_in_distribution_on_a_small_model(small):
    rows = [run_both(small, "DI", seed=s) for s in range(3)]
    ours = np.mean([r["rmse_fa"] for r in rows])
    theirs = np.mean([r["rmse_ta"] for r in rows])
    assert ours == pytest.approx(theirs, rel=0.1)
    pgd = run_both(small, "PGD")
    assert all(r["rmse_between"] > 0.5 for r in rows)  # DI is on: pixels differ...
    # ...and perturbs less than plain PGD in both libraries (averaged, smaller directions agree
    # less from step to step)
    assert ours < pgd["rmse_fa"] and theirs < pgd["rmse_ta"]


def test_di_off_is_exactly_pgd(small):
    model, _, images, labels = small
    kw = dict(setting="fixed", eps=8, alpha=2, max_iter=10, skip_misclassified=0)
    a = fa.attack(model, images, labels, "PGD", **kw)
    b = fa.attack(model, images, labels, "PGD", di_prob=0.0, ti_kernel=0, si_copies=1, **kw)
    np.testing.assert_array_equal(a.images, b.images)


def test_fgsm_is_identical_on_real_images(real):
    row = run_both(real, "FGSM", batch_size=4)
    assert row["values_differ"] <= 0.001 and row["identical"] >= 3, row


@pytest.mark.parametrize("name", ("PGD", "MI-FGSM", "NI-FGSM", "TI"))
def test_iterative_attacks_agree_on_real_images(real, name):
    # On EfficientNet-Lite0 the iterative attacks drift apart after the first step: torchattacks
    # holds the iterate as [0, 1] float32, so the network sees pixel values off by ~1e-5, and
    # sign() turns every gradient value near zero that this flips into a full step. The honest
    # check of the plain conversion is statistical: same strength, same direction on the whole,
    # same success on the surrogate...
    row = run_both(real, name, steps=5, batch_size=4)
    assert row["rmse_fa"] == pytest.approx(row["rmse_ta"], rel=0.02), row
    assert row["cosine"] >= 0.5, row
    assert abs(row["asr_fa_surrogate"] - row["asr_ta_surrogate"]) <= 0.25, row


@pytest.mark.parametrize("name", ("PGD", "MI-FGSM", "TI"))
def test_iterative_attacks_are_identical_with_exact_pixels(real, name):
    # ...and once the network sees exact pixel values (the only difference removed), the
    # images are identical. Not NI-FGSM: its look-ahead point is fractional by design.
    model, _, images, labels, net = real
    row = parity.compare(name, model, parity.ExactPixels(net).eval(), {}, images, labels, 4,
                         8.0, 2.0, 5)
    assert row["values_differ"] <= 1e-4 and row["identical"] >= 3, row


def test_di_matches_in_distribution_on_real_images(real):
    row = run_both(real, "DI", steps=5, batch_size=4)
    assert row["rmse_fa"] == pytest.approx(row["rmse_ta"], rel=0.15), row
    assert row["asr_fa_surrogate"] >= 0.75 and row["asr_ta_surrogate"] >= 0.75
