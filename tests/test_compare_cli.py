"""`fairattack compare`, run as a user runs it: in a subprocess, on tiny models and PNG folders."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairattack as fa
from fairattack import data
from test_cli import cli
from tiny import save_tiny


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny models; a clean folder of SYNSET_name.png; two attacks' folders of the same names."""
    root = tmp_path_factory.mktemp("cmp")
    s = save_tiny(root / "surrogate.pt", 0)
    v = save_tiny(root / "victim.pt", 1)
    surrogate = fa.load_model(s)
    rng = np.random.default_rng(0)
    clean_dir, noise_dir, sign_dir = (root / n for n in ("clean", "noise", "sign"))
    for d in (clean_dir, noise_dir, sign_dir):
        d.mkdir()
    for i in range(8):
        x = rng.integers(20, 236, (16, 16, 3)).astype(np.uint8)
        label = int(surrogate.predict(x[None])[0]) if i % 4 else (
            int(surrogate.predict(x[None])[0]) + 1) % 1000   # every 4th: surrogate gets it wrong
        name = f"{data.synset_of(label)}_img{i}.png"
        noise = np.clip(x + rng.normal(0, 4, x.shape).round(), 0, 255).astype(np.uint8)
        sign = np.clip(x.astype(int) + 16 * rng.choice([-1, 1], x.shape), 0, 255).astype(np.uint8)
        for d, im in ((clean_dir, x), (noise_dir, noise), (sign_dir, sign)):
            Image.fromarray(im).save(d / name)
    return root, s, v, clean_dir, noise_dir, sign_dir


def _load(folder):
    files = sorted(folder.iterdir())
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]), files


def test_compare_folders_then_resume(folders):
    root, s, v, clean_dir, noise_dir, sign_dir = folders
    out_dir = root / "out"
    args = ["compare", "--clean", clean_dir, "--adv", f"noise={noise_dir}", f"sign={sign_dir}",
            "--victims", v, "--rmse", 2, 5, "--eps", 16, "--n-boot", 100, "--out", out_dir,
            "--quiet"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(out_dir / "compare.csv")
    assert len(df) == 2 * 3 * 2 and (df["n_images"] == 8).all()   # no surrogate: all count
    assert set(df["victim"]) == {"victim", "mean"}
    for name in ("compare.json", "compare.md", "per_image.csv", "asr_at_rmse.png"):
        assert (out_dir / name).is_file(), name
    assert "0 of 6 cells from the cache" in out.stdout
    # the numbers, recomputed here through the Python API
    clean, files = _load(clean_dir)
    victim = fa.load_model(v)
    labels = np.array([data.index_of(f.name[:9]) for f in files])
    for attack, folder in (("noise", noise_dir), ("sign", sign_dir)):
        adv, _ = _load(folder)
        rows = df[(df["attack"] == attack) & (df["victim"] == "victim")].set_index("rmse")
        assert rows.loc["native", "asr"] == pytest.approx(np.mean(victim.predict(adv) != labels))
        for r in (2.0, 5.0):
            matched, reached = fa.match_rmse(clean, adv, r, eps=16)
            row = df[(df["attack"] == attack) & (df["victim"] == "victim")
                     & (df["rmse"].astype(str) == str(r))].iloc[0]
            assert row["asr"] == pytest.approx(np.mean(victim.predict(matched) != labels))
            assert row["n_unreachable"] == int((~reached).sum())
    meta = json.loads((out_dir / "compare.json").read_text())["meta"]
    assert meta["n_images"] == 8 and meta["mode"] == "rescale"
    assert (out_dir / "compare.md").read_text().startswith("# Fair comparison")
    per = pd.read_csv(out_dir / "per_image.csv")
    assert set(per["name"]) == {f.name for f in files}
    # the documented round trip: paired_test on the per-image table read back from this file
    # (pd.read_csv gives the rmse column back as text: '2.0', 'native')
    typed = per.assign(rmse=per["rmse"].map(lambda v: v if v == "native" else float(v)))
    for r in (2, 5.0, "native"):
        assert fa.paired_test(per, "noise", "sign", r, "victim") == \
            fa.paired_test(typed, "noise", "sign", r, "victim")

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "6 of 6 cells from the cache" in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out_dir / "compare.csv"), df)

    # a surrogate keeps only the images it gets right (6 of 8): new cells
    third = cli(*args[:-1], "--surrogate", s)
    assert third.returncode == 0, third.stderr
    df3 = pd.read_csv(out_dir / "compare.csv")
    assert (df3["n_images"] == 6).all() and "0 of 6 cells from the cache" in third.stdout


