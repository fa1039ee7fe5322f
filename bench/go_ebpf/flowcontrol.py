"""What the flow-control probes (issue 19) add to go_ebpf's cost per traced call: the same saturation run with
`flow_control: false` and `flow_control: true`, alternating in one run (off, on, on, off, ...), server AND
client traced (the per-call additions are on the client side).

    .venv/bin/python bench/go_ebpf/flowcontrol.py [--calls 20000] [--rounds 3] [--grpc v1.33] [--toolchain go1.27]

Per arm: BPF run time per call (bpf_stats, every go_ebpf program this process holds), CPU per call of the
server + client (/proc, rusage: uprobe traps and BPF count as their system time) + the agent (its process
time: spans and metrics built, exported to a sink that drops them), and throughput. Printed: medians and the
ratio on / off. Never fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.go_ebpf.run import _STATS, Phase, prog_stats, saturate
from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal
from gotel.receivers.go_ebpf import Config, factory
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps

PER_PROG: dict[tuple[bool, str], list[float]] = {}  # (flow on, program) -> ns per run, per phase


class _Drop:
    mutates = False

    async def consume(self, batch: Any) -> None:
        pass


def traced_saturate(r: Any, binary: str, target: str, n: int, pids: dict[str, int]) -> Phase:
    """run.saturate, with the client registered before its exec (discovery would attach it a few ms late, and
    attaching to a process in the middle of its calls sometimes fails: docs/go_ebpf.md, Limits)."""
    import resource
    import subprocess
    import tempfile

    from bench.go_ebpf.run import proc_cpu
    from tests.integration.go_ebpf.test_grpc import _find_pid

    gate = Path(tempfile.mkdtemp(prefix="gotel-flowbench-")) / "go"
    before = {k: proc_cpu(p) for k, p in pids.items()}
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    script = f'while [ ! -e {gate} ]; do sleep 0.002; done; exec "$0" "$@"'
    proc = subprocess.Popen(["sh", "-c", script, binary, "client", "-target", target, "-n", str(n),
                             "-concurrency", "8", "-quiet"], stdout=subprocess.PIPE, text=True)
    try:
        r.trace_pid(_find_pid(str(gate)), binary)
        gate.touch()
        out, _ = proc.communicate(timeout=300)
    finally:
        gate.unlink(missing_ok=True)
        gate.parent.rmdir()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {k: (proc_cpu(p) - before[k]) / n * 1e6 for k, p in pids.items()}
    cpu["client"] = (ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime) / n * 1e6
    last = [x for x in out.splitlines() if "calls_per_s" in x][-1]
    return Phase(float(json.loads(last)["calls_per_s"]), cpu)


async def phase(binary: str, srv: goapps.RunningApp, calls: int, flow: bool) -> dict[str, float]:
    tel = Telemetry()
    ctx = Context(ComponentID("go_ebpf"), Kind.RECEIVER, logging.getLogger("go_ebpf"),
                  tel.component("go_ebpf", Kind.RECEIVER))
    cfg = Config.model_validate({"discovery": {"pids": [srv.pid]}, "flow_control": flow})
    r = factory.create(cfg, {Signal.TRACES: _Drop(), Signal.METRICS: _Drop()}, ctx)
    await r.start()
    try:
        while srv.pid not in r.attached_pids:
            await asyncio.sleep(0.05)
        target = f"127.0.0.1:{srv.ports['grpc']}"
        names = {s.fn_name for b in r.targets._binaries.values() for s in b.sites}
        old = _STATS.read_text().strip()
        _STATS.write_text("1")
        s0, c0 = prog_stats(names), time.process_time()
        ph = await asyncio.to_thread(traced_saturate, r, binary, target, calls, {"server": srv.pid})
        s1 = prog_stats(names)
        _STATS.write_text(old)
        runs = sum(c for c, _ in s1.values()) - sum(c for c, _ in s0.values())
        ns = sum(t for _, t in s1.values()) - sum(t for _, t in s0.values())
        await asyncio.sleep(1.0)  # the last records drained and turned into spans
        agent = (time.process_time() - c0) / calls * 1e6
        for n in ("grpc_client_start", "grpc_client_attempt"):
            c = s1.get(n, (0, 0))[0] - s0.get(n, (0, 0))[0]
            t = s1.get(n, (0, 0))[1] - s0.get(n, (0, 0))[1]
            PER_PROG.setdefault((flow, n), []).append(t / c if c else 0.0)
        return {"rate": ph.rate, "bpf_us": ns / calls / 1e3, "runs": runs / calls,
                "cpu_us": ph.cpu_us["server"] + ph.cpu_us["client"] + agent, "agent_us": agent,
                "traced_us": ph.cpu_us["server"] + ph.cpu_us["client"]}
    finally:
        await r.shutdown()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grpc", default=goapps.DEBIAN_GRPC)
    ap.add_argument("--toolchain", default="go1.27")
    args = ap.parse_args()
    app = goapps.grpc_app(args.grpc)
    binary = str(goapps.build(app, args.toolchain))
    srv = goapps.start(app, "server", toolchain=args.toolchain)
    res: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        await asyncio.to_thread(saturate, binary, f"127.0.0.1:{srv.ports['grpc']}", 2000)  # warm-up
        for i in range(args.rounds):
            for flow in ((False, True) if i % 2 == 0 else (True, False)):
                p = await phase(binary, srv, args.calls, flow)
                res[flow].append(p)
                print(f"round {i + 1} flow_control={'on ' if flow else 'off'}: {p['rate']:,.0f} calls/s, BPF "
                      f"{p['bpf_us']:.2f} us/call ({p['runs']:.2f} runs), CPU server+client {p['traced_us']:.1f} "
                      f"+ agent {p['agent_us']:.1f} = {p['cpu_us']:.1f} us/call", flush=True)
    finally:
        srv.stop()
    print(f"== grpc-go {args.grpc} ({args.toolchain}), {args.calls} unary calls x {args.rounds} rounds per arm, "
          "server and client traced: medians ==")
    print(f"{'figure':<34} {'off':>9} {'on':>9} {'on/off':>8}")
    for key, label in (("bpf_us", "BPF time per call (us)"), ("runs", "BPF program runs per call"),
                       ("traced_us", "server+client CPU per call (us)"), ("agent_us", "agent CPU per call (us)"),
                       ("cpu_us", "total CPU per call (us)"), ("rate", "throughput (calls/s)")):
        off = statistics.median(p[key] for p in res[False])
        on = statistics.median(p[key] for p in res[True])
        print(f"{label:<34} {off:>9.2f} {on:>9.2f} {on / off if off else float('nan'):>8.3f}")
    for n in ("grpc_client_start", "grpc_client_attempt"):  # the two programs that do more per call
        off = statistics.median(PER_PROG.get((False, n), [0.0]))
        on = statistics.median(PER_PROG.get((True, n), [0.0]))
        print(f"{n + ' (ns per run)':<34} {off:>9.0f} {on:>9.0f} {on / off if off else float('nan'):>8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
