"""The byte-level paths of filter, resource, attributes and redaction (gotel.pdata.wire.framing) against the message paths
they stand in for: on random requests (random attribute sets, nested values, empty spans, absent and
repeated resources, several resources and scopes) both give the same request, byte for byte."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gotel.component.contract import Kind
from gotel.pdata.batch import Batch, Logs, Metrics, Signal, Traces
from gotel.pdata.wire import ld
from gotel.processors import attributes as attributes_proc
from gotel.processors import filter as filter_proc
from gotel.processors import redaction as redaction_proc
from gotel.processors import resource as resource_proc
from tests.unit.core.conftest import Tel

KEYS = ["http.route", "url.path", "service.name", "k8s.pod.name", "password", "user.email", "env", "n"]
STRINGS = ["/healthz", "/api/cart/1", "checkout", "secret", "", "prod", "ümlaut", "/healthz/x", "4111111111111111",
           "card 5105105105105100 ok", "x-secret-y", "token=abc"]


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


def _value(rng: random.Random, av: AnyValue, depth: int = 0) -> None:
    kind = rng.choice(["s", "s", "s", "i", "d", "b", "bytes", "kv", "arr"] if depth < 2 else ["s", "i"])
    if kind == "s":
        av.string_value = rng.choice(STRINGS)
    elif kind == "i":
        av.int_value = rng.randint(-(1 << 40), 1 << 40)
    elif kind == "d":
        av.double_value = rng.uniform(-1e6, 1e6)
    elif kind == "b":
        av.bool_value = rng.random() < 0.5
    elif kind == "bytes":
        av.bytes_value = rng.randbytes(rng.randint(0, 9))
    elif kind == "kv":
        for _ in range(rng.randint(0, 3)):
            _attr(rng, av.kvlist_value.values.add(), depth + 1)
    else:
        for _ in range(rng.randint(0, 3)):
            _value(rng, av.array_value.values.add(), depth + 1)


def _attr(rng: random.Random, kv: KeyValue, depth: int = 0) -> None:
    kv.key = rng.choice(KEYS)
    _value(rng, kv.value, depth)


def _attrs(rng: random.Random, field: Any) -> None:
    for _ in range(rng.choice([0, 1, 3, 8])):
        _attr(rng, field.add())


def request(seed: int) -> bytes:
    rng = random.Random(seed)
    b = Traces()
    for _ in range(rng.randint(1, 3)):
        rs = b.msg.resource_spans.add()
        if rng.random() < 0.8:
            _attrs(rng, rs.resource.attributes)
        for _ in range(rng.randint(0, 3)):
            ss = rs.scope_spans.add()
            if rng.random() < 0.5:
                ss.scope.name = "gotel.test"
                _attrs(rng, ss.scope.attributes)
            for i in range(rng.randint(0, 12)):
                sp = ss.spans.add()
                if rng.random() < 0.1:
                    continue  # an empty span
                sp.name = rng.choice(["GET /", "OPTIONS /x", "/healthz"])
                sp.span_id = rng.randbytes(8)
                sp.start_time_unix_nano = 1_700_000_000_000_000_000 + i
                sp.end_time_unix_nano = sp.start_time_unix_nano + rng.choice([10, 6_000_000_000])
                _attrs(rng, sp.attributes)
                if rng.random() < 0.3:
                    _attrs(rng, sp.events.add(name="ev").attributes)
    raw = bytes(b.to_bytes())
    if rng.random() < 0.1:  # a concatenation by the batch processor
        raw += raw
    if rng.random() < 0.1:  # a resource field given in two parts (legal: protobuf merges them)
        extra = Resource()
        _attrs(rng, extra.attributes)
        raw += ld(b"\x0a", ld(b"\x0a", extra.SerializeToString()) + ld(b"\x0a", extra.SerializeToString()))
    return raw


def metrics_request(seed: int) -> bytes:
    rng = random.Random(seed)
    b = Metrics()
    for _ in range(rng.randint(1, 2)):
        rm = b.msg.resource_metrics.add()
        _attrs(rng, rm.resource.attributes)
        for _ in range(rng.randint(0, 2)):
            sm = rm.scope_metrics.add()
            if rng.random() < 0.5:
                _attrs(rng, sm.scope.attributes)
            for _ in range(rng.randint(0, 6)):
                m = sm.metrics.add(name=rng.choice(["a", "b"]))
                pts = m.sum.data_points if rng.random() < 0.5 else m.gauge.data_points
                for _ in range(rng.randint(0, 3)):
                    _attrs(rng, pts.add(as_int=1).attributes)
    return bytes(b.to_bytes())


def logs_request(seed: int) -> bytes:
    rng = random.Random(seed)
    b = Logs()
    for _ in range(rng.randint(1, 2)):
        rl = b.msg.resource_logs.add()
        _attrs(rng, rl.resource.attributes)
        for _ in range(rng.randint(0, 2)):
            sl = rl.scope_logs.add()
            for _ in range(rng.randint(0, 8)):
                rec = sl.log_records.add(severity_number=9)
                rec.body.string_value = rng.choice(STRINGS)
                _attrs(rng, rec.attributes)
    return bytes(b.to_bytes())


REQUESTS: dict[type[Batch], Any] = {Traces: request, Metrics: metrics_request, Logs: logs_request}


async def _both(make: Any, raw: bytes, kind: type[Batch] = Traces) -> tuple[bytes | None, bytes | None]:
    """(through the byte path, through the message path): the request each hands on, None if dropped."""
    out = []
    for batch in (kind.parse(raw), kind(kind.parse(raw).peek())):
        sink = Sink()
        await make(sink).consume(batch)
        out.append(sink.got[0].to_bytes() if sink.got else None)
        if sink.got:
            got = sink.got[0]
            assert got.item_count() == kind.parse(got.to_bytes()).item_count()
    return out[0], out[1]


RESOURCE_ACTIONS: list[list[dict[str, Any]]] = [
    [{"key": "k8s.cluster.name", "value": "prod-eu", "action": "upsert"}, {"key": "n", "action": "delete"}],
    [{"key": "password", "action": "hash"}, {"key": "env", "action": "convert", "converted_type": "string"}],
    [{"key": "env", "value": 7, "action": "update"}, {"pattern": "^k8s", "action": "delete"}],
    [{"key": "service.name", "value": "x", "action": "insert"}],
    [{"key": "copy", "from_attribute": "url.path", "action": "insert"}],
]


@pytest.mark.parametrize("actions", RESOURCE_ACTIONS, ids=range(len(RESOURCE_ACTIONS)))
async def test_resource_byte_path_equals_message_path(actions: list[dict[str, Any]]) -> None:
    tel = Tel()
    cfg = resource_proc.Config.model_validate({"attributes": actions})

    def make(sink: Sink) -> Any:
        return resource_proc.ResourceProcessor(Signal.TRACES, cfg, sink, tel.ctx("resource", Kind.PROCESSOR))

    changed = 0
    for seed in range(150):
        raw = request(seed)
        fast, slow = await _both(make, raw)
        assert fast is not None and slow is not None
        if fast != raw:
            changed += 1
        assert Traces.parse(fast).peek() == Traces.parse(slow).peek(), seed
        if len(raw) == len(Traces.parse(raw).peek().SerializeToString()):  # canonical input: same bytes
            assert fast == slow, seed
    assert changed > 20  # the actions did act


FILTERS: list[list[Any]] = [
    ['span.attributes["http.route"] == "/healthz"'],
    ['span.attributes["http.route"] == "/healthz"', 'IsMatch(span.name, "^OPTIONS ")'],
    ['span.attributes["env"] == "prod" and span.end_time_unix_nano - span.start_time_unix_nano > 5000000000'],
    ['resource.attributes["service.name"] == "checkout"'],
    ['spanevent.attributes["password"] == "secret"'],
    [{"context": "span", "conditions": ['attributes["url.path"] == "/api/cart/1"']},
     {"context": "span", "conditions": ['name == "/healthz"']}],
]


@pytest.mark.parametrize("conds", FILTERS, ids=range(len(FILTERS)))
async def test_filter_byte_path_equals_message_path(conds: list[Any]) -> None:
    tel = Tel()
    cfg = filter_proc.Config.model_validate({"trace_conditions": conds})

    def make(sink: Sink) -> Any:
        return filter_proc.FilterProcessor(Signal.TRACES, cfg, sink, tel.ctx("filter", Kind.PROCESSOR))

    dropped = 0
    for seed in range(150):
        raw = request(seed)
        fast, slow = await _both(make, raw)
        assert (fast is None) == (slow is None), seed
        if fast is None or slow is None:
            continue
        if fast != raw:
            dropped += 1
        assert Traces.parse(fast).peek() == Traces.parse(slow).peek(), seed
        if len(raw) == len(Traces.parse(raw).peek().SerializeToString()):
            assert fast == slow, seed
    assert dropped > 10


REDACTIONS: list[dict[str, Any]] = [
    {"allow_all_keys": True, "blocked_values": ["4[0-9]{12}(?:[0-9]{3})?", "(5[1-5][0-9]{14})"]},
    {"allow_all_keys": True, "blocked_values": ["4[0-9]{12}"], "hash_function": "md5", "summary": "debug"},
    {"allow_all_keys": True, "blocked_key_patterns": ["pass"], "blocked_values": ["secret"], "summary": "info",
     "ignored_keys": ["env"], "allowed_values": ["checkout"]},
    {"allow_all_keys": True, "blocked_values": ["s(?:x*)"], "blocked_key_patterns": ["url", "k8s"]},
    {"allow_all_keys": True, "blocked_values": ["x*"]},  # no fixed first byte: the message path
    {"allowed_keys": ["env", "n"], "blocked_values": ["secret"]},  # an allow list: the message path
    {"preset": "credentials"},  # (?i) patterns: the message path
]
MESSAGE_PATH = (4, 5, 6)


@pytest.mark.parametrize("case", range(len(REDACTIONS)))
@pytest.mark.parametrize("kind", [Traces, Metrics], ids=["traces", "metrics"])
async def test_redaction_byte_path_equals_message_path(case: int, kind: type[Batch]) -> None:
    cfg = REDACTIONS[case]
    tel = Tel()
    conf = redaction_proc.Config.model_validate(cfg)

    def make(sink: Sink) -> Any:
        return redaction_proc.RedactionProcessor(kind.signal, conf, sink, tel.ctx("redaction", Kind.PROCESSOR))

    assert (make(Sink()).redactor.proof is None) == (case in MESSAGE_PATH)  # which path is under test
    changed = 0
    for seed in range(120):
        raw = REQUESTS[kind](seed)
        fast, slow = await _both(make, raw, kind)
        assert fast is not None and slow is not None
        changed += fast != raw
        assert kind.parse(fast).peek() == kind.parse(slow).peek(), seed
        if len(raw) == len(kind.parse(raw).peek().SerializeToString()):
            assert fast == slow, seed
    assert changed > 10


ATTRIBUTES: list[list[dict[str, Any]]] = [
    [{"key": "password", "action": "delete"}, {"key": "user.email", "action": "hash"}],
    [{"key": "env", "value": 7, "action": "update"}, {"key": "n", "action": "convert", "converted_type": "string"}],
    [{"key": "copy", "from_attribute": "url.path", "action": "upsert"},
     {"key": "url.path", "pattern": "^/(?P<first>[a-z]+)/", "action": "extract"}],
    [{"key": "password", "action": "delete"}, {"key": "x", "value": 1, "action": "insert"}],  # message path
]


@pytest.mark.parametrize("case", range(len(ATTRIBUTES)))
@pytest.mark.parametrize("kind", [Traces, Metrics, Logs], ids=["traces", "metrics", "logs"])
async def test_attributes_byte_path_equals_message_path(case: int, kind: type[Batch]) -> None:
    tel = Tel()
    cfg = attributes_proc.Config.model_validate({"actions": ATTRIBUTES[case]})

    def make(sink: Sink) -> Any:
        return attributes_proc.AttributesProcessor(kind.signal, cfg, sink, tel.ctx("attributes", Kind.PROCESSOR))

    assert (make(Sink()).engine.triggers is None) == (case == 3)  # which path is under test
    changed = 0
    for seed in range(120):
        raw = REQUESTS[kind](seed)
        fast, slow = await _both(make, raw, kind)
        assert fast is not None and slow is not None
        changed += fast != raw
        assert kind.parse(fast).peek() == kind.parse(slow).peek(), seed
        if len(raw) == len(kind.parse(raw).peek().SerializeToString()):
            assert fast == slow, seed
    assert changed > 10
