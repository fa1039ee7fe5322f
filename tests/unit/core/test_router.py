"""The internal entry point routes by the gotel-receiver metadata; child telemetry is merged, not piped."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from gotel.component.contract import REQUEST_METADATA, Kind, PermanentError
from gotel.pdata.batch import Batch, Metrics, Signal, Traces
from gotel.service.router import Router
from gotel.telemetry.counters import Telemetry
from gotel.telemetry.selfmetrics import MergedRegistry, families_to_otlp


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


async def test_routes_by_receiver_id() -> None:
    a, b = Sink(), Sink()
    r = Router(Signal.TRACES, {"pprof": a, "go_ebpf/http": b})
    batch = Traces()
    tok = REQUEST_METADATA.set({"gotel-receiver": "go_ebpf/http"})
    try:
        await r.consume(batch)
    finally:
        REQUEST_METADATA.reset(tok)
    assert b.got == [batch] and a.got == []
    tok = REQUEST_METADATA.set({"gotel-receiver": "nope"})
    try:
        with pytest.raises(PermanentError, match="no traces pipeline takes data from receiver 'nope'"):
            await r.consume(batch)
    finally:
        REQUEST_METADATA.reset(tok)


async def test_child_telemetry_is_merged_into_the_endpoint() -> None:
    parent = Telemetry()
    parent.component("otlp/_internal", Kind.RECEIVER).accepted("traces", 5)
    child = Telemetry()
    child.component("synthetic", Kind.RECEIVER).accepted("traces", 7)
    child.component("synthetic", Kind.RECEIVER).set_up(True)
    merged = MergedRegistry(parent.registry)
    pipeline = Sink()
    r = Router(Signal.METRICS, {"synthetic": pipeline}, merged.update)
    tok = REQUEST_METADATA.set({"gotel-receiver": "synthetic", "gotel-telemetry": "1"})
    try:
        await r.consume(families_to_otlp(MergedRegistry(child.registry).collect(), {"service.name": "gotel"}))
    finally:
        REQUEST_METADATA.reset(tok)
    assert pipeline.got == []  # not data: it never enters a pipeline
    text = generate_latest(merged).decode()  # type: ignore[arg-type]
    assert text.count("# TYPE gotel_receiver_accepted_items_total counter") == 1
    assert 'gotel_receiver_accepted_items_total{component="otlp/_internal",kind="receiver",signal="traces"} 5.0' in text
    assert 'gotel_receiver_accepted_items_total{component="synthetic",kind="receiver",signal="traces"} 7.0' in text
    assert 'gotel_receiver_up{component="synthetic",kind="receiver"} 1.0' in text
    # a newer snapshot replaces the old one
    child.component("synthetic", Kind.RECEIVER).accepted("traces", 3)
    merged.update("synthetic", families_to_otlp(MergedRegistry(child.registry).collect(), {}))  # type: ignore[arg-type]
    assert 'signal="traces"} 10.0' in generate_latest(merged).decode()  # type: ignore[arg-type]
    assert isinstance(families_to_otlp([], {}), Metrics)
