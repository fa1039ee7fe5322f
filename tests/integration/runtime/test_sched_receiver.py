"""The sched receiver against the kernel's own per-thread figures and the fixture's own calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gotel.host import procfs
from gotel.pdata.batch import Signal
from gotel.receivers.sched import Config, SchedReceiver
from tests.helpers.memsink import make_ctx, sinks

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def hog_cpu0() -> Iterator[int]:
    """A busy process pinned to CPU 0, killed by pid afterwards."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(p.pid, {0})
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _pin_process(pid: int, cpu: int) -> None:
    for tid in procfs.thread_ids(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})


def _frozen(pid: int, read: Callable[[], Any]) -> tuple[int, Any]:
    """Stops the process so that no wait is in flight, reads the kernel's and our figure, resumes it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)
        kernel = procfs.task_sched(pid).run_delay_ns
        ours = read()
        assert procfs.task_sched(pid).run_delay_ns == kernel, "the stopped process kept waiting"
        return kernel, ours
    finally:
        os.kill(pid, signal.SIGCONT)


async def _receiver(pid: int, **kw: Any) -> tuple[SchedReceiver, dict[Signal, Any]]:
    s = sinks(Signal.METRICS, Signal.LOGS)
    r = SchedReceiver(Config(discovery={"pids": [pid]}, collection_interval=3600, **kw), s, make_ctx("sched"))
    await r.start()
    return r, s


@pytest.mark.parametrize("toolchain", ["go1.27", "go1.19"])
async def test_runqueue_latency_matches_schedstat(goapp: Any, hog_cpu0: int, toolchain: str) -> None:
    app = goapp("runtime", toolchain=toolchain)
    _pin_process(app.pid, 0)
    r, s = await _receiver(app.pid)
    try:
        burner = threading.Thread(target=lambda: app.get_json("/burn?ms=6000", timeout=60), daemon=True)
        burner.start()
        await asyncio.sleep(0.5)
        k0, (o0, n0) = _frozen(app.pid, lambda: r.runqueue_total_ns(app.pid))
        await asyncio.sleep(3.0)
        k1, (o1, n1) = _frozen(app.pid, lambda: r.runqueue_total_ns(app.pid))
        kernel, ours = k1 - k0, o1 - o0
        assert kernel > 300_000_000, f"the hog should have kept the fixture waiting, only {kernel} ns"
        assert n1 - n0 > 10
        assert ours == pytest.approx(kernel, rel=0.05), (ours, kernel)
        await r.collect_now()
        pts = [p for res, _, p in s[Signal.METRICS].points("process.sched.runqueue.latency")
               if res["process.pid"] == app.pid]
        assert len(pts) == 1
        assert pts[0].sum >= ours / 1e9 and pts[0].count >= n1 and sum(pts[0].bucket_counts) == pts[0].count
        cg = s[Signal.METRICS].points("container.sched.runqueue.latency")
        assert cg and sum(p.count for _, _, p in cg) >= pts[0].count
        burner.join(timeout=30)
    finally:
        await r.shutdown()


@pytest.mark.parametrize(("toolchain", "stripped"), [("go1.27", False), ("go1.19", False), ("go1.27", True)])
async def test_slow_syscall_reported_once_with_go_stack(goapp: Any, toolchain: str, stripped: bool) -> None:
    """Also stripped: the stack is named from .gopclntab, and Go's own sleeps are still told apart."""
    app = goapp("runtime", toolchain=toolchain, stripped=stripped)
    r, s = await _receiver(app.pid)
    try:
        await asyncio.sleep(0.3)
        await r.collect_now()  # whatever happened before the call
        s[Signal.LOGS].clear()
        s[Signal.METRICS].clear()
        out = await asyncio.to_thread(app.get_json, "/syscall?ms=50")
        assert out["calls"] == 1
        await asyncio.sleep(0.5)  # let the ring buffer be drained
        await r.collect_now()
        logs = [(res, rec) for res, rec in s[Signal.LOGS].log_records() if res["process.pid"] == app.pid]
        from gotel.pdata.batch import attr_dict

        recs = [attr_dict(rec.attributes) for _, rec in logs]
        nanosleeps = [a for a in recs if a["gotel.syscall.name"] == "nanosleep"]
        assert len(nanosleeps) == 1, recs
        a = nanosleeps[0]
        assert 0.05 <= a["gotel.syscall.duration"] < 0.5
        assert "main.blockingSyscall" in a["code.stacktrace"].split("\n"), a["code.stacktrace"]
        assert a["code.function.name"] == "main.blockingSyscall"
        counts = {at["gotel.syscall.name"]: p.as_int for res, at, p in s[Signal.METRICS].points("process.syscall.slow.count")
                  if res["process.pid"] == app.pid}
        assert counts.get("nanosleep") == 1, counts
    finally:
        await r.shutdown()


async def test_offcpu_split_matches_kernel_switch_counts(goapp: Any) -> None:
    """Voluntary/involuntary off-CPU episodes counted by the kernel itself (nvcsw/nivcsw)."""
    app = goapp("runtime")
    r, _s = await _receiver(app.pid)
    try:
        def read() -> tuple[int, int, int, int]:
            t = procfs.task_sched(app.pid)
            m = r.read_maps()["off"]
            return (t.voluntary, t.involuntary, m.get((app.pid, 1), (0, 0))[1], m.get((app.pid, 0), (0, 0))[1])

        os.kill(app.pid, signal.SIGSTOP)
        time.sleep(0.2)
        a = read()
        os.kill(app.pid, signal.SIGCONT)
        for _ in range(20):
            await asyncio.to_thread(app.get_json, "/goroutines?n=200")
            await asyncio.to_thread(app.get_json, "/syscall?ms=2")
        os.kill(app.pid, signal.SIGSTOP)
        time.sleep(0.2)
        b = read()
        os.kill(app.pid, signal.SIGCONT)
        kvol, kinv, ovol, oinv = (y - x for x, y in zip(a, b, strict=True))
        assert kvol > 40
        # Every switch is seen: the totals are exact. A thread that blocks while our own SIGSTOP is
        # pending is counted voluntary by the kernel but shows prev_state R in the tracepoint (the
        # kernel sets it running again to take the signal): at most one per thread per stop.
        assert ovol + oinv == kvol + kinv, (ovol, kvol, oinv, kinv)
        threads = procfs.task_sched(app.pid).threads
        assert abs(ovol - kvol) <= 2 * threads, (ovol, kvol, oinv, kinv)
    finally:
        await r.shutdown()
