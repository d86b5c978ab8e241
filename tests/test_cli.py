"""The `fairattack` command, run as a user runs it: in a subprocess."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

import fairattack as fa
from tiny import user_folder

PACKAGE_ROOT = str(Path(fa.__file__).resolve().parents[1])


def cli(*args, cwd=None, module="fairattack.cli"):
    # never the repository root: `python -m` would import the source tree, not the installed
    # package (which holds the compiled extension)
    cwd = cwd or tempfile.gettempdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


def one_error_line(out, message):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairattack: error:"), out.stderr
    assert message in lines[0]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """Tiny TorchScript models and a flat folder of SYNSET_name.png images."""
    return user_folder(tmp_path_factory.mktemp("user"))


def test_models_lists_the_registry():
    out = cli("models")
    assert out.returncode == 0, out.stderr
    assert "efficientnet-lite0" in out.stdout and "224" in out.stdout


def test_run_then_report(user_files):
    root, s, v, folder = user_files
    out_dir = root / "study"
    out = cli("run", "--surrogates", s, "--victims", v, "--data", folder, "--n-images", 3,
              "--optimizers", "gd", "ADAM", "--settings", "Const_Loss", "--eps", 8,
              "--max-iter", 3, "--image-size", 16, "--out", out_dir, "--quiet",
              "--device", "CPU", "--rounding", "Round", module="fairattack")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(out_dir / "results.csv")
    assert list(df["optimizer"]) == ["GD", "Adam"] and (df["linf"] <= 8).all()
    assert list(df["setting"]) == ["const_loss"] * 2
    assert (df["n_images"] == 3).all() and "err_victim" in df.columns
    assert "asr" in out.stdout and (out_dir / "asr_vs_rmse.png").is_file()

    (out_dir / "results.md").unlink()
    again = cli("report", out_dir)
    assert again.returncode == 0, again.stderr
    assert (out_dir / "results.md").read_text().startswith("| surrogate")


@pytest.mark.parametrize("args, message", [
    (["demo", "--optimizers", "Adamax"], "unknown optimizer 'Adamax'"),
    (["demo", "--settings", "fast"], "unknown setting 'fast'"),
    (["run", "--surrogates", "x.pt", "--victims", "y.pt", "--data", "/no/such/folder"],
     "does not exist"),
    (["report", "/no/such/study"], "not a results folder"),
    (["run", "--surrogates", "no-such-model", "--victims", "efficientnet-lite0", "--data", "."],
     "surrogates: unknown model 'no-such-model'"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "lite9", "--data", "."],
     "victims: unknown model 'lite9'"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "pgd="], "NAME=OPTIMIZER"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "x=PGD,di_prob"], "'di_prob' is not key=value"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "x=PGD,stepsize=2"], "unknown key 'stepsize'"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "x=Adamax"], "unknown optimizer 'Adamax'"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "x=PGD:fast"], "unknown setting 'fast'"),
    (["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1", "--data",
      ".", "--attack", "x=PGD", "--attack", "x=GD"], "same name"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    out = cli(*args, cwd=tmp_path)
    one_error_line(out, message)
    assert not (tmp_path / "fairattack-study" / "cells").exists()  # validated before any work


@pytest.mark.parametrize("content", ["a,b\n1,2,3,4\n\"x", "x,y\n1,2\n", "\xff\xfe\x00"])
def test_report_on_a_malformed_results_file_is_one_error_line(tmp_path, content):
    (tmp_path / "results.csv").write_bytes(content.encode("latin-1"))
    one_error_line(cli("report", tmp_path), "malformed results file")


def test_attack_variants_and_recompute_lines(user_files):
    root, s, v, folder = user_files
    out_dir = root / "variants"
    args = ["run", "--surrogates", s, "--victims", v, "--data", folder, "--n-images", 3,
            "--image-size", 16, "--out", out_dir, "--quiet", "--max-iter", 2,
            "--attack", "pgd-di=PGD:fixed,di_prob=0.5,ti_kernel=3",
            "--attack", "adam4=adam,eps=4", "--optimizers", "GD"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(out_dir / "results.csv")
    assert sorted(zip(df["attack"], df["optimizer"], df["setting"])) == [
        ("GD", "GD", "const_loss"), ("adam4", "Adam", "const_loss"),
        ("pgd-di", "PGD", "fixed")]
    assert df.loc[df["attack"] == "adam4", "linf"].max() <= 4
    cell = out_dir / "cells" / "surrogate" / "fixed" / "pgd-di" / "cell.json"
    assert '"di_prob": 0.5' in cell.read_text() and '"ti_kernel": 3' in cell.read_text()
    # a changed hyper-parameter: one line saying which cell and why, only that cell recomputed
    args[args.index("adam4=adam,eps=4")] = "adam4=adam,eps=3"
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    lines = [line for line in again.stderr.splitlines() if line.startswith("fairattack:")]
    assert lines == [("fairattack: recomputing cell surrogate/const_loss/adam4: the configuration "
                      "changed (config.eps: 4.0 -> 3.0)")]


def test_bad_option_value_is_a_usage_error(user_files):
    root, s, v, folder = user_files
    out = cli("run", "--surrogates", s, "--victims", v, "--data", folder, "--eps", "-4",
              "--out", root / "bad", "--image-size", 16, "--quiet")
    assert out.returncode == 2 and "eps" in out.stderr and "Traceback" not in out.stderr


def test_demo_on_the_shipped_photos(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    out = cli("demo", "--optimizers", "Adam", "--out", tmp_path / "demo", "--quiet",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "demo" / "results.csv")
    assert df.loc[0, "optimizer"] == "Adam" and df.loc[0, "n_images"] >= 3
    assert {"err_efficientnet-lite1", "err_efficientnet-lite2", "err_mobilenet-v2",
            "asr"} <= set(df.columns)
    assert (tmp_path / "demo" / "gallery.png").is_file()
