"""No import cycle inside brainkit.

Every module of the package is parsed (not imported) with :mod:`ast`; every ``import`` and
``from ... import`` in it counts, at the top of the file or inside a function (a lazy import
is still a dependency, only a later one). An edge goes to the most specific brainkit module
named: ``from .cohort import Cohort`` in ``brainkit.data.packed`` is an edge to
``brainkit.data.cohort``, ``from . import cohort`` too; importing a module also runs its
packages' ``__init__``, but those implicit edges are not counted (a package that re-exports
its modules would otherwise be a cycle with each of them).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import brainkit

# Cycles that exist and are being removed elsewhere. Each entry is one cycle, as the modules
# of its strongly connected component; the test fails if a component is not listed here, and
# also if a listed one no longer exists (so that the list only shrinks).
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    """``{module name: source file}`` for brainkit and every module below it."""
    found = {"brainkit": Path(brainkit.__file__)}
    for info in pkgutil.walk_packages(brainkit.__path__, prefix="brainkit."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            found[info.name] = Path(spec.origin)
    return found


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        return module
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    if level - 1 > len(base) - 1:
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _run_at_import(tree: ast.Module):
    """The nodes executed when the module is imported: everything but function bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, known: set[str], *, at_import_only: bool = False):
    """The brainkit modules ``name`` imports (each with its line), and the other top-level
    packages it imports; with ``at_import_only``, only the imports run when the module is
    imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    nodes = _run_at_import(tree) if at_import_only else ast.walk(tree)
    internal: dict[str, int] = {}
    external: set[str] = set()

    def add(target: str | None, line: int) -> None:
        if target is None:
            return
        if target == "brainkit" or target.startswith("brainkit."):
            # the most specific known module: "brainkit.data.cohort.Cohort" -> the module
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                internal.setdefault(target, line)
        else:
            external.add(target.split(".")[0])

    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module, node.level)
            if base is None:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base, node.lineno)
    return internal, external


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported brainkit module: line of the (first) import}}``."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known)[0] for name, path in modules.items()}


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
                continue
            if child not in graph:
                continue
            if child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _a_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One cycle through the first module of a component: ``[a, b, ..., a]`` (shortest)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else \
                        [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def _describe(graph, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
        f" -> {cycle[-1]}"


def test_the_walk_sees_the_whole_package():
    graph = import_graph()
    for name in ("brainkit.data.cohort", "brainkit.data.packed", "brainkit.train.loop",
                 "brainkit.experiments.speed", "brainkit.losses"):
        assert name in graph, name
    # lazy imports count: brainkit.train.loop imports brainkit.data inside fit()
    assert any(m.startswith("brainkit.data") for m in graph["brainkit.train.loop"])


def test_resolve_relative_imports():
    assert _resolve("brainkit.data.packed", False, "cohort", 1) == "brainkit.data.cohort"
    assert _resolve("brainkit.data", True, "cohort", 1) == "brainkit.data.cohort"
    assert _resolve("brainkit.data.packed", False, "_util", 2) == "brainkit._util"
    assert _resolve("brainkit.data.packed", False, None, 1) == "brainkit.data"


def test_cycle_search_finds_a_planted_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert _components(graph) == [["a", "b", "c"]]
    assert _a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_brainkit():
    graph = import_graph()
    found = {frozenset(c): c for c in _components(graph)}
    new = [c for key, c in found.items() if key not in ALLOWED_CYCLES]
    gone = [sorted(key) for key in ALLOWED_CYCLES if key not in found]
    lines = []
    for component in new:
        edges = [f"  {a} -> {b} (line {line})" for a in component
                 for b, line in sorted(graph[a].items()) if b in component]
        lines.append(f"import cycle among {component}: "
                     f"{_describe(graph, _a_cycle(graph, component))}; its imports:")
        lines.extend(edges)
    for component in gone:
        lines.append(f"allowed cycle {component} no longer exists: remove it from "
                     "ALLOWED_CYCLES")
    print("\n".join(lines))
    assert not lines, "\n".join(lines)


def test_the_image_formats_do_not_need_torch():
    """The cohort, its image sources and packing import no torch, directly or through the
    brainkit modules they import when imported (the package ``__init__`` aside, see the
    module docstring); torch is the device loaders' business (brainkit.data.loaders)."""
    modules = _modules()
    known = set(modules)
    for root in ("brainkit.data.cohort", "brainkit.data.sources", "brainkit.data.packed"):
        seen, todo, external = set(), [root], {}
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            internal, outside = _imports(name, modules[name], known, at_import_only=True)
            todo.extend(internal)
            for package in outside:
                external.setdefault(package, name)
        assert "torch" not in external, f"{root} needs torch through {external['torch']}"
        assert "brainkit.data.loaders" not in seen, root
