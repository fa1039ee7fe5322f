"""forward in the pipeline graph: one pipeline fans out into two through it, the copy rule of a
receiver's fan-out holds for the connector's (only the mutating pipeline copies), start and stop order
keeps every consumer running while anything can push into it."""

from __future__ import annotations

import textwrap
import time
from typing import Any

from gotel.component.contract import ALL_SIGNALS, ExporterFactory, ProcessorFactory, ReceiverFactory
from gotel.component.registry import Registry
from gotel.config.loader import load_config
from gotel.connectors import forward as fwd
from gotel.pdata.batch import Signal
from gotel.service.graph import Graph
from gotel.telemetry.counters import Telemetry
from tests.unit.core.test_graph import EVENTS, Cfg, MutatingProcessor, RecExporter, RecReceiver, spans

TEXT = """\
receivers: {rr: }
processors: {pp/write: {mutate: true}}
exporters: {ee/a: , ee/b: , ee/c: }
connectors: {forward: }
service:
  pipelines:
    traces/in: {receivers: [rr], exporters: [forward, ee/c]}
    traces/write: {receivers: [forward], processors: [pp/write], exporters: [ee/a]}
    traces/read: {receivers: [forward], exporters: [ee/b]}
"""


def reg() -> Registry:
    r = Registry()
    r.add(ReceiverFactory(type="rr", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ProcessorFactory(type="pp", config=Cfg, signals=ALL_SIGNALS, create=MutatingProcessor))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    r.add(fwd.factory)
    return r


async def test_forward_fans_out_with_the_copy_rule_and_orders_start_and_stop() -> None:
    EVENTS.clear()
    cfg = load_config("c.yaml", text=textwrap.dedent(TEXT), env={}, reg=reg())
    g = Graph(cfg, Telemetry())
    assert [(str(c), a.value, b.value) for c, a, b in g.connectors] == [("forward", "traces", "traces")]
    await g.start_exporters_and_processors()
    await g.start_receivers()
    rr: Any = next(iter(g.receivers.values())).instance
    batch = spans(5)
    await rr.sinks[Signal.TRACES].consume(batch)
    got = {str(c): e for (c, _), e in g.exporters.items()}
    a, b, c = (got[k].got for k in ("ee/a", "ee/b", "ee/c"))  # type: ignore[attr-defined]
    assert len(a) == len(b) == len(c) == 1
    # the reading pipelines (traces/read behind forward, ee/c beside it) share the original; the
    # writing one has its own copy, so nobody else sees its change
    assert b[0] is batch and c[0] is batch and a[0] is not batch
    assert [x.key for x in a[0].peek().resource_spans[0].resource.attributes] == ["touched.by"]
    assert list(batch.peek().resource_spans[0].resource.attributes) == []
    assert a[0].item_count() == 5
    starts = [e for e in EVENTS if e.startswith("start")]
    assert starts.index("start processor pp/write@traces/write") < starts.index("start receiver rr")
    EVENTS.clear()
    await g.shutdown(deadline=time.monotonic() + 5)
    assert EVENTS[0] == "stop receiver rr"
    assert EVENTS.index("stop processor pp/write@traces/write") < EVENTS.index("stop exporter ee/a/traces")
