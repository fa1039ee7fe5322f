"""The otlp (gRPC) and otlp_http exporters against real OTLP servers built from the official stubs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gotel.component.contract import Exporter, Kind
from gotel.exporters import otlp as grpc_exp
from gotel.exporters import otlp_http as http_exp
from gotel.pdata.batch import Signal
from tests.helpers import otlp_samples as samples
from tests.helpers.certs import Certs
from tests.helpers.otlp_http_sink import OTLPHttpSink
from tests.helpers.otlp_sink import OTLPGrpcSink, Received
from tests.unit.otlp.conftest import Harness

FAST_RETRY = {"initial_interval": 0.05, "max_interval": 0.3, "max_elapsed_time": 60, "randomization_factor": 0.1}
KINDS = {"traces": "traces", "metrics": "metrics", "logs": "logs", "profiles": "profiles"}


def got(received: Received, signal: Signal) -> list[Any]:
    return list(getattr(received, KINDS[signal.value]))


class Transport:
    """One way of reaching a backend: gRPC or HTTP, TCP or unix socket."""

    def __init__(self, proto: str, unix: bool, sockdir: Path) -> None:
        self.proto, self.unix, self.sockdir = proto, unix, sockdir

    def sink(self, **kw: Any) -> Any:
        path = str(self.sockdir / f"{self.proto}.sock") if self.unix else None
        if self.proto == "grpc":
            return OTLPGrpcSink(unix=path, **kw)
        return OTLPHttpSink(unix=path, **kw)

    def endpoint(self, sink: Any) -> str:
        return sink.address if self.proto == "grpc" else sink.endpoint

    def config(self, endpoint: str, **kw: Any) -> Any:
        kw.setdefault("retry_on_failure", FAST_RETRY)
        if self.proto == "grpc":
            kw.setdefault("tls", {"insecure": True})
            return grpc_exp.Config(endpoint=endpoint, **kw)
        return http_exp.Config(endpoint=endpoint, **kw)

    def factory(self) -> Any:
        return grpc_exp.factory if self.proto == "grpc" else http_exp.factory


TRANSPORTS = [("grpc", False), ("grpc", True), ("http", False), ("http", True)]


@pytest.fixture(params=TRANSPORTS, ids=lambda p: f"{p[0]}-{'unix' if p[1] else 'tcp'}")
def transport(request: pytest.FixtureRequest, sockdir: Path) -> Transport:
    return Transport(request.param[0], request.param[1], sockdir)


class Started:
    def __init__(self) -> None:
        self.exporters: list[Exporter] = []

    async def __call__(self, harness: Harness, factory: Any, signal: Signal, cfg: Any, cid: str = "otlp") -> Exporter:
        e = factory.create(signal, cfg, harness.ctx(cid, Kind.EXPORTER))
        await e.start()
        self.exporters.append(e)
        return e


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    s = Started()
    yield s
    for e in s.exporters:
        await e.shutdown(deadline=2.0)  # type: ignore[call-arg]


@pytest.fixture
def sinks() -> Iterator[list[Any]]:
    """Sinks to stop after the test, also when it fails."""
    out: list[Any] = []
    yield out
    for s in out:
        s.stop()


@pytest.mark.parametrize("signal", list(Signal), ids=str)
async def test_exactly_what_was_exported_arrives(
    transport: Transport, signal: Signal, harness: Harness, started: Started, sinks: list[Any]
) -> None:
    sink = transport.sink().start()
    sinks.append(sink)
    exp = await started(harness, transport.factory(), signal, transport.config(transport.endpoint(sink)))
    batch = samples.sample(signal)
    expected = batch.peek().SerializeToString()
    await exp.consume(batch)
    assert await sink.await_for(lambda r: len(got(r, signal)) == 1)
    [req] = got(sink.received, signal)
    assert req.SerializeToString() == expected
    n = batch.item_count()

    def sent() -> float:
        return harness.value("exporter_sent_items_total", component="otlp", kind="exporter", signal=signal.value)

    # the sink holds the request before its reply reaches the exporter, which counts on the reply
    end = time.monotonic() + 10
    while sent() != n and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert sent() == n


@pytest.mark.parametrize("signal", list(Signal), ids=str)
async def test_http_json_encoding_with_hex_ids(signal: Signal, harness: Harness, started: Started, sinks: list[Any]) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    cfg = http_exp.Config(endpoint=sink.endpoint, encoding="json", retry_on_failure=FAST_RETRY)
    exp = await started(harness, http_exp.factory, signal, cfg)
    batch = samples.sample(signal)
    await exp.consume(batch)
    assert await sink.await_for(lambda r: len(got(r, signal)) == 1)
    assert sink.requests[0].content_type == "application/json"
    assert got(sink.received, signal)[0] == batch.peek()


async def test_http_per_signal_endpoint_overrides_base(harness: Harness, started: Started, sinks: list[Any]) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    cfg = http_exp.Config(endpoint="http://127.0.0.1:9/nowhere", logs_endpoint=f"{sink.endpoint}/v1/logs")
    exp = await started(harness, http_exp.factory, Signal.LOGS, cfg)
    await exp.consume(samples.logs(2))
    assert await sink.await_for(lambda r: len(r.log_records()) == 2)
    assert cfg.url_for(Signal.TRACES) == "http://127.0.0.1:9/nowhere/v1/traces"


@pytest.mark.parametrize("n", [500, 5000])  # 5000 spans: compressed on a worker thread
async def test_gzip_on_the_wire(n: int, harness: Harness, started: Started, sinks: list[Any]) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    exp = await started(harness, http_exp.factory, Signal.TRACES, http_exp.Config(endpoint=sink.endpoint))
    batch = samples.traces(n)
    assert (batch.byte_size() > http_exp.OFFLOAD_BYTES) == (n == 5000)
    await exp.consume(batch)
    assert await sink.await_for(lambda r: r.span_count() == n)
    assert sink.received.traces[0] == batch.peek()
    info = sink.requests[0]
    assert info.content_encoding == "gzip"
    assert 0 < info.wire_size < info.body_size / 3  # repetitive spans compress well


class CountingProxy:
    """A TCP proxy counting the bytes a client sends: shows gRPC compression on the wire."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes_up = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.bytes_up += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(r, uw, True), pipe(ur, w, False))

    async def stop(self) -> None:
        if self.server:
            self.server.close()


