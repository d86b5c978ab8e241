"""Surrogate ensembles (SPEC 9): the shim's fused loss, gradient and prediction against plain
torch autograd for every fuse, an ensemble of one equals its member, the attack runs on it, and
bad input names the argument."""

import copy
import math

import numpy as np
import pytest
import torch

import fairattack as fa
from fairattack import _core
from tiny import SmallNet, png_folder, save_scripted

LOSS_INDEX = {name: i for i, name in enumerate(_core.LOSSES)}


class Resized(torch.nn.Module):
    """A second family: resizes its input to 8x8 inside, then a differently seeded net."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.head = torch.nn.Linear(5 * 2 * 2, 10)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear",
                                            align_corners=False)
        h = torch.relu(self.conv(x / 127.5 - 1.0))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)) * 3.0


@pytest.fixture(scope="module")
def members():
    nets = [SmallNet().eval(), Resized().eval()]
    return nets, [fa.load_model(n, mode="pixels") for n in nets]


def batch(model, n=5, size=12, seed=0):
    x = np.random.default_rng(seed).integers(30, 226, (n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x)


def reference(nets, weights, fuse, x, classes, objective="ce"):
    """(fused loss per row, its gradient NHWC, fused prediction) in plain torch."""
    t = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).requires_grad_(True)
    zs = [net(t) for net in nets]
    c = torch.from_numpy(classes)
    rows = torch.arange(len(c))

    def ce(z):
        return -torch.log_softmax(z, 1)[rows, c]

    probs = sum(w * torch.softmax(z, 1) for w, z in zip(weights, zs))
    if fuse == "logits":
        fused = sum(w * z for w, z in zip(weights, zs))
        loss, pred = ce(fused), fused.argmax(1)
    elif fuse == "probs":
        loss, pred = -torch.log(probs[rows, c]), probs.argmax(1)
    else:
        loss, pred = sum(w * ce(z) for w, z in zip(weights, zs)), probs.argmax(1)
    if objective == "target_ce":
        obj = -loss
    elif objective == "logit":
        obj = (sum(w * z for w, z in zip(weights, zs)) if fuse != "probs" else
               torch.log(probs))[rows, c] if fuse != "loss" else \
            sum(w * z[rows, c] for w, z in zip(weights, zs))
    else:
        obj = loss
    grad = torch.autograd.grad(obj.sum(), t)[0].permute(0, 2, 3, 1)
    return loss.detach().numpy(), grad.numpy(), pred.numpy()


@pytest.mark.parametrize("fuse", ["logits", "probs", "loss"])
@pytest.mark.parametrize("objective", ["ce", "target_ce", "logit"])
def test_fused_loss_gradient_and_prediction_match_torch(members, fuse, objective):
    nets, models = members
    weights = [0.7, 0.3]
    ens = fa.ensemble(models, fuse=fuse, weights=weights)
    x, _ = batch(models[0])
    classes = np.random.default_rng(1).integers(0, 10, len(x))
    loss, _, pred, grad = ens._core.run(x.astype(np.float32), classes, True, 0,
                                        LOSS_INDEX[objective])
    want_loss, want_grad, want_pred = reference(nets, weights, fuse, x, classes, objective)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(pred, want_pred)
    np.testing.assert_array_equal(ens.predict(x), want_pred)


@pytest.mark.parametrize("fuse", ["logits", "probs", "loss"])
def test_an_ensemble_of_one_is_its_member(members, fuse):
    _, models = members
    member = models[0]
    x, y = batch(member)
    one = fa.ensemble([member], fuse=fuse)
    np.testing.assert_array_equal(one.predict(x), member.predict(x))
    kw = dict(max_iter=4)
    a = fa.attack(one, x, y, "Adam", **kw)
    b = fa.attack(member, x, y, "Adam", **kw)
    if fuse == "probs":  # log(softmax) against log_softmax: equal up to rounding
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-4, atol=1e-4)
        assert (np.abs(a.images.astype(int) - b.images.astype(int)) <= 1).all()
    else:
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.grad_evals, b.grad_evals)


def test_attack_on_an_ensemble_spends_one_pass_per_member(members):
    nets, models = members
    ens = fa.ensemble(models, fuse="logits")
    x, y = batch(ens)
    res = fa.attack(ens, x, y, "PGD", max_iter=3)
    np.testing.assert_array_equal(res.grad_evals, np.full(len(x), 6))
    np.testing.assert_array_equal(res.forward_evals, np.full(len(x), 4))  # cap and pred, x2
    assert (np.abs(res.images.astype(int) - x.astype(int)) <= 16).all()
    # the reported loss is the fused CE of the returned iterate
    want, _, _ = reference(nets, [0.5, 0.5], "logits", res.images, y)
    assert np.abs(res.loss - want).max() < 0.05  # float iterate vs its uint8 rounding
    targeted = fa.attack(ens, x, y, "PGD", target="random", loss="logit", max_iter=3)
    assert targeted.targeted and (targeted.targets != y).all()


def test_compare_takes_an_ensemble_surrogate(members):
    _, models = members
    ens = fa.ensemble(models, fuse="loss")
    x, y = batch(ens, n=4)
    df = fa.compare(ens, x, y, attacks=[{"name": "pgd", "optimizer": "PGD", "max_iter": 2}],
                    victims={"m0": models[0]}, rmse=[2], n_boot=0)
    assert (df["grad_evals_mean"] == 4).all()


def test_bad_ensembles_name_the_argument(members):
    _, models = members
    with pytest.raises(ValueError, match="models: an ensemble needs at least one member"):
        fa.ensemble([])
    with pytest.raises(TypeError, match=r"models\[1\]"):
        fa.ensemble([models[0], "lite0"])
    with pytest.raises(ValueError, match=r"models\[0\] is an ensemble"):
        fa.ensemble([fa.ensemble(models), models[0]])
    with pytest.raises(ValueError, match="fuse='mean'"):
        fa.ensemble(models, fuse="mean")
    with pytest.raises(ValueError, match="weights sum to 0.9"):
        fa.ensemble(models, weights=[0.5, 0.4])
    with pytest.raises(ValueError, match="weights has 1 entries"):
        fa.ensemble(models, weights=[1.0])
    with pytest.raises(ValueError, match=r"weights\[0\]=-0.5"):
        fa.ensemble(models, weights=[-0.5, 1.5])
    elsewhere = copy.copy(models[1])
    elsewhere.device = "cuda:0"
    with pytest.raises(ValueError, match="models: the members are on different devices"):
        fa.ensemble([models[0], elsewhere])
    with pytest.raises(ValueError, match="weights sum to"):  # the shim checks again
        _core.ensemble_run(((models[0]._core,), np.array([0.5], np.float32), 0),
                           np.zeros((1, 4, 4, 3), np.float32), None, False, 10)
    assert math.isclose(sum(fa.ensemble(models).weights), 1.0)


def test_study_and_cli_take_an_ensemble_surrogate(tmp_path, members):
    from fairattack.cli.main import main

    nets, models = members
    paths = [save_scripted(net, tmp_path / f"m{i}.pt") for i, net in enumerate(nets)]
    ens = fa.ensemble(models, fuse="probs")
    x, y = batch(ens, n=3, size=16)
    common = dict(optimizers=["PGD"], settings=["fixed"], progress=False,
                  overrides={"max_iter": 2})
    df = fa.run_study([f"{paths[0]}+{paths[1]}"], {"v": paths[0]}, (x, y),
                      out_dir=tmp_path / "s", fuse="probs", **common)
    assert df["surrogate"].tolist() == ["m0+m1"]
    assert df["grad_evals"].iloc[0] == 4  # 2 steps x 2 members
    res = fa.attack(ens, x, y, "PGD", "fixed", max_iter=2)
    assert df["loss"].iloc[0] == pytest.approx(float(res.loss.mean()), rel=1e-5)
    with pytest.warns(fa.study.RecomputeWarning):  # another fuse is another cell
        again = fa.run_study([f"{paths[0]}+{paths[1]}"], {"v": paths[0]}, (x, y),
                             out_dir=tmp_path / "s", fuse="logits", **common)
    assert again["loss"].iloc[0] != df["loss"].iloc[0]
    with pytest.raises(ValueError, match="fuse='max'"):
        fa.run_study([f"{paths[0]}+{paths[1]}"], {"v": paths[0]}, (x, y),
                     out_dir=tmp_path / "t", fuse="max", **common)
    folder = tmp_path / "images"
    png_folder(folder, x, y)
    code = main(["run", "--surrogates", f"{paths[0]}+{paths[1]}", "--victims", str(paths[0]),
                 "--data", str(folder), "--out", str(tmp_path / "cli"), "--optimizers", "PGD",
                 "--settings", "fixed", "--max-iter", "2", "--image-size", "16", "--quiet"])
    assert code == 0
    assert fa.study.load_results(tmp_path / "cli")["surrogate"].tolist() == ["m0+m1"]


def test_cli_compare_takes_an_ensemble_surrogate(tmp_path, members):
    import json

    from fairattack.cli.main import main

    nets, models = members
    paths = [save_scripted(net, tmp_path / f"m{i}.pt") for i, net in enumerate(nets)]
    ens = fa.ensemble(models, fuse="loss")
    x, y = batch(ens, n=3, size=16)
    folder = tmp_path / "images"
    png_folder(folder, x, y)
    code = main(["compare", "--surrogate", f"{paths[0]}+{paths[1]}", "--fuse", "loss",
                 "--attacks", "PGD", "--victims", str(paths[0]), "--data", str(folder),
                 "--n-images", "3", "--image-size", "16", "--rmse", "2", "--n-boot", "0",
                 "--out", str(tmp_path / "cmp"), "--quiet"])
    assert code == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert rows and all(r["grad_evals_mean"] == 20 for r in rows)  # 10 PGD steps x 2 members


def test_cli_ensemble_weights_are_the_python_ensembles(tmp_path, members, capsys):
    """--weights W1 W2 gives an A+B surrogate the weights fa.ensemble(weights=...) has: the same
    table as the Python API; weights that do not fit are refused before any work."""
    import json

    from fairattack.cli.main import main

    nets, models = members
    paths = [save_scripted(net, tmp_path / f"m{i}.pt") for i, net in enumerate(nets)]
    ens = fa.ensemble(models, fuse="logits", weights=[0.25, 0.75])
    x, y = batch(ens, n=4, size=16)
    folder = tmp_path / "images"
    png_folder(folder, x, y)
    args = ["compare", "--surrogate", f"{paths[0]}+{paths[1]}", "--attacks", "PGD",
            "--victims", str(paths[1]), "--data", str(folder), "--n-images", "4",
            "--image-size", "16", "--rmse", "2", "--n-boot", "0", "--quiet"]
    assert main(args + ["--weights", "0.25", "0.75", "--out", str(tmp_path / "w")]) == 0
    rows = json.loads((tmp_path / "w" / "compare.json").read_text())["rows"]
    df = fa.compare(ens, x, y, ["PGD"], {"v": models[1]}, rmse=[2], n_boot=0)
    mine = [r for r in rows if r["how"] == "native" and r["victim"] == "mean"][0]
    theirs = df[(df["how"] == "native") & (df["victim"] == "mean")].iloc[0]
    assert mine["asr"] == pytest.approx(theirs["asr"])
    assert mine["rmse_mean"] == pytest.approx(theirs["rmse_mean"])
    equal = fa.compare(fa.ensemble(models), x, y, ["PGD"], {"v": models[1]}, rmse=[2],
                       n_boot=0)
    assert not np.isclose(equal["rmse_mean"].iloc[0], theirs["rmse_mean"])  # weights matter
    def refused(argv):
        try:
            return main(argv)
        except SystemExit as stop:  # argparse's own refusals
            return stop.code

    for extra, message in [(["--weights", "0.5"], "1 weights for the 2 members"),
                           (["--weights", "0.5", "0.6"], "sum to 1.1"),
                           (["--weights", "-1", "2"], "--weights")]:
        assert refused(args + extra + ["--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    alone = args[:2] + [str(paths[0])] + args[3:]
    assert refused(alone + ["--weights", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "give the surrogate as A+B" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("fuse", ["logits", "probs"])
def test_as_torch_module_gives_peers_the_fused_loss(members, fuse):
    """A peer attack on an ensemble gets one module whose CE is the fused loss: its input
    gradient equals the plain-torch reference of the fused loss, on [0, 1] input (x / 255)."""
    nets, models = members
    ens = fa.ensemble(models, fuse=fuse, weights=[0.3, 0.7])
    x, y = batch(ens, n=3)
    module = ens.as_torch_module()
    t = (torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2) / 255).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(t), torch.from_numpy(y), reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), t)
    want_loss, want_grad, _ = reference(nets, [0.3, 0.7], fuse, x, y)
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad.permute(0, 2, 3, 1).numpy() / 255, want_grad,  # d/dx
                               rtol=1e-3, atol=1e-6 * np.abs(want_grad).max())
    with pytest.raises(ValueError, match="fuse='loss'"):
        fa.ensemble(models, fuse="loss").as_torch_module()
