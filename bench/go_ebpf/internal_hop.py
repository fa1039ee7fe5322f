"""The pipeline's side of the internal hop, per span: a receiver process's requests arriving at the internal
entry point (otlp/_internal on its unix socket) and handed to a pass-through pipeline (an exporter takes
the bytes and the count), with and without the item-count header (issue 20).

    .venv/bin/python bench/go_ebpf/internal_hop.py [--load FILE] [--spans 4096] [--rounds 6]

With --load (a file `replay.py --save` wrote) the requests are go_ebpf spans of a traced run, encoded by
the receiver's own code; without it, synthetic spans of the test helpers. Client and server share this
process: the figure is the process's CPU per span (every thread), and the difference between the two
modes is what the header saves; rounds alternate, best of each. Ratios only; nothing fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc.aio

from gotel.component.contract import ITEM_COUNT_HEADER, RECEIVER_ID_HEADER, ComponentID, Context, Kind
from gotel.pdata.batch import Batch, Signal
from gotel.service.internal import internal_receiver
from gotel.telemetry.counters import Telemetry

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class PassThrough:
    """What an unmodified pipeline does with a batch: count it, take its bytes."""

    mutates = False

    def __init__(self) -> None:
        self.items = 0

    async def consume(self, batch: Batch) -> None:
        self.items += batch.item_count()
        batch.to_bytes()


def go_ebpf_requests(path: str, spans: int) -> list[tuple[bytes, int]]:
    """The replayed run's spans as requests of about `spans` spans (what the receiver process sends)."""
    from gotel.receivers.go_ebpf.events import Assembler

    with open(path, "rb") as f:
        data = pickle.load(f)  # a file replay.py wrote
    asm = Assembler(stitch_window=0.5)
    asm.kernel_metrics = True
    for pid, res in data["resources"].items():
        asm.add_process(pid, res)
    for rec in data["recs"]:
        asm.add(rec, 0, 0.0)
    b = asm.take_traces(10.0, flush_all=True)
    assert b is not None
    return [(part.to_bytes(), part.item_count()) for part in b.split(spans)]


def synthetic(spans: int, requests: int) -> list[tuple[bytes, int]]:
    from tests.helpers import otlp_samples

    return [(otlp_samples.traces(spans, start=i * spans).to_bytes(), spans) for i in range(requests)]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", help="records saved by replay.py --save")
    ap.add_argument("--spans", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    reqs = go_ebpf_requests(args.load, args.spans) if args.load else synthetic(args.spans, 10)
    total = sum(n for _, n in reqs)
    tel = Telemetry()
    cid = ComponentID.parse("otlp/_internal")
    ctx = Context(cid, Kind.RECEIVER, logging.getLogger("otlp"), tel.component(cid, Kind.RECEIVER))
    sink = PassThrough()
    with tempfile.TemporaryDirectory(prefix="gotel-hop-") as d:
        sock = f"{d}/otlp.sock"
        r = internal_receiver(sock, {Signal.TRACES: sink}, ctx)
        await r.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                call = ch.unary_unary(EXPORT)

                async def run(header: bool) -> float:
                    c0 = time.process_time()
                    for raw, n in reqs:
                        md: tuple[tuple[str, str], ...] = ((RECEIVER_ID_HEADER, "go_ebpf"),)
                        if header:
                            md += ((ITEM_COUNT_HEADER, str(n)),)
                        await call(raw, metadata=md, timeout=30)
                    return (time.process_time() - c0) / total * 1e6

                await run(False)  # warm-up: the channel, the connection
                parsed: list[float] = []
                counted: list[float] = []
                for _ in range(args.rounds):
                    parsed.append(await run(False))
                    counted.append(await run(True))
        finally:
            await r.shutdown()
    assert sink.items == total * (2 * args.rounds + 1), (sink.items, total)
    p, c = min(parsed), min(counted)
    print(f"{len(reqs)} requests, {total:,} spans ({'go_ebpf spans of ' + args.load if args.load else 'synthetic'}), "
          f"{sum(len(r) for r, _ in reqs) / total:.0f} bytes per span; {args.rounds} alternating rounds, best")
    print(f"internal hop, this process's CPU per span (client + server): parsed to count {p:.2f} us, "
          f"counted by header {c:.2f} us: saves {p - c:.2f} us per span (x{c / p:.2f})")
    print("  all rounds, parsed: " + ", ".join(f"{x:.2f}" for x in parsed)
          + "; counted: " + ", ".join(f"{x:.2f}" for x in counted))


if __name__ == "__main__":
    asyncio.run(main())
