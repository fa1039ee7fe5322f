"""The pipeline graph (DESIGN.md section 4): shared receivers and exporters, processors per pipeline.

receiver ─► fan-out over the pipelines that list it (a copy for each pipeline that mutates anywhere
along its chain, see fanout.pipeline_entry) ─► processor chain (one instance per
pipeline) ─► fan-out over the pipeline's exporters (one instance per exporter id and signal).
A connector is one of those exporters and the receiver of other pipelines: one instance per
connector id and signal pair, whose output fans out over its receiving pipelines by the same
copy rule as a receiver's. Pipelines are built downstream first (the loader rejected cycles).
Start order exporters → processors and connectors (downstream first) → receivers; stop order
the reverse, so nothing is ever pushed into a component that is not running.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gotel.component.contract import (
    Component,
    ComponentID,
    Connector,
    Consumer,
    Exporter,
    Kind,
    Processor,
    Receiver,
    ReceiverFactory,
)
from gotel.component.lifecycle import make_context, shutdown_with_deadline
from gotel.config.connectors import edges
from gotel.config.model import ComponentEntry, Config
from gotel.pdata.batch import Signal
from gotel.service.fanout import fanout, pipeline_entry
from gotel.telemetry.counters import Telemetry

log = logging.getLogger("gotel.service")


@dataclass
class Pipeline:
    name: str
    signal: Signal
    processors: list[tuple[ComponentID, Processor]] = field(default_factory=list)
    entry: Consumer | None = None
    # connector instances this pipeline exports to, and those that feed it
    exports_to: list[tuple[ComponentID, Signal, Signal]] = field(default_factory=list)
    fed_by: list[tuple[ComponentID, Signal, Signal]] = field(default_factory=list)


@dataclass
class ReceiverNode:
    """A receiver and the consumer per signal its data goes to."""

    entry: ComponentEntry[ReceiverFactory]
    sinks: dict[Signal, Consumer]
    instance: Receiver | None = None  # only for in-process receivers

    @property
    def in_process(self) -> bool:
        return self.entry.factory.in_process


class Graph:
    def __init__(self, cfg: Config, tel: Telemetry) -> None:
        self.cfg = cfg
        self.tel = tel
        self.exporters: dict[tuple[ComponentID, Signal], Exporter] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.receivers: dict[ComponentID, ReceiverNode] = {}
        self.connectors: dict[tuple[ComponentID, Signal, Signal], Connector] = {}
        self.started: list[tuple[str, Component]] = []
        # running extensions by id: components look them up (sending_queue.storage)
        self.extensions: dict[ComponentID, Component] = {}
        self._build()

    def _exporter(self, cid: ComponentID, signal: Signal) -> Exporter:
        key = (cid, signal)
        exp = self.exporters.get(key)
        if exp is None:
            entry = self.cfg.exporters[cid]
            ctx = make_context(self.tel, cid, Kind.EXPORTER, signal)
            ctx.extras["extensions"] = self.extensions  # filled by the service before exporters start
            exp = entry.factory.create(signal, entry.config, ctx)
            self.exporters[key] = exp
        return exp

    def _connector(self, p: Pipeline, cid: ComponentID) -> list[Consumer]:
        """The instances of connector `cid` that pipeline `p` exports to: one per signal of the
        (already built) pipelines receiving from it that the connector can make from p's signal."""
        entry = self.cfg.connectors[cid]
        factory = entry.factory
        targets: dict[Signal, list[Consumer]] = {}
        for q in self.pipelines.values():
            if cid in self.cfg.service.pipelines[q.name].receivers and (p.signal, q.signal) in factory.pairs:
                assert q.entry is not None
                targets.setdefault(q.signal, []).append(q.entry)
        out: list[Consumer] = []
        for to, entries in targets.items():
            key = (cid, p.signal, to)
            conn = self.connectors.get(key)
            if conn is None:
                ctx = make_context(self.tel, cid, Kind.CONNECTOR, p.signal)
                ctx.extras["to_signal"] = to
                conn = self.connectors[key] = factory.create(p.signal, to, entry.config, fanout(entries), ctx)
                for q in self.pipelines.values():
                    if q.signal == to and cid in self.cfg.service.pipelines[q.name].receivers:
                        q.fed_by.append(key)
            p.exports_to.append(key)
            out.append(conn)
        return out

    def _order(self) -> list[str]:
        """Pipeline names, downstream before upstream (a connector's receivers before its exporters)."""
        names = list(self.cfg.service.pipelines)
        succ: dict[str, set[str]] = {n: set() for n in names}
        for a, _, b in edges(self.cfg):
            succ[a].add(b)
        done: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for m in sorted(succ[n]):
                visit(m)
            done.append(n)

        for n in names:
            visit(n)
        return done

    def _build(self) -> None:
        receiver_targets: dict[tuple[ComponentID, Signal], list[Consumer]] = {}
        for name in self._order():
            spec = self.cfg.service.pipelines[name]
            p = Pipeline(name, spec.signal)
            outs: list[Consumer] = []
            for e in spec.exporters:
                outs.extend(self._connector(p, e) if e in self.cfg.connectors else [self._exporter(e, spec.signal)])
            exporters = fanout(outs)
            nxt: Consumer = exporters
            chain: list[tuple[ComponentID, Processor]] = []
            for pid in reversed(spec.processors):
                entry = self.cfg.processors[pid]
                ctx = make_context(self.tel, pid, Kind.PROCESSOR, spec.signal)
                ctx.extras["pipeline"] = name
                proc = entry.factory.create(spec.signal, entry.config, nxt, ctx)
                chain.append((pid, proc))
                nxt = proc
            p.processors = list(reversed(chain))
            p.entry = pipeline_entry([proc for _, proc in p.processors], exporters)
            self.pipelines[name] = p
            for rid in spec.receivers:
                if rid in self.cfg.connectors:
                    continue  # fed by the connector's instances, made with the upstream pipelines
                receiver_targets.setdefault((rid, spec.signal), []).append(p.entry)
        for (rid, signal), targets in receiver_targets.items():
            node = self.receivers.get(rid)
            if node is None:
                node = self.receivers[rid] = ReceiverNode(self.cfg.receivers[rid], {})
            node.sinks[signal] = fanout(targets)
        for rid, node in self.receivers.items():
            if node.in_process:
                rctx = make_context(self.tel, rid, Kind.RECEIVER)
                rctx.extras["extensions"] = self.extensions  # server authenticators (protocols::*::auth)
                node.instance = node.entry.factory.create(node.entry.config, node.sinks, rctx)

    def processor_instances(self) -> list[tuple[str, Processor | Connector]]:
        """In stop order: upstream pipelines first; in each, the connectors feeding it (once all the
        pipelines exporting to them have stopped), then its processors, first processor first."""
        out: list[tuple[str, Processor | Connector]] = []
        seen: set[tuple[ComponentID, Signal, Signal]] = set()
        for p in reversed(list(self.pipelines.values())):  # built downstream first
            for key in p.fed_by:
                if key not in seen:
                    seen.add(key)
                    out.append((f"connector {key[0]} ({key[1]} -> {key[2]})", self.connectors[key]))
            out.extend((f"processor {pid} in pipeline {p.name}", proc) for pid, proc in p.processors)
        return out

    async def start_exporters_and_processors(self) -> None:
        for (cid, signal), exp in self.exporters.items():
            await self._start(f"exporter {cid} ({signal})", exp)
        # Downstream first: a processor or connector may push from start() (timers), so its next must be up.
        for name, proc in reversed(self.processor_instances()):
            await self._start(name, proc)

    async def start_receivers(self) -> None:
        for rid, node in self.receivers.items():
            if node.instance is not None:
                await self._start(f"receiver {rid}", node.instance)

    async def _start(self, name: str, comp: Component) -> None:
        log.debug("starting %s", name)
        await comp.start()
        self.started.append((name, comp))

    async def shutdown(self, deadline: float) -> None:
        """Receivers, then processors (flushing into exporters still running), then exporters."""
        started = {id(c) for _, c in self.started}
        for rid, node in self.receivers.items():
            if node.instance is not None and id(node.instance) in started:
                await shutdown_with_deadline(node.instance, f"receiver {rid}", deadline)
        for name, proc in self.processor_instances():
            if id(proc) in started:
                await shutdown_with_deadline(proc, name, deadline)
        # Exporters drain their queues side by side, within one shared deadline.
        await asyncio.gather(
            *(
                shutdown_with_deadline(exp, f"exporter {cid} ({signal})", deadline)
                for (cid, signal), exp in self.exporters.items()
                if id(exp) in started
            )
        )
        self.started.clear()
