"""Bad targets are classified and counted while the healthy target keeps being scraped (loops running)."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from gotel.formats import pprof
from gotel.receivers.pprof.receiver import PprofReceiver
from tests.helpers.pprofkit import HEAP_TYPES, context, make_profile, profiles_of, sinks

from .conftest import target_of

pytestmark = pytest.mark.slow

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_each_bad_target_classified_healthy_one_scraped(goapp) -> None:
    heap = pprof.encode(make_profile(HEAP_TYPES, [(["main.f", "main.main"], [1, 10, 1, 10])]))

    async def html(_r: web.Request) -> web.StreamResponse:
        return web.Response(text="<!DOCTYPE html><html><title>Login</title></html>", content_type="text/html")

    async def json_err(_r: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "unauthorized"})

    async def truncated(_r: web.Request) -> web.StreamResponse:
        return web.Response(body=heap[: len(heap) // 2], content_type="application/octet-stream")

    async def e500(_r: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="internal error")

    async def hang(_r: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(body=heap)

    async def e404(_r: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="404 page not found")

    servers = [await serve(h) for h in (html, json_err, truncated, e500, hang, e404)]
    app = goapp("runtime")
    bad = [f"http://127.0.0.1:{port}" for _r, port in servers] + [f"http://127.0.0.1:{closed_port()}"]
    expected = ["not_pprof", "not_pprof", "not_pprof", "http_error", "timeout", "not_found", "refused"]
    cfg = {
        "targets": [target_of(app)] + [{"endpoint": u, "service_name": f"bad{i}"} for i, u in enumerate(bad)],
        "jitter": False, "timeout": 1.0,
        "profiles": {k: {"enabled": False} for k in ("cpu", "mutex", "block", "goroutine", "goroutine_dump", "goroutineleak")}
        | {"heap": {"interval": 1.0}},
    }
    from gotel.receivers.pprof import factory

    ctx = context("pprof")
    sk = sinks()
    rcv = PprofReceiver(factory.config.model_validate(cfg), sk, ctx)  # type: ignore[arg-type]
    await rcv.start()
    try:
        await rcv.wait_ready()
        await asyncio.sleep(4.5)
        reg = ctx.telemetry.t.registry
        labels = {r.t.url: r.label for r in rcv.runners.values()}
        for url, cls in zip(bad, expected, strict=True):
            n = reg.get_sample_value("gotel_pprof_scrape_failures_total", {
                "component": "pprof", "kind": "receiver", "target": labels[url], "profile": "heap", "class": cls})
            assert n and n >= 2, f"{url}: expected class {cls}, registry says {n}"
            assert reg.get_sample_value("gotel_pprof_target_up", {
                "component": "pprof", "kind": "receiver", "target": labels[url], "profile": "heap"}) == 0
        good = labels[f"http://127.0.0.1:{app.port()}"]
        scrapes = reg.get_sample_value("gotel_pprof_scrapes_total", {
            "component": "pprof", "kind": "receiver", "target": good, "profile": "heap"})
        assert scrapes is not None and scrapes >= 3  # the hung target did not hold the healthy one back
        assert reg.get_sample_value("gotel_pprof_target_up", {
            "component": "pprof", "kind": "receiver", "target": good, "profile": "heap"}) == 1
        svc = {r.resource.attributes[0].value.string_value for req, _p in profiles_of(sk["profiles"])  # type: ignore[index]
               for r in req.resource_profiles}
        assert svc <= {"runtime-fixture"}
    finally:
        await rcv.shutdown()
        for r, _p in servers:
            await r.cleanup()


def test_truncated_gzip_message_says_so() -> None:
    from gotel.receivers.pprof.fetch import ScrapeError, check_pprof_body

    data = gzip.compress(b"\x0a\x04\x08\x01\x10\x02" * 100)
    check_pprof_body(data[:20], "application/octet-stream")  # magic is fine: decode tells truncation
    with pytest.raises(pprof.PprofError, match="truncated gzip"):
        pprof.decode(data[:20])
    with pytest.raises(ScrapeError, match="HTML"):
        check_pprof_body(b"<html>", "text/html")
