"""fairattack.store: atomic writes leave the old file or the new one and no temporary file, locks
exclude other holders and die with their holder, digests follow content, PNG names never
collide."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fairattack import store


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "x.json"
    store.write_json(path, {"v": float("nan"), "n": np.int64(3), "a": np.arange(2)})
    assert store.read_json(path) == {"v": "nan", "n": 3, "a": [0, 1]}

    def fails(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.write_atomic(path, fails)
    assert store.read_json(path)["n"] == 3  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_write_atomic_gives_the_umask_mode_not_owner_only(tmp_path):
    """A study or leaderboard in a shared folder stays readable by the group/others as the umask
    says (tempfile.mkstemp alone would leave every file 0o600)."""
    old = os.umask(0o022)
    try:
        for mask in (0o022, 0o027, 0o077):
            os.umask(mask)
            path = store.write_atomic(tmp_path / f"m{mask:o}.csv", b"x")
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask
            assert open(path, "rb").read() == b"x"
    finally:
        os.umask(old)


def test_sweep_temps_removes_what_a_killed_writer_left(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / ".x.json.abc.tmp").write_text("half")
    (tmp_path / "cells" / "x.json").write_text("{}")
    assert store.sweep_temps(tmp_path) == 1
    assert [p.name for p in (tmp_path / "cells").iterdir()] == ["x.json"]


def test_lock_excludes_other_holders_and_dies_with_its_holder(tmp_path):
    lock = tmp_path / "locks" / "cell.lock"
    with store.locked(lock) as got:
        assert got
        with store.locked(lock, blocking=False) as again:  # another open file: excluded
            assert again is False
    with store.locked(lock, blocking=False) as got:
        assert got
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with store.locked(lock, blocking=False) as got:
            assert got is False
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
        with store.locked(lock, blocking=False) as got:
            assert got
    finally:
        holder.kill()
        holder.wait()


def test_digests_follow_content(tmp_path):
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 0, 0, 0] = 1
    da, db = store.digest_images(a), store.digest_images(b)
    assert da[0] == db[0] and da[1] != db[1]
    assert store.digest_array(a) != store.digest_array(a.astype(np.int16))
    assert store.digest_json({"x": 1, "y": [1.0]}) == store.digest_json({"y": [1.0], "x": 1})

    (tmp_path / "f1.png").write_bytes(b"one")
    (tmp_path / "f2.png").write_bytes(b"two")
    cache = tmp_path / "files.json"
    first = store.digest_files(tmp_path, ["f1.png", "f2.png"], cache)
    assert first == [store.digest_bytes(b"one"), store.digest_bytes(b"two")]
    time.sleep(0.01)
    (tmp_path / "f2.png").write_bytes(b"TWO")  # same size, new content and mtime
    second = store.digest_files(tmp_path, ["f1.png", "f2.png"], cache)
    assert second == [first[0], store.digest_bytes(b"TWO")]


def test_png_names_never_collide():
    names = ["n01440764/img1.JPEG", "n01443537/img1.JPEG", "n01443537/img2.JPEG",
             "flat_a.png", "FLAT_A.jpg", "a/b_c.png", "a_b/c.png", "x.y.png"]
    pngs = store.png_names(names)
    assert len({p.lower() for p in pngs}) == len(names)
    assert pngs[0] == "n01440764__img1.png" and pngs[2] == "n01443537__img2.png"
    assert pngs[7] == "x.y.png"
    assert all(p.endswith(".png") and os.sep not in p for p in pngs)
    assert store.png_names(names) == pngs  # deterministic
    with pytest.raises(ValueError, match="same name"):
        store.png_names(["a.png", "a.png"])
