"""cgroup v1 and v2 parsing against real file contents (v2 from a Kubernetes node layout, v1 from this host)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gotel.host import cgroup, procfs

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cgroup"


def _rebase(m: procfs.CgroupMounts, root: Path) -> procfs.CgroupMounts:
    out = procfs.CgroupMounts()
    out.v1 = {k: (str(root) + mnt, r) for k, (mnt, r) in m.v1.items()}
    if m.v2:
        out.v2 = (str(root) + m.v2[0], m.v2[1])
    return out


def test_v2_container_figures() -> None:
    root = FIX / "v2"
    mounts = _rebase(procfs.CgroupMounts.from_mountinfo((root / "proc/self/mountinfo").read_text()), root)
    assert mounts.v1 == {} and mounts.v2 is not None
    paths = procfs.proc_cgroups(4242, proc=str(root / "proc"))
    assert cgroup.container_id_in_paths(paths) == "4f1e0c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
    st = procfs.cgroup_stats(paths, mounts)
    assert st is not None and st.version == 2
    assert st.cpu_usage_s == pytest.approx(488.987368)
    assert st.cpu_user_s == pytest.approx(375.454574)
    assert st.cpu_system_s == pytest.approx(113.532794)
    assert (st.periods, st.throttled_periods) == (51234, 8123)
    assert st.throttled_s == pytest.approx(912.345678)
    assert st.quota_cores == pytest.approx(0.5)
    assert (st.memory_usage, st.memory_limit) == (73400320, 268435456)
    assert st.pressure_some_s == pytest.approx(184.260496)
    assert st.pressure_full_s == pytest.approx(0.912001)


def test_v2_unlimited(tmp_path: Path) -> None:
    src = next((FIX / "v2/sys/fs/cgroup").rglob("cpu.stat")).parent
    d = tmp_path / "cg"
    shutil.copytree(src, d)
    (d / "cpu.max").write_text("max 100000\n")
    (d / "memory.max").write_text("max\n")
    st = procfs.cgroup_v2_stats(str(d), "/x")
    assert st.quota_cores is None and st.memory_limit is None
    assert st.throttled_periods == 8123


def test_v1_figures(tmp_path: Path) -> None:
    root = FIX / "v1"
    m = procfs.CgroupMounts.from_mountinfo((root / "proc/self/mountinfo").read_text())
    assert set(m.v1) >= {"cpu", "cpuacct", "memory"} and m.v2 is not None
    mounts = _rebase(m, tmp_path)
    paths = {"cpu": "/app", "cpuacct": "/app", "memory": "/app", "": "/"}
    cpu = tmp_path / "sys/fs/cgroup/cpu/app"
    acct = tmp_path / "sys/fs/cgroup/cpuacct/app"
    mem = tmp_path / "sys/fs/cgroup/memory/app"
    for d in (cpu, acct, mem):
        os.makedirs(d)
    # the exact layout a 6.x kernel writes for v1 cpu.stat
    (cpu / "cpu.stat").write_text("nr_periods 120\nnr_throttled 37\nthrottled_time 2941772861\nnr_bursts 0\nburst_time 0\n")
    (cpu / "cpu.cfs_quota_us").write_text("10000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (acct / "cpuacct.usage").write_text("1234567890\n")
    (mem / "memory.usage_in_bytes").write_text("4096000\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    st = procfs.cgroup_stats(paths, mounts)
    assert st is not None and st.version == 1
    assert (st.periods, st.throttled_periods) == (120, 37)
    assert st.throttled_s == pytest.approx(2.941772861)
    assert st.quota_cores == pytest.approx(0.1)
    assert st.cpu_usage_s == pytest.approx(1.23456789)
    assert st.memory_usage == 4096000
    assert st.memory_limit is None  # v1's "unlimited"
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    st2 = procfs.cgroup_stats(paths, mounts)
    assert st2 is not None and st2.quota_cores is None


def test_pressure_parse() -> None:
    assert procfs.parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n") == (1.5, None)
    assert procfs.parse_pressure(None) == (None, None)


def test_proc_readers_self() -> None:
    pid = os.getpid()
    st = procfs.proc_stat(pid)
    assert st.num_threads >= 1 and st.utime_s >= 0
    ts = procfs.task_sched(pid)
    assert ts.threads >= 1 and ts.cpu_ns > 0 and ts.voluntary + ts.involuntary > 0
    r, w = os.pipe()
    try:
        kinds = procfs.fd_kinds(pid)
        assert kinds["pipe"] >= 2
    finally:
        os.close(r)
        os.close(w)


def test_gone() -> None:
    with pytest.raises(procfs.ProcessGone):
        procfs.proc_stat(2**22 + 12345)
    with pytest.raises(procfs.ProcessGone):
        procfs.task_sched(2**22 + 12345)
