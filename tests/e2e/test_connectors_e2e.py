"""`gotel run` with connectors, as a collector user writes them: spans sent to the otlp receiver go
through forward into a second traces pipeline (to a sink, unchanged) and through span_metrics and
service_graph into a metrics pipeline; the sink receives every span once and metrics that count them."""

from __future__ import annotations

import struct
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from gotel.pdata.batch import Traces, attrs, value_of
from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_sink import OTLPGrpcSink, Received

PAIRS = 40


def client_server_spans() -> Traces:
    """PAIRS frontend client spans, each the parent of one backend server span."""
    b = Traces()
    for svc, kind in (("frontend", 3), ("backend", 2)):
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs({"service.name": svc}))
        ss = rs.scope_spans.add()
        for i in range(1, PAIRS + 1):
            s = ss.spans.add()
            s.trace_id = struct.pack(">QQ", 9, i)
            s.span_id = struct.pack(">Q", i if kind == 3 else 1000 + i)
            if kind == 2:
                s.parent_span_id = struct.pack(">Q", i)
            s.name, s.kind = ("GET /api" if kind == 3 else "/api"), kind
            s.start_time_unix_nano = 1_700_000_000_000_000_000
            s.end_time_unix_nano = s.start_time_unix_nano + 5_000_000
    return b


def sums(r: Received, name: str) -> dict[tuple[tuple[str, object], ...], int]:
    """The latest value of every series of cumulative sum `name`."""
    out: dict[tuple[tuple[str, object], ...], int] = {}
    for req in r.metrics:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in m.sum.data_points:
                            out[tuple(sorted((kv.key, value_of(kv.value)) for kv in p.attributes))] = p.as_int
    return out


def test_forward_span_metrics_and_service_graph_in_gotel_run(tmp_path: Path) -> None:
    sink = OTLPGrpcSink().start()
    port = free_port()
    a = Agent(f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{port}}}
connectors:
  forward:
  spanmetrics:
    metrics_flush_interval: 200ms
  servicegraph:
    metrics_flush_interval: 200ms
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    traces/in:
      receivers: [otlp]
      exporters: [forward, spanmetrics, servicegraph]
    traces/out:
      receivers: [forward]
      exporters: [otlp]
    metrics:
      receivers: [spanmetrics, servicegraph]
      exporters: [otlp]
""", tmp_path)
    a.start()
    try:
        a.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            tgrpc.TraceServiceStub(ch).Export(client_server_spans().peek(), timeout=10)

        def done(r: Received) -> bool:
            calls = sums(r, "traces.span.metrics.calls")
            edges = sums(r, "traces_service_graph_request_total")
            return r.span_count() >= 2 * PAIRS and sum(calls.values()) == 2 * PAIRS and sum(edges.values()) == PAIRS

        assert sink.wait_for(done, 30), (sink.received.span_count(), a.output()[-3000:])
        r = sink.received
        assert r.span_count() == 2 * PAIRS
        calls = sums(r, "traces.span.metrics.calls")
        assert {dict(k)["service.name"]: v for k, v in calls.items()} == {"frontend": PAIRS, "backend": PAIRS}
        edges = sums(r, "traces_service_graph_request_total")
        assert edges == {(("client", "frontend"), ("connection_type", ""), ("failed", False),
                          ("server", "backend")): PAIRS}
    finally:
        a.stop()
        sink.stop()
