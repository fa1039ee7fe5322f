"""Builders for OTLP metric batches used by the Prometheus exporter tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2 as mpb

from gotel.pdata.batch import Metrics, attrs

DELTA = mpb.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = mpb.AGGREGATION_TEMPORALITY_CUMULATIVE


def batch(resource: dict[str, Any], metrics: Sequence[mpb.Metric], scope: str = "gotel.test", version: str = "1.0") -> Metrics:
    b = Metrics()
    rm = b.msg.resource_metrics.add()
    rm.resource.attributes.extend(attrs(resource))
    sm = rm.scope_metrics.add()
    sm.scope.name = scope
    sm.scope.version = version
    sm.metrics.extend(metrics)
    return b


def counter(name: str, unit: str, points: Sequence[tuple[dict[str, Any], float]], t_ns: int, start_ns: int,
            temporality: int = CUMULATIVE, monotonic: bool = True, desc: str = "") -> mpb.Metric:
    m = mpb.Metric(name=name, unit=unit, description=desc)
    m.sum.aggregation_temporality = temporality
    m.sum.is_monotonic = monotonic
    for a, v in points:
        dp = m.sum.data_points.add(time_unix_nano=t_ns, start_time_unix_nano=start_ns)
        if isinstance(v, int):
            dp.as_int = v
        else:
            dp.as_double = v
        dp.attributes.extend(attrs(a))
    return m


def gauge(name: str, unit: str, points: Sequence[tuple[dict[str, Any], float]], t_ns: int, desc: str = "") -> mpb.Metric:
    m = mpb.Metric(name=name, unit=unit, description=desc)
    for a, v in points:
        dp = m.gauge.data_points.add(time_unix_nano=t_ns)
        dp.as_double = float(v)
        dp.attributes.extend(attrs(a))
    return m


def histogram(name: str, unit: str, bounds: Sequence[float], points: Sequence[tuple[dict[str, Any], Sequence[int], float]],
              t_ns: int, start_ns: int, temporality: int = CUMULATIVE, desc: str = "",
              exemplar: tuple[float, bytes, bytes] | None = None) -> mpb.Metric:
    m = mpb.Metric(name=name, unit=unit, description=desc)
    m.histogram.aggregation_temporality = temporality
    for a, counts, total in points:
        dp = m.histogram.data_points.add(time_unix_nano=t_ns, start_time_unix_nano=start_ns)
        dp.explicit_bounds.extend(bounds)
        dp.bucket_counts.extend(counts)
        dp.count = sum(counts)
        dp.sum = total
        dp.attributes.extend(attrs(a))
        if exemplar is not None:
            v, tid, sid = exemplar
            dp.exemplars.add(as_double=v, trace_id=tid, span_id=sid, time_unix_nano=t_ns)
    return m
