"""The `attributes` and `resource` processors on the collector documentation's examples, each item's
attributes checked against what the documentation says they become (tests/helpers/attrcases.py holds
the examples; tests/integration/collector/test_attributes_peer.py compares the same runs with the real
collector), plus the one-line config errors at their place."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import pytest
import yaml

from gotel.component.contract import PEER_METADATA_KEY, REQUEST_METADATA
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Batch, Signal, attr_dict
from gotel.processors import attributes, resource
from tests.helpers.attrcases import REGEX_INSERT_AS_DOCUMENTED, Case, cases, spans
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.memsink import MemorySink

CASES = {c.name: c for c in cases()}
FACTORIES = {"attributes": attributes.factory, "resource": resource.factory}


def run(case: Case | str, metadata: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each item's attributes (spans, log records, data points; resources for `resource`) after the run."""
    c = CASES[case] if isinstance(case, str) else case
    f = FACTORIES[c.processor]
    sink = MemorySink()
    proc: Any = f.create(c.signal, f.config.model_validate(c.config), sink, make_ctx(f"{c.processor}/t"))
    token = REQUEST_METADATA.set(metadata if metadata is not None else c.metadata)
    try:
        asyncio.run(proc.consume(c.batch.copy()))
    finally:
        REQUEST_METADATA.reset(token)
    (out,) = sink.batches
    return attrs_of(out, c.processor == "resource")


def attrs_of(b: Batch, resources: bool = False) -> list[dict[str, Any]]:
    m = b.peek()
    if resources:
        return [attr_dict(r.resource.attributes) for r in b.peek_resources()]
    if b.signal == Signal.TRACES:
        return [attr_dict(s.attributes) for r in m.resource_spans for ss in r.scope_spans for s in ss.spans]
    if b.signal == Signal.LOGS:
        return [attr_dict(x.attributes) for r in m.resource_logs for sl in r.scope_logs for x in sl.log_records]
    return [attr_dict(p.attributes) for r in m.resource_metrics for sm in r.scope_metrics for mt in sm.metrics
            for p in mt.gauge.data_points]


def test_complex_example_step_by_step_as_documented() -> None:
    assert run("complex") == [
        {"timeout": 10, "svc.operation": "addition"},
        {"svc.operation": "subtract", "math_value": 123},
        {"svc.operation": "default", "timeout": 10, "math_value": 4},
        {"svc.operation": "default", "timeout": 3}]


def test_insert_update_upsert_and_delete() -> None:
    assert run("insert") == [{"anotherkey": "v", "attribute1": 123, "string key": "v"},
                             {"attribute1": "kept", "anotherkey": 5, "string key": 5},
                             {"attribute1": 123}]
    assert run("update") == [{"boo": "x", "foo": "x", "db.secret": "redacted"}, {"foo": "y"}, {"boo": True}]
    assert run("upsert") == [{"region": "planet-earth", "user_key": 7, "new_user_key": 7},
                             {"region": "planet-earth"},
                             {"new_user_key": [1, 2], "user_key": [1, 2], "region": "planet-earth"}]
    assert run("delete") == [{"keep": 2}, {"keep": 3}]
    assert run("pattern_delete") == [{"not.secret.c": 4, "y": 5}]


def test_extract_puts_named_groups_and_keeps_the_source() -> None:
    url = "http://example.com/path?queryParam1=value1,queryParam2=value2"
    assert run("regex_insert") == [
        {"http.url": url, "http_protocol": "http", "http_domain": "example.com", "http_path": "path",
         "http_query_params": "queryParam1=value1,queryParam2=value2"},
        {"http.url": "no match"}, {"http.url": 42}]
    # a group that did not take part is "" (as Go's FindStringSubmatch); an existing key is overwritten
    assert run("extract_named") == [
        {"http.route": "GET /users/42/orders", "user_id": "42", "tab": "orders"},
        {"http.route": "/users/7", "user_id": "7", "tab": ""}, {"http.route": "/other"}]


def test_hash_is_sha256_hex_of_the_value_bytes() -> None:
    (out,) = run("hash_kinds")

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    assert out == {"h.s": sha("é".encode()), "h.i": sha(struct.pack("<q", -5)), "h.i0": sha(bytes(8)),
                   "h.d": sha(struct.pack("<d", 1.5)), "h.b": sha(b"\x01"), "h.f": sha(b"\x00"),
                   "h.a": "", "h.m": "", "h.bytes": "", "keep": "x"}
    empty = run("hash")[1]["user.email"]
    assert empty == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # SHA-256 of nothing


