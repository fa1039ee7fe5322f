"""gotel's tail_sampling keeps the same traces as the real collector's (tests/peers/otelcol, v0.161.0).

One collector runs one pipeline per policy set (its `otlp` receiver fans out to all of them, each with its
own tail_sampling and file exporter); the same known traces go to it once over OTLP/HTTP and, in-process,
through gotel's processor with the same config. At SIGTERM the collector decides every pending trace (as
gotel does at shutdown), so no test waits for a clock. Compared per policy set: the same traces kept, with
the same spans. Only deterministic policies: rate_limiting and composite depend on the second they run in
(composite is given a budget it cannot exhaust).
"""

from __future__ import annotations

import logging
import random
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal, Traces
from gotel.processors.tail_sampling import Config, TailSamplingProcessor
from gotel.telemetry.counters import Telemetry
from tests.helpers.memsink import MemorySink
from tests.helpers.otelcol import Collector, sink_config
from tests.helpers.tailtraces import request, spans_of, trace_ids

pytestmark = pytest.mark.slow

POLICY_SETS: dict[str, list[dict[str, Any]]] = yaml.safe_load("""
latency:
  - {name: p, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}}
latency_open:
  - {name: p, type: latency, latency: {threshold_ms: 3000}}
numeric:
  - {name: p, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}}
numeric_min_inverted:
  - {name: p, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, invert_match: true}}
probabilistic:
  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 10}}
probabilistic_salted:
  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 33.3, hash_salt: gotel}}
status:
  - {name: p, type: status_code, status_code: {status_codes: [ERROR, UNSET]}}
string_exact:
  - {name: p, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}
string_regex:
  - {name: p, type: string_attribute, string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true}}
string_inverted_with_sample:
  - {name: a, type: string_attribute, string_attribute: {key: key2, values: [value1], invert_match: true}}
  - {name: b, type: status_code, status_code: {status_codes: [ERROR]}}
boolean:
  - {name: p, type: boolean_attribute, boolean_attribute: {key: key4, value: true}}
span_count:
  - {name: p, type: span_count, span_count: {min_spans: 2, max_spans: 3}}
and:
  - {name: p, type: and, and: {and_sub_policy: [
      {name: n, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
      {name: s, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}]}}
drop_beats_sample:
  - {name: all, type: always_sample}
  - {name: d, type: drop, drop: {drop_sub_policy: [
      {name: h, type: string_attribute, string_attribute: {key: url.path, values: [\\/health, \\/metrics], enabled_regex_matching: true}},
      {name: e, type: status_code, status_code: {status_codes: [OK, UNSET]}}]}}
trace_state:
  - {name: p, type: trace_state, trace_state: {key: key3, values: [value1, value2]}}
trace_flags:
  - {name: p, type: trace_flags}
not_in_drop:
  - {name: all, type: always_sample}
  - {name: d, type: drop, drop: {drop_sub_policy: [
      {name: n, type: not, not: {not_sub_policy: {name: e, type: status_code, status_code: {status_codes: [ERROR]}}}}]}}
not_top:
  - {name: n, type: not, not: {not_sub_policy: {name: s, type: string_attribute, string_attribute: {key: key2, values: [value1]}}}}
composite:
  - {name: c, type: composite, composite: {
      max_total_spans_per_second: 100000000,
      policy_order: [c1, c2],
      composite_sub_policy: [
        {name: c1, type: and, and: {and_sub_policy: [
          {name: n, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50}},
          {name: b, type: boolean_attribute, boolean_attribute: {key: key4, value: false}}]}},
        {name: c2, type: latency, latency: {threshold_ms: 8000}}],
      rate_allocation: [{policy: c1, percent: 50}]}}
""")


