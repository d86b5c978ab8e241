"""The `fairattack` command: demo, run, report, models.

    fairattack demo                      # Lite0 -> Lite1/Lite2 on photos scikit-image ships
    fairattack demo --data my-imagenet-photos/ --n 32
    fairattack run --surrogates efficientnet-lite0 my_resnet.pt --victims efficientnet-lite2 \\
        --data /data/imagenet/val --labels val.txt --n-images 1000 --settings const_loss rmse_loss \\
        --attack pgd-di=PGD:fixed,di_prob=0.5 --attack adam8=Adam,eps=8
    torchrun --standalone --nproc-per-node 4 -m fairattack run ...   # the same, 4 processes
    fairattack report fairattack-study
    fairattack compare --clean clean/ --adv pgd=pgd/ mi=mi/ --victims efficientnet-lite1
    fairattack models
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from .settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS, optimizer_index

DEMO_SURROGATE = "efficientnet-lite0"
DEMO_VICTIMS = ("efficientnet-lite1", "efficientnet-lite2")
TABLE_COLUMNS = ("surrogate", "attack", "optimizer", "setting", "n_images", "n_skipped",
                 "n_failed", "n_target_not_reached", "rmse", "linf", "l2", "l0", "psnr", "ssim",
                 "loss", "iterations", "surrogate_fooling_rate")

# every hyper-parameter of make_config as an option: (flag, type, help)
HYPER = (("eps", float, "l-inf budget in pixels (16)"),
         ("max_iter", int, "step cap (per optimizer and setting by default)"),
         ("first_step_rmse", float, "calibrate alpha so the first step has this RMSE"),
         ("alpha", float, "a fixed step size instead of calibration"),
         ("stop_loss", float, "stop an image at this cross-entropy, nats (30; inf: never)"),
         ("stop_rmse", float, "stop an image at this RMSE (const_rmse: 15)"),
         ("rmse_weight", float, "gamma of the CE + gamma*RMSE objective (rmse_loss: 6)"),
         ("momentum", float, "MGD/NAGD mu (0.9), MI/NI-FGSM mu (1.0)"),
         ("beta1", float, "Adam family beta1 (0.9)"),
         ("beta2", float, "Adam family beta2 (0.999)"),
         ("delta", float, "Adam family epsilon (1e-8)"),
         ("ladam_lambda", float, "LAdam lambda (1e-12)"),
         ("adamw_decay", float, "AdamW-style decay (0.005)"),
         ("msvag_beta", float, "M-SVAG beta (0.9)"),
         ("rmsprop_rho", float, "RMSProp rho (0.9)"),
         ("nesterov", str, "NAGD variant: authors (default) or textbook"),
         ("random_start", int, "PGD: 1 starts from a random point of the eps-ball"),
         ("di_prob", float, "DI: probability of the random resize-and-pad per step"),
         ("ti_kernel", int, "TI: odd size of the Gaussian kernel smoothing the gradient"),
         ("si_copies", int, "SI: number of scaled copies averaged"))
#: config fields that are not options of `run` (the attack's own seed is an --attack key)
NOT_OPTIONS = ("seed", "index_offset", "skip_misclassified")


class UsageError(Exception):
    """A mistake of the user's: one line on stderr and exit status 2."""


