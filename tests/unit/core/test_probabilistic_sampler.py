"""probabilistic_sampler: the collector README's examples on known spans and log records, item by item;
the hash against published FNV-1a vectors; thresholds against the OpenTelemetry sampling spec's
examples; config errors with their place. (The real collector comparison is in
tests/integration/collector/test_sampler_peer.py.)"""

from __future__ import annotations

import asyncio
import random
import textwrap
from typing import Any

import pytest

from gotel.component.contract import Kind
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Batch, Logs, Signal, Traces, attr_dict, kv
from gotel.processors import probabilistic_sampler as ps
from tests.unit.core.conftest import Tel


def test_seeded_hash_is_fnv1a_over_seed_then_data() -> None:
    # the published FNV-1a 32 vector "foobar" -> bf9cf968, with "foob" as the seed's 4 little-endian bytes
    assert ps.fnv32a_seeded(b"ar", int.from_bytes(b"foob", "little")) == 0xBF9CF968


@pytest.mark.parametrize(("p", "th"), [
    (1.0, "0"), (0.5, "8"), (0.25, "c"), (0.1, "e666"), (1 / 3, "aaab"), (2 / 3, "5555"), (0.01, "fd70a"),
])
def test_thresholds_as_the_sampling_spec_writes_them(p: float, th: str) -> None:
    # OpenTelemetry TraceState probability sampling: th for 50 % is 8, for 1/3 aaab (precision 4)
    t = ps.probability_to_threshold(p, 4)
    assert t is not None and ps.tvalue(t) == th


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


def run(signal: Signal, cfg: dict[str, Any], batch: Batch) -> tuple[list[Any], Tel]:
    tel = Tel()
    sink = Sink()
    p = ps.factory.create(signal, ps.Config.model_validate(cfg), sink, tel.ctx("probabilistic_sampler", Kind.PROCESSOR))
    asyncio.run(p.consume(batch))
    if signal == Signal.LOGS:
        return [r for b in sink.got for rl in b.peek().resource_logs for sl in rl.scope_logs
                for r in sl.log_records], tel
    return [s for b in sink.got for rs in b.peek().resource_spans for ss in rs.scope_spans for s in ss.spans], tel


def test_readme_example_15_percent_of_traces() -> None:
    rng = random.Random(15)
    b = Traces()
    ss = b.msg.resource_spans.add().scope_spans.add()
    ids = [rng.randbytes(16) for _ in range(4000)]
    for tid in ids:
        ss.spans.add(name="s", trace_id=tid, span_id=b"\x01" * 8)
    kept, tel = run(Signal.TRACES, {"sampling_percentage": 15}, b)
    # kept exactly when the seeded hash's low 14 bits are below floor(15 * 163.84) = 2457
    assert {s.trace_id for s in kept} == {t for t in ids if ps.fnv32a_seeded(t, 0) & 0x3FFF < 2457}
    assert 520 < len(kept) < 680
    # each with its randomness and the threshold (16384 - 2457) << 42 = 0x3667 << 42 = 0xd99c << 40
    for s in kept:
        rv, th = s.trace_state.removeprefix("ot=rv:").split(";th:")
        assert th == "d99c" and int(rv, 16) >= 0xD99C << 40
    assert tel.value("processor_probabilistic_sampler_count_traces_sampled_total", component="probabilistic_sampler",
                     kind="processor", policy="trace_id_hash", sampled="true") == len(kept)


def test_readme_example_logs_by_record_attribute() -> None:
    b = Logs()
    recs = b.msg.resource_logs.add().scope_logs.add().log_records
    for i in range(3000):
        r = recs.add(time_unix_nano=i + 1)
        r.attributes.append(kv("logID", f"id-{i % 300}"))
    kept, _ = run(Signal.LOGS, {"sampling_percentage": 15, "attribute_source": "record", "from_attribute": "logID"},
                  b)
    by_id: dict[str, int] = {}
    for r in kept:
        a = attr_dict(r.attributes)
        by_id[a["logID"]] = by_id.get(a["logID"], 0) + 1
        assert a["sampling.threshold"] == "d99c" and len(a["sampling.randomness"]) == 14
    # a logID is kept in all its 10 records or in none
    assert set(by_id.values()) == {10}
    assert 20 < len(by_id) < 75


def test_readme_example_logs_sampling_priority() -> None:
    b = Logs()
    recs = b.msg.resource_logs.add().scope_logs.add().log_records
    for i in range(1000):
        r = recs.add(time_unix_nano=i + 1, trace_id=random.Random(i).randbytes(16))
        if i < 100:
            r.attributes.append(kv("priority", 100))  # the record's own 100 %: always kept
    kept, _ = run(Signal.LOGS, {"sampling_percentage": 15, "sampling_priority": "priority"}, b)
    times = {r.time_unix_nano for r in kept}
    assert set(range(1, 101)) <= times
    assert all(attr_dict(r.attributes)["sampling.threshold"] == "0" for r in kept if r.time_unix_nano <= 100)
    assert 100 + 100 < len(kept) < 100 + 170


def test_span_priority_and_zero_percent() -> None:
    b = Traces()
    ss = b.msg.resource_spans.add().scope_spans.add()
    for i, prio in enumerate([1, 0, "2", None]):
        s = ss.spans.add(name=str(i), trace_id=bytes([i + 1]) * 16, span_id=b"\x01" * 8)
        if prio is not None:
            s.attributes.append(kv("sampling.priority", prio))
    kept, _ = run(Signal.TRACES, {"sampling_percentage": 0}, b)
    assert [(s.name, s.trace_state) for s in kept] == [("0", "ot=th:0"), ("2", "ot=th:0")]


def test_nothing_kept_sends_nothing() -> None:
    b = Traces()
    b.msg.resource_spans.add().scope_spans.add().spans.add(name="x", trace_id=b"\x07" * 16)
    kept, _ = run(Signal.TRACES, {"sampling_percentage": 0}, b)
    assert kept == []


def load(body: str) -> Any:
    text = textwrap.dedent("""
        receivers: {otlp: {}}
        processors:
          probabilistic_sampler:
        %s
        exporters: {debug: {}}
        service: {pipelines: {logs: {receivers: [otlp], processors: [probabilistic_sampler], exporters: [debug]}}}
        """) % textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return load_config("c.yaml", text=text, env={})


@pytest.mark.parametrize("example", [
    "sampling_percentage: 15",
    "sampling_percentage: 15\nattribute_source: record\nfrom_attribute: logID",
    "sampling_percentage: 15\nsampling_priority: priority",
    "sampling_percentage: 33.3\nhash_seed: 22\nmode: proportional\nsampling_precision: 6\nfail_closed: false",
])
def test_validate_accepts_the_readme_examples(example: str) -> None:
    load(example)


@pytest.mark.parametrize(("body", "where", "says"), [
    ("sampling_percentage: -1", "probabilistic_sampler", "negative"),
    ("sampling_percentage: 1.0e-20", "probabilistic_sampler", "too small"),
    ("sampling_percentage: 5\nmode: random", "mode", "hash_seed"),
    ("sampling_percentage: 5\nsampling_precision: 15", "sampling_precision", "14"),
    ("sampling_percentage: 5\nattribute_source: body", "attribute_source", "traceID"),
    ("sampling_percentage: 5\nhash_seed: -3", "hash_seed", "0"),
    ("sampling_percent: 5", "sampling_percent", 'did you mean "sampling_percentage"'),
])
def test_bad_config_names_what_and_where(body: str, where: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(body)
    assert len(e.value.issues) == 1
    issue = e.value.issues[0]
    assert where in issue.path and says in issue.message, (issue.path, issue.message)
