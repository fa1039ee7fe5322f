"""Benchmark: spans through otlp receiver -> batch -> otlp exporter, against the sink fed directly.

Three OS processes, as in production: a load generator (an OTLP/gRPC client sending pre-encoded
512-span requests with a bounded number in flight), the pipeline process (pinned to one core), and an
OTLP/gRPC sink that parses every request and counts spans. The baseline is the same load generator
feeding the sink directly, measured in the same run. Prints spans/s, the ratio to the baseline and the
pipeline process's spans per CPU-second (utime+stime of all its threads from /proc/PID/stat).

With --storage (the default: both), the same pipeline also runs with the exporter's sending queue on
disk (`sending_queue.storage: file_storage`, SQLite in WAL mode, fsync off) and its throughput is
printed as a ratio to the in-memory queue of the same run.

The `batch` step is gotel's batch processor (collector defaults: 8192 spans / 200 ms) when it is
installed, else a minimal stand-in with the same behaviour; the output says which. Receiver, batch
and exporter are wired by hand here, not by the pipeline graph.

    .venv/bin/python bench/pipeline/run.py [--spans N] [--compression none|gzip] [--storage memory|file|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import struct
import sys
import tempfile
import time
from typing import Any

SPANS_PER_REQUEST = 512
IN_FLIGHT = 8
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def build_requests(n_distinct: int) -> list[bytes]:
    """Spans shaped like gotel's eBPF HTTP server spans (ids, times, ~8 attributes, resource attributes)."""
    from gotel.pdata.batch import Traces, attrs

    out = []
    for r in range(n_distinct):
        b = Traces()
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs({
            "service.name": "checkout", "process.pid": 4242 + r, "k8s.pod.name": f"checkout-7d9f-{r}",
            "k8s.namespace.name": "shop", "host.name": "node-1", "process.runtime.version": "go1.22.5",
        }))
        ss = rs.scope_spans.add()
        ss.scope.name = "gotel.go_ebpf"
        for i in range(SPANS_PER_REQUEST):
            s = ss.spans.add()
            s.trace_id = struct.pack(">QQ", r + 1, i + 1)
            s.span_id = struct.pack(">Q", (r << 20) + i + 1)
            s.parent_span_id = struct.pack(">Q", i + 7)
            s.name = "GET /api/cart/{id}"
            s.kind = 2
            s.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
            s.end_time_unix_nano = s.start_time_unix_nano + 1_250_000
            s.attributes.extend(attrs({
                "http.request.method": "GET", "http.route": "/api/cart/{id}", "url.path": f"/api/cart/{i}",
                "http.response.status_code": 200, "server.address": "checkout", "server.port": 8080,
                "network.protocol.version": "1.1", "client.address": "10.0.3.17",
            }))
            s.status.code = 1
        out.append(b.to_bytes())
    return out


# --- sink process ------------------------------------------------------------------------------------


def sink_main(port_q: Any, count: Any) -> None:
    _pin(1)
    import grpc
    import grpc.aio
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    async def main() -> None:
        async def export(req: bytes, ctx: Any) -> bytes:
            m = ExportTraceServiceRequest.FromString(req)  # a real backend decodes everything
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


# --- load generator process --------------------------------------------------------------------------


def loadgen_main(target: str, total_requests: int, go: Any, result_q: Any) -> None:
    _pin(1)
    import grpc
    import grpc.aio

    reqs = build_requests(16)

    async def main() -> None:
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            call = ch.unary_unary(TRACE_METHOD)
            await call(reqs[0], timeout=30)  # connect (and warm up) before the clock starts; 512 spans
            go.wait()
            t0 = time.perf_counter()
            sent = 1
            retries = 0

            async def worker() -> None:
                nonlocal sent, retries
                while sent < total_requests:
                    i = sent
                    sent += 1
                    while True:
                        try:
                            await call(reqs[i % len(reqs)], timeout=60)
                            break
                        except grpc.aio.AioRpcError as e:  # UNAVAILABLE (refused): retry, as an SDK would
                            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                                raise
                            retries += 1
                            await asyncio.sleep(0.05)

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            result_q.put((t0, time.perf_counter(), retries))

    asyncio.run(main())


# --- pipeline process --------------------------------------------------------------------------------


