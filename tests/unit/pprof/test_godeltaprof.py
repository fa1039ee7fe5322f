"""godeltaprof endpoints: already deltas, emitted from the first scrape, marked as delta."""

from __future__ import annotations

from aiohttp import web

from gotel.formats import pprof
from gotel.receivers.pprof import factory
from gotel.receivers.pprof.receiver import KINDS, PprofReceiver, TargetRunner
from tests.helpers.pprofkit import HEAP_TYPES, context, make_profile, profiles_of, sinks


async def test_delta_heap_emitted_as_is_and_marked() -> None:
    body = pprof.encode(make_profile(HEAP_TYPES, [(["main.f", "main.main"], [2, 2048, 1, 1024])]))
    hits: list[str] = []

    async def handler(r: web.Request) -> web.Response:
        hits.append(r.path)
        if r.path == "/debug/pprof/delta_heap":
            return web.Response(body=body, content_type="application/octet-stream")
        return web.Response(status=404, text="404 page not found")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = factory.config.model_validate({"targets": [{"endpoint": f"http://127.0.0.1:{port}"}],
                                         "profiles": {"delta_heap": {"enabled": True}}})
    sk = sinks()
    rcv = PprofReceiver(cfg, sk, context("pprof"))  # type: ignore[arg-type]
    r = TargetRunner(rcv, rcv._static_targets()[0])
    try:
        await r.scrape(KINDS["delta_heap"], cfg.profiles.delta_heap)
        profs = profiles_of(sk["profiles"], "heap")  # godeltaprof's heap is the heap family
        assert len(profs) == 4
        req, p = profs[1]
        d = req.dictionary
        attrs = {d.string_table[d.attribute_table[i].key_strindex]: d.attribute_table[i].value for i in p.attribute_indices}
        assert attrs["gotel.pprof.delta"].bool_value is True
        assert sum(v for s in p.samples for v in s.values) == 2048  # first scrape: no baseline needed
        await r.scrape(KINDS["delta_mutex"], cfg.profiles.delta_mutex)  # not served: not_found, retried later
        assert "delta_mutex" in r.unsupported
    finally:
        await rcv.shutdown()
        await runner.cleanup()
