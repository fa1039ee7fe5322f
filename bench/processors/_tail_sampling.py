"""Benchmark: spans/s through `tail_sampling` on one core, as a ratio to a pass-through measured in the same
run, and its memory at `num_traces: 50000`.

Requests are 512 spans shaped like gotel's eBPF HTTP server spans (8 attributes each), 4 spans per trace,
in two shapes: `together` (a trace's 4 spans in one request) and `spread` (each of a trace's spans in a
different request, as when client and server spans come from different processes: every span is its
own chunk). The processor runs with a fake clock that advances 1 ms per request, so decisions (status
ERROR, latency > 1 s, 10 % probabilistic) happen in the timed loop. Pass-through = the request parsed and
serialized again (what any processor that looks inside pays), timed with the CPU clock, best of three.

Memory: 50,000 traces held (decision_wait longer than the run), with the Python heap measured by
tracemalloc against the processor's own byte accounting (`max_buffered_bytes` charges), and RSS growth.

    .venv/bin/python bench/processors/_tail_sampling.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 4
POLICIES = [
    {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    {"name": "slow", "type": "latency", "latency": {"threshold_ms": 1000}},
    {"name": "some", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
]


def build_requests(n: int, spread: bool, first_trace: int = 0) -> list[bytes]:
    from gotel.pdata.batch import Traces, attrs

    traces_per_req = SPANS_PER_REQUEST // SPANS_PER_TRACE
    out = []
    for r in range(n):
        b = Traces()
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs({
            "service.name": "checkout", "process.pid": 4242, "k8s.pod.name": "checkout-7d9f-1",
            "k8s.namespace.name": "shop", "host.name": "node-1", "process.runtime.version": "go1.22.5"}))
        ss = rs.scope_spans.add()
        ss.scope.name = "gotel.go_ebpf"
        for i in range(SPANS_PER_REQUEST):
            if spread:  # span k of trace t is in request t // traces_per_req * 4 + k: 4 requests per trace
                block, k = divmod(r, SPANS_PER_TRACE)
                t = first_trace + block * SPANS_PER_REQUEST + i
            else:
                t, k = first_trace + r * traces_per_req + i // SPANS_PER_TRACE, i % SPANS_PER_TRACE
            s = ss.spans.add()
            s.trace_id = hashlib.blake2b(struct.pack(">Q", t), digest_size=16).digest()  # random-looking, as real ids
            s.span_id = struct.pack(">QH", t + 1, k)[2:]
            s.name = "GET /api/cart/{id}"
            s.kind = 2
            s.start_time_unix_nano = 1_700_000_000_000_000_000 + k * 1000
            s.end_time_unix_nano = s.start_time_unix_nano + (2_000_000_000 if t % 97 == 0 else 1_250_000)
            s.attributes.extend(attrs({
                "http.request.method": "GET", "http.route": "/api/cart/{id}", "url.path": f"/api/cart/{i}",
                "http.response.status_code": 500 if t % 50 == 0 else 200, "server.address": "checkout",
                "server.port": 8080, "network.protocol.version": "1.1", "client.address": f"10.0.3.{i % 250}"}))
            s.status.code = 2 if t % 50 == 0 else 1
        out.append(b.to_bytes())
    return out


class Count:
    mutates = False

    def __init__(self) -> None:
        self.spans = 0

    async def consume(self, batch: Any) -> None:
        self.spans += batch.item_count()


def processor(cfg: dict[str, Any], sink: Count, clock: list[float]) -> Any:
    from gotel.component.contract import ComponentID, Context, Kind
    from gotel.pdata.batch import Signal
    from gotel.processors.tail_sampling import Config, TailSamplingProcessor
    from gotel.telemetry.counters import Telemetry

    t = Telemetry()
    cid = ComponentID.parse("tail_sampling")
    ctx = Context(cid, Kind.PROCESSOR, logging.getLogger("bench"), t.component(cid, Kind.PROCESSOR), Signal.TRACES)
    return TailSamplingProcessor(Signal.TRACES, Config.model_validate(cfg), sink, ctx, clock=lambda: clock[0])


def pass_through(reqs: list[bytes]) -> float:
    from gotel.pdata.batch import Traces

    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        for raw in reqs:
            b = Traces.from_bytes(raw)
            b.msg  # noqa: B018 - parses and drops the cached bytes, as a processor that looks inside does
            b.to_bytes()
        best = max(best, len(reqs) * SPANS_PER_REQUEST / (time.process_time() - t0))
    return best


def through_tail_sampling(reqs: list[bytes]) -> tuple[float, int]:
    from gotel.pdata.batch import Traces

    best, kept = 0.0, 0
    for _ in range(3):
        clock = [0.0]
        sink = Count()
        p = processor({"decision_wait": "50ms", "policies": POLICIES}, sink, clock)

        async def run(p: Any = p, clock: list[float] = clock) -> None:
            for raw in reqs:
                await p.consume(Traces(raw=raw))
                clock[0] += 0.001
                await p.tick()
            clock[0] += 1.0
            await p.tick()

        t0 = time.process_time()
        asyncio.run(run())
        best = max(best, len(reqs) * SPANS_PER_REQUEST / (time.process_time() - t0))
        kept = sink.spans
    return best, kept


def rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_at_50000(quiet: bool = False) -> dict[str, float]:
    from gotel.pdata.batch import Traces

    n_traces = 50_000
    reqs = build_requests(n_traces * SPANS_PER_TRACE // SPANS_PER_REQUEST + 1, spread=False)
    clock = [0.0]
    p = processor({"decision_wait": "1h", "num_traces": n_traces, "policies": POLICIES}, Count(), clock)
    gc.collect()
    rss0 = rss()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    async def run() -> None:
        for raw in reqs:
            await p.consume(Traces(raw=raw))

    asyncio.run(run())
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    wire = sum(len(c) for tr in p.traces.values() for c in tr.chunks)
    out = {"traces": len(p.traces), "held": held, "charged": p.bytes, "wire": wire, "rss": rss() - rss0}
    if quiet:
        return out
    print(f"num_traces 50000: {len(p.traces):,} traces held ({len(p.traces) * SPANS_PER_TRACE:,} spans), "
          f"{wire / 1e6:.1f} MB of span wire bytes")
    print(f"  charged against max_buffered_bytes {p.bytes / 1e6:8.1f} MB")
    print(f"  Python heap held (tracemalloc)     {held / 1e6:8.1f} MB  ({held / p.bytes:.2f}x the charge)")
    print(f"  RSS growth                         {(rss() - rss0) / 1e6:8.1f} MB  (tracemalloc's own tables included)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="requests of 512 spans per pass")
    args = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    n = args.requests - args.requests % SPANS_PER_TRACE
    for spread in (False, True):
        reqs = build_requests(n, spread)
        base = pass_through(reqs)
        ts, kept = through_tail_sampling(reqs)
        shape = "spread  " if spread else "together"
        print(f"{shape} pass-through (decode+encode) {base:>10,.0f} spans/s")
        print(f"{shape} tail_sampling               {ts:>10,.0f} spans/s  {ts / base:.2f}x  "
              f"({kept:,} of {n * SPANS_PER_REQUEST:,} spans kept)")
    memory_at_50000()


if __name__ == "__main__":
    main()
