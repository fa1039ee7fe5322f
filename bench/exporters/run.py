"""Exporter throughput: Loki entries/s and remote-write samples/s through one exporter (conversion,
encoding, snappy, queue, HTTP POST) to a loopback sink in another process, next to the raw cost of
serialising the same request with the generated protobuf classes plus snappy, measured in the same run.

Goals (issue 7): >= 100,000 log entries/s to Loki and >= 500,000 samples/s by remote-write on one core.
"per CPU-second" figures divide by this process's CPU time, so the sink's work does not count. The
machine may be shared: each remote-write case runs several rounds and prints the median (and range).

    .venv/bin/python bench/exporters/run.py [--seconds 3] [--rounds 3] [--only loki|rw]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import cramjam

from gotel.component.contract import ComponentID, Context, Kind
from gotel.exporters import loki
from gotel.exporters import prometheus_remote_write as prw
from gotel.pdata.batch import Logs, Metrics, attrs
from gotel.proto import logproto_pb2, remote_write_pb2
from gotel.telemetry.counters import Telemetry
from tests.helpers import metricsdata as md


def _sink(port: int, ready: Any) -> None:
    """A loopback HTTP sink: reads each body, answers 204 (what Loki and Prometheus answer)."""
    from aiohttp import web

    async def ok(req: web.Request) -> web.Response:
        await req.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ctx(name: str) -> Context:
    t = Telemetry()
    return Context(ComponentID.parse(name), Kind.EXPORTER, logging.getLogger(name), t.component(name, Kind.EXPORTER))


def sent(c: Context) -> float:
    """The exporter's sent-items counter, read directly (collect() would cost more than what is measured)."""
    tel = c.telemetry
    sig = "logs" if c.id.type == "loki" else "metrics"
    return float(tel.t.sent.labels(tel.cid, tel.kind, sig)._value.get())


# --- Loki ------------------------------------------------------------------------------------------


def log_batch(resources: int = 4, per: int = 1000) -> Logs:
    b = Logs()
    t0 = time.time_ns() - 60 * 10**9
    for r in range(resources):
        rl = b.msg.resource_logs.add()
        rl.resource.attributes.extend(attrs({"service.name": f"svc-{r}", "k8s.namespace.name": "prod",
                                             "k8s.pod.name": f"svc-{r}-abc", "host.name": "node-1"}))
        sl = rl.scope_logs.add()
        for i in range(per):
            rec = sl.log_records.add(time_unix_nano=t0 + i * 1000, severity_number=9 if i % 10 else 17)  # type: ignore[arg-type]
            rec.body.string_value = f"GET /api/v1/cart/{i} 200 {i % 97}ms user=u{i % 1000} trace sampled"
            rec.attributes.extend(attrs({"http.route": "/api/v1/cart/{id}", "http.response.status_code": 200}))
            rec.trace_id = i.to_bytes(16, "big")
            rec.span_id = i.to_bytes(8, "big")
    return b


def loki_raw(batch: Logs, conv: loki.Converter) -> tuple[float, int]:
    """Baseline: the same PushRequest as generated-class objects, serialised and snappy-compressed."""
    pb = conv.convert(batch)
    msg = logproto_pb2.PushRequest()
    msg.ParseFromString(pb.protobuf())
    n = pb.n
    reps = 0
    t0 = time.process_time()
    while time.process_time() - t0 < 1.5:
        bytes(cramjam.snappy.compress_raw(msg.SerializeToString()))
        reps += 1
    return reps * n / (time.process_time() - t0), n


async def loki_pipeline(url: str, batch: Logs, seconds: float) -> tuple[float, float, int]:
    c = ctx("loki")
    exp = loki.LokiExporter(loki.Config(endpoint=url + "/loki/api/v1/push"), c)
    await exp.start()
    n = batch.item_count()
    sent_target = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await exp.consume(Logs(raw=batch.to_bytes()))  # a fresh batch, parsed on first look, as from a receiver
        sent_target += n
        while sent_target - sent(c) > 8 * n:  # keep the queue short: measure throughput, not queueing
            await asyncio.sleep(0.001)
    while sent(c) < sent_target:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await exp.shutdown()
    return sent_target / wall, sent_target / cpu, sent_target


