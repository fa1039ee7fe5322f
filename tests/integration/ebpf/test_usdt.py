"""USDT through one compiled program: arguments equal what the fixture passed, semaphores honoured,
probes removed on stop."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from gotel.ebpf.program import BpfProgram
from gotel.ebpf.usdt import CEvent, read_probes, signed64
from gotel.ebpf.usdt_attach import UsdtAttacher, WantedProbe
from tests.integration.ebpf.conftest import TOOLCHAINS, gotel_uprobe_events, read_text_byte


def _fire(app: Any, query: str) -> list[dict[str, Any]]:
    import json

    with urllib.request.urlopen(app.url(f"/fire?{query}"), timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_usdt_arguments_equal_what_the_fixture_passed(goapp: Callable[..., Any], toolchain: str) -> None:
    app = goapp("usdtapp", "-quiet", toolchain=toolchain)
    prog = BpfProgram("usdt.c")
    try:
        names = ["gotelfix:tick", "gotelfix:message", "gotelfix:guarded", "gotelfix:req_start"]
        att = UsdtAttacher(prog, [
            WantedProbe(0, names[0]), WantedProbe(1, names[1], {0: 0}), WantedProbe(2, names[2]),
            WantedProbe(3, names[3], {1: 1}),
        ])
        res = att.add_process(app.pid, f"/proc/{app.pid}/exe")
        assert res.errors == [] and sorted(res.attached) == sorted(names)
        got: list[tuple[int, list[int], bytes, bytes, int]] = []

        def on(addr: int, size: int) -> None:
            e = CEvent.from_address(addr)
            got.append((e.probe_id, [signed64(a) for a in e.args], e.str[0].value, e.str[1].value, e.flags))

        prog.open_ring_buffer("usdt_events", on)
        # the semaphore of the guarded probe is raised while we trace, so it fires
        assert app.get_json("/semaphore") == {"guarded": 1}
        ticks = []
        for v, d, s, n in ((0, -7, 200, -300), (2**63 + 5, -2147483648, 255, 32767), (42, 2147483647, 0, -32768)):
            ticks += _fire(app, f"probe=tick&value={v}&delta={d}&small={s}&neg={n}")
        msgs = _fire(app, "probe=message&msg=hello%20world") + _fire(app, "probe=message&msg=" + "x" * 200)
        guarded = _fire(app, "probe=guarded&n=5")
        reqs = _fire(app, "probe=req&name=checkout&n=3")
        prog.consume()
        tick_ev = [g for g in got if g[0] == 0]
        assert [(t[1][0] & (2**64 - 1), t[1][1], t[1][2], t[1][3]) for t in tick_ev] == [
            (t["args"]["n"], t["args"]["delta"], t["args"]["small"], t["args"]["neg"]) for t in ticks
        ]
        msg_ev = [g for g in got if g[0] == 1]
        assert [m[2].decode() for m in msg_ev] == ["hello world", "x" * 127]  # 128-byte slot, NUL included
        assert [m[1][1] for m in msg_ev] == [m["args"]["len"] for m in msgs]
        assert all(g["fired"] for g in guarded)
        assert [g[1][0] for g in got if g[0] == 2] == [g["args"]["n"] for g in guarded]
        req_ev = [g for g in got if g[0] == 3]
        assert [(r[1][0], r[3].decode()) for r in req_ev] == [
            (r["args"]["id"], r["args"]["name"]) for r in reqs if r["probe"] == "req_start"
        ]
        assert all(g[4] == 0 for g in got), "no argument read failed"
        assert prog.lost_counts() == (0, 0)

        probes, _ = read_probes(f"/proc/{app.pid}/exe")
        tick_addr = next(p.pc for p in probes if p.name == "tick")
        assert read_text_byte(app.pid, tick_addr) == 0xCC  # int3 of the uprobe
        att.remove_process(app.pid)
        assert app.get_json("/semaphore") == {"guarded": 0}
        assert read_text_byte(app.pid, tick_addr) == 0x90  # the probe's nop is back
        assert not any(g["fired"] for g in _fire(app, "probe=guarded&n=2"))
    finally:
        prog.close()
    assert gotel_uprobe_events() == []
    assert app.alive()


def test_unselected_process_of_the_same_binary_is_ignored(goapp: Callable[..., Any]) -> None:
    """Probes sit on the binary, for every process; only registered pids produce events."""
    traced = goapp("usdtapp", "-quiet", toolchain="go1.27")
    other = goapp("usdtapp", "-quiet", toolchain="go1.27")
    assert traced.binary == other.binary
    prog = BpfProgram("usdt.c")
    try:
        att = UsdtAttacher(prog, [WantedProbe(0, "gotelfix:tick")])
        assert att.add_process(traced.pid, f"/proc/{traced.pid}/exe").attached == ["gotelfix:tick"]
        pids: list[int] = []
        prog.open_ring_buffer("usdt_events", lambda addr, size: pids.append(CEvent.from_address(addr).pid))
        _fire(other, "probe=tick&n=7")
        _fire(traced, "probe=tick&n=5")
        # a process of the binary started after the attach is covered by the same probe (not registered here)
        late = goapp("usdtapp", "-quiet", toolchain="go1.27")
        _fire(late, "probe=tick&n=3")
        probes, _ = read_probes(f"/proc/{late.pid}/exe")
        tick = next(p.pc for p in probes if p.name == "tick")
        assert read_text_byte(late.pid, tick) == 0xCC
        prog.consume()
        assert pids == [traced.pid] * 5
        assert att.add_process(late.pid, f"/proc/{late.pid}/exe").attached == ["gotelfix:tick"]
        assert prog.probe_count() == 1  # still one probe for the binary
        _fire(late, "probe=tick&n=2")
        prog.consume()
        assert pids == [traced.pid] * 5 + [late.pid] * 2
        att.remove_process(traced.pid)
        assert prog.probe_count() == 1  # `late` still traced
        att.remove_process(late.pid)
        assert prog.probe_count() == 0
    finally:
        prog.close()
