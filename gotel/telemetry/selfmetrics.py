"""gotel's own metrics as OTLP, and back.

Receiver processes ship their prometheus registry to the pipeline process as OTLP metrics (a
request marked with the ``gotel-telemetry`` header); the pipeline process merges those samples
into its own families for the Prometheus endpoint (series of a receiver process's internal
components carry a `receiver` label, so each series appears once), and converts the merged view to OTLP when
self-telemetry is fed into a metrics pipeline. Counters become monotonic cumulative sums, gauges
gauges; label names become attribute keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.samples import Sample

from gotel import __version__
from gotel.pdata.batch import Metrics, attr_dict, attrs, kv

TELEMETRY_HEADER = "gotel-telemetry"
_SCOPE = InstrumentationScope(name="gotel", version=__version__)
_START_NS = time.time_ns()


def families_to_otlp(families: Iterable[PromMetric], resource: dict[str, Any]) -> Metrics:
    """Counters and gauges of a registry -> one OTLP metrics request."""
    now = time.time_ns()
    out: list[Metric] = []
    for fam in families:
        if fam.type == "counter":
            m = Metric(name=fam.name, description=fam.documentation,
                       sum=Sum(aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                               is_monotonic=True))
            points = m.sum.data_points
            want = fam.name + "_total"
        elif fam.type == "gauge":
            m = Metric(name=fam.name, description=fam.documentation, gauge=Gauge())
            points = m.gauge.data_points
            want = fam.name
        else:
            continue
        for s in fam.samples:
            if s.name != want:
                continue
            points.append(NumberDataPoint(start_time_unix_nano=_START_NS if fam.type == "counter" else 0,
                                          time_unix_nano=now, as_double=float(s.value), attributes=attrs(s.labels)))
        if len(points):
            out.append(m)
    b = Metrics()
    b.msg.resource_metrics.append(
        ResourceMetrics(resource=Resource(attributes=[kv(k, v) for k, v in resource.items()]),
                        scope_metrics=[ScopeMetrics(scope=_SCOPE, metrics=out)])
    )
    return b


def otlp_to_families(batch: Metrics) -> list[PromMetric]:
    """The inverse of families_to_otlp (sums -> counters, gauges -> gauges)."""
    fams: list[PromMetric] = []
    for rm in batch.peek().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind == "sum" and m.sum.is_monotonic:
                    fam = PromMetric(m.name, m.description, "counter")
                    suffix = "_total"
                elif kind in ("gauge", "sum"):
                    fam = PromMetric(m.name, m.description, "gauge")
                    suffix = ""
                else:
                    continue
                for dp in getattr(m, kind).data_points:
                    labels = {k: str(v) for k, v in attr_dict(dp.attributes).items()}
                    value = dp.as_double if dp.HasField("as_double") else float(dp.as_int)
                    fam.samples.append(Sample(m.name + suffix, labels, value, None, None))
                fams.append(fam)
    return fams


class MergedRegistry:
    """The process registry plus the latest snapshot from each receiver process, merged by family
    name (two families of one name would make the exposition invalid)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._snapshots: dict[str, list[PromMetric]] = {}
        self._lock = threading.Lock()

    def update(self, source: str, batch: Metrics) -> None:
        fams = otlp_to_families(batch)
        for fam in fams:
            # Every receiver process has internal components of the same ids (otlp/sink,
            # otlp/telemetry): their series get the receiver's id in a `receiver` label, or the
            # endpoint would repeat one series per receiver process with different values.
            fam.samples = [smp if smp.labels.get("component", source) == source
                           else smp._replace(labels={**smp.labels, "receiver": source}) for smp in fam.samples]
        with self._lock:
            self._snapshots[source] = fams

    def forget(self, source: str) -> None:
        with self._lock:
            self._snapshots.pop(source, None)

    def collect(self) -> Iterator[PromMetric]:
        merged: dict[str, PromMetric] = {}
        order: list[str] = []
        for fam in self.registry.collect():
            merged[fam.name] = fam
            order.append(fam.name)
        with self._lock:
            snaps = [f for fams in self._snapshots.values() for f in fams]
        for fam in snaps:
            have = merged.get(fam.name)
            if have is None:
                merged[fam.name] = PromMetric(fam.name, fam.documentation, fam.type)
                merged[fam.name].samples.extend(fam.samples)
                order.append(fam.name)
            elif have.type == fam.type:
                copy = PromMetric(have.name, have.documentation, have.type)
                copy.samples.extend(have.samples)
                copy.samples.extend(fam.samples)
                merged[fam.name] = copy
        for name in order:
            yield _unique(merged[name])


def _unique(fam: PromMetric) -> PromMetric:
    """The family with each series once (the first wins): a repeated series makes the exposition
    invalid and Prometheus keeps an arbitrary one of its values."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    keep = []
    for smp in fam.samples:
        key = (smp.name, tuple(sorted(smp.labels.items())))
        if key not in seen:
            seen.add(key)
            keep.append(smp)
    if len(keep) == len(fam.samples):
        return fam
    out = PromMetric(fam.name, fam.documentation, fam.type)
    out.samples.extend(keep)
    return out
