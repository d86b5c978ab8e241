"""No silently wrong number (issue 6): argument types, the pixel range, the ε budget on the uint8
output, the callable oracle's outputs, evaluation of an AttackResult and of non-finite logits,
unreadable and 16-bit image files, and a user's module left as it was."""

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fairattack as fa
from fairattack import data, models
from tiny import SmallNet


class FixedSize(torch.nn.Module):
    """Takes 8x8 images only (a flatten into a linear layer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.head(x.flatten(1) / 255.0)


class NaNAbove(torch.nn.Module):
    """Predicts round(mean red) among 10 classes, but gives NaN logits when mean red > 5."""

    def forward(self, x):
        level = x[:, 0].mean(dim=(1, 2))
        logits = -(torch.arange(10, dtype=x.dtype) - level[:, None]).abs()
        return torch.where((level > 5)[:, None], torch.full_like(logits, float("nan")), logits)


@pytest.fixture(scope="module")
def small():
    net = SmallNet().eval()
    return net, fa.load_model(net, name="small", mode="pixels")


def batch(model, n=6, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x)


def free_oracle(x, labels, want_grad):
    """A model-free oracle: CE 1, always right, gradient of a fixed pattern (as float64)."""
    n = len(x)
    grad = np.sin(np.arange(x[0].size, dtype=np.float64)).reshape(x.shape[1:])
    return np.ones(n), labels.copy(), np.broadcast_to(grad, x.shape).copy()


# ----------------------------------------------------------------------------- 1. argument types

def test_numpy_scalar_hyper_parameters_are_accepted(small):
    _, model = small
    cfg = fa.make_config("PGD", eps=np.float32(8), max_iter=np.int64(10), momentum=np.float64(1),
                         random_start=np.bool_(False), di_prob=np.float32(0.5),
                         si_copies=np.int32(2))
    assert cfg["eps"] == 8.0 and cfg["max_iter"] == 10 and cfg["di_prob"] == 0.5
    assert cfg["si_copies"] == 2 and type(cfg["max_iter"]) is int
    x, y = batch(model, n=3)
    a = fa.attack(model, x, y, "PGD", eps=np.float32(8), max_iter=np.int64(3),
                  batch_size=np.int64(2))
    b = fa.attack(model, x, y, "PGD", eps=8, max_iter=3, batch_size=2)
    np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_iter=2.5), TypeError, r"max_iter must be an integer, got 2\.5 \(float\)"),
    (dict(max_iter=np.float64(3)), TypeError, "max_iter must be an integer"),
    (dict(seed="1"), TypeError, "seed must be an integer"),
    (dict(eps="8"), TypeError, r"eps must be a number, got '8' \(str\)"),
    (dict(eps=None, momentum=[1.0]), TypeError, "momentum must be a number"),
    (dict(di_prob="0.5"), TypeError, r"di_prob must be a number, got '0\.5' \(str\)"),
    (dict(si_copies=2.0), TypeError, "si_copies must be an integer"),
    (dict(ti_kernel="7"), TypeError, "ti_kernel must be an integer"),
    (dict(di_min_scale=0.0), ValueError, r"di_min_scale must be in \(0, 1\]"),
    (dict(di_prob=1.5), ValueError, r"di_prob must be in \[0, 1\]"),
    (dict(si_copies=-1), ValueError, "si_copies must be >= 0"),
    (dict(returns="middle"), (TypeError, ValueError), "returns"),
])
def test_bad_hyper_parameter_types_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        fa.make_config("PGD", **kwargs)


def test_batch_size_must_be_an_integer(small):
    _, model = small
    x, y = batch(model, n=2)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        fa.attack(model, x, y, batch_size=2.5)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        model.predict(x, batch_size="4")


def test_fgsm_is_refused_under_the_constant_rmse_settings():
    for setting in ("const_rmse", "const_rmse_authors"):
        with pytest.raises(ValueError, match="FGSM"):
            fa.make_config("FGSM", setting)
    assert fa.make_config("FGSM", "fixed")["max_iter"] == 1


def test_a_stop_rmse_beyond_eps_is_refused():
    with pytest.raises(ValueError, match=r"stop_rmse=20 can never be reached with eps=16"):
        fa.make_config("Adam", "const_rmse", stop_rmse=20)
    with pytest.raises(ValueError, match="stop_rmse=15 can never be reached with eps=8"):
        fa.make_config("Adam", "const_rmse", eps=8)
    assert fa.make_config("Adam", "const_rmse", eps=8, stop_rmse=6)["stop_rmse"] == 6


# ----------------------------------------------------------------------------- 1. pixel range

def _calls(model):
    """Every public function that takes images, as f(images)."""
    def attack(x):
        return fa.attack(model, x, np.zeros(len(x), np.int64), "FGSM")

    def evaluate(x):
        return fa.evaluate({"v": model}, x, np.zeros(len(x), np.int64))

    return {"attack": attack, "evaluate": evaluate, "predict": model.predict,
            "logits": model.logits,
            "loss_and_grad": lambda x: model.loss_and_grad(x, np.zeros(len(x), np.int64)),
            "measure adv": lambda x: fa.measure(x, np.zeros_like(x)),
            "measure clean": lambda x: fa.measure(np.zeros_like(x), x)}


@pytest.mark.parametrize("call", ["attack", "evaluate", "predict", "logits", "loss_and_grad",
                                  "measure adv", "measure clean"])
def test_one_range_check_everywhere(small, call):
    _, model = small
    f = _calls(model)[call]
    rng = np.random.default_rng(0)
    unit = rng.random((2, 8, 8, 3)).astype(np.float32)  # forgot x255
    with pytest.raises(ValueError, match=r"within \[0, 1\].*multiply \[0, 1\] images by 255"):
        f(unit)
    with pytest.raises(ValueError, match=r"\[0, 255\], got values in \[0, 255\.5\]"):
        f(np.where(unit > 0.5, 255.5, 0.0))
    with pytest.raises(ValueError, match=r"\[0, 255\], got values in \[-0\.9"):
        f(unit * 255 - 1)
    with pytest.raises(ValueError, match="NaN"):
        f(np.full((1, 8, 8, 3), np.nan))
    f((unit * 255).astype(np.float64))      # float pixel values: fine
    f((unit > 0.5).astype(np.uint8))        # dark uint8 images: the documented escape hatch
    f(np.zeros((2, 8, 8, 3), np.float32))   # black is black in either convention


# ----------------------------------------------------------------------------- 2. the ε budget

@pytest.mark.parametrize("eps", [6.5, 3.25, 8.0])
@pytest.mark.parametrize("rounding", ["round", "truncate"])
@pytest.mark.parametrize("optimizer, kw", [("PGD", dict(random_start=True)), ("Adam", {}),
                                           ("FGSM", {})])
def test_eps_budget_holds_on_the_uint8_images(small, eps, rounding, optimizer, kw):
    _, model = small
    rng = np.random.default_rng(1)
    clean = rng.uniform(0, 255, (5, 12, 12, 3)).astype(np.float32)  # fractional values
    clean[0, :2] = 0.3    # near the box: the ball is cut by 0 and 255
    clean[0, 2:4] = 254.8
    y = model.predict(clean)
    res = fa.attack(model, clean, y, optimizer, eps=eps, max_iter=4, rounding=rounding, **kw)
    delta = np.abs(res.images.astype(np.float64) - clean.astype(np.float64))
    assert delta.max() <= eps
    assert np.all(res.linf <= eps + 1e-4)
    assert delta.max() > 1  # the attack moved the images


def test_quantize_matches_a_per_value_reference():
    rng = np.random.default_rng(2)
    clean = rng.uniform(0, 255, (3, 5, 5, 3))
    adv = np.clip(clean + rng.uniform(-7.5, 7.5, clean.shape), 0, 255)
    from fairattack.attack import quantize

    got = quantize(adv, clean, 7.5)
    for a, c, g in zip(adv.ravel(), clean.ravel(), got.ravel()):
        allowed = [v for v in range(256) if abs(v - c) <= 7.5]
        want = min(max(round(a), allowed[0]), allowed[-1])
        assert g == want


def test_eps_below_half_a_level_with_fractional_images_is_refused(small):
    _, model = small
    clean = np.full((1, 8, 8, 3), 100.3, np.float32)
    with pytest.raises(ValueError, match=r"eps=0\.25 < 0\.5 with non-integer clean images"):
        fa.attack(model, clean, [0], "PGD", eps=0.25, allow_subpixel=True)
    res = fa.attack(model, np.rint(clean), model.predict(np.rint(clean)), "PGD", eps=0.25,
                    allow_subpixel=True)
    assert np.all(res.images == 100)  # integer clean images: eps < 0.5 leaves them as they are


# ----------------------------------------------------------------------------- 3. fa.attack

def test_a_torch_module_as_model_says_load_model(small):
    net, model = small
    x, y = batch(model, n=2)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*fairattack\.load_model"):
        fa.attack(net, x, y)


def test_images_the_model_cannot_take_name_their_size():
    model = fa.load_model(FixedSize(), name="fixed8", mode="pixels")
    ok = np.zeros((2, 8, 8, 3), np.uint8)
    model.predict(ok)
    bad = np.zeros((2, 12, 10, 3), np.uint8)
    for call in (lambda: fa.attack(model, bad, [0, 0]), lambda: model.predict(bad),
                 lambda: model.logits(bad), lambda: model.loss_and_grad(bad, [0, 0]),
                 lambda: fa.evaluate(model, bad, [0, 0])):
        with pytest.raises(ValueError, match=r"'fixed8' cannot take images of size 12x10"):
            call()


def test_si_copies_beyond_memory_is_refused_before_running(small, monkeypatch):
    _, model = small
    x, y = batch(model, n=4)
    calls = []
    real = fa._core.attack
    monkeypatch.setattr(fa._core, "attack", lambda *a: calls.append(1) or real(*a))
    with pytest.raises(MemoryError, match=r"si_copies=100000000 x batch_size=4"):
        fa.attack(model, x, y, "MI-FGSM", si_copies=10**8)
    attack_module = importlib.import_module("fairattack.attack")  # fa.attack is the function
    image = 12 * 12 * 3 * 4
    # copies run in row chunks, so only a batch whose plain rows cannot fit is refused ...
    monkeypatch.setattr(attack_module, "_available_memory",
                        lambda m: 4 * image * attack_module.ACTIVATION_FACTOR - 1)
    with pytest.raises(MemoryError, match=r"batch_size=4 .* 12x12 .*: lower batch_size$"):
        fa.attack(model, x, y, "MI-FGSM", si_copies=5)
    assert not calls
    # ... and 4 rows fit at once, 5 x 4 do not: the copies run in chunks
    monkeypatch.setattr(attack_module, "_available_memory",
                        lambda m: 2 * 4 * image * attack_module.CHUNK_FACTOR)
    fa.attack(model, x, y, "MI-FGSM", si_copies=5, max_iter=2)
    assert len(calls) == 1


def test_index_offset_is_honoured(small):
    _, model = small
    x, y = batch(model, n=5)
    kw = dict(optimizer="PGD", random_start=True, max_iter=2, seed=3)
    whole = fa.attack(model, x, y, batch_size=2, **kw)
    tail = fa.attack(model, x[2:], y[2:], index_offset=2, **kw)
    np.testing.assert_array_equal(tail.images, whole.images[2:])
    assert tail.config["index_offset"] == 2
    unshifted = fa.attack(model, x[2:], y[2:], **kw)
    assert np.any(unshifted.images != whole.images[2:])  # the offset changes the draws


@pytest.mark.parametrize("kwargs", [dict(di_prob=0.5), dict(ti_kernel=7), dict(si_copies=3)])
def test_input_transforms_with_a_callable_are_refused(kwargs):
    x = np.full((2, 8, 8, 3), 100, np.uint8)
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))}: the DI/SI/TI input transforms"):
        fa.attack(free_oracle, x, [0, 0], "MI-FGSM", **kwargs)
    fa.attack(free_oracle, x, [0, 0], "MI-FGSM", si_copies=1, di_prob=0.0)  # off: fine


def test_di_min_scale_is_a_parameter(small):
    _, model = small
    x, y = batch(model, n=4, size=16)
    kw = dict(optimizer="PGD", di_prob=1.0, max_iter=3, seed=1)
    narrow = fa.attack(model, x, y, di_min_scale=0.9, **kw)
    default = fa.attack(model, x, y, **kw)
    wide = fa.attack(model, x, y, di_min_scale=0.5, **kw)
    np.testing.assert_array_equal(narrow.images, default.images)  # 0.9 is the default
    assert np.any(wide.images != narrow.images)
    assert wide.config["di_min_scale"] == 0.5 and default.config["di_prob"] == 1.0
    cfg = fa.make_config("PGD", di_prob=0.7, ti_kernel=7, si_copies=5, di_min_scale=0.8)
    assert (cfg["di_prob"], cfg["ti_kernel"], cfg["si_copies"]) == (0.7, 7, 5)
    assert cfg["di_min_scale"] == 0.8


# ----------------------------------------------------------------------------- 4. callable oracle

def _oracle(loss=None, pred=None, grad=None):
    def oracle(x, labels, want_grad):
        n = len(x)
        return (np.ones(n, np.float32) if loss is None else loss(n),
                labels.copy() if pred is None else pred(n, labels),
                np.ones(x.shape, np.float32) if grad is None else grad(x))
    return oracle


@pytest.mark.parametrize("oracle, error, match", [
    (_oracle(grad=lambda x: np.ones((len(x), 3, 8, 8), np.float32)), ValueError,
     r"oracle output 'grad' has shape \(2, 3, 8, 8\), expected \(2, 8, 8, 3\)"),
    (_oracle(grad=lambda x: np.ones(x.size, np.float32)), ValueError,
     r"oracle output 'grad' has shape \(384,\), expected \(2, 8, 8, 3\)"),
    (_oracle(loss=lambda n: np.ones((n, 1))), ValueError,
     r"oracle output 'loss' has shape \(2, 1\), expected \(2,\)"),
    (_oracle(pred=lambda n, y: y[:1]), ValueError,
     r"oracle output 'pred' has shape \(1,\), expected \(2,\)"),
    (_oracle(pred=lambda n, y: y.astype(np.float64)), TypeError,
     r"oracle output 'pred' has dtype .*float64.*expected integers"),
    (_oracle(loss=lambda n: np.ones(n, np.complex64)), TypeError,
     r"oracle output 'loss' has dtype .*complex64"),
    (_oracle(grad=lambda x: "gradient"), TypeError, "oracle output 'grad'"),
])
def test_oracle_outputs_are_checked_and_named(oracle, error, match):
    with pytest.raises(error, match=match):
        fa.attack(oracle, np.full((2, 8, 8, 3), 100, np.uint8), [0, 0], "PGD", max_iter=2)


def test_oracle_float64_and_list_outputs_are_cast(small):
    x = np.full((3, 8, 8, 3), 100, np.uint8)
    pattern = np.sin(np.arange(x[0].size)).reshape(x.shape[1:])

    def oracle(dtype, as_list=False):
        def f(x, labels, want_grad):
            loss = (x * pattern).sum(axis=(1, 2, 3)).astype(dtype)  # linear: its gradient
            return (loss.tolist() if as_list else loss, labels.astype(np.int32),
                    np.broadcast_to(pattern, x.shape).astype(dtype))
        return f

    kw = dict(optimizer="PGD", max_iter=3)
    single = fa.attack(oracle(np.float32), x, [1, 2, 3], **kw)
    double = fa.attack(oracle(np.float64), x, [1, 2, 3], **kw)
    listed = fa.attack(oracle(np.float64, as_list=True), x, [1, 2, 3], **kw)
    np.testing.assert_array_equal(single.images, double.images)
    np.testing.assert_array_equal(single.images, listed.images)
    np.testing.assert_allclose(double.loss, (double.images * pattern).sum(axis=(1, 2, 3)),
                               rtol=1e-3)
    assert np.any(single.images != x)


# ----------------------------------------------------------------------------- 5. evaluate

def test_evaluate_an_attack_result_counts_attacked_images_only(small):
    net, model = small
    x, y = batch(model, n=8)
    y = y.copy()
    y[[1, 4]] = (y[[1, 4]] + 1) % 10  # the surrogate gets these wrong: skipped
    res = fa.attack(model, x, y, "PGD", max_iter=3)
    assert list(np.flatnonzero(~res.attacked_mask)) == [1, 4]
    victims = {"v": fa.load_model(SmallNet().eval(), name="v", mode="pixels")}
    rates = fa.evaluate(victims, res)
    want = fa.evaluate(victims, res.images[res.attacked_mask], res.labels[res.attacked_mask])
    assert rates["v"] == want["v"] and rates.attrs["n_images"] == 6
    everything = fa.evaluate(victims, res.images, res.labels)
    assert everything.attrs["n_images"] == 8
    with pytest.raises(ValueError, match="labels: give either an AttackResult"):
        fa.evaluate(victims, res, res.labels)
    with pytest.raises(TypeError, match="labels: required"):
        fa.evaluate(victims, res.images)


def test_non_finite_logits_are_failures_not_class_zero():
    victim = fa.load_model(NaNAbove(), name="nan-above", mode="pixels")
    levels = np.array([0, 3, 7, 9, 2, 0])   # red levels 7 and 9: NaN logits
    labels = np.array([0, 3, 0, 0, 5, 1])   # right, right, -, -, wrong, wrong
    images = np.zeros((6, 4, 4, 3), np.uint8)
    images[..., 0] = levels[:, None, None]
    with pytest.warns(RuntimeWarning, match="non-finite logits for 2 of 6"):
        pred = victim.predict(images)
    np.testing.assert_array_equal(pred, [0, 3, -1, -1, 2, 0])
    with pytest.warns(RuntimeWarning, match="non-finite logits for 2 of 6 images"):
        rates = fa.evaluate({"nan-above": victim}, images, labels, batch_size=4)
    assert rates["nan-above"] == pytest.approx(2 / 4)  # 2 errors among the 4 finite images
    assert rates.attrs["n_failed"] == {"nan-above": 2}
    with pytest.warns(RuntimeWarning):
        all_failed = fa.evaluate({"nan-above": victim}, images[2:4], labels[2:4])
    assert math.isnan(all_failed["nan-above"])


# ----------------------------------------------------------------------------- 6. data

def test_16_bit_png_loads_scaled_to_8_bits(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # what Pillow makes of a 16-bit PNG
    got = data.load_image(path, 64)
    want = np.clip(np.rint(ramp / 257.0), 0, 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], want)
    assert 0 < got.mean() < 255


def _flat_dataset(tmp_path, n_bad=2):
    rng = np.random.default_rng(0)
    synset = data.synset_of(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)).save(
            tmp_path / f"{synset}_{i}.JPEG", quality=95)
    whole = (tmp_path / f"{synset}_0.JPEG").read_bytes()
    (tmp_path / f"{synset}_bad0.JPEG").write_bytes(whole[:len(whole) // 3])  # truncated
    if n_bad > 1:
        (tmp_path / f"{synset}_bad1.JPEG").write_bytes(b"not a jpeg at all")
    return data.open_dataset(tmp_path)


class Everything:
    def predict(self, images):
        return np.zeros(len(images), np.int64)  # every image is class 0: all correct


def test_a_truncated_jpeg_error_names_the_file(tmp_path):
    ds = _flat_dataset(tmp_path, n_bad=1)
    bad = [ds.path(i) for i in range(len(ds)) if "bad0" in ds.names[i]][0]
    with pytest.raises(OSError, match=f"{bad.name}.*cannot read the image"):
        data.load_image(bad, 16)


def test_a_dataset_scan_skips_unreadable_files_with_one_warning(tmp_path):
    ds = _flat_dataset(tmp_path)
    skipped = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, labels, names = data.select(ds, Everything(), n=10, size=16, batch_size=3,
                                            skipped=skipped)
    unreadable = [w for w in caught if "unreadable" in str(w.message)]
    assert len(unreadable) == 1 and "skipped 2 unreadable" in str(unreadable[0].message)
    assert len(names) == 5 and not any("bad" in n for n in names) and len(images) == 5
    assert sorted(p.split("_")[-1] for p, _ in skipped) == ["bad0.JPEG", "bad1.JPEG"]
    with pytest.warns(RuntimeWarning, match="iter_batches: skipped 2 unreadable"):
        batches = list(data.iter_batches(ds, 16, batch_size=3))
    assert sum(len(b[0]) for b in batches) == 5
    assert all(len(b[0]) == len(b[1]) == len(b[2]) for b in batches)


# ----------------------------------------------------------------------------- 7. models

def _state(net):
    return net.training, [p.requires_grad for p in net.parameters()]


def test_loading_or_exporting_leaves_the_users_module_unchanged(tmp_path):
    net = SmallNet().train()
    before = _state(net)
    weights = [p.detach().clone() for p in net.parameters()]
    fa.load_model(net, mode="pixels")
    assert _state(net) == before == (True, [True] * len(before[1]))
    models.export(net, tmp_path / "net.pt", input_size=12, mode="tf")
    assert _state(net) == before
    for p, w in zip(net.parameters(), weights):
        assert torch.equal(p, w)


def test_library_jit_calls_print_no_warnings(tmp_path):
    class Unscriptable(SmallNet):
        def forward(self, *inputs):  # varargs: scripting fails, tracing is used
            return super().forward(inputs[0])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fa.load_model(SmallNet(), mode="pixels")
        fa.load_model(Unscriptable(), mode="pixels")
        path = models.export(SmallNet(), tmp_path / "net.pt", input_size=12)
        models.export(Unscriptable(), tmp_path / "traced.pt", input_size=12)
        fa.load_model(path)
    noisy = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (FutureWarning, DeprecationWarning))
             or "jit" in str(w.message).lower()]
    assert noisy == []
