"""The otlp receiver, driven by clients built from the official stubs (gRPC) and by plain HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lgrpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2_grpc as pgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from gotel.component.contract import REQUEST_METADATA, Kind, PermanentError, RefusedError
from gotel.exporters import otlp as grpc_exp
from gotel.pdata.batch import Batch, Signal
from gotel.receivers import otlp as rotlp
from tests.helpers import otlp_samples as samples
from tests.helpers.certs import Certs
from tests.unit.otlp.conftest import Harness

STUBS: dict[Signal, Any] = {
    Signal.TRACES: tgrpc.TraceServiceStub,
    Signal.METRICS: mgrpc.MetricsServiceStub,
    Signal.LOGS: lgrpc.LogsServiceStub,
    Signal.PROFILES: pgrpc.ProfilesServiceStub,
}
PATHS = {Signal.TRACES: "/v1/traces", Signal.METRICS: "/v1/metrics", Signal.LOGS: "/v1/logs",
         Signal.PROFILES: "/v1development/profiles"}


class Memory:
    """The pipeline behind the receiver: records batches and the request metadata seen in consume()."""

    mutates = False

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.metadata: list[Mapping[str, str]] = []
        self.fail: list[Exception] = []  # raised (in order) before accepting

    async def consume(self, batch: Batch) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.batches.append(batch)
        self.metadata.append(dict(REQUEST_METADATA.get()))


class Running:
    def __init__(self) -> None:
        self.receivers: list[rotlp.OTLPReceiver] = []
        self.mem = {s: Memory() for s in Signal}

    async def __call__(self, harness: Harness, protocols: dict[str, Any]) -> rotlp.OTLPReceiver:
        cfg = rotlp.Config.model_validate({"protocols": protocols})
        r = rotlp.factory.create(cfg, self.mem, harness.ctx("otlp", Kind.RECEIVER))
        assert isinstance(r, rotlp.OTLPReceiver)
        await r.start()
        self.receivers.append(r)
        return r


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    for x in r.receivers:
        await x.shutdown()


def both(sockdir: Path | None = None) -> dict[str, Any]:
    if sockdir is not None:
        return {"grpc": {"endpoint": f"unix://{sockdir}/g.sock"}, "http": {"endpoint": f"unix://{sockdir}/h.sock"}}
    return {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}


def grpc_target(r: rotlp.OTLPReceiver, sockdir: Path | None) -> str:
    return f"unix:{sockdir}/g.sock" if sockdir else f"127.0.0.1:{r.grpc_port}"


def http_session(sockdir: Path | None) -> tuple[aiohttp.ClientSession, str]:
    if sockdir:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=f"{sockdir}/h.sock")), "http://localhost"
    return aiohttp.ClientSession(), ""


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("signal", list(Signal), ids=str)
async def test_grpc_all_signals(signal: Signal, unix: bool, harness: Harness, running: Running, sockdir: Path) -> None:
    sd = sockdir if unix else None
    r = await running(harness, both(sd))
    batch = samples.sample(signal)
    async with grpc.aio.insecure_channel(grpc_target(r, sd), compression=grpc.Compression.Gzip) as ch:
        await STUBS[signal](ch).Export(batch.peek(), metadata=(("gotel-receiver", "pprof/api"),), timeout=10)
    [got] = running.mem[signal].batches
    assert got.peek() == batch.peek()
    assert running.mem[signal].metadata[0]["gotel-receiver"] == "pprof/api"
    n = batch.item_count()
    assert harness.value("receiver_accepted_items_total", component="otlp", kind="receiver", signal=signal.value) == n


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("encoding", ["protobuf", "json", "json+gzip", "protobuf+gzip"])
@pytest.mark.parametrize("signal", list(Signal), ids=str)
async def test_http_all_signals(
    signal: Signal, encoding: str, unix: bool, harness: Harness, running: Running, sockdir: Path
) -> None:
    sd = sockdir if unix else None
    r = await running(harness, both(sd))
    batch = samples.sample(signal)
    headers = {"gotel-receiver": "go_ebpf"}
    if encoding.startswith("json"):
        d = json_format.MessageToDict(batch.peek(), use_integers_for_enums=True)
        _b64_to_hex(d)
        body = json.dumps(d).encode()
        headers["Content-Type"] = "application/json"
    else:
        body = batch.peek().SerializeToString()
        headers["Content-Type"] = "application/x-protobuf"
    if encoding.endswith("gzip"):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    session, base = http_session(sd)
    async with session:
        url = base + PATHS[signal] if sd else f"http://127.0.0.1:{r.http_port}{PATHS[signal]}"
        async with session.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == headers["Content-Type"]
    [got] = running.mem[signal].batches
    assert got.peek() == batch.peek()
    assert running.mem[signal].metadata[0]["gotel-receiver"] == "go_ebpf"


def _b64_to_hex(node: Any) -> None:
    import base64

    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("traceId", "spanId", "parentSpanId", "profileId") and isinstance(v, str):
                node[k] = base64.b64decode(v).hex()
            else:
                _b64_to_hex(v)
    elif isinstance(node, list):
        for x in node:
            _b64_to_hex(x)


async def test_unix_sockets_are_private(harness: Harness, running: Running, sockdir: Path) -> None:
    sub = sockdir / "run" / "gotel"
    await running(harness, {"grpc": {"endpoint": f"unix://{sub}/g.sock"}, "http": {"endpoint": f"unix://{sub}/h.sock"}})
    for name in ("g.sock", "h.sock"):
        st = os.stat(sub / name)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sub).st_mode) == 0o700
    await running.receivers[0].shutdown()
    assert not (sub / "g.sock").exists() and not (sub / "h.sock").exists()


async def test_grpc_malformed_is_invalid_argument_with_reason(
    harness: Harness, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    r = await running(harness, both())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        raw = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf traces request" in (ei.value.details() or "")
    assert running.mem[Signal.TRACES].batches == []
    assert "otlp: refused a traces request from ipv4:127.0.0.1" in caplog.text
    assert harness.value("otlp_receiver_rejected_requests_total", component="otlp", kind="receiver",
                         signal="traces", reason="malformed") == 1


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip-bomb"])
async def test_grpc_oversized_is_resource_exhausted(gz: bool, harness: Harness, running: Running) -> None:
    r = await running(harness, {"grpc": {"endpoint": "127.0.0.1:0", "max_recv_msg_size_mib": 1}})
    big = samples.traces(12_000)
    assert big.byte_size() > 1 << 20
    if gz:
        assert len(gzip.compress(big.to_bytes())) < 1 << 20  # small on the wire, too large inflated
    comp = grpc.Compression.Gzip if gz else grpc.Compression.NoCompression
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}", compression=comp) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await tgrpc.TraceServiceStub(ch).Export(big.peek(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (ei.value.details() or "")
        await tgrpc.TraceServiceStub(ch).Export(samples.traces(10).peek(), timeout=10)  # still serving
    assert sum(b.item_count() for b in running.mem[Signal.TRACES].batches) == 10


async def _post(r: rotlp.OTLPReceiver, path: str, body: bytes, **headers: str) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{r.http_port}{path}", data=body, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def _status(body: bytes, json_body: bool = False) -> status_pb2.Status:
    st = status_pb2.Status()
    if json_body:
        json_format.Parse(body, st)
    else:
        st.ParseFromString(body)
    return st


@pytest.mark.parametrize(
    ("ctype", "body", "needle"),
    [
        ("application/x-protobuf", b"\x0a\xff\xff\xff\xff\x0f garbage", "malformed protobuf traces request"),
        ("application/json", b"{not json", "malformed OTLP/JSON traces request: invalid JSON"),
        ("application/json", b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}', "invalid OTLP/JSON: non-hexadecimal"),
        ("application/json", b'{"resourceSpans": 5}', "malformed OTLP/JSON"),
    ],
    ids=["protobuf", "json-syntax", "json-hex-id", "json-shape"],
)
async def test_http_malformed_is_400_with_status(
    ctype: str, body: bytes, needle: str, harness: Harness, running: Running
) -> None:
    r = await running(harness, both())
    status, headers, data = await _post(r, "/v1/traces", body, **{"Content-Type": ctype})
    assert status == 400
    assert headers["Content-Type"].startswith(ctype)
    assert needle in _status(data, ctype == "application/json").message
    assert running.mem[Signal.TRACES].batches == []


async def test_http_unsupported_media_type_and_encoding(harness: Harness, running: Running) -> None:
    r = await running(harness, both())
    status, _, data = await _post(r, "/v1/traces", b"x", **{"Content-Type": "text/plain"})
    assert status == 415 and "unsupported Content-Type" in _status(data).message
    status, _, data = await _post(r, "/v1/traces", b"x", **{"Content-Type": "application/x-protobuf",
                                                           "Content-Encoding": "lz4"})
    assert status == 400 and "unsupported Content-Encoding 'lz4'" in _status(data).message
    status, _, data = await _post(r, "/v1/traces", b"not gzip", **{"Content-Type": "application/x-protobuf",
                                                                  "Content-Encoding": "gzip"})
    assert status == 400


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip-bomb"])
async def test_http_oversized_is_413(gz: bool, harness: Harness, running: Running) -> None:
    limit = 256 << 10
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0", "max_request_body_size": limit}})
    raw = samples.traces(4000).peek().SerializeToString()
    assert len(raw) > limit
    headers = {"Content-Type": "application/x-protobuf"}
    body = raw
    if gz:
        body = gzip.compress(raw)
        assert len(body) < limit  # small on the wire, too large once inflated
        headers["Content-Encoding"] = "gzip"
    status, _, data = await _post(r, "/v1/traces", body, **headers)
    assert status == 413
    assert "larger than max_request_body_size" in _status(data).message
    assert running.mem[Signal.TRACES].batches == []


async def test_refused_downstream_is_retryable(harness: Harness, running: Running) -> None:
    r = await running(harness, both())
    mem = running.mem[Signal.TRACES]
    mem.fail = [RefusedError("memory_limiter: above soft limit")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await tgrpc.TraceServiceStub(ch).Export(samples.traces(3).peek(), timeout=10)
    e = ei.value
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert "memory_limiter" in (e.details() or "")
    st = status_pb2.Status.FromString(dict(e.trailing_metadata())["grpc-status-details-bin"])
    ri = error_details_pb2.RetryInfo()
    assert st.details[0].Unpack(ri) and ri.retry_delay.seconds >= 1
    mem.fail = [RefusedError("memory_limiter: above soft limit")]
    status, headers, data = await _post(r, "/v1/traces", samples.traces(3).peek().SerializeToString(),
                                        **{"Content-Type": "application/x-protobuf"})
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert "memory_limiter" in _status(data).message
    assert harness.value("receiver_refused_items_total", component="otlp", kind="receiver", signal="traces") == 6


async def test_permanent_error_downstream_is_invalid_argument(harness: Harness, running: Running) -> None:
    r = await running(harness, both())
    mem = running.mem[Signal.LOGS]
    mem.fail = [PermanentError("cannot be accepted"), PermanentError("cannot be accepted")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await lgrpc.LogsServiceStub(ch).Export(samples.logs(2).peek(), timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, _, _ = await _post(r, "/v1/logs", samples.logs(2).peek().SerializeToString(),
                               **{"Content-Type": "application/x-protobuf"})
    assert status == 400


async def test_unconfigured_signal_is_unimplemented(harness: Harness) -> None:
    cfg = rotlp.Config.model_validate({"protocols": both()})
    mem = Memory()
    r = rotlp.factory.create(cfg, {Signal.TRACES: mem}, harness.ctx("otlp", Kind.RECEIVER))
    assert isinstance(r, rotlp.OTLPReceiver)
    await r.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await lgrpc.LogsServiceStub(ch).Export(samples.logs(1).peek(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        status, _, _ = await _post(r, "/v1/logs", b"", **{"Content-Type": "application/x-protobuf"})
        assert status == 404
    finally:
        await r.shutdown()


async def test_exporter_to_receiver_honours_refusal(harness: Harness, running: Running, sockdir: Path) -> None:
    """gotel's exporter and receiver together (the receiver-process path): a refusal delays, loses nothing."""
    await running(harness, both(sockdir))
    mem = running.mem[Signal.TRACES]
    mem.fail = [RefusedError("memory_limiter: above hard limit")]
    cfg = grpc_exp.Config(endpoint=f"unix://{sockdir}/g.sock", compression="none",
                          retry_on_failure={"initial_interval": 0.05, "max_interval": 0.2})
    exp = grpc_exp.factory.create(Signal.TRACES, cfg, harness.ctx("otlp", Kind.EXPORTER))
    await exp.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await exp.consume(samples.traces(25))
        for _ in range(200):
            if mem.batches:
                break
            await asyncio.sleep(0.05)
    finally:
        await exp.shutdown()
    assert sum(b.item_count() for b in mem.batches) == 25
    assert loop.time() - t0 >= 0.95  # waited for the receiver's RetryInfo (1 s), not the 50 ms backoff


