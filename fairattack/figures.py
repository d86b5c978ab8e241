"""The paper's figures from a study table (`run_study` / `load_results`), with matplotlib.

Each function returns the matplotlib Figure and, given `path`, also saves it as PNG. They never
open a window: the figures are made with the Agg canvas directly, so they work headless and inside
Jupyter (display the returned Figure, or just let the notebook show it).
"""

from pathlib import Path

import numpy as np

from .settings import OPTIMIZERS, PAPER_OPTIMIZERS

#: Colour per surrogate (Fig. 1/2) and per optimizer (scatter).
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_MARKERS = {"const_loss": "o", "rmse_loss": "^", "const_rmse": "s", "const_rmse_authors": "D",
            "fixed": "P"}
_LABELS = {"const_loss": "const. loss", "rmse_loss": "loss + RMSE (*)",
           "const_rmse": "const. RMSE", "const_rmse_authors": "const. RMSE (authors)",
           "fixed": "fixed steps"}


def _light(colour, amount=0.7):
    """The colour mixed with `amount` white, opaque."""
    from matplotlib.colors import to_rgb

    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi=150):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def _check_frame(df, columns, what="a run_study table"):
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected a pandas DataFrame ({what}), got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df: missing columns {missing}; expected {what}")
    if df.empty:
        raise ValueError("df: the table is empty")


def _ordered(values, order):
    values = list(dict.fromkeys(values))
    order = list(dict.fromkeys(order))
    known = [v for v in order if v in values]
    return known + [v for v in values if v not in known]


def _default_settings(present):
    if "const_loss" in present:
        return ("const_loss", "rmse_loss") if "rmse_loss" in present else ("const_loss",)
    if "const_rmse" in present:
        return ("const_rmse",)
    return (present[0],)


