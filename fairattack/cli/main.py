"""The `fairattack` command: demo, run, report, compare, leaderboard, models.

    fairattack demo                      # Lite0 -> Lite1/Lite2/MobileNetV2 on photos scikit-image ships
    fairattack demo --data my-imagenet-photos/ --n 32
    fairattack run --surrogates efficientnet-lite0 my_resnet.pt --victims efficientnet-lite2 \\
        --data /data/imagenet/val --labels val.txt --n-images 1000 --settings const_loss rmse_loss \\
        --attack pgd-di=PGD:fixed,di_prob=0.5 --attack adam8=Adam,eps=8
    torchrun --standalone --nproc-per-node 4 -m fairattack run ...   # the same, 4 processes
    fairattack report fairattack-study
    fairattack compare --clean clean/ --adv pgd=pgd/ mi=mi/ --victims efficientnet-lite1
    fairattack leaderboard --attacks PGD MI-FGSM ta:PGD,steps=10 --surrogates efficientnet-lite0 \
        --victims efficientnet-lite1 --data my-photos/ --n-images 24 --out board
    fairattack models
"""

import argparse
import os
import sys
import warnings

from . import compare, demo, leaderboard, models, report, run
from ._common import UsageError

COMMANDS = (demo, run, report, models, compare, leaderboard)


def parser():
    p = argparse.ArgumentParser(prog="fairattack", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
