"""The otlp receiver's HTTP limits: every Content-Encoding inflated with a bound, concurrent requests
bounded with a retryable 503, and the collector's timeout keys."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import cramjam
import pytest

from gotel.component.contract import Kind
from gotel.pdata.batch import Batch, Signal
from gotel.receiverhelper.inflate import inflate
from gotel.receivers import otlp as rotlp
from tests.helpers import otlp_samples as samples
from tests.unit.otlp.conftest import Harness
from tests.unit.otlp.test_receiver import Running, _post, _status

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

PB = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    for x in r.receivers:
        await x.shutdown()


def _compress(enc: str, raw: bytes) -> bytes:
    if enc == "gzip":
        return gzip.compress(raw)
    if enc in ("deflate", "zlib"):
        return zlib.compress(raw)
    if enc == "zstd":
        return bytes(zstd.compress(raw))
    if enc == "snappy":
        return bytes(cramjam.snappy.compress_raw(raw))
    if enc == "x-snappy-framed":
        return bytes(cramjam.snappy.compress(raw))
    return raw


ENCS = ["", "gzip", "deflate", "zlib", "zstd", "snappy", "x-snappy-framed"]


@pytest.mark.parametrize("enc", ENCS)
async def test_every_encoding_is_accepted(enc: str, harness: Harness, running: Running) -> None:
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0"}})
    raw = samples.traces(50).to_bytes()
    headers = {**PB, "Content-Encoding": enc} if enc else PB
    status, _, _ = await _post(r, "/v1/traces", _compress(enc, raw), **headers)
    assert status == 200
    assert sum(b.item_count() for b in running.mem[Signal.TRACES].batches) == 50


@pytest.mark.parametrize("enc", ["gzip", "deflate", "zstd", "snappy", "x-snappy-framed"])
async def test_bombs_of_every_encoding_are_refused_without_inflating_them(
    enc: str, harness: Harness, running: Running
) -> None:
    limit = 1 << 20
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0", "max_request_body_size": limit}})
    inflated = 64 << 20 if enc not in ("snappy", "x-snappy-framed") else 8 << 20  # snappy's ratio is ~20:1
    bomb = _compress(enc, bytes(inflated))
    assert len(bomb) < limit
    tracemalloc.start()
    try:
        status, headers, data = await _post(r, "/v1/traces", bomb, **PB, **{"Content-Encoding": enc})
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413, _status(data).message
    assert f"larger than max_request_body_size ({limit} bytes) once inflated" in _status(data).message
    assert headers.get("Connection", "").lower() == "close"
    # Python-level allocations while serving the bomb: the limit plus one inflation step, plus the
    # client's own copy of the body, never the inflated size.
    assert peak < 4 * limit + 2 * len(bomb), f"peak {peak >> 10} KiB for a {inflated >> 20} MiB bomb"
    assert harness.value("otlp_receiver_rejected_requests_total", component="otlp", kind="receiver",
                         signal="traces", reason="too_large") == 1


def test_inflate_accepts_concatenated_members_and_frames() -> None:
    assert inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"
    assert inflate(bytes(zstd.compress(b"ab")) + bytes(zstd.compress(b"cd")), "zstd", 10) == b"abcd"
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert inflate(raw.compress(b"raw deflate") + raw.flush(), "deflate", 100) == b"raw deflate"


async def test_compressed_body_larger_than_the_limit_is_413_before_reading(harness: Harness, running: Running) -> None:
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0", "max_request_body_size": 1000}})
    status, _, _ = await _post(r, "/v1/traces", b"\0" * 5000, **PB)
    assert status == 413


class Gate:
    """A pipeline that holds every batch until released: requests stay in flight."""

    mutates = False

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.items = 0

    async def consume(self, batch: Batch) -> None:
        self.entered += 1
        await self.release.wait()
        self.items += batch.item_count()


async def test_requests_beyond_max_concurrent_requests_get_503_with_retry_after(harness: Harness) -> None:
    gate = Gate()
    cfg = rotlp.Config.model_validate({"protocols": {"http": {"endpoint": "127.0.0.1:0",
                                                              "max_concurrent_requests": 3}}})
    r = rotlp.factory.create(cfg, {Signal.TRACES: gate}, harness.ctx("otlp", Kind.RECEIVER))
    assert isinstance(r, rotlp.OTLPReceiver)
    await r.start()
    try:
        body = samples.traces(5).to_bytes()
        url = f"http://127.0.0.1:{r.http_port}/v1/traces"
        async with aiohttp.ClientSession() as s:

            async def post() -> tuple[int, Any]:
                async with s.post(url, data=body, headers=PB) as resp:
                    await resp.read()
                    return resp.status, resp.headers

            held = [asyncio.create_task(post()) for _ in range(3)]
            for _ in range(200):
                if gate.entered == 3:
                    break
                await asyncio.sleep(0.01)
            assert gate.entered == 3
            status, headers = await post()  # the fourth, while three are in flight
            assert status == 503 and int(headers["Retry-After"]) >= 1
            gate.release.set()
            assert [(await t)[0] for t in held] == [200, 200, 200]
            assert (await post())[0] == 200  # slots are given back
        assert gate.items == 20
        assert harness.value("otlp_receiver_rejected_requests_total", component="otlp", kind="receiver",
                             signal="traces", reason="too_many_requests") == 1
    finally:
        await r.shutdown()


def test_timeout_keys_and_defaults_are_the_collectors() -> None:
    h = rotlp.HTTPServer()
    assert (h.read_timeout, h.read_header_timeout, h.write_timeout, h.idle_timeout) == (0.0, 60.0, 30.0, 60.0)
    assert h.max_request_body_size == 20 << 20
    h = rotlp.HTTPServer.model_validate({"read_header_timeout": "5s", "idle_timeout": "1m30s"})
    assert (h.read_header_timeout, h.idle_timeout) == (5.0, 90.0)


async def test_slow_body_gets_408_after_read_timeout(harness: Harness, running: Running) -> None:
    r = await running(harness, {"http": {"endpoint": "127.0.0.1:0", "read_timeout": "1s"}})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.http_port)
    writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                 b"Content-Length: 1000\r\n\r\nabc")
    await writer.drain()
    t0 = asyncio.get_running_loop().time()
    head = await asyncio.wait_for(reader.read(200), 10)
    took = asyncio.get_running_loop().time() - t0
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert 0.5 < took < 3
    assert harness.value("otlp_receiver_closed_connections_total", component="otlp", kind="receiver",
                         reason="read_timeout") == 1
