"""The real collector's own `otlp_grpc` and `otlp_http` exporters (v0.161.0) deliver all four signals to
gotel's `otlp` receiver, and gotel's pipeline gets every item exactly once over each protocol.

Data enters the collector through its `otlp` receiver (sent by gotel's `otlp` exporter, whose delivery
tests/integration/collector/test_gotel_exporters.py checks) and leaves through both collector exporters
of every pipeline: one to a gRPC-only gotel receiver, one to an HTTP-only one. Profiles: the collector
sends resource attributes as indices into the profile dictionary's string table; gotel's pipeline must
see them as plain attributes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.pdata import Batch, Signal, attr_dict
from gotel.receivers import otlp as otlp_recv
from tests.helpers.exporter_ctx import make_ctx as exporter_ctx
from tests.helpers.memsink import MemorySink, make_ctx, sinks
from tests.helpers.otelcol import Collector, items
from tests.helpers.prometheus_server import free_port
from tests.integration.collector.test_gotel_exporters import batches

pytestmark = pytest.mark.slow


class GotelSide:
    """Two gotel otlp receivers on ephemeral loopback ports, one per protocol, each with its own sinks."""

    def __init__(self) -> None:
        self.grpc_sinks, self.http_sinks = sinks(*Signal), sinks(*Signal)
        cfg_g = otlp_recv.Config.model_validate({"protocols": {"grpc": {"endpoint": "127.0.0.1:0"}}})
        cfg_h = otlp_recv.Config.model_validate({"protocols": {"http": {"endpoint": "127.0.0.1:0"}}})
        self.grpc = otlp_recv.OTLPReceiver(cfg_g, self.grpc_sinks, make_ctx("otlp", "grpc"))
        self.http = otlp_recv.OTLPReceiver(cfg_h, self.http_sinks, make_ctx("otlp", "http"))


@pytest.fixture
async def gotel_side() -> AsyncIterator[GotelSide]:
    g = GotelSide()
    await g.grpc.start()
    await g.http.start()
    try:
        yield g
    finally:
        await g.grpc.shutdown()
        await g.http.shutdown()


def requests(sink: MemorySink) -> list[Any]:
    return [b.peek() for b in sink.batches]


async def test_collector_exporters_deliver_every_signal_to_gotel(
        gotel_side: GotelSide, otelcol: Callable[..., Collector]) -> None:
    in_port = free_port()
    cfg = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{in_port}"}}}},
        "exporters": {
            "otlp_grpc": {"endpoint": f"127.0.0.1:{gotel_side.grpc.grpc_port}", "tls": {"insecure": True}},
            "otlp_http": {"endpoint": f"http://127.0.0.1:{gotel_side.http.http_port}"},
        },
        "service": {"pipelines": {s.value: {"receivers": ["otlp"], "exporters": ["otlp_grpc", "otlp_http"]}
                                  for s in Signal}},
    }
    col = otelcol(cfg)
    ecfg = otlp_exp.Config.model_validate({"endpoint": f"http://127.0.0.1:{in_port}"})
    sent: dict[Signal, list[Batch]] = {}
    for signal in Signal:
        exp = otlp_exp.factory.create(signal, ecfg, exporter_ctx(f"otlp/{signal.value}"))
        await exp.start()
        sent[signal] = batches(signal)
        try:
            for b in sent[signal]:
                await exp.consume(b.copy())
        finally:
            await exp.shutdown()

    want_counts = {s: sum(b.item_count() for b in sent[s]) for s in Signal}

    def count(sink: MemorySink) -> int:
        return sum(b.item_count() for b in sink.batches)

    loop_end = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < loop_end:
        if all(count(side[s]) >= want_counts[s] for side in (gotel_side.grpc_sinks, gotel_side.http_sinks)
               for s in Signal):
            break
        await asyncio.sleep(0.1)
    for proto, side in (("grpc", gotel_side.grpc_sinks), ("http", gotel_side.http_sinks)):
        for signal in Signal:
            got = requests(side[signal])
            assert items(signal, got) == items(signal, [b.peek() for b in sent[signal]]), \
                f"{signal} over {proto}: gotel's pipeline got other items than were sent\n{col.log()}"
        # profiles: gotel's pipeline reads the resource attributes as plain ones, not string-table indices
        resources = [attr_dict(rp.resource.attributes) for r in requests(side[Signal.PROFILES])
                     for rp in r.resource_profiles]
        assert {"service.name": "shop", "process.pid": 77, "host.arch": "amd64"} in resources, (proto, resources)
        assert all(r.get("service.name") for r in resources), (proto, resources)
