"""What starting and stopping a component needs from whoever runs it: its context, and a shutdown
bounded by a deadline. Shared by the pipeline process and a receiver's own process."""

from __future__ import annotations

import asyncio
import logging
import time

from gotel.component.contract import Component, Context, Kind
from gotel.component.ids import ComponentID
from gotel.pdata.batch import Signal
from gotel.telemetry.counters import Telemetry

log = logging.getLogger("gotel.service")


def make_context(tel: Telemetry, cid: ComponentID, kind: Kind, signal: Signal | None = None) -> Context:
    return Context(
        id=cid,
        kind=kind,
        logger=logging.getLogger(f"gotel.{kind.value}.{cid}"),
        telemetry=tel.component(cid, kind),
        signal=signal,
    )


async def shutdown_with_deadline(comp: Component, name: str, deadline: float) -> None:
    """Gives the component the seconds left until `deadline` (monotonic); never waits past it or raises."""
    remaining = max(0.1, deadline - time.monotonic())
    try:
        await asyncio.wait_for(comp.shutdown(remaining), remaining + 1.0)
    except TimeoutError:
        log.error("%s did not shut down within the deadline", name)
    except Exception:
        log.exception("%s failed to shut down", name)
