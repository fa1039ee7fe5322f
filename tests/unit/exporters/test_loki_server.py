"""The Loki test server rejects what Loki rejects, so a passing exporter test means something."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import cramjam
import pytest

from gotel.proto import logproto_pb2
from tests.helpers.loki_server import LokiServer


@pytest.fixture
async def server() -> AsyncIterator[LokiServer]:
    s = await LokiServer().start()
    yield s
    await s.stop()


def push(labels: str, ts: int = 0, line: str = "x") -> bytes:
    import time

    req = logproto_pb2.PushRequest()
    s = req.streams.add(labels=labels)
    e = s.entries.add(line=line)
    t = ts or time.time_ns()
    e.timestamp.seconds, e.timestamp.nanos = divmod(t, 10**9)
    return req.SerializeToString()


async def post(server: LokiServer, body: bytes, ctype: str = "application/x-protobuf") -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(server.url + "/loki/api/v1/push", data=body,
                                                    headers={"Content-Type": ctype}) as r:
        return r.status, await r.text()


@pytest.mark.parametrize("labels,message", [
    ('{app="a"}', None),
    ("{}", "at least one label pair"),
    ('{app.name="a"}', "invalid label name"),
    ('{__name__="a"}', "invalid label name"),
    ('{a="1", a="2"}', "duplicate label name"),
    ("{" + ", ".join(f'l{i}="v"' for i in range(16)) + "}", "16 label names; limit 15"),
    ('{app="' + "v" * 2049 + '"}', "label value too long"),
])
async def test_labels_validated_like_loki(server: LokiServer, labels: str, message: str | None) -> None:
    status, text = await post(server, bytes(cramjam.snappy.compress_raw(push(labels))))
    if message is None:
        assert status == 204
    else:
        assert status == 400 and message in text


async def test_framed_snappy_and_numeric_json_timestamps_are_rejected(server: LokiServer) -> None:
    status, _ = await post(server, bytes(cramjam.snappy.compress(push('{app="a"}'))))  # framed format
    assert status == 400
    doc = {"streams": [{"stream": {"app": "a"}, "values": [[1700000000000000000, "line"]]}]}
    status, text = await post(server, json.dumps(doc).encode(), "application/json")
    assert status == 400 and "timestamp must be a string" in text
    status, _ = await post(server, bytes(cramjam.snappy.compress_raw(push('{app="a"}', ts=10**18))))  # 2001
    assert status == 400
    status, text = await post(server, bytes(cramjam.snappy.compress_raw(push('{app="a"}', line="y" * 300_000))))
    assert status == 400 and "max entry size" in text
