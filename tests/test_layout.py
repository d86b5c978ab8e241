"""The Python layer's layout: no two modules of fairattack/ import each other, directly, through
a longer circle or through a package's __init__ (every import is counted, also those inside
functions), and the public names stay where users find them."""

import ast
from pathlib import Path

import fairattack as fa

ROOT = Path(fa.__file__).parent


def _module_name(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


#: Compiled modules (the C core): imported, never importing fairattack.
COMPILED = {"fairattack._core"}


def _resolve(module, path, level, name):
    """The absolute name of a relative import `from <level dots><name> import ...`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def import_graph():
    """{module: set of fairattack modules it imports}; `from pkg import name` counts as an import
    of the submodule pkg.name when there is one, else of pkg (its __init__)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node.level, node.module) if node.level \
                    else node.module or ""
                known = set(modules) | COMPILED
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules and target not in COMPILED:  # a.b.c where only a.b is a module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def _cycle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert "fairattack.spec" in graph and "fairattack.study.grid" in graph
    # the checker sees an import inside a function body and one through a package __init__
    assert "fairattack.models" in graph["fairattack._model"]
    assert "fairattack.study.grid" in graph["fairattack.study"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_never_imports_the_loader():
    graph = import_graph()
    assert not graph["fairattack.models"] & {"fairattack._model", "fairattack"}


def test_public_names():
    for name in ("attack", "compare", "run_study", "evaluate", "match_rmse", "paired_test",
                 "comparison_table", "load_model", "get_model", "Model", "AttackResult"):
        assert callable(getattr(fa, name)), name
    assert fa.models.get_model is not None and fa.study.run_study is fa.run_study
    from fairattack.cli import main, parser

    assert callable(main) and parser().prog == "fairattack"


#: The data flow of the README's layout: a module imports only modules before it.
FLOW = ["fairattack._core", "fairattack._validate", "fairattack.settings", "fairattack.data",
        "fairattack.store", "fairattack.markdown", "fairattack.models", "fairattack._model", "fairattack.ensemble",
        "fairattack.peers", "fairattack.spec", "fairattack.outcome", "fairattack.curves",
        "fairattack.attack", "fairattack.evaluate", "fairattack.compare", "fairattack.figures",
        "fairattack.study", "fairattack.board_page", "fairattack.leaderboard", "fairattack.cli",
        "fairattack", "fairattack.__main__"]


def _place(module):
    while module not in FLOW:
        module = module.rpartition(".")[0]
    return FLOW.index(module)


def test_imports_follow_the_data_flow():
    graph = import_graph()
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if _place(t) > _place(m)]
    assert upward == []
    for module in graph:  # every module has its place
        assert _place(module) >= 0
