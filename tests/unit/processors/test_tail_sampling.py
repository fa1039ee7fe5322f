"""tail_sampling: the collector README's example policies on known traces, trace by trace; the decision rule;
late spans and the decision caches; the memory bounds at a trace rate beyond num_traces; deadline_missed.

Time is a fake clock handed to the processor: decisions happen when a test moves it and calls tick().
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal
from gotel.processors.tail_sampling import (
    CHUNK_OVERHEAD,
    TRACE_OVERHEAD,
    Config,
    TailSamplingProcessor,
    split_by_trace,
)
from gotel.processors.tail_sampling_policies import fnv1a64, probability_threshold
from gotel.telemetry.counters import Telemetry
from tests.helpers.memsink import MemorySink
from tests.helpers.tailtraces import batch, request, spans_of, tid, trace_ids


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.telemetry = Telemetry()
        cid = ComponentID.parse("tail_sampling")
        self.ctx = Context(cid, Kind.PROCESSOR, logging.getLogger("test.tail_sampling"),
                           self.telemetry.component(cid, Kind.PROCESSOR), Signal.TRACES)
        self.clock = Clock()
        self.sink = MemorySink()
        self.cfg = Config.model_validate(cfg)
        self.proc = TailSamplingProcessor(Signal.TRACES, self.cfg, self.sink, self.ctx, clock=self.clock)

    def value(self, name: str, **labels: str) -> float:
        v = self.telemetry.registry.get_sample_value(
            "gotel_processor_tail_sampling_" + name, {"component": "tail_sampling", "kind": "processor", **labels})
        return 0.0 if v is None else v

    async def run(self, traces: dict[int, list[dict[str, Any]]]) -> set[int]:
        """Feeds the traces, waits out decision_wait, returns the numbers of the sampled traces."""
        await self.proc.consume(batch(traces))
        self.clock.t += float(self.cfg.decision_wait)
        await self.proc.tick()
        kept = trace_ids(self.sink.batches)
        return {n for n in traces if tid(n) in kept}


def cfg_of(*policies: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"decision_wait": "10s", "policies": list(policies), **top}


# --- the README's first example, each policy on its own with known traces ------------------------------

README = yaml.safe_load("""
decision_wait: 10s
num_traces: 100
expected_new_traces_per_sec: 10
decision_cache:
  sampled_cache_size: 100_000
  non_sampled_cache_size: 100_000
policies:
  [
    {name: test-policy-1, type: always_sample},
    {name: test-policy-2, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}},
    {name: test-policy-3, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
    {name: test-policy-4, type: probabilistic, probabilistic: {sampling_percentage: 10}},
    {name: test-policy-5, type: status_code, status_code: {status_codes: [ERROR, UNSET]}},
    {name: test-policy-6, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}},
    {name: test-policy-7, type: string_attribute,
     string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10}},
    {name: test-policy-8, type: rate_limiting, rate_limiting: {spans_per_second: 35}},
    {name: test-policy-9, type: bytes_limiting, bytes_limiting: {bytes_per_second: 1024000, burst_capacity: 2048000}},
    {name: test-policy-10, type: span_count, span_count: {min_spans: 2, max_spans: 20}},
    {name: test-policy-11, type: trace_state, trace_state: { key: key3, values: [value1, value2] }},
    {name: test-policy-12, type: boolean_attribute, boolean_attribute: {key: key4, value: true}},
    {name: and-policy-1, type: and, and: {and_sub_policy: [
        {name: test-and-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50, max_value: 100}},
        {name: test-and-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}}]}},
    {name: drop-policy-1, type: drop, drop: {drop_sub_policy: [
        {name: test-drop-policy-1, type: string_attribute,
         string_attribute: {key: url.path, values: [\\/health, \\/metrics], enabled_regex_matching: true}}]}},
    {name: composite-policy-1, type: composite, composite: {
        max_total_spans_per_second: 1000,
        policy_order: [test-composite-policy-1, test-composite-policy-2, test-composite-policy-3],
        composite_sub_policy: [
          {name: test-composite-policy-1, type: numeric_attribute, numeric_attribute: {key: key1, min_value: 50}},
          {name: test-composite-policy-2, type: string_attribute, string_attribute: {key: key2, values: [value1, value2]}},
          {name: test-composite-policy-3, type: always_sample}],
        rate_allocation: [{policy: test-composite-policy-1, percent: 50}, {policy: test-composite-policy-2, percent: 25}]}},
  ]
