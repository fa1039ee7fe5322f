"""Notices selected processes starting and exiting: BPF tracepoints for speed, /proc rescans for safety.

`sched:sched_process_exec` and `sched:sched_process_exit` feed a tiny BPF program (bpf/procwatch.c)
whose ring buffer is drained at most every `poll_interval`, so a new Go process is seen within ~0.1 s;
while no process starts or exits, the watcher sleeps on the ring's fd instead of waking on a timer.
A full /proc rescan every `rescan_interval` catches anything the tracepoints cannot show (processes
that existed before start, a lost event, a port opened after exec). Without BPF (no privileges, pull
receivers run unprivileged) the rescan alone runs, every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gotel.discovery.procfs import ProcessInfo, all_pids, is_alive, process_info
from gotel.discovery.selector import DiscoveryConfig
from gotel.ebpf.wakeup import readable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessAdded:
    info: ProcessInfo

    @property
    def pid(self) -> int:
        return self.info.pid


@dataclass(frozen=True)
class ProcessRemoved:
    pid: int
    exe: str


ProcessEvent = ProcessAdded | ProcessRemoved


class _ProcEvent(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("pid", ctypes.c_uint32)]


_EXEC, _EXIT = 1, 2


def _is_self(info: ProcessInfo) -> bool:
    """gotel's own processes (the agent and its receiver processes) are never targets."""
    if info.pid == os.getpid():
        return True
    try:
        same_python = os.path.realpath(info.exe) == os.path.realpath(sys.executable)
    except OSError:
        same_python = False
    return same_python and any("gotel" in a for a in info.cmdline[:3])


class ProcessWatcher:
    """Async source of ProcessAdded/ProcessRemoved for the processes a DiscoveryConfig selects."""

    def __init__(
        self,
        selector: DiscoveryConfig,
        *,
        use_bpf: bool | None = None,
        poll_interval: float = 0.1,
        rescan_interval: float | None = None,
    ) -> None:
        self.selector = selector
        self.use_bpf = use_bpf
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.selected: dict[int, ProcessInfo] = {}
        self._queue: asyncio.Queue[ProcessEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._program: Any = None
        self._pending: list[tuple[int, int]] = []
        self.bpf_active = False

    # ---- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.use_bpf is not False:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._load_bpf)
                self.bpf_active = True
            except Exception as e:
                if self.use_bpf:
                    raise
                log.info("process discovery without BPF tracepoints (%s); rescanning /proc every second", e)
        if self.rescan_interval is None:
            self.rescan_interval = 5.0 if self.bpf_active else 1.0
        await self._rescan()
        self._task = asyncio.create_task(self._run(), name="gotel-process-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._program is not None:
            self._program.close()
            self._program = None

    async def __aenter__(self) -> ProcessWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def events(self) -> AsyncIterator[ProcessEvent]:
        await self.start()
        while True:
            yield await self._queue.get()

    async def next_event(self, timeout: float | None = None) -> ProcessEvent:
        await self.start()
        return await asyncio.wait_for(self._queue.get(), timeout)

    # ---- internals ---------------------------------------------------------------------------------

    def _load_bpf(self) -> None:
        from gotel.ebpf.program import BpfProgram

        prog = BpfProgram("procwatch.c")

        def on_event(addr: int, size: int) -> None:
            if size >= ctypes.sizeof(_ProcEvent):
                ev = _ProcEvent.from_address(addr)
                self._pending.append((ev.kind, ev.pid))

        prog.open_ring_buffer("proc_events", on_event)
        self._program = prog

    def _evaluate(self, pid: int) -> ProcessInfo | None:
        """Reads /proc (any thread): the process's facts when the selector picks it."""
        info = process_info(pid, with_ports=self.selector.needs_ports(), go_only=self.selector.go_only)
        if info is None or _is_self(info) or not is_alive(pid):
            return None
        return info if self.selector.selects(info) else None

    def _add(self, info: ProcessInfo) -> None:
        """Loop thread only: asyncio.Queue and `selected` are not thread-safe."""
        if info.pid not in self.selected:
            self.selected[info.pid] = info
            self._queue.put_nowait(ProcessAdded(info))

    def _consider(self, pid: int) -> None:
        if pid not in self.selected:
            info = self._evaluate(pid)
            if info is not None:
                self._add(info)

    def _remove(self, pid: int) -> None:
        info = self.selected.pop(pid, None)
        if info is not None:
            self._queue.put_nowait(ProcessRemoved(pid, info.exe))

    def _drain(self) -> int:
        """Handles the exec/exit events that came in; returns how many."""
        if self._program is None:
            return 0
        self._program.consume()
        pending, self._pending = self._pending, []
        for kind, pid in pending:
            if kind == _EXEC:
                known = self.selected.get(pid)
                if known is None:
                    self._consider(pid)
                    continue
                # exec replaced the program: a new target (or none) — unless a rescan already picked up
                # the post-exec program, when removing and re-adding would blind its tracers for a moment.
                info = self._evaluate(pid)
                if info is not None and (info.dev, info.ino, info.exe) == (known.dev, known.ino, known.exe):
                    continue
                self._remove(pid)
                if info is not None:
                    self._add(info)
            elif kind == _EXIT:
                self._remove(pid)
        return len(pending)

    def _scan(self) -> tuple[list[int], list[int]]:
        alive = set(all_pids())
        gone = [pid for pid in self.selected if pid not in alive or not is_alive(pid)]
        return sorted(alive), gone

    async def _rescan(self) -> None:
        loop = asyncio.get_running_loop()
        alive, gone = await loop.run_in_executor(None, self._scan)
        for pid in gone:
            self._remove(pid)
        # Reading /proc for every pid is cheap (the Go check is cached per binary) but not free: a worker
        # thread reads, the loop thread records and publishes.
        known = set(self.selected)
        found = await loop.run_in_executor(None, self._evaluate_many, [p for p in alive if p not in known])
        for info in found:
            self._add(info)

    def _evaluate_many(self, pids: list[int]) -> list[ProcessInfo]:
        out = []
        for pid in pids:
            try:
                info = self._evaluate(pid)
            except Exception:  # a process racing with us must never stop discovery
                log.debug("considering pid %d", pid, exc_info=True)
                continue
            if info is not None:
                out.append(info)
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.rescan_interval is not None
        next_rescan = loop.time() + self.rescan_interval
        events = 0
        while True:
            await asyncio.sleep(self.poll_interval if self.bpf_active else min(self.poll_interval * 10, 1.0))
            if self._program is not None and events == 0:
                # nothing came in the last drain: sleep on the ring until an exec or exit (or the rescan)
                await readable(self._program.ring_fd("proc_events"), next_rescan - loop.time())
            try:
                events = self._drain()
                if loop.time() >= next_rescan:
                    await self._rescan()
                    next_rescan = loop.time() + self.rescan_interval
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("process discovery pass failed; continuing")
