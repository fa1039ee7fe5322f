"""Uprobes on Go functions, shared by every process of a binary, with per-binary facts in BPF maps.

A Go function gets a uprobe at its entry and one at every RET instruction (found by disassembly in
gotel.golang) — never a uretprobe, which Go's moving stacks turn into "unexpected return pc" crashes.
Probes are attached per traced process (the kernel then writes the breakpoints only into that
process's memory: other processes running the same binary, a load generator or an unselected replica,
never trap), or, with per_process=False, once per binary (device + inode) for every process running
it. `gotel_go_procs` (pid -> binary id, flags) says which processes are traced and `gotel_go_offsets`
(binary id -> struct field offsets) carries what DWARF told us about that binary, once per binary.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gotel.ebpf.program import BinaryKey, BpfProgram, ProbeAttachError

MAX_OFFSETS = 136  # GOTEL_GO_MAX_OFFSETS
MAX_BINARIES = 1024  # GOTEL_GO_MAX_BINARIES: gotel_go_offsets is an array indexed by binary id
OFFSET_UNKNOWN = (1 << 64) - 1


class CGoProc(ctypes.Structure):
    _fields_ = [("bin_id", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class CGoOffsets(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64 * MAX_OFFSETS)]


@dataclass(frozen=True)
class Site:
    """One attach point: a virtual address of the binary and the BPF function to run there."""

    vaddr: int
    fn_name: str
    symbol: str = ""
    is_return: bool = False


@dataclass
class _Binary:
    bin_id: int
    path: str
    sites: tuple[Site, ...]
    pids: set[int] = field(default_factory=set)


class GoTargets:
    """Attaches a program's Go probes per binary and registers traced processes in its maps."""

    def __init__(self, program: BpfProgram, offset_names: Sequence[str] = (), per_process: bool = True) -> None:
        """per_process=False: one attachment per binary, covering processes started later before they are
        registered (their events are still filtered out until then), at the price of a trap in every
        process of the binary, selected or not."""
        if len(offset_names) > MAX_OFFSETS:
            raise ValueError(f"at most {MAX_OFFSETS} struct offsets per program")
        self.program = program
        self.per_process = per_process
        self.offset_names = list(offset_names)  # index in the BPF table = position here
        self.procs = program.table("gotel_go_procs")
        self.offsets = program.table("gotel_go_offsets")
        self._binaries: dict[BinaryKey, _Binary] = {}
        self._pid_binary: dict[int, BinaryKey] = {}
        self._free_ids = list(range(MAX_BINARIES - 1, 0, -1))  # 0 is never used: a zeroed proc entry

    def add_process(
        self,
        pid: int,
        exe: str,
        sites: Iterable[Site],
        offsets: Mapping[str, int | None] | None = None,
        flags: int = 0,
    ) -> BinaryKey:
        """exe: a path that opens the process's executable (/proc/PID/exe works across mount namespaces).

        The first process of a binary stores its offsets (and, per binary, attaches its sites); per
        process, every process attaches the sites for itself. Raises ProbeAttachError (after detaching
        what it attached) when a site fails.
        """
        key = BinaryKey.of(exe)
        if self._pid_binary.get(pid) is not None:
            if self._pid_binary[pid] == key:
                return key  # already traced with this binary
            self.remove_process(pid)  # the pid now runs another binary (exec)
        b = self._binaries.get(key)
        new_binary = b is None
        if b is None:
            if not self._free_ids:
                raise ProbeAttachError(f"{exe}: more than {MAX_BINARIES - 1} distinct Go binaries traced at once")
            b = _Binary(self._free_ids.pop(), exe, tuple(sites))
            table = CGoOffsets()
            for i, name in enumerate(self.offset_names):
                v = (offsets or {}).get(name)
                table.off[i] = OFFSET_UNKNOWN if v is None else v
            for i in range(len(self.offset_names), MAX_OFFSETS):
                table.off[i] = OFFSET_UNKNOWN
            self.offsets[ctypes.c_uint32(b.bin_id)] = table
        if self.per_process or new_binary:
            akey = self._attach_key(key, pid)
            try:
                for s in b.sites:
                    self.program.attach_uprobe(exe, s.vaddr, s.fn_name, akey, pid=pid if self.per_process else -1)
            except Exception:
                self.program.detach_binary(akey)
                if new_binary:
                    self._free_ids.append(b.bin_id)  # an array slot: overwritten by its next binary
                raise
        self._binaries[key] = b
        b.pids.add(pid)
        self._pid_binary[pid] = key
        self.procs[ctypes.c_uint32(pid)] = CGoProc(b.bin_id, flags)
        return key

    def _attach_key(self, key: BinaryKey, pid: int) -> Hashable:
        return (key, pid) if self.per_process else key

    def remove_process(self, pid: int, detach: Callable[[Hashable], object] | None = None) -> None:
        """Stops tracing pid: its own probes come off (per process), the binary's with its last process.

        The BPF side ignores pid as soon as this returns; closing the probes waits for RCU grace periods
        (~0.1 s), so `detach` (default: at once, here) lets a caller do it on another thread."""
        detach = detach or self.program.detach_binary
        key = self._pid_binary.pop(pid, None)
        with contextlib.suppress(KeyError):
            del self.procs[ctypes.c_uint32(pid)]
        if key is None:
            return
        if self.per_process:
            detach((key, pid))
        b = self._binaries.get(key)
        if b is None:
            return
        b.pids.discard(pid)
        if not b.pids:
            del self._binaries[key]
            if not self.per_process:
                detach(key)
            self._free_ids.append(b.bin_id)  # an array slot: no process names it any more

    def bin_id(self, key: BinaryKey) -> int | None:
        b = self._binaries.get(key)
        return b.bin_id if b else None

    def traced_pids(self) -> list[int]:
        return list(self._pid_binary)

    def close(self) -> None:
        for pid in list(self._pid_binary):
            self.remove_process(pid)
