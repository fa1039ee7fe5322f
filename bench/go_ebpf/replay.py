"""go_ebpf agent cost per span, quiet: the ring-buffer records of one traced run replayed through the
receiver's own path, as it runs it (issue 20).

    .venv/bin/python bench/go_ebpf/replay.py [--calls 20000] [--save FILE]   # trace a run, then replay it
    .venv/bin/python bench/go_ebpf/replay.py --load FILE                      # replay saved records
    .venv/bin/python bench/go_ebpf/replay.py --load FILE --passes 6 --gc default   # a long run, Python's GC

A fixture gRPC client saturates its server with both processes traced (two records per call); the
records the receiver drained are kept, then replayed in this process with nothing else running: drains
of 2,048 records every 0.1 s of simulated time, spans taken every 0.5 s with the default 0.5 s stitch
window (self filter and flow-control hooks on, RED metrics counted in the kernel as the receiver has
them), and each batch gzip-compressed at zlib's default level as the OTLP exporter's gRPC gzip does.
The best of --repeat replays, in this thread's CPU time per span, by stage, and the part of it spent in
Python's cyclic collector (gc.callbacks); the baseline measured in the same run is the floor of any
decoder: one struct unpack per record. --passes N runs the records N times through one assembler as new
calls (stream ids moved), as a long run whose stitching index has filled; --gc picks the collector's
thresholds: a receiver process's (the default) or Python's. `--load` with another checkout's
interpreter replays the same records through that checkout's code (an A/B on identical input).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import pickle
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gotel.component.contract import ComponentID, Context, Kind
from gotel.host.memory import receiver_gc
from gotel.pdata.batch import Batch, Signal
from gotel.receivers.go_ebpf import Config, factory
from gotel.receivers.go_ebpf.events import _FIXED, Assembler
from gotel.receivers.go_ebpf.flowcontrol import FlowControl
from gotel.receivers.go_ebpf.selffilter import SelfFilter
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps


class _Discard:
    """The receiver's sinks while records are captured: the replay is what is measured."""

    async def consume(self, batch: Batch) -> None:
        return None


async def capture(calls: int, toolchain: str) -> dict[str, Any]:
    from bench.go_ebpf.run import keep_records, saturate

    app = goapps.grpc_app(goapps.DEBIAN_GRPC)
    binary = str(goapps.build(app, toolchain))
    srv = goapps.start(app, "server", toolchain=toolchain)
    tel = Telemetry()
    ctx = Context(ComponentID("go_ebpf"), Kind.RECEIVER, logging.getLogger("go_ebpf"),
                  tel.component("go_ebpf", Kind.RECEIVER))
    r = factory.create(Config.model_validate({"discovery": {"exe_paths": [binary]}}),
                       {Signal.TRACES: _Discard(), Signal.METRICS: _Discard()}, ctx)
    recs = keep_records(r)
    try:
        await r.start()
        while srv.pid not in r.attached_pids:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(saturate, binary, f"127.0.0.1:{srv.ports['grpc']}", calls)
        await asyncio.sleep(1.0)
        resources = {pid: st.resource for pid, st in r.asm.procs.items()}
        await r.shutdown()
    finally:
        srv.stop()
    return {"recs": recs, "resources": resources}


_STREAM_AT = 80  # struct gev's stream_id (u32): _FIXED's 12th field


def shifted(recs: list[bytes], k: int) -> list[bytes]:
    """The records as another set of calls: stream ids moved by k << 20, so that pass k's client spans
    take new places in the client index instead of replacing pass k-1's (a long run's index)."""
    if not k:
        return recs
    out = []
    for rec in recs:
        b = bytearray(rec)
        sid = int.from_bytes(b[_STREAM_AT:_STREAM_AT + 4], "little")
        b[_STREAM_AT:_STREAM_AT + 4] = ((sid + (k << 20)) & 0xFFFFFFFF).to_bytes(4, "little")
        out.append(bytes(b))
    return out


class GCTime:
    """This thread's CPU time in Python's cyclic collector (gc.callbacks), and collections by generation."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.runs = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.cpu += time.thread_time() - self._t0
            self.runs[info["generation"]] += 1


def replay(recs: list[bytes], resources: dict[int, dict[str, Any]], passes: int = 1,
           gct: GCTime | None = None) -> tuple[float, float, float, float, float]:
    """(record -> pending, stitching + encoding, gzip, bytes, cyclic GC) per span, this thread's CPU (GC's
    share is inside the others'). passes > 1: the records again as new calls (shifted), one assembler."""
    gct = gct or GCTime()
    gc.collect()  # the previous pass's assembler (a cycle with its hooks) is not this pass's garbage
    gc.callbacks.append(gct)
    try:
        return _replay(recs, resources, passes, gct)
    finally:
        gc.callbacks.remove(gct)


