"""span_metrics behaviour the collector comparison (tests/integration/collector/) does not reach:
flush over time (cumulative keeps, delta resets), exemplars, expiration, events, skipped spans counted,
and the connector running in a real graph between a traces and a metrics pipeline."""

from __future__ import annotations

import asyncio
import struct
import textwrap
import time
from typing import Any

from gotel.component.contract import ALL_SIGNALS, ExporterFactory, ReceiverFactory
from gotel.component.registry import Registry
from gotel.config.loader import load_config
from gotel.connectors import span_metrics as sm
from gotel.pdata.batch import Batch, Signal, Traces, attrs, value_of
from gotel.service.graph import Graph
from gotel.telemetry.counters import Telemetry
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.unit.core.test_graph import Cfg, RecExporter, RecReceiver

MS = 1_000_000


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


def traces(durations_ms: list[float], service: str | None = "checkout", name: str = "GET /a",
           events: int = 0) -> Traces:
    b = Traces()
    rs = b.msg.resource_spans.add()
    if service is not None:
        rs.resource.attributes.extend(attrs({"service.name": service}))
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "net/http", "1.2"
    for i, d in enumerate(durations_ms):
        s = ss.spans.add()
        s.trace_id, s.span_id = struct.pack(">QQ", 1, i + 1), struct.pack(">Q", i + 1)
        s.name, s.kind = name, 2
        s.start_time_unix_nano = 1_700_000_000_000_000_000
        s.end_time_unix_nano = s.start_time_unix_nano + int(d * MS)
        for e in range(events):
            ev = s.events.add()
            ev.name, ev.time_unix_nano = "exception", s.start_time_unix_nano + e
            ev.attributes.extend(attrs({"exception.type": "io.EOF"}))
    return b


def points(batch: Batch, metric: str) -> list[Any]:
    return [p for rm in batch.peek().resource_metrics for scm in rm.scope_metrics for m in scm.metrics
            if m.name == metric for p in getattr(m, m.WhichOneof("data")).data_points]


def make(**conf: Any) -> tuple[sm.SpanMetrics, Sink]:
    sink = Sink()
    return sm.SpanMetrics(sm.Config.model_validate(conf), sink, make_ctx("span_metrics")), sink


async def test_cumulative_keeps_counting_and_delta_resets() -> None:
    cum, cs = make()
    delta, ds = make(aggregation_temporality="AGGREGATION_TEMPORALITY_DELTA")
    for c in (cum, delta):
        await c.consume(traces([1, 3, 3]))
        await c.flush()
        await c.consume(traces([20]))
        await c.flush()
        await c.flush()  # nothing new
    calls = [[p.as_int for p in points(b, "traces.span.metrics.calls")] for b in cs.got]
    assert calls == [[3], [4], [4]]  # cumulative: every flush has the totals
    buckets = [list(p.bucket_counts) for b in cs.got for p in points(b, "traces.span.metrics.duration")]
    assert buckets[1][:6] == [1, 2, 0, 0, 0, 1]  # 1 ms <= 2; 3 ms <= 4; 20 ms <= 50
    assert [[p.as_int for p in points(b, "traces.span.metrics.calls")] for b in ds.got] == [[3], [1]]
    d1, d2 = (points(b, "traces.span.metrics.calls")[0] for b in ds.got)
    assert d2.start_time_unix_nano == d1.time_unix_nano  # delta windows follow one another
    c1, c2 = (points(b, "traces.span.metrics.calls")[0] for b in cs.got[:2])
    assert c1.start_time_unix_nano == c2.start_time_unix_nano < c2.time_unix_nano


