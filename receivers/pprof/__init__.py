"""``pprof`` receiver: pulls Go pprof endpoints into OTLP profiles, metrics and diagnostics logs."""

from __future__ import annotations

from collections.abc import Mapping

from gotel.component.contract import Consumer, Context, ReceiverFactory
from gotel.pdata.batch import Signal

from .config import Config
from .receiver import PprofReceiver


def _create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> PprofReceiver:
    return PprofReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="pprof",
    config=Config,
    signals=frozenset({Signal.PROFILES, Signal.METRICS, Signal.LOGS}),
    description="Scrapes Go net/http/pprof endpoints: profiles (with deltas), goroutine leak and lock-contention findings, "
                "goroutine groups, allocation sites and (profiles.memstats) runtime.MemStats as metrics, scrape health",
    create=_create,
    shares_process=True,
)

__all__ = ["Config", "PprofReceiver", "factory"]