def test_convert_follows_go_parsing_and_printing() -> None:
    assert [a["http.status_code"] for a in run("convert")] == [
        200, 200, -3, 1, "abc", " 12", 7, "1e3", "99999999999999999999", [1]]
    got = [a["v"] for a in run("convert_double")]
    assert got[:3] == [1.5, 1000.0, 0.5] and got[3] == float("inf") and got[4] == float("-inf")
    assert got[5] != got[5]  # NaN
    assert got[6:] == ["1e400", "x", " 1", 10.0, 7.0, 0.0, 0.25]
    assert [a["v"] for a in run("convert_string")] == [
        "1", "-2", "1.5", "3", "1e+21", "100000000000000000000", "1e-7", "0.000001", "123456789.125", "0.1",
        "-0", "true", "s", "AQI=", '[1,"a",true]', '{"k":1}']


def test_include_and_exclude_choose_the_documented_spans() -> None:
    # excludemulti: spans 1 and 2 match (svcA/svcB, env=dev, test_request present) and are left alone
    # (span 2 has no credit_card); spans 3 (env=1) and 4 (svcC) are processed
    assert ["credit_card" in a for a in run("excludemulti")] == [True, False, False, False]
    # selectiveprocessing: svcC is not included; span 3 (redact_trace=false, a bool) is excluded
    assert ["credit_card" in a for a in run("selectiveprocessing")] == [False, False, True, True]
    # regexp services search, unanchored: auth-api, login and myauth match; billing and no service do not
    assert ["credit_card" in a for a in run("includeservices")] == [False, False, False, True, True]
    assert ["credit_card" in a for a in run("excluderesources")] == [True, False]
    assert ["credit_card" in a for a in run("excludelibrary")] == [True, False, False]
    assert ["credit_card" in a for a in run("excludelibrary_blank")] == [True, False]
    assert run("regexp") == [{"password": "p", "token": "t"}, {"password": "obfuscated"},
                             {"password": "p", "token": "t"}]
    assert [a["db.statement"] for a in run("regexp2")] == ["SELECT * FROM USERS [obfuscated]", "q", "q"]
    assert ["hit" in a for a in run("regexp_values")] == [True, True, False, True, False, False]
    assert ["hit" in a for a in run("strict_types")] == [True, False, False, False]
    assert ["side" in a for a in run("span_kinds")] == [False, False, True, False, False, True]


def test_logs_and_metrics_matching() -> None:
    assert run("log_body_regexp") == [{"password": "obfuscated"}, {"password": "obfuscated"},
                                      {"password": "p", "token": "t"}, {"password": "p"}]
    assert run("log_severity_regexp") == [{"password": "obfuscated"}, {"password": "p", "token": "t"}]
    assert ["loud" in a for a in run("log_severity_number")] == [True, False, True, True]
    assert run("log_resources_exclude") == [{"debug": 1}, {"kept": 1}]
    h = hashlib.sha256(b"u1").hexdigest()
    assert run("metric_names") == [{"user": h, "region": "eu"}, {"region": "eu"}, {"user": "u2"}]
    assert run("metric_names_exclude") == [{"code": 200}, {"code": "5"}]
    # `resources` is accepted for metrics and, as in the collector, restricts nothing
    assert run("metric_resources") == [{"seen": True}, {"a": 1, "seen": True}]


def test_default_value_when_the_source_gives_nothing() -> None:
    assert run("readme_default_value") == [
        {"cloud.region": "eu-west-1", "zone": "b", "cloud.zone": "b", "region": "eu-west-1",
         "tenant_id": "default-tenant", "tier": 3},
        {"region": "kept", "zone": "z0", "tenant_id": "default-tenant", "tier": 3},
        {"region": "us-east-1", "tenant_id": "default-tenant", "tier": 3}]
    assert run("readme_default_value", metadata={"tenant": "acme"})[0]["tenant_id"] == "acme"


