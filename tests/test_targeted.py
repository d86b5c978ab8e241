"""Targeted attacks and the untargeted margin loss (SPEC 10): the shim's gradient of every loss
against plain torch autograd, the targeted stop rule and best iterate against a reference loop
written in torch, target choices, success, and bad input naming the argument."""

import math

import numpy as np
import pytest
import torch

import fairattack as fa
from fairattack import _core
from tiny import SmallNet, png_folder, save_scripted

LOSS_INDEX = {name: i for i, name in enumerate(_core.LOSSES)}


@pytest.fixture(scope="module")
def net_and_model():
    net = SmallNet().eval()
    return net, fa.load_model(net, mode="pixels")


def batch(model, n=6, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(40, 216, size=(n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x)


def reference_objective(logits, classes, name):
    """Each loss written out in plain torch (independent of the shim's code)."""
    rows = torch.arange(len(classes))
    own = logits[rows, classes]
    if name == "ce":
        return -torch.log_softmax(logits, 1)[rows, classes]
    if name == "target_ce":
        return torch.log_softmax(logits, 1)[rows, classes]
    if name == "logit":
        return own
    masked = logits.clone()
    masked[rows, classes] = -math.inf
    return masked.max(1).values - own  # margin


@pytest.mark.parametrize("name", ["ce", "target_ce", "logit", "margin"])
def test_shim_gradient_of_each_loss_matches_torch_autograd(net_and_model, name):
    net, model = net_and_model
    x, y = batch(model)
    classes = (y + 3) % 10 if name in ("target_ce", "logit") else y
    xf = x.astype(np.float32)
    loss, _, _, grad = model._core.run(xf, classes, True, 0, LOSS_INDEX[name])
    t = torch.from_numpy(xf).permute(0, 3, 1, 2).requires_grad_(True)
    logits = net(t)
    want = torch.autograd.grad(reference_objective(logits, torch.from_numpy(classes),
                                                   name).sum(), t)[0]
    np.testing.assert_allclose(grad, want.permute(0, 2, 3, 1).numpy(), rtol=1e-3, atol=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(classes), reduction="none")
    np.testing.assert_allclose(loss, ce.detach().numpy(), rtol=1e-4, atol=1e-5)  # loss: CE


def reference_targeted_pgd(net, x, targets, alpha, max_iter, threshold, loss):
    """SPEC 2's loop with SPEC 10's targeted meaning for sign steps of a fixed size, eps = 255
    (the projection is the box): per image (status, iterations, CE(z, t) returned)."""
    out = []
    for i in range(len(x)):
        xk = torch.from_numpy(x[i:i + 1].astype(np.float32))
        t = torch.tensor([int(targets[i])])
        best = math.inf
        for k in range(max_iter + 1):
            xt = xk.permute(0, 3, 1, 2).clone().requires_grad_(True)
            logits = net(xt)
            ce = float(torch.nn.functional.cross_entropy(logits.detach(), t))
            best = min(best, ce)
            if k >= max_iter:
                out.append(("max_iter", k, best))
                break
            if ce <= threshold:
                out.append(("stop_loss", k, ce))
                break
            obj = reference_objective(logits, t, loss).sum()
            g = torch.autograd.grad(obj, xt)[0].permute(0, 2, 3, 1)
            xk = torch.clamp(xk + alpha * torch.sign(g), 0, 255).detach()
    return out


@pytest.mark.parametrize("loss", ["ce", "logit"])
def test_targeted_stop_rule_and_best_iterate_follow_the_reference(net_and_model, loss):
    net, model = net_and_model
    x, y = batch(model)
    targets = (y + 1 + np.arange(len(y)) % 9) % 10
    alpha, threshold, cap = 8.0, 0.45, 12
    res = fa.attack(model, x, y, "PGD", "const_loss", target=targets, loss=loss, alpha=alpha,
                    eps=255, max_iter=cap, stop_loss_targeted=threshold)
    want = reference_targeted_pgd(net, x, targets, alpha, cap, threshold, "target_ce"
                                  if loss == "ce" else "logit")
    assert [w[0] for w in want] == list(res.status)
    assert [w[1] for w in want] == list(res.iterations)
    np.testing.assert_allclose(res.loss, [w[2] for w in want], rtol=1e-3, atol=1e-4)
    assert {"stop_loss", "max_iter"} <= set(res.status)  # both rules took part
    assert res.targeted and (res.targets == targets).all()


def test_targeted_success_is_predicting_the_target(net_and_model):
    _, model = net_and_model
    x, y = batch(model)
    res = fa.attack(model, x, y, "PGD", "fixed", target="random", loss="logit", eps=64,
                    max_iter=30)
    pred = model.predict(res.images)
    hit = fa.outcome.fooled_mask(pred, y, res.targets)
    np.testing.assert_array_equal(hit, pred == res.targets)
    assert hit.mean() >= 0.5  # a strong budget on a tiny net: most reach their target
    assert (res.targets != y).all()
    assert res.to_frame()["target"].tolist() == res.targets.tolist()


def test_targeted_ce_from_a_callable_matches_the_shim(net_and_model):
    net, model = net_and_model
    x, y = batch(model, n=4)
    targets = (y + 5) % 10

    def oracle(xb, labels, want_grad):
        t = torch.from_numpy(xb).permute(0, 3, 1, 2).requires_grad_(True)
        logits = net(t)
        ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="none")
        g = torch.autograd.grad(ce.sum(), t)[0].permute(0, 2, 3, 1) if want_grad else None
        return (ce.detach().numpy(), logits.argmax(1).numpy(),
                None if g is None else np.ascontiguousarray(g.numpy()))

    kw = dict(target=targets, max_iter=4)
    a = fa.attack(oracle, x, y, "Adam", **kw)
    b = fa.attack(model, x, y, "Adam", **kw)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-3, atol=1e-4)
    assert (np.abs(a.images.astype(int) - b.images.astype(int)) <= 1).all()


