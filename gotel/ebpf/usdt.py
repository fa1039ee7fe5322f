"""USDT probes: their notes, their argument locations as the BPF side reads them, their semaphores.

The argument specs in `.note.stapsdt` (`-4@%eax`, `8@-16(%rbp)`, `4@$42`) are turned into
(kind, pt_regs offset, displacement, size, sign) records that bpf/include/gotel_usdt.h evaluates, so
one compiled program reads the arguments of any probe in any binary. Semaphores ("is anybody
listening?" counters guarding expensive probe arguments) are left to the kernel: the uprobe is opened
with their file offset (ref_ctr_offset, see gotel.ebpf.program), so no process memory is written here.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

from gotel.golang.elf import ElfImage
from gotel.golang.usdt import ProbeArg, USDTProbe, parse_arg
from gotel.golang.usdt import read_probes as read_usdt_notes

# Byte offsets of the registers in x86-64 struct pt_regs (arch/x86/include/asm/ptrace.h).
_PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104, "rdi": 112, "rip": 128, "rsp": 152,
}

ARG_NONE, ARG_CONST, ARG_REG, ARG_REG_DEREF = 0, 1, 2, 3
MAX_ARGS = 6
STR_SLOTS = 2
STR_LEN = 128
NO_STR = 0xFF



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


def arg_location(arg: ProbeArg) -> ArgLocation:
    """Where the BPF side finds one argument (gotel.golang parsed the spec)."""
    if arg.kind == "const":
        return ArgLocation(ARG_CONST, arg.size, arg.signed, val_off=arg.value, spec=arg.spec)
    if arg.kind == "mem" and (arg.index is not None or arg.symbol is not None or arg.reg is None):
        raise UsdtArgError(f"USDT argument {arg.spec!r}: indexed or symbol-relative addressing is not supported")
    if arg.reg not in _PT_REGS:
        raise UsdtArgError(f"USDT argument {arg.spec!r}: register %{arg.reg} is not readable from pt_regs")
    kind = ARG_REG if arg.kind == "reg" else ARG_REG_DEREF
    return ArgLocation(kind, arg.size, arg.signed, reg_off=_PT_REGS[arg.reg], val_off=arg.offset, spec=arg.spec)


def parse_arg_spec(spec: str) -> ArgLocation:
    """One argument spec from a stapsdt note (AT&T syntax, x86-64), as the BPF side reads it."""
    try:
        return arg_location(parse_arg(spec))
    except UsdtArgError:
        raise
    except ValueError as e:
        raise UsdtArgError(str(e)) from e


def qualname(p: USDTProbe) -> str:
    return f"{p.provider}:{p.name}"


@dataclass(frozen=True)
class ElfLayout:
    """What is needed to turn a virtual address of the file into one in a process."""

    is_pie: bool
    first_load_vaddr: int


@lru_cache(maxsize=256)
def _read_probes(path: str, dev: int, ino: int, mtime_ns: int) -> tuple[tuple[USDTProbe, ...], ElfLayout]:
    del dev, ino, mtime_ns  # cache key only
    img = ElfImage(path)
    try:
        layout = ElfLayout(img.elf_type == "ET_DYN", min((s.vaddr for s in img.segments), default=0))
        return read_usdt_notes(img), layout
    finally:
        img.close()


def read_probes(path: str) -> tuple[tuple[USDTProbe, ...], ElfLayout]:
    """USDT probes of any ELF file (Go or not), cached per device, inode and mtime."""
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


def build_spec(probe_id: int, probe: USDTProbe, string_args: dict[int, int]) -> CSpec:
    """string_args: argument index -> string slot (0 or 1). Raises UsdtArgError for unreadable specs."""
    spec = CSpec()
    spec.probe_id = probe_id
    n = min(len(probe.args), MAX_ARGS)
    spec.nargs = n
    for i in range(n):
        loc = arg_location(probe.args[i])
        a = spec.args[i]
        a.kind, a.size, a.is_signed = loc.kind, loc.size, int(loc.signed)
        a.reg_off, a.val_off = loc.reg_off, loc.val_off
        a.str_slot = string_args.get(i, NO_STR)
    for i in string_args:
        if i >= n:
            raise UsdtArgError(f"{qualname(probe)} has {len(probe.args)} arguments; arg{i} does not exist")
    return spec


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
