"""Admix, BSR and SIA (the shim's gradient-pass transforms) against plain-torch references built
from the same draws (fa_transform_draws), per-image seeding (batching never changes a result),
the named attacks and bad input."""

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fairattack as fa
from fairattack import _core, spec
from fairattack.settings import NAMED_ATTACKS, transform_copies
from tiny import SmallNet

H, W = 12, 10


@pytest.fixture(scope="module")
def net():
    return SmallNet().eval()


@pytest.fixture(scope="module")
def model(net):
    return fa.load_model(net, mode="pixels")


def images(n, seed=0, h=H, w=W):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def draws(transform, kind, label, index, call, copy, h=H, w=W):
    return _core.transform_draws(transform, kind, h, w, label, index, call, copy)


def shim_grad(model, x, labels, transform, index, call):
    """One gradient pass of the shim with a transform at (index, call)."""
    out = model._core.run(x, np.asarray(labels, np.int64), True, 0, 0, transform,
                          np.asarray(index, np.int64), call)
    return out[3]


def reference_grad(net, x, label, make_inputs):
    """Mean over the transformed copies of d CE / d x (NHWC), in plain torch: make_inputs maps
    the NCHW leaf [1, 3, h, w] to the list of transformed copies."""
    leaf = torch.from_numpy(x[None].copy()).requires_grad_(True)
    copies = make_inputs(leaf.permute(0, 3, 1, 2))
    batch = torch.cat(copies)
    loss = F.cross_entropy(net(batch), torch.full((len(batch),), label), reduction="sum")
    return (torch.autograd.grad(loss, leaf)[0][0] / len(batch)).numpy()


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


# ------------------------------------------------------------------ Admix

def admix_transform(pool, labels, copies=3, scales=5, eta=0.2, seed=7):
    return dict(admix_copies=copies, admix_scales=scales, admix_eta=eta, seed=seed,
                admix_pool=np.ascontiguousarray(pool, np.float32),
                admix_pool_labels=np.asarray(labels, np.int64))


def test_admix_matches_a_torch_reference(net, model):
    pool, pool_labels = images(6, seed=1), np.array([0, 1, 1, 2, 3, 0])
    x, labels, index = pool[[0, 3]], pool_labels[[0, 3]], [40, 41]
    t = admix_transform(pool, pool_labels, copies=3, scales=2, eta=0.3)
    call = 4
    grad = shim_grad(model, x, labels, t, index, call)
    for i in range(2):
        partners = [int(draws(t, "admix", labels[i], index[i], call, j)[0]) for j in range(3)]
        assert all(pool_labels[p] != labels[i] for p in partners)  # another class

        def inputs(z, partners=partners):
            mixed = [z + 0.3 * torch.from_numpy(pool[p]).permute(2, 0, 1)[None]
                     for p in partners]
            return [m * 0.5 ** s for s in range(2) for m in mixed]

        close(grad[i], reference_grad(net, x[i], labels[i], inputs))


def test_admix_partners_are_uniform_over_the_other_classes():
    labels = np.array([0, 0, 1, 2, 2, 2])
    t = admix_transform(np.zeros((6, 1, 1, 3)), labels)
    picks = [int(draws(t, "admix", 0, 5, call, j)[0]) for call in range(300) for j in range(3)]
    counts = np.bincount(picks, minlength=6)
    assert counts[0] == counts[1] == 0  # never its own class
    assert (np.abs(counts[2:] / len(picks) - 0.25) < 0.05).all()  # 900 draws, sd ~0.014
    # the draws follow (seed, index, call, partner)
    assert draws(t, "admix", 0, 5, 3, 1) == draws(t, "admix", 0, 5, 3, 1)
    assert len({int(draws(t, "admix", 0, index, 0, 0)[0]) for index in range(40)}) == 4


# ------------------------------------------------------------------ BSR

