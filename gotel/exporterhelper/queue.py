"""What every network exporter shares: a bounded sending queue (in bytes), retries with exponential
backoff and jitter that honour the server's Retry-After / RetryInfo, and counted drops.

An exporter module supplies a ``Sender`` (one attempt to deliver one batch, raising ExportError
with retryable/permanent and the backend's reason) and wraps it in ``QueuedExporter``. Config keys
are the collector's (``sending_queue``, ``retry_on_failure``, ``timeout``) so settings carry over.

``sending_queue.storage`` names a storage extension (``file_storage``): the queue then lives on
disk, a batch is written before consume() returns and deleted only once the backend accepted it
(or refused it for good), so a killed process resends at most what its consumers had in flight.

Shutdown cuts retry backoffs short, keeps sending until the deadline, and logs one summary line
per exporter (delivered, dropped by reason, kept on disk): drop lines are rate-limited and the
metrics endpoint is gone at exit, so that line is the only complete account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from pydantic import Field, field_validator

from gotel.component.contract import ComponentConfig, ComponentID, Context, Exporter, Kind
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal, batch_type


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
    storage: str | None = Field(
        None, description="id of a storage extension (file_storage[/name]) that keeps the queue on disk "
        "across restarts and kill -9; unset: in memory"
    )

    @field_validator("storage")
    @classmethod
    def _storage_id(cls, v: str | None) -> str | None:
        if v is not None:
            ComponentID.parse(v)  # "type[/name]", a clear error otherwise
        return v


class StorageClient(Protocol):
    """What a storage extension hands a component (the collector's storage.Client): a key-value store
    private to that component. Every call is durable when it returns (to the extension's fsync level)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def keys(self, prefix: str = "") -> list[str]: ...

    async def close(self) -> None: ...


class QueueCodec(Protocol):
    """How an exporter whose queue holds converted requests (not the signal's batches) stores them."""

    def encode(self, item: Any) -> bytes: ...

    def decode(self, raw: bytes, count: int) -> Any: ...


class StorageExtension(Protocol):
    def client(self, kind: Kind, cid: ComponentID, name: str) -> Awaitable[StorageClient]: ...


class StorageError(RuntimeError):
    """A storage extension cannot serve (directory missing, database locked or unreadable)."""


class StorageUnavailableError(StorageError):
    """sending_queue.storage names an extension that is not running in this process."""


def storage_client(ctx: Context, storage: str, name: str) -> Awaitable[StorageClient]:
    """The client of the storage extension `storage` for this component (looked up by id, as in the
    collector; the pipeline puts its running extensions in ctx.extras["extensions"])."""
    exts: dict[ComponentID, Any] = ctx.extras.get("extensions", {})
    sid = ComponentID.parse(storage)
    ext = exts.get(sid)
    if ext is None or not hasattr(ext, "client"):
        have = ", ".join(sorted(str(k) for k, v in exts.items() if hasattr(v, "client"))) or "none"
        raise StorageUnavailableError(
            f"{ctx.id}: sending_queue::storage: {storage} is not a running storage extension "
            f"(list it under extensions and service::extensions; running: {have})")
    client: Awaitable[StorageClient] = ext.client(ctx.kind, ctx.id, name)
    return client


class Request(Protocol):
    """What a sending queue carries: the signal's Batch, or a request an exporter converted it to
    (a Loki push, a remote-write shard's WriteRequest). Without a QueueCodec it must be a Batch to
    be stored."""

    def is_empty(self) -> bool: ...

    def item_count(self) -> int: ...

    def byte_size(self) -> int: ...


R = TypeVar("R", bound=Request)


class Sender(Generic[R]):
    """One delivery attempt. Subclasses implement send(); start/shutdown open and close connections."""

    async def start(self) -> None:
        return None

    async def send(self, batch: R) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        return None


# Longest wait between two attempts once shutdown started (the deadline bounds the whole drain).
STOPPING_RETRY_S = 0.5


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


class _KeptOnDisk(Exception):
    """The shutdown deadline came before delivery; the batch stays in storage."""


_ITEM = "q."  # storage keys of queued batches: q.<20-digit index>, in queue order
_HEAD = struct.Struct(">QQ")  # a stored batch: its units in the queue's sizer, its items, then its protobuf


class QueuedExporter(Exporter, Generic[R]):
    """Queue -> N consumer tasks -> Sender, with retries. consume() never blocks on the network.

    Typed by what the queue carries (R): the pipeline's Batch, or an exporter's converted request,
    which the exporter hands over with enqueue()."""

    mutates = False

    def __init__(
        self,
        signal: Signal,
        ctx: Context,
        sender: Sender[R],
        queue: QueueConfig | None = None,
        retry: RetryConfig | None = None,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        storable: bool = True,
        codec: QueueCodec | None = None,
    ) -> None:
        self.signal = signal
        self.ctx = ctx
        self.sender = sender
        self.qcfg = queue or QueueConfig()
        self.rcfg = retry or RetryConfig()
        self.timeout = timeout
        self._sleep = sleep
        # False when consume() gets converted requests that cannot be stored; a codec stores them
        self.storable = storable
        self.codec = codec
        # (batch, units, storage index). With storage the batch is also kept in memory (no read back, no
        # parse on the way out); None for what a previous run left on disk.
        self._q: deque[tuple[R | None, int, int]] = deque()
        self._size = 0
        self._inflight = 0
        self._cond: asyncio.Condition | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake = asyncio.Event()  # set at shutdown: cuts retry backoffs short
        self._last_drop_log = 0.0
        self._last_retry_log = 0.0
        self._store: StorageClient | None = None
        self._next_index = 0
        # this instance's own account, for the summary line at exit
        self._delivered = 0
        self._dropped: Counter[str] = Counter()
        self._recovered = 0
        # level of the exit summary when nothing was dropped (a receiver process's local hop: debug)
        self.clean_summary_level = logging.INFO
        self.log = ctx.logger

    # --- accounting -------------------------------------------------------------------------------

    def _units(self, batch: R) -> int:
        s = self.qcfg.sizer
        if s == "bytes":
            return batch.byte_size()
        if s == "items":
            return batch.item_count()
        return 1

    def _report_queue(self) -> None:
        self.ctx.telemetry.queue(self.signal, self._size, self.qcfg.queue_size)

    def _drop(self, batch: R, reason: str, detail: str) -> None:
        n = batch.item_count()
        self._dropped[reason] += n
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
        if self.qcfg.enabled and self.qcfg.storage:
            if not self.storable:
                raise StorageError(f"{self.ctx.id}: sending_queue::storage is not supported by this exporter "
                                   "(its queue holds converted requests); remove it to use the in-memory queue")
            self._store = await storage_client(self.ctx, self.qcfg.storage, str(self.signal))
            await self._recover()
        await self.sender.start()
        n = self.qcfg.num_consumers if self.qcfg.enabled else 1
        self._workers = [asyncio.create_task(self._worker(), name=f"{self.ctx.id}-{i}") for i in range(n)]
        self._report_queue()

    async def _recover(self) -> None:
        """Queues what a previous run left on disk (killed, or stopped at its deadline), oldest first."""
        assert self._store is not None
        keys = sorted(k for k in await self._store.keys(_ITEM))
        for k in keys:
            raw = await self._store.get(k)
            idx = int(k[len(_ITEM):])
            self._next_index = max(self._next_index, idx + 1)
            if raw is None or len(raw) < _HEAD.size:
                await self._store.delete(k)
                continue
            units = _HEAD.unpack_from(raw)[0]
            self._q.append((None, units, idx))  # read again when its turn comes: memory stays bounded
            self._size += units
        self._recovered = len(self._q)
        if keys:
            self.log.info("%s: %d %s batches (%d %s) recovered from %s", self.ctx.id, len(self._q), self.signal,
                          self._size, self.qcfg.sizer, self.qcfg.storage)
        self._report_queue()

    async def consume(self, batch: Batch) -> None:
        """The pipeline's entry: for a queue of the signal's batches (R is Batch)."""
        await self.enqueue(cast(R, batch))

    async def enqueue(self, batch: R) -> None:
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
            self._size += units  # room reserved while the batch is written to storage
            idx = self._next_index
            self._next_index += 1
        if self._store is not None:
            try:
                # durable before consume() returns: what the receiver acknowledged survives a kill
                # to_bytes() caches the wire bytes: the sender does not serialize again
                raw = self.codec.encode(batch) if self.codec is not None else cast(Batch, batch).to_bytes()
                await self._store.set(f"{_ITEM}{idx:020d}", _HEAD.pack(units, batch.item_count()) + raw)
            except Exception as e:
                async with self._cond:
                    self._size -= units
                self._drop(batch, "storage_error", f"cannot write to {self.qcfg.storage}: {e}")
                return
        async with self._cond:
            self._q.append((batch, units, idx))
            self._report_queue()
            # notify_all: producers blocked on overflow wait on the same condition as the workers.
            self._cond.notify_all()

    def waiting_tail(self) -> R | None:
        """The newest batch still in the queue, not taken by a consumer yet. An exporter with mutable
        batches may add to it instead of queueing one more request while its sender is busy
        (remote-write does; with the "requests" sizer the queue's accounting stays right). None
        with a persistent queue: the stored bytes are what will be sent."""
        if self._store is not None:
            return None
        return self._q[-1][0] if self._q else None

    async def _worker(self) -> None:
        assert self._cond is not None
        while True:
            async with self._cond:
                while not self._q:
                    if self._stopping:
                        return
                    await self._cond.wait()
                held, units, idx = self._q.popleft()
                self._inflight += 1
            batch = held
            try:
                if batch is None:
                    batch = await self._load(idx)
                if batch is not None:
                    await self._deliver(batch)
                if self._store is not None:
                    # acknowledged only now: delivered, or dropped for a counted reason
                    await self._store.delete(f"{_ITEM}{idx:020d}")
            except asyncio.CancelledError:
                # Cancelled by shutdown() while sending or waiting to retry: lost, so counted
                # (with storage it stays on disk and is sent after the next start).
                if batch is not None and self._store is None:
                    self._drop(batch, "shutdown", "not delivered before the shutdown deadline")
                raise
            except _KeptOnDisk:
                pass
            except Exception as e:  # storage failed: the batch stays on disk, sent again after a restart
                self.log.error("%s: sending queue storage %s failed: %s", self.ctx.id, self.qcfg.storage, e)
            finally:
                self._size -= units
                self._inflight -= 1
                self._report_queue()
                async with self._cond:
                    self._cond.notify_all()

    async def _load(self, idx: int) -> R | None:
        assert self._store is not None
        raw = await self._store.get(f"{_ITEM}{idx:020d}")
        if raw is None:
            return None
        try:
            _units, count = _HEAD.unpack_from(raw)
            if self.codec is not None:
                out: R = self.codec.decode(raw[_HEAD.size:], count)
                return out
            return cast(R, batch_type(self.signal)(raw=raw[_HEAD.size:], count=count))
        except Exception as e:
            self.ctx.telemetry.dropped(self.signal, 1, "storage_corrupt")
            self._dropped["storage_corrupt"] += 1
            self.log.error("%s: stored batch %d in %s is unreadable (%s): dropped", self.ctx.id, idx,
                           self.qcfg.storage, e)
            return None

    async def _deliver(self, batch: R) -> None:
        """Sends with retries; drops (and counts) on a permanent error or when retrying ran out."""
        nxt = backoff_delays(self.rcfg)
        started = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self.sender.send(batch), self.timeout)
                n = batch.item_count()
                self._delivered += n
                self.ctx.telemetry.sent(self.signal, n)
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
            if self._stopping:
                # shutting down: no long backoff, keep trying until the deadline
                delay = min(delay, STOPPING_RETRY_S)
            elapsed = time.monotonic() - started
            if self.rcfg.max_elapsed_time and elapsed + delay > self.rcfg.max_elapsed_time:
                self._drop(batch, err.reason, f"{err}; gave up after {elapsed:.1f}s of retries")
                return
            if self._stopping and self._deadline is not None and time.monotonic() + delay > self._deadline:
                if self._store is not None:
                    raise _KeptOnDisk  # not lost: the next start sends it
                self._drop(batch, "shutdown", f"{err}; shutdown deadline reached")
                return
            self.ctx.telemetry.retry(self.signal)
            now = time.monotonic()
            # Every queue consumer retries the same outage: one line a second tells it, gotel_exporter_retries counts it.
            if now - self._last_retry_log >= 1.0:
                self._last_retry_log = now
                self.log.info("%s: %s; retrying in %.2fs", self.ctx.id, err, delay)
            await self._backoff(delay)

    async def _backoff(self, delay: float) -> None:
        """Sleeps `delay`, or less when shutdown starts meanwhile."""
        if self._stopping:
            await self._sleep(delay)
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    _deadline: float | None = None

    async def shutdown(self, deadline: float = 10.0) -> None:
        """Drains the queue for at most ``deadline`` seconds, then counts what is left as dropped."""
        self._stopping = True
        self._deadline = time.monotonic() + deadline
        self._wake.set()
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
        kept = 0
        while self._q:
            batch, units, _idx = self._q.popleft()
            self._size -= units
            if self._store is None:
                assert batch is not None
                self._drop(batch, "shutdown", "not delivered before the shutdown deadline")
            else:
                kept += 1  # on disk: sent after the next start
        self._workers = []
        self._report_queue()
        try:
            await self.sender.shutdown()
        finally:
            if self._store is not None:
                try:
                    kept = len(await self._store.keys(_ITEM))
                except Exception as e:
                    self.log.error("%s: cannot read %s at shutdown: %s", self.ctx.id, self.qcfg.storage, e)
                with contextlib.suppress(Exception):
                    await self._store.close()
                self._store = None
            self._summary(kept)

    def _summary(self, kept: int) -> None:
        """One line per exporter at exit, never rate-limited: the complete account of this run."""
        dropped = sum(self._dropped.values())
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self._dropped.items()))
        line = f"{self.ctx.id} ({self.signal}): delivered {self._delivered}, dropped {dropped}"
        if reasons:
            line += f" ({reasons})"
        if self._store is not None or self.qcfg.storage:
            line += f", {kept} batches kept in {self.qcfg.storage} for the next start"
            if self._recovered:
                line += f" ({self._recovered} batches were recovered at start)"
        self.log.log(logging.WARNING if dropped else self.clean_summary_level, "exporter summary: %s", line)
