"""Cost of go_ebpf's context-leak probes (issue 19): nanoseconds per context created and canceled, in a
tight loop of the ctxtlsapp fixture (`/spin`: context.WithCancel + cancel, one goroutine), untraced vs
traced, in one run; and the cost of the TLS probes per handshake the same way.

    .venv/bin/python bench/go_ebpf/contexts.py [--seconds 3] [--toolchain go1.26] [--rounds 3]

The untraced loop is measured before attaching and again after detaching; their mean is the baseline.
Goal (issue 19): context tracking adds <= 300 ns per context on a program creating >= 1M contexts/s
(the untraced rate is printed: it must be above 1M/s for the figure to be about such a program).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gotel.receivers.go_ebpf.below import Below
from tests.helpers import goapps


def spin(app: goapps.RunningApp, seconds: float) -> float:
    """ns per context (create + cancel) over `seconds` of the fixture's loop."""
    with urllib.request.urlopen(app.url(f"/spin?seconds={seconds}", "ctl"), timeout=seconds + 120) as r:
        return float(json.load(r)["per_context_ns"])


def handshakes(app: goapps.RunningApp) -> float:
    """Wall seconds for one /tls round (46 handshakes, client and server side in one process)."""
    t = time.perf_counter()
    with urllib.request.urlopen(app.url("/tls?n=1", "ctl"), timeout=120) as r:
        r.read()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--toolchain", default="go1.26")
    args = ap.parse_args()
    binary = goapps.build("ctxtlsapp", args.toolchain)
    app = goapps.start("ctxtlsapp", toolchain=args.toolchain)
    try:
        handshakes(app)  # certificates made, servers up
        spin(app, 0.5)  # warm
        before = [spin(app, args.seconds) for _ in range(args.rounds)]
        tls_before = [handshakes(app) for _ in range(args.rounds)]
        b = Below(contexts=True, tls=True, leak_age=30.0, ring_pages=64, max_contexts=131072,
                  log=logging.getLogger("bench"))
        try:
            b.add(app.pid, str(binary), {"process.pid": app.pid})
            traced = [spin(app, args.seconds) for _ in range(args.rounds)]
            tls_traced = [handshakes(app) for _ in range(args.rounds)]
            b.drain()
            b.leaks.scan()
            sites = b.leaks.by_site(app.pid)
            seen = sum(c.created for label, c in sites.items() if label.startswith("main.spinCancel"))
        finally:
            b.close()
        after = [spin(app, args.seconds) for _ in range(args.rounds)]
    finally:
        app.stop()
    base = (statistics.median(before) + statistics.median(after)) / 2
    tr = statistics.median(traced)
    print(f"toolchain {args.toolchain}: context.WithCancel + cancel in a loop, {args.rounds} x {args.seconds:g} s each")
    print(f"  untraced  {base:8.1f} ns/context  ({1e9 / base / 1e6:.2f} M contexts/s)  "
          f"[before {statistics.median(before):.1f}, after {statistics.median(after):.1f}]")
    print(f"  traced    {tr:8.1f} ns/context  ({1e9 / tr / 1e6:.2f} M contexts/s)  "
          f"ratio {tr / base:.1f}x, added {tr - base:.0f} ns/context (goal <= 300)")
    print(f"  contexts the probes counted at main.spinCancel: {seen}")
    tb, tt = statistics.median(tls_before), statistics.median(tls_traced)
    print(f"  TLS round (46 handshakes, both sides in-process): untraced {tb * 1e3:.1f} ms, traced {tt * 1e3:.1f} ms, "
          f"ratio {tt / tb:.3f}")


if __name__ == "__main__":
    main()
