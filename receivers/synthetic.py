"""`synthetic` receiver: spans, metrics, logs and profiles at a configured rate, with no kernel or network.

For demos, tests and benchmarks. ``synthetic: {}`` gives a modest stream of every signal the
pipelines ask for. ``prebuilt: true`` serializes a few requests once and re-sends their bytes, so a
benchmark measures the pipeline, not the generator. Rates are kept by elapsed time, not by sleeps,
so a slow sink makes the receiver fall behind (at most one second of backlog), never burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Mapping

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.profiles.v1development.profiles_pb2 import (
    Function,
    Line,
    Location,
    Profile,
    ResourceProfiles,
    Sample,
    ScopeProfiles,
    Stack,
    ValueType,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from pydantic import Field

from gotel import __version__
from gotel.component.contract import (
    ALL_SIGNALS,
    ComponentConfig,
    Consumer,
    Context,
    Receiver,
    ReceiverFactory,
)
from gotel.pdata.batch import BATCH_TYPES, Batch, Logs, Metrics, Profiles, Signal, Traces, attrs, kv

Scalar = str | int | float | bool


class Config(ComponentConfig):
    spans_per_second: float = Field(20.0, ge=0, description="0 turns traces off")
    metrics_per_second: float = Field(10.0, ge=0, description="metric data points per second; 0 turns metrics off")
    logs_per_second: float = Field(10.0, ge=0, description="0 turns logs off")
    profiles_per_second: float = Field(0.5, ge=0, description="0 turns profiles off")
    batch_size: int = Field(100, ge=1, le=100_000, description="most items in one request")
    service_name: str = "synthetic"
    resource_attributes: dict[str, Scalar] = Field(default_factory=dict)
    attributes: dict[str, Scalar] = Field(default_factory=dict, description="added to every span, data point and log record")
    process_pid: int | None = Field(None, ge=1, description="sets process.pid on the resource (to test pid-based enrichment)")
    prebuilt: bool = Field(False, description="re-send a few pre-serialized requests (benchmarks)")
    max_items: int = Field(0, ge=0, description="stop each signal after this many items; 0 = never")


_SCOPE = InstrumentationScope(name="gotel.synthetic", version=__version__)
_ROUTES = ["GET /api/items", "POST /api/orders", "GET /healthz", "GET /api/items/{id}"]


class Generator:
    """Builds requests; one per receiver instance (sequence numbers make items distinguishable)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        ra: dict[str, Scalar] = {"service.name": cfg.service_name, "telemetry.sdk.name": "gotel-synthetic"}
        if cfg.process_pid is not None:
            ra["process.pid"] = cfg.process_pid
        ra.update(cfg.resource_attributes)
        self.resource = Resource(attributes=attrs(ra))
        self.extra = attrs(dict(cfg.attributes))
        self.seq = itertools.count()

    def traces(self, n: int) -> Traces:
        now = time.time_ns()
        ids = os.urandom(24 * n)
        spans = []
        trace_id = b""
        root = b""
        for i in range(n):
            seq = next(self.seq)
            sid = ids[24 * i + 16 : 24 * i + 24]
            is_root = i % 4 == 0
            if is_root:
                trace_id = ids[24 * i : 24 * i + 16]
                root = sid
            route = _ROUTES[seq % len(_ROUTES)]
            sp = Span(
                trace_id=trace_id,
                span_id=sid,
                parent_span_id=b"" if is_root else root,
                name=route if is_root else f"db.query {seq % 7}",
                kind=Span.SPAN_KIND_SERVER if is_root else Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=now - 2_000_000,
                end_time_unix_nano=now - (0 if is_root else 1_000_000),
                attributes=[kv("gotel.synthetic.seq", seq), *self.extra],
                status=Status(code=Status.STATUS_CODE_OK if seq % 50 else Status.STATUS_CODE_ERROR),
            )
            if is_root:
                method, path = route.split(" ", 1)
                sp.attributes.extend(attrs({"http.request.method": method, "http.route": path,
                                            "http.response.status_code": 200 if seq % 50 else 500}))
            spans.append(sp)
        b = Traces()
        b.msg.resource_spans.append(
            ResourceSpans(resource=self.resource, scope_spans=[ScopeSpans(scope=_SCOPE, spans=spans)])
        )
        return b

    def metrics(self, n: int) -> Metrics:
        now = time.time_ns()
        half = max(1, n // 2)
        counter = Metric(name="synthetic.requests", unit="{request}", description="Synthetic request count.",
                         sum=Sum(aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                                 is_monotonic=True))
        gauge = Metric(name="synthetic.queue.depth", unit="{item}", description="Synthetic queue depth.", gauge=Gauge())
        for i in range(n):
            seq = next(self.seq)
            dp = NumberDataPoint(time_unix_nano=now, attributes=[kv("worker", i), *self.extra])
            if i < half:
                dp.start_time_unix_nano = now - 60_000_000_000
                dp.as_int = seq
                counter.sum.data_points.append(dp)
            else:
                dp.as_double = float(seq % 100)
                gauge.gauge.data_points.append(dp)
        ms = [m for m in (counter, gauge) if len(m.sum.data_points if m.HasField("sum") else m.gauge.data_points)]
        b = Metrics()
        b.msg.resource_metrics.append(
            ResourceMetrics(resource=self.resource, scope_metrics=[ScopeMetrics(scope=_SCOPE, metrics=ms)])
        )
        return b

    def logs(self, n: int) -> Logs:
        now = time.time_ns()
        recs = []
        for _ in range(n):
            seq = next(self.seq)
            sev = (9, "INFO") if seq % 10 else (17, "ERROR")
            rec = LogRecord(time_unix_nano=now, observed_time_unix_nano=now, severity_number=sev[0],  # type: ignore[arg-type]  # protobuf enum field given its int value
                            severity_text=sev[1], attributes=[kv("gotel.synthetic.seq", seq), *self.extra])
            rec.body.string_value = f"synthetic log record {seq}"
            recs.append(rec)
        b = Logs()
        b.msg.resource_logs.append(
            ResourceLogs(resource=self.resource, scope_logs=[ScopeLogs(scope=_SCOPE, log_records=recs)])
        )
        return b

    def profiles(self, n: int) -> Profiles:
        """n CPU profiles sharing one small dictionary: main -> handler -> work / gc."""
        now = time.time_ns()
        b = Profiles()
        req = b.msg
        d = req.dictionary
        d.string_table.extend(["", "samples", "count", "cpu", "nanoseconds",
                               "main.main", "main.handler", "main.work", "runtime.gcBgMarkWorker", "main.go"])
        d.mapping_table.add()  # index 0 is the zero value, as the spec requires
        d.location_table.add()
        d.function_table.add()
        d.stack_table.add()
        for name in (5, 6, 7, 8):
            d.function_table.append(Function(name_strindex=name, system_name_strindex=name, filename_strindex=9))
        for f in (1, 2, 3, 4):
            d.location_table.append(Location(address=0x401000 + f * 0x40, lines=[Line(function_index=f, line=10 * f)]))
        d.stack_table.append(Stack(location_indices=[3, 2, 1]))
        d.stack_table.append(Stack(location_indices=[4]))
        profiles = []
        for _ in range(n):
            seq = next(self.seq)
            p = Profile(
                sample_type=ValueType(type_strindex=3, unit_strindex=4),
                period_type=ValueType(type_strindex=3, unit_strindex=4),
                period=10_000_000,
                time_unix_nano=now - 1_000_000_000,
                duration_nano=1_000_000_000,
                profile_id=os.urandom(16),
                samples=[Sample(stack_index=1, values=[10_000_000 * (1 + seq % 5)]),
                         Sample(stack_index=2, values=[10_000_000])],
            )
            profiles.append(p)
        req.resource_profiles.append(
            ResourceProfiles(resource=self.resource, scope_profiles=[ScopeProfiles(scope=_SCOPE, profiles=profiles)])
        )
        return b

    def build(self, signal: Signal, n: int) -> Batch:
        fn: Callable[[int], Batch] = {
            Signal.TRACES: self.traces,
            Signal.METRICS: self.metrics,
            Signal.LOGS: self.logs,
            Signal.PROFILES: self.profiles,
        }[signal]
        return fn(n)


def rate_of(cfg: Config, signal: Signal) -> float:
    return {
        Signal.TRACES: cfg.spans_per_second,
        Signal.METRICS: cfg.metrics_per_second,
        Signal.LOGS: cfg.logs_per_second,
        Signal.PROFILES: cfg.profiles_per_second,
    }[signal]


class SyntheticReceiver(Receiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        self.cfg = cfg
        self.sinks = sinks
        self.ctx = ctx
        self.gen = Generator(cfg)
        self.tasks: list[asyncio.Task[None]] = []
        self.sent: dict[Signal, int] = dict.fromkeys(Signal, 0)

    async def start(self) -> None:
        for signal, sink in self.sinks.items():
            rate = rate_of(self.cfg, signal)
            if rate > 0:
                self.tasks.append(asyncio.create_task(self._run(signal, sink, rate), name=f"{self.ctx.id}-{signal}"))

    def _prebuilt(self, signal: Signal) -> Callable[[int], Batch]:
        cls = BATCH_TYPES[signal]
        cache: dict[int, list[tuple[bytes, int]]] = {}
        counter = itertools.count()

        def get(n: int) -> Batch:
            variants = cache.get(n)
            if variants is None:
                variants = []
                for _ in range(4):
                    b = self.gen.build(signal, n)
                    variants.append((b.to_bytes(), b.item_count()))
                cache[n] = variants
            raw, count = variants[next(counter) % len(variants)]
            return cls(raw=raw, count=count)

        return get

    async def _run(self, signal: Signal, sink: Consumer, rate: float) -> None:
        bs = self.cfg.batch_size if signal != Signal.METRICS else max(2, self.cfg.batch_size)
        make = self._prebuilt(signal) if self.cfg.prebuilt else (lambda n: self.gen.build(signal, n))
        tick = min(1.0, max(0.001, bs / rate))
        start = time.monotonic()
        done = 0
        limit = self.cfg.max_items
        last_log = 0.0
        while True:
            now = time.monotonic()
            due = int((now - start) * rate) - done
            cap = max(int(rate), bs)
            if due > cap:  # more than a second (or a batch) behind: skip ahead rather than burst
                done += due - cap
                due = cap
            if limit:
                due = min(due, limit - done)
            while due > 0:
                n = min(bs, due)
                batch = make(n)
                try:
                    await sink.consume(batch)
                    self.ctx.telemetry.accepted(signal, n)
                    self.sent[signal] += n
                except Exception as e:  # refused downstream, or a sink bug: count it, keep generating
                    self.ctx.telemetry.refused(signal, n)
                    if now - last_log >= 1.0:
                        last_log = now
                        self.ctx.logger.warning("%s: %d %s refused: %s", self.ctx.id, n, signal, e)
                done += n
                due -= n
            if limit and done >= limit:
                return
            await asyncio.sleep(tick if rate * tick >= 1 else 1.0 / rate)

    async def shutdown(self, deadline: float = 10.0) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.tasks = []


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> SyntheticReceiver:
    return SyntheticReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="synthetic",
    config=Config,
    signals=ALL_SIGNALS,
    description="Generates spans, metrics, logs and profiles at configured rates (tests, demos, benchmarks).",
    create=create,
)
