"""fa.leaderboard and `fairattack leaderboard`: the table is compare's numbers and curve
summaries per surrogate, cells resume by content (a change is recomputed and said), and the
static page holds every attack, number and image."""

import base64
import io
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairattack as fa
from fairattack import data
from fairattack.study.images import RecomputeWarning
from test_cli import cli
from tiny import save_tiny

ATTACKS = ["FGSM", "pgd3=PGD,max_iter=3"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    s0, s1 = save_tiny(root / "s0.pt", 0), save_tiny(root / "s1.pt", 0)
    v = save_tiny(root / "v.pt", 2)
    x = np.random.default_rng(0).integers(30, 226, (6, 16, 16, 3)).astype(np.uint8)
    y = fa.load_model(s0).predict(x)
    y[5] = (y[5] + 1) % 1000                      # one image no surrogate gets right
    return root, s0, s1, v, x, y


def _board(case, out, **kwargs):
    root, s0, s1, v, x, y = case
    args = dict(rmse=[1, 2, 4], n_boot=40, examples=2, out=out)
    args.update(kwargs)
    return fa.leaderboard({"s0": s0, "s1": s1}, x, y, ATTACKS, [v, s1], **args)


def test_the_table_is_compares_numbers(case, tmp_path):
    root, s0, s1, v, x, y = case
    table = _board(case, tmp_path / "b")
    df = fa.compare(fa.load_model(s0), x, y, ATTACKS, {"v": fa.load_model(v),
                                                       "s1": fa.load_model(s1)},
                    rmse=[1, 2, 4], n_boot=40)
    summary = df.curve_summaries().set_index(["attack", "victim"])
    ranks = df.ranks()
    mine = table[table["surrogate"] == "s0"].set_index(["attack", "victim"])
    assert set(table["victim"]) == {"v", "s1", "mean"} and set(table["surrogate"]) == {"s0",
                                                                                        "s1"}
    assert (table["n_images"] == 5).all()
    for row in df.itertuples():
        got = mine.loc[(row.attack, row.victim)]
        if row.how == "native":
            assert (got["asr"], got["asr_low"], got["asr_high"]) == pytest.approx(
                (row.asr, row.ci_low, row.ci_high))
            assert got["rmse"] == pytest.approx(row.rmse_mean)
        else:
            assert got[f"asr@{row.rmse:g}"] == pytest.approx(row.asr)
            assert got[f"asr@{row.rmse:g}_high"] == pytest.approx(row.ci_high)
    for key, s in summary.iterrows():
        for column in ("rmse50", "rmse50_low", "rmse50_high", "auc"):
            assert mine.loc[key, column] == pytest.approx(s[column], nan_ok=True), (key, column)
    for row in ranks.itertuples():
        column = "rank" if isinstance(row.rmse, str) else f"rank@{row.rmse:g}"
        assert mine.loc[(row.attack, row.victim), column] == row.rank
    # the same weights under two names: the same numbers
    other = table[table["surrogate"] == "s1"].drop(columns="surrogate").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine.reset_index()[other.columns], other)
    csv = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    assert len(csv) == len(table) and list(csv.columns) == list(table.columns)


def test_cells_resume_and_say_why_they_are_recomputed(case, tmp_path):
    first = _board(case, tmp_path / "b")
    assert first.attrs["reused"] == [] and first.attrs["cells"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecomputeWarning)
        again = _board(case, tmp_path / "b")
    assert len(again.attrs["reused"]) == 4
    pd.testing.assert_frame_equal(first, again)
    with pytest.warns(RecomputeWarning, match="recomputing cell s0/FGSM: n_boot changed"):
        changed = _board(case, tmp_path / "b", n_boot=30)
    assert changed.attrs["reused"] == []
    root, s0, s1, v, x, y = case
    with pytest.warns(RecomputeWarning, match="images changed"):
        fa.leaderboard({"s0": s0}, x[:5], y[:5], ["FGSM"], [v], rmse=[1, 2, 4], n_boot=30,
                       examples=2, out=tmp_path / "b")
    # a callable has no identity: it always runs
    calls = []

    def shift(images, labels):
        calls.append(len(images))
        return np.clip(images.astype(int) + 3, 0, 255).astype(np.uint8)

    for _ in range(2):
        fa.leaderboard({"s0": s0}, x, y, [("shift", shift)], [v], rmse=[1], n_boot=0,
                       out=tmp_path / "c")
    assert calls == [5, 5]


