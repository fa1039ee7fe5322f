"""The diagnosis rules, defined once: ``gotel diagnose``, the ``diagnosis`` connector and the
Prometheus rule file (gotel/diagnose/promrules.py, keyed by these ids) all use them.

A rule reads a Snapshot and returns one Outcome: a finding (severity, summary, evidence with its
window, blamed location, fix), "fine" (what it checked and saw), or "not run" (which signal was
missing and why). Thresholds have documented defaults (docs/diagnose.md) and can be overridden per
rule with ``{rule_id: {threshold_name: value}}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gotel.diagnose.signals import ProcSample, SlowSyscall, Snapshot
from gotel.formats import pprof
from gotel.proto import pprof_profile_pb2 as pb
from gotel.receivers.pprof.contention import top_sites

SEVERITIES = ("critical", "warning", "info")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# Frames that are never "the code to blame": the runtime, the standard library's plumbing, profilers.
_NOT_USER = ("runtime.", "runtime/", "internal/", "sync.", "sync/atomic.", "syscall.", "golang.org/x/sys/",
             "os.", "io.", "bufio.", "net/http/pprof.", "reflect.", "crypto/", "hash/", "math/", "sort.",
             "strings.", "bytes.", "strconv.", "fmt.", "encoding/", "time.", "unicode/", "compress/")
_GC_FRAMES = ("runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge",
              "runtime.gcDrain", "runtime.markroot", "runtime.scanobject", "runtime.sweepone", "runtime.gcStart")


@dataclass(frozen=True)
class Threshold:
    name: str
    default: float
    unit: str
    doc: str


@dataclass
class Location:
    function: str = ""
    file: str = ""
    line: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"function": self.function or None, "file": self.file or None, "line": self.line or None}

    def __bool__(self) -> bool:
        return bool(self.function)


@dataclass
class Outcome:
    status: str  # "finding", "fine", "not_run"
    summary: str
    severity: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    location: Location = field(default_factory=Location)
    fix: str = ""
    score: float = 0.0  # how far past its threshold (ranks findings of one severity)


@dataclass
class Finding:
    rule: str
    category: str
    severity: str
    summary: str
    evidence: dict[str, Any]
    location: Location
    fix: str
    score: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "category": self.category, "severity": self.severity, "summary": self.summary,
                "evidence": self.evidence, "location": self.location.as_dict(), "fix": self.fix}


class NotRun(Exception):
    """A signal the rule needs is missing; the message says which and why."""


Params = Mapping[str, float]
Evaluate = Callable[[Snapshot, Params], Outcome]


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    title: str
    signals: tuple[str, ...]
    thresholds: tuple[Threshold, ...]
    fix: str
    evaluate: Evaluate

    def params(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        out = {t.name: t.default for t in self.thresholds}
        for k, v in (overrides or {}).items():
            if k not in out:
                raise ValueError(f"rule {self.id}: unknown threshold {k!r} (known: {', '.join(out)})")
            out[k] = float(v)
        return out


@dataclass
class Report:
    findings: list[Finding]
    fine: list[tuple[str, str]]  # (rule id, what was checked)
    not_run: list[tuple[str, str]]  # (rule id, why)


# --- helpers shared by the rules ---------------------------------------------------------------


def _need(s: Snapshot, *signals: str) -> None:
    for sig in signals:
        present = {
            "proc": len(s.samples) >= 2,
            "cgroup": len(s.samples) >= 2 and s.samples[0].cgroup is not None and s.samples[-1].cgroup is not None,
            "schedstat": len(s.samples) >= 2 and s.samples[0].run_delay_ns is not None
            and s.samples[-1].run_delay_ns is not None,
            "fds": sum(1 for x in s.samples if x.fds is not None) >= 3,
            "memstats": len(s.memstats) >= 2,
            "goroutine_dumps": len(s.goroutine_dumps) >= 3,
            "contention": s.mutex is not None or s.block is not None or s.lock_sites is not None,
            "rpcs": s.rpcs is not None,
            "retransmits": s.retransmits is not None,
        }[sig]
        if not present:
            raise NotRun(s.missing.get(sig) or f"signal {sig!r} was not observed")


def _window(s: Snapshot) -> float:
    if len(s.samples) >= 2:
        return max(1e-6, s.samples[-1].t - s.samples[0].t)
    return max(1e-6, s.duration_s)


def blame_frame(frames: list[pprof.Frame] | list[tuple[str, str, int]]) -> Location:
    """The innermost frame of user code in a stack (leaf first); the leaf when there is none."""
    norm = [(f.function, f.file, f.line) if isinstance(f, pprof.Frame) else f for f in frames]
    for fn, file, line in norm:
        if not fn.startswith(_NOT_USER):
            return Location(fn, file, line)
    return Location(*norm[0]) if norm else Location()


def top_sites_by(p: pb.Profile | None, sample_type: str, n: int = 5,
                 keep: Callable[[list[pprof.Frame]], bool] | None = None) -> list[tuple[Location, int]]:
    """(blamed user location, summed value) of a profile's samples, largest first."""
    if p is None:
        return []
    try:
        i = pprof.sample_type_index(p, sample_type)
    except KeyError:
        return []
    res = pprof.Resolver(p)
    sums: dict[tuple[str, str, int], int] = {}
    for smp in p.sample:
        v = smp.value[i]
        if v <= 0:
            continue
        frames = res.stack(smp.location_id)
        if not frames or (keep is not None and not keep(frames)):
            continue
        loc = blame_frame(frames)
        k = (loc.function, loc.file, loc.line)
        sums[k] = sums.get(k, 0) + v
    ranked = sorted(sums.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return [(Location(*k), v) for k, v in ranked]


def top_cpu(s: Snapshot) -> tuple[Location, float]:
    """The hottest user function of the CPU profile and its share of the process's samples."""
    if s.cpu_profile is None:
        return Location(), 0.0
    sites = top_sites_by(s.cpu_profile, "cpu", 1, keep=lambda fr: not any(f.function.startswith(_GC_FRAMES) for f in fr))
    total = pprof.totals(s.cpu_profile)[_cpu_index(s.cpu_profile)]
    if not sites or total <= 0:
        return Location(), 0.0
    return sites[0][0], sites[0][1] / total


def _cpu_index(p: pb.Profile) -> int:
    try:
        return pprof.sample_type_index(p, "cpu")
    except KeyError:
        return len(p.sample_type) - 1


def _delta(a: ProcSample, b: ProcSample, name: str) -> float | None:
    x, y = getattr(a, name), getattr(b, name)
    return None if x is None or y is None else y - x


def _r(v: float, nd: int = 3) -> float:
    return round(v, nd)


def _loc_text(loc: Location) -> str:
    if not loc:
        return ""
    return f" at {loc.function}" + (f" ({loc.file}:{loc.line})" if loc.file else "")


def _severity(value: float, warning: float, critical: float) -> str:
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return ""


def _ceil_quota(q: float) -> int:
    return max(1, math.ceil(q - 1e-9))


def throttled_ratio(s: Snapshot) -> float | None:
    if len(s.samples) < 2:
        return None
    c0, c1 = s.samples[0].cgroup, s.samples[-1].cgroup
    if c0 is None or c1 is None or c1.quota_cores is None or c0.periods is None or c1.periods is None:
        return None
    dp = c1.periods - c0.periods
    dt = (c1.throttled_periods or 0) - (c0.throttled_periods or 0)
    return dt / dp if dp > 0 else 0.0


# --- the rules ---------------------------------------------------------------------------------


def _cpu_throttling(s: Snapshot, p: Params) -> Outcome:
    _need(s, "cgroup")
    a, b = s.samples[0], s.samples[-1]
    c0, c1 = a.cgroup, b.cgroup
    assert c0 is not None and c1 is not None
    w = _window(s)
    if c1.quota_cores is None:
        return Outcome("fine", f"no CPU limit on cgroup {c1.path} (cpu.max is max)")
    periods = (c1.periods or 0) - (c0.periods or 0)
    throttled = (c1.throttled_periods or 0) - (c0.throttled_periods or 0)
    throttled_s = (c1.throttled_s or 0.0) - (c0.throttled_s or 0.0)
    ratio = throttled / periods if periods > 0 else 0.0
    used = ((c1.cpu_usage_s or 0.0) - (c0.cpu_usage_s or 0.0)) / w
    ev: dict[str, Any] = {
        "window_s": _r(w), "cgroup": c1.path, "cpu_limit_cores": _r(c1.quota_cores), "nr_periods": periods,
        "nr_throttled": throttled, "throttled_ratio": _r(ratio), "throttled_s": _r(throttled_s),
        "cgroup_cpu_cores_used": _r(used), "gomaxprocs": s.gomaxprocs, "gomaxprocs_source": s.gomaxprocs_source,
        "go_version": s.go_version,
    }
    over = s.gomaxprocs is not None and s.gomaxprocs > _ceil_quota(c1.quota_cores)
    ev["gomaxprocs_above_limit"] = over
    sev = _severity(ratio, p["throttled_ratio_warning"], p["throttled_ratio_critical"])
    loc, share = top_cpu(s)
    if loc:
        ev["top_cpu_function_share"] = _r(share)
    fix = (f"the container needs more CPU than its {c1.quota_cores:g}-core limit: raise the limit above the "
           f"observed demand, or cut the CPU spent{_loc_text(loc) or ' in the hottest code'}")
    if over:
        fix += (f"; GOMAXPROCS={s.gomaxprocs} is above the limit ({s.go_version or 'this Go'} does not follow cgroup "
                f"limits): set GOMAXPROCS={_ceil_quota(c1.quota_cores)} or build with Go >= 1.25")
    if not sev:
        if over and throttled > 0:
            return Outcome("finding", f"GOMAXPROCS={s.gomaxprocs} above the {c1.quota_cores:g}-core CPU limit; "
                           f"{ratio:.0%} of periods throttled", "info", ev, loc, fix, ratio)
        return Outcome("fine", f"{ratio:.0%} of {periods} CFS periods throttled (limit {c1.quota_cores:g} cores, "
                       f"used {used:.2f})", evidence=ev)
    return Outcome("finding", f"CPU throttled in {ratio:.0%} of {periods} CFS periods ({throttled_s:.2f}s stalled in "
                   f"{w:.0f}s) by the {c1.quota_cores:g}-core limit", sev, ev, loc, fix,
                   ratio / p["throttled_ratio_warning"])


def _run_queue_latency(s: Snapshot, p: Params) -> Outcome:
    _need(s, "schedstat")
    a, b = s.samples[0], s.samples[-1]
    w = _window(s)
    wait_s = (_delta(a, b, "run_delay_ns") or 0) / 1e9
    cpu_s = (_delta(a, b, "on_cpu_ns") or 0) / 1e9
    slices = _delta(a, b, "timeslices") or 0
    share = wait_s / (wait_s + cpu_s) if wait_s + cpu_s > 0 else 0.0
    node_busy = _delta(a, b, "node_busy_s")
    ev: dict[str, Any] = {
        "window_s": _r(w), "runqueue_wait_s": _r(wait_s), "on_cpu_s": _r(cpu_s), "wait_share": _r(share),
        "wait_per_second": _r(wait_s / w), "avg_wait_ms": _r(wait_s * 1e3 / slices if slices else 0.0),
        "process_cores": _r(cpu_s / w), "cpus": s.cpus,
        "node_busy_cores": _r(node_busy / w) if node_busy is not None else None,
    }
    tr = throttled_ratio(s)
    if tr is not None and tr >= p["explained_by_throttling"]:
        ev["throttled_ratio"] = _r(tr)
        return Outcome("fine", f"run-queue waits ({share:.0%} of runnable time) are explained by CPU throttling "
                       f"(cpu_throttling)", evidence=ev)
    avg_ms = wait_s * 1e3 / slices if slices else 0.0
    if wait_s / w < p["min_wait_per_second"] or avg_ms < p["min_avg_wait_ms"]:
        return Outcome("fine", f"threads waited {wait_s * 1e3:.0f} ms for a CPU in {w:.0f}s "
                       f"({share:.0%} of their runnable time, {avg_ms:.2f} ms per wait)", evidence=ev)
    sev = _severity(share, p["wait_share_warning"], p["wait_share_critical"])
    if not sev:
        return Outcome("fine", f"threads waited {share:.0%} of their runnable time for a CPU", evidence=ev)
    loc, _ = top_cpu(s)
    neighbour = ""
    if node_busy is not None:
        others = max(0.0, node_busy / w - cpu_s / w)
        ev["other_processes_cores"] = _r(others)
        neighbour = f"; other processes kept {others:.1f} of {s.cpus} CPUs busy"
    fix = ("other work on the node takes the CPUs this process is runnable for: give the pod CPU requests "
           "(Guaranteed QoS or a cpuset), move or limit the noisy neighbour, or spread replicas")
    return Outcome("finding", f"runnable but not running {share:.0%} of the time ({wait_s:.2f}s waiting for a CPU "
                   f"vs {cpu_s:.2f}s on one in {w:.0f}s){neighbour}", sev, ev, loc, fix,
                   share / p["wait_share_warning"])


def _gc(s: Snapshot, p: Params) -> Outcome:
    _need(s, "memstats")
    m0, m1 = s.memstats[0], s.memstats[-1]
    w = max(1e-6, m1.t - m0.t)
    cycles = m1.num_gc - m0.num_gc
    if cycles <= 0:
        return Outcome("fine", f"no GC cycle in {w:.0f}s", evidence={"window_s": _r(w), "gc_cycles": 0})
    frac = m1.gc_cpu_fraction
    if s.process_start_unix_ns:
        t0 = m0.last_gc_unix_ns - s.process_start_unix_ns
        t1 = m1.last_gc_unix_ns - s.process_start_unix_ns
        if t1 > t0 > 0:
            frac = (m1.gc_cpu_fraction * t1 - m0.gc_cpu_fraction * t0) / (t1 - t0)
    pauses = m1.pauses_since(m0.num_gc)
    if pauses:
        max_pause, total_pause = max(pauses) / 1e9, sum(pauses) / 1e9
    else:  # no ring: each reading's pauses since the one before it
        max_pause = max((m.pause_max_ns or 0 for m in s.memstats[1:]), default=0) / 1e9
        total_pause = sum(m.pause_sum_ns or 0 for m in s.memstats[1:]) / 1e9
    if s.allocs is not None or s.alloc_sites is None:
        sites = top_sites_by(s.allocs, "alloc_space", 5)
    else:
        ranked = sorted(s.alloc_sites, key=lambda x: x[3], reverse=True)[:5]
        sites = [(Location(fn, file, line), v) for fn, file, line, v in ranked if v > 0]
    secs = s.profile_seconds or w
    ev: dict[str, Any] = {
        "window_s": _r(w), "gc_cycles": cycles, "gc_per_second": _r(cycles / w), "gc_cpu_fraction": _r(frac, 4),
        "stw_pause_max_s": _r(max_pause, 6), "stw_pause_total_s": _r(total_pause, 6),
        "top_allocation_sites": [{"function": loc.function, "file": loc.file, "line": loc.line,
                                  "bytes_per_second": round(v / secs)} for loc, v in sites],
    }
    sev = _severity(frac, p["gc_cpu_fraction_warning"], p["gc_cpu_fraction_critical"])
    why = f"GC used {frac:.0%} of the CPU available to the program"
    score = frac / p["gc_cpu_fraction_warning"]
    if not sev and max_pause >= p["stw_pause_warning_s"]:
        sev, why, score = "warning", f"a GC stop-the-world pause lasted {max_pause * 1e3:.1f} ms", max_pause / p["stw_pause_warning_s"]
    if not sev and cycles / w >= p["gc_per_second_info"]:
        sev, why, score = "info", f"{cycles / w:.1f} GC cycles per second", 0.0
    if not sev:
        return Outcome("fine", f"{cycles} GC cycles in {w:.0f}s using {frac:.1%} of the CPU, longest pause "
                       f"{max_pause * 1e3:.2f} ms", evidence=ev)
    loc = sites[0][0] if sites else Location()
    fix = (f"allocate less{_loc_text(loc) or ' at the top allocation sites'} (reuse buffers, sync.Pool, avoid "
           "per-request copies and conversions); if the heap may grow, raise GOGC or set GOMEMLIMIT")
    return Outcome("finding", f"{why} ({cycles} cycles in {w:.0f}s)" + (f"; top allocation site {loc.function}" if loc else ""),
                   sev, ev, loc, fix, score)


# os/signal's loop sits in a syscall state for ever; the profilers are gotel's own requests.
_SYSCALL_IGNORED = ("os/signal.", "runtime.ensureSigM", "runtime.sigNoteSleep", "runtime/pprof.", "net/http/pprof.")


def syscall_ignored(frames: list[tuple[str, str, int]]) -> bool:
    """A goroutine in a syscall that is the program's plumbing (signal loop) or gotel's own profile request."""
    return any(f[0].startswith(_SYSCALL_IGNORED) for f in frames)


def _slow_syscall(s: Snapshot, p: Params) -> Outcome:
    if s.slow_syscalls:
        by: dict[tuple[str, str, int, str], list[SlowSyscall]] = {}
        for e in s.slow_syscalls:
            by.setdefault((e.function, e.file, e.line, e.syscall), []).append(e)
        (fn, file, line, name), evs = max(by.items(), key=lambda kv: sum(e.duration_s for e in kv[1]))
        w = s.slow_syscalls_window_s or _window(s)
        total = sum(e.duration_s for e in evs)
        calls = sum(e.calls for e in evs)
        blocked = total / w
        ev = {"window_s": _r(w), "source": "ebpf", "syscall": name, "calls": calls, "total_s": _r(total),
              "max_s": _r(max(e.duration_s for e in evs)) if all(e.calls == 1 for e in evs) else None,
              "blocked_threads_avg": _r(blocked)}
        sev = _severity(blocked, p["blocked_goroutines_warning"], p["blocked_goroutines_critical"])
        loc = Location(fn, file, line)
        if sev:
            return Outcome("finding", f"{calls} slow {name} calls from {fn} blocked threads {total:.2f}s in "
                           f"{w:.0f}s", sev, ev, loc, _SYSCALL_FIX, blocked / p["blocked_goroutines_warning"])
    _need(s, "goroutine_dumps")
    dumps = s.goroutine_dumps
    counts: dict[tuple[str, str, int], int] = {}
    present: dict[tuple[str, str, int], int] = {}
    for d in dumps:
        seen: set[tuple[str, str, int]] = set()
        for bk in d.buckets().values():
            g = bk.sample
            if g.state != "syscall" or not g.frames or syscall_ignored(g.frames):
                continue
            loc = blame_frame(g.frames)
            k = (loc.function, loc.file, loc.line)
            counts[k] = counts.get(k, 0) + bk.count
            seen.add(k)
        for k in seen:
            present[k] = present.get(k, 0) + 1
    threads = [x.threads for x in s.samples if x.threads is not None]
    base = {"window_s": _r(_window(s)), "source": "goroutine dumps", "dumps": len(dumps),
            "threads_start": threads[0] if threads else None, "threads_end": threads[-1] if threads else None}
    if not counts:
        return Outcome("fine", f"no goroutine in a blocking syscall in {len(dumps)} goroutine dumps", evidence=base)
    k, n = max(counts.items(), key=lambda kv: kv[1])
    mean = n / len(dumps)
    ev = {**base, "goroutines_in_syscall_avg": _r(mean), "dumps_with_it": present[k]}
    sev = _severity(mean, p["blocked_goroutines_warning"], p["blocked_goroutines_critical"])
    loc = Location(*k)
    if not sev:
        return Outcome("fine", f"on average {mean:.2f} goroutines in a syscall (most at {k[0]})", evidence=ev)
    return Outcome("finding", f"on average {mean:.1f} goroutines blocked in a syscall made by {k[0]} "
                   f"({present[k]} of {len(dumps)} dumps)", sev, ev, loc, _SYSCALL_FIX,
                   mean / p["blocked_goroutines_warning"])


_SYSCALL_FIX = ("each call blocks an OS thread in the kernel (the runtime starts more threads to keep running): "
                "bound it with a timeout, move it off the request path or batch it; for files on slow storage, "
                "limit how many run at once")


def _lock_contention(s: Snapshot, p: Params) -> Outcome:
    _need(s, "contention")
    w = s.profile_seconds or _window(s)
    sites = top_sites(s.mutex, w, 5) if s.mutex is not None else []
    source = "mutex"
    if s.mutex is None and s.block is None and s.lock_sites is not None:
        sites = sorted(s.lock_sites, key=lambda x: x.delay_per_second, reverse=True)[:5]
        source = "pprof receiver contention metrics"
    if not sites and s.block is not None:
        sites = [x for x in top_sites(s.block, w, 20) if "Mutex" in x.primitive or "semacquire" in x.primitive][:5]
        source = "block"
    ev: dict[str, Any] = {"window_s": _r(w), "profile": source,
                          "sites": [{"function": x.function, "location": x.location, "primitive": x.primitive,
                                     "delay_s_per_s": _r(x.delay_per_second, 4),
                                     "contentions_per_s": _r(x.contentions_per_second, 1)} for x in sites]}
    if not sites:
        return Outcome("fine", "no lock contention recorded (it is recorded only in programs that enable "
                       "runtime.SetMutexProfileFraction or SetBlockProfileRate)", evidence=ev)
    top = sites[0]
    sev = _severity(top.delay_per_second, p["delay_per_second_warning"], p["delay_per_second_critical"])
    file, _, line = top.location.rpartition(":")
    loc = Location(top.function, file, int(line) if line.isdigit() else 0)
    if not sev:
        return Outcome("fine", f"most contended lock at {top.function}: {top.delay_per_second * 1e3:.1f} ms of waiting "
                       "per second", evidence=ev)
    fix = (f"goroutines queue on the lock released{_loc_text(loc)}: shorten that critical section (no I/O, sleeps "
           "or allocation while holding it), shard the lock, or use RWMutex/atomics for read-mostly data")
    return Outcome("finding", f"goroutines waited {top.delay_per_second:.2f}s per second for the lock held at "
                   f"{top.function} ({top.contentions_per_second:.0f} contentions/s)", sev, ev, loc, fix,
                   top.delay_per_second / p["delay_per_second_warning"])


def _goroutine_leak(s: Snapshot, p: Params) -> Outcome:
    _need(s, "goroutine_dumps")
    dumps = s.goroutine_dumps
    series: dict[Any, list[int]] = {}
    samples: dict[Any, Any] = {}
    leaked: dict[Any, int] = {}
    for i, d in enumerate(dumps):
        for key, bk in d.buckets().items():
            if bk.state != "waiting":
                continue
            k = (key[1], key[2], key[3])  # wait reason, stack, creator
            series.setdefault(k, [0] * len(dumps))[i] += bk.count
            samples[k] = bk
            leaked[k] = max(leaked.get(k, 0), bk.leaked)
    totals = [d.count() for d in dumps]
    w = max(1e-6, dumps[-1].t - dumps[0].t)
    best = None
    for k, ser in series.items():
        growth = ser[-1] - ser[0]
        steps = [ser[i + 1] >= ser[i] for i in range(len(ser) - 1)]
        rising = sum(steps) >= p["rising_fraction"] * len(steps)
        if ((growth >= p["min_growth"] and rising) or leaked[k]) and (best is None or growth > best[1]):
            best = (k, growth, ser)
    ev: dict[str, Any] = {"window_s": _r(w), "dumps": len(dumps), "goroutines_start": totals[0],
                          "goroutines_end": totals[-1]}
    if best is None:
        return Outcome("fine", f"goroutines {totals[0]} -> {totals[-1]} in {w:.0f}s; no group grew steadily",
                       evidence=ev)
    k, growth, ser = best
    bk = samples[k]
    top = next(((fn, f, ln) for fn, f, ln in bk.sample.frames if not fn.startswith(_NOT_USER)),
               bk.sample.frames[0] if bk.sample.frames else ("?", "", 0))
    loc = Location(*top)
    rate = growth / w * 60
    ev.update({"wait_reason": k[0], "count_series": ser, "growth": growth, "growth_per_minute": _r(rate, 1),
               "created_by": bk.sample.created_by, "created_at": bk.sample.created_at,
               "runtime_leak_flagged": leaked[k]})
    sev = "critical" if leaked[k] or ser[-1] >= p["critical_count"] else "warning"
    fix = (f"goroutines started by {bk.sample.created_by or '?'} stay blocked in '{k[0]}' at {loc.function}: give them "
           "a way out (close or send on the channel, select on ctx.Done(), a timeout) or stop starting them")
    return Outcome("finding", f"goroutines blocked in '{k[0]}' at {loc.function} grew {ser[0]} -> {ser[-1]} in {w:.0f}s "
                   f"({rate:.0f}/min)", sev, ev, loc, fix, growth / p["min_growth"])


_FD_OWNERS = ("os.newFile", "os.NewFile", "net.newFD", "net.(*netFD)", "os.openFileNolog", "os.OpenFile", "os.Open")


def _fd_leak(s: Snapshot, p: Params) -> Outcome:
    _need(s, "fds")
    pts = [(x.t, x.fds) for x in s.samples if x.fds is not None]
    w = max(1e-6, pts[-1][0] - pts[0][0])
    best: tuple[str, int, list[int]] | None = None
    for kind in pts[-1][1]:
        ser = [f.get(kind, 0) for _t, f in pts]
        growth = ser[-1] - ser[0]
        steps = [ser[i + 1] >= ser[i] for i in range(len(ser) - 1)]
        rising = sum(steps) >= p["rising_fraction"] * len(steps)
        if growth >= p["min_growth"] and rising and (best is None or growth > best[1]):
            best = (kind, growth, ser)
    total = [sum(f.values()) for _t, f in pts]
    ev: dict[str, Any] = {"window_s": _r(w), "fds_start": total[0], "fds_end": total[-1], "fd_limit": s.fd_limit}
    if best is None:
        return Outcome("fine", f"open fds {total[0]} -> {total[-1]} in {w:.0f}s; no kind grew steadily", evidence=ev)
    kind, growth, ser = best
    rate = growth / w
    ev.update({"kind": kind, "series": ser, "growth": growth, "per_second": _r(rate, 2)})
    to_limit = (s.fd_limit - total[-1]) / rate if s.fd_limit and rate > 0 else None
    ev["seconds_to_limit"] = round(to_limit) if to_limit is not None else None
    owners = top_sites_by(s.heap, "inuse_objects", 3,
                          keep=lambda fr: any(f.function.startswith(_FD_OWNERS) for f in fr))
    loc = owners[0][0] if owners else Location()
    if owners:
        ev["open_by"] = [{"function": o.function, "file": o.file, "line": o.line, "live_objects": v} for o, v in owners]
    sev = "critical" if to_limit is not None and to_limit < p["critical_seconds_to_limit"] else "warning"
    fix = (f"{kind} fds opened{_loc_text(loc) or ''} are never closed: close them on every path "
           "(defer f.Close(), resp.Body.Close(), conn.Close())")
    return Outcome("finding", f"open {kind} fds grew {ser[0]} -> {ser[-1]} in {w:.0f}s ({rate:.1f}/s)"
                   + (f", opened by {loc.function}" if loc else ""), sev, ev, loc, fix, growth / p["min_growth"])


def _deadline(s: Snapshot, p: Params) -> Outcome:
    _need(s, "rpcs")
    assert s.rpcs is not None
    w = _window(s)
    worst = None
    for r in s.rpcs:
        if r.kind != "server" or r.calls < p["min_calls"]:
            continue
        ratio = r.deadline_missed / r.calls
        if worst is None or ratio > worst[1]:
            worst = (r, ratio)
    if worst is None or worst[1] < p["miss_ratio_warning"]:
        return Outcome("fine", "no server method missed its callers' deadlines", evidence={"window_s": _r(w)})
    r, ratio = worst
    ev = {"window_s": _r(w), "method": r.method, "calls": r.calls, "deadline_missed": r.deadline_missed,
          "miss_ratio": _r(ratio), "downstream": r.downstream or None, "downstream_share": _r(r.downstream_share)}
    sev = _severity(ratio, p["miss_ratio_warning"], p["miss_ratio_critical"])
    loc = Location(r.downstream or r.method)
    fix = (f"the downstream call {r.downstream} used most of the budget: give it a shorter deadline than the "
           "caller's, or make it faster" if r.downstream else "the handler takes longer than its callers allow: "
           "find where the time goes (spans) or raise the callers' deadline")
    return Outcome("finding", f"{r.method} missed its caller's deadline in {ratio:.0%} of {r.calls} calls", sev, ev,
                   loc, fix, ratio / p["miss_ratio_warning"])


def _grpc_errors(s: Snapshot, p: Params) -> Outcome:
    _need(s, "rpcs")
    assert s.rpcs is not None
    w = _window(s)
    worst = None
    for r in s.rpcs:
        if r.calls < p["min_calls"]:
            continue
        errs = sum(n for c, n in r.codes.items() if c not in ("OK", "0"))
        ratio = errs / r.calls
        if worst is None or ratio > worst[1]:
            worst = (r, ratio, errs)
    if worst is None or worst[1] < p["error_ratio_warning"]:
        return Outcome("fine", "gRPC error ratios below threshold", evidence={"window_s": _r(w)})
    r, ratio, errs = worst
    ev = {"window_s": _r(w), "method": r.method, "kind": r.kind, "calls": r.calls, "errors": errs,
          "error_ratio": _r(ratio), "codes": r.codes}
    sev = _severity(ratio, p["error_ratio_warning"], p["error_ratio_critical"])
    top_code = max((c for c in r.codes if c not in ("OK", "0")), key=lambda c: r.codes[c])
    return Outcome("finding", f"{r.method} ({r.kind}) failed {ratio:.0%} of {r.calls} calls, mostly {top_code}", sev,
                   ev, Location(r.method), "look at the failing calls' spans and logs for this method and code",
                   ratio / p["error_ratio_warning"])


def _tcp_retransmits(s: Snapshot, p: Params) -> Outcome:
    _need(s, "retransmits")
    assert s.retransmits is not None
    w = _window(s)
    if not s.retransmits:
        return Outcome("fine", "no TCP retransmits", evidence={"window_s": _r(w)})
    peer, n = max(s.retransmits.items(), key=lambda kv: kv[1])
    rate = n / w
    ev = {"window_s": _r(w), "peer": peer, "retransmits": n, "per_second": _r(rate, 2), "peers": s.retransmits}
    sev = _severity(rate, p["per_second_warning"], p["per_second_critical"])
    if not sev:
        return Outcome("fine", f"{n} retransmits to {peer}", evidence=ev)
    return Outcome("finding", f"{n} TCP retransmits to {peer} in {w:.0f}s", sev, ev, Location(),
                   "packet loss on the path to this peer: check its load, the network and MTU", rate / p["per_second_warning"])


def T(name: str, default: float, unit: str, doc: str) -> Threshold:
    return Threshold(name, default, unit, doc)


RULES: tuple[Rule, ...] = (
    Rule("cpu_throttling", "cpu_throttling", "CPU quota throttling", ("cgroup", "cpu_profile", "gomaxprocs"), (
        T("throttled_ratio_warning", 0.10, "1", "share of CFS periods throttled (cpu.stat nr_throttled/nr_periods)"),
        T("throttled_ratio_critical", 0.50, "1", "the same, for critical"),
    ), "raise the CPU limit or cut CPU work; GOMAXPROCS at most the limit", _cpu_throttling),
    Rule("run_queue_latency", "run_queue_latency", "Runnable but not running", ("schedstat", "node_cpu", "cpu_profile"), (
        T("wait_share_warning", 0.20, "1", "run-queue wait / (wait + on-CPU time) of the process's threads"),
        T("wait_share_critical", 0.50, "1", "the same, for critical"),
        T("min_wait_per_second", 0.05, "s/s", "below this much waiting per second of wall time nothing is reported"),
        T("min_avg_wait_ms", 1.0, "ms", "below this average wait per time slice (schedstat) nothing is reported"),
        T("explained_by_throttling", 0.10, "1", "throttled-period share at which waits are left to cpu_throttling"),
    ), "give the process its CPUs (requests, cpuset) or move the neighbour", _run_queue_latency),
    Rule("gc", "gc", "Garbage collection cost", ("memstats", "allocs"), (
        T("gc_cpu_fraction_warning", 0.10, "1", "GC CPU share of the CPU available to the program (GOMAXPROCS)"),
        T("gc_cpu_fraction_critical", 0.25, "1", "the same, for critical"),
        T("stw_pause_warning_s", 0.1, "s", "longest stop-the-world pause in the window"),
        T("gc_per_second_info", 10.0, "1/s", "GC frequency reported as info"),
    ), "allocate less at the top sites; GOGC/GOMEMLIMIT", _gc),
    Rule("slow_syscall", "slow_syscall", "Syscalls blocking threads", ("goroutine_dumps", "slow_syscalls"), (
        T("blocked_goroutines_warning", 0.5, "1", "average goroutines (threads) blocked in syscalls from one function"),
        T("blocked_goroutines_critical", 8.0, "1", "the same, for critical"),
    ), "bound, batch or move the blocking call", _slow_syscall),
    Rule("lock_contention", "lock_contention", "Lock contention", ("mutex", "block"), (
        T("delay_per_second_warning", 0.10, "s/s", "goroutine-seconds of waiting per second on the top lock site"),
        T("delay_per_second_critical", 1.0, "s/s", "the same, for critical"),
    ), "shorten or shard the critical section", _lock_contention),
    Rule("goroutine_leak", "goroutine_leak", "Goroutine leak", ("goroutine_dumps",), (
        T("min_growth", 20, "{goroutine}", "growth of one group (same stack, wait reason, creator) in the window"),
        T("rising_fraction", 0.8, "1", "share of dump-to-dump steps that must not go down"),
        T("critical_count", 10000, "{goroutine}", "group size that makes the finding critical"),
    ), "give blocked goroutines a way out", _goroutine_leak),
    Rule("deadline", "deadline", "Deadlines missed", ("rpcs",), (
        T("min_calls", 10, "{call}", "calls of a method before it is judged"),
        T("miss_ratio_warning", 0.05, "1", "share of a server method's calls that ended past the caller's deadline"),
        T("miss_ratio_critical", 0.25, "1", "the same, for critical"),
    ), "shorter deadline on the downstream call, or a faster one", _deadline),
    Rule("grpc_errors", "grpc_errors", "gRPC errors", ("rpcs",), (
        T("min_calls", 10, "{call}", "calls of a method before it is judged"),
        T("error_ratio_warning", 0.05, "1", "share of calls with a status other than OK"),
        T("error_ratio_critical", 0.25, "1", "the same, for critical"),
    ), "look at the failing calls", _grpc_errors),
    Rule("fd_leak", "fd_leak", "File descriptor leak", ("fds", "heap"), (
        T("min_growth", 20, "{fd}", "growth of one fd kind in the window"),
        T("rising_fraction", 0.8, "1", "share of sample-to-sample steps that must not go down"),
        T("critical_seconds_to_limit", 3600, "s", "projected time to RLIMIT_NOFILE that makes it critical"),
    ), "close what is opened", _fd_leak),
    Rule("tcp_retransmits", "tcp_retransmits", "TCP retransmits", ("retransmits",), (
        T("per_second_warning", 1.0, "1/s", "retransmitted segments per second to one peer"),
        T("per_second_critical", 20.0, "1/s", "the same, for critical"),
    ), "look at the path to the peer", _tcp_retransmits),
)
BY_ID: dict[str, Rule] = {r.id: r for r in RULES}


def check_overrides(overrides: Mapping[str, Mapping[str, float]]) -> None:
    """Raises ValueError naming the first unknown rule or threshold."""
    for rid, th in overrides.items():
        if rid not in BY_ID:
            raise ValueError(f"unknown rule {rid!r} (known: {', '.join(BY_ID)})")
        BY_ID[rid].params(th)


def evaluate(s: Snapshot, overrides: Mapping[str, Mapping[str, float]] | None = None,
             rules: tuple[Rule, ...] = RULES) -> Report:
    """Every rule over one snapshot; findings most severe first (then furthest past their threshold)."""
    rep = Report([], [], [])
    for rule in rules:
        try:
            out = rule.evaluate(s, rule.params((overrides or {}).get(rule.id)))
        except NotRun as e:
            rep.not_run.append((rule.id, str(e)))
            continue
        if out.status == "finding":
            rep.findings.append(Finding(rule.id, rule.category, out.severity, out.summary, out.evidence,
                                        out.location, out.fix, out.score))
        else:
            rep.fine.append((rule.id, out.summary))
    rep.findings.sort(key=lambda f: (SEVERITY_RANK[f.severity], -f.score))
    return rep
