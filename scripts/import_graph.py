"""Count dynogen's import graph: modules, edges, cycles, function-level imports.

Every import statement counts: module level, inside functions, and under
``if TYPE_CHECKING:``; so do the package root's lazy exports (a ``_LAZY``-style
mapping of name -> module path in an ``__init__``). An edge ``a -> b`` means
module ``a`` names module ``b`` (``from dynogen.x import y`` names ``dynogen.x.y``
when that is a module, else ``dynogen.x``).

    python scripts/import_graph.py            # the numbers
    python scripts/import_graph.py --cycles   # and every cycle's members
    python scripts/import_graph.py --json     # machine-readable

It also checks the layers: ``LAYERS`` lists dynogen's rooms from the bottom up,
and a module may import its own layer or one below, never one above (the package
root, the CLI and the test fakes sit on top). Exit status 1 on any cycle or
upward import, so ``scripts/check`` runs it.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "dynogen"

# Bottom first. A prefix names a module or a whole room; the longest prefix decides.
LAYERS: list[tuple[str, ...]] = [
    # leaves: plain data, vocabularies and settings
    ("dynogen.version", "dynogen.errors", "dynogen.units", "dynogen.tasks.task",
     "dynogen.dedup", "dynogen.eventloop", "dynogen.report", "dynogen.progress",
     "dynogen.outcome", "dynogen.policy.licenses", "dynogen.policy.languages",
     "dynogen.policy.splits", "dynogen.policy.share", "dynogen.config"),
    ("dynogen.store", "dynogen.ratelimit"),      # files and journals; the limiter
    ("dynogen.io",),                              # sources: cards, folders, the Hub, rows
    ("dynogen.instances.render",),                # a row under a task, as text
    ("dynogen.policy",),                          # the data policies' gate
    ("dynogen.prompts",),                         # what is asked of the model
    ("dynogen.execute",),                         # how it is asked: online or batch
    ("dynogen.tasks",),                           # answers to kept tasks
    ("dynogen.engine",),                          # the task stage
    ("dynogen.instances",),                       # the instance stage and export
    ("dynogen.compose",),                         # the composition root
    ("dynogen.commands",),                        # run, build, estimate, call, inspect
    ("dynogen.collections", "dynogen.selection"), # grow; replay
    ("dynogen.publishing",),                      # a run or a collection to the Hub
    ("dynogen.api",),
    ("dynogen.cli", "dynogen.__main__", "dynogen", "dynogen.testing"),
]


def layer_of(mod: str) -> int:
    best, level = -1, len(LAYERS)
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    return level


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer_of(b) > layer_of(a))


def modules(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted((root / PKG).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def edges(mods: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, int], int]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    local_imports: dict[str, int] = {}
    parents: dict[str, set[str]] = {}
    total_statements = 0

    def target(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        # statements inside a function body
        in_func: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        in_func.add(id(sub))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # ``from pkg import mod`` depends on ``pkg.mod``; ``from mod import name``
                # on ``mod`` (the name is an attribute of it).
                base = _resolve(mod, is_pkg, node.level, node.module)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                         for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value in mods and node.value != PKG:
                names = [node.value]  # lazy exports: strings that name a module exactly
            else:
                continue
            hit = False
            for n in names:
                t = target(n) if n.startswith(PKG) else None
                if t and t != mod:
                    graph[mod].add(t)
                    hit = True
                    parents.setdefault(mod, set()).add(t)
            if hit and isinstance(node, ast.Import | ast.ImportFrom):
                total_statements += 1
                if id(node) in in_func:
                    local_imports[mod] = local_imports.get(mod, 0) + 1
    # Importing dynogen.a.b runs dynogen/a/__init__.py first: a sub-package whose
    # __init__ imports anything is part of every import of its modules. (The root's
    # exports are lazy, so the root is left out.)
    for mod, targets in parents.items():
        for t in targets:
            parent = t.rpartition(".")[0]
            while parent and parent != PKG:
                if graph.get(parent) and parent != mod and not mod.startswith(parent + "."):
                    graph[mod].add(parent)
                parent = parent.rpartition(".")[0]
    return graph, local_imports, total_statements


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", action="store_true", help="list each cycle's modules")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--root", default=str(ROOT))
    a = ap.parse_args()
    mods = modules(Path(a.root))
    graph, local, statements = edges(mods)
    cyc = sccs(graph)
    up = upward(graph)
    longest = max(mods.items(), key=lambda kv: len(kv[1].read_text().splitlines()))
    facts = {
        "modules": len(mods),
        "import_edges": sum(len(v) for v in graph.values()),
        "import_statements": statements,
        "cycles": len(cyc),
        "modules_in_cycles": sum(len(c) for c in cyc),
        "function_level_imports": sum(local.values()),
        "upward_imports": len(up),
        "longest_module": f"{longest[0]} ({len(longest[1].read_text().splitlines())} lines)",
    }
    if a.json:
        print(json.dumps({**facts, "cycle_members": cyc, "upward": up}, indent=2))
    else:
        for k, v in facts.items():
            print(f"{k:24} {v}")
        if a.cycles:
            for c in cyc:
                print("cycle:", " <-> ".join(c))
        for x, y in up:
            print(f"upward: {x} -> {y}")
    return 1 if cyc or up else 0


if __name__ == "__main__":
    raise SystemExit(main())
