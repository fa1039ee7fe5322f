"""What every network exporter shares: a bounded sending queue (in bytes), retries with exponential
backoff and jitter that honour the server's Retry-After / RetryInfo, and counted drops.

An exporter module supplies a ``Sender`` (one attempt to deliver one batch, raising ExportError
with retryable/permanent and the backend's reason) and wraps it in ``QueuedExporter``. Config keys
are the collector's (``sending_queue``, ``retry_on_failure``, ``timeout``) so settings carry over.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import Field

from gotel.component import ComponentConfig, Context, Exporter
from gotel.config.types import Duration
from gotel.pdata import Batch, Signal


class ExportError(Exception):
    """One failed attempt. ``retryable`` decides between retry and drop; ``reason`` is counted."""

    def __init__(self, message: str, *, retryable: bool, reason: str = "error", retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason
        self.retry_after = retry_after


class RetryConfig(ComponentConfig):
    enabled: bool = True
    initial_interval: Duration = Field(5.0, gt=0, description="seconds before the first retry")
    randomization_factor: float = Field(0.5, ge=0, le=1)
    multiplier: float = Field(1.5, ge=1)
    max_interval: Duration = Field(30.0, gt=0, description="cap of one backoff, seconds")
    max_elapsed_time: Duration = Field(300.0, ge=0, description="give up after this many seconds; 0 = never")


class QueueConfig(ComponentConfig):
    enabled: bool = True
    num_consumers: int = Field(4, ge=1, le=256)
    sizer: Literal["bytes", "items", "requests"] = "bytes"
    queue_size: int = Field(64 << 20, ge=1, description="capacity, in units of the sizer (default 64 MiB)")
    block_on_overflow: bool = Field(
        False, description="wait for room instead of dropping when full (back-pressure to the receiver)"
    )


class Sender:
    """One delivery attempt. Subclasses implement send(); start/shutdown open and close connections."""

    async def start(self) -> None:
        return None

    async def send(self, batch: Batch) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        return None


def backoff_delays(cfg: RetryConfig, rng: random.Random | None = None) -> Callable[[], float]:
    """Returns a function giving the next jittered delay: initial * multiplier^n, capped."""
    r = rng or random.Random()
    state = {"cur": cfg.initial_interval}

    def nxt() -> float:
        cur = state["cur"]
        delta = cfg.randomization_factor * cur
        d = r.uniform(cur - delta, cur + delta)
        state["cur"] = min(cur * cfg.multiplier, cfg.max_interval)
        return max(0.0, min(d, cfg.max_interval))

    return nxt


class QueuedExporter(Exporter):
    """Queue -> N consumer tasks -> Sender, with retries. consume() never blocks on the network."""

    mutates = False

    def __init__(
        self,
        signal: Signal,
        ctx: Context,
        sender: Sender,
        queue: QueueConfig | None = None,
        retry: RetryConfig | None = None,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.signal = signal
        self.ctx = ctx
        self.sender = sender
        self.qcfg = queue or QueueConfig()
        self.rcfg = retry or RetryConfig()
        self.timeout = timeout
        self._sleep = sleep
        self._q: deque[tuple[Batch, int]] = deque()
        self._size = 0
        self._inflight = 0
        self._cond: asyncio.Condition | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_drop_log = 0.0
        self.log = ctx.logger

    # --- accounting -------------------------------------------------------------------------------

    def _units(self, batch: Batch) -> int:
        s = self.qcfg.sizer
        if s == "bytes":
            return batch.byte_size()
        if s == "items":
            return batch.item_count()
        return 1

    def _report_queue(self) -> None:
        self.ctx.telemetry.queue(self.signal, self._size, self.qcfg.queue_size)

    def _drop(self, batch: Batch, reason: str, detail: str) -> None:
        n = batch.item_count()
        self.ctx.telemetry.dropped(self.signal, n, reason)
        self.ctx.telemetry.send_failed(self.signal, n)
        now = time.monotonic()
        # A backend that rejects everything must not flood the log: one line a second at most.
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            self.log.warning("dropped %d %s (%s): %s", n, self.signal, reason, detail)

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._cond = asyncio.Condition()
        await self.sender.start()
        n = self.qcfg.num_consumers if self.qcfg.enabled else 1
        self._workers = [asyncio.create_task(self._worker(), name=f"{self.ctx.id}-{i}") for i in range(n)]
        self._report_queue()

    async def consume(self, batch: Batch) -> None:
        if batch.is_empty():
            return
        if not self.qcfg.enabled:
            await self._deliver(batch)
            return
        units = self._units(batch)
        if self._stopping:
            self._drop(batch, "shutdown", "exporter is shutting down")
            return
        assert self._cond is not None
        cap = self.qcfg.queue_size
        async with self._cond:
            if self._size + units > cap:
                if not self.qcfg.block_on_overflow or units > cap:
                    self._drop(batch, "queue_full", f"sending queue is full ({self._size}/{cap} {self.qcfg.sizer})")
                    return
                # Back-pressure: the caller (and through it the sender) waits until the workers make room.
                await self._cond.wait_for(lambda: self._stopping or self._size + units <= cap)
                if self._stopping:
                    self._drop(batch, "shutdown", "exporter is shutting down")
                    return
            self._q.append((batch, units))
            self._size += units
            self._report_queue()
            # notify_all: producers blocked on overflow wait on the same condition as the workers.
            self._cond.notify_all()

    async def _worker(self) -> None:
        assert self._cond is not None
        while True:
            async with self._cond:
                while not self._q:
                    if self._stopping:
                        return
                    await self._cond.wait()
                batch, units = self._q.popleft()
                self._inflight += 1
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                # Cancelled by shutdown() while sending or waiting to retry: lost, so counted.
                self._drop(batch, "shutdown", "not delivered before the shutdown deadline")
                raise
            finally:
                self._size -= units
                self._inflight -= 1
                self._report_queue()
                async with self._cond:
                    self._cond.notify_all()

    async def _deliver(self, batch: Batch) -> None:
        """Sends with retries; drops (and counts) on a permanent error or when retrying ran out."""
        nxt = backoff_delays(self.rcfg)
        started = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self.sender.send(batch), self.timeout)
                self.ctx.telemetry.sent(self.signal, batch.item_count())
                return
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                err = ExportError(f"no answer within {self.timeout}s", retryable=True, reason="timeout")
            except ExportError as e:
                err = e
            except Exception as e:  # a sender bug must not kill the worker
                err = ExportError(f"{type(e).__name__}: {e}", retryable=False, reason="internal_error")
            if not err.retryable:
                self._drop(batch, err.reason, str(err))
                return
            if not self.rcfg.enabled:
                self._drop(batch, err.reason, f"{err} (retry_on_failure disabled)")
                return
            delay = nxt()
            if err.retry_after is not None:
                delay = max(delay, err.retry_after)
            elapsed = time.monotonic() - started
            if self.rcfg.max_elapsed_time and elapsed + delay > self.rcfg.max_elapsed_time:
                self._drop(batch, err.reason, f"{err}; gave up after {elapsed:.1f}s of retries")
                return
            if self._stopping and self._deadline is not None and time.monotonic() + delay > self._deadline:
                self._drop(batch, "shutdown", f"{err}; shutdown deadline reached")
                return
            self.ctx.telemetry.retry(self.signal)
            self.log.info("%s: %s; retrying in %.2fs", self.ctx.id, err, delay)
            await self._sleep(delay)

    _deadline: float | None = None

    async def shutdown(self, deadline: float = 10.0) -> None:
        """Drains the queue for at most ``deadline`` seconds, then counts what is left as dropped."""
        self._stopping = True
        self._deadline = time.monotonic() + deadline
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()
        if self._workers:
            _done, pending = await asyncio.wait(self._workers, timeout=deadline)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        while self._q:
            batch, units = self._q.popleft()
            self._size -= units
            self._drop(batch, "shutdown", "not delivered before the shutdown deadline")
        self._workers = []
        self._report_queue()
        await self.sender.shutdown()
