"""Peers (fairattack.peers): torchattacks, torchattack and TransferAttack-style attack objects
run on the same images and ε as fairattack's own, named with parameters in the attack grammar,
their gradient evaluations counted; Model.as_torch_module hands a surrogate to any of them."""

import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

import fairattack as fa
from fairattack import peers, spec
from test_cli import cli
from tiny import TinyImageNet, save_tiny


@pytest.fixture(scope="module")
def case():
    net = TinyImageNet(0).eval()
    surrogate = fa.load_model(net, name="tiny", mode="pixels")
    x = np.random.default_rng(0).integers(30, 226, (5, 16, 16, 3)).astype(np.uint8)
    return net, surrogate, x, surrogate.predict(x)


def _unit(x):
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0)


def _pixels(adv01):
    """A [0, 1] NCHW tensor -> uint8 NHWC, rounded."""
    return np.clip(np.rint(adv01.detach().double().permute(0, 2, 3, 1).numpy() * 255), 0,
                   255).astype(np.uint8)


# ----------------------------------------------------------------------------- the module

def test_as_torch_module_gives_the_models_logits(case, tmp_path):
    net, surrogate, x, _ = case
    want = surrogate.logits(x)
    module = surrogate.as_torch_module()
    with torch.no_grad():
        got = module(_unit(x)).numpy()
        pixels = surrogate.as_torch_module(range="pixels")(_unit(x) * 255).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pixels, want, rtol=1e-4, atol=1e-4)
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in net.parameters())       # the user's module untouched
    # from a TorchScript file too
    path = save_tiny(tmp_path / "t.pt", 1)
    model = fa.load_model(path)
    with torch.no_grad():
        got = model.as_torch_module()(_unit(x)).numpy()
    np.testing.assert_allclose(got, model.logits(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="range"):
        surrogate.as_torch_module(range="0-1")


# ----------------------------------------------------------------------------- the grammar

def test_peer_names_take_parameters_in_the_one_grammar():
    a = spec.coerce("ta:PGD,steps=20,alpha=1.6", "attacks[0]")
    assert (a.kind, a.name, a.peer, a.params) == (
        "peer", "ta:PGD,steps=20,alpha=1.6", ("torchattacks", "PGD"), {"steps": 20, "alpha": 1.6})
    b = spec.coerce("mine=torchattack:VMIFGSM,steps=5,random-start=false", "attacks[1]")
    assert (b.name, b.peer, b.params) == ("mine", ("torchattack", "VMIFGSM"),
                                          {"steps": 5, "random_start": "false"})
    assert spec.coerce("transferattack:MIFGSM", "x").peer == ("transferattack", "MIFGSM")
    assert spec.coerce("PGD", "x").kind == "fairattack"       # native names are unchanged
    assert spec.coerce("p=PGD,max_iter=3", "x").params == {"max_iter": 3}
    with pytest.raises(ValueError, match="eps"):
        spec.coerce("ta:PGD,eps=8", "attacks[0]", reserved=("eps",))
    with pytest.raises(ValueError, match="key=value"):
        spec.coerce("ta:PGD,steps", "attacks[0]")
    with pytest.raises(ValueError, match="given twice"):
        spec.coerce("ta:PGD,steps=2,steps=3", "attacks[0]")
    with pytest.raises(ValueError, match="ATTACK"):
        spec.coerce("ta:", "attacks[0]")


def test_unknown_peer_names_and_objects_are_refused(case):
    _, surrogate, x, y = case
    pytest.importorskip("torchattacks")
    with pytest.raises(ValueError, match="no attack 'Nope'"):
        fa.compare(surrogate, x, y, ["ta:Nope"], {"v": surrogate}, rmse=[2], n_boot=0)
    with pytest.raises(TypeError, match="steps_per_image"):
        fa.compare(surrogate, x, y, ["ta:PGD,steps_per_image=3"], {"v": surrogate}, rmse=[2])

    class Shaped:  # a model and a forward, but no known library's interface
        model = None

        def forward(self, a, b):
            return a

    with pytest.raises(TypeError, match="known kind"):
        fa.compare(surrogate, x, y, [("odd", Shaped())], {"v": surrogate}, rmse=[2])
    with pytest.raises(TypeError, match="known kind"):
        fa.compare(surrogate, x, y, [("net", TinyImageNet(0))], {"v": surrogate}, rmse=[2])
    with pytest.raises(TypeError, match="known kind"):
        peers.run(Shaped(), x, y, 16)


def test_fa_attack_points_a_peer_at_compare(case):
    ta = pytest.importorskip("torchattacks")
    _, surrogate, x, y = case
    atk = ta.PGD(surrogate.as_torch_module(), eps=16 / 255)
    with pytest.raises(TypeError, match="fa.compare"):
        fa.attack(atk, x, y)
    with pytest.raises(ValueError, match="fa.compare"):
        fa.attack(surrogate, x, y, "ta:PGD")


# ----------------------------------------------------------------------------- torchattacks

def test_torchattacks_by_name_with_parameters_is_the_object_built_by_hand(case):
    ta = pytest.importorskip("torchattacks")
    _, surrogate, x, y = case
    built = spec.coerce("ta:PGD,steps=3,alpha=1.6,random_start=false", "a").build(surrogate, 16)
    assert built.fn.eps == pytest.approx(16 / 255) and built.fn.alpha == pytest.approx(1.6 / 255)
    assert built.fn.steps == 3 and built.fn.random_start is False
    got = peers.run(built.fn, x, y, 16)
    by_hand = ta.PGD(surrogate.as_torch_module(), eps=16 / 255, alpha=1.6 / 255, steps=3,
                     random_start=False)
    want = _pixels(by_hand(_unit(x), torch.from_numpy(y)))
    np.testing.assert_array_equal(got.images, want)
    assert got.images.dtype == np.uint8 and (got.linf <= 16).all() and got.linf.max() > 3
    np.testing.assert_array_equal(got.linf, np.abs(got.images.astype(int) - x).max(axis=(1, 2, 3)))
    assert (got.grad_evals == 3).all() and (got.forward_evals == 0).all()   # one per step
    assert built.fn.model.training is False    # the peer's model is handed back as it was
    # the same name runs in compare, cached by content like a native attack
    kwargs = dict(victims={"self": surrogate}, rmse=[4], n_boot=0)
    name = "ta:PGD,steps=3,alpha=1.6,random_start=false"
    df = fa.compare(surrogate, x, y, [name, "FGSM"], **kwargs)
    native = df[(df["how"] == "native") & (df["victim"] == "mean")].set_index("attack")
    rmse = np.sqrt(((got.images.astype(float) - x) ** 2).mean(axis=(1, 2, 3)))
    kept = surrogate.predict(x) == y
    assert native.loc[name, "rmse_mean"] == pytest.approx(rmse[kept].mean())
    assert df.attrs["grad_evals"][name] == pytest.approx(3)


def test_peer_by_name_is_cached(case, tmp_path):
    pytest.importorskip("torchattacks")
    _, _, x, _ = case
    surrogate = fa.load_model(save_tiny(tmp_path / "s.pt", 0))  # the cache keys files
    y = surrogate.predict(x)
    kwargs = dict(victims={"self": surrogate}, rmse=[4], n_boot=0, cache_dir=tmp_path / "c")
    first = fa.compare(surrogate, x, y, ["ta:PGD,steps=2,random_start=false"], **kwargs)
    again = fa.compare(surrogate, x, y, ["ta:PGD,steps=2,random_start=false"], **kwargs)
    assert first.attrs["cached_cells"] == 0 and again.attrs["cached_cells"] == 2
    pd.testing.assert_frame_equal(pd.DataFrame(first), pd.DataFrame(again))
    other = fa.compare(surrogate, x, y, ["ta:PGD,steps=3,random_start=false"], **kwargs)
    assert other.attrs["cached_cells"] == 0     # another parameter: computed again


# ----------------------------------------------------------------------------- torchattack

def _mifgsm_by_hand(module, x01, y, eps, alpha, steps, decay=1.0):
    """MI-FGSM in plain torch ([0, 1] images): momentum of L1-normalised gradients, sign step."""
    delta = torch.zeros_like(x01, requires_grad=True)
    g = torch.zeros_like(x01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(module(x01 + delta), y)
        grad, = torch.autograd.grad(loss, delta)
        g = decay * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
        with torch.no_grad():
            step = torch.clamp(delta + alpha * g.sign(), -eps, eps)
            step = torch.clamp(x01 + step, 0, 1) - x01
        delta = step.requires_grad_(True)
    return (x01 + delta).detach()


def test_torchattack_by_name_against_a_plain_torch_mifgsm(case):
    pytest.importorskip("torchattack")
    _, surrogate, x, y = case
    atk = spec.coerce("torchattack:MIFGSM,steps=4,alpha=2", "a").build(surrogate, 12).fn
    assert atk.eps == pytest.approx(12 / 255) and atk.alpha == pytest.approx(2 / 255)
    got = peers.run(atk, x, y, 12)
    want = _pixels(_mifgsm_by_hand(surrogate.as_torch_module(), _unit(x), torch.from_numpy(y),
                                   12 / 255, 2 / 255, 4))
    assert np.abs(got.images.astype(int) - want).max() <= 1
    assert (got.images == want).mean() > 0.999
    assert (got.linf <= 12).all() and got.linf.max() >= 8
    assert (got.grad_evals == 4).all()
    df = fa.compare(surrogate, x, y, ["mi=torchattack:MIFGSM,steps=4,alpha=2"],
                    {"self": surrogate}, rmse=[3], eps=12, n_boot=0)
    assert set(df["attack"]) == {"mi"}


def test_missing_peer_library_names_the_extra(case, monkeypatch):
    _, surrogate, x, y = case
    monkeypatch.setitem(sys.modules, "torchattack", None)
    with pytest.raises(ModuleNotFoundError, match=r"fairattack\[peers\]"):
        fa.compare(surrogate, x, y, ["torchattack:MIFGSM"], {"v": surrogate}, rmse=[2])
    with pytest.raises(ModuleNotFoundError, match="PYTHONPATH"):
        fa.compare(surrogate, x, y, ["transferattack:MIFGSM"], {"v": surrogate}, rmse=[2])


# ----------------------------------------------------------------------------- TransferAttack

class StandInIFGSM:
    """TransferAttack's interface, written here: the surrogate loaded by name in __init__
    (load_model, which users override), .model, .epsilon, .device, and forward(data, label)
    returning the perturbation on [0, 1]; `copies` averages the gradient over copies of the
    batch (as its input-transformation attacks do)."""

    def __init__(self, model_name, epsilon=16 / 255, alpha=1.6 / 255, epoch=10, copies=1,
                 device=None, shrink=False):
        self.model = self.load_model(model_name)
        self.epsilon, self.alpha, self.epoch, self.copies = epsilon, alpha, epoch, copies
        self.device = next(self.model.parameters()).device if device is None else device
        self.shrink = shrink

    def load_model(self, model_name):
        raise RuntimeError(f"would download {model_name}")

    def forward(self, data, label):
        delta = torch.zeros_like(data, requires_grad=True)
        for _ in range(self.epoch):
            logits = self.model(torch.cat([data + delta] * self.copies))
            loss = torch.nn.functional.cross_entropy(logits, label.repeat(self.copies))
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = torch.clamp(delta + self.alpha * grad.sign(), -self.epsilon,
                                   self.epsilon)
                step = torch.clamp(step, -data, 1 - data)
            delta = step.requires_grad_(True)
        delta = delta.detach()
        return delta[:, :, :-1] if self.shrink else delta

    def __call__(self, *args):
        return self.forward(*args)


def test_transferattack_style_object_and_name(case, monkeypatch):
    _, surrogate, x, y = case
    module = surrogate.as_torch_module()

    class Mine(StandInIFGSM):  # what a TransferAttack user writes for a custom surrogate
        def load_model(self, model_name):
            return module

    obj = Mine("tiny", epoch=3, copies=2)
    assert peers.peer_kind(obj) == "transferattack"
    got = peers.run(obj, x, y, 16)
    want = _pixels(_unit(x) + StandInIFGSM.forward(obj, _unit(x), torch.from_numpy(y)))
    np.testing.assert_array_equal(got.images, want)
    assert (got.grad_evals == 3 * 2).all()           # steps x copies, per image
    assert obj.model is module                       # handed back
    # by name, from a clone on the path (here: the stand-in as a module)
    fake = types.ModuleType("transferattack")
    fake.attack_zoo = {"ifgsm": StandInIFGSM}
    monkeypatch.setitem(sys.modules, "transferattack", fake)
    built = spec.coerce("transferattack:ifgsm,epoch=3,copies=2,alpha=1.6", "a").build(
        surrogate, 16).fn
    assert built.epsilon == pytest.approx(16 / 255) and built.alpha == pytest.approx(1.6 / 255)
    np.testing.assert_array_equal(peers.run(built, x, y, 16).images, got.images)
    df = fa.compare(surrogate, x, y, [("mine", obj), "transferattack:ifgsm,epoch=3,copies=2"],
                    {"self": surrogate}, rmse=[4], n_boot=0)
    native = df[(df["how"] == "native") & (df["victim"] == "mean")].set_index("attack")
    assert native["rmse_mean"].nunique() == 1
    assert df.attrs["grad_evals"]["mine"] == pytest.approx(6)


def test_a_peer_past_eps_is_reported_not_clipped(case):
    _, surrogate, x, y = case
    module = surrogate.as_torch_module()

    class Loose(StandInIFGSM):
        def load_model(self, model_name):
            return module

    with pytest.raises(peers.PeerBudgetError, match="eps=16"):
        peers.run(Loose("tiny", epsilon=20 / 255, alpha=5 / 255, epoch=4), x, y, 16)
    with pytest.raises(peers.PeerBudgetError, match="exceeds"):
        fa.compare(surrogate, x, y, [("loose", Loose("t", epsilon=20 / 255, alpha=5 / 255,
                                                    epoch=4))], {"v": surrogate}, rmse=[2])
    # at its own budget it passes, and rounding never takes it past ε
    ok = peers.run(Loose("tiny", epsilon=7.5 / 255, alpha=5 / 255, epoch=4), x, y, 7.5)
    assert ok.linf.max() == 7
    with pytest.raises(ValueError, match="shape"):
        peers.run(Loose("tiny", epoch=1, shrink=True), x, y, 16)


# ----------------------------------------------------------------------------- the CLI

def test_cli_compare_runs_a_peer_with_parameters(tmp_path):
    pytest.importorskip("torchattacks")
    from PIL import Image

    from fairattack import data

    s = save_tiny(tmp_path / "surrogate.pt", 0)
    surrogate = fa.load_model(s)
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        im = rng.integers(20, 236, (16, 16, 3)).astype(np.uint8)
        label = int(surrogate.predict(im[None])[0])
        Image.fromarray(im).save(clean / f"{data.synset_of(label)}_img{i}.png")
    out = cli("compare", "--attacks", "ta:PGD,steps=2,alpha=1.6,random_start=false", "FGSM",
              "--surrogate", s, "--data", clean, "--image-size", 16, "--victims", s, "--rmse", 2,
              "--n-boot", 0,
              "--out", tmp_path / "out", "--quiet")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert "ta:PGD,steps=2,alpha=1.6,random_start=false" in set(df["attack"])