async def test_tls_receiver(certs: Certs, harness: Harness, running: Running) -> None:
    tls = {"cert_file": str(certs.cert), "key_file": str(certs.key)}
    r = await running(harness, {"grpc": {"endpoint": "127.0.0.1:0", "tls": tls},
                                "http": {"endpoint": "127.0.0.1:0", "tls": tls}})
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{r.grpc_port}", creds) as ch:
        await tgrpc.TraceServiceStub(ch).Export(samples.traces(2).peek(), timeout=10)
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs.ca))
    async with aiohttp.ClientSession() as s, s.post(
        f"https://localhost:{r.http_port}/v1/traces", data=samples.traces(3).peek().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"}, ssl=ctx,
    ) as resp:
        assert resp.status == 200
    assert sum(b.item_count() for b in running.mem[Signal.TRACES].batches) == 5


async def test_cors(harness: Harness, running: Running) -> None:
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0",
                                         "cors": {"allowed_origins": ["https://*.example.com"], "max_age": 600}}})
    url = f"http://127.0.0.1:{r.http_port}/v1/traces"
    async with aiohttp.ClientSession() as s:
        async with s.options(url, headers={"Origin": "https://app.example.com",
                                           "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert resp.headers["Access-Control-Max-Age"] == "600"
        async with s.options(url, headers={"Origin": "https://evil.test"}) as resp:
            assert resp.status == 403
        async with s.post(url, data=b"", headers={"Origin": "https://app.example.com",
                                                  "Content-Type": "application/x-protobuf"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_port_in_use_is_a_clear_error(harness: Harness, running: Running) -> None:
    r = await running(harness, both())
    for proto, port in (("grpc", r.grpc_port), ("http", r.http_port)):
        cfg = rotlp.Config.model_validate({"protocols": {proto: {"endpoint": f"127.0.0.1:{port}"}}})
        other = rotlp.factory.create(cfg, running.mem, harness.ctx("otlp/2", Kind.RECEIVER))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await other.start()


async def test_unix_socket_in_use_is_not_stolen_but_a_stale_one_is_replaced(
    harness: Harness, running: Running, sockdir: Path
) -> None:
    await running(harness, both(sockdir))
    for proto, name in (("grpc", "g.sock"), ("http", "h.sock")):
        cfg = rotlp.Config.model_validate({"protocols": {proto: {"endpoint": f"unix://{sockdir}/{name}"}}})
        other = rotlp.factory.create(cfg, running.mem, harness.ctx("otlp/2", Kind.RECEIVER))
        with pytest.raises(OSError, match="is in use by another process"):
            await other.start()
    import socket

    stale = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays behind, nobody listens: as after a crash
    r = await running(harness, {"grpc": {"endpoint": f"unix://{stale}"}})
    async with grpc.aio.insecure_channel(f"unix:{stale}") as ch:
        await tgrpc.TraceServiceStub(ch).Export(samples.traces(1).peek(), timeout=10)
    assert r is running.receivers[-1] and running.mem[Signal.TRACES].batches
    (sockdir / "file").write_text("x")
    cfg = rotlp.Config.model_validate({"protocols": {"grpc": {"endpoint": f"unix://{sockdir}/file"}}})
    with pytest.raises(OSError, match="exists and is not a socket"):
        await rotlp.factory.create(cfg, running.mem, harness.ctx("otlp/3", Kind.RECEIVER)).start()


def test_config_shape_and_defaults() -> None:
    c = rotlp.Config.model_validate({"protocols": {"grpc": None, "http": None}})
    assert c.protocols.grpc is not None and c.protocols.grpc.endpoint == "127.0.0.1:4317"
    assert c.protocols.http is not None and c.protocols.http.endpoint == "127.0.0.1:4318"
    assert rotlp.Config().protocols.http is None
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min_version cannot be set for gRPC"):
        rotlp.Config.model_validate({"protocols": {"grpc": {"tls": {"cert_file": "c", "key_file": "k", "min_version": "1.3"}}}})
    with pytest.raises(ValidationError, match="at least one protocol"):
        rotlp.Config.model_validate({"protocols": {}})
    with pytest.raises(ValidationError, match="max_recv_msg_size"):
        rotlp.Config.model_validate({"protocols": {"grpc": {"max_recv_msg_size": 4}}})
    assert rotlp.split_host_port("[::1]:4317") == ("::1", 4317)
    assert rotlp.split_host_port(":4317") == (None, 4317)



@pytest.mark.parametrize("encoding", ["proto", "json"])
@pytest.mark.parametrize("signal", list(Signal), ids=str)
async def test_otlp_http_exporter_to_receiver(
    signal: Signal, encoding: str, harness: Harness, running: Running, sockdir: Path
) -> None:
    """gotel's own OTLP/HTTP exporter and receiver agree on every signal, protobuf and JSON, gzip."""
    from gotel.exporters import otlp_http as http_exp

    await running(harness, {"http": {"endpoint": f"unix://{sockdir}/h.sock"}})
    cfg = http_exp.Config(endpoint=f"unix://{sockdir}/h.sock", encoding=encoding, headers={"gotel-receiver": "x/y"})
    exp = http_exp.factory.create(signal, cfg, harness.ctx("otlp_http", Kind.EXPORTER))
    await exp.start()
    batch = samples.sample(signal)
    try:
        await exp.consume(batch)
        for _ in range(200):
            if running.mem[signal].batches:
                break
            await asyncio.sleep(0.02)
    finally:
        await exp.shutdown()
    [got] = running.mem[signal].batches
    assert got.peek() == batch.peek()
    assert running.mem[signal].metadata[0]["gotel-receiver"] == "x/y"
    assert running.mem[signal].metadata[0]["content-encoding"] == "gzip"


@pytest.mark.parametrize("proto", ["grpc", "http"])
async def test_mtls_receiver_requires_client_certificate(
    proto: str, certs: Certs, harness: Harness, running: Running
) -> None:
    """gotel's exporter presents its certificate to a receiver that demands one; without one nothing gets in."""
    from gotel.exporters import otlp_http as http_exp

    tls = {"cert_file": str(certs.cert), "key_file": str(certs.key), "client_ca_file": str(certs.ca)}
    r = await running(harness, {proto: {"endpoint": "127.0.0.1:0", "tls": tls}})

    def exporter(cid: str, client_cert: bool) -> Any:
        ctls: dict[str, Any] = {"ca_file": str(certs.ca)}
        if client_cert:
            ctls |= {"cert_file": str(certs.cert), "key_file": str(certs.key)}
        retry = {"initial_interval": 0.05, "max_interval": 0.2, "max_elapsed_time": 1}
        if proto == "grpc":
            return grpc_exp.factory.create(Signal.TRACES, grpc_exp.Config(
                endpoint=f"localhost:{r.grpc_port}", tls=ctls, retry_on_failure=retry), harness.ctx(cid, Kind.EXPORTER))
        return http_exp.factory.create(Signal.TRACES, http_exp.Config(
            endpoint=f"https://localhost:{r.http_port}", tls=ctls, retry_on_failure=retry), harness.ctx(cid, Kind.EXPORTER))

    anon = exporter("otlp/anon", False)
    good = exporter("otlp/mtls", True)
    await anon.start()
    await good.start()
    try:
        await anon.consume(samples.traces(2))
        await good.consume(samples.traces(3))
        for _ in range(100):
            dropped = sum(harness.telemetry.registry.get_sample_value(
                "gotel_dropped_items_total", {"component": "otlp/anon", "kind": "exporter", "signal": "traces",
                                              "reason": reason}) or 0 for reason in ("unavailable", "transport"))
            if dropped and running.mem[Signal.TRACES].batches:
                break
            await asyncio.sleep(0.05)
    finally:
        await anon.shutdown()
        await good.shutdown()
    assert sum(b.item_count() for b in running.mem[Signal.TRACES].batches) == 3
    assert dropped == 2


async def test_peer_address_is_the_connection_not_a_client_claim(harness: Harness, running: Running) -> None:
    """k8s_attributes associates by connection address: a client must not be able to claim another pod's IP."""
    r = await running(harness, both())
    batch = samples.sample(Signal.TRACES)
    spoof = (("gotel-peer", "ipv4:10.9.9.9:1234"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.grpc_port}") as ch:
        await STUBS[Signal.TRACES](ch).Export(batch.peek(), metadata=spoof, timeout=10)
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{r.http_port}/v1/traces"
        body = batch.peek().SerializeToString()
        async with s.post(url, data=body, headers={"Content-Type": "application/x-protobuf", "gotel-peer": "10.9.9.9"}) as resp:
            assert resp.status == 200
    grpc_md, http_md = running.mem[Signal.TRACES].metadata
    assert grpc_md["gotel-peer"].startswith("ipv4:127.0.0.1:")
    assert http_md["gotel-peer"] == "127.0.0.1"
