"""The `fairattack` command: demo, run, report, compare, leaderboard, models, export.

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
    fairattack export resnet50 resnet50-weights.pth resnet50.pt   # a torchvision net + weights
"""

import argparse
import os
import sys
import warnings

from . import compare, demo, export, leaderboard, models, report, run
from ._common import Formatter, Parser, UsageError, check_flags, unknown_options

COMMANDS = (demo, run, compare, leaderboard, report, models, export)


def parser():
    from .. import _core

    p = Parser(prog="fairattack", description=__doc__.splitlines()[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--version", action="version", version=f"fairattack {_core.VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands (fairattack COMMAND --help for each)")
    for command in COMMANDS:
        c = command.add_parser(sub)
        if c is not None:
            c.formatter_class = Formatter
    return p


def _parse(argv):
    """The arguments; every mistake (argparse's too) is a UsageError naming a close option."""
    p = parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    commands = p._subparsers._group_actions[0].choices
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in commands:
        check_flags(argv[argv.index(command) + 1:], commands[command])
    args, extra = p.parse_known_args(argv)
    if extra:
        unknown_options(extra, commands[args.command])
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each: `fairattack: recomputing cell ...: the surrogate's file
    changed`."""
    print(f"fairattack: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        args = _parse(argv)
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
