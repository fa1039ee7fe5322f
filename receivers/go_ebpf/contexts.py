"""Context leaks seen by bpf/go_ctxtls.c: per creating call site, contexts created, canceled, and leaked.

A context is leaked when its cancel func was never called and either the GC freed its closure (the BPF
side sees the address come back from a constructor: counted there at once) or it is older than
`context_leak_age` (counted here, by a scan of the kernel's table of live contexts, which then forgets
it: one leak is counted once). Findings go out as log records naming the site and the count, once per
export interval in which a site leaked more; `gotel.context.leaked` and `gotel.context.created` are
cumulative counters by site.

Sampled mode (receivers/go_ebpf/ctxsample.py): no cancel probe; a tracked context's memory says whether it
ended (its err field set), read at each scan; counts are estimates (each tracked context weighs the
contexts of its window it stands for, times period/window).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gotel.receivers.go_ebpf.ctxsample import Memory


@dataclass(frozen=True)
class SiteName:
    function: str
    offset: int
    file: str | None = None
    line: int | None = None

    def label(self) -> str:
        if self.file and self.line:
            return f"{self.function} ({self.file.rsplit('/', 1)[-1]}:{self.line})"
        return f"{self.function}+{self.offset:#x}"

    def attributes(self) -> dict[str, Any]:
        a: dict[str, Any] = {"gotel.context.site": self.label(), "code.function.name": self.function}
        if self.file and self.line:
            a["code.file.path"] = self.file
            a["code.line.number"] = self.line
        return a


@dataclass
class SiteCounts:
    created: int = 0
    canceled: int = 0
    freed: int = 0  # freed by the GC, never canceled (kernel)
    aged: int = 0  # older than the threshold, never canceled (this scan)
    reported: int = 0  # leaks already named in a finding
    gone: int = 0  # sampled: memory reused before it was seen ended or old (end unknown: not a leak)

    @property
    def leaked(self) -> int:
        return self.freed + self.aged


@dataclass
class ProcessSites:
    name_of: Callable[[int], SiteName]  # return address -> call site, for this process's binary
    sites: dict[int, SiteCounts] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampled:
    """What a sampled process's scan needs: where its contexts' err field is, and how to read memory."""

    err_offset: int  # context.cancelCtx.err (DWARF); a *timerCtx starts with its cancelCtx
    memory: Memory


_YOUNG_NS = 20_000_000  # a context this young may not hold its parent yet (set inside propagateCancel)


class ContextLeaks:
    """Reads the kernel's per-site counters and live-context table; keeps cumulative counts per site."""

    def __init__(self, program: Any, max_age_s: float, scale: Callable[[int], float] | None = None) -> None:
        """scale: pid -> the time each of its sampling windows stands for (sampled mode)."""
        self.program = program
        self.max_age_ns = int(max_age_s * 1e9)
        self.scale = scale
        self.procs: dict[int, ProcessSites] = {}
        self.sampled: dict[int, Sampled] = {}
        self.untracked = 0  # contexts the live table had no room for
        self.reused = 0  # sampled contexts whose memory a new context took before a scan read it
        self._lock = threading.Lock()  # scans run from the export and after each sampling window

    def add_process(self, pid: int, name_of: Callable[[int], SiteName], sampled: Sampled | None = None) -> None:
        self.procs[pid] = ProcessSites(name_of)
        if sampled is not None:
            self.sampled[pid] = sampled

    def remove_process(self, pid: int) -> None:
        """Forgets pid here and in the kernel's tables (its contexts died with it)."""
        self.procs.pop(pid, None)
        s = self.sampled.pop(pid, None)
        if s is not None:
            s.memory.close()
        for tname in ("ctx_live", "ctx_sites"):
            t = self.program.table(tname)
            dead = [k for k in t if k.tgid == pid]
            for k in dead:
                with contextlib.suppress(KeyError):  # gone meanwhile
                    del t[k]

    def scan(self, now_ns: int | None = None) -> None:
        """Updates counts: kernel counters (created, canceled, freed), contexts past the age threshold, and
        (sampled) tracked contexts whose memory says they ended."""
        with self._lock:
            self._scan(time.monotonic_ns() if now_ns is None else now_ns)

    def _scan(self, now_ns: int) -> None:
        live = self.program.table("ctx_live")
        ended: list[tuple[Any, Any, str]] = []  # (key, value, what)
        for k, v in _items(live):
            if k.tgid not in self.procs:
                continue
            what = self._judge(k, v, now_ns)
            if what:
                ended.append((k, v, what))
        for k, v, what in ended:
            try:
                del live[k]
            except KeyError:
                continue  # canceled meanwhile (in time after all), or taken by a new context
            c = self.procs[k.tgid].sites.setdefault(v.site, SiteCounts())
            w = max(1, int(v.weight))
            if what == "aged":
                c.aged += w
            elif what == "canceled":
                c.canceled += w
            else:
                c.gone += w
        for k, per_cpu in self.program.table("ctx_sites").items():  # per key: BCC's batch read is per-CPU-blind
            p = self.procs.get(k.tgid)
            if p is None:
                continue
            c = p.sites.setdefault(k.site, SiteCounts())
            c.created = sum(v.created for v in per_cpu)
            c.freed = sum(v.freed_uncanceled for v in per_cpu)
            if k.tgid not in self.sampled:
                c.canceled = sum(v.canceled for v in per_cpu)
        miss = self.program.table("ctx_untracked")
        self.untracked = int(sum(miss[ctypes.c_int(0)]))
        self.reused = int(sum(miss[ctypes.c_int(2)]))

    def _judge(self, k: Any, v: Any, now_ns: int) -> str:
        """'' (still live), 'aged', 'canceled' or 'gone' (sampled: the memory holds another object)."""
        age = now_ns - v.born_ns
        s = self.sampled.get(k.tgid) if v.weight else None
        if s is None:
            return "aged" if age > self.max_age_ns else ""
        if age < _YOUNG_NS:
            return ""
        raw = s.memory.read(k.fn, s.err_offset + 8)
        if raw is None:
            return "gone"
        if int.from_bytes(raw[0:8], "little") != v.parent[0] or int.from_bytes(raw[8:16], "little") != v.parent[1]:
            return "gone"  # freed, and its memory reused by another object
        if int.from_bytes(raw[s.err_offset:], "little"):
            return "canceled"  # err set: its cancel func, its deadline or its parent's end released it
        return "aged" if age > self.max_age_ns else ""

    def by_site(self, pid: int) -> dict[str, SiteCounts]:
        """Counts by site label (sites of one label summed), for tests and `gotel diagnose`."""
        p = self.procs.get(pid)
        out: dict[str, SiteCounts] = {}
        if p is None:
            return out
        scale = self.scale(pid) if self.scale is not None and pid in self.sampled else 1.0
        for pc, c in p.sites.items():
            label = p.name_of(pc).label()
            s = out.setdefault(label, SiteCounts())
            s.created += round(c.created * scale)
            s.canceled += round(c.canceled * scale)
            s.freed += round(c.freed * scale)
            s.aged += round(c.aged * scale)
            s.gone += round(c.gone * scale)
        return out


def _items(table: Any) -> list[tuple[Any, Any]]:
    """All entries at once (a batch lookup where the kernel has it: one syscall per few thousand)."""
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())
