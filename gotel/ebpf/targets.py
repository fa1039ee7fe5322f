"""The eBPF side's view of Go binary analysis (gotel.golang): attach sites and facts for verdicts.

Thin on purpose: gotel.golang answers questions about one file; this module turns those answers into
what attaching (virtual addresses of entries and RETs) and `gotel inspect` (BinaryFacts) need.
"""

from __future__ import annotations

from collections.abc import Iterable

from gotel.ebpf.goprobes import Site
from gotel.ebpf.probespecs import BinaryFacts
from gotel.golang import GoAnalysisError, GoBinary, analyze


def function_address(gb: GoBinary, symbol: str) -> int | None:
    f = gb.functions.get(symbol)
    return None if f is None else f.entry


Insn = tuple[int, int, str, str, bytes]  # address, size, mnemonic, operands, bytes


def _prologue(gb: GoBinary, symbol: str) -> tuple[int, list[Insn], int | None] | None:
    """(entry, the first instructions, index of the stack check's forward jump to morestack or None)."""
    f = gb.functions.get(symbol)
    if f is None:
        return None
    from gotel.golang.disasm import decode

    insns = decode(bytes(gb.image.data[f.file_offset : f.file_offset + min(f.size, 64)]), f.entry, 8)
    for i in range(1, min(len(insns) - 1, 6)):
        addr, _size, mnem, ops, _raw = insns[i]
        prev = insns[i - 1]
        if mnem in ("jbe", "jna", "jb") and prev[2] == "cmp" and "r14" in prev[3]:
            try:
                target = int(ops, 16)
            except ValueError:
                break
            if target > addr:  # the morestack block sits after the body
                return f.entry, insns, i
            break
    return f.entry, insns, None


def body_address(gb: GoBinary, symbol: str) -> int | None:
    """The first instruction after the function's stack-check prologue, else its entry.

    A Go prologue compares the stack pointer with g.stackguard0 (g in r14) and jumps to a block that
    calls runtime.morestack and then jumps back to the entry. Stack growth and preemption requests
    (stackguard0 = stackPreempt) take that path, so a probe at the entry fires twice for one call now
    and then; a probe after the check fires exactly once per call, with the argument registers intact.
    """
    p = _prologue(gb, symbol)
    if p is None:
        return None
    entry, insns, check = p
    return insns[check + 1][0] if check is not None else entry


def entry_site(gb: GoBinary, symbol: str) -> tuple[int, bool] | None:
    """Where an entry probe costs least, and whether it can fire twice for one call.

    A single-stepped uprobe costs 10-13 us a hit in a VM, an emulated one under 1 us
    (gotel.golang.disasm.uprobe_emulated). Past the stack check Go >= 1.21 pushes rbp: emulated, once per
    call. Go <= 1.20 subtracts from rsp there, which is single-stepped, so the probe goes on the check's
    own conditional jump: emulated, arguments still in registers, but run again when morestack restarts
    the function -- the programs placed there must be idempotent (True in the answer says so).
    """
    from gotel.golang.disasm import uprobe_emulated

    p = _prologue(gb, symbol)
    if p is None:
        return None
    entry, insns, check = p
    if check is not None:
        nxt = insns[check + 1]
        return (nxt[0], False) if uprobe_emulated(nxt[4]) else (insns[check][0], True)
    return entry, False


def call_sites_to(gb: GoBinary, callee: str) -> list[int]:
    """Addresses of the direct calls to `callee` in the binary's code (indirect calls are not found)."""
    f = gb.functions.get(callee)
    text = gb.image.sections.get(".text")
    if f is None or text is None:
        return []
    from gotel.golang.disasm import call_sites

    return call_sites(bytes(gb.image.data[text.offset : text.offset + text.size]), text.addr, {f.entry})[f.entry]


def call_after(gb: GoBinary, site: int, callee: str, *, window: int = 12) -> int | None:
    """The next direct call to `callee` after the call instruction at `site`, in straight-line code.

    A call instruction is emulated by uprobes and has its arguments in registers by the ABI, so it is
    where a result of the earlier call can be read cheaply once the caller passes it on.
    """
    f = gb.functions.get(callee)
    if f is None:
        return None
    from gotel.golang.disasm import decode

    off = gb.image.vaddr_to_offset(site)
    insns = decode(bytes(gb.image.data[off : off + 16 * window]), site, window + 1)[1:]
    for addr, _size, mnem, ops, _raw in insns:
        if mnem == "call":
            try:
                return addr if int(ops, 16) == f.entry else None
            except ValueError:
                return None
        if mnem.startswith("j") or mnem.startswith("ret") or mnem == "int3":
            return None
    return None


def ret_addresses(gb: GoBinary, symbol: str) -> list[int]:
    """Virtual addresses of every RET in the function (never a uretprobe on Go code)."""
    f = gb.functions.get(symbol)
    if f is None:
        return []
    return [f.entry + o for o in gb.ret_offsets(symbol)]


def struct_offset(gb: GoBinary, type_name: str, field: str) -> int | None:
    """None when unknown (no DWARF, type or field missing): gotel never guesses an offset."""
    try:
        return gb.struct_offset(type_name, field)
    except GoAnalysisError:
        return None


def modules(gb: GoBinary) -> dict[str, str]:
    return {m.path: m.version for m in gb.modules}


def facts_for(gb: GoBinary) -> BinaryFacts:
    rets: dict[str, int | None] = {}

    def ret_count(sym: str) -> int | None:
        if sym not in rets:
            try:
                rets[sym] = len(ret_addresses(gb, sym))
            except GoAnalysisError:
                rets[sym] = None
        return rets[sym]

    return BinaryFacts(
        go_version=gb.go_version,
        modules=modules(gb),
        has_dwarf=gb.has_dwarf,
        function_address=lambda s: function_address(gb, s),
        ret_count=ret_count,
        struct_offset=lambda t, f: struct_offset(gb, t, f),
    )


def function_sites(path: str, functions: Iterable[str], fn_name: str, ret_fn_name: str | None = None,
                   *, after_prologue: bool = True) -> list[Site]:
    """Entry (past the stack check, see body_address) and every RET of each function found, running
    fn_name (ret_fn_name at the RETs)."""
    gb = analyze(path)
    sites: list[Site] = []
    for sym in functions:
        entry = body_address(gb, sym) if after_prologue else function_address(gb, sym)
        if entry is None:
            continue
        sites.append(Site(entry, fn_name, sym))
        sites += [Site(r, ret_fn_name or fn_name, sym, is_return=True) for r in ret_addresses(gb, sym)]
    return sites
