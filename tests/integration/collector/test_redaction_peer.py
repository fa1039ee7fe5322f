"""gotel's redaction against the real collector's (v0.161.0) with the same configs (the README's examples
and more) and the same spans, span events, log records (attributes and bodies) and metric data points:
every item must come out the same, attribute by attribute and in the same order."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import yaml

from gotel.pdata.batch import Batch, Logs, Metrics, Signal, Traces, kv
from gotel.processors import redaction as red
from tests.helpers.otelcol import Collector, items
from tests.helpers.prometheus_server import free_port
from tests.integration.collector.test_sampler_peer import send
from tests.unit.core.test_redaction import README_1, README_2, README_3, README_4

pytestmark = pytest.mark.slow

CASES: dict[str, dict[str, Any]] = {
    "readme1": yaml.safe_load(README_1),
    "readme2": yaml.safe_load(README_2),
    "readme2_all": yaml.safe_load(README_2) | {"allow_all_keys": True, "summary": "debug"},
    "readme3": yaml.safe_load(README_3),
    "readme4": yaml.safe_load(README_4),
    "sha1_info": {"allow_all_keys": True, "blocked_values": ["[0-9]{3}", "bob"], "hash_function": "sha1",
                  "ignored_keys": ["note"], "summary": "info"},
    "sha3_types": {"allow_all_keys": True, "redact_all_types": True, "blocked_key_patterns": ["^c.*", "phone"],
                   "blocked_values": ["1", "true", ".*mycompany.*"], "allowed_values": ["^support"],
                   "hash_function": "sha3", "summary": "debug"},
    # Go's regex dialect where Python's differs: ASCII classes, `$` only at the very end
    "go_syntax": {"allow_all_keys": True, "blocked_values": [r"\w+ö", r"e$", r"\d+", "(?i)BOB", "é.r", r"\bline\d\z"],
                  "summary": "debug"},
    "blocked_keys_plain": {"allowed_keys": ["phone", "client", "note", "count", "user"],
                           "blocked_key_patterns": ["phone|count"], "blocked_values": ["x*"], "summary": "debug"},
}

KEYS = ["description", "group", "id", "name", "email", "safe_attribute", "safe_x", "x_trusted", "session_token",
        "my_api_key", "user", "phone", "client", "note", "count"]
VALUES: list[Any] = [
    "paid with 4111111111111111", "5555555555554444", "bob@mycompany.com", "ops@support.mycompany.com",
    "support.mycompany.com is here", "from 10.1.2.3 to 192.168.0.1", "fe80:0:0:0:202:b3ff:fe1e:8329", "plain",
    "card 4222222222222 then 5105105105105100", 1234, 4111111111111111, 2.5, True, False, "xxx", "bob and bob",
    b"\x01\x02", "héllo wörld 123", "ends with e\n", "ÄBC résumé Bob", "mañana\nline2 e",
    {"b": 1, "a": "4111111111111111", "c": [True, "bob"]}, ["x", 2, "5105105105105100"],
    1e-7, 123456789012345680000.0, 0.00001, 1e16, 12345678.9,  # (-0.0 leaves the file exporter as 0)
]


def attrs(rng: random.Random, n: int) -> list[Any]:
    return [kv(k, rng.choice(VALUES)) for k in rng.sample(KEYS, n)]


def body(rng: random.Random, depth: int = 0) -> dict[str, Any] | list[Any] | str | int:
    kind = rng.choice(["map", "str", "list", "int"] if depth < 2 else ["str", "int"])
    if kind == "map":
        return {k: body(rng, depth + 1) for k in rng.sample(KEYS, 3)}
    if kind == "list":
        return [body(rng, depth + 1) for _ in range(2)]
    v = rng.choice(VALUES)
    return v if isinstance(v, str) else 77 if kind == "int" else "plain"


def inputs(rng: random.Random) -> dict[Signal, Batch]:
    from gotel.pdata.batch import any_value

    t = Traces()
    for r in range(2):
        rs = t.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs(rng, 2))
        ss = rs.scope_spans.add()
        ss.scope.name = "lib"
        ss.scope.attributes.extend(attrs(rng, 1))
        for i in range(20):
            s = ss.spans.add(name=f"s{r}-{i}", trace_id=rng.randbytes(16), span_id=rng.randbytes(8),
                             start_time_unix_nano=1, end_time_unix_nano=2)
            s.status.SetInParent()  # the collector's JSON writes an empty status: the same item either way
            s.attributes.extend(attrs(rng, 5))
            s.events.add(name="ev", time_unix_nano=1).attributes.extend(attrs(rng, 3))
    lg = Logs()
    rl = lg.msg.resource_logs.add()
    rl.resource.attributes.extend(attrs(rng, 2))
    sl = rl.scope_logs.add()
    for i in range(30):
        rec = sl.log_records.add(time_unix_nano=i + 1)
        rec.attributes.extend(attrs(rng, 3))
        rec.body.CopyFrom(any_value(body(rng)))
    m = Metrics()
    rm = m.msg.resource_metrics.add()
    rm.resource.attributes.extend(attrs(rng, 2))
    sm = rm.scope_metrics.add()
    g = sm.metrics.add(name="g")
    s_ = sm.metrics.add(name="c")
    s_.sum.aggregation_temporality = 2
    s_.sum.is_monotonic = True
    h = sm.metrics.add(name="h")
    h.histogram.aggregation_temporality = 2
    for i in range(10):
        g.gauge.data_points.add(time_unix_nano=i + 1, as_double=1.5).attributes.extend(attrs(rng, 3))
        s_.sum.data_points.add(time_unix_nano=i + 1, as_int=i).attributes.extend(attrs(rng, 3))
        hp = h.histogram.data_points.add(time_unix_nano=i + 1, count=1, sum=2.0, bucket_counts=[1, 0],
                                         explicit_bounds=[5.0])
        hp.attributes.extend(attrs(rng, 3))
    return {Signal.TRACES: t, Signal.LOGS: lg, Signal.METRICS: m}


def has_items(sig: Signal, n: int, requests: list[Any]) -> bool:
    return len(items(sig, requests)) == n


async def test_redaction_matches_the_collector_item_by_item(otelcol: Callable[..., Collector]) -> None:
    ports = {n: free_port() for n in CASES}
    signals = (Signal.TRACES, Signal.LOGS, Signal.METRICS)
    cfg: dict[str, Any] = {
        "receivers": {f"otlp/{n}": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{p}"}}} for n, p in ports.items()},
        "processors": {f"redaction/{n}": c for n, c in CASES.items()},
        "exporters": {f"file/{n}_{s.value}": {"path": f"{n}_{s.value}.json", "flush_interval": "100ms"}
                      for n in CASES for s in signals},
        "service": {"pipelines": {f"{s.value}/{n}": {"receivers": [f"otlp/{n}"], "processors": [f"redaction/{n}"],
                                                     "exporters": [f"file/{n}_{s.value}"]}
                                  for n in CASES for s in signals}},
    }
    col = otelcol(cfg, feature_gates=())
    for name, rcfg in CASES.items():
        data = inputs(random.Random(name))
        for sig, batch in data.items():
            await send(ports[name], sig, [batch])
        redactor = red.Redactor(red.Config.model_validate(rcfg))
        for sig, batch in data.items():
            ours = batch.copy()
            redactor.batch(sig, ours)
            want = items(sig, [ours.peek()])
            theirs = col.wait_requests(sig, partial(has_items, sig, len(want)), name=f"{name}_{sig.value}")
            got = items(sig, theirs)
            diff = [(a, b) for a, b in zip(want, got, strict=True) if a != b]
            if diff:
                a, b = diff[0]
                at = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
                raise AssertionError(f"{name} {sig.value}: {len(diff)} of {len(want)} items differ, first at byte "
                                     f"{at}:\ngotel:     {a[max(0, at - 150):at + 150]!r}\n"
                                     f"collector: {b[max(0, at - 150):at + 150]!r}")
            assert ours.peek() != batch.peek(), f"{name} {sig.value}: the case redacted nothing"
