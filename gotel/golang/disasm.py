"""RET instructions of a function (capstone, x86-64): where Go "return probes" go instead of uretprobes.

Go moves goroutine stacks, so a uretprobe's rewritten return address crashes the program; a plain uprobe at
every RET is safe. The body is decoded linearly from the entry to the function's end (symtab size, or the
next pclntab entry); trailing INT3 padding is skipped and never reported.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import capstone

_RETS = frozenset({"ret", "retq", "repz ret", "rep ret", "bnd ret", "repz retq"})


@functools.cache
def _cs() -> capstone.Cs:
    import capstone  # on first use: `gotel run` validates a go_ebpf config without loading it (2 MB)

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.skipdata = True  # keep decoding past a byte capstone does not know instead of stopping early
    return cs


def ret_offsets(code: bytes, base: int = 0) -> tuple[int, ...]:
    """Offsets (from the start of `code`) of every RET in a function body."""
    end = len(code)
    while end and code[end - 1] == 0xCC:  # INT3 padding up to the next function's alignment
        end -= 1
    return tuple(addr - base for addr, _size, mnem, _ops in _cs().disasm_lite(code[:end], base) if mnem in _RETS)


# x86-64 instructions the kernel's uprobe code emulates instead of single-stepping out of line (measured on
# this 6.18 guest: 0.6-0.8 us per hit against 9.5-13 us for a single-stepped one, whose debug trap is what
# costs in a VM): relative jumps, conditional jumps, relative calls, NOPs and `push reg` (the last since
# Linux 6.11; older kernels single-step it, which is only slower, never wrong).
def uprobe_emulated(insn: bytes) -> bool:
    """True when a uprobe on this one instruction (its bytes) is handled without a single-step."""
    i = 0
    while i < len(insn) and insn[i] in (0x66, 0xF2, 0xF3):  # operand-size / rep prefixes (66 90 is a NOP)
        i += 1
    rex = i < len(insn) and 0x40 <= insn[i] <= 0x4F
    if rex:
        i += 1
    if i >= len(insn):
        return False
    op = insn[i]
    if op in (0xE8, 0xE9, 0xEB) or 0x70 <= op <= 0x7F:
        return not rex
    if op == 0x90:
        return True
    if 0x50 <= op <= 0x57:
        return not rex or insn[i - 1] in (0x40, 0x41)
    if op == 0x0F and i + 1 < len(insn):
        return 0x80 <= insn[i + 1] <= 0x8F or insn[i + 1] == 0x1F
    return False


def call_sites(code: bytes, base: int, targets: set[int]) -> dict[int, list[int]]:
    """Direct `call rel32` instructions in `code` (mapped at `base`) whose target is in `targets`.

    Scans E8 bytes rather than decoding: a false match needs four following bytes that happen to encode
    a probed function's address, and every hit is decoded again by the caller before it is used.
    """
    out: dict[int, list[int]] = {t: [] for t in targets}
    find = code.find
    pos = find(b"\xe8")
    end = len(code) - 5
    while 0 <= pos <= end:
        tgt = base + pos + 5 + int.from_bytes(code[pos + 1 : pos + 5], "little", signed=True)
        if tgt in out:
            out[tgt].append(base + pos)
        pos = find(b"\xe8", pos + 1)
    return out


def decode(code: bytes, base: int, count: int) -> list[tuple[int, int, str, str, bytes]]:
    """Up to `count` instructions: (address, size, mnemonic, operands, bytes)."""
    out = []
    for addr, size, mnem, ops in _cs().disasm_lite(code, base):
        out.append((addr, size, mnem, ops, code[addr - base : addr - base + size]))
        if len(out) >= count:
            break
    return out
