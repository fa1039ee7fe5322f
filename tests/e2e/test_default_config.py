"""`make run`: the embedded default config, no flag, on a host with a Go gRPC service already running.

What a first-time user checks: spans of the service's calls land in ./gotel-data/traces.jsonl, its
RED and runtime metrics in ./gotel-data/metrics.jsonl, and the agent stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent import GOTEL
from tests.helpers import goapps

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return out


def _server_spans(data: Path, pid: int) -> list[dict[str, Any]]:
    spans = []
    for req in _lines(data / "traces.jsonl"):
        for rs in req.get("resourceSpans", []):
            res = {a["key"]: next(iter(a["value"].values())) for a in rs["resource"].get("attributes", [])}
            if str(res.get("process.pid")) != str(pid):
                continue
            spans += [s for ss in rs.get("scopeSpans", []) for s in ss.get("spans", [])
                      if s["name"] == "gotelfix.Echo/Unary"]
    return spans


def _metric_names(data: Path) -> set[str]:
    return {m["name"] for req in _lines(data / "metrics.jsonl") for rm in req.get("resourceMetrics", [])
            for sm in rm.get("scopeMetrics", []) for m in sm.get("metrics", [])}


def _wait(pred: Any, timeout: float, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s\n{log.read_text(errors='replace')[-4000:]}")


def test_make_run_default_config_traces_a_running_go_service(tmp_path: Path) -> None:
    server = goapps.RunningApp([str(goapps.build("grpcapp", "go1.27")), "server"])
    log = tmp_path / "gotel.log"
    data = tmp_path / "gotel-data"
    with open(log, "wb") as out:
        agent = subprocess.Popen([GOTEL, "run"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: f"traced pid {server.pid} " in log.read_text(errors="replace"), 120,
              "go_ebpf attaching to the running service", log)
        goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{server.ports['grpc']}", "-n", "20", "-code", "5",
                   toolchain="go1.27")
        _wait(lambda: len(_server_spans(data, server.pid)) >= 20, 60, "20 server spans in traces.jsonl", log)
        spans = _server_spans(data, server.pid)
        assert len(spans) == 20
        for s in spans:
            a = attr_dict_json(s)
            assert a["rpc.system"] == "grpc" and a["rpc.method"] == "Unary"
            assert a["rpc.response.status_code"] == "NOT_FOUND"
        _wait(lambda: {"rpc.server.call.duration", "go.goroutine.created"} <= _metric_names(data), 60,
              "RED and runtime metrics in metrics.jsonl", log)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        server.stop()


def attr_dict_json(span: dict[str, Any]) -> dict[str, Any]:
    """OTLP-JSON attributes -> plain values (the file exporter writes the OTLP JSON encoding)."""
    out = {}
    for a in span.get("attributes", []):
        v = a["value"]
        out[a["key"]] = v.get("stringValue", v.get("intValue", v.get("boolValue", v.get("doubleValue"))))
    return out

