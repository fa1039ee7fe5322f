"""usdt receiver throughput: how many probe firings per second become spans without loss.

The usdtapp fixture fires N request start/end pairs as fast as it can (one HTTP call); measured
untraced first (baseline: the cost of firing), then traced by the usdt receiver with and without a
string argument (records of ~330 vs ~80 bytes). Prints firing time, the ratio to the baseline (the
probes' cost in the target), spans received and events lost. Run as root:
    .venv/bin/python bench/usdt/run.py [--pairs 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Batch, Signal
from gotel.receivers.usdt import Config, factory
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps


class CountingSink:
    mutates = False

    def __init__(self) -> None:
        self.items = 0

    async def consume(self, batch: Batch) -> None:
        self.items += batch.item_count()


async def traced(app: Any, pairs: int, with_string: bool) -> tuple[float, int, float, float]:
    span: dict[str, Any] = {"name": "req", "start": "gotelfix:req_start", "end": "gotelfix:req_end"}
    if with_string:
        span["start_attributes"] = {"op": "arg1:str"}
    cfg = Config(discovery={"pids": [app.pid], "go_only": False}, spans=[span], flush_interval=0.2)
    sink = CountingSink()
    tel = Telemetry()
    ctx = Context(ComponentID("usdt"), Kind.RECEIVER, logging.getLogger("usdt"), tel.component("usdt", Kind.RECEIVER))
    r: Any = factory.create(cfg, {Signal.TRACES: sink}, ctx)
    await r.start()
    try:
        while app.pid not in r.attached_pids:
            await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        await asyncio.to_thread(app.get_json, f"/fire?probe=req&n={pairs}", timeout=600)
        fire = time.perf_counter() - t0
        lost, last, done = 0.0, (-1, -1.0), time.perf_counter()
        for _ in range(400):  # until nothing changes for 0.5 s: every span arrived or was counted lost
            await asyncio.sleep(0.05)
            lost = tel.registry.get_sample_value(
                "gotel_ebpf_lost_events_total",
                {"component": "usdt", "kind": "receiver", "program": "usdt", "reason": "ringbuf_full"}) or 0.0
            if (sink.items, lost) != last:
                last, done = (sink.items, lost), time.perf_counter()
            elif time.perf_counter() - done > 0.5:
                break
        done -= t0
    finally:
        await r.shutdown()
    return fire, sink.items, lost, done


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=20000)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (BPF)", file=sys.stderr)
        return 2
    app = goapps.start("usdtapp", "-quiet")
    try:
        await asyncio.to_thread(app.get_json, "/fire?probe=req&n=1000")  # warm up
        t0 = time.perf_counter()
        await asyncio.to_thread(app.get_json, f"/fire?probe=req&n={a.pairs}", timeout=600)
        base = time.perf_counter() - t0
        print(f"{a.pairs} start/end pairs ({2 * a.pairs} probe firings) per run")
        print(f"{'case':34} {'fire s':>8} {'x base':>7} {'firings/s':>10} {'spans':>7} {'lost ev':>8} {'all in s':>9}")
        print(f"{'untraced (baseline)':34} {base:8.3f} {1.0:7.2f} {2 * a.pairs / base:10.0f} {'-':>7} {'-':>8} {'-':>9}")
        for label, ws in (("traced, integer args (80 B rec)", False), ("traced, + string arg (330 B rec)", True)):
            fire, spans, lost, done = await traced(app, a.pairs, ws)
            print(f"{label:34} {fire:8.3f} {fire / base:7.2f} {2 * a.pairs / fire:10.0f} {spans:7d} {lost:8.0f} {done:9.2f}")
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
