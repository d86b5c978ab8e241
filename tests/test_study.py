"""run_study: the table and its files, victims' error rates recounted from the saved PNGs, content
keys (a changed surrogate, image, label or hyper-parameter recomputes exactly the affected cells),
craft once / evaluate many (a new victim runs no attack), attack variants, resume after
interruption, folder selection, errors.

Tiny stand-in classifiers (16x16 input, 1000 classes) exported with fairattack.models.export keep
this fast; the victims are noisy copies of the surrogate, so adversarial images transfer partly.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import fairattack as fa
from fairattack import _model, data, models, study
from fairattack._model import Model
from fairattack.attack import attack as real_attack
from fairattack.study import RecomputeWarning

SIZE = 16
OPTIMIZERS = ["GD", "Adam"]
SETTINGS = ["const_loss", "rmse_loss"]
NUMERIC = ["n_images", "n_skipped", "n_failed", "n_stop_loss", "n_stop_rmse", "n_max_iter",
           "n_target_not_reached", "rmse", "linf", "l2", "l1", "l0", "psnr", "ssim", "loss",
           "iterations", "surrogate_fooling_rate", "err_v1", "err_v2", "n_failed_v1",
           "n_failed_v2", "asr", "asr_ci_low", "asr_ci_high"]


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4, 1000)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)) * 4.0


def export_tiny(path, seed, like=None, noise=0.0):
    """A tiny classifier as a fairattack TorchScript file; `like` copies another net's weights
    plus Gaussian noise of relative size `noise`. Returns (path, net)."""
    torch.manual_seed(seed)
    net = TinyNet()
    if like is not None:
        with torch.no_grad():
            for mine, theirs in zip(net.parameters(), like.parameters()):
                mine.copy_(theirs + noise * theirs.std() * torch.randn_like(theirs))
    models.export(net, path, input_size=SIZE, mode="tf")
    return path, net


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: TorchScript path} of a surrogate s and victims v1, v2, and 6 images that s
    classifies correctly (labelled with its own predictions)."""
    folder = tmp_path_factory.mktemp("tiny-models")
    s, net = export_tiny(folder / "s.pt", 0)
    v1, _ = export_tiny(folder / "v1.pt", 1, like=net, noise=0.3)
    v2, _ = export_tiny(folder / "v2.pt", 2, like=net, noise=0.6)
    images = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3)).astype(np.uint8)
    labels = fa.load_model(s).predict(images)
    return {"s": s, "v1": v1, "v2": v2}, (images, labels, [f"img{i}" for i in range(6)])


def small_study(tiny, out_dir, victims=None, **kw):
    paths, arrays = tiny
    kw.setdefault("overrides", {"max_iter": 3})
    victims = victims or {"v1": paths["v1"], "v2": paths["v2"]}
    return fa.run_study({"s": paths["s"]}, victims, arrays, optimizers=OPTIMIZERS,
                        settings=SETTINGS, out_dir=out_dir, progress=False, **kw)


def cell_files(out_dir):
    """The chunk records of every cell (a recomputed cell rewrites its records)."""
    return sorted((out_dir / "cells").glob("*/*/*/chunks/*.json"))


def complete_cells(out_dir):
    """(setting, attack) of every complete cell on disk."""
    out = []
    for path in sorted((out_dir / "cells").glob("*/*/*/cell.json")):
        cell = json.loads(path.read_text())
        if cell["complete"]:
            out.append((cell["setting"], cell["attack"]))
    return sorted(out)


def mtimes(out_dir):
    return {str(p.relative_to(out_dir)): p.stat().st_mtime_ns for p in cell_files(out_dir)}


def png_folder(out_dir, setting, attack, surrogate="s"):
    return out_dir / "cells" / surrogate / setting / attack / "adv"


def count_attacks(monkeypatch, fail_at=None):
    """Replace the attack run_study calls by one that records (setting, optimizer) and, at call
    number `fail_at`, raises KeyboardInterrupt instead."""
    calls = []

    def counting(*args, **kwargs):
        calls.append((kwargs["setting"], kwargs["optimizer"]))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(study.grid, "attack", counting)
    return calls


# ----------------------------------------------------------------------------- the table

