"""fairattack's attack loop against a plain PyTorch loop on the same model and batch.

    python benchmarks/bench_attack.py [--model efficientnet-lite0|resnet18] [--batch 8] [--steps 5]
    python benchmarks/bench_attack.py --count [--model tiny]   # model calls, no timing

The sign attacks are also timed against TransferAttack-style MI-FGSM and NI-FGSM loops (plain
PyTorch, written below: eps 16, alpha 1.6, decay 1.0, `steps` steps). --count runs every attack
through the same eager model (fairattack with a Python oracle around it) and counts the
model's forward and backward passes per attack on both sides: what fairattack does beyond the
loops, without a clock (a shared machine cannot time it).

Both sides run `steps` gradient steps on the same images: the plain loop is the minimum any
attack needs (forward, backward, update, projection in torch); fairattack adds the C core's
bookkeeping and one forward-only loss evaluation at the end (the shim hands the model the NHWC
images as channels_last memory, without a copy).
The ratio is what the library costs on top of the model.
"""

import argparse
import math
import time

import numpy as np
import torch

import fairattack as fa


def build(name):
    if name == "resnet18":
        import torchvision

        from fairattack.models import ImageNetWrapper

        return ImageNetWrapper(torchvision.models.resnet18(weights=None), input_size=224,
                               mode="torch").eval(), 224
    from fairattack import models

    if not name.startswith("efficientnet-lite"):
        raise SystemExit(f"unknown --model {name!r}: efficientnet-lite0/1/2 or resnet18")
    size = models.input_size(name)
    net = models._efficientnet_lite(int(name[-1]))  # the registry's network, in eager PyTorch
    return models.ImageNetWrapper(net, input_size=size, mode=None, mean=127.0,
                                  std=128.0).eval(), size


def plain_loop(net, x0, labels, steps, alpha, eps):
    x0 = torch.from_numpy(x0).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = torch.clamp(x + alpha * g.sign(), 0, 255)
            x = torch.min(torch.max(x, x0 - eps), x0 + eps)
    return x


def transfer_loop(net, x0, labels, steps, alpha, eps, decay=1.0, nesterov=False):
    """MI-FGSM / NI-FGSM as TransferAttack writes them (in pixels): the gradient at x (NI: at
    the look-ahead x + alpha * decay * momentum), momentum = decay * momentum + g / mean|g|,
    x += alpha * sign(momentum), clipped to the eps-ball and the box; the last iterate."""
    x0 = torch.from_numpy(x0).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    x, momentum = x0.clone(), torch.zeros_like(x0)
    for _ in range(steps):
        at = (x + alpha * decay * momentum if nesterov else x).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(at), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, at)
        with torch.no_grad():
            momentum = decay * momentum + g / g.abs().mean((1, 2, 3), keepdim=True)
            x = torch.clamp(x + alpha * momentum.sign(), 0, 255)
            x = torch.min(torch.max(x, x0 - eps), x0 + eps)
    return x


class Counted:
    """The eager model as a fairattack Python oracle, counting forward and backward passes."""

    def __init__(self, net):
        self.net, self.forwards, self.backwards = net, 0, 0
        net.register_forward_hook(lambda *_: self.count_forward())

    def count_forward(self):
        self.forwards += 1

    def __call__(self, x, labels, want_grad):
        t = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(bool(want_grad))
        y = torch.from_numpy(labels)
        with torch.enable_grad() if want_grad else torch.no_grad():
            logits = self.net(t)
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        grad = None
        if want_grad:
            self.backwards += 1
            (grad,) = torch.autograd.grad(loss.sum(), t)
            grad = grad.permute(0, 2, 3, 1).numpy()
        return loss.detach().numpy(), logits.argmax(1).numpy(), grad


