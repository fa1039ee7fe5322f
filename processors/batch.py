"""`batch` processor: the collector's size/timeout batching, merging requests at the byte level.

Serialized OTLP export requests concatenate into the merged request (their one field is repeated),
so batching costs a join of byte strings and a count per incoming request, never per-item work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from pydantic import Field, model_validator

from gotel.component.contract import (
    ALL_SIGNALS,
    ComponentConfig,
    Consumer,
    ConsumerError,
    Context,
    Processor,
    ProcessorFactory,
    RefusedError,
)
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal


class Config(ComponentConfig):
    send_batch_size: int = Field(8192, ge=0, description="items that trigger a send regardless of the timeout")
    send_batch_max_size: int = Field(0, ge=0, description="upper bound of one batch; larger ones are split; 0 = none")
    timeout: Duration = Field(0.2, ge=0, description="send whatever is pending after this long; 0 = no buffering")

    @model_validator(mode="after")
    def _sizes(self) -> Config:
        if self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            raise ValueError("send_batch_max_size must be 0 or at least send_batch_size")
        return self


class BatchProcessor(Processor):
    # Inputs are only read (their bytes are joined), so a fan-out need not copy for us.
    mutates = False

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.signal = signal
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        self._pending: list[Batch] = []
        self._count = 0
        self._deadline = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopped = False
        self._last_log = 0.0
        self._size = cfg.send_batch_size if cfg.send_batch_size > 0 else 1
        # Profiles carry a per-request dictionary: they are passed through, never merged.
        self._passthrough = signal == Signal.PROFILES

    async def start(self) -> None:
        if self.cfg.timeout > 0 and not self._passthrough:
            self._wake = asyncio.Event()
            self._timer = asyncio.create_task(self._run_timer(), name=f"{self.ctx.id}-timer")

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        if n == 0:
            return
        if self._passthrough or self._stopped:
            self.ctx.telemetry.processed(self.signal, n, n)
            await self.next.consume(batch)
            return
        self.ctx.telemetry.processed(self.signal, n, 0)
        self._pending.append(batch)
        if not self._count:
            self._deadline = time.monotonic() + self.cfg.timeout
            if self._wake is not None:
                self._wake.set()
        self._count += n
        if self._count >= self._size or self.cfg.timeout == 0:
            await self._flush(ready_only=True)

    def _take(self) -> tuple[Batch, int] | None:
        if not self._pending:
            return None
        batches, count = self._pending, self._count
        self._pending, self._count = [], 0
        return type(batches[0]).concat(batches), count

    async def _flush(self, ready_only: bool) -> None:
        """Sends pending data: with ready_only, full batches only (a remainder keeps waiting)."""
        taken = self._take()
        if taken is None:
            return
        merged, count = taken
        mx = self.cfg.send_batch_max_size
        parts = merged.split(mx) if mx and count > mx else [merged]
        if ready_only and self.cfg.timeout > 0 and len(parts) > 1:
            last = parts[-1]
            ln = last.item_count()
            if ln < self._size:
                parts = parts[:-1]
                self._pending, self._count = [last], ln
                self._deadline = time.monotonic() + self.cfg.timeout
        for part in parts:
            await self._send(part)

    async def _send(self, part: Batch) -> None:
        n = part.item_count()
        self.ctx.telemetry.processed(self.signal, 0, n)
        try:
            await self.next.consume(part)
        except ConsumerError as e:
            # The items were accepted from several callers: the loss is ours to count.
            reason = "refused" if isinstance(e, RefusedError) else "downstream_error"
            self.ctx.telemetry.dropped(self.signal, n, reason)
            now = time.monotonic()
            if now - self._last_log >= 1.0:
                self._last_log = now
                self.ctx.logger.warning("%s: dropped %d %s: %s", self.ctx.id, n, self.signal, e)

    async def _run_timer(self) -> None:
        assert self._wake is not None
        while True:
            if not self._count:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                await self._flush(ready_only=False)
            except Exception:
                self.ctx.logger.exception("%s: flush failed", self.ctx.id)

    async def shutdown(self, deadline: float = 10.0) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self._flush(ready_only=False)


def create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> BatchProcessor:
    return BatchProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="batch",
    config=Config,
    signals=ALL_SIGNALS,
    description="Groups data into batches by size and time before export (the collector's batch processor).",
    create=create,
)
