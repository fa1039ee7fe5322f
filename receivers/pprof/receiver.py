"""The ``pprof`` receiver: one scrape loop per target and profile type, deltas of cumulative
profiles, goroutine and lock-contention diagnostics, per-target health.

Everything runs on one asyncio loop in the receiver's own process; the only threads are the
network-namespace socket helpers (gotel.host.netns). A scrape never raises out of its loop: every failure
is classified, counted per target and logged once per (target, profile, class) state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gotel.component.contract import Consumer, Context, Receiver
from gotel.discovery.procfs import is_alive
from gotel.formats import pprof
from gotel.formats.profconv import DELTA_ATTR, PROFILE_TYPE_ATTR, ProfilesBuilder
from gotel.pdata.batch import Batch, Profiles, Signal
from gotel.pdata.builders import DELTA, LogsBuilder, MetricsBuilder
from gotel.proto import pprof_profile_pb2 as pb
from gotel.receiverhelper.outcome import push
from gotel.receiverhelper.targets import LocalProcessSource, StaticSource, Target, TargetSource

from . import contention, goroutines
from .config import Config, ProfileConfig
from .delta import DeltaState
from .fetch import Fetcher, ScrapeError

SCOPE = "gotel.receivers.pprof"


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    client_delta: bool = False  # cumulative: gotel subtracts the previous dump
    windowed: bool = False  # already a delta (CPU window, godeltaprof)


KINDS: dict[str, Kind] = {
    "cpu": Kind("cpu", "profile", windowed=True),
    "heap": Kind("heap", "heap", client_delta=True),
    "allocs": Kind("allocs", "allocs", client_delta=True),
    "mutex": Kind("mutex", "mutex", client_delta=True),
    "block": Kind("block", "block", client_delta=True),
    "goroutine": Kind("goroutine", "goroutine"),
    "goroutine_dump": Kind("goroutine_dump", "goroutine"),
    "goroutineleak": Kind("goroutineleak", "goroutineleak"),
    "memstats": Kind("memstats", "heap"),
    "delta_heap": Kind("delta_heap", "delta_heap", windowed=True),
    "delta_mutex": Kind("delta_mutex", "delta_mutex", windowed=True),
    "delta_block": Kind("delta_block", "delta_block", windowed=True),
}
# gotel's profile types -> the names pod annotations use (profiles.grafana.com/<name>.scrape)
ANNOTATION_TYPE = {"cpu": "cpu", "heap": "memory", "memstats": "memory", "mutex": "mutex", "block": "block",
                   "goroutine": "goroutine", "goroutine_dump": "goroutine", "goroutineleak": "goroutine"}
EMPTY_HINT = {
    "mutex": "no contention recorded: unless the program calls runtime.SetMutexProfileFraction(n) (e.g. 5), it never will",
    "block": "no blocking recorded: unless the program calls runtime.SetBlockProfileRate(n) (e.g. 1000000 ns), it never will",
    "delta_mutex": "no contention recorded: does the program call runtime.SetMutexProfileFraction(n)?",
    "delta_block": "no blocking recorded: does the program call runtime.SetBlockProfileRate(n)?",
    "heap": "the heap profile is empty: runtime.MemProfileRate is 0 in the program",
    "allocs": "the allocs profile is empty: runtime.MemProfileRate is 0 in the program",
}
_TOTAL = re.compile(rb"goroutine profile: total (\d+)")


def _jitter(key: str, interval: float) -> float:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_000) / 1_000_000 * interval


class Health:
    """Self-telemetry of scrapes (Prometheus registry of the process) plus the state for OTLP health metrics."""

    def __init__(self, ctx: Context) -> None:
        t = ctx.telemetry
        self.scrapes = t.counter("pprof_scrapes", "Scrapes attempted per target and profile type.", ("target", "profile"))
        self.failures = t.counter("pprof_scrape_failures", "Failed scrapes per target, profile type and class.",
                                  ("target", "profile", "class"))
        self.up = t.gauge("pprof_target_up", "1 when the last scrape of the target's profile succeeded.", ("target", "profile"))
        self.duration = t.gauge("pprof_scrape_duration_seconds", "Duration of the last scrape.", ("target", "profile"))
        self.bytes = t.gauge("pprof_scrape_bytes", "Body size of the last scrape.", ("target", "profile"))
        self.samples = t.gauge("pprof_scrape_samples", "Samples in the last profile (after delta).", ("target", "profile"))
        self.delta_stacks = t.gauge("pprof_delta_stacks", "Stacks held as delta state.", ("target", "profile"))
        self.targets = t.gauge("pprof_targets", "Targets being scraped.")
        self.findings = t.counter("pprof_findings", "Diagnostics findings emitted (goroutine leaks, blocked, contention).",
                                  ("target", "kind"))
        self.budget_skips = t.counter("pprof_dump_budget_skips",
                                      "goroutine debug=2 dumps skipped because the target had too many goroutines.",
                                      ("target",))
        self.clamped = t.counter("pprof_delta_clamped_stacks",
                                 "Stacks whose cumulative value went down without a restart (delta set to 0).",
                                 ("target", "profile"))
        self.restarts = t.counter("pprof_target_restarts", "Target restarts seen by delta state (new baseline).",
                                  ("target", "profile"))
        self.fail_totals: dict[tuple[str, str, str], int] = {}
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = {}

    def child(self, fam: Any, target: str, *rest: str) -> Any:
        """fam.labels(target, *rest), remembered so that forget() can drop a vanished target's series."""
        self._series.setdefault(target, set()).add((fam, (target, *rest)))
        return fam.labels(target, *rest)

    def forget(self, target: str) -> None:
        for fam, labels in self._series.pop(target, ()):
            with contextlib.suppress(KeyError):
                fam.fam.remove(*fam.head, *labels)
        for k in [k for k in self.fail_totals if k[0] == target]:
            del self.fail_totals[k]


