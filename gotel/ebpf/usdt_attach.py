"""Attaching one loaded USDT program (bpf/usdt.c) to the probes of many processes.

Uprobes go on the binary (every probe site, pid=-1) once, when its first selected process appears, and
come off when its last one is gone; each process gets its own (pid, ip) -> spec entries in the
`usdt_specs` map, so unselected processes of the same binary are ignored in the kernel. Semaphores are
handed to the kernel with the uprobe (ref_ctr_offset): it raises them in every process mapping the
binary while the probe exists and lowers them when the probe's fd closes, even if gotel is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from gotel.ebpf.program import BinaryKey, BpfProgram
from gotel.ebpf.usdt import (
    CKey,
    UsdtArgError,
    build_spec,
    load_bias,
    qualname,
    read_probes,
)
from gotel.golang.usdt import USDTProbe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WantedProbe:
    """A probe the config asks for: its id in events, and which argument indices are strings (-> slot)."""

    probe_id: int
    qualname: str
    string_args: dict[int, int] = field(default_factory=dict)


@dataclass
class AttachResult:
    pid: int
    attached: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Proc:
    key: BinaryKey
    map_keys: list[CKey] = field(default_factory=list)


class UsdtAttacher:
    def __init__(self, program: BpfProgram, wanted: list[WantedProbe], fn_name: str = "gotel_usdt") -> None:
        self.program = program
        self.wanted = {w.qualname: w for w in wanted}
        self.fn_name = fn_name
        self.specs = program.table("usdt_specs")
        self._procs: dict[int, _Proc] = {}
        self._users: dict[BinaryKey, set[int]] = {}

    def add_process(self, pid: int, exe: str) -> AttachResult:
        """exe: a path that opens the process's executable (use /proc/PID/exe across mount namespaces)."""
        res = AttachResult(pid)
        key = BinaryKey.of(exe)
        probes, layout = read_probes(exe)
        by_name: dict[str, list[USDTProbe]] = {}
        for p in probes:
            by_name.setdefault(qualname(p), []).append(p)
        res.missing = [q for q in self.wanted if q not in by_name]
        todo = [(w, p) for q, w in self.wanted.items() for p in by_name.get(q, [])]
        if not todo:
            return res
        bias = load_bias(pid, layout, key.dev, key.ino)
        if bias is None:
            res.errors.append(f"pid {pid}: {exe} is not mapped (process exited?)")
            return res
        if not self.program.attached(key):
            for _w, p in todo:
                try:
                    self.program.attach_uprobe(exe, p.pc, self.fn_name, key, semaphore=p.semaphore)
                except Exception as e:
                    res.errors.append(str(e))
        proc = _Proc(key)
        for w, p in todo:
            try:
                spec = build_spec(w.probe_id, p, w.string_args)
            except UsdtArgError as e:
                res.errors.append(f"{qualname(p)}: {e}")
                continue
            k = CKey(pid, 0, p.pc + bias)
            self.specs[k] = spec
            proc.map_keys.append(k)
            if qualname(p) not in res.attached:
                res.attached.append(qualname(p))
        self._procs[pid] = proc
        self._users.setdefault(key, set()).add(pid)
        return res

    def remove_process(self, pid: int) -> None:
        proc = self._procs.pop(pid, None)
        if proc is None:
            return
        for k in proc.map_keys:
            with contextlib.suppress(KeyError):
                del self.specs[k]
        users = self._users.get(proc.key)
        if users is not None:
            users.discard(pid)
            if not users:
                del self._users[proc.key]
                n = self.program.detach_binary(proc.key)
                log.debug("detached %d USDT probes from %s", n, proc.key)

    def pids(self) -> list[int]:
        return list(self._procs)

    def close(self) -> None:
        for pid in list(self._procs):
            self.remove_process(pid)
