"""service_graph: client/server span pairs of two services become edges with the right request,
failed and latency counts whichever half comes first; database, messaging and virtual-node edges;
the store's size and TTL; in a graph under its collector alias."""

from __future__ import annotations

import struct
import textwrap
import time
from typing import Any

import pytest

from gotel.component.contract import ALL_SIGNALS, ExporterFactory, ReceiverFactory
from gotel.component.registry import Registry
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.connectors import service_graph as sg
from gotel.pdata.batch import Batch, Signal, Traces, attrs, value_of
from gotel.service.graph import Graph
from gotel.telemetry.counters import Telemetry
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.unit.core.test_graph import Cfg, RecExporter, RecReceiver

K = sg.K
MS = 1_000_000


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


def span(b: Traces, service: str, kind: int, trace: int, sid: int, parent: int = 0, ms: float = 1.0,
         error: bool = False, **a: Any) -> None:
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": service}))
    s = rs.scope_spans.add().spans.add()
    s.trace_id, s.span_id = struct.pack(">QQ", 0, trace), struct.pack(">Q", sid)
    if parent:
        s.parent_span_id = struct.pack(">Q", parent)
    s.kind = kind
    s.start_time_unix_nano = 1_700_000_000_000_000_000
    s.end_time_unix_nano = s.start_time_unix_nano + int(ms * MS)
    s.status.code = 2 if error else 0
    s.attributes.extend(attrs(a))


