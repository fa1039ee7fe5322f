"""A receiver that collects on a timer and pushes what it built into its sinks.

Collection runs in a worker thread (reading /proc or BPF maps blocks), pushing runs on the event loop.
A refused batch is counted as dropped with its reason; a failing collection is logged and retried at
the next tick, never fatal: the figures are cumulative, so the next push carries what was missed.
At shutdown the timer stops, then one last collection (and drain) pushes the partial interval:
without it everything since the last tick (up to a whole interval) would be lost uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from gotel.component.contract import Consumer, Context, Receiver
from gotel.discovery import DiscoveryConfig, ProcessInfo, process_info
from gotel.discovery.procfs import all_pids, is_alive
from gotel.pdata.batch import Batch, Signal
from gotel.receiverhelper.outcome import push
from gotel.telemetry.logs import PerBinary, exception_line


class PeriodicReceiver(Receiver):
    interval_s: float = 10.0

    def __init__(self, sinks: Mapping[Signal, Consumer], ctx: Context, interval_s: float) -> None:
        self.sinks = sinks
        self.ctx = ctx
        self.log = ctx.logger
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._started = False  # setup() succeeded: only then is there anything to flush

    # subclasses implement these
    def setup(self) -> None:
        """Blocking set-up (compile and attach BPF, open files); runs in a thread at start()."""

    def collect(self) -> list[Batch]:
        """Blocking: one collection; returns the batches to push (any signals)."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Blocking clean-up (detach BPF); must be safe after a failed or missing setup()."""

    def drain(self) -> list[Batch]:
        """Blocking: drain event buffers; returns batches to push at once (e.g. log records)."""
        return []

    async def start(self) -> None:
        await asyncio.to_thread(self.setup)
        self._started = True
        self._task = asyncio.create_task(self._run(), name=f"{self.ctx.id}-collect")

    async def collect_now(self) -> None:
        """One collection and push, outside the timer (tests, and the final flush at shutdown)."""
        batches = await asyncio.to_thread(self.collect)
        await self.push(batches)

    async def push(self, batches: list[Batch]) -> None:
        for b in batches:
            await push(self.sinks.get(b.signal), b, self.ctx)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            if self._stop.is_set():
                break
            try:
                await self.collect_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s: collection failed; retrying at the next interval", self.ctx.id)

    async def _stop_timer(self) -> None:
        """Stops the collection timer, letting a collection in progress finish (cancelling it would
        lose the batch it is pushing); the caller's deadline bounds the wait."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _final_flush(self) -> None:
        """The last events and partial interval, pushed before teardown. Failures are logged, never fatal."""
        if not self._started:
            return
        self._started = False
        try:
            await self.push(await asyncio.to_thread(self.drain))
            await self.collect_now()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s: final collection at shutdown failed", self.ctx.id)

    async def shutdown(self, deadline: float = 10.0) -> None:
        try:
            await self._stop_timer()
            await self._final_flush()
        finally:
            if self._task is not None:  # cancelled by the caller's deadline while waiting
                self._task.cancel()
                self._task = None
            await asyncio.to_thread(self.teardown)


def select_now(discovery: DiscoveryConfig) -> dict[int, ProcessInfo]:
    """One synchronous /proc scan with the discovery selectors (the agent's own pid never matches)."""
    me = os.getpid()
    out: dict[int, ProcessInfo] = {}
    for pid in all_pids():
        if pid == me:
            continue
        info = process_info(pid, with_ports=discovery.needs_ports())
        if info is not None and discovery.selects(info):
            out[pid] = info
    return out


class TargetedReceiver(PeriodicReceiver):
    """A periodic receiver that follows the processes its discovery block selects (eBPF receivers).

    Subclasses get on_added(info) / on_removed(pid) from the process watcher (exec/exit tracepoints
    and a /proc rescan), and drain() every `drain_interval_s` for ring buffers.
    """

    drain_interval_s: float = 0.25

    def __init__(
        self, sinks: Mapping[Signal, Consumer], ctx: Context, interval_s: float, discovery: DiscoveryConfig
    ) -> None:
        super().__init__(sinks, ctx, interval_s)
        self.discovery = discovery
        self.targets: dict[int, ProcessInfo] = {}
        self.prog: Any = None  # the BpfProgram setup() loads; teardown() closes it
        self._start_ns = time.time_ns()  # start time of the cumulative sums (setup() re-stamps it)
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        # on_added/on_removed run in worker threads that a cancelled task does not stop: teardown
        # waits for the one in flight instead of detaching under its feet
        self._apply_lock = threading.Lock()
        self.per_binary = PerBinary(self.log, str(ctx.id))

    def on_added(self, info: ProcessInfo) -> None:
        """Blocking: start tracing a process."""

    def on_removed(self, pid: int) -> None:
        """Blocking: stop tracing a process (it exited or no longer matches)."""

    def teardown(self) -> None:
        if self.prog is not None:
            self.prog.close()
            self.prog = None

    def _resource(self, pid: int) -> dict[str, Any]:
        """Resource attributes of a traced process: what discovery learnt about it when it was selected."""
        info = self.targets.get(pid)
        res: dict[str, Any] = {"process.pid": pid}
        if info is not None:
            res["process.executable.name"] = info.exe_name
            res["service.name"] = info.service_name
            if info.container_id:
                res["container.id"] = info.container_id
        return res

    async def start(self) -> None:
        from gotel.discovery import ProcessWatcher

        await asyncio.to_thread(self.setup)
        self._started = True
        self._watcher = ProcessWatcher(self.discovery)
        await self._watcher.start()
        # the watcher's initial scan queued an event per selected process: apply them before returning
        await self._apply_pending()
        self._watch_task = asyncio.create_task(self._watch(), name=f"{self.ctx.id}-watch")
        self._drain_task = asyncio.create_task(self._drain_loop(), name=f"{self.ctx.id}-drain")
        self._task = asyncio.create_task(self._run(), name=f"{self.ctx.id}-collect")

    async def _apply(self, ev: Any) -> None:
        from gotel.discovery import ProcessAdded

        if isinstance(ev, ProcessAdded):
            if ev.info.pid in self.targets:
                return  # already applied from the initial scan
            self.targets[ev.info.pid] = ev.info
            try:
                await asyncio.to_thread(self._locked, self.on_added, ev.info)
            except Exception as e:
                if not is_alive(ev.info.pid):  # a short-lived process (a `go build` step): nothing wrong
                    self.log.debug("%s: pid %d exited before it was traced: %s", self.ctx.id, ev.info.pid, e)
                else:
                    self.per_binary.note(logging.ERROR, ev.info.exe, ev.info.pid, f"cannot trace: {exception_line(e)}")
        else:
            self.targets.pop(ev.pid, None)
            try:
                await asyncio.to_thread(self._locked, self.on_removed, ev.pid)
            except Exception:
                self.log.exception("%s: removing pid %d", self.ctx.id, ev.pid)

    def _locked(self, fn: Any, *args: Any) -> None:
        with self._apply_lock:
            fn(*args)

    async def _apply_pending(self) -> None:
        from gotel.discovery import ProcessAdded

        for info in list(self._watcher.selected.values()):
            await self._apply(ProcessAdded(info))

    async def _watch(self) -> None:
        while True:
            ev = await self._watcher.next_event()
            await self._apply(ev)

    async def _drain_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.drain_interval_s)
            if self._stop.is_set():
                return  # the final drain runs in shutdown(), after the collection timer stopped
            try:
                await self.push(await asyncio.to_thread(self.drain))
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s: draining events failed", self.ctx.id)

    async def shutdown(self, deadline: float = 10.0) -> None:
        self._stop.set()
        try:
            if self._watch_task is not None:
                self._watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._watch_task
            # the drain loop and the timer end at their next wake-up: a push in progress completes
            if self._drain_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._drain_task
            await self._stop_timer()
            await self._final_flush()
        finally:
            for t in (self._watch_task, self._drain_task, self._task):
                if t is not None:
                    t.cancel()
            self._watch_task = self._drain_task = self._task = None
            if self._watcher is not None:
                await self._watcher.close()
                self._watcher = None
            await asyncio.to_thread(self._locked, self.teardown)
