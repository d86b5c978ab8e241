"""The figures: PNG files from a study table; bad tables are ValueErrors naming what is missing."""

import numpy as np
import pandas as pd
import pytest

from fairattack import figures


def table():
    rows = []
    for s, setting in enumerate(("const_loss", "rmse_loss")):
        for i, optimizer in enumerate(("GD", "MGD", "Adam")):
            for surrogate in ("a", "b"):
                rows.append({"surrogate": surrogate, "optimizer": optimizer, "setting": setting,
                             "rmse": 3.0 + i + s, "asr": 0.4 + 0.1 * i + 0.05 * s})
    return pd.DataFrame(rows)


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_written(tmp_path):
    df = table()
    figures.plot_asr_rmse(df, tmp_path / "fig1.png")
    figures.plot_asr_rmse(df, tmp_path / "fig2.png", settings="rmse_loss")
    figures.plot_scatter(df, tmp_path / "scatter.png")
    clean = np.zeros((32, 32, 3), np.uint8)
    fig = figures.plot_gallery(clean, {"GD": clean + 3, "Adam": clean + 5}, path=tmp_path / "g.png")
    for name in ("fig1.png", "fig2.png", "scatter.png", "g.png"):
        assert is_png(tmp_path / name), name
    # the RMSE titles come from the images when not given
    assert "RMSE 5.00" in " ".join(ax.get_title() for ax in fig.axes)


def test_bad_tables_and_images():
    with pytest.raises(ValueError, match="missing columns.*asr"):
        figures.plot_asr_rmse(table().drop(columns="asr"))
    with pytest.raises(ValueError, match="empty"):
        figures.plot_scatter(table().iloc[:0])
    with pytest.raises(ValueError, match="not in the table"):
        figures.plot_asr_rmse(table(), settings="const_rmse")
    with pytest.raises(ValueError, match="shape"):
        figures.plot_gallery(np.zeros((8, 8, 3), np.uint8), {"GD": np.zeros((4, 4, 3), np.uint8)})
