"""health_check, pprof/zpages and the client authenticators (bearertokenauth, basicauth), run in a real
Service against real OTLP servers that check the header."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.extensions.health_check import HealthCheck
from gotel.service.server import StartupError
from gotel.service.service import Service
from gotel.telemetry.counters import Telemetry
from tests.helpers.otlp_http_sink import OTLPHttpSink
from tests.helpers.otlp_sink import OTLPGrpcSink

TOKEN = "tok-3f9a1c"  # a value that must never show in errors or logs


def config(body: str, env: dict[str, str] | None = None) -> Any:
    return load_config("c.yaml", text=textwrap.dedent(body), env=env or {})


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


SELF_FED = textwrap.dedent("""\
    service:
      extensions: [{ext}]
      telemetry:
        metrics: {{address: "", pipelines: [metrics/self], interval: 0.05}}
      pipelines:
        metrics/self: {{exporters: [{exp}]}}
    """)


async def test_bearer_token_file_reaches_http_and_grpc_backends_and_follows_rotation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    os.chmod(tok, 0o600)
    http = OTLPHttpSink(require_headers={"authorization": f"Bearer {TOKEN}"}).start()
    grpc_sink = OTLPGrpcSink(port=0, require_headers={"authorization": f"Bearer {TOKEN}"})
    try:
        grpc_sink.start()
        cfg = config(textwrap.dedent(f"""\
            extensions:
              bearertokenauth/file: {{filename: {tok}}}
            exporters:
              otlphttp:
                endpoint: {http.endpoint}
                retry_on_failure: {{enabled: false}}
                auth: {{authenticator: bearertokenauth/file}}
              otlp:
                endpoint: {grpc_sink.address}
                tls: {{insecure: true}}
                retry_on_failure: {{enabled: false}}
                auth: {{authenticator: bearertokenauth/file}}
            """) + SELF_FED.format(ext="bearertokenauth/file", exp="otlphttp, otlp"))
        svc = Service(cfg, Telemetry())
        await svc.start()
        try:
            assert await until(lambda: bool(http.received.metrics) and bool(grpc_sink.received.metrics))
            # rotate the token: the backends now want the new one, and get it without a restart
            new = TOKEN + "-rotated"
            http.require_headers = {"authorization": f"Bearer {new}"}
            grpc_sink.require_headers = {"authorization": f"Bearer {new}"}
            n_http, n_grpc = len(http.received.metrics), len(grpc_sink.received.metrics)
            tok.write_text(new + "\n")
            assert await until(lambda: len(http.received.metrics) > n_http + 1
                               and len(grpc_sink.received.metrics) > n_grpc + 1)
        finally:
            await svc.shutdown()
    finally:
        http.stop()
        grpc_sink.stop()
    assert "token file" in caplog.text and "changed" in caplog.text
    assert TOKEN not in caplog.text


async def test_basicauth_header_reaches_the_backend() -> None:
    want = "Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    http = OTLPHttpSink(require_headers={"authorization": want}).start()
    try:
        cfg = config(textwrap.dedent(f"""\
            extensions:
              basicauth/client: {{client_auth: {{username: alice, password: "${{env:PW}}"}}}}
            exporters:
              otlphttp:
                endpoint: {http.endpoint}
                auth: {{authenticator: basicauth/client}}
            """) + SELF_FED.format(ext="basicauth/client", exp="otlphttp"), env={"PW": TOKEN})
        svc = Service(cfg, Telemetry())
        await svc.start()
        try:
            assert await until(lambda: bool(http.received.metrics))
        finally:
            await svc.shutdown()
        assert not [a for a in http.received.attempts if a[2] == "401"]
    finally:
        http.stop()


@pytest.mark.parametrize(("extensions", "enabled", "authenticator", "error"), [
    ("{}", "[]", "bearertokenauth/nope", 'extension "bearertokenauth/nope" is not configured (configured: none)'),
    ("{file_storage: {directory: /tmp}}", "[file_storage]", "file_storage",
     'extension "file_storage" is a file_storage extension, not a client authenticator (bearertokenauth, basicauth)'),
    ("{bearertokenauth: {token: " + TOKEN + "}}", "[]", "bearertokenauth",
     'extension "bearertokenauth" is not listed in service::extensions, so it does not run'),
    ("{basicauth: {htpasswd: {file: /x}}}", "[basicauth]", "basicauth",
     'extension "basicauth" has no client_auth: it cannot authenticate a client'),
])
def test_a_wrong_authenticator_is_one_clear_error(extensions: str, enabled: str, authenticator: str,
                                                  error: str) -> None:
    text = f"""\
        extensions: {extensions}
        receivers: {{otlp: {{}}}}
        exporters:
          otlphttp:
            endpoint: http://127.0.0.1:4318
            auth: {{authenticator: {authenticator}}}
        service:
          extensions: {enabled}
          pipelines: {{traces: {{receivers: [otlp], exporters: [otlphttp]}}}}
        """
    with pytest.raises(ConfigError) as e:
        config(text)
    assert [str(i) for i in e.value.issues] == [f"c.yaml:6 exporters::otlphttp::auth::authenticator: {error}"]


def test_token_is_redacted_in_a_validation_error() -> None:
    with pytest.raises(ConfigError) as e:
        config(f"extensions: {{bearertokenauth: {{token: {TOKEN}, scheme: 5, bogus: 1}}}}\n"
               "receivers: {otlp: {}}\nexporters: {debug: {}}\n"
               "service: {extensions: [bearertokenauth], pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n")
    text = "\n".join(str(i) for i in e.value.issues)
    assert "bogus" in text and TOKEN not in text
    cfg = config(f"extensions: {{bearertokenauth: {{token: {TOKEN}}}}}\n"
                 "receivers: {otlp: {}}\nexporters: {debug: {}}\n"
                 "service: {extensions: [bearertokenauth], pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n")
    assert TOKEN not in repr(cfg.extensions) and TOKEN not in str(cfg.extensions)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_health_check_answers_like_the_collector_from_the_same_state_as_readyz() -> None:
    cfg = config("""\
        extensions:
          health_check: {endpoint: "127.0.0.1:0", path: /health/status}
          health_check/fixed: {endpoint: "127.0.0.1:0", response_body: {healthy: "I'm OK", unhealthy: "not yet"}}
        receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
        exporters: {debug: {}}
        service:
          extensions: [health_check, health_check/fixed]
          telemetry: {metrics: {address: "127.0.0.1:0"}}
          pipelines: {traces: {receivers: [otlp], exporters: [debug]}}
        """)
    assert cfg.extensions[next(iter(cfg.extensions))].config.endpoint == "127.0.0.1:0"
    svc = Service(cfg, Telemetry())
    # before the service is ready: 503, the collector's "not available" answer
    ectx = Context(ComponentID("health_check", "early"), Kind.EXTENSION, logging.getLogger("t"),
                   Telemetry().component("health_check/early", Kind.EXTENSION))
    ectx.extras["health"] = svc.readiness
    early = HealthCheck(cfg.extensions[next(iter(cfg.extensions))].config, ectx)
    await early.start()
    try:
        assert early.bound is not None
        status, body = await get(f"http://127.0.0.1:{early.bound[1]}/health/status")
        assert status == 503
        assert json.loads(body) == {"status": "Server not available", "upSince": "0001-01-01T00:00:00Z", "uptime": ""}
        await svc.start()
        try:
            hc, fixed = (ext for _, ext in svc.extensions)
            assert isinstance(hc, HealthCheck) and isinstance(fixed, HealthCheck)
            assert hc.bound is not None and fixed.bound is not None and svc.server and svc.server.bound
            status, body = await get(f"http://127.0.0.1:{hc.bound[1]}/health/status")
            assert status == 200
            doc = json.loads(body)
            assert doc["status"] == "Server available" and doc["uptime"].endswith("s")
            assert doc["upSince"].endswith("Z")
            assert (await get(f"http://127.0.0.1:{fixed.bound[1]}/")) == (200, "I'm OK")
            ready_status, ready_body = await get(f"http://127.0.0.1:{svc.server.bound[1]}/readyz")
            assert ready_status == 200 and json.loads(ready_body)["ready"] is True
            assert (await get(f"http://127.0.0.1:{early.bound[1]}/health/status"))[0] == 200
            # the same state: the service going down turns both answers to 503 at once
            svc.ready = False
            assert (await get(f"http://127.0.0.1:{fixed.bound[1]}/")) == (503, "not yet")
            assert (await get(f"http://127.0.0.1:{svc.server.bound[1]}/readyz"))[0] == 503
        finally:
            await svc.shutdown()
    finally:
        await early.shutdown()


def test_health_check_defaults_are_the_collectors_on_loopback() -> None:
    cfg = config("extensions: {health_check: }\nreceivers: {otlp: {}}\nexporters: {debug: {}}\n"
                 "service: {extensions: [health_check], pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n")
    hc = next(iter(cfg.extensions.values())).config
    assert (hc.endpoint, hc.path, hc.response_body, hc.check_collector_pipeline.enabled) == (
        "127.0.0.1:13133", "/", None, False)


def test_pprof_and_zpages_are_one_warning_each_with_the_reason() -> None:
    cfg = config("extensions: {pprof: {endpoint: '0.0.0.0:1777'}, zpages: }\nreceivers: {otlp: {}}\n"
                 "exporters: {debug: {}}\nservice: {extensions: [pprof, zpages], "
                 "pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n")
    warnings = {w.path: w.message for w in cfg.warnings}
    assert set(warnings) == {"extensions::pprof", "extensions::zpages"}
    assert "Python program" in warnings["extensions::pprof"] and "pyroscope-io" in warnings["extensions::pprof"]
    assert "/readyz" in warnings["extensions::zpages"]


@pytest.mark.parametrize("mode", ["push", "otlp"])
async def test_loki_takes_an_authenticator_extension(mode: str) -> None:
    """The Loki exporter (push API and OTLP mode) sends the extension's header, asked per request."""
    from gotel.exporters import loki
    from gotel.extensions.auth import BearerConfig, BearerTokenAuth
    from tests.helpers.loki_server import LokiServer
    from tests.helpers.otlp_samples import logs

    server = await LokiServer().start()
    aid = ComponentID("bearertokenauth", "loki")
    ext = BearerTokenAuth(BearerConfig(token=TOKEN, scheme="", header="X-Api-Key"),  # type: ignore[arg-type]
                          Context(aid, Kind.EXTENSION, logging.getLogger("a"), Telemetry().component("a", Kind.EXTENSION)))
    ctx = Context(ComponentID("loki"), Kind.EXPORTER, logging.getLogger("l"), Telemetry().component("loki", Kind.EXPORTER))
    ctx.extras["extensions"] = {aid: ext}
    try:
        path = "/loki/api/v1/push" if mode == "push" else "/otlp"
        cfg = loki.Config(endpoint=server.url + path, mode=mode,  # type: ignore[arg-type]
                          auth={"authenticator": "bearertokenauth/loki"})  # type: ignore[arg-type]
        exp = loki.create(loki.Signal.LOGS, cfg, ctx)
        await exp.start()
        await exp.consume(logs(3))
        await exp.shutdown()
    finally:
        await server.stop()
    assert server.requests and all(r["headers"].get("X-Api-Key") == TOKEN for r in server.requests)
    assert all("Authorization" not in r["headers"] for r in server.requests)


