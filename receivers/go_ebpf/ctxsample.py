"""Sampled context tracking (`context_mode: sampled`): the creation probe in short windows, cancel read from memory.

Every uprobe hit is a trap (~1.2-3 us on a VM, paid before any BPF runs), and exact tracking takes two
per context: no BPF can make that cheaper, only fewer traps can. So the probe at propagateCancel is
attached for `window` seconds every `period` (a duty cycle of window/period) and no probe is put on the
cancel closures at all: a tracked context's own memory says whether it ended (cancelCtx.err is set by
its first cancel, its deadline, or its parent's end), read here from /proc/PID/mem. The BPF side counts
only contexts created inside the window's [open, close) (set after the attach returned, so a window is
exactly as long as configured) and tracks one in `every` of them, `every` chosen from the last window's
rate so that at most `budget` contexts per process and window are tracked. Counts are estimates: each
tracked context stands for `every` of its window, and each window for period/window of time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


class Memory:
    """Reads a traced process's memory (/proc/PID/mem: the agent runs as root, with the BPF rights)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None

    def read(self, addr: int, n: int) -> bytes | None:
        """n bytes at addr, or None (process gone, address unmapped)."""
        try:
            if self.fd is None:
                self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            got = os.pread(self.fd, n, addr)
        except OSError:
            return None
        return got if len(got) == n else None

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


@dataclass
class _Proc:
    exe: str
    vaddr: int  # the creation probe's address in exe
    fn_name: str
    added: float  # monotonic seconds
    every: int = 1
    windows: int = 0  # windows opened and closed for this process
    last_close: float = 0.0


class Windows:
    """The duty cycle: attach the creation probe of every sampled process for `window` seconds each
    `period` (on absolute times, so the period does not drift by the attach/detach time), then call
    `closed()` (the scan that reads the window's contexts while they are fresh)."""

    def __init__(self, program: Any, *, window: float, period: float, budget: int,
                 run: Callable[[Callable[[], Any]], Future[Any]], closed: Callable[[], None], log: Any) -> None:
        """run: how to attach and detach (the receiver's attach thread: BCC's probe table is not thread-safe)."""
        self.program, self.window, self.period, self.budget = program, window, period, budget
        self.run, self.closed, self.log = run, closed, log
        self.table = program.table("ctx_windows")
        self.procs: dict[int, _Proc] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.opened = 0  # windows opened, all processes (self-telemetry, tests)

    def scale(self, pid: int) -> float:
        """Time each window of pid stands for: the time from its addition to its last window's end over
        the windows' total (period/window when every window opened on time; more when some came late under
        load). 0 before its first window closed."""
        p = self.procs.get(pid)
        if p is None or not p.windows:
            return 0.0
        return (p.last_close - p.added) / (p.windows * self.window)

    def add(self, pid: int, exe: str, vaddr: int, fn_name: str) -> None:
        with self._lock:
            self.procs[pid] = _Proc(exe, vaddr, fn_name, time.monotonic())
            # a closed window until the first opens: the BPF side then counts nothing for pid in exact terms
            self.table[ctypes.c_uint32(pid)] = self.table.Leaf(0, 0, 0, 1)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="go_ebpf-ctxwindows", daemon=True)
            self._thread.start()

    def remove(self, pid: int) -> None:
        """The caller detaches pid's probes (a window's probe is under the key ("ctxwindow", pid))."""
        with self._lock:
            self.procs.pop(pid, None)
        with contextlib.suppress(KeyError):
            del self.table[ctypes.c_uint32(pid)]

    def _loop(self) -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            if self._stop.wait(max(0.0, t0 + k * self.period - self.window - time.monotonic())):
                return
            try:
                t = time.monotonic()
                opened = self.run(self._open).result()
                self.log.debug("go_ebpf: context window %d opened for %s in %.3fs", k, opened, time.monotonic() - t)
                stop = self._stop.wait(self.window)
                t = time.monotonic()
                self.run(functools.partial(self._close, opened)).result()
                if stop:
                    return
                t1 = time.monotonic()
                self.closed()
                self.log.debug("go_ebpf: context window %d closed in %.3fs, scanned in %.3fs", k, t1 - t,
                               time.monotonic() - t1)
            except Exception:  # a window lost is a sample lost, never the receiver
                self.log.exception("go_ebpf: context sampling window")

    def _open(self) -> list[int]:
        with self._lock:
            procs = dict(self.procs)
        opened = []
        for pid, p in procs.items():
            if not os.path.exists(f"/proc/{pid}"):
                continue  # exited: its removal is on its way
            try:
                self.program.attach_uprobe(p.exe, p.vaddr, p.fn_name, ("ctxwindow", pid), pid=pid)
            except Exception as e:  # the process is gone, most likely: its removal follows
                self.log.debug("go_ebpf: context window for pid %d: %s", pid, e)
                self.program.detach_binary(("ctxwindow", pid))
                continue
            now = time.monotonic_ns()  # the probe is in: the window opens now, and lasts exactly `window`
            self.table[ctypes.c_uint32(pid)] = self.table.Leaf(now, now + int(self.window * 1e9), 0, p.every)
            self.opened += 1
            opened.append(pid)
        return opened

    def _close(self, opened: list[int]) -> None:
        # BPF stopped counting at close_ns; the probes come off together (one grace period for all),
        # waited for on a thread of their own, so that a slow one does not delay the next window
        self.program.detach_many([("ctxwindow", pid) for pid in opened], wait=False)
        for pid in opened:
            with self._lock:
                p = self.procs.get(pid)
            try:
                seen = int(self.table[ctypes.c_uint32(pid)].seen)
            except KeyError:
                continue  # removed meanwhile
            if p is not None:  # the next window tracks at most `budget` contexts at this rate
                p.every = max(1, math.ceil(seen / self.budget))
                p.windows += 1
                p.last_close = time.monotonic()

    def every(self, pid: int) -> int:
        p = self.procs.get(pid)
        return p.every if p else 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.window + 30)
