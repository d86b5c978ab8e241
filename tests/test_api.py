"""The public Python API end to end: fa.load_model + fa.attack through the LibTorch shim and the
C core, against PyTorch itself; a real pretrained surrogate; bad input; interruption."""

import _thread
import math

import numpy as np
import pytest
import torch

import fairattack as fa
from tiny import SmallNet as TinyNet


@pytest.fixture(scope="module")
def tiny():
    net = TinyNet().eval()
    return net, fa.load_model(net, mode="pixels")


def torch_oracle(net):
    """The same model as a Python oracle, computed by PyTorch in Python."""

    def oracle(x, labels, want_grad):
        t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
        logits = net(t)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels),
                                                 reduction="none")
        grad = torch.autograd.grad(loss.sum(), t)[0].permute(0, 2, 3, 1)
        return (loss.detach().numpy(), logits.argmax(1).numpy(),
                np.ascontiguousarray(grad.numpy()))

    return oracle


def batch(model, n=6, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, 3)).astype(np.uint8)
    return x, model.predict(x)  # labels the model gets right: every image is attacked


def test_model_predict_and_gradient_match_pytorch(tiny):
    net, model = tiny
    x, y = batch(model)
    with torch.no_grad():
        want = net(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(model.logits(x), want, rtol=1e-4, atol=1e-4)
    loss, _, grad = torch_oracle(net)(x.astype(np.float32), y, True)
    got_loss, got_grad = model.loss_and_grad(x, y)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["GD", "NAGD", "Adam", "MSVAG", "MI-FGSM"])
def test_shim_and_python_oracle_give_the_same_attack(tiny, optimizer):
    net, model = tiny
    x, y = batch(model)
    kw = dict(optimizer=optimizer, setting="const_loss" if optimizer != "MI-FGSM" else "fixed",
              max_iter=5, stop_loss=math.inf)
    a = fa.attack(model, x, y, **kw)
    b = fa.attack(torch_oracle(net), x, y, **kw)
    assert list(a.status) == list(b.status)
    np.testing.assert_array_equal(a.iterations, b.iterations)
    np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-3)
    assert np.mean(a.images != b.images) < 0.01
    assert np.abs(a.images.astype(int) - b.images).max() <= 1


@pytest.mark.parametrize("optimizer", fa.OPTIMIZERS)
def test_invariants_for_every_optimizer(tiny, optimizer):
    _, model = tiny
    x, y = batch(model, n=5)
    res = fa.attack(model, x, y, optimizer=optimizer, eps=8, max_iter=6, batch_size=2)
    assert res.images.dtype == np.uint8 and res.images.shape == x.shape
    assert np.abs(res.images.astype(int) - x).max() <= 8
    assert np.all(res.linf <= 8) and np.all(res.rmse <= 8)
    assert set(res.status) <= {"stop_loss", "max_iter"}
    assert np.all(res.loss[res.status == "max_iter"] >= res.clean_loss[res.status == "max_iter"])
    assert res.summary()["n_images"] == 5 and len(res.to_frame()) == 5


def test_batching_never_changes_a_result(tiny):
    # the core is exact (test_reference); PyTorch's own kernels may round a gradient
    # differently for another batch size, so the step size may differ in its last bit
    _, model = tiny
    x, y = batch(model, n=7)
    for kw in (dict(optimizer="Adam"), dict(optimizer="PGD", random_start=True)):
        one = fa.attack(model, x, y, batch_size=7, max_iter=4, **kw)
        split = fa.attack(model, x, y, batch_size=3, max_iter=4, **kw)
        assert np.mean(one.images != split.images) < 1e-3
        np.testing.assert_allclose(one.alpha, split.alpha, rtol=1e-5)


def test_real_surrogate_attack_raises_loss_and_flips_predictions(lite0, samples_dir):
    # whether Adam reaches CE 30 within its 10 steps depends on the last bits of the gradient
    # (thread count, BLAS): assert what holds either way
    from fairattack import data

    files = sorted(samples_dir.glob("*.JPEG"))[:3]
    x = np.stack([data.load_image(f, 224) for f in files])
    y = np.array([data.index_of(f.name.split("_")[0]) for f in files])
    res = fa.attack(lite0, x, y, optimizer="Adam", setting="const_loss")
    ok = res.attacked_mask
    assert ok.sum() >= 2  # Lite0 classifies most samples correctly
    assert set(res.status[ok]) <= {"stop_loss", "max_iter"}
    assert np.all(res.loss[ok][res.status[ok] == "stop_loss"] >= 30)
    assert np.all(res.iterations[ok][res.status[ok] == "max_iter"] == res.config["max_iter"])
    assert np.all(res.loss[ok] > res.clean_loss[ok] + 10)  # far past any decision boundary
    assert np.all(res.linf[ok] <= 16) and np.all(res.rmse[ok] > 0.5)
    assert np.all(lite0.predict(res.images[ok]) != y[ok])  # the uint8 images still fool it


