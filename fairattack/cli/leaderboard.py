"""`fairattack leaderboard`: the fair transfer leaderboard (docs/fair-comparison.md) from the
command line.

    fairattack leaderboard --attacks FGSM PGD MI-FGSM DI=PGD,di_prob=0.5 ta:PGD,steps=10 \\
        --surrogates efficientnet-lite0 mobilenet-v2 --victims efficientnet-lite1 \\
        efficientnet-lite2 --data my-imagenet-photos/ --n-images 24 --rmse 1 2 4 8 --out board

Selects --n-images from --data with the first surrogate (the first images it classifies
correctly, the selection protocol); every surrogate then keeps those it classifies correctly.
Writes leaderboard.csv, leaderboard.md and leaderboard.html (static, offline) into --out; each
finished (surrogate, attack) cell is kept under --out/cells, so the same command resumes, and a
cell whose inputs changed is recomputed with a line saying why.
"""

from pathlib import Path

from ..compare import MODES


def add_parser(sub):
    """Register the `leaderboard` sub-command."""
    from ._common import add_options, nonnegative_int, positive_float, positive_int

    c = sub.add_parser("leaderboard", help="attacks x surrogates, natively and at matched RMSE: "
                       "leaderboard.csv/.md/.html", description=__doc__.splitlines()[0])
    add_options(c, "attacks", "surrogates", "victims", "data", "n_images", "labels", "eps",
                "seed", "image_size", "batch_size", "device", "out", "quiet", "fuse",
                "weights", attacks_required=True, surrogates_required=True,
                data_required=True, n_images=24, eps=16.0, out="fairattack-leaderboard",
                attacks_help="fairattack optimizers, NAME=OPTIMIZER[:SETTING][,key=value...] "
                "specs, or peers by name: ta:PGD,steps=10 (torchattacks), torchattack:MIFGSM, "
                "transferattack:MIFGSM (a clone on PYTHONPATH)",
                surrogates_help="registry names or TorchScript files; A+B: an ensemble "
                "(fused by --fuse, weighted by --weights); the first picks the images",
                image_size_help="the first surrogate's input size when its file does not say")
    c.add_argument("--rmse", nargs="+", type=positive_float, default=[1, 2, 4, 8], metavar="R",
                   help="RMSE budgets in pixels (default: 1 2 4 8)")
    c.add_argument("--mode", default="rescale", choices=MODES, help="(default: rescale)")
    c.add_argument("--examples", type=nonnegative_int, default=3,
                   help="adversarial images per attack on the page (default: 3)")
    c.add_argument("--max-grads", type=positive_int, metavar="K",
                   help="a matched compute budget: fairattack's attacks run within K gradient "
                        "passes per image; peers that spent more are flagged (over_max_grads)")
    c.add_argument("--n-boot", type=nonnegative_int, default=1000,
                   help="bootstrap resamples (default: 1000)")
    c.set_defaults(func=cmd_leaderboard)
    return c


def cmd_leaderboard(args):
    from .. import data
    from .._model import input_size, load_spec, model_specs
    from ..leaderboard import checked_budgets, leaderboard
    from ..ensemble import EnsembleSpec
    from ..spec import coerce
    from ._common import ensemble_weights

    # everything checked before any work (and before --out is made)
    try:
        budgets = checked_budgets(args.rmse, args.eps)
    except ValueError as error:
        raise ValueError(f"--rmse/--eps: {error}") from None
    for attack in args.attacks:
        coerce(attack, f"--attacks {attack!r}")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is not a folder")
    ensemble_weights(args.surrogates, args.weights)
    surrogates, sizes = {}, []
    for text in args.surrogates:
        if "+" in text:  # an ensemble: its members fused, its images at its largest size
            spec = EnsembleSpec(text.split("+"), args.fuse, args.weights)
            surrogates[spec.name] = spec.load(args.device)
            sizes.append(spec.input_size())
        else:
            for name, one in model_specs([text], "--surrogates").items():
                surrogates[name] = load_spec(name, one, args.device)
            sizes.append(input_size(text))
    victims = {name: load_spec(name, spec, args.device)
               for name, spec in model_specs(args.victims, "--victims").items()}
    first = next(iter(surrogates))
    size = args.image_size or sizes[0]
    if size is None:
        raise ValueError(f"--surrogates {args.surrogates[0]!r}: unknown input size; pass "
                         "--image-size")
    dataset = data.open_dataset(args.data, labels=args.labels)
    images, labels, names = data.select(dataset, surrogates[first], args.n_images, size,
                                        seed=args.seed, batch_size=args.batch_size,
                                        progress=not args.quiet)
    print(f"data: {args.data}, {len(names)} images ({first} classifies them correctly); "
          f"attacks: {', '.join(args.attacks)}; surrogates: {', '.join(surrogates)}; victims: "
          f"{', '.join(victims)}; mode {args.mode}, eps {args.eps:g}")
    table = leaderboard(surrogates, images, labels, args.attacks, victims, rmse=budgets,
                        eps=args.eps, mode=args.mode, out=args.out, n_boot=args.n_boot,
                        seed=args.seed, batch_size=args.batch_size, examples=args.examples,
                        device=args.device, progress=not args.quiet,
                        max_grads=args.max_grads)
    print((Path(args.out) / "leaderboard.md").read_text())
    print(f"{len(table.attrs['reused'])} of {table.attrs['cells']} cells reused from {args.out}")
    for path in table.attrs["files"]:
        print(f"written: {path}")
    return 0
