"""A wrong-length id from one sender must not cost another sender's spans.

`gotel run` merges requests in its batch processor and exports them to a strict backend that, like
the collector, refuses a whole request holding one wrong-length id. One sender sends a span with a
2-byte traceId over HTTP (JSON) and one over gRPC (protobuf) while another sends good spans.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from tests.e2e.agent import Agent, free_port
from tests.helpers.otlp_samples import traces
from tests.helpers.otlp_sink import OTLPGrpcSink

GOOD_REQUESTS = 50
SPANS_PER_REQUEST = 100


def _post_json(port: int, body: dict[str, object]) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_id_is_refused_at_the_edge_and_good_spans_of_others_all_arrive(tmp_path: Path) -> None:
    sink = OTLPGrpcSink(strict_ids=True).start()
    grpc_port, http_port = free_port(), free_port()
    a = Agent(f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc_port}}}
      http: {{endpoint: 127.0.0.1:{http_port}}}
processors:
  batch: {{timeout: 1s, send_batch_size: 100000}}
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
    retry_on_failure: {{enabled: false}}
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp]
""", tmp_path)
    a.start()
    try:
        a.wait_ready()
        good_done = threading.Event()

        def good_sender() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                stub = tgrpc.TraceServiceStub(ch)
                for i in range(GOOD_REQUESTS):
                    stub.Export(traces(SPANS_PER_REQUEST, start=i * SPANS_PER_REQUEST, service="good").peek(),
                                timeout=10)
                    time.sleep(0.01)
            good_done.set()

        t = threading.Thread(target=good_sender)
        t.start()
        time.sleep(0.1)
        # Sender two, OTLP/JSON: one span with a 2-byte traceId beside a valid one.
        bad_json = {"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708", "name": "fine"},
            {"traceId": "abcd", "spanId": "0102030405060708", "name": "bad"},
        ]}]}]}
        status, body = _post_json(http_port, bad_json)
        # Sender three, protobuf over gRPC: a 5-byte parentSpanId.
        req = traces(3, service="bad").peek()
        req.resource_spans[0].scope_spans[0].spans[2].parent_span_id = b"12345"
        grpc_error: grpc.RpcError | None = None
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            try:
                tgrpc.TraceServiceStub(ch).Export(req, timeout=10)
            except grpc.RpcError as e:
                grpc_error = e
        t.join(60)
        assert good_done.is_set()
        want = GOOD_REQUESTS * SPANS_PER_REQUEST
        assert sink.wait_for(lambda r: r.span_count() >= want, 30), sink.received.span_count()
        time.sleep(1.5)  # one more batch timeout: nothing else may arrive
        services = {kv.value.string_value for r in sink.received.traces for rs in r.resource_spans
                    for kv in rs.resource.attributes if kv.key == "service.name"}
        assert sink.received.span_count() == want and services == {"good"}
        assert [x for x in sink.received.attempts if x[2] != "OK"] == []  # the backend never refused
        # ... because both bad requests were refused whole at gotel's edge, naming the field.
        assert status == 400, body
        assert "resource_spans[0].scope_spans[0].spans[1].trace_id is 2 bytes long, must be 16" in body
        assert grpc_error is not None, "a wrong-length parent_span_id was accepted"
        assert grpc_error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parent_span_id is 5 bytes long, must be 8" in (grpc_error.details() or "")
        assert a.metric("gotel_otlp_receiver_rejected_requests_total", reason="invalid_id") == 2
    finally:
        a.stop()
        sink.stop()
