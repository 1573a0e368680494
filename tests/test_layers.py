"""The package's shape (docs/architecture.md): layers that never import upward, no import cycle, no hidden imports.

Every ``tms`` module belongs to exactly one layer of :data:`LAYERS`; an import (at module level or inside a
function) may go to the module's own layer or below, never above; the module graph, function-level imports
included, has no cycle; a function-level import of a tms module is allowed only where it keeps an optional heavy
dependency (matplotlib, vLLM) out of import time. The rules are checked on the source (``ast``), so a violation
fails here even in a code path no other test runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tms"

#: highest first; a module's layer is that of the longest prefix that names it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("tms.cli", "tms.repro.run")),
    ("pipeline", ("tms.pipeline",)),
    ("stages", ("tms.stages",)),
    ("config", ("tms.config",)),
    ("components", ("tms.methods", "tms.training", "tms.evaluation", "tms.toy.world", "tms.repro")),
    ("building blocks", ("tms.data", "tms.generation", "tms.models", "tms.toy")),
    ("objectives", ("tms.objectives",)),
    ("core", ("tms.core", "tms")),
]
#: function-level tms imports that are allowed, with the optional heavy dependency they keep lazy
LAZY_OK = {
    ("tms.evaluation.report", "tms.evaluation.plots"): "matplotlib",
    ("tms.repro.markdown", "tms.repro.plots"): "matplotlib",
    ("tms.repro.markdown", "tms.repro"): "matplotlib (from tms.repro import plots)",
    ("tms.generation.factory", "tms.generation.vllm"): "vllm",
}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, list[tuple[str, bool, int]]]:
    mods = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def layer(module: str) -> int:
    """Index into LAYERS (0 = highest) of the longest matching prefix."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer of tests/test_layers.py:LAYERS (and docs/architecture.md)"
    return rank


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """``(imported tms module, at function level, line)`` for every tms import of ``module``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    top = {id(n) for n in tree.body}
    out = []

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names] if mod.startswith("tms") else []
            names = [n if resolve(n) == n else mod for n in names]
        else:
            continue
        for name in names:
            target = resolve(name) if name.startswith("tms") else None
            if target and target != module:
                out.append((target, id(node) not in top, node.lineno))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool, int]]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    for m in graph:
        layer(m)


def test_no_module_imports_a_higher_layer(graph):
    bad = [f"{m}:{line} imports {t} ({LAYERS[layer(t)][0]} above {LAYERS[layer(m)][0]})"
           for m, edges in graph.items() for t, _, line in edges if layer(t) < layer(m)]
    assert not bad, "\n".join(bad)


def test_function_level_imports_only_for_optional_heavy_dependencies(graph):
    bad = [f"{m}:{line} imports {t} inside a function" for m, edges in graph.items() for t, lazy, line in edges
           if lazy and (m, t) not in LAZY_OK]
    assert not bad, "hoist these to the top of the module (or list them in LAZY_OK with the reason):\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    edges = {m: sorted({t for t, _, _ in e}) for m, e in graph.items()}
    # Tarjan's strongly connected components, iteratively
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(edges[w])))
            elif w in on:
                low[v] = min(low[v], index[w])

    for m in edges:
        if m not in index:
            visit(m)
    assert not sccs, f"import cycles: {sccs}"


def test_the_checker_sees_violations(tmp_path):
    """The rules fail on a package that breaks them (so the tests above can fail)."""
    pkg = tmp_path / "tms"
    (pkg / "core").mkdir(parents=True)
    (pkg / "stages").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "stages" / "__init__.py").write_text("")
    (pkg / "core" / "io.py").write_text("from tms.stages.a import x\n")
    (pkg / "stages" / "a.py").write_text("def f():\n    from tms.core import io\n")
    g = import_graph(pkg)
    assert set(g) == {"tms", "tms.core", "tms.core.io", "tms.stages", "tms.stages.a"}
    with pytest.raises(AssertionError, match="tms.core.io:1 imports tms.stages.a"):
        test_no_module_imports_a_higher_layer(g)
    with pytest.raises(AssertionError, match="tms.stages.a:2 imports tms.core.io inside a function"):
        test_function_level_imports_only_for_optional_heavy_dependencies(g)
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle(g)
    test_no_module_imports_a_higher_layer({"tms.stages.a": g["tms.stages.a"]})  # downward: allowed
