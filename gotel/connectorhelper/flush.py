"""What every metrics-deriving connector does at a flush: hand its request on, count what was refused."""

from __future__ import annotations

import asyncio

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from gotel.component.contract import Connector, Consumer, ConsumerError, Context
from gotel.pdata.batch import Metrics, Signal


async def send_metrics(req: ExportMetricsServiceRequest, nxt: Consumer, ctx: Context, what: str) -> None:
    """A refused flush is dropped (the series stay aggregated for the next one) and counted once."""
    batch = Metrics(req)
    try:
        await nxt.consume(batch)
    except ConsumerError as e:
        n = batch.item_count()
        ctx.telemetry.dropped(Signal.METRICS, n, "refused downstream")
        ctx.logger.warning("%s flush of %d points not accepted: %s", what, n, e)


class MetricsConnector(Connector):
    """A connector that aggregates into series under `_lock` and hands them on as one metrics request
    at each flush. Subclasses build the request (None when there is nothing to send)."""

    what = "metrics"  # how log lines name this connector's flush
    next: Consumer
    ctx: Context
    _lock: asyncio.Lock

    def build(self) -> ExportMetricsServiceRequest | None:
        raise NotImplementedError

    async def flush(self) -> None:
        async with self._lock:
            req = self.build()
            if req is None:
                return
            await send_metrics(req, self.next, self.ctx, self.what)
