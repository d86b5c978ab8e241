"""What the commands share: the user-mistake exception, the options of demo and run, checks
of optimizer and setting names, the torchrun rank."""

import os

from ..settings import OPTIMIZERS, SETTINGS
from ..spec import canonical_optimizer, canonical_setting


class UsageError(Exception):
    """A mistake of the user's: one line on stderr and exit status 2."""


def check_names(optimizers, settings):
    for o in optimizers or ():
        try:
            canonical_optimizer(o)
        except ValueError:
            raise UsageError(f"unknown optimizer {o!r}; choose from {', '.join(OPTIMIZERS)}") \
                from None
    for s in settings:
        try:
            canonical_setting(s)
        except ValueError:
            raise UsageError(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}") \
                from None


def rank():
    return int(os.environ.get("RANK", "0"))


def common_options(p):
    p.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                   help=f"from {', '.join(OPTIMIZERS)}, any case (default: the paper's seven, "
                   "unless --attack is given)")
    p.add_argument("--settings", nargs="+", default=["const_loss"], metavar="NAME",
                   help=f"from {', '.join(SETTINGS)} (default: const_loss)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), type=str.lower,
                   help="cuda: under torchrun each rank uses GPU LOCAL_RANK")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
