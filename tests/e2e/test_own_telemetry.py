"""gotel's own metrics through `service::telemetry::metrics::readers`, configured as the collector's docs
write it: a `pull` reader scraped over HTTP, a `periodic` reader pushing OTLP/HTTP into the real
OpenTelemetry Collector and one pushing OTLP/gRPC into a gRPC server built from the official stubs.
The truth is the number of spans the test itself sent."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from gotel.pdata.batch import Signal, attr_dict
from tests.e2e.agent import Agent, free_port
from tests.e2e.test_connectors_e2e import PAIRS, client_server_spans
from tests.helpers.otelcol import Collector, sink_config
from tests.helpers.otlp_sink import OTLPGrpcSink

SPANS = 2 * PAIRS
NAME = "gotel_receiver_accepted_items"


def _points(requests: list, name: str) -> list[tuple[dict, dict, float]]:
    """(resource attributes, point attributes, value) of every point of metric `name`."""
    out = []
    for req in requests:
        for rm in req.resource_metrics:
            res = attr_dict(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in m.sum.data_points:
                            out.append((res, attr_dict(p.attributes), p.as_double or float(p.as_int)))
    return out


def _accepted(requests: list) -> float:
    vals = [v for _r, a, v in _points(requests, NAME) if a.get("component") == "otlp" and a.get("signal") == "traces"]
    return vals[-1] if vals else -1.0


def test_pull_and_periodic_readers_report_what_the_receiver_accepted(tmp_path: Path) -> None:
    cfg, _grpc_port, http_port = sink_config((Signal.METRICS,))
    col = Collector(cfg, tmp_path / "otelcol").start()
    sink = OTLPGrpcSink().start()
    port = free_port()
    a = Agent("", tmp_path)
    a.config_path.write_text(f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{port}}}
exporters:
  debug:
service:
  telemetry:
    resource:
      service.name: gotel-under-test
      deployment.environment: ci
      service.version: null
    metrics:
      level: normal
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {a.port}
        - periodic:
            interval: 300
            exporter:
              otlp:
                protocol: http/protobuf
                endpoint: http://127.0.0.1:{http_port}
                headers:
                  - name: x-tenant
                    value: t1
        - periodic:
            interval: 300
            exporter:
              otlp:
                protocol: grpc
                endpoint: {sink.address}
                insecure: true
                headers: {{x-tenant: t1}}
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
""")
    a.start()
    try:
        a.wait_ready()  # the pull reader's endpoint also answers /readyz: no separate address server
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            tgrpc.TraceServiceStub(ch).Export(client_server_spans().peek(), timeout=10)
        end = time.monotonic() + 20
        while time.monotonic() < end and a.metric(NAME + "_total", component="otlp", signal="traces") < SPANS:
            time.sleep(0.1)
        # pull: the SDK's Prometheus reader, the same series names as gotel's own endpoint
        assert a.metric(NAME + "_total", component="otlp", signal="traces") == SPANS, a.get("/metrics")[1]
        _, body = a.get("/metrics")
        info = next(line for line in body.splitlines() if line.startswith("target_info{"))
        assert 'service_name="gotel-under-test"' in info and 'deployment_environment="ci"' in info, info
        assert "service_version" not in info, info  # a null resource value removes the attribute
        # periodic OTLP/HTTP: the real collector received gotel's metric with the configured resource
        reqs = col.wait_requests(Signal.METRICS, lambda rs: _accepted(rs) == SPANS, timeout=20)
        res = [r for r, _a, _v in _points(reqs, NAME)][-1]
        assert res["service.name"] == "gotel-under-test" and res["deployment.environment"] == "ci"
        assert "service.version" not in res
        # periodic OTLP/gRPC into a server built from the official stubs, with the configured header
        assert sink.wait_for(lambda r: _accepted(r.metrics) == SPANS, 20), a.output()[-2000:]
        assert all(md.get("x-tenant") == "t1" for md in sink.received.metadata), sink.received.metadata
    finally:
        assert a.stop() == 0, a.output()[-3000:]
        col.stop()
        sink.stop()
    out = a.output()
    assert "t1" not in out  # header values are never logged
    assert "Traceback" not in out, out[-3000:]
