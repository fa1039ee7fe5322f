"""`diagnosis` connector: the diagnosis rules (gotel/diagnose/rules.py) run over live metrics, per process.

It sits where the collector puts connectors: the exporter of a metrics pipeline and the receiver of a
logs pipeline (findings as log records, so they land in Loki beside the application's logs) and/or of
a metrics pipeline (the counter ``gotel.findings`` by rule and severity). Each finding is emitted once
per episode: when a rule starts finding something for a process at ``min_severity`` or worse; the
episode ends after ``clear_evaluations`` evaluations without it, and only then may the rule fire again.

Inputs, per process (resource ``process.pid``): the ``process`` receiver's series and its cgroup's
(cpu_throttling, run_queue_latency, fd_leak), go_ebpf's gRPC call counts and deadline misses (deadline,
grpc_errors), the net receiver's retransmits (tcp_retransmits), the pprof receiver's contention metrics
(lock_contention), its MemStats readings and allocation sites (gc) and goroutine groups (goroutine_leak,
slow_syscall), and the sched receiver's slow syscalls by calling function (slow_syscall). The readings are
turned back into the rules' own inputs (gotel/diagnose/signals.py): one implementation of each rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import deque
from typing import Any, Literal

from pydantic import Field, field_validator

from gotel.component.contract import (
    SHUTDOWN_DEADLINE,
    ComponentConfig,
    Connector,
    ConnectorFactory,
    Consumer,
    ConsumerError,
    Context,
)
from gotel.config.types import Duration
from gotel.diagnose.rules import RULES, SEVERITY_RANK, Finding, Report, check_overrides, evaluate
from gotel.diagnose.signals import GoroutineDump, MemStats, ProcSample, RpcStat, SlowSyscall, Snapshot
from gotel.host import procfs
from gotel.pdata.batch import Batch, Signal, attr_dict
from gotel.pdata.builders import LogsBuilder, MetricsBuilder
from gotel.receivers.pprof.contention import Site
from gotel.receivers.pprof.goroutines import Bucket, BucketKey, Goroutine

SCOPE = "gotel.connectors.diagnosis"
_LOG_SEVERITY = {"critical": "ERROR", "warning": "WARN", "info": "INFO"}


class CaptureConfig(ComponentConfig):
    directory: str = Field(description="where each capture gets a directory named by its id")
    cpu_duration: Duration = Field(10.0, gt=0, le=120, description="length of the CPU profile taken at a finding")
    goroutine_dump: bool = Field(True, description="also save goroutine?debug=2 at the end of the CPU profile")
    min_interval: Duration = Field(60.0, ge=0, description="at most one capture per this interval on this node")
    min_severity: Literal["critical", "warning", "info"] = Field("warning", description="findings that capture")


class Config(ComponentConfig):
    capture: CaptureConfig | None = Field(
        None, description="on a finding, a CPU profile and goroutine dump from the process's pprof endpoint")
    window: Duration = Field(60.0, gt=0, description="how far back each evaluation looks")
    min_severity: Literal["critical", "warning", "info"] = Field(
        "warning", description="findings below this severity are not emitted")
    clear_evaluations: int = Field(2, ge=1, description="evaluations without the finding that end its episode")
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per rule id, threshold name -> value (defaults in docs/diagnose.md)")
    max_processes: int = Field(10000, gt=0, description="processes tracked at once; beyond it new ones are dropped")
    evaluation_interval: Duration = Field(
        5.0, ge=0, description="a process is evaluated at most once per this much time of its readings (each "
        "receiver's batch would evaluate it again); readings in between wait for the next batch")

    @field_validator("thresholds")
    @classmethod
    def _known(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_overrides(v)
        return v


class _Proc:
    def __init__(self) -> None:
        self.samples: deque[ProcSample] = deque()
        self.resource: dict[str, Any] = {}
        self.active: dict[str, int] = {}  # rule id -> evaluations since it last found (0 = finding now)
        self.cg_path: str | None = None
        self.fd_limit: int | None = None
        self.go: tuple[str | None, int | None, str] | None = None  # go version, GOMAXPROCS, its source
        # cumulative series of other receivers, (t, counts): go_ebpf calls and deadline misses, net retransmits
        self.rpc: deque[tuple[float, dict[tuple[str, str, str], int], dict[tuple[str, str], int]]] = deque()
        self.retrans: deque[tuple[float, dict[str, int]]] = deque()
        # the pprof receiver's per-scrape (delta) contention by site: (t, profile type, site key, delay s, count)
        self.locks: deque[tuple[float, str, tuple[str, str, str], float, int]] = deque()
        # the pprof receiver's memstats readings, goroutine groups per dump, allocation sites per allocs delta
        self.memstats: deque[MemStats] = deque()
        self.dumps: deque[GoroutineDump] = deque()
        self.allocs: deque[tuple[float, tuple[str, str, int], int]] = deque()
        self.start_unix_ns: int | None = None
        self.evaluated_t: float | None = None  # time of the newest reading at the last evaluation
        # the sched receiver's slow syscalls by calling function, cumulative: (t, {(syscall, function): (calls, s)})
        self.syscalls: deque[tuple[float, dict[tuple[str, str], tuple[int, float]]]] = deque()


class Engine:
    """Per-process windows of samples and rule episodes; pure, so tests and the benchmark drive it directly."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.procs: dict[int, _Proc] = {}
        self.dropped_processes = 0
        self.not_run: dict[str, int] = {}
        self.evaluations = 0

    def ingest(self, req: Any, now_ns: int | None = None) -> list[tuple[dict[str, Any], Finding]]:
        """Reads one ExportMetricsServiceRequest; returns the findings that start an episode."""
        cgroups: dict[str, procfs.CgroupStats] = {}
        by_cid: dict[str, procfs.CgroupStats] = {}
        seen: dict[int, ProcSample] = {}
        touched: set[int] = set()
        for rm in req.resource_metrics:
            res = attr_dict(rm.resource.attributes)
            if "gotel.cgroup.path" in res:
                cg = _cgroup(res, rm)
                cgroups[cg.path] = cg
                if res.get("container.id"):
                    by_cid[str(res["container.id"])] = cg
                continue
            pid = res.get("process.pid")
            if not isinstance(pid, int):
                continue
            p = self.procs.get(pid)
            if p is None:
                if len(self.procs) >= self.cfg.max_processes:
                    self.dropped_processes += 1
                    continue
                p = self.procs[pid] = _Proc()
            p.resource = {**p.resource, **res}
            s = seen.get(pid)
            if s is None:
                s = seen[pid] = ProcSample(t=0.0)
            _fill(s, rm)
            if _other_series(p, rm, self.cfg.window):
                touched.add(pid)
        out: list[tuple[dict[str, Any], Finding]] = []
        for pid in touched - set(seen):
            out.extend((self.procs[pid].resource, f) for f in self._evaluate(pid, self.procs[pid]))
        for pid, s in seen.items():
            p = self.procs[pid]
            cid = p.resource.get("container.id")
            s.cgroup = by_cid.get(str(cid)) if cid else None
            if s.cgroup is None and cgroups:
                if p.cg_path is None:
                    p.cg_path = _cgroup_path_of(pid)
                s.cgroup = cgroups.get(p.cg_path or "")
            if s.t <= 0:
                if pid in touched:
                    out.extend((p.resource, f) for f in self._evaluate(pid, p))
                continue
            p.samples.append(s)
            while len(p.samples) > 2 and p.samples[-1].t - p.samples[1].t >= self.cfg.window:
                p.samples.popleft()
            out.extend((p.resource, f) for f in self._evaluate(pid, p))
        return out

    def _evaluate(self, pid: int, p: _Proc) -> list[Finding]:
        if all(len(x) < 2 for x in (p.samples, p.rpc, p.retrans, p.memstats, p.dumps, p.syscalls)) and not p.locks:
            return []
        newest = max(q[-1][0] if isinstance(q[-1], tuple) else q[-1].t
                     for q in (p.samples, p.rpc, p.retrans, p.memstats, p.dumps, p.syscalls, p.locks) if q)
        if p.evaluated_t is not None and newest - p.evaluated_t < self.cfg.evaluation_interval:
            return []
        p.evaluated_t = newest
        snap = self._snapshot(pid, p)
        rep: Report = evaluate(snap, self.cfg.thresholds)
        self.evaluations += 1
        for rid, _why in rep.not_run:
            self.not_run[rid] = self.not_run.get(rid, 0) + 1
        limit = SEVERITY_RANK[self.cfg.min_severity]
        now = {f.rule: f for f in rep.findings if SEVERITY_RANK[f.severity] <= limit}
        started = []
        for rid, f in now.items():
            if rid not in p.active:
                started.append(f)
            p.active[rid] = 0
        for rid in list(p.active):
            if rid in now:
                continue
            p.active[rid] += 1
            if p.active[rid] >= self.cfg.clear_evaluations:
                del p.active[rid]
        return started

    def _snapshot(self, pid: int, p: _Proc) -> Snapshot:
        """The rules' input from the process's windows of readings."""
        if p.fd_limit is None:
            from gotel.diagnose.gather import fd_limit, start_unix_ns

            p.fd_limit = fd_limit(pid) or 0
            p.start_unix_ns = start_unix_ns(pid)
        snap = Snapshot(pid=pid, samples=list(p.samples), target=dict(p.resource), fd_limit=p.fd_limit or None,
                        process_start_unix_ns=p.start_unix_ns)
        # GC cost, goroutine groups, slow syscalls: judged over at least half a window: readings a second apart say
        # little, and the allocation sites (deltas of the allocs profile) need that long to arrive
        half = self.cfg.window / 2
        if p.memstats and p.memstats[-1].t - p.memstats[0].t >= half:
            snap.memstats = list(p.memstats)
        if p.dumps and p.dumps[-1].t - p.dumps[0].t >= half:
            snap.goroutine_dumps = list(p.dumps)
        times = [[x.t for x in p.samples], [x[0] for x in p.rpc], [x[0] for x in p.retrans],
                 [x.t for x in p.memstats], [x.t for x in p.dumps], [x[0] for x in p.syscalls]]
        spans = [ts[-1] - ts[0] for ts in times if len(ts) >= 2]
        snap.duration_s = max(spans) if spans else 0.0
        snap.missing = dict(MISSING)
        if len(p.memstats) >= 2 and not snap.memstats:
            snap.missing["memstats"] = "MemStats readings cover less than half the window yet"
        if len(p.dumps) >= 2 and not snap.goroutine_dumps:
            snap.missing["goroutine_dumps"] = "goroutine groups cover less than half the window yet"
        if len(p.syscalls) >= 2 and p.syscalls[-1][0] - p.syscalls[0][0] >= half:
            snap.slow_syscalls = _syscall_delta(p.syscalls[0][1], p.syscalls[-1][1])
            snap.slow_syscalls_window_s = p.syscalls[-1][0] - p.syscalls[0][0]
        if p.allocs and len(p.memstats) >= 2:
            snap.alloc_sites = _alloc_sites(p.allocs, p.memstats[-1].t - p.memstats[0].t)
        if len(p.rpc) >= 2:
            snap.rpcs = _rpc_delta(p.rpc[0], p.rpc[-1])
        if len(p.retrans) >= 2:
            a, b = p.retrans[0][1], p.retrans[-1][1]
            snap.retransmits = {k: n - a.get(k, 0) for k, n in b.items() if n > a.get(k, 0)}
        if p.locks:
            snap.lock_sites = _lock_sites(p.locks, self.cfg.window)
        if p.go is None:
            from gotel.diagnose.gather import go_version, gomaxprocs

            ver = go_version(pid)
            quota = next((x.cgroup.quota_cores for x in reversed(p.samples) if x.cgroup is not None), None)
            with contextlib.suppress(OSError):
                n, src = gomaxprocs(pid, ver, quota, len(os.sched_getaffinity(pid)))
                p.go = (ver, n, src)
        if p.go is not None:
            snap.go_version, snap.gomaxprocs, snap.gomaxprocs_source = p.go
        return snap

    def forget(self, pid: int) -> None:
        self.procs.pop(pid, None)


