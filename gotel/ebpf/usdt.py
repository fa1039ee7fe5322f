"""USDT probes: their notes, their argument locations as the BPF side reads them, their semaphores.

The argument specs in `.note.stapsdt` (`-4@%eax`, `8@-16(%rbp)`, `4@$42`) are turned into
(kind, pt_regs offset, displacement, size, sign) records that bpf/include/gotel_usdt.h evaluates, so
one compiled program reads the arguments of any probe in any binary. Semaphores ("is anybody
listening?" counters guarding expensive probe arguments) are incremented in each traced process
through /proc/PID/mem and decremented when it is no longer traced.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

# Byte offsets of the registers in x86-64 struct pt_regs (arch/x86/include/asm/ptrace.h).
_PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104, "rdi": 112, "rip": 128, "rsp": 152,
}
_ALIASES: dict[str, str] = {}
for _r in ("ax", "bx", "cx", "dx"):
    for _n in (f"r{_r}", f"e{_r}", _r, _r[0] + "l"):
        _ALIASES[_n] = f"r{_r}"
for _r in ("si", "di", "bp", "sp"):
    for _n in (f"r{_r}", f"e{_r}", _r, _r + "l"):
        _ALIASES[_n] = f"r{_r}"
for _i in range(8, 16):
    for _s in ("", "d", "w", "b"):
        _ALIASES[f"r{_i}{_s}"] = f"r{_i}"
_ALIASES["rip"] = "rip"

ARG_NONE, ARG_CONST, ARG_REG, ARG_REG_DEREF = 0, 1, 2, 3
MAX_ARGS = 6
STR_SLOTS = 2
STR_LEN = 128
NO_STR = 0xFF

_SPEC_RE = re.compile(
    r"^(?:(?P<size>-?\d+)@)?(?:\$(?P<const>-?\d+)|%(?P<reg>\w+)|(?P<disp>-?(?:0x)?[0-9a-fA-F]*)\(%(?P<base>\w+)\))$"
)


class UsdtArgError(ValueError):
    pass


@dataclass(frozen=True)
class ArgLocation:
    kind: int
    size: int
    signed: bool
    reg_off: int = 0
    val_off: int = 0
    spec: str = ""


def parse_arg_spec(spec: str) -> ArgLocation:
    """One argument spec from a stapsdt note (AT&T syntax, x86-64)."""
    m = _SPEC_RE.match(spec.strip())
    if not m:
        raise UsdtArgError(f"unsupported USDT argument spec {spec!r} (indexed addressing is not supported)")
    size_s = m.group("size")
    size = int(size_s) if size_s else 8
    signed = size < 0
    size = abs(size)
    if size not in (1, 2, 4, 8):
        raise UsdtArgError(f"USDT argument spec {spec!r}: size {size} is not 1, 2, 4 or 8")
    if m.group("const") is not None:
        return ArgLocation(ARG_CONST, size, signed, val_off=int(m.group("const")), spec=spec)
    reg = m.group("reg") or m.group("base")
    canon = _ALIASES.get(reg)
    if canon is None or canon not in _PT_REGS:
        raise UsdtArgError(f"USDT argument spec {spec!r}: unknown register %{reg}")
    if m.group("reg"):
        return ArgLocation(ARG_REG, size, signed, reg_off=_PT_REGS[canon], spec=spec)
    disp = m.group("disp") or "0"
    return ArgLocation(ARG_REG_DEREF, size, signed, reg_off=_PT_REGS[canon], val_off=int(disp, 0), spec=spec)


@dataclass(frozen=True)
class UsdtProbe:
    provider: str
    name: str
    address: int  # virtual address of the probe's nop
    semaphore: int  # virtual address of its semaphore, 0 when unguarded
    args: tuple[str, ...] = field(default=())

    @property
    def qualname(self) -> str:
        return f"{self.provider}:{self.name}"


@dataclass(frozen=True)
class ElfLayout:
    """What is needed to turn a virtual address of the file into one in a process."""

    is_pie: bool
    first_load_vaddr: int


@lru_cache(maxsize=256)
def _read_probes(path: str, dev: int, ino: int, mtime_ns: int) -> tuple[tuple[UsdtProbe, ...], ElfLayout]:
    del dev, ino, mtime_ns  # cache key only
    probes: list[UsdtProbe] = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        layout = ElfLayout(elf["e_type"] == "ET_DYN", min((s["p_vaddr"] for s in loads), default=0))
        base_sec = elf.get_section_by_name(".stapsdt.base")
        actual_base = base_sec["sh_addr"] if base_sec is not None else None
        sec = elf.get_section_by_name(".note.stapsdt")
        if sec is None or not isinstance(sec, NoteSection):
            return (), layout
        for note in sec.iter_notes():
            if note["n_name"] != "stapsdt" or note["n_type"] not in (3, "NT_GNU_BUILD_ID", "NT_STAPSDT"):
                continue
            desc = note["n_descdata"]
            if isinstance(desc, str):
                desc = desc.encode("latin-1")
            pc, base, sem = struct.unpack_from("<QQQ", desc, 0)
            provider, name, args = desc[24:].split(b"\0")[:3]
            if actual_base is not None and base:
                pc += actual_base - base
                if sem:
                    sem += actual_base - base
            probes.append(
                UsdtProbe(provider.decode(), name.decode(), pc, sem, tuple(a.decode() for a in args.split() if a))
            )
    return tuple(probes), layout


def read_probes(path: str) -> tuple[tuple[UsdtProbe, ...], ElfLayout]:
    """USDT probes from the file's .note.stapsdt (cached per device, inode and mtime)."""
    st = os.stat(path)
    return _read_probes(path, st.st_dev, st.st_ino, st.st_mtime_ns)


