"""The pipeline graph: fan-out copies only for mutating consumers; start/stop order; sharing."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from gotel.component.contract import (
    ALL_SIGNALS,
    Component,
    ComponentConfig,
    Consumer,
    Context,
    Exporter,
    ExporterFactory,
    Kind,
    Processor,
    ProcessorFactory,
    Receiver,
    ReceiverFactory,
    RefusedError,
)
from gotel.component.registry import Registry
from gotel.config.loader import load_config
from gotel.pdata.batch import Batch, Signal, Traces, kv
from gotel.service.fanout import Fanout, fanout
from gotel.service.graph import Graph
from gotel.telemetry.counters import Telemetry


def spans(n: int) -> Traces:
    b = Traces()
    ss = b.msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        ss.spans.add(name=f"s{i}", span_id=i.to_bytes(8, "big"), trace_id=b"\x01" * 16)
    return b


class Rec:
    def __init__(self, mutates: bool, name: str = "") -> None:
        self.mutates = mutates
        self.name = name
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        if self.mutates:
            batch.msg.resource_spans[0].resource.attributes.append(kv("touched.by", self.name))
        self.got.append(batch)


async def test_readers_share_the_batch() -> None:
    a, b = Rec(False), Rec(False)
    batch = spans(3)
    await Fanout([a, b]).consume(batch)
    assert a.got[0] is batch and b.got[0] is batch


async def test_mutators_get_copies_when_readers_exist() -> None:
    reader, m1, m2 = Rec(False, "r"), Rec(True, "m1"), Rec(True, "m2")
    batch = spans(3)
    await Fanout([m1, reader, m2]).consume(batch)
    assert reader.got[0] is batch
    assert m1.got[0] is not batch and m2.got[0] is not batch
    # the reader's data is untouched by the mutators
    assert len(batch.peek().resource_spans[0].resource.attributes) == 0
    assert [a.value.string_value for a in m1.got[0].peek().resource_spans[0].resource.attributes] == ["m1"]
    assert [a.value.string_value for a in m2.got[0].peek().resource_spans[0].resource.attributes] == ["m2"]


async def test_all_mutators_last_gets_the_original() -> None:
    m1, m2 = Rec(True, "m1"), Rec(True, "m2")
    batch = spans(2)
    f = Fanout([m1, m2])
    assert f.mutates
    await f.consume(batch)
    assert m1.got[0] is not batch and m2.got[0] is batch
    assert [a.value.string_value for a in m1.got[0].peek().resource_spans[0].resource.attributes] == ["m1"]


async def test_single_consumer_needs_no_fanout_and_errors_reach_the_caller() -> None:
    r = Rec(False)
    assert fanout([r]) is r

    class Refuser(Rec):
        async def consume(self, batch: Batch) -> None:
            raise RefusedError("full")

    ok = Rec(False)
    f = Fanout([Refuser(False), ok])
    try:
        await f.consume(spans(1))
        raise AssertionError("expected RefusedError")
    except RefusedError:
        pass
    assert len(ok.got) == 1  # the other consumer still got its data


# --- start/stop order with recording components ----------------------------------------------------

EVENTS: list[str] = []


class Cfg(ComponentConfig):
    mutate: bool = False


class RecExporter(Exporter):
    def __init__(self, signal: Signal, cfg: Cfg, ctx: Context) -> None:
        self.name = f"exporter {ctx.id}/{signal}"
        self.got: list[Batch] = []

    async def start(self) -> None:
        EVENTS.append("start " + self.name)

    async def shutdown(self, deadline: float = 10.0) -> None:
        EVENTS.append("stop " + self.name)

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


class RecProcessor(Processor):
    def __init__(self, signal: Signal, cfg: Cfg, nxt: Consumer, ctx: Context) -> None:
        self.name = f"processor {ctx.id}@{ctx.extras['pipeline']}"
        self.next = nxt
        self.mutates = cfg.mutate

    async def start(self) -> None:
        EVENTS.append("start " + self.name)

    async def shutdown(self, deadline: float = 10.0) -> None:
        EVENTS.append("stop " + self.name)

    async def consume(self, batch: Batch) -> None:
        await self.next.consume(batch)


class RecReceiver(Receiver):
    def __init__(self, cfg: Cfg, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        self.name = f"receiver {ctx.id}"
        self.sinks = sinks

    async def start(self) -> None:
        EVENTS.append("start " + self.name)

    async def shutdown(self, deadline: float = 10.0) -> None:
        EVENTS.append("stop " + self.name)


def reg() -> Registry:
    r = Registry()
    r.add(ReceiverFactory(type="rr", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ProcessorFactory(type="pp", config=Cfg, signals=ALL_SIGNALS, create=RecProcessor))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    return r


CONFIG = """\
receivers:
  rr:
