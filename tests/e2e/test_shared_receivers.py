"""Light receivers (pprof, process) share one receiver process: each keeps its own id, telemetry, health
state, log prefix and restart account; kill -9 of that process restarts both, and their counters carry
over per receiver. service::supervisor::own_process keeps one alone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent import Agent
from tests.helpers import goapps
from tests.helpers.otlp_sink import OTLPGrpcSink, Received

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[goapps.RunningApp]:
    app = goapps.RunningApp([str(goapps.build("grpcapp", "go1.27")), "server"])
    try:
        yield app
    finally:
        app.stop()


def _config(sink: OTLPGrpcSink, server: goapps.RunningApp, extra: str = "") -> str:
    return f"""
receivers:
  process: {{collection_interval: 1s, cgroups: false, discovery: {{pids: [{server.pid}]}}}}
  pprof:
    targets: [{{endpoint: "http://127.0.0.1:{server.ports['pprof']}"}}]
    profiles:
      cpu: {{enabled: false}}
      memstats: {{interval: 1s}}
exporters:
  otlp:
    endpoint: http://{sink.address}
    compression: none
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@", interval: 1s}}}}
  {extra}
  pipelines:
    metrics: {{receivers: [process, pprof], exporters: [otlp]}}
"""


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _scopes(r: Received) -> set[str]:
    return {sm.scope.name for req in r.metrics for rm in req.resource_metrics for sm in rm.scope_metrics}


def _accepted(a: Agent) -> dict[str, float]:
    return {r: a.metric("gotel_receiver_accepted_items_total", component=r, signal="metrics") for r in ("process", "pprof")}


def _wait(cond: object, timeout: float, a: Agent, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(cond) and cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}:\n{a.output()[-4000:]}")


def test_light_receivers_share_a_process_and_restart_together(tmp_path: Path, sink: OTLPGrpcSink,
                                                                server: goapps.RunningApp) -> None:
    a = Agent(_config(sink, server), tmp_path).start()
    try:
        rec = a.wait_ready()["receivers"]
        pid = int(rec["process"]["pid"])
        assert rec["pprof"]["pid"] == pid  # one process
        _wait(lambda: _comm(pid) == "pprof+process", 5, a, "the shared process named after its receivers")
        _wait(lambda: all(v > 0 for v in _accepted(a).values()), 30, a, "both receivers' items accepted")
        # the backend has metrics of both receivers (each its own scope)
        assert sink.wait_for(lambda r: {"gotel/receiver/process", "gotel.receivers.pprof"} <= _scopes(r), 20), a.output()
        time.sleep(2.5)  # one more telemetry snapshot of each: the killed process's account is complete
        before = _accepted(a)
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            r = (a.ready() or {}).get("receivers", {})
            return all(r.get(x, {}).get("up") and r[x]["pid"] not in (None, pid) for x in ("process", "pprof"))

        _wait(restarted, 15, a, "both receivers restarted")
        rec = a.ready()["receivers"]  # type: ignore[index]
        assert rec["process"]["pid"] == rec["pprof"]["pid"] and rec["process"]["restarts"] == 1
        assert rec["pprof"]["restarts"] == 1
        # each receiver's counters continue from the killed process's totals (a reset would fall back)
        _wait(lambda: all(_accepted(a)[r] > before[r] for r in before), 30, a, "counters carried and growing")
        assert a.metric("gotel_receiver_restarts_total", component="process") == 1
        assert a.metric("gotel_receiver_restarts_total", component="pprof") == 1
        out = a.output()
        assert "receivers pprof, process (one process) was killed by signal 9" in out
        # each receiver's records carry its own id
        assert "[receiver process] gotel.receiver:" in out and "[receiver pprof] gotel.receiver:" in out
        assert a.stop() == 0
    finally:
        a.kill()


def test_own_process_keeps_a_light_receiver_alone(tmp_path: Path, sink: OTLPGrpcSink,
                                                  server: goapps.RunningApp) -> None:
    a = Agent(_config(sink, server, "supervisor: {own_process: [pprof]}"), tmp_path).start()
    try:
        rec = a.wait_ready()["receivers"]
        assert rec["process"]["pid"] != rec["pprof"]["pid"]
        _wait(lambda: _comm(rec["pprof"]["pid"]) == "pprof", 5, a, "pprof's own process named after it")
        _wait(lambda: all(v > 0 for v in _accepted(a).values()), 30, a, "both receivers' items accepted")
        assert a.stop() == 0
    finally:
        a.kill()
