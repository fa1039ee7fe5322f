"""The pyroscope exporter against a test server speaking Pyroscope's push (Connect) and ingest APIs."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gotel.component.contract import Kind
from gotel.exporters.pyroscope import factory
from gotel.formats import pprof, profconv
from gotel.pdata.batch import Profiles, Signal
from tests.helpers.pprofkit import HEAP_TYPES, context, make_profile
from tests.helpers.pyroscope_server import PyroscopeServer

FAST_RETRY = {"initial_interval": 0.05, "max_interval": 0.1, "max_elapsed_time": 10}


def batch(ptype: str = "heap", delta: bool = True) -> tuple[Profiles, pprof.Profile]:
    p = make_profile(HEAP_TYPES, [
        (["main.allocRetained", "main.main"], [3, 3 << 20, 1, 1 << 20]),
        (["main.other", "main.main"], [1, 100, 0, 0]),
    ], time_nanos=1_700_000_000_000_000_000)
    p.duration_nanos = 15_000_000_000
    req = profconv.pprof_to_otlp(
        p, {"service.name": "checkout", "k8s.namespace.name": "shop", "process.pid": 42, "ignored.attr": "x"},
        profile_attributes={"gotel.pprof.type": ptype, "gotel.pprof.delta": delta})
    return Profiles(req), p


@pytest.fixture
async def server() -> AsyncIterator[PyroscopeServer]:
    s = await PyroscopeServer(require_tenant="team-a", require_auth="Bearer s3cret").start()
    yield s
    await s.stop()


async def export(server: PyroscopeServer, protocol: str, *batches: Profiles, **extra: object) -> object:
    cfg = factory.config.model_validate({
        "endpoint": server.url, "protocol": protocol, "tenant_id": "team-a", "bearer_token": "s3cret",
        "labels": {"env": "prod"}, "retry_on_failure": FAST_RETRY, **extra})
    ctx = context("pyroscope", Kind.EXPORTER)
    exp = factory.create(Signal.PROFILES, cfg, ctx)
    await exp.start()
    for b in batches:
        await exp.consume(b)
    await exp.shutdown(deadline=10)
    return ctx


def counter(ctx: object, name: str, **labels: str) -> float:
    reg = ctx.telemetry.t.registry  # type: ignore[attr-defined]
    v = reg.get_sample_value(name, {"component": "pyroscope", "kind": "exporter", **labels})
    return v or 0.0


async def test_push_labels_headers_and_totals(server: PyroscopeServer) -> None:
    b, p = batch()
    await export(server, "push", b)
    assert len(server.series) == 1
    s = server.series[0]
    assert s.api == "push"
    assert s.labels == {"__name__": "memory", "service_name": "checkout", "__delta__": "false",
                        "k8s_namespace_name": "shop", "process_pid": "42", "env": "prod"}
    assert s.headers["X-Scope-OrgID"] == "team-a"
    assert s.headers["Content-Type"] == "application/proto"
    assert pprof.totals(s.profiles[0]) == pprof.totals(p)
    assert [t for t, _u in pprof.sample_type_names(s.profiles[0])] == [t for t, _u in HEAP_TYPES]


async def test_goroutine_profile_not_marked_delta(server: PyroscopeServer) -> None:
    b, _p = batch("goroutine", delta=False)
    await export(server, "push", b)
    assert server.series[0].labels["__name__"] == "goroutine" and "__delta__" not in server.series[0].labels


async def test_ingest_name_window_and_pprof(server: PyroscopeServer) -> None:
    b, p = batch("cpu")
    await export(server, "ingest", b)
    s = server.series[0]
    assert s.api == "ingest"
    assert s.labels == {"service_name": "checkout", "env": "prod", "k8s_namespace_name": "shop", "process_pid": "42"}
    assert s.params["from"] == str(1_700_000_000) and s.params["until"] == str(1_700_000_015)
    assert s.params["format"] == "pprof" and s.params["spyName"] == "gotel"
    assert pprof.totals(s.profiles[0]) == pprof.totals(p)


@pytest.mark.parametrize("protocol", ["push", "ingest"])
async def test_429_and_503_are_retried(server: PyroscopeServer, protocol: str) -> None:
    server.fail_next(429, 2)
    server.fail_next(503, 1)
    b, _p = batch()
    ctx = await export(server, protocol, b)
    assert len(server.series) == 1
    assert server.requests == 4
    assert counter(ctx, "gotel_exporter_retries_total", signal="profiles") == 3
    assert counter(ctx, "gotel_exporter_sent_items_total", signal="profiles") == 4  # 4 OTLP profiles (sample types)


@pytest.mark.parametrize("protocol", ["push", "ingest"])
async def test_400_is_not_retried_and_counted(server: PyroscopeServer, protocol: str) -> None:
    server.fail_next(400, 1)
    b, _p = batch()
    ctx = await export(server, protocol, b)
    assert server.series == [] and server.requests == 1
    assert counter(ctx, "gotel_dropped_items_total", signal="profiles", reason="http_400") == 4


async def test_wrong_credentials_rejected_not_retried(server: PyroscopeServer) -> None:
    b, _p = batch()
    cfg_extra = {"bearer_token": "wrong"}
    ctx = await export(server, "push", b, **cfg_extra)
    assert server.series == [] and server.requests == 1
    assert counter(ctx, "gotel_dropped_items_total", signal="profiles", reason="unauthorized") == 4


async def test_basic_auth() -> None:
    token = base64.b64encode(b"u:p").decode()
    srv = await PyroscopeServer(require_auth=f"Basic {token}").start()
    try:
        cfg = factory.config.model_validate({"endpoint": srv.url, "basic_auth": {"username": "u", "password": "p"}})
        exp = factory.create(Signal.PROFILES, cfg, context("pyroscope", Kind.EXPORTER))
        await exp.start()
        await exp.consume(batch()[0])
        await exp.shutdown(deadline=5)
        assert len(srv.series) == 1
    finally:
        await srv.stop()


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        factory.config.model_validate({"endpoint": "localhost:4040"})
    with pytest.raises(ValueError, match="not valid in Pyroscope"):
        factory.config.model_validate({"endpoint": "http://x", "labels": {"bad-name": "v"}})
    with pytest.raises(ValueError, match="not both"):
        factory.config.model_validate({"endpoint": "http://x", "bearer_token": "t",
                                       "basic_auth": {"username": "u", "password": "p"}})


async def test_tls_with_private_ca(tmp_path: Path) -> None:
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    srv = await PyroscopeServer(ssl_context=sctx).start()
    try:
        assert srv.url.startswith("https://")
        ok = factory.config.model_validate({"endpoint": srv.url, "tls": {"ca_file": str(cert)}})
        exp = factory.create(Signal.PROFILES, ok, context("pyroscope", Kind.EXPORTER))
        await exp.start()
        await exp.consume(batch()[0])
        await exp.shutdown(deadline=5)
        assert len(srv.series) == 1
        # without the CA the certificate is not trusted: nothing is delivered
        bad = factory.config.model_validate({"endpoint": srv.url})  # not retried: a TLS error does not heal
        ctx = context("pyroscope", Kind.EXPORTER)
        exp = factory.create(Signal.PROFILES, bad, ctx)
        await exp.start()
        await exp.consume(batch()[0])
        await exp.shutdown(deadline=5)
        assert len(srv.series) == 1
        assert counter(ctx, "gotel_dropped_items_total", signal="profiles", reason="tls_certificate") == 4
    finally:
        await srv.stop()


async def test_malformed_profile_is_a_counted_drop_naming_the_field(
    server: PyroscopeServer, caplog: pytest.LogCaptureFixture
) -> None:
    good, p = batch()
    req = good.msg
    # A second resource whose profile points past the stack table, beside the good one.
    rp = req.resource_profiles.add()
    rp.resource.CopyFrom(req.resource_profiles[0].resource)
    op = rp.scope_profiles.add().profiles.add()
    op.CopyFrom(req.resource_profiles[0].scope_profiles[0].profiles[0])
    op.samples[0].stack_index = 4242
    ctx = await export(server, "push", good)
    assert len(server.series) == 1 and pprof.totals(server.series[0].profiles[0]) == pprof.totals(p)
    assert counter(ctx, "gotel_dropped_items_total", signal="profiles", reason="malformed") == 1
    assert "samples[0].stack_index 4242: stack_table has" in caplog.text
    assert "Traceback" not in caplog.text