@pytest.mark.parametrize("compression", ["gzip", "none"])
async def test_grpc_gzip_on_the_wire(compression: str, harness: Harness, started: Started, sinks: list[Any]) -> None:
    sink = OTLPGrpcSink().start()
    sinks.append(sink)
    proxy = CountingProxy(sink.port)
    await proxy.start()
    try:
        cfg = grpc_exp.Config(endpoint=f"127.0.0.1:{proxy.port}", tls={"insecure": True}, compression=compression)
        exp = await started(harness, grpc_exp.factory, Signal.TRACES, cfg)
        batch = samples.traces(2000)
        size = batch.byte_size()
        await exp.consume(batch)
        assert await sink.await_for(lambda r: r.span_count() == 2000)
        if compression == "gzip":
            assert proxy.bytes_up < size / 3
        else:
            assert proxy.bytes_up > size
    finally:
        await proxy.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("proto", "unix"), [("grpc", True), ("http", True), ("grpc", False)],
                         ids=["grpc-unix", "http-unix", "grpc-tcp"])
async def test_backend_down_then_up_delivers_all_10000(
    proto: str, unix: bool, harness: Harness, started: Started, sinks: list[Any], sockdir: Path
) -> None:
    t = Transport(proto, unix, sockdir)
    port = 0 if unix else free_port()
    endpoint = f"unix://{sockdir / f'{proto}.sock'}" if unix else f"127.0.0.1:{port}"
    exp = await started(harness, t.factory(), Signal.TRACES, t.config(endpoint))
    for i in range(100):
        await exp.consume(samples.traces(100, start=i * 100))
    await asyncio.sleep(1.0)  # the exporter meets a dead backend and backs off
    retries = harness.value("exporter_retries_total", component="otlp", kind="exporter", signal="traces")
    assert retries > 0
    sink = t.sink(port=port).start() if not unix else t.sink().start()
    sinks.append(sink)
    assert await sink.await_for(lambda r: r.span_count() >= 10_000, timeout=60)
    await asyncio.sleep(0.3)
    ids = [s.span_id for s in sink.received.spans()]
    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    assert harness.value("exporter_sent_items_total", component="otlp", kind="exporter", signal="traces") == 10_000
    assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="queue_full") == 0


