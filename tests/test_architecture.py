"""The architecture README.md and docs/architecture.md describe, checked against the source.

The rules of the house about imports can be checked by reading the modules with
``ast`` rather than trusting the prose:

- No import cycle inside the package. Every import counts, including those under
  ``if TYPE_CHECKING:`` and those inside functions: a cycle hidden from the interpreter
  is still two modules that cannot be understood (or moved) one without the other.
- The pure core (names, objects, convert, records, multicluster, snapshot, resolve, wire,
  fastpath, handler, store, transfer, autopath) imports no asyncio, networking or
  Kubernetes client, directly or through the package modules it imports. ``socket``
  appears in the core only for its address conversions (``inet_pton`` and friends),
  which open nothing.
- The ``snapshot`` package is layered as its docstring lists its modules, and the rest
  of the code reaches it through the package's names.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import clusterdns

PACKAGE_DIR = Path(clusterdns.__file__).parent

CORE = ("names", "objects", "convert", "records", "multicluster", "snapshot", "resolve",
        "wire", "fastpath", "handler", "store", "transfer", "autopath")
# Top-level modules the core must not reach: event loops, networking, the API client.
NOT_IN_CORE = frozenset({"asyncio", "aiohttp", "kubernetes", "selectors", "socketserver",
                         "ssl", "subprocess", "uvloop", "http", "urllib"})
# What of ``socket`` the core may use: packing and unpacking addresses.
SOCKET_ADDRESS_FUNCTIONS = frozenset({"AF_INET", "AF_INET6", "inet_aton", "inet_ntoa",
                                      "inet_pton", "inet_ntop"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted: "clusterdns.snapshot" for clusterdns/snapshot/__init__.py
    path: Path
    is_package: bool
    tree: ast.Module


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of the package
    line: int


def modules(root: Path) -> dict[str, Module]:
    """Every module of the package rooted at ``root``, by dotted name."""
    found: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return found


def external_imports(module: Module) -> Iterator[tuple[str, int]]:
    """(top-level module, line) for every absolute import outside the package."""
    package = module.name.split(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top != package:
                    yield top, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top != package:
                yield top, node.lineno


def _base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute dotted module an ``ImportFrom`` reads from (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()  # a plain module's imports are relative to its package
    if node.level > 1:
        parts = parts[:len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _owner(name: str, known: Mapping[str, Module]) -> str | None:
    """The module of the package that ``name`` is, or lives in (longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def edges(known: Mapping[str, Module]) -> list[Edge]:
    """Every import of one module of the package by another, wherever it is written.

    ``from pkg import sub`` is an edge to the submodule when ``sub`` is one, else to the
    package's ``__init__``; importing a package means its ``__init__``. Parent packages
    imported implicitly on the way to a submodule are not edges.
    """
    found: list[Edge] = []
    for module in known.values():
        for node in ast.walk(module.tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            else:
                continue
            for target in targets:
                owner = _owner(target, known)
                if owner is not None and owner != module.name:
                    found.append(Edge(module.name, owner, node.lineno))
    return found


def cycles(graph: Iterable[Edge]) -> list[list[Edge]]:
    """One shortest cycle through each module that lies on one, without repeats."""
    out: dict[str, list[Edge]] = {}
    for edge in graph:
        out.setdefault(edge.source, []).append(edge)
    seen: set[frozenset[tuple[str, str]]] = set()
    found: list[list[Edge]] = []
    for start in sorted(out):
        # Breadth first from ``start`` back to itself: the shortest way round.
        back: dict[str, Edge] = {}
        queue = deque([start])
        closing: Edge | None = None
        while queue and closing is None:
            here = queue.popleft()
            for edge in sorted(out.get(here, ()), key=lambda e: (e.target, e.line)):
                if edge.target == start:
                    closing = edge
                    break
                if edge.target not in back:
                    back[edge.target] = edge
                    queue.append(edge.target)
        if closing is None:
            continue
        path = [closing]
        while path[0].source != start:
            path.insert(0, back[path[0].source])
        key = frozenset((e.source, e.target) for e in path)
        if key not in seen:
            seen.add(key)
            found.append(path)
    return found


def describe(cycle: list[Edge], known: Mapping[str, Module]) -> str:
    steps = [f"{e.source} ({known[e.source].path.name}:{e.line})" for e in cycle]
    return " -> ".join([*steps, cycle[0].source])


def closure(start: str, graph: list[Edge]) -> set[str]:
    """``start`` and every module of the package it imports, directly or not."""
    out: dict[str, set[str]] = {}
    for edge in graph:
        out.setdefault(edge.source, set()).add(edge.target)
    reached = {start}
    todo = [start]
    while todo:
        for target in out.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    return reached


def socket_uses(module: Module) -> set[str]:
    """What a module takes from ``socket``: ``socket.X`` attributes and ``from`` names."""
    used: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "socket":
            used.update(alias.name for alias in node.names)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "socket"):
            used.add(node.attr)
    return used


# ------------------------------------------------------------------------------ tests


def test_no_module_of_the_package_imports_itself_back_through_others() -> None:
    known = modules(PACKAGE_DIR)
    found = cycles(edges(known))
    assert not found, "import cycles inside the package:\n" + "\n".join(
        describe(cycle, known) for cycle in found)


def test_the_pure_core_reaches_no_event_loop_network_or_kubernetes_client() -> None:
    known = modules(PACKAGE_DIR)
    graph = edges(known)
    core = [name for name in known
            if any(name == f"clusterdns.{c}" or name.startswith(f"clusterdns.{c}.")
                   for c in CORE)]
    problems: list[str] = []
    for name in core:
        for reached in sorted(closure(name, graph)):
            module = known[reached]
            for top, line in external_imports(module):
                if top in NOT_IN_CORE:
                    via = "" if reached == name else f" (reached from {name})"
                    problems.append(f"{reached} imports {top} at line {line}{via}")
            extra = socket_uses(module) - SOCKET_ADDRESS_FUNCTIONS
            if extra:
                problems.append(f"{reached} uses socket.{', socket.'.join(sorted(extra))}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_cycle_finder_sees_relative_deferred_and_type_checking_imports(
        tmp_path: Path) -> None:
    """The checks above are only as good as the graph, so the graph is checked too."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "VERSION = 1\n",
        "a.py": "from pkg import b\n",  # a -> b
        "b.py": "def f():\n    from . import a\n",  # b -> a, inside a function
        "c.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.sub.d import X\n",  # c -> sub.d
        "sub/__init__.py": "from .d import X\n",  # sub -> sub.d
        "sub/d.py": "from ..c import Y\nfrom .. import VERSION\n",  # d -> c, d -> pkg
        "e.py": "import pkg.sub\nimport os\n",  # e -> sub (its __init__), not a cycle
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    known = modules(root)
    assert set(known) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d", "pkg.e"}
    graph = edges(known)
    assert {(e.source, e.target) for e in graph} == {
        ("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"), ("pkg.c", "pkg.sub.d"),
        ("pkg.sub", "pkg.sub.d"), ("pkg.sub.d", "pkg.c"), ("pkg.sub.d", "pkg"),
        ("pkg.e", "pkg.sub")}
    assert sorted(sorted(e.source for e in cycle) for cycle in cycles(graph)) == [
        ["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]
    assert list(external_imports(known["pkg.e"])) == [("os", 2)]
    real = {(e.source, e.target) for e in edges(modules(PACKAGE_DIR))}
    assert ("clusterdns.app", "clusterdns.http") in real  # the real graph is not empty
    assert ("clusterdns.metrics", "clusterdns") in real  # from clusterdns import __version__


def test_the_snapshot_package_modules_import_only_those_listed_before_them() -> None:
    """``clusterdns/snapshot/__init__.py`` lists its modules in layers; code outside the
    package goes through the package's own names, not its modules."""
    known = modules(PACKAGE_DIR)
    layers = ["nodes", "index", "pods", "model", "claims", "builder", "ref"]
    inside = {name.rpartition(".")[2] for name in known if name.startswith("clusterdns.snapshot.")}
    assert inside == set(layers)
    problems: list[str] = []
    for edge in edges(known):
        source, target = edge.source, edge.target
        if not target.startswith("clusterdns.snapshot."):
            continue
        where = f"{source} imports {target} at line {edge.line}"
        if source == "clusterdns.snapshot":
            continue  # the package re-exports its modules' names
        if not source.startswith("clusterdns.snapshot."):
            problems.append(where + " (use clusterdns.snapshot)")
        elif layers.index(target.rpartition(".")[2]) >= layers.index(source.rpartition(".")[2]):
            problems.append(where + " (a later layer)")
    assert not problems, "\n".join(problems)
