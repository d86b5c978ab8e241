"""Parity with torchattacks: the same sign attacks through fairattack and torchattacks 3.5.1.

    python benchmarks/parity_torchattacks.py [--data FOLDER] [--n 16]
        [--batch-size 8] [--steps 10] [--eps 8] [--alpha 2]

EfficientNet-Lite0 is the surrogate, Lite1 and Lite2 the victims. For FGSM, PGD (no random start),
MI-FGSM, NI-FGSM, DI (DI-FGSM: I-FGSM with input diversity, p = 0.5) and TI (TI-FGSM: I-FGSM with
the 15x15 Gaussian, no input diversity), it prints a markdown table: RMSE of each library's
perturbation, the RMSE between the two libraries' adversarial images, how many images are
identical, each victim's ASR (error rate on the uint8 images) for each library, and the time per
attack at the same batch size.

Conventions (see the README, "Coming from torchattacks"): torchattacks works on [0, 1] images, so
its model is the same TorchScript network behind x * 255; eps and alpha are given in pixels here
and divided by 255 for torchattacks; steps -> max_iter; decay -> momentum; torchattacks returns
the last iterate and attacks every image, so fairattack runs with setting "fixed" (last iterate)
and skip_misclassified=0. DI draws its random transforms differently in the two libraries (one
draw per batch from torch's global RNG there, one per image from a seeded counter-based RNG
here): compare its statistics, not its pixels. On EfficientNet the other iterative attacks drift
apart after the first step for one reason only: torchattacks holds the iterate as [0, 1] float32,
so the network sees pixel values off by ~1e-5, and sign() turns the gradient values near zero that
this flips into full steps. With the network fed exact pixels (ExactPixels), PGD, MI-FGSM and TI
give identical images (tests/test_parity.py). Timings depend on the machine and on what else runs
on it.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import fairattack as fa
from fairattack import data, models

ATTACKS = ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "DI", "TI")


class UnitRange(torch.nn.Module):
    """A pixel-range ([0, 255]) network as torchattacks expects it: input in [0, 1]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x * 255.0)


class ExactPixels(UnitRange):
    """UnitRange whose network sees the exact pixel values: x * 255 rounded to integers (the
    gradient passes straight through). With integer images, eps and alpha, the sign attacks'
    iterates are integers, which [0, 1] float32 cannot hold exactly (x/255*255 is off by ~1e-5):
    this removes that rounding and only that. Not for NI-FGSM, whose look-ahead is fractional."""

    def forward(self, x):
        pixels = x * 255.0
        return self.net(pixels + (torch.round(pixels) - pixels).detach())


def torchattacks_attack(name, model01, eps, alpha, steps):
    import torchattacks

    e, a = eps / 255.0, alpha / 255.0
    if name == "FGSM":
        return torchattacks.FGSM(model01, eps=e)
    if name == "PGD":
        return torchattacks.PGD(model01, eps=e, alpha=a, steps=steps, random_start=False)
    if name == "MI-FGSM":
        return torchattacks.MIFGSM(model01, eps=e, alpha=a, steps=steps, decay=1.0)
    if name == "NI-FGSM":
        return torchattacks.NIFGSM(model01, eps=e, alpha=a, steps=steps, decay=1.0)
    if name == "DI":
        return torchattacks.DIFGSM(model01, eps=e, alpha=a, steps=steps, decay=0.0,
                                   resize_rate=0.9, diversity_prob=0.5)
    if name == "TI":
        return torchattacks.TIFGSM(model01, eps=e, alpha=a, steps=steps, decay=0.0,
                                   len_kernel=15, nsig=3, diversity_prob=0.0)
    raise ValueError(f"unknown attack {name!r}")


def fairattack_arguments(name, eps, alpha, steps):
    """(optimizer, keyword arguments) of fa.attack for a torchattacks attack."""
    common = dict(setting="fixed", eps=eps, skip_misclassified=0, returns="last")
    if name == "FGSM":
        return "FGSM", common
    common.update(alpha=alpha, max_iter=steps)
    if name == "PGD":
        return "PGD", common
    if name in ("MI-FGSM", "NI-FGSM"):
        return name, dict(common, momentum=1.0)
    if name == "DI":
        return "PGD", dict(common, di_prob=0.5, di_min_scale=0.9)
    if name == "TI":
        return "PGD", dict(common, ti_kernel=15)
    raise ValueError(f"unknown attack {name!r}")


