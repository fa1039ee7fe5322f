"""RET instructions of a function (capstone, x86-64): where Go "return probes" go instead of uretprobes.

Go moves goroutine stacks, so a uretprobe's rewritten return address crashes the program; a plain uprobe at
every RET is safe. The body is decoded linearly from the entry to the function's end (symtab size, or the
next pclntab entry); trailing INT3 padding is skipped and never reported.
"""

from __future__ import annotations

import functools

import capstone

_RETS = frozenset({"ret", "retq", "repz ret", "rep ret", "bnd ret", "repz retq"})


@functools.cache
def _cs() -> capstone.Cs:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.skipdata = True  # keep decoding past a byte capstone does not know instead of stopping early
    return cs


def ret_offsets(code: bytes, base: int = 0) -> tuple[int, ...]:
    """Offsets (from the start of `code`) of every RET in a function body."""
    end = len(code)
    while end and code[end - 1] == 0xCC:  # INT3 padding up to the next function's alignment
        end -= 1
    return tuple(addr - base for addr, _size, mnem, _ops in _cs().disasm_lite(code[:end], base) if mnem in _RETS)
