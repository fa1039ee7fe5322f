"""CounterCarry: a receiver's counters continue across its processes; gauges pass unchanged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gotel.pdata.batch import Metrics
from gotel.service.supervisor import CounterCarry
from gotel.telemetry.selfmetrics import families_to_otlp, otlp_to_families


def snapshot(pid: int, accepted: float, sink_sent: float, sink_dropped: float, queued: float) -> Metrics:
    reg = CollectorRegistry()
    acc = Counter("gotel_receiver_accepted_items", "", ["component", "kind", "signal"], registry=reg)
    sent = Counter("gotel_exporter_sent_items", "", ["component", "kind", "signal"], registry=reg)
    drop = Counter("gotel_dropped_items", "", ["component", "kind", "signal", "reason"], registry=reg)
    g = Gauge("gotel_exporter_queue_size_bytes", "", ["component", "kind", "signal"], registry=reg)
    acc.labels("sched", "receiver", "logs").inc(accepted)
    sent.labels("otlp/sink", "exporter", "logs").inc(sink_sent)
    drop.labels("otlp/sink", "exporter", "logs", "queue_full").inc(sink_dropped)
    g.labels("otlp/sink", "exporter", "logs").set(queued)
    return families_to_otlp(reg.collect(), {"process.pid": pid})


def values(batch: Metrics) -> dict[str, float]:
    return {s.name: s.value for f in otlp_to_families(batch) for s in f.samples}


def test_totals_carry_over_to_the_next_process() -> None:
    c = CounterCarry()
    assert values(c.apply("sched", snapshot(11, 10, 8, 0, 5)))["gotel_receiver_accepted_items_total"] == 10
    v = values(c.apply("sched", snapshot(11, 30, 25, 1, 7)))
    assert v["gotel_receiver_accepted_items_total"] == 30 and v["gotel_exporter_sent_items_total"] == 25
    # a new process starts from zero; the pipeline continues from the old one's last totals
    v = values(c.apply("sched", snapshot(12, 4, 4, 0, 2)))
    assert v["gotel_receiver_accepted_items_total"] == 34
    assert v["gotel_exporter_sent_items_total"] == 29
    assert v["gotel_dropped_items_total"] == 1
    assert v["gotel_exporter_queue_size_bytes"] == 2  # a gauge is the present process's
    v = values(c.apply("sched", snapshot(13, 1, 1, 0, 0)))
    assert v["gotel_receiver_accepted_items_total"] == 35
    assert values(c.apply("other", snapshot(14, 3, 3, 0, 0)))["gotel_receiver_accepted_items_total"] == 3


def test_in_flight_is_accepted_less_dropped_less_received() -> None:
    c = CounterCarry()
    c.apply("sched", snapshot(11, 100, 60, 5, 0))
    assert c.in_flight("sched", {"logs": 60}) == {"logs": 35}
    assert c.in_flight("sched", {"logs": 95}) == {}
    assert c.in_flight("unknown", {"logs": 1}) == {}