async def test_exemplars_carry_the_span_and_are_cleared_each_flush() -> None:
    c, sink = make(exemplars={"enabled": True, "max_per_data_point": 2})
    await c.consume(traces([5, 6, 7]))
    await c.flush()
    await c.flush()
    h1, h2 = (points(b, "traces.span.metrics.duration")[0] for b in sink.got)
    assert [(e.span_id, e.as_double) for e in h1.exemplars] == [(struct.pack(">Q", 1), 5.0),
                                                                (struct.pack(">Q", 2), 6.0)]
    assert h1.exemplars[0].trace_id == struct.pack(">QQ", 1, 1)
    assert list(h2.exemplars) == [] and h2.count == 3


async def test_spans_without_service_name_are_skipped_and_counted() -> None:
    c, sink = make()
    await c.consume(traces([1, 2], service=None))
    await c.consume(traces([1], service="cart"))
    await c.flush()
    assert [p.as_int for p in points(sink.got[0], "traces.span.metrics.calls")] == [1]
    assert metric_value(c.ctx, "gotel_dropped_items_total", reason="no service.name") == 2


async def test_expired_resources_are_forgotten() -> None:
    c, sink = make(metrics_expiration="50ms")
    await c.consume(traces([1], service="old"))
    await c.flush()
    await asyncio.sleep(0.08)
    await c.consume(traces([1], service="new"))
    await c.flush()
    svc = [[value_of(kv.value) for rm in b.peek().resource_metrics for kv in rm.resource.attributes]
           for b in sink.got]
    assert svc == [["old"], ["new"]]


async def test_events_and_instrumentation_scope_dimensions() -> None:
    c, sink = make(events={"enabled": True, "dimensions": [{"name": "exception.type"}]},
                   include_instrumentation_scope=["net/http"])
    await c.consume(traces([1, 2], events=2))
    await c.flush()
    (ev,) = points(sink.got[0], "traces.span.metrics.events")
    a = {kv.key: value_of(kv.value) for kv in ev.attributes}
    assert ev.as_int == 4 and a["exception.type"] == "io.EOF"
    assert a["span.instrumentation.scope.name"] == "net/http" and a["span.instrumentation.scope.version"] == "1.2"


async def test_disabled_histogram_and_excluded_dimension() -> None:
    c, sink = make(histogram={"disable": True}, exclude_dimensions=["status.code"])
    await c.consume(traces([1]))
    await c.flush()
    assert points(sink.got[0], "traces.span.metrics.duration") == []
    (p,) = points(sink.got[0], "traces.span.metrics.calls")
    assert sorted(kv.key for kv in p.attributes) == ["service.name", "span.kind", "span.name"]


async def test_span_metrics_in_a_graph_flushes_on_its_timer_and_at_shutdown() -> None:
    r = Registry()
    r.add(ReceiverFactory(type="rr", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    r.add(sm.factory)
    cfg = load_config("c.yaml", text=textwrap.dedent("""\
        receivers: {rr: }
        exporters: {ee: }
        connectors: {spanmetrics: {metrics_flush_interval: 50ms}}
        service:
          pipelines:
            traces: {receivers: [rr], exporters: [spanmetrics]}
            metrics: {receivers: [spanmetrics], exporters: [ee]}
        """), env={}, reg=r)
    g = Graph(cfg, Telemetry())
    await g.start_exporters_and_processors()
    await g.start_receivers()
    rr: Any = next(iter(g.receivers.values())).instance
    await rr.sinks[Signal.TRACES].consume(traces([1, 2, 3]))
    exp: Any = g.exporters[next(k for k in g.exporters if k[1] == Signal.METRICS)]
    end = time.monotonic() + 5
    while not exp.got and time.monotonic() < end:
        await asyncio.sleep(0.01)
    assert [p.as_int for p in points(exp.got[0], "traces.span.metrics.calls")] == [3]
    await rr.sinks[Signal.TRACES].consume(traces([1]))
    n = len(exp.got)
    await g.shutdown(time.monotonic() + 5)
    assert [p.as_int for p in points(exp.got[-1], "traces.span.metrics.calls")] == [4]
    assert len(exp.got) >= n + 1
