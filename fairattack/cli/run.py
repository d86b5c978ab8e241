"""`fairattack run`: a study on your data, models and settings (under torchrun: shared by K
processes)."""

import time
from pathlib import Path

from ..spec import CONFIG_KEYS, TRANSFORMS, _value
from ._common import (UsageError, add_options, check_names, common_options, description,
                      ensemble_weights, target_arg,
                      nonnegative_float, nonnegative_int, positive_float, positive_int, rank)
from .report import report

# every hyper-parameter of make_config as an option: (flag, type, help)
HYPER = (("eps", positive_float, "l-inf budget in pixels of [0, 255] images (16; 8, not "
          "8/255)"),
         ("max_iter", positive_int, "step cap (per optimizer and setting by default)"),
         ("first_step_rmse", positive_float, "calibrate alpha so the first step has this RMSE"),
         ("alpha", positive_float, "a fixed step size instead of calibration, pixels"),
         ("stop_loss", float, "stop an image at this cross-entropy, nats (30; inf: never)"),
         ("stop_rmse", nonnegative_float, "stop an image at this RMSE (const_rmse: 15)"),
         ("rmse_weight", nonnegative_float, "gamma of the CE + gamma*RMSE objective (rmse_loss: "
          "6)"),
         ("momentum", float, "MGD/NAGD mu (0.9), MI/NI-FGSM mu (1.0)"),
         ("beta1", float, "Adam family beta1 (0.9)"),
         ("beta2", float, "Adam family beta2 (0.999)"),
         ("delta", float, "Adam family epsilon (1e-8)"),
         ("ladam_lambda", float, "LAdam lambda (1e-12)"),
         ("adamw_decay", float, "AdamW-style decay (0.005)"),
         ("msvag_beta", float, "M-SVAG beta (0.9)"),
         ("rmsprop_rho", float, "RMSProp rho (0.9)"),
         ("nesterov", str, "NAGD variant"),
         ("returns", str, "which iterate an image that hits the step cap returns (default: "
          "best for the loss-stopped settings, last for fixed)"),
         ("random_start", nonnegative_int, "PGD: 1 starts from a random point of the eps-ball"),
         ("di_prob", nonnegative_float, "DI: probability of the random resize-and-pad per "
          "step"),
         ("ti_kernel", nonnegative_int, "TI: odd size of the Gaussian kernel smoothing the "
          "gradient"),
         ("si_copies", nonnegative_int, "SI: number of scaled copies averaged"))
#: the options with a fixed set of values
CHOICES = {"nesterov": ("authors", "textbook"), "returns": ("best", "last")}
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
                       "shared by K processes)", description=description(__doc__))
    add_options(r, "surrogates", "victims", "data", "labels", "n_images", "attacks", "seed",
                "out", "no_resume", "image_size", "allow_subpixel", "fuse", "weights",
                surrogates_required=True, data_required=True, out="fairattack-study",
                surrogates_help="registry names (fairattack models, any case) or TorchScript "
                "files (fairattack export); A+B is an ensemble of A and B (fused by --fuse)",
                n_images_help="images per surrogate (default 1000; --n: the same, but "
                "torchrun does not pass it through)",
                attacks_help="optimizer names or NAME=OPTIMIZER[:SETTING][,key=value...] "
                "(pgd-di=PGD:fixed,di_prob=0.5 adam8=Adam,eps=8,max_iter=20); without :SETTING "
                "an attack runs under every --settings (or its own default)")
    r.add_argument("--rounding", default="round", choices=("round", "truncate"), type=str.lower,
                   help="float -> uint8 of the adversarial images")
    r.add_argument("--chunk-size", type=positive_int, default=256,
                   help="images per work item")
    r.add_argument("--target", default=None, metavar="random|least_likely|FILE",
                   help="targeted attacks: every image aims at a random other class, the "
                   "surrogate's least likely one, or the class FILE gives it (lines "
                   "'IMAGE_NAME CLASS'); error rates become target success rates")
    r.add_argument("--loss", choices=("ce", "logit", "margin"), default=None,
                   help="the loss the attacks ascend (default ce; logit: targeted, margin: "
                   "untargeted)")
    for name, kind, text in HYPER:
        r.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text,
                       choices=CHOICES.get(name))
    for name in _extra_config_options():
        r.add_argument("--" + name.replace("_", "-"), type=_value, default=None,
                       help=f"the core's {name} (see fairattack.make_config)")
    common_options(r)
    r.set_defaults(func=cmd_run)
    return r


def _attacks(texts):
    """(optimizer names, {name: spec}) of --attacks: plain optimizer names and named specs."""
    from ..spec import parse_text

    optimizers, attacks = [], {}
    for text in texts or ():
        if "=" not in text:
            check_names([text], ())
            optimizers.append(text)
            continue
        name, spec = parse_text(text)
        check_names([spec["optimizer"]], [spec["setting"]] if "setting" in spec else ())
        if name in attacks:
            raise UsageError(f"--attacks: two attacks have the same name {name!r}")
        attacks[name] = spec
    return optimizers, attacks


def _check_overrides(overrides, allow_subpixel):
    """Each hyper-parameter option checked alone, the error naming the option (--beta1), not
    the first cell that would use it."""
    from ..settings import make_config

    for key, value in overrides.items():
        given = {key: value}
        if "eps" in overrides:  # the bounds that depend on it (stop_rmse <= eps) see it
            given["eps"] = overrides["eps"]
        try:
            make_config("GD", allow_subpixel=allow_subpixel, **given)
        except (TypeError, ValueError) as error:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {value}: " + str(error).replace(
                "allow_subpixel=True", "--allow-subpixel")) from None


def cmd_run(args):
    from ..study import run_study

    check_names(args.optimizers, args.settings)
    named_optimizers, attacks = _attacks(args.attacks)
    optimizers = args.optimizers
    if named_optimizers:
        optimizers = (optimizers or []) + named_optimizers
    if not Path(args.data).exists():
        raise UsageError(f"--data {args.data!r} does not exist")
    members = [m for spec in args.surrogates for m in spec.split("+")]
    ensemble_weights(args.surrogates, args.weights)
    target = target_arg(args.target)
    for spec in members + args.victims:
        if spec.endswith((".pt", ".pth", ".ts")) and not Path(spec).is_file():
            raise UsageError(f"model file {spec!r} does not exist")
    started = time.time()
    overrides = _overrides(args)
    _check_overrides(overrides, args.allow_subpixel)
    if args.allow_subpixel:
        overrides["allow_subpixel"] = True
    df = run_study(args.surrogates, args.victims, args.data, optimizers=optimizers,
                   attacks=attacks or None, settings=args.settings, out_dir=args.out,
                   n_images=args.n_images, seed=args.seed, batch_size=args.batch_size,
                   overrides=overrides or None, resume=not args.no_resume,
                   progress=not args.quiet, labels=args.labels, device=args.device,
                   rounding=args.rounding, image_size=args.image_size,
                   chunk_size=args.chunk_size, target=target, loss=args.loss,
                   fuse=args.fuse, weights=args.weights)
    if rank() == 0:  # under torchrun, rank 0 speaks for every rank
        print()
        report(df, args.out, started)
    return 0
