"""gotel's probabilistic_sampler against the real collector's, fed the same spans and logs: the exact set
of kept trace ids (10,000 random traces at 10 % and 33.3 %, two seeds) and, item by item, the
tracestate each kept span leaves with (hash_seed writes `ot=rv:..;th:..`, proportional and equalizing
lower an arriving `th`), and the log records kept with their sampling attributes."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from gotel.component.contract import Kind
from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Batch, Logs, Signal, Traces, attr_dict, kv
from gotel.processors import probabilistic_sampler as ps
from tests.helpers.exporter_ctx import make_ctx, metric_value
from tests.helpers.otelcol import Collector
from tests.helpers.prometheus_server import free_port
from tests.unit.core.conftest import Tel

pytestmark = pytest.mark.slow

SENTINEL = b"\xff" * 16  # a trace every config keeps (sampling.priority 1), sent last: the end marker

# name -> (config, tracestates given to the spans in turn)
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "readme": ({"sampling_percentage": 15}, [""]),  # the README's first example
    "seed22_10": ({"sampling_percentage": 10, "hash_seed": 22}, [""]),
    "seed22_33": ({"sampling_percentage": 33.3, "hash_seed": 22}, [""]),
    "seed4242_10": ({"sampling_percentage": 10, "hash_seed": 4242}, [""]),
    "seed4242_33": ({"sampling_percentage": 33.3, "hash_seed": 4242}, ["", "vendor=x"]),
    # an arriving rv or th makes hash_seed fail closed (the collector's ErrRandomnessInUse)
    "seed1_rv": ({"sampling_percentage": 50, "hash_seed": 1}, ["", "ot=rv:80000000000000", "ot=th:8"]),
    "proportional": ({"sampling_percentage": 33.3, "mode": "proportional"},
                     ["", "ot=th:8", "ot=th:c;rv:fffffffffffff0,b=1", "a=1,ot=th:0", "ot=th:zz", "ot=rv:01234567890abc"]),
    "equalizing": ({"sampling_percentage": 10, "mode": "equalizing", "sampling_precision": 2},
                   ["", "ot=th:f", "ot=th:8;x:y", "ot=th:e"]),
    "seed1_open": ({"sampling_percentage": 50, "hash_seed": 1, "fail_closed": False},
                   ["", "ot=rv:80000000000000", "ot=th:8", "ot=bad syntax", "x=1,ot=th:0;rv:00000000000001"]),
    "zero": ({"sampling_percentage": 0}, ["", "ot=th:8"]),  # only sampling.priority keeps anything
    "all": ({"sampling_percentage": 100, "hash_seed": 3}, ["", "a=b"]),
    "open": ({"sampling_percentage": 10, "mode": "proportional", "fail_closed": False}, ["", "ot=bad syntax"]),
}
N = 10_000


def trace_batches(states: list[str], rng: random.Random) -> list[Batch]:
    out = []
    for start in range(0, N, 1000):
        b = Traces()
        ss = b.msg.resource_spans.add().scope_spans.add()
        for i in range(start, start + 1000):
            s = ss.spans.add(name=f"op{i}", trace_id=rng.randbytes(16), span_id=rng.randbytes(8),
                             start_time_unix_nano=1, end_time_unix_nano=2)
            s.trace_state = states[i % len(states)]
            if i % 997 == 5:
                s.attributes.append(kv("sampling.priority", 0))  # never kept
            elif i % 991 == 7:
                s.attributes.append(kv("sampling.priority", rng.choice([1, "2.5", 0.5])))  # always kept
        out.append(Traces.parse(b.to_bytes()))
    end = Traces()
    s = end.msg.resource_spans.add().scope_spans.add().spans.add(name="end", trace_id=SENTINEL, span_id=b"\x01" * 8)
    s.attributes.append(kv("sampling.priority", 1))
    out.append(Traces.parse(end.to_bytes()))
    return out


def kept_spans(requests: list[Any]) -> dict[bytes, str]:
    return {s.trace_id: s.trace_state for r in requests for rs in r.resource_spans for ss in rs.scope_spans
            for s in ss.spans if s.trace_id != SENTINEL}


async def gotel_run(signal: Signal, cfg: dict[str, Any], batches: list[Batch]) -> list[Batch]:
    got: list[Batch] = []

    class Sink:
        mutates = False

        async def consume(self, batch: Batch) -> None:
            got.append(batch)

    p = ps.factory.create(signal, ps.Config.model_validate(cfg), Sink(), Tel().ctx("probabilistic_sampler",
                                                                                    Kind.PROCESSOR))
    for b in batches:
        await p.consume(b.copy())
    return got


async def send(port: int, signal: Signal, batches: list[Batch]) -> None:
    """Sends the data, then the end marker once the collector acknowledged all of it: the exporter's queue
    sends on 4 consumers, so a marker sent with the data can reach the file before an earlier batch."""
    for part in (batches[:-1], batches[-1:]):
        ctx = make_ctx("otlp")
        exp = otlp_exp.factory.create(signal, otlp_exp.Config.model_validate(
            {"endpoint": f"http://127.0.0.1:{port}", "tls": {"insecure": True}}), ctx)
        await exp.start()
        try:
            for b in part:
                await exp.consume(b.copy())
        finally:
            await exp.shutdown()
        assert metric_value(ctx, "gotel_exporter_sent_items_total") == sum(b.item_count() for b in part), \
            "the collector did not acknowledge every item"


def collector_config(cases: dict[str, dict[str, Any]], signal: Signal) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {name: free_port() for name in cases}
    cfg: dict[str, Any] = {
        "receivers": {f"otlp/{n}": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{p}"}}} for n, p in ports.items()},
        "processors": {f"probabilistic_sampler/{n}": c for n, c in cases.items()},
        "exporters": {f"file/{n}": {"path": f"{n}.json", "flush_interval": "100ms"} for n in cases},
        "service": {"pipelines": {f"{signal.value}/{n}": {"receivers": [f"otlp/{n}"],
                                                          "processors": [f"probabilistic_sampler/{n}"],
                                                          "exporters": [f"file/{n}"]} for n in cases}},
    }
    return cfg, ports


async def test_same_traces_kept_as_the_collector(otelcol: Callable[..., Collector]) -> None:
    cfg, ports = collector_config({n: c for n, (c, _) in CASES.items()}, Signal.TRACES)
    col = otelcol(cfg, feature_gates=())
    for name, (pcfg, states) in CASES.items():
        batches = trace_batches(states, random.Random(name))
        await send(ports[name], Signal.TRACES, batches)
        theirs = kept_spans(col.wait_requests(
            Signal.TRACES, lambda r: any(s.trace_id == SENTINEL for q in r for rs in q.resource_spans
                                         for ss in rs.scope_spans for s in ss.spans), name=name))
        ours = kept_spans([b.peek() for b in await gotel_run(Signal.TRACES, pcfg, batches)])
        assert set(ours) == set(theirs), f"{name}: {len(ours)} kept by gotel, {len(theirs)} by the collector"
        assert ours == theirs, f"{name}: tracestates differ"
        pct = pcfg["sampling_percentage"]
        if name == "zero":
            # the 11 spans with a positive sampling.priority; an arriving th:8 is not raised to th:0
            assert len(ours) == 11 and set(ours.values()) == {"ot=th:0", "ot=th:8"}, ours
        if states == [""]:  # plain traces: the rate is what was asked for, within 4 sigma
            want = N * pct / 100
            assert abs(len(ours) - want) < 4 * (want * (1 - pct / 100)) ** 0.5, (name, len(ours))
        if name == "seed22_10":
            # hash_seed mode writes the randomness it used and the 10 % threshold (0x3333 << 42 -> e666)
            # (sampling.priority > 0 keeps a span at th:0)
            assert all(ts.startswith("ot=rv:") and ts.endswith((";th:e668", ";th:0")) for ts in ours.values()), \
                list(ours.values())[:3]


def log_batches(rng: random.Random) -> list[Batch]:
    out = []
    for start in range(0, 4000, 1000):
        b = Logs()
        sl = b.msg.resource_logs.add().scope_logs.add()
        for i in range(start, start + 1000):
            r = sl.log_records.add(time_unix_nano=i + 1)
            r.body.string_value = f"line {i}"
            if i % 3:
                r.trace_id = rng.randbytes(16)
            r.attributes.append(kv("user.id", f"u{rng.randrange(1 << 30)}"))
            r.attributes.append(kv("logID", rng.randrange(50)))  # repeats: the same id, the same decision
            if i % 7 == 0:
                r.attributes.append(kv("prio", rng.choice([0, 50, 100, 12.5])))
            if i % 5 == 0:
                r.attributes.append(kv("priority", rng.choice([0, 100, 80.0, -1, "x"])))
            if i % 11 == 0:
                r.attributes.append(kv("sampling.threshold", rng.choice(["8", "c", "0", "xyz"])))
            if i % 13 == 0:
                r.attributes.append(kv("sampling.randomness", rng.choice(["80000000000000", "ffffffffffffff",
                                                                         "0000000000000f", "123"])))
        out.append(Logs.parse(b.to_bytes()))
    end = Logs()
    r = end.msg.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=10**9)
    r.attributes.append(kv("prio", 100))
    r.attributes.append(kv("priority", 100))
    r.trace_id = SENTINEL
    out.append(Logs.parse(end.to_bytes()))
    return out


# The README's examples (plus `prio`, so that the end marker is always kept)
LOG_CASES: dict[str, dict[str, Any]] = {
    "readme_15": {"sampling_percentage": 15, "sampling_priority": "prio"},
    "readme_record": {"sampling_percentage": 15, "attribute_source": "record", "from_attribute": "logID",
                      "sampling_priority": "prio"},
    "readme_priority": {"sampling_percentage": 15, "sampling_priority": "priority"},
    "by_trace": {"sampling_percentage": 25, "hash_seed": 7, "sampling_priority": "prio"},
    "by_record": {"sampling_percentage": 25, "hash_seed": 7, "attribute_source": "record",
                  "from_attribute": "user.id", "sampling_priority": "prio"},
    "proportional": {"sampling_percentage": 40, "mode": "proportional", "sampling_priority": "prio"},
    "equalizing_open": {"sampling_percentage": 30, "mode": "equalizing", "sampling_priority": "prio",
                        "fail_closed": False},
}


def kept_logs(requests: list[Any]) -> dict[int, dict[str, Any]]:
    return {r.time_unix_nano: attr_dict(r.attributes) for q in requests for rl in q.resource_logs
            for sl in rl.scope_logs for r in sl.log_records if r.trace_id != SENTINEL}


async def test_same_logs_kept_as_the_collector(otelcol: Callable[..., Collector]) -> None:
    cfg, ports = collector_config(LOG_CASES, Signal.LOGS)
    col = otelcol(cfg, feature_gates=())
    for name, pcfg in LOG_CASES.items():
        batches = log_batches(random.Random(name))
        await send(ports[name], Signal.LOGS, batches)
        theirs = kept_logs(col.wait_requests(
            Signal.LOGS, lambda r: any(x.trace_id == SENTINEL for q in r for rl in q.resource_logs
                                       for sl in rl.scope_logs for x in sl.log_records), name=name))
        ours = kept_logs([b.peek() for b in await gotel_run(Signal.LOGS, pcfg, batches)])
        assert 100 < len(ours) < 3900, (name, len(ours))
        assert set(ours) == set(theirs), f"{name}: {len(ours)} kept by gotel, {len(theirs)} by the collector"
        assert ours == theirs
