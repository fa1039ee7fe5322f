"""SIGTERM of the agent loses nothing a periodic receiver holds: its last partial interval is collected,
pushed through the receiver process's hop into the pipeline, and exported before exit.

The truth is the Go runtime's own GC count (runtime.MemStats.NumGC through the fixture's /truth),
read before and after an unseen GC workload that ends right before the SIGTERM.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from tests.e2e.agent import Agent
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _gc_points(sink: OTLPGrpcSink, pid: int) -> list[int]:
    out = []
    for req in list(sink.received.metrics):
        for rm in req.resource_metrics:
            if attr_dict(rm.resource.attributes).get("process.pid") != pid:
                continue
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "go.gc.cycles":
                        out.extend(int(p.as_int) for p in m.sum.data_points)
    return out


def _gc_records(sink: OTLPGrpcSink, pid: int) -> int:
    n = 0
    for req in list(sink.received.logs):
        for rl in req.resource_logs:
            if attr_dict(rl.resource.attributes).get("process.pid") == pid:
                n += sum(len(sl.log_records) for sl in rl.scope_logs)
    return n


def test_sigterm_flushes_the_last_partial_interval(goapp: Any, sink: OTLPGrpcSink, tmp_path: Path) -> None:
    app = goapp("runtime")
    agent = Agent(f"""
receivers:
  go_runtime:
    collection_interval: 4
    discovery: {{pids: [{app.pid}]}}
    goroutine_creators: false
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 0.1}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    metrics: {{receivers: [go_runtime], exporters: [otlp]}}
    logs: {{receivers: [go_runtime], exporters: [otlp]}}
""", tmp_path)
    agent.start()
    try:
        agent.wait_ready(60)
        # the first periodic export: the count since the probes were attached, matched to the runtime's
        assert sink.wait_for(lambda _r: bool(_gc_points(sink, app.pid)), 60), agent.output()
        c0 = _gc_points(sink, app.pid)[-1]
        t0 = app.get_json("/truth")
        # a GC workload inside the receiver's next interval, then SIGTERM before that interval ends
        for _ in range(4):
            app.get_json("/gc?n=10")
        t1 = app.get_json("/truth")
        stopped_at = time.monotonic()
        code = agent.stop(signal.SIGTERM)
    finally:
        agent.kill()
    assert code == 0, agent.output()
    truth = t1["num_gc"] - t0["num_gc"]
    assert truth >= 40
    points = _gc_points(sink, app.pid)
    # the interval was 4 s: the newest point is the shutdown flush, not a timer tick (the count is
    # cumulative; a tick just before the stop may arrive after the flush, as the exporter sends on 4 consumers)
    assert time.monotonic() - stopped_at < 30
    assert max(points) - c0 == truth, (c0, points, truth, agent.output()[-3000:])
    # one GC log record per cycle since the probes were attached, the last ones drained at shutdown
    assert _gc_records(sink, app.pid) == max(points), agent.output()[-3000:]
