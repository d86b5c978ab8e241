"""`fairattack compare`: the fair comparison (docs/fair-comparison.md) from the command line.

    fairattack compare --clean clean/ --adv pgd=pgd_pngs/ mi=mi_pngs/ \\
        --victims efficientnet-lite1 --rmse 4 8 12 --out cmp
    fairattack compare --attacks FGSM PGD MI-FGSM DI=PGD,di_prob=0.5 Adam \\
        --surrogate efficientnet-lite0 --data my-imagenet-photos/ --n-images 100 \\
        --victims efficientnet-lite1 --mode budget

Writes compare.csv (the tidy table), compare.json, compare.md (one row per attack),
per_image.csv (every image's outcome, for `fairattack.paired_test`) and asr_at_rmse.png into
--out. Per (attack, budget) results are kept under --out/cache keyed by what determines them
(images, model files, attack, budget), so the same command resumes where it stopped.
"""

from pathlib import Path

from ..compare import MODES


def add_parser(sub):
    """Register the `compare` sub-command."""
    c = sub.add_parser("compare", help="ASR of attacks at matched l-inf AND RMSE (docs/fair-comparison.md)",
                       description=__doc__.splitlines()[0])
    c.add_argument("--clean", help="folder of clean images (PNG); with --adv")
    c.add_argument("--adv", nargs="+", default=[], metavar="NAME=DIR",
                   help="adversarial images of an attack: a folder with the clean folder's "
                        "file names")
    c.add_argument("--attacks", nargs="+", default=[], metavar="NAME",
                   help="fairattack optimizers (FGSM PGD MI-FGSM NI-FGSM Adam ...), with "
                        "options as NAME=OPTIMIZER[:SETTING][,key=value...] "
                        "(DI=PGD,di_prob=0.5), or ta:NAME (torchattacks); run on --surrogate")
    c.add_argument("--surrogate", metavar="MODEL",
                   help="registry name or TorchScript file; picks the images that count (those "
                        "it classifies correctly) and runs --attacks")
    c.add_argument("--data", help="an image folder to select --n-images from (with --attacks)")
    c.add_argument("--n-images", type=int, default=100, help="images to select from --data")
    c.add_argument("--labels", help="label file (lines 'FILE INDEX'); default: SYNSET_name "
                                    "file names")
    c.add_argument("--victims", nargs="+", required=True, metavar="MODEL")
    c.add_argument("--rmse", nargs="+", type=float, default=[2, 4, 6, 8, 10, 12],
                   metavar="R", help="RMSE budgets in pixels")
    c.add_argument("--mode", default="rescale", choices=MODES)
    c.add_argument("--eps", type=float, default=16.0, help="l-inf budget in pixels (16)")
    c.add_argument("--out", default="fairattack-compare", help="results folder (resumable)")
    c.add_argument("--no-resume", action="store_true", help="recompute every cell")
    c.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    c.add_argument("--seed", type=int, default=0, help="selection, attacks and bootstrap seed")
    c.add_argument("--image-size", type=int, default=None,
                   help="--data: the surrogate's input size when its file does not say")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compare)
    return c


def _folders(args):
    """(clean uint8, labels, names, [(attack name, adv uint8)]) from --clean and --adv."""
    from .. import data

    files, clean = data.read_image_folder(args.clean, "--clean")
    labels = data.labels_of_files(files, args.labels)
    attacks = []
    for item in args.adv:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--adv {item!r}: expected NAME=DIR")
        attacks.append((name, data.read_matching_folder(folder, files, clean,
                                                         f"--adv {name}={folder}")))
    return clean, labels, [f.name for f in files], attacks


