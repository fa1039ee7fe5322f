"""The real collector's own `otlp_grpc` and `otlp_http` exporters (v0.161.0) deliver all four signals to
gotel's `otlp` receiver, and gotel's pipeline gets every item exactly once.

Data enters the collector through its `otlp` receiver (sent by gotel's `otlp` exporter, whose delivery
test_gotel_exporters.py checks) and leaves through the collector exporter under test: gRPC with gzip
(its default) or none; HTTP with protobuf or JSON, gzip (its default), zstd, snappy, zlib, deflate or none. Profiles: over OTLP/HTTP the collector sends resource
attributes as indices into the profile dictionary's string table; gotel's pipeline must see them as
plain attributes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Batch, Signal, attr_dict
from gotel.receivers import otlp as otlp_recv
from tests.helpers.exporter_ctx import make_ctx as exporter_ctx
from tests.helpers.memsink import MemorySink, make_ctx, sinks
from tests.helpers.otelcol import Collector, items
from tests.helpers.prometheus_server import free_port
from tests.integration.collector.test_gotel_exporters import batches

pytestmark = pytest.mark.slow

# collector exporter type -> its config, given gotel's gRPC and HTTP ports
EXPORTERS: dict[str, tuple[str, Callable[[int, int], dict[str, Any]]]] = {
    "otlp_grpc-gzip": ("otlp_grpc", lambda g, h: {"endpoint": f"127.0.0.1:{g}", "tls": {"insecure": True}}),
    "otlp_grpc-none": ("otlp_grpc", lambda g, h: {"endpoint": f"127.0.0.1:{g}", "tls": {"insecure": True},
                                                  "compression": "none"}),
    "otlp_http-proto-gzip": ("otlp_http", lambda g, h: {"endpoint": f"http://127.0.0.1:{h}"}),
    "otlp_http-json-none": ("otlp_http", lambda g, h: {"endpoint": f"http://127.0.0.1:{h}", "encoding": "json",
                                                       "compression": "none"}),
    # the other encodings the collector's HTTP client offers and gotel's receiver decodes (lz4 it does not)
    **{f"otlp_http-proto-{c}": ("otlp_http", lambda g, h, c=c: {"endpoint": f"http://127.0.0.1:{h}", "compression": c})
       for c in ("zstd", "snappy", "zlib", "deflate")},
}


@pytest.fixture
async def gotel_receiver() -> AsyncIterator[tuple[otlp_recv.OTLPReceiver, dict[Signal, MemorySink]]]:
    """gotel's otlp receiver, gRPC and HTTP on ephemeral loopback ports, every signal into a memory sink."""
    s = sinks(*Signal)
    cfg = otlp_recv.Config.model_validate({"protocols": {"grpc": {"endpoint": "127.0.0.1:0"},
                                                         "http": {"endpoint": "127.0.0.1:0"}}})
    r = otlp_recv.OTLPReceiver(cfg, s, make_ctx("otlp"))
    await r.start()
    try:
        yield r, s
    finally:
        await r.shutdown()


@pytest.mark.parametrize("variant", sorted(EXPORTERS))
async def test_collector_exporter_delivers_every_signal_to_gotel(
        variant: str, gotel_receiver: tuple[otlp_recv.OTLPReceiver, dict[Signal, MemorySink]],
        otelcol: Callable[..., Collector]) -> None:
    recv, side = gotel_receiver
    assert recv.grpc_port and recv.http_port
    typ, make_cfg = EXPORTERS[variant]
    in_port = free_port()
    col = otelcol({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{in_port}"}}}},
        "exporters": {typ: make_cfg(recv.grpc_port, recv.http_port)},
        "service": {"pipelines": {s.value: {"receivers": ["otlp"], "exporters": [typ]} for s in Signal}},
    })
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

    def count(signal: Signal) -> int:
        return sum(b.item_count() for b in side[signal].batches)

    want = {s: sum(b.item_count() for b in sent[s]) for s in Signal}
    end = asyncio.get_running_loop().time() + 30
    while any(count(s) < want[s] for s in Signal) and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(0.1)
    for signal in Signal:
        got = [b.peek() for b in side[signal].batches]
        assert items(signal, got) == items(signal, [b.peek() for b in sent[signal]]), \
            f"{signal}: gotel's pipeline got other items than were sent\n{col.log()}"
    # gotel's pipeline reads profile resource attributes as plain attributes, not string-table indices
    resources = [attr_dict(rp.resource.attributes) for b in side[Signal.PROFILES].batches
                 for rp in b.peek().resource_profiles]
    assert {"service.name": "shop", "process.pid": 77, "host.arch": "amd64"} in resources, resources
    assert all(r.get("service.name") for r in resources), resources