def _replay(recs: list[bytes], resources: dict[int, dict[str, Any]], passes: int,
            gct: GCTime) -> tuple[float, float, float, float, float]:
    asm = Assembler(stitch_window=0.5)
    asm.kernel_metrics = True
    asm.self_filter = SelfFilter(None)
    FlowControl(asm, event_threshold=0.01)
    for pid, res in resources.items():
        asm.add_process(pid, res)
    clock = time.thread_time
    t_add = t_take = t_gz = 0.0
    size = spans = 0
    now, next_flush = 0.0, 0.5

    def take(flush_all: bool = False) -> None:
        nonlocal t_take, t_gz, size, spans
        c0 = clock()
        b = asm.take_traces(now, flush_all=flush_all)
        raw = b.to_bytes() if b is not None else b""
        c1 = clock()
        if raw:
            zlib.compress(raw, 6)
            spans += b.item_count() if b is not None else 0
        t_take, t_gz, size = t_take + c1 - c0, t_gz + clock() - c1, size + len(raw)

    add = asm.add
    gc_other = gct.cpu  # collections outside the receiver's work (shifted() allocates too)
    for k in range(passes):
        g = gct.cpu
        batch = shifted(recs, k)
        gc_other += gct.cpu - g
        for i in range(0, len(batch), 2048):
            c0 = clock()
            for rec in batch[i:i + 2048]:
                add(rec, 0, now)
            t_add += clock() - c0
            now += 0.1
            if now >= next_flush:
                take()
                next_flush += 0.5
    for _ in range(12):  # the held and waiting spans leave as the simulated clock runs on
        now += 0.5
        take()
    take(flush_all=True)
    n = max(spans, 1)
    return t_add / n * 1e6, t_take / n * 1e6, t_gz / n * 1e6, size / n, (gct.cpu - gc_other) / n * 1e6


def floor(recs: list[bytes]) -> float:
    """One struct unpack per record, us per record: what no decoder can avoid."""
    unpack = _FIXED.unpack_from
    c0 = time.thread_time()
    for rec in recs:
        unpack(rec)
    return (time.thread_time() - c0) / max(len(recs), 1) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--toolchain", default="go1.27")
    ap.add_argument("--save", help="keep the captured records in this file")
    ap.add_argument("--load", help="replay records saved by --save instead of tracing a run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--passes", type=int, default=1,
                    help="the records this many times through one assembler, as new calls: a long run (the "
                    "client index fills towards its 100,000 entries; 5 passes of 20,000 calls reach it)")
    ap.add_argument("--gc", choices=["receiver", "default"], default="receiver",
                    help="Python's collector as a receiver process sets it (gotel.host.memory.receiver_gc), "
                    "or Python's defaults")
    args = ap.parse_args()
    if args.gc == "receiver":
        receiver_gc()
    if args.load:
        with open(args.load, "rb") as f:
            data = pickle.load(f)  # a file this bench wrote
    else:
        data = asyncio.run(capture(args.calls, args.toolchain))
        if args.save:
            with open(args.save, "wb") as f:
                pickle.dump(data, f)
    recs, resources = data["recs"], data["resources"]
    runs = [replay(recs, resources, args.passes) for _ in range(args.repeat)]
    best = [min(r[i] for r in runs) for i in range(3)]
    base = min(floor(recs) for _ in range(args.repeat))
    total = sum(best)
    print(f"{len(recs):,} records of a run with both processes traced, replayed {args.repeat}x (best)"
          f"{f' of {args.passes} passes each' if args.passes > 1 else ''}, {runs[0][3]:.0f} bytes of OTLP per "
          f"span, collector thresholds {gc.get_threshold()} ({args.gc})")
    print(f"agent CPU per span: record -> pending span {best[0]:.2f} us, stitching + OTLP encoding "
          f"{best[1]:.2f} us, gzip {best[2]:.2f} us; total {total:.2f} us "
          f"({total - best[2]:.2f} us of Python); baseline (one struct unpack per record) {base:.2f} us: "
          f"x{(total - best[2]) / max(base, 1e-9):.1f}")
    print(f"of which Python's cyclic GC {min(r[4] for r in runs):.2f} us per span (best; all: "
          + ", ".join(f"{r[4]:.2f}" for r in runs) + ")")
    print("goal (issue 20): agent <= 5 us per span at saturation with sampling 100% (sampling.py measures "
          "it; this replay is the same work without the CPU the traced processes take)")


if __name__ == "__main__":
    main()
