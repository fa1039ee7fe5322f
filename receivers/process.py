"""`process` receiver: the kernel's own per-process and per-cgroup scheduler, fd and CPU figures, no BPF.

Answers "is it the CPU quota, the run queue, or blocking?" from /proc/PID/{stat,status,schedstat,sched,fd}
and the process's cgroup files (v1 and v2), at every collection interval; and "is it leaking fds or
connections?" from the growth of each kind of fd (sockets by transport and TCP state) over a window,
reported once per episode as a log record naming the process and the kind.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory
from gotel.config.types import Duration
from gotel.diagnose.fdleak import Growth, LeakDetector
from gotel.discovery import DiscoveryConfig
from gotel.host import cgroup, fdscan, procfs
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.builders import LogsBuilder, MetricsBuilder
from gotel.receiverhelper.periodic import PeriodicReceiver, select_now

SCOPE = "gotel/receiver/process"
# a process: (pid, start time in ticks), since a reused pid is another process
ProcKey = tuple[int, int]


class FdLeakConfig(ComponentConfig):
    enabled: bool = Field(True, description="report fd kinds that keep growing (needs fds: true)")
    window: Duration = Field(300.0, gt=0, description="how far back growth is measured")
    min_growth: int = Field(50, ge=1, description="fds of one kind gained over the window that make a finding")
    tolerance: float = Field(
        0.1, ge=0, le=1,
        description="largest fall on the way, as a share of the rise, still counted as a leak (a pool "
        "that grows and shrinks is not one)",
    )


class Config(ComponentConfig):
    collection_interval: Duration = Field(10.0, gt=0, description="time between two readings")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    fds: bool = Field(True, description="count open file descriptors by kind (a readlink per fd)")
    fd_leak: FdLeakConfig = Field(default_factory=FdLeakConfig)
    cgroups: bool = Field(True, description="per-cgroup (container) CPU, throttling, memory and pressure")
    include_root_cgroup: bool = Field(False, description="also report processes sitting in the root cgroup")
    legacy_semconv: bool = Field(
        False,
        description="also emit the pre-rename names process.open_file_descriptor.count and "
        "the process.context_switch_type attribute",
    )


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


class ProcessReceiver(PeriodicReceiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        super().__init__(sinks, ctx, cfg.collection_interval)
        self.cfg = cfg
        self.mounts = procfs.CgroupMounts()
        self.btime = 0.0
        self._cg_first_seen: dict[str, int] = {}
        self._gone = ctx.telemetry.counter(
            "process_receiver_gone", "Selected processes that exited while being read.", ()
        )
        leak = cfg.fd_leak
        self.leaks: LeakDetector[ProcKey, fdscan.FdKey] = LeakDetector(leak.window, leak.min_growth, leak.tolerance)
        self._seen: set[tuple[int, int]] = set()

    def setup(self) -> None:
        self.btime = _boot_time()
        self.mounts = procfs.CgroupMounts.load()

    def pids(self) -> set[int]:
        return set(select_now(self.cfg.discovery))

    def collect(self) -> list[Batch]:
        mb = MetricsBuilder(SCOPE, time_ns=time.time_ns())
        lb = LogsBuilder(SCOPE)
        seen_cgroups: set[str] = set()
        tables: dict[str, fdscan.SocketTable] = {}
        seen: set[tuple[int, int]] = set()
        now = time.monotonic()
        for pid in sorted(self.pids()):
            try:
                self._collect_pid(mb, lb, pid, seen_cgroups, tables, seen, now)
            except procfs.ProcessGone:
                self._gone.inc()
        self.leaks.forget(self._seen - seen)
        self._seen = seen
        return [mb.batch(), lb.batch()]

    def _collect_pid(self, mb: MetricsBuilder, lb: LogsBuilder, pid: int, seen_cgroups: set[str],
                     tables: dict[str, fdscan.SocketTable], seen: set[tuple[int, int]], now: float) -> None:
        st = procfs.proc_stat(pid)
        sched = procfs.task_sched(pid)
        paths = procfs.proc_cgroups(pid)
        cid = cgroup.container_id_in_paths(paths)
        res: dict[str, Any] = {"process.pid": pid, "process.executable.name": st.comm}
        if cid:
            res["container.id"] = cid
        start_ns = int((self.btime + st.starttime_ticks / procfs.CLK_TCK) * 1e9)
        kw: dict[str, Any] = {"start": start_ns}
        mb.sum(res, "process.cpu.time", st.utime_s, unit="s", attributes={"cpu.mode": "user"}, **kw)
        mb.sum(res, "process.cpu.time", st.stime_s, unit="s", attributes={"cpu.mode": "system"}, **kw)
        mb.sum(res, "process.thread.count", st.num_threads, unit="{thread}", monotonic=False)
        attr = "process.context_switch_type" if self.cfg.legacy_semconv else "process.context_switch.type"
        for typ, v in (("voluntary", sched.voluntary), ("involuntary", sched.involuntary)):
            mb.sum(res, "process.context_switches", v, unit="{context_switch}", attributes={attr: typ}, **kw)
        mb.sum(
            res,
            "process.schedstat.run_delay",
            sched.run_delay_ns / 1e9,
            unit="s",
            desc="Time the process's live threads spent runnable, waiting for a CPU (/proc/PID/task/*/schedstat).",
            **kw,
        )
        mb.sum(
            res,
            "process.schedstat.timeslices",
            sched.timeslices,
            unit="{timeslice}",
            desc="Times the process's live threads were put on a CPU.",
            **kw,
        )
        for suffix, val in procfs.proc_sched(pid).items():
            unit = "s" if suffix.endswith("time") else "{" + suffix.split(".")[0].rstrip("s") + "}"
            mb.sum(res, f"process.sched.{suffix}", val, unit=unit, desc="/proc/PID/sched (main thread)", **kw)
        if self.cfg.fds:
            groups = fdscan.fd_groups(pid, tables)
            present = {k[0] for k in groups}
            shown = {**groups, **{(k, "", ""): 0 for k in procfs.FD_KINDS if k not in present}}
            for (kind, transport, state), n in sorted(shown.items()):
                mb.sum(
                    res,
                    "process.unix.file_descriptor.count",
                    n,
                    unit="{file_descriptor}",
                    attributes=_fd_attrs(kind, transport, state),
                    monotonic=False,
                )
            if self.cfg.legacy_semconv:
                mb.sum(res, "process.open_file_descriptor.count", sum(groups.values()), unit="{count}",
                       monotonic=False)
            if self.cfg.fd_leak.enabled:
                seen.add((pid, st.starttime_ticks))
                self._fd_leaks(mb, lb, res, pid, st.starttime_ticks, groups, now)
        if self.cfg.cgroups:
            self._collect_cgroup(mb, paths, cid, seen_cgroups)

    def _fd_leaks(self, mb: MetricsBuilder, lb: LogsBuilder, res: dict[str, Any], pid: int, start: int,
                  groups: dict[fdscan.FdKey, int], now: float) -> None:
        proc = (pid, start)
        for g in self.leaks.observe(now, proc, groups):
            lb.add(res, _finding_body(res, g), severity="WARN", event_name="gotel.fd_leak",
                   attributes={**_fd_attrs(*g.key), "gotel.fd.growth": g.growth, "gotel.fd.count": g.last,
                               "gotel.fd.window": round(g.seconds, 3)})
        for key in self.leaks.keys(proc):
            grown = self.leaks.growth(proc, key)
            if grown is not None:
                mb.gauge(res, "process.unix.file_descriptor.growth", grown.growth, unit="{file_descriptor}",
                         attributes=_fd_attrs(*key),
                         desc="fds of this kind gained (negative: lost) over the fd_leak window.")

    def _collect_cgroup(
        self, mb: MetricsBuilder, paths: dict[str, str], cid: str | None, seen: set[str]
    ) -> None:
        cg = procfs.cgroup_stats(paths, self.mounts)
        if cg is None or cg.path in seen:
            return
        if cg.path == "/" and not self.cfg.include_root_cgroup:
            return
        seen.add(cg.path)
        res: dict[str, Any] = {"gotel.cgroup.path": cg.path, "gotel.cgroup.version": cg.version}
        if cid:
            res["container.id"] = cid
        start = self._cg_first_seen.setdefault(cg.path, time.time_ns())
        kw: dict[str, Any] = {"start": start}
        if cg.cpu_usage_s is not None:
            mb.sum(res, "container.cpu.time", cg.cpu_usage_s, unit="s", **kw)
        if cg.cpu_user_s is not None and cg.cpu_system_s is not None:
            mb.sum(res, "container.cpu.time", cg.cpu_user_s, unit="s", attributes={"cpu.mode": "user"}, **kw)
            mb.sum(res, "container.cpu.time", cg.cpu_system_s, unit="s", attributes={"cpu.mode": "system"}, **kw)
        if cg.periods is not None:
            mb.sum(res, "container.cpu.periods", cg.periods, unit="{period}",
                   desc="CFS enforcement periods elapsed (cpu.stat nr_periods).", **kw)
        if cg.throttled_periods is not None:
            mb.sum(res, "container.cpu.throttled.periods", cg.throttled_periods, unit="{period}",
                   desc="Periods in which the cgroup was throttled (cpu.stat nr_throttled).", **kw)
        if cg.throttled_s is not None:
            mb.sum(res, "container.cpu.throttled.time", cg.throttled_s, unit="s",
                   desc="Total time the cgroup's threads were throttled (cpu.stat throttled_time/usec).", **kw)
        if cg.quota_cores is not None:
            mb.gauge(res, "container.cpu.limit", cg.quota_cores, unit="{cpu}",
                     desc="CPU quota divided by period (cpu.max or cfs_quota_us/cfs_period_us).")
        if cg.memory_usage is not None:
            mb.sum(res, "container.memory.usage", cg.memory_usage, unit="By", monotonic=False)
        if cg.memory_limit is not None:
            mb.sum(res, "container.memory.limit", cg.memory_limit, unit="By", monotonic=False)
        for kind, v in (("some", cg.pressure_some_s), ("full", cg.pressure_full_s)):
            if v is not None:
                mb.sum(res, "container.cpu.pressure.stall.time", v, unit="s",
                       attributes={"gotel.pressure.kind": kind},
                       desc="Time some/all tasks were stalled waiting for CPU (cpu.pressure total).", **kw)


def _fd_attrs(kind: str, transport: str, state: str) -> dict[str, Any]:
    a: dict[str, Any] = {"gotel.fd.kind": kind}
    if transport:
        a["network.transport"] = transport
    if state:
        a["network.connection.state"] = state
    return a


def _finding_body(res: dict[str, Any], g: Growth[fdscan.FdKey]) -> str:
    kind, transport, state = g.key
    what = " ".join(x for x in (transport, state, kind) if x)
    return (f"fd leak: {res['process.executable.name']} (pid {res['process.pid']}) gained {g.growth} "
            f"{what} fds in {g.seconds:.0f}s ({g.first} -> {g.last})")


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    return ProcessReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="process",
    config=Config,
    signals=frozenset({Signal.METRICS, Signal.LOGS}),
    description="Per-process context switches, run delay, fds by kind (sockets by TCP state) and fd "
    "leak findings, threads, and per-cgroup CPU throttling and memory, from /proc and cgroup files",
    create=create,
    shares_process=True,
)
