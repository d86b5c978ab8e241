"""benchmarks/gpu_check.py in its CPU dry run: the same code paths as on a GPU (parity, step
ratio, const_loss cell, torchattacks comparison, table file), with a tiny model and sizes. A
stand-in torchattacks (a plain PGD / MI-FGSM) drives the peer comparison when the real one is
missing. The shell wrapper is checked for syntax only (it needs a GPU)."""

import importlib.util
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _SignAttack:
    """What torchattacks.PGD / MIFGSM do, in a few lines ([0, 1] images)."""

    def __init__(self, model, eps, alpha, steps, decay=0.0, random_start=False):
        self.model, self.eps, self.alpha, self.steps, self.decay = model, eps, alpha, steps, decay

    def __call__(self, x, y):
        adv, momentum = x.clone(), torch.zeros_like(x)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(self.model(adv), y)
            (g,) = torch.autograd.grad(loss, adv)
            if self.decay:
                g = g / g.abs().mean((1, 2, 3), keepdim=True) + self.decay * momentum
                momentum = g
            adv = (adv.detach() + self.alpha * g.sign()).clamp(x - self.eps, x + self.eps)
            adv = adv.clamp(0, 1)
        return adv


@pytest.fixture
def stand_in_torchattacks(monkeypatch):
    if importlib.util.find_spec("torchattacks") is None:
        fake = types.ModuleType("torchattacks")
        fake.PGD = _SignAttack
        fake.MIFGSM = _SignAttack
        monkeypatch.setitem(sys.modules, "torchattacks", fake)


def test_dry_run_writes_the_whole_table(tmp_path, stand_in_torchattacks, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    gpu_check = load_gpu_check()
    start = time.perf_counter()
    out = tmp_path / "table.md"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--note", "a note"]) == 0
    assert time.perf_counter() - start < 60
    text = out.read_text()
    for title in ["## CUDA against CPU", "## attack step against a bare forward+backward",
                  "## const_loss cell: 7 optimizers against a batched loop",
                  "## fairattack against torchattacks", "## notes"]:
        assert title in text
    assert text.count("| PASS |") == 4 and "FAIL" not in text and "skipped" not in text
    assert "| PGD |" in text and "| MI-FGSM |" in text
    assert "- a note" in text
    ms, ratio = re.search(r"final forwards\) \| ([0-9.]+) \| ([0-9.]+) \|", text).groups()
    assert float(ms) > 0 and float(ratio) > 0


def test_dry_run_reports_an_exhausted_budget(tmp_path):
    gpu_check = load_gpu_check()
    out = tmp_path / "table.md"
    gpu_check.main(["--dry-run", "--out", str(out), "--budget", "0"])
    text = out.read_text()
    assert text.count("skipped: ") == 4 and "of the budget left" in text


def test_shell_wrapper_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
