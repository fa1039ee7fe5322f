"""`service::telemetry::metrics::readers` on the OpenTelemetry SDK.

gotel's self-metrics live in prometheus_client registries (the pipeline process's, merged with the
snapshots its receiver processes ship; see gotel.telemetry.selfmetrics). This module observes that merged view
through SDK observable instruments of the same names (counters stay counters, gauges gauges), so the
SDK's readers do the rest: a `pull` reader is the SDK's Prometheus reader served on its own host:port,
a `periodic` reader the SDK's periodic reader with its OTLP (gRPC or HTTP) or console exporter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as PromMetric

from gotel import __version__
from gotel.config.telemetry import MetricReader as ReaderConfig
from gotel.config.telemetry import OTLPPushExporter, PeriodicExporter, PrometheusPullExporter
from gotel.telemetry.sdk.level import safe_endpoint
from gotel.telemetry.sdk.otlpexport import otlp_exporter

log = logging.getLogger("gotel.telemetry.counters")

Source = Callable[[], Iterable[PromMetric]]


class _Bridge:
    """SDK observable instruments over the merged prometheus_client view, made as families appear."""

    def __init__(self, source: Source, meter: Any) -> None:
        self.source = source
        self.meter = meter
        self._made: set[str] = set()
        self._snapshot: dict[str, PromMetric] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """One snapshot per collection; instruments for families not seen before."""
        snap = {fam.name: fam for fam in self.source() if fam.type in ("counter", "gauge")}
        with self._lock:
            self._snapshot = snap
            for name, fam in snap.items():
                if name in self._made:
                    continue
                self._made.add(name)
                make = self.meter.create_observable_counter if fam.type == "counter" else self.meter.create_observable_gauge
                make(name, callbacks=[self._callback(name)], description=fam.documentation)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_opts: CallbackOptions) -> Iterable[Observation]:
            fam = self._snapshot.get(name)
            if fam is None:
                return []
            want = name + "_total" if fam.type == "counter" else name
            return [Observation(s.value, dict(s.labels)) for s in fam.samples if s.name == want]
        return observe


R = TypeVar("R", bound=MetricReader)


def _refreshing(cls: type[R], bridge_ref: list[_Bridge]) -> type[R]:
    """A reader class whose every collection first refreshes the bridge's snapshot."""

    class Refreshing(cls):  # type: ignore[valid-type,misc]  # a class from a type variable: mypy cannot follow
        def collect(self, timeout_millis: float = 10_000) -> None:
            for b in bridge_ref:
                b.refresh()
            super().collect(timeout_millis=timeout_millis)

    Refreshing.__name__ = "Refreshing" + cls.__name__
    return Refreshing


def _temporality(pref: str) -> dict[type, AggregationTemporality]:
    delta, cumulative = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
    if pref == "delta":
        return {Counter: delta, ObservableCounter: delta, Histogram: delta, UpDownCounter: cumulative}
    if pref == "lowmemory":
        return {Counter: delta, Histogram: delta, ObservableCounter: cumulative, UpDownCounter: cumulative}
    return {}


def otlp_metric_exporter(c: OTLPPushExporter) -> MetricExporter:
    """The SDK's OTLP metric exporter for a periodic reader's `otlp:` block."""
    exporter: MetricExporter = otlp_exporter(c, "metrics", preferred_temporality=_temporality(c.temporality_preference) or None)
    return exporter


def push_exporter(e: PeriodicExporter) -> tuple[MetricExporter, str]:
    if e.otlp is not None:
        return otlp_metric_exporter(e.otlp), f"otlp {e.otlp.protocol} {safe_endpoint(e.otlp.endpoint)}"
    return ConsoleMetricExporter(), "console"


class PullEndpoint:
    """A pull reader's Prometheus registry and where it is served."""

    def __init__(self, cfg: PrometheusPullExporter, registry: CollectorRegistry) -> None:
        self.cfg = cfg
        self.registry = registry

    @property
    def address(self) -> str:
        host = self.cfg.host
        return f"[{host}]:{self.cfg.port}" if ":" in host else f"{host}:{self.cfg.port}"


class OwnMetrics:
    """The SDK MeterProvider with the configured readers over gotel's merged self-metrics."""

    def __init__(self, readers: list[ReaderConfig], source: Source, resource: dict[str, Any]) -> None:
        self.pull: list[PullEndpoint] = []
        self._bridges: list[_Bridge] = []
        sdk_readers: list[MetricReader] = []
        for r in readers:
            if r.pull is not None:
                from opentelemetry.exporter.prometheus import PrometheusMetricReader

                prom = r.pull.exporter.prometheus
                registry = CollectorRegistry(auto_describe=True)  # its own, not prometheus_client's global one
                reader = _refreshing(PrometheusMetricReader, self._bridges)(
                    scope_info_enabled=not prom.without_scope_info, registry=registry)
                self.pull.append(PullEndpoint(prom, registry))
                sdk_readers.append(reader)
            elif r.periodic is not None:
                exporter, what = push_exporter(r.periodic.exporter)
                sdk_readers.append(_refreshing(PeriodicExportingMetricReader, self._bridges)(
                    exporter, export_interval_millis=r.periodic.interval * 1000,
                    export_timeout_millis=r.periodic.timeout * 1000))
                log.info("self-metrics pushed every %.3gs to %s", r.periodic.interval, what)
        self.provider = MeterProvider(metric_readers=sdk_readers, resource=Resource.create(resource))
        meter = self.provider.get_meter("gotel", __version__)
        self._bridges.append(_Bridge(source, meter))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flushes the periodic readers (one last export) and stops them."""
        try:
            self.provider.shutdown(timeout_millis=timeout_s * 1000)
        except Exception as e:
            log.warning("self-metrics readers did not stop cleanly: %s", e)
