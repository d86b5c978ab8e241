"""The core's entry points under libFuzzer with ASan + UBSan (csrc/tests/fuzz_core.c): random
configs, shapes, values and oracle outputs fed to fa_config_check, fa_attack, the metrics and
both budget functions, for FUZZ_SECONDS (60) in CI. Skipped cleanly where clang has no libFuzzer
runtime. A crash, a sanitizer report, a hang (-timeout=10 s per input) or a broken contract
(an image outside eps or the box, an unknown status) fails the run; the reproducer is named in
the report (make -C csrc/tests fuzz keeps it in BUILD)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1] / "csrc" / "tests"


def fuzzer_toolchain(tmp_path):
    clang = os.environ.get("FUZZ") or "clang"
    if shutil.which(clang) is None or shutil.which("make") is None:
        return None
    probe = subprocess.run(
        [clang, "-fsanitize=fuzzer,address,undefined", "-x", "c", "-", "-o",
         str(tmp_path / "probe")],
        input="#include <stdint.h>\n#include <stddef.h>\n"
              "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; "
              "return 0; }\n", capture_output=True, text=True)
    return clang if probe.returncode == 0 else None


def test_core_entry_points_survive_a_minute_of_fuzzing(tmp_path):
    clang = fuzzer_toolchain(tmp_path)
    if clang is None:
        pytest.skip("needs clang with the libFuzzer, ASan and UBSan runtimes")
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    out = subprocess.run(["make", "-C", str(TESTS), f"FUZZ={clang}", f"BUILD={tmp_path}",
                          f"FUZZ_SECONDS={seconds}", "fuzz"], capture_output=True, text=True,
                         timeout=seconds + 300)
    report = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, report
    runs = re.search(r"stat::number_of_executed_units: (\d+)", out.stderr)
    assert runs and int(runs.group(1)) > 1000, report  # the target really ran
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), report
    assert (TESTS / "fuzz_corpus").is_dir() and not list(tmp_path.glob("leak-*")), report