def run_torchattacks(attack, images, labels, batch_size):
    """uint8 NHWC in, uint8 NHWC out (the [0, 1] result scaled by 255 and rounded)."""
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(labels[start:start + batch_size])
        adv = attack(x, y).detach().permute(0, 2, 3, 1).numpy() * 255.0
        out[start:start + batch_size] = np.clip(np.rint(adv), 0, 255).astype(np.uint8)
    return out


def rmse(a, b):
    d = a.astype(np.float64) - b.astype(np.float64)
    return np.sqrt((d ** 2).mean(axis=(1, 2, 3)))


def cosine(a, b, clean):
    """Per image: cosine similarity of the two perturbations (1: same direction)."""
    da = (a.astype(np.float64) - clean).reshape(len(clean), -1)
    db = (b.astype(np.float64) - clean).reshape(len(clean), -1)
    norms = np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1)
    return np.where(norms > 0, (da * db).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)


def compare(name, surrogate, net01, victims, images, labels, batch_size, eps, alpha, steps,
            seed=0):
    torch.manual_seed(seed)
    optimizer, kwargs = fairattack_arguments(name, eps, alpha, steps)
    start = time.perf_counter()
    ours = fa.attack(surrogate, images, labels, optimizer, batch_size=batch_size, seed=seed,
                     **kwargs).images
    t_ours = (time.perf_counter() - start) / len(images)
    attack = torchattacks_attack(name, net01, eps, alpha, steps)
    start = time.perf_counter()
    theirs = run_torchattacks(attack, images, labels, batch_size)
    t_theirs = (time.perf_counter() - start) / len(images)
    row = {"attack": name, "rmse_fa": rmse(ours, images).mean(),
           "rmse_ta": rmse(theirs, images).mean(), "rmse_between": rmse(ours, theirs).mean(),
           "identical": int(np.sum(np.all(ours == theirs, axis=(1, 2, 3)))),
           "values_differ": float(np.mean(ours != theirs)),
           "cosine": float(np.mean(cosine(ours, theirs, images))),
           "ms_fa": 1000 * t_ours, "ms_ta": 1000 * t_theirs}
    for vname, victim in victims.items():
        row[f"asr_fa_{vname}"] = float(np.mean(victim.predict(ours) != labels))
        row[f"asr_ta_{vname}"] = float(np.mean(victim.predict(theirs) != labels))
    return row


def markdown(rows, n, batch_size):
    victims = [k[len("asr_fa_"):] for k in rows[0] if k.startswith("asr_fa_")]
    head = ["attack", "RMSE fa", "RMSE ta", "RMSE fa vs ta", f"identical / {n}",
            "values differing", "cosine(δ fa, δ ta)"]
    head += [f"ASR {v} fa / ta" for v in victims]
    head += [f"ms/image fa (batch {batch_size})", "ms/image ta"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["attack"], f"{r['rmse_fa']:.3f}", f"{r['rmse_ta']:.3f}",
                 f"{r['rmse_between']:.3f}", str(r["identical"]),
                 f"{100 * r['values_differ']:.3f} %", f"{r['cosine']:.3f}"]
        cells += [f"{r[f'asr_fa_{v}']:.3f} / {r[f'asr_ta_{v}']:.3f}" for v in victims]
        cells += [f"{r['ms_fa']:.0f}", f"{r['ms_ta']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                         "imagenet-samples"))
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data} is not a folder (the shared ImageNet samples)")

    surrogate = models.get_model("efficientnet-lite0")
    with models._quiet_jit():
        net = torch.jit.load(str(models.export_registered("efficientnet-lite0")))
    net01 = UnitRange(net.eval()).eval()
    victims = {k: models.get_model(f"efficientnet-{k}") for k in ("lite1", "lite2")}
    ds = data.open_dataset(args.data)
    order = np.arange(len(ds))[:args.n]  # the first n images in sorted order
    images, labels, _ = next(data.iter_batches(ds, 224, batch_size=args.n, order=order))
    rows = [compare(name, surrogate, net01, victims, images, labels, args.batch_size, args.eps,
                    args.alpha, args.steps) for name in args.attacks]
    print(f"fairattack {fa.__version__} vs torchattacks, EfficientNet-Lite0 surrogate, "
          f"{len(images)} images, eps {args.eps:g} px, alpha {args.alpha:g} px, "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}\n")
    print(markdown(rows, len(images), args.batch_size))


if __name__ == "__main__":
    main()
