"""The otlp receiver's `protocols::grpc|http::auth`, as the collector's: a request without valid
credentials is UNAUTHENTICATED (gRPC) or 401 (HTTP) and reaches no exporter. Run in a real Service with
real clients (a grpc stub, an HTTP client, gotel's own otlp exporter with bearertokenauth); htpasswd
hashes are made by openssl, an independent implementation."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.extensions.htpasswd import HtpasswdError, parse, verify
from gotel.service.server import StartupError
from gotel.service.service import Service
from gotel.telemetry.counters import Telemetry
from tests.helpers.otlp_samples import traces
from tests.helpers.otlp_sink import OTLPGrpcSink
from tests.helpers.prometheus_server import free_port

TOKEN = "srv-tok-81c2"  # never in logs or errors


def openssl_hash(flag: str, password: str) -> str:
    return subprocess.run(["openssl", "passwd", flag, password], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("flag", ["-apr1", "-5", "-6", "-1"])
def test_htpasswd_hashes_made_by_openssl_verify(flag: str) -> None:
    stored = openssl_hash(flag, "s3cr3t pw")
    if flag == "-1":  # $1$ (plain MD5-crypt) is not in htpasswd's schemes: one clear error, not a dead account
        with pytest.raises(HtpasswdError, match=r"users line 1 \(user bob\): unsupported hash scheme '1'"):
            parse(f"bob:{stored}\n", "users")
        return
    users = parse(f"# comment\nbob:{stored}\n", "users")
    assert verify("s3cr3t pw", users["bob"]) and not verify("s3cr3t pX", users["bob"])


def test_htpasswd_sha_and_plain() -> None:
    sha = subprocess.run(["openssl", "dgst", "-sha1", "-binary"], input=b"pw", capture_output=True, check=True).stdout
    users = parse(f"a:{{SHA}}{base64.b64encode(sha).decode()}\nb:plain\n", "x")
    assert verify("pw", users["a"]) and not verify("pX", users["a"])
    assert verify("plain", users["b"]) and not verify("plainX", users["b"])


def _config(grpc_port: int, http_port: int, sink: str, htpasswd: Path) -> Any:
    return load_config("c.yaml", env={"TOK": TOKEN}, text=textwrap.dedent(f"""\
        extensions:
          bearertokenauth/server:
            token: ${{env:TOK}}
          basicauth/server:
            htpasswd:
              file: {htpasswd}
              inline: |
                carol:inline-pw
        receivers:
          otlp:
            protocols:
              grpc:
                endpoint: 127.0.0.1:{grpc_port}
                auth:
                  authenticator: bearertokenauth/server
              http:
                endpoint: 127.0.0.1:{http_port}
                auth:
                  authenticator: basicauth/server
        exporters:
          otlp:
            endpoint: {sink}
            tls: {{insecure: true}}
        service:
          extensions: [bearertokenauth/server, basicauth/server]
          telemetry: {{metrics: {{address: ""}}}}
          pipelines:
            traces: {{receivers: [otlp], exporters: [otlp]}}
        """))


async def test_grpc_and_http_reject_requests_without_valid_credentials(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{openssl_hash('-apr1', 'alice-pw')}\n")
    sink = OTLPGrpcSink().start()
    gport, hport = free_port(), free_port()
    svc = Service(_config(gport, hport, sink.address, htpasswd), Telemetry())
    await svc.start()
    body = traces(3).peek().SerializeToString()
    try:
        def grpc_export(md: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            with grpc.insecure_channel(f"127.0.0.1:{gport}") as ch:
                try:
                    tgrpc.TraceServiceStub(ch).Export(traces(3).peek(), metadata=md, timeout=5)
                except grpc.RpcError as e:
                    return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        got = [await asyncio.to_thread(grpc_export, md) for md in (
            (), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),),
            (("authorization", f"Bearer {TOKEN}"),))]
        assert got == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.OK]

        async def post(auth: str | None) -> int:
            headers = {"Content-Type": "application/x-protobuf", **({"Authorization": auth} if auth else {})}
            async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{hport}/v1/traces", data=body,
                                                            headers=headers) as r:
                return r.status

        def basic(user: str, pw: str) -> str:
            return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

        statuses = [await post(a) for a in (None, basic("alice", "nope"), basic("mallory", "alice-pw"),
                                            f"Bearer {TOKEN}", "Basic !!!", basic("alice", "alice-pw"),
                                            basic("carol", "inline-pw"))]
        assert statuses == [401, 401, 401, 401, 401, 200, 200]
        # only the 3 authenticated requests (1 gRPC, 2 HTTP) of 3 spans each reached the exporter
        assert await asyncio.to_thread(sink.wait_for, lambda r: r.span_count() >= 9, 10)
        await asyncio.sleep(0.3)
        assert sink.received.span_count() == 9
        rejected = {tuple(s.labels.values()): s.value for f in svc.tel.registry.collect() for s in f.samples
                    if f.name == "gotel_otlp_receiver_rejected_requests" and s.name.endswith("_total")}
        assert rejected[("otlp", "receiver", "traces", "unauthenticated")] == 8
    finally:
        await svc.shutdown()
        sink.stop()
    assert TOKEN not in caplog.text and "alice-pw" not in caplog.text and "inline-pw" not in caplog.text


async def test_gotels_own_exporter_authenticates_to_an_authenticating_receiver() -> None:
    """Two gotel services: the first's otlp exporter sends bearertokenauth/client's token to the
    second's receiver, which requires bearertokenauth/server's; the spans arrive."""
    sink = OTLPGrpcSink().start()
    port, entry = free_port(), free_port()
    recv = Service(load_config("r.yaml", env={}, text=textwrap.dedent(f"""\
        extensions: {{bearertokenauth: {{token: {TOKEN}}}}}
        receivers:
          otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{port}, auth: {{authenticator: bearertokenauth}}}}}}}}
        exporters:
          otlp: {{endpoint: {sink.address}, tls: {{insecure: true}}}}
        service:
          extensions: [bearertokenauth]
          telemetry: {{metrics: {{address: ""}}}}
          pipelines: {{traces: {{receivers: [otlp], exporters: [otlp]}}}}
        """)), Telemetry())
    send = Service(load_config("s.yaml", env={}, text=textwrap.dedent(f"""\
        extensions: {{bearertokenauth/client: {{token: {TOKEN}}}}}
        receivers:
          otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:{entry}}}}}}}
        exporters:
          otlp:
            endpoint: 127.0.0.1:{port}
            tls: {{insecure: true}}
            auth: {{authenticator: bearertokenauth/client}}
        service:
          extensions: [bearertokenauth/client]
          telemetry: {{metrics: {{address: ""}}}}
          pipelines: {{traces: {{receivers: [otlp], exporters: [otlp]}}}}
        """)), Telemetry())
    await recv.start()
    await send.start()
    try:
        def export() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{entry}") as ch:
                tgrpc.TraceServiceStub(ch).Export(traces(4).peek(), timeout=5)

        await asyncio.to_thread(export)
        assert await asyncio.to_thread(sink.wait_for, lambda r: r.span_count() >= 4, 10)
    finally:
        await send.shutdown()
        await recv.shutdown()
        sink.stop()


@pytest.mark.parametrize(("ext", "enabled", "error"), [
    ("{file_storage: {directory: /tmp}}", "[file_storage]",
     'extension "file_storage" is a file_storage extension, not a server authenticator (bearertokenauth, basicauth)'),
    ("{basicauth: {client_auth: {username: u, password: p}}}", "[basicauth]",
     'extension "basicauth" has no htpasswd: it cannot check a client\'s credentials'),
    ("{basicauth: {htpasswd: {inline: 'u:p'}}}", "[]",
     'extension "basicauth" is not listed in service::extensions, so it does not run'),
])
def test_a_wrong_server_authenticator_is_one_clear_error(ext: str, enabled: str, error: str) -> None:
    name = ext.split(":")[0].strip("{")
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", env={}, text=textwrap.dedent(f"""\
            extensions: {ext}
            receivers:
              otlp:
                protocols:
                  http:
                    auth: {{authenticator: {name}}}
            exporters: {{debug: {{}}}}
            service:
              extensions: {enabled}
              pipelines: {{traces: {{receivers: [otlp], exporters: [debug]}}}}
            """))
    issues = [str(i) for i in e.value.issues]
    assert issues == [f"c.yaml:6 receivers::otlp::protocols::http::auth::authenticator: {error}"], issues


async def test_an_unreadable_or_bad_htpasswd_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("dave:$2q$10$xyz\n")
    for path, want in ((tmp_path / "missing", "cannot read htpasswd file"),
                       (bad, "line 1 (user dave): unsupported hash scheme '2q'")):
        cfg = _config(free_port(), free_port(), "127.0.0.1:1", path)
        svc = Service(cfg, Telemetry())
        with pytest.raises(StartupError, match=want.replace("(", r"\(").replace(")", r"\)")):
            await svc.start()
        await svc.shutdown()