""")


def readme_policy(name: str) -> dict[str, Any]:
    return next(p for p in README["policies"] if p["name"] == name)


OK, ERR, UNSET = 1, 2, 0


# test-policy-13 of the collector README: OTTL conditions on spans and span events
OTTL_POLICY = yaml.safe_load(r"""
name: test-policy-13
type: ottl_condition
ottl_condition: {
  error_mode: ignore,
  span: [
    "attributes[\"test_attr_key_1\"] == \"test_attr_val_1\"",
    "attributes[\"test_attr_key_2\"] != \"test_attr_val_1\"",
  ],
  spanevent: [
    "name != \"test_span_event_name\"",
    "attributes[\"test_event_attr_key_2\"] != \"test_event_attr_val_1\"",
  ]
}
""")


def test_readme_example_validates() -> None:
    cfg = Config.model_validate(dict(README, policies=[*README["policies"], OTTL_POLICY]))
    assert [p.name for p in cfg.policies][:3] == ["test-policy-1", "test-policy-2", "test-policy-3"]
    assert cfg.policies[-1].type == "ottl_condition"
    assert cfg.decision_wait == 10.0 and cfg.num_traces == 100
    assert cfg.decision_cache.sampled_cache_size == 100_000


async def test_ottl_condition_samples_on_a_span_or_a_span_event_condition() -> None:
    rig = Rig(cfg_of(OTTL_POLICY))
    key2 = {"test_attr_key_2": "test_attr_val_1"}  # makes the second span condition false
    quiet_event = {"name": "test_span_event_name", "attrs": {"test_event_attr_key_2": "test_event_attr_val_1"}}
    kept = await rig.run({
        1: [{"attrs": {"test_attr_key_1": "test_attr_val_1", **key2}}],   # first span condition
        2: [{"attrs": key2}],                                             # nothing holds, no events
        3: [{"attrs": {}}],                                               # a missing attribute != a value: true
        4: [{"attrs": key2, "events": [quiet_event]}],                    # neither event condition holds
        5: [{"attrs": key2, "events": [quiet_event, dict(quiet_event, name="retry")]}],  # event name differs
        6: [{"attrs": key2}, {"attrs": key2, "events": [{"name": "test_span_event_name"}]}],  # 2nd event cond
        7: [{"attrs": key2}, {"attrs": {"test_attr_key_1": "test_attr_val_1"}}],  # any span of the trace
    })
    assert kept == {1, 3, 5, 6, 7}


@pytest.mark.parametrize(("mode", "kept"), [("propagate", {2}), ("ignore", {1, 2}), ("silent", {1, 2})])
async def test_ottl_condition_error_mode(mode: str, kept: set[int], caplog: pytest.LogCaptureFixture) -> None:
    """Len of an int fails at run time: propagate makes the trace not sampled (the collector's policy
    returns the error), ignore and silent treat it as no match and go on to the next condition. Trace 2's
    string attribute has a length (3 > 2): sampled in every mode."""
    rig = Rig(cfg_of({"name": "o", "type": "ottl_condition", "ottl_condition": {
        "error_mode": mode, "span": ['Len(attributes["n"]) > 2', 'name == "keep"']}}))
    assert await rig.run({1: [{"name": "keep", "attrs": {"n": 5}}], 2: [{"name": "other", "attrs": {"n": "abc"}}]}) == kept
    assert ("failed: Len: unsupported target type" in caplog.text) == (mode == "ignore")


@pytest.mark.parametrize(("block", "error"), [
    ({"span": ['attributes["k" == "v"']}, "span[0]"),
    ({"spanevent": ['IsMatch(nme, "x")']}, "spanevent[0]"),
    ({"error_mode": "ignore"}, "at least one span or spanevent condition is required"),
])
def test_ottl_condition_a_condition_gotel_cannot_evaluate_is_a_config_error(block: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as e:
        Config.model_validate(cfg_of({"name": "o", "type": "ottl_condition", "ottl_condition": block}))
    assert error in str(e.value), str(e.value)


@pytest.mark.parametrize(("policy", "traces", "kept"), [
    ("test-policy-2", {  # latency: window of the trace's spans, > 5000 ms and <= 10000 ms
        1: [{"dur_ms": 5000}],                                     # exactly 5000: not above
        2: [{"dur_ms": 5001}],
        3: [{"start_ms": 0, "dur_ms": 100}, {"start_ms": 9000, "dur_ms": 1000}],  # window 10000
        4: [{"dur_ms": 10001}],                                    # above the upper bound
        5: [{"dur_ms": 20}]}, {2, 3}),
    ("test-policy-3", {  # numeric_attribute on span or resource, inclusive bounds, int values only
        1: [{"attrs": {"key1": 50}}], 2: [{"attrs": {"key1": 100}}], 3: [{"attrs": {"key1": 101}}],
        4: [{"attrs": {"key1": 49}}], 5: [{"res": {"key1": 70}}], 6: [{"attrs": {"key1": 75.0}}],
        7: [{"attrs": {"key1": "75"}}], 8: [{}, {"attrs": {"key1": 60}}]}, {1, 2, 5, 8}),
    ("test-policy-5", {  # status_code ERROR or UNSET on any span
        1: [{"status": OK}], 2: [{"status": ERR}], 3: [{"status": UNSET}], 4: [{"status": OK}, {"status": ERR}]},
     {2, 3, 4}),
    ("test-policy-6", {  # string_attribute exact
        1: [{"attrs": {"key2": "value1"}}], 2: [{"attrs": {"key2": "value2"}}], 3: [{"attrs": {"key2": "value3"}}],
        4: [{"res": {"key2": "value1"}}], 5: [{"attrs": {"key2": "xvalue1"}}], 6: [{"attrs": {"other": "value1"}}]},
     {1, 2, 4}),
    ("test-policy-7", {  # string_attribute regex, matched anywhere in the value (Go's MatchString)
        1: [{"attrs": {"key2": "value1"}}], 2: [{"attrs": {"key2": "valley"}}], 3: [{"attrs": {"key2": "xval"}}],
        4: [{"attrs": {"key2": "vxl"}}], 5: [{"attrs": {"key2": ""}}]}, {1, 2, 3}),
    ("test-policy-10", {  # span_count 2..20 inclusive
        1: [{}], 2: [{}] * 2, 3: [{}] * 20, 4: [{}] * 21}, {2, 3}),
    ("test-policy-12", {  # boolean_attribute key4 == true
        1: [{"attrs": {"key4": True}}], 2: [{"attrs": {"key4": False}}], 3: [{"res": {"key4": True}}],
        4: [{"attrs": {"key4": "true"}}]}, {1, 3}),
    ("and-policy-1", {
        1: [{"attrs": {"key1": 60, "key2": "value1"}}], 2: [{"attrs": {"key1": 60}}],
        3: [{"attrs": {"key1": 60}}, {"attrs": {"key2": "value2"}}], 4: [{"attrs": {"key1": 10, "key2": "value1"}}]},
     {1, 3}),
    ("test-policy-1", {1: [{}], 2: [{"status": ERR}]}, {1, 2}),
    ("test-policy-11", {  # trace_state key3 in (value1, value2); an invalid tracestate matches nothing
        1: [{"trace_state": "key3=value1"}], 2: [{"trace_state": "foo=bar,key3=value2"}],
        3: [{"trace_state": "key3=value3"}], 4: [{"trace_state": "Key3=value1"}], 5: [{}],
        6: [{}, {"trace_state": "a=1, key3=value1"}]}, {1, 2, 6}),
])
async def test_readme_policy_on_known_traces(policy: str, traces: dict[int, list[dict[str, Any]]], kept: set[int]) -> None:
    rig = Rig(cfg_of(readme_policy(policy)))
    assert await rig.run(traces) == kept
    assert rig.value("global_count_traces_sampled_total", sampled="true", decision="sampled") == len(kept)
    assert rig.value("global_count_traces_sampled_total", sampled="false", decision="not_sampled") == len(traces) - len(kept)


async def test_readme_drop_policy_vetoes_always_sample() -> None:
    rig = Rig(cfg_of(readme_policy("test-policy-1"), readme_policy("drop-policy-1")))
    kept = await rig.run({1: [{"attrs": {"url.path": "/health"}}], 2: [{"attrs": {"url.path": "/api/metrics/x"}}],
                          3: [{"attrs": {"url.path": "/api"}}], 4: [{}, {"attrs": {"url.path": "/healthz"}}]})
    assert kept == {3}
    assert rig.value("count_traces_sampled_total", policy="drop-policy-1", sampled="false", decision="dropped") == 3
    assert rig.value("global_count_traces_sampled_total", sampled="false", decision="dropped") == 3


def test_probabilistic_is_the_collectors_fnv_hash_and_threshold() -> None:
    # FNV-1a 64 test vectors, and the collector's threshold for 10 % (MaxUint64 x 0.1 in a 64-bit big.Float)
    assert fnv1a64(b"") == 0xCBF29CE484222325 and fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert probability_threshold(100) == (1 << 64) - 1 and probability_threshold(0) == 0
    # values printed by Go's calculateThreshold (big.Float, 64-bit mantissa, truncated)
    assert probability_threshold(10) == 1844674407370955263
    assert probability_threshold(50) == 9223372036854775807
    assert probability_threshold(0.1) == 18446744073709551
    assert probability_threshold(33.3) == 6142765776545279999


async def test_readme_probabilistic_keeps_the_traces_its_hash_admits() -> None:
    rig = Rig(cfg_of(readme_policy("test-policy-4")))
    traces = {n: [{}] for n in range(400)}
    kept = await rig.run(traces)
    threshold = probability_threshold(10)
    assert kept == {n for n in traces if fnv1a64(b"default-hash-seed" + tid(n)) <= threshold}
    assert 20 <= len(kept) <= 60  # ~10 % of 400


async def test_readme_rate_limiting_spends_a_token_bucket_on_the_clock() -> None:
    # 35 spans/s, bucket of 70 (2 x) that starts full: 7 traces of 10 spans pass, the 8th does not
    rig = Rig(cfg_of(readme_policy("test-policy-8")))
    kept = await rig.run({n: [{}] * 10 for n in range(8)})
    assert kept == set(range(7))
    rig.clock.t += 2.0  # 70 tokens back
    assert await rig.run({n: [{}] * 10 for n in range(100, 108)}) == set(range(100, 107))
    assert await rig.run({200: [{}] * 71}) == set()  # more than the bucket holds: never


async def test_readme_bytes_limiting_spends_a_bucket_of_request_bytes() -> None:
    # the bucket holds 2,048,000 bytes: traces of ~300 KB (their request size) pass until it is spent; the
    # next decisions, 100 ms later, have what is left plus 102,400 bytes
    rig = Rig(cfg_of(readme_policy("test-policy-9"), decision_wait="100ms"))
    big = {n: [{"attrs": {"blob": "x" * 300_000}}] for n in range(8)}
    size = len(request({0: big[0]}).SerializeToString())
    kept = await rig.run(big)
    assert kept == set(range(2_048_000 // size))
    left = 2_048_000 - len(kept) * size + 102_400
    assert len(await rig.run({n + 100: v for n, v in big.items()})) == left // size >= 1


async def test_trace_flags_and_not() -> None:
    rig = Rig(cfg_of({"name": "f", "type": "trace_flags"}))
    assert await rig.run({1: [{"flags": 0x101}], 2: [{"flags": 0x100}], 3: [{}, {"flags": 1}]}) == {1, 3}
    rig = Rig(cfg_of({"name": "n", "type": "not", "not": {"not_sub_policy": {
        "name": "e", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}}}))
    assert await rig.run({1: [{"status": ERR}], 2: [{"status": OK}], 3: [{}, {"status": ERR}]}) == {2}
    # `not` inside `drop`: drop every trace that has no error
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"},
                     {"name": "d", "type": "drop", "drop": {"drop_sub_policy": [{"name": "n", "type": "not", "not": {
                         "not_sub_policy": {"name": "e", "type": "status_code",
                                            "status_code": {"status_codes": ["ERROR"]}}}}]}}))
    assert await rig.run({1: [{"status": ERR}], 2: [{"status": OK}]}) == {1}


async def test_readme_composite_shares_the_rate_in_sub_policy_order() -> None:
    # 1000 spans/s: key1 >= 50 gets 500, key2 in (value1, value2) 250, always_sample an equal share (333)
    rig = Rig(cfg_of(readme_policy("composite-policy-1")))
    traces = {n: [{"attrs": {"key1": 60}}] * 100 for n in range(6)}          # 600 spans: 5 fit in 500
    traces |= {n: [{"attrs": {"key2": "value1"}}] * 100 for n in range(10, 13)}  # 300: 2 fit in 250
    traces |= {n: [{}] * 100 for n in range(20, 24)}                         # 400: 3 fit in 333
    kept = await rig.run(traces)
    assert kept == {0, 1, 2, 3, 4, 10, 11, 20, 21, 22}
    rig.clock.t += 1.0  # a new second: budgets start again
    assert await rig.run({30: [{"attrs": {"key1": 60}}] * 100}) == {30}


# --- the README's practical example (rules 1-7) ---------------------------------------------------------

PRACTICAL = yaml.safe_load("""
decision_wait: 10s
num_traces: 100
expected_new_traces_per_sec: 10
policies: [
  {name: backwards-compatibility-policy, type: and, and: {and_sub_policy: [
      {name: services-using-tail_sampling-policy, type: string_attribute,
       string_attribute: {key: service.name, values: [list, of, services, using, tail_sampling], invert_match: true}},
      {name: sample-all-policy, type: always_sample}]}},
  {name: team_a-probe, type: and, and: {and_sub_policy: [
      {name: service-name-policy, type: string_attribute, string_attribute: {key: service.name, values: [service-1, service-2, service-3]}},
      {name: route-live-ready-policy, type: string_attribute, string_attribute: {key: http.route, values: [/live, /ready], enabled_regex_matching: true}},
      {name: probabilistic-policy, type: probabilistic, probabilistic: {sampling_percentage: 0.1}}]}},
  {name: team_a-noisy-endpoint-1, type: and, and: {and_sub_policy: [
      {name: service-name-policy, type: string_attribute, string_attribute: {key: service.name, values: [service-1]}},
      {name: route-name-policy, type: string_attribute, string_attribute: {key: http.route, values: [/v1/name/.+], enabled_regex_matching: true}},
      {name: probabilistic-policy, type: probabilistic, probabilistic: {sampling_percentage: 1}}]}},
  {name: team_a-service-1, type: and, and: {and_sub_policy: [
      {name: service-name-policy, type: string_attribute, string_attribute: {key: service.name, values: [service-1]}},
      {name: route-name-policy, type: string_attribute,
       string_attribute: {key: http.route, values: [/v1/name/.+], enabled_regex_matching: true, invert_match: true}},
      {name: probabilistic-policy, type: probabilistic, probabilistic: {sampling_percentage: 100}}]}},
  {name: team_a-status-policy, type: and, and: {and_sub_policy: [
      {name: service-name-policy, type: string_attribute, string_attribute: {key: service.name, values: [list, of, services, using, tail_sampling]}},
      {name: trace-status-policy, type: status_code, status_code: {status_codes: [ERROR]}}]}},
  {name: team_a-force-sample, type: boolean_attribute, boolean_attribute: {key: app.force_sample, value: true}},
  {name: do-not-sample, type: drop, drop: {drop_sub_policy: [
      {name: team_a-do-not-sample, type: boolean_attribute, boolean_attribute: {key: app.do_not_sample, value: true}}]}},
]
""")


async def test_readme_practical_example_trace_by_trace() -> None:
    """Rule 7 is written with a `string_attribute:` block under a boolean_attribute policy in the README (the
    collector rejects `value` there too); it is given its boolean_attribute block here."""
    rig = Rig(PRACTICAL)
    traces = {
        1: [{"service": "legacy-svc"}],                                               # rule 1: not team_a
        2: [{"service": "using", "attrs": {"http.route": "/ready"}}],                  # team_a, no rule
        3: [{"service": "service-1", "attrs": {"http.route": "/v1/users"}}],           # rule 4
        4: [{"service": "tail_sampling", "status": ERR}],                              # rule 5
        5: [{"service": "services"}],                                                  # team_a, nothing
        6: [{"service": "of", "attrs": {"app.force_sample": True}}],                   # rule 6
        7: [{"service": "legacy-svc", "attrs": {"app.do_not_sample": True}}],          # rule 7 beats rule 1
        8: [{"service": "service-1", "attrs": {"http.route": "/v1/users", "app.do_not_sample": True}}],  # rule 7
        9: [{"service": "service-1", "attrs": {"http.route": "/v1/name/42"}}],         # rule 1 (service-1 is not
        # in the README's team_a list, so rule 1 keeps it whatever rules 3 and 4 say)
        10: [{"service": "using", "attrs": {"http.route": "/v1/name/42"}}],            # team_a, rules 3/4 need service-1
    }
    kept = await rig.run(traces)
    assert kept == {1, 3, 4, 6, 9}


async def test_invert_match_at_top_level_does_not_veto() -> None:
    """As in the collector v0.161.0: an inverted match answers not sampled, which another policy's sample
    outweighs; only `drop` vetoes."""
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"},
                     {"name": "not-b", "type": "string_attribute",
                      "string_attribute": {"key": "k", "values": ["b"], "invert_match": True}}))
    assert await rig.run({1: [{"attrs": {"k": "a"}}], 2: [{"attrs": {"k": "b"}}]}) == {1, 2}
    rig2 = Rig(cfg_of({"name": "not-b", "type": "string_attribute",
                       "string_attribute": {"key": "k", "values": ["b"], "invert_match": True}}))
    assert await rig2.run({1: [{"attrs": {"k": "a"}}], 2: [{"attrs": {"k": "b"}}], 3: [{}]}) == {1, 3}


# --- timing, late spans, caches -----------------------------------------------------------------------------


async def test_decision_waits_decision_wait_from_the_first_span() -> None:
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}))
    await rig.proc.consume(batch({1: [{}]}))
    rig.clock.t += 9.999
    assert await rig.proc.tick() == 0 and rig.sink.batches == []
    await rig.proc.consume(batch({2: [{}]}))  # arrives 9.999 s after trace 1
    rig.clock.t += 0.001
    assert await rig.proc.tick() == 1
    assert trace_ids(rig.sink.batches) == {tid(1)}
    rig.clock.t += 9.999
    assert await rig.proc.tick() == 1
    assert trace_ids(rig.sink.batches) == {tid(1), tid(2)}


async def test_late_spans_follow_the_decision_without_a_cache() -> None:
    rig = Rig(cfg_of({"name": "err", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}))
    assert await rig.run({1: [{"status": ERR}], 2: [{"status": OK}]}) == {1}
    rig.sink.clear()
    # late spans: trace 1's are passed on at once, trace 2's are not (even an error does not revive it)
    late = request({1: [{"name": "late1"}], 2: [{"name": "late2", "status": ERR}]})
    await rig.proc.consume(batch({1: [{"name": "late1"}], 2: [{"name": "late2", "status": ERR}]}))
    assert spans_of(rig.sink.batches) == [s for s in spans_of([late]) if s[0] == tid(1)]
    assert rig.value("sampling_late_spans_total", sampled="true") == 1
    assert rig.value("sampling_late_spans_total", sampled="false") == 1
    rig.clock.t += 60
    assert await rig.proc.tick() == 0  # nothing new to decide


async def test_decision_cache_keeps_decisions_after_the_trace_is_released() -> None:
    rig = Rig(cfg_of({"name": "err", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
                     num_traces=2, decision_cache={"sampled_cache_size": 10, "non_sampled_cache_size": 10}))
    assert await rig.run({1: [{"status": ERR}], 2: [{"status": OK}]}) == {1}
    assert len(rig.proc.traces) == 0  # decided traces left memory: only their ids are cached
    await rig.run({n: [{}] for n in range(3, 7)})  # more traces than num_traces come and go
    rig.sink.clear()
    await rig.proc.consume(batch({1: [{"name": "late"}], 2: [{"name": "late", "status": ERR}]}))
    assert trace_ids(rig.sink.batches) == {tid(1)}
    assert rig.value("early_releases_from_cache_decision_total", sampled="true") == 1
    assert rig.value("early_releases_from_cache_decision_total", sampled="false") == 1


async def test_maximum_trace_size_bytes_decides_not_sampled_at_once() -> None:
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}, maximum_trace_size_bytes=2000))
    await rig.proc.consume(batch({1: [{"attrs": {"blob": "x" * 3000}}], 2: [{}]}))
    assert rig.value("traces_dropped_too_large_total") == 1
    assert rig.proc.traces[tid(1)].chunks == []  # its bytes are freed now, not at decision time
    rig.clock.t += 10
    await rig.proc.tick()
    assert trace_ids(rig.sink.batches) == {tid(2)}


async def test_shutdown_decides_what_is_pending() -> None:
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}))
    await rig.proc.consume(batch({1: [{}], 2: [{}]}))
    await rig.proc.shutdown()
    assert trace_ids(rig.sink.batches) == {tid(1), tid(2)}
    rig2 = Rig(cfg_of({"name": "all", "type": "always_sample"}, drop_pending_traces_on_shutdown=True))
    await rig2.proc.consume(batch({1: [{}], 2: [{}, {}]}))
    await rig2.proc.shutdown()
    assert rig2.sink.batches == []
    assert rig2.telemetry.registry.get_sample_value(
        "gotel_dropped_items_total",
        {"component": "tail_sampling", "kind": "processor", "signal": "traces", "reason": "shutdown"}) == 3


def test_split_keeps_resource_and_scope_per_trace() -> None:
    req = request({1: [{"service": "a"}, {"service": "b"}], 2: [{"service": "a"}, {"service": "a"}]})
    chunks = split_by_trace(req)
    assert [(t, n) for t, _, n in chunks] == [(tid(1), 1), (tid(2), 2), (tid(1), 1)]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    whole = ExportTraceServiceRequest.FromString(b"".join(c for _, c, _ in chunks))
    assert spans_of([whole]) == spans_of([req])
    assert {kv.value.string_value for rs in whole.resource_spans for kv in rs.resource.attributes} == {"a", "b"}


# --- memory bounds at a trace rate beyond num_traces ------------------------------------------------------


def _one_span_request(n: int, pad: int) -> bytes:
    return request({n: [{"attrs": {"pad": "p" * pad}}]}).SerializeToString()


async def test_beyond_num_traces_counts_every_trace_dropped_too_early_and_stays_bounded() -> None:
    """10,000 traces arrive within one decision_wait into num_traces 1,000: the 9,000 oldest are released
    undecided, each counted; memory stays at what 1,000 traces cost."""
    from gotel.pdata.batch import Traces

    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}, num_traces=1000))
    raws = [_one_span_request(n, 200) for n in range(10_000)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak_held = 0
        for i, raw in enumerate(raws):
            await rig.proc.consume(Traces(raw=raw))
            rig.clock.t += 0.0005  # 2,000 new traces per second, decision_wait 10 s
            if i % 500 == 499:
                gc.collect()
                peak_held = max(peak_held, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert len(rig.proc.traces) == 1000
    assert rig.value("sampling_trace_dropped_too_early_total") == 9000
    assert rig.value("sampling_spans_dropped_too_early_total") == 9000
    assert rig.telemetry.registry.get_sample_value(
        "gotel_dropped_items_total", {"component": "tail_sampling", "kind": "processor", "signal": "traces",
                                      "reason": "tail_sampling_dropped_too_early"}) == 9000
    # what is held is what the byte accounting says, and the heap agrees with it
    chunk = len(split_by_trace(request({0: [{"attrs": {"pad": "p" * 200}}]}))[0][1])
    assert rig.proc.bytes == 1000 * (TRACE_OVERHEAD + chunk + CHUNK_OVERHEAD)
    assert peak_held <= rig.proc.bytes * 1.1, (peak_held, rig.proc.bytes)
    # the 1,000 youngest are decided and sampled; nothing else leaves
    rig.clock.t += 10
    await rig.proc.tick()
    assert trace_ids(rig.sink.batches) == {tid(n) for n in range(9000, 10_000)}


async def test_max_buffered_bytes_bounds_memory_when_num_traces_does_not() -> None:
    from gotel.pdata.batch import Traces

    bound = 2 << 20
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}, num_traces=50_000, max_buffered_bytes=bound))
    raws = [_one_span_request(n, 2000) for n in range(5000)]  # ~11 MB of spans into a 2 MiB bound
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak_held = 0
        for i, raw in enumerate(raws):
            await rig.proc.consume(Traces(raw=raw))
            assert rig.proc.bytes <= bound
            if i % 250 == 249:
                gc.collect()
                peak_held = max(peak_held, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    held = len(rig.proc.traces)
    chunk = len(split_by_trace(request({0: [{"attrs": {"pad": "p" * 2000}}]}))[0][1])
    assert held == bound // (TRACE_OVERHEAD + chunk + CHUNK_OVERHEAD)
    assert rig.value("sampling_trace_dropped_too_early_total") == 5000 - held
    assert peak_held <= bound * 1.1, (peak_held, bound)


# --- deadline_missed --------------------------------------------------------------------------------------


async def test_deadline_missed_keeps_traces_with_an_own_or_propagated_miss() -> None:
    traces = {
        1: [{"attrs": {"gotel.rpc.deadline.exceeded": False}}, {"attrs": {"gotel.rpc.deadline.exceeded": True}}],
        2: [{"attrs": {"gotel.rpc.deadline.exceeded": False, "gotel.rpc.deadline.propagated": True}}],
        3: [{"attrs": {"gotel.rpc.deadline.exceeded": False}}],
        4: [{"attrs": {"rpc.grpc.status_code": 4}}],
        5: [{"attrs": {"rpc.response.status_code": "DEADLINE_EXCEEDED"}}],
    }
    rig = Rig(cfg_of({"name": "missed", "type": "deadline_missed"}))
    assert await rig.run(traces) == {1, 2}
    rig = Rig(cfg_of({"name": "missed", "type": "deadline_missed", "deadline_missed": {"propagated": False}}))
    assert await rig.run(traces) == {1}
    rig = Rig(cfg_of({"name": "missed", "type": "deadline_missed", "deadline_missed": {"grpc_status": True}}))
    assert await rig.run(traces) == {1, 2, 4, 5}


# --- config errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policies", "text"), [
    ([{"name": "a", "type": "latencyy"}], "unknown type 'latencyy'"),
    ([{"name": "a", "type": "status_code", "status_code": {"status_codes": ["FAIL"]}}], "unknown status code 'FAIL'"),
    ([{"name": "a", "type": "string_attribute", "string_attribute": {"key": "k", "values": ["("],
                                                                     "enabled_regex_matching": True}}], "invalid regex `(`"),
    ([{"name": "a", "type": "always_sample"}, {"name": "a", "type": "always_sample"}], "duplicate policy name 'a'"),
    ([{"name": "a", "type": "latency", "latency": {"threshold_ms": 5, "threshold": "5ms"}}], "not both"),
    ([{"name": "a", "type": "numeric_attribute", "numeric_attribute": {"key": "k"}}], "set min_value or max_value"),
    ([{"name": "a", "type": "and", "and": {"and_sub_policy": [{"name": "b", "type": "composite"}]}}],
     "unknown type 'composite'"),
    ([{"name": "c", "type": "composite", "composite": {"max_total_spans_per_second": 10, "policy_order": ["x"],
                                                        "composite_sub_policy": [{"name": "y", "type": "always_sample"}]}}],
     "policy_order names 'x'"),
    ([{"name": "a", "type": "always_sample", "latncy": {}}], "latncy"),
])
def test_bad_policies_are_one_clear_error(policies: list[dict[str, Any]], text: str) -> None:
    with pytest.raises(ValidationError) as e:
        Config.model_validate({"policies": policies})
    assert text in str(e.value)


def test_latency_accepts_the_collectors_ms_keys_and_durations() -> None:
    a = Config.model_validate(cfg_of({"name": "l", "type": "latency", "latency": {"threshold_ms": 1500}}))
    b = Config.model_validate(cfg_of({"name": "l", "type": "latency", "latency": {"threshold": "1.5s"}}))
    assert a.policies[0].latency == b.policies[0].latency
    assert a.policies[0].latency is not None and a.policies[0].latency.threshold == 1.5


# --- through `gotel validate`, as a user sees it --------------------------------------------------------------


def _pipeline_yaml(processor: dict[str, Any]) -> str:
    return yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
        "processors": {"tail_sampling": processor},
        "exporters": {"debug": {}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"], "processors": ["tail_sampling"],
                                             "exporters": ["debug"]}}},
    }, sort_keys=False)


@pytest.mark.parametrize("example", ["readme", "practical", "docs"])
def test_gotel_validate_accepts_the_documented_examples(example: str, tmp_path: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from gotel.cli.main import main

    if example == "docs":  # the example in docs/tail_sampling.md, as written there
        doc = (Path(__file__).resolve().parents[3] / "docs" / "tail_sampling.md").read_text()
        text = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
        body = yaml.safe_load(text)["processors"]["tail_sampling"]
    else:
        body = README if example == "readme" else PRACTICAL
    f = tmp_path / "c.yaml"
    f.write_text(_pipeline_yaml(body))
    assert main(["validate", "-c", str(f)]) == 0, capsys.readouterr().err


def test_gotel_validate_names_a_bad_key_and_a_missing_policy_type_with_their_place(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from gotel.cli.main import main

    f = tmp_path / "c.yaml"
    f.write_text(_pipeline_yaml({"decision_wait": "5s", "policies": [
        {"name": "slow", "type": "latency", "latency": {"threshold_ms": 100, "upper_treshold_ms": 200}},
        {"name": "ts", "type": "ottl_conditoin", "ottl_condition": {"span": ['name == "x"']}}]}))
    assert main(["validate", "-c", str(f)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3, err
    assert err[0].startswith(f"{f}:") and "processors::tail_sampling::policies::0::latency::upper_treshold_ms" in err[0]
    assert "processors::tail_sampling::policies::1" in err[1] and "unknown type 'ottl_conditoin'" in err[1]
    assert err[2] == f"{f}: 2 errors"


async def test_start_and_shutdown_run_the_decision_ticker() -> None:
    rig = Rig(cfg_of({"name": "all", "type": "always_sample"}))
    await rig.proc.start()
    assert rig.proc._ticker is not None and not rig.proc._ticker.done()
    await rig.proc.consume(batch({1: [{}]}))
    await rig.proc.shutdown(deadline=1.0)
    assert rig.proc._ticker is None
    assert trace_ids(rig.sink.batches) == {tid(1)}
