"""The `loki` exporter against a Loki push-API test server that validates as Loki does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.proto.logs.v1 import logs_pb2

from gotel.exporterhelper.queue import RetryConfig
from gotel.exporters import loki
from gotel.pdata.batch import Logs, attrs
from gotel.proto import logproto_pb2
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.loki_server import LokiServer

RES = {"service.name": "checkout", "service.namespace": "shop", "k8s.namespace.name": "prod",
       "k8s.pod.name": "checkout-7", "host.name": "node-1", "process.pid": 4242}
FAST = RetryConfig(initial_interval=0.05, max_interval=0.2, max_elapsed_time=20)


def logs(n: int, res: dict[str, Any] = RES, start: int | None = None, shuffle: bool = False,
         severity: int = logs_pb2.SEVERITY_NUMBER_INFO, line: str = "request {i} done") -> Logs:
    b = Logs()
    rl = b.msg.resource_logs.add()
    rl.resource.attributes.extend(attrs(res))
    sl = rl.scope_logs.add()
    sl.scope.name = "gotel.test"
    t0 = start or time.time_ns() - 10**9 * 60
    order = list(range(n))
    if shuffle:
        order = order[::2] + order[1::2]  # out of order on purpose
    for i in order:
        r = sl.log_records.add(time_unix_nano=t0 + i * 1000, severity_number=severity)  # type: ignore[arg-type]
        r.body.string_value = line.format(i=i)
        r.attributes.extend(attrs({"http.route": "/cart", "seq": i}))
        r.trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
        r.span_id = bytes.fromhex("00f067aa0ba902b7")
    return b


@pytest.fixture
async def server() -> AsyncIterator[LokiServer]:
    s = await LokiServer().start()
    yield s
    await s.stop()


async def run(cfg: loki.Config, *batches: Logs, ctx: Any = None) -> Any:
    ctx = ctx or make_ctx("loki")
    exp = loki.create(loki.Signal.LOGS, cfg, ctx)
    await exp.start()
    for b in batches:
        await exp.consume(b)
    await exp.shutdown()
    return ctx


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_entries_arrive_with_labels_metadata_and_order(server: LokiServer, encoding: str) -> None:
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", encoding=encoding, tenant_id="team-a",  # type: ignore[arg-type]
                      auth={"basic": {"username": "u", "password": "p"}})
    ctx = await run(cfg, logs(50, shuffle=True))
    got = server.entries()
    assert len(got) == 50
    labels = got[0][0]
    assert labels == {"service_name": "checkout", "service_namespace": "shop", "k8s_namespace_name": "prod",
                      "k8s_pod_name": "checkout-7", "level": "info"}
    md = got[0][1].metadata
    assert md["host_name"] == "node-1" and md["process_pid"] == "4242"
    assert md["http_route"] == "/cart" and md["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert md["span_id"] == "00f067aa0ba902b7"
    ts = [e.ts for _, e in got]
    assert ts == sorted(ts)
    assert [e.line for _, e in got] == [f"request {i} done" for i in range(50)]
    h = server.requests[0]["headers"]
    assert h["X-Scope-OrgID"] == "team-a"
    assert h["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert h["Content-Type"] == ("application/x-protobuf" if encoding == "protobuf" else "application/json")
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 50


async def test_bearer_auth_and_severity_streams(server: LokiServer) -> None:
    b = logs(3, severity=logs_pb2.SEVERITY_NUMBER_ERROR)
    b2 = logs(2, severity=logs_pb2.SEVERITY_NUMBER_WARN)
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", auth={"bearer_token": "t0k"})  # type: ignore[arg-type]
    await run(cfg, b, b2)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer t0k"
    levels = sorted(s.labels["level"] for s in server.streams.values())
    assert levels == ["error", "warn"]


def test_protobuf_body_matches_generated_schema() -> None:
    """The hand-encoded request parses with the generated logproto classes into the same content."""
    ctx = make_ctx("loki/wire")
    conv = loki.Converter(loki.Config(endpoint="http://127.0.0.1:1/loki/api/v1/push"), ctx)
    pb = conv.convert(logs(3))
    msg = logproto_pb2.PushRequest()
    msg.ParseFromString(pb.protobuf())
    assert len(msg.streams) == 1
    s = msg.streams[0]
    assert s.labels.startswith('{k8s_namespace_name="prod"')
    assert [e.line for e in s.entries] == ["request 0 done", "request 1 done", "request 2 done"]
    e = s.entries[1]
    assert e.timestamp.seconds * 10**9 + e.timestamp.nanos == pb.streams[0][2][1][0]
    assert {p.name: p.value for p in e.structuredMetadata}["seq"] == "1"
    # Re-serialising the parsed message gives the same bytes: the encoding is canonical.
    assert msg.SerializeToString() == pb.protobuf()


async def test_limits_enforced_before_sending(server: LokiServer) -> None:
    many = {f"team.label{i}": f"v{i}" for i in range(20)}
    res = {"service.name": "x" * 3000, **many, "bad-name.with/slash": "v"}
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", labels=["service.name", "bad-name.with/slash", *many])
    big = logs(2, res=res, line="y" * (300 * 1024))
    ctx = await run(cfg, big)
    got = server.entries()
    assert len(got) == 2, server.requests  # Loki accepted everything: nothing was sent that it rejects
    labels = got[0][0]
    assert len(labels) == 15
    assert labels["service_name"] == "x" * 2048
    assert labels["bad_name_with_slash"] == "v"
    assert len(got[0][1].line.encode()) == 256 * 1024
    assert metric_value(ctx, "gotel_loki_exporter_limited_total", what="label_value_truncated") == 1
    assert metric_value(ctx, "gotel_loki_exporter_limited_total", what="line_truncated") == 2
    # 20 + 2 candidates, 14 label slots (one kept for level): 8 moved to structured metadata
    assert metric_value(ctx, "gotel_loki_exporter_limited_total", what="label_moved_to_metadata") == 8
    assert "team_label19" in got[0][1].metadata


async def test_long_lines_dropped_when_truncation_is_off(server: LokiServer) -> None:
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push",
                      limits=loki.Limits(max_line_size=1000, max_line_size_truncate=False))
    b = logs(3, line="z" * 2000)
    b.msg.resource_logs[0].scope_logs[0].log_records[1].body.string_value = "short"
    ctx = await run(cfg, b)
    assert [e.line for _, e in server.entries()] == ["short"]
    assert metric_value(ctx, "gotel_dropped_items_total", reason="line_too_long") == 2


async def test_429_then_success_loses_nothing(server: LokiServer) -> None:
    server.fail_next(429, times=2, body="Ingestion rate limit exceeded", headers={"Retry-After": "0.3"})
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", retry_on_failure=FAST)
    t0 = time.monotonic()
    ctx = await run(cfg, logs(40))
    assert len(server.entries()) == 40
    assert [r["status"] for r in server.requests] == [429, 429, 204]
    assert time.monotonic() - t0 >= 0.6  # Retry-After honoured twice
    assert metric_value(ctx, "gotel_exporter_retries_total") == 2
    assert metric_value(ctx, "gotel_dropped_items_total") == 0


async def test_5xx_retried(server: LokiServer) -> None:
    server.fail_next(503, times=1, body="circuit breaker open")
    server.fail_next(500, times=1)
    ctx = await run(loki.Config(endpoint=server.url + "/loki/api/v1/push", retry_on_failure=FAST), logs(5))
    assert len(server.entries()) == 5
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 5


async def test_400_not_retried_and_counted_with_reason(server: LokiServer) -> None:
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", retry_on_failure=FAST)
    old = logs(4, start=time.time_ns() - 8 * 86400 * 10**9)  # older than reject_old_samples_max_age
    ctx = await run(cfg, old)
    assert [r["status"] for r in server.requests] == [400]
    assert metric_value(ctx, "gotel_dropped_items_total", reason="loki_greater_than_max_sample_age") == 4
    assert metric_value(ctx, "gotel_loki_exporter_rejected_entries_total", reason="greater_than_max_sample_age") == 4


async def test_413_splits_the_batch() -> None:
    server = await LokiServer(max_body=3000).start()
    try:
        b = logs(64)
        lines = [f"entry {i} " + hashlib.sha256(str(i).encode()).hexdigest() * 3 for i in range(64)]
        for r, line in zip(b.msg.resource_logs[0].scope_logs[0].log_records, lines, strict=True):
            r.body.string_value = line  # incompressible enough that the body exceeds the limit
        ctx = await run(loki.Config(endpoint=server.url + "/loki/api/v1/push", retry_on_failure=FAST), b)
        assert len(server.entries()) == 64
        assert [e.line for _, e in server.entries()] == lines
        statuses = [r["status"] for r in server.requests]
        assert statuses[0] == 413 and statuses.count(204) >= 2
        assert metric_value(ctx, "gotel_exporter_sent_items_total") == 64
        assert metric_value(ctx, "gotel_loki_exporter_splits_total") >= 1
    finally:
        await server.stop()


async def test_413_split_then_retry_does_not_duplicate(server: LokiServer) -> None:
    # 413 on the whole, then the first half is accepted, the second gets 429 once, then 204.
    server.fail_next(413, body="too large")
    server.fail_next(0)  # the first half: answered normally
    server.fail_next(429, body="slow down")
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", retry_on_failure=FAST)
    ctx = make_ctx("loki/split")
    exp = loki.create(loki.Signal.LOGS, cfg, ctx)
    await exp.start()
    await exp.consume(logs(10))
    await exp.shutdown()
    assert len(server.entries()) == 10
    assert [r["status"] for r in server.requests] == [413, 204, 429, 204]
    # no entry was sent twice (Loki would silently drop exact duplicates, so count what was accepted)
    assert sum(r.get("received", 0) for r in server.requests if r["status"] == 204) == 10
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 10


async def test_unreachable_loki_is_retried_then_dropped_and_counted() -> None:
    cfg = loki.Config(endpoint="http://127.0.0.1:9/loki/api/v1/push",
                      retry_on_failure=RetryConfig(initial_interval=0.05, max_interval=0.1, max_elapsed_time=0.5))
    ctx = await run(cfg, logs(7))
    assert metric_value(ctx, "gotel_dropped_items_total", reason="unreachable") == 7


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="level_label"):
        loki.Config(endpoint="http://x:3100/loki/api/v1/push", level_label="bad-name")
    with pytest.raises(ValueError, match="mode: otlp"):
        loki.Config(endpoint="http://x:3100/otlp")
    with pytest.raises(ValueError, match="http://"):
        loki.Config(endpoint="x:3100")
    with pytest.raises(ValueError, match="Extra inputs"):
        loki.Config(endpoint="http://x:3100/loki/api/v1/push", lables=["a"])  # type: ignore[call-arg]


async def test_secrets_do_not_reach_logs(server: LokiServer, caplog: pytest.LogCaptureFixture) -> None:
    server.fail_next(401, body="unauthorized")
    cfg = loki.Config(endpoint=server.url + "/loki/api/v1/push", auth={"bearer_token": "s3cr3t-token"})  # type: ignore[arg-type]
    await run(cfg, logs(1))
    assert "s3cr3t-token" not in caplog.text
    assert "s3cr3t-token" not in repr(cfg)
    await asyncio.sleep(0)


async def test_structured_metadata_fitted_to_limits(server: LokiServer) -> None:
    b = logs(2)
    rec = b.msg.resource_logs[0].scope_logs[0].log_records[0]
    rec.attributes.extend(attrs({f"extra.{i}": "v" for i in range(200)}))
    ctx = await run(loki.Config(endpoint=server.url + "/loki/api/v1/push"), b)
    got = server.entries()
    assert len(got) == 2
    assert len(got[0][1].metadata) == 128 and got[0][1].metadata["http_route"] == "/cart"
    # 2 record attributes + 200 extra + trace/span ids + 2 resource leftovers = 206; 128 kept
    assert metric_value(ctx, "gotel_loki_exporter_limited_total", what="structured_metadata_dropped") == 206 - 128
    assert len(got[1][1].metadata) == 6


async def test_otlp_mode_uses_lokis_native_endpoint(server: LokiServer) -> None:
    cfg = loki.Config(endpoint=server.url + "/otlp", mode="otlp", tenant_id="team-b",
                      auth={"bearer_token": "tok"})  # type: ignore[arg-type]
    ctx = await run(cfg, logs(5))
    assert len(server.otlp_requests) == 1
    recs = [r for rl in server.otlp_requests[0].resource_logs for sl in rl.scope_logs for r in sl.log_records]
    assert [r.body.string_value for r in recs] == [f"request {i} done" for i in range(5)]
    h = server.requests[0]["headers"]
    assert h["X-Scope-OrgID"] == "team-b" and h["Authorization"] == "Bearer tok"
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 5


async def test_tls_with_a_private_ca(tmp_path: Any) -> None:
    import ssl

    from gotel.exporterhelper.clientconfig import TLSClientConfig
    from tests.helpers.certs import make_certs

    certs = make_certs(tmp_path)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(str(certs.cert), str(certs.key))
    server = await LokiServer(ssl_context=sctx).start()
    try:
        ctx = await run(loki.Config(endpoint=server.url + "/loki/api/v1/push", tls=TLSClientConfig(ca_file=str(certs.ca))),
                        logs(3))
        assert len(server.entries()) == 3 and metric_value(ctx, "gotel_exporter_sent_items_total") == 3
        # without the CA the certificate is refused: retried, then dropped and counted, never sent in clear
        ctx = await run(loki.Config(endpoint=server.url + "/loki/api/v1/push",
                                    retry_on_failure=RetryConfig(initial_interval=0.05, max_elapsed_time=0.3)), logs(2))
        assert metric_value(ctx, "gotel_exporter_sent_items_total") == 0
        assert metric_value(ctx, "gotel_dropped_items_total", reason="tls_certificate") == 2
        assert len(server.entries()) == 3
    finally:
        await server.stop()


async def test_resources_with_equal_labels_share_one_sorted_stream(server: LokiServer) -> None:
    now = time.time_ns() - 60 * 10**9
    a = logs(3, start=now + 10)  # later entries first in the request
    b = logs(3, res={**RES, "host.name": "node-2"}, start=now)
    a.msg.resource_logs.extend(b.msg.resource_logs)
    await run(loki.Config(endpoint=server.url + "/loki/api/v1/push"), a)
    assert len(server.streams) == 1
    ts = [e.ts for _, e in server.entries()]
    assert len(ts) == 6 and ts == sorted(ts)