def test_random_targets_are_seeded_per_image_and_least_likely_is_the_argmin(net_and_model):
    _, model = net_and_model
    x, y = batch(model, n=8)
    kw = dict(target="random", max_iter=1)
    whole = fa.attack(model, x, y, "PGD", batch_size=8, **kw).targets
    parts = fa.attack(model, x, y, "PGD", batch_size=3, **kw).targets
    np.testing.assert_array_equal(whole, parts)
    tail = fa.attack(model, x[4:], y[4:], "PGD", index_offset=4, **kw).targets
    np.testing.assert_array_equal(tail, whole[4:])
    assert (whole != y).all() and (whole >= 0).all() and (whole < 10).all()
    other = fa.attack(model, x, y, "PGD", seed=1, **kw).targets
    assert (other != whole).any()
    least = fa.attack(model, x, y, "PGD", target="least_likely", max_iter=1).targets
    np.testing.assert_array_equal(least, model.logits(x).argmin(1))


def test_untargeted_margin_loss_runs_and_ce_is_the_default(net_and_model):
    _, model = net_and_model
    x, y = batch(model)
    margin = fa.attack(model, x, y, "PGD", loss="margin", max_iter=5)
    ce = fa.attack(model, x, y, "PGD", max_iter=5)
    default = fa.attack(model, x, y, "PGD", loss="ce", max_iter=5)
    np.testing.assert_array_equal(ce.images, default.images)
    assert not margin.targeted and margin.loss_name == "margin"
    assert (margin.images != ce.images).any()
    assert (model.predict(margin.images) != y).mean() > 0  # it attacks


@pytest.mark.parametrize("kwargs,error,match", [
    ({"target": "lots"}, ValueError, "target='lots'"),
    ({"target": [0, 1]}, ValueError, "target has 2 entries"),
    ({"target": [10] * 6}, ValueError, r"target\[0\]=10 out of range"),
    ({"target": "same"}, ValueError, r"target\[0\]=.* is the label"),
    ({"loss": "logit"}, ValueError, "loss='logit'.*target"),
    ({"target": "random", "loss": "margin"}, ValueError, "loss='margin'"),
    ({"loss": "hinge"}, ValueError, "loss='hinge'"),
    ({"target": "random", "stop_loss": 3.0}, ValueError, "stop_loss"),
    ({"stop_loss_targeted": 0.1}, ValueError, "stop_loss_targeted"),
    ({"target": "random", "stop_loss_targeted": -1}, ValueError, "stop_loss_targeted"),
])
def test_bad_targeted_input_names_the_argument(net_and_model, kwargs, error, match):
    _, model = net_and_model
    x, y = batch(model)
    if kwargs.get("target") == "same":
        kwargs = dict(kwargs, target=y)
    with pytest.raises(error, match=match):
        fa.attack(model, x, y, "PGD", max_iter=1, **kwargs)


def test_a_callable_takes_array_targets_and_ce_only(net_and_model):
    _, model = net_and_model
    x, y = batch(model, n=2)

    def oracle(xb, labels, want_grad):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="target='random' needs the model's classes"):
        fa.attack(oracle, x, y, "PGD", target="random")
    with pytest.raises(ValueError, match="loss='logit'"):
        fa.attack(oracle, x, y, "PGD", target=(y + 1) % 10, loss="logit")