# why a rule's signal is missing here: which receiver (and setting) gives it
MISSING = {
    "memstats": "needs runtime.MemStats: the pprof receiver with profiles.memstats enabled",
    "goroutine_dumps": "needs goroutine groups: the pprof receiver's goroutine_dump (diagnostics.goroutine_groups > 0)",
    "contention": "needs mutex/block profiles (pprof receiver)",
    "rpcs": "needs gRPC call metrics (go_ebpf receiver)",
    "retransmits": "needs per-peer retransmits (net receiver)",
}


def _points(m: Any) -> Any:
    kind = m.WhichOneof("data")
    return getattr(m, kind).data_points if kind in ("sum", "gauge") else ()


def _val(dp: Any) -> float:
    return float(dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int)


_PROC_METRICS = frozenset({"process.cpu.time", "process.thread.count", "process.schedstat.run_delay",
                           "process.schedstat.timeslices", "process.unix.file_descriptor.count"})


def _fill(s: ProcSample, rm: Any) -> None:
    cpu = 0.0
    have_cpu = False
    fds: dict[str, int] = {}
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name not in _PROC_METRICS:  # other receivers' series are not /proc samples
                continue
            for dp in _points(m):
                s.t = max(s.t, dp.time_unix_nano / 1e9)
                v = _val(dp)
                if m.name == "process.cpu.time":
                    cpu += v
                    have_cpu = True
                elif m.name == "process.thread.count":
                    s.threads = int(v)
                elif m.name == "process.schedstat.run_delay":
                    s.run_delay_ns = int(v * 1e9)
                elif m.name == "process.schedstat.timeslices":
                    s.timeslices = int(v)
                elif m.name == "process.unix.file_descriptor.count":
                    kind = next((a.value.string_value for a in dp.attributes if a.key == "gotel.fd.kind"), "other")
                    fds[kind] = int(v)
    if have_cpu:
        s.cpu_s = cpu
        s.on_cpu_ns = int(cpu * 1e9)  # utime+stime: the on-CPU time schedstat would give, at tick resolution
    if fds:
        s.fds = fds


