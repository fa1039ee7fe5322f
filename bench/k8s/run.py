"""bench/k8s: memory of the Kubernetes metadata cache and the cost of enrichment per span.

1. Memory: a cluster-wide watch (as a gateway would run it) of 10,000 synthetic pods served by the
   Kubernetes API test server in a child process, measured as Python heap (tracemalloc) and RSS
   against an empty-cache baseline measured the same way in this run; then 3 rounds of churn
   (2,000 pods deleted and 2,000 created) to show memory stays flat.
2. Enrichment: k8s_attributes on Traces batches whose resources carry container.id or process.pid
   (a fake /proc with 1,000 container processes), against a no-op processor on the same batches.
Goals: under 50 MB for 10,000 pods; under 5 us per span.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from gotel.k8s.client import api_client
from gotel.k8s.store import MetadataStore, StoreKey
from gotel.pdata.batch import Signal, Traces, attrs
from tests.helpers.kube_api import KubeAPIServer, make_pod, make_replicaset

N_PODS = 10_000
LAST_APPLIED = json.dumps({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "app", "image": "x" * 40}] * 8}})


def synthetic_pod(i: int, gen: int = 0) -> dict[str, Any]:
    ns = f"team-{i % 50}"
    dep = f"svc-{i % 700}"
    rs = f"{dep}-5d8f{i % 7}c9b7d"
    return make_pod(
        f"{rs}-{gen}x{i:05d}", namespace=ns, node=f"node-{i % 100}", ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        containers=[("app", f"registry.example.com/{ns}/{dep}:1.{i % 40}.0", f"{gen:02x}{i:062x}"),
                    ("sidecar", "envoyproxy/envoy:v1.31.0", f"{gen:02x}{(i + 10**6):062x}")],
        owner=("ReplicaSet", rs),
        labels={"app.kubernetes.io/name": dep, "app.kubernetes.io/version": f"1.{i % 40}.0", "pod-template-hash": "5d8f",
                "team": ns},
        annotations={"kubectl.kubernetes.io/last-applied-configuration": LAST_APPLIED, "prometheus.io/scrape": "true"},
    )


def serve(n: int, conn: Any) -> None:
    with KubeAPIServer(bookmark_interval=5.0) as srv:
        srv.load("replicasets", [make_replicaset(f"svc-{d}-5d8f{k}c9b7d", f"svc-{d}", namespace=f"team-{(d) % 50}")
                                 for d in range(700) for k in range(7)][: min(n, 4900)])
        srv.load("pods", [synthetic_pod(i) for i in range(n)])
        conn.send(srv.port)
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                break
            if cmd[0] == "churn":
                gen, lo, hi = cmd[1], cmd[2], cmd[3]

                def churn(gen: int = gen, lo: int = lo, hi: int = hi) -> None:
                    for i in range(lo, hi):
                        old = synthetic_pod(i, gen - 1)
                        srv._delete("pods", old["metadata"]["namespace"], old["metadata"]["name"])
                        srv._apply("pods", synthetic_pod(i, gen))

                srv.call(churn)
                conn.send("ok")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_store(n: int, churn_rounds: int = 0, trace: bool = True) -> tuple[float, float, float, list[float]]:
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=serve, args=(n, child), daemon=True)
    proc.start()
    port = parent.recv()
    with tempfile.TemporaryDirectory() as d:
        srv = KubeAPIServer()
        srv.port = port
        kc = srv.kubeconfig(os.path.join(d, "kc"))
        api = api_client("kubeConfig", kc)
        from kubernetes import client as kclient

        kclient.CoreV1Api(api), kclient.AppsV1Api(api)  # imports done before measuring
        gc.collect()
        rss0 = rss()
        if trace:
            tracemalloc.start()
        heap0 = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        store = MetadataStore(api, StoreKey(api.configuration.host, "bench"), delete_grace=0.5, watch_timeout=60)
        from gotel.k8s.store import Needs

        store.require(Needs(replicasets=True))
        store.start()
        assert store.wait_synced(120), store.last_error()
        sync_s = time.perf_counter() - t0
        assert len(store.pods) == n, len(store.pods)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap0
        rss_d = rss() - rss0
        after_churn = []
        for r in range(1, churn_rounds + 1):
            parent.send(("churn", r, 0, 2000))
            parent.recv()
            deadline = time.time() + 60
            while time.time() < deadline:
                store.purge()
                if len(store.pods) == n and sum(1 for _ in store.live_pods()) == n:
                    break
                time.sleep(0.2)
            time.sleep(0.6)
            store.purge()
            gc.collect()
            after_churn.append((tracemalloc.get_traced_memory()[0] - heap0) / 1e6 if trace else (rss() - rss0) / 1e6)
        tracemalloc.stop()
        store.stop()
        parent.send("stop")
        proc.join(10)
        return heap / 1e6, rss_d / 1e6, sync_s, after_churn


class Noop:
    mutates = False

    async def consume(self, batch: Any) -> None:
        return None


def make_batches(n_batches: int, resources: int, spans_per: int, key: str, values: list[Any]) -> list[bytes]:
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    out = []
    k = 0
    for _ in range(n_batches):
        b = Traces()
        for _ in range(resources):
            rs = ResourceSpans()
            rs.resource.attributes.extend(attrs({"service.name": "svc", key: values[k % len(values)],
                                                 "telemetry.sdk.language": "go"}))
            k += 1
            rs.scope_spans.append(ScopeSpans(spans=[Span(name="GET /x", trace_id=os.urandom(16), span_id=os.urandom(8),
                                                         start_time_unix_nano=1, end_time_unix_nano=2)
                                                    for _ in range(spans_per)]))
            b.msg.resource_spans.append(rs)
        out.append(b.to_bytes())
    return out


async def time_consumer(consumer: Any, raws: list[bytes], rounds: int, cold: bool = False) -> float:
    best = float("inf")
    for _ in range(rounds):
        if cold:  # every resource seen for the first time: the association rules run
            consumer._memo.clear()
        batches = [Traces.from_bytes(r) for r in raws]
        t0 = time.perf_counter_ns()
        for b in batches:
            b.msg  # noqa: B018 - both sides parse, so the difference is the processor's own work
            await consumer.consume(b)
        best = min(best, time.perf_counter_ns() - t0)
    return best


async def bench_enrichment() -> None:
    from gotel.component.contract import ComponentID, Context, Kind
    from gotel.processors.k8s_attributes import Config, K8sAttributesProcessor
    from gotel.telemetry.counters import Telemetry

    n = 2000
    with tempfile.TemporaryDirectory() as d, KubeAPIServer() as srv:
        srv.load("replicasets", [make_replicaset(f"svc-{x}-5d8f{k}c9b7d", f"svc-{x}", namespace=f"team-{x % 50}")
                                 for x in range(700) for k in range(7)])
        srv.load("pods", [synthetic_pod(i) for i in range(n)])
        # a fake /proc: 1,000 processes, each in one of the pods' containers (cgroupfs shape)
        proc_root = os.path.join(d, "proc")
        pids = list(range(10_000, 11_000))
        for j, pid in enumerate(pids):
            os.makedirs(f"{proc_root}/{pid}")
            pod = synthetic_pod(j)
            cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
            with open(f"{proc_root}/{pid}/cgroup", "w") as f:
                f.write(f"0::/kubepods/burstable/pod{pod['metadata']['uid']}/{cid}\n")
            with open(f"{proc_root}/{pid}/stat", "w") as f:
                f.write(f"{pid} (app) S " + " ".join(["0"] * 18) + " 4242 0\n")
        kc = srv.kubeconfig(os.path.join(d, "kc"))
        cid_ = ComponentID("k8s_attributes")
        ctx = Context(id=cid_, kind=Kind.PROCESSOR, logger=__import__("logging").getLogger("bench"),
                      telemetry=Telemetry().component(cid_, Kind.PROCESSOR))
        cfg = Config.model_validate({"auth_type": "kubeConfig", "kube_config_path": kc, "filter": {"node_from_env_var": ""},
                                     "wait_for_metadata": True, "proc_root": proc_root})
        proc = K8sAttributesProcessor(Signal.TRACES, cfg, Noop(), ctx)  # type: ignore[arg-type]
        await proc.start()
        cids = [synthetic_pod(i)["status"]["containerStatuses"][0]["containerID"].split("://")[1] for i in range(n)]
        print(f"{'association':<14}{'spans/resource':>15}{'no-op ns/span':>15}{'k8s ns/span':>13}{'added ns/span':>15}{'added ns/resource':>19}")
        for key, values in (("container.id", cids), ("process.pid", pids)):
            for spans_per in (1, 10, 100):
                resources = max(1, 1000 // spans_per)
                raws = make_batches(20, resources, spans_per, key, values)
                spans = 20 * resources * spans_per
                await time_consumer(proc, raws, 1)  # warm caches (pid -> cgroup, attribute blobs)
                base = await time_consumer(Noop(), raws, 5)
                enr = await time_consumer(proc, raws, 5)
                added = (enr - base) / spans
                print(f"{key:<14}{spans_per:>15}{base / spans:>15.0f}{enr / spans:>13.0f}{added:>15.0f}{added * spans_per:>19.0f}")
            raws = make_batches(20, 1000, 1, key, values)
            base = await time_consumer(Noop(), raws, 5)
            enr = await time_consumer(proc, raws, 5, cold=True)
            added = (enr - base) / 20000
            print(f"{key:<14}{'1 (first sight)':>15}{base / 20000:>15.0f}{enr / 20000:>13.0f}{added:>15.0f}{added:>19.0f}")
        out = Traces.from_bytes(make_batches(1, 1, 1, "process.pid", pids)[0])
        await proc.consume(out)
        print("example enriched resource:", {a.key: a.value.string_value or a.value.int_value
                                             for a in out.peek().resource_spans[0].resource.attributes})
        await proc.shutdown()


def main() -> None:
    print(f"== metadata cache: cluster-wide list+watch, {N_PODS} pods (2 containers, 4 labels, 2 annotations each)")
    h0, _, _s0, _ = measure_store(0)
    h1, _, _s1, churn = measure_store(N_PODS, churn_rounds=5)
    print("Python heap of live objects (tracemalloc, started just before the store):")
    print(f"  empty cache baseline : {h0:7.2f} MB")
    print(f"  {N_PODS} pods         : {h1:7.2f} MB   -> cache cost {h1 - h0:.2f} MB ({(h1 - h0) * 1e6 / N_PODS:.0f} B/pod), goal < 50 MB")
    print("  after churn rounds (2000 of the pods replaced by new ones each round): "
          + ", ".join(f"{x:.2f}" for x in churn) + " MB")
    _, r0, t0, _ = measure_store(0, trace=False)
    _, r1, t1, rchurn = measure_store(N_PODS, churn_rounds=3, trace=False)
    print("process RSS growth (no tracemalloc; includes allocator arenas kept after the paged list's JSON is freed):")
    print(f"  empty cache baseline : {r0:7.2f} MB   sync {t0:.2f}s")
    print(f"  {N_PODS} pods         : {r1:7.2f} MB   sync {t1:.2f}s   -> {r1 - r0:.2f} MB over baseline")
    print("  after churn rounds: " + ", ".join(f"{x:.2f}" for x in rchurn) + " MB")
    print()
    print("== enrichment cost (k8s_attributes vs a no-op processor on the same parsed batches; best of 5)")
    asyncio.run(bench_enrichment())


if __name__ == "__main__":
    uuid.uuid4()
    main()
