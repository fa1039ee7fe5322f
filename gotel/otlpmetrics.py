"""Builds OTLP metric batches by hand (DESIGN.md section 2: protobuf, no SDK objects on the data path).

Receivers that read counters from /proc or from kernel maps hold cumulative values; this helper
turns them into cumulative Sum / Gauge / Histogram data points grouped per resource.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.pdata import Logs, Metrics, attrs

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE

Attrs = Mapping[str, Any]


def _key(a: Attrs) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in a.items() if v is not None))


class MetricsBuilder:
    """One batch: resources (by attribute set) -> one scope -> metrics (by name) -> points."""

    def __init__(self, scope_name: str, scope_version: str = "") -> None:
        self.batch = Metrics()
        self._scope_name = scope_name
        self._scope_version = scope_version
        self._resources: dict[tuple[tuple[str, Any], ...], Any] = {}
        self._metrics: dict[tuple[int, str], Any] = {}
        self.now_ns = time.time_ns()

    def _scope(self, resource: Attrs) -> Any:
        k = _key(resource)
        sm = self._resources.get(k)
        if sm is None:
            rm = self.batch.msg.resource_metrics.add()
            rm.resource.attributes.extend(attrs(dict(resource)))
            sm = rm.scope_metrics.add()
            sm.scope.name = self._scope_name
            sm.scope.version = self._scope_version
            self._resources[k] = sm
        return sm

    def _metric(self, resource: Attrs, name: str, unit: str, desc: str, kind: str) -> Any:
        sm = self._scope(resource)
        k = (id(sm), name)
        m = self._metrics.get(k)
        if m is None:
            m = sm.metrics.add()
            m.name = name
            m.unit = unit
            m.description = desc
            if kind == "sum":
                m.sum.aggregation_temporality = CUMULATIVE
                m.sum.is_monotonic = True
            elif kind == "updown":
                m.sum.aggregation_temporality = CUMULATIVE
                m.sum.is_monotonic = False
            elif kind == "histogram":
                m.histogram.aggregation_temporality = CUMULATIVE
            else:
                m.gauge.SetInParent()
            self._metrics[k] = m
        return m

    def sum(
        self,
        resource: Attrs,
        name: str,
        value: float,
        *,
        unit: str,
        desc: str = "",
        attributes: Attrs | None = None,
        start_ns: int = 0,
        monotonic: bool = True,
    ) -> None:
        m = self._metric(resource, name, unit, desc, "sum" if monotonic else "updown")
        p = m.sum.data_points.add()
        self._fill(p, value, attributes, start_ns)

    def gauge(
        self, resource: Attrs, name: str, value: float, *, unit: str, desc: str = "", attributes: Attrs | None = None
    ) -> None:
        m = self._metric(resource, name, unit, desc, "gauge")
        p = m.gauge.data_points.add()
        self._fill(p, value, attributes, 0)

    def histogram(
        self,
        resource: Attrs,
        name: str,
        *,
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
        unit: str,
        desc: str = "",
        attributes: Attrs | None = None,
        start_ns: int = 0,
        min_: float | None = None,
        max_: float | None = None,
    ) -> None:
        """counts has len(bounds)+1 entries (the last is the overflow bucket), as OTLP wants."""
        if len(counts) != len(bounds) + 1:
            raise ValueError("histogram needs len(bounds)+1 bucket counts")
        m = self._metric(resource, name, unit, desc, "histogram")
        p = m.histogram.data_points.add()
        p.time_unix_nano = self.now_ns
        p.start_time_unix_nano = start_ns
        p.count = int(sum(counts))
        p.sum = float(total)
        p.explicit_bounds.extend(bounds)
        p.bucket_counts.extend(int(c) for c in counts)
        if min_ is not None:
            p.min = min_
        if max_ is not None:
            p.max = max_
        if attributes:
            p.attributes.extend(attrs(dict(attributes)))

    def _fill(self, p: Any, value: float, attributes: Attrs | None, start_ns: int) -> None:
        p.time_unix_nano = self.now_ns
        if start_ns:
            p.start_time_unix_nano = start_ns
        if isinstance(value, int):
            p.as_int = value
        else:
            p.as_double = float(value)
        if attributes:
            p.attributes.extend(attrs(dict(attributes)))

    def result(self) -> Metrics:
        return self.batch


class LogsBuilder:
    """One batch of log records grouped per resource."""

    def __init__(self, scope_name: str) -> None:
        self.batch = Logs()
        self._scope_name = scope_name
        self._resources: dict[tuple[tuple[str, Any], ...], Any] = {}

    def add(
        self,
        resource: Attrs,
        *,
        time_ns: int,
        body: str,
        attributes: Attrs,
        severity_text: str = "INFO",
        severity_number: int = 9,
        event_name: str = "",
    ) -> Any:
        k = _key(resource)
        sl = self._resources.get(k)
        if sl is None:
            rl = self.batch.msg.resource_logs.add()
            rl.resource.attributes.extend(attrs(dict(resource)))
            sl = rl.scope_logs.add()
            sl.scope.name = self._scope_name
            self._resources[k] = sl
        r = sl.log_records.add()
        r.time_unix_nano = time_ns
        r.observed_time_unix_nano = time.time_ns()
        r.severity_text = severity_text
        r.severity_number = severity_number  # type: ignore[assignment]
        r.body.string_value = body
        if event_name and hasattr(r, "event_name"):
            r.event_name = event_name
        r.attributes.extend(attrs(dict(attributes)))
        return r

    def result(self) -> Logs:
        return self.batch


def log2_bounds_seconds(slots: int) -> list[float]:
    """Upper bounds (seconds) for BPF log2 slots of nanoseconds: slot k holds [2^k, 2^(k+1)) ns."""
    return [(2 ** (k + 1)) / 1e9 for k in range(slots)]
