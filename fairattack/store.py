"""Every on-disk record: content digests, atomic writes, locks, a study folder's layout and its
cell records, compare's cache and output files.

A study folder holds, per cell (surrogate x setting x attack), everything that determines and
everything that was measured, so that a run can be resumed, sharded over processes and machines
that share the folder, extended with victims, and audited:

    out_dir/
      results.csv, results.json            every finished cell on disk (rebuilt, never appended)
      selection/<surrogate>/               selected clean images, keyed (docs/protocol.md)
        key.json, images.npy, labels.npy, names.json
      cells/<surrogate>/<setting>/<attack>/
        cell.json                          the cell's key and the parts it hashes (surrogate file,
                                           configuration, images, labels, version); "complete"
        chunks/<start>.json                one work item: per-image records of images [start, stop)
        victims/<victim>/<start>.json      a victim's predictions on that chunk's adversarial images
        images.csv                         all per-image records (written when the cell completes)
        victims/<victim>.json              all of a victim's predictions (idem)
        adv/<png>                          the adversarial images (uint8 PNG)
      locks/                               one lock file per cell and per work item (fcntl.flock)
      files.json                           digests of data files, by (size, mtime) (a cache)

Every file is written to a temporary name in its folder and renamed over its target
(`write_atomic`), so a reader (or a killed writer) never sees half a file; `sweep_temps` removes the
temporary files a killed process left behind. A record carries the key it was computed for; a
record under another key is stale and is recomputed.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from .data import read_rgb

TEMP_SUFFIX = ".tmp"


# ----------------------------------------------------------------------------- digests

def digest_bytes(data):
    """SHA-256 hex digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def digest_file(path, block=1 << 20):
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_array(array):
    """SHA-256 of an array's dtype, shape and values."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def digest_images(images, block=256):
    """Digests of uint8 images, one per image (a list of hex strings), computed in blocks."""
    return [digest_array(image) for start in range(0, len(images), block)
            for image in np.asarray(images[start:start + block])]


def digest_json(obj):
    """SHA-256 of an object's canonical JSON (sorted keys)."""
    return digest_bytes(json.dumps(_plain(obj), sort_keys=True).encode())


def digest_parts(*parts):
    """SHA-256 of a sequence of arrays (dtype, shape, values) and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def digest_files(root, names, cache_path=None):
    """Content digests of root/name for each name; a cache file (by size and mtime) avoids
    reading unchanged files again. Returns a list of hex strings."""
    root = Path(root)
    cache = {}
    if cache_path is not None:
        found = read_json(cache_path)
        cache = found if isinstance(found, dict) else {}
    out, changed = [], False
    for name in names:
        path = root / name
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        key = str(path.resolve())
        entry = cache.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp):
            entry = [stamp, digest_file(path)]
            cache[key] = entry
            changed = True
        out.append(entry[1])
    if cache_path is not None and changed:
        write_json(cache_path, cache)
    return out


# ----------------------------------------------------------------------------- files

def _plain(value):
    """JSON-ready copy: NumPy scalars and arrays to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)  # "nan", "inf", "-inf"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_json(obj):
    """The bytes of obj as indented JSON (NaN/inf as strings)."""
    return (json.dumps(_plain(obj), indent=1) + "\n").encode()


def as_stored(obj):
    """obj as it reads back from JSON (so that stored and fresh key parts compare equal)."""
    return json.loads(to_json(obj))


def new_file_mode():
    """0o666 less the process's umask: the mode open() gives a new file (mkstemp's is 0o600,
    which would hide a study or a leaderboard from the other users of a shared folder)."""
    try:  # Linux: read it without changing it (os.umask is set-and-return, racy with threads)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path, data):
    """Write bytes (or call data(file) to write) into a temporary file next to path, then rename it
    over path: a reader sees the old file or the new one, never half of one. The file gets the
    mode a plain open() would (the umask's), not the temporary file's owner-only one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode())
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path, obj):
    return write_atomic(path, to_json(obj))


def read_json(path):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def sweep_temps(folder):
    """Remove the temporary files (of `write_atomic`) that killed writers left under folder;
    returns how many. Call it only when no writer of this folder is running."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def locked(path, blocking=True):
    """Hold an exclusive fcntl.flock on the lock file `path` (created if missing); yields True, or
    False when blocking=False and another process holds it. The kernel releases the lock when its
    holder dies, so a killed process never leaves a cell locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- names

def safe_name(name):
    """A file-name-safe version of a model, attack or setting name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip(".") or "_"