async def test_start_failures_are_one_line_without_the_secret(tmp_path: Path) -> None:
    """A taken health port and an unreadable token file stop the start with one clear line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(f"""\
            extensions:
              health_check: {{endpoint: "127.0.0.1:{port}"}}
              bearertokenauth: {{filename: {tmp_path}/absent, token: {TOKEN}}}
            receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
            exporters: {{debug: {{}}}}
            service:
              extensions: [health_check]
              telemetry: {{metrics: {{address: ""}}}}
              pipelines: {{traces: {{receivers: [otlp], exporters: [debug]}}}}
            """)
        svc = Service(cfg, Telemetry())
        with pytest.raises(StartupError) as e:
            await svc.start()
        await svc.shutdown()
        # the service's port check names the key before anything binds (one line, no traceback)
        assert str(e.value).startswith(f"extensions::health_check::endpoint: 127.0.0.1:{port} is already in use")
        assert "\n" not in str(e.value)
        assert "extensions::health_check::endpoint" in str(e.value)
    from gotel.extensions.auth import BearerConfig, BearerTokenAuth

    auth = BearerTokenAuth(BearerConfig(filename=str(tmp_path / "absent"), token=TOKEN),  # type: ignore[arg-type]
                           Context(ComponentID("bearertokenauth"), Kind.EXTENSION, logging.getLogger("a"),
                                   Telemetry().component("a", Kind.EXTENSION)))
    with pytest.raises(StartupError) as e2:
        await auth.start()
    assert "cannot read token file" in str(e2.value) and TOKEN not in str(e2.value)