def test_from_context_reads_the_request_metadata() -> None:
    assert run("from_context") == [{"tenant": "acme", "origin": "edge-1"}, {"origin": "edge-1", "tenant": "acme"}]
    assert run("from_context", metadata={}) == [{"tenant": "old"}, {}]  # no request: nothing to copy
    c = Case("addr", "attributes", {"actions": [{"key": "client.address", "from_context": "client.address",
                                                  "action": "insert"}]}, Signal.TRACES, spans({}))
    assert run(c, metadata={PEER_METADATA_KEY: "ipv4:10.1.2.3:5555"}) == [{"client.address": "10.1.2.3"}]


def test_resource_processor_examples() -> None:
    assert run("resource_readme") == [
        {"k8s-cluster": "prod", "cloud.availability_zone": "zone-1", "k8s.cluster.name": "prod"},
        {"service.name": "x", "cloud.availability_zone": "zone-1"}]
    assert run("resource_demo_profiler") == [{"container.name": "cart", "service.name": "cart"}]
    assert run("resource_profiles") == [{"service.name": hashlib.sha256(b"checkout").hexdigest(),
                                         "deployment.environment": "prod"}]
    assert run("resource_all_actions") == [{"host.id": hashlib.sha256(b"abc").hexdigest(), "image": "shop:1.2",
                                            "pid": 42, "image_name": "shop", "image_tag": "1.2"}]


def test_a_request_without_the_keys_passes_untouched_and_one_with_them_is_acted_on() -> None:
    f = attributes.factory
    cfg = f.config.model_validate({"actions": [{"key": "password", "action": "delete"},
                                               {"key": "user.email", "action": "hash"}]})
    proc: Any = f.create(Signal.TRACES, cfg, MemorySink(), make_ctx("attributes"))
    clean = spans({"user": "a", "passwords": 1}, {"x": "my password"})  # near misses: a longer key, a value
    b = type(clean).from_bytes(clean.to_bytes())
    proc.process(b)
    assert b.cached_bytes() == clean.to_bytes()  # never parsed
    dirty = spans({"user": "a"}, {"password": "p", "user.email": ""})
    b = type(dirty).from_bytes(dirty.to_bytes())
    proc.process(b)
    assert attrs_of(b) == [{"user": "a"}, {"user.email": hashlib.sha256(b"").hexdigest()}]


# --- configuration -----------------------------------------------------------------------------------

def _config(processors: dict[str, Any], pipelines: dict[str, list[str]]) -> str:
    return yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
        "processors": processors, "exporters": {"debug": {}},
        "service": {"pipelines": {sig: {"receivers": ["otlp"], "processors": procs, "exporters": ["debug"]}
                                  for sig, procs in pipelines.items()}}}, sort_keys=False)


def test_every_documented_example_validates() -> None:
    procs = {f"{c.processor}/{c.name}": c.config for c in cases()}
    by_signal: dict[str, list[str]] = {}
    for c in cases():
        by_signal.setdefault(f"{c.signal.value}/{c.name}", []).append(f"{c.processor}/{c.name}")
    cfg = load_config("t.yaml", text=_config(procs, by_signal), env={})
    assert {str(p) for p in cfg.processors} == set(procs)


@pytest.mark.parametrize(("action", "error"), [
    ({"key": "x", "action": "frobnicate"},
     'unknown action "frobnicate" (valid: insert, update, upsert, delete, hash, extract, convert)'),
    ({"action": "insert", "value": 1}, 'action "insert" needs "key"'),
    ({"action": "hash"}, 'action "hash" needs "key" or "pattern"'),
    ({"key": "x", "action": "upsert"},
     'action "upsert" needs one of "value", "from_attribute", "from_context" or "default_value"'),
    ({"key": "x", "action": "upsert", "value": 1, "from_attribute": "y"},
     'action "upsert" takes only one of "value", "from_attribute" or "from_context"'),
    ({"key": "x", "action": "extract", "pattern": r"(\d+)"},
     r'"pattern" `(\d+)` has no named groups (write (?P<name>...))'),
    ({"key": "http.url", "action": "extract", "pattern": REGEX_INSERT_AS_DOCUMENTED},
     f'"pattern" `{REGEX_INSERT_AS_DOCUMENTED}` has an unnamed group: every group must be named, or (?:...)'),
    ({"key": "x", "action": "extract"}, 'action "extract" needs "pattern" (a regex with named groups)'),
    ({"key": "x", "action": "delete", "pattern": "(["},
     'invalid regex in "pattern" `([`: unterminated character set at position 1'),
    ({"key": "x", "action": "convert"}, 'action "convert" needs "converted_type" (int, double or string)'),
    ({"key": "x", "action": "convert", "converted_type": "float"},
     '"converted_type" must be int, double or string, not "float"'),
    ({"key": "x", "action": "delete", "value": 1}, 'action "delete" takes no "value", "from_attribute" or "from_context"'),
])
def test_a_bad_action_is_one_line_at_its_place(action: dict[str, Any], error: str) -> None:
    text = _config({"attributes": {"actions": [{"key": "ok", "action": "delete"}, action]}}, {"traces": ["attributes"]})
    with pytest.raises(ConfigError) as e:
        load_config("t.yaml", text=text, env={})
    assert [(i.path, i.message) for i in e.value.issues] == [("processors::attributes::actions::1", error)]


