"""SIGTERM after a backend outage: exporter workers asleep in a long retry backoff are woken, everything
queued reaches the (now healthy) backend before the deadline, and the one summary line per exporter
at exit agrees with the backend's count and with the drop counters."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import grpc
import pytest

from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_samples import traces
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def send_spans(port: int, requests: int, per_request: int, start: int = 0) -> None:
    """OTLP/gRPC requests of distinct spans; each must be acknowledged by the agent."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(TRACE_EXPORT)
        for r in range(requests):
            call(traces(per_request, start=start + r * per_request).to_bytes(), timeout=10)


def test_sigterm_wakes_backoff_and_flushes_to_a_healthy_backend(sink: OTLPGrpcSink, tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(f"""
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{port}"}}}}}}
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 120s, max_interval: 120s, max_elapsed_time: 0}}
    sending_queue: {{sizer: items, queue_size: 6000, num_consumers: 4}}
service:
  shutdown_timeout: 20s
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp]}}
""", tmp_path)
    sink.fail_with(grpc.StatusCode.UNAVAILABLE)
    agent.start()
    try:
        agent.wait_ready(60)
        send_spans(port, 10, 1000)  # 6,000 fit the queue, 4,000 are dropped as queue_full
        # every consumer tried once and is now asleep for 60-180 s
        assert sink.wait_for(lambda r: len(r.attempts) >= 4, 20), agent.output()
        queue_full = agent.metric("gotel_dropped_items_total", component="otlp", reason="queue_full")
        assert queue_full == 4000
        sink.fail_with(None)  # the backend is back; the workers sleep on
        time.sleep(0.5)
        assert sink.received.span_count() == 0
        t0 = time.monotonic()
        code = agent.stop(signal.SIGTERM)
        took = time.monotonic() - t0
    finally:
        agent.kill()
    out = agent.output()
    assert code == 0, out
    assert took < 10, (took, out)  # not the 20 s deadline, let alone the backoff
    got = {s.span_id for s in sink.received.spans()}
    assert len(got) == 6000 and sink.received.span_count() == 6000, out
    lines = [ln for ln in out.splitlines() if "exporter summary: otlp (traces)" in ln]
    assert len(lines) == 1, out
    m = re.search(r"delivered (\d+), dropped (\d+) \(queue_full: (\d+)\)$", lines[0])
    assert m, lines[0]
    assert int(m.group(1)) == sink.received.span_count()
    assert int(m.group(2)) == int(m.group(3)) == queue_full
