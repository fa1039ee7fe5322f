"""prometheus_remote_write against a receiver that checks the remote-write 1.0 spec: headers, block
snappy, protobuf WriteRequest, sorted labels, samples in time order; and its retry rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import cramjam
import pytest
from aiohttp import web

from gotel.exporterhelper.queue import RetryConfig
from gotel.exporters import prometheus_remote_write as prw
from gotel.proto import remote_write_pb2
from tests.helpers import metricsdata as md
from tests.helpers.exporter_ctx import make_ctx, metric_value

FAST = RetryConfig(initial_interval=0.05, max_interval=0.1, max_elapsed_time=10)
ONE = prw.RemoteWriteQueue(num_consumers=1)  # one shard: one request per batch, so requests can be counted


class Receiver:
    def __init__(self) -> None:
        self.statuses: list[int] = []  # scripted answers, then 204
        self.requests: list[dict[str, Any]] = []
        self.series: list[remote_write_pb2.TimeSeries] = []
        self.bodies: list[int] = []  # TimeSeries per accepted request
        self.url = ""
        self.gate: asyncio.Event | None = None  # when set up, answers wait for it (a busy backend)

    async def handle(self, req: web.Request) -> web.Response:
        raw = await req.read()
        self.requests.append(dict(req.headers))
        if self.gate is not None:
            await self.gate.wait()
        status = self.statuses.pop(0) if self.statuses else 204
        if status != 204:
            return web.Response(status=status, text=f"scripted {status}")
        wr = remote_write_pb2.WriteRequest()
        wr.ParseFromString(bytes(cramjam.snappy.decompress_raw(raw)))  # block format, not framed
        newest: dict[tuple[tuple[str, str], ...], int] = {}
        for ts in wr.timeseries:
            names = [lab.name for lab in ts.labels]
            if names != sorted(names) or len(set(names)) != len(names) or "__name__" not in names:
                return web.Response(status=400, text=f"labels not sorted/unique: {names}")
            if any(not lab.value for lab in ts.labels):
                return web.Response(status=400, text="empty label value")
            times = [s.timestamp for s in ts.samples]
            if times != sorted(times):
                return web.Response(status=400, text="out of order sample")
            # Prometheus appends in request order: a series in several TimeSeries must not go back in time.
            key = tuple((lab.name, lab.value) for lab in ts.labels)
            if times and times[0] < newest.get(key, 0):
                return web.Response(status=400, text="out of order sample")
            newest[key] = max(newest.get(key, 0), *times) if times else newest.get(key, 0)
            self.series.append(ts)
        self.bodies.append(len(wr.timeseries))
        return web.Response(status=204)


@pytest.fixture
async def rcv() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api/v1/write"  # type: ignore[union-attr]
    yield r
    await runner.cleanup()


def batch(points: list[tuple[int, float]], name: str = "rpc.requests") -> md.Metrics:
    b = md.batch({"service.name": "api", "service.instance.id": "i1", "host.name": "h"}, [])
    for t, v in points:
        b.msg.resource_metrics[0].scope_metrics[0].metrics.append(
            md.counter(name, "", [({"z.attr": "1", "a.attr": "2"}, v)], t, t - 10**9))
    return b


async def run(cfg: prw.Config, *batches: md.Metrics) -> Any:
    ctx = make_ctx("prometheus_remote_write")
    exp = prw.RemoteWriteExporter(cfg, ctx)
    await exp.start()
    for b in batches:
        await exp.consume(b)
    await exp.shutdown()
    return ctx


async def test_wire_format_labels_and_order(rcv: Receiver) -> None:
    now = time.time_ns()
    # two points of one series in one batch, newest first: they must leave oldest first
    ctx = await run(prw.Config(endpoint=rcv.url, remote_write_queue=prw.RemoteWriteQueue(num_consumers=3)),
                    batch([(now, 7.0), (now - 5 * 10**9, 3.0)]))
    h = rcv.requests[0]
    assert h["Content-Encoding"] == "snappy" and h["Content-Type"] == "application/x-protobuf"
    assert h["X-Prometheus-Remote-Write-Version"] == "0.1.0" and h["User-Agent"].startswith("gotel/")
    ts = [t for t in rcv.series if any(lab.value == "rpc_requests_total" for lab in t.labels)]
    assert len(ts) == 1
    assert [(lab.name, lab.value) for lab in ts[0].labels] == [
        ("__name__", "rpc_requests_total"), ("a_attr", "2"), ("instance", "i1"), ("job", "api"),
        ("otel_scope_name", "gotel.test"), ("otel_scope_version", "1.0"), ("z_attr", "1")]
    assert [(s.timestamp, s.value) for s in ts[0].samples] == [((now - 5 * 10**9) // 10**6, 3.0), (now // 10**6, 7.0)]
    info = [t for t in rcv.series if any(lab.value == "target_info" for lab in t.labels)]
    assert {lab.name: lab.value for lab in info[0].labels}["host_name"] == "h"
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 2


async def test_5xx_retried_4xx_not(rcv: Receiver) -> None:
    rcv.statuses = [503, 500]
    ctx = await run(prw.Config(endpoint=rcv.url, retry_on_failure=FAST, remote_write_queue=ONE), batch([(time.time_ns(), 1.0)]))
    assert len(rcv.requests) == 3 and metric_value(ctx, "gotel_exporter_sent_items_total") == 1
    rcv.requests.clear()
    rcv.statuses = [400]
    ctx = await run(prw.Config(endpoint=rcv.url, retry_on_failure=FAST, remote_write_queue=ONE), batch([(time.time_ns(), 1.0)]))
    assert len(rcv.requests) == 1 and metric_value(ctx, "gotel_dropped_items_total", reason="http_400") == 1


async def test_429_retried_only_when_configured(rcv: Receiver) -> None:
    rcv.statuses = [429]
    ctx = await run(prw.Config(endpoint=rcv.url, retry_on_failure=FAST, remote_write_queue=ONE), batch([(time.time_ns(), 1.0)]))
    assert len(rcv.requests) == 1 and metric_value(ctx, "gotel_dropped_items_total", reason="http_429") == 1
    rcv.requests.clear()
    rcv.statuses = [429]
    ctx = await run(prw.Config(endpoint=rcv.url, retry_on_failure=FAST, retry_on_http_429=True, remote_write_queue=ONE),
                    batch([(time.time_ns(), 1.0)]))
    assert len(rcv.requests) == 2 and metric_value(ctx, "gotel_exporter_sent_items_total") == 1


async def test_large_batches_are_split_by_size(rcv: Receiver) -> None:
    now = time.time_ns()
    b = md.batch({"service.name": "api"}, [md.gauge("g", "", [({"i": i, "pad": "x" * 200}, i) for i in range(200)], now)])
    await run(prw.Config(endpoint=rcv.url, max_batch_size_bytes=8192,
                         remote_write_queue=prw.RemoteWriteQueue(num_consumers=1)), b)
    assert len(rcv.requests) > 3
    assert sorted(s.samples[0].value for s in rcv.series) == list(range(200))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="http://"):
        prw.Config(endpoint="127.0.0.1:9090")
    with pytest.raises(ValueError, match="external_labels"):
        prw.Config(endpoint="http://x/api/v1/write", external_labels={"bad-name": "x"})


async def test_a_busy_shard_sends_what_waits_as_one_request_in_order(rcv: Receiver) -> None:
    """While the backend holds the first request, three more batches join the one request waiting in
    the shard's queue: two requests in all, every point counted once, the series in time order."""
    rcv.gate = asyncio.Event()
    ctx = make_ctx("prometheus_remote_write")
    exp = prw.RemoteWriteExporter(prw.Config(endpoint=rcv.url, remote_write_queue=ONE, target_info=prw.TargetInfo(enabled=False)), ctx)
    await exp.start()
    now = time.time_ns()
    await exp.consume(batch([(now, 1.0)]))
    for _ in range(200):
        if rcv.requests:
            break
        await asyncio.sleep(0.01)
    assert len(rcv.requests) == 1  # the first request is at the backend, unanswered
    for k in (1, 2, 3):
        await exp.consume(batch([(now + k * 10**9, 1.0 + k)]))
    rcv.gate.set()
    await exp.shutdown()
    assert len(rcv.requests) == 2 and rcv.bodies == [1, 3]
    times = [s.timestamp for ts in rcv.series for s in ts.samples]
    assert times == [(now + k * 10**9) // 10**6 for k in range(4)]
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 4


async def test_a_full_queue_still_drops_and_counts(rcv: Receiver) -> None:
    """Requests that cannot join the waiting one (size limit) and find the queue full are dropped and
    counted, never appended to a request that is not queued."""
    rcv.gate = asyncio.Event()
    ctx = make_ctx("prometheus_remote_write")
    cfg = prw.Config(endpoint=rcv.url, max_batch_size_bytes=1024, target_info=prw.TargetInfo(enabled=False),
                     remote_write_queue=prw.RemoteWriteQueue(num_consumers=1, queue_size=2))
    exp = prw.RemoteWriteExporter(cfg, ctx)
    await exp.start()
    now = time.time_ns()

    def big(k: int) -> md.Metrics:  # one request of ~700 bytes: two never fit in 1024
        return md.batch({"service.name": "api"}, [md.gauge("g", "", [({"i": i, "pad": "x" * 60}, k) for i in range(4)], now + k)])

    await exp.consume(big(0))
    for _ in range(200):
        if rcv.requests:
            break
        await asyncio.sleep(0.01)
    for k in (1, 2, 3):
        await exp.consume(big(k))  # 0 is at the backend, 1 waits in the queue, 2 and 3 find it full
    rcv.gate.set()
    await exp.shutdown()
    assert [len(r) for r, _ in exp.build(big(9)).bodies[0]] == [pytest.approx(700, rel=0.2)]
    assert metric_value(ctx, "gotel_dropped_items_total", reason="queue_full") == 8
    assert metric_value(ctx, "gotel_exporter_sent_items_total") == 8
    assert len(rcv.series) == 8 and len(rcv.requests) == 2


async def test_an_authenticator_extension_signs_every_request(rcv: Receiver) -> None:
    import base64

    from gotel.component.contract import ComponentID
    from gotel.extensions.auth import BasicAuth, BasicConfig

    aid = ComponentID("basicauth", "prw")
    ext = BasicAuth(BasicConfig(client_auth={"username": "bob", "password": "pw-41"}),  # type: ignore[arg-type]
                    make_ctx("basicauth/prw"))
    ctx = make_ctx("prometheus_remote_write")
    ctx.extras["extensions"] = {aid: ext}
    cfg = prw.Config(endpoint=rcv.url, auth={"authenticator": "basicauth/prw"})  # type: ignore[arg-type]
    exp = prw.RemoteWriteExporter(cfg, ctx)
    await exp.start()
    await exp.consume(batch([(time.time_ns(), 1.0)]))
    await exp.shutdown()
    assert rcv.requests and {h["Authorization"] for h in rcv.requests} == {
        "Basic " + base64.b64encode(b"bob:pw-41").decode()}
