"""The leaderboard's files: leaderboard.csv (the tidy table), leaderboard.md (one table per
surrogate, the mean victim) and leaderboard.html, a static page that works offline (no server,
no network: styles, the sorting script, the figures and the example images are inside it):
sortable tables with confidence intervals, the ASR-vs-RMSE curves, the rank-shift plot and a few
adversarial images per attack."""

import base64
import html
import io
import math

import numpy as np

from . import figures
from .markdown import table as markdown_table
from .store import write_atomic


def _number(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "n.r."
    return f"{value:.{digits}f}"


def interval(value, low, high, digits=3):
    """"v [low, high]", or "v" without an interval; "n.r." for an end not reached (inf)."""
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return _number(value, digits)
    return f"{_number(value, digits)} [{_number(low, digits)}, {_number(high, digits)}]"


def budgets_of(table):
    return sorted({float(c[4:]) for c in table.columns
                   if c.startswith("asr@") and not c.endswith(("_low", "_high"))})


def columns(table):
    """The shown columns: (header, text of a row, sort value of a row)."""
    out = [("attack", lambda r: str(r["attack"]), lambda r: str(r["attack"])),
           ("grad evals / image", lambda r: _number(r["grad_evals"], 1),
            lambda r: r["grad_evals"]),
           ("ℓ∞", lambda r: _number(r["linf"], 2), lambda r: r["linf"]),
           ("RMSE", lambda r: _number(r["rmse"], 2), lambda r: r["rmse"]),
           ("ASR native", lambda r: interval(r["asr"], r["asr_low"], r["asr_high"]),
            lambda r: r["asr"])]
    for b in budgets_of(table):
        key = f"asr@{b:g}"
        out.append((f"ASR @ RMSE {b:g}",
                    lambda r, k=key: interval(r[k], r[k + "_low"], r[k + "_high"]),
                    lambda r, k=key: r[k]))
    out += [("rmse50", lambda r: "not reached" if math.isnan(r["rmse50"]) else
             interval(r["rmse50"], r["rmse50_low"], r["rmse50_high"], 2),
             lambda r: math.inf if math.isnan(r["rmse50"]) else r["rmse50"]),
            ("AUC", lambda r: _number(r["auc"], 3), lambda r: r["auc"]),
            ("rank native", lambda r: str(int(r["rank"])), lambda r: r["rank"])]
    for b in budgets_of(table):
        out.append((f"rank @ {b:g} (shift)",
                    lambda r, b=b: f"{int(r[f'rank@{b:g}'])} ({int(r[f'shift@{b:g}']):+d})",
                    lambda r, b=b: r[f"rank@{b:g}"]))
    return out


def markdown(table, meta):
    lines = [f"# Fair transfer leaderboard (eps {meta['eps']:g}, mode {meta['mode']})", "",
             "ASR: the victims' mean error on the adversarial uint8 images [95% bootstrap CI]; "
             "ℓ∞, RMSE: the attack's own output; rmse50: the RMSE budget at which ASR reaches "
             "50% (n.r.: not reached within the grid); AUC: mean ASR over RMSE in [0, max "
             "budget]; shift: native rank − rank at that budget.", ""]
    shown = columns(table)
    for surrogate, rows in table[table["victim"] == "mean"].groupby("surrogate", sort=False):
        lines += [f"## Surrogate {surrogate} ({int(rows['n_images'].iloc[0])} images, victims "
                  f"{', '.join(meta['victims'])})", "",
                  *markdown_table([h for h, _, _ in shown],
                                  ([text(row) for _, text, _ in shown]
                                   for _, row in rows.iterrows())), ""]
    return "\n".join(lines)


def _png(image_or_figure, scale=1):
    buffer = io.BytesIO()
    if hasattr(image_or_figure, "savefig"):
        image_or_figure.savefig(buffer, format="png", dpi=110)
    else:
        from PIL import Image

        im = Image.fromarray(np.asarray(image_or_figure, np.uint8))
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        im.save(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1600px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
tr:nth-child(even) td{background:#fafafa}
.examples td{text-align:center;vertical-align:top;font-size:11px}
.examples img{width:112px;height:112px;image-rendering:pixelated}
figure{margin:1em 0} figure img{max-width:100%}
.scroll{overflow-x:auto}
.examples td:first-child{vertical-align:middle;text-align:left}
"""

_SCRIPT = """
function sortTable(th){
  const table=th.closest('table'), i=[...th.parentNode.children].indexOf(th);
  const body=table.tBodies[0], rows=[...body.rows];
  const asc=!th.classList.contains('asc');
  [...th.parentNode.children].forEach(h=>h.classList.remove('asc','desc'));
  th.classList.add(asc?'asc':'desc');
  const key=r=>{const v=r.cells[i].dataset.value, n=parseFloat(v);
                return isNaN(n)?v:n;};
  rows.sort((a,b)=>{const x=key(a),y=key(b);
    const c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
    return asc?c:-c;});
  rows.forEach(r=>body.appendChild(r));
}
"""


def _table(rows, shown, ident):
    head = "".join(f"<th onclick=\"sortTable(this)\">{html.escape(h)}</th>" for h, _, _ in shown)
    body = []
    for _, row in rows.iterrows():
        cells = []
        for _, text, value in shown:
            v = value(row)
            v = "Infinity" if isinstance(v, float) and math.isinf(v) else (
                "" if isinstance(v, float) and math.isnan(v) else v)
            cells.append(f"<td data-value=\"{html.escape(str(v))}\">"
                         f"{html.escape(text(row))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table class=\"board\" id=\"{ident}\"><thead><tr>{head}"
            "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def page(table, frames, clean, meta):
    """leaderboard.html's text."""
    shown = columns(table)
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>fairattack leaderboard</title>", f"<style>{_STYLE}</style>",
             f"<script>{_SCRIPT}</script></head><body>",
             "<h1>Fair transfer leaderboard</h1>",
             f"<p>ℓ∞ budget ε = {meta['eps']:g} px; RMSE budgets "
             f"{', '.join(f'{r:g}' for r in meta['rmse'])} px ({html.escape(meta['mode'])}); "
             f"victims {html.escape(', '.join(meta['victims']))}; {meta['n_given']} images given, "
             "each surrogate keeps those it classifies correctly. ASR [95% bootstrap CI over "
             "images]; rmse50: the RMSE at which ASR reaches 50% (n.r.: not reached); AUC: mean "
             "ASR over RMSE; shift: native rank − rank at that budget. Click a header to sort."
             "</p>"]
    for k, (surrogate, df) in enumerate(frames.items()):
        mine = table[table["surrogate"] == surrogate]
        parts.append(f"<h2>Surrogate {html.escape(surrogate)} "
                     f"({int(mine['n_images'].iloc[0])} images)</h2>")
        parts.append(_table(mine[mine["victim"] == "mean"], shown, f"board-{k}-mean"))
        parts.append("<details><summary>each victim</summary>")
        for j, victim in enumerate(meta["victims"]):
            parts.append(f"<h3>victim {html.escape(victim)}</h3>")
            parts.append(_table(mine[mine["victim"] == victim], shown, f"board-{k}-{j}"))
        parts.append("</details>")
        curves = figures.plot_asr_at_rmse(df, title=f"surrogate {surrogate}")
        parts.append(f"<figure><img alt=\"ASR against RMSE, surrogate "
                     f"{html.escape(surrogate)}\" src=\"{_png(curves)}\"><figcaption>ASR against "
                     "the RMSE budget (bands: 95% CI; open markers: each attack's own output)"
                     "</figcaption></figure>")
        shifts = figures.plot_rank_shifts(df.ranks(), title=f"surrogate {surrogate}: mean victim")
        parts.append(f"<figure><img alt=\"rank shifts, surrogate {html.escape(surrogate)}\" "
                     f"src=\"{_png(shifts)}\"><figcaption>rank by ASR natively and at each "
                     "budget</figcaption></figure>")
        if df.examples:
            index = np.asarray(df.example_images)
            scale = max(1, 112 // max(clean.shape[1], 1))
            parts.append("<h3>Examples (native output)</h3><table class=\"examples\"><tr>"
                         "<th>attack</th>" + "".join(f"<th>image {int(i)}</th>" for i in index)
                         + "</tr>")
            parts.append("<tr><td>clean</td>" + "".join(
                f"<td><img alt=\"clean image {int(i)}\" src=\"{_png(clean[i], scale)}\"></td>"
                for i in index) + "</tr>")
            for attack, images in df.examples.items():
                cells = []
                for i, im in zip(index, images):
                    d = im.astype(np.float64) - clean[i]
                    cells.append(f"<td><img alt=\"{html.escape(attack)} image {int(i)}\" "
                                 f"src=\"{_png(im, scale)}\"><br>RMSE "
                                 f"{math.sqrt(float(np.mean(d * d))):.2f}</td>")
                parts.append(f"<tr><td>{html.escape(attack)}</td>" + "".join(cells) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_board(out, table, frames, clean, meta):
    """leaderboard.csv, .md and .html into out; returns their paths."""
    from pathlib import Path

    out = Path(out)
    clean = np.clip(np.rint(clean), 0, 255).astype(np.uint8)
    paths = [write_atomic(out / "leaderboard.csv", table.to_csv(index=False).encode()),
             write_atomic(out / "leaderboard.md", markdown(table, meta).encode()),
             write_atomic(out / "leaderboard.html", page(table, frames, clean, meta).encode())]
    return [str(p) for p in paths]
