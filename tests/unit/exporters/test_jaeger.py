"""The `jaeger` exporter against the real Jaeger v2 (tests/peers/jaeger): spans sent over OTLP gRPC and
HTTP are read back through Jaeger's own api_v3 and must equal what was sent, with what Jaeger needs
filled in; TLS to Jaeger's TLS-only receivers; clear errors for configs written for Jaeger's legacy
ingest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from gotel.exporters import jaeger
from gotel.pdata.batch import Signal, Traces, attrs
from tests.helpers.certs import make_certs
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.jaeger_real import ECHO_ATTRIBUTE, ECHO_HEADER, RealJaeger, jaeger_view, sent_view
from tests.helpers.jaeger_server import JaegerServer
from tests.helpers.tracedata import fixture_traces

K = trace_pb2.Span


# --- helpers ---------------------------------------------------------------------------------

def read_back(j: RealJaeger, want: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    got: dict[tuple[str, str], dict[str, Any]] = {}
    for tid in sorted({t for t, _ in want}):
        got.update(jaeger_view(j.wait_spans(tid, sum(1 for t, _ in want if t == tid))))
    return got


# --- batches ----------------------------------------------------------------------------------

def new_id(n: int) -> bytes:
    return os.urandom(n)


def bare_batch() -> Traces:
    """A resource without service.name, a span without kind (with an event and a link), and a
    resource without any attributes."""
    now = time.time_ns()
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"process.executable.name": "orders", "process.pid": 12}))
    ss = rs.scope_spans.add()
    ss.scope.name = "gotel.test"
    s = ss.spans.add(trace_id=new_id(16), span_id=new_id(8), name="work", start_time_unix_nano=now - 5_000_123,
                     end_time_unix_nano=now - 1_000_456)
    s.attributes.extend(attrs({"rpc.method": "/a.B/C", "retries": 2, "ratio": 0.25, "cached": True}))
    s.events.add(name="retry", time_unix_nano=now - 3_000_000).attributes.extend(attrs({"attempt": 1}))
    s.links.add(trace_id=new_id(16), span_id=new_id(8))
    rs2 = b.msg.resource_spans.add()
    rs2.scope_spans.add().spans.add(trace_id=new_id(16), span_id=new_id(8), name="x",
                                    kind=K.SPAN_KIND_SERVER, start_time_unix_nano=now - 2_000_000,
                                    end_time_unix_nano=now - 1_000_000)
    return b


def reid(b: Traces) -> Traces:
    """The batch with fresh trace ids (links follow), so it cannot meet another test's spans in Jaeger."""
    new: dict[bytes, bytes] = {}
    for rs in b.msg.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.trace_id = new.setdefault(s.trace_id, new_id(16))
                for lk in s.links:
                    lk.trace_id = new.setdefault(lk.trace_id, new_id(16))
    return b


async def _export(cfg: jaeger.Config, batch: Traces) -> jaeger.JaegerExporter:
    ctx = make_ctx("jaeger")
    exp = jaeger.create(Signal.TRACES, cfg, ctx)
    await exp.start()
    await exp.consume(batch)
    await exp.shutdown()
    return exp


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_spans_reach_jaeger_with_service_name_and_kind(real_jaeger: RealJaeger, protocol: str) -> None:
    ep = real_jaeger.otlp_grpc if protocol == "grpc" else real_jaeger.otlp_http
    original = bare_batch()
    before = original.to_bytes()
    want = sent_view(original)
    exp = await _export(jaeger.Config(endpoint=ep, protocol=protocol, headers={ECHO_HEADER: "t1"}), original)  # type: ignore[arg-type]
    got = await asyncio.to_thread(read_back, real_jaeger, want)
    # What the exporter adds: service names, a kind for the kindless span; the header reached Jaeger.
    (_work_key, work), (_x_key, x) = want.items()
    work["resource"]["service.name"] = "unknown_service:orders"
    work["kind"] = K.SPAN_KIND_INTERNAL
    x["resource"]["service.name"] = "unknown_service"
    for v in want.values():
        v["attributes"][ECHO_ATTRIBUTE] = "t1"
    assert got == want
    services = (await asyncio.to_thread(real_jaeger.get, "/api/v3/services"))["services"]
    assert {"unknown_service:orders", "unknown_service"} <= set(services)
    # the input batch is shared with other exporters: it must be left as it was
    assert original.to_bytes() == before
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_service_name_filled_total") == 2
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_span_kind_filled_total") == 1
    assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 2


