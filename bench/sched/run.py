"""Cost of the sched and go_runtime receivers on a Go program doing 100k context switches per second.

The runtime fixture bounces a byte between two thread-locked goroutines over pipes and prints every second
how many reads were woken ("switches": each is one voluntary context switch of a ping-pong thread). Two
fixtures, one after the other, in one run:
  * paced: `-pingpong-rate 100000`, the issue's load. While the rate holds, tracing cannot show up as a rate
    drop, so the real cost is the fixture's own CPU time per switch (its threads' schedstat run time);
  * unpaced: `-pingpong`, as fast as the machine allows (each switch also costs 2 syscalls): the worst case,
    where every BPF nanosecond is a rate drop.
For each: windows with no BPF loaded (before and after), then per configuration the receivers are loaded
once and the fixture's tracing toggled (untraced/traced window pairs, 3 s each) so that drift on this shared
machine hits both sides of a pair alike. Reported per window pair: the fixture's rate as it counts it, the
kernel's count of its threads' context switches (/proc/PID/task/*/status), the fixture's CPU ns per switch,
the agent's CPU (this process: the receivers' collection and ring-buffer drains; goal < 3% of one core), and
the per-run cost of every BPF program as the kernel counts it (kernel.bpf_stats_enabled, restored after the
run; run_time_ns / run_cnt, read with bpftool by program id) separately for traced and untraced windows.
Never fails on time. Usage: .venv/bin/python bench/sched/run.py [--pairs 3] [--rate 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
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

from gotel.pdata.batch import Signal  # noqa: E402
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


@dataclasses.dataclass
class Window:
    rate: float  # switches/s as the fixture counts them
    kernel: float  # context switches/s of the fixture's threads, as the kernel counts them
    cpu_ns: float  # fixture CPU ns per switch (its count)
    agent: float  # this process's CPU, fraction of one core


def task_counters(pid: int) -> tuple[int, int]:
    """(context switches, run time ns) summed over the process's threads."""
    sw = run = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            run += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # a thread that just exited
            continue
        sw += sum(int(line.split()[1]) for line in status.splitlines()
                  if line.split(":")[0] in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    return sw, run


def window(app: goapps.RunningApp, records: int = 3) -> Window:
    """The next `records` one-second reports, the first (partial) one dropped; kernel counters alongside."""
    start = len(app.records())
    deadline = time.monotonic() + records + 5
    while not [r for r in app.records()[start:] if r.get("event") == "pingpong"] and time.monotonic() < deadline:
        app.records(timeout=0.2)
    first = next(r for r in app.records()[start:] if r.get("event") == "pingpong")
    (k0, r0), c0, w0 = task_counters(app.pid), time.process_time(), time.monotonic()
    while len(app.records(timeout=0.5)) - start < records and time.monotonic() < deadline:
        pass
    (k1, r1), c1, w1 = task_counters(app.pid), time.process_time(), time.monotonic()
    recs = [r for r in app.records()[start:] if r.get("event") == "pingpong"]
    if len(recs) < 2:
        return Window(*(float("nan"),) * 4)
    n = recs[-1]["total"] - first["total"]
    return Window(rate=statistics.mean(r["switches_per_s"] for r in recs[1:]), kernel=(k1 - k0) / (w1 - w0),
                  cpu_ns=(r1 - r0) / n if n else float("nan"), agent=(c1 - c0) / (w1 - w0))


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

    def stats(self) -> dict[str, tuple[int, int]]:
        """'receiver/program' -> cumulative (run_time_ns, run_cnt)."""
        return {f"{lab}/{k}": v for lab, r in (("sched", self.sr), ("go_runtime", self.gr))
                for k, v in prog_stats(r.prog.bpf).items()}


def add_delta(acc: dict[str, list[int]], a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> None:
    for k, (ns, cnt) in b.items():
        ns0, cnt0 = a.get(k, (0, 0))
        acc.setdefault(k, [0, 0])
        acc[k][0] += ns - ns0
        acc[k][1] += cnt - cnt0


async def paired(app: goapps.RunningApp, interval: float, slow: bool, pairs: int) -> dict[str, Any]:
    async with Loaded(app, interval, slow) as ld:
        off: list[Window] = []
        on: list[Window] = []
        progs: dict[bool, dict[str, list[int]]] = {False: {}, True: {}}
        secs = {False: 0.0, True: 0.0}
        for _ in range(pairs):
            for traced, out in ((False, off), (True, on)):
                await asyncio.to_thread(ld.trace, traced)
                s0, t0 = await asyncio.to_thread(ld.stats), time.monotonic()
                out.append(await asyncio.to_thread(window, app))
                secs[traced] += time.monotonic() - t0
                add_delta(progs[traced], s0, await asyncio.to_thread(ld.stats))
    return {"off": off, "on": on, "progs": progs, "secs": secs}


async def never_traced(app: goapps.RunningApp, interval: float) -> tuple[dict[str, list[int]], float]:
    """Programs' cost for tasks never traced (what the rest of a node pays): sched (with syscalls) loaded,
    tracing only this process, while the fixture runs. The untraced windows above are not that: the
    fixture's threads were traced before, and their 'maybe traced' filter entries stay set (bpf/sched.c)."""
    r = sched.SchedReceiver(sched.Config(discovery={"pids": [os.getpid()]}, collection_interval=interval,
                                         slow_syscalls=True), sinks(Signal.METRICS, Signal.LOGS), make_ctx("sched"))
    await r.start()
    try:
        s0, t0 = await asyncio.to_thread(prog_stats, r.prog.bpf), time.monotonic()
        await asyncio.to_thread(window, app)
        secs = time.monotonic() - t0
        acc: dict[str, list[int]] = {}
        add_delta(acc, s0, await asyncio.to_thread(prog_stats, r.prog.bpf))
    finally:
        await r.shutdown()
    return acc, secs


def nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.mean(xs) if xs else float("nan")


def report(title: str, pure: list[Window], res: dict[bool, dict[str, Any]],
           never: tuple[dict[str, list[int]], float]) -> None:
    base = nanmean([w.rate for w in pure])
    base_cpu = nanmean([w.cpu_ns for w in pure])
    print(f"\n== {title}")
    print(f"no BPF loaded: switches/s {', '.join(f'{w.rate:,.0f}' for w in pure)} (mean {base:,.0f}); kernel-counted "
          f"{nanmean([w.kernel for w in pure]):,.0f}/s; fixture CPU {base_cpu:,.0f} ns/switch")
    for slow, label in ((False, "sched (slow_syscalls: false) + go_runtime"), (True, "sched (all) + go_runtime")):
        r = res[slow]
        print(f"{label}:")
        print("  switches/s untraced/traced: " + ", ".join(f"{a.rate:,.0f}/{b.rate:,.0f}"
                                                       for a, b in zip(r["off"], r["on"], strict=True)))
        print("  kernel-counted switches/s untraced/traced: " + ", ".join(
            f"{a.kernel:,.0f}/{b.kernel:,.0f}" for a, b in zip(r["off"], r["on"], strict=True)))
        ratios = [b.rate / a.rate for a, b in zip(r["off"], r["on"], strict=True) if a.rate > 0 and b.rate == b.rate]
        if ratios:
            print(f"  rate drop, traced vs untraced in the same pair: median {100 * (1 - statistics.median(ratios)):.1f}% "
                  f"(pairs {', '.join(f'{100 * (1 - x):.1f}%' for x in ratios)})   (goal < 5%)")
        print(f"  rate drop, traced vs no BPF loaded: {100 * (1 - nanmean([w.rate for w in r['on']]) / base):.1f}%")
        c_off, c_on = nanmean([w.cpu_ns for w in r["off"]]), nanmean([w.cpu_ns for w in r["on"]])
        print(f"  fixture CPU per switch: untraced {c_off:,.0f} ns, traced {c_on:,.0f} ns (+{c_on - c_off:,.0f} ns, "
              f"{100 * (c_on / c_off - 1):+.0f}%), no BPF {base_cpu:,.0f} ns")
        print(f"  agent CPU while traced: {', '.join(f'{100 * w.agent:.2f}%' for w in r['on'])} of one core   (goal < 3%)")
        for traced in (True, False):
            progs, secs = r["progs"][traced], r["secs"][traced]
            ns_all = sum(v[0] for v in progs.values())
            print(f"  BPF programs, kernel-counted, {'traced' if traced else 'untraced'} windows: "
                  f"{ns_all / 1e6 / secs:.0f} ms/s ({100 * ns_all / 1e9 / secs:.1f}% of one core)")
            for name, (ns, cnt) in sorted(progs.items()):
                if cnt:
                    print(f"    {name:45s} {cnt / secs:>10,.{0 if cnt > 10 * secs else 1}f} runs/s  {ns / cnt:6.0f} ns/run")
    progs, secs = never
    print("sched (all) loaded, the fixture never traced (the cost every other task on the node pays):")
    for name, (ns, cnt) in sorted(progs.items()):
        if cnt > secs * 1000:
            print(f"    sched/{name:39s} {cnt / secs:>10,.0f} runs/s  {ns / cnt:6.0f} ns/run")


def measure(app: goapps.RunningApp, args: argparse.Namespace) -> tuple[Any, ...]:
    pure = [window(app), window(app)]
    res = {slow: asyncio.run(paired(app, args.interval, slow, args.pairs)) for slow in (False, True)}
    pure += [window(app), window(app)]
    return pure, res, asyncio.run(never_traced(app, args.interval))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3, help="untraced/traced window pairs per configuration")
    ap.add_argument("--interval", type=float, default=2.0, help="receivers' collection interval (s)")
    ap.add_argument("--rate", type=int, default=100_000, help="paced fixture's target switches/s")
    ap.add_argument("--toolchain", default="go1.27")
    args = ap.parse_args()
    old_stats = STATS.read_text().strip()
    STATS.write_text("1")
    out = []
    try:
        for title, flags in ((f"paced: runtime -pingpong-rate {args.rate} (the issue's load)",
                              ("-pingpong-rate", str(args.rate))),
                             ("unpaced: runtime -pingpong, saturated (worst case: every BPF ns is a rate drop)",
                              ("-pingpong",))):
            app = goapps.start("runtime", *flags, toolchain=args.toolchain)
            try:
                out.append((title, *measure(app, args)))
            finally:
                app.stop()
    finally:
        STATS.write_text(old_stats)
    print(f"{args.toolchain} fixture; {os.cpu_count()} CPUs shared with other work; 3 s windows; receivers collect "
          f"every {args.interval:.0f} s; a switch = one ping-pong read woken (one voluntary context switch)")
    for title, pure, res, never in out:
        report(title, pure, res, never)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
