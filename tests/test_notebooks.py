"""The notebooks run top to bottom (so they cannot rot), on the shipped photos or a few shared
ImageNet samples, and are committed with their outputs cleared."""

import os
from pathlib import Path

import pytest

from conftest import _find_shared

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name, tmp_path, monkeypatch, n, data=None):
    """Executes notebooks/<name> in a kernel that imports this test's fairattack; returns the
    outputs of its code cells."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    monkeypatch.setenv("FAIRATTACK_NOTEBOOK_N", str(n))
    if data is None:
        monkeypatch.delenv("FAIRATTACK_DATA", raising=False)
    else:
        monkeypatch.setenv("FAIRATTACK_DATA", str(data))
    monkeypatch.setenv("FAIRATTACK_CACHE", str(tmp_path / "cache"))
    # the kernel imports the same fairattack as this test (installed, or a source checkout)
    import fairattack

    package_root = str(Path(fairattack.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with its outputs cleared"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def _images_shown(outputs):
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    outputs = run_notebook("quickstart.ipynb", tmp_path, monkeypatch, n=2)
    assert (tmp_path / "quickstart-study" / "results.csv").is_file()
    assert _images_shown(outputs) >= 2  # the figures were displayed inline


def test_fair_comparison_notebook_runs(tmp_path, monkeypatch):
    """Lite0 -> Lite1/Lite2, 13 attacks, on 4 shared samples when present (~3 min on 2 cores)."""
    shared = _find_shared()
    outputs = run_notebook("fair_comparison.ipynb", tmp_path, monkeypatch, n=4,
                           data=shared / "imagenet-samples" if shared is not None else None)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    for name in ("FGSM", "PGD", "MI-FGSM", "NI-FGSM", "DI", "TI", "GD", "MGD", "NAGD", "Adam",
                 "LAdam", "MSVAG", "AdaB", "rank@8", "p_value"):
        assert name in text, name
    assert _images_shown(outputs) >= 1  # the curves were displayed inline