def _markdown(df, table, path, meta):
    lines = [f"# Fair comparison ({meta['mode']}, eps {meta['eps']:g}, "
             f"{meta['n_images']} images)", "",
             "ASR = mean victim error on the images that count (those the surrogate "
             "classifies correctly); [95% bootstrap CI]; clean_error: the victims' error on "
             "the same clean images (the baseline of ASR); linf and rmse: the attack's own "
             "uint8 images.", ""]
    cols = list(table.columns)
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    unreachable = df[(df["how"] != "native") & (df["victim"] == "mean") &
                     (df["n_unreachable"] > 0)]
    if len(unreachable):
        lines += ["", "Images below the budget (evaluated at their largest RMSE <= r):", ""]
        for _, row in unreachable.iterrows():
            lines.append(f"- {row['attack']} at RMSE {row['rmse']:g}: {row['n_unreachable']} "
                         f"of {row['n_images']}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cmd_compare(args):
    import pandas as pd

    from .. import data, figures
    from .._model import input_size, load_spec, model_specs
    from ..compare import compare, comparison_table
    from ..store import write_comparison

    if bool(args.clean) == bool(args.data):
        raise ValueError("give the images either as --clean DIR (with --adv NAME=DIR ...) or as "
                         "--data DIR (with --attacks and --surrogate)")
    if args.clean and not args.adv and not args.attacks:
        raise ValueError("--clean: give the adversarial folders with --adv NAME=DIR ...")
    if args.data and not args.attacks:
        raise ValueError("--data: name the attacks to run with --attacks NAME ...")
    if args.attacks and not args.surrogate:
        raise ValueError("--attacks run on a surrogate: pass --surrogate MODEL")
    for spec in [args.surrogate] + args.victims:
        if spec and spec.endswith((".pt", ".pth", ".ts")) and not Path(spec).is_file():
            raise ValueError(f"model file {spec!r} does not exist")
    surrogate = None
    if args.surrogate:
        (name, spec), = model_specs([args.surrogate], "--surrogate").items()
        surrogate = load_spec(name, spec, args.device)
    victims = {name: load_spec(name, spec, args.device)
               for name, spec in model_specs(args.victims, "--victims").items()}

    if args.clean:
        images, labels, names, attacks = _folders(args)
        source = f"{args.clean} ({len(names)} images)"
    else:
        if not Path(args.data).is_dir():
            raise ValueError(f"--data {args.data!r} is not a folder")
        size = args.image_size or input_size(args.surrogate)
        if size is None:
            raise ValueError(f"--surrogate {args.surrogate!r}: unknown input size; pass "
                             "--image-size")
        if args.n_images < 1:
            raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
        dataset = data.open_dataset(args.data, labels=args.labels)
        images, labels, names = data.select(dataset, surrogate, args.n_images, size,
                                            seed=args.seed, batch_size=args.batch_size,
                                            progress=not args.quiet)
        attacks = []
        source = f"{args.data}, the first {len(names)} images the surrogate gets right"
    # optimizer names, ta:NAME and NAME=OPTIMIZER[:SETTING][,k=v] texts: fairattack.spec reads them
    attacks += list(args.attacks)
    attack_names = [a.partition("=")[0] if isinstance(a, str) else a[0] for a in attacks]
    print(f"data: {source}; attacks: {', '.join(attack_names)}; victims: {', '.join(victims)}; "
          f"mode {args.mode}, eps {args.eps:g}")

    out = Path(args.out)
    df = compare(surrogate, images, labels, attacks, victims, rmse=args.rmse, mode=args.mode,
                 eps=args.eps, batch_size=args.batch_size, progress=not args.quiet,
                 seed=args.seed, n_boot=args.n_boot,
                 cache_dir=None if args.no_resume else out / "cache")
    per_image = df.per_image.copy()
    per_image.insert(4, "name", [names[i] for i in per_image["image"]])
    table = comparison_table(df)
    meta = {"mode": args.mode, "eps": args.eps, "n_images": int(df["n_images"].iloc[0]),
            "n_given": len(names), "rmse": sorted(args.rmse), "victims": list(victims),
            "surrogate": args.surrogate}

    write_comparison(out, df, per_image, meta)
    _markdown(df, table, out / "compare.md", meta)
    figures.plot_asr_at_rmse(df, out / "asr_at_rmse.png")
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    print(f"\n{meta['n_images']} of {len(names)} images count (the surrogate classifies them "
          f"correctly); {df.attrs['cached_cells']} of {df.attrs['cells']} cells from the cache")
    for name in ("compare.csv", "compare.json", "compare.md", "per_image.csv",
                 "asr_at_rmse.png"):
        print(f"written: {out / name}")
    return 0
