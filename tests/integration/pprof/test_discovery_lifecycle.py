"""Discovered targets come and go with their processes; a restarted process gets a new runner."""

from __future__ import annotations

import pytest

from gotel.receivers.pprof import factory
from gotel.receivers.pprof.receiver import PprofReceiver
from tests.helpers.pprofkit import context, sinks

pytestmark = pytest.mark.slow


async def test_targets_follow_processes(goapp) -> None:
    app = goapp("runtime")
    cfg = factory.config.model_validate({
        "discovery": {"enabled": True, "exe_paths": ["*/runtime-go1.27-*"], "pids": [app.pid]},
        "profiles": {k: {"enabled": False} for k in ("cpu", "heap", "mutex", "block", "goroutine_dump", "goroutineleak")}
        | {"goroutine": {"interval": 1.0}},
    })
    ctx = context("pprof")
    rcv = PprofReceiver(cfg, sinks(), ctx)  # type: ignore[arg-type]
    try:
        await rcv.refresh()
        assert [r.t.pid for r in rcv.runners.values()] == [app.pid]
        r = next(iter(rcv.runners.values()))
        assert r.t.attributes["service.name"].startswith("runtime")
        await r.scrape(__import__("gotel.receivers.pprof.receiver", fromlist=["KINDS"]).KINDS["goroutine"],
                       cfg.profiles.goroutine)
        reg = ctx.telemetry.t.registry
        labels = {"component": "pprof", "kind": "receiver", "target": r.label, "profile": "goroutine"}
        assert reg.get_sample_value("gotel_pprof_target_up", labels) == 1
        app.stop()
        await rcv.refresh()
        assert rcv.runners == {}
        assert reg.get_sample_value("gotel_pprof_target_up", labels) is None  # its series are gone too
        assert reg.get_sample_value("gotel_pprof_targets", {"component": "pprof", "kind": "receiver"}) == 0
    finally:
        await rcv.shutdown()