def _attr(dp: Any, key: str) -> Any:
    for a in dp.attributes:
        if a.key == key:
            v = a.value
            k = v.WhichOneof("value")
            return getattr(v, k) if k else None
    return None


def _other_series(p: _Proc, rm: Any, window: float) -> bool:
    """go_ebpf's gRPC call counts and deadline misses, the net receiver's retransmits: one cumulative
    reading each; True when the process got one."""
    calls: dict[tuple[str, str, str], int] = {}
    missed: dict[tuple[str, str], int] = {}
    retrans: dict[str, int] = {}
    t = 0.0
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name in ("rpc.server.call.duration", "rpc.client.call.duration") and m.WhichOneof("data") == "histogram":
                kind = "server" if m.name.startswith("rpc.server") else "client"
                for dp in m.histogram.data_points:
                    t = max(t, dp.time_unix_nano / 1e9)
                    method = f"{_attr(dp, 'rpc.service') or '?'}/{_attr(dp, 'rpc.method') or '?'}"
                    k = (method, kind, str(_attr(dp, "rpc.response.status_code") or "OK"))
                    calls[k] = calls.get(k, 0) + int(dp.count)
            elif m.name == "gotel.rpc.server.deadline_exceeded":
                for dp in _points(m):
                    t = max(t, dp.time_unix_nano / 1e9)
                    method = f"{_attr(dp, 'rpc.service') or '?'}/{_attr(dp, 'rpc.method') or '?'}"
                    missed[(method, "server")] = missed.get((method, "server"), 0) + int(_val(dp))
            elif m.name == "process.network.tcp.retransmits":
                from gotel.diagnose.retrans import peer_name

                for dp in _points(m):
                    t = max(t, dp.time_unix_nano / 1e9)
                    peer = peer_name([(a.key, _attr(dp, a.key)) for a in dp.attributes])
                    retrans[peer] = retrans.get(peer, 0) + int(_val(dp))
    got = _pprof_series(p, rm, window)
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name != "gotel.lock.contention.delay":
                continue
            for dp in _points(m):
                ts = dp.time_unix_nano / 1e9
                key = (str(_attr(dp, "code.function.name") or "?"), str(_attr(dp, "code.location") or ""),
                       str(_attr(dp, "gotel.lock.primitive") or ""))
                p.locks.append((ts, str(_attr(dp, "pprof.profile.type") or ""), key, _val(dp), 0))
                got = True
    while p.locks and p.locks[-1][0] - p.locks[0][0] > window:
        p.locks.popleft()
    if calls or missed:
        p.rpc.append((t, calls, missed))
        while len(p.rpc) > 2 and p.rpc[-1][0] - p.rpc[1][0] >= window:
            p.rpc.popleft()
        got = True
    if retrans:
        p.retrans.append((t, retrans))
        while len(p.retrans) > 2 and p.retrans[-1][0] - p.retrans[1][0] >= window:
            p.retrans.popleft()
        got = True
    return got