def plot_asr_rmse(df, path=None, settings=None, title=None):
    """The paper's Fig. 1 / Fig. 2: per optimizer (x axis), mean RMSE as bars (left axis, one bar
    per surrogate, light) and ASR as lines (right axis, one solid line per surrogate).

    settings: one setting, or two: (base, starred). Default: ("const_loss", "rmse_loss") when
    both are in df (Fig. 1: the starred setting is drawn as dotted ASR* lines and darker RMSE*
    bars behind the light ones), else const_loss, else const_rmse (Fig. 2).
    """
    _check_frame(df, ("surrogate", "optimizer", "setting", "rmse", "asr"))
    present = list(dict.fromkeys(df["setting"]))
    if settings is None:
        settings = _default_settings(present)
    elif isinstance(settings, str):
        settings = (settings,)
    settings = tuple(settings)
    if not 1 <= len(settings) <= 2:
        raise ValueError(f"settings: expected one or two settings, got {settings}")
    for setting in settings:
        if setting not in present:
            raise ValueError(f"settings: {setting!r} is not in the table (it has {present})")
    rows = df[df["setting"].isin(settings)]
    optimizers = _ordered(rows["optimizer"], PAPER_OPTIMIZERS + OPTIMIZERS)
    surrogates = list(dict.fromkeys(rows["surrogate"]))
    x = np.arange(len(optimizers))
    width = 0.8 / len(surrogates)

    fig = _figure(max(6.0, 1.0 * len(optimizers) + 2.5), 4.2)
    ax_rmse = fig.add_subplot()
    ax_asr = ax_rmse.twinx()
    ax_rmse.set_zorder(ax_asr.get_zorder() - 1)  # lines over bars
    ax_asr.patch.set_visible(False)

    def values(surrogate, setting, column):
        sub = rows[(rows["surrogate"] == surrogate) & (rows["setting"] == setting)]
        by_opt = dict(zip(sub["optimizer"], sub[column].astype(float)))
        return np.array([by_opt.get(o, np.nan) for o in optimizers])

    rmse_top = 0.0
    for i, surrogate in enumerate(surrogates):
        colour = _PALETTE[i % len(_PALETTE)]
        pos = x - 0.4 + width * (i + 0.5)
        # starred bars first (dark, hatched); the opaque light base bar covers their lower part,
        # so the dark part shows how far RMSE* rises above RMSE (the paper's "shadowed" bars)
        if len(settings) == 2:
            star = values(surrogate, settings[1], "rmse")
            ax_rmse.bar(pos, star, width * 0.9, color=colour, alpha=0.8, hatch="///",
                        edgecolor="white", linewidth=0, label=f"RMSE* {surrogate}")
            rmse_top = max(rmse_top, np.nanmax(star, initial=0))
        base = values(surrogate, settings[0], "rmse")
        ax_rmse.bar(pos, base, width * 0.9, color=_light(colour), edgecolor=colour,
                    linewidth=0.6, label=f"RMSE {surrogate}")
        rmse_top = max(rmse_top, np.nanmax(base, initial=0))
        ax_asr.plot(x, 100 * values(surrogate, settings[0], "asr"), "-o", color=colour, lw=2,
                    ms=5, label=f"ASR {surrogate}")
        if len(settings) == 2:
            ax_asr.plot(x, 100 * values(surrogate, settings[1], "asr"), ":o", color=colour,
                        lw=2, ms=5, mfc="white", label=f"ASR* {surrogate}")

    ax_rmse.set_xticks(x, optimizers)
    ax_rmse.set_xlim(-0.6, len(optimizers) - 0.4)
    ax_rmse.set_ylabel("RMSE (bars, pixels)")
    ax_rmse.set_ylim(0, max(16.0, 1.05 * rmse_top))
    ax_asr.set_ylabel("ASR: mean victim error (lines, %)")
    ax_asr.set_ylim(0, 105)
    ax_rmse.set_xlabel("optimizer")
    names = " vs ".join(_LABELS.get(s, s) for s in settings)
    ax_rmse.set_title(title or f"Transferability (lines) and RMSE (bars): {names}")
    lines, bars = ax_asr.get_legend_handles_labels(), ax_rmse.get_legend_handles_labels()
    per = len(settings)  # entries per surrogate in each list
    handles, labels = [], []
    for i in range(len(surrogates)):  # one legend column per surrogate
        handles += lines[0][i * per:(i + 1) * per] + bars[0][i * per:(i + 1) * per][::-1]
        labels += lines[1][i * per:(i + 1) * per] + bars[1][i * per:(i + 1) * per][::-1]
    ax_rmse.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                   ncol=len(surrogates), fontsize="small", frameon=False)
    return _save(fig, path)


def plot_scatter(df, path=None, title=None):
    """ASR against RMSE, one marker per cell: colour = optimizer, shape = setting."""
    _check_frame(df, ("optimizer", "setting", "rmse", "asr"))
    from matplotlib.lines import Line2D

    optimizers = _ordered(df["optimizer"], PAPER_OPTIMIZERS + OPTIMIZERS)
    settings = list(dict.fromkeys(df["setting"]))
    colour = {o: _PALETTE[i % len(_PALETTE)] for i, o in enumerate(optimizers)}
    marker = {s: _MARKERS.get(s, "X") for s in settings}

    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    for _, row in df.iterrows():
        ax.scatter(float(row["rmse"]), 100 * float(row["asr"]), s=60,
                   color=colour[row["optimizer"]], marker=marker[row["setting"]],
                   edgecolor="black", linewidth=0.5, zorder=3)
    ax.set_xlabel("RMSE of the adversarial images (pixels)")
    ax.set_ylabel("ASR: mean victim error (%)")
    ax.set_xlim(0, max(16.0, float(np.nanmax(df["rmse"].astype(float), initial=0)) * 1.05))
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Transferability against RMSE, one marker per study cell")
    handles = [Line2D([], [], ls="", marker="o", color=colour[o], mec="black", mew=0.5, label=o)
               for o in optimizers]
    handles += [Line2D([], [], ls="", marker=marker[s], color="lightgray", mec="black", mew=0.5,
                       label=_LABELS.get(s, s)) for s in settings]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return _save(fig, path)


