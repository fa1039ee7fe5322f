"""A receiver process restarted by the supervisor keeps its counters: the pipeline continues the totals
of the previous process (a clean exit and kill -9), and what a killed process held is counted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.agent import Agent
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow
PER_PROCESS = 600


def _restarted(a: Agent, old: int, timeout: float = 15.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rec = (a.ready() or {}).get("receivers", {}).get("synthetic", {})
        if rec.get("up") and rec.get("pid") not in (None, old):
            return int(rec["pid"])
        time.sleep(0.05)
    raise AssertionError(f"receiver not restarted:\n{a.output()}")


def _settles(a: Agent, sink: OTLPGrpcSink, want: int, timeout: float = 20.0) -> None:
    """The backend has `want` spans and the receiver's carried counters say the same."""
    assert sink.wait_for(lambda r: r.span_count() >= want, timeout), a.output()
    end = time.monotonic() + timeout
    while time.monotonic() < end:  # the next snapshot of the receiver process's counters
        if (a.metric("gotel_receiver_accepted_items_total", component="synthetic", signal="traces") == want
                and a.metric("gotel_exporter_sent_items_total", component="otlp/sink", signal="traces") == want):
            break
        time.sleep(0.1)
    assert sink.received.span_count() == want
    assert a.metric("gotel_receiver_accepted_items_total", component="synthetic", signal="traces") == want
    assert a.metric("gotel_exporter_sent_items_total", component="otlp/sink", signal="traces") == want


def test_counters_continue_across_restarts(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    a = Agent(f"""
receivers:
  synthetic:
    spans_per_second: 600
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    batch_size: 20
    max_items: {PER_PROCESS}
exporters:
  otlp:
    endpoint: http://{sink.address}
    compression: none
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@", interval: 1s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [otlp]}}
""", tmp_path).start()
    try:
        pid = int(a.wait_ready()["receivers"]["synthetic"]["pid"])
        _settles(a, sink, PER_PROCESS)
        # a clean exit (its final snapshot arrives), then the supervisor starts the next process
        os.kill(pid, signal.SIGTERM)
        pid = _restarted(a, pid)
        _settles(a, sink, 2 * PER_PROCESS)
        # kill -9 of an idle process: its last snapshot is complete, nothing was in flight
        time.sleep(2.5)
        os.kill(pid, signal.SIGKILL)
        pid = _restarted(a, pid)
        _settles(a, sink, 3 * PER_PROCESS)
        assert a.metric("gotel_receiver_restarts_total", component="synthetic") == 2
        assert a.metric("gotel_dropped_items_total", component="synthetic", reason="receiver_exit") == 0
        assert a.stop() == 0
    finally:
        a.kill()


def test_a_killed_receiver_s_in_flight_items_are_counted(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    """The pipeline is blocked (backend down, a tiny queue that blocks): the receiver process's sink
    holds what it generated. kill -9 loses that, and the supervisor counts exactly that."""
    import grpc

    sink.fail_with(grpc.StatusCode.UNAVAILABLE)
    a = Agent(f"""
receivers:
  synthetic:
    spans_per_second: 600
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    batch_size: 20
    max_items: {PER_PROCESS}
exporters:
  otlp:
    endpoint: http://{sink.address}
    compression: none
    retry_on_failure: {{initial_interval: 0.2s, max_interval: 0.5s, max_elapsed_time: 0}}
    sending_queue: {{sizer: items, queue_size: 100, block_on_overflow: true}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@", interval: 1s}}}}
  pipelines:
    traces: {{receivers: [synthetic], exporters: [otlp]}}
""", tmp_path).start()
    try:
        pid = int(a.wait_ready()["receivers"]["synthetic"]["pid"])
        end = time.monotonic() + 20
        while a.metric("gotel_receiver_accepted_items_total", component="synthetic") < PER_PROCESS:
            assert time.monotonic() < end, a.output()
            time.sleep(0.1)
        time.sleep(1.5)  # one more snapshot: the process is idle, its account complete
        os.kill(pid, signal.SIGKILL)
        _restarted(a, pid)
        lost = a.metric("gotel_dropped_items_total", component="synthetic", reason="receiver_exit")
        assert lost > 0, a.output()
        sink.fail_with(None)
        # the next process's spans and what the pipeline had received from the killed one arrive
        assert sink.wait_for(lambda r: r.span_count() >= 2 * PER_PROCESS - lost, 30), a.output()
        time.sleep(1.0)
        assert sink.received.span_count() + lost == 2 * PER_PROCESS
        assert a.metric("gotel_receiver_accepted_items_total", component="synthetic") == 2 * PER_PROCESS
        assert "receiver synthetic ended with" in a.output() and "(receiver_exit)" in a.output()
        assert a.stop() == 0
    finally:
        a.kill()