class MiniBatch:
    """Minimal batch step: accumulate up to send_batch_size spans or `timeout`, then merge and forward."""

    mutates = False

    def __init__(self, nxt: Any, send_batch_size: int = 8192, timeout: float = 0.2) -> None:
        self.nxt = nxt
        self.size = send_batch_size
        self.timeout = timeout
        self.buf: list[Any] = []
        self.n = 0
        self._timer: asyncio.TimerHandle | None = None

    async def consume(self, batch: Any) -> None:
        self.buf.append(batch)
        self.n += batch.item_count()
        if self.n >= self.size:
            await self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.timeout, lambda: loop.create_task(self.flush()))

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        await self.flush()

    async def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.buf:
            return
        buf, self.buf, self.n = self.buf, [], 0
        await self.nxt.consume(type(buf[0]).concat(buf))


def pipeline_main(
    sink_port: int, compression: str, listen: str, port_q: Any, stop: Any, profile: str | None,
    storage_dir: str | None = None,
) -> None:
    _pin(0)
    from gotel.component.contract import ComponentID, Context, Kind
    from gotel.exporters import otlp as otlp_exp
    from gotel.pdata.batch import Signal
    from gotel.receivers import otlp as otlp_rcv
    from gotel.telemetry.counters import Telemetry

    logging.basicConfig(level=logging.WARNING)
    tel = Telemetry()

    def ctx(cid: str, kind: Kind) -> Context:
        return Context(ComponentID.parse(cid), kind, logging.getLogger(cid), tel.component(cid, kind))

    async def main() -> None:
        queue: dict[str, Any] = {"block_on_overflow": True}
        ectx = ctx("otlp", Kind.EXPORTER)
        ext = None
        if storage_dir:
            from gotel.extensions import file_storage

            ext = file_storage.factory.create(file_storage.Config(directory=storage_dir),
                                              ctx("file_storage", Kind.EXTENSION))
            await ext.start()
            ectx.extras["extensions"] = {ComponentID("file_storage"): ext}
            queue["storage"] = "file_storage"
        ecfg = otlp_exp.Config(endpoint=f"127.0.0.1:{sink_port}", tls={"insecure": True}, compression=compression,
                               sending_queue=queue)
        exp = otlp_exp.factory.create(Signal.TRACES, ecfg, ectx)
        await exp.start()
        label = "batch processor"
        try:
            from gotel.processors import batch as batch_proc
        except ImportError:
            batch: Any = MiniBatch(exp)
            label = "minimal batch stand-in"
        else:
            batch = batch_proc.factory.create(Signal.TRACES, batch_proc.Config(), exp, ctx("batch", Kind.PROCESSOR))
        await batch.start()
        rcfg = otlp_rcv.Config.model_validate({"protocols": {"grpc": {"endpoint": listen,
                                                                       "max_recv_msg_size_mib": 64}}})
        rcv = otlp_rcv.factory.create(rcfg, {Signal.TRACES: batch}, ctx("otlp", Kind.RECEIVER))
        await rcv.start()
        port_q.put((rcv.grpc_port, label))  # type: ignore[attr-defined]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await rcv.shutdown()
        await batch.shutdown()
        await exp.shutdown()
        if ext is not None:
            await ext.shutdown()

    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(main())", globals(), {"asyncio": asyncio, "main": main}, profile)
    else:
        asyncio.run(main())


# --- orchestration -----------------------------------------------------------------------------------


