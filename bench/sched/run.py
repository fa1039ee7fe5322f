"""Cost of the sched and go_runtime receivers on a Go program doing ~100k context switches per second.

The runtime fixture in -pingpong mode bounces a byte between two thread-locked goroutines over pipes and
prints its round-trip rate every second. Measured in one run: a baseline with no BPF loaded (before and
after), then for each configuration the receivers are loaded once and the fixture's tracing is toggled
(untraced/traced window pairs, 3 s each), so that the machine's drift hits both sides of a pair alike:
  * the fixture's rate traced vs untraced in the same pair, and vs no BPF at all (goal: drop < 5%);
  * the agent's CPU (this process: the receivers' collection and ring-buffer drains), goal < 3% of a core;
  * the per-event cost of every BPF program as the kernel counts it (kernel.bpf_stats_enabled, restored
    after the run; run_time_ns / run_cnt per program, read with bpftool by program id).
Never fails on time. Usage: .venv/bin/python bench/sched/run.py [--pairs 5] [--toolchain go1.27]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gotel.pdata import Signal  # noqa: E402
from gotel.receivers import go_runtime, sched  # noqa: E402
from tests.helpers import goapps  # noqa: E402
from tests.helpers.memsink import make_ctx, sinks  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
BPF_OBJ_GET_INFO_BY_FD = 15
NR_BPF = 321


def prog_id(fd: int) -> int:
    """The kernel's id of a loaded program (bpf_prog_info.id, the second u32)."""
    info = (ctypes.c_uint8 * 256)()
    attr = (ctypes.c_uint8 * 16)()
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint32.from_buffer(attr, 4).value = 256
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(NR_BPF, BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), 16) != 0:
        raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    return ctypes.c_uint32.from_buffer(info, 4).value


def prog_stats(bpf: Any) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) for every program the BCC object loaded."""
    out = {}
    for name, fn in bpf.funcs.items():
        try:
            pid = prog_id(fn.fd)
            j = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"], capture_output=True,
                                          text=True, check=True).stdout)
        except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        out[name.decode() if isinstance(name, bytes) else name] = (int(j.get("run_time_ns", 0)),
                                                                   int(j.get("run_cnt", 0)))
    return out


def window(app: goapps.RunningApp, records: int = 3) -> float:
    """Round trips/s over the next `records` one-second reports, the first (partial) one dropped."""
    start = len(app.records())
    deadline = time.monotonic() + records + 5
    while len(app.records(timeout=0.5)) - start < records and time.monotonic() < deadline:
        pass
    recs = [r for r in app.records()[start:] if r.get("event") == "pingpong"][1:records]
    return statistics.mean(r["switches_per_s"] for r in recs) if recs else float("nan")


class Loaded:
    """sched + go_runtime receivers loaded once; tracing of the fixture toggled without recompiling."""

    def __init__(self, app: goapps.RunningApp, interval: float, slow_syscalls: bool) -> None:
        self.app = app
        s = sinks(Signal.METRICS, Signal.LOGS)
        self.sr = sched.SchedReceiver(sched.Config(discovery={"pids": [app.pid]}, collection_interval=interval,
                                                   slow_syscalls=slow_syscalls), s, make_ctx("sched"))
        self.gr = go_runtime.GoRuntimeReceiver(go_runtime.Config(discovery={"pids": [app.pid]},
                                                                 collection_interval=interval), s,
                                               make_ctx("go_runtime"))
        self.sink = s

    async def __aenter__(self) -> Loaded:
        await self.sr.start()
        await self.gr.start()
        self.infos = {r: r.targets[self.app.pid] for r in (self.sr, self.gr)}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gr.shutdown()
        await self.sr.shutdown()

    def trace(self, on: bool) -> None:
        for r, info in self.infos.items():
            with r._apply_lock:
                r.on_added(info) if on else r.on_removed(info.pid)


async def paired(app: goapps.RunningApp, interval: float, slow: bool, pairs: int) -> dict[str, Any]:
    async with Loaded(app, interval, slow) as ld:
        t0 = time.monotonic()
        off, on, cpu_on = [], [], []
        for _ in range(pairs):
            await asyncio.to_thread(ld.trace, False)
            off.append(await asyncio.to_thread(window, app))
            await asyncio.to_thread(ld.trace, True)
            c0, w0 = time.process_time(), time.monotonic()
            on.append(await asyncio.to_thread(window, app))
            cpu_on.append((time.process_time() - c0) / (time.monotonic() - w0))
        stats = (prog_stats(ld.sr.prog.bpf), prog_stats(ld.gr.prog.bpf))
        elapsed = time.monotonic() - t0
    return {"off": off, "on": on, "cpu": cpu_on, "stats": stats, "elapsed": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5, help="untraced/traced window pairs per configuration")
    ap.add_argument("--interval", type=float, default=2.0, help="receivers' collection interval (s)")
    ap.add_argument("--toolchain", default="go1.27")
    args = ap.parse_args()
    old_stats = STATS.read_text().strip()
    STATS.write_text("1")
    app = goapps.start("runtime", "-pingpong", toolchain=args.toolchain)
    try:
        pure = [window(app), window(app)]
        res = {slow: asyncio.run(paired(app, args.interval, slow, args.pairs)) for slow in (False, True)}
        pure += [window(app), window(app)]
    finally:
        app.stop()
        STATS.write_text(old_stats)
    base = statistics.mean(pure)
    print(f"fixture: runtime -pingpong ({args.toolchain}); {os.cpu_count()} CPUs shared with other work; "
          f"3 s windows; receivers collect every {args.interval:.0f} s")
    print(f"round trips/s, no BPF loaded: {', '.join(f'{x:,.0f}' for x in pure)}  (mean {base:,.0f})")
    for slow, label in ((False, "sched (slow_syscalls: false) + go_runtime"), (True, "sched (all) + go_runtime")):
        r = res[slow]
        ratios = [b / a for a, b in zip(r["off"], r["on"], strict=True) if a == a and b == b and a > 0]
        print(f"{label}:")
        print("  untraced/traced pairs: " + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(r['off'], r['on'], strict=True)))
        if ratios:
            print(f"  rate drop, traced vs untraced in the same pair: median {100 * (1 - statistics.median(ratios)):.1f}% "
                  f"(pairs {', '.join(f'{100 * (1 - x):.0f}%' for x in ratios)})   (goal < 5%)")
        print(f"  rate drop, traced vs no BPF loaded: {100 * (1 - statistics.mean(r['on']) / base):.1f}%")
        print(f"  agent CPU while traced: {', '.join(f'{100 * c:.2f}%' for c in r['cpu'])} of one core   (goal < 3%)")
        bpf_ns = sum(ns for progs in r["stats"] for ns, _ in progs.values())
        runs = sum(cnt for progs in r["stats"] for _, cnt in progs.values())
        print(f"  BPF run time, as the kernel counts it: {bpf_ns / 1e6 / r['elapsed']:.0f} ms per second "
              f"({100 * bpf_ns / 1e9 / r['elapsed']:.1f}% of one core) for {runs / r['elapsed']:,.0f} program "
              f"runs/s (half the windows untraced)")
        print("  BPF programs, kernel-counted (cumulative over this configuration):")
        for lab, progs in zip(("sched", "go_runtime"), r["stats"], strict=True):
            for name, (ns, cnt) in sorted(progs.items()):
                if cnt:
                    print(f"    {lab:10s} {name:40s} {cnt:>10,d} runs  {ns / cnt:8.0f} ns/run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