@pytest.mark.parametrize("images, error, match", [
    (np.zeros((2, 8, 8)), ValueError, r"images must be RGB images of shape \(N, H, W, 3\)"),
    (np.zeros((2, 8, 8, 4)), ValueError, "shape"),
    (np.zeros((0, 8, 8, 3)), ValueError, "empty"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
    (np.full((1, 8, 8, 3), 300.0), ValueError, r"\[0, 255\]"),
    (np.full((1, 8, 8, 3), 0.5j), TypeError, "dtype"),
])
def test_bad_images(tiny, images, error, match):
    _, model = tiny
    with pytest.raises(error, match=match):
        fa.attack(model, images, np.zeros(len(images), np.int64))


@pytest.mark.parametrize("labels, error, match", [
    ([0], ValueError, "labels has 1 entries but there are 2 images"),
    ([0, 10], ValueError, r"labels\[1\]=10 out of range \[0, 10\)"),
    ([0, -1], ValueError, "negative"),
    ([0.5, 1], TypeError, "integers"),
    ([[0, 1]], ValueError, "1-d"),
])
def test_bad_labels(tiny, labels, error, match):
    _, model = tiny
    with pytest.raises(error, match=match):
        fa.attack(model, np.zeros((2, 8, 8, 3), np.uint8), labels)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(optimizer="Adamax"), ValueError, "optimizer"),
    (dict(setting="const_speed"), ValueError, "setting"),
    (dict(eps=-1), ValueError, "eps"),
    (dict(max_iter=-3), ValueError, "max_iter"),
    (dict(beta1=1.0), ValueError, "beta1"),
    (dict(learning_rate=0.1), TypeError, "learning_rate"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(rounding="floor"), ValueError, "rounding"),
    (dict(ti_kernel=4), ValueError, "ti_kernel"),
    (dict(nesterov="sideways"), ValueError, "nesterov"),
])
def test_bad_arguments(tiny, kwargs, error, match):
    _, model = tiny
    x, y = batch(model, n=2)
    with pytest.raises(error, match=match):
        fa.attack(model, x, y, **kwargs)


def test_bad_model_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fa.load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torchscript archive")
    with pytest.raises(OSError, match="garbage.pt"):
        fa.load_model(garbage)
    with pytest.raises(TypeError, match="model must be"):
        fa.attack(42, np.zeros((1, 8, 8, 3), np.uint8), [0])
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fa.load_model(TinyNet(), device="tpu", mode="pixels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        fa.load_model(TinyNet(), device="cuda", mode="pixels")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["GD", "NAGD", "Adam", "MSVAG", "PGD"])
def test_cuda_attack_matches_cpu(tiny, optimizer):
    net, cpu = tiny
    gpu = fa.load_model(net, device="cuda", mode="pixels")
    x, y = batch(cpu, n=5)
    a = fa.attack(cpu, x, y, optimizer=optimizer, max_iter=5, stop_loss=math.inf)
    b = fa.attack(gpu, x, y, optimizer=optimizer, max_iter=5, stop_loss=math.inf)
    assert list(a.status) == list(b.status)
    np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-3)
    assert np.abs(a.images.astype(int) - b.images).max() <= 1


def test_oracle_errors_and_bad_outputs_are_exceptions():
    x = np.zeros((2, 8, 8, 3), np.uint8)

    def failing(x, labels, want_grad):
        raise ZeroDivisionError("inside the user's oracle")

    with pytest.raises(ZeroDivisionError, match="inside the user's oracle"):
        fa.attack(failing, x, [0, 0])

    def wrong_shape(x, labels, want_grad):
        n = len(x)
        return np.zeros(n, np.float32), np.zeros(n, np.int64), np.zeros((n, 4, 4, 3), np.float32)

    with pytest.raises(ValueError, match="grad"):
        fa.attack(wrong_shape, x, [0, 0])


def test_ctrl_c_interrupts_an_attack():
    # interrupt_main does nothing where SIGINT is not Python's handler (another test, a plugin
    # or the runner may have changed it): install the default one for this test
    import signal

    calls, interrupt_at = [], [3]

    def slow(x, labels, want_grad):
        calls.append(len(x))
        if len(calls) == interrupt_at[0]:
            _thread.interrupt_main()  # what Ctrl-C in Jupyter does
        n = len(x)
        return (np.ones(n, np.float32), np.zeros(n, np.int64),
                np.ones(x.shape, np.float32))

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fa.attack(slow, np.zeros((2, 8, 8, 3), np.uint8), [0, 0], optimizer="GD",
                      max_iter=1000, stop_loss=math.inf)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert 3 <= len(calls) < 10
    interrupt_at[0] = None  # nothing is left pending: the next attack runs to its end
    res = fa.attack(slow, np.zeros((2, 8, 8, 3), np.uint8), [0, 0], optimizer="GD",
                    max_iter=5, stop_loss=math.inf)
    assert list(res.iterations) == [5, 5]
