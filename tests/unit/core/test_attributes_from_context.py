"""`from_context` in a real request path: gotel's otlp receiver (gRPC and HTTP, loopback) hands each
request's headers and peer address to an `attributes` processor right behind it, which copies them into
the spans: what a user checks is that the spans carry the header the client sent and the client's IP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.exporters import otlp_http as otlp_http_exp
from gotel.pdata.batch import Signal, attr_dict
from gotel.processors import attributes
from gotel.receivers import otlp as otlp_recv
from tests.helpers.attrcases import spans
from tests.helpers.exporter_ctx import make_ctx as exporter_ctx
from tests.helpers.memsink import MemorySink, make_ctx

CONFIG = {"actions": [
    {"key": "tenant", "from_context": "metadata.x-tenant", "action": "upsert"},
    {"key": "client.address", "from_context": "client.address", "action": "insert"},
    {"key": "who", "from_context": "auth.subject", "action": "insert"}]}


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_headers_and_peer_reach_the_spans(transport: str) -> None:
    sink = MemorySink()
    proc = attributes.factory.create(Signal.TRACES, attributes.Config.model_validate(CONFIG), sink,
                                     exporter_ctx("attributes"))
    cfg = otlp_recv.Config.model_validate({"protocols": {"grpc": {"endpoint": "127.0.0.1:0"},
                                                         "http": {"endpoint": "127.0.0.1:0"}}})
    recv = otlp_recv.OTLPReceiver(cfg, {Signal.TRACES: proc}, make_ctx("otlp"))
    await recv.start()
    try:
        exp: Any
        if transport == "grpc":
            exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
                {"endpoint": f"http://127.0.0.1:{recv.grpc_port}", "headers": {"X-Tenant": "acme"}}),
                exporter_ctx("otlp"))
        else:
            exp = otlp_http_exp.factory.create(Signal.TRACES, otlp_http_exp.Config.model_validate(
                {"endpoint": f"http://127.0.0.1:{recv.http_port}", "headers": {"X-Tenant": "acme"}}),
                exporter_ctx("otlp_http"))
        await exp.start()
        try:
            await exp.consume(spans({"tenant": "spoofed"}, {}))
        finally:
            await exp.shutdown()
        for _ in range(100):
            if sink.batches:
                break
            await asyncio.sleep(0.05)
    finally:
        await recv.shutdown()
    got = [attr_dict(s.attributes) for b in sink.batches for rs in b.peek().resource_spans
           for ss in rs.scope_spans for s in ss.spans]
    assert got == [{"tenant": "acme", "client.address": "127.0.0.1"}] * 2
