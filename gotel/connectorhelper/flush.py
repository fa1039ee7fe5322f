"""What every metrics-deriving connector does at a flush: hand its request on, count what was refused."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from gotel.component.contract import Consumer, ConsumerError, Context
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
