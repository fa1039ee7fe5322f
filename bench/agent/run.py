"""Benchmark: the whole agent (`gotel run`) against one receiver process sending straight to the sink.

    receiver process (synthetic, prebuilt)  ──unix socket──►  pipeline process  ──►  OTLP sink
      (router → batch → otlp exporter)
    baseline: the same receiver process (`gotel receiver`) ──TCP──► OTLP sink

Both runs use the real commands and the same synthetic receiver at an unreachable target rate
(it sends as fast as back-pressure lets it). The pipeline process is pinned to CPU 0, everything
else to CPU 1. Prints spans/s delivered to the sink, the ratio to the baseline, and spans per
pipeline CPU-second. Never fails on time.

    .venv/bin/python bench/agent/run.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOTEL = str(Path(sys.executable).with_name("gotel"))


def pin(pid: int, cpu: int) -> None:
    """All threads of a process (sched_setaffinity on a pid covers one thread only)."""
    cpus = {cpu % (os.cpu_count() or 1)}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


def sink_main(port_q: Any, count: Any) -> None:
    """An OTLP/gRPC trace sink that decodes every request, as a backend would."""
    import grpc.aio
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    pin(os.getpid(), 1)

    async def main() -> None:
        async def export(req: bytes, ctx: Any) -> bytes:
            m = ExportTraceServiceRequest.FromString(req)
            n = sum(len(ss.spans) for rs in m.resource_spans for ss in rs.scope_spans)
            with count.get_lock():
                count.value += n
            return b""

        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_q.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


CONFIG = """
receivers:
  synthetic:
    spans_per_second: 5000000
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    batch_size: 512
    prebuilt: true
processors:
  batch:
exporters:
  otlp:
    endpoint: http://127.0.0.1:{port}
    compression: none
service:
  telemetry: {{metrics: {{address: "127.0.0.1:0"}}}}
  pipelines:
    traces: {{receivers: [synthetic], processors: [batch], exporters: [otlp]}}
"""


def measure(count: Any, seconds: float, pipeline_pid: int | None) -> tuple[float, float]:
    time.sleep(2.0)  # warm-up: start-up, first connections
    c0, t0 = count.value, time.monotonic()
    cpu0 = cpu_seconds(pipeline_pid) if pipeline_pid else 0.0
    time.sleep(seconds)
    c1, t1 = count.value, time.monotonic()
    cpu1 = cpu_seconds(pipeline_pid) if pipeline_pid else 0.0
    rate = (c1 - c0) / (t1 - t0)
    per_cpu = (c1 - c0) / (cpu1 - cpu0) if pipeline_pid and cpu1 > cpu0 else 0.0
    return rate, per_cpu


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def run_baseline(cfg: Path, port: int, count: Any, seconds: float) -> float:
    p = subprocess.Popen([GOTEL, "--log-level", "warning", "receiver", "synthetic", "-c", str(cfg),
                          "--endpoint", f"http://127.0.0.1:{port}", "--compression", "none"])
    try:
        time.sleep(0.5)
        pin(p.pid, 1)
        rate, _ = measure(count, seconds, None)
    finally:
        stop(p)
    return rate


def run_agent(cfg: Path, count: Any, seconds: float) -> tuple[float, float]:
    p = subprocess.Popen([GOTEL, "--log-level", "warning", "run", "-c", str(cfg)])
    try:
        end = time.monotonic() + 20
        kids: list[int] = []
        while time.monotonic() < end and not kids:
            time.sleep(0.1)
            kids = children(p.pid)
        pin(p.pid, 0)
        for k in kids:
            pin(k, 1)
        return measure(count, seconds, p.pid)
    finally:
        stop(p)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    count = ctx.Value("q", 0)
    port_q = ctx.Queue()
    sink = ctx.Process(target=sink_main, args=(port_q, count), daemon=True)
    sink.start()
    port = port_q.get(timeout=30)
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "agent.yaml"
        cfg.write_text(CONFIG.format(port=port))
        print(f"bench/agent: synthetic receiver process (prebuilt 512-span requests, as fast as it can) -> sink; "
              f"{args.seconds:.0f} s windows after 2 s warm-up; pipeline on CPU 0, the rest on CPU 1")
        base = run_baseline(cfg, port, count, args.seconds)
        print(f"  baseline  gotel receiver -> sink (TCP)                          {base:>10,.0f} spans/s")
        rate, per_cpu = run_agent(cfg, count, args.seconds)
        ratio = rate / base if base else 0.0
        print(f"  agent     receiver -> unix socket -> pipeline (router, batch, otlp) -> sink "
              f"{rate:>10,.0f} spans/s   ratio {ratio:.2f}   {per_cpu:,.0f} spans per pipeline CPU-second")
    sink.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
