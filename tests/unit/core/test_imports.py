"""The core's module imports form no cycle, and the supervisor does not load the receiver process's code.

Every `import` and `from ... import` in gotel/ counts, including those under TYPE_CHECKING: a cycle
that only the type checker sees still ties two modules into one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gotel

ROOT = Path(gotel.__file__).parent


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        if "proto" in rel.parts:
            continue
        name = ".".join(rel.parts).removesuffix(".__init__")
        mods[name] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
                edges[m] |= subs
                if node.module in mods and len(subs) < len(node.names):  # names defined in the module itself
                    edges[m].add(node.module)
            elif isinstance(node, ast.Import):
                edges[m] |= {a.name for a in node.names} & mods.keys()
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_detector_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_core() -> None:
    edges = import_graph()
    assert "gotel.telemetry.counters" in edges["gotel.component.contract"]  # the graph is read (Context.telemetry's type)
    assert cycles(edges) == []


def test_the_supervisor_does_not_import_the_receiver_process() -> None:
    assert "gotel.receiverhelper.process" not in import_graph()["gotel.service.supervisor"]


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        for n in edges.get(m, set()) - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_a_receiver_process_loads_no_pipeline_code() -> None:
    """A receiver's own process needs the contract and its exporter, not the pipeline graph or router."""
    reach = _reachable(import_graph(), "gotel.receiverhelper.process")
    assert sorted(m for m in reach if m.startswith("gotel.service.")) == []
