"""redaction: the collector README's examples on known spans, checked attribute by attribute; gotel's
`preset: credentials`; config errors with their place. (tests/integration/collector/test_redaction_peer.py
compares the same configs with the real collector.)"""

from __future__ import annotations

import hashlib
import hmac
import textwrap
from typing import Any

import pytest
import yaml

from gotel.component.contract import Kind
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Batch, Logs, Profiles, Signal, Traces, attr_dict, kv
from gotel.processors import redaction as red
from tests.unit.core.conftest import Tel

# The collector README's examples (v0.161.0), verbatim but for comments; the first one's url_sanitizer
# is what gotel lacks (its own test below).
README_1 = """
allow_all_keys: false
allowed_keys: [description, group, id, name]
ignored_keys: [safe_attribute]
ignored_key_patterns: ["^safe_.*", ".*_trusted$"]
redact_all_types: true
blocked_key_patterns: [".*token.*", ".*api_key.*"]
blocked_values:
  - "4[0-9]{12}(?:[0-9]{3})?"
  - "(5[1-5][0-9]{14})"
allowed_values: [".+@mycompany.com"]
hash_function: md5
summary: debug
"""
README_2 = """
blocked_values: ["mycompany.com"]
allowed_values: ["support.mycompany.com"]
"""
HMAC_KEY = "k" * 40
README_3 = f"""
allow_all_keys: true
blocked_values:
  - "(?:[0-9]{{1,3}}\\\\.){{3}}[0-9]{{1,3}}"
  - "(?:[0-9a-fA-F]{{1,4}}:){{7}}[0-9a-fA-F]{{1,4}}"
hash_function: hmac-sha256
hmac_key: "{HMAC_KEY}"
summary: silent
"""
README_4 = """
allowed_keys: [description, email]
blocked_values: ["4[0-9]{12}(?:[0-9]{3})?"]
summary: debug
"""


def run(cfg_yaml: str | dict[str, Any], batch: Batch) -> Batch:
    cfg = red.Config.model_validate(yaml.safe_load(cfg_yaml) if isinstance(cfg_yaml, str) else cfg_yaml)
    red.Redactor(cfg).batch(batch.signal, batch)
    return batch


def span_with(attrs: dict[str, Any]) -> Traces:
    b = Traces()
    s = b.msg.resource_spans.add().scope_spans.add().spans.add(name="s")
    for k, v in attrs.items():
        s.attributes.append(kv(k, v))
    return b


def span_attrs(b: Batch) -> dict[str, Any]:
    return attr_dict(b.peek().resource_spans[0].scope_spans[0].spans[0].attributes)


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def test_readme_example_1_allow_list_key_patterns_hash_and_debug_summary() -> None:
    b = run(README_1, span_with({
        "id": 1234, "name": "card 4111111111111111 and 5555555555554444",
        "description": "api_key in text is fine", "group": "ops@mycompany.com 4111111111111111",
        "safe_attribute": "4111111111111111", "safe_x": "5555555555554444", "x_trusted": "t",
        "session_token": "abc", "my_api_key": 42, "user": "bob", "phone": "555"}))
    got = span_attrs(b)
    # ignored keys untouched; keys outside allowed_keys removed; allowed value kept; md5 of each match
    # (redact_all_types: the int id is checked as "1234", no match, so it stays an int)
    assert got == {
        "id": 1234,
        "name": f"card {md5('4111111111111111')} and {md5('5555555555554444')}",
        "description": "api_key in text is fine",
        "group": "ops@mycompany.com 4111111111111111",
        "safe_attribute": "4111111111111111", "safe_x": "5555555555554444", "x_trusted": "t",
        "redaction.redacted.keys": "my_api_key,phone,session_token,user",
        "redaction.redacted.count": 4,
        "redaction.masked.keys": "name",
        "redaction.masked.count": 1,
        "redaction.allowed.keys": "group",
        "redaction.allowed.count": 1,
        "redaction.ignored.count": 3,
    }


def test_readme_example_1_blocked_key_patterns_mask_the_whole_value() -> None:
    cfg = yaml.safe_load(README_1) | {"allow_all_keys": True}
    got = span_attrs(run(cfg, span_with({"session_token": "abc", "my_api_key": 42, "user": "bob"})))
    assert got["session_token"] == md5("abc")
    assert got["my_api_key"] == md5("42")  # redact_all_types: the int, as text, hashed whole
    assert got["user"] == "bob"
    assert got["redaction.masked.keys"] == "my_api_key,session_token"


def test_readme_example_2_allowed_values_win_over_blocked_values() -> None:
    got = span_attrs(run({**yaml.safe_load(README_2), "allow_all_keys": True}, span_with({
        "a": "bob@mycompany.com", "b": "support.mycompany.com", "c": "x"})))
    assert got == {"a": "bob@****", "b": "support.mycompany.com", "c": "x"}  # no summary by default


