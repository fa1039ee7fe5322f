"""The peer's `span_metrics` connector (which gotel's span_metrics is to be compared with) counts what
it was given: spans sent by gotel's otlp exporter come out of the collector as calls and duration
histograms, one series per span name, with exactly the number of spans of that name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Signal, attr_dict
from tests.helpers import otlp_samples
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.otelcol import Collector
from tests.helpers.prometheus_server import free_port

pytestmark = pytest.mark.slow


def last_points(reqs: list[Any], name: str) -> dict[str, Any]:
    """Cumulative series of metric `name` by span.name: the latest point of each."""
    out: dict[str, Any] = {}
    for req in reqs:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in getattr(m, m.WhichOneof("data")).data_points:
                            out[attr_dict(p.attributes)["span.name"]] = p
    return out


async def test_peer_span_metrics_counts_every_span(otelcol: Callable[..., Collector]) -> None:
    port = free_port()
    col = otelcol({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "connectors": {"span_metrics": {"metrics_flush_interval": "100ms",
                                        "histogram": {"explicit": {"buckets": ["100us", "1ms", "10ms"]}}}},
        "exporters": {"file/metrics": {"path": "metrics.json", "flush_interval": "100ms"}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["span_metrics"]},
                                  "metrics": {"receivers": ["span_metrics"], "exporters": ["file/metrics"]}}},
    }, feature_gates=())
    batches = [otlp_samples.traces(30, start=i * 30) for i in range(4)]
    for b in batches:  # span names repeat: GET /item/{i % 7}
        for rs in b.msg.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    s.name = f"GET /item/{int(s.name.rsplit('/', 1)[1]) % 7}"
    want = Counter(s.name for b in batches for rs in b.peek().resource_spans for ss in rs.scope_spans
                   for s in ss.spans)
    exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
        {"endpoint": f"http://127.0.0.1:{port}"}), make_ctx("otlp"))
    await exp.start()
    try:
        for b in batches:
            await exp.consume(b)
    finally:
        await exp.shutdown()

    def calls(reqs: list[Any]) -> dict[str, int]:
        return {k: int(p.as_int) for k, p in last_points(reqs, "traces.span.metrics.calls").items()}

    reqs = col.wait_requests(Signal.METRICS, lambda r: calls(r) == dict(want), name="metrics")
    hist = last_points(reqs, "traces.span.metrics.duration")
    # every sample span lasts 250 us: one observation each in the (100us, 1ms] bucket
    assert {k: (p.count, list(p.bucket_counts)) for k, p in hist.items()} == \
        {k: (n, [0, n, 0, 0]) for k, n in want.items()}
