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


def test_no_two_core_files_call_each_other(tmp_path):
    """Dependencies point one way inside csrc/core too: from each object's undefined symbols
    (nm), no pair of files uses a function of the other (e.g. budget.c above the CPU backend,
    the scale solver below both)."""
    cc = c_compiler()
    if cc is None or shutil.which("nm") is None:
        pytest.skip("needs a C compiler and nm")
    core = TESTS.parent / "core"
    defined, used = {}, {}
    for source in sorted(core.glob("*.c")):
        obj = tmp_path / f"{source.stem}.o"
        subprocess.run([cc, "-std=c11", "-O1", f"-I{TESTS.parent / 'include'}", f"-I{core}", "-c",
                        str(source), "-o", str(obj)], check=True, capture_output=True)
        symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                                 check=True).stdout.split("\n")
        defined[source.name] = {s.split()[-1] for s in symbols if re.match(r"\S+ [TD] ", s)}
        used[source.name] = {s.split()[-1] for s in symbols if re.match(r"\s+U ", s)}
    calls = {(a, b) for a in used for b in defined if a != b and used[a] & defined[b]}
    assert ("budget.c", "scale.c") in calls and ("backend_cpu.c", "scale.c") in calls
    both_ways = sorted((a, b) for a, b in calls if (b, a) in calls and a < b)
    assert not both_ways, f"files calling each other: {both_ways}"