async def test_complete_batches_arrive_exactly_as_sent(real_jaeger: RealJaeger) -> None:
    """Three traces across two services, parents, events, links and errors: Jaeger returns them unchanged."""
    b, _ = fixture_traces()
    b = reid(b)
    want = sent_view(b)
    exp = await _export(jaeger.Config(endpoint=real_jaeger.otlp_grpc, default_service_name="x"), b)
    got = await asyncio.to_thread(read_back, real_jaeger, want)
    assert got == want
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_service_name_filled_total") == 0
    assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 6


async def test_status_derived_from_grpc_and_http_codes(real_jaeger: RealJaeger) -> None:
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": "api"}))
    ss = rs.scope_spans.add()
    cases = [("srv-deadline", K.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 4}, "gRPC status DEADLINE_EXCEEDED"),
             ("srv-notfound", K.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 5}, None),  # not a server error
             ("cli-notfound", K.SPAN_KIND_CLIENT, {"rpc.grpc.status_code": 5}, "gRPC status NOT_FOUND"),
             ("srv-503", K.SPAN_KIND_SERVER, {"http.response.status_code": 503}, "HTTP 503"),
             ("srv-404", K.SPAN_KIND_SERVER, {"http.response.status_code": 404}, None),
             ("cli-404", K.SPAN_KIND_CLIENT, {"http.response.status_code": 404}, "HTTP 404")]
    tid = new_id(16)
    now = time.time_ns()
    for i, (name, kind, a, _) in enumerate(cases):
        sp = ss.spans.add(trace_id=tid, span_id=bytes([i + 1]) * 8, name=name, kind=kind,
                          start_time_unix_nano=now - 10**6, end_time_unix_nano=now)
        sp.attributes.extend(attrs(a))
    exp = await _export(jaeger.Config(endpoint=real_jaeger.otlp_grpc), b)
    found = await asyncio.to_thread(real_jaeger.wait_spans, tid.hex(), len(cases))
    got = {v["name"]: v["status"] for v in jaeger_view(found).values()}
    for name, _, _, want in cases:
        if want is None:
            assert got[name] == (trace_pb2.Status.STATUS_CODE_UNSET, ""), name
        else:
            assert got[name] == (trace_pb2.Status.STATUS_CODE_ERROR, want), name
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_status_derived_total") == 4


@pytest.fixture(scope="module")
def tls_jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealJaeger, Path]]:
    """A Jaeger whose OTLP receivers take TLS only, and the CA that signed its certificate."""
    certs = make_certs(tmp_path_factory.mktemp("jaeger-tls"))
    with RealJaeger(certs=certs) as j:
        yield j, certs.ca


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_tls_to_jaeger(tls_jaeger: tuple[RealJaeger, Path], protocol: str) -> None:
    """With the CA the spans arrive over TLS; without it the handshake fails and the spans are counted as failed."""
    j, ca = tls_jaeger
    ep = j.otlp_grpc if protocol == "grpc" else j.otlp_http
    ok = bare_batch()
    exp = await _export(jaeger.Config(endpoint=ep, protocol=protocol, tls={"ca_file": str(ca)}), ok)  # type: ignore[arg-type]
    got = await asyncio.to_thread(read_back, j, sent_view(ok))
    assert {v["name"] for v in got.values()} == {"work", "x"}
    assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 2
    bad = bare_batch()
    exp = await _export(jaeger.Config(endpoint=ep, protocol=protocol, timeout=2.0,  # type: ignore[arg-type]
                                      retry_on_failure={"enabled": False}), bad)
    assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 0
    assert metric_value(exp.ctx, "gotel_exporter_send_failed_items_total") == 2
    tid = bad.msg.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert await asyncio.to_thread(j.spans, tid) == []


