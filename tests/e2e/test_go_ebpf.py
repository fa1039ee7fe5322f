"""`gotel run` with the go_ebpf receiver (its own process) against grpcapp servers started after the agent:
attach, one trace across two traced processes, OTEL_SERVICE_NAME, detach on exit and reattach after a
restart, exported to a real OTLP/gRPC server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from tests.e2e.agent import Agent, spans_of
from tests.helpers import goapps
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow


def server(toolchain: str, service: str) -> goapps.RunningApp:
    env = dict(os.environ, OTEL_SERVICE_NAME=service)
    return goapps.RunningApp([str(goapps.build("grpcapp", toolchain)), "server"], env=env)


def wait(pred: Any, timeout: float, what: str, a: Agent) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen within {timeout}s\n{a.output()[-3000:]}")


def test_gotel_run_traces_late_processes_across_restarts(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    binary = goapps.build("grpcapp", "go1.27")
    cfg = f"""
receivers:
  go_ebpf:
    discovery: {{exe_paths: ["{binary}"]}}
    flush_interval: 0.2
    stitch_window: 0.3
exporters:
  otlp:
    endpoint: http://{sink.address}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [go_ebpf], exporters: [otlp]}}
"""
    a = Agent(cfg, tmp_path).start()
    apps: list[goapps.RunningApp] = []
    try:
        a.wait_ready(60)
        front, back = server("go1.27", "front"), server("go1.27", "back")  # started after gotel
        apps += [front, back]
        down = f"127.0.0.1:{back.ports['grpc']}"

        def call(target: goapps.RunningApp) -> None:
            # the caller is attached a moment later than its first call could be: call until traced
            goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{target.ports['grpc']}", "-downstream", down,
                       "-down-code", "14", toolchain="go1.27")

        def chain(front_pid: int) -> tuple[Any, Any, Any] | None:
            """One call's three spans, front server -> its client span -> back server, all arrived: the
            spans of one call can reach the sink in different exports, so any call's may be incomplete."""
            got = spans_of(sink)
            for fs in got:
                if fs[0]["process.pid"] != front_pid or fs[1].kind != 2:
                    continue
                for fc in got:
                    if fc[0]["process.pid"] == front_pid and fc[1].kind == 3 and fc[1].parent_span_id == fs[1].span_id:
                        for bs in got:
                            if bs[0]["process.pid"] == back.pid and bs[1].parent_span_id == fc[1].span_id:
                                return fs, fc, bs
            return None

        def trace_complete(front_pid: int) -> bool:
            return chain(front_pid) is not None

        end = time.monotonic() + 40  # BCC's attach takes > 15 s on a loaded 2-core VM
        while not trace_complete(front.pid) and time.monotonic() < end:
            call(front)
            time.sleep(0.3)
        wait(lambda: trace_complete(front.pid), 5, "front server -> client -> back server", a)
        found = chain(front.pid)
        assert found is not None
        fs, fc, bs = found
        assert bs[1].trace_id == fs[1].trace_id == fc[1].trace_id
        assert fs[0]["service.name"] == "front" and bs[0]["service.name"] == "back"
        assert fs[0]["process.executable.name"] == binary.name
        assert attr_dict(fc[1].attributes)["rpc.response.status_code"] == "UNAVAILABLE"

        # restart the front server: the old process is detached, the new one traced under its new pid
        old = front.pid
        front.stop()
        front = server("go1.27", "front")
        apps.append(front)
        assert front.pid != old
        end = time.monotonic() + 40  # BCC's attach takes > 15 s on a loaded 2-core VM
        while not trace_complete(front.pid) and time.monotonic() < end:
            call(front)
            time.sleep(0.3)
        wait(lambda: trace_complete(front.pid), 5, "spans of the restarted front server", a)
        assert a.metric("gotel_ebpf_lost_events_total") == 0
    finally:
        for app in apps:
            app.stop()
        a.stop()
