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
from ..markdown import table as markdown_table


def add_parser(sub):
    """Register the `compare` sub-command."""
    from ._common import add_options, description, nonnegative_int, positive_float, positive_int

    c = sub.add_parser("compare", help="ASR of attacks at matched l-inf AND RMSE "
                       "(docs/fair-comparison.md)", description=description(__doc__))
    c.add_argument("--clean", help="folder of clean images (PNG); with --adv")
    c.add_argument("--adv", nargs="+", default=[], metavar="NAME=DIR",
                   help="adversarial images of an attack: a folder with the clean folder's "
                        "file names")
    add_options(c, "attacks", "surrogates", "data", "n_images", "labels", "victims", "eps",
                "out", "no_resume", "seed", "image_size", "batch_size", "device",
                "allow_subpixel", "quiet", "fuse", "weights", attacks=[], n_images=100,
                eps=16.0,
                out="fairattack-compare",
                attacks_help="fairattack optimizers and named attacks (FGSM PGD MI-FGSM "
                "VMI-FGSM Admix BSR SIA Adam ...), with options as "
                "NAME=OPTIMIZER[:SETTING][,key=value...] (DI=PGD,di_prob=0.5), or peers by name: "
                "ta:PGD,steps=10 (torchattacks), torchattack:VMIFGSM, transferattack:MIFGSM (a "
                "clone on PYTHONPATH); run on --surrogate",
                surrogates_help="the one model the attacks run on (registry name or "
                "TorchScript file; A+B: an ensemble, fused by --fuse); picks the images that "
                "count (those it classifies correctly)")
    c.add_argument("--rmse", nargs="+", type=positive_float, default=[2, 4, 6, 8, 10, 12],
                   metavar="R", help="RMSE budgets in pixels (each at most --eps)")
    c.add_argument("--mode", default="rescale", choices=MODES,
                   help="rescale: match each attack's images after the fact; budget: rerun "
                   "fairattack attacks under the joint budget")
    c.add_argument("--n-boot", type=nonnegative_int, default=1000,
                   help="bootstrap resamples for the CIs")
    c.add_argument("--target", metavar="random|least_likely|FILE",
                   help="a targeted comparison: ASR becomes the targeted success rate; FILE "
                        "has lines 'IMAGE_NAME CLASS' for every image")
    c.add_argument("--loss", choices=("ce", "logit", "margin"),
                   help="the loss fairattack's attacks ascend (default ce; logit: targeted, "
                        "margin: untargeted)")
    c.add_argument("--max-grads", type=positive_int, metavar="K",
                   help="a matched compute budget: fairattack's attacks run within K gradient "
                        "passes per image; peers that spent more are flagged (over_max_grads)")
    c.set_defaults(func=cmd_compare)
    return c


