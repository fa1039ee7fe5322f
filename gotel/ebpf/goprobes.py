"""Uprobes on Go functions, shared by every process of a binary, with per-binary facts in BPF maps.

A Go function gets a uprobe at its entry and one at every RET instruction (found by disassembly in
gotel.golang) — never a uretprobe, which Go's moving stacks turn into "unexpected return pc" crashes.
Probes are attached once per binary (device + inode) with pid=-1, so processes started later are
covered at once; `gotel_go_procs` (pid -> binary id, flags) says which processes are traced and
`gotel_go_offsets` (binary id -> struct field offsets) carries what DWARF told us about that binary.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gotel.ebpf.program import BinaryKey, BpfProgram

MAX_OFFSETS = 64
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

    def __init__(self, program: BpfProgram, offset_names: Sequence[str] = ()) -> None:
        if len(offset_names) > MAX_OFFSETS:
            raise ValueError(f"at most {MAX_OFFSETS} struct offsets per program")
        self.program = program
        self.offset_names = list(offset_names)  # index in the BPF table = position here
        self.procs = program.table("gotel_go_procs")
        self.offsets = program.table("gotel_go_offsets")
        self._binaries: dict[BinaryKey, _Binary] = {}
        self._pid_binary: dict[int, BinaryKey] = {}
        self._next_id = 1

    def add_process(
        self,
        pid: int,
        exe: str,
        sites: Iterable[Site],
        offsets: Mapping[str, int | None] | None = None,
        flags: int = 0,
    ) -> BinaryKey:
        """exe: a path that opens the process's executable (/proc/PID/exe works across mount namespaces).

        The first process of a binary attaches its sites and stores its offsets; later ones only
        register. Raises ProbeAttachError (after detaching what it attached) when a site fails.
        """
        key = BinaryKey.of(exe)
        b = self._binaries.get(key)
        if b is None:
            b = _Binary(self._next_id, exe, tuple(sites))
            self._next_id += 1
            table = CGoOffsets()
            for i, name in enumerate(self.offset_names):
                v = (offsets or {}).get(name)
                table.off[i] = OFFSET_UNKNOWN if v is None else v
            for i in range(len(self.offset_names), MAX_OFFSETS):
                table.off[i] = OFFSET_UNKNOWN
            self.offsets[ctypes.c_uint32(b.bin_id)] = table
            try:
                for s in b.sites:
                    self.program.attach_uprobe(exe, s.vaddr, s.fn_name, key)
            except Exception:
                self.program.detach_binary(key)
                del self.offsets[ctypes.c_uint32(b.bin_id)]
                raise
            self._binaries[key] = b
        b.pids.add(pid)
        self._pid_binary[pid] = key
        self.procs[ctypes.c_uint32(pid)] = CGoProc(b.bin_id, flags)
        return key

    def remove_process(self, pid: int) -> None:
        """Stops tracing pid; the binary's probes come off with its last traced process."""
        key = self._pid_binary.pop(pid, None)
        with contextlib.suppress(KeyError):
            del self.procs[ctypes.c_uint32(pid)]
        if key is None:
            return
        b = self._binaries.get(key)
        if b is None:
            return
        b.pids.discard(pid)
        if not b.pids:
            del self._binaries[key]
            self.program.detach_binary(key)
            with contextlib.suppress(KeyError):
                del self.offsets[ctypes.c_uint32(b.bin_id)]

    def bin_id(self, key: BinaryKey) -> int | None:
        b = self._binaries.get(key)
        return b.bin_id if b else None

    def traced_pids(self) -> list[int]:
        return list(self._pid_binary)

    def close(self) -> None:
        for pid in list(self._pid_binary):
            self.remove_process(pid)