@pytest.mark.parametrize("proto", ["grpc", "http"])
async def test_queue_too_small_counts_and_logs_the_excess_and_keeps_working(
    proto: str, harness: Harness, started: Started, sinks: list[Any], sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    t = Transport(proto, True, sockdir)
    endpoint = f"unix://{sockdir / f'{proto}.sock'}"
    batches = [samples.traces(100, start=i * 100) for i in range(100)]
    # room for the first 20 batches (those in flight count against the queue too, as in the collector)
    cap = sum(b.byte_size() for b in batches[:20]) + 10
    cfg = t.config(endpoint, sending_queue={"queue_size": cap, "num_consumers": 4})
    exp = await started(harness, t.factory(), Signal.TRACES, cfg)
    for b in batches:
        await exp.consume(b)
    dropped = harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="queue_full")
    assert dropped == 8_000
    assert "queue_full" in caplog.text and "sending queue is full" in caplog.text
    sink = t.sink().start()
    sinks.append(sink)
    assert await sink.await_for(lambda r: r.span_count() >= 2_000, timeout=60)
    await exp.consume(samples.traces(7, start=50_000))  # still working
    assert await sink.await_for(lambda r: r.span_count() >= 2_007, timeout=30)
    await asyncio.sleep(0.3)
    assert sink.received.span_count() == 2_007


async def test_block_on_overflow_applies_back_pressure_and_loses_nothing(
    harness: Harness, started: Started, sinks: list[Any], sockdir: Path
) -> None:
    t = Transport("grpc", True, sockdir)
    batches = [samples.traces(100, start=i * 100) for i in range(10)]
    cap = sum(b.byte_size() for b in batches[:2]) + 10
    cfg = t.config(f"unix://{sockdir / 'grpc.sock'}",
                   sending_queue={"queue_size": cap, "num_consumers": 2, "block_on_overflow": True})
    exp = await started(harness, t.factory(), Signal.TRACES, cfg)
    tasks = [asyncio.create_task(exp.consume(b)) for b in batches]
    await asyncio.sleep(0.5)
    assert sum(x.done() for x in tasks) == 2  # the rest wait for room: back-pressure, not drops
    sink = t.sink().start()
    sinks.append(sink)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert await sink.await_for(lambda r: r.span_count() >= 1_000, timeout=30)
    await asyncio.sleep(0.2)
    assert sink.received.span_count() == 1_000
    assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="queue_full") == 0


async def test_shutdown_counts_what_it_could_not_deliver(harness: Harness, sockdir: Path) -> None:
    cfg = grpc_exp.Config(endpoint=f"unix://{sockdir}/nobody.sock", retry_on_failure={"initial_interval": 5})
    exp = grpc_exp.factory.create(Signal.TRACES, cfg, harness.ctx("otlp", Kind.EXPORTER))
    await exp.start()
    for i in range(6):  # 4 in flight (waiting to retry), 2 queued
        await exp.consume(samples.traces(10, start=i * 10))
    await asyncio.sleep(0.5)
    await exp.shutdown(deadline=0.5)  # type: ignore[call-arg]
    assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="shutdown") == 60


async def test_http_429_retry_after_is_honoured(harness: Harness, started: Started, sinks: list[Any]) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    sink.respond_with(429, retry_after="2", times=1)
    exp = await started(harness, http_exp.factory, Signal.TRACES, http_exp.Config(endpoint=sink.endpoint, retry_on_failure=FAST_RETRY))
    await exp.consume(samples.traces(10))
    assert await sink.await_for(lambda r: r.span_count() == 10, timeout=15)
    (t0, _, s0), (t1, _, s1) = sink.received.attempts
    assert (s0, s1) == ("429", "200")
    assert t1 - t0 >= 1.9  # not the 50 ms backoff: the server's Retry-After
    assert harness.value("exporter_retries_total", component="otlp", kind="exporter", signal="traces") == 1


