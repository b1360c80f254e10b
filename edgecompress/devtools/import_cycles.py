"""Find import cycles between the package's modules, counting imports inside functions too.

Python tolerates a cycle when one side imports lazily (inside a function), so ``import`` alone
never shows it; but a cycle still means two modules cannot be understood, tested or moved
apart, which is what the layering rule is about. The graph is read from the source with
:mod:`ast` (nothing is imported): an edge A -> B for every ``import B`` / ``from B import x``
/ ``from . import B`` anywhere in A, resolved to a module of the package (``from pkg import
name`` counts as an edge to ``pkg.name`` when that is a module, else to ``pkg``). A package's
``__init__`` re-exporting its submodules is not a cycle with them and is skipped.

    python -m edgecompress.devtools.import_cycles            # exit 1 and the cycles, if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` under ``root`` (the package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    base = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets: Iterable[str] = (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                source = f"{anchor}.{node.module}" if node.module else anchor
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved and resolved != module:
                found.add(resolved)
    if is_package:  # re-exports from its own submodules are not a layering cycle
        found = {m for m in found if not m.startswith(module + ".")}
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def package_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    graph = package_graph(root, root.name)
    cycles = find_cycles(graph)
    for cycle in cycles:
        edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
        print(f"cycle of {len(cycle)} modules:\n  " + "\n  ".join(edges))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, "
          f"{len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
