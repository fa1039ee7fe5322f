"""The `jaeger` exporter: OTLP to a Jaeger test server (gRPC and HTTP), what Jaeger needs filled in,
and clear errors for configs written for Jaeger's legacy ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from gotel.exporters import jaeger
from gotel.pdata import Signal, Traces, attrs, get_attr
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.jaeger_server import JaegerServer
from tests.helpers.tracedata import fixture_traces


@pytest.fixture
async def server() -> AsyncIterator[JaegerServer]:
    s = await JaegerServer().start()
    yield s
    await s.stop()


def bare_batch() -> Traces:
    """A resource without service.name, a span without kind, with an event and a link."""
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"process.executable.name": "orders", "process.pid": 12}))
    s = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="work",
                                       start_time_unix_nano=1, end_time_unix_nano=2)
    s.events.add(name="retry", time_unix_nano=1)
    s.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8)
    rs2 = b.msg.resource_spans.add()
    rs2.scope_spans.add().spans.add(trace_id=b"\x05" * 16, span_id=b"\x06" * 8, name="x",
                                    kind=trace_pb2.Span.SPAN_KIND_SERVER)
    return b


async def _export(cfg: jaeger.Config, batch: Traces) -> jaeger.JaegerExporter:
    ctx = make_ctx("jaeger")
    exp = jaeger.create(Signal.TRACES, cfg, ctx)
    await exp.start()
    await exp.consume(batch)
    await exp.shutdown()
    return exp


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_spans_reach_jaeger_with_service_name_and_kind(server: JaegerServer, protocol: str) -> None:
    ep = server.otlp_grpc if protocol == "grpc" else server.query_url
    original = bare_batch()
    before = original.to_bytes()
    exp = await _export(jaeger.Config(endpoint=ep, protocol=protocol, headers={"x-tenant": "t1"}), original)  # type: ignore[arg-type]
    assert await asyncio.to_thread(server.grpc.wait_for, lambda r: r.span_count() == 2)
    req = server.grpc.received.traces[0]
    svc = [get_attr(rs.resource.attributes, "service.name") for rs in req.resource_spans]
    assert svc == ["unknown_service:orders", "unknown_service"]
    work = req.resource_spans[0].scope_spans[0].spans[0]
    assert work.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert [e.name for e in work.events] == ["retry"] and work.links[0].span_id == b"\x04" * 8
    assert req.resource_spans[1].scope_spans[0].spans[0].kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert server.grpc.received.metadata[0]["x-tenant"] == "t1"
    # the input batch is shared with other exporters: it must be left as it was
    assert original.to_bytes() == before
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_service_name_filled_total") == 2
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_span_kind_filled_total") == 1
    assert metric_value(exp.ctx, "gotel_exporter_sent_items_total") == 2


async def test_complete_batches_are_sent_untouched(server: JaegerServer) -> None:
    b, _ = fixture_traces()
    exp = await _export(jaeger.Config(endpoint=server.otlp_grpc, default_service_name="x"), b)
    assert await asyncio.to_thread(server.grpc.wait_for, lambda r: r.span_count() == 6)
    assert server.grpc.received.traces[0].SerializeToString() == b.to_bytes()
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_service_name_filled_total") == 0


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


async def test_status_derived_from_grpc_and_http_codes(server: JaegerServer) -> None:
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": "api"}))
    ss = rs.scope_spans.add()
    K = trace_pb2.Span
    cases = [("srv-deadline", K.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 4}, "gRPC status DEADLINE_EXCEEDED"),
             ("srv-notfound", K.SPAN_KIND_SERVER, {"rpc.grpc.status_code": 5}, None),  # not a server error
             ("cli-notfound", K.SPAN_KIND_CLIENT, {"rpc.grpc.status_code": 5}, "gRPC status NOT_FOUND"),
             ("srv-503", K.SPAN_KIND_SERVER, {"http.response.status_code": 503}, "HTTP 503"),
             ("srv-404", K.SPAN_KIND_SERVER, {"http.response.status_code": 404}, None),
             ("cli-404", K.SPAN_KIND_CLIENT, {"http.response.status_code": 404}, "HTTP 404")]
    for i, (name, kind, a, _) in enumerate(cases):
        sp = ss.spans.add(trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, name=name, kind=kind)
        sp.attributes.extend(attrs(a))
    exp = await _export(jaeger.Config(endpoint=server.otlp_grpc), b)
    assert await asyncio.to_thread(server.grpc.wait_for, lambda r: r.span_count() == len(cases))
    got = {s.name: s.status for s in server.grpc.received.spans()}
    for name, _, _, want in cases:
        if want is None:
            assert got[name].code == trace_pb2.Status.STATUS_CODE_UNSET, name
        else:
            assert (got[name].code, got[name].message) == (trace_pb2.Status.STATUS_CODE_ERROR, want), name
    assert metric_value(exp.ctx, "gotel_jaeger_exporter_status_derived_total") == 4