def known_traces(n: int = 400) -> dict[int, list[dict[str, Any]]]:
    """Traces with every attribute the policies read, drawn from a fixed seed."""
    rnd = random.Random(17)
    out: dict[int, list[dict[str, Any]]] = {}
    for t in range(n):
        spans = []
        for i in range(rnd.choice([1, 1, 2, 3, 4])):
            attrs: dict[str, Any] = {}
            if rnd.random() < 0.4:
                attrs["key1"] = rnd.choice([rnd.randint(0, 150), float(rnd.randint(40, 110)), str(rnd.randint(40, 110))])
            if rnd.random() < 0.4:
                attrs["key2"] = rnd.choice(["value1", "value2", "valley", "xval", "other", ""])
            if rnd.random() < 0.3:
                attrs["key4"] = rnd.choice([True, False, "true"])
            if rnd.random() < 0.2:
                attrs["url.path"] = rnd.choice(["/health", "/metrics", "/api/v1", "/healthz"])
            res = {"key1": rnd.randint(0, 120)} if rnd.random() < 0.1 else {}
            extra: dict[str, Any] = {}
            if rnd.random() < 0.3:
                extra["trace_state"] = rnd.choice(["key3=value1", "foo=bar,key3=value2", "key3=value3",
                                                   "Key3=value1", "key3=value1,key3=value2", "a=1, key3=value1"])
            if rnd.random() < 0.3:
                extra["flags"] = rnd.choice([0x1, 0x100, 0x101, 0x300])
            spans.append({**extra, "service": rnd.choice(["a", "b", "c"]), "start_ms": rnd.randint(0, 4000) if i else 0,
                          "dur_ms": rnd.choice([1, 50, 2999, 3001, 4999, 5000, 5001, 7000, 9999, 10000, 10001, 12000]),
                          "status": rnd.choice([0, 1, 2]), "attrs": attrs, "res": res})
        out[t] = spans
    return out


async def gotel_kept(policies: list[dict[str, Any]], req: Any) -> list[Any]:
    telemetry = Telemetry()
    cid = ComponentID.parse("tail_sampling")
    ctx = Context(cid, Kind.PROCESSOR, logging.getLogger("test.tail_sampling"),
                  telemetry.component(cid, Kind.PROCESSOR), Signal.TRACES)
    sink = MemorySink()
    cfg = Config.model_validate({"decision_wait": "1s", "policies": policies})
    proc = TailSamplingProcessor(Signal.TRACES, cfg, sink, ctx, clock=lambda: 0.0)
    await proc.consume(Traces(raw=req.SerializeToString()))
    await proc.shutdown()  # decides every pending trace, as the collector does at SIGTERM
    return [b.peek() for b in sink.batches]


async def test_same_traces_kept_as_the_collector(otelcol: Callable[..., Collector]) -> None:
    cfg, _, http_port = sink_config((Signal.TRACES,))
    cfg["processors"] = {f"tail_sampling/{k}": {"decision_wait": "1s", "policies": v} for k, v in POLICY_SETS.items()}
    cfg["exporters"] = {f"file/{k}": {"path": f"{k}.json", "flush_interval": "100ms"} for k in POLICY_SETS}
    cfg["service"]["pipelines"] = {f"traces/{k}": {"receivers": ["otlp"], "processors": [f"tail_sampling/{k}"],
                                                   "exporters": [f"file/{k}"]} for k in POLICY_SETS}
    col = otelcol(cfg)
    req = request(known_traces())
    http = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/traces", data=req.SerializeToString(),
                                  headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(http, timeout=30) as r:
        assert r.status == 200
    assert col.stop() == 0, col.log()

    all_ids = trace_ids([req])
    for name, policies in POLICY_SETS.items():
        theirs = col.requests(Signal.TRACES, name)
        ours = await gotel_kept(policies, req)
        kept = trace_ids(ours)
        assert trace_ids(theirs) == kept, (name, len(trace_ids(theirs)), len(kept))
        assert spans_of(theirs) == spans_of(ours), name
        # each set keeps some and leaves some: the comparison says something about every policy
        assert 0 < len(kept) < len(all_ids), (name, len(kept))
