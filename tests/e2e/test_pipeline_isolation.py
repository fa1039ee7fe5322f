"""Two pipelines fed by one receiver do not see each other's changes (issue 16).

`traces/a` runs a mutating processor (resource_detection) behind a read-only one (memory_limiter);
`traces/b` runs only the read-only one. The collector decides copies per pipeline: a pipeline whose
processors include any mutating one gets its own copy where the receiver fans out. The truth is what
two independent OTLP backends received from the real `gotel run`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gotel.pdata.batch import attr_dict
from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_samples import traces
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def sinks() -> Iterator[tuple[OTLPGrpcSink, OTLPGrpcSink]]:
    a, b = OTLPGrpcSink().start(), OTLPGrpcSink().start()
    yield a, b
    a.stop()
    b.stop()


def _resources(sink: OTLPGrpcSink) -> list[dict[str, object]]:
    """One attribute dict per exported span (its resource's)."""
    return [attr_dict(rs.resource.attributes) for req in list(sink.received.traces)
            for rs in req.resource_spans for ss in rs.scope_spans for _ in ss.spans]


def test_a_mutating_pipeline_does_not_leak_into_a_reading_one(
    sinks: tuple[OTLPGrpcSink, OTLPGrpcSink], tmp_path: Path
) -> None:
    sink_a, sink_b = sinks
    port = free_port()
    agent = Agent(f"""
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{port}"}}}}}}
processors:
  memory_limiter: {{limit_percentage: 95}}
  resource_detection: {{detectors: [system]}}
exporters:
  otlp/a: {{endpoint: {sink_a.address}, tls: {{insecure: true}}}}
  otlp/b: {{endpoint: {sink_b.address}, tls: {{insecure: true}}}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces/a: {{receivers: [otlp], processors: [memory_limiter, resource_detection], exporters: [otlp/a]}}
    traces/b: {{receivers: [otlp], processors: [memory_limiter], exporters: [otlp/b]}}
""", tmp_path)
    agent.start()
    try:
        agent.wait_ready(60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(TRACE_EXPORT)
            for r in range(4):
                call(traces(5, start=r * 5).to_bytes(), timeout=10)
        assert sink_a.wait_for(lambda r: r.span_count() == 20, 20), agent.output()
        assert sink_b.wait_for(lambda r: r.span_count() == 20, 20), agent.output()
        assert agent.stop() == 0, agent.output()
    finally:
        agent.kill()
    res_a, res_b = _resources(sink_a), _resources(sink_b)
    assert len(res_a) == len(res_b) == 20
    # a's processor did its work on a's data ...
    assert all("host.name" in r for r in res_a), res_a[:1]
    # ... and b exported exactly what was sent
    assert [r for r in res_b if "host.name" in r] == []
    assert all(r == {"service.name": "checkout", "process.pid": 4242} for r in res_b), res_b[:1]
