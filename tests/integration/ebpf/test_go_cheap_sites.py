"""Where go_ebpf's probes sit: on instructions the kernel emulates (no single-step, which costs 10+ us a
hit in a VM), firing as often as the event they stand for.

Against the runtime fixture: 100,000 goroutines are created; the probe at newproc1's entry site and the one
at the `call runqput` that hands each new goroutine to the scheduler fire once per creation, the latter
with the new g in its second argument register; main.shortLived's entry site fires once per call (or, on
Go <= 1.20 where the site is the stack check's own branch, once more per stack growth only).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import pytest

from gotel.ebpf.goprobes import GoTargets, Site
from gotel.ebpf.program import BpfProgram
from gotel.ebpf.targets import call_after, call_sites_to, entry_site
from gotel.ebpf.usdt import CKey
from gotel.golang import analyze
from gotel.golang.disasm import uprobe_emulated
from gotel.receivers.go_ebpf.flowcontrol import RARE_PROGRAMS
from gotel.receivers.go_ebpf.probes import plan_for
from tests.helpers import goapps
from tests.integration.ebpf.conftest import TOOLCHAINS, gotel_uprobe_events

CALLS = 100_000


@pytest.mark.parametrize("stripped", [False, True], ids=["plain", "stripped"])
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_goroutine_creation_sites_fire_once_each(goapp: Callable[..., Any], toolchain: str, stripped: bool) -> None:
    app = goapp("runtime", toolchain=toolchain, stripped=stripped)
    gb = analyze(str(app.binary))
    newproc = entry_site(gb, "runtime.newproc1")
    short = entry_site(gb, "main.shortLived")
    assert newproc is not None and short is not None
    enqueue = [a for c in call_sites_to(gb, "runtime.newproc1") if (a := call_after(gb, c, "runtime.runqput"))]
    assert len(enqueue) == 1, "newproc's closure hands the new g to runqput right after newproc1"
    sites = [Site(newproc[0], "gotel_gocount", "newproc1"), Site(enqueue[0], "gotel_gocount", "enqueue"),
             Site(short[0], "gotel_gocount", "shortLived")]
    for s in sites:
        assert uprobe_emulated(gb.image.read_vaddr(s.vaddr, 16)), f"{s.symbol} at {s.vaddr:#x} would be single-stepped"
    prog = BpfProgram("gocount.c")
    try:
        targets = GoTargets(prog)
        targets.add_process(app.pid, f"/proc/{app.pid}/exe", sites)
        index = prog.table("gocount_sites")
        for i, s in enumerate(sites):
            index[CKey(app.pid, 0, s.vaddr)] = ctypes.c_uint32(i)
        before = _counts(prog, len(sites))
        answer = app.get_json(f"/goroutines?n={CALLS}", timeout=120)
        assert answer["created"] == CALLS
        time.sleep(0.2)
        created, enqueued, calls = (a - b for a, b in zip(_counts(prog, len(sites)), before, strict=True))
        assert enqueued == created >= CALLS, (created, enqueued)  # the runtime's own goroutines too
        if short[1]:  # the stack check's branch: again after each morestack
            assert CALLS <= calls <= CALLS * 1.05, calls
        else:
            assert calls == CALLS
        assert app.alive()
        targets.remove_process(app.pid)
    finally:
        prog.close()
    assert gotel_uprobe_events() == []


@pytest.mark.parametrize("stripped", [False, True], ids=["plain", "stripped"])
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_go_ebpf_grpc_sites_are_all_emulated(toolchain: str, stripped: bool) -> None:
    """Not one gRPC probe is single-stepped; for HTTP only the client's RETs (they carry the response)."""
    for app in ("grpcapp", "httpapp"):
        path = str(goapps.build(app, toolchain, stripped=stripped))
        gb = analyze(path)
        plan = plan_for(path)
        assert plan.sites
        # flow control (issue 19): sites that fire only after a real wait or per RST_STREAM/GOAWAY frame
        slow = sorted({s.fn_name for s in plan.sites if not uprobe_emulated(gb.image.read_vaddr(s.vaddr, 16))}
                      - RARE_PROGRAMS)
        assert slow == ([] if app == "grpcapp" else ["http_client_end"]), (app, slow)
        assert not any(s.is_return and s.fn_name != "http_client_end" for s in plan.sites)


def _counts(prog: BpfProgram, n: int) -> list[int]:
    hits = prog.table("gocount_hits")
    return [int(sum(hits[ctypes.c_int(i)])) for i in range(n)]
