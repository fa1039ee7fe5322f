"""The scrape exporter's state rules as a scraper sees them: delta accumulation, expiry, options."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families as parse

from gotel.exporters import prometheus as prom
from tests.helpers import metricsdata as md
from tests.helpers.exporter_ctx import make_ctx

RES = {"service.name": "api", "service.namespace": "shop", "service.instance.id": "i1", "k8s.pod.name": "p"}


def samples(exp: prom.PrometheusExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = exp.render("")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(body.decode()) for s in f.samples}


async def test_delta_accumulates_and_series_expire() -> None:
    exp = prom.PrometheusExporter(prom.Config(endpoint="127.0.0.1:0", metric_expiration="2s"), make_ctx("prometheus"))
    now = time.time_ns()
    for v in (2, 3):
        await exp.consume(md.batch(RES, [md.counter("jobs.done", "", [({"q": "a"}, v)], now, now, md.DELTA)]))
    got = {k[0]: v for k, v in samples(exp).items()}
    assert got["jobs_done_total"] == 5
    end = time.monotonic() + 15
    while [k for k in samples(exp) if k[0] == "jobs_done_total"]:
        assert time.monotonic() < end, "the series did not expire"
        await asyncio.sleep(0.1)
    assert time.time_ns() - now >= 2 * 10**9  # not before its expiration


async def test_namespace_const_labels_and_resource_conversion() -> None:
    cfg = prom.Config(endpoint="127.0.0.1:0", namespace="gotel", const_labels={"cluster": "c1"},
                      resource_to_telemetry_conversion={"enabled": True}, without_scope_info=True)  # type: ignore[arg-type]
    exp = prom.PrometheusExporter(cfg, make_ctx("prometheus"))
    now = time.time_ns()
    await exp.consume(md.batch(RES, [md.gauge("queue.depth", "{item}", [({}, 4)], now)]))
    (_name, labels), value = next((k, v) for k, v in samples(exp).items() if k[0] == "gotel_queue_depth")
    assert value == 4
    assert dict(labels) == {"cluster": "c1", "instance": "i1", "job": "shop/api", "k8s_pod_name": "p",
                            "service_instance_id": "i1", "service_name": "api", "service_namespace": "shop"}


def test_config_validation() -> None:
    import pytest

    with pytest.raises(ValueError, match="host:port"):
        prom.Config(endpoint="8889")
    with pytest.raises(ValueError, match="const_labels"):
        prom.Config(const_labels={"bad-label": "x"})
    assert prom.Config().endpoint == "127.0.0.1:8889"