def test_readme_example_2_alone_fails_closed() -> None:
    # allowed_keys empty and allow_all_keys unset: every attribute is removed
    assert span_attrs(run(README_2, span_with({"a": "bob@mycompany.com", "b": 1}))) == {}


def test_readme_example_3_hmac_sha256_of_each_ip() -> None:
    def h(s: str) -> str:
        return hmac.new(HMAC_KEY.encode(), s.encode(), hashlib.sha256).hexdigest()

    got = span_attrs(run(README_3, span_with({
        "client": "from 10.1.2.3 to 192.168.0.1", "v6": "fe80:0:0:0:202:b3ff:fe1e:8329", "n": 7})))
    assert got == {"client": f"from {h('10.1.2.3')} to {h('192.168.0.1')}",
                   "v6": h("fe80:0:0:0:202:b3ff:fe1e:8329"), "n": 7}


def test_readme_example_4_on_spans_events_resource_and_scope() -> None:
    b = span_with({"description": "paid with 4111111111111111", "email": "a@b.c", "secret": "x", "count": 3})
    rs = b.msg.resource_spans[0]
    rs.resource.attributes.append(kv("service.name", "shop"))
    rs.scope_spans[0].scope.attributes.append(kv("description", "4222222222222"))
    ev = rs.scope_spans[0].spans[0].events.add(name="e")
    ev.attributes.append(kv("email", "4111111111111111"))
    run(README_4, b)
    assert span_attrs(b) == {
        "description": "paid with ****", "email": "a@b.c",
        "redaction.redacted.keys": "count,secret", "redaction.redacted.count": 2,
        "redaction.masked.keys": "description", "redaction.masked.count": 1}
    assert attr_dict(rs.resource.attributes) == {"redaction.redacted.keys": "service.name",
                                                 "redaction.redacted.count": 1}
    assert attr_dict(rs.scope_spans[0].scope.attributes) == {
        "description": "****", "redaction.masked.keys": "description", "redaction.masked.count": 1}
    assert attr_dict(ev.attributes) == {"email": "****", "redaction.masked.keys": "email",
                                        "redaction.masked.count": 1}


def test_summary_info_counts_only_and_adds_to_earlier_counts() -> None:
    cfg = {"allowed_keys": ["a"], "summary": "info"}
    b = run(cfg, span_with({"a": 1, "b": 2, "c": 3}))
    assert span_attrs(b) == {"a": 1, "redaction.redacted.count": 2}
    run(cfg, b)  # a second processor: nothing more to remove, count kept (its key is on the allow list)
    assert span_attrs(b) == {"a": 1, "redaction.redacted.count": 2}


def test_log_body_map_and_string() -> None:
    b = Logs()
    recs = b.msg.resource_logs.add().scope_logs.add().log_records
    r1 = recs.add()
    r1.body.kvlist_value.values.append(kv("user", {"card": "4111111111111111", "pin": "1"}))
    r1.body.kvlist_value.values.append(kv("note", "ok"))
    r2 = recs.add()
    r2.body.string_value = "paid 4111111111111111"
    run({"allowed_keys": ["user", "card", "note"], "blocked_values": ["4[0-9]{15}"], "summary": "debug"}, b)
    from gotel.pdata.batch import value_of
    assert value_of(r1.body) == {"user": {"card": "****"}, "note": "ok"}
    assert attr_dict(r1.attributes) == {
        "redaction.body.redacted.keys": "user.pin", "redaction.body.redacted.count": 1,
        "redaction.body.masked.keys": "user.card", "redaction.body.masked.count": 1}
    assert r2.body.string_value == "paid ****"
    assert attr_dict(r2.attributes) == {"redaction.body.masked.keys": "body", "redaction.body.masked.count": 1}


# --- gotel's preset ---

def test_preset_credentials_masks_secrets_and_keeps_the_rest() -> None:
    got = span_attrs(run("preset: credentials", span_with({
        "url.full": "https://bob:hunter2@api.example.com/v1/items?id=7&token=abc123&api_key=zz#frag",
        "http.request.header.authorization": "Bearer eyJhbGciOi.x.y",
        "http.request.header.cookie": "sid=42",
        "http.response.header.set-cookie": "sid=43; HttpOnly",
        "db.password": "pw", "llm.usage.total_tokens": 12, "http.route": "/v1/items/{id}",
        "message": "retry with Authorization: Basic dXNlcjpwYXNz", "peer": "10.0.0.1",
        "http.url": "http://example.com/cb?code=xyz&state=1"})))
    assert got == {
        "url.full": "https://****@api.example.com/v1/items?id=7&token=****&api_key=****#frag",
        "http.request.header.authorization": "****",
        "http.request.header.cookie": "****",
        "http.response.header.set-cookie": "****",
        "db.password": "****", "llm.usage.total_tokens": 12, "http.route": "/v1/items/{id}",
        "message": "retry with Authorization: Basic ****", "peer": "10.0.0.1",
        "http.url": "http://example.com/cb?code=****&state=1"}