def png_names(names):
    """PNG file names for image names (paths relative to the data folder), one each and all
    distinct: the relative path without its suffix, '/' as '__'; names that would still collide
    (also when compared case-insensitively) get a hash of the full name appended."""
    stems = []
    for name in names:
        name = str(name).replace(os.sep, "/")
        stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
        stems.append(safe_name(stem.replace("/", "__")))
    seen = {}
    for stem in stems:
        seen[stem.lower()] = seen.get(stem.lower(), 0) + 1
    out = []
    for name, stem in zip(names, stems):
        if seen[stem.lower()] > 1:
            stem = f"{stem}-{digest_bytes(str(name).encode())[:10]}"
        out.append(stem + ".png")
    seen_png = {}
    for name, png in zip(names, out):
        if png.lower() in seen_png:
            raise ValueError(f"names: two images have the same name: {seen_png[png.lower()]!r} "
                             f"and {name!r} (PNG {png!r})")
        seen_png[png.lower()] = name
    return out


def write_png(path, image):
    """Save a uint8 HWC RGB image as a PNG, atomically."""
    from PIL import Image

    write_atomic(path, lambda f: Image.fromarray(np.asarray(image, np.uint8), "RGB")
                 .save(f, format="PNG"))




# ----------------------------------------------------------------------------- the study folder

