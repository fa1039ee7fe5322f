"""Benchmark: spans/s through the span_metrics connector on one core, as a ratio to a pass-through
pipeline measured in the same run, and its memory at 100,000 distinct series.

Each step gets a 1000-span request as wire bytes (50 span names, one resource), as the pipeline gets it
from a receiver: the pass-through parses and re-encodes it (what any component that looks inside a
batch pays, as in bench/processors/_attributes.py); span_metrics parses it and counts every span
(its metrics go to a sink that drops them). CPU time of this process, pinned to one core. Memory is
the growth of the Python heap (tracemalloc) after 100,000 spans of distinct names, with the default
histogram (17 buckets per series).

    .venv/bin/python bench/processors/_span_metrics.py [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import struct
import time
import tracemalloc
from typing import Any

from gotel.component.contract import ComponentID, Context, Kind
from gotel.connectors import span_metrics as sm
from gotel.pdata.batch import Batch, Signal, Traces, attrs
from gotel.telemetry.counters import Telemetry

GOAL = 200_000  # spans/s per core (issue 17)


class Drop:
    mutates = False

    async def consume(self, batch: Batch) -> None:
        return None


def ctx(name: str) -> Context:
    return Context(ComponentID(name), Kind.CONNECTOR, logging.getLogger(name),
                   Telemetry().component(name, Kind.CONNECTOR), Signal.TRACES)


def batch(n: int, names: int, offset: int = 0) -> Traces:
    b = Traces()
    rs = b.msg.resource_spans.add()
    rs.resource.attributes.extend(attrs({"service.name": "checkout", "host.name": "bench"}))
    ss = rs.scope_spans.add()
    for i in range(n):
        s = ss.spans.add()
        s.trace_id, s.span_id = struct.pack(">QQ", 1, i + 1), struct.pack(">Q", i + 1)
        s.name, s.kind = f"GET /item/{(offset + i) % names}", 2
        s.start_time_unix_nano = 1_700_000_000_000_000_000
        s.end_time_unix_nano = s.start_time_unix_nano + (i % 1000) * 97_000
        s.attributes.extend(attrs({"http.request.method": "GET", "http.response.status_code": 200}))
    b.peek()
    return b


async def rate(step: Any, raw: bytes, seconds: float) -> float:
    """Spans per CPU-second through `step`, fed `raw` again and again."""
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        await step(Traces.from_bytes(raw))
        n += 1000
    return n / (time.process_time() - t0)


async def decode_encode(b: Batch) -> None:
    b.peek()
    b.to_bytes()


async def main(seconds: float) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    raw = batch(1000, 50).to_bytes()
    base = await rate(decode_encode, raw, seconds)
    print(f"pass-through (decode+encode): {base:,.0f} spans/s")
    cases = {
        "span_metrics defaults": {},
        "span_metrics + 1 dimension": {"dimensions": [{"name": "http.request.method"}]},
        "span_metrics exponential": {"histogram": {"exponential": {"max_size": 160}}},
        "span_metrics + exemplars": {"exemplars": {"enabled": True, "max_per_data_point": 5}},
    }
    for name, conf in cases.items():
        c = sm.SpanMetrics(sm.Config.model_validate(conf), Drop(), ctx("span_metrics"))
        r = await rate(c.consume, raw, seconds)
        print(f"{name}: {r:,.0f} spans/s = {r / base:.2f}x pass-through; goal {GOAL:,}/s per core: "
              f"{'met' if r >= GOAL else 'NOT met'}")
    c = sm.SpanMetrics(sm.Config.model_validate({}), Drop(), ctx("span_metrics"))
    batches = [batch(1000, 100_000, offset=k * 1000) for k in range(100)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for bb in batches:
        await c.consume(bb)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    series = sum(len(st.hist) for st in c.resources.values())
    print(f"memory at {series:,} series (calls + duration): {grown / 2**20:.1f} MiB, "
          f"{grown / series:,.0f} bytes per series")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(ap.parse_args().seconds))
