"""What the commands share: the one vocabulary of options (every command spells an option the
same way, with the same type, check and default shown in --help), the parser whose every mistake
is one `fairattack: error:` line with a suggestion where a close name exists, checks of
optimizer and setting names, the torchrun rank."""

import argparse
import difflib
import os
import re
from pathlib import Path

from ..settings import NAMED_ATTACKS, OPTIMIZERS, SETTINGS
from ..spec import canonical_attack_name, canonical_setting


class UsageError(Exception):
    """A mistake of the user's: one line on stderr and exit status 2."""


#: What users of other tools type, and this command's name for it.
SYNONYMS = {"--steps": "--max-iter", "--iters": "--max-iter", "--iterations": "--max-iter",
            "--n-iter": "--max-iter", "--epsilon": "--eps", "--step-size": "--alpha",
            "--lr": "--alpha", "--n": "--n-images", "--num-images": "--n-images",
            "--model": "--surrogates", "--surrogate-model": "--surrogates",
            "--victim": "--victims", "--optimizer": "--optimizers", "--setting": "--settings",
            "--output": "--out", "--out-dir": "--out", "--batch": "--batch-size",
            "--gpu": "--device",
            # values
            "gpu": "cuda", "cuda:0": "cuda"}


def suggest(word, choices, synonyms=None):
    """" (did you mean X?)" for the closest of choices (or a known synonym), else ""."""
    choices = list(choices)
    if synonyms and word in synonyms and synonyms[word] in choices:
        return f" (did you mean {synonyms[word]}?)"
    by_lower = {c.lower().replace("-", "_"): c for c in choices}
    key = word.lower().replace("-", "_")
    if key in by_lower:
        return f" (did you mean {by_lower[key]}?)"
    close = difflib.get_close_matches(key, list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a UsageError (one line, exit 2, no usage block)."""

    def error(self, message):
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2))
            message += suggest(match.group(1), choices, SYNONYMS)
        if "invalid float value" in message and "/" in message:
            message += ("; values are pixels of [0, 255] images and plain numbers (8, not "
                        "8/255)")
        raise UsageError(f"{self.prog.replace('fairattack ', '')}: {message}"
                         if self.prog != "fairattack" else message)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's default shown (unless its help says it, or it
    has none: a flag, or an option that is off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] \
                or default == argparse.SUPPRESS:  # `is`: 0 is a default worth showing
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def description(doc):
    """A command's --help description: the first paragraph of its module docstring."""
    return doc.split("\n\n")[0].replace("\n", " ")


def check_flags(argv, parser):
    """UsageError for the first option (--name) that the command's parser does not know (an
    exact name or a unique prefix), before argparse's own checks (a missing required option
    would hide it)."""
    flags = [s for a in parser._actions for s in a.option_strings]
    for word in argv:
        if word == "--":
            break
        if not word.startswith("--") or len(word) == 2:
            continue
        flag = word.split("=", 1)[0]
        if flag in flags or len([f for f in flags if f.startswith(flag)]) == 1:
            continue
        unknown_options([flag], parser)


def unknown_options(extra, parser):
    """UsageError for arguments a command does not take, naming the close option."""
    flags = [s for a in parser._actions for s in a.option_strings]
    for word in extra:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            raise UsageError(f"{parser.prog.replace('fairattack ', '')}: unknown option "
                             f"{flag}{suggest(flag, flags, SYNONYMS)}")
    raise UsageError(f"{parser.prog.replace('fairattack ', '')}: unexpected argument "
                     f"{extra[0]!r}")


def check_names(optimizers, settings):
    for o in optimizers or ():
        try:
            canonical_attack_name(o)
        except ValueError:
            names = OPTIMIZERS + tuple(NAMED_ATTACKS)
            raise UsageError(f"unknown optimizer {o!r}{suggest(o, names)}; choose from "
                             f"{', '.join(names)}") from None
    for s in settings or ():
        try:
            canonical_setting(s)
        except ValueError:
            raise UsageError(f"unknown setting {s!r}{suggest(s, SETTINGS)}; choose from "
                             f"{', '.join(SETTINGS)}") from None


def rank():
    return int(os.environ.get("RANK", "0"))


# ----------------------------------------------------------------------------- value types

def _number(kind, low, strict, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") \
                from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1, False, "a positive integer")
nonnegative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0, True, "a positive number")
nonnegative_float = _number(float, 0, False, "a number >= 0")


# ----------------------------------------------------------------------------- the vocabulary

def _options():
    # name -> (flags, keywords): the one spelling, type and help of each shared option
    return {
        "surrogates": (("--surrogates", "--surrogate"),
                       dict(nargs="+", metavar="MODEL", help="registry names (fairattack "
                            "models, any case) or TorchScript files (fairattack export)")),
        "victims": (("--victims",), dict(nargs="+", metavar="MODEL", required=True,
                                         help="registry names or TorchScript files")),
        "data": (("--data",), dict(help="an image folder (ImageNet val, synset folders, "
                                        "ImageFolder class folders, or SYNSET_name files)")),
        "labels": (("--labels",), dict(help="label file (lines 'FILE INDEX'); default: from "
                                            "the folder layout")),
        "n_images": (("--n-images", "--n"), dict(dest="n_images", type=positive_int,
                                                  metavar="N", help="images to select from "
                                                  "--data (--n: the same)")),
        "attacks": (("--attacks", "--attack"),
                    dict(nargs="+", action="extend", metavar="ATTACK", help="attacks: "
                         "optimizer names, or NAME=OPTIMIZER[:SETTING][,key=value...] "
                         "(pgd-di=PGD:fixed,di_prob=0.5); repeatable")),
        "optimizers": (("--optimizers",), dict(nargs="+", metavar="NAME", help="from "
                       f"{', '.join(OPTIMIZERS + tuple(NAMED_ATTACKS))}, any case (default: "
                       "the paper's seven, "
                       "unless --attacks is given)")),
        "settings": (("--settings",), dict(nargs="+", metavar="NAME", help=f"from "
                     f"{', '.join(SETTINGS)} (default: each attack's own: fixed for FGSM, "
                     "PGD, MI-FGSM, NI-FGSM, const_loss for the others)")),
        "eps": (("--eps",), dict(type=positive_float, help="l-inf budget in pixels of [0, 255] "
                                                           "images (8, not 8/255)")),
        "seed": (("--seed",), dict(type=nonnegative_int, default=0,
                                   help="selection, attacks and bootstrap seed")),
        "batch_size": (("--batch-size",), dict(type=positive_int, default=16,
                                               help="images per model call")),
        "image_size": (("--image-size",), dict(type=positive_int, default=None,
                       help="input size of surrogates whose TorchScript file does not say")),
        "device": (("--device",), dict(default="cpu", choices=("cpu", "cuda"), type=str.lower,
                                       help="cuda: under torchrun each rank uses GPU "
                                       "LOCAL_RANK")),
        "out": (("--out",), dict(help="results folder (resumable)")),
        "no_resume": (("--no-resume",), dict(action="store_true", help="recompute everything")),
        "allow_subpixel": (("--allow-subpixel",), dict(action="store_true", help="allow eps, "
                           "alpha and RMSE values below one pixel level (refused by default "
                           "as [0, 1] units)")),
        "quiet": (("--quiet",), dict(action="store_true", help="no progress bars")),
        "fuse": (("--fuse",), dict(choices=("logits", "probs", "loss"), default="logits",
                                   help="how an ensemble surrogate A+B fuses its members")),
        "weights": (("--weights",), dict(nargs="+", type=nonnegative_float, metavar="W",
                                         help="an ensemble surrogate's member weights, in the "
                                         "order of A+B, summing to 1 (default: equal)")),
    }


def target_arg(text):
    """--target: None, a named choice ("random", "least_likely"), or a file of lines
    'IMAGE_NAME CLASS' read into {name: class} (UsageError naming --target otherwise)."""
    from ..attack import TARGET_CHOICES
    from ..data import read_label_file

    if text is None or text in TARGET_CHOICES:
        return text
    if not Path(text).is_file():
        raise UsageError(f"--target {text!r}: expected one of {TARGET_CHOICES} or a file of "
                         "'IMAGE_NAME CLASS' lines")
    try:
        return read_label_file(text)
    except ValueError as error:
        raise UsageError(f"--target: {error}") from None


def ensemble_weights(surrogates, weights):
    """--weights checked against the ensemble surrogates (A+B texts) before any work: a
    weight per member of each (UsageError naming --weights otherwise)."""
    if weights is None:
        return None
    ensembles = [s for s in surrogates or () if "+" in s]
    if not ensembles:
        raise UsageError("--weights: the weights of an ensemble surrogate's members; give the "
                         "surrogate as A+B")
    for spec in ensembles:
        if len(spec.split("+")) != len(weights):
            raise UsageError(f"--weights: {len(weights)} weights for the "
                             f"{len(spec.split('+'))} members of {spec!r}")
    from ..ensemble import WEIGHT_TOL

    if abs(sum(weights) - 1.0) > WEIGHT_TOL:
        raise UsageError(f"--weights sum to {sum(weights):g}; they must sum to 1")
    return list(weights)


def add_options(p, *names, **defaults):
    """Add the shared options `names` to parser p; defaults: name -> a command's own default
    (required=True / help=... also accepted as name_required / name_help)."""
    table = _options()
    for name in names:
        flags, kwargs = table[name]
        kwargs = dict(kwargs)
        if name in defaults:
            kwargs["default"] = defaults[name]
        for key in ("required", "help"):
            if f"{name}_{key}" in defaults:
                kwargs[key] = defaults[f"{name}_{key}"]
        p.add_argument(*flags, **kwargs)


def common_options(p):
    """The options of demo and run."""
    add_options(p, "optimizers", "settings", "batch_size", "device", "quiet")
