"""The LibTorch shim through the Python API: grad mode of the calling thread, non-finite logits,
the channels_last zero-copy input, devices ("cuda:N", checked), the CUDA arch list of setup.py,
and GPU runs (marked `cuda`, skipped without a GPU)."""

import ast
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import fairattack as fa
from fairattack import _core

ROOT = Path(__file__).resolve().parents[1]
F = torch.nn.functional


class DepthwiseNet(torch.nn.Module):
    """conv -> BN -> depthwise conv -> BN -> 1x1 conv (EfficientNet's building blocks), 10
    classes, on [0, 255] NCHW input."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.project = torch.nn.Conv2d(8, 16, 1)
        self.head = torch.nn.Linear(16, 10)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = F.relu6(self.bn1(self.stem(x / 127.5 - 1.0)))
        h = F.relu6(self.bn2(self.depthwise(h)))
        h = self.project(h).mean((2, 3))
        return self.head(h) * 3.0


class NaNRows(torch.nn.Module):
    """DepthwiseNet, with row i's logits made non-finite when its top-left red pixel is 0 (NaN in
    one logit) or 255 (+inf in one logit, -inf in another)."""

    def __init__(self):
        super().__init__()
        self.net = DepthwiseNet()

    def forward(self, x):
        logits = self.net(x)
        corner = x[:, 0, 0, 0].unsqueeze(1)
        nan = torch.zeros_like(logits).index_fill(1, torch.tensor([3]), float("nan"))
        inf = torch.zeros_like(logits).index_fill(1, torch.tensor([1]), float("inf"))
        inf = inf.index_fill(1, torch.tensor([7]), -float("inf"))
        logits = torch.where(corner == 0.0, logits + nan, logits)
        return torch.where(corner == 255.0, logits + inf, logits)


class LayoutProbe(torch.nn.Module):
    """Logit 0 is 1 when the input arrives as channels_last memory, logit 1 when it arrives as
    contiguous NCHW; the rest is DepthwiseNet."""

    def __init__(self):
        super().__init__()
        self.net = DepthwiseNet()

    def forward(self, x):
        logits = self.net(x)
        cl = float(x.is_contiguous(memory_format=torch.channels_last))
        nchw = float(x.is_contiguous())
        flags = torch.zeros_like(logits)
        flags[:, 0] = cl
        flags[:, 1] = nchw
        return logits * 0.0 + flags + x.sum((1, 2, 3)).unsqueeze(1) * 0.0


class InPlace(torch.nn.Module):
    """Writes into its input (values unchanged: x * 1): the shim must refuse, not hide it."""

    def __init__(self):
        super().__init__()
        self.net = DepthwiseNet()

    def forward(self, x):
        x.mul_(1.0)
        return self.net(x)


def images(n=5, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def reference(net, x, labels):
    """Loss, logits and NHWC gradient with PyTorch on a contiguous NCHW input (the layout the
    shim used before channels_last)."""
    t = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()
    t.requires_grad_(True)
    logits = net(t)
    loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(labels)), reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), t)
    return loss.detach().numpy(), logits.detach().numpy(), grad.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def depthwise():
    net = DepthwiseNet().eval()
    return net, fa.load_model(net, mode="pixels")


# ------------------------------------------------------------------ grad mode of the caller


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gradients_inside_no_grad_and_inference_mode(depthwise, mode):
    net, model = depthwise
    x = images()
    labels = model.predict(x)
    want_loss, want_grad = model.loss_and_grad(x, labels)
    assert np.abs(want_grad).max() > 0
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        loss, grad = model.loss_and_grad(x, labels)
        res = fa.attack(model, x, labels, "PGD", "fixed", max_iter=3)
        assert torch.is_grad_enabled() is False  # the caller's mode is left as it was
        if mode == "inference_mode":
            assert torch.is_inference_mode_enabled()
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    again = fa.attack(model, x, labels, "PGD", "fixed", max_iter=3)
    np.testing.assert_array_equal(res.images, again.images)
    assert (res.iterations == 3).all()


def test_model_loaded_inside_inference_mode_gives_gradients(depthwise):
    net, model = depthwise
    x = images(3)
    labels = model.predict(x)
    with torch.inference_mode():
        loaded = fa.load_model(net, mode="pixels")
    loss, grad = loaded.loss_and_grad(x, labels)  # parameters are not inference tensors
    want_loss, want_grad = model.loss_and_grad(x, labels)
    np.testing.assert_array_equal(grad, want_grad)


# ------------------------------------------------------------------ non-finite logits


def test_non_finite_logits_give_pred_minus_one_and_nan_loss():
    model = fa.load_model(NaNRows(), mode="pixels")
    x = images(6, seed=3)
    x[:, 0, 0, 0] = 100
    x[1, 0, 0, 0], x[4, 0, 0, 0] = 0, 255  # NaN logit in row 1, +-inf in row 4
    logits = model.logits(x)
    assert np.isnan(logits[1, 3]) and np.isposinf(logits[4, 1]) and np.isneginf(logits[4, 7])
    pred = model.predict(x)
    finite = [0, 2, 3, 5]
    np.testing.assert_array_equal(pred[[1, 4]], [-1, -1])
    np.testing.assert_array_equal(pred[finite], logits[finite].argmax(1))
    labels = np.where(pred >= 0, pred, 3)
    loss, grad = model.loss_and_grad(x, labels)
    assert np.isnan(loss[[1, 4]]).all()
    assert np.isfinite(loss[finite]).all()
    assert np.isfinite(grad[finite]).all()  # other rows are untouched by the NaN rows
    want = NaNRows()
    want.load_state_dict(model.source.state_dict())
    ref_loss, _, ref_grad = reference(want.eval(), x[finite], labels[finite])
    np.testing.assert_allclose(loss[finite], ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad[finite], ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())


# ------------------------------------------------------------------ channels_last, zero copy


def test_the_model_sees_channels_last_memory():
    model = fa.load_model(LayoutProbe(), mode="pixels")
    x = images(4, size=9)
    logits = model.logits(x)  # forward only
    np.testing.assert_array_equal(logits[:, :2], [[1.0, 0.0]] * 4)
    loss, _ = model.loss_and_grad(x, np.zeros(4, np.int64))  # the gradient pass
    np.testing.assert_allclose(loss, -np.log(np.e / (np.e + 9)), rtol=1e-6)  # logits (1, 0, ..)


def test_channels_last_gradient_matches_contiguous_autograd(depthwise):
    """The zero-copy channels_last path against PyTorch on contiguous NCHW (the old path):
    equal within float rounding (convolutions sum in another order), not bit for bit."""
    net, model = depthwise
    for n, size in [(4, 16), (3, 13), (1, 7)]:
        x = images(n, size, seed=size)
        labels = np.arange(n) % 10
        loss, grad = model.loss_and_grad(x, labels)
        ref_loss, _, ref_grad = reference(net, x, labels)
        scale = np.abs(ref_grad).max()
        assert scale > 0
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", ["uint8", "float32"])
def test_inputs_are_unchanged(depthwise, kind):
    _, model = depthwise
    x = images(3, seed=5).astype(kind)
    if kind == "float32":
        x = x * np.float32(0.99) + np.float32(0.25)  # fractional values
    before = x.copy()
    labels = model.predict(x)
    model.loss_and_grad(x, labels)
    fa.attack(model, x, labels, "Adam", max_iter=2)
    np.testing.assert_array_equal(x, before)


def test_a_model_that_writes_into_its_input_is_an_error():
    model = fa.load_model(InPlace(), mode="pixels")
    x = images(2).astype(np.float32)
    with pytest.raises(RuntimeError, match="modified its input in place"):
        model.predict(x)
    with pytest.raises(RuntimeError, match="in-place operation"):
        model.loss_and_grad(x, [0, 1])


# ------------------------------------------------------------------ devices


@pytest.mark.parametrize("device, match", [
    ("tpu", "device must be 'cpu' or 'cuda'"),
    ("cuda:one", "the GPU number after 'cuda:' must be an integer"),
    ("cuda:-1", "the GPU number after 'cuda:' must be an integer"),
    ("cpu:1", "device must be 'cpu' or 'cuda'"),
])
def test_bad_device_names(device, match):
    with pytest.raises(ValueError, match=match):
        fa.load_model(DepthwiseNet(), device=device, mode="pixels")


def test_cpu_model_device():
    model = fa.load_model(DepthwiseNet(), device=torch.device("cpu"), mode="pixels")
    assert (model.device, model.device_index) == ("cpu", -1)
    assert model._attack_device() == _core.DEVICE_CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu(device):
    with pytest.raises(RuntimeError, match=f"device='{device}' requested but no CUDA device"):
        fa.load_model(DepthwiseNet(), device=device, mode="pixels")


def test_cuda_marker_is_registered(pytestconfig):
    assert any(line.startswith("cuda:") for line in pytestconfig.getini("markers"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_beyond_the_count_is_a_clear_error():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"torch sees {count} CUDA device"):
        fa.load_model(DepthwiseNet(), device=f"cuda:{count}", mode="pixels")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_matches_cpu(depthwise):
    net, cpu = depthwise
    last = torch.cuda.device_count() - 1
    gpu = fa.load_model(net, device=f"cuda:{last}", mode="pixels")
    assert (gpu.device, gpu.device_index) == (f"cuda:{last}", last)
    x = images(6, size=16)
    labels = cpu.predict(x)
    np.testing.assert_array_equal(gpu.predict(x), labels)
    loss, grad = gpu.loss_and_grad(x, labels)
    want_loss, want_grad = cpu.loss_and_grad(x, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-2, atol=1e-3 * np.abs(want_grad).max())
    with torch.no_grad():
        np.testing.assert_allclose(gpu.loss_and_grad(x, labels)[1], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_on_the_callers_stream_and_any_current_device(depthwise):
    net, cpu = depthwise
    last = torch.cuda.device_count() - 1
    gpu = fa.load_model(net, device=f"cuda:{last}", mode="pixels")
    x = images(4, size=16)
    labels = cpu.predict(x)
    want_loss, want_grad = gpu.loss_and_grad(x, labels)
    res = fa.attack(gpu, x, labels, "MI-FGSM", "fixed", max_iter=4)
    stream = torch.cuda.Stream(device=last)
    with torch.cuda.device(0), torch.cuda.stream(stream):
        loss, grad = gpu.loss_and_grad(x, labels)
        again = fa.attack(gpu, x, labels, "MI-FGSM", "fixed", max_iter=4)
        assert torch.cuda.current_device() == 0
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(again.images, res.images)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attack_leaves_the_callers_device_current(depthwise):
    """The core's device guard: after an attack on the last GPU, the caller's current device is
    the one it had (the kernels made the model's GPU current only for their own calls)."""
    net, cpu = depthwise
    last = torch.cuda.device_count() - 1
    gpu = fa.load_model(net, device=f"cuda:{last}", mode="pixels")
    x = images(3, size=16)
    torch.cuda.set_device(0)
    fa.attack(gpu, x, cpu.predict(x), "Adam", "const_loss", max_iter=3, max_rmse=2.0)
    assert torch.cuda.current_device() == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attack_memory_comes_from_torchs_allocator(depthwise):
    """The attack's buffers (x0, x, g, d, m, v, best: n * dim floats each) go through torch's
    caching allocator: torch's peak statistics see them, and they are returned after."""
    net, cpu = depthwise
    gpu = fa.load_model(net, device="cuda:0", mode="pixels")
    x = images(16, size=64)
    labels = cpu.predict(x)
    fa.attack(gpu, x, labels, "Adam", "fixed", max_iter=1)  # warm: model, scratch
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(0)
    torch.cuda.reset_peak_memory_stats(0)
    fa.attack(gpu, x, labels, "Adam", "const_loss", max_iter=3)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated(0) - before >= 7 * x.size * 4
    assert torch.cuda.memory_allocated(0) <= before + 2**20


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_per_image_sums_on_a_side_stream_are_complete(depthwise):
    """MI-FGSM's mean |g|, the NaN check and stop_rmse read per-image sums back every step: on a
    non-blocking side stream they must be those of the default stream's run."""
    net, cpu = depthwise
    gpu = fa.load_model(net, device="cuda:0", mode="pixels")
    x = images(8, size=32, seed=2)
    labels = cpu.predict(x)
    kw = dict(optimizer="MI-FGSM", setting="fixed", max_iter=6, stop_rmse=3.0)
    want = fa.attack(gpu, x, labels, **kw)
    with torch.cuda.stream(torch.cuda.Stream(device=0)):
        for _ in range(3):
            got = fa.attack(gpu, x, labels, **kw)
            np.testing.assert_array_equal(got.images, want.images)
            np.testing.assert_array_equal(got.iterations, want.iterations)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_have_an_image_for_this_gpu():
    if not _core.cuda_available():
        pytest.skip("fairattack was built without CUDA kernels")
    for index in range(torch.cuda.device_count()):
        _core.cuda_check_device(index)
    with pytest.raises(ValueError, match="device_index=.* out of range"):
        _core.cuda_check_device(torch.cuda.device_count())


# ------------------------------------------------------------------ setup.py's arch list


def setup_functions():
    """_arch_numbers, cuda_arch_flags and werror from setup.py, without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    keep = [node for node in tree.body if isinstance(node, ast.FunctionDef)
            and node.name in ("_arch_numbers", "cuda_arch_flags", "werror")]
    keep += [node for node in tree.body if isinstance(node, ast.Assign)
             and any(getattr(t, "id", "") == "FALLBACK_ARCHS" for t in node.targets)]
    import re
    import subprocess
    import sys

    namespace = {"os": os, "re": re, "subprocess": subprocess, "sys": sys, "torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace


def fake_nvcc(tmp_path, archs):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n" + "".join(f"echo compute_{a}\n" for a in archs))
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return str(nvcc)


def gencode(flags):
    return [flags[i + 1] for i, f in enumerate(flags) if f == "-gencode"]


def test_arch_list_parsing():
    parse = setup_functions()["_arch_numbers"]
    assert parse("sm_75 sm_80 sm_86 sm_90 sm_100 sm_120") == ([75, 80, 86, 90, 100, 120], False)
    assert parse("7.0;7.5 8.0 8.6+PTX 9.0a") == ([70, 75, 80, 86, 90], True)
    assert parse("") == ([], False)


def test_arch_flags_follow_torch_and_nvcc(tmp_path, monkeypatch):
    flags_of = setup_functions()["cuda_arch_flags"]
    nvcc = fake_nvcc(tmp_path, [75, 80, 86, 90, 100, 120])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0 7.5 8.6 9.0")
    flags = flags_of(nvcc)
    assert gencode(flags) == ["arch=compute_75,code=sm_75", "arch=compute_86,code=sm_86",
                              "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"]
    assert flags[-1] == "-DFA_CUDA_ARCHS=sm_75/sm_86/sm_90/compute_90"  # sm_70: nvcc cannot
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch._C, "_cuda_getArchFlags", lambda: "", raising=False)
    flags = flags_of(nvcc)  # a torch without an arch list: sm_70..sm_90 that nvcc builds + PTX
    assert gencode(flags)[-1] == "arch=compute_90,code=compute_90"
    assert len(gencode(flags)) == 5
    monkeypatch.setattr(torch._C, "_cuda_getArchFlags", lambda: "sm_80 sm_120", raising=False)
    assert gencode(flags_of(nvcc)) == ["arch=compute_80,code=sm_80",
                                       "arch=compute_120,code=sm_120",
                                       "arch=compute_120,code=compute_120"]
    with pytest.raises(SystemExit, match="no CUDA architecture"):
        flags_of(fake_nvcc(tmp_path, [50]))


def test_pgd_attack_is_finite_and_in_budget(depthwise):
    """A smoke check of the whole path on the zero-copy input: ε holds, loss rises."""
    _, model = depthwise
    x = images(4, size=16, seed=9)
    labels = model.predict(x)
    res = fa.attack(model, x, labels, "PGD", "fixed", eps=4, max_iter=5)
    assert np.abs(res.images.astype(int) - x).max() <= 4
    assert (res.loss >= res.clean_loss - 1e-6).all()
    assert all(math.isfinite(v) for v in res.loss)


@pytest.mark.parametrize("env, wanted", [
    ({}, False),                                  # a user's pip install: no -Werror
    ({"CI": "true"}, True),                       # CI services set CI=true
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"FAIRATTACK_WERROR": "1"}, True),
    ({"CI": "true", "FAIRATTACK_WERROR": "0"}, False),
])
def test_warnings_are_errors_only_in_ci(monkeypatch, env, wanted):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FAIRATTACK_WERROR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert setup_functions()["werror"]() is wanted


def test_every_header_is_a_build_dependency():
    """build_ext rebuilds only when a source or a listed dependency changes: every header."""
    text = (ROOT / "setup.py").read_text()
    assert 'HEADERS = sorted(glob.glob("csrc/**/*.h", recursive=True))' in text
    assert "depends=HEADERS" in text
    headers = {p.name for p in (ROOT / "csrc").rglob("*.h")}
    assert {"fa_math.h", "fa_backend.h", "fairattack.h", "fa_cuda.h", "fa_torch.h"} <= headers


# ------------------------------------------------------------------ TorchScript's executor


class Normalising(torch.nn.Module):
    """The element-wise prologue TorchScript's fuser groups on the GPU (x / 127.5 - 1.0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x):
        h = torch.tanh(self.conv(x / 127.5 - 1.0)) * 2.0 + 0.5
        return self.head(h.mean((2, 3)))


def test_the_graph_executor_runs_unoptimised():
    """The shim's calls run TorchScript without profiling or fusion (nothing that changes after
    the first calls): the graph the executor ran last on this thread has no profiling nodes,
    no differentiable subgraph and no fusion group, on every call."""
    model = fa.load_model(Normalising(), mode="pixels")
    x = images(3, size=8, seed=4)
    labels = np.array([0, 1, 2])
    for _ in range(4):
        model._core.run(x.astype(np.float32), labels, True, 0)
        graph = str(torch._C._last_executed_optimized_graph())
        for node in ("prim::profile", "DifferentiableGraph", "TensorExprGroup", "FusionGroup"):
            assert node not in graph, (node, graph)
    assert torch._C._get_graph_executor_optimize()  # the caller's setting is unchanged


def test_results_do_not_depend_on_the_call_number_or_the_batch():
    """The same images attacked again give the same bits; alone or in another batch, the same
    images and step counts (the model's own matrix products may round the loss differently in
    the last bit for another N: BLAS blocks by batch size)."""
    model = fa.load_model(Normalising(), mode="pixels")
    x = images(6, size=8, seed=5)
    labels = model.predict(x)
    kw = dict(optimizer="MI-FGSM", setting="fixed", eps=8, max_iter=4)
    first = fa.attack(model, x, labels, batch_size=6, **kw)
    again = fa.attack(model, x, labels, batch_size=6, **kw)
    alone = fa.attack(model, x, labels, batch_size=1, **kw)
    mixed = fa.attack(model, x[::-1].copy(), labels[::-1].copy(), batch_size=4, **kw)
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.loss, again.loss) and np.array_equal(first.alpha, again.alpha)
    for other, order in ((alone, slice(None)), (mixed, slice(None, None, -1))):
        assert np.array_equal(first.images, other.images[order])
        assert np.array_equal(first.iterations, other.iterations[order])
        np.testing.assert_allclose(first.loss, other.loss[order], rtol=1e-6)
