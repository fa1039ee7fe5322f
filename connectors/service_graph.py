"""`service_graph` connector (collector alias `servicegraph`): request, failed-request and latency
metrics per edge between services, from client/server (and producer/consumer) span pairs, with the
collector's names (`traces_service_graph_request_*`), dimensions, store TTL and size.

A client span waits in the store under (trace id, its span id), a server span under (trace id, its
parent span id); when both halves of an edge are there the edge is counted and leaves the store.
Halves that wait longer than `store.ttl` expire: with a peer attribute (peer.service, db.name, ...) a
client half becomes an edge to that virtual node, a server half without a parent one from "user".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import Field

from gotel.component.contract import (
    SHUTDOWN_DEADLINE,
    ComponentConfig,
    ConnectorFactory,
    Consumer,
    Context,
)
from gotel.config.types import Duration
from gotel.connectorhelper.flush import MetricsConnector
from gotel.pdata.batch import Batch, Signal, attrs, value_of

SCOPE = "traces_service_graph"
DEFAULT_BUCKETS_S = (0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1, 1.4, 2, 5, 10, 15)
K = trace_pb2.Span.SpanKind
CLIENT_KINDS = {K.SPAN_KIND_CLIENT: "", K.SPAN_KIND_PRODUCER: "messaging_system"}
SERVER_KINDS = {K.SPAN_KIND_SERVER: "", K.SPAN_KIND_CONSUMER: "messaging_system"}
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
SERIES_TTL = 15 * 60.0  # the collector drops series unseen this long (its cache_loop check)


class Store(ComponentConfig):
    ttl: Duration = Field(2.0, gt=0, description="how long half an edge waits for its other half")
    max_items: int = Field(1000, gt=0, description="most half-edges waiting; spans beyond it are dropped and counted")


class Config(ComponentConfig):
    latency_histogram_buckets: list[Duration] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS_S), description="bucket upper bounds (durations)")
    dimensions: list[str] = Field(default_factory=list, description="span, else resource, attributes added as "
                                  "client_<name> and server_<name>")
    store: Store = Field(default_factory=Store)
    cache_loop: Duration = Field(60.0, gt=0, description="how often series unseen for 15 minutes are dropped")
    store_expiration_loop: Duration = Field(2.0, gt=0, description="how often expired half-edges are examined")
    virtual_node_peer_attributes: list[str] = Field(
        default_factory=lambda: ["peer.service", "db.name", "db.system"],
        description="client span attributes naming the server when no server span comes")
    virtual_node_extra_label: bool = Field(False, description="add virtual_node=client|server to virtual edges")
    database_name_attributes: list[str] = Field(
        default_factory=lambda: ["db.name"], description="a client span with one of these is a database edge at once")
    metrics_flush_interval: Duration = Field(60.0, ge=0, description="how often metrics are emitted; 0 = every batch")
    metrics_timestamp_offset: Duration = Field(0.0, ge=0, description="accepted for the collector; unused")


@dataclass
class Half:
    """What one span tells about an edge."""

    service: str
    latency: float
    failed: bool
    dims: dict[str, Any]
    peer: str = ""


@dataclass
class Edge:
    created: float
    connection_type: str = ""
    client: Half | None = None
    server: Half | None = None
    parentless_server: bool = False


@dataclass
class Series:
    attrs: list[Any]
    total: int = 0
    failed: int = 0
    server: list[int] = field(default_factory=list)
    server_sum: float = 0.0
    server_count: int = 0
    client: list[int] = field(default_factory=list)
    client_sum: float = 0.0
    client_count: int = 0
    last_seen: float = 0.0


def _str(av: AnyValue | None) -> str:
    v = value_of(av) if av is not None else None
    return "" if v is None else str(v)


class ServiceGraph(MetricsConnector):
    what = "service graph"
    mutates = False

    def __init__(self, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        self.bounds = sorted(float(b) for b in cfg.latency_histogram_buckets)
        self.store: dict[tuple[bytes, bytes], Edge] = {}
        self.series: dict[tuple[Any, ...], Series] = {}
        self.start_ns = time.time_ns()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        tel = ctx.telemetry
        self.total_edges = tel.counter("service_graph_total_edges", "Edges completed (both halves, or virtual).")
        self.expired_edges = tel.counter("service_graph_expired_edges", "Half-edges that expired without a pair.")
        self.dropped_spans = tel.counter("service_graph_dropped_spans", "Spans dropped: the store was full.")

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._every(self.cfg.store_expiration_loop, self._expire_and_note),
                                           name=f"{self.ctx.id}-expire"),
                       asyncio.create_task(self._every(self.cfg.cache_loop, self._prune),
                                           name=f"{self.ctx.id}-prune")]
        if self.cfg.metrics_flush_interval > 0:
            self._tasks.append(asyncio.create_task(self._every(self.cfg.metrics_flush_interval, self.flush),
                                                   name=f"{self.ctx.id}-flush"))

    async def _every(self, period: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(period)
            r = fn()
            if asyncio.iscoroutine(r):
                await r

    def _expire_and_note(self) -> None:
        self.expire(time.monotonic())

    def _prune(self) -> None:
        cutoff = time.monotonic() - SERIES_TTL
        for k in [k for k, s in self.series.items() if s.last_seen < cutoff]:
            del self.series[k]

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.flush()

    async def consume(self, batch: Batch) -> None:
        self.ctx.telemetry.processed(Signal.TRACES, batch.item_count(), 0)
        self.aggregate(batch, time.monotonic())
        if self.cfg.metrics_flush_interval == 0:
            await self.flush()

    def _dims(self, span: Any, res: dict[str, AnyValue]) -> dict[str, Any]:
        if not self.cfg.dimensions:
            return {}
        sa = {kv.key: kv.value for kv in span.attributes}
        out: dict[str, Any] = {}
        for d in self.cfg.dimensions:
            v = sa.get(d)
            if v is None:
                v = res.get(d)
            if v is not None:
                out[d] = value_of(v)
        return out

    def aggregate(self, batch: Batch, now: float) -> None:
        """Files every client/server span under its edge; completes the edges that found their pair."""
        for rs in batch.peek().resource_spans:
            res = {kv.key: kv.value for kv in rs.resource.attributes}
            svc = _str(res.get("service.name"))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if span.kind in CLIENT_KINDS:
                        self._client(span, svc, res, now)
                    elif span.kind in SERVER_KINDS:
                        self._server(span, svc, res, now)

    def _half(self, span: Any, svc: str, res: dict[str, AnyValue]) -> Half:
        end, start = span.end_time_unix_nano, span.start_time_unix_nano
        return Half(svc, (end - start) / 1e9 if end > start else 0.0, span.status.code == ERROR, self._dims(span, res))

    def _edge(self, key: tuple[bytes, bytes], now: float) -> Edge | None:
        e = self.store.get(key)
        if e is None:
            if len(self.store) >= self.cfg.store.max_items:
                self.expire(now)  # make room from what has expired already
                if len(self.store) >= self.cfg.store.max_items:
                    self.dropped_spans.inc()
                    self.ctx.telemetry.dropped(Signal.TRACES, 1, "service graph store full")
                    return None
            e = self.store[key] = Edge(now)
        return e

    def _client(self, span: Any, svc: str, res: dict[str, AnyValue], now: float) -> None:
        half = self._half(span, svc, res)
        sa = {kv.key: kv.value for kv in span.attributes}
        db = next((_str(sa[a]) for a in self.cfg.database_name_attributes if a in sa), "")
        if db and span.kind == K.SPAN_KIND_CLIENT:  # a database call: its own edge, at once
            server = Half(db, half.latency, half.failed, {})
            self._record(Edge(now, "database", half, server), now)
            return
        half.peer = next((_str(sa[a]) for a in self.cfg.virtual_node_peer_attributes if a in sa), "")
        e = self._edge((span.trace_id, span.span_id), now)
        if e is not None:
            e.client = half
            e.connection_type = e.connection_type or CLIENT_KINDS[span.kind]
            self._maybe_complete((span.trace_id, span.span_id), e, now)

    def _server(self, span: Any, svc: str, res: dict[str, AnyValue], now: float) -> None:
        key = (span.trace_id, span.parent_span_id)
        e = self._edge(key, now)
        if e is not None:
            e.server = self._half(span, svc, res)
            e.parentless_server = not span.parent_span_id
            e.connection_type = e.connection_type or SERVER_KINDS[span.kind]
            self._maybe_complete(key, e, now)

    def _maybe_complete(self, key: tuple[bytes, bytes], e: Edge, now: float) -> None:
        if e.client is not None and e.server is not None:
            del self.store[key]
            self._record(e, now)

    def expire(self, now: float) -> None:
        """Half-edges older than the TTL: virtual edges where the collector makes them, else forgotten."""
        cutoff = now - self.cfg.store.ttl
        for key in [k for k, e in self.store.items() if e.created < cutoff]:
            e = self.store.pop(key)
            self.expired_edges.inc()
            if e.client is not None and e.server is None and e.client.peer:
                e.server = Half(e.client.peer, 0.0, False, {})
                e.connection_type = "virtual_node"
                self._record(e, now, virtual="server")
            elif e.server is not None and e.client is None and e.parentless_server:
                e.client = Half("user", 0.0, False, {})
                e.connection_type = "virtual_node"
                self._record(e, now, virtual="client")

    def _record(self, e: Edge, now: float, virtual: str = "") -> None:
        assert e.client is not None and e.server is not None
        self.total_edges.inc()
        failed = e.client.failed or e.server.failed
        dims: dict[str, Any] = {"client": e.client.service, "server": e.server.service,
                                "connection_type": e.connection_type, "failed": failed}
        for d in self.cfg.dimensions:
            if d in e.client.dims:
                dims[f"client_{d}"] = e.client.dims[d]
            if d in e.server.dims:
                dims[f"server_{d}"] = e.server.dims[d]
        if virtual and self.cfg.virtual_node_extra_label:
            dims["virtual_node"] = virtual
        key = tuple(sorted((k, repr(v)) for k, v in dims.items()))
        s = self.series.get(key)
        if s is None:
            n = len(self.bounds) + 1
            s = self.series[key] = Series(attrs(dims), server=[0] * n, client=[0] * n)
        s.last_seen = now
        s.total += 1
        s.failed += failed
        s.server[bisect_left(self.bounds, e.server.latency)] += 1
        s.server_sum += e.server.latency
        s.server_count += 1
        s.client[bisect_left(self.bounds, e.client.latency)] += 1
        s.client_sum += e.client.latency
        s.client_count += 1

    def build(self) -> ExportMetricsServiceRequest | None:
        if not self.series:
            return None
        now = time.time_ns()
        req = ExportMetricsServiceRequest()
        sm = req.resource_metrics.add().scope_metrics.add()
        sm.scope.name = SCOPE
        for name, attr in (("traces_service_graph_request_total", "total"),
                           ("traces_service_graph_request_failed_total", "failed")):
            m = sm.metrics.add()
            m.name = name
            m.sum.is_monotonic = True
            m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            for s in self.series.values():
                if attr == "failed" and not s.failed:
                    continue
                p = m.sum.data_points.add()
                p.attributes.extend(s.attrs)
                p.start_time_unix_nano, p.time_unix_nano = self.start_ns, now
                p.as_int = getattr(s, attr)
        for side in ("server", "client"):
            m = sm.metrics.add()
            m.name, m.unit = f"traces_service_graph_request_{side}", "s"
            m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            for s in self.series.values():
                p = m.histogram.data_points.add()
                p.attributes.extend(s.attrs)
                p.start_time_unix_nano, p.time_unix_nano = self.start_ns, now
                p.explicit_bounds.extend(self.bounds)
                p.bucket_counts.extend(getattr(s, side))
                p.count, p.sum = getattr(s, f"{side}_count"), getattr(s, f"{side}_sum")
        return req



def _create(src: Signal, dst: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> ServiceGraph:
    return ServiceGraph(cfg, nxt, ctx)


factory = ConnectorFactory(
    type="service_graph",
    aliases=("servicegraph",),
    config=Config,
    signals=frozenset({Signal.TRACES}),
    pairs=frozenset({(Signal.TRACES, Signal.METRICS)}),
    description="request, failed and latency metrics per client/server edge (traces_service_graph_*), "
    "the collector's way",
    create=_create,
)
