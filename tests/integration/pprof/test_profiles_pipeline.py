"""pprof receiver -> otlp exporter -> a real OTLP/gRPC server: the profile arrives with the source's totals."""

from __future__ import annotations

import threading

import pytest

from gotel.component.contract import Kind
from gotel.exporters.otlp import factory as otlp_factory
from gotel.formats import pprof, profconv
from gotel.pdata.batch import Signal, get_attr
from tests.helpers.otlp_sink import OTLPGrpcSink
from tests.helpers.pprofkit import context

from .conftest import Harness, http_get, target_of

pytestmark = pytest.mark.slow


async def test_profiles_reach_otlp_grpc_with_source_totals(goapp) -> None:
    app = goapp("runtime")
    with OTLPGrpcSink() as sink:
        exp = otlp_factory.create(Signal.PROFILES, otlp_factory.config.model_validate(
            {"endpoint": f"http://{sink.address}", "retry_on_failure": {"initial_interval": 0.1}}),
            context("otlp", Kind.EXPORTER))
        await exp.start()
        h = Harness([target_of(app)], profiles={"cpu": {"interval": 3}}, original_payload=True)
        h.rcv.sinks = {Signal.PROFILES: exp}  # the receiver's profiles sink is the exporter
        try:
            t = threading.Thread(target=lambda: [http_get(app.url("/burn?ms=300")) for _ in range(7)], daemon=True)
            t.start()
            await h.scrape("cpu")
            await h.scrape("goroutine")
            t.join()
        finally:
            await exp.shutdown()
            await h.close()
        assert sink.wait_for(lambda r: len(r.profiles) >= 2, timeout=15)
        by_type: dict[str, dict[str, int]] = {}
        for req in sink.received.profiles:
            groups = profconv.otlp_to_pprof(req)
            ptype = str(groups[0].attributes["gotel.pprof.type"])
            # the source pprof travels along (original_payload): compare its totals with the OTLP samples
            src = next(p for rp in req.resource_profiles for sp in rp.scope_profiles for p in sp.profiles
                       if p.original_payload)
            source = pprof.decode(src.original_payload)
            want = dict(zip([t for t, _u in pprof.sample_type_names(source)], pprof.totals(source), strict=True))
            got = profconv.otlp_totals(req)
            assert got == {k: v for k, v in want.items() if v}, ptype
            by_type[ptype] = got
            assert get_attr(req.resource_profiles[0].resource.attributes, "service.name") == "runtime-fixture"
        assert set(by_type) == {"cpu", "goroutine"}
        assert by_type["cpu"]["cpu"] > 0 and by_type["goroutine"]["goroutine"] >= 2
