"""What a user does: `gotel run` traces two Go gRPC services into the real Jaeger v2 with the `jaeger`
exporter, then `gotel traces list|show --jaeger` reads the call back. The truth is the programs' own
log: the client's W3C traceparent (trace id and parent), each server's handled method and code."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.agent import GOTEL, Agent
from tests.helpers import goapps
from tests.helpers.jaeger_real import RealJaeger

pytestmark = [pytest.mark.root, pytest.mark.slow]


def server(service: str) -> goapps.RunningApp:
    env = dict(os.environ, OTEL_SERVICE_NAME=service)
    return goapps.RunningApp([str(goapps.build("grpcapp", "go1.27")), "server", "-log"], env=env)


def gotel_traces(*argv: str) -> Any:
    out = subprocess.run([GOTEL, "traces", *argv, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_gotel_run_into_real_jaeger_and_back(tmp_path: Path, real_jaeger: RealJaeger) -> None:
    binary = goapps.build("grpcapp", "go1.27")
    tag = uuid.uuid4().hex[:8]
    front_svc, back_svc = f"e2e-front-{tag}", f"e2e-back-{tag}"
    cfg = f"""
receivers:
  go_ebpf:
    discovery: {{exe_paths: ["{binary}"]}}
    flush_interval: 0.2
    stitch_window: 0.3
exporters:
  jaeger:
    endpoint: {real_jaeger.otlp_grpc}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    traces: {{receivers: [go_ebpf], exporters: [jaeger]}}
"""
    a = Agent(cfg, tmp_path).start()
    apps: list[goapps.RunningApp] = []
    try:
        a.wait_ready(60)
        front, back = server(front_svc), server(back_svc)
        apps += [front, back]
        down = f"127.0.0.1:{back.ports['grpc']}"
        # The servers are attached a moment after they start: call until one call's trace is whole in Jaeger.
        rec: dict[str, Any] = {}
        tid = ""
        end = time.monotonic() + 40
        while time.monotonic() < end:
            [rec] = [r for r in goapps.run("grpcapp", "client", "-target", f"127.0.0.1:{front.ports['grpc']}",
                                           "-downstream", down, "-down-code", "14", "-traceparent", "auto",
                                           toolchain="go1.27") if "summary" not in r]
            tid = rec["traceparent"].split("-")[1]
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(real_jaeger.spans(tid)) < 3:
                time.sleep(0.1)
            if len(real_jaeger.spans(tid)) >= 3:
                break
        else:
            raise AssertionError(f"no whole trace in Jaeger within 40 s\n{a.output()[-3000:]}")
        parent = rec["traceparent"].split("-")[2]
        [front_handled] = [r for r in front.records() if r.get("event") == "handled"
                           and r.get("traceparent") == rec["traceparent"]]
        back_handled = [r for r in back.records() if r.get("event") == "handled"]

        listed = gotel_traces("list", "--jaeger", real_jaeger.query_url, "--service", back_svc, "--limit", "0")
        assert tid in [t["trace_id"] for t in listed]
        shown = gotel_traces("show", tid, "--jaeger", real_jaeger.query_url)
        assert shown["trace_id"] == tid and shown["services"] == sorted([front_svc, back_svc])
        tree = shown["tree"]
        fs = [s for s in tree if s["service"] == front_svc and s["kind"] == "server"]
        assert len(fs) == 1 and fs[0]["parent_span_id"] == parent  # continued the caller's traceparent
        assert fs[0]["name"] == front_handled["method"].lstrip("/")  # semconv: no leading slash
        assert fs[0]["attributes"]["rpc.response.status_code"] == "OK" and rec["code"] == 0
        fc = [s for s in tree if s["parent_span_id"] == fs[0]["span_id"] and s["kind"] == "client"]
        assert len(fc) == 1 and fc[0]["service"] == front_svc
        assert fc[0]["attributes"]["rpc.response.status_code"] == "UNAVAILABLE" and fc[0]["status"] == "error"
        bs = [s for s in tree if s["parent_span_id"] == fc[0]["span_id"]]
        assert len(bs) == 1 and (bs[0]["service"], bs[0]["kind"]) == (back_svc, "server")
        assert bs[0]["name"] in {r["method"].lstrip("/") for r in back_handled if r["code"] == 14}
        assert bs[0]["status"] == "error"  # UNAVAILABLE is a server error (semconv), set by the exporter
        # the server span lies within the call as the client's own clock measured it
        t0 = shown["start_unix_nano"]
        start = t0 + fs[0]["start_offset_ns"]
        assert rec["start_unix_ns"] <= start and start + fs[0]["duration_ns"] <= rec["end_unix_ns"]
        assert a.metric("gotel_exporter_send_failed_items_total") == 0
    finally:
        for app in apps:
            app.stop()
        a.stop()