def _trim(q: deque[Any], t: Any, window: float) -> None:
    while len(q) > 2 and t(q[-1]) - t(q[1]) >= window:
        q.popleft()


def _pprof_series(p: _Proc, rm: Any, window: float) -> bool:
    """The pprof receiver's readings: runtime.MemStats (profiles.memstats), goroutine groups of one dump
    (goroutine_dump) and allocation sites (allocs deltas); the sched receiver's slow syscalls by calling
    function. True when the process got one."""
    r = _Readings()
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            r.read(m)
    return r.store(p, window)


class _Readings:
    """What one resource's metrics carry for the pprof- and sched-fed rules."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.ms_t = 0.0
        self.groups: dict[BucketKey, Bucket] = {}
        self.leaked: dict[BucketKey, int] = {}
        self.total = 0
        self.dump_t = 0.0
        self.allocs: list[tuple[float, tuple[str, str, int], int]] = []
        self.sys_calls: dict[tuple[str, str], tuple[int, float]] = {}
        self.sys_t = 0.0

    def read(self, m: Any) -> None:
        name = m.name
        for dp in _points(m) if name in _READ else ():
            t = dp.time_unix_nano / 1e9
            if name in _MEMSTATS:
                self.ms[name] = _val(dp)
                self.ms_t = max(self.ms_t, t)
            elif name.startswith("gotel.goroutine.group."):
                self.dump_t = max(self.dump_t, t)
                b = _group(dp)
                if name.endswith(".leaked"):
                    self.leaked[b.key] = b.count
                else:
                    self.groups[b.key] = b
            elif name == "gotel.goroutines":
                self.total += int(_val(dp))
            elif name.startswith("process.syscall.slow.caller."):
                self.sys_t = max(self.sys_t, t)
                k = (str(_attr(dp, "gotel.syscall.name") or "?"), str(_attr(dp, "code.function.name") or "?"))
                n, secs = self.sys_calls.get(k, (0, 0.0))
                self.sys_calls[k] = (int(_val(dp)), secs) if name.endswith(".count") else (n, _val(dp))
            else:  # gotel.memory.allocated.site
                self.allocs.append((t, _frame(_attrs(dp)), int(_val(dp))))

    def store(self, p: _Proc, window: float) -> bool:
        got = False
        if self.sys_calls:
            p.syscalls.append((self.sys_t, self.sys_calls))
            _trim(p.syscalls, lambda x: x[0], window)
            got = True
        if "gotel.go.gc.cpu_fraction" in self.ms and "go.gc.cycles" in self.ms:
            p.memstats.append(_memstats(self.ms, self.ms_t))
            if len(p.memstats) >= 2 and p.memstats[-1].num_gc < p.memstats[-2].num_gc:  # the program restarted
                while len(p.memstats) > 1:
                    p.memstats.popleft()
            _trim(p.memstats, lambda x: x.t, window)
            got = True
        if self.groups:  # a dump's groups (with goroutine_groups: 0 the rules have no dumps)
            for key, n in self.leaked.items():
                if key in self.groups:
                    self.groups[key].leaked = n
                    self.groups[key].sample.leaked = n > 0
            total = self.total or sum(b.count for b in self.groups.values())
            p.dumps.append(GoroutineDump(self.dump_t, [], self.groups, total))
            _trim(p.dumps, lambda x: x.t, window)
            got = True
        if self.allocs:
            p.allocs.extend(self.allocs)
            while p.allocs and p.allocs[-1][0] - p.allocs[0][0] > window:
                p.allocs.popleft()
        return got


def _attrs(dp: Any) -> dict[str, Any]:
    """A point's attributes, read once (the group points carry seven)."""
    out: dict[str, Any] = {}
    for a in dp.attributes:
        k = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, k) if k else None
    return out