def test_bad_input_is_refused_before_any_work(case, tmp_path):
    root, s0, s1, v, x, y = case
    with pytest.raises(ValueError, match="rmse"):
        fa.leaderboard([s0], x, y, ["FGSM"], [v], rmse=[4, 20], out=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown optimizer|PGDD"):
        fa.leaderboard([s0], x, y, ["PGDD"], [v], out=tmp_path / "x")
    with pytest.raises(ValueError, match="unique"):
        fa.leaderboard([s0], x, y, ["FGSM", "FGSM"], [v], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


class _Page(HTMLParser):
    """Tables (id -> rows of cell texts), images (alt, src) and every link of a page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.links = {}, [], []
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")
        elif tag == "img":
            self.images.append((a.get("alt", ""), a.get("src", "")))
        for key in ("href", "src"):
            if key in a and not a[key].startswith("data:"):
                self.links.append(a[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None

    def handle_data(self, text):
        if self._row is not None and self._row:
            self._row[-1] += text


def test_the_page_holds_every_attack_number_and_image(case, tmp_path):
    root, s0, s1, v, x, y = case
    table = _board(case, tmp_path / "b")
    text = (tmp_path / "b" / "leaderboard.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.links == [] and "http://" not in text and "https://" not in text  # offline
    for k, surrogate in enumerate(("s0", "s1")):
        for victim, ident in [("mean", f"board-{k}-mean"), ("v", f"board-{k}-0"),
                              ("s1", f"board-{k}-1")]:
            head, *rows = page.tables[ident]
            assert head[0].startswith("attack") and len(rows) == len(ATTACKS)
            by_attack = {r[0]: dict(zip(head, r)) for r in rows}
            want = table[(table["surrogate"] == surrogate) & (table["victim"] == victim)]
            for _, w in want.iterrows():
                got = by_attack[w["attack"]]
                assert got["ASR native"].startswith(f"{w['asr']:.3f} [{w['asr_low']:.3f}, ")
                for r in (1, 2, 4):
                    assert got[f"ASR @ RMSE {r}"].startswith(f"{w[f'asr@{r}']:.3f} [")
                    assert got[f"rank @ {r} (shift)"] == \
                        f"{w[f'rank@{r}']} ({w[f'shift@{r}']:+d})"
                assert got["RMSE"] == f"{w['rmse']:.2f}" and got["AUC"] == f"{w['auc']:.3f}"
                assert got["rank native"] == str(w["rank"])
                if np.isnan(w["rmse50"]):
                    assert got["rmse50"] == "not reached"
                else:
                    assert got["rmse50"].startswith(f"{w['rmse50']:.2f}")
    # two figures and (1 + attacks) x 2 example images per surrogate, all inline PNGs
    assert len(page.images) == 2 * (2 + (1 + len(ATTACKS)) * 2)
    for alt, src in page.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    frame = table.attrs["frames"]["s0"]
    for attack in ("FGSM", "pgd3"):
        shown = [src for alt, src in page.images if alt == f"{attack} image 0"]
        im = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown[0].split(",", 1)[1]))))
        scale = im.shape[0] // 16
        np.testing.assert_array_equal(im[::scale, ::scale], frame.examples[attack][0])
    md = (tmp_path / "b" / "leaderboard.md").read_text()
    assert md.count("## Surrogate") == 2 and all(f"| {a} |" in md for a in ("FGSM", "pgd3"))


def test_cli_leaderboard_runs_and_resumes(case, tmp_path):
    root, s0, s1, v, x, y = case
    folder = tmp_path / "photos"
    folder.mkdir()
    labels = fa.load_model(s0).predict(x)
    for i, (im, label) in enumerate(zip(x, labels)):
        Image.fromarray(im).save(folder / f"{data.synset_of(int(label))}_img{i}.png")
    def command(rmse=(2, 4), out="out"):
        return ["leaderboard", "--attacks", "FGSM", "ta:FGSM", "--surrogates", s0, s1,
                "--victims", v, "--data", folder, "--n-images", 4, "--image-size", 16,
                "--rmse", *rmse, "--n-boot", 20, "--out", tmp_path / out, "--quiet"]

    args = command()
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.html"):
        assert (tmp_path / "out" / name).is_file()
    assert "0 of 4 cells reused" in out.stdout
    again = cli(*args)
    assert again.returncode == 0 and "4 of 4 cells reused" in again.stdout
    bad = cli(*command(rmse=(4, 20), out="bad"))
    assert bad.returncode == 2 and "--rmse" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_cli_leaderboard_takes_an_ensemble_surrogate_and_a_compute_budget(case, tmp_path):
    """--surrogates A+B (with --fuse/--weights) is one surrogate of the board, its passes one
    per member; --max-grads K holds fairattack's attacks to K and flags a peer over it."""
    import pandas as pd

    root, s0, s1, v, x, y = case
    folder = tmp_path / "photos"
    folder.mkdir()
    ens = fa.ensemble([fa.load_model(s0), fa.load_model(s1)], weights=[0.7, 0.3])
    for i, (im, label) in enumerate(zip(x, ens.predict(x))):
        Image.fromarray(im).save(folder / f"{data.synset_of(int(label))}_img{i}.png")
    out = cli("leaderboard", "--attacks", "PGD", "ta-pgd=ta:PGD,steps=10,alpha=1.6",
              "--surrogates", f"{s0}+{s1}", "--weights", 0.7, 0.3, "--victims", v,
              "--data", folder, "--n-images", 3, "--image-size", 16, "--rmse", 2,
              "--n-boot", 0, "--max-grads", 8, "--out", tmp_path / "ens", "--quiet")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "ens" / "leaderboard.csv")
    assert set(table["surrogate"]) == {"s0+s1"}  # named by its members
    spent = table.groupby("attack")["grad_evals"].first()
    assert spent["PGD"] == 8  # 4 steps x 2 members within 8 passes
    over = table.groupby("attack")["over_max_grads"].first()
    assert not over["PGD"] and over["ta-pgd"]  # the peer's 10 steps x 2 members
    bad = cli("leaderboard", "--attacks", "PGD", "--surrogates", s0, "--weights", 1,
              "--victims", v, "--data", folder, "--out", tmp_path / "bad", "--quiet")
    assert bad.returncode == 2 and "--weights" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_markdown_table_round_trips_through_a_parser():
    """The one Markdown table writer: every cell back from the lines (floats to 3 decimals, '|'
    escaped), one rule line, as many columns as the header."""
    from fairattack.markdown import table

    rows = [("MI|FGSM", 0.12345, 3, np.float64(2.0)), ("PGD", float("nan"), -1, "n.r.")]
    lines = table(["attack", "asr", "rank", "rmse50"], rows)
    assert lines[1] == "|---|---|---|---|"
    parsed = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
              for line in lines[:1] + lines[2:]]
    assert parsed == [["attack", "asr", "rank", "rmse50"],
                      ["MI|FGSM", "0.123", "3", "2.000"], ["PGD", "nan", "-1", "n.r."]]
