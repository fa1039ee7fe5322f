"""Go probes go into the selected processes only: another process of the same binary (a load generator,
an unselected replica) keeps its original code and never traps."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from gotel.ebpf.goprobes import GoTargets
from gotel.ebpf.program import BpfProgram
from gotel.ebpf.targets import function_sites
from gotel.golang.elf import ElfImage
from tests.integration.ebpf.conftest import read_text_byte, wait_until


class CKey(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("ip", ctypes.c_uint64)]


def _bytes(pid: int, addrs: list[int]) -> list[int]:
    return [read_text_byte(pid, a) for a in addrs]


def test_probes_are_written_into_selected_processes_only(goapp: Callable[..., Any]) -> None:
    a = goapp("runtime", toolchain="go1.27")
    b = goapp("runtime", toolchain="go1.27")  # same binary file
    sites = function_sites(str(a.binary), ["main.shortLived"], "gotel_gocount")
    addrs = [s.vaddr for s in sites]
    img = ElfImage(str(a.binary))
    original = [img.data[img.vaddr_to_offset(x)] for x in addrs]
    img.close()
    assert 0xCC not in original
    prog = BpfProgram("gocount.c")
    try:
        targets = GoTargets(prog)
        index, hits = prog.table("gocount_sites"), prog.table("gocount_hits")
        for pid in (a.pid, b.pid):
            for i, s in enumerate(sites):
                index[CKey(pid, 0, s.vaddr)] = ctypes.c_uint32(i)
        targets.add_process(a.pid, f"/proc/{a.pid}/exe", sites)
        assert _bytes(a.pid, addrs) == [0xCC] * len(addrs)
        assert _bytes(b.pid, addrs) == original, "an unselected process of the binary got breakpoints"
        c = goapp("runtime", toolchain="go1.27")  # started after the attach
        assert _bytes(c.pid, addrs) == original

        def entries() -> int:
            return sum(int(sum(hits[ctypes.c_int(i)])) for i, s in enumerate(sites) if not s.is_return)

        n0 = entries()
        assert b.get_json("/goroutines?n=500", timeout=60)["created"] == 500
        assert entries() == n0  # the unselected process ran the function untraced
        assert a.get_json("/goroutines?n=500", timeout=60)["created"] == 500
        assert wait_until(lambda: entries() - n0 == 500)

        targets.add_process(b.pid, f"/proc/{b.pid}/exe", sites)
        assert _bytes(b.pid, addrs) == [0xCC] * len(addrs)
        assert prog.probe_count() == 2 * len(sites)
        targets.remove_process(a.pid)  # its probes come off; b's stay
        assert wait_until(lambda: _bytes(a.pid, addrs) == original)
        assert _bytes(b.pid, addrs) == [0xCC] * len(addrs)
        assert prog.probe_count() == len(sites)
        targets.close()
        assert wait_until(lambda: _bytes(b.pid, addrs) == original)
        assert prog.probe_count() == 0

        # one attachment per binary instead: every process of the binary traps, selected or not
        shared = GoTargets(prog, per_process=False)
        shared.add_process(a.pid, f"/proc/{a.pid}/exe", sites)
        assert _bytes(b.pid, addrs) == [0xCC] * len(addrs)
        assert _bytes(c.pid, addrs) == [0xCC] * len(addrs)
        shared.close()
        assert wait_until(lambda: _bytes(c.pid, addrs) == original)
    finally:
        prog.close()
