"""fairattack: fair comparison of transfer-based adversarial attacks by ℓ∞ AND ℓ2 (RMSE).

    import fairattack as fa
    model = fa.load_model("surrogate.pt", device="cpu")
    res = fa.attack(model, images, labels, optimizer="Adam", setting="const_loss")
    res.images, res.rmse, res.linf, res.loss, res.status
"""

import torch  # noqa: F401  (loads LibTorch's shared libraries before the extension)

from . import _core
from ._model import Model, load_model
from .attack import AttackResult, attack, measure, to_uint8
from .settings import OPTIMIZERS, PAPER_OPTIMIZERS, SETTINGS, SIGN_OPTIMIZERS, make_config

__version__ = _core.VERSION


def cuda_available():
    """True when the C core was built with CUDA kernels and a CUDA device is present."""
    return bool(_core.cuda_available())


def __getattr__(name):
    # the heavier layers load on first use: fa.evaluate, fa.data, fa.models, fa.study, ...
    import importlib

    if name == "evaluate":
        return importlib.import_module(".evaluate", __name__).evaluate
    if name in ("data", "models", "study", "figures", "cli", "evaluate_module"):
        return importlib.import_module("." + name, __name__)
    if name == "run_study":
        return importlib.import_module(".study", __name__).run_study
    raise AttributeError(f"module 'fairattack' has no attribute {name!r}")


__all__ = ["AttackResult", "Model", "OPTIMIZERS", "PAPER_OPTIMIZERS", "SETTINGS",
           "SIGN_OPTIMIZERS", "attack", "cuda_available", "load_model", "make_config", "measure",
           "to_uint8", "__version__"]