async def test_http_503_with_http_date_retry_after(harness: Harness, started: Started, sinks: list[Any]) -> None:
    from email.utils import formatdate

    sink = OTLPHttpSink().start()
    sinks.append(sink)
    sink.respond_with(503, retry_after=formatdate(time.time() + 3, usegmt=True), times=1)
    exp = await started(harness, http_exp.factory, Signal.LOGS, http_exp.Config(endpoint=sink.endpoint, retry_on_failure=FAST_RETRY))
    await exp.consume(samples.logs(3))
    assert await sink.await_for(lambda r: len(r.log_records()) == 3, timeout=15)
    (t0, _, _), (t1, _, _) = sink.received.attempts
    assert t1 - t0 >= 1.0  # an HTTP-date has one-second resolution


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_http_retryable_statuses_without_retry_after_use_backoff(
    status: int, harness: Harness, started: Started, sinks: list[Any]
) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    sink.respond_with(status, times=2)
    exp = await started(harness, http_exp.factory, Signal.METRICS, http_exp.Config(endpoint=sink.endpoint, retry_on_failure=FAST_RETRY))
    batch = samples.metrics(2)
    await exp.consume(batch)
    assert await sink.await_for(lambda r: len(r.metrics) == 1, timeout=15)
    assert [a[2] for a in sink.received.attempts] == [str(status), str(status), "200"]
    assert sink.received.metrics[0] == batch.peek()
    assert harness.value("exporter_retries_total", component="otlp", kind="exporter", signal="metrics") == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413])
async def test_http_client_errors_are_not_retried_and_counted(
    status: int, harness: Harness, started: Started, sinks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    sink = OTLPHttpSink().start()
    sinks.append(sink)
    sink.respond_with(status)
    exp = await started(harness, http_exp.factory, Signal.TRACES, http_exp.Config(endpoint=sink.endpoint, retry_on_failure=FAST_RETRY))
    await exp.consume(samples.traces(10))
    reason = f"http_{status}"
    for _ in range(100):
        if harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason=reason):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # would a retry happen? (backoff is 50 ms)
    assert len(sink.received.attempts) == 1
    assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason=reason) == 10
    assert f"HTTP {status}: told to fail" in caplog.text


@pytest.mark.parametrize(
    ("code", "retry_after", "retried"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.UNAVAILABLE, 1.5, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 1.5, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        (grpc.StatusCode.PERMISSION_DENIED, None, False),
        (grpc.StatusCode.ABORTED, None, True),
        (grpc.StatusCode.DATA_LOSS, None, True),
    ],
    ids=lambda v: str(getattr(v, "name", v)),
)
async def test_grpc_status_classification(
    code: grpc.StatusCode, retry_after: float | None, retried: bool, harness: Harness, started: Started, sinks: list[Any]
) -> None:
    sink = OTLPGrpcSink().start()
    sinks.append(sink)
    sink.fail_with(code, retry_after=retry_after, times=1)
    exp = await started(harness, grpc_exp.factory, Signal.TRACES, grpc_exp.Config(
        endpoint=sink.address, tls={"insecure": True}, retry_on_failure=FAST_RETRY))
    await exp.consume(samples.traces(4))
    if retried:
        assert await sink.await_for(lambda r: r.span_count() == 4, timeout=15)
        (t0, _, s0), (t1, _, s1) = sink.received.attempts
        assert (s0, s1) == (code.name, "OK")
        if retry_after:
            assert t1 - t0 >= retry_after - 0.05  # RetryInfo, not the 50 ms backoff
    else:
        reason = code.name.lower()
        for _ in range(100):
            if harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason=reason):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert len(sink.received.attempts) == 1
        assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason=reason) == 4


@pytest.mark.parametrize("proto", ["grpc", "http"])
async def test_partial_success_is_counted_and_logged(
    proto: str, harness: Harness, started: Started, sinks: list[Any], sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = Transport(proto, False, sockdir)
    sink = t.sink().start()
    sinks.append(sink)
    sink.partial(3, "3 spans had no name")
    exp = await started(harness, t.factory(), Signal.TRACES, t.config(t.endpoint(sink)))
    await exp.consume(samples.traces(10))
    assert await sink.await_for(lambda r: r.span_count() == 10)
    for _ in range(50):
        if harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="partial_success"):
            break
        await asyncio.sleep(0.05)
    assert harness.value("dropped_items_total", component="otlp", kind="exporter", signal="traces", reason="partial_success") == 3
    assert "3 of 10 traces rejected: 3 spans had no name" in caplog.text


