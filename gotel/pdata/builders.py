"""Builds OTLP metric and log batches by hand (DESIGN.md section 2: protobuf, no SDK objects on the data path).

The one builder every receiver uses, whether it scrapes an endpoint (pprof, go_metrics, schedtrace) or reads
counters from /proc or kernel maps (process, sched, net, go_runtime): one ResourceMetrics / ResourceLogs per
distinct resource, one scope each, one Metric per name, points appended as found.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.pdata.batch import Logs, Metrics, attrs

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE

Attrs = Mapping[str, Any]


def _rkey(resource: Attrs) -> tuple[tuple[str, str], ...]:
    # None values are dropped by attrs(), so resources that differ only by them are the same resource.
    return tuple(sorted((k, repr(v)) for k, v in resource.items() if v is not None))


class MetricsBuilder:
    """One batch: resources (by attribute set) -> one scope -> metrics (by name) -> points.

    With `time_ns` every point is stamped with that time (one collection, one timestamp); without it each
    point gets the time it was added, unless the call passes `ts`.
    """

    def __init__(self, scope_name: str, scope_version: str = "", *, time_ns: int | None = None) -> None:
        self.req = ExportMetricsServiceRequest()
        self.scope_name = scope_name
        self.scope_version = scope_version
        self.time_ns = time_ns
        self._scopes: dict[tuple[tuple[str, str], ...], Any] = {}
        self._metrics: dict[tuple[int, str], Any] = {}

    def _scope(self, resource: Attrs) -> Any:
        k = _rkey(resource)
        sm = self._scopes.get(k)
        if sm is None:
            rm = self.req.resource_metrics.add()
            rm.resource.attributes.extend(attrs(dict(resource)))
            sm = rm.scope_metrics.add()
            sm.scope.name = self.scope_name
            sm.scope.version = self.scope_version
            self._scopes[k] = sm
        return sm

    def _metric(self, resource: Attrs, name: str, unit: str, desc: str) -> Any:
        sm = self._scope(resource)
        k = (id(sm), name)
        m = self._metrics.get(k)
        if m is None:
            m = sm.metrics.add()
            m.name, m.unit, m.description = name, unit, desc
            self._metrics[k] = m
        return m

    def _stamp(self, dp: Any, attributes: Attrs | None, start: int, ts: int | None) -> None:
        dp.start_time_unix_nano = start
        if ts is None:
            ts = self.time_ns if self.time_ns is not None else time.time_ns()
        dp.time_unix_nano = ts
        if attributes:
            dp.attributes.extend(attrs(dict(attributes)))

    def gauge(self, resource: Attrs, name: str, value: float, unit: str = "", desc: str = "",
              attributes: Attrs | None = None, *, ts: int | None = None) -> None:
        dp = self._metric(resource, name, unit, desc).gauge.data_points.add()
        _set(dp, value)
        self._stamp(dp, attributes, 0, ts)

    def sum(self, resource: Attrs, name: str, value: float, unit: str = "", desc: str = "",
            attributes: Attrs | None = None, *, monotonic: bool = True, temporality: int = CUMULATIVE,
            start: int = 0, ts: int | None = None) -> None:
        m = self._metric(resource, name, unit, desc)
        m.sum.is_monotonic = monotonic
        m.sum.aggregation_temporality = temporality
        dp = m.sum.data_points.add()
        _set(dp, value)
        self._stamp(dp, attributes, start, ts)

    def histogram(self, resource: Attrs, name: str, bounds: Sequence[float], counts: Sequence[int],
                  total: float, unit: str = "", desc: str = "", attributes: Attrs | None = None, *,
                  temporality: int = CUMULATIVE, start: int = 0, ts: int | None = None,
                  minimum: float | None = None, maximum: float | None = None) -> None:
        """counts has len(bounds)+1 entries (the last is the overflow bucket), as OTLP wants."""
        if len(counts) != len(bounds) + 1:
            raise ValueError(f"histogram {name} needs len(bounds)+1 bucket counts, got {len(counts)} "
                             f"for {len(bounds)} bounds")
        m = self._metric(resource, name, unit, desc)
        m.histogram.aggregation_temporality = temporality
        dp = m.histogram.data_points.add()
        dp.explicit_bounds.extend(bounds)
        dp.bucket_counts.extend(int(c) for c in counts)
        dp.count = int(sum(counts))
        dp.sum = float(total)
        if minimum is not None:
            dp.min = minimum
        if maximum is not None:
            dp.max = maximum
        self._stamp(dp, attributes, start, ts)

    def batch(self) -> Metrics:
        return Metrics(self.req)

    def empty(self) -> bool:
        return not self.req.resource_metrics


def _set(dp: Any, value: float) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        dp.as_int = value
    else:
        dp.as_double = float(value)


SEVERITY = {
    "DEBUG": logs_pb2.SEVERITY_NUMBER_DEBUG,
    "INFO": logs_pb2.SEVERITY_NUMBER_INFO,
    "WARN": logs_pb2.SEVERITY_NUMBER_WARN,
    "ERROR": logs_pb2.SEVERITY_NUMBER_ERROR,
}


class LogsBuilder:
    """One batch of log records grouped per resource."""

    def __init__(self, scope_name: str, scope_version: str = "") -> None:
        self.req = ExportLogsServiceRequest()
        self.scope_name = scope_name
        self.scope_version = scope_version
        self._scopes: dict[tuple[tuple[str, str], ...], Any] = {}

    def add(self, resource: Attrs, body: str, *, severity: str = "INFO", event_name: str = "",
            attributes: Attrs | None = None, ts: int | None = None) -> Any:
        """`ts` is when it happened (now when None); observed time is always now."""
        k = _rkey(resource)
        sl = self._scopes.get(k)
        if sl is None:
            rl = self.req.resource_logs.add()
            rl.resource.attributes.extend(attrs(dict(resource)))
            sl = rl.scope_logs.add()
            sl.scope.name = self.scope_name
            sl.scope.version = self.scope_version
            self._scopes[k] = sl
        rec = sl.log_records.add()
        now = time.time_ns()
        rec.time_unix_nano = now if ts is None else ts
        rec.observed_time_unix_nano = now
        rec.severity_text = severity
        rec.severity_number = SEVERITY.get(severity, logs_pb2.SEVERITY_NUMBER_INFO)
        rec.body.string_value = body
        if event_name:
            rec.event_name = event_name
        if attributes:
            rec.attributes.extend(attrs(dict(attributes)))
        return rec

    def batch(self) -> Logs:
        return Logs(self.req)

    def empty(self) -> bool:
        return not self.req.resource_logs


def log2_bounds_seconds(slots: int) -> list[float]:
    """Upper bounds (seconds) for BPF log2 slots of nanoseconds: slot k holds [2^k, 2^(k+1)) ns."""
    return [(2 ** (k + 1)) / 1e9 for k in range(slots)]
