"""Benchmark: spans/s through the `filter` processor as a ratio to a pass-through, same run, one core.

Both sides do what the pipeline process does per request besides gRPC: parse the received wire bytes
(as the otlp receiver does, keeping them) and hand the exporter its bytes (`to_bytes()`: free when the
request is unchanged, a serialization when something was dropped). Requests are 512 spans shaped like
gotel's eBPF HTTP server spans (bench/pipeline's builder). Scenarios:

* no-match: a health-check filter (`span.attributes["http.route"] == "/healthz"`) on traffic without
  health checks: the request's bytes rule it out, nothing is evaluated per span;
* 1-in-64: the same filter when 1 span in 64 is a health check (every request has some): evaluated
  span by span, 8 of 512 dropped, the rest re-serialized;
* three-conditions: attribute equality, IsMatch on the name and a duration in nanoseconds, none matching.

Rounds alternate pass-through and filter; the best round of each is kept, in spans per CPU-second of the
process (the box is shared: wall time would count other processes' turns on the core).

    .venv/bin/python bench/processors/_filter.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from table import Sink

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Batch, Signal, Traces
from gotel.processors.filter import Config, FilterProcessor
from gotel.telemetry.counters import Telemetry

HEALTH = 'span.attributes["http.route"] == "/healthz"'
SCENARIOS: dict[str, tuple[list[str], int]] = {  # name -> (conditions, 1 health-check span in N; 0 = none)
    "no-match": ([HEALTH], 0),
    "1-in-64": ([HEALTH], 64),
    "three-conditions": ([HEALTH, 'IsMatch(span.name, "^OPTIONS ")',
                          "span.end_time_unix_nano - span.start_time_unix_nano > 5000000000"], 0),
}


def _builder() -> Any:
    path = Path(__file__).resolve().parents[1] / "pipeline" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_pipeline_run", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requests(n_distinct: int, health_every: int) -> list[bytes]:
    out = []
    for raw in _builder().build_requests(n_distinct):
        b = Traces.parse(raw)
        if health_every:
            for rs in b.msg.resource_spans:
                for ss in rs.scope_spans:
                    for i, s in enumerate(ss.spans):
                        if i % health_every == 0:
                            for kv in s.attributes:
                                if kv.key == "http.route":
                                    kv.value.string_value = "/healthz"
        out.append(b.to_bytes())
    return out


class PassThrough:
    mutates = False

    def __init__(self, nxt: Sink) -> None:
        self.next = nxt

    async def consume(self, batch: Batch) -> None:
        await self.next.consume(batch)


def _ctx() -> Context:
    cid = ComponentID.parse("filter")
    return Context(cid, Kind.PROCESSOR, logging.getLogger("bench"), Telemetry().component(cid, Kind.PROCESSOR))


async def _run(proc: Any, reqs: list[bytes], n: int) -> float:
    """Spans per CPU-second of this (single-threaded) process: time other processes take from the
    shared core is not counted against either side."""
    t = time.process_time()
    for i in range(n):
        await proc.consume(Traces.parse(reqs[i % len(reqs)]))
    return n * 512 / (time.process_time() - t)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200, help="requests per round (512 spans each)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"filter processor: {a.requests} requests x 512 spans per round, best of {a.rounds} rounds, one core")
    for name, (conds, every) in SCENARIOS.items():
        reqs = requests(8, every)
        base = best = 0.0
        kept = 0
        for _ in range(a.rounds):
            base = max(base, await _run(PassThrough(Sink()), reqs, a.requests))
            sink = Sink()
            f = FilterProcessor(Signal.TRACES, Config.model_validate({"trace_conditions": conds}), sink, _ctx())
            best = max(best, await _run(f, reqs, a.requests))
            kept = sink.spans
        print(f"  {name:17s} pass-through {base:>10,.0f} spans/cpu-s   filter {best:>10,.0f} spans/cpu-s   "
              f"ratio {best / base:.2f}x   kept {kept}/{a.requests * 512}")


if __name__ == "__main__":
    asyncio.run(main())