def edges(batch: Batch) -> dict[tuple[Any, ...], dict[str, Any]]:
    """(client, server, connection_type, failed) -> {metric: value or (count, buckets)}."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rm in batch.peek().resource_metrics:
        for scm in rm.scope_metrics:
            assert scm.scope.name == "traces_service_graph"
            for m in scm.metrics:
                for p in getattr(m, m.WhichOneof("data")).data_points:
                    a = {kv.key: value_of(kv.value) for kv in p.attributes}
                    key = (a.pop("client"), a.pop("server"), a.pop("connection_type"), a.pop("failed"),
                           tuple(sorted(a.items())))
                    out.setdefault(key, {})[m.name] = (p.as_int if m.WhichOneof("data") == "sum"
                                                       else (p.count, list(p.bucket_counts)))
    return out


def make(**conf: Any) -> tuple[sg.ServiceGraph, Sink]:
    sink = Sink()
    return sg.ServiceGraph(sg.Config.model_validate(conf), sink, make_ctx("service_graph")), sink


async def test_pairs_in_either_order_count_requests_failures_and_latency() -> None:
    c, sink = make(dimensions=["http.route"])
    b = Traces()
    for i in range(1, 11):  # frontend -> backend; every third call fails on the server
        span(b, "frontend", K.SPAN_KIND_CLIENT, i, 100 + i, ms=30)
    b2 = Traces()
    for i in range(1, 11):
        span(b2, "backend", K.SPAN_KIND_SERVER, i, 200 + i, parent=100 + i, ms=3, error=i % 3 == 0,
             **{"http.route": "/items"})
    c.aggregate(b2, time.monotonic())  # servers first: they wait for their clients
    assert len(c.store) == 10
    c.aggregate(b, time.monotonic())
    assert c.store == {}
    await c.flush()
    got = edges(sink.got[0])
    ok = ("frontend", "backend", "", False, (("server_http.route", "/items"),))
    bad = ("frontend", "backend", "", True, (("server_http.route", "/items"),))
    assert set(got) == {ok, bad}
    assert got[ok]["traces_service_graph_request_total"] == 7
    assert got[bad]["traces_service_graph_request_total"] == 3
    assert got[bad]["traces_service_graph_request_failed_total"] == 3
    assert "traces_service_graph_request_failed_total" not in got[ok]
    # 3 ms server time in (2ms, 4ms]; 30 ms client time in (10ms, 50ms]
    assert got[ok]["traces_service_graph_request_server"] == (7, [0, 7] + [0] * 15)
    assert got[ok]["traces_service_graph_request_client"] == (7, [0] * 5 + [7] + [0] * 11)


async def test_database_and_messaging_edges() -> None:
    c, sink = make()
    b = Traces()
    span(b, "orders", K.SPAN_KIND_CLIENT, 1, 1, **{"db.name": "orders_db", "db.system": "postgresql"})
    span(b, "orders", K.SPAN_KIND_PRODUCER, 2, 2)
    span(b, "mailer", K.SPAN_KIND_CONSUMER, 2, 3, parent=2)
    c.aggregate(b, time.monotonic())
    await c.flush()
    got = edges(sink.got[0])
    assert set(got) == {("orders", "orders_db", "database", False, ()),
                        ("orders", "mailer", "messaging_system", False, ())}


async def test_expired_halves_become_virtual_nodes_or_are_forgotten() -> None:
    c, sink = make(store={"ttl": "1s"}, virtual_node_extra_label=True)
    b = Traces()
    span(b, "cart", K.SPAN_KIND_CLIENT, 1, 1, **{"peer.service": "payments-api"})  # no server span ever
    span(b, "cart", K.SPAN_KIND_SERVER, 2, 2)  # a root server span: called by a user
    span(b, "cart", K.SPAN_KIND_CLIENT, 3, 3)  # no peer attribute: nothing to draw
    t0 = time.monotonic()
    c.aggregate(b, t0)
    c.expire(t0 + 0.5)
    assert len(c.store) == 3
    c.expire(t0 + 1.5)
    assert c.store == {}
    await c.flush()
    assert set(edges(sink.got[0])) == {
        ("cart", "payments-api", "virtual_node", False, (("virtual_node", "server"),)),
        ("user", "cart", "virtual_node", False, (("virtual_node", "client"),)),
    }
    assert metric_value(c.ctx, "gotel_service_graph_expired_edges_total") == 3


async def test_a_full_store_drops_and_counts_spans() -> None:
    c, _ = make(store={"max_items": 2})
    b = Traces()
    for i in range(1, 6):
        span(b, "a", K.SPAN_KIND_CLIENT, i, i)
    c.aggregate(b, time.monotonic())
    assert len(c.store) == 2
    assert metric_value(c.ctx, "gotel_service_graph_dropped_spans_total") == 3
    assert metric_value(c.ctx, "gotel_dropped_items_total", reason="service graph store full") == 3


def test_bad_keys_are_errors_with_their_place() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=textwrap.dedent("""\
            receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
            exporters: {debug: {}}
            connectors: {servicegraph: {store: {ttl: 0s, max_itmes: 5}}}
            service:
              pipelines:
                traces: {receivers: [otlp], exporters: [servicegraph]}
                metrics: {receivers: [servicegraph], exporters: [debug]}
            """), env={})
    msgs = sorted(f"{i.path}: {i.message}" for i in e.value.issues)
    assert msgs == ['connectors::servicegraph::store::max_itmes: unknown key "max_itmes" (did you mean "max_items"?)',
                    "connectors::servicegraph::store::ttl: must be more than 0s (got 0s)"]


async def test_in_a_graph_under_its_alias_flushing_every_batch() -> None:
    r = Registry()
    r.add(ReceiverFactory(type="rr", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    r.add(sg.factory)
    cfg = load_config("c.yaml", text=textwrap.dedent("""\
        receivers: {rr: }
        exporters: {ee: }
        connectors: {servicegraph: {metrics_flush_interval: 0s}}
        service:
          pipelines:
            traces: {receivers: [rr], exporters: [servicegraph]}
            metrics: {receivers: [servicegraph], exporters: [ee]}
        """), env={}, reg=r)
    g = Graph(cfg, Telemetry())
    await g.start_exporters_and_processors()
    await g.start_receivers()
    rr: Any = next(iter(g.receivers.values())).instance
    b = Traces()
    span(b, "a", K.SPAN_KIND_CLIENT, 1, 1)
    span(b, "b", K.SPAN_KIND_SERVER, 1, 2, parent=1)
    await rr.sinks[Signal.TRACES].consume(b)
    exp: Any = g.exporters[next(k for k in g.exporters if k[1] == Signal.METRICS)]
    assert edges(exp.got[0])[("a", "b", "", False, ())]["traces_service_graph_request_total"] == 1
    await g.shutdown(time.monotonic() + 5)