def _table(df, victims=True):
    import pandas as pd

    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    if victims:
        cols += [c for c in df.columns if c.startswith("err_")] + \
            [c for c in ("asr", "asr_ci_low", "asr_ci_high", "seconds") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.float_format", "{:.3f}".format):
        return df[cols].to_string(index=False)


def _figures(df, out_dir):
    """The figures a results table supports; returns the paths written."""
    from . import figures

    written = []
    if "attack" in df.columns:  # figures label cells by "optimizer": name them by attack
        df = df.assign(optimizer=df["attack"])
    settings = list(dict.fromkeys(df["setting"]))
    for setting in settings:
        path = out_dir / f"asr_rmse_{setting}.png"
        figures.plot_asr_rmse(df, path, settings=setting)
        written.append(path)
    if "const_loss" in settings and "rmse_loss" in settings:
        path = out_dir / "asr_rmse_fig1.png"
        figures.plot_asr_rmse(df, path, settings=("const_loss", "rmse_loss"))
        written.append(path)
    path = out_dir / "asr_vs_rmse.png"
    figures.plot_scatter(df, path)
    written.append(path)
    return written


def _markdown(df, path):
    cols = [c for c in TABLE_COLUMNS if c in df.columns] + \
        [c for c in df.columns if c.startswith("err_")] + \
        [c for c in ("asr", "asr_ci_low", "asr_ci_high") if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    path.write_text("\n".join(lines) + "\n")
    return path


def _gallery(out_dir, surrogate, setting, optimizers, clean, names):
    """Fig. 3 for the first image: the clean photo and each optimizer's adversarial image."""
    import numpy as np
    from PIL import Image

    from . import figures
    from .store import StudyFolder, png_names

    adversarials = {}
    png_name = png_names(names)[0]
    for optimizer in optimizers:
        png = StudyFolder(out_dir).cell_dir(surrogate, setting, optimizer) / "adv" / png_name
        if png.is_file():
            adversarials[optimizer] = np.asarray(Image.open(png).convert("RGB"))
    if not adversarials:
        return None
    path = out_dir / "gallery.png"
    figures.plot_gallery(clean[0], adversarials, path=path,
                         title=f"{names[0]}: {surrogate}, {setting}")
    return path


def _extra_config_options():
    """Config fields of the core that HYPER does not list (e.g. returns, max_rmse)."""
    from .study import CONFIG_KEYS

    listed = {name for name, _, _ in HYPER}
    return [k for k in CONFIG_KEYS if k not in listed and k not in NOT_OPTIONS]


def _overrides(args):
    out = {}
    for name in [h[0] for h in HYPER] + _extra_config_options():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def _value(text):
    """An --attack value: int, float, or the text itself ("textbook", "best")."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_attack(text):
    """NAME=OPTIMIZER[:SETTING][,key=value...] -> (name, spec dict)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise UsageError(f"--attack {text!r}: expected NAME=OPTIMIZER[:SETTING][,key=value...]")
    head, *pairs = rest.split(",")
    optimizer, _, setting = head.partition(":")
    spec = {"optimizer": optimizer.strip()}
    if setting.strip():
        spec["setting"] = setting.strip()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise UsageError(f"--attack {text!r}: {pair!r} is not key=value")
        if key in spec or key in ("optimizer", "setting"):
            raise UsageError(f"--attack {text!r}: {key!r} given twice")
        spec[key] = _value(value.strip())
    return name, spec


def _check_names(optimizers, settings):
    for o in optimizers or ():
        try:
            optimizer_index(o)
        except ValueError:
            raise UsageError(f"unknown optimizer {o!r}; choose from {', '.join(OPTIMIZERS)}") \
                from None
    for s in settings:
        if s.lower() not in SETTINGS:
            raise UsageError(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")


def _report(df, out_dir, started=None):
    print(_table(df))
    out_dir = Path(out_dir)
    written = _figures(df, out_dir) + [_markdown(df, out_dir / "results.md")]
    if started is not None:
        print(f"\n{len(df)} cells in {time.time() - started:.0f} s")
    print(f"results: {out_dir / 'results.csv'}")
    for path in written:
        print(f"figure/table: {path}")
    return written


def _rank():
    return int(os.environ.get("RANK", "0"))


# ----------------------------------------------------------------------------- commands

def cmd_demo(args):
    from . import data, models
    from .study import run_study

    _check_names(args.optimizers, args.settings)
    optimizers = args.optimizers or list(PAPER_OPTIMIZERS)
    started = time.time()
    size = models.input_size(DEMO_SURROGATE)
    if args.data is None:
        images, labels, names = data.demo_photos(size)
        source = (images, labels, names)
        print(f"data: {len(names)} photos shipped with scikit-image ({', '.join(names)})")
    else:
        if not Path(args.data).is_dir():
            raise UsageError(f"--data {args.data!r} is not a folder")
        source = args.data
        print(f"data: {args.data}, the first {args.n} images {DEMO_SURROGATE} classifies "
              "correctly (seeded order)")
    print(f"surrogate {DEMO_SURROGATE}, victims {', '.join(DEMO_VICTIMS)}; "
          f"{len(optimizers)} optimizers x {', '.join(args.settings)}")
    df = run_study([DEMO_SURROGATE], list(DEMO_VICTIMS), source, optimizers=optimizers,
                   settings=args.settings, out_dir=args.out, n_images=args.n,
                   batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    print()
    _report(df, args.out, started)
    if args.data is None:
        clean = source[0]
        names = source[2]
    else:
        import json

        import numpy as np

        from .store import StudyFolder

        selection = StudyFolder(args.out).selection_dir(DEMO_SURROGATE)
        clean = np.load(selection / "images.npy", mmap_mode="r")
        names = json.loads((selection / "names.json").read_text())
    path = _gallery(Path(args.out), DEMO_SURROGATE, df.loc[0, "setting"],
                    list(df.loc[df["setting"] == df.loc[0, "setting"], "attack"]), clean, names)
    if path:
        print(f"figure/table: {path}")
    return 0


def cmd_run(args):
    from .study import run_study

    _check_names(args.optimizers, args.settings)
    attacks = dict(parse_attack(text) for text in args.attack or ())
    if len(attacks) != len(args.attack or ()):
        raise UsageError("--attack: two attacks have the same name")
    if not Path(args.data).exists():
        raise UsageError(f"--data {args.data!r} does not exist")
    for spec in args.surrogates + args.victims:
        if spec.endswith((".pt", ".pth", ".ts")) and not Path(spec).is_file():
            raise UsageError(f"model file {spec!r} does not exist")
    started = time.time()
    df = run_study(args.surrogates, args.victims, args.data, optimizers=args.optimizers,
                   attacks=attacks or None, settings=args.settings, out_dir=args.out,
                   n_images=args.n_images, seed=args.seed, batch_size=args.batch_size,
                   overrides=_overrides(args) or None, resume=not args.no_resume,
                   progress=not args.quiet, labels=args.labels, device=args.device,
                   rounding=args.rounding, image_size=args.image_size,
                   chunk_size=args.chunk_size)
    if _rank() == 0:  # under torchrun, rank 0 speaks for every rank
        print()
        _report(df, args.out, started)
    return 0


def cmd_report(args):
    from .study import load_results

    if not Path(args.out_dir).is_dir():
        raise UsageError(f"{args.out_dir!r} is not a results folder")
    df = load_results(args.out_dir)
    if df is None or len(df) == 0:
        raise UsageError(f"{args.out_dir!r} holds no finished cells")
    _report(df, args.out_dir)
    return 0


def cmd_models(args):
    from . import models

    for name in models.available_models():
        print(f"{name:24s} input {models.input_size(name)}")
    print("(or any TorchScript file: see fairattack.models.export for wrapping your own net)")
    return 0


# ----------------------------------------------------------------------------- parser

def _common(p):
    p.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                   help=f"from {', '.join(OPTIMIZERS)}, any case (default: the paper's seven, "
                   "unless --attack is given)")
    p.add_argument("--settings", nargs="+", default=["const_loss"], metavar="NAME",
                   help=f"from {', '.join(SETTINGS)} (default: const_loss)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), type=str.lower,
                   help="cuda: under torchrun each rank uses GPU LOCAL_RANK")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parser():
    p = argparse.ArgumentParser(prog="fairattack", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="EfficientNet-Lite0 -> Lite1/Lite2, end to end")
    d.add_argument("--data", help="a folder of images (default: photos scikit-image ships)")
    d.add_argument("--n", type=int, default=None,
                   help="images to select from --data (default 16)")
    d.add_argument("--out", default="fairattack-demo", help="results folder")
    _common(d)
    d.set_defaults(func=cmd_demo)

    # every option of `run` is spelled so that it is no prefix of a torchrun option (torchrun
    # resolves abbreviations of its own options even after the script: `--n` would be taken
    # for --nnodes/--nproc-per-node); tests/test_cli.py checks this against torchrun's parser
    r = sub.add_parser("run", help="a study on your data, models and settings (torchrun: "
                       "shared by K processes)")
    r.add_argument("--surrogates", nargs="+", required=True, metavar="MODEL",
                   help="registry names (fairattack models, any case) or TorchScript files")
    r.add_argument("--victims", nargs="+", required=True, metavar="MODEL")
    r.add_argument("--data", required=True, help="an image folder (ImageNet val, synset "
                   "folders, or SYNSET_name files)")
    r.add_argument("--labels", help="the val label file (lines 'FILE INDEX')")
    r.add_argument("--n-images", "--n", dest="n_images", type=int, default=None,
                   help="images per surrogate (default 1000; --n is an alias that torchrun "
                   "does not pass through)")
    r.add_argument("--attack", action="append", metavar="NAME=OPTIMIZER[:SETTING][,k=v...]",
                   help="a named attack, e.g. pgd-di=PGD:fixed,di_prob=0.5 or "
                   "adam8=Adam,eps=8,max_iter=20 (repeatable; without :SETTING it runs under "
                   "every --settings)")
    r.add_argument("--seed", type=int, default=0, help="selection seed (and of the ASR "
                   "bootstrap)")
    r.add_argument("--out", default="fairattack-study", help="results folder (resumable, "
                   "shared by all processes)")
    r.add_argument("--no-resume", action="store_true", help="recompute finished cells")
    r.add_argument("--rounding", default="round", choices=("round", "truncate"), type=str.lower)
    r.add_argument("--image-size", type=int, default=None,
                   help="input size of surrogates whose TorchScript file does not say")
    r.add_argument("--chunk-size", type=int, default=256,
                   help="images per work item (default 256)")
    for name, kind, text in HYPER:
        r.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    for name in _extra_config_options():
        r.add_argument("--" + name.replace("_", "-"), type=_value, default=None,
                       help=f"the core's {name} (see fairattack.make_config)")
    _common(r)
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="table and figures of every cell in a results folder")
    rep.add_argument("out_dir")
    rep.set_defaults(func=cmd_report)

    m = sub.add_parser("models", help="the registered models")
    m.set_defaults(func=cmd_models)

    from .compare_cmd import add_parser as add_compare
    add_compare(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each: `fairattack: recomputing cell ...: the surrogate's file
    changed`."""
    print(f"fairattack: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command == "demo" and args.n is None and args.data is not None:
        args.n = 16
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nfairattack: interrupted; finished work is kept, run the same command again "
              "to resume", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, KeyError, FileNotFoundError, ModuleNotFoundError,
            RuntimeError, OSError) as error:
        if os.environ.get("FAIRATTACK_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fairattack: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