def test_results_csv_rows_columns_and_files(tiny, tmp_path):
    paths, (images, labels, names) = tiny
    df = small_study(tiny, tmp_path)
    expected = ["surrogate", "attack", "optimizer", "setting", "targeted", "n_images",
                "n_skipped",
                "n_failed", "n_stop_loss", "n_stop_rmse", "n_max_iter", "n_target_not_reached",
                "rmse", "linf", "l2", "l1", "l0", "psnr", "ssim", "loss", "iterations",
                "grad_evals", "forward_evals", "surrogate_fooling_rate", "err_v1",
                "clean_err_v1", "err_v2", "clean_err_v2", "n_failed_v1", "n_failed_v2", "asr",
                "asr_ci_low", "asr_ci_high", "seconds"]
    assert list(df.columns) == expected
    capped = df["n_max_iter"] == df["n_images"]  # no early stop: one gradient per step
    assert (df.loc[capped, "grad_evals"] >= df.loc[capped, "iterations"]).all()
    assert (df["grad_evals"] > 0).all()
    assert list(df[["setting", "optimizer"]].itertuples(index=False, name=None)) == [
        (st, o) for st in SETTINGS for o in OPTIMIZERS]
    assert (df["attack"] == df["optimizer"]).all()
    assert (df["surrogate"] == "s").all() and (df["n_images"] == len(images)).all()
    assert (df["n_skipped"] == 0).all() and (df["linf"] <= 16).all() and (df["rmse"] > 0).all()
    assert (df["iterations"] <= 3).all()
    assert (df["n_stop_loss"] + df["n_max_iter"] == df["n_images"]).all()
    assert ((df["asr_ci_low"] <= df["asr"]) & (df["asr"] <= df["asr_ci_high"])).all()

    saved = pd.read_csv(tmp_path / "results.csv")
    assert list(saved.columns) == expected
    pd.testing.assert_frame_equal(saved[NUMERIC], df[NUMERIC], check_dtype=False)
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4
    assert complete_cells(tmp_path) == sorted((st, o) for st in SETTINGS for o in OPTIMIZERS)
    per_image = pd.read_csv(tmp_path / "cells" / "s" / "const_loss" / "Adam" / "images.csv")
    assert list(per_image["name"]) == names
    assert per_image["rmse"].mean() == pytest.approx(df.loc[1, "rmse"])
    counts = per_image["status"].value_counts()
    assert counts.get("stop_loss", 0) == df.loc[1, "n_stop_loss"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_asr_is_the_victims_error_on_the_saved_images(tiny, tmp_path):
    paths, (images, labels, names) = tiny
    df = small_study(tiny, tmp_path)
    victims = {v: fa.load_model(paths[v]) for v in ("v1", "v2")}
    surrogate = fa.load_model(paths["s"])
    for _, row in df.iterrows():
        folder = png_folder(tmp_path, row["setting"], row["optimizer"])
        adv = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
        assert adv.dtype == np.uint8 and np.abs(adv.astype(int) - images).max() <= 16
        delta = adv.astype(float) - images
        assert row["rmse"] == pytest.approx(np.sqrt((delta ** 2).mean(axis=(1, 2, 3))).mean(),
                                            rel=1e-4)
        by_hand = {v: m.predict(adv) != labels for v, m in victims.items()}
        for v, wrong in by_hand.items():
            assert row[f"err_{v}"] == pytest.approx(wrong.mean())
        per_image = np.mean([w.astype(float) for w in by_hand.values()], axis=0)
        assert row["asr"] == pytest.approx(per_image.mean())
        # the interval: a percentile bootstrap over images of the per-image mean error
        rng = np.random.default_rng(0)
        means = per_image[rng.integers(0, len(per_image), (2000, len(per_image)))].mean(axis=1)
        assert row["asr_ci_low"] == pytest.approx(np.percentile(means, 2.5), abs=0.1)
        assert row["asr_ci_high"] == pytest.approx(np.percentile(means, 97.5), abs=0.1)
        assert row["surrogate_fooling_rate"] == pytest.approx(
            np.mean(surrogate.predict(adv) != labels))
    # the attacks did something the victims can see: not every error rate is that of clean images
    clean = {v: float(np.mean(m.predict(images) != labels)) for v, m in victims.items()}
    assert any(df[f"err_{v}"].max() > clean[v] for v in victims)


def test_chunks_give_the_table_of_one_chunk(tiny, tmp_path, monkeypatch):
    whole = small_study(tiny, tmp_path / "whole")
    calls = count_attacks(monkeypatch)
    chunked = small_study(tiny, tmp_path / "chunked", chunk_size=4)
    assert len(calls) == 8  # 4 cells x 2 chunks (4 + 2 images)
    pd.testing.assert_frame_equal(chunked[NUMERIC], whole[NUMERIC])


def test_const_rmse_counts_images_that_miss_the_target(tiny, tmp_path):
    paths, arrays = tiny
    df = fa.run_study({"s": paths["s"]}, {"v1": paths["v1"]}, arrays, optimizers=["GD"],
                      settings=["const_rmse"], out_dir=tmp_path, progress=False,
                      overrides={"max_iter": 2})
    per_image = pd.read_csv(tmp_path / "cells" / "s" / "const_rmse" / "GD" / "images.csv")
    missed = per_image["status"] == "max_iter"
    assert missed.any()  # 2 steps of a first-step RMSE of 8 do not reach 15 everywhere
    assert df.loc[0, "n_target_not_reached"] == missed.sum() == df.loc[0, "n_max_iter"]
    assert (per_image.loc[missed, "rmse"] < 15).all()
    assert df.loc[0, "n_stop_rmse"] == (per_image["status"] == "stop_rmse").sum()


# ----------------------------------------------------------------------------- attack variants

def test_named_attacks_are_a_grid_axis(tiny, tmp_path):
    paths, (images, labels, names) = tiny
    attacks = {"pgd-di": {"optimizer": "pgd", "setting": "fixed", "di_prob": 0.5},
               "adam8": {"optimizer": "Adam", "eps": 8, "max_iter": 2}}
    df = fa.run_study({"s": paths["s"]}, {"v1": paths["v1"]}, (images, labels, names),
                      attacks=attacks, settings=["const_loss", "rmse_loss"], out_dir=tmp_path,
                      progress=False)
    # adam8 runs under both settings, pgd-di only under its own; settings in grid order
    assert list(df[["setting", "attack", "optimizer"]].itertuples(index=False, name=None)) == [
        ("const_loss", "adam8", "Adam"), ("rmse_loss", "adam8", "Adam"),
        ("fixed", "pgd-di", "PGD")]
    assert (df.loc[df["attack"] == "adam8", "linf"] <= 8).all()
    assert (df.loc[df["attack"] == "adam8", "iterations"] <= 2).all()
    # each cell is exactly fa.attack with the same arguments
    model = fa.load_model(paths["s"])
    for setting, name, kwargs in (("fixed", "pgd-di", {"optimizer": "PGD", "di_prob": 0.5}),
                                  ("const_loss", "adam8",
                                   {"optimizer": "Adam", "eps": 8, "max_iter": 2})):
        want = real_attack(model, images, labels, setting=setting, **kwargs).images
        folder = png_folder(tmp_path, setting, name)
        got = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
        np.testing.assert_array_equal(got, want)
    cell = json.loads((tmp_path / "cells" / "s" / "fixed" / "pgd-di" / "cell.json").read_text())
    assert cell["parts"]["config"]["transforms"] == {"di_prob": 0.5}


def test_nested_overrides_apply_by_any_case_and_unknown_keys_raise(tiny, tmp_path):
    df = small_study(tiny, tmp_path, overrides={"max_iter": 3, "adam": {"max_iter": 1},
                                                "RMSE_LOSS": {"eps": 2}})
    by_cell = df.set_index(["setting", "optimizer"])
    assert by_cell.loc[("const_loss", "Adam"), "iterations"] == 1
    assert by_cell.loc[("const_loss", "GD"), "iterations"] > 1
    assert (df.loc[df["setting"] == "rmse_loss", "linf"] <= 2).all()
    assert (df.loc[df["setting"] == "const_loss", "linf"] > 2).any()
    with pytest.raises(ValueError, match="'adamx' is neither a setting"):
        small_study(tiny, tmp_path / "bad", overrides={"adamx": {"max_iter": 1}})
    assert not (tmp_path / "bad").exists()


def test_image_size_sets_only_unknown_input_sizes(tiny, tmp_path):
    from tiny import save_tiny

    paths, _ = tiny
    unknown = save_tiny(tmp_path / "unknown.pt", 3)  # plain TorchScript: no input size
    known = fa.load_model(paths["s"])  # exported at SIZE: its metadata says so
    other = fa.load_model(unknown)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(8):  # even images labelled as s sees them at SIZE, odd ones as u at 24
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)).save(path)
        model, size = (known, SIZE) if i % 2 == 0 else (other, 24)
        label = int(model.predict(data.load_image(path, size)[None])[0])
        path.rename(folder / f"{data.synset_of(label)}_img{i}.png")
    fa.run_study({"s": paths["s"], "u": unknown}, [paths["v1"]], folder, optimizers=["GD"],
                 out_dir=tmp_path / "out", n_images=3, image_size=24,
                 overrides={"max_iter": 1}, progress=False)
    for name, size in (("s", SIZE), ("u", 24)):
        selected = np.load(tmp_path / "out" / "selection" / name / "images.npy")
        assert selected.shape == (3, size, size, 3)


