"""The command behaves like the Python API (issue 16): one vocabulary for every command, one
`fairattack: error:` line with a suggestion for every mistake, validation before any work,
defaults in --help, the export route for state dicts. Run as a user runs it: in a subprocess."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from test_cli import cli, one_error_line
from tiny import user_folder


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    return user_folder(tmp_path_factory.mktemp("user"))


RUN = ["run", "--surrogates", "efficientnet-lite0", "--victims", "efficientnet-lite1",
       "--data", "."]


@pytest.mark.parametrize("args, message", [
    (["run", "--steps", "10"], "unknown option --steps (did you mean --max-iter?)"),
    (["run", "--epsilon", "3"], "unknown option --epsilon (did you mean --eps?)"),
    (["compare", "--epsilon", "3"], "unknown option --epsilon (did you mean --eps?)"),
    (RUN + ["--device", "gpu"], "invalid choice: 'gpu'"),
    (RUN + ["--device", "gpu"], "(did you mean cuda?)"),
    (["compare", "--victims", "x", "--device", "gpu"], "(did you mean cuda?)"),
    (RUN + ["--eps", "8/255"], "8, not 8/255"),
    (RUN + ["--eps", "-4"], "argument --eps: -4 is not a positive number"),
    (RUN + ["--eps", "0.03"], "eps=0.03 is below one pixel level"),
    (RUN + ["--beta1", "2"], "--beta1 2.0: beta1=2 must be in [0, 1)"),
    (RUN + ["--stop-rmse", "20"], "--stop-rmse 20.0: stop_rmse=20 can never be reached"),
    (RUN + ["--optimizers", "adamm"], "unknown optimizer 'adamm' (did you mean Adam?)"),
    (RUN + ["--settings", "const-loss"], "unknown setting 'const-loss' (did you mean "
     "const_loss?)"),
    (RUN + ["--attacks", "x=adamm"], "unknown optimizer 'adamm' (did you mean Adam?)"),
    (RUN + ["--nesterov", "book"], "invalid choice: 'book'"),
    (["compare", "--victims", "x", "--surrogate", "y", "--data", ".", "--attacks", "adamm"],
     "unknown optimizer 'adamm' (did you mean Adam?)"),
    (["compare", "--victims", "x", "--surrogate", "y", "--data", ".", "--attacks", "PGD",
      "--rmse", "20", "--eps", "16"], "--rmse 20 can never be reached with --eps 16"),
    (["compare", "--victims", "x", "--surrogate", "y", "--data", ".", "--attacks", "PGD",
      "--eps", "0.03"], "eps=0.03 is below one pixel level"),
    (["compare", "--victims", "x", "--surrogate", "y", "--data", ".", "--attacks",
      "x=PGD,di_prob=2"], "--attacks 'x=PGD,di_prob=2': di_prob must be in [0, 1]"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_every_mistake_is_one_line_with_a_suggestion(args, message, tmp_path):
    out = cli(*args, cwd=tmp_path)
    one_error_line(out, message)
    assert not any(tmp_path.iterdir())  # validated before any work: no output folder


def test_one_vocabulary_across_commands(user_files, tmp_path):
    root, s, v, folder = user_files
    # compare takes run's spellings: --surrogates, --attack, --n, --device CPU
    out = cli("compare", "--surrogates", s, "--victims", v, "--data", folder, "--n", 3,
              "--attack", "PGD", "--attack", "gd4=GD,max_iter=2", "--rmse", 2, "--eps", 8,
              "--image-size", 16, "--n-boot", 0, "--device", "CPU", "--quiet", "--out",
              tmp_path / "cmp")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(df["attack"]) == {"PGD", "gd4"} and (df["n_images"] == 3).all()
    assert "clean_error" in df.columns
    # run takes compare's: --surrogate, --attacks (optimizer names too)
    out = cli("run", "--surrogate", s, "--victims", v, "--data", folder, "--n", 3,
              "--attacks", "PGD", "gd2=GD,max_iter=2", "--eps", 8, "--image-size", 16,
              "--quiet", "--out", tmp_path / "study")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "study" / "results.csv")
    # one default per attack: PGD under fixed, as fa.attack and compare run it
    assert dict(zip(df["attack"], df["setting"])) == {"PGD": "fixed", "gd2": "const_loss"}
    assert "clean_err_victim" in df.columns and "clean_err_victim" in out.stdout
    # report reads a compare folder too
    again = cli("report", tmp_path / "cmp")
    assert again.returncode == 0, again.stderr
    assert "clean_error" in again.stdout and "gd4" in again.stdout


def test_help_shows_every_default_and_every_command():
    top = cli("--help")
    for command in ("demo", "run", "compare", "report", "models", "export"):
        assert f"    {command} " in top.stdout, command
    run = " ".join(cli("run", "--help").stdout.split()).replace("- ", "-")  # unwrapped
    for text in ("default: fairattack-study", "default: 16", "default: round",
                 "{authors,textbook}", "{best,last}", "default 1000"):
        assert text in run, text
    compare = " ".join(cli("compare", "--help").stdout.split()).replace("- ", "-")
    for text in ("default: fairattack-compare", "default: [2, 4, 6, 8, 10, 12]",
                 "default: rescale", "default: 1000", "default: 100", "default: 0"):
        assert text in compare, text
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("fairattack ")


def test_a_state_dict_points_at_export_then_export_makes_a_model(user_files, tmp_path):
    import torchvision

    root, s, v, folder = user_files
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=1000)
    torch.save(torch.nn.DataParallel(net).state_dict(), tmp_path / "sq.pth")
    out = cli("run", "--surrogates", tmp_path / "sq.pth", "--victims", v, "--data", folder,
              cwd=tmp_path)
    one_error_line(out, "is not a TorchScript model")
    assert "fairattack export" in out.stderr
    out = cli("export", "squeezenet1_2", tmp_path / "sq.pth", tmp_path / "sq.pt")
    one_error_line(out, "did you mean squeezenet1_1?")
    out = cli("export", "squeezenet1_1", tmp_path / "sq.pth", tmp_path / "sq.pt",
              "--image-size", 64)
    assert out.returncode == 0, out.stderr
    import fairattack as fa
    from fairattack import models

    assert models.read_metadata(tmp_path / "sq.pt")["input_size"] == [64, 64]
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    reference = fa.load_model(net, mode="torch", input_size=64)
    np.testing.assert_allclose(fa.load_model(tmp_path / "sq.pt").logits(x),
                               reference.logits(x), rtol=1e-4, atol=1e-4)
    assert json.dumps(models.read_metadata(tmp_path / "sq.pt")).find("torchvision") > 0


def test_a_failed_run_leaves_no_output_folder(user_files, tmp_path):
    root, s, v, folder = user_files
    out = cli("run", "--surrogates", s, "--victims", v, "--data", folder, "--out",
              tmp_path / "study", cwd=tmp_path)  # a plain TorchScript file: size unknown
    one_error_line(out, "unknown input size")
    assert "--image-size" in out.stderr
    out = cli("compare", "--surrogates", s, "--victims", v, "--data", folder, "--attacks",
              "PGD", "--out", tmp_path / "cmp", cwd=tmp_path)
    one_error_line(out, "unknown input size; pass --image-size")
    assert not any(tmp_path.iterdir())
