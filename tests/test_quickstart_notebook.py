"""notebooks/quickstart.ipynb runs top to bottom (so it cannot rot), on 2 shipped photos."""

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    monkeypatch.setenv("FAIRATTACK_NOTEBOOK_N", "2")
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
    assert (tmp_path / "quickstart-study" / "results.csv").is_file()
    # the figures were displayed inline
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
