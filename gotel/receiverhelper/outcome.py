"""What every receiver does after building a batch: hand it on and count the outcome.

One place, so that every receiver counts accepted, refused and dropped items the same way (reason
`refused` for back-pressure, `rejected` for a permanent refusal) and logs a refusal at most once a second.
"""

from __future__ import annotations

import time

from gotel.component.contract import Consumer, ConsumerError, Context
from gotel.pdata.batch import Batch

_last_log: dict[str, float] = {}


async def push(sink: Consumer | None, batch: Batch, ctx: Context) -> bool:
    """Pushes one batch; True when it was accepted. A signal no pipeline uses (no sink) is not an error."""
    n = batch.item_count()
    if sink is None or n == 0:
        return False
    signal = batch.signal
    try:
        await sink.consume(batch)
    except ConsumerError as e:
        ctx.telemetry.refused(signal, n)
        ctx.telemetry.dropped(signal, n, "rejected" if e.permanent else "refused")
        key = str(ctx.id)
        now = time.monotonic()
        if now - _last_log.get(key, 0.0) >= 1.0:
            _last_log[key] = now
            ctx.logger.warning("%s: %d %s not accepted downstream: %s", ctx.id, n, signal, e)
        return False
    ctx.telemetry.accepted(signal, n)
    return True