# ----------------------------------------------------------------------------- content keys

def changed_cells(before, after):
    """(setting, attack) of the cells whose chunk records were rewritten."""
    return sorted({tuple(k.split("/")[2:4]) for k in after if before.get(k) != after[k]})


def test_resume_reuses_finished_cells_and_recomputes_changed_ones(tiny, tmp_path, monkeypatch):
    first = small_study(tiny, tmp_path)
    before = mtimes(tmp_path)
    calls = count_attacks(monkeypatch)

    again = small_study(tiny, tmp_path)
    assert calls == [] and mtimes(tmp_path) == before
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), first.drop(columns="seconds"))

    # an override for Adam only: exactly the Adam cells are stale, and the warning says why
    with pytest.warns(RecomputeWarning, match=r"s/const_loss/Adam: the configuration changed "
                                              r"\(config\.max_iter: 3 -> 1\)"):
        small_study(tiny, tmp_path, overrides={"max_iter": 3, "Adam": {"max_iter": 1}})
    assert sorted(calls) == [("const_loss", "Adam"), ("rmse_loss", "Adam")]
    assert changed_cells(before, mtimes(tmp_path)) == [("const_loss", "Adam"),
                                                       ("rmse_loss", "Adam")]

    calls.clear()
    small_study(tiny, tmp_path, overrides={"max_iter": 3, "Adam": {"max_iter": 1}}, resume=False)
    assert len(calls) == 4


