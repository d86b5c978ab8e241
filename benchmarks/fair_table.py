"""The fair-comparison table of issue 7 on a folder of ImageNet samples: FGSM, PGD, MI-FGSM,
NI-FGSM, DI, TI and the paper's seven optimizers on EfficientNet-Lite0 -> Lite1/Lite2, each
attack's own l-inf, RMSE and ASR per victim, and its ASR at matched RMSE (rescale mode) with
bootstrap 95% CIs, plus McNemar tests of the sign attacks at each budget.

    python benchmarks/fair_table.py --data IMAGENET_SAMPLES --n 100 --out fair-table

IMAGENET_SAMPLES is a folder of SYNSET_name.JPEG files (e.g. 500, one per class).

Images are processed in chunks (each a `fa.compare` call with its own cache under --out), so an
interrupted run resumes; the table is computed from every finished chunk's per-image outcomes.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

import fairattack as fa
from fairattack import data, models

ATTACKS = ["FGSM", "PGD", "MI-FGSM", "NI-FGSM",
           {"name": "DI", "optimizer": "PGD", "di_prob": 0.5},
           {"name": "TI", "optimizer": "PGD", "ti_kernel": 15},
           "GD", "MGD", "NAGD", "Adam", "LAdam", "AdaB", "MSVAG"]


def bootstrap(fooled, n_boot=1000, seed=0):
    """Percentile 95% CI of the mean of a 0/1 (or fractional) per-image vector."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(fooled), (n_boot, len(fooled)))
    means = fooled[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def mcnemar(a, b):
    """Exact two-sided McNemar p-value of paired 0/1 outcomes (b01: a fooled, b not)."""
    b01, b10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = b01 + b10
    if n == 0:
        return b01, b10, 1.0
    k = min(b01, b10)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return b01, b10, min(1.0, 2 * p)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--chunk", type=int, default=20)
    p.add_argument("--rmse", type=float, nargs="+", default=[4, 8, 12])
    p.add_argument("--out", default="fair-table")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    surrogate = models.get_model("efficientnet-lite0")
    victims = {"lite1": models.get_model("efficientnet-lite1"),
               "lite2": models.get_model("efficientnet-lite2")}
    images, labels, names = data.select(data.open_dataset(args.data), surrogate, n=args.n,
                                        size=224, seed=0)
    frames = []
    for start in range(0, len(images), args.chunk):
        stop = min(start + args.chunk, len(images))
        df = fa.compare(surrogate, images[start:stop], labels[start:stop], ATTACKS, victims,
                        rmse=args.rmse, cache_dir=out / "cache", n_boot=0)
        per = df.per_image.copy()
        per["image"] = per["image"] + start
        frames.append(per)
        print(f"images {start}..{stop} done", flush=True)
    per = pd.concat(frames, ignore_index=True)
    per.to_csv(out / "per_image.csv", index=False)

    rows = []
    for attack, group in per.groupby("attack", sort=False):
        native = group[group["how"] == "native"]
        row = {"attack": attack, "n_images": native["image"].nunique(),
               "linf": native.groupby("image")["linf_image"].first().mean(),
               "rmse": native.groupby("image")["rmse_image"].first().mean()}
        for victim in ("lite1", "lite2"):
            row[f"asr_{victim}"] = native[native["victim"] == victim]["fooled"].mean()
        mean_native = native.groupby("image")["fooled"].mean().to_numpy()
        row["asr_mean"] = mean_native.mean()
        for r in args.rmse:
            at = group[(group["how"] != "native") & (group["rmse"].astype(str) == str(float(r)))]
            if at.empty:
                at = group[(group["how"] != "native") & (group["rmse"].astype(float) == r)]
            fooled = at.groupby("image")["fooled"].mean().to_numpy()
            lo, hi = bootstrap(fooled)
            row[f"asr@{r:g}"] = f"{fooled.mean():.3f} [{lo:.3f}, {hi:.3f}]"
            row[f"unreach@{r:g}"] = int((~at.groupby("image")["reached"].first()).sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False)
    with open(out / "table.md", "w") as f:
        cols = list(table.columns)
        f.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for _, row in table.iterrows():
            f.write("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                      for v in row) + " |\n")
        f.write("\nMcNemar on the same images (victim lite2), sign attacks, native and at "
                "each budget (counts: first fooled and second not, vice versa):\n\n")
        sign = ["FGSM", "PGD", "MI-FGSM", "NI-FGSM"]
        for r in ["native"] + [float(x) for x in args.rmse]:
            for i, a in enumerate(sign):
                for b in sign[i + 1:]:
                    def outcome(name):
                        g = per[(per["attack"] == name) & (per["victim"] == "lite2")]
                        g = g[g["how"] == "native"] if r == "native" else \
                            g[(g["how"] != "native") & (g["rmse"].astype(str) == str(r))]
                        return g.sort_values("image")["fooled"].to_numpy().astype(bool)
                    b01, b10, pv = mcnemar(outcome(a), outcome(b))
                    f.write(f"- r={r}: {a} vs {b}: {b01} vs {b10}, p={pv:.3g}\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