processors:
  pp/a:
  pp/b:
exporters:
  ee/1:
  ee/2:
service:
  pipelines:
    traces:
      receivers: [rr]
      processors: [pp/a, pp/b]
      exporters: [ee/1]
    traces/2:
      receivers: [rr]
      exporters: [ee/1, ee/2]
"""


async def test_start_and_stop_order_and_sharing() -> None:
    EVENTS.clear()
    cfg = load_config("c.yaml", text=textwrap.dedent(CONFIG), env={}, reg=reg())
    g = Graph(cfg, Telemetry())
    # one exporter instance per id and signal, shared by both pipelines; processors per pipeline
    assert sorted(str(c) for c, _ in g.exporters) == ["ee/1", "ee/2"]
    await g.start_exporters_and_processors()
    await g.start_receivers()
    starts = [e for e in EVENTS if e.startswith("start")]
    assert starts == [
        "start exporter ee/1/traces",
        "start exporter ee/2/traces",
        "start processor pp/b@traces",
        "start processor pp/a@traces",
        "start receiver rr",
    ]
    # the receiver's traces go to both pipelines; ee/1 gets the batch twice (once per pipeline)
    rr: Any = g.receivers[next(iter(g.receivers))].instance
    await rr.sinks[Signal.TRACES].consume(spans(2))
    e1 = g.exporters[(next(c for c, _ in g.exporters if str(c) == "ee/1"), Signal.TRACES)]
    assert len(e1.got) == 2  # type: ignore[attr-defined]
    EVENTS.clear()
    await g.shutdown(deadline=__import__("time").monotonic() + 5)
    assert EVENTS == [
        "stop receiver rr",
        "stop processor pp/a@traces",
        "stop processor pp/b@traces",
        "stop exporter ee/1/traces",
        "stop exporter ee/2/traces",
    ]


class RecExtension(Component):
    def __init__(self, cfg: Cfg, ctx: Context) -> None:
        self.name = f"extension {ctx.id}"

    async def start(self) -> None:
        EVENTS.append("start " + self.name)

    async def shutdown(self, deadline: float = 10.0) -> None:
        EVENTS.append("stop " + self.name)


async def test_service_extensions_and_self_metrics_pipeline() -> None:
    import asyncio

    from gotel.component.contract import ExtensionFactory
    from gotel.pdata.batch import Metrics
    from gotel.service.service import Service

    r = reg()
    r.add(ExtensionFactory(type="xx", config=Cfg, signals=frozenset(), create=RecExtension))
    text = """\
    extensions:
      xx:
    receivers:
      rr:
    exporters:
      ee:
    service:
      extensions: [xx]
      telemetry:
        metrics: {address: "", pipelines: [metrics/self], interval: 0.05}
      pipelines:
        traces: {receivers: [rr], exporters: [ee]}
        metrics/self: {exporters: [ee]}
    """
    EVENTS.clear()
    cfg = load_config("c.yaml", text=textwrap.dedent(text), env={}, reg=r)
    tel = Telemetry()
    svc = Service(cfg, tel)
    tel.component("rr", Kind.RECEIVER).accepted("traces", 3)
    await svc.start()
    assert svc.readiness()[0]
    rr: Any = next(iter(svc.graph.receivers.values())).instance
    await rr.sinks[Signal.TRACES].consume(spans(3))
    ee_metrics: Any = next(e for (c, s), e in svc.graph.exporters.items() if s == Signal.METRICS)
    for _ in range(100):
        if ee_metrics.got:
            break
        await asyncio.sleep(0.02)
    await svc.shutdown()
    assert EVENTS[0] == "start extension xx" and EVENTS[-1] == "stop extension xx"
    assert not svc.readiness()[0]
    m = ee_metrics.got[0]
    assert isinstance(m, Metrics)
    names = {x.name for rm in m.peek().resource_metrics for sm in rm.scope_metrics for x in sm.metrics}
    assert "gotel_receiver_accepted_items" in names
    metric = next(x for rm in m.peek().resource_metrics for sm in rm.scope_metrics for x in sm.metrics
                  if x.name == "gotel_receiver_accepted_items")
    assert metric.sum.is_monotonic
    dp = metric.sum.data_points[0]
    assert dp.as_double == 3.0
    assert {kv.key: kv.value.string_value for kv in dp.attributes} == {"component": "rr", "kind": "receiver", "signal": "traces"}
    res = {kv.key for kv in m.peek().resource_metrics[0].resource.attributes}
    assert {"service.name", "process.pid", "service.instance.id"} <= res


# --- copies decided per pipeline (issue 16) ---------------------------------------------------------


def test_a_pipeline_mutates_when_any_processor_or_its_exporter_side_does() -> None:
    from gotel.service.fanout import PipelineEntry, chain_mutates, pipeline_entry

    reader, mutator, exp, mexp = Rec(False), Rec(True), Rec(False), Rec(True)
    assert not chain_mutates([], exp)
    assert not chain_mutates([reader, reader], exp)
    assert chain_mutates([reader, mutator], exp)  # a read-only first processor does not decide
    assert chain_mutates([mutator, reader], exp)
    assert chain_mutates([reader], mexp)
    assert chain_mutates([], mexp)
    # the entry is the first processor itself unless its own answer differs from the pipeline's
    assert pipeline_entry([reader, reader], exp) is reader
    assert pipeline_entry([mutator, reader], exp) is mutator
    assert pipeline_entry([], exp) is exp
    wrapped = pipeline_entry([reader, mutator], exp)
    assert isinstance(wrapped, PipelineEntry) and wrapped.mutates and wrapped.first is reader


class MutatingProcessor(RecProcessor):
    async def consume(self, batch: Batch) -> None:
        if self.mutates:
            batch.msg.resource_spans[0].resource.attributes.append(kv("touched.by", self.name))
        await self.next.consume(batch)


async def test_a_later_mutating_processor_gets_its_own_copy_at_the_receiver_fanout() -> None:
    r = Registry()
    r.add(ReceiverFactory(type="rr", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ProcessorFactory(type="pp", config=Cfg, signals=ALL_SIGNALS, create=MutatingProcessor))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    text = """\
    receivers: {rr: }
    processors:
      pp/read: {mutate: false}
      pp/write: {mutate: true}
    exporters: {ee/a: , ee/b: }
    service:
      pipelines:
        traces/a: {receivers: [rr], processors: [pp/read, pp/write], exporters: [ee/a]}
        traces/b: {receivers: [rr], processors: [pp/read], exporters: [ee/b]}
    """
    cfg = load_config("c.yaml", text=textwrap.dedent(text), env={}, reg=r)
    g = Graph(cfg, Telemetry())
    rr: Any = next(iter(g.receivers.values())).instance
    batch = spans(4)
    await rr.sinks[Signal.TRACES].consume(batch)
    got = {str(c): e for (c, _), e in g.exporters.items()}
    a, b = got["ee/a"].got[0], got["ee/b"].got[0]  # type: ignore[attr-defined]
    assert b is batch and a is not batch  # the reading pipeline shares the original, the writer copies
    assert [x.key for x in a.peek().resource_spans[0].resource.attributes] == ["touched.by"]
    assert list(b.peek().resource_spans[0].resource.attributes) == []
