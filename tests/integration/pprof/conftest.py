"""Shared set-up: the pprof receiver driven scrape by scrape (deterministic) against real fixtures."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from gotel.pdata.batch import Signal
from gotel.receiverhelper.targets import Target
from gotel.receivers.pprof import factory
from gotel.receivers.pprof.receiver import KINDS, PprofReceiver, TargetRunner
from tests.helpers import goapps
from tests.helpers.pprofkit import MemSink, context, sinks
from tests.helpers.waiting import wait_until

goapp = goapps.goapp  # the fixture starting Go programs, stopped at teardown


class Harness:
    """A receiver whose loops are not started: tests call scrape() for each step they assert on."""

    def __init__(self, targets: list[dict[str, Any]], **cfg: Any) -> None:
        base: dict[str, Any] = {"targets": targets, "jitter": False}
        base.update(cfg)
        self.cfg = factory.config.model_validate(base)
        self.sinks: dict[Signal, MemSink] = sinks()
        self.ctx = context("pprof")
        self.rcv = PprofReceiver(self.cfg, self.sinks, self.ctx)  # type: ignore[arg-type]
        self.runners = [TargetRunner(self.rcv, t) for t in self.rcv._static_targets()]

    def runner(self, i: int = 0) -> TargetRunner:
        return self.runners[i]

    async def scrape(self, kind: str, i: int = 0) -> None:
        await self.runners[i].scrape(KINDS[kind], getattr(self.cfg.profiles, kind))

    def failures(self, kind: str, cls: str, i: int = 0) -> float:
        reg = self.ctx.telemetry.t.registry
        v = reg.get_sample_value("gotel_pprof_scrape_failures_total", {
            "component": "pprof", "kind": "receiver", "target": self.runners[i].label, "profile": kind, "class": cls})
        return v or 0.0

    def value(self, name: str, **labels: str) -> float:
        reg = self.ctx.telemetry.t.registry
        v = reg.get_sample_value(name, {"component": "pprof", "kind": "receiver", **labels})
        return v or 0.0

    async def close(self) -> None:
        await self.rcv.shutdown()
        await self.rcv.fetcher.close()


def http_get(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return bytes(r.read())


def wait_cpu_profile_running(app: goapps.RunningApp, timeout: float = 15.0) -> None:
    """Until the target's own goroutine dump shows its CPU profiler writing: a profile asked for from
    another thread may not have started yet."""
    wait_until(lambda: b"runtime/pprof.profileWriter" in http_get(app.url("/debug/pprof/goroutine?debug=1")),
               timeout, 0.05, "the target's CPU profile to start")


async def aget(url: str, timeout: float = 60.0) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, http_get, url, timeout)


def target_of(app: goapps.RunningApp, **kw: Any) -> dict[str, Any]:
    return {"endpoint": f"http://127.0.0.1:{app.port()}", "service_name": "runtime-fixture", **kw}


__all__ = ["Harness", "Target", "aget", "goapp", "http_get", "target_of"]
