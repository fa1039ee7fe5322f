"""inject_traceparent (issue 22): a traced Go client's HTTP/1.1 requests that carry no traceparent reach an
untraced server with one naming the client span gotel exported; off by default; a request's own traceparent is
left alone. Real BPF (bpf_probe_write_user into the client's write buffer), the httpapp fixture on Go 1.19, the
machine's Go 1.26 and Go 1.27, and a Python http.server that records the headers it received: the truth is
what arrived on the wire, the client's own log and the kernel-side counts.

A kernel locked down in 'integrity' mode (or stronger) refuses bpf_probe_write_user to every uprobe program:
there the tests check that the option costs nothing else (the process is fully traced, the refusal is said once,
nothing is written), and the injection tests are skipped with the kernel's reason."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gotel.component.contract import Kind
from gotel.receivers.go_ebpf import Config, factory
from gotel.receivers.go_ebpf.inject import write_user_refused
from tests.helpers import goapps
from tests.integration.go_ebpf.test_grpc import CLIENT, Env, until
from tests.integration.go_ebpf.test_http_hops import client

pytestmark = pytest.mark.asyncio
N = 30
refused = functools.cache(write_user_refused)


class InjectEnv(Env):
    """Env whose receiver has inject_traceparent set as asked."""

    def __init__(self, toolchain: str, inject: bool) -> None:
        super().__init__(toolchain, stripped=False)
        self.binary = goapps.build("httpapp", toolchain)
        self.inject = inject

    async def start(self) -> None:
        await super().start()
        await self.r.shutdown()  # replaced by one with the option (the base starts with the defaults)
        cfg = Config.model_validate({"discovery": {"exe_paths": [str(self.binary)]}, "flush_interval": 0.2,
                                     "export_interval": 1.0, "stitch_window": 0.3,
                                     "inject_traceparent": self.inject})
        self.r = factory.create(cfg, self.exporters, self.ctx("go_ebpf", Kind.RECEIVER))
        await self.r.start()


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 and keeps every request's traceparent headers (all of them, to see duplicates)."""

    got: list[tuple[str, list[str]]]

    def do_GET(self) -> None:
        self.got.append((self.path, self.headers.get_all("traceparent") or []))
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def callee() -> Iterator[tuple[str, list[tuple[str, list[str]]]]]:
    got: list[tuple[str, list[str]]] = []
    handler = type("H", (Recorder,), {"got": got, "protocol_version": "HTTP/1.1"})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/orders/1", got
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


async def _env(toolchain: str, inject: bool) -> InjectEnv:
    e = InjectEnv(toolchain, inject)
    await e.start()
    return e


@pytest.fixture(params=goapps.TOOLCHAINS)
async def on(request: pytest.FixtureRequest) -> AsyncIterator[InjectEnv]:
    e = await _env(request.param, True)
    try:
        yield e
    finally:
        await e.close()


async def _spans(env: Env, pid: int, n: int) -> list[Any]:
    await until(lambda: len(env.spans(pid, CLIENT)) >= n, 15)
    await asyncio.sleep(0.5)  # nothing more may come
    return [s for _, s in env.spans(pid, CLIENT)]


@pytest.mark.parametrize("fresh", [False, True], ids=["reused", "fresh"])
async def test_injected_traceparent_names_the_client_span(on: InjectEnv, callee: Any, fresh: bool) -> None:
    if refused():
        pytest.skip(f"this kernel: {refused()}")
    url, got = callee
    pid, recs = await client(on, url, "-n", str(N), "-concurrency", "3", *(["-fresh"] if fresh else []))
    calls = [r for r in recs if not r.get("summary")]
    assert len(calls) == N and all(r.get("status") == 200 for r in calls), calls[:3]
    assert sum(r["reused"] for r in calls) == (0 if fresh else sum(r["reused"] for r in calls))
    if not fresh:
        assert sum(r["reused"] for r in calls) >= N - 3  # keep-alive: later requests on the first connections
    spans = await _spans(on, pid, N)
    assert len(spans) == N
    assert len(got) == N and all(len(tps) == 1 for _, tps in got), got[:3]
    sent = {(s.trace_id.hex(), s.span_id.hex()) for s in spans}
    arrived = set()
    for _, (tp,) in got:
        ver, trace, span, flags = tp.split("-")
        assert (ver, flags, len(trace), len(span)) == ("00", "01", 32, 16), tp
        arrived.add((trace, span))
    assert arrived == sent  # each request named its own client span, as exported
    await until(lambda: on.r.injections()["injected"] == N, 5)
    assert on.r.injections() == {"injected": N, "no_room": 0, "header_present": 0, "write_refused": 0,
                                 "writer_unknown": 0}


async def test_a_request_s_own_traceparent_is_left_alone(on: InjectEnv, callee: Any) -> None:
    url, got = callee
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    pid, recs = await client(on, url, "-n", "10", "-traceparent", own)
    assert len([r for r in recs if r.get("status") == 200]) == 10
    assert [tps for _, tps in got] == [[own]] * 10
    await _spans(on, pid, 10)
    if not refused():
        await until(lambda: on.r.injections()["header_present"] == 10, 5)
        assert on.r.injections()["injected"] == 0


@pytest.mark.parametrize("toolchain", goapps.TOOLCHAINS)
async def test_a_kernel_that_refuses_costs_only_the_injection(toolchain: str, callee: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    if not refused():
        pytest.skip("this kernel allows bpf_probe_write_user")
    caplog.set_level(logging.INFO)
    env = await _env(toolchain, True)
    try:
        url, got = callee
        pid, recs = await client(env, url, "-n", str(N), "-concurrency", "3")
        assert len([r for r in recs if r.get("status") == 200]) == N
        assert len(await _spans(env, pid, N)) == N  # every request still a span
        assert [tps for _, tps in got] == [[]] * N
        said = [r.getMessage() for r in caplog.records if "inject_traceparent" in r.getMessage()]
        assert len(said) == 1 and "refuses bpf_probe_write_user" in said[0] and env.r.inject_refused, said
        assert set(env.r.injections().values()) == {0}
    finally:
        await env.close()


@pytest.mark.parametrize("toolchain", goapps.TOOLCHAINS)
async def test_off_by_default_nothing_written(toolchain: str, callee: Any) -> None:
    assert Config.model_validate({}).inject_traceparent is False
    env = await _env(toolchain, False)
    try:
        url, got = callee
        pid, recs = await client(env, url, "-n", "10")
        assert len([r for r in recs if r.get("status") == 200]) == 10
        assert len(await _spans(env, pid, 10)) == 10  # traced, but nothing written
        assert [tps for _, tps in got] == [[]] * 10
    finally:
        await env.close()
