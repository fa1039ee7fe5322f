"""An in-memory consumer and a component context, for running one receiver in-process in tests."""

from __future__ import annotations

import logging
from typing import Any

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Batch, Signal
from gotel.telemetry.counters import Telemetry


class MemorySink:
    """Records every batch it is given; read-only consumer."""

    mutates = False

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)

    def clear(self) -> None:
        self.batches.clear()

    def metrics(self) -> list[Any]:
        return [m for b in self.batches for rm in b.peek().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]

    def points(self, name: str) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
        """(resource attrs, point attrs, point) for every data point of metric `name`, in push order."""
        from gotel.pdata.batch import attr_dict

        out = []
        for b in self.batches:
            for rm in b.peek().resource_metrics:
                res = attr_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != name:
                            continue
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            out.append((res, attr_dict(p.attributes), p))
        return out

    def log_records(self) -> list[tuple[dict[str, Any], Any]]:
        from gotel.pdata.batch import attr_dict

        return [
            (attr_dict(rl.resource.attributes), r)
            for b in self.batches
            for rl in b.peek().resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
        ]


def make_ctx(type_: str, name: str = "") -> Context:
    cid = ComponentID(type_, name)
    return Context(
        id=cid,
        kind=Kind.RECEIVER,
        logger=logging.getLogger(f"gotel.test.{cid}"),
        telemetry=Telemetry().component(cid, Kind.RECEIVER),
    )


def sinks(*signals: Signal) -> dict[Signal, MemorySink]:
    return {s: MemorySink() for s in signals}
