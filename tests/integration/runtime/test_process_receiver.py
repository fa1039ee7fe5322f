"""The process receiver against the kernel's own figures: a CPU hog in a real v1 cpu cgroup with a low quota."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gotel.host import procfs
from gotel.pdata.batch import Signal
from gotel.receivers.process import Config, ProcessReceiver
from tests.helpers.memsink import make_ctx, sinks

pytestmark = pytest.mark.root

CPU = Path("/sys/fs/cgroup/cpu")
ACCT = Path("/sys/fs/cgroup/cpuacct")


def _rmdir_when_empty(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)



def _burn(app: Any) -> None:
    """Keeps the fixture busy; the request ends with the fixture when the test stops it."""
    with contextlib.suppress(OSError):
        app.get_json("/burn?ms=20000", timeout=120)

@pytest.fixture
def throttled_hog(goapp: Any) -> Iterator[tuple[int, str]]:
    """The Go runtime fixture burning CPU in fresh cpu and cpuacct cgroups limited to 10% of one CPU;
    the cgroups are removed afterwards (the fixture is stopped by the goapp fixture)."""
    name = f"gotel-test-{uuid.uuid4().hex[:8]}"
    cpu, acct = CPU / name, ACCT / name
    cpu.mkdir()
    acct.mkdir()
    app = None
    try:
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text("10000")
        app = goapp("runtime")
        (cpu / "cgroup.procs").write_text(str(app.pid))
        (acct / "cgroup.procs").write_text(str(app.pid))
        threading.Thread(target=_burn, args=(app,), daemon=True).start()
        yield app.pid, "/" + name
    finally:
        if app is not None:
            app.stop()
        _rmdir_when_empty(cpu)
        _rmdir_when_empty(acct)


def _kernel_v1(path: str) -> dict[str, int]:
    out = {}
    for line in (CPU / path.lstrip("/") / "cpu.stat").read_text().splitlines():
        k, v = line.split()
        out[k] = int(v)
    out["usage"] = int((ACCT / path.lstrip("/") / "cpuacct.usage").read_text())
    return out


async def test_throttling_equals_kernel_cpu_stat(throttled_hog: tuple[int, str]) -> None:
    pid, path = throttled_hog
    time.sleep(1.5)  # 15 periods, each throttled at a 10% quota
    os.kill(pid, signal.SIGSTOP)  # freeze the counters so that both readings see the same state
    try:
        time.sleep(0.3)
        before = _kernel_v1(path)
        s = sinks(Signal.METRICS)
        r = ProcessReceiver(Config(discovery={"pids": [pid]}), s, make_ctx("process"))
        r.setup()
        await r.push(r.collect())
        after = _kernel_v1(path)
        truth = procfs.task_sched(pid)
        sched_fields = procfs.proc_sched(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert before == after, "kernel counters moved while the hog was stopped"
    assert before["nr_throttled"] >= 5, before

    sink = s[Signal.METRICS]

    def one(name: str) -> float:
        pts = [p for res, _, p in sink.points(name) if res.get("gotel.cgroup.path") == path]
        assert len(pts) == 1, (name, pts)
        return pts[0].as_int if pts[0].HasField("as_int") else pts[0].as_double

    assert one("container.cpu.throttled.periods") == before["nr_throttled"]
    assert one("container.cpu.periods") == before["nr_periods"]
    assert one("container.cpu.throttled.time") == pytest.approx(before["throttled_time"] / 1e9, abs=1e-9)
    assert one("container.cpu.time") == pytest.approx(before["usage"] / 1e9, abs=1e-9)
    assert one("container.cpu.limit") == pytest.approx(0.1)
    # the hog's own figures: it was throttled, so it waited with work to do, and it was preempted
    res_pts = [(res, a, p) for res, a, p in sink.points("process.context_switches") if res["process.pid"] == pid]
    kinds = {a["process.context_switch.type"]: p.as_int for _, a, p in res_pts}
    assert kinds["involuntary"] == truth.involuntary and kinds["involuntary"] > 0
    assert kinds["voluntary"] == truth.voluntary
    threads = [p.as_int for res, _, p in sink.points("process.thread.count") if res["process.pid"] == pid]
    assert threads == [truth.threads]
    delay = [p.as_double for res, _, p in sink.points("process.schedstat.run_delay") if res["process.pid"] == pid]
    assert delay == [pytest.approx(truth.run_delay_ns / 1e9, abs=1e-9)] and delay[0] > 0
    # /proc/PID/sched fields this kernel has (CONFIG_SCHED_DEBUG): the same values, named
    for suffix, val in sched_fields.items():
        got = [p.as_double for res, _, p in sink.points(f"process.sched.{suffix}") if res["process.pid"] == pid]
        assert got == [pytest.approx(val)], suffix


async def test_fd_kinds_and_legacy_names() -> None:
    code = "import os,socket,sys,time; r,w=os.pipe(); s=socket.socket(); print('ok',flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        s = sinks(Signal.METRICS)
        cfg = Config(discovery={"pids": [child.pid], "go_only": False}, legacy_semconv=True, cgroups=False)
        rec = ProcessReceiver(cfg, s, make_ctx("process"))
        rec.setup()
        await rec.push(rec.collect())
        sink = s[Signal.METRICS]
        kinds: dict[str, int] = {}
        for _, a, p in sink.points("process.unix.file_descriptor.count"):
            kinds[a["gotel.fd.kind"]] = kinds.get(a["gotel.fd.kind"], 0) + p.as_int
        truth = procfs.fd_kinds(child.pid)
        assert kinds == truth  # every kind, absent ones as 0
        assert kinds["pipe"] >= 2 and kinds["socket"] == 1
        # a TCP socket never bound nor connected is in no /proc/net table: a socket, transport unknown
        socks = [a for _, a, _ in sink.points("process.unix.file_descriptor.count") if a["gotel.fd.kind"] == "socket"]
        assert socks == [{"gotel.fd.kind": "socket"}]
        legacy = sink.points("process.open_file_descriptor.count")
        assert legacy and legacy[0][2].as_int == len(os.listdir(f"/proc/{child.pid}/fd"))
        cs = sink.points("process.context_switches")
        assert {a["process.context_switch_type"] for _, a, _ in cs} == {"voluntary", "involuntary"}
    finally:
        child.kill()
        child.wait()


async def test_exited_process_is_counted_not_fatal() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s = sinks(Signal.METRICS)
    rec = ProcessReceiver(Config(discovery={"pids": [p.pid], "go_only": False}), s, make_ctx("process"))
    rec.setup()
    await rec.push(rec.collect())  # the pid is not found by the scan: nothing, no error
    assert s[Signal.METRICS].points("process.cpu.time") == []


UNIFIED = Path("/sys/fs/cgroup/unified")


def test_v2_figures_from_a_live_cgroup(goapp: Any) -> None:
    """This host's cgroup2 hierarchy has no cpu controller, but every v2 cgroup has the basic cpu.stat
    and cpu.pressure: read a live one made by the test and compare with the kernel's own files."""
    d = UNIFIED / f"gotel-test-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    app = None
    try:
        app = goapp("runtime")
        (d / "cgroup.procs").write_text(str(app.pid))
        app.get_json("/burn?ms=300")
        os.kill(app.pid, signal.SIGSTOP)
        try:
            time.sleep(0.2)
            st = procfs.cgroup_v2_stats(str(d), "/" + d.name)
            raw = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
            pressure = (d / "cpu.pressure").read_text()
        finally:
            os.kill(app.pid, signal.SIGCONT)
        assert st.cpu_usage_s == pytest.approx(int(raw["usage_usec"]) / 1e6, abs=1e-6)
        assert st.cpu_user_s == pytest.approx(int(raw["user_usec"]) / 1e6, abs=1e-6)
        assert st.cpu_system_s == pytest.approx(int(raw["system_usec"]) / 1e6, abs=1e-6)
        assert st.cpu_usage_s is not None and st.cpu_usage_s > 0.02  # it burnt up to 300 ms (CPU is shared)
        some, full = procfs.parse_pressure(pressure)
        assert (st.pressure_some_s, st.pressure_full_s) == (some, full)
        assert st.quota_cores is None and st.throttled_periods is None  # no cpu controller here
    finally:
        if app is not None:
            app.stop()
        _rmdir_when_empty(d)