class TargetRunner:
    """All scrape loops of one target, and the state they keep for it."""

    def __init__(self, rcv: PprofReceiver, target: Target) -> None:
        self.r = rcv
        self.t = target
        self.cfg = rcv.cfg
        self.resource = target.resource()
        self.label = target.describe()
        self.deltas: dict[str, DeltaState] = {}
        d = self.cfg.diagnostics
        self.leaks = goroutines.LeakDetector(d.leak_scrapes, d.leak_min_goroutines, d.blocked_threshold / 60, d.max_buckets)
        self.leak_reported: dict[goroutines.BucketKey, int] = {}
        self.last_goroutines: tuple[float, int] | None = None
        self.last_num_gc: int | None = None
        self.last_error: dict[str, str] = {}
        self.empty_hinted: set[str] = set()
        self.cpu_backoff = 0
        self.unsupported: dict[str, float] = {}  # kind -> monotonic time to try again (404)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, kind in KINDS.items():
            pc: ProfileConfig = getattr(self.cfg.profiles, name)
            sel = self._selected(name, pc)
            if sel is not None:
                self.tasks.append(asyncio.create_task(self._loop(kind, sel), name=f"pprof:{self.t.key}:{name}"))

    def _selected(self, name: str, pc: ProfileConfig) -> ProfileConfig | None:
        """The config of one profile type for this target, or None when it is not scraped.

        Targets from annotation-based discovery carry their own selection (type -> path); the
        receiver's intervals still apply. goroutine dumps and goroutineleak follow `goroutine`."""
        paths = self.t.profile_paths
        if paths is None:
            return pc if pc.enabled else None
        ann = ANNOTATION_TYPE.get(name)
        if ann is None or ann not in paths:
            return None
        if name in ("goroutine_dump", "goroutineleak"):
            return pc if pc.enabled else None
        prefix = self.t.path_prefix.rstrip("/")
        path = paths[ann]
        rel = path[len(prefix):] if path.startswith(prefix + "/") else None
        if rel is None:
            return None  # a path outside the target's prefix cannot be expressed; discovery splits such targets
        return pc.model_copy(update={"path": rel.lstrip("/")})

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []

    def memory_estimate(self) -> int:
        from .delta import BYTES_PER_STACK

        return sum(d.stacks() for d in self.deltas.values()) * BYTES_PER_STACK

    # --- loop ------------------------------------------------------------------------------------

    async def _loop(self, kind: Kind, pc: ProfileConfig) -> None:
        interval = pc.interval
        if self.cfg.jitter:
            await asyncio.sleep(_jitter(f"{self.t.key}/{kind.name}", interval))
        nxt = time.monotonic()
        while True:
            skip = 0
            retry_at = self.unsupported.get(kind.name)
            if retry_at is None or time.monotonic() >= retry_at:
                skip = await self.scrape(kind, pc)
            nxt += interval * (1 + skip)
            now = time.monotonic()
            if nxt < now:  # the scrape overran: start again on the grid, never in a burst
                nxt += ((now - nxt) // interval + 1) * interval
            await asyncio.sleep(nxt - now)

    async def scrape(self, kind: Kind, pc: ProfileConfig) -> int:
        """One scrape; returns how many intervals to skip (back-off after cpu_busy)."""
        h = self.r.health
        h.child(h.scrapes, self.label, kind.name).inc()
        t0 = time.monotonic()
        metrics = MetricsBuilder(SCOPE)
        logs = LogsBuilder(SCOPE)
        nbytes = nsamples = 0
        try:
            if kind.name == "goroutine_dump":
                nbytes, nsamples = await self._dump(pc, metrics, logs)
            elif kind.name == "memstats":
                nbytes, nsamples = await self._memstats(pc, metrics)
            elif kind.name == "cpu":
                nbytes, nsamples = await self._cpu(kind, pc, metrics)
            else:
                nbytes, nsamples = await self._profile(kind, pc, metrics, logs)
        except ScrapeError as e:
            self._failed(kind, e, metrics, time.monotonic() - t0)
            await self._flush(metrics, logs)
            if e.cls == "cpu_busy":
                self.cpu_backoff = min(self.cpu_backoff + 1, 3)
                return self.cpu_backoff
            if e.cls == "not_found" and kind.name in ("goroutineleak", "delta_heap", "delta_mutex", "delta_block"):
                self.unsupported[kind.name] = time.monotonic() + 600  # optional endpoint: ask again in 10 min
            return 0
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in one scrape must not end the loop
            self.r.log.exception("%s %s: internal error", self.label, kind.name)
            self._failed(kind, ScrapeError("internal", f"{type(e).__name__}: {e}"), metrics, time.monotonic() - t0)
            await self._flush(metrics, logs)
            return 0
        if kind.name == "cpu":
            self.cpu_backoff = 0
        self.unsupported.pop(kind.name, None)
        dur = time.monotonic() - t0
        self._succeeded(kind, metrics, dur, nbytes, nsamples)
        await self._flush(metrics, logs)
        return 0

    # --- outcome bookkeeping ---------------------------------------------------------------------

    def _health_points(self, kind: Kind, metrics: MetricsBuilder, up: int, dur: float) -> None:
        a = {"pprof.profile.type": kind.name}
        metrics.gauge(self.resource, "pprof.scrape.up", up, "1", "1 when the last scrape succeeded", a)
        metrics.gauge(self.resource, "pprof.scrape.duration", dur, "s", "duration of the last scrape", a)

    def _failed(self, kind: Kind, e: ScrapeError, metrics: MetricsBuilder, dur: float) -> None:
        h = self.r.health
        h.child(h.failures, self.label, kind.name, e.cls).inc()
        key = (self.label, kind.name, e.cls)
        h.fail_totals[key] = h.fail_totals.get(key, 0) + 1
        up = 1 if e.cls == "empty_profile" else 0
        h.child(h.up, self.label, kind.name).set(up)
        self._health_points(kind, metrics, up, dur)
        for (lbl, kn, cls), n in h.fail_totals.items():
            if lbl == self.label and kn == kind.name:
                metrics.sum(self.resource, "pprof.scrape.failures", n, "{scrape}", "failed scrapes by class",
                            {"pprof.profile.type": kn, "error.type": cls})
        msg = str(e)
        if self.last_error.get(kind.name) != e.cls:  # log on change, not on every interval
            self.last_error[kind.name] = e.cls
            level = logging.INFO if e.cls in ("empty_profile", "not_found") else logging.WARNING
            if self.t.pid and e.cls in ("refused", "unreachable", "timeout") and not is_alive(self.t.pid):
                level = logging.DEBUG  # the program exited mid-scrape: discovery drops it, nothing is wrong
            self.r.log.log(level, "pprof %s %s: %s: %s", self.label, kind.name, e.cls, msg)

    def _succeeded(self, kind: Kind, metrics: MetricsBuilder, dur: float, nbytes: int, nsamples: int) -> None:
        h = self.r.health
        h.child(h.up, self.label, kind.name).set(1)
        h.child(h.duration, self.label, kind.name).set(dur)
        h.child(h.bytes, self.label, kind.name).set(nbytes)
        h.child(h.samples, self.label, kind.name).set(nsamples)
        if kind.name in self.deltas:
            h.child(h.delta_stacks, self.label, kind.name).set(self.deltas[kind.name].stacks())
        if self.last_error.pop(kind.name, None):
            self.r.log.info("pprof %s %s: scraping again", self.label, kind.name)
        a = {"pprof.profile.type": kind.name}
        self._health_points(kind, metrics, 1, dur)
        metrics.gauge(self.resource, "pprof.scrape.body.size", nbytes, "By", "size of the last answer", a)
        metrics.gauge(self.resource, "pprof.scrape.samples", nsamples, "{sample}", "samples in the last profile", a)

    async def _flush(self, metrics: MetricsBuilder, logs: LogsBuilder) -> None:
        if not metrics.empty():
            await self.r.push(Signal.METRICS, metrics.batch())
        if not logs.empty():
            await self.r.push(Signal.LOGS, logs.batch())

    # --- profile kinds ---------------------------------------------------------------------------

    def _path(self, kind: Kind, pc: ProfileConfig) -> str:
        return f"{self.t.path_prefix.rstrip('/')}/{(pc.path or kind.path).lstrip('/')}"

    async def _get_profile(self, kind: Kind, pc: ProfileConfig, params: dict[str, str] | None = None,
                           timeout: float | None = None) -> tuple[bytes, pb.Profile]:
        resp = await self.r.fetcher.get(self.t, self._path(kind, pc), params, timeout)
        try:
            p = pprof.decode(resp.body, self.cfg.max_body_bytes * 8)
        except pprof.PprofError as e:
            raise ScrapeError("not_pprof", f"{self.t.url}{self._path(kind, pc)}: {e}") from None
        return resp.body, p

    async def _cpu(self, kind: Kind, pc: ProfileConfig, metrics: MetricsBuilder) -> tuple[int, int]:
        from .config import CPUConfig

        assert isinstance(pc, CPUConfig)
        seconds = pc.profile_seconds()
        lock = self.r.cpu_lock(self.t)
        if lock.locked():  # another target entry points at the same process: never two CPU profiles at once
            raise ScrapeError("cpu_busy", f"{self.label}: a CPU profile of this process is already being taken by gotel")
        async with lock:
            body, p = await self._get_profile(kind, pc, {"seconds": str(seconds)}, timeout=seconds + self.cfg.timeout)
        await self._emit_profile(kind, p, body, delta=True)
        return len(body), len(p.sample)

    async def _profile(self, kind: Kind, pc: ProfileConfig, metrics: MetricsBuilder, logs: LogsBuilder) -> tuple[int, int]:
        body, p = await self._get_profile(kind, pc)
        if kind.name == "goroutine":
            total = sum(s.value[0] for s in p.sample if s.value)
            self.last_goroutines = (time.monotonic(), total)
            metrics.gauge(self.resource, "go.goroutine.count", total, "{goroutine}",
                          "goroutines alive (from the goroutine profile)")
        if kind.name in EMPTY_HINT and not p.sample:
            if kind.client_delta:  # an empty dump is still the baseline for the next one
                self._delta_state(kind).apply(p, (self.t.pid, self.t.start_time))
            raise ScrapeError("empty_profile", f"{self.label} {kind.name}: no samples", EMPTY_HINT[kind.name])
        if kind.client_delta:
            st = self._delta_state(kind)
            ident = (self.t.pid, self.t.start_time)
            res = st.apply(p, ident)
            if res.clamped:
                self.r.health.child(self.r.health.clamped, self.label, kind.name).inc(res.clamped)
            if res.reason == "restart":
                self.r.health.child(self.r.health.restarts, self.label, kind.name).inc()
                self.r.log.info("pprof %s %s: target restarted, new baseline", self.label, kind.name)
            if res.profile is None:
                return len(body), 0
            p = res.profile
            if kind.name in ("mutex", "block"):
                self._contention(kind, p, metrics, logs)
            if kind.name == "allocs" or (kind.name == "heap" and not self.cfg.profiles.allocs.enabled):
                self._alloc_sites(p, metrics)  # the same alloc_space deltas: from one of the two
            await self._emit_profile(kind, p, None, delta=True)
            return len(body), len(p.sample)
        if kind.name in ("delta_mutex", "delta_block"):
            self._contention(kind, p, metrics, logs)
        if kind.name == "goroutineleak":
            await self._leak_profile(p, metrics, logs)
        await self._emit_profile(kind, p, body, delta=kind.windowed)
        return len(body), len(p.sample)

    def _delta_state(self, kind: Kind) -> DeltaState:
        st = self.deltas.get(kind.name)
        if st is None:
            st = self.deltas[kind.name] = DeltaState(kind.name, self.cfg.max_stacks)
        return st

    async def _emit_profile(self, kind: Kind, p: pb.Profile, body: bytes | None, delta: bool) -> None:
        if Signal.PROFILES not in self.r.sinks or not p.sample:
            return
        family = kind.name.removeprefix("delta_")
        b = ProfilesBuilder()
        orig = None
        if self.cfg.original_payload:
            orig = body if body is not None else pprof.encode(p)
        b.add(p, self.resource, profile_attributes={PROFILE_TYPE_ATTR: family, DELTA_ATTR: delta},
              original_payload=orig, scope_name=SCOPE)
        await self.r.push(Signal.PROFILES, Profiles(b.build()))

    # --- diagnostics -----------------------------------------------------------------------------

    def _contention(self, kind: Kind, p: pb.Profile, metrics: MetricsBuilder, logs: LogsBuilder) -> None:
        d = self.cfg.diagnostics
        if d.contention_top <= 0:
            return
        seconds = p.duration_nanos / 1e9 if p.duration_nanos > 0 else getattr(self.cfg.profiles, kind.name).interval
        start = p.time_nanos
        for s in contention.top_sites(p, seconds, d.contention_top):
            a = {"pprof.profile.type": kind.name.removeprefix("delta_"), "code.function.name": s.function,
                 "code.location": s.location, "gotel.lock.primitive": s.primitive}
            metrics.sum(self.resource, "gotel.lock.contention.delay", s.delay_ns / 1e9, "s",
                        "time goroutines waited at this lock site", a, temporality=DELTA, start=start)
            metrics.sum(self.resource, "gotel.lock.contention.count", s.contentions, "{contention}",
                        "contention events at this lock site", a, temporality=DELTA, start=start)
            if s.delay_per_second >= d.contention_min_rate:
                self.r.health.child(self.r.health.findings, self.label, "contention").inc()
                what = "lock contention" if a["pprof.profile.type"] == "mutex" else "blocking"
                logs.add(self.resource,
                         f"{what}: {s.delay_per_second:.3f} s/s of waiting ({s.contentions_per_second:.1f} "
                         f"contentions/s) at {s.function} ({s.location}) on {s.primitive} [{a['pprof.profile.type']} profile]",
                         severity="WARN", event_name="gotel.lock.contention",
                         attributes={**a, "gotel.lock.delay_per_second": s.delay_per_second,
                                     "gotel.lock.contentions_per_second": s.contentions_per_second})

    async def _goroutine_count(self) -> int:
        g = self.last_goroutines
        gi = self.cfg.profiles.goroutine
        if g is not None and gi.enabled and time.monotonic() - g[0] < 2.5 * gi.interval:
            return g[1]
        resp = await self.r.fetcher.get(self.t, f"{self.t.path_prefix.rstrip('/')}/goroutine", {"debug": "1"},
                                        expect="text")
        m = _TOTAL.search(resp.body[:200])
        if not m:
            raise ScrapeError("not_pprof", f"{self.label}: goroutine?debug=1 has no 'goroutine profile: total N' line")
        n = int(m.group(1))
        self.last_goroutines = (time.monotonic(), n)
        return n

    async def _fetch_dump(self) -> tuple[int, list[goroutines.Goroutine]] | None:
        budget = self.cfg.profiles.goroutine_dump.max_goroutines
        n = await self._goroutine_count()
        if n > budget:
            self.r.health.child(self.r.health.budget_skips, self.label).inc()
            if self.last_error.get("goroutine_dump_budget") != str(budget):
                self.last_error["goroutine_dump_budget"] = str(budget)
                self.r.log.info("pprof %s: %d goroutines > max_goroutines=%d, skipping debug=2 dumps (they stop the world)",
                                self.label, n, budget)
            return None
        resp = await self.r.fetcher.get(self.t, f"{self.t.path_prefix.rstrip('/')}/goroutine", {"debug": "2"},
                                        expect="text")
        gs = goroutines.parse_dump(resp.body.decode(errors="replace"))
        if not gs:
            raise ScrapeError("not_pprof", f"{self.label}: goroutine?debug=2 answer has no goroutine")
        return len(resp.body), gs

    async def _dump(self, pc: ProfileConfig, metrics: MetricsBuilder, logs: LogsBuilder) -> tuple[int, int]:
        got = await self._fetch_dump()
        if got is None:
            return 0, 0
        nbytes, gs = got
        buckets = goroutines.bucketize(gs)
        counts, hist, age_sum = goroutines.summary(gs)
        for (state, reason, cat), n in counts.items():
            a = {"gotel.goroutine.state": state}
            if reason:
                a["gotel.goroutine.wait.reason"] = reason
                a["gotel.goroutine.wait.category"] = cat
            metrics.gauge(self.resource, "gotel.goroutines", n, "{goroutine}",
                          "goroutines by state and wait reason (from debug=2 dumps)", a)
        metrics.histogram(self.resource, "gotel.goroutine.wait.age", goroutines.AGE_BOUNDS_MIN, hist, age_sum, "min",
                          "how long waiting goroutines have been blocked (the dump's 'N minutes')")
        metrics.gauge(self.resource, "gotel.goroutine.buckets", len(buckets), "{bucket}",
                      "distinct (state, wait reason, stack, creator) groups")
        self._groups(buckets, metrics)
        for f in self.leaks.observe(buckets):
            self._finding(f, logs)
        return nbytes, len(gs)

    def _groups(self, buckets: dict[goroutines.BucketKey, goroutines.Bucket], metrics: MetricsBuilder) -> None:
        """The largest waiting groups and the in-syscall ones, each with where it is (the innermost user
        frame) and who started it: what the diagnosis rules goroutine_leak and slow_syscall read."""
        from gotel.diagnose.rules import blame_frame, syscall_ignored

        top = self.cfg.diagnostics.goroutine_groups
        if top <= 0:
            return
        waiting = sorted((b for b in buckets.values() if b.state == "waiting"), key=lambda b: b.count, reverse=True)
        syscall = sorted((b for b in buckets.values() if b.state == "syscall" and not syscall_ignored(b.sample.frames)),
                         key=lambda b: b.count, reverse=True)
        merged: dict[tuple[Any, ...], tuple[dict[str, Any], int, int]] = {}
        for b in waiting[:top] + syscall[:top]:
            loc = blame_frame(b.sample.frames)
            a = {"gotel.goroutine.state": b.state, "gotel.goroutine.wait.reason": b.wait_reason,
                 "code.function.name": loc.function, "code.file.path": loc.file, "code.line.number": loc.line,
                 "gotel.goroutine.created_by": b.sample.created_by, "gotel.goroutine.created_at": b.sample.created_at}
            key = tuple(a.values())
            _a, n, leaked = merged.get(key, (a, 0, 0))
            merged[key] = (a, n + b.count, leaked + b.leaked)
        for a, n, leaked in merged.values():
            metrics.gauge(self.resource, "gotel.goroutine.group.count", n, "{goroutine}",
                          "goroutines of one group: state, wait reason, innermost user frame, creator (debug=2 dumps)", a)
            if leaked:
                metrics.gauge(self.resource, "gotel.goroutine.group.leaked", leaked, "{goroutine}",
                              "goroutines of the group the Go runtime marked (leaked)", a)

    async def _memstats(self, pc: ProfileConfig, metrics: MetricsBuilder) -> tuple[int, int]:
        from gotel.diagnose.signals import parse_memstats

        resp = await self.r.fetcher.get(self.t, f"{self.t.path_prefix.rstrip('/')}/{(pc.path or 'heap').lstrip('/')}",
                                        {"debug": "1"}, expect="text")
        m = parse_memstats(resp.body.decode(errors="replace"), time.monotonic())
        if m is None:
            raise ScrapeError("not_pprof", f"{self.label}: heap?debug=1 has no runtime.MemStats trailer")
        prev = self.last_num_gc
        self.last_num_gc = m.num_gc
        r = self.resource
        metrics.sum(r, "go.gc.cycles", m.num_gc, "{gc_cycle}", "Completed GC cycles (runtime.MemStats.NumGC).")
        metrics.gauge(r, "gotel.go.gc.cpu_fraction", m.gc_cpu_fraction, "1",
                      "GC share of the CPU available to the program since it started (runtime.MemStats.GCCPUFraction)")
        metrics.gauge(r, "gotel.go.gc.last", m.last_gc_unix_ns / 1e9, "s", "When the last GC cycle ended (unix time)")
        if prev is not None and m.num_gc >= prev:
            pauses = m.pauses_since(prev)  # the trailer has the last 256 pauses, not PauseTotalNs
            metrics.gauge(r, "gotel.go.gc.pause.max", max(pauses, default=0) / 1e9, "s",
                          "longest stop-the-world GC pause of the cycles since the previous reading")
            metrics.gauge(r, "gotel.go.gc.pause.sum", sum(pauses) / 1e9, "s",
                          "stop-the-world GC pause time of the cycles since the previous reading (at most 256)")
        return len(resp.body), 1

    def _alloc_sites(self, p: pb.Profile, metrics: MetricsBuilder) -> None:
        """Bytes allocated per site (innermost user frame) in this scrape's allocs delta: the gc rule's blame."""
        from gotel.diagnose.rules import top_sites_by

        n = self.cfg.diagnostics.alloc_top
        if n <= 0:
            return
        for loc, v in top_sites_by(p, "alloc_space", n):
            a = {"code.function.name": loc.function, "code.file.path": loc.file, "code.line.number": loc.line}
            metrics.sum(self.resource, "gotel.memory.allocated.site", v, "By",
                        "bytes allocated at this site (allocs profile delta, innermost user frame)", a,
                        temporality=DELTA, start=p.time_nanos)

    def _finding(self, f: goroutines.Finding, logs: LogsBuilder) -> None:
        b = f.bucket
        self.r.health.child(self.r.health.findings, self.label, f.kind).inc()
        attrs: dict[str, Any] = {
            "gotel.finding.kind": f.kind,
            "gotel.goroutine.state": b.state,
            "gotel.goroutine.wait.reason": b.wait_reason,
            "gotel.goroutine.wait.category": b.category,
            "gotel.goroutine.count": b.count,
            "gotel.goroutine.max_wait_minutes": b.max_minutes,
            "code.function.name": b.top_function,
            "gotel.goroutine.created_by": b.sample.created_by,
            "gotel.goroutine.created_at": b.sample.created_at,
            "gotel.goroutine.stack": b.stack_text(),
        }
        if f.kind == "growth":
            attrs["gotel.goroutine.growth"] = f.growth
            attrs["gotel.goroutine.history"] = list(f.history)
        if f.kind == "leaked":
            attrs["gotel.goroutine.leaked"] = b.leaked
        logs.add(self.resource, f.message(), severity="WARN", event_name=f"gotel.goroutine.{f.kind}", attributes=attrs)

    async def _leak_profile(self, p: pb.Profile, metrics: MetricsBuilder, logs: LogsBuilder) -> None:
        total = sum(s.value[0] for s in p.sample if s.value)
        metrics.gauge(self.resource, "gotel.goroutine.leaked", total, "{goroutine}",
                      "goroutines the Go runtime's leak detector found blocked forever (goroutineleak profile)")
        if total == 0:
            return
        # The leak GC just marked them; a debug=2 dump now shows them as "(leaked)" with their
        # wait reason and creator. Without budget for a dump, report the stacks of the profile.
        got = None
        with contextlib.suppress(ScrapeError):
            got = await self._fetch_dump()
        if got is not None:
            buckets = goroutines.bucketize(got[1])
            for old in [k for k in self.leak_reported if k not in buckets]:
                del self.leak_reported[old]
            for b in buckets.values():
                if b.leaked and b.leaked > self.leak_reported.get(b.key, 0):
                    self.leak_reported[b.key] = b.leaked
                    self._finding(goroutines.Finding("leaked", b), logs)
            return
        res = pprof.Resolver(p)
        for s in p.sample:
            frames = res.stack(s.location_id)
            key: goroutines.BucketKey = ("waiting", "", tuple((f.function, f.line) for f in frames), "", "")
            if s.value[0] <= self.leak_reported.get(key, 0):
                continue
            self.leak_reported[key] = s.value[0]
            g = goroutines.Goroutine(0, "waiting", "", 0, False, True,
                                     [(f.function, f.file, f.line) for f in frames])
            self._finding(goroutines.Finding("leaked", goroutines.Bucket(key, s.value[0], 0, s.value[0], g)), logs)


class PprofReceiver(Receiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        self.cfg = cfg
        self.sinks = sinks
        self.ctx = ctx
        self.log = ctx.logger
        self.health = Health(ctx)
        self.fetcher = Fetcher(cfg.timeout, cfg.max_body_bytes)
        self.sources: list[TargetSource] = []
        self.runners: dict[str, TargetRunner] = {}
        self._cpu_locks: dict[Any, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._refreshed = asyncio.Event()
        if cfg.targets:
            self.sources.append(StaticSource(self._static_targets()))
        if cfg.discovery_on():
            d = cfg.discovery
            self.sources.append(LocalProcessSource(d, d.path_prefix, fetcher=self.fetcher))

    def cpu_lock(self, t: Target) -> asyncio.Lock:
        key = (t.pid, t.start_time) if t.pid else t.key
        lock = self._cpu_locks.get(key)
        if lock is None:
            lock = self._cpu_locks[key] = asyncio.Lock()
        return lock

    async def push(self, signal: Signal, batch: Batch) -> None:
        await push(self.sinks.get(signal), batch, self.ctx)

    def _static_targets(self) -> list[Target]:
        out = []
        for st in self.cfg.targets:
            attrs: dict[str, Any] = dict(st.attributes)
            attrs["service.name"] = st.service_name or attrs.get("service.name") or "unknown_service"
            netns = st.netns or (f"/proc/{st.netns_pid}/ns/net" if st.netns_pid else None)
            out.append(Target(url=st.endpoint.rstrip("/"), attributes=attrs, netns=netns, pid=st.netns_pid,
                              source="static", path_prefix=st.path_prefix))
        return out

    async def start(self) -> None:
        if self.cfg.kubernetes is not None:
            from gotel.k8s.discovery import (
                KubernetesDiscoveryConfig,
                PodTargetSource,
            )

            kc = KubernetesDiscoveryConfig.model_validate(self.cfg.kubernetes)
            self.sources.append(PodTargetSource.from_config(kc, "pprof"))
        self._task = asyncio.create_task(self._manage(), name=f"{self.ctx.id}:targets")

    async def refresh(self) -> None:
        found: dict[str, Target] = {}
        for src in self.sources:
            try:
                for t in await src.targets():
                    found.setdefault(t.key, t)
            except Exception as e:
                self.log.warning("target source %s failed: %s", src.name, e)
                # keep the targets of a failing source rather than stopping their loops
                for k, r in self.runners.items():
                    if r.t.source == src.name:
                        found.setdefault(k, r.t)
        for k in [k for k in self.runners if k not in found or found[k].start_time != self.runners[k].t.start_time]:
            r = self.runners.pop(k)
            await r.stop()
            self.health.forget(r.label)
            self.log.info("pprof: stopped scraping %s", r.label)
            if r.t.netns and not any(x.t.netns == r.t.netns for x in self.runners.values()):
                self.fetcher.forget_netns(r.t.netns)
        for k, t in found.items():
            if k not in self.runners:
                r = TargetRunner(self, t)
                self.runners[k] = r
                r.start()
                self.log.info("pprof: scraping %s (service.name=%s)", r.label, t.attributes.get("service.name"))
        self.health.targets.set(len(self.runners))
        self._refreshed.set()

    async def _manage(self) -> None:
        interval = self.cfg.discovery.refresh_interval
        while True:
            await self.refresh()
            if not self.cfg.discovery_on() and self.cfg.kubernetes is None:
                return
            await asyncio.sleep(interval)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """For tests and benchmarks: the first target refresh has happened."""
        await asyncio.wait_for(self._refreshed.wait(), timeout)

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for r in list(self.runners.values()):
            await r.stop()
        self.runners.clear()
        for s in self.sources:
            await s.close()
        await self.fetcher.close()
