"""gotel's `otlp` and `otlp_http` exporters deliver all four signals to the real OpenTelemetry Collector
(tests/peers/otelcol, v0.161.0): its `file` exporter writes what its `otlp` receiver accepted, and every
request gotel sent is found there unchanged. Profiles pass through the collector's alpha profiles
pipeline, switched on by its feature gate `service.profilesSupport`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.exporters import otlp_http as otlp_http_exp
from gotel.formats.profconv import pprof_to_otlp
from gotel.pdata.batch import Batch, Profiles, Signal, attr_dict
from tests.helpers import otlp_samples, pprofkit
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.otelcol import Collector, items, sink_config

pytestmark = pytest.mark.slow


def batches(signal: Signal) -> list[Batch]:
    """Several requests per signal, each distinct, so that a lost, duplicated or altered one shows."""
    if signal is Signal.TRACES:
        return [otlp_samples.traces(40, start=i * 40, service=f"svc-{i}") for i in range(5)]
    if signal is Signal.METRICS:
        return [otlp_samples.metrics(n) for n in (1, 3, 7)]
    if signal is Signal.LOGS:
        return [otlp_samples.logs(n) for n in (1, 4, 9)]
    out: list[Batch] = []
    for i in range(2):
        b = otlp_samples.profiles()
        b.msg.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].values[0] = 1000 * (i + 1)
        out.append(b)
    # a heap profile as the pprof receiver builds it: four sample types, labels, frames, resource attributes
    heap = pprofkit.make_profile(pprofkit.HEAP_TYPES, [
        (["runtime.malg", "main.startLeak", "main.main"], [3, 300, 1, 100]),
        (["encoding/json.Marshal", "main.handler"], [40, 4096, 2, 256]),
        (["bytes.growSlice", "main.handler"], [7, 7000, 7, 7000]),
    ], labels=[{"worker": "a"}, {"worker": "b"}], period=("space", "bytes", 524288))
    out.append(Profiles(pprof_to_otlp(heap, {"service.name": "shop", "process.pid": 77, "host.arch": "amd64"})))
    return out


EXPORTERS: dict[str, tuple[Any, Callable[[int, int], dict[str, Any]]]] = {
    "otlp-gzip": (otlp_exp, lambda g, h: {"endpoint": f"127.0.0.1:{g}", "tls": {"insecure": True}}),
    "otlp-none": (otlp_exp, lambda g, h: {"endpoint": f"http://127.0.0.1:{g}", "compression": "none"}),
    "otlp_http-proto-gzip": (otlp_http_exp, lambda g, h: {"endpoint": f"http://127.0.0.1:{h}"}),
    "otlp_http-json-none": (otlp_http_exp, lambda g, h: {"endpoint": f"http://127.0.0.1:{h}", "encoding": "json",
                                                         "compression": "none"}),
}


@pytest.mark.parametrize("variant", sorted(EXPORTERS))
async def test_gotel_exporter_delivers_every_signal_to_the_collector(
        variant: str, otelcol: Callable[..., Collector]) -> None:
    cfg, grpc_port, http_port = sink_config()
    col = otelcol(cfg)
    module, make_cfg = EXPORTERS[variant]
    ecfg = module.Config.model_validate({**make_cfg(grpc_port, http_port), "retry_on_failure": {"enabled": False}})
    sent: dict[Signal, list[Batch]] = {}
    ctxs = {}
    for signal in Signal:
        ctx = ctxs[signal] = make_ctx(f"{module.factory.type}/{signal.value}")
        exp = module.factory.create(signal, ecfg, ctx)
        await exp.start()
        sent[signal] = batches(signal)
        try:
            for b in sent[signal]:
                await exp.consume(b.copy())
        finally:
            await exp.shutdown()
    for signal in Signal:
        n_items = sum(b.item_count() for b in sent[signal])
        assert metric_value(ctxs[signal], "gotel_exporter_sent_items_total") == n_items, signal
        assert metric_value(ctxs[signal], "gotel_dropped_items_total") == 0, signal
        want = [b.peek() for b in sent[signal]]
        n = len(want)
        got = col.wait_requests(signal, lambda reqs, n=n: len(reqs) >= n)
        # without a batch step in between, each request gotel sent is one line of the file
        assert len(got) == len(want), signal
        assert items(signal, got) == items(signal, want), f"{signal}: what the collector wrote differs from what gotel sent"


@pytest.mark.parametrize("variant", ["otlp-gzip", "otlp_http-proto-gzip"])
async def test_gotel_exporter_headers_reach_the_collector(variant: str, otelcol: Callable[..., Collector]) -> None:
    """`headers` arrive as the request's client metadata: the collector's attributes processor copies
    them into the spans (from_context), so the file shows what the collector saw."""
    cfg, grpc_port, http_port = sink_config((Signal.TRACES,))
    for proto in ("grpc", "http"):
        cfg["receivers"]["otlp"]["protocols"][proto]["include_metadata"] = True
    cfg["processors"] = {"attributes": {"actions": [
        {"key": "tenant", "from_context": "metadata.x-scope-orgid", "action": "insert"},
        {"key": "auth", "from_context": "metadata.authorization", "action": "insert"},
    ]}}
    cfg["service"]["pipelines"]["traces"]["processors"] = ["attributes"]
    col = otelcol(cfg)
    module, make_cfg = EXPORTERS[variant]
    ecfg = module.Config.model_validate({**make_cfg(grpc_port, http_port),
                                         "headers": {"X-Scope-OrgID": "tenant-7", "authorization": "Bearer s3cret"}})
    exp = module.factory.create(Signal.TRACES, ecfg, make_ctx("otlp"))
    await exp.start()
    try:
        await exp.consume(otlp_samples.traces(3))
    finally:
        await exp.shutdown()
    (req,) = col.wait_requests(Signal.TRACES, lambda reqs: len(reqs) >= 1)
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 3
    for s in spans:
        a = attr_dict(s.attributes)
        assert a["tenant"] == "tenant-7" and a["auth"] == "Bearer s3cret", a
