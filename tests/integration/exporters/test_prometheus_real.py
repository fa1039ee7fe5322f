"""A real Prometheus (Debian's) scrapes gotel's `prometheus` exporter and receives its remote-write;
its query API must show the series, labels and values a user would look for."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from gotel.exporters import prometheus as prom
from gotel.exporters import prometheus_remote_write as prw
from tests.helpers import metricsdata as md
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.prometheus_server import Prometheus, free_port

pytestmark = pytest.mark.slow

RES = {"service.name": "checkout", "service.namespace": "shop", "service.instance.id": "pod-7",
       "k8s.pod.name": "checkout-7", "host.name": "node-1"}
BOUNDS = [0.1, 0.5, 1.0]
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN = bytes.fromhex("00f067aa0ba902b7")


def expected_quantile(q: float, bounds: list[float], deltas: list[int]) -> float:
    """Prometheus' histogram_quantile over bucket increases (linear interpolation in the bucket)."""
    total = sum(deltas)
    rank = q * total
    cum = 0.0
    lower = 0.0
    for b, d in zip(bounds, deltas, strict=False):
        if cum + d >= rank:
            return lower + (b - lower) * (rank - cum) / d
        cum += d
        lower = b
    return bounds[-1]


@pytest.fixture
def ports() -> Iterator[int]:
    yield free_port()


def _value(res: list[dict[str, object]]) -> float:
    assert len(res) == 1, res
    return float(res[0]["value"][1])  # type: ignore[index]


def _scrape(port: int, accept: str) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


async def test_prometheus_scrapes_counters_gauges_histograms(ports: int) -> None:
    port = ports
    ctx = make_ctx("prometheus")
    exp = prom.PrometheusExporter(prom.Config(endpoint=f"127.0.0.1:{port}", const_labels={"cluster": "c1"}), ctx)
    await exp.start()
    server = Prometheus(scrape_targets=[f"127.0.0.1:{port}"])
    try:
        await asyncio.to_thread(server.start)
        t0 = time.time_ns()
        base = [1000, 1000, 1000, 1000]
        deltas = [20, 30, 45, 5]

        def state(counts: list[int], requests: int, inflight: float) -> md.Metrics:
            now = time.time_ns()
            return md.batch(RES, [
                md.counter("rpc.server.requests", "{request}", [({"rpc.method": "/shop.Cart/Add", "rpc.grpc.status_code": 0}, requests)], now, t0),
                md.gauge("rpc.server.inflight", "{request}", [({"rpc.method": "/shop.Cart/Add"}, inflight)], now),
                md.histogram("rpc.server.duration", "s", BOUNDS, [({"rpc.method": "/shop.Cart/Add"}, counts, 0.3 * sum(counts))],
                             now, t0, exemplar=(0.3, TRACE, SPAN)),
            ])

        await exp.consume(state(base, 100, 3))
        # Two scrapes of the first state, then the second state.
        counter = 'rpc_server_requests_total{job="shop/checkout",instance="pod-7",rpc_method="/shop.Cart/Add"}'
        await asyncio.to_thread(server.wait_query, counter, lambda r: len(r) == 1 and float(r[0]["value"][1]) == 100)
        await asyncio.sleep(2.5)
        await exp.consume(state([b + d for b, d in zip(base, deltas, strict=True)], 250, 7))
        res = await asyncio.to_thread(server.wait_query, counter, lambda r: r and float(r[0]["value"][1]) == 250)
        labels = res[0]["metric"]
        assert labels == {
            "__name__": "rpc_server_requests_total", "job": "shop/checkout", "instance": "pod-7",
            "rpc_method": "/shop.Cart/Add", "rpc_grpc_status_code": "0", "cluster": "c1",
            "otel_scope_name": "gotel.test", "otel_scope_version": "1.0",
        }
        assert _value(server.query('rpc_server_inflight{job="shop/checkout"}')) == 7
        # target_info carries the other resource attributes, once per job/instance.
        ti = server.query('target_info{job="shop/checkout"}')
        assert len(ti) == 1 and ti[0]["metric"]["k8s_pod_name"] == "checkout-7" and ti[0]["metric"]["host_name"] == "node-1"
        await asyncio.sleep(2.5)  # a few scrapes of the second state
        q = await asyncio.to_thread(
            server.wait_query,
            'histogram_quantile(0.9, rate(rpc_server_duration_seconds_bucket{job="shop/checkout"}[1m]))',
            lambda r: len(r) == 1 and r[0]["value"][1] not in ("NaN",) and float(r[0]["value"][1]) > 0)
        assert float(q[0]["value"][1]) == pytest.approx(expected_quantile(0.9, BOUNDS, deltas), rel=1e-6)
        assert _value(server.query('rpc_server_duration_seconds_count{job="shop/checkout"}')) == sum(base) + sum(deltas)
        le = {r["metric"]["le"]: float(r["value"][1]) for r in server.query("rpc_server_duration_seconds_bucket")}
        assert le == {"0.1": 1020, "0.5": 2050, "1.0": 3095, "+Inf": 4100}
        # Prometheus 2.x asks for OpenMetrics first: the exemplar (trace id) reached its exemplar storage.
        assert metric_value(ctx, "gotel_prometheus_exporter_scrapes_total", format="openmetrics") > 0
        ex = server.api("/api/v1/query_exemplars", query="rpc_server_duration_seconds_bucket",
                        start=str(t0 / 1e9 - 60), end=str(time.time() + 60))
        got = {e["labels"]["trace_id"] for s in ex for e in s["exemplars"]}
        assert TRACE.hex() in got
        health = server.targets_health()
        assert health[0]["health"] == "up", health
    finally:
        await asyncio.to_thread(server.stop)
        await exp.shutdown()


