"""Sharding a study with torchrun (CPU, gloo): every `run` option passes through torchrun's parser,
two ranks give the table one process gives, and a rank killed with SIGKILL loses nothing: the same
command again completes with nothing lost or duplicated."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairattack as fa
from fairattack import cli
from tiny import user_folder

PACKAGE_ROOT = str(Path(fa.__file__).resolve().parents[1])
SIZE = 16
EXCLUDE = ["seconds"]


def run_options():
    """Every option string of `fairattack run`, with a value when it takes one."""
    parser = cli.parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["run"]
    out = []
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        for option in action.option_strings:
            if option == "--n":  # the old spelling: an alias outside torchrun only (below)
                continue
            value = [] if action.nargs == 0 else [str(action.choices[0]) if action.choices
                                                  else "1"]
            out.append([option] + value)
    return out


@pytest.mark.parametrize("option", run_options(), ids=lambda o: o[0])
def test_every_run_option_passes_through_torchrun(option):
    from torch.distributed.run import get_args_parser

    script = ["run"] + option
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", "2", "-m",
                                         "fairattack"] + script)
    assert args.module and args.training_script == "fairattack"
    assert args.training_script_args == script


def test_the_old_n_spelling_does_not_pass_through_torchrun(capsys):
    from torch.distributed.run import get_args_parser

    with pytest.raises(SystemExit):  # ambiguous: --nnodes, --nproc-per-node, --node-rank ...
        get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "fairattack", "run",
                                      "--n", "8"])
    assert "ambiguous" in capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny TorchScript models and a flat folder of SYNSET_name.png images."""
    return user_folder(tmp_path_factory.mktemp("torchrun"))


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT,
                                                       os.environ.get("PYTHONPATH")) if p))


def study_args(files, out, *extra):
    root, s, v, folder = files
    return ["run", "--surrogates", s, "--victims", v, "--data", folder, "--n-images", 5,
            "--image-size", SIZE, "--optimizers", "GD", "Adam", "--max-iter", 3,
            "--attack", "pgd-rs=PGD:fixed,random_start=1,di_prob=0.5", "--chunk-size", 2,
            "--out", out, "--quiet", *extra]


def torchrun(args, ranks=2, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks), "-m", "fairattack", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env(), cwd=tempfile.gettempdir())
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def one_process(args, monkeypatch):
    """The same command in this process (what `python -m fairattack` runs)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.main([str(a) for a in args]) == 0


def cell_images(out):
    """{cell folder: (per-image records without timings, {png: pixels})}."""
    cells = {}
    for cell in sorted((out / "cells").glob("*/*/*")):
        frame = pd.read_csv(cell / "images.csv")
        pixels = {p.name: np.asarray(Image.open(p)) for p in sorted((cell / "adv").iterdir())}
        cells[str(cell.relative_to(out))] = (frame, pixels)
    return cells


def workers(out):
    import json

    return {json.loads(p.read_text())["worker"] for p in (out / "cells").glob("*/*/*/chunks/*")}


def assert_same_study(got, want):
    pd.testing.assert_frame_equal(pd.read_csv(got / "results.csv").drop(columns=EXCLUDE),
                                  pd.read_csv(want / "results.csv").drop(columns=EXCLUDE))
    got_cells, want_cells = cell_images(got), cell_images(want)
    assert list(got_cells) == list(want_cells)
    for name, (frame, pixels) in want_cells.items():
        pd.testing.assert_frame_equal(got_cells[name][0], frame)
        assert list(got_cells[name][1]) == list(pixels)
        for png, image in pixels.items():
            np.testing.assert_array_equal(got_cells[name][1][png], image)


def test_two_ranks_give_the_table_of_one_process(files, tmp_path, monkeypatch):
    one_process(study_args(files, tmp_path / "one"), monkeypatch)
    printed = torchrun(study_args(files, tmp_path / "two"))
    assert printed.count("results:") == 1  # rank 0 speaks for both
    assert_same_study(tmp_path / "two", tmp_path / "one")
    assert len(workers(tmp_path / "two")) == 2  # both ranks crafted chunks
    assert not list((tmp_path / "two").rglob("*.tmp"))


def children(pid):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def rank_of(pid):
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"RANK="):
            return int(entry[5:])
    return None


def test_killed_rank_then_rerun_loses_and_duplicates_nothing(files, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    args = study_args(files, out, "--chunk-size", 1, "--max-iter", 40, "--stop-loss", "inf")
    process = torchrun(args, wait=False)
    try:
        deadline = time.time() + 120
        while not list((out / "cells").glob("*/*/*/chunks/*.json")):
            assert process.poll() is None, process.communicate()[1]
            assert time.time() < deadline, "no chunk was recorded in 120 s"
            time.sleep(0.05)
        victim = [pid for pid in children(process.pid) if rank_of(pid) == 1]
        assert victim, "rank 1 not found"
        os.kill(victim[0], signal.SIGKILL)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    recorded = list((out / "cells").glob("*/*/*/chunks/*.json"))
    assert 0 < len(recorded) < 15  # 3 cells x 5 chunks: stopped part-way

    torchrun(args)  # the same command again
    one_process(study_args(files, tmp_path / "one", "--chunk-size", 1, "--max-iter", 40,
                           "--stop-loss", "inf"), monkeypatch)
    assert_same_study(out, tmp_path / "one")
    for frame, pixels in cell_images(out).values():
        assert len(frame) == 5 and frame["name"].is_unique and len(pixels) == 5
    assert not list(out.rglob("*.tmp"))
