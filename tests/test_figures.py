"""The figures: PNG files from a small study table, drawn from the right numbers; bad tables are
errors that name what is wrong."""

import numpy as np
import pandas as pd
import pytest

from fairattack import figures

PNG = b"\x89PNG\r\n\x1a\n"


def table():
    """Two surrogates x three optimizers x two settings, with distinct numbers per cell."""
    rows = []
    for s, setting in enumerate(("const_loss", "rmse_loss")):
        for i, optimizer in enumerate(("GD", "MGD", "Adam")):
            for j, surrogate in enumerate(("a", "b")):
                rows.append({"surrogate": surrogate, "optimizer": optimizer, "setting": setting,
                             "rmse": 3.0 + i + 2 * s + 0.5 * j,
                             "asr": 0.4 + 0.1 * i + 0.05 * s + 0.02 * j})
    return pd.DataFrame(rows)


def is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_asr_rmse_draws_the_table(tmp_path):
    df = table()
    fig = figures.plot_asr_rmse(df, tmp_path / "sub" / "fig2.png", settings="const_loss")
    assert is_png(tmp_path / "sub" / "fig2.png")
    ax_rmse, ax_asr = fig.axes
    assert [t.get_text() for t in ax_rmse.get_xticklabels()] == ["GD", "MGD", "Adam"]
    # one bar per surrogate and optimizer (height = RMSE), one ASR line per surrogate (in %)
    heights = [p.get_height() for p in ax_rmse.patches]
    rows = df[df["setting"] == "const_loss"]
    for j, surrogate in enumerate(("a", "b")):
        mine = rows[rows["surrogate"] == surrogate]
        np.testing.assert_allclose(heights[3 * j:3 * j + 3], mine["rmse"])
        np.testing.assert_allclose(ax_asr.get_lines()[j].get_ydata(), 100 * mine["asr"])


def test_asr_rmse_two_settings_is_fig1(tmp_path):
    fig = figures.plot_asr_rmse(table(), tmp_path / "fig1.png")  # default: const_loss + rmse_loss
    assert is_png(tmp_path / "fig1.png")
    ax_rmse, ax_asr = fig.axes
    assert len(ax_asr.get_lines()) == 4 and len(ax_rmse.patches) == 12  # ASR and ASR*, 2 bars
    assert "const. loss vs loss + RMSE" in ax_rmse.get_title()
    assert figures.plot_asr_rmse(table(), title="mine").axes[0].get_title() == "mine"


def test_scatter_has_one_marker_per_cell(tmp_path):
    df = table()
    fig = figures.plot_scatter(df, tmp_path / "scatter.png")
    assert is_png(tmp_path / "scatter.png")
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    np.testing.assert_allclose(points, np.c_[df["rmse"], 100 * df["asr"]])


def test_gallery_titles_give_the_rmse(tmp_path):
    clean = np.zeros((32, 32, 3), np.uint8)
    fig = figures.plot_gallery(clean, {"GD": clean + 3, "Adam": clean + 5}, path=tmp_path / "g.png",
                               title="tench")
    assert is_png(tmp_path / "g.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["(a) clean", "(b) GD\nRMSE 3.00", "(c) Adam\nRMSE 5.00"]
    given = figures.plot_gallery(clean, {"GD": clean + 3}, rmse={"GD": 2.5})
    assert given.axes[1].get_title().endswith("RMSE 2.50")


@pytest.mark.parametrize("drop, missing", [
    (["asr"], r"\['asr'\]"),
    (["rmse", "asr"], r"\['rmse', 'asr'\]"),
    (["setting"], r"\['setting'\]"),
])
def test_missing_columns_are_named(drop, missing):
    df = table().drop(columns=drop)
    with pytest.raises(ValueError, match="missing columns " + missing):
        figures.plot_asr_rmse(df)
    with pytest.raises(ValueError, match="missing columns " + missing):
        figures.plot_scatter(df)


def test_bad_tables_and_images():
    with pytest.raises(ValueError, match="empty"):
        figures.plot_scatter(table().iloc[:0])
    with pytest.raises(ValueError, match="empty"):
        figures.plot_asr_rmse(table().iloc[:0])
    with pytest.raises(TypeError, match="DataFrame"):
        figures.plot_asr_rmse(table().to_dict("records"))
    with pytest.raises(ValueError, match="'const_rmse' is not in the table"):
        figures.plot_asr_rmse(table(), settings="const_rmse")
    with pytest.raises(ValueError, match="one or two settings"):
        figures.plot_asr_rmse(table(), settings=("const_loss", "rmse_loss", "fixed"))
    with pytest.raises(ValueError, match="shape"):
        figures.plot_gallery(np.zeros((8, 8, 3), np.uint8), {"GD": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match="clean"):
        figures.plot_gallery(np.zeros((8, 8), np.uint8), {"GD": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ValueError, match="adversarials"):
        figures.plot_gallery(np.zeros((8, 8, 3), np.uint8), {})


def test_rank_shifts_name_every_line_at_both_ends():
    """One line per attack through its ranks; each end names the attacks at that rank (ties on
    one text), so 20+ attacks need no legend to match colours against."""
    ranks = pd.DataFrame(
        [(a, "mean", r, k) for a, ks in {"MI": (1, 2), "NI": (2, 1), "DI": (2, 3)}.items()
         for r, k in zip(("native", 4.0), ks)], columns=["attack", "victim", "rmse", "rank"])
    fig = figures.plot_rank_shifts(ranks)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["MI", "NI", "DI"]
    np.testing.assert_allclose(np.round(ax.lines[0].get_ydata()), [1, 2])
    texts = {(t.get_text(), t.get_position()[1]) for t in ax.texts}
    assert texts == {("MI", 1), ("NI, DI", 2), ("NI", 1), ("MI", 2), ("DI", 3)}
    assert not fig.legends and ax.get_legend() is None
