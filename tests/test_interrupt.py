"""Ctrl-C stops a running `fa.attack` wherever it lands: a real SIGINT sent to a process at many
moments after an attack (re)starts (setup, calibration, first steps, mid-batch, later batches,
the final metrics), which must raise KeyboardInterrupt within a few seconds, never run on."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
import fairattack as fa
from tiny import save_tiny
model = fa.load_model(save_tiny(sys.argv[2], 0))
x = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3)).astype(np.uint8)
y = model.predict(x)
print("ready", flush=True)
for _ in range(len(sys.argv[3:])):
    try:  # GD, fixed: the issue's case; small batches so batches turn over often
        while True:
            fa.attack(model, x, y, optimizer="GD", setting="fixed", max_iter=200, batch_size=4)
    except KeyboardInterrupt:
        print("stopped", time.monotonic(), flush=True)
"""

#: seconds after the attack loop starts (again) at which SIGINT is sent: setup, first steps,
#: the middle of a batch, later batches
DELAYS = [0.0, 0.01, 0.03, 0.1, 0.25, 0.5, 0.8, 1.3]


def test_sigint_stops_an_attack_at_any_moment(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "tests"),
                              str(tmp_path / "tiny.pt"), *map(str, DELAYS)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=tmp_path)  # never the repository root: its source tree has no
    # compiled extension unless built in place (`python -c` puts the cwd first on the path)
    watchdog = threading.Timer(120, child.kill)  # a lost signal fails the test, never hangs it
    watchdog.start()
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for delay in DELAYS:
            time.sleep(delay)
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            line = child.stdout.readline().split()
            assert line and line[0] == "stopped", child.stderr.read()[-2000:]
            took = float(line[1]) - sent
            assert took < 5.0, f"SIGINT {delay} s in: the attack ran on for {took:.1f} s"
        assert child.wait(timeout=20) == 0
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
