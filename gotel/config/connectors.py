"""The collector's rules for connectors in the pipeline graph, checked once every pipeline is read:
a connector is used as an exporter and as a receiver; each pipeline it exports from has a receiving
pipeline of a signal it can turn that into (and the other way round); data never flows in a cycle."""

from __future__ import annotations

from gotel.component.contract import ComponentID, ConnectorFactory
from gotel.config.model import ComponentEntry, Config, PipelineSpec
from gotel.config.source import Path, Source
from gotel.pdata.batch import Signal


def _item_path(src: Source, spec: PipelineSpec, key: str, cid: ComponentID) -> tuple[Path, int | None]:
    """The pipeline's list key, and the line of the item naming `cid` in it."""
    path: Path = ("service", "pipelines", spec.name, key)
    top = src.data if isinstance(src.data, dict) else {}
    raw = (((top.get("service") or {}).get("pipelines") or {}).get(spec.name) or {}).get(key)
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if isinstance(item, str) and item.strip() == str(cid):
                return path, src.line((*path, str(i)))
    return path, src.line(path)


def edges(cfg: Config) -> list[tuple[str, ComponentID, str]]:
    """(from pipeline, connector, to pipeline) for every supported signal pair: the data flow the graph
    builds. The loader reports the pairs it leaves out."""
    out: list[tuple[str, ComponentID, str]] = []
    for p in cfg.service.pipelines.values():
        for cid in p.exporters:
            entry = cfg.connectors.get(cid)
            if entry is None:
                continue
            pairs = entry.factory.pairs
            out.extend((p.name, cid, q.name) for q in cfg.service.pipelines.values()
                       if cid in q.receivers and (p.signal, q.signal) in pairs)
    return out


def connector_rules(src: Source, cfg: Config) -> None:
    pipelines = cfg.service.pipelines.values()
    for cid, entry in cfg.connectors.items():
        exp = [p for p in pipelines if cid in p.exporters]
        rcv = [p for p in pipelines if cid in p.receivers]
        cpath: Path = ("connectors", str(cid))
        if not exp and not rcv:
            continue  # unused: the loader warns
        if not exp:
            names = ", ".join(p.name for p in rcv)
            src.error(cpath, f"connector {cid} is a receiver of pipeline {names} but no pipeline exports to it: "
                      "list it under some pipeline's exporters too")
            continue
        if not rcv:
            names = ", ".join(p.name for p in exp)
            src.error(cpath, f"connector {cid} is an exporter of pipeline {names} but no pipeline receives from it: "
                      "list it under some pipeline's receivers too")
            continue
        _pairs(src, entry, exp, rcv)
    _cycles(src, cfg)


def _pairs(src: Source, entry: ComponentEntry[ConnectorFactory], exp: list[PipelineSpec],
           rcv: list[PipelineSpec]) -> None:
    """Each side needs at least one partner of a signal pair the connector supports."""
    pairs = entry.factory.pairs
    typ = entry.factory.type

    def supported(side: int, sig: Signal) -> str:
        return ", ".join(f"{a.value}->{b.value}" for a, b in sorted(pairs) if (a, b)[side] == sig) or "none"

    for p in exp:
        if not any((p.signal, q.signal) in pairs for q in rcv):
            path, line = _item_path(src, p, "exporters", entry.id)
            got = ", ".join(f"{q.name}" for q in rcv)
            src.error(path, f"connector {entry.id} exports from {p.signal.value} pipeline {p.name} but none of the "
                      f"pipelines receiving from it ({got}) is of a signal it makes from {p.signal.value} "
                      f"(type {typ} supports {supported(0, p.signal)})", line=line)
    for q in rcv:
        if not any((p.signal, q.signal) in pairs for p in exp):
            path, line = _item_path(src, q, "receivers", entry.id)
            got = ", ".join(f"{p.name}" for p in exp)
            src.error(path, f"connector {entry.id} is a receiver of {q.signal.value} pipeline {q.name} but none of the "
                      f"pipelines exporting to it ({got}) is of a signal it turns into {q.signal.value} "
                      f"(type {typ} supports {supported(1, q.signal)})", line=line)


def _cycles(src: Source, cfg: Config) -> None:
    """One error per cycle found, naming its pipelines and connectors in flow order."""
    out: dict[str, list[tuple[ComponentID, str]]] = {}
    for a, cid, b in edges(cfg):
        out.setdefault(a, []).append((cid, b))
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[tuple[str, ComponentID | None]] = []
    reported: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        state[node] = 1
        for cid, nxt in out.get(node, []):
            stack.append((node, cid))
            if state.get(nxt) == 1:
                start = next(i for i, (n, _) in enumerate(stack) if n == nxt)
                loop = stack[start:]
                key = frozenset(n for n, _ in loop)
                if key not in reported:
                    reported.add(key)
                    flow = " -> ".join(f"{n} -> {c}" for n, c in loop) + f" -> {nxt}"
                    spec = cfg.service.pipelines[node]
                    path, line = _item_path(src, spec, "exporters", cid)
                    src.error(path, f"cycle in the pipeline graph: {flow}; data would flow in a circle", line=line)
            elif state.get(nxt) is None:
                visit(nxt)
            stack.pop()
        state[node] = 2

    for name in cfg.service.pipelines:
        if name not in state:
            visit(name)
