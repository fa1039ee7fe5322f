"""The go_runtime receiver against what the Go runtime itself reports (both toolchains)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from gotel.pdata.batch import Signal, attr_dict
from gotel.receivers.go_runtime import Config, GoRuntimeReceiver
from tests.helpers.memsink import make_ctx, sinks

pytestmark = [pytest.mark.root, pytest.mark.slow]
TOOLCHAINS = ["go1.27", "go1.19"]


async def _settled(r: GoRuntimeReceiver, pid: int, key: str, want: int, timeout: float = 5.0) -> dict[str, Any]:
    """Counts once `key` reached `want`: the runtime reports a GC done before the probe on the RET
    of startTheWorldWithSema has run on a thread that may be preempted right then."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        c = r.read_counts(pid)
        if c[key] >= want or asyncio.get_running_loop().time() > deadline:
            return c
        await asyncio.sleep(0.05)


async def _receiver(pid: int, **kw: Any) -> tuple[GoRuntimeReceiver, dict[Signal, Any]]:
    s = sinks(Signal.METRICS, Signal.LOGS)
    r = GoRuntimeReceiver(Config(discovery={"pids": [pid]}, collection_interval=3600, **kw), s, make_ctx("go_runtime"))
    await r.start()
    assert pid in r.by_pid, "the fixture was not probed"
    return r, s


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
async def test_gc_count_and_pauses_match_the_runtime(goapp: Any, toolchain: str) -> None:
    app = goapp("runtime", toolchain=toolchain)
    r, s = await _receiver(app.pid)
    try:
        t0 = await asyncio.to_thread(app.get_json, "/truth")
        c0 = r.read_counts(app.pid)
        r.gc_cycles()
        await asyncio.to_thread(app.get_json, "/gc?n=20")
        t1 = await asyncio.to_thread(app.get_json, "/truth")
        gcs = t1["num_gc"] - t0["num_gc"]
        c1 = await _settled(r, app.pid, "gcs", c0["gcs"] + gcs)
        assert gcs >= 20
        assert c1["gcs"] - c0["gcs"] == gcs
        ours = (c1["stw_ns"][1] + c1["stw_ns"][2]) - (c0["stw_ns"][1] + c0["stw_ns"][2])
        runtime_total = t1["pause_total_ns"] - t0["pause_total_ns"]
        assert ours == pytest.approx(runtime_total, rel=0.10), (ours, runtime_total)
        # two GC pauses per cycle (more only when mark termination restarts)
        assert c1["stw_count"][1] - c0["stw_count"][1] == gcs
        assert c1["stw_count"][2] - c0["stw_count"][2] >= gcs
        # ReadMemStats in /truth stops the world for another reason: not a GC pause
        assert c1["stw_count"][0] - c0["stw_count"][0] >= 1
        cycles = [g for g in r.gc_cycles() if g.pid == app.pid]
        assert len(cycles) == gcs
        for g in cycles:
            assert g.start_ns < g.end_ns and g.sweep_termination_ns > 0 and g.mark_termination_ns > 0
            assert g.end_ns - g.start_ns >= g.sweep_termination_ns + g.mark_termination_ns
        # as the exported data: one log record per GC, metrics that agree with the counters
        c2 = r.read_counts(app.pid)
        await asyncio.to_thread(app.get_json, "/gc?n=3")
        await _settled(r, app.pid, "gcs", c2["gcs"] + 3)
        await r.collect_now()
        recs = [attr_dict(rec.attributes) for res, rec in s[Signal.LOGS].log_records() if res["process.pid"] == app.pid]
        assert len(recs) == 3
        pts = {a["go.gc.pause.phase"]: p for res, a, p in s[Signal.METRICS].points("go.gc.pause.duration")
               if res["process.pid"] == app.pid}
        assert set(pts) == {"sweep_termination", "mark_termination"}
        cyc = [p.as_int for res, _, p in s[Signal.METRICS].points("go.gc.cycles") if res["process.pid"] == app.pid]
        assert cyc == [r.read_counts(app.pid)["gcs"]] and cyc[0] >= gcs + 3
    finally:
        await r.shutdown()


