"""`fairattack report`: the table and figures of every cell in a results folder (also what run
and demo print at the end)."""

import time
from pathlib import Path

from ..markdown import table as markdown_table
from ._common import UsageError, description

TABLE_COLUMNS = ("surrogate", "attack", "optimizer", "setting", "targeted", "n_images",
                 "n_skipped", "n_failed", "n_target_not_reached", "rmse", "linf", "l2", "l0",
                 "psnr", "ssim", "loss", "iterations", "grad_evals", "surrogate_fooling_rate")


def _table(df, victims=True):
    import pandas as pd

    cols = [c for c in TABLE_COLUMNS if c in df.columns]
    if victims:
        cols += [c for c in df.columns if c.startswith(("err_", "clean_err_", "n_failed_"))] + \
            [c for c in ("asr", "asr_ci_low", "asr_ci_high", "seconds") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.float_format", "{:.3f}".format):
        return df[cols].to_string(index=False)


def _figures(df, out_dir):
    """The figures a results table supports; returns the paths written."""
    from .. import figures

    written = []
    if "attack" in df.columns:  # figures label cells by "optimizer": name them by attack
        df = df.assign(optimizer=df["attack"])
    settings = list(dict.fromkeys(df["setting"]))
    for setting in settings:
        path = out_dir / f"asr_rmse_{setting}.png"
        figures.plot_asr_rmse(df, path, settings=setting)
        written.append(path)
    if "const_loss" in settings and "rmse_loss" in settings:
        path = out_dir / "asr_rmse_fig1.png"
        figures.plot_asr_rmse(df, path, settings=("const_loss", "rmse_loss"))
        written.append(path)
    path = out_dir / "asr_vs_rmse.png"
    figures.plot_scatter(df, path)
    written.append(path)
    return written


def _markdown(df, path):
    cols = [c for c in TABLE_COLUMNS if c in df.columns] + \
        [c for c in df.columns if c.startswith(("err_", "clean_err_", "n_failed_"))] + \
        [c for c in ("asr", "asr_ci_low", "asr_ci_high") if c in df.columns]
    lines = markdown_table(cols, (row for _, row in df[cols].iterrows()))
    path.write_text("\n".join(lines) + "\n")
    return path


def report(df, out_dir, started=None):
    print(_table(df))
    out_dir = Path(out_dir)
    written = _figures(df, out_dir) + [_markdown(df, out_dir / "results.md")]
    if started is not None:
        print(f"\n{len(df)} cells in {time.time() - started:.0f} s")
    print(f"results: {out_dir / 'results.csv'}")
    for path in written:
        print(f"figure/table: {path}")
    return written


def add_parser(sub):
    rep = sub.add_parser("report", help="table and figures of a results folder (of run, demo "
                         "or compare)", description=description(__doc__))
    rep.add_argument("out_dir", help="the --out folder of run, demo or compare")
    rep.set_defaults(func=cmd_report)
    return rep


def _report_comparison(out_dir):
    """compare's table of a compare folder (compare.csv), with its figure."""
    import pandas as pd

    from .. import figures
    from ..compare import comparison_table

    csv = out_dir / "compare.csv"
    try:
        df = pd.read_csv(csv)
        if "rmse" in df.columns:  # "native" or a budget: the CSV reads them all as text
            df["rmse"] = [r if r == "native" else float(r) for r in df["rmse"]]
        table = comparison_table(df)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{csv}: malformed comparison file ({error})") from None
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    figures.plot_asr_at_rmse(df, out_dir / "asr_at_rmse.png")
    print(f"figure: {out_dir / 'asr_at_rmse.png'}")
    return 0


def cmd_report(args):
    from ..study import load_results

    if not Path(args.out_dir).is_dir():
        raise UsageError(f"{args.out_dir!r} is not a results folder")
    out_dir = Path(args.out_dir)
    if (out_dir / "compare.csv").is_file() and not (out_dir / "results.csv").is_file() \
            and not (out_dir / "cells").is_dir():
        return _report_comparison(out_dir)
    df = load_results(args.out_dir)
    if df is None or len(df) == 0:
        raise UsageError(f"{args.out_dir!r} holds no finished cells")
    report(df, args.out_dir)
    return 0