def _check(args):
    """Every argument of compare, before any model is loaded or image read."""
    from .. import peers
    from ..settings import check_pixel_units, make_config
    from ..spec import ATTACK_KEYS, coerce, parse_text
    from ._common import UsageError, check_names, ensemble_weights

    if bool(args.clean) == bool(args.data):
        raise UsageError("give the images either as --clean DIR (with --adv NAME=DIR ...) or "
                         "as --data DIR (with --attacks and --surrogate)")
    if args.clean and not args.adv and not args.attacks:
        raise UsageError("--clean: give the adversarial folders with --adv NAME=DIR ...")
    if args.data and not args.attacks:
        raise UsageError("--data: name the attacks to run with --attacks NAME ...")
    if args.attacks and not args.surrogates:
        raise UsageError("--attacks run on a surrogate: pass --surrogate MODEL")
    if args.surrogates and len(args.surrogates) != 1:
        raise UsageError(f"--surrogate: compare runs on one surrogate, got "
                         f"{len(args.surrogates)}")
    for flag, folder in (("--clean", args.clean), ("--data", args.data)):
        if folder and not Path(folder).is_dir():
            raise UsageError(f"{flag} {folder!r} is not a folder")
    members = args.surrogates[0].split("+") if args.surrogates else []
    ensemble_weights(args.surrogates, args.weights)
    for spec in members + args.victims:
        if spec.endswith((".pt", ".pth", ".ts")) and not Path(spec).is_file():
            raise UsageError(f"model file {spec!r} does not exist")
    for item in args.adv:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"--adv {item!r}: expected NAME=DIR")
        if not Path(folder).is_dir():
            raise UsageError(f"--adv {item!r}: {folder!r} is not a folder")
    try:
        check_pixel_units("eps", args.eps, args.allow_subpixel)
        for r in args.rmse:
            check_pixel_units("rmse", r, args.allow_subpixel)
    except ValueError as error:
        raise UsageError(str(error).replace("allow_subpixel=True", "--allow-subpixel")) \
            from None
    over = [r for r in args.rmse if r > args.eps]
    if over:
        raise UsageError(f"--rmse {over[0]:g} can never be reached with --eps {args.eps:g} (an "
                         "image's RMSE is at most its l-inf): lower --rmse or raise --eps")
    for i, text in enumerate(args.attacks):  # names and hyper-parameters, before any work
        if peers.is_peer_name(text):
            continue
        if "=" not in text:
            check_names([text], ())
        else:
            try:
                spec = parse_text(text)[1]
            except ValueError as error:
                raise UsageError(f"--attacks: {error}") from None
            check_names([spec["optimizer"]], [spec["setting"]] if "setting" in spec else ())
        try:
            attack = coerce(text, f"--attacks {text!r}",
                            allowed=ATTACK_KEYS)
        except (TypeError, ValueError) as error:
            raise UsageError(str(error)) from None
        if attack.kind == "fairattack":
            params = attack.config_params()
            params["allow_subpixel"] = bool(params.get("allow_subpixel") or args.allow_subpixel)
            params.setdefault("eps", args.eps)
            try:
                make_config(attack.optimizer, attack.setting, **params)
            except (TypeError, ValueError) as error:
                raise UsageError(f"--attacks {text!r}: {error}") from None


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


def _target_of(text, names):
    """--target: a named choice, or a file of 'IMAGE_NAME CLASS' lines -> one class per image."""
    from ..data import classes_of_names
    from ._common import target_arg

    table = target_arg(text)
    if not isinstance(table, dict):
        return table
    return classes_of_names(table, names, f"--target {text}")


def _markdown(df, table, path, meta):
    lines = [f"# Fair comparison ({meta['mode']}, eps {meta['eps']:g}, "
             f"{meta['n_images']} images)", "",
             "ASR = mean victim error on the images that count (those the surrogate "
             "classifies correctly); [95% bootstrap CI]; clean_error: the victims' error on "
             "the same clean images (the baseline of ASR); linf and rmse: the attack's own "
             "uint8 images.", ""]
    lines += markdown_table(table.columns, (row for _, row in table.iterrows()))
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

    _check(args)
    args.surrogate = args.surrogates[0] if args.surrogates else None
    members = args.surrogate.split("+") if args.surrogate else []
    victim_specs = model_specs(args.victims, "--victims")
    surrogate, size = None, None
    if len(members) > 1:
        from ..ensemble import EnsembleSpec

        spec = EnsembleSpec(members, args.fuse, args.weights)
        surrogate, size = spec.load(args.device), spec.input_size()
    elif args.surrogate:
        (name, spec), = model_specs([args.surrogate], "--surrogate").items()
        surrogate, size = load_spec(name, spec, args.device), input_size(args.surrogate)
    if args.data:
        size = args.image_size or size
        if size is None:
            raise ValueError(f"--surrogate {args.surrogate!r}: unknown input size; pass "
                             "--image-size")
    victims = {name: load_spec(name, spec, args.device) for name, spec in victim_specs.items()}

    if args.clean:
        images, labels, names, attacks = _folders(args)
        source = f"{args.clean} ({len(names)} images)"
    else:
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
                 seed=args.seed, n_boot=args.n_boot, allow_subpixel=args.allow_subpixel,
                 cache_dir=None if args.no_resume else out / "cache",
                 target=_target_of(args.target, names), loss=args.loss,
                 max_grads=args.max_grads)
    per_image = df.per_image.copy()
    per_image.insert(4, "name", [names[i] for i in per_image["image"]])
    table = comparison_table(df)
    meta = {"mode": args.mode, "eps": args.eps, "n_images": int(df["n_images"].iloc[0]),
            "n_given": len(names), "rmse": sorted(args.rmse), "victims": list(victims),
            "surrogate": args.surrogate, "target": args.target, "loss": args.loss,
            "max_grads": args.max_grads}

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