def _frame(a: dict[str, Any]) -> tuple[str, str, int]:
    return (str(a.get("code.function.name") or "?"), str(a.get("code.file.path") or ""),
            int(a.get("code.line.number") or 0))


def _group(dp: Any) -> Bucket:
    """One goroutine group point as a bucket whose one member carries the blamed frame."""
    a = _attrs(dp)
    st, reason = str(a.get("gotel.goroutine.state") or ""), str(a.get("gotel.goroutine.wait.reason") or "")
    frame = _frame(a)
    by, at = str(a.get("gotel.goroutine.created_by") or ""), str(a.get("gotel.goroutine.created_at") or "")
    key: BucketKey = (st, reason, ((frame[0], frame[2]),), by, at)
    return Bucket(key, int(_val(dp)), 0, 0, Goroutine(0, st, reason, 0, False, False, [frame], by, at))


def _memstats(ms: dict[str, float], t: float) -> MemStats:
    pmax, psum = ms.get("gotel.go.gc.pause.max"), ms.get("gotel.go.gc.pause.sum")
    return MemStats(t=t, num_gc=int(ms["go.gc.cycles"]), last_gc_unix_ns=int(ms.get("gotel.go.gc.last", 0) * 1e9),
                    gc_cpu_fraction=ms["gotel.go.gc.cpu_fraction"], pause_total_ns=0, pause_ns=[],
                    pause_end_unix_ns=[], pause_max_ns=round(pmax * 1e9) if pmax is not None else None,
                    pause_sum_ns=round(psum * 1e9) if psum is not None else None)