async def test_text_and_openmetrics_negotiation(ports: int) -> None:
    exp = prom.PrometheusExporter(prom.Config(endpoint=f"127.0.0.1:{ports}"), make_ctx("prometheus/neg"))
    await exp.start()
    try:
        now = time.time_ns()
        await exp.consume(md.batch(RES, [
            md.counter("http.server.requests", "", [({"http.route": "/cart"}, 5)], now, now - 10**9),
            md.histogram("http.server.request.duration", "ms", [10, 100], [({}, [1, 2, 3], 400.0)], now, now - 10**9,
                         exemplar=(50.0, TRACE, SPAN)),
        ]))
        ct, body = await asyncio.to_thread(_scrape, ports, "text/plain")
        assert ct == "text/plain; version=0.0.4; charset=utf-8"
        fams = {f.name: f for f in text_parse(body)}
        assert "# EOF" not in body and "trace_id" not in body
        s = [x for x in fams["http_server_requests"].samples if x.name == "http_server_requests_total"]
        assert s[0].value == 5 and s[0].labels["http_route"] == "/cart"
        ct, body = await asyncio.to_thread(
            _scrape, ports, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        assert ct == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert body.endswith("# EOF\n")
        fams = {f.name: f for f in om_parse(body)}  # the strict OpenMetrics parser accepts it
        h = fams["http_server_request_duration_milliseconds"]
        assert h.unit == "milliseconds"
        buckets = {x.labels["le"]: x for x in h.samples if x.name.endswith("_bucket")}
        assert buckets["100.0"].exemplar is not None
        assert buckets["100.0"].exemplar.labels["trace_id"] == TRACE.hex()
        assert fams["target"].type == "info"
        # q=0 refuses OpenMetrics.
        ct, _ = await asyncio.to_thread(_scrape, ports, "application/openmetrics-text;q=0,text/plain")
        assert ct.startswith("text/plain; version=0.0.4")
    finally:
        await exp.shutdown()


async def test_remote_write_into_real_prometheus() -> None:
    server = Prometheus()
    ctx = make_ctx("prometheus_remote_write")
    try:
        await asyncio.to_thread(server.start)
        exp = prw.RemoteWriteExporter(
            prw.Config(endpoint=server.url + "/api/v1/write", namespace="rw", external_labels={"cluster": "c1"},
                       remote_write_queue=prw.RemoteWriteQueue(num_consumers=3)), ctx)
        await exp.start()
        now = time.time_ns()
        t1, t2 = now - 20 * 10**9, now - 10 * 10**9
        base = [1000, 1000, 1000, 1000]
        deltas = [20, 30, 45, 5]
        series = [{"rpc.method": f"/svc.S/M{i}"} for i in range(20)]

        def batch(t: int, counts: list[int], delta_req: int, g: float) -> md.Metrics:
            return md.batch(RES, [
                # delta temporality: the exporter must accumulate it into a cumulative counter
                md.counter("rpc.server.requests", "{request}", [(a, delta_req) for a in series], t, t - 10**10,
                           temporality=md.DELTA),
                md.gauge("go.goroutines", "{goroutine}", [({}, g)], t),
                md.histogram("rpc.server.duration", "s", BOUNDS, [({"rpc.method": "/svc.S/M0"}, counts, 1.5)], t, t1),
            ])

        await exp.consume(batch(t1, base, 3, 10))
        await exp.consume(batch(t2, [b + d for b, d in zip(base, deltas, strict=True)], 4, 12))
        res = await asyncio.to_thread(server.wait_query, 'rw_rpc_server_requests_total{job="shop/checkout"}',
                                      lambda r: len(r) == 20 and all(float(x["value"][1]) == 7 for x in r))
        assert {x["metric"]["rpc_method"] for x in res} == {a["rpc.method"] for a in series}
        assert res[0]["metric"]["cluster"] == "c1" and res[0]["metric"]["instance"] == "pod-7"
        # both samples arrived, in order (Prometheus rejects out-of-order samples with 400)
        rng = server.query('rw_rpc_server_requests_total{rpc_method="/svc.S/M0"}[5m]')
        assert [float(v) for _, v in rng[0]["values"]] == [3.0, 7.0]
        assert _value(server.query('rw_go_goroutines{job="shop/checkout"}')) == 12
        q = server.query('histogram_quantile(0.9, rate(rw_rpc_server_duration_seconds_bucket[1m]))')
        assert float(q[0]["value"][1]) == pytest.approx(expected_quantile(0.9, BOUNDS, deltas), rel=1e-6)
        ti = server.query('target_info{job="shop/checkout"}')
        assert ti and ti[0]["metric"]["k8s_pod_name"] == "checkout-7"
        await exp.shutdown()  # Prometheus answers queries before its reply reaches the exporter, which counts then
        assert metric_value(ctx, "gotel_dropped_items_total") == 0
        assert metric_value(ctx, "gotel_exporter_sent_items_total") == 2 * (20 + 1 + 1)
    finally:
        await asyncio.to_thread(server.stop)