def test_preset_with_summary_and_allowed_keys() -> None:
    got = span_attrs(run({"preset": "credentials", "allowed_keys": ["auth_token", "url"], "summary": "debug"},
                         span_with({"auth_token": "t", "url": "redis://:pw@cache:6379/0", "other": 1})))
    assert got == {"auth_token": "****", "url": "redis://****@cache:6379/0",
                   "redaction.redacted.keys": "other", "redaction.redacted.count": 1,
                   "redaction.masked.keys": "auth_token,url", "redaction.masked.count": 2}


def test_preset_masks_pprof_labels() -> None:
    b = Profiles()
    m = b.msg
    d = m.dictionary
    d.string_table.extend(["", "authorization", "Bearer abc", "endpoint", "/login?password=pw", "region"])
    for k, v in ((1, 2), (3, 4), (5, None)):
        e = d.attribute_table.add(key_strindex=k)
        if v is None:
            e.value.string_value = "eu"
        else:
            e.value.string_value_strindex = v
    m.resource_profiles.add().resource.attributes.append(kv("http.request.header.cookie", "c"))
    run("preset: credentials", b)
    vals = [(d.string_table[e.key_strindex], e.value.string_value) for e in d.attribute_table]
    assert vals == [("authorization", "****"), ("endpoint", "/login?password=****"), ("region", "eu")]
    assert attr_dict(m.resource_profiles[0].resource.attributes) == {"http.request.header.cookie": "****"}


def test_processor_on_the_pipeline_masks_metrics_data_points() -> None:
    from gotel.pdata.batch import Metrics

    b = Metrics()
    metric = b.msg.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    p = metric.sum.data_points.add(as_int=1)
    p.attributes.append(kv("api_key", "k"))
    p.attributes.append(kv("path", "/a?token=t"))
    got: list[Batch] = []

    class Sink:
        mutates = False

        async def consume(self, batch: Batch) -> None:
            got.append(batch)

    tel = Tel()
    proc = red.factory.create(Signal.METRICS, red.Config.model_validate({"preset": "credentials"}), Sink(),
                              tel.ctx("redaction", Kind.PROCESSOR))
    import asyncio

    asyncio.run(proc.consume(b))
    dp = got[0].peek().resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert attr_dict(dp.attributes) == {"api_key": "****", "path": "/a?token=****"}
    labels = {"component": "redaction", "kind": "processor", "signal": "metrics"}
    assert tel.value("processor_redaction_attributes_total", **labels, action="masked") == 2
    assert tel.value("processor_redaction_attributes_total", **labels, action="redacted") == 0


# --- config ---

def load(body: str) -> Any:
    text = textwrap.dedent("""
        receivers: {otlp: {}}
        processors:
          redaction:
        %s
        exporters: {debug: {}}
        service: {pipelines: {traces: {receivers: [otlp], processors: [redaction], exporters: [debug]}}}
        """) % textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return load_config("c.yaml", text=text, env={})


@pytest.mark.parametrize("example", [README_1, README_2, README_3, README_4, "preset: credentials"])
def test_validate_accepts_the_readme_examples(example: str) -> None:
    load(example)


def test_url_sanitizer_enabled_is_one_clear_error() -> None:
    with pytest.raises(ConfigError) as e:
        load(README_1 + "url_sanitizer: {enabled: true, attributes: [http.url]}\n")
    assert len(e.value.issues) == 1
    issue = e.value.issues[0]
    assert "url_sanitizer" in issue.path and "no URL/DB sanitizer" in issue.message


@pytest.mark.parametrize(("body", "where", "says"), [
    ("blocked_values: ['a(']", "redaction", "blocked_values[0]: bad regex"),
    ("summary: loud", "summary", "debug"),
    ("hash_function: sha256", "hash_function", "sha1"),
    ("hash_function: hmac-sha512\nhmac_key: short", "redaction", "at least 64 bytes"),
    ("allowed_key: [a]", "allowed_key", 'did you mean "allowed_keys"'),
])
def test_bad_config_names_what_and_where(body: str, where: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(body)
    assert len(e.value.issues) == 1
    issue = e.value.issues[0]
    assert where in issue.path and says in issue.message, (issue.path, issue.message)