_MEMSTATS = frozenset({"go.gc.cycles", "gotel.go.gc.cpu_fraction", "gotel.go.gc.last", "gotel.go.gc.pause.max",
                       "gotel.go.gc.pause.sum"})
_READ = _MEMSTATS | {"gotel.goroutine.group.count", "gotel.goroutine.group.leaked", "gotel.goroutines",
                     "process.syscall.slow.caller.count", "process.syscall.slow.caller.time",
                     "gotel.memory.allocated.site"}


def _syscall_delta(a: dict[tuple[str, str], tuple[int, float]],
                   b: dict[tuple[str, str], tuple[int, float]]) -> list[SlowSyscall]:
    out = []
    for (name, fn), (n, secs) in b.items():
        n0, s0 = a.get((name, fn), (0, 0.0))
        if n > n0:
            out.append(SlowSyscall(name, secs - s0, fn, calls=n - n0))
    return out


def _alloc_sites(allocs: deque[tuple[float, tuple[str, str, int], int]], window: float) -> list[tuple[str, str, int, int]]:
    """Bytes per site over the allocs deltas, scaled to the MemStats window the gc rule divides by."""
    times = sorted({t for t, _s, _v in allocs})
    covered = (times[-1] - times[0]) * len(times) / (len(times) - 1) if len(times) >= 2 else window
    acc: dict[tuple[str, str, int], int] = {}
    for _t, site, v in allocs:
        acc[site] = acc.get(site, 0) + v
    scale = window / covered if covered > 0 else 1.0
    return [(fn, file, line, round(v * scale)) for (fn, file, line), v in acc.items()]


def _lock_sites(locks: deque[tuple[float, str, tuple[str, str, str], float, int]], window: float) -> list[Site]:
    """Waiting per site over the window, from the mutex profile's sites when there are any (the block
    profile sees the same waits from the waiter's side)."""
    kinds = {k for _t, k, _s, _d, _n in locks}
    use = "mutex" if "mutex" in kinds else "block"
    span = max(1.0, min(window, locks[-1][0] - locks[0][0] if len(locks) > 1 else window))
    acc: dict[tuple[str, str, str], float] = {}
    for _t, kind, key, delay, _n in locks:
        if kind == use:
            acc[key] = acc.get(key, 0.0) + delay
    return [Site(fn, loc, prim, 0, int(d * 1e9), d / span) for (fn, loc, prim), d in acc.items()]


def _rpc_delta(a: tuple[float, dict[tuple[str, str, str], int], dict[tuple[str, str], int]],
               b: tuple[float, dict[tuple[str, str, str], int], dict[tuple[str, str], int]]) -> list[RpcStat]:
    stats: dict[tuple[str, str], RpcStat] = {}
    for (method, kind, code), n in b[1].items():
        d = n - a[1].get((method, kind, code), 0)
        if d <= 0:
            continue
        st = stats.setdefault((method, kind), RpcStat(method=method, kind=kind, calls=0))
        st.calls += d
        st.codes[code] = st.codes.get(code, 0) + d
    for key, n in b[2].items():
        if key in stats:
            stats[key].deadline_missed = max(0, n - a[2].get(key, 0))
    return list(stats.values())


def _cgroup(res: dict[str, Any], rm: Any) -> procfs.CgroupStats:
    cg = procfs.CgroupStats(version=int(res.get("gotel.cgroup.version", 2)), path=str(res["gotel.cgroup.path"]))
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            for dp in _points(m):
                v = _val(dp)
                if m.name == "container.cpu.time" and not dp.attributes:
                    cg.cpu_usage_s = v
                elif m.name == "container.cpu.periods":
                    cg.periods = int(v)
                elif m.name == "container.cpu.throttled.periods":
                    cg.throttled_periods = int(v)
                elif m.name == "container.cpu.throttled.time":
                    cg.throttled_s = v
                elif m.name == "container.cpu.limit":
                    cg.quota_cores = v
    return cg


def _cgroup_path_of(pid: int) -> str:
    """The path the process receiver names the cgroup by: v1 cpu controller's, else the v2 one."""
    try:
        paths = procfs.proc_cgroups(pid)
    except (procfs.ProcessGone, OSError):
        return ""
    return paths.get("cpu") or paths.get("", "")


