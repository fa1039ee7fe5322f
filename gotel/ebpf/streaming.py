"""The life cycle shared by eBPF receivers that stream events from one ring buffer (go_ebpf, usdt).

A watcher task follows discovery; a drain task empties the ring buffer at most once per poll interval
while records flow (at once again after a burst, so the buffer does not fill) and, once a drain finds it
empty, sleeps on the buffer's fd until a record arrives or a flush or export is due (gotel.ebpf.wakeup:
an idle agent does not wake ten times a second); it hands spans/logs on every flush interval and
metrics on every export interval; shutdown stops both, drains what is left, sends it, then detaches.
Subclasses say what a drain, a flush and an export are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from gotel.component.contract import Consumer, Context, Receiver
from gotel.discovery.watcher import ProcessWatcher
from gotel.ebpf.program import BpfProgram, LostCounter
from gotel.ebpf.wakeup import readable
from gotel.pdata.batch import Batch, Signal
from gotel.receiverhelper.outcome import push

# records in one drain that mean a burst: drain again at once
BURST = 2048
# seconds between reads of the loss counters
COUNTS_INTERVAL = 1.0


class StreamingConfig(Protocol):
    """What the shared life cycle reads of a subclass's config (seconds)."""

    poll_interval: float
    flush_interval: float
    export_interval: float


C = TypeVar("C", bound=StreamingConfig)


class RingBufferReceiver(Receiver, Generic[C]):
    # set by subclasses (in __init__ / start()); C: the subclass's config
    cfg: C
    sinks: Mapping[Signal, Consumer]
    ctx: Context
    log: logging.Logger
    program: BpfProgram | None = None
    watcher: ProcessWatcher | None = None
    _lost: LostCounter | None = None
    _tasks: list[asyncio.Task[None]]
    ring: str | None = None  # the ring buffer map's name: slept on while empty (None: poll on the timer)

    # --- what subclasses provide --------------------------------------------------------------------

    def _drain_once(self) -> int:
        """Drains the ring buffer and handles what it held; returns the number of records."""
        raise NotImplementedError

    async def _watch(self) -> None:
        raise NotImplementedError

    async def _flush(self, final: bool = False) -> None:
        """Hands on spans and logs (all of them when final)."""

    async def _export(self) -> None:
        """Hands on metrics."""

    def _after_drain(self) -> None:
        """Loss counters: once a second and at shutdown."""
        if self._lost is not None:
            self._lost.update()

    def _detach(self) -> None:
        """Removes the probes (before the program is closed)."""

    def _ring_fd(self) -> int | None:
        return self.program.ring_fd(self.ring) if self.ring and self.program is not None else None

    def _holding(self) -> bool:
        """Whether records handled so far wait for a flush (an idle receiver holding none need not wake
        for flushes)."""
        return True

    # --- shared -------------------------------------------------------------------------------------

    def _start_tasks(self) -> None:
        name = str(self.ctx.id)
        self._tasks = [asyncio.create_task(self._watch(), name=f"{name}-watch"),
                       asyncio.create_task(self._drain_loop(), name=f"{name}-drain")]

    async def _push(self, signal: Signal, batch: Batch | None) -> None:
        if batch is not None:
            await push(self.sinks.get(signal), batch, self.ctx)

    async def _drain_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.cfg.flush_interval
        next_export = loop.time() + self.cfg.export_interval
        next_counts = loop.time()
        n = 0
        while True:
            await asyncio.sleep(0 if n >= BURST else self.cfg.poll_interval)
            fd = self._ring_fd() if n == 0 else None
            if fd is not None:
                due = min(next_export, next_flush if self._holding() else next_export)
                await readable(fd, due - loop.time())
            try:
                n = self._drain_once()
                now = loop.time()
                if now >= next_counts:  # loss counters are BPF map reads: once a second is enough
                    next_counts = now + COUNTS_INTERVAL
                    self._after_drain()
                if now >= next_flush:
                    next_flush = now + self.cfg.flush_interval
                    await self._flush()
                if now >= next_export:
                    next_export = now + self.cfg.export_interval
                    await self._export()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s: drain pass failed; continuing", self.ctx.id)

    async def shutdown(self, deadline: float = 10.0) -> None:
        for t in getattr(self, "_tasks", []):
            t.cancel()
        for t in getattr(self, "_tasks", []):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self.watcher is not None:
            await self.watcher.close()
        if self.program is not None:
            self._drain_once()
            self._after_drain()
            await self._flush(final=True)
            await self._export()
            self._detach()
            self.program.close()
            self.program = None
