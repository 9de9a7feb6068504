"""The shape of the code (issue 23): no import cycles, no module importing a layer above it, small units.

The layers follow DESIGN.md's data flow, bottom to top: the foundation (errors, registry, file and
precision helpers), data and models (datasets, the model registry and checkpoints, the ensemble
runtime, forward-only evaluation, the leaderboard's entries and pages), the libraries that use
them (attacks, defenses and training, corruptions, depth), the benchmark engine, and on top the
user-facing entry points (the CLI and its commands, the demo and quickstart). A module may import
its own layer or those below; cycles are counted separately (module level and function level
imports alike). ``attacks/`` and ``defenses/`` are the packages ``robust_ens.attacks`` and
``robust_ens.defenses`` (pyproject's package-dir).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"robust_ens": ROOT / "robust_ens", "robust_ens.attacks": ROOT / "attacks",
            "robust_ens.defenses": ROOT / "defenses"}
# Bottom to top; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("robust_ens.errors", "robust_ens.registry", "robust_ens.canonical", "robust_ens.atomic",
                    "robust_ens.progress", "robust_ens.precision", "robust_ens.device", "robust_ens.overrides",
                    "robust_ens.threads", "robust_ens.streams", "robust_ens.allocator")),
    ("data and models", ("robust_ens.data", "robust_ens.imagenet_data", "robust_ens.models", "robust_ens.ensemble", "robust_ens.evaluation",
                         "robust_ens.leaderboard")),
    ("libraries", ("robust_ens.attacks", "robust_ens.defenses", "robust_ens.train", "robust_ens.corruptions",
                   "robust_ens.depth", "robust_ens.zoo_build")),
    ("engine", ("robust_ens.bench",)),
    ("entry points", ("robust_ens.cli", "robust_ens.commands", "robust_ens.demo", "robust_ens.quickstart",
                      "robust_ens")),
]
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if pkg == "robust_ens" and parts and parts[0] in ("attacks", "defenses"):
                continue
            out[".".join([pkg, *parts])] = f
    return out


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file), without its own parent packages."""

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = resolve(name)
                if target and target != mod and not (mod.startswith(target + ".") and files[target].name == "__init__.py"):
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that matches ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


FILES = module_files()
GRAPH = import_graph(FILES)


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_layer_above_it() -> None:
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
           for m, targets in sorted(GRAPH.items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(FILES))
def test_modules_and_functions_are_small(module: str) -> None:
    path = FILES[module]
    text = path.read_text(encoding="utf-8")
    n_lines = text.count("\n")
    assert n_lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n_lines} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]  # type: ignore[operator]
    assert not long, f"{path.relative_to(ROOT)}: {', '.join(long)}"