def load_bias(pid: int, layout: ElfLayout, dev: int, ino: int) -> int | None:
    """Process address minus file virtual address for the executable mapped in pid; None if not mapped."""
    if not layout.is_pie:
        return 0
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 5 or int(parts[4]) != ino or int(parts[2], 16) != 0:
                    continue
                start = int(parts[0].split("-", 1)[0], 16)
                return start - (layout.first_load_vaddr & ~0xFFF)
    except OSError:
        return None
    return None


def adjust_semaphore(pid: int, address: int, delta: int) -> int:
    """Adds delta to the 16-bit semaphore at a process address; returns the new value.

    Raises OSError when the process is gone or not accessible (needs CAP_SYS_PTRACE over it).
    """
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        raw = os.pread(fd, 2, address)
        if len(raw) != 2:
            raise OSError(f"short read of semaphore at {address:#x} in pid {pid}")
        value = max(0, struct.unpack("<H", raw)[0] + delta)
        os.pwrite(fd, struct.pack("<H", value), address)
        return value
    finally:
        os.close(fd)


# ---- the ctypes mirror of bpf/include/gotel_usdt.h ------------------------------------------------------


class CArg(ctypes.Structure):
    _fields_ = [
        ("val_off", ctypes.c_int64),
        ("reg_off", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("is_signed", ctypes.c_uint8),
        ("str_slot", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class CSpec(ctypes.Structure):
    _fields_ = [("probe_id", ctypes.c_uint32), ("nargs", ctypes.c_uint32), ("args", CArg * MAX_ARGS)]


class CKey(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("ip", ctypes.c_uint64)]


class CEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("probe_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * MAX_ARGS),
        ("str", (ctypes.c_char * STR_LEN) * STR_SLOTS),
    ]


def build_spec(probe_id: int, probe: UsdtProbe, string_args: dict[int, int]) -> CSpec:
    """string_args: argument index -> string slot (0 or 1). Raises UsdtArgError for unreadable specs."""
    spec = CSpec()
    spec.probe_id = probe_id
    n = min(len(probe.args), MAX_ARGS)
    spec.nargs = n
    for i in range(n):
        loc = parse_arg_spec(probe.args[i])
        a = spec.args[i]
        a.kind, a.size, a.is_signed = loc.kind, loc.size, int(loc.signed)
        a.reg_off, a.val_off = loc.reg_off, loc.val_off
        a.str_slot = string_args.get(i, NO_STR)
    for i in string_args:
        if i >= n:
            raise UsdtArgError(f"{probe.qualname} has {len(probe.args)} arguments; arg{i} does not exist")
    return spec


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
