"""Scale figures of a study: images/s per cell and peak memory at N = 100 and 1,000 images.

    python benchmarks/bench_study.py                      # EfficientNet-Lite0 -> Lite1, Adam, N=100, 1000
    python benchmarks/bench_study.py --models tiny        # the study layer alone (a tiny net)
    python benchmarks/bench_study.py --n 100 --max-iter 10 --threads 2

Each N runs in a fresh process (so that peak RSS belongs to that N alone) on random uint8 images at
the surrogate's input size, labelled with the surrogate's own predictions (every image is
attacked). One cell (one optimizer, one setting) with one victim. It prints one row per N:

    n             images
    seconds       wall time of run_study (craft + PNGs + victim evaluation + records)
    images/s      n / seconds, per cell
    base_MB       resident memory before run_study (Python, torch, models, the uint8 images)
    peak_MB       peak resident memory of the process
    study_MB      peak_MB - base_MB: what the study itself added
    disk_MB       size of the study folder

Timings only mean something on an otherwise idle machine: say which machine and load when you
quote them.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _tiny_models(folder, size):
    import torch

    from fairattack import models

    class Tiny(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.head = torch.nn.Linear(8 * 4, 1000)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)) * 4.0

    paths = []
    for seed in (0, 1):
        path = Path(folder) / f"tiny{seed}.pt"
        models.export(Tiny(seed), path, input_size=size, mode="tf")
        paths.append(str(path))
    return paths


def child(args):
    import numpy as np

    import fairattack as fa
    from fairattack import models

    work = Path(args.work)
    args.n = args.n[0]
    if args.models == "tiny":
        surrogate, victim = _tiny_models(work, args.size)
        size = args.size
    else:
        surrogate, victim = "efficientnet-lite0", "efficientnet-lite1"
        size = models.input_size(surrogate)
    model = fa.load_model(surrogate) if args.models == "tiny" else models.get_model(surrogate)
    images = np.random.default_rng(0).integers(0, 256, (args.n, size, size, 3), dtype=np.uint8)
    labels = model.predict(images, batch_size=args.batch_size)
    del model
    base = _rss_mb()
    out = work / f"study-{args.n}"
    started = time.perf_counter()
    fa.run_study([surrogate], [victim], (images, labels), optimizers=[args.optimizer],
                 settings=[args.setting], out_dir=out, batch_size=args.batch_size,
                 overrides={"max_iter": args.max_iter}, progress=False,
                 chunk_size=args.chunk_size)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(json.dumps({"n": args.n, "seconds": round(seconds, 2),
                      "images/s": round(args.n / seconds, 3), "base_MB": round(base),
                      "peak_MB": round(peak), "study_MB": round(peak - base),
                      "disk_MB": round(disk, 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--models", choices=("lite", "tiny"), default="lite")
    p.add_argument("--size", type=int, default=224, help="input size of the tiny models")
    p.add_argument("--optimizer", default="Adam")
    p.add_argument("--setting", default="const_loss")
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    print(f"{args.models} models, {args.optimizer} {args.setting}, max_iter {args.max_iter}, "
          f"batch {args.batch_size}, chunk {args.chunk_size}, "
          f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'n':>6} {'seconds':>9} {'images/s':>9} {'base_MB':>8} {'peak_MB':>8} "
          f"{'study_MB':>9} {'disk_MB':>8}")
    for n in args.n:
        with tempfile.TemporaryDirectory() as work:
            command = [sys.executable, __file__, "--child", "--work", work, "--n", str(n),
                       "--models", args.models, "--size", str(args.size), "--optimizer",
                       args.optimizer, "--setting", args.setting, "--max-iter",
                       str(args.max_iter), "--batch-size", str(args.batch_size),
                       "--chunk-size", str(args.chunk_size)]
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                sys.exit(f"n={n} failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{row['n']:>6} {row['seconds']:>9} {row['images/s']:>9} {row['base_MB']:>8} "
                  f"{row['peak_MB']:>8} {row['study_MB']:>9} {row['disk_MB']:>8}")


if __name__ == "__main__":
    sys.exit(main())
