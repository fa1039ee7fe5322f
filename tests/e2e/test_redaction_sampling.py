"""The real `gotel run` with `probabilistic_sampler` and `redaction: {preset: credentials}` between its otlp
receiver and exporter: the backend gets exactly the traces the collector's algorithm keeps at 25 % with
seed 22 (kept iff the seeded FNV-1a bucket is below floor(25 * 163.84)), with their tracestate, and no
credential; the sampler's counters say how many it kept and dropped."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Signal, Traces, attr_dict, kv
from gotel.processors.probabilistic_sampler import fnv32a_seeded
from tests.e2e.agent import Agent, free_port
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.otlp_sink import OTLPGrpcSink

pytestmark = pytest.mark.slow
N = 2000


async def send(port: int, ids: list[bytes]) -> None:
    exp = otlp_exp.factory.create(Signal.TRACES, otlp_exp.Config.model_validate(
        {"endpoint": f"http://127.0.0.1:{port}", "tls": {"insecure": True}}), make_ctx("otlp"))
    await exp.start()
    try:
        for start in range(0, N, 500):
            b = Traces()
            ss = b.msg.resource_spans.add().scope_spans.add()
            for tid in ids[start:start + 500]:
                s = ss.spans.add(name="GET /login", trace_id=tid, span_id=tid[:8])
                s.attributes.extend([kv("url.full", "https://bob:pw@shop.example.com/login?next=/&token=t0p"),
                                     kv("http.request.header.authorization", "Bearer abc.def"),
                                     kv("http.route", "/login")])
            await exp.consume(b)
    finally:
        await exp.shutdown()


def test_gotel_run_samples_like_the_collector_and_masks_credentials(tmp_path: Path, sink: OTLPGrpcSink) -> None:
    port = free_port()
    a = Agent(f"""
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{port}"}}}}}}
processors:
  probabilistic_sampler: {{sampling_percentage: 25, hash_seed: 22}}
  redaction: {{preset: credentials}}
exporters:
  otlp: {{endpoint: "http://{sink.address}", compression: none}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@", interval: 1s}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [probabilistic_sampler, redaction], exporters: [otlp]}}
""", tmp_path).start()
    try:
        a.wait_ready()
        rng = random.Random(22)
        ids = [rng.randbytes(16) for _ in range(N)]
        want = {t for t in ids if fnv32a_seeded(t, 22) & 0x3FFF < int(25 * 163.84)}
        asyncio.run(send(port, ids))
        assert sink.wait_for(lambda r: r.span_count() >= len(want), 20), a.output()
        spans = sink.received.spans()
        assert {s.trace_id for s in spans} == want
        for s in spans:
            assert s.trace_state.startswith("ot=rv:") and s.trace_state.endswith(";th:c")
            assert attr_dict(s.attributes) == {
                "url.full": "https://****@shop.example.com/login?next=/&token=****",
                "http.request.header.authorization": "****", "http.route": "/login"}
        name = "gotel_processor_probabilistic_sampler_count_traces_sampled_total"
        for _ in range(50):
            if a.metric(name, sampled="false") == N - len(want):
                break
            asyncio.run(asyncio.sleep(0.1))
        assert a.metric(name, policy="trace_id_hash", sampled="true") == len(want)
        assert a.metric(name, policy="trace_id_hash", sampled="false") == N - len(want)
    finally:
        a.stop()