def run_once(
    total_requests: int, via_pipeline: bool, compression: str, profile: str | None = None, unix: str | None = None,
    storage: bool = False,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    count = ctx.Value("q", 0)
    q = ctx.Queue()
    sink = ctx.Process(target=sink_main, args=(q, count), daemon=True)
    sink.start()
    sink_port = q.get(timeout=30)
    pipe = None
    stop = ctx.Event()
    target = f"127.0.0.1:{sink_port}"
    label = ""
    storage_dir: str | None = None
    if via_pipeline:
        listen = f"unix://{unix}" if unix else "127.0.0.1:0"
        storage_dir = tempfile.mkdtemp(prefix="gotel-bench-queue-") if storage else None
        pipe = ctx.Process(target=pipeline_main, args=(sink_port, compression, listen, q, stop, profile, storage_dir),
                           daemon=True)
        pipe.start()
        port, label = q.get(timeout=30)
        target = f"unix:{unix}" if unix else f"127.0.0.1:{port}"
    go = ctx.Event()
    res = ctx.Queue()
    gen = ctx.Process(target=loadgen_main, args=(target, total_requests, go, res), daemon=True)
    gen.start()
    want = total_requests * SPANS_PER_REQUEST
    # wait for the warm-up request to arrive, then start the clock
    while count.value < SPANS_PER_REQUEST:
        time.sleep(0.01)
    time.sleep(0.5)  # let the warm-up batch's timer flush
    warm = count.value
    cpu0 = cpu_seconds(pipe.pid) if pipe and pipe.pid else 0.0
    t_start = time.perf_counter()
    go.set()
    deadline = time.monotonic() + 300
    while count.value < want and time.monotonic() < deadline:
        time.sleep(0.005)
    t_end = time.perf_counter()
    cpu1 = cpu_seconds(pipe.pid) if pipe and pipe.pid else 0.0
    _t0, _t_sent, retries = res.get(timeout=60)
    got = count.value
    stop.set()
    if pipe:
        pipe.join(30)
    gen.join(10)
    for p in (sink, pipe, gen):
        if p and p.is_alive():
            p.terminate()
            p.join(5)
    if storage_dir:
        shutil.rmtree(storage_dir, ignore_errors=True)
    measured = got - warm
    secs = t_end - t_start
    return {
        "spans": measured,
        "expected": want - warm,
        "seconds": secs,
        "spans_per_s": measured / secs,
        "cpu_s": cpu1 - cpu0,
        "retries": retries,
        "batch": label,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=500_000, help="spans per measured run (default 500,000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is reported")
    ap.add_argument("--compression", choices=["none", "gzip", "both"], default="both",
                    help="the pipeline exporter's compression (the otlp exporter's default is gzip)")
    ap.add_argument("--profile", help="write a cProfile of the pipeline process to this file")
    ap.add_argument("--storage", choices=["memory", "file", "both"], default="both",
                    help="the exporter's sending queue: in memory, on disk (file_storage), or both side by side")
    ap.add_argument("--unix", action="store_true",
                    help="load generator -> pipeline over a unix socket (the receiver processes' path) instead of TCP")
    args = ap.parse_args()
    sock = None
    if args.unix:
        sock = os.path.join(tempfile.mkdtemp(prefix="gotel-bench-"), "otlp.sock")
    n_req = max(2, args.spans // SPANS_PER_REQUEST)
    print(f"bench/pipeline: {n_req * SPANS_PER_REQUEST:,} spans per run in requests of {SPANS_PER_REQUEST} "
          f"({len(build_requests(1)[0]) / SPANS_PER_REQUEST:.0f} bytes/span), {IN_FLIGHT} in flight; "
          f"pipeline pinned to CPU 0, load generator and sink to CPU 1; best of {args.rounds} interleaved rounds; "
          f"load generator -> pipeline over {'a unix socket' if sock else 'TCP'}")
    comps = ["none", "gzip"] if args.compression == "both" else [args.compression]
    stores = {"memory": [False], "file": [True], "both": [False, True]}[args.storage]
    configs: list[tuple[str, bool, str, bool]] = [("baseline", False, "none", False)] + [
        (c + ("+file" if st else ""), True, c, st) for c in comps for st in stores]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _, _ in configs}
    for _ in range(args.rounds):
        for name, via, comp, st in configs:
            runs[name].append(run_once(n_req, via, comp, args.profile, sock, storage=st))
    if sock:
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)
    ok = all(r["spans"] == r["expected"] for rs in runs.values() for r in rs)
    base = max(runs["baseline"], key=lambda r: r["spans_per_s"])
    spread = sorted(r["spans_per_s"] for r in runs["baseline"])
    print(f"  baseline  loadgen -> sink directly        {base['spans_per_s']:>10,.0f} spans/s   "
          f"(runs: {', '.join(f'{x:,.0f}' for x in spread)})")
    for name, _via, comp, st in configs[1:]:
        rs = runs[name]
        best = max(rs, key=lambda r: r["spans_per_s"])
        per_cpu = max(r["spans"] / r["cpu_s"] for r in rs if r["cpu_s"])
        spread = sorted(r["spans_per_s"] for r in rs)
        queue = "file_storage" if st else "memory"
        extra = ""
        if st and comp in runs:
            mem = max(r["spans_per_s"] for r in runs[comp])
            extra = f"   ratio to the in-memory queue {best['spans_per_s'] / mem:.2f}"
        print(f"  pipeline  otlp -> {best['batch']} -> otlp ({comp:>4}, queue {queue:>12})  "
              f"{best['spans_per_s']:>10,.0f} spans/s   ratio to baseline {best['spans_per_s'] / base['spans_per_s']:.2f}"
              f"{extra}   {per_cpu:,.0f} spans per pipeline CPU-second   (runs: {', '.join(f'{x:,.0f}' for x in spread)})")
    print("  goal: >= 150,000 spans/s through one pipeline process on one core, ratio >= 0.50; "
          "file_storage >= 0.50 of the in-memory queue" + ("" if ok else "   WARNING: spans went missing"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
