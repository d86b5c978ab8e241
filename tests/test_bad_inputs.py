# ruff: noqa: E501  (the corpus is a table: one case per line)
"""A corpus of bad or unusual inputs (issue 6): each raises a clear exception naming the argument
and what was expected, or gives a correct result. No crash, no hang, no silently wrong number."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import fairattack as fa
from fairattack import data, models


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x / 255.0)).mean(dim=(2, 3))) * 5.0


class FixedSize(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.head(x.flatten(1) / 255.0)


class AlwaysNaN(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None] * torch.full((1, 10), float("nan"))


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


class OneLabel:
    """A victim whose predict forgets the class axis: one label for the whole batch."""

    name = "one"

    def predict(self, images):
        return np.argmax(MODEL.logits(images))


MODEL = fa.load_model(Net(), name="net", mode="pixels")
X = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
Y = MODEL.predict(X)


def oracle(loss=None, pred=None, grad=None):
    def f(x, labels, want_grad):
        n = len(x)
        return (np.ones(n, np.float32) if loss is None else loss(x),
                labels.copy() if pred is None else pred(x, labels),
                np.ones(x.shape, np.float32) if grad is None else grad(x))
    return f


def attack(**kw):
    return lambda: fa.attack(MODEL, X, Y, **kw)


def unit_floats():
    return np.random.default_rng(1).random((2, 8, 8, 3))


ERRORS = {
    # images
    "images 3-d": (lambda: fa.attack(MODEL, X[0], Y[:1]), ValueError, r"images must be RGB.*\(N, H, W, 3\)"),
    "images RGBA": (lambda: fa.attack(MODEL, np.zeros((1, 8, 8, 4), np.uint8), [0]), ValueError, "images must be RGB"),
    "images NCHW": (lambda: fa.attack(MODEL, X.transpose(0, 3, 1, 2), Y), ValueError, "images must be RGB"),
    "images empty": (lambda: fa.attack(MODEL, X[:0], Y[:0]), ValueError, "images is empty"),
    "images bool": (lambda: fa.attack(MODEL, X > 100, Y), TypeError, "images must be uint8 or float.*bool"),
    "images object": (lambda: fa.attack(MODEL, X.astype(object), Y), TypeError, "images must be uint8 or float"),
    "images complex": (lambda: MODEL.predict(X.astype(np.complex64)), TypeError, "images must be uint8 or float"),
    "images NaN": (lambda: fa.attack(MODEL, np.where(X > 250, np.nan, X.astype(float)), Y), ValueError, r"images contains NaN.*index"),
    "images inf": (lambda: MODEL.logits(np.full((1, 8, 8, 3), np.inf)), ValueError, "images contains NaN or inf"),
    "images [0,1] attack": (lambda: fa.attack(MODEL, unit_floats(), [0, 0]), ValueError, r"images are float values all within \[0, 1\]"),
    "images [0,1] evaluate": (lambda: fa.evaluate(MODEL, unit_floats(), [0, 0]), ValueError, r"within \[0, 1\]"),
    "images [0,1] predict": (lambda: MODEL.predict(unit_floats().astype(np.float32)), ValueError, r"within \[0, 1\]"),
    "images [0,1] measure": (lambda: fa.measure(unit_floats() * 255, unit_floats()), ValueError, r"clean are float values all within \[0, 1\]"),
    "images > 255 evaluate": (lambda: fa.evaluate(MODEL, X * 1.01, Y), ValueError, r"\[0, 255\], got values in \[0, 257"),
    "images < 0 attack": (lambda: fa.attack(MODEL, X.astype(np.int16) - 1, Y), ValueError, r"\[0, 255\], got values in \[-1"),
    "images int64 > 255": (lambda: MODEL.predict(X.astype(np.int64) * 2), ValueError, r"\[0, 255\]"),
    "images size model cannot take": (lambda: fa.attack(fa.load_model(FixedSize(), name="fixed", mode="pixels"), np.zeros((1, 9, 8, 3), np.uint8), [0]), ValueError, "'fixed' cannot take images of size 9x8"),
    "measure shapes": (lambda: fa.measure(X, X[:2]), ValueError, "adv has shape"),
    # labels
    "labels short": (lambda: fa.attack(MODEL, X, Y[:2]), ValueError, "labels has 2 entries but there are 3 images"),
    "labels strings": (lambda: fa.attack(MODEL, X, ["cat", "dog", "cow"]), TypeError, "labels must be integers"),
    "labels fractional": (lambda: fa.attack(MODEL, X, [0.5, 1, 2]), TypeError, "labels must be integers"),
    "labels >= K": (lambda: fa.attack(MODEL, X, [0, 1, 10]), ValueError, r"labels\[2\]=10 out of range \[0, 10\)"),
    "labels negative evaluate": (lambda: fa.evaluate(MODEL, X, [0, -3, 1]), ValueError, r"labels\[1\]=-3"),
    "labels >= K evaluate": (lambda: fa.evaluate(MODEL, X, [0, 1, 12]), ValueError, r"labels\[2\]=12 out of range"),
    "labels missing evaluate": (lambda: fa.evaluate(MODEL, X), TypeError, "labels: required"),
    # model
    "model torch module": (lambda: fa.attack(Net(), X, Y), TypeError, "use|load it with fairattack.load_model"),
    "model a number": (lambda: fa.attack(42, X, Y), TypeError, "model must be a fairattack.Model"),
    "model a string": (lambda: fa.attack("lite0.pt", X, Y), TypeError, "model must be"),
    "model file missing": (lambda: fa.load_model("/nonexistent/model.pt"), FileNotFoundError, "does not exist"),
    "model device": (lambda: fa.load_model(Net(), device="tpu", mode="pixels"), ValueError, "device must be 'cpu' or 'cuda'"),
    "model source type": (lambda: fa.load_model(3.5), TypeError, "source must be"),
    "victims empty": (lambda: fa.evaluate({}, X, Y), ValueError, "at least one"),
    "victims not models": (lambda: fa.evaluate({"a": 3}, X, Y), TypeError, r"victims\['a'\]"),
    "victims name mean": (lambda: fa.evaluate({"mean": MODEL}, X, Y), ValueError, "not 'mean'"),
    # hyper-parameters
    "optimizer unknown": (attack(optimizer="Adamax"), ValueError, "unknown optimizer 'Adamax'"),
    "optimizer a number": (attack(optimizer=3), TypeError, "optimizer must be a name"),
    "setting unknown": (attack(setting="const_speed"), ValueError, "unknown setting"),
    "eps negative": (attack(eps=-1), ValueError, "eps"),
    "eps NaN": (attack(eps=float("nan")), ValueError, "eps"),
    "eps a string": (attack(eps="8"), TypeError, r"eps must be a number, got '8' \(str\)"),
    "max_iter fractional": (attack(max_iter=2.5), TypeError, r"max_iter must be an integer, got 2\.5"),
    "max_iter negative": (attack(max_iter=-3), ValueError, "max_iter"),
    "momentum a list": (attack(momentum=[0.9]), TypeError, "momentum must be a number"),
    "beta1 = 1": (attack(beta1=1.0), ValueError, "beta1"),
    "nesterov unknown": (attack(nesterov="sideways"), ValueError, "nesterov"),
    "returns unknown": (attack(returns="first"), ValueError, "returns"),
    "unknown keyword": (attack(learning_rate=0.1), TypeError, "unknown hyper-parameter 'learning_rate'"),
    "di_prob a string": (attack(di_prob="0.5"), TypeError, r"di_prob must be a number, got '0\.5' \(str\)"),
    "di_prob > 1": (attack(di_prob=1.5), ValueError, r"di_prob must be in \[0, 1\]"),
    "di_min_scale 0": (attack(di_prob=0.5, di_min_scale=0), ValueError, "di_min_scale"),
    "ti_kernel even": (attack(ti_kernel=4), ValueError, "ti_kernel must be 0 .*or an odd size"),
    "si_copies float": (attack(si_copies=5.0), TypeError, "si_copies must be an integer"),
    "si_copies negative": (attack(si_copies=-2), ValueError, "si_copies must be >= 0"),
    "si_copies beyond memory": (attack(optimizer="MI-FGSM", si_copies=10**9), MemoryError, r"si_copies=1000000000 x batch_size=3"),
    "batch_size 0": (attack(batch_size=0), ValueError, "batch_size must be a positive integer"),
    "batch_size float": (attack(batch_size=4.0), TypeError, "batch_size must be an integer"),
    "rounding unknown": (attack(rounding="floor"), ValueError, "rounding must be 'round' or 'truncate'"),
    "FGSM const_rmse": (attack(optimizer="FGSM", setting="const_rmse"), ValueError, "does not apply to FGSM"),
    "FGSM const_rmse_authors": (attack(optimizer="FGSM", setting="const_rmse_authors"), ValueError, "FGSM"),
    "const_rmse eps < 15": (attack(setting="const_rmse", eps=8), ValueError, "stop_rmse=15 can never be reached with eps=8"),
    "stop_rmse > eps": (attack(stop_rmse=20), ValueError, "stop_rmse=20 can never be reached"),
    "eps < 0.5 fractional": (lambda: fa.attack(MODEL, X * 0.99 + 0.25, Y, eps=0.3, allow_subpixel=True), ValueError, r"eps=0\.3 < 0\.5"),
    # integers that cross into C: no wrap, no truncation; no bool where a count is meant
    "ti_kernel 2**32 + 1": (attack(ti_kernel=2**32 + 1), ValueError, r"ti_kernel=4294967297 is out of range: .* signed 32-bit"),
    "si_copies 2**32 + 3": (attack(si_copies=2**32 + 3), ValueError, r"si_copies=4294967299 is out of range"),
    "max_iter 2**31": (attack(max_iter=2**31), ValueError, r"max_iter=2147483648 is out of range"),
    "seed -1": (attack(seed=-1), ValueError, r"seed=-1 is out of range: .* unsigned 64-bit"),
    "seed 2**64": (attack(seed=2**64), ValueError, r"seed=18446744073709551616 is out of range"),
    "index_offset 2**63": (attack(index_offset=2**63), ValueError, r"index_offset=9223372036854775808 is out of range"),
    "batch_size True": (attack(batch_size=True), TypeError, r"batch_size must be an integer, got True \(bool\)"),
    "max_iter True": (attack(max_iter=True), TypeError, r"max_iter must be an integer, got True"),
    "si_copies True": (attack(si_copies=True), TypeError, r"si_copies must be an integer, got True"),
    "evaluate batch_size True": (lambda: fa.evaluate(MODEL, X, Y, batch_size=True), TypeError, "batch_size must be an integer"),
    "compare batch_size True": (lambda: fa.compare(MODEL, X, Y, ["FGSM"], {"v": MODEL}, batch_size=True), TypeError, "batch_size must be an integer"),
    "compare seed False": (lambda: fa.compare(MODEL, X, Y, ["FGSM"], {"v": MODEL}, seed=False), TypeError, "seed must be an integer"),
    "run_study chunk_size True": (lambda: fa.run_study({"s": MODEL}, {"v": MODEL}, (X, Y), out_dir="/tmp/never-study", chunk_size=True), TypeError, "chunk_size must be an integer"),
    "select n True": (lambda: data.select(data.Dataset(None, (), np.zeros(0, np.int64), "flat"), MODEL, True, 8), TypeError, "n must be an integer"),
    # a model's own error is its own, not the image size's
    "forward raises": (lambda: fa.attack(fa.load_model(Boom(), name="boom", mode="pixels"), X, Y), RuntimeError, r"model 'boom' failed on a 8x8 image: .*boom"),
    "forward raises (predict)": (lambda: fa.load_model(Boom(), name="boom", mode="pixels").predict(X), RuntimeError, r"model 'boom' failed on a 8x8 image"),
    # which names clash
    "data names twice": (lambda: fa.run_study({"s": MODEL}, {"v": MODEL}, (X, Y, ["a", "b", "a"]), out_dir="/tmp/never-study"), ValueError, r"two images have the same name 'a' \(images 0 and 2\)"),
    # one label check for attack, evaluate and compare
    "compare label = K": (lambda: fa.compare(MODEL, X, [10, 0, 1], ["FGSM"], {"v": MODEL}), ValueError, r"labels\[0\]=10 out of range \[0, 10\) of model 'net'"),
    "compare label = K, no surrogate": (lambda: fa.compare(None, X, [1, 10, 1], [("given", X)], {"v": MODEL}), ValueError, r"labels\[1\]=10 out of range \[0, 10\) of model 'v'"),
    "attack label = K": (lambda: fa.attack(MODEL, X, [0, 1, 10]), ValueError, r"labels\[2\]=10 out of range \[0, 10\) of model 'net'"),
    # a victim's predictions: one label per image
    "victim predict one label": (lambda: fa.compare(None, X, Y, [("given", X)], {"one": OneLabel()}), ValueError, r"victim 'one': predict gave int64 of shape \(\) for 3 images"),
    "plot_asr_at_rmse not a compare frame": (lambda: fa.figures.plot_asr_at_rmse(__import__("pandas").DataFrame({"attack": ["x"]})), ValueError, "expected a fairattack.compare table"),
    # callable oracle
    "oracle NCHW grad": (lambda: fa.attack(oracle(grad=lambda x: np.ones((len(x), 3, 8, 8))), X, Y), ValueError, r"oracle output 'grad' has shape \(3, 3, 8, 8\), expected \(3, 8, 8, 3\)"),
    "oracle flat loss 2-d": (lambda: fa.attack(oracle(loss=lambda x: np.ones((1, len(x)))), X, Y), ValueError, r"oracle output 'loss' has shape \(1, 3\)"),
    "oracle pred float": (lambda: fa.attack(oracle(pred=lambda x, y: y * 1.0), X, Y), TypeError, "oracle output 'pred' has dtype"),
    "oracle returns 2": (lambda: fa.attack(lambda x, y, g: (np.ones(len(x)), y), X, Y), TypeError, r"tuple \(loss, pred, grad\)"),
    "oracle with DI": (lambda: fa.attack(oracle(), X, Y, di_prob=0.5), ValueError, "di_prob: the DI/SI/TI input transforms"),
    "oracle with TI": (lambda: fa.attack(oracle(), X, Y, ti_kernel=7), ValueError, "ti_kernel: the DI/SI/TI"),
    "oracle with SI": (lambda: fa.attack(oracle(), X, Y, si_copies=4), ValueError, "si_copies: the DI/SI/TI"),
    "oracle raises": (lambda: fa.attack(oracle(loss=lambda x: 1 / 0), X, Y), ZeroDivisionError, "division"),
    # evaluate
    "evaluate result and labels": (lambda: fa.evaluate(MODEL, fa.attack(MODEL, X, Y, "FGSM"), Y), ValueError, "give either an AttackResult"),
    "evaluate batch_size 0": (lambda: fa.evaluate(MODEL, X, Y, batch_size=0), ValueError, "batch_size"),
    # data
    "load_image size 0": (lambda: data.load_image("x.png", 0), ValueError, "size must be a positive integer, got 0"),
    "open_dataset missing": (lambda: data.open_dataset("/nonexistent/folder"), FileNotFoundError, "root="),
    "select n 0": (lambda: data.select(data.Dataset(None, (), np.zeros(0, np.int64), "flat"), MODEL, 0, 8), ValueError, "n must be a positive integer, got 0"),
    "iter_batches batch_size 0": (lambda: next(data.iter_batches(data.Dataset(None, (), np.zeros(0, np.int64), "flat"), 8, batch_size=0)), ValueError, "batch_size must be a positive integer, got 0"),
    # models
    "export not a module": (lambda: models.export(lambda x: x, "/tmp/never.pt", 8), TypeError, "net must be a torch.nn.Module"),
    "export mode": (lambda: models.export(Net(), "/tmp/never.pt", 8, mode="keras"), ValueError, "mode"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_raises_a_clear_error(case):
    call, error, match = ERRORS[case]
    with pytest.raises(error, match=match):
        call()


def test_unreadable_files_name_the_file(tmp_path):
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(OSError, match=path.name):
            data.load_image(path, 8)
    with pytest.raises(FileNotFoundError):
        data.load_image(tmp_path / "missing.png", 8)


# ----------------------------------------------------------------------------- correct results

def test_numpy_scalars_give_the_same_attack():
    a = fa.attack(MODEL, X, Y, "PGD", eps=np.float32(8), max_iter=np.int64(3),
                  momentum=np.float16(1), random_start=np.bool_(True), seed=np.uint64(4))
    b = fa.attack(MODEL, X, Y, "PGD", eps=8, max_iter=3, momentum=1, random_start=True, seed=4)
    np.testing.assert_array_equal(a.images, b.images)


def test_labels_as_a_list_tuple_or_integral_floats():
    a = fa.attack(MODEL, X, Y, "FGSM")
    for labels in (list(Y), tuple(Y), Y.astype(np.float64), Y.astype(np.int8)):
        np.testing.assert_array_equal(fa.attack(MODEL, X, labels, "FGSM").images, a.images)


def test_images_as_nested_lists_and_non_contiguous_views():
    a = fa.attack(MODEL, X, Y, "FGSM")
    np.testing.assert_array_equal(fa.attack(MODEL, X.tolist(), Y, "FGSM").images, a.images)
    wide = np.zeros((3, 8, 16, 3), np.uint8)
    wide[:, :, ::2] = X
    np.testing.assert_array_equal(fa.attack(MODEL, wide[:, :, ::2], Y, "FGSM").images, a.images)


def test_fractional_float_images_keep_the_budget():
    clean = X.astype(np.float64) * 0.97 + 0.4
    res = fa.attack(MODEL, clean, MODEL.predict(clean), "PGD", eps=5.5, max_iter=3)
    assert np.abs(res.images - clean).max() <= 5.5


def test_nan_logits_are_failures_not_class_zero():
    victim = fa.load_model(AlwaysNaN(), name="nan", mode="pixels")
    with pytest.warns(RuntimeWarning, match="non-finite logits for 3 of 3"):
        assert list(victim.predict(X)) == [-1, -1, -1]
    with pytest.warns(RuntimeWarning, match="left out of its error rate"):
        rates = fa.evaluate({"nan": victim, "net": MODEL}, X, Y)
    assert math.isnan(rates["nan"]) and rates["net"] == 0.0
    assert rates.attrs["n_failed"] == {"nan": 3, "net": 0}


def test_evaluate_with_a_result_ignores_skipped_images():
    wrong = (Y + 1) % 10
    res = fa.attack(MODEL, X, np.r_[Y[:2], wrong[2:]], "PGD", max_iter=3)
    assert list(res.status).count("skipped") == 1
    rates = fa.evaluate(MODEL, res)
    assert rates.attrs["n_images"] == 2
    assert rates["net"] == np.mean(MODEL.predict(res.images[:2]) != Y[:2])


def test_sixteen_bit_greyscale_png(tmp_path):
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = data.load_image(tmp_path / "deep.png", 16)
    np.testing.assert_array_equal(got[..., 1], np.rint(values / 257.0).astype(np.uint8))
    assert got.min() == 0 and got.max() == 255


def test_png_names_name_the_clash():
    from fairattack import store

    with pytest.raises(ValueError, match=r"same name: 'x/a\.png' and 'x/a\.png'"):
        store.png_names(["x/a.png", "b.png", "x/a.png"])


def test_flags_still_take_bools():
    a = fa.attack(MODEL, X, Y, "PGD", max_iter=2, random_start=True, seed=1)
    b = fa.attack(MODEL, X, Y, "PGD", max_iter=2, random_start=1, seed=1)
    np.testing.assert_array_equal(a.images, b.images)


def test_victims_given_as_model_paths_like_run_study(tmp_path):
    """compare and evaluate take victims as run_study and the CLI do: TorchScript paths (and
    registry names), named by their file."""
    path = tmp_path / "victim.pt"
    models.export(Net(), path, 16, mode=None, mean=0.0, std=1.0)
    victim = fa.load_model(path)
    df = fa.compare(None, X, Y, [("given", X)], [str(path)], rmse=[1], n_boot=0)
    assert set(df["victim"]) == {"victim", "mean"}
    want = fa.compare(None, X, Y, [("given", X)], {"victim": victim}, rmse=[1], n_boot=0)
    assert df["asr"].tolist() == want["asr"].tolist()
    rates = fa.evaluate([path], X, Y)
    assert rates["victim"] == fa.evaluate({"victim": victim}, X, Y)["victim"]
