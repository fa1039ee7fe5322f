"""OTLP wire helpers: Retry-After, RetryInfo, OTLP/JSON ids."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest

from gotel.exporterhelper.http import retry_after as parse_retry_after
from gotel.pdata.batch import Signal
from gotel.pdata.otlp import (
    json_to_message,
    message_to_json,
    retry_info_delay,
    rpc_status,
    unix_path,
)
from tests.helpers import otlp_samples as samples


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0  # in the past: now
    for bad in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(bad) is None


def test_retry_info_round_trip() -> None:
    assert retry_info_delay(rpc_status(14, "busy", 2.5).SerializeToString()) == 2.5
    assert retry_info_delay(rpc_status(14, "busy").SerializeToString()) is None
    assert retry_info_delay(b"\xff garbage") is None
    assert retry_info_delay(None) is None


@pytest.mark.parametrize("signal", list(Signal), ids=str)
def test_otlp_json_uses_hex_ids_and_round_trips(signal: Signal) -> None:
    batch = samples.sample(signal)
    data = message_to_json(batch.peek())
    doc = json.loads(data)
    if signal == Signal.TRACES:
        span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        want = batch.peek().resource_spans[0].scope_spans[0].spans[0]
        assert span["traceId"] == want.trace_id.hex() and span["spanId"] == want.span_id.hex()
        assert span["parentSpanId"] == want.parent_span_id.hex()
        assert span["kind"] == 2  # enums as integers
    if signal == Signal.LOGS:
        rec = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
        assert rec["traceId"] == batch.peek().resource_logs[0].scope_logs[0].log_records[0].trace_id.hex()
    if signal == Signal.PROFILES:
        link = doc["dictionary"]["linkTable"][1]
        assert link["traceId"] == bytes(range(16)).hex()
        assert doc["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0]["profileId"] == bytes(range(16)).hex()
    assert json_to_message(data, batch.request_type()) == batch.peek()


def test_json_errors_are_value_errors() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest as Req

    with pytest.raises(ValueError, match="invalid JSON"):
        json_to_message(b"{", Req())
    with pytest.raises(ValueError, match="top level must be an object"):
        json_to_message(b"[]", Req())
    with pytest.raises(ValueError, match="invalid OTLP/JSON: non-hexadecimal"):
        json_to_message(b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"xyz"}]}]}]}', Req())
    # unknown fields are ignored, as the OTLP spec requires of receivers
    assert json_to_message(b'{"resourceSpans":[],"futureField":1}', Req()) == Req()


def test_unix_endpoints() -> None:
    assert unix_path("unix:///run/gotel/otlp.sock") == "/run/gotel/otlp.sock"
    assert unix_path("unix:rel.sock") == "rel.sock"
    assert unix_path("127.0.0.1:4317") is None
