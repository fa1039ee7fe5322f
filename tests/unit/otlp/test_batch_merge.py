"""Batch.concat (joining wire bytes) equals merging the messages."""

from __future__ import annotations

from gotel.pdata.batch import Metrics, Traces
from tests.helpers import otlp_samples as samples


def test_wire_merge_equals_message_merge() -> None:
    parts = [samples.traces(3, start=i * 3, service=f"s{i}") for i in range(4)]
    raw = [Traces.parse(p.to_bytes()) for p in parts]
    merged = Traces.concat(raw)
    by_msg = Traces.merge([Traces(p.peek()) for p in parts])  # no wire bytes: message merge
    assert merged.item_count() == 12
    assert merged.to_bytes() == by_msg.to_bytes()
    assert merged.peek() == by_msg.peek()
    assert [rs.resource.attributes[0].value.string_value for rs in merged.peek().resource_spans] == ["s0", "s1", "s2", "s3"]


def test_cached_count_follows_mutation() -> None:
    m = Traces.concat([Traces.parse(samples.traces(2).to_bytes()), Traces.parse(samples.traces(3).to_bytes())])
    assert m.item_count() == 5
    m.msg.resource_spans[0].scope_spans[0].spans.add().name = "added"
    assert m.item_count() == 6
    mm = Metrics.concat([Metrics.parse(samples.metrics(2).to_bytes()), Metrics.parse(samples.metrics(1).to_bytes())])
    assert mm.item_count() == (2 + 2) + (1 + 2)  # gauge points + sum point + histogram point per request
