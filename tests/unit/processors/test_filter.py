"""filter processor: the collector README's examples over known input, checked item by item; error
modes; self-telemetry counts; config errors with their line and column."""

from __future__ import annotations

from typing import Any

import pytest

from gotel.component.contract import Kind, PermanentError
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Batch, Signal, Traces
from gotel.processors.filter import Config, FilterProcessor
from tests.helpers import filter_inputs as inputs
from tests.unit.core.conftest import Tel
from tests.unit.processors.filter_cases import ALL_A, CASES

INPUT = {Signal.TRACES: inputs.traces, Signal.METRICS: inputs.metrics, Signal.LOGS: inputs.logs}


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


def processor(tel: Tel, cfg: dict[str, Any], signal: Signal, sink: Sink) -> FilterProcessor:
    return FilterProcessor(signal, Config.model_validate(cfg), sink, tel.ctx("filter", Kind.PROCESSOR))


@pytest.fixture
def tel() -> Tel:
    return Tel()


@pytest.mark.parametrize(("cfg", "signal", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_filter_case(tel: Tel, cfg: dict[str, Any], signal: Signal, want: Any) -> None:
    sink = Sink()
    p = processor(tel, cfg, signal, sink)
    batch = INPUT[signal]()
    n_in = batch.item_count()
    await p.consume(batch)
    got = inputs.summary([b.peek() for b in sink.got])
    assert got == want
    # the wire bytes downstream (cut out of the input's, or serialized) encode the edited message exactly
    for b in sink.got:
        assert b.request_type.FromString(b.to_bytes()) == b.peek()
    assert [inputs.summary([type(b).parse(b.to_bytes()).peek()]) for b in sink.got] == [want] * len(sink.got)
    n_out = sum(b.item_count() for b in sink.got)
    lbl = {"component": "filter", "kind": "processor", "signal": signal.value}
    assert tel.value("processor_incoming_items_total", **lbl) == n_in
    assert tel.value("processor_outgoing_items_total", **lbl) == n_out
    assert tel.value("dropped_items_total", reason="filtered", **lbl) == n_in - n_out


@pytest.mark.parametrize(("cfg", "signal", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_same_result_without_wire_bytes(tel: Tel, cfg: dict[str, Any], signal: Signal, want: Any) -> None:
    """A batch built in process (no wire bytes to rule conditions out by) is evaluated item by item."""
    src = INPUT[signal]()
    msg = src.request_type()
    msg.CopyFrom(src.peek())
    batch = type(src)(msg)
    assert batch.cached_bytes() is None
    sink = Sink()
    await processor(tel, cfg, signal, sink).consume(batch)
    assert inputs.summary([b.peek() for b in sink.got]) == want


async def test_span_events_dropped_are_counted(tel: Tel) -> None:
    sink = Sink()
    p = processor(tel, {"traces": {"spanevent": ['IsMatch(name, "grpc")']}}, Signal.TRACES, sink)
    await p.consume(inputs.traces())
    lbl = {"component": "filter", "kind": "processor", "signal": "traces"}
    assert tel.value("dropped_items_total", reason="filtered_span_events", **lbl) == 2  # grpc.call, only-grpc
    assert tel.value("dropped_items_total", reason="filtered", **lbl) == 0


async def test_nothing_dropped_keeps_wire_bytes(tel: Tel) -> None:
    sink = Sink()
    # a resource condition only (span conditions would remove the empty scope "lib.empty")
    p = processor(tel, {"traces": {"resource": ['attributes["host.name"] == "nowhere"']}}, Signal.TRACES, sink)
    batch = inputs.traces()
    raw = batch.to_bytes()
    await p.consume(batch)
    assert sink.got[0].to_bytes() is raw


async def test_everything_dropped_sends_nothing(tel: Tel) -> None:
    sink = Sink()
    p = processor(tel, {"trace_conditions": ["span.name != nil"]}, Signal.TRACES, sink)
    await p.consume(inputs.traces())
    assert sink.got == []
    assert tel.value("dropped_items_total", component="filter", kind="processor", signal="traces",
                     reason="filtered") == 10


async def test_error_mode_propagate_refuses_the_batch(tel: Tel) -> None:
    sink = Sink()
    p = processor(tel, {"error_mode": "propagate", "trace_conditions": ['Len(span.attributes["n"]) > 5']},
                  Signal.TRACES, sink)
    with pytest.raises(PermanentError, match=r'Len.*unsupported target type'):
        await p.consume(inputs.traces())
    assert sink.got == []
    assert tel.value("dropped_items_total", component="filter", kind="processor", signal="traces",
                     reason="filter_error") == 10


async def test_error_mode_ignore_logs_silent_does_not(tel: Tel, caplog: pytest.LogCaptureFixture) -> None:
    for mode, logged in (("ignore", True), ("silent", False)):
        caplog.clear()
        sink = Sink()
        p = processor(tel, {"error_mode": mode, "traces": {"span": ['Len(attributes["n"]) > 5']}},
                      Signal.TRACES, sink)
        await p.consume(inputs.traces())
        assert inputs.summary([b.peek() for b in sink.got])[1][1][0][0] == "lib.a"
        assert any("Len" in r.getMessage() for r in caplog.records) is logged


async def test_group_error_mode_overrides(tel: Tel) -> None:
    sink = Sink()
    p = processor(tel, {"error_mode": "propagate", "trace_conditions": [
        {"error_mode": "silent", "conditions": ['Len(span.attributes["n"]) > 5']}]}, Signal.TRACES, sink)
    await p.consume(inputs.traces())  # no PermanentError: the group is silent
    assert sum(b.item_count() for b in sink.got) == 9  # fast-http ("long-string" is longer than 5)


def _validate(tmp_path: Any, body: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(f"""receivers:
  otlp: {{}}
processors:
{body}
exporters:
  debug: {{}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: [filter], exporters: [debug]}}
""")
    try:
        load_config(str(path))
    except ConfigError as e:
        return [str(i) for i in e.issues]
    return []


def test_readme_examples_validate(tmp_path: Any) -> None:
    import yaml

    for cfg in (CASES[0][1], CASES[3][1], *(c[1] for c in CASES[6:])):
        body = "  filter:\n" + "\n".join("    " + line for line in yaml.safe_dump(cfg).splitlines())
        assert _validate(tmp_path, body) == []


@pytest.mark.parametrize(("body", "want"), [
    ('    traces:\n      span:\n        - name == "a"\n        - attributes["k"] = "v"',
     'c.yaml:8 processors::filter::traces::span::1: column 17: unexpected "="'),
    ("    traces:\n      spanevent:\n        - 'span.nme == \"x\"'",
     'c.yaml:7 processors::filter::traces::spanevent::0: column 1: unknown path "span.nme" in the span context'),
    ("    trace_conditions:\n      - name == \"x\"",
     'c.yaml:6 processors::filter::trace_conditions::0: column 1: path "name" needs a context prefix'),
    ("    trace_conditions:\n      - span.name == \"x\" and IsRootSpan() or Foo(span.name)",
     'c.yaml:6 processors::filter::trace_conditions::0: column 38: unsupported converter "Foo"'),
    ("    traces:\n      span:\n        - 'IsMatch(name, \"(\")'",
     "c.yaml:7 processors::filter::traces::span::0: column 15: invalid IsMatch pattern"),
    ("    traces:\n      span:\n        - kind == SPAN_KIND_SERVR",
     'c.yaml:7 processors::filter::traces::span::0: column 9: unknown enum "SPAN_KIND_SERVR"'),
    ("    traces:\n      span:\n        - spanevent.name == \"x\"",
     'column 1: path "spanevent.name" names the spanevent context, which a span condition cannot read'),
    ("    metrics:\n      include:\n        match_type: strict",
     'processors::filter::metrics: "include" (the older match_type/include/exclude filtering) is not supported'),
    ("    trace_conditions: [span.name == \"a\"]\n    traces:\n      span: [name == \"b\"]",
     "trace_conditions and traces::resource, traces::span, traces::spanevent cannot be used together"),
    ("    trace_conditions:\n      - span.name == \"a\"\n      - conditions: [span.name == \"b\"]",
     "trace_conditions mixes plain conditions and groups"),
    ("    trace_conditions:\n      - context: spn\n        conditions: [name == \"b\"]",
     'c.yaml:6 processors::filter::trace_conditions::0: unknown context "spn" for traces'),
    ("    error_mode: loud", "c.yaml:5 processors::filter::error_mode: Input should be 'ignore', 'silent' or 'propagate'"),
    ("    traces:\n      span:\n        - set(name, \"x\")", '"set" is an editor'),
])
def test_config_errors_name_line_and_column(tmp_path: Any, body: str, want: str) -> None:
    errors = _validate(tmp_path, "  filter:\n" + body)
    assert len(errors) == 1, errors
    assert want in errors[0]


def test_explicit_context_allows_paths_without_prefix() -> None:
    Config.model_validate({"trace_conditions": [{"context": "span", "conditions": ["IsRootSpan()", 'name == "x"']}]})


async def test_is_root_span(tel: Tel) -> None:
    b = Traces()
    ss = b.msg.resource_spans.add().scope_spans.add()
    ss.spans.add(name="root")
    ss.spans.add(name="child", parent_span_id=b"\x01" * 8)
    sink = Sink()
    p = processor(tel, {"trace_conditions": [{"context": "span", "conditions": ["IsRootSpan()"]}]}, Signal.TRACES, sink)
    await p.consume(b)
    assert [s.name for s in sink.got[0].peek().resource_spans[0].scope_spans[0].spans] == ["child"]


@pytest.mark.parametrize("signal", [Signal.TRACES, Signal.METRICS, Signal.LOGS])
def test_framing_items_are_the_parsed_items(signal: Signal) -> None:
    """The raw items the filter searches and cuts are exactly the items the parsed message lists, also
    for requests concatenated by the batch processor, and the framing serializes back to the request."""
    from gotel.pdata.wire import framing

    b = INPUT[signal]()
    batch = type(b).concat([b, INPUT[signal]()])
    raw = batch.to_bytes()
    res_f, scope_f, item_f = {Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
                              Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
                              Signal.LOGS: ("resource_logs", "scope_logs", "log_records")}[signal]
    msg = type(batch).parse(raw).peek()
    fr = framing(raw)
    assert fr.SerializeToString() == raw
    assert [[len(s.items) for s in r.scopes] for r in fr.resources] == \
        [[len(getattr(s, item_f)) for s in getattr(r, scope_f)] for r in getattr(msg, res_f)]
    for ri, r in enumerate(getattr(msg, res_f)):
        for si, s in enumerate(getattr(r, scope_f)):
            for ii, item in enumerate(getattr(s, item_f)):
                assert type(item).FromString(fr.resources[ri].scopes[si].items[ii]) == item


async def test_only_items_holding_the_bytes_are_evaluated(tel: Tel) -> None:
    """attributes["k"] == "v" is evaluated only for the spans whose own bytes hold "v"; a condition
    that also reads the resource is evaluated for every span."""
    calls: list[str] = []
    for conds, want in ((['span.attributes["container.name"] == "app_container_1"'], ["c1"]),
                        (['span.attributes["container.name"] == "app_container_1" or '
                          'resource.attributes["host.name"] == "db-1"'], None)):
        sink = Sink()
        p = processor(tel, {"trace_conditions": conds}, Signal.TRACES, sink)
        cset = p.stages[0].item
        inner = cset._evals[0]

        def spy(it: Any, inner: Any = inner) -> bool:
            calls.append(it.item.name)
            return bool(inner(it))

        cset._evals[0] = spy
        calls.clear()
        await p.consume(inputs.traces())
        assert calls == (want if want is not None else
                         ["on-localhost", *[n for n, _ in ALL_A], "app_3", "on-my-pod"])


async def test_each_condition_is_evaluated_where_its_bytes_are(tel: Tel) -> None:
    """Of ORed conditions, one with a byte proof runs only on the spans holding its bytes, one without
    on every span, in the written order."""
    calls: list[tuple[int, str]] = []
    p = processor(tel, {"trace_conditions": ['span.attributes["container.name"] == "app_container_2"',
                                             "span.kind == SPAN_KIND_CONSUMER"]}, Signal.TRACES, Sink())
    cset = p.stages[0].item
    for k, inner in enumerate(list(cset._evals)):
        def spy(it: Any, inner: Any = inner, k: int = k) -> bool:
            calls.append((k, it.item.name))
            return bool(inner(it))

        cset._evals[k] = spy
    await p.consume(inputs.traces())
    assert [n for k, n in calls if k == 0] == ["c2"]
    assert [n for k, n in calls if k == 1] == ["on-localhost", *[n for n, _ in ALL_A if n != "c2"], "app_3",
                                              "on-my-pod"]
    assert calls.index((0, "c2")) < calls.index((1, "slow-error"))


async def test_framing_the_scanner_cannot_read_falls_back_to_every_item(tel: Tel) -> None:
    """An unknown field encoded as a (deprecated) group is valid protobuf the item scanner does not read:
    every item is then evaluated, with the same result."""
    from gotel.pdata.wire import varint

    raw = inputs.traces().to_bytes() + varint((99 << 3) | 3) + varint((99 << 3) | 4)
    batch = Traces.parse(raw)
    sink = Sink()
    await processor(tel, {"trace_conditions": ['span.attributes["container.name"] == "app_container_1"']},
                    Signal.TRACES, sink).consume(batch)
    names = [n for _, scopes in inputs.summary([b.peek() for b in sink.got]) for _, items in scopes for n, _ in items]
    assert "c1" not in names and len(names) == 9


async def test_propagate_is_not_skipped_by_a_byte_proof(tel: Tel) -> None:
    """Len(...) fails on spans without the attribute; the bytes prove "/nowhere" absent, yet under
    propagate the condition is evaluated (the collector would refuse the batch), under ignore it need not."""
    cond = ['Len(span.attributes["missing"]) > 1 and span.attributes["http.route"] == "/nowhere"']
    with pytest.raises(PermanentError):
        await processor(tel, {"error_mode": "propagate", "trace_conditions": cond}, Signal.TRACES,
                        Sink()).consume(inputs.traces())
    sink = Sink()
    await processor(tel, {"error_mode": "ignore", "trace_conditions": cond}, Signal.TRACES, sink).consume(inputs.traces())
    assert sum(b.item_count() for b in sink.got) == 10


@pytest.mark.parametrize(("cfg", "cut"), [
    ({"trace_conditions": ['span.attributes["container.name"] == "app_container_1"']}, True),
    ({"trace_conditions": ['resource.attributes["host.name"] == "localhost"']}, True),
    ({"traces": {"span": ["kind == SPAN_KIND_SERVER"]}}, True),  # no byte proof: every span evaluated
    ({"traces": {"spanevent": ['name == "db"']}}, False),  # a span's own bytes change: serialized
    ({"traces": {"span": ['name == "app_3"'], "spanevent": ['name == "db"']}}, False),
])
async def test_dropped_items_are_cut_out_of_the_received_bytes(tel: Tel, cfg: dict[str, Any], cut: bool) -> None:
    """Dropping whole items leaves wire bytes for the exporter (cut out, not re-encoded), exactly the
    edited message's; dropping span events leaves none, so the exporter serializes."""
    sink = Sink()
    await processor(tel, cfg, Signal.TRACES, sink).consume(inputs.traces())
    b = sink.got[0]
    assert (b.cached_bytes() is not None) is cut
    assert b.request_type.FromString(b.to_bytes()) == b.peek()
    assert b.item_count() < 10 or not cut
