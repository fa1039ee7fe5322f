"""Refusals between gotel and the real collector (v0.161.0) mean the same to both sides.

* gotel's otlp receiver refusing for back-pressure (gRPC UNAVAILABLE with RetryInfo, HTTP 503 with
  Retry-After) makes the collector's exporters retry until the data is in: nothing lost, nothing twice.
* gotel refusing for good (INVALID_ARGUMENT, HTTP 400) makes them drop at once, without retrying.
* The other way round: a collector whose own export fails answers gotel's exporter with a retryable
  error, and gotel's exporter retries until the collector gets through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gotel.component.contract import ConsumerError, PermanentError, RefusedError
from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Batch, Signal
from gotel.receivers import otlp as otlp_recv
from tests.helpers import otlp_samples
from tests.helpers.exporter_ctx import make_ctx as exporter_ctx
from tests.helpers.exporter_ctx import metric_value
from tests.helpers.memsink import make_ctx
from tests.helpers.otelcol import Collector, items
from tests.helpers.prometheus_server import free_port

pytestmark = pytest.mark.slow


class RefusingSink:
    """Refuses the first `refuse` requests with `error`, then keeps what it gets."""

    mutates = False

    def __init__(self, refuse: int, error: type[ConsumerError]) -> None:
        self.refuse, self.error = refuse, error
        self.calls = 0
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls <= self.refuse:
            raise self.error(f"test refusal {self.calls}")
        self.batches.append(batch)


async def gotel_receiver(sink: RefusingSink, port: int = 0) -> otlp_recv.OTLPReceiver:
    cfg = otlp_recv.Config.model_validate({"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"},
                                                         "http": {"endpoint": "127.0.0.1:0"}}})
    r = otlp_recv.OTLPReceiver(cfg, {Signal.TRACES: sink}, make_ctx("otlp"))
    await r.start()
    return r


@pytest.fixture
async def receivers() -> AsyncIterator[list[otlp_recv.OTLPReceiver]]:
    started: list[otlp_recv.OTLPReceiver] = []
    yield started
    for r in started:
        await r.shutdown()


async def send(port: int, batches: list[Batch]) -> None:
    exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
        {"endpoint": f"http://127.0.0.1:{port}"}), exporter_ctx("otlp"))
    await exp.start()
    try:
        for b in batches:
            await exp.consume(b.copy())
    finally:
        await exp.shutdown()


def collector_to(typ: str, recv: otlp_recv.OTLPReceiver, in_port: int) -> dict[str, object]:
    ep = {"otlp_grpc": {"endpoint": f"127.0.0.1:{recv.grpc_port}", "tls": {"insecure": True}},
          "otlp_http": {"endpoint": f"http://127.0.0.1:{recv.http_port}"}}[typ]
    return {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{in_port}"}}}},
        "exporters": {typ: {**ep, "retry_on_failure": {"initial_interval": "100ms", "max_interval": "200ms",
                                                       "randomization_factor": 0}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": [typ]}}},
    }


@pytest.mark.parametrize("typ", ["otlp_grpc", "otlp_http"])
async def test_collector_retries_gotel_back_pressure(
        typ: str, receivers: list[otlp_recv.OTLPReceiver], otelcol: Callable[..., Collector]) -> None:
    sink = RefusingSink(3, RefusedError)
    recv = await gotel_receiver(sink)
    receivers.append(recv)
    in_port = free_port()
    col = otelcol(collector_to(typ, recv, in_port), feature_gates=())
    sent = [otlp_samples.traces(10, start=10 * i) for i in range(2)]
    await send(in_port, sent)
    end = asyncio.get_running_loop().time() + 30
    while sum(b.item_count() for b in sink.batches) < 20 and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(0.05)
    assert sink.calls >= 3 + 2
    assert items(Signal.TRACES, [b.peek() for b in sink.batches]) == \
        items(Signal.TRACES, [b.peek() for b in sent]), col.log()


@pytest.mark.parametrize("typ", ["otlp_grpc", "otlp_http"])
async def test_collector_drops_on_gotel_permanent_refusal(
        typ: str, receivers: list[otlp_recv.OTLPReceiver], otelcol: Callable[..., Collector]) -> None:
    sink = RefusingSink(1000, PermanentError)
    recv = await gotel_receiver(sink)
    receivers.append(recv)
    in_port = free_port()
    col = otelcol(collector_to(typ, recv, in_port), feature_gates=())
    await send(in_port, [otlp_samples.traces(5)])
    end = asyncio.get_running_loop().time() + 15
    while "not retryable" not in col.log() and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # ten retry intervals: a retry would show
    assert sink.calls == 1, col.log()
    assert "not retryable" in col.log() and "test refusal 1" in col.log()


async def test_gotel_exporter_retries_when_the_collector_cannot_export(
        receivers: list[otlp_recv.OTLPReceiver], otelcol: Callable[..., Collector]) -> None:
    """gotel → collector (no queue, no retry of its own) → gotel receiver that refuses at first: the
    collector passes the failure back as a retryable error, and gotel's exporter retries."""
    sink = RefusingSink(2, RefusedError)
    recv = await gotel_receiver(sink)
    receivers.append(recv)
    in_port = free_port()
    col = otelcol({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{in_port}"}}}},
        "exporters": {"otlp_grpc": {"endpoint": f"127.0.0.1:{recv.grpc_port}", "tls": {"insecure": True},
                                    "sending_queue": {"enabled": False}, "retry_on_failure": {"enabled": False}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp_grpc"]}}},
    }, feature_gates=())
    ctx = exporter_ctx("otlp")
    exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
        {"endpoint": f"http://127.0.0.1:{in_port}",
         "retry_on_failure": {"initial_interval": 0.1, "max_interval": 0.2, "randomization_factor": 0}}), ctx)
    await exp.start()
    batch = otlp_samples.traces(7)
    try:
        await exp.consume(batch.copy())
        end = asyncio.get_running_loop().time() + 20
        while not sink.batches and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.05)
    finally:
        await exp.shutdown()
    assert items(Signal.TRACES, [b.peek() for b in sink.batches]) == items(Signal.TRACES, [batch.peek()]), col.log()
    assert sink.calls == 3
    assert metric_value(ctx, "gotel_exporter_retries_total") == 2
    assert metric_value(ctx, "gotel_dropped_items_total") == 0
