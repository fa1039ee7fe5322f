"""service_graph on gotel's own go_ebpf spans: two traced grpcapp servers (front calls back, which
answers UNAVAILABLE) give front -> back edges, all failed, as many as the client/server span pairs
the exported spans themselves hold (the independent truth: the pairs counted here from the spans)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gotel.pdata.batch import value_of
from tests.e2e.agent import Agent, spans_of
from tests.helpers import goapps
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow


def pairs(sink: OTLPGrpcSink) -> dict[tuple[str, str, bool], int]:
    """(client service, server service, failed) -> client/server span pairs in the exported spans."""
    clients = {(s.trace_id, s.span_id): (r.get("service.name", ""), s.status.code == 2)
               for r, s in spans_of(sink) if s.kind == 3}
    out: dict[tuple[str, str, bool], int] = {}
    for r, s in spans_of(sink):
        c = clients.get((s.trace_id, s.parent_span_id)) if s.kind == 2 else None
        if c is not None:
            k = (c[0], r.get("service.name", ""), c[1] or s.status.code == 2)
            out[k] = out.get(k, 0) + 1
    return out


def graph(sink: OTLPGrpcSink) -> dict[tuple[str, str, bool], int]:
    """The latest traces_service_graph_request_total of every non-virtual edge."""
    out: dict[tuple[str, str, bool], int] = {}
    for req in list(sink.received.metrics):
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "traces_service_graph_request_total":
                        for p in m.sum.data_points:
                            a = {kv.key: value_of(kv.value) for kv in p.attributes}
                            if a["connection_type"] != "virtual_node":
                                out[(a["client"], a["server"], a["failed"])] = p.as_int
    return out


def test_service_graph_edges_from_two_traced_processes(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    binary = goapps.build("grpcapp", "go1.27")
    a = Agent(f"""
receivers:
  go_ebpf:
    discovery: {{exe_paths: ["{binary}"]}}
    flush_interval: 0.2
    stitch_window: 0.3
connectors:
  servicegraph:
    metrics_flush_interval: 200ms
    store: {{ttl: 5s}}
exporters:
  otlp:
    endpoint: http://{sink.address}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [go_ebpf], exporters: [otlp, servicegraph]}}
    metrics: {{receivers: [servicegraph], exporters: [otlp]}}
""", tmp_path).start()
    apps: list[goapps.RunningApp] = []
    try:
        a.wait_ready(60)
        for name in ("front", "back"):
            apps.append(goapps.RunningApp([str(binary), "server"], env=dict(os.environ, OTEL_SERVICE_NAME=name)))
        front, back = apps
        down = f"127.0.0.1:{back.ports['grpc']}"

        def call() -> None:
            goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{front.ports['grpc']}", "-downstream", down,
                       "-down-code", "14", toolchain="go1.27")

        end = time.monotonic() + 30
        while pairs(sink).get(("front", "back", True), 0) < 5 and time.monotonic() < end:
            call()
            time.sleep(0.2)
        assert pairs(sink).get(("front", "back", True), 0) >= 5, (pairs(sink), a.output()[-3000:])
        # the connector's edges equal the span pairs the sink holds, both read again each time: spans of
        # the last calls may still be on their way to both
        end = time.monotonic() + 15
        while graph(sink) != pairs(sink) and time.monotonic() < end:
            time.sleep(0.2)
        truth = pairs(sink)
        assert graph(sink) == truth
        print(f"edges from {sum(truth.values())} span pairs: {truth}")
    finally:
        for app in apps:
            app.stop()
        a.stop()