def test_compare_targeted_asr_is_the_victims_target_rate(net_and_model):
    _, model = net_and_model
    x, y = batch(model)
    # the same weights: what hits the surrogate hits it
    victim = fa.load_model(SmallNet().eval(), mode="pixels")
    targets = (y + 2) % 10
    kw = dict(eps=32, max_iter=20)
    df = fa.compare(model, x, y, attacks=[{"name": "pgd", "optimizer": "PGD", **{
        k: v for k, v in kw.items() if k != "eps"}}], victims={"v": victim}, rmse=[4],
        eps=32, target=targets, loss="logit", n_boot=0)
    assert df["targeted"].all()
    res = fa.attack(model, x, y, "PGD", target=targets, loss="logit", seed=0, **kw)
    want = float(np.mean(victim.predict(res.images) == targets))
    native = df[(df["how"] == "native") & (df["victim"] == "v")]
    assert float(native["asr"].iloc[0]) == pytest.approx(want)
    assert want > 0
    untargeted = fa.compare(model, x, y, attacks=["PGD"], victims={"v": victim}, rmse=[4],
                            n_boot=0)
    assert not untargeted["targeted"].any()


def test_compare_refuses_a_target_for_attacks_that_cannot_take_one(net_and_model):
    _, model = net_and_model
    x, y = batch(model, n=2)
    with pytest.raises(ValueError, match="target: attacks \\['mine'\\]"):
        fa.compare(model, x, y, attacks=[("mine", lambda a, b: a)], victims={"v": model},
                   rmse=[2], target="random")
    with pytest.raises(ValueError, match="loss='logit'"):
        fa.compare(model, x, y, attacks=["PGD"], victims={"v": model}, rmse=[2], loss="logit")


def test_study_targeted_cells_report_target_success(tmp_path, net_and_model):
    import pandas as pd

    net, model = net_and_model
    path = tmp_path / "s.pt"
    save_scripted(net, path)
    x, y = batch(model, n=4)
    common = dict(optimizers=["PGD"], settings=["fixed"], progress=False)
    df = fa.run_study({"s": path}, {"v": path}, (x, y), out_dir=tmp_path / "t",
                      overrides={"max_iter": 10, "eps": 32}, target="random", loss="logit",
                      **common)
    assert df["targeted"].tolist() == [True]
    records = pd.read_csv(next((tmp_path / "t").glob("cells/*/*/*/images.csv")))
    res = fa.attack(model, x, y, "PGD", "fixed", target="random", loss="logit", max_iter=10,
                    eps=32)
    np.testing.assert_array_equal(records["target"], res.targets)
    want = float(np.mean(model.predict(res.images) == res.targets))
    assert df["err_v"].iloc[0] == pytest.approx(want)
    assert df["surrogate_fooling_rate"].iloc[0] == pytest.approx(want)
    plain = fa.run_study({"s": path}, {"v": path}, (x, y), out_dir=tmp_path / "u",
                         overrides={"max_iter": 2}, **common)
    assert plain["targeted"].tolist() == [False]
    again = fa.study.load_results(tmp_path / "t")
    assert again["targeted"].tolist() == [True]
    with pytest.raises(ValueError, match="target="):
        fa.run_study({"s": path}, {"v": path}, (x, y), out_dir=tmp_path / "w",
                     target=[1, 2, 3, 4], **common)


def test_cli_run_and_compare_take_target_and_loss(tmp_path, net_and_model, capsys):
    import json

    from fairattack.cli.main import main
    from fairattack.data import synset_of

    net, model = net_and_model
    path = tmp_path / "s.pt"
    save_scripted(net, path)
    x, y = batch(model, n=3, size=16)
    folder = tmp_path / "images"
    png_folder(folder, x, y)
    common = ["--victims", str(path), "--data", str(folder), "--quiet"]
    code = main(["run", "--surrogates", str(path), "--out", str(tmp_path / "study"),
                 "--optimizers", "PGD", "--settings", "fixed", "--max-iter", "3",
                 "--image-size", "16", "--target", "random", "--loss", "logit", *common])
    assert code == 0
    table = fa.study.load_results(tmp_path / "study")
    assert table["targeted"].tolist() == [True]
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"{synset_of(int(y[i]))}_img{i}.png {(int(y[i]) + 1) % 10}\n"
                               for i in range(len(x))))
    code = main(["compare", "--surrogate", str(path), "--attacks", "PGD", "--rmse", "2",
                 "--n-images", "3", "--image-size", "16", "--n-boot", "0", "--target",
                 str(targets), "--out", str(tmp_path / "cmp"), *common])
    assert code == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert rows and all(r["targeted"] for r in rows)
    capsys.readouterr()
    targets.write_text("nobody.png 3\n")
    assert main(["compare", "--surrogate", str(path), "--attacks", "PGD", "--rmse", "2",
                 "--n-images", "3", "--image-size", "16", "--target", str(targets),
                 "--out", str(tmp_path / "cmp2"), *common]) == 2
    assert "--target" in capsys.readouterr().err


