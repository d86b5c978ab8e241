"""notebooks/fair_comparison.ipynb runs top to bottom (so it cannot rot): Lite0 -> Lite1/Lite2,
13 attacks, on 4 shared ImageNet samples when present (else the photos scikit-image ships)."""

import os
from pathlib import Path

import pytest

from conftest import _find_shared

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fair_comparison.ipynb"


def test_fair_comparison_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    monkeypatch.setenv("FAIRATTACK_NOTEBOOK_N", "4")  # ~3 min on 2 cores
    shared = _find_shared()
    if shared is not None:
        monkeypatch.setenv("FAIRATTACK_DATA", str(shared / "imagenet-samples"))
    else:
        monkeypatch.delenv("FAIRATTACK_DATA", raising=False)
    monkeypatch.setenv("FAIRATTACK_CACHE", str(tmp_path / "cache"))
    # the kernel imports the same fairattack as this test (installed, or a source checkout)
    import fairattack

    package_root = str(Path(fairattack.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with its outputs cleared"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    for name in ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "DI", "TI", "GD", "MGD", "NAGD", "Adam",
                 "LAdam", "MSVAG", "AdaB", "rank@8", "p_value"):
        assert name in text, name
    # the curves were displayed inline
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1