async def test_retries_while_jaeger_refuses() -> None:
    """Fault: Jaeger answering RESOURCE_EXHAUSTED with a retry delay, then UNAVAILABLE, before taking the
    spans. The real Jaeger cannot be made to refuse on demand, so the Jaeger test server does."""
    server = await JaegerServer().start()
    try:
        b = bare_batch()
        server.grpc.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=0.2, times=1)
        cfg = jaeger.Config(endpoint=server.otlp_grpc, retry_on_failure={"initial_interval": 0.05})  # type: ignore[arg-type]
        exp = jaeger.create(Signal.TRACES, cfg, make_ctx("jaeger"))
        await exp.start()
        await exp.consume(b)
        assert await server.grpc.await_for(lambda r: r.span_count() == 2)
        server.grpc.fail_with(grpc.StatusCode.UNAVAILABLE, times=2)
        await exp.consume(bare_batch())
        assert await server.grpc.await_for(lambda r: r.span_count() == 4)
        await exp.shutdown()
        assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 4
        assert metric_value(exp.ctx, "gotel_exporter_send_failed_items_total") == 0
        assert len(server.grpc.received.traces) == 2  # each batch delivered once
    finally:
        await server.stop()


def test_real_jaeger_listens_only_on_its_loopback_ports() -> None:
    """The helper's Jaeger opens exactly the four ports it was given, all on 127.0.0.1 (Jaeger's
    defaults would add :8888 metrics and self-tracing), and leaves nothing behind."""
    with RealJaeger() as j:
        assert j.proc is not None
        pid, workdir = j.proc.pid, j._dir
        ss = subprocess.run(["ss", "-Hltnup"], capture_output=True, text=True, check=True).stdout
        mine = sorted(ln.split()[4] for ln in ss.splitlines() if f"pid={pid}," in ln)
        assert mine == sorted(f"127.0.0.1:{p}" for p in j.ports.values())
    assert j.proc is None and not os.path.exists(f"/proc/{pid}")  # ended and reaped
    assert not workdir.exists()


@pytest.mark.parametrize("endpoint,says", [
    ("127.0.0.1:14250", "legacy jaeger.api_v2 gRPC"),
    ("http://jaeger:14268/api/traces", "Thrift-over-HTTP"),
    ("jaeger:6831", "UDP Thrift compact"),
    ("udp://jaeger:6832", "UDP Thrift binary"),
    ("http://jaeger:16686", "query/UI port"),
    ("http://jaeger:9999/api/traces", "legacy Jaeger/Zipkin span path"),
])
def test_legacy_endpoints_get_a_clear_error(endpoint: str, says: str) -> None:
    with pytest.raises(ValueError) as ei:
        jaeger.Config(endpoint=endpoint)
    msg = str(ei.value)
    assert says in msg and "4317" in msg and "4318" in msg


def test_legacy_options_get_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"agent_host, agent_port: Jaeger.s legacy .*:4317"):
        jaeger.Config(agent_host="127.0.0.1", agent_port=6831)  # type: ignore[call-arg]


def test_defaults_are_jaegers_otlp_ports() -> None:
    assert jaeger.Config().endpoint == "http://127.0.0.1:4317"
    assert jaeger.Config(protocol="http").endpoint == "http://127.0.0.1:4318"
    assert jaeger.Config(protocol="http").otlp_config().url_for(Signal.TRACES) == "http://127.0.0.1:4318/v1/traces"  # type: ignore[union-attr]