def test_resource_actions_are_checked_the_same_way() -> None:
    text = _config({"resource": {"attributes": [{"key": "k", "action": "insert"}]}}, {"metrics": ["resource"]})
    with pytest.raises(ConfigError) as e:
        load_config("t.yaml", text=text, env={})
    assert [str(i) for i in e.value.issues] == [
        't.yaml:9 processors::resource::attributes::0: action "insert" needs one of "value", "from_attribute", '
        '"from_context" or "default_value"']


def test_match_properties_errors() -> None:
    def errors(procs: dict[str, Any], pipelines: dict[str, list[str]]) -> list[str]:
        try:
            load_config("t.yaml", text=_config(procs, pipelines), env={})
        except ConfigError as e:
            if "profiles" not in pipelines:  # no follow-on "not used by any pipeline"
                assert not e.warnings
            return [f"{i.path}: {i.message}" for i in e.issues]
        return []

    act = [{"key": "k", "value": 1, "action": "insert"}]
    assert errors({"attributes": {"actions": act, "include": {"services": ["a"]}}}, {"traces": ["attributes"]}) == [
        'processors::attributes::include: missing required key "match_type"']
    assert errors({"attributes": {"actions": act, "include": {"match_type": "regexp", "span_names": ["(x"]}}},
                  {"traces": ["attributes"]}) == [
        "processors::attributes::include: span_names: invalid regex `(x`: missing ), unterminated subpattern "
        "at position 0"]
    assert errors({"attributes": {"actions": act, "exclude": {"match_type": "regexp",
                                                              "attributes": [{"key": "a", "value": 1}]}}},
                  {"traces": ["attributes"]}) == [
        'processors::attributes::exclude: attributes: match_type regexp needs a string value for "a", got int']
    assert errors({"attributes": {"actions": act, "include": {"match_type": "strict", "services": ["a"]}}},
                  {"logs": ["attributes"]}) == [
        "processors::attributes: in a logs pipeline: include: services, span_names and span_kinds cannot be used "
        "for log records"]
    assert errors({"attributes": {"actions": act, "include": {"match_type": "strict", "span_kinds": ["server"]}}},
                  {"traces": ["attributes"]}) == [
        'processors::attributes: in a traces pipeline: include: span_kinds "server" is not a span kind (valid: '
        'SPAN_KIND_CLIENT, SPAN_KIND_CONSUMER, SPAN_KIND_INTERNAL, SPAN_KIND_PRODUCER, SPAN_KIND_SERVER)']
    assert errors({"attributes": {"actions": act, "include": {"match_type": "strict",
                                                              "log_severity_number": {"min": "WARN"}}}},
                  {"logs": ["attributes"]}) == [  # the collector refuses a name too
        "processors::attributes::include::log_severity_number::min: Input should be a valid integer, unable to "
        "parse string as an integer (got 'WARN')"]
    assert errors({"attributes": {"actions": act, "include": {"match_type": "strict", "services": ["a"],
                                                              "libraries": [{"name": "x"}]}}},
                  {"metrics": ["attributes"]}) == [
        "processors::attributes: in a metrics pipeline: include: services, libraries cannot be used for metrics "
        "(only metric_names, and resources)"]
    assert errors({"attributes": {"actions": []}}, {"traces": ["attributes"]}) == [
        'processors::attributes: missing required key "actions" (a list of attribute actions)']
    assert errors({"attributes": {"actions": act}}, {"profiles": ["attributes"]}) == [
        'service::pipelines::profiles::processors: processor "attributes" does not support profiles '
        '(type attributes supports: logs, metrics, traces)']
