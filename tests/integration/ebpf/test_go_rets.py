"""Uprobes at the entry and at every RET of Go functions (never a uretprobe): over 100,000 calls on
goroutines whose stacks grow and move, the RET probes fire exactly as often as the entry probe, and the
program keeps running."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import pytest

from gotel.ebpf.goprobes import GoTargets, Site
from gotel.ebpf.program import BpfProgram
from gotel.ebpf.targets import body_address, function_address, function_sites
from gotel.ebpf.usdt import CKey
from gotel.golang import analyze
from tests.integration.ebpf.conftest import TOOLCHAINS, gotel_uprobe_events, read_text_byte

CALLS = 100_000
# shortLived runs exactly once per goroutine; newproc1 creates them; gfget (a free g, or nil) has two
# RETs, both taken during a burst
FUNCS = ["main.shortLived", "runtime.newproc1", "runtime.gfget"]


@pytest.mark.parametrize("stripped", [False, True], ids=["plain", "stripped"])
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_every_ret_fires_as_often_as_the_entry(goapp: Callable[..., Any], toolchain: str, stripped: bool) -> None:
    app = goapp("runtime", toolchain=toolchain, stripped=stripped)
    exe = f"/proc/{app.pid}/exe"
    sites = function_sites(str(app.binary), FUNCS, "gotel_gocount")
    assert {s.symbol for s in sites} == set(FUNCS), "functions found (via .gopclntab when stripped)"
    assert all(any(s.is_return and s.symbol == f for s in sites) for f in FUNCS)
    gb = analyze(str(app.binary))
    # the entry probe sits past the stack-check prologue, which re-runs the entry after morestack
    assert body_address(gb, "main.shortLived") != function_address(gb, "main.shortLived")
    prog = BpfProgram("gocount.c")
    try:
        targets = GoTargets(prog)
        targets.add_process(app.pid, exe, sites)
        index = prog.table("gocount_sites")
        for i, s in enumerate(sites):
            index[CKey(app.pid, 0, s.vaddr)] = ctypes.c_uint32(i)
        assert all(read_text_byte(app.pid, s.vaddr) == 0xCC for s in sites)
        before = _counts(prog, sites)
        answer = app.get_json(f"/goroutines?n={CALLS}", timeout=120)
        assert answer["created"] == CALLS
        # the handler answers once every goroutine called wg.Done(); their RETs run a moment later
        deadline = time.monotonic() + 15
        counts = _counts(prog, sites)
        while time.monotonic() < deadline and any(counts[(f, False)] != counts[(f, True)] for f in FUNCS):
            time.sleep(0.1)
            counts = _counts(prog, sites)
        delta = {k: counts[k] - before[k] for k in counts}
        for f in FUNCS:
            entries, rets = delta[(f, False)], delta[(f, True)]
            assert entries == rets, f"{f}: {entries} entries but {rets} returns"
        assert delta[("main.shortLived", False)] == CALLS
        assert delta[("runtime.newproc1", False)] >= CALLS
        assert delta[("runtime.gfget", False)] >= CALLS
        per_site = _site_counts(prog, sites)
        gfget_rets = [n for s, n in zip(sites, per_site, strict=True) if s.symbol == "runtime.gfget" and s.is_return]
        assert len(gfget_rets) >= 2 and all(n > 0 for n in gfget_rets), f"every RET taken: {gfget_rets}"
        assert app.alive()
        assert app.get_json("/truth")["goroutines_created"] >= CALLS
        targets.remove_process(app.pid)
        assert all(read_text_byte(app.pid, s.vaddr) != 0xCC for s in sites)
    finally:
        prog.close()
    assert gotel_uprobe_events() == []


def _site_counts(prog: BpfProgram, sites: list[Site]) -> list[int]:
    hits = prog.table("gocount_hits")
    return [int(sum(hits[ctypes.c_int(i)])) for i in range(len(sites))]


def _counts(prog: BpfProgram, sites: list[Site]) -> dict[tuple[str, bool], int]:
    out: dict[tuple[str, bool], int] = {}
    for s, n in zip(sites, _site_counts(prog, sites), strict=True):
        out[(s.symbol, s.is_return)] = out.get((s.symbol, s.is_return), 0) + n
    return out
