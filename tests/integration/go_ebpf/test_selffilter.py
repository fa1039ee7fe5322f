"""gotel's own requests to a traced program (pprof scrapes) are not the program's traffic.

The same pprof endpoint of a real Go program is called by gotel's pprof fetcher (keep-alive, as the
pprof receiver scrapes) and by curl. The spans must be curl's only, and every gotel request counted
as dropped with reason gotel_request. Truth: the number of requests each client made.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator

import pytest

from gotel.pdata.batch import attr_dict
from gotel.receiverhelper.targets import Target
from gotel.receivers.pprof.fetch import Fetcher
from tests.helpers import goapps
from tests.integration.go_ebpf.test_grpc import SERVER, Env, until

pytestmark = pytest.mark.slow

GOTEL_REQUESTS = 5
CURL_REQUESTS = 3


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env("go1.27", stripped=False)
    e.binary = goapps.build("httpapp", "go1.27")
    await e.start()
    try:
        yield e
    finally:
        await e.close()


def _route(span: object) -> str:
    a = attr_dict(span.attributes)  # type: ignore[attr-defined]
    return str(a.get("http.route") or a.get("url.path"))


async def test_gotel_scrapes_are_dropped_and_counted_others_kept(env: Env) -> None:
    app = await asyncio.to_thread(goapps.start, "httpapp", "server", toolchain=env.toolchain)
    env.apps.append(app)
    await until(lambda: app.pid in env.r.attached_pids, 30)
    base = f"http://127.0.0.1:{app.port('pprof')}"
    fetcher = Fetcher()  # what the pprof receiver scrapes with; this process is gotel's go_ebpf receiver
    try:
        for _ in range(GOTEL_REQUESTS):
            r = await fetcher.get(Target(url=base), "/debug/pprof/goroutine")
            assert r.body
            await asyncio.sleep(0.1)
        urls = [a for _ in range(CURL_REQUESTS) for a in ("-o", "/dev/null", f"{base}/debug/pprof/cmdline")]
        done = await asyncio.to_thread(subprocess.run, ["curl", "-sS", "-w", "%{http_code}\n", *urls],
                                       capture_output=True, text=True, timeout=30)
        assert done.stdout.split() == ["200"] * CURL_REQUESTS, done.stderr
        await until(lambda: len([s for _, s in env.spans(app.pid, SERVER) if "cmdline" in _route(s)]) >= CURL_REQUESTS,
                    10)
        await asyncio.sleep(1.0)  # anything of gotel's would have been exported by now
    finally:
        await fetcher.close()
    routes = [_route(s) for _, s in env.spans(app.pid, SERVER)]
    assert sorted(routes) == ["/debug/pprof/cmdline"] * CURL_REQUESTS, routes
    dropped = env.tel.registry.get_sample_value(
        "gotel_dropped_items_total", {"component": "go_ebpf", "kind": "receiver", "signal": "traces",
                                      "reason": "gotel_request"})
    assert dropped == GOTEL_REQUESTS
    assert env.r.asm.self_filter.lookups <= GOTEL_REQUESTS + CURL_REQUESTS  # verdicts are cached per connection