def rotate(block, degrees):
    """The block (NCHW) rotated about its centre: output offset p samples R(degrees) p."""
    bh, bw = block.shape[2:]
    if bh == 0 or bw == 0:
        return block
    a = math.radians(degrees)
    theta = torch.tensor([[[math.cos(a), -math.sin(a) * bh / bw, 0.0],
                           [math.sin(a) * bw / bh, math.cos(a), 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, list(block.shape), align_corners=False)
    return F.grid_sample(block, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def bsr_copy(z, d, b):
    """One BSR copy of z from its draws d (fa_torch.h's layout)."""
    first, second = (2, 3) if d[0] == 0 else (3, 2)
    lengths = [int(v) for v in d[1:1 + b]]
    order = [int(v) for v in d[1 + b:1 + 2 * b]]
    strips = torch.split(z, lengths, dim=first)
    out = []
    for s in range(b):
        base = 1 + 2 * b + 2 * b * s
        pieces = torch.split(strips[order[s]], [int(v) for v in d[base:base + b]], dim=second)
        angles = d[1 + 2 * b + 2 * b * b + s * b:][:b]
        placed = [rotate(pieces[int(d[base + b + k])], angles[k]) for k in range(b)]
        out.append(torch.cat(placed, dim=second))
    return torch.cat(out, dim=first)


def test_bsr_matches_a_torch_reference(net, model):
    x, labels, index = images(2, seed=2), [3, 7], [9, 2]
    t = dict(bsr_copies=4, bsr_blocks=3, bsr_angle=24.0, seed=11)
    call = 2
    grad = shim_grad(model, x, labels, t, index, call)
    for i in range(2):
        copies = [draws(t, "bsr", labels[i], index[i], call, c) for c in range(4)]
        for d in copies:
            b = 3
            size = (H, W) if d[0] == 0 else (W, H)
            assert sum(d[1:1 + b]) == size[0] and sorted(d[1 + b:1 + 2 * b]) == [0, 1, 2]
            assert all(abs(a) <= 24 for a in d[-b * b:])
        close(grad[i], reference_grad(net, x[i], labels[i],
                                      lambda z, cs=copies: [bsr_copy(z, d, 3) for d in cs]))


def test_bsr_angles_are_uniform_within_the_range():
    t = dict(bsr_copies=1, bsr_blocks=3, bsr_angle=24.0, seed=0)
    angles = np.concatenate([draws(t, "bsr", 0, i, 0, 0)[-9:] for i in range(200)])
    assert np.abs(angles).max() <= 24 and abs(angles.mean()) < 1.5  # sd of the mean ~0.46
    assert abs(np.abs(angles).mean() - 12) < 1.5


# ------------------------------------------------------------------ SIA

def sia_block(z, op, parameter):
    if op == 0:
        return torch.roll(z, int(parameter), dims=2)
    if op == 1:
        return torch.roll(z, int(parameter), dims=3)
    if op == 2:
        return torch.flip(z, dims=(2,))
    if op == 3:
        return torch.flip(z, dims=(3,))
    if op == 4:
        return torch.rot90(z, 2, dims=(2, 3))
    if op == 5:
        return z * parameter
    g = torch.Generator().manual_seed(int(parameter))
    return torch.clamp(z + torch.empty(z.shape).uniform_(-16, 16, generator=g), 0, 255)


def sia_copy(z, d, b):
    rows, cols = [int(v) for v in d[:b + 1]], [int(v) for v in d[b + 1:2 * b + 2]]
    ops = d[2 * b + 2:]
    bands = []
    for i in range(b):
        blocks = []
        for j in range(b):
            op, parameter = ops[2 * (i * b + j)], ops[2 * (i * b + j) + 1]
            blocks.append(sia_block(z[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]],
                                    int(op), parameter))
        bands.append(torch.cat(blocks, dim=3))
    return torch.cat(bands, dim=2)


def test_sia_matches_a_torch_reference(net, model):
    x, labels, index = images(2, seed=3), [1, 8], [0, 77]
    t = dict(sia_copies=6, sia_blocks=3, seed=5)
    call = 1
    grad = shim_grad(model, x, labels, t, index, call)
    seen = set()
    for i in range(2):
        copies = [draws(t, "sia", labels[i], index[i], call, c) for c in range(6)]
        for d in copies:
            assert d[0] == 0 and d[3] == H and d[4] == 0 and d[7] == W
            assert d[0] < d[1] < d[2] < d[3] and d[4] < d[5] < d[6] < d[7]
            seen.update(int(op) for op in d[8::2])
        close(grad[i], reference_grad(net, x[i], labels[i],
                                      lambda z, cs=copies: [sia_copy(z, d, 3) for d in cs]))
    assert len(seen) >= 5  # 108 blocks cover the seven transforms


def test_sia_ops_are_uniform():
    t = dict(sia_copies=1, sia_blocks=3, seed=1)
    ops = np.concatenate([draws(t, "sia", 0, i, 0, 0)[8::2] for i in range(300)]).astype(int)
    share = np.bincount(ops, minlength=7) / len(ops)
    assert len(share) == 7 and (np.abs(share - 1 / 7) < 0.035).all()  # 2700 draws, sd ~0.007


# ------------------------------------------------------------------ composition, attacks

def test_transforms_compose_with_si(net, model):
    """SI's scaled copies, then BSR on each: SI copy s, BSR copy c uses draw copy c * 2 + s."""
    x, labels, index = images(1, seed=4), [2], [3]
    t = dict(si_copies=2, bsr_copies=2, bsr_blocks=2, bsr_angle=10.0, seed=2)
    grad = shim_grad(model, x, labels, t, index, 0)
    ds = {k: draws(t, "bsr", 2, 3, 0, k) for k in range(4)}

    def inputs(z):
        return [bsr_copy(z * 0.5 ** s, ds[c * 2 + s], 2) for c in range(2) for s in range(2)]

    close(grad[0], reference_grad(net, x[0], 2, inputs))
    assert transform_copies(t) == 4


def reference_mifgsm_admix(net, x0, labels, pool, pool_labels, index, eps=16.0, steps=3):
    """TransferAttack-style MI-FGSM (mu 1, alpha eps/steps, g / mean|g|) with the shim's Admix
    draws at call k for step k (the core's numbering of a fixed run)."""
    t = admix_transform(pool, pool_labels)
    x = x0.astype(np.float32).copy()
    m = np.zeros_like(x)
    alpha = np.float32(eps / steps)
    for k in range(steps):
        for i in range(len(x)):
            partners = [int(draws(t, "admix", labels[i], index[i], k, j)[0]) for j in range(3)]

            def inputs(z, partners=partners):
                mixed = [z + 0.2 * torch.from_numpy(pool[p]).permute(2, 0, 1)[None]
                         for p in partners]
                return [mm * 0.5 ** s for s in range(5) for mm in mixed]

            g = reference_grad(net, x[i], int(labels[i]), inputs)
            m[i] = m[i] + g / np.abs(g).mean()
        x = np.clip(x + alpha * np.sign(m), 0, 255)
        x = np.clip(x, x0 - eps, x0 + eps).astype(np.float32)
    return x


def test_admix_attack_matches_a_torch_mifgsm_loop(net, model):
    x = np.random.default_rng(5).integers(0, 256, (3, H, W, 3)).astype(np.uint8)
    labels = np.array([0, 4, 4])
    r = fa.attack(model, x, labels, "Admix", max_iter=3, skip_misclassified=0, seed=7)
    assert r.optimizer == "MI-FGSM" and r.config["admix_copies"] == 3
    ref = reference_mifgsm_admix(net, x, labels, x.astype(np.float32), labels, [0, 1, 2])
    ref_u8 = np.clip(np.rint(ref), 0, 255)
    assert np.mean(r.images != ref_u8) < 1e-3
    assert np.abs(r.images.astype(int) - ref_u8).max() <= 1


@pytest.mark.parametrize("name", list(NAMED_ATTACKS))
def test_named_attacks_batching_never_changes_a_result(model, name):
    x = np.random.default_rng(6).integers(0, 256, (5, H, W, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 4])
    kw = dict(max_iter=2, skip_misclassified=0, seed=3)
    whole = fa.attack(model, x, labels, name, **kw)
    ones = fa.attack(model, x, labels, name, batch_size=1, **kw)
    np.testing.assert_array_equal(whole.images, ones.images)
    if name != "Admix":  # image 3 alone, with its index: the same draws, the same image
        alone = fa.attack(model, x[3:4], labels[3:4], name, index_offset=3, **kw)
        np.testing.assert_array_equal(alone.images[0], whole.images[3])
    # (Admix draws its partners from the images given to the call, whatever the batch_size)
    plain = fa.attack(model, x, labels, "MI-FGSM", **kw)
    assert (whole.images != plain.images).any()  # the transform is on
    d = whole.images.astype(np.float32) - x
    assert np.abs(d).max() <= 16 and whole.linf.max() <= 16


def test_transforms_combine_with_any_optimizer(model):
    x = np.random.default_rng(8).integers(0, 256, (2, H, W, 3)).astype(np.uint8)
    labels = np.array([1, 2])
    a = fa.attack(model, x, labels, "Adam", max_iter=2, skip_misclassified=0, sia_copies=3)
    b = fa.attack(model, x, labels, "Adam", max_iter=2, skip_misclassified=0)
    assert a.config["sia_copies"] == 3 and (a.images != b.images).any()
    c = fa.attack(model, x, labels, "PGD", max_iter=2, skip_misclassified=0, admix_copies=1,
                  admix_scales=1, bsr_copies=2)
    assert c.config["bsr_copies"] == 2 and np.abs(c.images.astype(int) - x).max() <= 16


def test_named_attacks_in_specs():
    s = spec.coerce("admix", "attacks[0]")
    assert (s.name, s.optimizer, s.params) == ("Admix", "MI-FGSM", {"admix_copies": 3})
    s = spec.coerce("b=BSR,bsr_copies=5,eps=8", "attacks[0]")
    assert (s.name, s.optimizer, s.params) == ("b", "MI-FGSM", {"bsr_copies": 5, "eps": 8})
    s = spec.coerce({"optimizer": "SIA"}, "attacks[0]")
    assert (s.name, s.params) == ("SIA", {"sia_copies": 20})
    names = [a.name for a in spec.study_attacks(["SIA", "PGD"], None)]
    assert names == ["SIA", "PGD"]
    _, transforms, cfg = spec.resolve(spec.coerce("BSR", "a"), "fixed")
    assert transforms == {"bsr_copies": 20} and cfg["bsr_blocks"] == 3 and cfg["bsr_angle"] == 24


# ------------------------------------------------------------------ bad input

X = np.random.default_rng(9).integers(0, 256, (2, H, W, 3)).astype(np.uint8)
Y = np.array([0, 1])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(admix_copies=-1), ValueError, "admix_copies must be >= 0"),
    (dict(bsr_copies=-2), ValueError, "bsr_copies must be >= 0"),
    (dict(sia_copies=1.5), TypeError, "sia_copies must be an integer"),
    (dict(admix_copies=1, admix_scales=0), ValueError, "admix_scales must be >= 1"),
    (dict(admix_copies=1, admix_eta=-0.1), ValueError, "admix_eta must be >= 0"),
    (dict(bsr_copies=1, bsr_blocks=0), ValueError, "bsr_blocks must be >= 1"),
    (dict(bsr_copies=1, bsr_angle=200), ValueError, "bsr_angle must be in"),
    (dict(sia_copies=1, sia_blocks=0), ValueError, "sia_blocks must be >= 1"),
    (dict(bsr_copies=1, bsr_blocks=11), ValueError, r"bsr_blocks=11 must be in \[1, 10\]"),
    (dict(sia_copies=1, sia_blocks=13), ValueError, r"sia_blocks=13 must be in \[1, 10\]"),
])
def test_bad_transform_values(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        fa.attack(model, X, Y, "MI-FGSM", max_iter=1, skip_misclassified=0, **kwargs)


def test_admix_needs_two_classes(model):
    with pytest.raises(ValueError, match="admix_copies=3: Admix mixes in images of other"):
        fa.attack(model, X, np.array([4, 4]), "Admix", max_iter=1)


def test_callable_oracle_refuses_the_transforms():
    def oracle(x, labels, want_grad):
        return np.zeros(len(x)), np.zeros(len(x), np.int64), np.zeros_like(x)

    with pytest.raises(ValueError, match="bsr_copies: the DI/SI/TI input transforms"):
        fa.attack(oracle, X, Y, "BSR", max_iter=1)


def test_draws_bad_kind():
    with pytest.raises(ValueError, match="kind='dim' must be"):
        _core.transform_draws({}, "dim", H, W, 0, 0, 0, 0)


def test_unknown_named_attack():
    with pytest.raises(ValueError, match="unknown optimizer 'Admixx'"):
        spec.coerce("Admixx", "attacks[0]")


# ------------------------------------------------------------------ VMI / VNI-FGSM
# (the rule itself: tests/test_reference.py's NumPy reference, every setting, via reference.py)

@pytest.mark.parametrize("name", ["VMI-FGSM", "VNI-FGSM"])
def test_variance_tuning_spends_neighbour_gradients_and_reduces_to_mi(name, model):
    from reference import LinearOracle

    oracle = LinearOracle((6, 5, 3))
    x = np.random.default_rng(10).integers(0, 256, (3, 6, 5, 3)).astype(np.uint8)
    y = np.array([oracle.predict(xi) for xi in x])
    base = "MI-FGSM" if name == "VMI-FGSM" else "NI-FGSM"
    fa.attack(oracle, x, y, base, max_iter=2)
    plain_calls, oracle.calls = oracle.calls, 0
    r = fa.attack(oracle, x, y, name, max_iter=2, vmi_neighbours=3)
    # the same calls as MI/NI plus 3 neighbour gradients at each of the 2 steps
    assert oracle.calls == plain_calls + 6 and r.config["vmi_neighbours"] == 3
    assert r.config["vmi_beta"] == 1.5 and r.optimizer == name
    zero = fa.attack(oracle, x, y, name, max_iter=4, vmi_beta=0.0, vmi_neighbours=2)
    plain = fa.attack(oracle, x, y, base, max_iter=4)
    assert np.mean(zero.images != plain.images) < 0.01  # v = mean g(x) - g(x) = 0
    x = np.random.default_rng(12).integers(0, 256, (3, H, W, 3)).astype(np.uint8)
    y = np.array([0, 1, 2])
    tuned = fa.attack(model, x, y, name, max_iter=4, skip_misclassified=0)
    plain = fa.attack(model, x, y, base, max_iter=4, skip_misclassified=0)
    assert np.mean(tuned.images != plain.images) > 0.05  # the variance term moves the steps
    assert np.abs(tuned.images.astype(int) - x).max() <= 16


def test_variance_tuning_batching_never_changes_a_result(model):
    x = np.random.default_rng(11).integers(0, 256, (4, H, W, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3])
    kw = dict(max_iter=2, skip_misclassified=0, vmi_neighbours=4, di_prob=0.5)
    whole = fa.attack(model, x, labels, "VNI-FGSM", **kw)
    ones = fa.attack(model, x, labels, "VNI-FGSM", batch_size=1, **kw)
    np.testing.assert_array_equal(whole.images, ones.images)
    alone = fa.attack(model, x[2:3], labels[2:3], "VNI-FGSM", index_offset=2, **kw)
    np.testing.assert_array_equal(alone.images[0], whole.images[2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(vmi_neighbours=0), r"vmi_neighbours=0 must be in \[1, 100000\]"),
    (dict(vmi_beta=-1.0), "vmi_beta=-1 must be >= 0"),
    (dict(vmi_neighbours=2.5), "vmi_neighbours must be an integer"),
])
def test_variance_tuning_bad_input(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fa.attack(model, X, Y, "VMI-FGSM", max_iter=1, **kwargs)


# ------------------------------------------------------------------ compare and the CLI

def test_named_attacks_in_compare(model):
    x = np.random.default_rng(13).integers(0, 256, (4, H, W, 3)).astype(np.uint8)
    labels = model.predict(x)
    labels[0] = (labels[0] + 1) % 10  # two classes at least (and one misclassified image)
    attacks = [{"name": "adm", "optimizer": "Admix", "max_iter": 2},
               "vmi=VMI-FGSM,max_iter=2,vmi_neighbours=2", "sia=SIA,max_iter=2,sia_copies=2"]
    table = fa.compare(model, x, labels, attacks, victims=[model], rmse=(3,), n_boot=20)
    assert set(table["attack"]) == {"adm", "vmi", "sia"}
    assert (table["n_images"] == 3).all()


def test_named_attacks_on_the_command_line(tmp_path):
    from test_cli import cli
    from tiny import user_folder

    root, s, v, folder = user_folder(tmp_path, n=6)
    out = cli("compare", "--attacks", "SIA", "b=BSR,max_iter=2,bsr_copies=2",
              "vni=VNI-FGSM,max_iter=2,vmi_neighbours=2", "--surrogate", s, "--data", folder,
              "--n-images", 3, "--image-size", 16, "--victims", v, "--rmse", 3, "--n-boot", 20,
              "--out", root / "out", "--quiet")
    assert out.returncode == 0, out.stderr
    import pandas as pd

    df = pd.read_csv(root / "out" / "compare.csv")
    assert list(dict.fromkeys(df["attack"])) == ["SIA", "b", "vni"]
    bad = cli("compare", "--attacks", "x=BSR,bsr_blocks=0", "--surrogate", s, "--data", folder,
              "--n-images", 3, "--image-size", 16, "--victims", v, "--out", root / "o2")
    assert bad.returncode != 0 and "bsr_blocks must be >= 1" in bad.stderr


# ------------------------------------------------------------------ row chunks (pass_rows)

@pytest.mark.parametrize("t", [dict(si_copies=3), dict(si_copies=2, bsr_copies=2, bsr_blocks=2),
                               dict(sia_copies=3, di_prob=1.0), dict(bsr_copies=3, ti_kernel=3)],
                         ids=["SI", "SI+BSR", "SIA+DI", "BSR+TI"])
def test_row_chunks_never_change_the_gradient(model, t):
    """The copies x n rows run through the model in chunks of pass_rows (1, a part of the batch,
    across copies, all): the same gradient, loss and plain logits as one pass."""
    x, labels, index = images(3, seed=9), np.array([0, 2, 4]), np.array([5, 6, 7])
    t = dict(t, seed=4)
    k = model.num_classes(H, W)

    def run(rows):
        return model._core.run(x, labels, True, k, 0, dict(t, pass_rows=rows), index, 2)

    whole = run(0)
    rows = 3 * transform_copies(t)
    for chunk in (1, 2, 4, rows - 1, rows, rows + 5):
        out = run(chunk)
        close(out[3], whole[3])
        np.testing.assert_allclose(out[0], whole[0], rtol=1e-5)  # CE at x
        np.testing.assert_allclose(out[1], whole[1], rtol=1e-5, atol=1e-6)  # plain logits
    assert np.abs(whole[3]).max() > 0


def test_attack_sizes_row_chunks_to_the_free_memory(model, monkeypatch):
    """With little free memory, fa.attack passes a row budget smaller than batch x copies (never
    below the batch) and gets the same images as with plenty; grad_evals count every copy."""
    attack_module = importlib.import_module("fairattack.attack")  # fa.attack is the function
    x = np.random.default_rng(8).integers(0, 256, (4, H, W, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3])
    kw = dict(max_iter=2, skip_misclassified=0, seed=1)
    plenty = fa.attack(model, x, labels, "BSR", **kw)
    row = H * W * 3 * 4
    seen = []
    real = _core.attack
    monkeypatch.setattr(_core, "attack", lambda *a: seen.append(a[5]["pass_rows"]) or real(*a))
    monkeypatch.setattr(attack_module, "_available_memory",
                        lambda m: 2 * row * attack_module.CHUNK_FACTOR * 6)  # 6 rows fit
    small = fa.attack(model, x, labels, "BSR", **kw)
    assert seen == [6]  # 6 of the 4 x 20 rows per chunk
    np.testing.assert_array_equal(small.images, plenty.images)
    np.testing.assert_array_equal(small.grad_evals, plenty.grad_evals)
    assert (small.grad_evals == 2 * 20).all()
    seen.clear()
    monkeypatch.setattr(attack_module, "_available_memory", lambda m: 1 << 40)
    fa.attack(model, x, labels, "BSR", **kw)
    assert seen == [0]  # everything fits: one pass


def test_pass_rows_bad_value(model):
    x = images(1)
    with pytest.raises(ValueError, match=r"pass_rows=-1 must be >= 0"):
        shim_grad(model, x, [0], dict(si_copies=2, pass_rows=-1), [0], 0)
