"""The C core alone (csrc/tests/test_core.c: a synthetic oracle in C, no Python, no LibTorch),
plain and under AddressSanitizer + UBSan; and the CUDA kernels still compile with -Werror."""

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1] / "csrc" / "tests"


def make(target, tmp_path):
    if shutil.which("make") is None or shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("needs make and a C compiler")
    out = subprocess.run(["make", "-s", "-C", str(TESTS), f"BUILD={tmp_path}", target],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_core_alone(tmp_path):
    assert " 0 failed" in make("test", tmp_path)


def test_core_under_address_and_undefined_sanitizers(tmp_path):
    probe = subprocess.run(["cc", "-fsanitize=address,undefined", "-x", "c", "-", "-o",
                            str(tmp_path / "probe")], input="int main(void){return 0;}",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the C compiler has no ASan/UBSan runtime")
    assert " 0 failed" in make("sanitize", tmp_path)


def test_cuda_kernels_compile(tmp_path):
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        pytest.skip("nvcc not found")
    make("cuda-check", tmp_path)
    assert (tmp_path / "backend_cuda.o").stat().st_size > 0
