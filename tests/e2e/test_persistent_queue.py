"""`sending_queue.storage: file_storage`: kill -9 of the pipeline process during a backend outage, a
restart, and every span the agent acknowledged reaches the backend, none twice (the backend accepted
nothing before the kill, so the at-least-once window is empty here)."""

from __future__ import annotations

import os
import re
import signal
import stat
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_samples import traces
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PER_REQUEST = 100


def config(port: int, sink: OTLPGrpcSink, storage_dir: Path) -> str:
    return f"""
extensions:
  file_storage:
    directory: {storage_dir}
    create_directory: true
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{port}"}}}}}}
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 0.2s, max_interval: 1s, max_elapsed_time: 0}}
    sending_queue: {{storage: file_storage, num_consumers: 4}}
service:
  extensions: [file_storage]
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [otlp]}}
"""


class Sender(threading.Thread):
    """Sends requests of distinct spans until told to stop or refused; remembers what was acknowledged."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[int] = []  # first span index of each acknowledged request
        self.stop = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            call = ch.unary_unary(TRACE_EXPORT)
            i = 0
            while not self.stop.is_set():
                try:
                    call(traces(PER_REQUEST, start=i).to_bytes(), timeout=5)
                except grpc.RpcError:
                    return
                self.acked.append(i)
                i += PER_REQUEST


def test_kill_9_mid_outage_then_restart_delivers_every_span(sink: OTLPGrpcSink, tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "queue"
    sink.fail_with(grpc.StatusCode.UNAVAILABLE)
    first = Agent(config(port, sink, store), tmp_path)
    first.start()
    sender = Sender(port)
    try:
        first.wait_ready(60)
        sender.start()
        # spans keep arriving while the exporter retries against the dead backend; kill -9 mid-stream
        while len(sender.acked) < 60 and sender.is_alive():
            sender.join(0.05)
        assert len(sender.acked) >= 60, first.output()
        assert first.metric("gotel_exporter_retries_total", component="otlp") > 0
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        sender.stop.set()
        sender.join(10)
    finally:
        first.kill()
    assert sink.received.span_count() == 0
    acked = {j for i in sender.acked for j in range(i, i + PER_REQUEST)}
    dbs = list(store.glob("*.db"))
    assert [p.name for p in dbs] == ["exporter_otlp_traces.db"]
    assert stat.S_IMODE(dbs[0].stat().st_mode) == 0o600

    sink.fail_with(None)  # the backend is back; so is the agent
    (tmp_path / "second").mkdir()
    second = Agent(config(port, sink, store), tmp_path / "second")
    second.start()
    try:
        second.wait_ready(60)
        want = {(0xABCDEF << 64 | (j + 1)).to_bytes(16, "big") for j in acked}
        assert sink.wait_for(lambda r: want <= {s.trace_id for s in r.spans()}, 60), second.output()
        code = second.stop(signal.SIGTERM)
    finally:
        second.kill()
    assert code == 0, second.output()
    ids = Counter(s.trace_id for s in sink.received.spans())
    assert want <= set(ids)
    # the backend accepted nothing before the kill: no span may arrive twice
    assert max(ids.values()) == 1, [k.hex() for k, n in ids.items() if n > 1][:5]
    # spans of a request in flight when the kill came may be stored without an ack: never more than one request
    assert len(ids) - len(want) <= PER_REQUEST
    out = second.output()
    assert re.search(r"otlp: \d+ traces batches \(\d+ bytes\) recovered from file_storage", out), out
    line = [ln for ln in out.splitlines() if "exporter summary: otlp (traces)" in ln]
    assert len(line) == 1 and f"delivered {len(ids)}, dropped 0" in line[0], out
    assert "0 batches kept in file_storage" in line[0], line


class SlowSink(OTLPGrpcSink):
    """The real OTLP/gRPC test server, answering each request after `delay` seconds."""

    delay = 0.05

    def _take_failure(self) -> Any:
        # decided when the request arrives: a request of the killed first run still in this handler when
        # the backend "comes back" was refused, not delivered (it stays on that run's disk and is resent)
        failure = super()._take_failure()
        time.sleep(self.delay)
        return failure


def test_kill_9_while_draining_resends_at_most_the_requests_in_flight(tmp_path: Path) -> None:
    """The at-least-once window: kill -9 while the queue drains into a healthy backend; after the
    restart every acknowledged span arrives, and the only duplicates are those of requests the
    consumers had in flight (num_consumers = 4 requests of 100 spans)."""
    port = free_port()
    store = tmp_path / "queue"
    sink = SlowSink().start()
    try:
        sink.fail_with(grpc.StatusCode.UNAVAILABLE)
        runs = []
        for i in range(3):
            (tmp_path / f"run{i}").mkdir()
            runs.append(Agent(config(port, sink, store), tmp_path / f"run{i}"))
        first = runs[0].start()
        try:
            first.wait_ready(60)
            send_requests(port, 80)  # 8,000 spans queued on disk while the backend is down
            os.kill(first.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            first.proc.wait(10)  # type: ignore[union-attr]
        finally:
            first.kill()
        sink.fail_with(None)
        second = runs[1].start()
        try:
            # draining at ~4 requests per 50 ms: kill it a quarter of the way through
            assert sink.wait_for(lambda r: r.span_count() >= 2000, 60), second.output()
            os.kill(second.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            second.proc.wait(10)  # type: ignore[union-attr]
        finally:
            second.kill()
        got_before = sink.received.span_count()
        assert got_before < 8000
        third = runs[2].start()
        try:
            assert sink.wait_for(lambda r: len({s.trace_id for s in r.spans()}) >= 8000, 60), third.output()
            assert third.stop(signal.SIGTERM) == 0
        finally:
            third.kill()
    finally:
        sink.stop()
    ids = Counter(s.trace_id for s in sink.received.spans())
    assert len(ids) == 8000
    dups = sum(n - 1 for n in ids.values())
    assert max(ids.values()) <= 2
    assert dups <= 4 * PER_REQUEST, dups
    print(f"kill -9 while draining: {got_before} spans delivered before the kill, {dups} sent twice")


def send_requests(port: int, n: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(TRACE_EXPORT)
        for r in range(n):
            call(traces(PER_REQUEST, start=r * PER_REQUEST).to_bytes(), timeout=10)
