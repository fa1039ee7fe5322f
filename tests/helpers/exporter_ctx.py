"""A component Context for exporter tests, with its own telemetry registry so counts can be read back."""

from __future__ import annotations

import logging

from gotel.component.contract import ComponentID, Context, Kind
from gotel.telemetry.counters import Telemetry


def make_ctx(cid: str, signal: str | None = None) -> Context:
    t = Telemetry()
    from gotel.pdata.batch import Signal

    return Context(ComponentID.parse(cid), Kind.EXPORTER, logging.getLogger(f"test.{cid}"),
                   t.component(cid, Kind.EXPORTER), Signal(signal) if signal else None)


def metric_value(ctx: Context, name: str, **labels: str) -> float:
    """Reads one of the component's self-telemetry values (0 when never set)."""
    reg = ctx.telemetry.t.registry
    want = {"component": ctx.telemetry.cid, **labels}
    total = 0.0
    for fam in reg.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in want.items()):
                total += s.value
    return total