def test_compare_attacks_from_a_data_folder_in_budget_mode(folders):
    root, s, v, clean_dir, _, _ = folders
    out_dir = root / "out-attacks"
    args = ["compare", "--attacks", "FGSM", "PGD", "--surrogate", s, "--data", clean_dir,
            "--n-images", 4, "--image-size", 16, "--victims", v, "--rmse", 3, "--mode",
            "budget", "--n-boot", 50, "--out", out_dir, "--quiet"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(out_dir / "compare.csv")
    assert list(dict.fromkeys(df["attack"])) == ["FGSM", "PGD"]
    assert set(df["how"]) == {"native", "budget"} and (df["n_images"] == 4).all()
    budget = df[df["how"] == "budget"]
    assert (budget["rmse_mean"] <= 3.05).all()
    again = cli(*args)
    assert again.returncode == 0 and "4 of 4 cells from the cache" in again.stdout


def test_compare_max_grads_on_the_command_line(folders):
    """--max-grads K: fairattack's attacks within K passes per image (SI's copies counted), the
    budget in the table and its json."""
    root, s, v, clean_dir, _, _ = folders
    out_dir = root / "out-grads"
    out = cli("compare", "--attacks", "PGD", "SI=MI-FGSM,si_copies=3", "--surrogate", s,
              "--data", clean_dir, "--n-images", 4, "--image-size", 16, "--victims", v,
              "--rmse", 3, "--n-boot", 0, "--max-grads", 7, "--out", out_dir, "--quiet")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(out_dir / "compare.csv")
    spent = df[df["how"] == "native"].groupby("attack")["grad_evals_mean"].first()
    assert spent["PGD"] == 7 and spent["SI"] == 6  # 7 steps; 2 steps of 3 copies
    assert (df["max_grads"] == 7).all() and not df["over_max_grads"].any()
    assert json.loads((out_dir / "compare.json").read_text())["meta"]["max_grads"] == 7
    bad = cli("compare", "--attacks", "PGD", "--surrogate", s, "--data", clean_dir,
              "--victims", v, "--max-grads", 0, "--out", root / "o", "--quiet")
    assert bad.returncode == 2 and "--max-grads" in bad.stderr


@pytest.mark.parametrize("extra, message", [
    ([], "either as --clean"),
    (["--clean", "/no/such/dir", "--adv", "a=/x"], "is not a folder"),
    (["--clean", "CLEAN", "--adv", "noslash"], "NAME=DIR"),
    (["--clean", "CLEAN"], "--adv"),
    (["--data", "CLEAN", "--attacks", "PGD"], "--surrogate"),
    (["--clean", "CLEAN", "--adv", "a=CLEAN", "--mode", "fast"], "invalid choice"),
    (["--clean", "CLEAN", "--adv", "a=CLEAN", "--rmse", "-1"], "rmse"),
    (["--clean", "CLEAN", "--adv", "a=EMPTY"], "holds no images"),
])
def test_compare_user_errors_are_one_line_and_exit_2(folders, tmp_path, extra, message):
    root, s, v, clean_dir, _, _ = folders
    (tmp_path / "empty").mkdir()
    extra = [str(clean_dir) if a == "CLEAN" else a.replace("CLEAN", str(clean_dir))
             .replace("EMPTY", str(tmp_path / "empty")) for a in extra]
    out = cli("compare", *extra, "--victims", v, "--out", tmp_path / "o", "--quiet")
    assert out.returncode == 2
    assert message in out.stderr
    if "invalid choice" not in message:  # argparse prints its usage first
        assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("fairattack: error:")


def test_attack_specs_on_the_command_line():
    """compare --attacks and run --attack read one grammar (fairattack.spec)."""
    from fairattack import spec

    assert spec.coerce("PGD", "a") == spec.AttackSpec("PGD", "fairattack", optimizer="PGD")
    assert spec.coerce("ta:PGD", "a").kind == "peer"
    assert spec.parse_text("DI=PGD,di_prob=0.5,max-iter=5") == (
        "DI", {"optimizer": "PGD", "di_prob": 0.5, "max_iter": 5})
    assert spec.parse_text("adam-rl=Adam:rmse_loss") == (
        "adam-rl", {"optimizer": "Adam", "setting": "rmse_loss"})
    got = spec.coerce("DI=PGD:fixed,di_min_scale=0.8", "a")
    assert (got.name, got.optimizer, got.setting, got.params) == (
        "DI", "PGD", "fixed", {"di_min_scale": 0.8})
    with pytest.raises(ValueError, match="key=value"):
        spec.parse_text("x=PGD,di_prob")
