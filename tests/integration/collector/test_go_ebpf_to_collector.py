"""`gotel receiver go_ebpf --endpoint` (a receiver alone, no pipeline) sends the spans of a real gRPC
server, traced by eBPF, straight to the real collector (v0.161.0): what the collector's file exporter
wrote equals what the fixture did, by the fixture's own logs: one server span per call, carrying the
call's status code, method and the caller's traceparent, inside the client's own start and end times."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.go_ebpf.events import CODES
from tests.helpers import goapps
from tests.helpers.otelcol import Collector, sink_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

GOTEL = str(Path(sys.executable).with_name("gotel"))
SERVER, CLIENT = 2, 3
METHOD = {"unary": "Unary", "server": "ServerStream", "client": "ClientStream", "bidi": "Bidi"}


@contextlib.contextmanager
def gotel_receiver(tmp_path: Path, binary: Path, endpoint: str) -> Iterator[subprocess.Popen[bytes]]:
    """`gotel receiver go_ebpf` as a user runs it, stopped by pid."""
    cfg = tmp_path / "gotel.yaml"
    cfg.write_text(f"""
receivers:
  go_ebpf:
    discovery: {{exe_paths: ["{binary}"]}}
    flush_interval: 0.2
    stitch_window: 0.2
exporters:
  debug:
service:
  pipelines:
    traces: {{receivers: [go_ebpf], exporters: [debug]}}
""")
    log = tmp_path / "gotel-receiver.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([GOTEL, "receiver", "go_ebpf", "-c", str(cfg), "--endpoint", endpoint],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def server_spans(col: Collector, pid: int) -> list[tuple[dict[str, Any], Any]]:
    return [(attr_dict(rs.resource.attributes), s) for req in col.requests(Signal.TRACES)
            for rs in req.resource_spans if attr_dict(rs.resource.attributes).get("process.pid") == pid
            for ss in rs.scope_spans for s in ss.spans if s.kind == SERVER]


def test_go_ebpf_receiver_delivers_spans_to_the_collector(
        tmp_path: Path, otelcol: Callable[..., Collector], goapp: Callable[..., goapps.RunningApp]) -> None:
    cfg, grpc_port, _ = sink_config((Signal.TRACES,))
    col = otelcol(cfg)
    binary = goapps.build("grpcapp", "go1.27")
    srv = goapp("grpcapp", "server", "-log", toolchain="go1.27")
    target = f"127.0.0.1:{srv.ports['grpc']}"
    with gotel_receiver(tmp_path, binary, f"http://127.0.0.1:{grpc_port}") as rproc:
        # calls without a traceparent until the receiver has attached and the collector shows the first span
        end = time.monotonic() + 90
        while not server_spans(col, srv.pid):
            assert rproc.poll() is None, (tmp_path / "gotel-receiver.log").read_text()[-4000:]
            assert time.monotonic() < end, "no span reached the collector\n" + \
                (tmp_path / "gotel-receiver.log").read_text()[-4000:] + col.log()
            goapps.run("grpcapp", "client", "-target", target, "-message", "warm-up")
            time.sleep(0.3)

        calls: list[tuple[str, int, dict[str, Any]]] = []
        plan = [("unary", c) for c in range(17)] + [(k, c) for k in ("server", "client", "bidi") for c in (0, 5)]
        for i, (stream, code) in enumerate(plan):
            (rec, *_) = goapps.run("grpcapp", "client", "-target", target, "-stream", stream, "-code", str(code),
                                   "-message", f"m{code}", "-traceparent", "auto", "-id", str(1000 + i))
            assert rec["code"] == code
            calls.append((stream, 1000 + i, rec))
        trace_ids = {rec["traceparent"].split("-")[1] for _, _, rec in calls}
        assert len(trace_ids) == len(calls)

        def ours() -> list[tuple[dict[str, Any], Any]]:
            return [(r, s) for r, s in server_spans(col, srv.pid) if s.trace_id.hex() in trace_ids]

        col.wait_requests(Signal.TRACES, lambda _: len(ours()) >= len(calls), timeout=30)

    spans = {s.trace_id.hex(): (res, s) for res, s in ours()}
    assert len(ours()) == len(spans) == len(calls), "one server span per call, no more"
    all_spans = [(attr_dict(rs.resource.attributes), sp) for req in col.requests(Signal.TRACES)
                 for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    traced_clients = 0
    handled = {r["id"]: r for r in srv.records() if r.get("event") == "handled"}
    for stream, call_id, rec in calls:
        _, trace, parent, _ = rec["traceparent"].split("-")
        res, span = spans[trace]
        a = attr_dict(span.attributes)
        if span.parent_span_id.hex() != parent:
            # the client (the same binary) was traced as well: its span sits between the caller's
            # traceparent and the server span, and reached the collector too
            (client,) = [c for _, c in all_spans if c.trace_id.hex() == trace and c.kind == CLIENT]
            assert client.span_id == span.parent_span_id and client.parent_span_id.hex() == parent
            assert attr_dict(client.attributes)["rpc.response.status_code"] == CODES[rec["code"]]
            traced_clients += 1
        assert span.name == f"gotelfix.Echo/{METHOD[stream]}"
        assert a["rpc.method"] == METHOD[stream] and a["rpc.service"] == "gotelfix.Echo"
        assert a["rpc.response.status_code"] == CODES[rec["code"]], (stream, rec, a)
        # the server's own log of the same call agrees
        h = handled[call_id]
        assert h["code"] == rec["code"] and h["method"] == f"/gotelfix.Echo/{METHOD[stream]}"
        assert h["traceparent"] == rec["traceparent"]
        # the server span lies within the client's call (wall clock, a millisecond of slack)
        assert rec["start_unix_ns"] - 1_000_000 <= span.start_time_unix_nano <= span.end_time_unix_nano \
            <= rec["end_unix_ns"] + 1_000_000, (rec, span.start_time_unix_nano, span.end_time_unix_nano)
        assert res["service.name"] == binary.name and res["process.pid"] == srv.pid
    print(f"{len(calls)} calls, {traced_clients} of their clients traced too")