@pytest.mark.parametrize(("toolchain", "stripped"), [("go1.27", False), ("go1.19", False), ("go1.27", True)])
async def test_goroutine_creations_match_the_fixture(goapp: Any, toolchain: str, stripped: bool) -> None:
    """Also on a stripped binary: functions and the creator's name come from .gopclntab."""
    app = goapp("runtime", toolchain=toolchain, stripped=stripped)
    r, s = await _receiver(app.pid)
    try:
        before = r.creators(app.pid).get("main.burst", 0)
        c0 = r.read_counts(app.pid)
        n = 0
        for k in (100, 250, 1000):
            out = await asyncio.to_thread(app.get_json, f"/goroutines?n={k}")
            assert out["created"] == k
            n += k
        c1 = await _settled(r, app.pid, "exited", c0["exited"] + n)
        assert r.creators(app.pid).get("main.burst", 0) - before == n
        # every other creation in that window is the HTTP server's per-connection goroutine and such
        assert c1["created"] - c0["created"] >= n
        # the burst's goroutines all returned
        assert c1["exited"] - c0["exited"] >= n
        await r.collect_now()
        by_fn = {a["code.function.name"]: p.as_int
                 for res, a, p in s[Signal.METRICS].points("go.goroutine.created.by_function")
                 if res["process.pid"] == app.pid}
        assert by_fn["main.burst"] == n
    finally:
        await r.shutdown()


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
async def test_live_goroutine_count_matches_the_runtime(goapp: Any, toolchain: str) -> None:
    app = goapp("runtime", toolchain=toolchain)
    r, s = await _receiver(app.pid)
    try:
        await asyncio.sleep(0.3)  # the READY-time connection goroutines are gone
        before = r.live_goroutines(app.pid)
        assert before is not None
        out = await asyncio.to_thread(app.get_json, "/leak?n=500")
        assert out["leaked"] == 500
        await asyncio.sleep(0.3)
        after = r.live_goroutines(app.pid)
        assert after == before + 500  # the 500 goroutines blocked forever
        t = await asyncio.to_thread(app.get_json, "/truth")
        # NumGoroutine ran inside the HTTP handler, whose connection goroutine was alive then
        assert abs(t["num_goroutine"] - 1 - after) <= 2, (t["num_goroutine"], after)
        await r.collect_now()
        pts = [p.as_int for res, _, p in s[Signal.METRICS].points("go.goroutine.count") if res["process.pid"] == app.pid]
        assert len(pts) == 1 and abs(pts[0] - after) <= 2
    finally:
        await r.shutdown()


async def test_mark_assist_time_when_enabled(goapp: Any) -> None:
    """Allocating hard during marking makes goroutines assist; the time is bounded by wall time x threads."""
    app = goapp("runtime", "-alloc-rate", "400000000")
    r, s = await _receiver(app.pid, mark_assist=True)
    try:
        c0, t0 = r.read_counts(app.pid), asyncio.get_running_loop().time()
        await asyncio.sleep(2.0)
        c1, t1 = r.read_counts(app.pid), asyncio.get_running_loop().time()
        assert c1["gcs"] > c0["gcs"]
        assert c1["assists"] > c0["assists"]
        assist_s = (c1["assist_ns"] - c0["assist_ns"]) / 1e9
        assert 0 < assist_s < (t1 - t0) * (os.cpu_count() or 1)
        await r.collect_now()
        pts = [p.as_double for res, _, p in s[Signal.METRICS].points("go.gc.assist.time") if res["process.pid"] == app.pid]
        assert len(pts) == 1 and pts[0] >= assist_s
    finally:
        await r.shutdown()


async def test_probes_detach_when_the_process_exits(goapp: Any) -> None:
    app = goapp("runtime")
    r, _ = await _receiver(app.pid)
    try:
        key = r.by_pid[app.pid].key
        assert r.prog.probe_count(key) >= 6
        app.stop()
        for _ in range(100):
            if app.pid not in r.by_pid and r.prog.probe_count(key) == 0:
                break
            await asyncio.sleep(0.1)
        assert app.pid not in r.by_pid
        assert r.prog.probe_count(key) == 0
    finally:
        await r.shutdown()
