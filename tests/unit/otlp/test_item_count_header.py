"""The internal hop's item-count header: the pipeline's entry point counts a receiver process's request
without parsing it, and nobody else can make it skip the parse.

The truth is the request itself: the items in the bytes sent (counted from the message the test built),
and whether the receiver's parser ran (its module's decode_request, wrapped to count its calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from gotel.component.contract import ITEM_COUNT_HEADER, RECEIVER_ID_HEADER, Kind
from gotel.exporters import otlp as grpc_exp
from gotel.pdata.batch import Batch, Signal
from gotel.receivers import otlp as rotlp
from gotel.service.internal import internal_receiver
from tests.helpers import otlp_samples as samples
from tests.unit.otlp.conftest import Harness
from tests.unit.otlp.test_receiver import Memory

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Reader(Memory):
    """A pipeline whose first processor looks inside each batch (parses it when it came as bytes)."""

    async def consume(self, batch: Batch) -> None:
        batch.peek()
        await super().consume(batch)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Signal]:
    """The signals of every request the receiver parsed on arrival."""
    seen: list[Signal] = []
    real = rotlp.decode_request

    def counting(signal: Signal, body: bytes, json_body: bool) -> Any:
        seen.append(signal)
        return real(signal, body, json_body)

    monkeypatch.setattr(rotlp, "decode_request", counting)
    return seen


class Servers:
    def __init__(self) -> None:
        self.started: list[rotlp.OTLPReceiver] = []

    async def internal(self, harness: Harness, sock: Path, sink: Memory) -> rotlp.OTLPReceiver:
        r = internal_receiver(str(sock), {Signal.TRACES: sink}, harness.ctx("otlp/_internal", Kind.RECEIVER))
        assert isinstance(r, rotlp.OTLPReceiver)
        await r.start()
        self.started.append(r)
        return r

    async def edge(self, harness: Harness, endpoint: str, sink: Memory) -> rotlp.OTLPReceiver:
        cfg = rotlp.Config.model_validate({"protocols": {"grpc": {"endpoint": endpoint}}})
        r = rotlp.factory.create(cfg, {Signal.TRACES: sink}, harness.ctx("otlp", Kind.RECEIVER))
        assert isinstance(r, rotlp.OTLPReceiver)
        await r.start()
        self.started.append(r)
        return r


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    for r in s.started:
        await r.shutdown()


def accepted(harness: Harness, component: str) -> float:
    return harness.value("receiver_accepted_items_total", component=component, kind="receiver", signal="traces")


async def test_the_internal_hop_counts_by_header_and_passes_bytes_on(
        harness: Harness, servers: Servers, sockdir: Path, parses: list[Signal]) -> None:
    """The otlp exporter of a receiver process (send_item_count) -> the internal entry point: the batch is
    handed on as the bytes sent, with the exact count, and nothing parsed them on the way."""
    sink = Memory()
    await servers.internal(harness, sockdir / "otlp.sock", sink)
    cfg = grpc_exp.Config.model_validate({"endpoint": f"unix://{sockdir}/otlp.sock", "compression": "none",
                                          "headers": {RECEIVER_ID_HEADER: "go_ebpf"}, "send_item_count": True})
    exp = grpc_exp.factory.create(Signal.TRACES, cfg, harness.ctx("otlp/sink", Kind.EXPORTER))
    await exp.start()
    sent = [samples.traces(n, start=i * 1000) for i, n in enumerate((300, 7, 4096))]
    try:
        for b in sent:
            await exp.consume(b)
    finally:
        await exp.shutdown()
    assert parses == []
    assert accepted(harness, "otlp/_internal") == 300 + 7 + 4096
    # the exporter's queue may merge batches (byte-level concatenation) and send them in any order: the
    # spans that arrived, parsed here after the fact, are those sent, and each header was its request's count
    def spans(batches: list[Batch]) -> list[bytes]:
        return sorted(s.SerializeToString() for b in batches for rs in type(b)(raw=b.to_bytes()).peek().resource_spans
                      for ss in rs.scope_spans for s in ss.spans)

    assert spans(sink.batches) == spans(sent)
    counts = [int(md[ITEM_COUNT_HEADER]) for md in sink.metadata]
    assert counts == [type(b)(raw=b.to_bytes()).item_count() for b in sink.batches]


async def test_an_edge_never_trusts_the_header(harness: Harness, servers: Servers, sockdir: Path,
                                               parses: list[Signal]) -> None:
    """A user's otlp receiver, on TCP or on a unix socket: a client's count is ignored, the request parsed
    and counted from its message."""
    batch = samples.traces(5)
    for endpoint in ("127.0.0.1:0", f"unix://{sockdir}/edge.sock"):
        sink = Memory()
        r = await servers.edge(harness, endpoint, sink)
        target = f"127.0.0.1:{r.grpc_port}" if r.grpc_port else f"unix:{sockdir}/edge.sock"
        async with grpc.aio.insecure_channel(target) as ch:
            await ch.unary_unary(EXPORT)(batch.to_bytes(), metadata=((ITEM_COUNT_HEADER, "999"),), timeout=10)
        assert [b.item_count() for b in sink.batches] == [5]
    assert accepted(harness, "otlp") == 10
    assert parses == [Signal.TRACES, Signal.TRACES]


@pytest.mark.parametrize("value", ["", "x", "-1", "3.0", "100000"])
async def test_a_header_that_is_not_a_count_gets_a_parse(
        value: str, harness: Harness, servers: Servers, sockdir: Path, parses: list[Signal]) -> None:
    sink = Memory()
    await servers.internal(harness, sockdir / "otlp.sock", sink)
    batch = samples.traces(3)
    async with grpc.aio.insecure_channel(f"unix:{sockdir}/otlp.sock") as ch:
        await ch.unary_unary(EXPORT)(batch.to_bytes(), timeout=10,
                                     metadata=((RECEIVER_ID_HEADER, "x"), (ITEM_COUNT_HEADER, value)))
    assert parses == [Signal.TRACES]
    assert accepted(harness, "otlp/_internal") == 3


async def test_malformed_bytes_passed_on_unparsed_are_refused_where_they_are_parsed(
        harness: Harness, servers: Servers, sockdir: Path) -> None:
    """Bytes that claim a count but do not parse: the first processor that looks inside fails, and the hop
    answers INVALID_ARGUMENT with the parser's reason, counted as malformed and refused, nothing accepted."""
    sink = Reader()
    await servers.internal(harness, sockdir / "otlp.sock", sink)
    garbage = b"\x0a\xff\xff\xff\xff\x0f garbage"
    async with grpc.aio.insecure_channel(f"unix:{sockdir}/otlp.sock") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ch.unary_unary(EXPORT)(garbage, timeout=10,
                                         metadata=((RECEIVER_ID_HEADER, "x"), (ITEM_COUNT_HEADER, "2")))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf traces request" in (ei.value.details() or "")
    assert sink.batches == []
    assert harness.value("otlp_receiver_rejected_requests_total", component="otlp/_internal", kind="receiver",
                         signal="traces", reason="malformed") == 1
    assert harness.value("receiver_refused_items_total", component="otlp/_internal", kind="receiver",
                         signal="traces") == 2
    assert accepted(harness, "otlp/_internal") == 0
