"""go_ebpf cost per request with RED metrics in the kernel and sampling at the source (issue 20), one run.

    .venv/bin/python bench/go_ebpf/sampling.py [--calls 20000] [--grpc v1.33] [--sides both|server]
        [--compression gzip|none] [--without PROBE_ID ...]

Phases, one after another against one fixture gRPC server (8 concurrent callers, unary, 2 cores):
untraced, traced with sampling 100 %, traced with sampling 1 %, untraced again (the baseline is the mean of
the two untraced phases: this VM's speed drifts). For each, the CPU each process spends per call (server,
client, agent = this process, which runs the receiver and its OTLP exporter; the OTLP sink is another
process), and for traced phases the BPF time per call from kernel.bpf_stats_enabled (bpftool prog show:
run_time_ns / calls). `--sides both` traces the client process too (two processes per call: the case
sampling must keep consistent); `server` traces only the server. Ratios only; nothing fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.go_ebpf.run import _STATS, Phase, SinkProcess, proc_cpu, prog_stats, saturate
from gotel.component.contract import ComponentID, Context, Kind
from gotel.exporters import otlp as otlp_exp
from gotel.host.memory import receiver_gc
from gotel.pdata.batch import Signal
from gotel.receivers.go_ebpf import Config, factory, probes
from gotel.telemetry.counters import Telemetry
from tests.helpers import goapps


async def traced_phase(binary: str, target: str, srv_pid: int, sink: SinkProcess, fraction: float, n: int,
                       both: bool, compression: str = "gzip") -> tuple[Phase, float, int, tuple[int, int]]:
    """(the phase, BPF us per call, spans exported, (kept, dropped) by sampling)."""
    tel = Telemetry()

    def ctx(name: str, kind: Kind) -> Context:
        return Context(ComponentID(name), kind, logging.getLogger(name), tel.component(name, kind))

    ecfg = otlp_exp.Config.model_validate({"endpoint": sink.address, "tls": {"insecure": True},
                                           "compression": compression})
    exp = otlp_exp.factory.create(Signal.TRACES, ecfg, ctx("otlp", Kind.EXPORTER))
    mexp = otlp_exp.factory.create(Signal.METRICS, ecfg, ctx("otlp/m", Kind.EXPORTER))
    await exp.start()
    await mexp.start()
    disc = {"exe_paths": [binary]} if both else {"pids": [srv_pid]}
    r = factory.create(Config.model_validate({"discovery": disc, "sampling": {"fraction": fraction}}),
                       {Signal.TRACES: exp, Signal.METRICS: mexp}, ctx("go_ebpf", Kind.RECEIVER))
    await r.start()
    while srv_pid not in r.attached_pids:
        await asyncio.sleep(0.05)
    names = {s.fn_name for s in r.targets._binaries[next(iter(r.targets._binaries))].sites}
    spans0 = sink.span_count()
    # the client: attached before it execs (trace_pid), outside the measured window, so that the agent's
    # figure is its cost per request and not the one-off analysis and attach of a new process
    gate = Path(tempfile.mkdtemp(prefix="gotel-bench-")) / "go"
    os.mkfifo(gate)  # a blocking read, not a polling loop: the wait costs the client's figure nothing
    script = f'read x < {gate}; exec "$0" "$@"'
    argv = ["sh", "-c", script, binary, "client", "-target", target, "-n", str(n), "-concurrency", "8", "-quiet"]
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if both:
        await asyncio.to_thread(r.trace_pid, client.pid, binary)
    # the agent's CPU with nothing to trace (its timers, discovery of the node's other processes): a cost
    # per second, not per request, charged below to the requests of the phase as well
    await asyncio.sleep(0.5)
    i0, iw = time.process_time(), time.monotonic()
    await asyncio.sleep(2.0)
    idle = (time.process_time() - i0) / (time.monotonic() - iw)
    old = _STATS.read_text().strip()
    _STATS.write_text("1")
    st0 = prog_stats(names)
    cpu0, srv0, w0 = time.process_time(), proc_cpu(srv_pid), time.monotonic()
    with open(gate, "w") as g:
        g.write("go\n")
    out, _ = await asyncio.to_thread(client.communicate, None, 600)
    wall = time.monotonic() - w0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    agent_during = time.process_time() - cpu0  # while the calls were made (the kept spans' backlog follows)
    gate.unlink()
    gate.parent.rmdir()
    summary = json.loads(out.strip().splitlines()[-1])
    kept = r.sampled()[0] if r.sampled()[0] else n * (2 if both else 1)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # every kept span out (the stitch window, the agent's backlog)
        got = sink.span_count() - spans0
        if got + r.program.lost_counts()[0] >= kept:
            break
        await asyncio.sleep(0.2)
    agent_cpu = time.process_time() - cpu0
    st1 = prog_stats(names)  # after the agent's figure: bpftool's fork is not the agent's work
    _STATS.write_text(old)
    ph = Phase(float(summary["calls_per_s"]), {
        "server": (proc_cpu(srv_pid) - srv0) / n * 1e6,
        "client": (ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime) / n * 1e6,
        "agent": agent_cpu / n * 1e6})
    per_prog = {k: (st1[k][0] - st0.get(k, (0, 0))[0], st1[k][1] - st0.get(k, (0, 0))[1]) for k in st1}
    sampled = r.sampled()
    lost = r.program.lost_counts()[0]
    await r.shutdown()
    await exp.shutdown()
    await mexp.shutdown()
    bpf_ns = sum(t for _, t in per_prog.values())
    print(f"  sampling {fraction:.0%}: agent CPU while the calls were made {agent_during / n * 1e6:.2f} us per "
          f"request ({(agent_during - idle * wall) / n * 1e6:.2f} us above its idle {idle:.2%} of a core over the "
          f"{wall:.2f} s); with the backlog until the last kept span is out {agent_cpu / n * 1e6:.2f} us; "
          f"ring-buffer losses {lost:,}", flush=True)
    print(f"  sampling {fraction:.0%}: BPF runs per call and ns per run, by program: " + ", ".join(
        f"{k} {c / n:.2f}x{t / max(c, 1):.0f}" for k, (c, t) in sorted(per_prog.items()) if c), flush=True)
    return ph, bpf_ns / n / 1000, sink.span_count() - spans0, sampled


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--toolchain", default="go1.27")
    ap.add_argument("--grpc", default=goapps.DEBIAN_GRPC, help=f"known: {', '.join(goapps.grpc_versions())}")
    ap.add_argument("--sides", default="both", choices=["both", "server"])
    ap.add_argument("--gc", choices=["receiver", "default"], default="receiver",
                    help="Python's collector as a receiver process sets it (gotel.host.memory.receiver_gc), "
                    "or Python's defaults (an A/B in one checkout)")
    ap.add_argument("--compression", default="gzip", choices=["gzip", "none"],
                    help="the OTLP exporter's compression (gRPC gzip is zlib's default level)")
    ap.add_argument("--without", action="append", default=[], metavar="PROBE_ID",
                    help="leave a probe out of every plan (ids as `gotel inspect` names them, e.g. "
                    "grpc.server.operate_headers, runtime.newproc1): what its hits cost, and the feature it carries")
    args = ap.parse_args()
    if args.without:
        unknown = set(args.without) - {p.id for p in probes.PROBES}
        if unknown:
            ap.error(f"--without: no such probe: {', '.join(sorted(unknown))}")
        probes.PROBES[:] = [p for p in probes.PROBES if p.id not in args.without]
    if args.gc == "receiver":
        receiver_gc()
    app = goapps.grpc_app(args.grpc)
    binary = str(goapps.build(app, args.toolchain))
    srv = goapps.start(app, "server", toolchain=args.toolchain)
    target = f"127.0.0.1:{srv.ports['grpc']}"
    sink = SinkProcess()
    both = args.sides == "both"
    try:
        saturate(binary, target, 2000)  # warm-up
        u1 = saturate(binary, target, args.calls, {"server": srv.pid})
        full = await traced_phase(binary, target, srv.pid, sink, 1.0, args.calls, both, args.compression)
        one = await traced_phase(binary, target, srv.pid, sink, 0.01, args.calls, both, args.compression)
        u2 = saturate(binary, target, args.calls, {"server": srv.pid})
    finally:
        srv.stop()
        sink.stop()
    base = {k: (u1.cpu_us[k] + u2.cpu_us[k]) / 2 for k in u1.cpu_us}
    base["agent"] = 0.0
    base_total = sum(base.values())
    print(f"grpc-go {args.grpc} ({args.toolchain}), {args.calls:,} unary calls per phase, 8 callers, traced: "
          f"{'server and client processes' if both else 'server process'}; collector thresholds "
          f"{gc.get_threshold()} ({args.gc}); OTLP compression {args.compression}"
          + (f"; probes left out: {', '.join(args.without)}" if args.without else ""))
    print(f"untraced: {u1.rate:,.0f} calls/s before, {u2.rate:,.0f} after")
    print("CPU per call (us)            server   client    agent    total   x untraced   calls/s")
    print(f"  untraced (mean)           {base['server']:7.1f}  {base['client']:7.1f}  {0.0:7.1f}  {base_total:7.1f}"
          f"        1.00")
    for label, (ph, _, _, _) in (("traced, sampling 100%", full), ("traced, sampling 1%", one)):
        tot = sum(ph.cpu_us.get(k, 0.0) for k in ("server", "client", "agent"))
        print(f"  {label:<24}  {ph.cpu_us['server']:7.1f}  {ph.cpu_us['client']:7.1f}  {ph.cpu_us['agent']:7.1f}  "
              f"{tot:7.1f}  {tot / base_total:10.2f}  {ph.rate:8,.0f}")
    for label, (ph, bpf_us, spans, (kept, dropped)) in (("100%", full), ("1%", one)):
        per_span = ph.cpu_us["agent"] * args.calls / max(spans, 1)
        decided = kept + dropped
        frac = f"{kept / decided:.2%} of {decided:,} call ends kept" if decided else "every call kept (no sampling)"
        print(f"sampling {label}: spans exported {spans:,} ({frac}); agent {ph.cpu_us['agent']:.2f} us per "
              f"request, {per_span:.2f} us per span; BPF {bpf_us:.2f} us per call (all probes of "
              f"{'both processes' if both else 'the server'})")
    print("goals: 1% sampling: agent <= 1 us/request, traced total <= 1.15x untraced; 100%: agent <= 5 us/span; "
          "BPF <= 2.5 us/call")


if __name__ == "__main__":
    asyncio.run(main())
