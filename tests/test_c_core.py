"""The C core tested alone: csrc/tests/test_core.c drives fa_attack and fa_metrics_compute with a
synthetic oracle written in C (no Python, no LibTorch), plain and under ASan + UBSan; and the
CUDA kernels keep compiling with the host compiler's -Werror (nvcc -c, no GPU needed).

Everything is built into pytest's tmp_path (BUILD=...), never into the source tree, so that runs
in parallel or next to someone's `make -C csrc/tests` do not collide."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1] / "csrc" / "tests"


def c_compiler():
    """The compiler the Makefile will use: $CC, else gcc, else cc; None if there is none."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return name
    return None


def nvcc():
    found = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return found if Path(found).exists() else None


def make(tmp_path, *targets, **variables):
    cc = c_compiler()
    if shutil.which("make") is None or cc is None:
        pytest.skip("needs make and a C compiler")
    args = [f"{k}={v}" for k, v in {"CC": cc, "BUILD": tmp_path, **variables}.items()]
    out = subprocess.run(["make", "-C", str(TESTS), *args, *targets], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"make {' '.join(targets)} failed:\n{out.stdout}{out.stderr}"
    return out


def run_binary(path, **env):
    out = subprocess.run([str(path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    report = out.stdout + out.stderr
    # the failed checks (file:line) come first on stderr, the summary last on stdout
    assert out.returncode == 0, f"{path.name} exited with {out.returncode}:\n{report}"
    summary = re.search(r"test_core: (\d+) checks, (\d+) failed", out.stdout)
    assert summary and summary.group(2) == "0", report
    assert int(summary.group(1)) > 1000, f"suspiciously few checks ran:\n{report}"


def test_core_alone(tmp_path):
    make(tmp_path, str(tmp_path / "test_core"))
    run_binary(tmp_path / "test_core")


def test_core_under_address_and_undefined_sanitizers(tmp_path):
    cc = c_compiler()
    if cc is None:
        pytest.skip("needs a C compiler")
    probe = subprocess.run([cc, "-fsanitize=address,undefined", "-x", "c", "-", "-o",
                            str(tmp_path / "probe")], input="int main(void){return 0;}",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{cc} has no ASan/UBSan runtime")
    make(tmp_path, str(tmp_path / "test_core_san"))
    run_binary(tmp_path / "test_core_san", ASAN_OPTIONS="detect_leaks=1",
               UBSAN_OPTIONS="print_stacktrace=1")


def test_cuda_kernels_compile(tmp_path):
    if nvcc() is None:
        pytest.skip("nvcc not found")
    make(tmp_path, "cuda-check", NVCC=nvcc())
    sources = sorted((TESTS.parent / "cuda").glob("*.cu"))
    assert {"backend_cuda", "kernels", "memory"} <= {s.stem for s in sources}
    for source in sources:
        assert (tmp_path / f"{source.stem}.o").stat().st_size > 0, source.name
