"""fairattack: fair comparison of transfer-based adversarial attacks by ℓ∞ AND ℓ2 (RMSE).

    import fairattack as fa
    model = fa.load_model("surrogate.pt", device="cpu")
    res = fa.attack(model, images, labels, optimizer="Adam", setting="const_loss")
    res.images, res.rmse, res.linf, res.loss, res.status
"""

import torch  # noqa: F401  (loads LibTorch's shared libraries before the extension)

from . import _core
from ._model import Model, get_model, load_model
from .attack import AttackResult, attack, measure, to_uint8
# compare: the function binds over the submodule's name (fairattack.compare.* stays importable)
from .compare import compare, comparison_table, match_rmse
from .ensemble import ensemble
from .evaluate import evaluate  # binds the function over the submodule's name
from .leaderboard import leaderboard
from .outcome import paired_test
from .settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS, SIGN_OPTIMIZERS, make_config
from .study import run_study

__version__ = _core.VERSION


def cuda_available():
    """True when the C core was built with CUDA kernels and a CUDA device is present."""
    return bool(_core.cuda_available())


def __getattr__(name):
    # submodules load on first use: fa.data, fa.models, fa.figures, fa.cli
    import importlib

    if name in ("data", "models", "study", "figures", "cli"):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'fairattack' has no attribute {name!r}")


__all__ = ["AttackResult", "Model", "OPTIMIZERS", "PAPER_OPTIMIZERS", "SETTINGS",
           "SIGN_OPTIMIZERS", "attack", "compare", "comparison_table", "cuda_available",
           "ensemble", "evaluate", "get_model", "leaderboard", "load_model", "make_config",
           "match_rmse", "measure", "paired_test",
           "run_study",
           "to_uint8", "__version__"]
