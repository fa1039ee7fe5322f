"""`span_metrics` connector (collector alias `spanmetrics`): request counts and duration histograms
from spans, with the collector's names, dimensions, buckets and flush semantics, so dashboards built
on the collector's `traces.span.metrics.*` series work unchanged.

Spans are aggregated on the protobuf messages as they pass (one dict lookup per span and metric);
the timer emits one ResourceMetrics per distinct resource every `metrics_flush_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import Field, field_validator, model_validator

from gotel.component.contract import (
    SHUTDOWN_DEADLINE,
    ComponentConfig,
    ConnectorFactory,
    Consumer,
    Context,
)
from gotel.config.types import Duration
from gotel.connectorhelper.flush import MetricsConnector
from gotel.pdata.batch import Batch, Signal, any_value

SCOPE = "spanmetricsconnector"  # the collector's scope name, so both sources look alike downstream
DEFAULT_BUCKETS_MS = (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000)
SERVICE_NAME, SPAN_NAME, SPAN_KIND, STATUS_CODE = "service.name", "span.name", "span.kind", "status.code"
RESERVED = (SERVICE_NAME, SPAN_NAME, SPAN_KIND, STATUS_CODE)
OVERFLOW_KEY = "otel.metric.overflow"
SCOPE_NAME_DIM, SCOPE_VERSION_DIM = "span.instrumentation.scope.name", "span.instrumentation.scope.version"
MAX_SCALE = 20
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_KIND = {v: k for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS = {v: k for k, v in trace_pb2.Status.StatusCode.items()}


class Dimension(ComponentConfig):
    name: str = Field(min_length=1, description="span attribute, else resource attribute, to add as a dimension")
    default: str | None = Field(None, description="value when neither has it; without one the dimension is left out")


class Explicit(ComponentConfig):
    buckets: list[Duration] = Field(default_factory=list, description="bucket upper bounds (durations)")


class Exponential(ComponentConfig):
    max_size: int = Field(160, gt=0, description="most buckets per sign; the scale drops to fit")


class Histogram(ComponentConfig):
    disable: bool = Field(False, description="emit no duration histogram")
    unit: Literal["ms", "s"] = Field("ms", description="unit of the durations: ms or s")
    dimensions: list[Dimension] = Field(default_factory=list, description="dimensions of the histogram only")
    explicit: Explicit | None = None
    exponential: Exponential | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Histogram:
        if self.explicit is not None and self.exponential is not None:
            raise ValueError("use either explicit or exponential buckets, not both")
        return self


class Exemplars(ComponentConfig):
    enabled: bool = False
    max_per_data_point: int = Field(0, ge=0, description="most exemplars kept per point between flushes; 0 = no cap")


class Events(ComponentConfig):
    enabled: bool = Field(False, description="also count span events as traces.span.metrics.events")
    dimensions: list[Dimension] = Field(default_factory=list, description="event attributes to add")


class Config(ComponentConfig):
    histogram: Histogram = Field(default_factory=Histogram)
    dimensions: list[Dimension] = Field(default_factory=list, description="dimensions of every metric")
    calls_dimensions: list[Dimension] = Field(default_factory=list, description="dimensions of the calls metric only")
    exclude_dimensions: list[str] = Field(default_factory=list, description="default dimensions to leave out")
    include_instrumentation_scope: list[str] = Field(
        default_factory=list, description="scope names whose spans get span.instrumentation.scope.name/version")
    dimensions_cache_size: int = Field(0, ge=0, description="deprecated in the collector; accepted, unused")
    resource_metrics_cache_size: int = Field(1000, ge=0, description="accepted for the collector; resources "
                                             "expire by metrics_expiration")
    resource_metrics_key_attributes: list[str] = Field(
        default_factory=list, description="resource attributes that tell resources apart (default: all)")
    aggregation_temporality: str = Field("AGGREGATION_TEMPORALITY_CUMULATIVE",
                                         description="AGGREGATION_TEMPORALITY_CUMULATIVE or _DELTA")
    metrics_flush_interval: Duration = Field(15.0, gt=0, description="how often the metrics are emitted")
    metrics_expiration: Duration = Field(0.0, ge=0, description="forget a resource's series after this long "
                                         "without spans; 0 = never")
    metric_timestamp_cache_size: int = Field(1000, ge=0, description="accepted for the collector; unused")
    namespace: str = Field("traces.span.metrics", description="prefix of the metric names")
    exemplars: Exemplars = Field(default_factory=Exemplars)
    events: Events = Field(default_factory=Events)
    aggregation_cardinality_limit: int = Field(0, ge=0, description="series per resource and metric; more "
                                               f"collapse into one with {OVERFLOW_KEY}=true; 0 = no limit")

    @field_validator("aggregation_temporality")
    @classmethod
    def _temporality(cls, v: str) -> str:
        short = v.upper().removeprefix("AGGREGATION_TEMPORALITY_")
        if short not in ("CUMULATIVE", "DELTA"):
            raise ValueError("expected AGGREGATION_TEMPORALITY_CUMULATIVE or AGGREGATION_TEMPORALITY_DELTA")
        return "AGGREGATION_TEMPORALITY_" + short

    @model_validator(mode="after")
    def _dims(self) -> Config:
        for where, dims in (("dimensions", self.dimensions), ("calls_dimensions", self.calls_dimensions),
                            ("histogram::dimensions", self.histogram.dimensions),
                            ("events::dimensions", self.events.dimensions)):
            seen: set[str] = set()
            for d in dims:
                if d.name in RESERVED:
                    raise ValueError(f'{where}: "{d.name}" is a default dimension already')
                if d.name in seen:
                    raise ValueError(f'{where}: "{d.name}" is listed twice')
                seen.add(d.name)
        return self


def _bucket_index_exp(value: float, scale: int) -> int:
    """The exponential bucket holding `value` (> 0) at `scale`; buckets are upper-inclusive, as OTLP says."""
    frac, exp = math.frexp(value)  # value = frac * 2**exp, frac in [0.5, 1)
    if scale <= 0:
        e = exp - 1
        if frac == 0.5:
            e -= 1
        return e >> -scale
    if frac == 0.5:  # exact powers of two close the bucket below
        return ((exp - 1) << scale) - 1
    return math.floor(math.log(value) * (2.0**scale / math.log(2)))


@dataclass(slots=True)
class ExpoHist:
    """A base-2 exponential histogram that halves its resolution when its buckets would exceed max_size."""

    max_size: int
    scale: int = MAX_SCALE
    zero: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    lo: int = 0
    hi: int = -1  # lo..hi: the bucket index range in use (empty while hi < lo)

    def add(self, v: float) -> None:
        if v <= 0:
            self.zero += 1
            return
        idx = _bucket_index_exp(v, self.scale)
        if self.hi < self.lo:
            self.lo = self.hi = idx
        elif idx < self.lo or idx > self.hi:
            lo, hi = min(self.lo, idx), max(self.hi, idx)
            change = 0
            while hi - lo + 1 > self.max_size:
                lo >>= 1
                hi >>= 1
                change += 1
            if change:
                merged: dict[int, int] = {}
                for i, c in self.counts.items():
                    merged[i >> change] = merged.get(i >> change, 0) + c
                self.counts = merged
                self.scale -= change
                idx = _bucket_index_exp(v, self.scale)
            self.lo, self.hi = min(lo, idx), max(hi, idx)
        self.counts[idx] = self.counts.get(idx, 0) + 1


@dataclass(slots=True)
class Series:
    attrs: bytes  # a serialized data point holding only the attributes: merged into the output point
    count: int = 0
    total: float = 0.0
    buckets: list[int] | None = None
    expo: ExpoHist | None = None
    exemplars: list[tuple[bytes, bytes, float, int]] = field(default_factory=list)
    start: int = 0


@dataclass
class ResourceState:
    resource: Any  # Resource message, copied from the first span of this resource
    start: int
    last_seen: float
    calls: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    hist: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    events: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    # raw span values -> series (see SpanMetrics.aggregate)
    calls_fast: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    hist_fast: dict[tuple[Any, ...], Series] = field(default_factory=dict)


def _value_key(av: AnyValue) -> Any:
    which = av.WhichOneof("value")
    return getattr(av, which) if which in ("string_value", "int_value", "double_value", "bool_value") \
        else av.SerializeToString(deterministic=True)


class SpanMetrics(MetricsConnector):
    what = "span metrics"
    mutates = False  # spans are only read

    def __init__(self, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        ns = cfg.namespace
        self.names = {m: f"{ns}.{m}" if ns else m for m in ("calls", "duration", "events")}
        self.temporality = DELTA if cfg.aggregation_temporality.endswith("DELTA") else CUMULATIVE
        h = cfg.histogram
        self.unit_div = 1e6 if h.unit == "ms" else 1e9
        if h.explicit is not None and h.explicit.buckets:
            scale = 1000.0 if h.unit == "ms" else 1.0
            self.bounds: list[float] = sorted(b * scale for b in h.explicit.buckets)
        else:
            self.bounds = [float(b) if h.unit == "ms" else b / 1000 for b in DEFAULT_BUCKETS_MS]
        self.expo_size = h.exponential.max_size if h.exponential is not None else 0
        excluded = set(cfg.exclude_dimensions)
        self.defaults = [d for d in RESERVED if d not in excluded]
        self.scopes = set(cfg.include_instrumentation_scope)
        self.resources: dict[tuple[Any, ...], ResourceState] = {}
        self.limit = cfg.aggregation_cardinality_limit
        self.dropped_no_service = 0
        self._timer: asyncio.Task[None] | None = None
        self._last_flush = time.time_ns()
        self._lock = asyncio.Lock()
        self._overflowed = ctx.telemetry.counter(
            "span_metrics_overflow_spans", "Spans counted in the overflow series (cardinality limit reached).")

    async def start(self) -> None:
        self._timer = asyncio.create_task(self._run(), name=f"{self.ctx.id}-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.metrics_flush_interval)
            await self.flush()

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self.flush()  # what was counted since the last flush is not lost

    def _resource_key(self, attrs: dict[str, AnyValue]) -> tuple[Any, ...]:
        keys = self.cfg.resource_metrics_key_attributes or sorted(attrs)
        return tuple((k, _value_key(attrs[k])) for k in keys if k in attrs)

    @staticmethod
    def _dims(dims: list[Dimension], span_attrs: dict[str, AnyValue],
              res_attrs: dict[str, AnyValue]) -> list[tuple[str, AnyValue]]:
        out: list[tuple[str, AnyValue]] = []
        for d in dims:
            v = span_attrs.get(d.name)
            if v is None:
                v = res_attrs.get(d.name)
            if v is None:
                if d.default is None:
                    continue
                v = any_value(d.default)
            out.append((d.name, v))
        return out

    def _series(self, table: dict[tuple[Any, ...], Series], dims: list[tuple[str, AnyValue]], now: int,
                hist: bool) -> Series:
        key = tuple((k, _value_key(v)) for k, v in dims)
        s = table.get(key)
        if s is not None:
            return s
        if self.limit and len(table) >= self.limit:
            okey = ((OVERFLOW_KEY, True),)
            s = table.get(okey)
            self._overflowed.inc()
            if s is not None:
                return s
            key, dims = okey, [(OVERFLOW_KEY, any_value(True))]
        # Kept serialized (~a tenth of the memory of KeyValue messages); the field number of
        # `attributes` differs between point types, so the point type of the output serializes it.
        holder = (metrics_pb2.ExponentialHistogramDataPoint() if self.expo_size else metrics_pb2.HistogramDataPoint()) \
            if hist else metrics_pb2.NumberDataPoint()
        holder.attributes.extend(KeyValue(key=k, value=v) for k, v in dims)
        s = Series(holder.SerializeToString(), start=now)
        if hist:
            if self.expo_size:
                s.expo = ExpoHist(self.expo_size)
            else:
                s.buckets = [0] * (len(self.bounds) + 1)
        table[key] = s
        return s

    def _exemplar(self, s: Series, span: Any, value: float, ts: int) -> None:
        cap = self.cfg.exemplars.max_per_data_point
        if self.cfg.exemplars.enabled and (not cap or len(s.exemplars) < cap):
            s.exemplars.append((span.trace_id, span.span_id, value, ts))

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        self.ctx.telemetry.processed(Signal.TRACES, n, 0)
        self.aggregate(batch)

    def aggregate(self, batch: Batch) -> None:
        """Counts every span of the batch into its series; no await, so a flush never sees half a batch."""
        now = time.time_ns()
        mono = time.monotonic()
        cfg = self.cfg
        base_dims, calls_dims, hist_dims = cfg.dimensions, cfg.calls_dimensions, cfg.histogram.dimensions
        want_attrs = bool(base_dims or calls_dims or hist_dims or cfg.events.enabled)
        hist_on = not cfg.histogram.disable
        bounds, div = self.bounds, self.unit_div
        for rs in batch.peek().resource_spans:
            res_attrs = {kv.key: kv.value for kv in rs.resource.attributes}
            svc = res_attrs.get(SERVICE_NAME)
            if svc is None:
                skipped = sum(len(ss.spans) for ss in rs.scope_spans)
                self.dropped_no_service += skipped
                self.ctx.telemetry.dropped(Signal.TRACES, skipped, "no service.name")
                continue
            rkey = self._resource_key(res_attrs)
            st = self.resources.get(rkey)
            if st is None:
                res = type(rs.resource)()
                res.CopyFrom(rs.resource)
                st = self.resources[rkey] = ResourceState(res, now, mono)
            st.last_seen = mono
            calls_fast, hist_fast = st.calls_fast, st.hist_fast
            exemplars = cfg.exemplars.enabled
            for ss in rs.scope_spans:
                scope_dims: list[tuple[str, AnyValue]] = []
                if ss.scope.name in self.scopes:
                    scope_dims = [(SCOPE_NAME_DIM, any_value(ss.scope.name)),
                                  (SCOPE_VERSION_DIM, any_value(ss.scope.version))]
                scope_key = (ss.scope.name, ss.scope.version) if scope_dims else ()
                for span in ss.spans:
                    # The series of most spans is found by the raw values of its dimensions: one tuple,
                    # one dict lookup per metric; attributes are built only for a series not seen yet.
                    span_attrs = {kv.key: kv.value for kv in span.attributes} if want_attrs else {}
                    raw: tuple[Any, ...] = (span.name, span.kind, span.status.code, scope_key)
                    if base_dims:
                        raw += self._raw(base_dims, span_attrs, res_attrs)
                    ckey = raw + self._raw(calls_dims, span_attrs, res_attrs) if calls_dims else raw
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    dur = (end - start) / div if end > start else 0.0
                    c = calls_fast.get(ckey)
                    if c is None:
                        common = self._common(svc, span, scope_dims, base_dims, span_attrs, res_attrs)
                        c = calls_fast[ckey] = self._series(
                            st.calls, common + self._dims(calls_dims, span_attrs, res_attrs), now, False)
                    c.count += 1
                    if exemplars:
                        self._exemplar(c, span, dur, end)
                    if hist_on:
                        hkey = raw + self._raw(hist_dims, span_attrs, res_attrs) if hist_dims else raw
                        h = hist_fast.get(hkey)
                        if h is None:
                            common = self._common(svc, span, scope_dims, base_dims, span_attrs, res_attrs)
                            h = hist_fast[hkey] = self._series(
                                st.hist, common + self._dims(hist_dims, span_attrs, res_attrs), now, True)
                        h.count += 1
                        h.total += dur
                        if h.buckets is not None:
                            h.buckets[bisect_left(bounds, dur)] += 1
                        elif h.expo is not None:
                            h.expo.add(dur)
                        if exemplars:
                            self._exemplar(h, span, dur, end)
                    if cfg.events.enabled and span.events:
                        common = self._common(svc, span, scope_dims, base_dims, span_attrs, res_attrs)
                        for ev in span.events:
                            ev_attrs = {kv.key: kv.value for kv in ev.attributes}
                            e = self._series(st.events, common + self._dims(cfg.events.dimensions, ev_attrs, {}),
                                             now, False)
                            e.count += 1
                            if exemplars:
                                self._exemplar(e, span, dur, ev.time_unix_nano)

    def _common(self, svc: AnyValue, span: Any, scope_dims: list[tuple[str, AnyValue]], base_dims: list[Dimension],
                span_attrs: dict[str, AnyValue], res_attrs: dict[str, AnyValue]) -> list[tuple[str, AnyValue]]:
        """The default dimensions (less the excluded ones), the scope's, then `dimensions`."""
        head: list[tuple[str, AnyValue]] = []
        for d in self.defaults:
            if d == SERVICE_NAME:
                head.append((d, svc))
            elif d == SPAN_NAME:
                head.append((d, any_value(span.name)))
            elif d == SPAN_KIND:
                head.append((d, any_value(_KIND.get(span.kind, str(span.kind)))))
            else:
                head.append((d, any_value(_STATUS.get(span.status.code, str(span.status.code)))))
        return head + scope_dims + self._dims(base_dims, span_attrs, res_attrs)

    @staticmethod
    def _raw(dims: list[Dimension], span_attrs: dict[str, AnyValue], res_attrs: dict[str, AnyValue]) -> tuple[Any, ...]:
        """The values `dims` would take, as a hashable key (None where one is left out)."""
        out: list[Any] = []
        for d in dims:
            v = span_attrs.get(d.name)
            if v is None:
                v = res_attrs.get(d.name)
            out.append(None if v is None else v.SerializeToString())  # cheaper than reading the oneof
        return tuple(out)

    def build(self) -> ExportMetricsServiceRequest | None:
        """The metrics of every live resource; resets them when delta, expires idle ones when asked."""
        now = time.time_ns()
        req = ExportMetricsServiceRequest()
        if self.cfg.metrics_expiration:
            cutoff = time.monotonic() - self.cfg.metrics_expiration
            for k in [k for k, st in self.resources.items() if st.last_seen < cutoff]:
                del self.resources[k]
        delta = self.temporality == DELTA
        for st in self.resources.values():
            if not (st.calls or st.hist or st.events):
                continue
            rm = req.resource_metrics.add()
            rm.resource.CopyFrom(st.resource)
            sm = rm.scope_metrics.add()
            sm.scope.name = SCOPE
            self._sums(sm, self.names["calls"], st.calls, now, delta)
            if st.hist:
                m = sm.metrics.add()
                m.name, m.unit = self.names["duration"], self.cfg.histogram.unit
                if self.expo_size:
                    m.exponential_histogram.aggregation_temporality = self.temporality
                    for s in st.hist.values():
                        self._expo_point(m.exponential_histogram.data_points.add(), s, now, delta)
                else:
                    m.histogram.aggregation_temporality = self.temporality
                    for s in st.hist.values():
                        p = m.histogram.data_points.add()
                        p.MergeFromString(s.attrs)
                        p.start_time_unix_nano = self._last_flush if delta else s.start
                        p.time_unix_nano = now
                        p.count, p.sum = s.count, s.total
                        p.explicit_bounds.extend(self.bounds)
                        assert s.buckets is not None
                        p.bucket_counts.extend(s.buckets)
                        self._put_exemplars(p, s)
            self._sums(sm, self.names["events"], st.events, now, delta)
        if delta:
            self.resources.clear()  # series, caches and all: the next window starts empty
        else:
            for st in self.resources.values():
                for table in (st.calls, st.hist, st.events):
                    for s in table.values():
                        s.exemplars.clear()
        self._last_flush = now
        return req if req.resource_metrics else None

    def _sums(self, sm: Any, name: str, table: dict[tuple[Any, ...], Series], now: int, delta: bool) -> None:
        if not table:
            return
        m = sm.metrics.add()
        m.name = name
        m.sum.is_monotonic = True
        m.sum.aggregation_temporality = self.temporality
        for s in table.values():
            p = m.sum.data_points.add()
            p.MergeFromString(s.attrs)
            p.start_time_unix_nano = self._last_flush if delta else s.start
            p.time_unix_nano = now
            p.as_int = s.count
            self._put_exemplars(p, s)

    def _expo_point(self, p: Any, s: Series, now: int, delta: bool) -> None:
        assert s.expo is not None
        e = s.expo
        p.MergeFromString(s.attrs)
        p.start_time_unix_nano = self._last_flush if delta else s.start
        p.time_unix_nano = now
        p.count, p.sum = s.count, s.total
        # the scale of a histogram with no non-zero value is 0, as the collector's says
        p.scale, p.zero_count = (e.scale if e.counts else 0), e.zero
        if e.counts:
            p.positive.offset = e.lo
            p.positive.bucket_counts.extend(e.counts.get(i, 0) for i in range(e.lo, e.hi + 1))
        self._put_exemplars(p, s)

    @staticmethod
    def _put_exemplars(p: Any, s: Series) -> None:
        for trace_id, span_id, value, ts in s.exemplars:
            ex = p.exemplars.add()
            ex.trace_id, ex.span_id, ex.as_double, ex.time_unix_nano = trace_id, span_id, value, ts



def _create(src: Signal, dst: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> SpanMetrics:
    return SpanMetrics(cfg, nxt, ctx)


factory = ConnectorFactory(
    type="span_metrics",
    aliases=("spanmetrics",),
    config=Config,
    signals=frozenset({Signal.TRACES}),
    pairs=frozenset({(Signal.TRACES, Signal.METRICS)}),
    description="request counts and duration histograms (traces.span.metrics.*) from spans, the collector's way",
    create=_create,
)
