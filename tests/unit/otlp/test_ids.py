"""Wrong-length ids are refused by the otlp receiver as the collector's pdata refuses them: the whole
request, 400 / INVALID_ARGUMENT, naming the field. Empty ids are valid (the zero id)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from gotel.pdata.batch import Signal, invalid_ids
from tests.helpers import otlp_samples as samples
from tests.unit.otlp.conftest import Harness
from tests.unit.otlp.test_receiver import Running, _post, _status

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    for x in r.receivers:
        await x.shutdown()


def test_every_signal_names_the_bad_field() -> None:
    t = samples.traces(3)
    assert invalid_ids(t) is None
    t.msg.resource_spans[0].scope_spans[0].spans[1].links.add(trace_id=b"\1" * 16, span_id=b"\2" * 7)
    assert invalid_ids(t) == ("resource_spans[0].scope_spans[0].spans[1].links[0].span_id is 7 bytes long, "
                              "must be 8 (or empty)")
    t = samples.traces(2)
    sp = t.msg.resource_spans[0].scope_spans[0].spans[0]
    sp.trace_id, sp.span_id, sp.parent_span_id = b"", b"", b""
    assert invalid_ids(t) is None  # empty ids are the zero ids, valid
    lg = samples.logs(2)
    lg.msg.resource_logs[0].scope_logs[0].log_records[1].trace_id = b"\1" * 17
    assert "log_records[1].trace_id is 17 bytes long, must be 16" in (invalid_ids(lg) or "")
    m = samples.metrics()
    found = False
    for metric in m.msg.resource_metrics[0].scope_metrics[0].metrics:
        if metric.WhichOneof("data") in ("sum", "gauge", "histogram"):
            dp = getattr(metric, metric.WhichOneof("data")).data_points[0]
            dp.exemplars.add(span_id=b"\1" * 3, as_int=1)
            found = True
            break
    assert found
    assert "exemplars[0].span_id is 3 bytes long, must be 8" in (invalid_ids(m) or "")
    p = samples.profiles()
    assert invalid_ids(p) is None
    p.msg.resource_profiles[0].scope_profiles[0].profiles[0].profile_id = b"\1" * 4
    assert "profiles[0].profile_id is 4 bytes long, must be 16" in (invalid_ids(p) or "")


async def test_http_protobuf_and_grpc_refuse_bad_ids(harness: Harness, running: Running) -> None:
    r = await running(harness, {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}})
    bad = samples.traces(4)
    bad.msg.resource_spans[0].scope_spans[0].spans[3].span_id = b"\1\2"
    status, _, data = await _post(r, "/v1/traces", bad.to_bytes(), **PB)
    assert status == 400
    assert "spans[3].span_id is 2 bytes long, must be 8" in _status(data).message
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await tgrpc.TraceServiceStub(ch).Export(bad.peek(), timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert running.mem[Signal.TRACES].batches == []  # nothing of a bad request goes on
    status, _, _ = await _post(r, "/v1/traces", samples.traces(4).to_bytes(), **PB)
    assert status == 200
    assert harness.value("otlp_receiver_rejected_requests_total", component="otlp", kind="receiver",
                         signal="traces", reason="invalid_id") == 2


async def test_json_hex_ids_of_the_wrong_length_are_400(harness: Harness, running: Running) -> None:
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0"}})
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"","spanId":"","name":"zero ids"}]}]}]}'
    status, _, _ = await _post(r, "/v1/traces", body, **{"Content-Type": "application/json"})
    assert status == 200
    body = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"0102"}]}]}]}'
    status, _, data = await _post(r, "/v1/logs", body, **{"Content-Type": "application/json"})
    assert status == 400
    assert "log_records[0].span_id is 2 bytes long, must be 8" in _status(data, True).message
