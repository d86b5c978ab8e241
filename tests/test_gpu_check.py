"""benchmarks/gpu_check.py in its CPU dry run: the same code paths as on a GPU (parity, step
ratio, const_loss cell, torchattacks comparison, table file), with a tiny model and sizes. A
stand-in torchattacks (a plain PGD / MI-FGSM) drives the peer comparison when the real one is
missing. The check must be able to fail: pytest logs of failed, crashed and timed-out runs are
fed to it (non-zero exit, a FAIL line), and the shell wrapper runs against a stub python that
plays the GPU machine."""

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
    log = tmp_path / "ok.log"
    log.write_text("....\n4 passed in 0.50s\n")
    assert gpu_check.main(["--dry-run", "--out", str(out), "--note", "a note",
                           "--tests", "conformance", "0", str(log)]) == 0
    assert time.perf_counter() - start < 60
    text = out.read_text()
    for title in ["## CUDA against CPU", "## attack step against a bare forward+backward",
                  "## const_loss cell: 7 optimizers against a batched loop",
                  "## fairattack against torchattacks", "## notes"]:
        assert title in text
    assert text.count("| PASS |") == 5 and "FAIL" not in text and "skipped" not in text
    assert "## verdict\n\nPASS" in text and "| conformance | PASS | 4 passed in 0.50s" in text
    assert "What a step costs besides the model" in text
    assert "| PGD |" in text and "| MI-FGSM |" in text
    assert "- a note" in text
    ms, ratio = re.search(r"final forwards\) \| ([0-9.]+) \| ([0-9.]+) \|", text).groups()
    assert float(ms) > 0 and float(ratio) > 0


def test_dry_run_reports_an_exhausted_budget(tmp_path):
    gpu_check = load_gpu_check()
    out = tmp_path / "table.md"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--budget", "0"]) == 1
    text = out.read_text()
    assert text.count("skipped: ") == 4 and "of the budget left" in text
    # the parity part is the check itself: not run is a failure, the timings are not
    assert "- FAIL: CUDA against CPU: skipped, so not checked" in text
    assert text.count("- FAIL:") == 1


def test_shell_wrapper_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


@pytest.mark.parametrize("log, rc, passed, words", [
    ("...\n3 passed in 1.20s\n", 0, True, "3 passed"),
    ("..F\n1 failed, 3 passed in 2.00s\n", 1, False, "1 failed, 3 passed"),
    ("===== 1 FAILED, 3 passed in 2.00s =====\n", 1, False, "exit 1"),  # any case, exit 1
    ("E\n== 2 passed, 1 error in 0.30s ==\n", 1, False, "1 error"),
    ("..\nFatal Python error: Segmentation fault\n", 139, False, "crashed (exit 139"),
    ("....", 124, False, "timed out (exit 124)"),
    ("5 passed in 9.9s\n", 137, False, "timed out (exit 137)"),
    ("ssss\n4 skipped in 0.10s\n", 0, False, "nothing passed"),  # no kernels: all skip
    ("\nno tests ran in 0.01s\n", 5, False, "no tests ran"),
    ("1 passed, 1 failed in 1.0s\n", 0, False, "1 failed"),  # the summary, whatever the exit
])
def test_pytest_verdict(log, rc, passed, words):
    ok, summary = load_gpu_check().pytest_verdict(log, rc)
    assert ok is passed and words in summary, summary


@pytest.mark.parametrize("log, rc", [("..F\n1 failed, 3 passed in 2.00s\n", "1"),
                                     ("Fatal Python error: Aborted\n", "134"),
                                     ("", "124")])
def test_a_failing_test_run_fails_the_check(tmp_path, log, rc):
    gpu_check = load_gpu_check()
    path = tmp_path / "run.log"
    path.write_text(log)
    out = tmp_path / "table.md"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--budget", "0",
                           "--tests", "cuda_tests", rc, str(path)]) == 1
    text = out.read_text()
    assert "| cuda_tests | FAIL |" in text and "- FAIL: tests cuda_tests" in text


STUB = r"""#!/usr/bin/env bash
# plays python3 on a GPU machine for benchmarks/gpu_check.sh; logs every call
echo "$*" >> "$STUB_LOG"
case "$*" in
  *get_device_capability*) echo 9.0 ;;
  *setup.py*) [ "$FAIRATTACK_CUDA" = 1 ] || exit 3; exit "${STUB_BUILD_RC:-0}" ;;
  *WITH_CUDA*) exit "${STUB_KERNELS_RC:-0}" ;;
  *--pytest*test_conformance*) echo "1 failed, 9 passed in 1.00s"; exit 1 ;;
  *--pytest*) echo "3 passed in 1.00s"; exit 0 ;;
  *gpu_check.py*) PYTHONPATH= exec "$REAL_PYTHON" "$@" ;;  # the installed fairattack: no build here
esac
"""


@pytest.fixture
def stub_python(tmp_path, monkeypatch):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    monkeypatch.setenv("PYTHON", str(stub))
    monkeypatch.setenv("REAL_PYTHON", sys.executable)
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    return tmp_path


def run_wrapper():
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
                          capture_output=True, text=True, timeout=120)


def test_the_wrapper_forces_a_cuda_build_and_fails_on_a_failed_test_run(stub_python,
                                                                          monkeypatch):
    # the final gpu_check.py call only judges the logs: give it no budget for the model parts
    monkeypatch.setenv("GPU_CHECK_SECONDS", "25")
    out = run_wrapper()
    calls = (stub_python / "calls.log").read_text()
    assert "setup.py -q build_ext --inplace --force" in calls
    assert "tests/test_conformance.py" in calls and "-m cuda tests/test_shim.py" in calls
    assert out.returncode != 0, out.stdout + out.stderr
    text = (stub_python / "out" / "gpu_check.md").read_text()
    assert "| conformance | FAIL | 1 failed, 9 passed" in text
    assert "| cuda_tests | PASS |" in text


@pytest.mark.parametrize("variable", ["STUB_BUILD_RC", "STUB_KERNELS_RC"])
def test_the_wrapper_fails_without_kernels(stub_python, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    out = run_wrapper()
    assert out.returncode == 1 and "FAIL" in out.stderr
    assert "--pytest" not in (stub_python / "calls.log").read_text()
