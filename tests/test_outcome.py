"""The one outcome rule: a victim whose logits for an image are not all finite has failed on it.
That image is counted (n_failed per victim) and left out of that victim's rate, in evaluate,
compare and run_study alike; it is never counted as fooled."""

import warnings

import numpy as np
import pytest
import torch

import fairattack as fa
from fairattack import data, outcome
from fairattack.models import _quiet_jit
from tiny import TinyImageNet, save_tiny


class NanWhereRed(torch.nn.Module):
    """A tiny classifier whose logits are NaN for images whose top-left pixel is bright red."""

    def __init__(self, seed):
        super().__init__()
        self.inner = TinyImageNet(seed)

    def forward(self, x):
        logits = self.inner(x)
        bad = (x[:, 0, 0, 0] > 200).unsqueeze(1)
        return torch.where(bad, torch.full_like(logits, float("nan")), logits)


def save_nan_victim(path, seed):
    with _quiet_jit():
        torch.jit.save(torch.jit.script(NanWhereRed(seed).eval()), str(path))
    return path


def marked_images(n=10, n_bad=3, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)
    x[:, 0, 0, 0] = 0
    x[:n_bad, 0, 0, 0] = 255
    return x


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def test_rule():
    pred = np.array([3, -1, 5, 7])
    fooled, failed = outcome.victim_outcome(pred, np.array([3, 3, 4, 7]))
    assert fooled.tolist() == [False, False, True, False]
    assert failed.tolist() == [False, True, False, False]
    assert outcome.error_rate(fooled, failed) == pytest.approx(1 / 3)
    assert np.isnan(outcome.error_rate(np.zeros(2, bool), np.ones(2, bool)))


def test_compare_counts_non_finite_victim_logits_as_failed_like_evaluate(tmp_path):
    nan_victim = fa.load_model(save_nan_victim(tmp_path / "nanv.pt", 1), name="nanv")
    ok_victim = fa.load_model(save_tiny(tmp_path / "v.pt", 2), name="ok")
    x = marked_images()
    adv = np.clip(x.astype(int) + np.random.default_rng(2).integers(-8, 9, x.shape), 0, 255
                  ).astype(np.uint8)
    # labels the victim gets right where it has logits: its error rate is 0, not 3 / 10
    y = fa.load_model(save_tiny(tmp_path / "same.pt", 1)).predict(adv)
    df = quiet(fa.compare, None, x, y, [("noise", adv)], {"nanv": nan_victim, "ok": ok_victim},
               rmse=[2], n_boot=50)
    want = quiet(fa.evaluate, {"nanv": nan_victim, "ok": ok_victim}, adv, y)
    native = df[df["how"] == "native"].set_index("victim")
    assert native.loc["nanv", "asr"] == pytest.approx(want["nanv"]) == 0.0
    assert native.loc["ok", "asr"] == pytest.approx(want["ok"])
    assert native.loc["nanv", "n_failed"] == want.attrs["n_failed"]["nanv"] == 3
    assert native.loc["ok", "n_failed"] == 0
    # the mean over victims: per image over the victims that judged it
    per = df.per_image
    assert not (per["fooled"] & per["failed"]).any()
    cell = per[per["rmse"] == "native"]
    fooled = cell.pivot(index="image", columns="victim", values="fooled").astype(float)
    failed = cell.pivot(index="image", columns="victim", values="failed")
    mean = fooled.where(~failed).mean(axis=1).mean()
    assert native.loc["mean", "asr"] == pytest.approx(mean)
    budget = df[(df["how"] != "native") & (df["victim"] == "nanv")].iloc[0]
    assert budget["n_failed"] == 3  # the matched images keep their bright pixel
    test = fa.paired_test(df, "noise", "noise", 2, "nanv")
    assert test["n_images"] == len(x) - 3


def test_run_study_counts_non_finite_victim_logits_as_failed_like_evaluate(tmp_path):
    s = save_tiny(tmp_path / "s.pt", 0)
    v = save_nan_victim(tmp_path / "nanv.pt", 0)  # the surrogate's net, NaN on 3 images
    x = marked_images()
    y = fa.load_model(s).predict(x)  # every image is attacked
    df = quiet(fa.run_study, {"s": s}, {"nanv": v}, (x, y), optimizers=["GD"],
               out_dir=tmp_path / "study", overrides={"max_iter": 2}, progress=False)
    row = df.iloc[0]
    cell = tmp_path / "study" / "cells" / "s" / "const_loss" / "GD"
    pngs = sorted((cell / "adv").glob("*.png"))
    adv = np.stack([data.read_rgb(p) for p in pngs])
    want = quiet(fa.evaluate, {"nanv": fa.load_model(v)}, adv, y)
    assert row["n_failed_nanv"] == want.attrs["n_failed"]["nanv"] == 3
    assert row["err_nanv"] == pytest.approx(want["nanv"])
    assert row["asr"] == pytest.approx(want["nanv"])
    on_disk = fa.study.load_results(tmp_path / "study").iloc[0]
    assert on_disk["n_failed_nanv"] == 3 and on_disk["asr"] == pytest.approx(want["nanv"])


def test_compare_cache_knows_retrained_weights_with_the_same_size_and_mtime(tmp_path):
    """Weights retrained in place (same architecture: same file size) and copied with `cp -p` /
    `rsync -a` (same mtime) are another model: compare's cache keys models by content."""
    import os
    import shutil

    surrogate = fa.load_model(save_tiny(tmp_path / "s.pt", 0))
    path = tmp_path / "v.pt"
    save_tiny(path, 1)
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    y = surrogate.predict(x)
    kwargs = dict(attacks=["FGSM"], rmse=[1], eps=2, n_boot=20, cache_dir=tmp_path / "cache")
    first = fa.compare(surrogate, x, y, victims={"v": fa.load_model(path)}, **kwargs)
    stamp = os.stat(path)
    (tmp_path / "retrained").mkdir()
    # retrained: now the surrogate's weights (it agrees with the surrogate); the same file name
    # inside the archive, so the same size
    save_tiny(tmp_path / "retrained" / "v.pt", 0)
    shutil.copyfile(tmp_path / "retrained" / "v.pt", path)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # what cp -p keeps
    assert os.stat(path).st_size == stamp.st_size and os.stat(path).st_mtime_ns == \
        stamp.st_mtime_ns
    retrained = fa.load_model(path)
    again = fa.compare(surrogate, x, y, victims={"v": retrained}, **kwargs)
    fresh = fa.compare(surrogate, x, y, victims={"v": retrained},
                       **dict(kwargs, cache_dir=None))
    assert again.attrs["cached_cells"] == 0
    assert again["asr"].tolist() == fresh["asr"].tolist()
    assert fresh["asr"].tolist() != first["asr"].tolist()  # the test sees a stale cell
    # the same model again is found in the cache (its digest is computed once per file)
    third = fa.compare(surrogate, x, y, victims={"v": retrained}, **kwargs)
    assert third.attrs["cached_cells"] == third.attrs["cells"]