def plot_gallery(clean, adversarials, rmse=None, path=None, title=None):
    """The paper's Fig. 3: the clean image, then each adversarial image with its RMSE.

    clean: uint8 [H, W, 3]; adversarials: dict label -> uint8 [H, W, 3] (in display order);
    rmse: dict label -> RMSE (computed from the images when missing).
    """
    clean = np.asarray(clean)
    if clean.ndim != 3 or clean.shape[-1] != 3:
        raise ValueError(f"clean: expected one image [H, W, 3], got shape {clean.shape}")
    if not adversarials:
        raise ValueError("adversarials: expected at least one image")
    rmse = dict(rmse or {})
    panels = [("(a) clean", clean)]
    for i, (label, image) in enumerate(adversarials.items()):
        image = np.asarray(image)
        if image.shape != clean.shape:
            raise ValueError(f"adversarials[{label!r}]: shape {image.shape} differs from the "
                             f"clean image's {clean.shape}")
        value = rmse.get(label)
        if value is None:
            value = float(np.sqrt(np.mean((image.astype(np.float64) - clean) ** 2)))
        panels.append((f"({chr(ord('b') + i)}) {label}\nRMSE {value:.2f}", image))

    columns = min(len(panels), 4)
    lines = -(-len(panels) // columns)
    fig = _figure(3.0 * columns, 3.3 * lines + (0.3 if title else 0))
    for i, (label, image) in enumerate(panels):
        ax = fig.add_subplot(lines, columns, i + 1)
        ax.imshow(image.astype(np.uint8), interpolation="nearest")
        ax.set_title(label, fontsize="medium")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_asr_at_rmse(df, path=None, victims=None, title=None):
    """ASR against the RMSE budget, one line per attack with its bootstrap 95% band, one panel
    per victim and the mean (a `fairattack.compare` table). Each attack's own output (the
    "native" rows) is an open marker at its own mean RMSE. What each attack spent is in the
    legend: its native run's gradient passes per image (grad_evals_mean, where counted).

    victims: the panels to draw (default: every victim, then "mean").
    """
    _check_frame(df, ("attack", "rmse", "victim", "asr", "ci_low", "ci_high", "rmse_mean"),
                 "a fairattack.compare table")
    present = list(dict.fromkeys(df["victim"]))
    if victims is None:
        victims = [v for v in present if v != "mean"] + (["mean"] if "mean" in present else [])
    elif isinstance(victims, str):
        victims = [victims]
    victims = list(victims)
    unknown = [v for v in victims if v not in present]
    if not victims or unknown:
        raise ValueError(f"victims: {unknown or victims} not in the table (it has {present})")
    is_native = df["rmse"].map(lambda v: isinstance(v, str))
    if is_native.any() and set(df.loc[is_native, "rmse"]) != {"native"}:
        raise ValueError("df: the rmse column holds budgets (numbers) or 'native'")
    attacks = list(dict.fromkeys(df["attack"]))
    colour = {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(attacks)}
    marker = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
    label = {a: a for a in attacks}
    if "grad_evals_mean" in df:  # the gradient cost, from each attack's native run
        native_rows = df[is_native]
        for a in attacks:
            spent = native_rows.loc[native_rows["attack"] == a, "grad_evals_mean"].astype(float)
            if len(spent) and np.isfinite(spent.iloc[0]):
                label[a] = f"{a} ({spent.iloc[0]:.0f} grads/image)"

    columns = min(len(victims), 3)
    lines = -(-len(victims) // columns)
    fig = _figure(4.2 * columns + 1.8, 3.6 * lines)
    top = 16.0
    for k, victim in enumerate(victims):
        ax = fig.add_subplot(lines, columns, k + 1)
        for i, attack in enumerate(attacks):
            rows = df[(df["attack"] == attack) & (df["victim"] == victim)]
            native = rows[is_native.loc[rows.index]]
            curve = rows[~is_native.loc[rows.index]]
            r = curve["rmse"].astype(float).to_numpy()
            order = np.argsort(r)
            r = r[order]
            asr = 100 * curve["asr"].astype(float).to_numpy()[order]
            low = 100 * curve["ci_low"].astype(float).to_numpy()[order]
            high = 100 * curve["ci_high"].astype(float).to_numpy()[order]
            m = marker[i % len(marker)]
            if len(r):
                ax.plot(r, asr, "-", marker=m, color=colour[attack], lw=1.6, ms=4,
                        label=label[attack])
                if np.isfinite(low).any():
                    ax.fill_between(r, low, high, color=colour[attack], alpha=0.15, lw=0)
                top = max(top, float(r.max()))
            for _, row in native.iterrows():
                x = float(row["rmse_mean"])
                ax.plot([x], [100 * float(row["asr"])], ls="", marker=m, ms=8, mfc="white",
                        mec=colour[attack], mew=1.5,
                        label=None if len(r) else label[attack])
                top = max(top, x)
        ax.set_title(victim)
        ax.set_xlabel("RMSE budget (pixels)")
        ax.set_ylabel("ASR (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    for ax in fig.axes:
        ax.set_xlim(0, top * 1.05)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], ls="", marker="o", ms=8, mfc="white", mec="black"))
    labels.append("own output (native RMSE)")
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_rank_shifts(ranks, path=None, victim="mean", title=None):
    """Each attack's rank by ASR natively and at every RMSE budget, one line per attack (a
    `fairattack.curves.ranks` / `df.ranks()` table): lines that cross are rankings that change
    at matched RMSE. Rank 1 (the highest ASR) is at the top; tied attacks are drawn a little
    apart so that every line stays visible."""
    import pandas as pd

    if not isinstance(ranks, pd.DataFrame):
        raise TypeError(f"ranks: expected df.ranks() (a DataFrame), got {type(ranks).__name__}")
    missing = [c for c in ("attack", "victim", "rmse", "rank") if c not in ranks.columns]
    if missing:
        raise ValueError(f"ranks: missing columns {missing}; expected df.ranks()")
    rows = ranks[ranks["victim"] == victim]
    if rows.empty:
        raise ValueError(f"victim: {victim!r} is not in the table (it has "
                         f"{sorted(set(ranks['victim']))})")
    budgets = sorted({float(r) for r in rows["rmse"] if not isinstance(r, str)})
    cells = ["native"] + budgets
    attacks = list(dict.fromkeys(rows["attack"]))
    fig = _figure(1.3 * len(cells) + 6.5, 0.35 * len(attacks) + 2.2)
    ax = fig.add_subplot(1, 1, 1)
    ends = ({}, {})  # rank -> the attacks there, natively and at the last budget
    for i, attack in enumerate(attacks):
        mine = rows[rows["attack"] == attack]
        by_cell = {("native" if isinstance(r, str) else float(r)): k
                   for r, k in zip(mine["rmse"], mine["rank"])}
        spread = 0.25 * (i / max(len(attacks) - 1, 1) - 0.5) if len(attacks) > 1 else 0.0
        ranks_here = [by_cell.get(c, np.nan) for c in cells]
        color = _PALETTE[i % len(_PALETTE)]
        ax.plot(range(len(cells)), [r + spread for r in ranks_here], "-o", color=color, lw=1.6,
                ms=5, label=attack)
        for end, rank in zip(ends, (ranks_here[0], ranks_here[-1])):
            if np.isfinite(rank):
                end.setdefault(rank, []).append((attack, color))
    # every line named at both ends (tied attacks on one line of text): no legend to match
    for x, end, align in ((-0.15, ends[0], "right"), (len(cells) - 0.85, ends[1], "left")):
        for rank, named in end.items():
            text = ", ".join(a for a, _ in named)
            ax.text(x, rank, text, ha=align, va="center", fontsize="small",
                    color=named[0][1] if len(named) == 1 else "#333")
    ax.set_xticks(range(len(cells)), ["native"] + [f"RMSE {r:g}" for r in budgets])
    ax.set_xlim(-0.1 - 0.9 * len(cells) / 4, len(cells) - 0.9 + 0.9 * len(cells) / 4)
    ax.set_ylim(len(attacks) + 0.5, 0.5)
    ax.set_yticks(range(1, len(attacks) + 1))
    ax.set_ylabel(f"rank by ASR ({victim})")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