class StudyFolder:
    """Paths and records of one study folder (see the module docstring for the layout)."""

    def __init__(self, root):
        self.root = Path(root)

    # -- paths
    def cell_dir(self, surrogate, setting, attack):
        return self.root / "cells" / safe_name(surrogate) / safe_name(setting) / safe_name(attack)

    def selection_dir(self, surrogate):
        return self.root / "selection" / safe_name(surrogate)

    def lock_path(self, *parts):
        """The lock file of a record, named by its parts plus a hash (distinct parts never share
        a lock even where their safe names coincide)."""
        readable = "__".join(safe_name(p) for p in parts)[:100]
        return self.root / "locks" / f"{readable}-{digest_json(list(parts))[:12]}.lock"

    def cell_dirs(self):
        """Every cell folder on disk that has a cell.json, sorted."""
        return sorted(p.parent for p in (self.root / "cells").glob("*/*/*/cell.json"))

    # -- selections
    def read_selection(self, surrogate, key):
        """(images memmap, labels, names, meta) of a stored selection under `key`, else None."""
        folder = self.selection_dir(surrogate)
        meta = read_json(folder / "key.json")
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        try:
            images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
            labels = np.load(folder / "labels.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        names = read_json(folder / "names.json")
        if not isinstance(names, list) or not len(names) == len(labels) == len(images):
            return None
        return images, labels, [str(n) for n in names], meta

    def selection_meta(self, surrogate):
        found = read_json(self.selection_dir(surrogate) / "key.json")
        return found if isinstance(found, dict) else None

    def write_selection(self, surrogate, images, labels, names, meta):
        folder = self.selection_dir(surrogate)
        write_json(folder / "key.json", {"key": None})  # invalid while the arrays change
        write_atomic(folder / "images.npy", lambda f: np.save(f, np.asarray(images, np.uint8)))
        write_atomic(folder / "labels.npy", lambda f: np.save(f, np.asarray(labels, np.int64)))
        write_json(folder / "names.json", list(names))
        write_json(folder / "key.json", meta)

    # -- cells
    @staticmethod
    def read_cell(cell_dir):
        found = read_json(Path(cell_dir) / "cell.json")
        return found if isinstance(found, dict) and "key" in found else None

    @staticmethod
    def write_cell(cell_dir, record):
        write_json(Path(cell_dir) / "cell.json", record)

    @staticmethod
    def reset_cell(cell_dir):
        """Remove everything a cell folder holds (its records under an old key)."""
        cell_dir = Path(cell_dir)
        if cell_dir.is_dir():
            for path in cell_dir.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    @staticmethod
    def chunk_path(cell_dir, start):
        return Path(cell_dir) / "chunks" / f"{start:08d}.json"

    @staticmethod
    def victim_chunk_path(cell_dir, victim, start):
        return Path(cell_dir) / "victims" / safe_name(victim) / f"{start:08d}.json"

    @staticmethod
    def victim_path(cell_dir, victim):
        return Path(cell_dir) / "victims" / f"{safe_name(victim)}.json"

    @staticmethod
    def read_record(path, key):
        """A chunk or victim record, if it was computed under `key`."""
        found = read_json(path)
        return found if isinstance(found, dict) and found.get("key") == key else None

    # -- work items: a chunk's per-image records and PNGs, a victim's predictions on it
    def write_chunk(self, cell_dir, key, start, frame, seconds, images):
        """The adversarial PNGs of a chunk (frame["png"]), then its per-image records (a
        DataFrame, one row per image) with the crafting time and who crafted it."""
        for image, png in zip(images, frame["png"]):
            write_png(Path(cell_dir) / "adv" / png, image)
        write_json(self.chunk_path(cell_dir, start),
                   {"key": key, "start": start, "stop": start + len(frame), "seconds": seconds,
                    "worker": f"{socket.gethostname()}:{os.getpid()}",
                    "records": {c: frame[c].tolist() for c in frame.columns}})

    def read_chunk(self, cell_dir, key, start):
        """(per-image records DataFrame, seconds) of a chunk crafted under `key`, else None."""
        import pandas as pd

        record = self.read_record(self.chunk_path(cell_dir, start), key)
        if record is None:
            return None
        return pd.DataFrame(record["records"]), float(record["seconds"])

    @staticmethod
    def read_adv(cell_dir, pngs):
        """The stored adversarial images (uint8 NHWC) of the given PNG names."""
        return np.stack([read_rgb(Path(cell_dir) / "adv" / png) for png in pngs])

    def has_chunk(self, cell_dir, start):
        return self.chunk_path(cell_dir, start).is_file()

    def write_victim_chunk(self, cell_dir, victim, key, start, pred):
        write_json(self.victim_chunk_path(cell_dir, victim, start),
                   {"key": key, "start": start, "stop": start + len(pred), "pred": pred})

    def read_victim_chunk(self, cell_dir, victim, key, start):
        record = self.read_record(self.victim_chunk_path(cell_dir, victim, start), key)
        return None if record is None else np.asarray(record["pred"], np.int64)

    def has_victim(self, cell_dir, victim, starts):
        """Whether a victim's predictions are stored whole or for every chunk start."""
        return self.victim_path(cell_dir, victim).is_file() or all(
            self.victim_chunk_path(cell_dir, victim, s).is_file() for s in starts)

    # -- an assembled cell
    def write_cell_tables(self, cell_dir, frame, predictions):
        """images.csv (per-image records) and victims/<victim>.json ({victim: (key, cell key,
        predictions)}) of a complete cell."""
        write_atomic(Path(cell_dir) / "images.csv", frame.to_csv(index=False).encode())
        for victim, (key, cell_key, pred) in predictions.items():
            write_json(self.victim_path(cell_dir, victim),
                       {"key": key, "cell": cell_key, "victim": victim, "pred": pred})

    def read_victim(self, cell_dir, victim, key):
        record = self.read_record(self.victim_path(cell_dir, victim), key)
        return None if record is None else np.asarray(record["pred"], np.int64)

    def drop_stale_victim(self, cell_dir, victim, key):
        """Remove a victim's assembled predictions stored under another key; True if removed."""
        path = self.victim_path(cell_dir, victim)
        stored = read_json(path)
        if isinstance(stored, dict) and stored.get("key") != key:
            path.unlink()
            return True
        return False

    @staticmethod
    def read_victims(cell_dir, cell_key):
        """{victim: predictions} of every victim stored for a cell under `cell_key`."""
        out = {}
        for path in sorted((Path(cell_dir) / "victims").glob("*.json")):
            stored = read_json(path)
            if isinstance(stored, dict) and stored.get("cell") == cell_key and "victim" in stored:
                out[stored["victim"]] = np.asarray(stored["pred"], np.int64)
        return out

    # -- the table
    def complete_rows(self):
        """The stored row of every complete cell on disk; ValueError for a malformed record."""
        rows = []
        for cell_dir in self.cell_dirs():
            cell = self.read_cell(cell_dir)
            if cell is None:
                raise ValueError(f"{cell_dir / 'cell.json'}: malformed cell record")
            if cell.get("complete") and isinstance(cell.get("row"), dict):
                rows.append(cell["row"])
        return rows

    def write_results(self, table):
        """results.csv and results.json of table() (a DataFrame), built and written under the
        results lock (two writers never interleave a stale table); returns the table."""
        with locked(self.lock_path("results")):
            df = table()
            write_atomic(self.root / "results.csv", df.to_csv(index=False).encode())
            write_atomic(self.root / "results.json",
                         df.to_json(orient="records", indent=1).encode())
        return df

    # -- the cell record (cell.json)
    def new_cell(self, cell_dir, key, names, parts, n):
        """Write a fresh, incomplete cell.json: its key, names (surrogate, attack, optimizer,
        setting), the key parts it hashes and its number of images; returns the record."""
        record = {"key": key, **names, "parts": parts, "n": n, "complete": False}
        self.write_cell(cell_dir, record)
        return record

    def complete_cell(self, cell_dir, record, victims, row, seconds):
        """Mark a cell complete with its table row, the victims evaluated on it and its
        crafting time."""
        record.update(complete=True, victims=sorted(victims), row=row, seconds=seconds)
        self.write_cell(cell_dir, record)

    def stored_selection(self, surrogate):
        """(images memmap, names) of a surrogate's stored selection, whatever its key; None when
        there is none."""
        folder = self.selection_dir(surrogate)
        names = read_json(folder / "names.json")
        if not (folder / "images.npy").is_file() or not isinstance(names, list):
            return None
        return np.load(folder / "images.npy", mmap_mode="r"), [str(n) for n in names]


def victim_key(cell_key, victim_digest):
    """The key of a victim's predictions on a cell."""
    return digest_json({"cell": cell_key, "victim": victim_digest})


# ----------------------------------------------------------------------------- why a record is stale

_CHANGED = {"surrogate": "the surrogate's file changed", "images": "the images changed",
            "labels": "the labels changed", "names": "the image names changed",
            "files": "the data files changed", "n": "n_images changed",
            "seed": "the seed changed", "size": "the input size changed"}


def explain_change(old, new):
    """Which key parts differ between a stored record's and a fresh one's, in words."""
    reasons = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "config" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            reasons.append("the configuration changed (" + _diff(old[key], new[key]) + ")")
        elif key == "version":
            reasons.append(f"fairattack {old.get(key)} -> {new.get(key)}")
        else:
            reasons.append(_CHANGED.get(key, f"{key} changed"))
    return "; ".join(reasons) or "its record is incomplete"


def _diff(old, new, prefix=""):
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes.append(_diff(a, b, f"{prefix}{key}."))
        else:
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return ", ".join(changes)


# ----------------------------------------------------------------------------- compare's cache

class CompareCache:
    """fa.compare's per (attack, budget) outcomes and native images on disk (one .npz each),
    keyed by what determines them; a None folder or key caches nothing."""

    def __init__(self, folder):
        self.folder = None if folder is None else Path(folder)

    def _path(self, kind, label, key):
        return self.folder / kind / f"{safe_name(label)}__{key[:20]}.npz"

    def get(self, kind, label, key):
        if self.folder is None or key is None:
            return None
        path = self._path(kind, label, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                return {k: z[k] for k in z.files if k != "key"}
        except (OSError, ValueError, KeyError):
            return None  # unreadable: compute again

    def put(self, kind, label, key, **arrays):
        if self.folder is None or key is None:
            return
        write_atomic(self._path(kind, label, key),
                     lambda f: np.savez(f, key=np.array(key), **arrays))


# ----------------------------------------------------------------------------- compare's outputs

def write_comparison(out, df, per_image, meta):
    """compare.csv (the tidy table), per_image.csv and compare.json ({meta, rows}) into out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.csv", df.to_csv(index=False).encode())
    write_atomic(out / "per_image.csv", per_image.to_csv(index=False).encode())
    records = json.loads(df.to_json(orient="records"))
    write_atomic(out / "compare.json",
                 (json.dumps({"meta": meta, "rows": records}, indent=1) + "\n").encode())
