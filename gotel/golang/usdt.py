"""USDT probes from `.note.stapsdt` (SystemTap SDT v3 notes, as sys/sdt.h emits them).

Each note (owner "stapsdt", type 3) holds pc, base and semaphore addresses (8 bytes each), then provider,
name and the argument spec, NUL-terminated. If the binary was prelinked or otherwise moved, the addresses
are adjusted by the difference between the `.stapsdt.base` section's address and `base`.
Argument specs are `[-]SIZE@OPERAND` with OPERAND a register (`%rdi`), a memory reference
(`-16(%rbp)`, `8(%rax,%rbx,4)`, `sym(%rip)`) or a constant (`$5`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from gotel.golang.elf import ElfImage

# Any x86-64 register name -> the 64-bit register (the pt_regs field BPF reads).
_REG64: dict[str, str] = {}
for _full, _aliases in {
    "rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"), "rcx": ("ecx", "cx", "cl", "ch"),
    "rdx": ("edx", "dx", "dl", "dh"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl"), "rip": ("eip", "ip"),
}.items():
    _REG64[_full] = _full
    for _a in _aliases:
        _REG64[_a] = _full
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _REG64[f"r{_n}{_suffix}"] = f"r{_n}"

_MEM = re.compile(r"^(?P<disp>[-+]?(?:0x[0-9a-fA-F]+|\d+)|[A-Za-z_.$][\w.$@]*(?:[-+]\d+)?)?"
                  r"\((?P<base>%\w+)?(?:,(?P<index>%\w+)(?:,(?P<scale>\d+))?)?\)$")


@dataclass(frozen=True)
class ProbeArg:
    """One USDT argument: `size` bytes, signed or not, read from a register, memory or a constant."""

    spec: str
    size: int
    signed: bool
    kind: str  # "reg", "mem" or "const"
    reg: str | None = None  # for "reg", and the base register for "mem" (64-bit name, e.g. "rbp")
    offset: int = 0  # displacement for "mem"
    index: str | None = None
    scale: int = 1
    symbol: str | None = None  # "mem" relative to a symbol (usually with %rip)
    value: int = 0  # for "const"


@dataclass(frozen=True)
class USDTProbe:
    provider: str
    name: str
    pc: int  # virtual address of the probe's NOP
    file_offset: int  # where the uprobe attaches
    semaphore: int  # virtual address, 0 when unguarded
    semaphore_offset: int  # file offset (uprobe ref_ctr_offset), 0 when unguarded
    args: tuple[ProbeArg, ...]
    arg_spec: str


def parse_arg(spec: str) -> ProbeArg:
    """Parse one `[-]SIZE@OPERAND` argument; a spec without `@` is an 8-byte signed operand."""
    size_s, at, op = spec.partition("@")
    if not at:
        size, signed, op = 8, True, spec
    else:
        n = int(size_s)
        size, signed = abs(n), n < 0
    if size not in (1, 2, 4, 8):
        raise ValueError(f"USDT argument {spec!r}: size {size} is not 1, 2, 4 or 8")
    if op.startswith("$"):
        return ProbeArg(spec, size, signed, "const", value=int(op[1:], 0))
    if op.startswith("%"):
        reg = _REG64.get(op[1:])
        if reg is None:
            raise ValueError(f"USDT argument {spec!r}: unknown register {op}")
        return ProbeArg(spec, size, signed, "reg", reg=reg)
    m = _MEM.match(op)
    if m is None:
        raise ValueError(f"USDT argument {spec!r}: operand {op!r} is not a register, memory reference or constant")
    disp, symbol = m.group("disp") or "0", None
    try:
        offset = int(disp, 0)
    except ValueError:
        sm = re.match(r"^([A-Za-z_.$][\w.$@]*)([-+]\d+)?$", disp)
        if sm is None:
            raise ValueError(f"USDT argument {spec!r}: bad displacement {disp!r}") from None
        symbol, offset = sm.group(1), int(sm.group(2) or 0)
    base = _REG64.get(m.group("base")[1:]) if m.group("base") else None
    index = _REG64.get(m.group("index")[1:]) if m.group("index") else None
    return ProbeArg(spec, size, signed, "mem", reg=base, offset=offset, index=index,
                    scale=int(m.group("scale") or 1), symbol=symbol)


def read_probes(img: ElfImage) -> tuple[USDTProbe, ...]:
    probes = []
    base_sec = img.sections.get(".stapsdt.base")
    for owner, ntype, desc in img.notes(".note.stapsdt"):
        if owner != "stapsdt" or ntype != 3 or len(desc) < 27:
            continue
        pc, base, sema = struct.unpack_from("<3Q", desc, 0)
        provider, name, argstr = ([*desc[24:].split(b"\x00"), b"", b""])[:3]
        if base_sec is not None and base:
            delta = base_sec.addr - base
            pc += delta
            if sema:
                sema += delta
        argspec = argstr.decode("ascii", "replace")
        probes.append(USDTProbe(
            provider=provider.decode("ascii", "replace"), name=name.decode("ascii", "replace"), pc=pc,
            file_offset=img.vaddr_to_offset(pc), semaphore=sema,
            semaphore_offset=img.vaddr_to_offset(sema) if sema else 0,
            args=tuple(parse_arg(a) for a in argspec.split()), arg_spec=argspec,
        ))
    return tuple(probes)
