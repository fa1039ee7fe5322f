"""Self-telemetry: what every component received, sent, refused, dropped (and why), retried, queued.

One prometheus_client registry per OS process. The pipeline process serves it on a Prometheus
endpoint (127.0.0.1 by default) and can feed it into a metrics pipeline; receiver processes ship
their registry's samples to the pipeline process, which re-exposes them (see gotel.service.supervisor).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics import MetricWrapperBase

from gotel.component.ids import ComponentID, Kind

_LOCK = threading.RLock()  # default_telemetry() holds it while Telemetry() registers families


class Telemetry:
    """Process-wide metric families; components get a ComponentTelemetry bound to their id."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._families: dict[str, MetricWrapperBase] = {}
        c = self._family
        self.accepted = c(Counter, "receiver_accepted_items", "Items a receiver pushed into the pipeline.", ["signal"])
        self.refused = c(Counter, "receiver_refused_items", "Items a receiver could not push (refused downstream).", ["signal"])
        self.proc_in = c(Counter, "processor_incoming_items", "Items entering a processor.", ["signal"])
        self.proc_out = c(Counter, "processor_outgoing_items", "Items leaving a processor.", ["signal"])
        self.sent = c(Counter, "exporter_sent_items", "Items an exporter delivered.", ["signal"])
        self.send_failed = c(Counter, "exporter_send_failed_items", "Items an exporter failed to deliver.", ["signal"])
        self.dropped = c(Counter, "dropped_items", "Items dropped, with the reason.", ["signal", "reason"])
        self.retries = c(Counter, "exporter_retries", "Send attempts that were retried.", ["signal"])
        self.queue_size = c(Gauge, "exporter_queue_size_bytes", "Bytes waiting in an exporter's sending queue.", ["signal"])
        self.queue_capacity = c(Gauge, "exporter_queue_capacity_bytes", "Capacity of an exporter's sending queue.", ["signal"])
        self.restarts = c(Counter, "receiver_restarts", "Times the supervisor restarted a receiver process.", [])
        self.up = c(Gauge, "receiver_up", "1 while a receiver process runs, 0 while it is down or backing off.", [])
        self.core = frozenset(self._families)  # what service::telemetry::metrics::level basic shows

    def _family(self, cls: type[MetricWrapperBase], name: str, doc: str, labels: list[str]) -> Any:
        full = "gotel_" + name
        with _LOCK:
            fam = self._families.get(full)
            if fam is None:
                fam = cls(full, doc, ["component", "kind", *labels], registry=self.registry)
                self._families[full] = fam
            return fam

    def component(self, cid: ComponentID | str, kind: Kind) -> ComponentTelemetry:
        return ComponentTelemetry(self, str(cid), kind)


class ComponentTelemetry:
    """Counters bound to one component."""

    def __init__(self, t: Telemetry, cid: str, kind: Kind) -> None:
        self.t = t
        self.cid = cid
        self.kind = str(kind)

    def _l(self, fam: Any, *labels: str) -> Any:
        return fam.labels(self.cid, self.kind, *labels)

    def accepted(self, signal: str, n: int) -> None:
        self._l(self.t.accepted, str(signal)).inc(n)

    def refused(self, signal: str, n: int) -> None:
        self._l(self.t.refused, str(signal)).inc(n)

    def processed(self, signal: str, n_in: int, n_out: int) -> None:
        self._l(self.t.proc_in, str(signal)).inc(n_in)
        self._l(self.t.proc_out, str(signal)).inc(n_out)

    def sent(self, signal: str, n: int) -> None:
        self._l(self.t.sent, str(signal)).inc(n)

    def send_failed(self, signal: str, n: int) -> None:
        self._l(self.t.send_failed, str(signal)).inc(n)

    def dropped(self, signal: str, n: int, reason: str) -> None:
        self._l(self.t.dropped, str(signal), reason).inc(n)

    def retry(self, signal: str) -> None:
        self._l(self.t.retries, str(signal)).inc()

    def queue(self, signal: str, size: int, capacity: int) -> None:
        self._l(self.t.queue_size, str(signal)).set(size)
        self._l(self.t.queue_capacity, str(signal)).set(capacity)

    def restarted(self) -> None:
        self._l(self.t.restarts).inc()

    def set_up(self, up: bool) -> None:
        self._l(self.t.up).set(1 if up else 0)

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        """A component-specific counter (e.g. ring-buffer losses): gotel_<name>_total{component,...}."""
        fam = self.t._family(Counter, name, doc, list(labels))
        return _Bound(fam, (self.cid, self.kind))

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        fam = self.t._family(Gauge, name, doc, list(labels))
        return _Bound(fam, (self.cid, self.kind))


class _Bound:
    """A metric family with the component labels filled in: .labels(*rest) or .inc()/.set() directly."""

    def __init__(self, fam: Any, head: tuple[str, str]) -> None:
        self.fam = fam
        self.head = head

    def labels(self, *rest: str) -> Any:
        return self.fam.labels(*self.head, *rest)

    def inc(self, n: float = 1) -> None:
        self.fam.labels(*self.head).inc(n)

    def set(self, v: float) -> None:
        self.fam.labels(*self.head).set(v)


_DEFAULT: Telemetry | None = None


def default_telemetry() -> Telemetry:
    """The process's Telemetry; created on first use."""
    global _DEFAULT
    with _LOCK:
        if _DEFAULT is None:
            _DEFAULT = Telemetry()
        return _DEFAULT
