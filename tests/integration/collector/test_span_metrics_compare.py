"""gotel's span_metrics against the collector's (v0.161.0) fed the same spans with the same connector
config: the same series (metric names, resource and point attributes), the same counts, sums and
bucket counts, for explicit and exponential histograms, extra dimensions and the cardinality limit."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from gotel.connectors import span_metrics as sm
from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Signal, Traces, attrs, value_of
from gotel.pdata.builders import DELTA
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.otelcol import Collector
from tests.helpers.prometheus_server import free_port

pytestmark = pytest.mark.slow

MS = 1_000_000
# span durations in ns: bucket edges (a bound belongs to its bucket), just past them, zero, beyond the last
DURATIONS = [0, 1, 2 * MS, 2 * MS + 1, 4 * MS, 9_999_999, 10 * MS, 77 * MS, 399 * MS, 1400 * MS,
             15_000 * MS, 20_000 * MS, 3 * MS + 333, 250_000, 123_456_789]
RESOURCES: list[dict[str, Any]] = [
    {"service.name": "checkout", "host.name": "h1", "deployment.environment": "prod"},
    {"service.name": "cart", "host.name": "h2"},
    {"host.name": "h3"},  # no service.name: skipped by both
]


def spans() -> Traces:
    b = Traces()
    n = 0
    for r, res in enumerate(RESOURCES):
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs(res))
        ss = rs.scope_spans.add()
        ss.scope.name = "compare"
        for i in range(60):
            n += 1
            s = ss.spans.add()
            s.trace_id = struct.pack(">QQ", 7, n)
            s.span_id = struct.pack(">Q", n)
            s.name = ["GET /a", "GET /b", "POST /c", f"GET /item/{i % 5}"][(i + r) % 4]
            s.kind = [1, 2, 3][i % 3]
            s.status.code = [0, 1, 2, 0][i % 4]
            s.start_time_unix_nano = 1_700_000_000_000_000_000 + n * 1000
            s.end_time_unix_nano = s.start_time_unix_nano + DURATIONS[(i * 7 + r) % len(DURATIONS)]
            a: dict[str, Any] = {}
            if i % 3:
                a["http.method"] = ["GET", "POST"][i % 2]
            if i % 5 == 0:
                a["http.status_code"] = 200 + (i % 10)
            s.attributes.extend(attrs(a))
            for e in range(i % 3):  # span events, for the events metric
                ev = s.events.add()
                ev.name, ev.time_unix_nano = "exception", s.start_time_unix_nano + e
                ev.attributes.extend(attrs({"exception.type": ["io.EOF", "context.Canceled"][e]}))
    return b


def series(reqs: list[Any]) -> dict[tuple[Any, ...], Any]:
    """The last point of every series: (metric, resource attrs, point attrs) -> what it counts. The
    collector's own collector.instance.id point attribute (a beta feature gate) is left out."""
    out: dict[tuple[Any, ...], Any] = {}
    for req in reqs:
        for rm in req.resource_metrics:
            res = tuple(sorted((kv.key, repr(value_of(kv.value))) for kv in rm.resource.attributes))
            for scm in rm.scope_metrics:
                for m in scm.metrics:
                    kind = m.WhichOneof("data")
                    for p in getattr(m, kind).data_points:
                        key = (m.name, m.unit, kind, res, tuple(sorted(
                            (kv.key, repr(value_of(kv.value))) for kv in p.attributes
                            if kv.key != "collector.instance.id")))
                        delta = getattr(m, kind).aggregation_temporality == DELTA
                        if kind == "sum":
                            prev = out.get(key, (0, 0, 0))[2] if delta else 0  # deltas add up
                            out[key] = (m.sum.is_monotonic, m.sum.aggregation_temporality, prev + p.as_int)
                        elif kind == "histogram":
                            before = out.get(key) if delta else None
                            out[key] = (p.count, round(p.sum, 6), list(p.explicit_bounds), list(p.bucket_counts))
                            if before is not None:
                                out[key] = (before[0] + p.count, round(before[1] + p.sum, 6), list(p.explicit_bounds),
                                            [x + y for x, y in zip(before[3], p.bucket_counts, strict=True)])
                        else:
                            out[key] = (p.count, round(p.sum, 6), p.scale, p.zero_count, p.positive.offset,
                                        list(p.positive.bucket_counts))
    return out


CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "dimensions": {"dimensions": [{"name": "http.method", "default": "GET"}, {"name": "http.status_code"},
                                  {"name": "deployment.environment"}],
                   "exemplars": {"enabled": True},
                   "histogram": {"explicit": {"buckets": ["1ms", "2ms", "10ms", "1s"]}}},
    "split_dimensions": {"calls_dimensions": [{"name": "http.method", "default": "NONE"}],
                         "histogram": {"dimensions": [{"name": "http.status_code"}], "unit": "s"},
                         "namespace": "svc"},
    "exponential": {"histogram": {"exponential": {"max_size": 8}}},
    "exponential_wide": {"histogram": {"exponential": {"max_size": 160}}},
    "cardinality_limit": {"aggregation_cardinality_limit": 4},
    "delta": {"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"},
    "events": {"events": {"enabled": True, "dimensions": [{"name": "exception.type"}]}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
async def test_same_series_as_the_collector(name: str, otelcol: Callable[..., Collector]) -> None:
    conf = {**CONFIGS[name], "metrics_flush_interval": "100ms"}
    port = free_port()
    col = otelcol({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "connectors": {"span_metrics": conf},
        "exporters": {"file/metrics": {"path": "metrics.json", "flush_interval": "100ms"}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["span_metrics"]},
                                  "metrics": {"receivers": ["span_metrics"], "exporters": ["file/metrics"]}}},
    }, feature_gates=())
    exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
        {"endpoint": f"http://127.0.0.1:{port}"}), make_ctx("otlp"))
    await exp.start()
    try:
        await exp.consume(spans())
    finally:
        await exp.shutdown()

    conn = sm.SpanMetrics(sm.Config.model_validate(conf), _Sink(), make_ctx("span_metrics"))
    conn.aggregate(spans())
    req = conn.build()
    assert req is not None
    ours = series([req])
    counted = 120  # the two resources with a service.name, 60 spans each
    calls = "svc.calls" if name == "split_dimensions" else "traces.span.metrics.calls"
    assert sum(v[2] for k, v in ours.items() if k[0] == calls) == counted

    def done(reqs: list[Any]) -> bool:
        got = series(reqs)
        return sum(v[2] for k, v in got.items() if k[0] == calls) == counted

    theirs = series(col.wait_requests(Signal.METRICS, done, name="metrics"))
    print(f"{name}: {len(ours)} series, {len(theirs)} from the collector")
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert ours[k] == theirs[k], k
    if name == "events":
        assert any(k[0] == "traces.span.metrics.events" for k in ours)
    if name == "cardinality_limit":  # 4 series per resource and metric, then the overflow one
        assert sum(("otel.metric.overflow", "True") in k[4] for k in ours) == 4
    if name.startswith("exponential"):
        assert len({v[2] for k, v in ours.items() if k[2] == "exponential_histogram"}) > 1  # scales differ


class _Sink:
    mutates = False

    async def consume(self, batch: Any) -> None:
        return None
