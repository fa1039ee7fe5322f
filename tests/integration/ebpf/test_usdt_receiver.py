"""The usdt receiver end to end: a fixture started after the receiver is found, its start/end probes
become spans whose count, durations and attributes match what the fixture logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Batch, Signal, attr_dict
from gotel.receivers.usdt import Config, factory
from gotel.telemetry.counters import Telemetry
from tests.integration.ebpf.conftest import TOOLCHAINS, gotel_uprobe_events


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


CFG = {
    "discovery": {"exe_paths": ["*/usdtapp-*"]},
    "spans": [{
        "name": "request", "start": "gotelfix:req_start", "end": "gotelfix:req_end", "match": "arg0",
        "kind": "server", "start_attributes": {"op": "arg1:str", "req.id": "arg0"},
        "end_attributes": {"status": "arg1"},
    }],
    "counters": [{"probe": "gotelfix:req_end", "name": "fixture.requests", "attributes": {"status": "arg1"}}],
    "histograms": [{"probe": "gotelfix:tick", "name": "fixture.tick.value", "value": "arg0:uint", "boundaries": [10, 100]}],
    "logs": [{"probe": "gotelfix:message", "body": "arg0:str", "severity": "WARN", "attributes": {"len": "arg1"}}],
    "flush_interval": 0.2,
    "export_interval": 0.5,
}


async def _until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
async def test_receiver_spans_metrics_logs(goapp: Callable[..., Any], toolchain: str) -> None:
    sinks = {s: Sink() for s in (Signal.TRACES, Signal.METRICS, Signal.LOGS)}
    tel = Telemetry()
    ctx = Context(ComponentID("usdt"), Kind.RECEIVER, logging.getLogger("usdt"), tel.component("usdt", Kind.RECEIVER))
    r = factory.create(Config.model_validate(CFG), sinks, ctx)
    await r.start()
    try:
        t0 = time.monotonic()
        app = await asyncio.to_thread(goapp, "usdtapp", toolchain=toolchain)
        await _until(lambda: app.pid in r.attached_pids, 5)
        found_after = time.monotonic() - t0
        fired: list[dict[str, Any]] = []
        for name, status, n, dur in (("checkout", 0, 40, 0), ("search", 5, 30, 2), ("login", 13, 5, 20)):
            fired += await asyncio.to_thread(app.get_json, f"/fire?probe=req&name={name}&status={status}&n={n}&dur_ms={dur}")
        ticks = await asyncio.to_thread(app.get_json, "/fire?probe=tick&n=50")
        msgs = await asyncio.to_thread(app.get_json, "/fire?probe=message&msg=disk%20full")

        def spans() -> list[Any]:
            return [s for b in sinks[Signal.TRACES].batches for rs in b.msg.resource_spans
                    for ss in rs.scope_spans for s in ss.spans]

        await _until(lambda: len(spans()) >= 75, 10)
        await asyncio.sleep(0.7)  # one more metrics export
        assert r.program.probe_count() == 4  # req_start, req_end, tick, message
        # the target exits: its probes come off without waiting for the receiver to stop
        await asyncio.to_thread(app.stop)
        await _until(lambda: r.program.probe_count() == 0 and app.pid not in r.attached_pids, 5)
    finally:
        await r.shutdown()

    got = spans()
    assert len(got) == 75
    starts = {e["args"]["id"]: e for e in fired if e["probe"] == "req_start"}
    ends = {e["args"]["id"]: e for e in fired if e["probe"] == "req_end"}
    offset = r.agg.offset  # wall clock minus CLOCK_MONOTONIC, as the receiver converts
    for s in got:
        a = attr_dict(s.attributes)
        rid = a["req.id"]
        st, en = starts[rid], ends[rid]
        assert a["op"] == st["args"]["name"]
        assert a["status"] == en["args"]["status"]
        assert s.kind == 2  # SERVER
        # the fixture reads CLOCK_MONOTONIC just before each probe; BPF reads it inside the probe
        assert 0 <= s.start_time_unix_nano - offset - st["ts_ns"] < 2_000_000
        want = en["ts_ns"] - st["ts_ns"]
        assert abs((s.end_time_unix_nano - s.start_time_unix_nano) - want) < 1_000_000
    slow = [s for s in got if attr_dict(s.attributes)["op"] == "login"]
    assert all(s.end_time_unix_nano - s.start_time_unix_nano >= 20_000_000 for s in slow)

    res = attr_dict(sinks[Signal.TRACES].batches[0].msg.resource_spans[0].resource.attributes)
    assert res["process.pid"] == app.pid
    assert res["service.name"] == res["process.executable.name"] == app.binary.name

    last = sinks[Signal.METRICS].batches[-1].msg.resource_metrics[0].scope_metrics[0].metrics
    m = {x.name: x for x in last}
    counts = {attr_dict(d.attributes)["status"]: d.as_int for d in m["fixture.requests"].sum.data_points}
    assert counts == {0: 40, 5: 30, 13: 5}
    h = m["fixture.tick.value"].histogram.data_points[0]
    values = [t["args"]["n"] for t in ticks]
    assert h.count == 50 and h.sum == sum(values)
    assert list(h.bucket_counts) == [sum(v <= 10 for v in values), sum(10 < v <= 100 for v in values), sum(v > 100 for v in values)]

    logs = [lr for b in sinks[Signal.LOGS].batches for rl in b.msg.resource_logs for sl in rl.scope_logs for lr in sl.log_records]
    assert [(lr.body.string_value, attr_dict(lr.attributes)["len"]) for lr in logs] == [("disk full", msgs[0]["args"]["len"])]
    assert found_after < 5
    assert gotel_uprobe_events() == []