def count(net, images, labels, steps):
    """Forward and backward passes per attack: fairattack (fixed setting, eps 16, alpha 1.6)
    against the plain loops."""
    counter = Counted(net)
    x0 = images.astype(np.float32)
    print(f"{steps} steps, batch {len(images)}: forward / backward passes of the model")
    for name, plain in [("PGD", lambda: plain_loop(net, x0, labels, steps, 1.6, 16.0)),
                        ("MI-FGSM", lambda: transfer_loop(net, x0, labels, steps, 1.6, 16.0)),
                        ("NI-FGSM", lambda: transfer_loop(net, x0, labels, steps, 1.6, 16.0,
                                                          nesterov=True))]:
        counter.forwards = counter.backwards = 0
        plain()
        theirs = (counter.forwards, steps)
        counter.forwards = counter.backwards = 0
        fa.attack(counter, images, labels, name, "fixed", eps=16, alpha=1.6, max_iter=steps,
                  batch_size=len(images))
        print(f"  {name:8s} plain loop {theirs[0]:3d} / {theirs[1]:3d}   fairattack "
              f"{counter.forwards:3d} / {counter.backwards:3d}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--count", action="store_true", help="count model calls, do not time")
    args = p.parse_args()
    if args.count and args.model == "tiny":
        from fairattack.models import ImageNetWrapper

        torch.manual_seed(0)
        inner = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(8, 10))
        net, size = ImageNetWrapper(inner, input_size=32, mode="torch").eval(), 32
    else:
        net, size = build(args.model)
    for param in net.parameters():
        param.requires_grad_(False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, size, size, 3)).astype(np.uint8)
    model = fa.load_model(net, name=args.model)
    labels = model.predict(images)
    x0 = images.astype(np.float32)
    if args.count:
        count(net, images, labels, args.steps)
        return

    plain_loop(net, x0, labels, 1, 1.0, 16.0)  # warm-up (TorchScript profiling runs too)
    fa.attack(model, images, labels, "PGD", "fixed", max_iter=1, batch_size=args.batch)
    t_plain, t_fa, t_cal = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        plain_loop(net, x0, labels, args.steps, 1.6, 16.0)
        t_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        fa.attack(model, images, labels, "PGD", "fixed", max_iter=args.steps,
                  batch_size=args.batch)
        t_fa.append(time.perf_counter() - t)
        t = time.perf_counter()
        fa.attack(model, images, labels, "Adam", "fixed", max_iter=args.steps,
                  batch_size=args.batch)
        t_cal.append(time.perf_counter() - t)
    plain, ours, adam = min(t_plain), min(t_fa), min(t_cal)
    sign = {}  # fairattack MI/NI-FGSM against the TransferAttack-style loops, alternating
    for name, nesterov in [("MI-FGSM", False), ("NI-FGSM", True)]:
        theirs, mine = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            transfer_loop(net, x0, labels, args.steps, 1.6, 16.0, nesterov=nesterov)
            theirs.append(time.perf_counter() - t)
            t = time.perf_counter()
            fa.attack(model, images, labels, name, "fixed", eps=16, alpha=1.6,
                      max_iter=args.steps, batch_size=args.batch)
            mine.append(time.perf_counter() - t)
        sign[name] = (min(theirs), min(mine))

    # the core alone: an oracle that costs nothing, so only fairattack's own work is timed
    g = np.random.default_rng(1).standard_normal(images.shape).astype(np.float32)

    def free_oracle(x, y, want_grad):
        return np.zeros(len(x), np.float32), y.copy(), g[:len(x)]

    def timed(steps):
        best = math.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            fa.attack(free_oracle, images, labels, "Adam", "fixed", max_iter=steps,
                      batch_size=args.batch, stop_loss=float("inf"))
            best = min(best, time.perf_counter() - t)
        return best

    # per step: the difference of two runs, so that the once-per-attack work (calibration,
    # uint8 rounding, the metrics with SSIM) is not counted in it
    one, many = timed(1), timed(args.steps)
    core = (many - one) / (args.steps - 1) * args.steps
    print(f"model {args.model}, batch {args.batch}, {size}x{size}, {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain PyTorch loop      {plain:8.3f} s  ({plain / args.steps * 1e3:7.1f} ms/step)")
    print(f"fairattack PGD          {ours:8.3f} s  ratio {ours / plain:5.2f}")
    print(f"fairattack Adam+calib.  {adam:8.3f} s  ratio {adam / plain:5.2f}")
    for name, (theirs, mine) in sign.items():
        print(f"{name} TransferAttack loop {theirs:8.3f} s, fairattack {mine:8.3f} s  ratio "
              f"{mine / theirs:5.2f}")
    print(f"core alone (free oracle, Adam): {core / args.steps * 1e3:7.1f} ms/step "
          f"= {core / plain:5.1%} of a plain step; once per attack (calibration, rounding, "
          f"metrics): {(one - core / args.steps) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