SECRET = "Bearer s3cr3t-t0ken-value"


@pytest.mark.parametrize("proto", ["grpc", "http"])
async def test_tls_and_auth_header_and_no_secret_in_logs(
    proto: str, certs: Certs, harness: Harness, started: Started, sinks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    import ssl

    caplog.set_level(logging.DEBUG)
    need = {"authorization": SECRET}
    if proto == "grpc":
        sink: Any = OTLPGrpcSink(tls=certs.cert_key(), require_headers=need).start()
        endpoint = f"localhost:{sink.port}"
        mk: Callable[..., Any] = grpc_exp.Config
        factory: Any = grpc_exp.factory
    else:
        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(str(certs.cert), str(certs.key))
        sink = OTLPHttpSink(ssl_context=sctx, require_headers=need).start()
        endpoint = f"https://localhost:{sink.port}"
        mk, factory = http_exp.Config, http_exp.factory
    sinks.append(sink)
    good = await started(harness, factory, Signal.TRACES, mk(
        endpoint=endpoint, tls={"ca_file": str(certs.ca)}, headers={"Authorization": SECRET},
        retry_on_failure=FAST_RETRY), cid="otlp/good")
    await good.consume(samples.traces(3))
    assert await sink.await_for(lambda r: r.span_count() == 3)
    # no header: the server refuses; the exporter drops with the reason and does not retry
    bad = await started(harness, factory, Signal.TRACES, mk(
        endpoint=endpoint, tls={"ca_file": str(certs.ca)}, retry_on_failure=FAST_RETRY), cid="otlp/noauth")
    await bad.consume(samples.traces(2))
    reason = "unauthenticated" if proto == "grpc" else "http_401"
    for _ in range(100):
        if harness.value("dropped_items_total", component="otlp/noauth", kind="exporter", signal="traces", reason=reason):
            break
        await asyncio.sleep(0.05)
    assert harness.value("dropped_items_total", component="otlp/noauth", kind="exporter", signal="traces", reason=reason) == 2
    # an untrusted server certificate is not accepted
    untrusted = await started(harness, factory, Signal.TRACES, mk(
        endpoint=endpoint, headers={"Authorization": SECRET},
        retry_on_failure={**FAST_RETRY, "max_elapsed_time": 1}), cid="otlp/untrusted")
    await untrusted.consume(samples.traces(1))
    await asyncio.sleep(1.5)
    assert sink.received.span_count() == 3
    assert SECRET not in caplog.text and "s3cr3t" not in caplog.text
    assert "s3cr3t" not in repr(mk(endpoint=endpoint, headers={"Authorization": SECRET}))


def test_config_errors_are_clear() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="insecure_skip_verify is not supported"):
        grpc_exp.Config(endpoint="collector:4317", tls={"insecure_skip_verify": True})
    with pytest.raises(ValidationError, match="min_version cannot be set for gRPC"):
        grpc_exp.Config(endpoint="collector:4317", tls={"min_version": "1.3"})
    with pytest.raises(ValidationError, match="must start with http://, https:// or unix://"):
        http_exp.Config(endpoint="collector:4318")
    with pytest.raises(ValidationError, match="endpoint"):
        http_exp.Config()
    with pytest.raises(ValidationError, match="Extra inputs"):
        grpc_exp.Config(endpoint="x:1", compresion="gzip")  # type: ignore[call-arg]


def test_grpc_endpoint_forms() -> None:
    def target(ep: str, **kw: Any) -> tuple[str, bool]:
        return grpc_exp.channel_target(grpc_exp.Config(endpoint=ep, **kw))

    assert target("collector:4317") == ("collector:4317", True)
    assert target("collector:4317", tls={"insecure": True}) == ("collector:4317", False)
    assert target("http://collector:4317") == ("collector:4317", False)
    assert target("https://collector:4317") == ("collector:4317", True)
    assert target("unix:///run/gotel/otlp.sock") == ("unix:///run/gotel/otlp.sock", False)