def test_study_takes_a_table_of_targets_by_image_name(tmp_path, net_and_model):
    """run_study(target={name: class}) (the CLI's --target FILE): each image aims at its own
    class from the table, as fa.attack with that array does; a missing image or a target equal
    to the label is refused before any attack runs."""
    import pandas as pd

    net, model = net_and_model
    path = tmp_path / "s.pt"
    save_scripted(net, path)
    x, y = batch(model, n=4)
    names = [f"img{i}.png" for i in range(4)]
    chosen = (y + np.array([1, 2, 3, 4])) % 10
    table = {f"img{i}": int(chosen[i]) for i in range(4)}  # by stem, as label files may be
    common = dict(optimizers=["PGD"], settings=["fixed"], progress=False,
                  overrides={"max_iter": 10, "eps": 32}, loss="logit")
    df = fa.run_study({"s": path}, {"v": path}, (x, y, names), out_dir=tmp_path / "t",
                      target=table, chunk_size=3, **common)
    records = pd.read_csv(next((tmp_path / "t").glob("cells/*/*/*/images.csv")))
    np.testing.assert_array_equal(records["target"], chosen)
    res = fa.attack(model, x, y, "PGD", "fixed", target=chosen, loss="logit", max_iter=10,
                    eps=32)
    assert df["err_v"].iloc[0] == pytest.approx(float(np.mean(model.predict(res.images) ==
                                                              chosen)))
    changed = dict(table, img0=next(k for k in range(10) if k not in (y[0], chosen[0])))
    with pytest.warns(fa.study.RecomputeWarning, match="recomputing cell"):
        fa.run_study({"s": path}, {"v": path}, (x, y, names), out_dir=tmp_path / "t",
                     target=changed, chunk_size=3, **common)
    with pytest.raises(ValueError, match=r"target: no entry for 'img3.png'"):
        fa.run_study({"s": path}, {"v": path}, (x, y, names), out_dir=tmp_path / "u",
                     target={k: v for k, v in table.items() if k != "img3"}, **common)
    with pytest.raises(ValueError, match=r"target: image 'img1.png' aims at its own label"):
        fa.run_study({"s": path}, {"v": path}, (x, y, names), out_dir=tmp_path / "w",
                     target=dict(table, img1=int(y[1])), **common)
    assert not list((tmp_path / "w").glob("cells/*/*/*/images.csv"))  # nothing attacked
    with pytest.raises(ValueError, match="class index"):
        fa.run_study({"s": path}, {"v": path}, (x, y, names), out_dir=tmp_path / "z",
                     target=dict(table, img1=True), **common)


def test_cli_run_takes_a_target_file(tmp_path, net_and_model, capsys):
    from fairattack.cli.main import main

    net, model = net_and_model
    path = tmp_path / "s.pt"
    save_scripted(net, path)
    x, y = batch(model, n=3, size=16)
    names = png_folder(tmp_path / "images", x, y)
    folder = tmp_path / "images"
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"{n} {(int(y[i]) + 1) % 10}\n" for i, n in enumerate(names)))
    args = ["run", "--surrogates", str(path), "--victims", str(path), "--data", str(folder),
            "--optimizers", "PGD", "--settings", "fixed", "--max-iter", "3", "--image-size",
            "16", "--loss", "logit", "--quiet"]
    assert main(args + ["--target", str(targets), "--out", str(tmp_path / "study")]) == 0
    import pandas as pd

    records = pd.read_csv(next((tmp_path / "study").glob("cells/*/*/*/images.csv")))
    want = {n: (int(y[i]) + 1) % 10 for i, n in enumerate(names)}
    assert [want[n] for n in records["name"]] == records["target"].tolist()
    capsys.readouterr()
    assert main(args + ["--target", str(tmp_path / "nope.txt"), "--out",
                        str(tmp_path / "bad")]) == 2
    assert "--target" in capsys.readouterr().err and not (tmp_path / "bad").exists()
