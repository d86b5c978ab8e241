"""A researcher's first day (issue 16): no silent trap for a torchattacks habit. A [0, 1] ε or
budget is refused, a bare torch module must say its input convention, every ASR comes with the
victims' clean error on the same images, and the results speak names."""

import numpy as np
import pandas as pd
import pytest
import torch

import fairattack as fa
from fairattack import models
from tiny import SmallNet, images_it_gets_right


@pytest.fixture(scope="module")
def small():
    return fa.load_model(SmallNet().eval(), name="small", mode="pixels")


# ----------------------------------------------------------------------------- 1. units

@pytest.mark.parametrize("key, value", [("eps", 8 / 255), ("alpha", 2 / 255),
                                        ("stop_rmse", 0.02), ("max_rmse", 0.5)])
def test_a_unit_interval_budget_is_refused_everywhere(small, key, value):
    x, y, _ = images_it_gets_right(small, n=2, size=12)
    extra = {"eps": 16} if key != "eps" else {}
    with pytest.raises(ValueError, match=f"{key}={value:.3g} is below one pixel level"):
        fa.attack(small, x, y, "PGD", **extra, **{key: value})
    with pytest.raises(ValueError, match=f"{key}={value * 255:.4g}"):
        fa.make_config("Adam", **extra, **{key: value})


def test_the_message_says_what_8_over_255_becomes():
    with pytest.raises(ValueError, match=r"pixels of \[0, 255\].*eps=8 here"):
        fa.make_config("PGD", eps=8 / 255)


def test_before_the_fix_8_over_255_left_images_untouched_now_allowed_only_on_request(small):
    x, y, _ = images_it_gets_right(small, n=2, size=12)
    res = fa.attack(small, x, y, "PGD", eps=8 / 255, allow_subpixel=True)
    assert np.array_equal(res.images, x)  # what the old default silently returned
    res = fa.attack(small, x, y, "PGD", eps=8)
    assert res.linf[res.attacked_mask].max() > 0


def test_compare_and_run_study_refuse_subpixel_budgets(small, tmp_path):
    x, y, _ = images_it_gets_right(small, n=2, size=12)
    with pytest.raises(ValueError, match="eps=0.0314 is below one pixel level"):
        fa.compare(small, x, y, ["PGD"], {"v": small}, eps=8 / 255)
    with pytest.raises(ValueError, match="rmse=0.02 is below one pixel level"):
        fa.compare(small, x, y, ["PGD"], {"v": small}, rmse=[0.02, 4])
    with pytest.raises(ValueError, match="eps=0.0314 is below one pixel level"):
        fa.run_study([small], {"v": small}, (x, y), optimizers=["PGD"],
                     overrides={"eps": 8 / 255}, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "cells").exists()


# ----------------------------------------------------------------------------- 3. baseline

class Constant(torch.nn.Module):
    """Always predicts class `k` (of 10): misclassifies every image not labelled k."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.k), 10).float() * 5 \
            + 0 * x.mean()


def test_compare_reports_each_victims_clean_error(small):
    x, y, _ = images_it_gets_right(small, n=6, size=12)
    wrong = fa.load_model(Constant(int((y[0] + 1) % 10)), name="wrong", mode="pixels")
    df = fa.compare(small, x, y, ["FGSM"], {"same": small, "wrong": wrong}, rmse=[4],
                    n_boot=0)
    clean = df.groupby("victim")["clean_error"].first()
    # independent reference: the victims' errors on the clean images
    assert clean["same"] == pytest.approx(np.mean(small.predict(x) != y))
    assert clean["wrong"] == pytest.approx(np.mean(wrong.predict(x) != y))
    assert clean["mean"] == pytest.approx((clean["same"] + clean["wrong"]) / 2)
    table = fa.comparison_table(df, victim="wrong")
    assert table.loc[0, "clean_error"] == pytest.approx(clean["wrong"])


def test_run_study_reports_each_victims_clean_error(small, tmp_path):
    x, y, _ = images_it_gets_right(small, n=6, size=12)
    wrong = fa.load_model(Constant(int((y[0] + 1) % 10)), name="wrong", mode="pixels")
    df = fa.run_study([small], {"same": small, "wrong": wrong}, (x, y), optimizers=["GD"],
                      overrides={"max_iter": 2}, out_dir=tmp_path, progress=False)
    assert df.loc[0, "clean_err_same"] == 0.0  # the surrogate itself gets them all right
    assert df.loc[0, "clean_err_wrong"] == pytest.approx(np.mean(wrong.predict(x) != y))
    cols = list(df.columns)
    assert cols.index("clean_err_wrong") == cols.index("err_wrong") + 1
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert on_disk.loc[0, "clean_err_wrong"] == pytest.approx(df.loc[0, "clean_err_wrong"])


# ----------------------------------------------------------------------------- 4. one default

def test_run_study_runs_a_sign_attack_under_its_default_setting(small, tmp_path):
    x, y, _ = images_it_gets_right(small, n=2, size=12)
    df = fa.run_study([small], {"v": small}, (x, y), optimizers=["PGD", "GD"],
                      overrides={"max_iter": 2}, out_dir=tmp_path, progress=False)
    assert dict(zip(df["optimizer"], df["setting"])) == {"PGD": "fixed", "GD": "const_loss"}
    assert fa.attack(small, x, y, "PGD").setting == "fixed"


# ----------------------------------------------------------------------------- 2. conventions

class UnitNet(torch.nn.Module):
    """A torchvision-style network: expects normalised [0, 1] input at 12x12."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)) * 4.0