def test_changed_surrogate_weights_recompute_only_its_cells(tiny, tmp_path, monkeypatch):
    paths, arrays = tiny
    s2, _ = export_tiny(tmp_path / "s2.pt", 5)

    def run():
        return fa.run_study({"s": paths["s"], "s2": s2}, {"v1": paths["v1"]}, arrays,
                            optimizers=["GD"], out_dir=tmp_path / "out", progress=False,
                            overrides={"max_iter": 2})

    first = run()
    calls = count_attacks(monkeypatch)
    export_tiny(s2, 6)  # retrained: same name, other weights
    with pytest.warns(RecomputeWarning, match="s2/const_loss/GD: the surrogate's file changed"):
        second = run()
    assert calls == [("const_loss", "GD")]  # one cell: s2's
    assert second.loc[0].drop("seconds").equals(first.loc[0].drop("seconds"))
    assert second.loc[1, "loss"] != first.loc[1, "loss"]


@pytest.mark.parametrize("change, reason", [("image", "the images changed"),
                                            ("label", "the labels changed")])
def test_changed_image_or_label_recomputes_the_cells_that_use_it(tiny, tmp_path, monkeypatch,
                                                                 change, reason):
    paths, (images, labels, names) = tiny
    small_study(tiny, tmp_path)
    images, labels = images.copy(), labels.copy()
    if change == "image":
        images[3, 0, 0, 0] ^= 1
    else:
        labels[3] = (labels[3] + 1) % 1000
    calls = count_attacks(monkeypatch)
    with pytest.warns(RecomputeWarning, match=reason):
        small_study((paths, (images, labels, names)), tmp_path)
    assert len(calls) == 4  # every cell attacks image 3


def test_adding_a_victim_runs_no_attack(tiny, tmp_path, monkeypatch):
    paths, (images, labels, names) = tiny
    small_study(tiny, tmp_path, victims={"v1": paths["v1"]})
    calls = count_attacks(monkeypatch)
    df = small_study(tiny, tmp_path)  # v1 and v2
    assert calls == []
    v2 = fa.load_model(paths["v2"])
    for _, row in df.iterrows():
        folder = png_folder(tmp_path, row["setting"], row["optimizer"])
        adv = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
        assert row["err_v2"] == pytest.approx(np.mean(v2.predict(adv) != labels))
    # the per-image predictions are on disk, and results.csv has both victims
    stored = json.loads((tmp_path / "cells" / "s" / "const_loss" / "GD" / "victims" /
                         "v2.json").read_text())
    assert len(stored["pred"]) == len(names)
    assert {"err_v1", "err_v2"} <= set(pd.read_csv(tmp_path / "results.csv").columns)


