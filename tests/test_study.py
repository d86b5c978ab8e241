"""run_study: the table, its files, victims' error rates, resume after an interruption."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairattack as fa
from fairattack import study
from tiny import images_it_gets_right, save_tiny

NUMERIC = ["n_images", "rmse", "linf", "l2", "l0", "loss", "iterations",
           "surrogate_fooling_rate", "err_v1", "err_v2", "asr"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {name: save_tiny(folder / f"{name}.pt", seed)
             for name, seed in (("s", 0), ("v1", 1), ("v2", 2))}
    surrogate = fa.load_model(paths["s"], name="s")
    return paths, images_it_gets_right(surrogate)


def small_study(setup, out_dir, **kw):
    paths, data = setup
    kw.setdefault("overrides", {"max_iter": 3})
    return fa.run_study({"s": paths["s"]}, {"v1": paths["v1"], "v2": paths["v2"]}, data,
                        optimizers=["GD", "Adam"], settings=["const_loss", "rmse_loss"],
                        out_dir=out_dir, progress=False, **kw)


def test_table_files_and_error_rates(setup, tmp_path):
    paths, (images, labels, names) = setup
    df = small_study(setup, tmp_path)
    assert len(df) == 4
    assert list(df[["optimizer", "setting"]].itertuples(index=False, name=None)) == [
        ("GD", "const_loss"), ("Adam", "const_loss"), ("GD", "rmse_loss"), ("Adam", "rmse_loss")]
    for column in ["surrogate", "optimizer", "setting", "n_images", "rmse", "linf", "l2", "l0",
                   "psnr", "loss", "iterations", "surrogate_fooling_rate", "err_v1", "err_v2",
                   "asr"]:
        assert column in df.columns, column
    assert (df["n_images"] == len(images)).all() and (df["linf"] <= 16).all()
    np.testing.assert_allclose(df["asr"], df[["err_v1", "err_v2"]].mean(axis=1))
    saved = pd.read_csv(tmp_path / "results.csv")
    assert len(saved) == 4 and (tmp_path / "results.json").is_file()
    # the victims' error, recounted by hand on the saved PNGs
    victims = {v: fa.load_model(paths[v]) for v in ("v1", "v2")}
    for _, row in df.iterrows():
        folder = tmp_path / "images" / "s" / row["setting"] / row["optimizer"]
        adv = np.stack([np.asarray(Image.open(folder / f"{n}.png")) for n in names])
        for v, model in victims.items():
            assert row[f"err_{v}"] == pytest.approx(np.mean(model.predict(adv) != labels))
        assert np.abs(adv.astype(int) - images).max() <= 16


def test_interrupted_study_resumes_to_the_same_table(setup, tmp_path, monkeypatch):
    reference = small_study(setup, tmp_path / "uninterrupted")
    real_attack, calls = study.attack, []

    def interrupted(*args, **kwargs):
        calls.append(kwargs["optimizer"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(study, "attack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small_study(setup, tmp_path / "run")
    assert len(list((tmp_path / "run" / "cells").glob("*.json"))) == 2  # finished cells kept

    calls.clear()
    monkeypatch.setattr(study, "attack", lambda *a, **k: (calls.append(k["optimizer"]),
                                                          real_attack(*a, **k))[1])
    resumed = small_study(setup, tmp_path / "run")
    assert len(calls) == 2  # only the two unfinished cells ran
    pd.testing.assert_frame_equal(resumed[NUMERIC], reference[NUMERIC])

    calls.clear()
    small_study(setup, tmp_path / "run")  # everything finished: nothing runs
    assert calls == []
    small_study(setup, tmp_path / "run", overrides={"max_iter": 2})  # inputs changed: recompute
    assert len(calls) == 4


def test_bad_arguments(setup, tmp_path):
    paths, data = setup
    with pytest.raises(ValueError, match="optimizer"):
        fa.run_study([paths["s"]], [paths["v1"]], data, optimizers=["Adamax"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="setting"):
        fa.run_study([paths["s"]], [paths["v1"]], data, settings=["fast"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="victims"):
        fa.run_study([paths["s"]], [], data, out_dir=tmp_path)
    with pytest.raises(ValueError, match="data"):
        fa.run_study([paths["s"]], [paths["v1"]], (data[0][..., 0], data[1]), out_dir=tmp_path)
    with pytest.raises(TypeError, match="max_iter"):
        fa.run_study([paths["s"]], [paths["v1"]], data, out_dir=tmp_path,
                     overrides={"max_iter": "ten"})


def test_real_lite_models_on_shipped_photos(tmp_path, model_cache, monkeypatch):
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    from fairattack import data, models

    monkeypatch.setenv("FAIRATTACK_CACHE", str(model_cache.parent))
    photos = data.demo_photos(224)
    df = fa.run_study(["efficientnet-lite0"], ["efficientnet-lite1"], photos,
                      optimizers=["Adam"], out_dir=tmp_path, progress=False)
    row = df.iloc[0]
    assert row["n_images"] >= 3 and row["surrogate_fooling_rate"] == 1.0
    assert 0 < row["rmse"] <= 16 and row["loss"] >= 25
    assert 0 <= row["err_efficientnet-lite1"] <= 1
    assert len(list((tmp_path / "images").rglob("*.png"))) == len(photos[1])
