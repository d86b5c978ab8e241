"""`fairattack run`: a study on your data, models and settings (under torchrun: shared by K
processes)."""

import time
from pathlib import Path

from ..spec import CONFIG_KEYS, TRANSFORMS, _value, parse_text
from ._common import UsageError, check_names, common_options, rank
from .report import report

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


def _extra_config_options():
    """Config fields of the core that HYPER does not list (e.g. returns, max_rmse)."""
    listed = {name for name, _, _ in HYPER}
    return [k for k in CONFIG_KEYS + TRANSFORMS if k not in listed and k not in NOT_OPTIONS]


def _overrides(args):
    out = {}
    for name in [h[0] for h in HYPER] + _extra_config_options():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def add_parser(sub):
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
    common_options(r)
    r.set_defaults(func=cmd_run)


def cmd_run(args):
    from ..study import run_study

    check_names(args.optimizers, args.settings)
    attacks = {}
    for text in args.attack or ():
        name, spec = parse_text(text)
        if name in attacks:
            raise UsageError(f"--attack: two attacks have the same name {name!r}")
        attacks[name] = spec
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
    if rank() == 0:  # under torchrun, rank 0 speaks for every rank
        print()
        report(df, args.out, started)
    return 0
