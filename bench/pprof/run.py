"""bench/pprof: 50 local fixture targets x 5 profile types (cpu, heap, mutex, block, goroutine) at a 15 s
interval, as the pprof receiver runs them in production (same intervals, CPU profiles of 14 s).

Measured in one run, side by side:
  * baseline: the same schedule doing only what any scraper must do (HTTP GET, read the body);
  * gotel: the pprof receiver (validation, decoding, deltas, OTLP conversion, health metrics);
  -> agent CPU (% of one core) and the ratio to the baseline, RSS growth per target, delta state per target;
  * pprof -> OTLP conversion speed (samples/s) on the real profiles collected, against plain pprof
    decoding of the same bytes.
The run is shortened to ~35 s per phase (2-3 scrapes per type and target); per-scrape work is unchanged.
Goals: < 10 % of one core for the whole set, < 2 MB of delta state per target. Never fails on time.

Usage: .venv/bin/python bench/pprof/run.py [--targets 50] [--seconds 35]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gotel.formats import pprof, profconv  # noqa: E402
from gotel.pdata.batch import Batch, Signal  # noqa: E402
from gotel.receiverhelper.targets import Target  # noqa: E402
from gotel.receivers.pprof import factory  # noqa: E402
from gotel.receivers.pprof.delta import DeltaState  # noqa: E402
from gotel.receivers.pprof.fetch import Fetcher  # noqa: E402
from gotel.receivers.pprof.receiver import KINDS, PprofReceiver, _jitter  # noqa: E402
from tests.helpers import goapps  # noqa: E402
from tests.helpers.pprofkit import context  # noqa: E402

TYPES = ("cpu", "heap", "mutex", "block", "goroutine")
INTERVAL = 15.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class CountingSink:
    mutates = False

    def __init__(self) -> None:
        self.items = 0
        self.bytes = 0
        self.samples = 0
        self.keep: list[bytes] = []

    async def consume(self, batch: Batch) -> None:
        self.items += batch.item_count()
        self.bytes += batch.byte_size()
        if batch.signal == Signal.PROFILES:
            req = batch.peek()
            self.samples += sum(len(p.samples) for rp in req.resource_profiles for sp in rp.scope_profiles
                                for p in sp.profiles)


async def baseline(targets: list[Target], seconds: float, bodies: list[bytes]) -> dict[str, float]:
    """GET + read on the same schedule; nothing else."""
    f = Fetcher(timeout=10, max_body_bytes=64 << 20)
    n = 0
    nbytes = 0

    async def loop(t: Target, kind: str) -> None:
        nonlocal n, nbytes
        await asyncio.sleep(_jitter(f"{t.key}/{kind}", INTERVAL))
        while True:
            params = {"seconds": "14"} if kind == "cpu" else None
            try:
                r = await f.get(t, f"/debug/pprof/{KINDS[kind].path}", params, timeout=25, expect="any")
                n += 1
                nbytes += len(r.body)
                if len(bodies) < 2000 and kind in ("heap", "goroutine", "cpu"):
                    bodies.append(r.body)
            except Exception:
                pass
            await asyncio.sleep(INTERVAL)

    c0, w0 = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(loop(t, k)) for t in targets for k in TYPES]
    await asyncio.sleep(seconds)
    c1, w1 = time.process_time(), time.monotonic()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await f.close()
    return {"cpu": (c1 - c0) / (w1 - w0), "scrapes": n, "bytes": nbytes}


async def full(targets: list[Target], seconds: float) -> dict[str, Any]:
    cfg = factory.config.model_validate({
        "targets": [{"endpoint": t.url, "service_name": t.attributes["service.name"]} for t in targets],
        "profiles": {
            "cpu": {"interval": INTERVAL}, "heap": {"interval": INTERVAL}, "mutex": {"interval": INTERVAL},
            "block": {"interval": INTERVAL}, "goroutine": {"interval": INTERVAL},
            "goroutine_dump": {"enabled": False}, "goroutineleak": {"enabled": False},
        },
    })
    sinks = {s: CountingSink() for s in (Signal.PROFILES, Signal.METRICS, Signal.LOGS)}
    rss0 = rss_bytes()
    rcv = PprofReceiver(cfg, sinks, context("pprof"))  # type: ignore[arg-type]
    c0, w0 = time.process_time(), time.monotonic()
    await rcv.start()
    await asyncio.sleep(seconds)
    c1, w1 = time.process_time(), time.monotonic()
    rss1 = rss_bytes()
    states = [d for r in rcv.runners.values() for d in r.deltas.values()]
    stacks = sum(d.stacks() for d in states)
    state_bytes = sum(deep_size(d) for d in states)
    reg = rcv.ctx.telemetry.t.registry
    fails = sum(s.value for m in reg.collect() if m.name == "gotel_pprof_scrape_failures"
                for s in m.samples if s.name.endswith("_total"))
    scrapes = sum(s.value for m in reg.collect() if m.name == "gotel_pprof_scrapes"
                  for s in m.samples if s.name.endswith("_total"))
    await rcv.shutdown()
    return {"cpu": (c1 - c0) / (w1 - w0), "rss_growth": rss1 - rss0, "state_bytes": state_bytes, "stacks": stacks,
            "scrapes": scrapes, "failures": fails, "profiles": sinks[Signal.PROFILES].items,
            "samples": sinks[Signal.PROFILES].samples, "metric_points": sinks[Signal.METRICS].items}


def deep_size(d: DeltaState) -> int:
    if not d.prev:
        return sys.getsizeof({})
    total = sys.getsizeof(d.prev)
    for k, v in d.prev.items():
        total += sys.getsizeof(k) + sys.getsizeof(v) + sum(sys.getsizeof(x) for x in v)
    return total


def synthetic_heap(n: int = 20000) -> bytes:
    """A big service's heap profile: 3000 functions, stacks 8-30 deep (the fixtures' profiles are tiny)."""
    import random

    from tests.helpers.pprofkit import HEAP_TYPES, make_profile

    rnd = random.Random(1)
    funcs = [f"pkg{i % 40}.Func{i}" for i in range(3000)]
    samples = [(rnd.sample(funcs, rnd.randint(8, 30)),
                [rnd.randint(1, 100), rnd.randint(1, 1 << 20), rnd.randint(0, 10), rnd.randint(0, 1 << 16)])
               for _ in range(n)]
    return pprof.encode(make_profile(HEAP_TYPES, samples))


def delta_speed(body: bytes) -> float:
    best = float("inf")
    n = 1
    for _ in range(3):  # CPU time, best of three: the machine is shared with the 50 targets
        st = DeltaState("heap")
        st.apply(pprof.decode(body))
        p = pprof.decode(body)
        n = len(p.sample)
        t0 = time.process_time()
        st.apply(p)  # consumes p
        best = min(best, time.process_time() - t0)
    return n / best


def conversion_speed(bodies: list[bytes]) -> dict[str, float]:
    profs = [pprof.decode(b) for b in bodies]
    samples = sum(len(p.sample) for p in profs)
    reps = max(1, int(20000 / max(samples, 1)))
    t_decode = t_conv = float("inf")
    for _ in range(3):  # CPU time, best of three
        t0 = time.process_time()
        for _ in range(reps):
            for b in bodies:
                pprof.decode(b)
        t_decode = min(t_decode, time.process_time() - t0)
        t0 = time.process_time()
        for _ in range(reps):
            for p in profs:
                profconv.pprof_to_otlp(p, {"service.name": "x"}).SerializeToString()
        t_conv = min(t_conv, time.process_time() - t0)
    return {"samples": samples * reps, "decode_sps": samples * reps / t_decode, "convert_sps": samples * reps / t_conv,
            "profiles": len(profs), "per_profile": samples / max(len(profs), 1)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=35.0)
    args = ap.parse_args()
    print(f"starting {args.targets} runtime fixtures (Go 1.27; 200 KB/s garbage, mutex 1/5, block 100 µs) ...", flush=True)
    apps = []
    t0 = time.monotonic()
    try:
        for _ in range(args.targets):
            apps.append(goapps.start("runtime", "-alloc-rate=200000", "-mutex-fraction=5", "-block-rate=100000"))
        print(f"  started in {time.monotonic() - t0:.1f}s", flush=True)
        targets = [Target(url=f"http://127.0.0.1:{a.port()}", attributes={"service.name": f"svc{i}"})
                   for i, a in enumerate(apps)]
        bodies: list[bytes] = []
        print(f"baseline (GET + read only), {args.seconds:.0f}s ...", flush=True)
        b = await baseline(targets, args.seconds, bodies)
        print(f"gotel pprof receiver, {args.seconds:.0f}s ...", flush=True)
        f = await full(targets, args.seconds)
        conv = conversion_speed(bodies[:300])
        big = synthetic_heap()
        conv_big = conversion_speed([big])
        big_delta = delta_speed(big)
    finally:
        for a in apps:
            a.stop()
    n = args.targets
    print()
    print(f"targets x types            {n} x {len(TYPES)} at {INTERVAL:.0f}s (cpu seconds=14)")
    print(f"scrapes in the window      baseline {b['scrapes']:.0f}, gotel {f['scrapes']:.0f} ({f['failures']:.0f} failed/empty)")
    print(f"agent CPU                  baseline {100 * b['cpu']:.2f}% of a core, gotel {100 * f['cpu']:.2f}% "
          f"(x{f['cpu'] / max(b['cpu'], 1e-9):.2f}; goal < 10%)")
    print(f"RSS growth                 {f['rss_growth'] / 2**20:.1f} MiB total, {f['rss_growth'] / n / 2**10:.0f} KiB per target")
    print(f"delta state                {f['stacks']} stacks, {f['state_bytes'] / 2**10:.0f} KiB total, "
          f"{f['state_bytes'] / n / 2**10:.1f} KiB per target, "
          f"{f['state_bytes'] / max(f['stacks'], 1):.0f} B per stack (goal < 2 MB per target)")
    print(f"emitted                    {f['profiles']:.0f} OTLP profiles, {f['samples']:.0f} samples, "
          f"{f['metric_points']:.0f} metric points")
    print(f"pprof -> OTLP conversion   {conv['convert_sps']:,.0f} samples/s vs decode only {conv['decode_sps']:,.0f} "
          f"samples/s (x{conv['decode_sps'] / conv['convert_sps']:.1f} slower than decoding; {conv['profiles']} real fixture profiles, "
          f"{conv['per_profile']:.0f} samples each)")
    print(f"  on a 20000-sample heap   {conv_big['convert_sps']:,.0f} samples/s vs decode only {conv_big['decode_sps']:,.0f} "
          f"samples/s (x{conv_big['decode_sps'] / conv_big['convert_sps']:.1f}); delta {big_delta:,.0f} samples/s (synthetic, 4 sample types)")


if __name__ == "__main__":
    asyncio.run(main())