def test_results_csv_keeps_every_cell_on_disk(tiny, tmp_path):
    small_study(tiny, tmp_path)
    paths, arrays = tiny
    df = fa.run_study({"s": paths["s"]}, {"v1": paths["v1"]}, arrays, optimizers=["MGD"],
                      out_dir=tmp_path, progress=False, overrides={"max_iter": 3})
    assert len(df) == 1
    saved = pd.read_csv(tmp_path / "results.csv")
    assert len(saved) == 5 and "MGD" in set(saved["optimizer"])
    assert len(study.load_results(tmp_path)) == 5


# ----------------------------------------------------------------------------- interruption

def test_interrupted_study_keeps_finished_work_and_resumes(tiny, tmp_path, monkeypatch):
    paths, _ = tiny
    reference = small_study(tiny, tmp_path / "reference")

    class InterruptingVictim(Model):
        """v1, pressing Ctrl-C during its fourth call: the third cell's evaluation (the
        second call is the clean images' baseline, once per surrogate)."""

        def __init__(self):
            loaded = fa.load_model(paths["v1"], name="v1")
            super().__init__(loaded._core, "v1", "cpu", paths["v1"])
            self.calls = 0

        def predict(self, images, batch_size=64):
            self.calls += 1
            if self.calls == 4:
                raise KeyboardInterrupt
            return super().predict(images, batch_size=batch_size)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        small_study(tiny, out, victims={"v1": InterruptingVictim(), "v2": paths["v2"]})
    assert complete_cells(out) == [("const_loss", "Adam"), ("const_loss", "GD")]
    assert len(pd.read_csv(out / "results.csv")) == 2  # the table so far
    kept = mtimes(out)

    calls = count_attacks(monkeypatch)
    resumed = small_study(tiny, out)
    # the third cell was crafted before the interruption: only the fourth is attacked
    assert calls == [("rmse_loss", "Adam")]
    assert {k: v for k, v in mtimes(out).items() if k in kept} == kept
    pd.testing.assert_frame_equal(resumed[NUMERIC], reference[NUMERIC])
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[NUMERIC], reference[NUMERIC],
                                  check_dtype=False)