def loki_convert_only(batch: Logs) -> float:
    conv = loki.Converter(loki.Config(endpoint="http://127.0.0.1:1/loki/api/v1/push"), ctx("loki/c"))
    reps, t0 = 0, time.process_time()
    while time.process_time() - t0 < 1.5:
        pb = conv.convert(Logs(raw=batch.to_bytes()))
        bytes(cramjam.snappy.compress_raw(pb.protobuf()))
        reps += 1
    return reps * batch.item_count() / (time.process_time() - t0)


# --- remote-write ---------------------------------------------------------------------------------


RW_CASES = {
    "counters": "1000 cumulative counters (one sample per point)",
    "delta": "1000 delta counters (accumulated to cumulative)",
    "mixed": "500 counters + 500 gauges + 100 histograms (10 bounds)",
    "histograms": "500 histograms (10 bounds)",
}
_SEQ = itertools.count()
RESOURCE = {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-7"}
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]


def metric_batch(case: str, t: int | None = None, series: int = 500) -> Metrics:
    """One batch as an SDK exports it: the same series every time, new values and timestamps."""
    t = t or time.time_ns()
    start = t - 3600 * 10**9
    k = (t // 10**6 + next(_SEQ)) % 1000  # values move from batch to batch
    pts = [({"rpc.method": f"/svc.S/M{i % 50}", "rpc.grpc.status_code": i % 3, "k8s.pod.name": f"pod-{i // 50}"},
            i * 10 + k) for i in range(2 * series if case in ("counters", "delta") else series)]
    if case == "counters":
        return md.batch(RESOURCE, [md.counter("rpc.server.requests", "{request}", pts, t, start)])
    if case == "delta":
        return md.batch(RESOURCE, [md.counter("rpc.server.requests", "{request}", [(a, 1 + i % 5) for i, (a, _) in enumerate(pts)],
                                              t, t - 10**10, temporality=md.DELTA)])
    hp = [(a, [(i + k) % 7, 3, 5, 8, 13, 21, 8, 5, 3, 1, 0], 123.4) for i, (a, _) in enumerate(pts)]
    if case == "histograms":
        return md.batch(RESOURCE, [md.histogram("rpc.server.duration", "s", BOUNDS, hp, t, start)])
    return md.batch(RESOURCE, [
        md.counter("rpc.server.requests", "{request}", pts, t, start),
        md.gauge("go.goroutines", "{goroutine}", pts, t),
        md.histogram("rpc.server.duration", "s", BOUNDS, hp[: series // 5], t, start),
    ])


def count_samples(exp: prw.RemoteWriteExporter, batch: Metrics) -> tuple[int, list[bytes]]:
    built = exp.build(batch)
    raws = [raw for shard in built.bodies for raw, _ in shard]
    return sum(n for shard in built.bodies for _, n in shard), raws


def prw_raw(raws: list[bytes], samples: int, seconds: float) -> float:
    """Baseline: the same WriteRequests as generated-class objects, serialised and snappy-compressed."""
    msgs = []
    for r in raws:
        m = remote_write_pb2.WriteRequest()
        m.ParseFromString(r)
        msgs.append(m)
    reps, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for m in msgs:
            bytes(cramjam.snappy.compress_raw(m.SerializeToString()))
        reps += 1
    return reps * samples / (time.process_time() - t0)


def batches(case: str, n: int = 30) -> list[bytes]:
    """Consecutive batches of one SDK (times 15 s apart), built before any clock starts. The runs
    cycle through them, so delta batches all get one time: going back in time at each cycle would
    make every point a late delta (a rare, slower path) instead of an SDK's usual one."""
    base = time.time_ns() - n * 15 * 10**9
    return [metric_batch(case, t=base + (0 if case == "delta" else k * 15 * 10**9)).to_bytes() for k in range(n)]


def prw_convert_only(prebuilt: list[bytes], seconds: float) -> float:
    exp = prw.RemoteWriteExporter(prw.Config(endpoint="http://127.0.0.1:1/api/v1/write"), ctx("prw/c"))
    reps, samples, t0 = 0, 0, time.process_time()
    while time.process_time() - t0 < seconds:
        built = exp.build(Metrics(raw=prebuilt[reps % len(prebuilt)]))
        for shard in built.bodies:
            for raw, n in shard:
                bytes(cramjam.snappy.compress_raw(raw))
                samples += n
        reps += 1
    return samples / (time.process_time() - t0)


async def prw_pipeline(url: str, prebuilt: list[bytes], seconds: float, rounds: int) -> list[tuple[float, float, int]]:
    """[(samples/s wall, samples/CPU-s, samples)] per round, through one exporter (5 shards)."""
    c = ctx("prometheus_remote_write")
    exp = prw.RemoteWriteExporter(prw.Config(endpoint=url + "/api/v1/write"), c)
    await exp.start()
    items = Metrics(raw=prebuilt[0]).item_count()
    samples = exp._samples.fam.labels(*exp._samples.head)
    i = 0
    pending = sent(c)
    out = []
    for _ in range(rounds):
        total0 = samples._value.get()
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await exp.consume(Metrics(raw=prebuilt[i % len(prebuilt)]))  # fresh bytes, as from a receiver
            i += 1
            pending += items
            while pending - sent(c) > 8 * items:  # keep the queue short: measure throughput, not queueing
                await asyncio.sleep(0.001)
        while sent(c) < pending:
            await asyncio.sleep(0.001)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        total = int(samples._value.get() - total0)
        out.append((total / wall, total / cpu, total))
    await exp.shutdown()
    return out


def median_range(xs: list[float]) -> str:
    return f"{statistics.median(xs):12,.0f} (range {min(xs):,.0f}..{max(xs):,.0f})"


def remote_write(url: str, seconds: float, rounds: int) -> None:
    for case, title in RW_CASES.items():
        print(f"== Prometheus remote-write 1.0 (protobuf + block snappy), {title} per batch")
        prebuilt = batches(case)
        exp = prw.RemoteWriteExporter(prw.Config(endpoint=url + "/api/v1/write"), ctx("prw/r"))
        samples, raws = count_samples(exp, Metrics(raw=prebuilt[0]))
        raw_rate = statistics.median(prw_raw(raws, samples, 0.5) for _ in range(rounds))
        conv_rate = statistics.median(prw_convert_only(prebuilt, 0.7) for _ in range(rounds))
        res = asyncio.run(prw_pipeline(url, prebuilt, seconds, rounds))
        walls, cpus = [r[0] for r in res], [r[1] for r in res]
        cpu = statistics.median(cpus)
        print(f"  samples per batch: {samples:,} (from {Metrics(raw=prebuilt[0]).item_count():,} data points); "
              f"{rounds} rounds, medians")
        print(f"  raw serialisation (generated WriteRequest + snappy): {raw_rate:12,.0f} samples/CPU-s")
        print(f"  convert+encode+snappy only (no network):             {conv_rate:12,.0f} samples/CPU-s "
              f"({conv_rate / raw_rate:.2f}x raw)")
        print(f"  exporter -> loopback sink, per CPU-second:           {median_range(cpus)} samples/CPU-s "
              f"({cpu / raw_rate:.2f}x raw)")
        print(f"  exporter -> loopback sink, wall-clock:               {median_range(walls)} samples/s "
              f"({sum(r[2] for r in res):,} samples)")
        print(f"  goal 500,000 samples/s on one core: {'met' if cpu >= 500_000 else 'NOT met'}")


def loki_bench(url: str, seconds: float) -> None:
    print("== Loki (push API, protobuf + block snappy), 4 streams x 1000 entries per batch")
    batch = log_batch()
    raw_rate, _n = loki_raw(batch, loki.Converter(loki.Config(endpoint=url + "/loki/api/v1/push"), ctx("loki/r")))
    conv_rate = loki_convert_only(batch)
    wall_rate, cpu_rate, total = asyncio.run(loki_pipeline(url, batch, seconds))
    print(f"  raw serialisation (generated PushRequest + snappy): {raw_rate:12,.0f} entries/CPU-s")
    print(f"  convert+encode+snappy only (no network):            {conv_rate:12,.0f} entries/CPU-s "
          f"({conv_rate / raw_rate:.2f}x raw)")
    print(f"  exporter -> loopback sink:                          {cpu_rate:12,.0f} entries/CPU-s, "
          f"{wall_rate:,.0f}/s wall ({total:,} entries; {cpu_rate / raw_rate:.2f}x raw)")
    print(f"  goal 100,000 entries/s on one core: {'met' if cpu_rate >= 100_000 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("loki", "rw"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    port = free_port()
    ready = mp.Event()
    sink = mp.Process(target=_sink, args=(port, ready), daemon=True)
    sink.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{port}"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; rates are per CPU-second of this "
          "process (the sink runs in another process), wall-clock rates next to them")
    try:
        if args.only != "rw":
            loki_bench(url, args.seconds * args.rounds)
        if args.only != "loki":
            remote_write(url, args.seconds, args.rounds)
    finally:
        sink.terminate()
        sink.join(5)


if __name__ == "__main__":
    main()
