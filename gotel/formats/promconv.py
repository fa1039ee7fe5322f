"""OTLP metrics -> Prometheus series, shared by the scrape and the remote-write exporters.

Why one module: the two exporters must agree on names, labels (job/instance/target_info, scope
labels, resource-to-telemetry conversion) and on how delta temporality is accumulated into the
cumulative series Prometheus expects. Series that stop being reported expire after a configured time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gotel.formats.promnames import label_name, metric_name, unit_for_family
from gotel.pdata.batch import Metrics

# NumberDataPoint's fixed64/double fields (start, time, as_double, as_int): tag byte, 8 bytes each.
_FIXED_TAGS = frozenset({0x11, 0x19, 0x21, 0x31})

# OTLP AggregationTemporality
DELTA = 1
CUMULATIVE = 2

Labels = tuple[tuple[str, str], ...]


def value_str(av: Any) -> str:
    """AnyValue as a label value: strings as is, scalars printed, arrays and maps as JSON."""
    k = av.WhichOneof("value")
    if k == "string_value":
        return str(av.string_value)
    if k == "bool_value":
        return "true" if av.bool_value else "false"
    if k == "int_value":
        return str(av.int_value)
    if k == "double_value":
        return repr(av.double_value)
    if k == "bytes_value":
        return bytes(av.bytes_value).hex()
    if k is None:
        return ""
    from gotel.pdata.batch import value_of

    return json.dumps(value_of(av), separators=(",", ":"), default=str)


def attr_labels(kvs: Any) -> dict[str, str]:
    """Attributes as labels; keys that sanitise to the same name are joined with ';' in key order."""
    out: dict[str, str] = {}
    collided: dict[str, list[tuple[str, str]]] | None = None
    for x in kvs:
        name = label_name(x.key)
        av = x.value
        v = av.string_value if av.WhichOneof("value") == "string_value" else value_str(av)
        if name in out:
            if collided is None:
                collided = {}
            collided.setdefault(name, [])
            collided[name].append((x.key, v))
            continue
        out[name] = v
        if collided is not None and name in collided:
            collided[name].insert(0, (x.key, v))
    if collided:
        first: dict[str, tuple[str, str]] = {}
        for x in kvs:
            n = label_name(x.key)
            if n in collided and n not in first:
                first[n] = (x.key, value_str(x.value))
        for n, rest in collided.items():
            allv = sorted([first[n], *[r for r in rest if r != first[n]]])
            out[n] = ";".join(v for _, v in allv)
    return out


@dataclass(slots=True)
class Exemplar:
    value: float
    ts: float  # seconds
    labels: dict[str, str]


@dataclass(slots=True)
class Series:
    """One series (or one histogram/summary with its sub-series) with its current cumulative state."""

    family: str
    kind: str  # counter | gauge | histogram | summary | info
    help: str
    unit: str
    labels: Labels
    ts_ms: int
    start_ms: int = 0
    value: float = 0.0
    bounds: tuple[float, ...] = ()
    counts: list[float] = field(default_factory=list)  # per bucket, not cumulative
    sum: float = 0.0
    count: float = 0.0
    has_sum: bool = True
    quantiles: list[tuple[float, float]] = field(default_factory=list)
    exemplars: dict[int, Exemplar] = field(default_factory=dict)  # bucket index (or 0) -> exemplar
    seen: float = 0.0  # monotonic time of the last update
    wire: Any = None  # an exporter's cached encoding of this series' labels (remote-write)
    dead: bool = False  # expired: a cached reference must look it up again
    # Remote-write's hot path (gotel.formats.remotewrite): the series' shard, its TimeSeries header for one
    # sample, and which batch last emitted it at which place (to merge a second point into the first).
    shard: int = 0
    hdr: bytes = b""
    seq: int = 0
    pos: int = 0

    def key(self) -> tuple[str, Labels]:
        return (self.family, self.labels)

    def samples(self) -> Iterator[tuple[str, Labels, float]]:
        """Flat Prometheus samples (name, labels without __name__, value): what remote-write sends."""
        if self.kind in ("counter", "gauge"):
            yield self.family, self.labels, self.value
        elif self.kind == "info":
            yield self.family, self.labels, 1.0
        elif self.kind == "histogram":
            acc = 0.0
            for i, b in enumerate(self.bounds):
                acc += self.counts[i] if i < len(self.counts) else 0.0
                yield self.family + "_bucket", (*self.labels, ("le", format_le(b))), acc
            yield self.family + "_bucket", (*self.labels, ("le", "+Inf")), self.count
            if self.has_sum:
                yield self.family + "_sum", self.labels, self.sum
            yield self.family + "_count", self.labels, self.count
        elif self.kind == "summary":
            for q, v in self.quantiles:
                yield self.family, (*self.labels, ("quantile", format_le(q))), v
            yield self.family + "_sum", self.labels, self.sum
            yield self.family + "_count", self.labels, self.count


def format_le(b: float) -> str:
    """Bucket bounds printed as Prometheus clients do ('0.005', '1.0', '+Inf')."""
    if math.isinf(b):
        return "+Inf" if b > 0 else "-Inf"
    return repr(float(b))


@dataclass
class ConvertOptions:
    namespace: str = ""
    const_labels: dict[str, str] = field(default_factory=dict)
    resource_to_telemetry: bool = False
    scope_labels: bool = True
    suffixes: bool = True
    target_info: bool = True


@dataclass
class Stats:
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


class Converter:
    """Stateful: delta series are accumulated here, and series not updated for ``expiration`` expire."""

    def __init__(self, opts: ConvertOptions, expiration: float = 300.0) -> None:
        self.opts = opts
        self.expiration = expiration
        self.series: dict[tuple[str, Labels], Series] = {}
        self.const = tuple(sorted((label_name(k), v) for k, v in opts.const_labels.items()))
        # (family, resource+scope labels, raw attribute pairs) -> series: the hot path skips
        # sanitising, merging and sorting labels for a series it has seen before.
        self._fast: dict[tuple[str, int, tuple[tuple[str, str], ...]], Series] = {}
        self._ckeys: dict[Labels, int] = {}  # resource+scope label sets, numbered (cheap to hash)
        self._ckey = 0

    # --- resource / scope ----------------------------------------------------------------------

    def _resource(self, res: Any) -> tuple[dict[str, str], dict[str, str]]:
        """(labels every series of the resource gets, target_info labels)."""
        attrs = {x.key: value_str(x.value) for x in res.attributes}
        svc = attrs.get("service.name", "")
        ns = attrs.get("service.namespace", "")
        job = f"{ns}/{svc}" if ns and svc else svc
        inst = attrs.get("service.instance.id", "")
        base: dict[str, str] = {}
        if job:
            base["job"] = job
        if inst:
            base["instance"] = inst
        if self.opts.resource_to_telemetry:
            for k, v in attr_labels(res.attributes).items():
                base.setdefault(k, v)
        info = {}
        for k, v in attr_labels(
            [x for x in res.attributes if x.key not in ("service.name", "service.namespace", "service.instance.id")]
        ).items():
            info[k] = v
        return base, info

    # --- conversion ------------------------------------------------------------------------------

    def convert(self, batch: Metrics, stats: Stats | None = None,
                emit: Callable[[Series], None] | None = None) -> list[Series]:
        """Applies one batch; returns the series it touched, each with its new cumulative state.

        ``emit`` is called right after each update (instead of collecting), so that a caller that
        needs every intermediate state of a series (remote-write sends each point) can take it.
        """
        stats = stats or Stats()
        now = time.monotonic()
        touched: list[Series] = []
        if emit is not None:
            touched = _Emitter(emit)
        for rm in batch.peek().resource_metrics:
            base, info = self._resource(rm.resource)
            s = self.target_info(base, info, now)
            if s is not None:
                touched.append(s)
            for sm in rm.scope_metrics:
                common = self.scope_labels(base, sm.scope)
                self.enter_scope(common)
                for m in sm.metrics:
                    self._metric(m, common, now, touched, stats)
        return touched

    def target_info(self, base: dict[str, str], info: dict[str, str], now: float) -> Series | None:
        """The target_info series of a resource (stored), or None when it has none."""
        if not (self.opts.target_info and info and ("job" in base or "instance" in base)):
            return None
        lab = dict(info)
        lab.update({k: base[k] for k in ("job", "instance") if k in base})
        s = Series("target_info", "info", "Target metadata", "", tuple(sorted(lab.items())), 0)
        s.seen = now
        self.series[s.key()] = s
        return s

    def scope_labels(self, base: dict[str, str], scope: Any) -> dict[str, str]:
        """The labels every series of a scope gets: the resource's, the scope's, the constant ones."""
        common = dict(base)
        if self.opts.scope_labels and scope.name:
            common["otel_scope_name"] = scope.name
            if scope.version:
                common["otel_scope_version"] = scope.version
        for k, v in self.const:
            common.setdefault(k, v)
        return common

    def enter_scope(self, common: dict[str, str]) -> None:
        """Makes ``common`` the label set the next _metric() calls are under (numbered for the fast keys)."""
        ck = tuple(sorted(common.items()))
        cid = self._ckeys.get(ck)
        if cid is None:
            if len(self._ckeys) > 100_000:
                self._ckeys.clear()
                self._fast.clear()
            cid = self._ckeys[ck] = len(self._ckeys)
        self._ckey = cid

    def _labels(self, dp_attrs: Any, common: dict[str, str]) -> Labels:
        if not dp_attrs:
            return tuple(sorted(common.items()))
        lab = attr_labels(dp_attrs)
        lab.update(common)  # resource identity and scope win over a point attribute of the same name
        return tuple(sorted(lab.items()))

    def _metric(self, m: Any, common: dict[str, str], now: float, touched: list[Series], stats: Stats) -> None:
        kind = m.WhichOneof("data")
        o = self.opts
        if kind == "gauge":
            fam = metric_name(m.name, m.unit, "gauge", o.namespace, o.suffixes)
            for dp in m.gauge.data_points:
                self._number(fam, "gauge", m, dp, common, now, touched, delta=False)
        elif kind == "sum":
            s = m.sum
            if s.aggregation_temporality not in (DELTA, CUMULATIVE):
                stats.drop("unspecified_temporality", len(s.data_points))
                return
            pkind = "counter" if s.is_monotonic else "gauge"
            fam = metric_name(m.name, m.unit, pkind, o.namespace, o.suffixes)
            delta = s.aggregation_temporality == DELTA
            for dp in s.data_points:
                self._number(fam, pkind, m, dp, common, now, touched, delta=delta)
        elif kind == "histogram":
            h = m.histogram
            if h.aggregation_temporality not in (DELTA, CUMULATIVE):
                stats.drop("unspecified_temporality", len(h.data_points))
                return
            fam = metric_name(m.name, m.unit, "histogram", o.namespace, o.suffixes)
            delta = h.aggregation_temporality == DELTA
            for dp in h.data_points:
                self._histogram(fam, m, dp, dp.explicit_bounds, dp.bucket_counts, common, now, touched,
                                delta, stats)
        elif kind == "exponential_histogram":
            h = m.exponential_histogram
            fam = metric_name(m.name, m.unit, "histogram", o.namespace, o.suffixes)
            delta = h.aggregation_temporality == DELTA
            for dp in h.data_points:
                conv = exp_to_explicit(dp)
                if conv is None:
                    stats.drop("exponential_histogram_negative_buckets")
                    continue
                bounds, counts = conv
                self._histogram(fam, m, dp, bounds, counts, common, now, touched, delta, stats)
        elif kind == "summary":
            fam = metric_name(m.name, m.unit, "summary", o.namespace, o.suffixes)
            for dp in m.summary.data_points:
                labels = self._labels(dp.attributes, common)
                s = Series(fam, "summary", m.description, unit_for_family(fam, m.unit), labels,
                           dp.time_unix_nano // 1_000_000, dp.start_time_unix_nano // 1_000_000)
                s.sum, s.count = dp.sum, float(dp.count)
                s.quantiles = [(q.quantile, q.value) for q in dp.quantile_values]
                s.seen = now
                self.series[s.key()] = s
                touched.append(s)
        else:
            stats.drop("empty_metric")

    def _lookup(self, fam: str, attrs_: Any, common: dict[str, str], dp: Any = None) -> tuple[Any, Series | None, Labels]:
        """(fast key, known series or None, labels when not known).

        For number points ``dp`` is given: its wire bytes after the leading fixed-size fields (times and
        value) start with, or contain, the attributes, so they identify the series without reading
        the attributes one by one (three times cheaper). Exemplars or flags in them only cost hits.
        """
        if dp is not None:
            b = dp.SerializeToString()
            i = 0
            n = len(b)
            while i < n and b[i] in _FIXED_TAGS:
                i += 9
            ak: Any = b[i:]
        elif attrs_:
            pairs = []
            for x in attrs_:
                av = x.value
                pairs.append((x.key, av.string_value if av.WhichOneof("value") == "string_value" else value_str(av)))
            ak = tuple(pairs)
        else:
            ak = ()
        fk = (fam, self._ckey, ak)
        s = self._fast.get(fk)
        if s is not None and not s.dead:
            return fk, s, s.labels
        labels = self._labels(attrs_, common)
        s = self.series.get((fam, labels))
        if s is not None:
            self._remember(fk, s)
        return fk, s, labels

    def _remember(self, fk: Any, s: Series) -> None:
        if len(self._fast) > 200_000:
            self._fast.clear()
        self._fast[fk] = s

    def _number(self, fam: str, pkind: str, m: Any, dp: Any, common: dict[str, str], now: float,
                touched: list[Series], delta: bool) -> None:
        fk, s, labels = self._lookup(fam, dp.attributes, common, dp)
        v = dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)
        ts = dp.time_unix_nano // 1_000_000
        if s is None:
            om_fam = fam[:-6] if pkind == "counter" and fam.endswith("_total") else fam
            s = Series(fam, pkind, m.description, unit_for_family(om_fam, m.unit), labels, ts,
                       dp.start_time_unix_nano // 1_000_000)
            self.series[(fam, labels)] = s
            self._remember(fk, s)
            s.value = v
        elif delta:
            if ts < s.ts_ms:  # late delta: counted into the total, but time does not go back
                ts = s.ts_ms
            s.value += v
        else:
            s.value = v
            s.start_ms = dp.start_time_unix_nano // 1_000_000
        s.ts_ms = ts
        s.seen = now
        if dp.exemplars:
            ex = _exemplar(dp.exemplars[-1])
            if ex is not None:
                s.exemplars[0] = ex
        touched.append(s)

    def _histogram(self, fam: str, m: Any, dp: Any, bounds: list[float], counts: list[Any],
                   common: dict[str, str], now: float, touched: list[Series], delta: bool, stats: Stats) -> None:
        fk, s, labels = self._lookup(fam, dp.attributes, common)
        ts = dp.time_unix_nano // 1_000_000
        key = (fam, labels)
        tb = tuple(bounds)
        fcounts = list(counts)
        if len(fcounts) < len(tb) + 1:
            fcounts.extend([0] * (len(tb) + 1 - len(fcounts)))
        has_sum = dp.HasField("sum")
        if s is None or s.bounds != tb or s.has_sum != has_sum:
            if s is not None and delta:
                stats.drop("histogram_bounds_changed")  # restart the accumulation with the new layout
            s = Series(fam, "histogram", m.description, unit_for_family(fam, m.unit), labels, ts,
                       dp.start_time_unix_nano // 1_000_000, bounds=tb, counts=fcounts,
                       sum=dp.sum, count=float(dp.count), has_sum=has_sum)
            self.series[key] = s
            self._remember(fk, s)
        elif not delta:
            s.counts = fcounts
            s.sum = dp.sum
            s.count = float(dp.count)
            s.ts_ms = ts
            s.start_ms = dp.start_time_unix_nano // 1_000_000
            s.exemplars.clear()
        else:
            s.counts = [a + b for a, b in zip(s.counts, fcounts, strict=False)]
            s.sum += dp.sum
            s.count += float(dp.count)
            s.ts_ms = max(ts, s.ts_ms)
        s.seen = now
        for e in dp.exemplars:
            ex = _exemplar(e)
            if ex is None:
                continue
            idx = len(tb)
            for i, b in enumerate(tb):
                if ex.value <= b:
                    idx = i
                    break
            s.exemplars[idx] = ex
        touched.append(s)

    def expire(self, now: float | None = None) -> int:
        """Drops series not updated for ``expiration`` seconds; returns how many."""
        if self.expiration <= 0:
            return 0
        now = time.monotonic() if now is None else now
        old = [k for k, s in self.series.items() if now - s.seen > self.expiration]
        for k in old:
            self.series.pop(k).dead = True
        return len(old)


class _Emitter(list[Series]):
    """A list whose append() hands the series to a callback (convert()'s emit)."""

    def __init__(self, fn: Callable[[Series], None]) -> None:
        super().__init__()
        self.fn = fn

    def append(self, s: Series) -> None:
        self.fn(s)


def _exemplar(e: Any) -> Exemplar | None:
    v = e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int)
    labels: dict[str, str] = {}
    if e.trace_id:
        labels["trace_id"] = bytes(e.trace_id).hex()
    if e.span_id:
        labels["span_id"] = bytes(e.span_id).hex()
    # OpenMetrics caps an exemplar's label set at 128 characters: add filtered attributes only if they fit.
    size = sum(len(k) + len(x) for k, x in labels.items())
    for k, x in attr_labels(e.filtered_attributes).items():
        if size + len(k) + len(x) > 128:
            break
        labels[k] = x
        size += len(k) + len(x)
    return Exemplar(v, e.time_unix_nano / 1e9, labels)


def exp_to_explicit(dp: Any) -> tuple[list[float], list[float]] | None:
    """An exponential histogram point as explicit buckets (upper bounds base^(i+1)); None when it
    has negative buckets, which explicit Prometheus buckets cannot show faithfully."""
    if any(dp.negative.bucket_counts):
        return None
    base = 2.0 ** (2.0 ** -dp.scale)
    off = dp.positive.offset
    bounds: list[float] = []
    counts: list[float] = [float(dp.zero_count)]
    # The zero bucket is reported below the first positive bucket's lower bound.
    bounds.append(base ** off)
    for i, c in enumerate(dp.positive.bucket_counts):
        bounds.append(base ** (off + i + 1))
        counts.append(float(c))
    counts.append(0.0)  # +Inf
    return bounds, counts
