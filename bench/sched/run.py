"""Cost of the sched and go_runtime receivers on a Go program doing ~100k context switches per second.

The runtime fixture in -pingpong mode bounces a byte between two thread-locked goroutines over pipes and
prints its round-trip rate every second. Measured in one run, alternating phases (off, on, off, on) so
that the machine's drift hits both sides equally:
  * the fixture's rate with and without the receivers attached (goal: drop < 5%);
  * the agent's CPU (this process: the receivers' collection and ring-buffer drains), goal < 3% of a core;
  * the per-event cost of every BPF program as the kernel counts it (kernel.bpf_stats_enabled, restored
    after the run; run_time_ns / run_cnt per program, read with bpftool by program id).
Never fails on time. Usage: .venv/bin/python bench/sched/run.py [--phase-seconds 6] [--toolchain go1.27]
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


def rate(app: goapps.RunningApp, seconds: float) -> float:
    """Mean round trips per second over the fixture's per-second reports during the window."""
    start = len(app.records())
    time.sleep(seconds)
    recs = [r for r in app.records(timeout=1.5)[start:] if r.get("event") == "pingpong"]
    vals = [r["switches_per_s"] for r in recs[1:]] or [r["switches_per_s"] for r in recs]  # skip a partial second
    return statistics.mean(vals) if vals else float("nan")


async def phase_on(app: goapps.RunningApp, seconds: float, interval: float,
                   slow_syscalls: bool) -> tuple[float, float, Any, Any]:
    s = sinks(Signal.METRICS, Signal.LOGS)
    sr = sched.SchedReceiver(sched.Config(discovery={"pids": [app.pid]}, collection_interval=interval,
                                          slow_syscalls=slow_syscalls), s, make_ctx("sched"))
    gr = go_runtime.GoRuntimeReceiver(go_runtime.Config(discovery={"pids": [app.pid]},
                                                        collection_interval=interval), s, make_ctx("go_runtime"))
    await sr.start()
    await gr.start()
    try:
        await asyncio.sleep(1.0)  # settle after attaching
        cpu0, wall0 = time.process_time(), time.monotonic()
        r = await asyncio.to_thread(rate, app, seconds)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        stats = (prog_stats(sr.prog.bpf), prog_stats(gr.prog.bpf))
        n_points = sum(b.item_count() for b in s[Signal.METRICS].batches)
        return r, cpu, stats, n_points
    finally:
        await gr.shutdown()
        await sr.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase-seconds", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=2.0, help="receivers' collection interval (s)")
    ap.add_argument("--toolchain", default="go1.27")
    args = ap.parse_args()
    old_stats = STATS.read_text().strip()
    STATS.write_text("1")
    app = goapps.start("runtime", "-pingpong", toolchain=args.toolchain)
    try:
        time.sleep(1.5)
        off: list[float] = []
        on: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        stats: list[Any] = []
        for _ in range(2):
            off.append(rate(app, args.phase_seconds))
            for slow in (False, True):
                r, cpu, st, _npts = asyncio.run(phase_on(app, args.phase_seconds, args.interval, slow))
                on[slow].append(r)
                cpus[slow].append(cpu)
                if slow:
                    stats.append(st)
        off.append(rate(app, args.phase_seconds))
    finally:
        app.stop()
        STATS.write_text(old_stats)
    base = statistics.mean(off)
    print(f"fixture: runtime -pingpong ({args.toolchain}), phases of {args.phase_seconds:.0f} s, "
          f"collection every {args.interval:.0f} s, {os.cpu_count()} CPUs shared with other work")
    print(f"round trips/s without receivers: {', '.join(f'{x:,.0f}' for x in off)}  (mean {base:,.0f})")
    for slow, label in ((False, "sched (slow_syscalls: false) + go_runtime"), (True, "sched (all) + go_runtime")):
        w = statistics.mean(on[slow])
        print(f"round trips/s with {label}: {', '.join(f'{x:,.0f}' for x in on[slow])}  (mean {w:,.0f})")
        print(f"  rate drop: {100 * (1 - w / base):.1f}%   (goal < 5%)")
        print(f"  agent CPU: {', '.join(f'{100 * c:.2f}%' for c in cpus[slow])} of one core   (goal < 3%)")
    print("BPF programs, kernel-counted (last 'on' phase, cumulative since load):")
    for label, progs in zip(("sched", "go_runtime"), stats[-1], strict=True):
        for name, (ns, cnt) in sorted(progs.items()):
            if cnt:
                print(f"  {label:10s} {name:42s} {cnt:>10,d} runs  {ns / cnt:8.0f} ns/run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