def test_interrupted_attack_loses_only_the_running_item(tiny, tmp_path, monkeypatch):
    calls = count_attacks(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        small_study(tiny, tmp_path)
    assert complete_cells(tmp_path) == [("const_loss", "GD")]
    calls = count_attacks(monkeypatch)
    small_study(tiny, tmp_path)
    assert calls == [("const_loss", "Adam"), ("rmse_loss", "GD"), ("rmse_loss", "Adam")]
    assert not list(tmp_path.rglob("*.tmp"))


def test_load_results_rebuilds_the_table_from_the_cells(tiny, tmp_path):
    df = small_study(tiny, tmp_path)
    (tmp_path / "results.csv").unlink()
    rebuilt = study.load_results(tmp_path)
    pd.testing.assert_frame_equal(rebuilt[NUMERIC], df[NUMERIC], check_dtype=False)
    with pytest.raises(FileNotFoundError, match="out_dir"):
        study.load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished cells"):
        study.load_results(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("a,b\n1,2,3,4\n\"x")
    with pytest.raises(ValueError, match="malformed results file"):
        study.load_results(tmp_path / "bad")


# ----------------------------------------------------------------------------- folder data

def test_folder_is_selected_per_surrogate_and_cached(tiny, tmp_path, monkeypatch):
    paths, _ = tiny
    surrogate = fa.load_model(paths["s"])
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    wrong = set()
    for i in range(10):
        x = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        label = int(surrogate.predict(x[None])[0])
        if i % 3 == 0:  # labelled with another class: the surrogate gets these wrong
            label = (label + 1) % 1000
        name = f"{data.synset_of(label)}_img{i}.png"
        Image.fromarray(x).save(folder / name)
        if i % 3 == 0:
            wrong.add(name)

    def run(**kw):
        return fa.run_study([paths["s"]], [paths["v1"]], folder, optimizers=["Adam"],
                            out_dir=tmp_path / "out", n_images=4, overrides={"max_iter": 2},
                            progress=False, **kw)

    df = run()
    assert df.loc[0, "surrogate"] == "s" and df.loc[0, "n_images"] == 4
    selection = tmp_path / "out" / "selection" / "s"
    names = json.loads((selection / "names.json").read_text())
    np.testing.assert_array_equal(surrogate.predict(np.load(selection / "images.npy")),
                                  np.load(selection / "labels.npy"))
    assert names == data.select(folder, surrogate, 4, SIZE, seed=0)[2]
    assert not set(names) & wrong

    calls = count_attacks(monkeypatch)
    run()
    assert calls == []
    # an image that is not selected changes: selected again, same images, nothing recomputed
    unselected = min({p.name for p in folder.iterdir()} - set(names))
    x = np.asarray(Image.open(folder / unselected)).copy()
    x[0, 0, 0] ^= 1
    Image.fromarray(x).save(folder / unselected)
    with pytest.warns(RecomputeWarning, match="the data files changed"):
        run()
    assert calls == []
    # a selected image changes: its cell is recomputed
    x = np.asarray(Image.open(folder / names[0])).copy()
    x[0, 0, 0] ^= 1
    Image.fromarray(x).save(folder / names[0])
    with pytest.warns(RecomputeWarning, match="the images changed"):
        run()
    assert len(calls) == 1
    with pytest.warns(RecomputeWarning, match="the seed changed"):
        run(seed=1)  # another selection
    assert not list((tmp_path / "out").rglob("*.tmp"))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("change, match", [
    ({"optimizers": ["Adamax"]}, "optimizer 'Adamax'"),
    ({"optimizers": []}, "optimizers"),
    ({"settings": ["fast"]}, "setting 'fast'"),
    ({"settings": []}, "settings"),
    ({"surrogates": []}, "surrogates"),
    ({"victims": []}, "victims"),
    ({"victims": ["no-such-model"]}, "victims: unknown model 'no-such-model'"),
    ({"data": 42}, "data"),
    ({"data": "flat"}, "data"),  # images of the wrong shape, below
    ({"n_images": 0}, "n_images"),
    ({"batch_size": 0}, "batch_size"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"seed": -1}, "seed"),
    ({"rounding": "floor"}, "rounding"),
    ({"image_size": 0}, "image_size"),
    ({"device": "tpu"}, "device"),
    ({"overrides": {"eps": -1}}, "eps"),
    ({"overrides": {"GD": {"max_iter": -2}}}, "max_iter"),
    ({"overrides": {"nosuch": {"max_iter": 2}}}, "'nosuch' is neither"),
    ({"surrogates": "twice"}, "twice"),
    ({"attacks": {"x": {"eps": 8}}}, "'optimizer' is missing"),
    ({"attacks": {"x": {"optimizer": "Adamax"}}}, "optimizer 'Adamax'"),
    ({"attacks": {"x": {"optimizer": "PGD", "setting": "fast"}}}, "setting 'fast'"),
    ({"attacks": {"x": {"optimizer": "PGD", "di_prob": 2}}}, "di_prob"),
    ({"attacks": {"x": {"optimizer": "PGD", "ti_kernel": 4}}}, "ti_kernel"),
    ({"attacks": {"GD": {"optimizer": "PGD"}}}, "'GD' appears twice"),
])
def test_bad_arguments_raise_value_error_naming_them(tiny, tmp_path, change, match):
    paths, (images, labels, names) = tiny
    kw = {"surrogates": [paths["s"]], "victims": [paths["v1"]], "data": (images, labels),
          "optimizers": ["GD"], "out_dir": tmp_path / "out", "progress": False}
    kw.update(change)
    if kw["data"] == "flat":
        kw["data"] = (images[..., 0], labels)
    if kw["surrogates"] == "twice":
        kw["surrogates"] = [paths["s"], paths["s"]]
    with pytest.raises(ValueError, match=match):
        fa.run_study(**kw)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_bad_override_type(tiny, tmp_path):
    paths, arrays = tiny
    with pytest.raises(TypeError, match="max_iter"):
        fa.run_study([paths["s"]], [paths["v1"]], arrays, out_dir=tmp_path,
                     overrides={"max_iter": "ten"}, progress=False)
    with pytest.raises(TypeError, match="stepsize"):
        fa.run_study([paths["s"]], [paths["v1"]], arrays, out_dir=tmp_path,
                     overrides={"stepsize": 1}, progress=False)
    with pytest.raises(TypeError, match="unknown key 'stepsize'"):
        fa.run_study([paths["s"]], [paths["v1"]], arrays, out_dir=tmp_path, progress=False,
                     attacks={"x": {"optimizer": "GD", "stepsize": 1}})


def test_registry_names_are_case_insensitive():
    assert _model.model_specs(["EfficientNet-Lite0"], "victims") == {
        "efficientnet-lite0": "efficientnet-lite0"}


def test_repeated_file_names_in_synset_folders_get_distinct_pngs(tiny, tmp_path):
    paths, (images, labels, _) = tiny
    names = [f"n0000000{i % 3}/img{i // 3}.JPEG" for i in range(6)]  # img0 in three folders
    fa.run_study({"s": paths["s"]}, {"v1": paths["v1"]}, (images, labels, names),
                 optimizers=["GD"], out_dir=tmp_path, progress=False, overrides={"max_iter": 1})
    per_image = pd.read_csv(tmp_path / "cells" / "s" / "const_loss" / "GD" / "images.csv")
    assert list(per_image["name"]) == names and per_image["png"].is_unique
    folder = png_folder(tmp_path, "const_loss", "GD")
    assert sorted(p.name for p in folder.iterdir()) == sorted(per_image["png"])
    for png, image in zip(per_image["png"], images):  # each PNG is its own image's attack
        assert np.abs(np.asarray(Image.open(folder / png)).astype(int) - image).max() <= 16


def test_names_that_would_share_a_folder_raise(tiny, tmp_path):
    paths, arrays = tiny
    with pytest.raises(ValueError, match="would share the folder"):
        fa.run_study({"s": paths["s"]}, {"v 1": paths["v1"], "v_1": paths["v2"]}, arrays,
                     optimizers=["GD"], out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_returns_and_max_rmse_are_attack_keys_in_the_cell_key(tiny, tmp_path, monkeypatch):
    paths, (images, labels, names) = tiny

    def run(max_rmse):
        spec = {"optimizer": "PGD", "setting": "fixed", "returns": "best", "max_rmse": max_rmse}
        return fa.run_study({"s": paths["s"]}, {"v1": paths["v1"]}, (images, labels, names),
                            attacks={"pgd-joint": spec}, out_dir=tmp_path, progress=False)

    df = run(2.0)
    want = real_attack(fa.load_model(paths["s"]), images, labels, optimizer="PGD",
                       setting="fixed", returns="best", max_rmse=2.0)
    folder = png_folder(tmp_path, "fixed", "pgd-joint")
    got = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
    np.testing.assert_array_equal(got, want.images)
    assert df.loc[0, "rmse"] == pytest.approx(want.rmse.mean())
    calls = count_attacks(monkeypatch)
    with pytest.warns(RecomputeWarning, match=r"config\.max_rmse: 2\.0 -> 3\.0"):
        run(3.0)
    assert len(calls) == 1


def test_changed_victim_is_evaluated_again_without_attacking(tiny, tmp_path, monkeypatch):
    paths, (images, labels, names) = tiny
    victim = tmp_path / "victim.pt"
    export_tiny(victim, 1, like=None)
    fa.run_study({"s": paths["s"]}, {"v": victim}, (images, labels, names), optimizers=["GD"],
                 out_dir=tmp_path / "out", progress=False, overrides={"max_iter": 2})
    calls = count_attacks(monkeypatch)
    export_tiny(victim, 7)  # retrained under the same name
    with pytest.warns(RecomputeWarning, match="victim 'v' on cell s/const_loss/GD again"):
        df = fa.run_study({"s": paths["s"]}, {"v": victim}, (images, labels, names),
                          optimizers=["GD"], out_dir=tmp_path / "out", progress=False,
                          overrides={"max_iter": 2})
    assert calls == []
    adv = np.stack([np.asarray(Image.open(png_folder(tmp_path / "out", "const_loss", "GD") /
                                          f"{n}.png")) for n in names])
    assert df.loc[0, "err_v"] == pytest.approx(np.mean(fa.load_model(victim).predict(adv)
                                                       != labels))
    stored = json.loads((tmp_path / "out" / "cells" / "s" / "const_loss" / "GD" / "victims" /
                         "v.json").read_text())
    np.testing.assert_array_equal(stored["pred"], fa.load_model(victim).predict(adv))
