"""Cost of the net receiver's tracepoints on a loopback TCP ping-pong (the worst case: every round trip is
two segments sent, two received, and no work besides).

A Python ping-pong over 127.0.0.1 (ephemeral port) reports its round trips every second. Windows of
`--seconds` alternate in one run: no BPF loaded, the receiver without peer liveness (no tcp_probe), and
with it (the default), `--pairs` times each, so that drift on this shared machine hits every side alike.
Printed: round trips/s per configuration, the ratio to the no-BPF windows, and the per-run cost of each
BPF program as the kernel counts it (kernel.bpf_stats_enabled, restored after the run). Never fails on
time. Usage: .venv/bin/python bench/net/run.py [--pairs 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gotel.pdata.batch import Signal  # noqa: E402
from gotel.receivers.net import Config, NetReceiver  # noqa: E402
from tests.helpers.memsink import make_ctx, sinks  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_sched", REPO / "bench/sched/run.py")
assert _spec is not None and _spec.loader is not None
_sched = importlib.util.module_from_spec(_spec)
sys.modules["bench_sched"] = _sched  # dataclasses look their module up there
_spec.loader.exec_module(_sched)
prog_stats = _sched.prog_stats  # the kernel's run_time_ns/run_cnt per program of a BCC object
STATS = _sched.STATS

PINGPONG = r"""
import socket, threading, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
def serve():
    c, _ = l.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while c.recv(1):
        c.send(b"y")
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(l.getsockname()); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, t = 0, time.monotonic()
while True:
    c.send(b"x"); c.recv(1); n += 1
    if time.monotonic() - t >= 1:
        print(time.monotonic(), n, flush=True); n, t = 0, time.monotonic()
"""


def rate(p: subprocess.Popen[str], seconds: int) -> float:
    """Mean of the next `seconds` one-second counts that began after now (lines queued meanwhile, e.g.
    while BPF compiled, are skipped; CLOCK_MONOTONIC is shared with the child)."""
    assert p.stdout is not None
    start = time.monotonic()
    counts: list[int] = []
    while len(counts) < seconds:
        t, n = p.stdout.readline().split()
        if float(t) - 1.0 >= start:
            counts.append(int(n))
    return statistics.mean(counts)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    old = STATS.read_text().strip()
    STATS.write_text("1")
    p = subprocess.Popen([sys.executable, "-c", PINGPONG], stdout=subprocess.PIPE, text=True)
    rates: dict[str, list[float]] = {"off": [], "no_liveness": [], "liveness": []}
    costs: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        rate(p, 1)
        for _ in range(args.pairs):
            for conf in rates:
                if conf == "off":
                    rates[conf].append(rate(p, args.seconds))
                    continue
                r = NetReceiver(Config(discovery={"pids": [p.pid], "go_only": False}, collection_interval=3600,
                                       peer_liveness=conf == "liveness"), sinks(Signal.METRICS), make_ctx("net"))
                await r.start()
                try:
                    before = prog_stats(r.prog.bpf)
                    rates[conf].append(rate(p, args.seconds))
                    after = prog_stats(r.prog.bpf)
                finally:
                    await r.shutdown()
                acc = costs.setdefault(conf, {})
                for name, (ns, cnt) in after.items():
                    ns0, cnt0 = before.get(name, (0, 0))
                    a_ns, a_cnt = acc.get(name, (0, 0))
                    acc[name] = (a_ns + ns - ns0, a_cnt + cnt - cnt0)
    finally:
        p.kill()
        p.wait()
        STATS.write_text(old)
    base = statistics.mean(rates["off"])
    print(f"loopback ping-pong, {args.pairs} x {args.seconds} s windows per configuration, interleaved")
    for conf, rs in rates.items():
        m = statistics.mean(rs)
        print(f"  {conf:12s} {m:9.0f} round trips/s  ratio to off {m / base:5.3f}  ({', '.join(f'{x:.0f}' for x in rs)})")
    for conf, progs in costs.items():
        print(f"  BPF programs, {conf}:")
        for name, (ns, cnt) in sorted(progs.items()):
            if cnt:
                print(f"    {name:40s} {cnt / (args.pairs * args.seconds):9.0f} runs/s  {ns / cnt:6.0f} ns/run")
    return 0


def _run() -> Any:
    return asyncio.run(main())


if __name__ == "__main__":
    sys.exit(_run())
