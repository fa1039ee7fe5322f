"""Small builders for OTLP metrics and logs made by receivers that are not eBPF-driven (pprof,
go_metrics, schedtrace): one ResourceMetrics / ResourceLogs per resource, points appended as found."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.pdata import Logs, Metrics, attrs

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


def _rkey(resource: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in resource.items()))


class MetricsBuilder:
    def __init__(self, scope_name: str, scope_version: str = "") -> None:
        self.req = ExportMetricsServiceRequest()
        self.scope_name = scope_name
        self.scope_version = scope_version
        self._scopes: dict[tuple[tuple[str, str], ...], Any] = {}
        self._metrics: dict[tuple[Any, str], Any] = {}

    def _scope(self, resource: Mapping[str, Any]) -> Any:
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

    def _metric(self, resource: Mapping[str, Any], name: str, unit: str, desc: str) -> Any:
        sm = self._scope(resource)
        k = (id(sm), name)
        m = self._metrics.get(k)
        if m is None:
            m = sm.metrics.add()
            m.name, m.unit, m.description = name, unit, desc
            self._metrics[k] = m
        return m

    def gauge(self, resource: Mapping[str, Any], name: str, value: float, unit: str = "", desc: str = "",
              attributes: Mapping[str, Any] | None = None, ts: int | None = None) -> None:
        m = self._metric(resource, name, unit, desc)
        dp = m.gauge.data_points.add()
        _set(dp, value)
        dp.time_unix_nano = ts or time.time_ns()
        if attributes:
            dp.attributes.extend(attrs(dict(attributes)))

    def sum(self, resource: Mapping[str, Any], name: str, value: float, unit: str = "", desc: str = "",
            attributes: Mapping[str, Any] | None = None, *, monotonic: bool = True, temporality: int = CUMULATIVE,
            start: int = 0, ts: int | None = None) -> None:
        m = self._metric(resource, name, unit, desc)
        m.sum.is_monotonic = monotonic
        m.sum.aggregation_temporality = temporality
        dp = m.sum.data_points.add()
        _set(dp, value)
        dp.start_time_unix_nano = start
        dp.time_unix_nano = ts or time.time_ns()
        if attributes:
            dp.attributes.extend(attrs(dict(attributes)))

    def histogram(self, resource: Mapping[str, Any], name: str, bounds: Sequence[float], counts: Sequence[int],
                  total: float, unit: str = "", desc: str = "", attributes: Mapping[str, Any] | None = None, *,
                  temporality: int = CUMULATIVE, start: int = 0, ts: int | None = None,
                  minimum: float | None = None, maximum: float | None = None) -> None:
        m = self._metric(resource, name, unit, desc)
        m.histogram.aggregation_temporality = temporality
        dp = m.histogram.data_points.add()
        dp.explicit_bounds.extend(bounds)
        dp.bucket_counts.extend(counts)
        dp.count = sum(counts)
        dp.sum = total
        if minimum is not None:
            dp.min = minimum
        if maximum is not None:
            dp.max = maximum
        dp.start_time_unix_nano = start
        dp.time_unix_nano = ts or time.time_ns()
        if attributes:
            dp.attributes.extend(attrs(dict(attributes)))

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
    def __init__(self, scope_name: str, scope_version: str = "") -> None:
        self.req = ExportLogsServiceRequest()
        self.scope_name = scope_name
        self.scope_version = scope_version
        self._scopes: dict[tuple[tuple[str, str], ...], Any] = {}

    def add(self, resource: Mapping[str, Any], body: str, *, severity: str = "INFO", event_name: str = "",
            attributes: Mapping[str, Any] | None = None, ts: int | None = None) -> Any:
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
        rec.time_unix_nano = ts or now
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
