"""Every receiver counts what it hands on the same way: accepted, or refused/dropped with the reason."""

from __future__ import annotations

from gotel.component.contract import Context, PermanentError, RefusedError
from gotel.pdata.batch import Batch, Signal, Traces
from gotel.receiverhelper.outcome import push
from tests.helpers.memsink import make_ctx
from tests.helpers.otlp_samples import sample


class Sink:
    mutates = False

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self.got.append(batch)


def value(ctx: Context, name: str, **labels: str) -> float:
    v = ctx.telemetry.t.registry.get_sample_value(name, {"component": str(ctx.id), "kind": "receiver", **labels})
    return v or 0.0


async def test_accepted_refused_rejected_and_no_pipeline() -> None:
    ctx = make_ctx("usdt")
    batch = sample(Signal.TRACES)
    n = batch.item_count()
    assert n > 0
    ok = Sink()
    assert await push(ok, batch, ctx) and ok.got == [batch]
    assert value(ctx, "gotel_receiver_accepted_items_total", signal="traces") == n
    assert not await push(Sink(RefusedError("memory limit")), batch, ctx)
    assert value(ctx, "gotel_dropped_items_total", signal="traces", reason="refused") == n
    assert not await push(Sink(PermanentError("bad data")), batch, ctx)
    assert value(ctx, "gotel_dropped_items_total", signal="traces", reason="rejected") == n
    assert value(ctx, "gotel_receiver_refused_items_total", signal="traces") == 2 * n
    assert not await push(None, batch, ctx)  # a signal no pipeline takes: nothing to count
    assert not await push(ok, Traces(), ctx)
    assert value(ctx, "gotel_receiver_accepted_items_total", signal="traces") == n
