"""Bounded memory (issue 8 item 4): fa.attack preallocates its uint8 output and measures per
batch, so its peak memory above the uint8 input stays within 2.5x that input at any N.

Measured in a fresh subprocess with a free Python oracle (no model): tracemalloc sees every NumPy
allocation (the output, per-batch floats, the oracle's arrays); the C core's own per-batch state
is bounded by the batch size. The peak RSS growth is checked too, which sees everything.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fairattack

SCRIPT = r"""
import json, resource, sys, tracemalloc
import numpy as np
import fairattack as fa

n, size, batch_size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pattern = np.sin(np.arange(size * size * 3, dtype=np.float32)).reshape(size, size, 3)

def free_oracle(x, labels, want_grad):
    # a linear loss; its gradient is a fixed pattern: no model, almost no memory
    loss = (x * pattern).sum(axis=(1, 2, 3)) / x[0].size
    return loss, labels.copy(), np.broadcast_to(pattern, x.shape)

images = np.empty((n, size, size, 3), np.uint8)
for i in range(n):  # filled image by image: no whole-dataset temporary
    images[i] = (np.arange(size * size * 3) * (i + 7) % 251).reshape(size, size, 3)
labels = np.arange(n) % 1000
fa.attack(free_oracle, images[:2], labels[:2], "PGD", max_iter=2)  # warm up every code path

rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
res = fa.attack(free_oracle, images, labels, "PGD", max_iter=2, batch_size=batch_size)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert res.images.shape == images.shape and np.all(res.linf <= 16)
assert np.all(res.rmse > 0)
print(json.dumps({"input": images.nbytes, "traced_peak": peak,
                  "rss_growth": max(rss_after - rss_before, 0)}))
"""


def measure(n, size, batch_size, cwd):
    # the child imports the fairattack this test imported (installed, or a built checkout), not
    # whatever `fairattack/` folder the working directory holds
    package_root = str(Path(fairattack.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                         if p)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(size), str(batch_size)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n, size, batch_size", [
    (200, 112, 8),                                                   # about 10 s
    pytest.param(1500, 224, 16, marks=pytest.mark.slow),             # the case, ~1 min
])
def test_attack_memory_above_the_input_is_bounded(n, size, batch_size, tmp_path):
    m = measure(n, size, batch_size, tmp_path)
    # the uint8 output is 1x the input; everything else must be per batch
    assert m["traced_peak"] <= 2.5 * m["input"], m
    assert m["rss_growth"] <= 2.5 * m["input"], m
