"""The pipeline's internal entry point: routes OTLP requests from receiver processes by their id.

Receiver processes all push to one internal `otlp` receiver over a unix socket, each request
carrying gRPC metadata ``gotel-receiver: <id>``. The otlp receiver exposes the request's metadata
in gotel.component.contract.REQUEST_METADATA while it calls consume(); the router reads it and hands the
batch to that receiver's consumers for the signal. Requests with ``gotel-telemetry`` are the
process's own metrics and go to the telemetry merger, not to pipelines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gotel.component.contract import RECEIVER_ID_HEADER, REQUEST_METADATA, Consumer, PermanentError
from gotel.pdata.batch import Batch, Metrics, Signal
from gotel.telemetry.selfmetrics import TELEMETRY_HEADER


class Router:
    mutates = False

    def __init__(
        self,
        signal: Signal,
        routes: dict[str, Consumer],
        on_telemetry: Callable[[str, Metrics], None] | None = None,
    ) -> None:
        self.signal = signal
        self.routes = routes
        self.on_telemetry = on_telemetry
        # items each receiver process delivered (accepted downstream): the supervisor's side of the
        # hop's account, to count what a dying process still had in flight
        self.received: Counter[str] = Counter()

    async def consume(self, batch: Batch) -> None:
        md = REQUEST_METADATA.get()
        rid = md.get(RECEIVER_ID_HEADER, "")
        if md.get(TELEMETRY_HEADER):
            if self.on_telemetry is not None and isinstance(batch, Metrics):
                self.on_telemetry(rid, batch)
            return
        c = self.routes.get(rid)
        if c is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise PermanentError(f"no {self.signal} pipeline takes data from receiver {rid!r} (known: {known})")
        n = batch.item_count()
        await c.consume(batch)
        self.received[rid] += n
