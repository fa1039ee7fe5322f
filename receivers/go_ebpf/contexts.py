"""Context leaks seen by bpf/go_ctxtls.c: per creating call site, contexts created, canceled, and leaked.

A context is leaked when its cancel func was never called and either the GC freed its closure (the BPF
side sees the address come back from a constructor: counted there at once) or it is older than
`context_leak_age` (counted here, by a scan of the kernel's table of live contexts, which then forgets
it: one leak is counted once). Findings go out as log records naming the site and the count, once per
export interval in which a site leaked more; `gotel.context.leaked` and `gotel.context.created` are
cumulative counters by site.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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

    @property
    def leaked(self) -> int:
        return self.freed + self.aged


@dataclass
class ProcessSites:
    name_of: Callable[[int], SiteName]  # return address -> call site, for this process's binary
    sites: dict[int, SiteCounts] = field(default_factory=dict)


class ContextLeaks:
    """Reads the kernel's per-site counters and live-context table; keeps cumulative counts per site."""

    def __init__(self, program: Any, max_age_s: float) -> None:
        self.program = program
        self.max_age_ns = int(max_age_s * 1e9)
        self.procs: dict[int, ProcessSites] = {}
        self.untracked = 0  # contexts the live table had no room for

    def add_process(self, pid: int, name_of: Callable[[int], SiteName]) -> None:
        self.procs[pid] = ProcessSites(name_of)

    def remove_process(self, pid: int) -> None:
        """Forgets pid here and in the kernel's tables (its contexts died with it)."""
        self.procs.pop(pid, None)
        for tname in ("ctx_live", "ctx_sites"):
            t = self.program.table(tname)
            dead = [k for k in t if k.tgid == pid]
            for k in dead:
                with contextlib.suppress(KeyError):  # gone meanwhile
                    del t[k]

    def scan(self, now_ns: int | None = None) -> None:
        """Updates counts: kernel counters (created, canceled, freed) and contexts past the age threshold."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        live = self.program.table("ctx_live")
        old = []
        for k, v in _items(live):
            if now_ns - v.born_ns > self.max_age_ns and k.tgid in self.procs:
                old.append((k, v.site))
        for k, site in old:
            try:
                del live[k]
            except KeyError:
                continue  # canceled meanwhile (in time after all)
            self.procs[k.tgid].sites.setdefault(site, SiteCounts()).aged += 1
        for k, per_cpu in self.program.table("ctx_sites").items():  # per key: BCC's batch read is per-CPU-blind
            p = self.procs.get(k.tgid)
            if p is None:
                continue
            c = p.sites.setdefault(k.site, SiteCounts())
            c.created = sum(v.created for v in per_cpu)
            c.canceled = sum(v.canceled for v in per_cpu)
            c.freed = sum(v.freed_uncanceled for v in per_cpu)
        miss = self.program.table("ctx_untracked")
        self.untracked = int(sum(miss[ctypes.c_int(0)]))

    def by_site(self, pid: int) -> dict[str, SiteCounts]:
        """Counts by site label (sites of one label summed), for tests and `gotel diagnose`."""
        p = self.procs.get(pid)
        out: dict[str, SiteCounts] = {}
        if p is None:
            return out
        for pc, c in p.sites.items():
            label = p.name_of(pc).label()
            s = out.setdefault(label, SiteCounts())
            s.created += c.created
            s.canceled += c.canceled
            s.freed += c.freed
            s.aged += c.aged
        return out


def _items(table: Any) -> list[tuple[Any, Any]]:
    """All entries at once (a batch lookup where the kernel has it: one syscall per few thousand)."""
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())
