"""``go_metrics`` receiver: a Go program's runtime metrics, pulled from its Prometheus endpoint
(client_golang's Go collector names) or from ``/debug/vars`` (expvar memstats), mapped to the
OpenTelemetry Go runtime semantic conventions (go.goroutine.count, go.memory.*, go.processor.limit,
go.config.gogc, go.schedule.duration) plus GC pauses.

Targets use gotel.receiverhelper.targets (static list, optionally reached inside a network namespace), so a
loopback-only /metrics of a pod is read the same way as its pprof endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, field_validator, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory
from gotel.config.types import Duration
from gotel.pdata.batch import Signal
from gotel.pdata.builders import MetricsBuilder
from gotel.receiverhelper.outcome import push
from gotel.receiverhelper.targets import Target

SCOPE = "gotel.receivers.go_metrics"


class TargetConfig(ComponentConfig):
    endpoint: str = Field(description="full URL: http://host:port/metrics or http://host:port/debug/vars")
    format: Literal["auto", "prometheus", "expvar"] = "auto"
    service_name: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    netns: str | None = None
    netns_pid: int | None = None

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must start with http:// or https://")
        return self

    def kind(self) -> str:
        if self.format != "auto":
            return self.format
        return "expvar" if self.endpoint.rstrip("/").endswith("/debug/vars") else "prometheus"


class Config(ComponentConfig):
    targets: list[TargetConfig] = Field(default_factory=list)
    kubernetes: dict[str, Any] | None = Field(
        None, description="pods annotated prometheus.io/scrape on this node (docs/kubernetes.md)")
    interval: Duration = Field(15.0, ge=0.1)
    timeout: Duration = Field(5.0, gt=0)
    refresh_interval: Duration = Field(30.0, ge=1.0, description="how often pod targets are re-read")

    @field_validator("kubernetes")
    @classmethod
    def _k8s(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        from gotel.receivers.pprof.config import check_kubernetes

        return check_kubernetes(v)


# --- mapping -----------------------------------------------------------------------------------


class Mapper:
    """Prometheus/expvar samples -> OTel Go runtime metrics, for one target (keeps counter start times)."""

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self._last: dict[str, float] = {}

    def _start(self, name: str, value: float) -> int:
        # a counter that went down means the program restarted: a new start time
        if value < self._last.get(name, 0):
            self.start_ns = time.time_ns()
        self._last[name] = value
        return self.start_ns

    def prometheus(self, text: str, res: Mapping[str, Any], mb: MetricsBuilder) -> int:
        vals: dict[str, float] = {}
        hists: dict[str, list[tuple[float, float]]] = {}
        sums: dict[str, float] = {}
        quant: dict[str, list[tuple[float, float]]] = {}
        for fam in text_string_to_metric_families(text):
            if not fam.name.startswith(("go_", "process_")):
                continue
            for s in fam.samples:
                if s.name.endswith("_bucket") and "le" in s.labels:
                    hists.setdefault(fam.name, []).append((float(s.labels["le"]), s.value))
                elif fam.type == "summary" and "quantile" in s.labels:
                    quant.setdefault(fam.name, []).append((float(s.labels["quantile"]), s.value))
                elif s.name.endswith(("_sum", "_count")) and fam.type in ("histogram", "summary"):
                    sums[s.name] = s.value
                elif not s.labels or fam.name == "go_info":
                    vals[s.name] = s.value
        return self._emit(vals, hists, sums, quant, res, mb)

    def expvar(self, body: bytes, res: Mapping[str, Any], mb: MetricsBuilder) -> int:
        d = json.loads(body)
        ms = d.get("memstats") or {}
        vals = {
            "go_memstats_alloc_bytes_total": ms.get("TotalAlloc"),
            "go_memstats_mallocs_total": ms.get("Mallocs"),
            "go_memstats_frees_total": ms.get("Frees"),
            "go_memstats_heap_alloc_bytes": ms.get("HeapAlloc"),
            "go_memstats_sys_bytes": ms.get("Sys"),
            "go_memstats_heap_released_bytes": ms.get("HeapReleased"),
            "go_memstats_stack_inuse_bytes": ms.get("StackInuse"),
            "go_memstats_next_gc_bytes": ms.get("NextGC"),
            "go_gc_cycles_total": ms.get("NumGC"),
            "go_gc_pause_total_seconds": (ms["PauseTotalNs"] / 1e9) if "PauseTotalNs" in ms else None,
        }
        clean = {k: float(v) for k, v in vals.items() if isinstance(v, int | float)}
        return self._emit(clean, {}, {}, {}, res, mb)

    def _emit(self, v: dict[str, float], hists: dict[str, list[tuple[float, float]]], sums: dict[str, float],
              quant: dict[str, list[tuple[float, float]]], res: Mapping[str, Any], mb: MetricsBuilder) -> int:
        n = 0
        now = time.time_ns()

        def gauge(name: str, value: float | None, unit: str, desc: str, attrs: dict[str, Any] | None = None) -> None:
            nonlocal n
            if value is None or math.isnan(value):
                return
            mb.sum(res, name, int(value), unit, desc, attrs, monotonic=False, ts=now)
            n += 1

        def counter(name: str, src: str, value: float | None, unit: str, desc: str) -> None:
            nonlocal n
            if value is None:
                return
            mb.sum(res, name, int(value), unit, desc, start=self._start(src, value), ts=now)
            n += 1

        gauge("go.goroutine.count", v.get("go_sched_goroutines_goroutines", v.get("go_goroutines")), "{goroutine}",
              "Count of live goroutines.")
        sys_b = v.get("go_memstats_sys_bytes")
        released = v.get("go_memstats_heap_released_bytes", 0.0)
        stack = v.get("go_memstats_stack_inuse_bytes")
        if sys_b is not None:
            used = sys_b - released
            if stack is not None:
                gauge("go.memory.used", stack, "By", "Memory used by the Go runtime.", {"go.memory.type": "stack"})
                gauge("go.memory.used", used - stack, "By", "Memory used by the Go runtime.", {"go.memory.type": "other"})
            else:
                gauge("go.memory.used", used, "By", "Memory used by the Go runtime.")
        limit = v.get("go_gc_gomemlimit_bytes")
        if limit is not None and limit < 2**62:  # math.MaxInt64 means "no limit"
            gauge("go.memory.limit", limit, "By", "Go runtime memory limit configured by the user, if a limit exists.")
        counter("go.memory.allocated", "alloc", v.get("go_gc_heap_allocs_bytes_total", v.get("go_memstats_alloc_bytes_total")),
                "By", "Memory allocated to the heap by the application.")
        counter("go.memory.allocations", "mallocs", v.get("go_gc_heap_allocs_objects_total", v.get("go_memstats_mallocs_total")),
                "{allocation}", "Count of allocations to the heap by the application.")
        gauge("go.memory.gc.goal", v.get("go_gc_heap_goal_bytes", v.get("go_memstats_next_gc_bytes")), "By",
              "Heap size target for the end of the GC cycle.")
        gauge("go.processor.limit", v.get("go_sched_gomaxprocs_threads"), "{thread}",
              "The number of OS threads that can execute user-level Go code simultaneously.")
        gogc = v.get("go_gc_gogc_percent")
        if gogc is not None:
            gauge("go.config.gogc", gogc, "%", "Heap size target percentage configured by the user, otherwise 100.")
        gauge("process.thread.count", v.get("go_threads"), "{thread}", "OS threads created by the Go runtime.")
        cycles = v.get("go_gc_cycles_total_gc_cycles_total", v.get("go_gc_cycles_total"))
        if cycles is None and "go_gc_duration_seconds_count" in sums:
            cycles = sums["go_gc_duration_seconds_count"]
        counter("go.gc.cycles", "gc_cycles", cycles, "{gc_cycle}", "Completed GC cycles.")
        pause_total = v.get("go_gc_pause_total_seconds", sums.get("go_gc_duration_seconds_sum"))
        if pause_total is not None:
            mb.sum(res, "go.gc.pause.duration.total", float(pause_total), "s", "Total stop-the-world GC pause time.",
                   start=self._start("gc_pause", pause_total), ts=now)
            n += 1
        for q, val in quant.get("go_gc_duration_seconds", []):
            if not math.isnan(val):
                mb.gauge(res, "go.gc.pause.duration", val, "s", "GC stop-the-world pause quantiles (client_golang summary).",
                         {"quantile": q}, ts=now)
                n += 1
        for prom, otel, desc in (
            ("go_sched_latencies_seconds", "go.schedule.duration",
             "The time goroutines have spent in the scheduler in a runnable state before actually running."),
            ("go_sched_pauses_total_gc_seconds", "go.gc.pause.duration.histogram", "Distribution of GC stop-the-world pauses."),
        ):
            b = hists.get(prom)
            if not b:
                continue
            b.sort()
            bounds = [le for le, _c in b if not math.isinf(le)]
            cum = [c for _le, c in b]
            counts = [int(cum[0])] + [int(cum[i] - cum[i - 1]) for i in range(1, len(cum))]
            if len(counts) == len(bounds):  # no +Inf bucket: add an empty one
                counts.append(0)
            mb.histogram(res, otel, bounds, counts, sums.get(prom + "_sum", 0.0), "s", desc,
                         start=self._start(prom, cum[-1] if cum else 0), ts=now)
            n += 1
        return n


# --- receiver ----------------------------------------------------------------------------------


class GoMetricsReceiver(Receiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        from gotel.receivers.pprof.fetch import Fetcher

        self.cfg = cfg
        self.sink = sinks.get(Signal.METRICS)
        self.ctx = ctx
        self.fetcher = Fetcher(cfg.timeout, 16 << 20, user_agent="gotel-go-metrics")
        self.tasks: list[asyncio.Task[None]] = []
        t = ctx.telemetry
        self.failures = t.counter("go_metrics_scrape_failures", "Failed scrapes per target and class.", ("target", "class"))
        self.up = t.gauge("go_metrics_target_up", "1 when the last scrape succeeded.", ("target",))
        self._last_err: dict[str, str] = {}
        self._mappers: dict[str, Mapper] = {}

    def static_targets(self) -> list[tuple[Target, str]]:
        out = []
        for tc in self.cfg.targets:
            u = urlsplit(tc.endpoint)
            attrs: dict[str, Any] = dict(tc.attributes)
            attrs["service.name"] = tc.service_name or attrs.get("service.name") or "unknown_service"
            netns = tc.netns or (f"/proc/{tc.netns_pid}/ns/net" if tc.netns_pid else None)
            path = (u.path or "/metrics") + (f"?{u.query}" if u.query else "")
            out.append((Target(url=f"{u.scheme}://{u.netloc}", attributes=attrs, netns=netns, pid=tc.netns_pid,
                               source="static", path_prefix=path), tc.kind()))
        return out

    async def start(self) -> None:
        for t, kind in self.static_targets():
            self.tasks.append(asyncio.create_task(self._loop(t, t.path_prefix, kind)))
        if self.cfg.kubernetes is not None:
            from gotel.k8s.discovery import (
                KubernetesDiscoveryConfig,
                PodTargetSource,
            )

            src = PodTargetSource.from_config(KubernetesDiscoveryConfig.model_validate(self.cfg.kubernetes), "metrics")
            self.tasks.append(asyncio.create_task(self._follow(src)))

    async def _follow(self, src: Any) -> None:
        """Pod targets come and go: one loop per target key, stopped when the pod is gone."""
        loops: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    found = {t.key + t.path_prefix: t for t in await src.targets()}
                except Exception as e:
                    self.ctx.logger.warning("go_metrics: kubernetes target source failed: %s", e)
                    found = {}
                for k in [k for k in loops if k not in found]:
                    loops.pop(k).cancel()
                for k, t in found.items():
                    if k not in loops:
                        kind = "expvar" if t.path_prefix.rstrip("/").endswith("/debug/vars") else "prometheus"
                        loops[k] = asyncio.create_task(self._loop(t, t.path_prefix, kind))
                await asyncio.sleep(self.cfg.refresh_interval)
        finally:
            for task in loops.values():
                task.cancel()
            with contextlib.suppress(Exception):
                await src.close()

    async def scrape(self, t: Target, path: str, kind: str) -> int:
        from gotel.receivers.pprof.fetch import ScrapeError

        mapper = self._mappers.setdefault(t.key, Mapper())
        res = t.resource()
        mb = MetricsBuilder(SCOPE)
        try:
            r = await self.fetcher.get(t, path, expect="any")
            n = mapper.expvar(r.body, res, mb) if kind == "expvar" else mapper.prometheus(r.body.decode(errors="replace"), res, mb)
            if n == 0:
                raise ScrapeError("no_go_metrics", f"{t.url}{path} has no Go runtime metrics",
                                  "expected client_golang's go_* metrics or expvar memstats")
        except ScrapeError as e:
            self._fail(t, e.cls, str(e))
            return 0
        except (ValueError, UnicodeDecodeError) as e:
            self._fail(t, "bad_format", f"{t.url}{path}: cannot parse {kind}: {e}")
            return 0
        self.up.labels(t.describe()).set(1)
        if self._last_err.pop(t.key, None):
            self.ctx.logger.info("go_metrics %s: scraping again", t.describe())
        await push(self.sink, mb.batch(), self.ctx)
        return n

    def _fail(self, t: Target, cls: str, msg: str) -> None:
        self.failures.labels(t.describe(), cls).inc()
        self.up.labels(t.describe()).set(0)
        if self._last_err.get(t.key) != cls:
            self._last_err[t.key] = cls
            self.ctx.logger.warning("go_metrics %s: %s: %s", t.describe(), cls, msg)

    async def _loop(self, t: Target, path: str, kind: str) -> None:
        while True:
            await self.scrape(t, path, kind)
            await asyncio.sleep(self.cfg.interval)

    async def shutdown(self, deadline: float = 10.0) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.fetcher.close()


def _create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> GoMetricsReceiver:
    return GoMetricsReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="go_metrics",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="Go runtime metrics from a Prometheus /metrics or expvar /debug/vars endpoint, as OTel Go semconv metrics",
    create=_create,
    shares_process=True,
)