def finding_attributes(f: Finding) -> dict[str, Any]:
    a: dict[str, Any] = {"gotel.finding.rule": f.rule, "gotel.finding.category": f.category,
                         "gotel.finding.severity": f.severity, "gotel.finding.evidence": json.dumps(f.evidence),
                         "gotel.finding.fix": f.fix}
    if f.location.function:
        a["code.function.name"] = f.location.function
    if f.location.file:
        a["code.file.path"] = f.location.file
    if f.location.line:
        a["code.line.number"] = f.location.line
    return a


class Capturer:
    """Bounded captures at findings: one per ``min_interval`` on this node, each in its own directory
    (cpu.pb.gz, goroutines.txt, capture.json with the finding, window and outcome)."""

    def __init__(self, cfg: CaptureConfig, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.last = float("-inf")
        self.tasks: set[asyncio.Task[None]] = set()
        self.taken = ctx.telemetry.counter("diagnosis_captures", "Captures at findings, by outcome.", ("outcome",))

    def maybe(self, pid: int, f: Finding) -> dict[str, Any]:
        """Attributes linking the finding to its capture (or saying why there is none)."""
        if SEVERITY_RANK[f.severity] > SEVERITY_RANK[self.cfg.min_severity]:
            return {}
        now = time.monotonic()
        if now - self.last < self.cfg.min_interval:
            self.taken.labels("rate_limited").inc()
            return {"gotel.finding.capture.skipped": "rate_limited"}
        self.last = now
        cap_id = uuid.uuid4().hex
        path = os.path.join(self.cfg.directory, cap_id)
        start = time.time()
        t = asyncio.ensure_future(self._run(pid, f, path, start))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        links = {"gotel.finding.capture.id": cap_id, "gotel.finding.capture.path": path,
                 "gotel.finding.capture.start": start, "gotel.finding.capture.end": start + self.cfg.cpu_duration}
        if f.rule == "slow_syscall":
            links["gotel.finding.capture.syscall_stacks"] = os.path.join(path, SYSCALL_STACKS)
        return links

    async def _run(self, pid: int, f: Finding, path: str, start: float) -> None:
        from gotel.diagnose.gather import find_pprof
        from gotel.formats import pprof
        from gotel.receivers.pprof.fetch import Fetcher, ScrapeError

        meta: dict[str, Any] = {"pid": pid, "finding": f.as_dict(), "start": start, "files": []}
        fetcher = Fetcher(timeout=10.0)
        stacks: asyncio.Future[str] | None = None
        try:
            os.makedirs(path, exist_ok=True)
            target = await find_pprof(pid, fetcher)
            if target is None:
                meta["outcome"] = f"no pprof endpoint on pid {pid}'s listening ports"
            else:
                prefix = target.path_prefix.rstrip("/")
                secs = max(1, round(self.cfg.cpu_duration))
                if f.rule == "slow_syscall":  # during the CPU profile: who sits in the kernel
                    stacks = asyncio.ensure_future(_syscall_stacks(fetcher, target, secs))
                r = await fetcher.get(target, f"{prefix}/profile", params={"seconds": str(secs)}, timeout=secs + 15.0)
                pprof.decode(r.body)  # a body that is not a profile is not saved as one
                _write(os.path.join(path, "cpu.pb.gz"), r.body)
                meta["files"].append("cpu.pb.gz")
                if stacks is not None:
                    _write(os.path.join(path, SYSCALL_STACKS), (await stacks).encode())
                    meta["files"].append(SYSCALL_STACKS)
                if self.cfg.goroutine_dump:
                    g = await fetcher.get(target, f"{prefix}/goroutine", params={"debug": "2"}, expect="text")
                    _write(os.path.join(path, "goroutines.txt"), g.body)
                    meta["files"].append("goroutines.txt")
                meta["outcome"] = "ok"
        except (ScrapeError, pprof.PprofError, OSError) as e:
            meta["outcome"] = f"failed: {e}"
        finally:
            if stacks is not None and not stacks.done():
                stacks.cancel()
            if stacks is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await stacks
            await fetcher.close()
        meta["end"] = time.time()
        self.taken.labels("ok" if meta["outcome"] == "ok" else "failed").inc()
        if meta["outcome"] != "ok":
            self.ctx.logger.warning("diagnosis: capture for pid %d (%s): %s", pid, f.rule, meta["outcome"])
        with contextlib.suppress(OSError):
            _write(os.path.join(path, "capture.json"), json.dumps(meta, indent=1).encode())

    async def shutdown(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        for t in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


SYSCALL_STACKS = "syscall_stacks.txt"


async def _syscall_stacks(fetcher: Any, target: Any, seconds: int) -> str:
    """Goroutines in a syscall in one goroutine dump per second for `seconds`: their stacks grouped,
    most often seen first, each with the Go function blamed (the slow_syscall rule's own choice)."""
    from gotel.diagnose.rules import blame_frame, syscall_ignored
    from gotel.receivers.pprof.goroutines import bucketize, parse_dump

    seen: dict[BucketKey, tuple[Bucket, int, int]] = {}  # key -> (bucket, goroutines summed, dumps with it)
    dumps = 0
    end = time.monotonic() + seconds
    prefix = target.path_prefix.rstrip("/")
    while True:
        g = await fetcher.get(target, f"{prefix}/goroutine", params={"debug": "2"}, expect="text")
        dumps += 1
        for key, b in bucketize(parse_dump(g.body.decode(errors="replace"))).items():
            if b.state != "syscall" or not b.sample.frames or syscall_ignored(b.sample.frames):
                continue
            _b, n, k = seen.get(key, (b, 0, 0))
            seen[key] = (b, n + b.count, k + 1)
        if time.monotonic() >= end - 1.0:
            break
        await asyncio.sleep(1.0)
    out = [f"# goroutines in a syscall: {dumps} goroutine dumps, one per second"]
    for b, n, k in sorted(seen.values(), key=lambda x: x[1], reverse=True):
        loc = blame_frame(b.sample.frames)
        out.append(f"\n## {loc.function} ({loc.file}:{loc.line}): {n / dumps:.2f} goroutines on average, "
                   f"in {k} of {dumps} dumps\n{b.stack_text()}")
    return "\n".join(out) + "\n"


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class Diagnosis(Connector):
    def __init__(self, dst: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.dst = dst
        # only the logs output captures: its records carry the links, and one capture per finding
        self.capturer = Capturer(cfg.capture, ctx) if cfg.capture is not None and dst == Signal.LOGS else None
        self.engine = Engine(cfg)
        self.next = nxt
        self.ctx = ctx
        self.counts: dict[tuple[tuple[tuple[str, Any], ...], str, str], int] = {}
        self.start_ns = time.time_ns()
        self._findings = ctx.telemetry.counter("diagnosis_findings", "Findings emitted (episodes started).",
                                               ("rule", "severity"))

    async def consume(self, batch: Batch) -> None:
        started = self.engine.ingest(batch.peek())
        if not started:
            return
        for _res, f in started:
            self._findings.labels(f.rule, f.severity).inc()
        out: Batch
        if self.dst == Signal.LOGS:
            lb = LogsBuilder(SCOPE)
            for res, f in started:
                attrs = finding_attributes(f)
                if self.capturer is not None and isinstance(res.get("process.pid"), int):
                    attrs.update(self.capturer.maybe(res["process.pid"], f))
                lb.add(res, f"{f.rule}: {f.summary}", severity=_LOG_SEVERITY[f.severity], event_name="gotel.finding",
                       attributes=attrs)
            out = lb.batch()
        else:
            mb = MetricsBuilder(SCOPE)
            for res, f in started:
                key = (tuple(sorted(res.items())), f.rule, f.severity)
                self.counts[key] = self.counts.get(key, 0) + 1
            for (rkey, rule, sev), n in self.counts.items():
                mb.sum(dict(rkey), "gotel.findings", n, "{finding}", "Diagnosis findings (episodes started), by rule and severity.",
                       {"gotel.finding.rule": rule, "gotel.finding.severity": sev}, start=self.start_ns)
            out = mb.batch()
        try:
            await self.next.consume(out)
        except ConsumerError as e:
            self.ctx.telemetry.dropped(self.dst, out.item_count(), "refused downstream")
            self.ctx.logger.warning("diagnosis: %d findings not accepted downstream: %s", len(started), e)


    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        if self.capturer is not None:
            await self.capturer.shutdown()


def _create(src: Signal, dst: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Diagnosis:
    return Diagnosis(dst, cfg, nxt, ctx)


factory = ConnectorFactory(
    type="diagnosis",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    pairs=frozenset({(Signal.METRICS, Signal.LOGS), (Signal.METRICS, Signal.METRICS)}),
    description="runs the diagnosis rules over live process, pprof (memstats, allocs, goroutine groups, contention), sched, "
                "go_ebpf and net metrics; emits each finding once per episode as a log record and as the metric "
                f"gotel.findings; optional capture at a finding (rules: {', '.join(r.id for r in RULES)})",
    create=_create,
)
