"""run_study: the table and its files, victims' error rates recounted from the saved PNGs, resume
(finished cells are not recomputed, changed inputs are), interruption, folder selection, errors.

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
from fairattack import data, models, study
from fairattack._model import Model
from fairattack.attack import attack as real_attack

SIZE = 16
OPTIMIZERS = ["GD", "Adam"]
SETTINGS = ["const_loss", "rmse_loss"]
NUMERIC = ["n_images", "n_skipped", "n_failed", "rmse", "linf", "l2", "l1", "l0", "psnr", "ssim",
           "loss", "iterations", "surrogate_fooling_rate", "err_v1", "err_v2", "asr"]


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
    return sorted((out_dir / "cells").glob("*.json"))


def mtimes(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in cell_files(out_dir)}


def count_attacks(monkeypatch, fail_at=None):
    """Replace the attack run_study calls by one that records (setting, optimizer) and, at call
    number `fail_at`, raises KeyboardInterrupt instead."""
    calls = []

    def counting(*args, **kwargs):
        calls.append((kwargs["setting"], kwargs["optimizer"]))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(study, "attack", counting)
    return calls


# ----------------------------------------------------------------------------- the table

def test_results_csv_rows_columns_and_files(tiny, tmp_path):
    paths, (images, labels, names) = tiny
    df = small_study(tiny, tmp_path)
    expected = ["surrogate", "optimizer", "setting", "n_images", "n_skipped", "n_failed", "rmse",
                "linf", "l2", "l1", "l0", "psnr", "ssim", "loss", "iterations",
                "surrogate_fooling_rate", "err_v1", "err_v2", "asr", "seconds"]
    assert list(df.columns) == expected
    assert list(df[["setting", "optimizer"]].itertuples(index=False, name=None)) == [
        (st, o) for st in SETTINGS for o in OPTIMIZERS]
    assert (df["surrogate"] == "s").all() and (df["n_images"] == len(images)).all()
    assert (df["n_skipped"] == 0).all() and (df["linf"] <= 16).all() and (df["rmse"] > 0).all()
    assert (df["iterations"] <= 3).all()

    saved = pd.read_csv(tmp_path / "results.csv")
    assert list(saved.columns) == expected
    pd.testing.assert_frame_equal(saved[NUMERIC], df[NUMERIC], check_dtype=False)
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4
    assert len(cell_files(tmp_path)) == 4
    per_image = pd.read_csv(tmp_path / "cells" / "s__const_loss__Adam.images.csv")
    assert list(per_image["name"]) == names
    assert per_image["rmse"].mean() == pytest.approx(df.loc[1, "rmse"])


def test_asr_is_the_victims_error_on_the_saved_images(tiny, tmp_path):
    paths, (images, labels, names) = tiny
    df = small_study(tiny, tmp_path)
    victims = {v: fa.load_model(paths[v]) for v in ("v1", "v2")}
    surrogate = fa.load_model(paths["s"])
    for _, row in df.iterrows():
        folder = tmp_path / "images" / "s" / row["setting"] / row["optimizer"]
        adv = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
        assert adv.dtype == np.uint8 and np.abs(adv.astype(int) - images).max() <= 16
        delta = adv.astype(float) - images
        assert row["rmse"] == pytest.approx(np.sqrt((delta ** 2).mean(axis=(1, 2, 3))).mean(),
                                            rel=1e-4)
        by_hand = {v: float(np.mean(m.predict(adv) != labels)) for v, m in victims.items()}
        for v, error in by_hand.items():
            assert row[f"err_{v}"] == pytest.approx(error)
        assert row["asr"] == pytest.approx(np.mean(list(by_hand.values())))
        assert row["surrogate_fooling_rate"] == pytest.approx(
            np.mean(surrogate.predict(adv) != labels))
    # the attacks did something the victims can see: not every error rate is that of clean images
    clean = {v: float(np.mean(m.predict(images) != labels)) for v, m in victims.items()}
    assert any(df[f"err_{v}"].max() > clean[v] for v in victims)


# ----------------------------------------------------------------------------- resume

def test_resume_reuses_finished_cells_and_recomputes_changed_ones(tiny, tmp_path, monkeypatch):
    first = small_study(tiny, tmp_path)
    before = mtimes(tmp_path)
    calls = count_attacks(monkeypatch)

    again = small_study(tiny, tmp_path)
    assert calls == [] and mtimes(tmp_path) == before
    pd.testing.assert_frame_equal(again, first)

    # an override for Adam only: exactly the Adam cells are stale
    with pytest.warns(RuntimeWarning, match="inputs changed"):
        small_study(tiny, tmp_path, overrides={"max_iter": 3, "Adam": {"max_iter": 1}})
    assert sorted(calls) == [("const_loss", "Adam"), ("rmse_loss", "Adam")]
    after = mtimes(tmp_path)
    assert {k for k in after if after[k] != before[k]} == {
        "s__const_loss__Adam.json", "s__rmse_loss__Adam.json"}

    calls.clear()
    small_study(tiny, tmp_path, overrides={"max_iter": 3, "Adam": {"max_iter": 1}}, resume=False)
    assert len(calls) == 4


def test_interrupted_study_keeps_finished_cells_and_resumes(tiny, tmp_path, monkeypatch):
    paths, _ = tiny
    reference = small_study(tiny, tmp_path / "reference")

    class InterruptingVictim(Model):
        """v1, pressing Ctrl-C during its third evaluation (the third cell)."""

        def __init__(self):
            loaded = fa.load_model(paths["v1"], name="v1")
            super().__init__(loaded._core, "v1", "cpu", paths["v1"])
            self.calls = 0

        def logits(self, images, batch_size=64):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().logits(images, batch_size=batch_size)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        small_study(tiny, out, victims={"v1": InterruptingVictim(), "v2": paths["v2"]})
    assert [p.name for p in cell_files(out)] == ["s__const_loss__Adam.json",
                                                 "s__const_loss__GD.json"]
    assert len(pd.read_csv(out / "results.csv")) == 2  # the table so far
    kept = mtimes(out)

    calls = count_attacks(monkeypatch)
    resumed = small_study(tiny, out)
    assert calls == [("rmse_loss", "GD"), ("rmse_loss", "Adam")]  # only the rest ran
    assert {k: v for k, v in mtimes(out).items() if k in kept} == kept
    pd.testing.assert_frame_equal(resumed[NUMERIC], reference[NUMERIC])
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv")[NUMERIC], reference[NUMERIC],
                                  check_dtype=False)


def test_interrupted_attack_loses_only_the_running_cell(tiny, tmp_path, monkeypatch):
    calls = count_attacks(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        small_study(tiny, tmp_path)
    assert len(cell_files(tmp_path)) == 1
    calls = count_attacks(monkeypatch)
    small_study(tiny, tmp_path)
    assert calls == [("const_loss", "Adam"), ("rmse_loss", "GD"), ("rmse_loss", "Adam")]


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
    with np.load(tmp_path / "out" / "selection" / "s.npz") as z:
        names = [str(n) for n in z["names"]]
        np.testing.assert_array_equal(surrogate.predict(z["images"]), z["labels"])
    assert names == data.select(folder, surrogate, 4, SIZE, seed=0)[2]
    assert not set(names) & wrong

    calls = count_attacks(monkeypatch)
    run()
    assert calls == []
    with pytest.warns(RuntimeWarning, match="inputs changed"):
        run(seed=1)  # another selection: the cell is stale
    assert len(calls) == 1


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("change, match", [
    ({"optimizers": ["Adamax"]}, "optimizer 'Adamax'"),
    ({"optimizers": []}, "optimizers"),
    ({"settings": ["fast"]}, "setting 'fast'"),
    ({"settings": []}, "settings"),
    ({"surrogates": []}, "surrogates"),
    ({"victims": []}, "victims"),
    ({"data": 42}, "data"),
    ({"data": "flat"}, "data"),  # images of the wrong shape, below
    ({"n_images": 0}, "n_images"),
    ({"batch_size": 0}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"rounding": "floor"}, "rounding"),
    ({"image_size": 0}, "image_size"),
    ({"device": "tpu"}, "device"),
    ({"overrides": {"eps": -1}}, "eps"),
    ({"overrides": {"GD": {"max_iter": -2}}}, "max_iter"),
    ({"surrogates": "twice"}, "twice"),
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
    assert not (tmp_path / "out" / "cells").exists()  # nothing ran


def test_bad_override_type(tiny, tmp_path):
    paths, arrays = tiny
    with pytest.raises(TypeError, match="max_iter"):
        fa.run_study([paths["s"]], [paths["v1"]], arrays, out_dir=tmp_path,
                     overrides={"max_iter": "ten"}, progress=False)
    with pytest.raises(TypeError, match="stepsize"):
        fa.run_study([paths["s"]], [paths["v1"]], arrays, out_dir=tmp_path,
                     overrides={"stepsize": 1}, progress=False)