def test_a_bare_module_must_say_its_input_convention():
    with pytest.raises(ValueError, match=r"unknown input convention.*mode='torch', "
                                         r"input_size=224.*mode='pixels'"):
        fa.load_model(UnitNet())
    with pytest.raises(ValueError, match="input_size"):
        fa.load_model(UnitNet(), mode="torch")
    with pytest.raises(ValueError, match="mode='rgb'"):
        fa.load_model(UnitNet(), mode="rgb", input_size=12)


def test_mode_torch_wraps_the_module_as_export_does(tmp_path):
    net = UnitNet().eval()
    x = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3)).astype(np.uint8)
    loaded = fa.load_model(net, mode="torch", input_size=12)
    exported = fa.load_model(models.export(net, tmp_path / "n.pt", input_size=12, mode="torch"))
    # independent reference: plain torch on the normalised [0, 1] input
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net((t - mean) / std).argmax(1).numpy()
    np.testing.assert_array_equal(loaded.predict(x), want)
    np.testing.assert_array_equal(exported.predict(x), want)
    np.testing.assert_allclose(loaded.logits(x), exported.logits(x), rtol=1e-5, atol=1e-5)
    pixels = fa.load_model(net, mode="pixels")  # what the old default did: another model
    assert not np.allclose(pixels.logits(x), loaded.logits(x))
    from fairattack._model import model_digest
    assert model_digest(pixels) != model_digest(loaded)


def test_a_dataparallel_checkpoint_loads_without_its_module_prefix(tmp_path):
    import torchvision

    from fairattack.models import _load_state_dict

    net = torchvision.models.squeezenet1_1(weights=None)
    torch.save(torch.nn.DataParallel(net).state_dict(), tmp_path / "dp.pth")
    state = _load_state_dict(tmp_path / "dp.pth")
    assert set(state) == set(net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value)


# ----------------------------------------------------------------------------- 12. results

def test_config_shows_names_and_values_as_given(small):
    x, y, _ = images_it_gets_right(small, n=2, size=12)
    res = fa.attack(small, x, y, "NAGD", max_iter=2, momentum=0.9, nesterov="textbook")
    assert res.config["optimizer"] == "NAGD" and res.config["returns"] == "best"
    assert res.config["nesterov"] == "textbook"
    assert res.config["momentum"] == 0.9 and res.config["beta2"] == 0.999
    assert fa.attack(small, x, y, "PGD").config["returns"] == "last"


def test_to_frame_has_the_image_its_name_and_the_prediction_after_the_attack(small):
    x, y, names = images_it_gets_right(small, n=4, size=12)
    res = fa.attack(small, x, y, "PGD", eps=16, index_offset=10)
    frame = res.to_frame(names)
    assert list(frame["image"]) == [10, 11, 12, 13] and list(frame["name"]) == names
    # independent reference: the surrogate on the returned uint8 images
    np.testing.assert_array_equal(frame["pred"], small.predict(res.images))
    assert frame["pred"].dtype == np.int64
    with pytest.raises(ValueError, match="names: expected 4 names"):
        res.to_frame(names[:2])


def test_save_writes_pngs_rows_and_config(small, tmp_path):
    # PNGs with the clean files' names: what `fairattack compare --adv` reads
    from fairattack import data

    x, y, names = images_it_gets_right(small, n=3, size=12)
    res = fa.attack(small, x, y, "FGSM", eps=8)
    res.save(tmp_path / "out", [f"{n}.JPEG" for n in names])
    files, images = data.read_image_folder(tmp_path / "out", "out")
    assert [f.name for f in files] == [f"{n}.png" for n in names]
    np.testing.assert_array_equal(images, res.images)
    rows = pd.read_csv(tmp_path / "out" / "attack.csv")
    assert list(rows["png"]) == [f"{n}.png" for n in names]
    np.testing.assert_allclose(rows["linf"], res.linf)
    import json
    meta = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert meta["config"]["optimizer"] == "FGSM" and meta["config"]["eps"] == 8


def test_help_of_attack_and_compare_stand_alone():
    assert "Returns an `AttackResult`" in fa.attack.__doc__
    for status in ("stop_loss", "stop_rmse", "max_iter", "skipped", "nan"):
        assert f'"{status}"' in fa.AttackResult.__doc__
    assert "module docstring" not in fa.compare.__doc__
    assert '"rescale"' in fa.compare.__doc__ and '"budget"' in fa.compare.__doc__


def test_an_imagefolder_tree_with_a_class_index_file(tmp_path):
    from PIL import Image

    from fairattack import data

    rng = np.random.default_rng(0)
    for folder in ("cat", "dog"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(
                tmp_path / folder / f"{i}.png")
    with pytest.raises(ValueError, match=r"ImageFolder tree \(cat/, dog/\).*'cat 281'"):
        data.open_dataset(tmp_path)
    (tmp_path / "classes.txt").write_text("cat 281\n")
    with pytest.raises(ValueError, match="no class index for the folder 'dog'"):
        data.open_dataset(tmp_path, labels=tmp_path / "classes.txt")
    (tmp_path / "classes.txt").write_text("cat 281\ndog 207\n")
    ds = data.open_dataset(tmp_path, labels=tmp_path / "classes.txt")
    assert ds.layout == "class_folders"
    assert list(ds.names) == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert list(ds.labels) == [281, 281, 207, 207]


def test_core_errors_name_the_argument_not_the_struct():
    with pytest.raises(ValueError, match=r"^beta1=2 must be in \[0, 1\)"):
        fa.make_config("Adam", beta1=2)
