"""The `attributes` and `resource` processors' documentation examples (the collector's README and
testdata/config.yaml), each with a known input: shared by the unit tests (gotel's output checked item by
item) and the real-collector comparison (the same input through otelcol v0.161.0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gotel.pdata.batch import Batch, Logs, Metrics, Signal, Traces, kv
from tests.helpers import otlp_samples


@dataclass
class Case:
    name: str
    processor: str  # attributes | resource
    config: dict[str, Any]
    signal: Signal
    batch: Batch
    metadata: dict[str, str] = field(default_factory=dict)


Res = dict[str, Any]
Scope = tuple[str, str]


def traces(groups: list[tuple[Res, Scope, list[tuple[str, dict[str, Any], int]]]]) -> Traces:
    """[(resource attributes, (scope name, version), [(span name, attributes, kind)])]"""
    t = Traces()
    n = 0
    for res, (sname, sver), spans in groups:
        rs = t.msg.resource_spans.add()
        rs.resource.attributes.extend(kv(k, v) for k, v in res.items())
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = sname, sver
        for name, attrs, kind in spans:
            n += 1
            sp = ss.spans.add()
            sp.trace_id = bytes([n]) * 16
            sp.span_id = bytes([n]) * 8
            sp.name, sp.kind = name, kind
            sp.start_time_unix_nano, sp.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_000_250_000
            sp.attributes.extend(kv(k, v) for k, v in attrs.items())
    return t


def spans(*attrs: dict[str, Any], service: str = "svc") -> Traces:
    return traces([({"service.name": service}, ("lib", "1.0"), [(f"op{i}", a, 2) for i, a in enumerate(attrs)])])


def logs(records: list[tuple[Any, str, int, dict[str, Any]]], res: Res | None = None) -> Logs:
    """[(body, severity text, severity number, attributes)]"""
    b = Logs()
    rl = b.msg.resource_logs.add()
    rl.resource.attributes.extend(kv(k, v) for k, v in (res or {"service.name": "svc"}).items())
    sl = rl.scope_logs.add()
    sl.scope.name = "lib"
    for i, (body, stext, snum, attrs) in enumerate(records):
        lr = sl.log_records.add()
        lr.time_unix_nano = 1_700_000_000_000_000_000 + i
        lr.body.CopyFrom(kv("b", body).value)
        lr.severity_text, lr.severity_number = stext, snum
        lr.attributes.extend(kv(k, v) for k, v in attrs.items())
    return b


def metrics(items: list[tuple[str, list[dict[str, Any]]]], res: Res | None = None) -> Metrics:
    """[(metric name, [data point attributes])]: gauges, one int point per attribute set."""
    b = Metrics()
    rm = b.msg.resource_metrics.add()
    rm.resource.attributes.extend(kv(k, v) for k, v in (res or {"service.name": "svc"}).items())
    sm = rm.scope_metrics.add()
    sm.scope.name = "lib"
    for name, points in items:
        m = sm.metrics.add()
        m.name = name
        for i, attrs in enumerate(points):
            dp = m.gauge.data_points.add()
            dp.time_unix_nano = 1_700_000_000_000_000_000
            dp.as_int = i
            dp.attributes.extend(kv(k, v) for k, v in attrs.items())
    return b


def _svc_spans() -> Traces:
    """The four spans of testdata/config.yaml's include/exclude comments (service = the 'Name')."""
    return traces([
        ({"service.name": "svcB"}, ("lib", ""), [("s1", {"env": "dev", "test_request": 123, "credit_card": 1234}, 2)]),
        ({"service.name": "svcA"}, ("lib", ""), [("s2", {"env": "dev", "test_request": False}, 2)]),
        ({"service.name": "svcB"}, ("lib", ""), [("s3", {"env": 1, "test_request": "dev", "credit_card": 1234}, 2)]),
        ({"service.name": "svcC"}, ("lib", ""), [("s4", {"env": "dev", "test_request": False, "credit_card": 9}, 2)]),
    ])


DEL_CC = [{"key": "credit_card", "action": "delete"}, {"key": "duplicate_key", "action": "delete"}]


# testdata/config.yaml's attributes/regex_insert as written: its `(\?|\&)` is an unnamed group, which the
# collector refuses ("contains at least one unnamed matcher group"); the cases use `(?:\?|\&)`.
REGEX_INSERT_AS_DOCUMENTED = (r"^(?P<http_protocol>.*):\/\/(?P<http_domain>.*)\/(?P<http_path>.*)(\?|\&)"
                              r"(?P<http_query_params>.*)")


def cases() -> list[Case]:
    t = Signal.TRACES
    url = "http://example.com/path?queryParam1=value1,queryParam2=value2"
    return [
        Case("insert", "attributes", {"actions": [
            {"key": "attribute1", "value": 123, "action": "insert"},
            {"key": "string key", "from_attribute": "anotherkey", "action": "insert"}]}, t,
            spans({"anotherkey": "v"}, {"attribute1": "kept", "anotherkey": 5}, {})),
        Case("regex_insert", "attributes", {"actions": [
            {"key": "http.url", "action": "extract",
             "pattern": r"^(?P<http_protocol>.*):\/\/(?P<http_domain>.*)\/(?P<http_path>.*)(?:\?|\&)(?P<http_query_params>.*)"}]},
            t, spans({"http.url": url}, {"http.url": "no match"}, {"http.url": 42})) ,
        Case("extract_named", "attributes", {"actions": [
            {"key": "http.route", "action": "extract", "pattern": r"/users/(?P<user_id>\d+)(?:/(?P<tab>\w+))?"}]},
            t, spans({"http.route": "GET /users/42/orders"}, {"http.route": "/users/7", "user_id": 1},
                     {"http.route": "/other"})),
        Case("update", "attributes", {"actions": [
            {"key": "boo", "from_attribute": "foo", "action": "update"},
            {"key": "db.secret", "value": "redacted", "action": "update"}]}, t,
            spans({"boo": 1, "foo": "x", "db.secret": "pw"}, {"foo": "y"}, {"boo": True})),
        Case("upsert", "attributes", {"actions": [
            {"key": "region", "value": "planet-earth", "action": "upsert"},
            {"key": "new_user_key", "from_attribute": "user_key", "action": "upsert"}]}, t,
            spans({"region": "mars", "user_key": 7}, {}, {"new_user_key": "old", "user_key": [1, 2]})),
        Case("delete", "attributes", {"actions": DEL_CC}, t,
             spans({"credit_card": "4111", "duplicate_key": 1, "keep": 2}, {"keep": 3})),
        Case("hash", "attributes", {"actions": [{"key": "user.email", "action": "hash"}]}, t,
             spans({"user.email": "jane@example.com"}, {"user.email": ""}, {"other": "x"})),
        Case("hash_kinds", "attributes", {"actions": [{"action": "hash", "pattern": "^h\\."}]}, t,
             spans({"h.s": "é", "h.i": -5, "h.i0": 0, "h.d": 1.5, "h.b": True, "h.f": False,
                    "h.a": [1, "x"], "h.m": {"k": "v"}, "h.bytes": b"\x00\x01", "keep": "x"})),
        Case("convert", "attributes", {"actions": [
            {"key": "http.status_code", "action": "convert", "converted_type": "int"}]}, t,
            spans(*({"http.status_code": v} for v in ("200", 200.9, -3.7, True, "abc", " 12", "+7", "1e3",
                                                     "99999999999999999999", [1])))),
        Case("convert_double", "attributes", {"actions": [
            {"key": "v", "action": "convert", "converted_type": "double"}]}, t,
            spans(*({"v": v} for v in ("1.5", "1e3", ".5", "inf", "-Infinity", "nan", "1e400", "x", " 1", "1_0",
                                       7, False, "0x1p-2")))),
        Case("convert_string", "attributes", {"actions": [
            {"key": "v", "action": "convert", "converted_type": "string"}]}, t,
            spans(*({"v": v} for v in (1, -2, 1.5, 3.0, 1e21, 1e20, 1e-7, 0.000001, 123456789.125, 0.1, -0.0,
                                       True, "s", b"\x01\x02", [1, "a", True], {"k": 1})))),
        Case("excludemulti", "attributes", {"exclude": {"match_type": "strict", "services": ["svcA", "svcB"],
                                                        "attributes": [{"key": "env", "value": "dev"},
                                                                       {"key": "test_request"}]},
                                            "actions": DEL_CC}, t, _svc_spans()),
        Case("excluderesources", "attributes", {"exclude": {"match_type": "strict", "resources": [
            {"key": "host.type", "value": "n1-standard-1"}]}, "actions": DEL_CC}, t,
            traces([({"host.type": "n1-standard-1"}, ("l", ""), [("a", {"credit_card": 1}, 1)]),
                    ({"host.type": "n2"}, ("l", ""), [("b", {"credit_card": 1}, 1)])])),
        Case("excludelibrary", "attributes", {"exclude": {"match_type": "strict", "libraries": [
            {"name": "mongo-java-driver", "version": "3.8.0"}]}, "actions": DEL_CC}, t,
            traces([({}, ("mongo-java-driver", "3.8.0"), [("a", {"credit_card": 1}, 1)]),
                    ({}, ("mongo-java-driver", "3.9.0"), [("b", {"credit_card": 1}, 1)]),
                    ({}, ("other", "3.8.0"), [("c", {"credit_card": 1}, 1)])])),
        Case("excludelibrary_blank", "attributes", {"exclude": {"match_type": "strict", "libraries": [
            {"name": "lib", "version": ""}]}, "actions": DEL_CC}, t,
            traces([({}, ("lib", ""), [("a", {"credit_card": 1}, 1)]),
                    ({}, ("lib", "1"), [("b", {"credit_card": 1}, 1)])])),
        Case("includeservices", "attributes", {"include": {"match_type": "regexp", "services": ["auth.*", "login.*"]},
                                               "actions": DEL_CC}, t,
             traces([({"service.name": s}, ("l", ""), [("x", {"credit_card": 1}, 1)])
                     for s in ("auth-api", "login", "myauth", "billing")] +
                    [({}, ("l", ""), [("y", {"credit_card": 1}, 1)])])),
        Case("selectiveprocessing", "attributes", {
            "include": {"match_type": "strict", "services": ["svcA", "svcB"]},
            "exclude": {"match_type": "strict", "attributes": [{"key": "redact_trace", "value": False}]},
            "actions": DEL_CC}, t,
            traces([
                ({"service.name": "svcB"}, ("l", ""), [("1", {"env": "production", "test_request": 123,
                                                              "credit_card": 1234, "redact_trace": "false"}, 1)]),
                ({"service.name": "svcA"}, ("l", ""), [("2", {"env": "staging", "test_request": False,
                                                              "redact_trace": True, "credit_card": 1}, 1)]),
                ({"service.name": "svcB"}, ("l", ""), [("3", {"env": "production", "test_request": True,
                                                              "credit_card": 1234, "redact_trace": False}, 1)]),
                ({"service.name": "svcC"}, ("l", ""), [("4", {"env": "dev", "credit_card": 5}, 1)])])),
        Case("complex", "attributes", {"actions": [
            {"key": "operation", "value": "default", "action": "insert"},
            {"key": "svc.operation", "from_attribute": "operation", "action": "upsert"},
            {"key": "operation", "action": "delete"}]}, t,
            spans({"timeout": 10, "svc.operation": "addition", "operation": "addition"},
                  {"operation": "subtract", "math_value": 123}, {"timeout": 10, "math_value": 4},
                  {"svc.operation": "division", "timeout": 3})),
        Case("example", "attributes", {"actions": [
            {"key": "db.table", "action": "delete"},
            {"key": "redacted_span", "value": True, "action": "upsert"},
            {"key": "copy_key", "from_attribute": "key_original", "action": "update"},
            {"key": "account_id", "value": 2245, "action": "insert"},
            {"key": "account_password", "action": "delete"},
            {"key": "account_email", "action": "hash"},
            {"key": "http.status_code", "action": "convert", "converted_type": "int"}]}, t,
            spans({"db.table": "users", "copy_key": "a", "key_original": "b", "account_password": "pw",
                   "account_email": "a@b.c", "http.status_code": "404"},
                  {"account_id": 1, "redacted_span": False, "copy_key": 1.5},
                  {"key_original": "c"})),
        Case("regexp", "attributes", {
            "include": {"match_type": "regexp", "services": ["auth.*"]},
            "exclude": {"match_type": "regexp", "span_names": ["login.*"]},
            "actions": [{"key": "password", "action": "update", "value": "obfuscated"},
                        {"key": "token", "action": "delete"}]}, t,
            traces([({"service.name": "auth"}, ("l", ""), [("login-user", {"password": "p", "token": "t"}, 2),
                                                          ("get", {"password": "p", "token": "t"}, 2)]),
                    ({"service.name": "shop"}, ("l", ""), [("get", {"password": "p", "token": "t"}, 2)])])),
        Case("regexp2", "attributes", {
            "include": {"match_type": "regexp", "attributes": [{"key": "env", "value": r"SELECT \* FROM USERS.*"}]},
            "actions": [{"key": "db.statement", "action": "update", "value": "SELECT * FROM USERS [obfuscated]"}]}, t,
            spans({"env": "SELECT * FROM USERS WHERE id=1", "db.statement": "q"},
                  {"env": "select 1", "db.statement": "q"}, {"db.statement": "q"})),
        Case("regexp_values", "attributes", {
            "include": {"match_type": "regexp", "attributes": [{"key": "v", "value": "^1"}]},
            "actions": [{"key": "hit", "value": True, "action": "insert"}]}, t,
            spans({"v": 12}, {"v": 1.5}, {"v": True}, {"v": "1x"}, {"v": 21}, {"v": [1]})),
        Case("strict_types", "attributes", {
            "include": {"match_type": "strict", "attributes": [{"key": "code", "value": 200}]},
            "actions": [{"key": "hit", "value": True, "action": "insert"}]}, t,
            spans({"code": 200}, {"code": "200"}, {"code": 200.0}, {})),
        Case("span_kinds", "attributes", {
            "include": {"match_type": "strict", "span_kinds": ["SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER"]},
            "actions": [{"key": "side", "value": "in", "action": "insert"}]}, t,
            traces([({}, ("l", ""), [(str(k), {}, k) for k in range(6)])])),
        Case("pattern_delete", "attributes", {"actions": [{"action": "delete", "pattern": "^secret\\."},
                                                          {"key": "x", "action": "delete"}]}, t,
             spans({"secret.a": 1, "secret.b": 2, "x": 3, "not.secret.c": 4, "y": 5})),
        Case("from_context", "attributes", {"actions": [
            {"key": "origin", "from_context": "metadata.origin", "action": "insert"},
            {"key": "enduser.id", "from_context": "auth.subject", "action": "insert"},
            {"key": "tenant", "from_context": "x-tenant", "action": "upsert"},
            {"key": "absent", "from_context": "metadata.nope", "action": "upsert"}]}, t,
            spans({"tenant": "old"}, {}), metadata={"origin": "edge-1", "x-tenant": "acme"}),
        Case("readme_default_value", "attributes", {"actions": [
            {"key": "region", "from_attribute": "cloud.region", "default_value": "us-east-1", "action": "insert"},
            {"key": "tenant_id", "from_context": "metadata.tenant", "default_value": "default-tenant",
             "action": "upsert"},
            {"key": "tier", "default_value": 3, "action": "insert"},
            {"key": "zone", "from_attribute": "cloud.zone", "default_value": "z0", "action": "update"}]}, t,
            spans({"cloud.region": "eu-west-1", "zone": "a", "cloud.zone": "b"}, {"region": "kept", "zone": "a"},
                  {}), metadata={"x-other": "1"}),
        Case("log_body_regexp", "attributes", {
            "include": {"match_type": "regexp", "log_bodies": ["AUTH.*"]},
            "actions": [{"key": "password", "action": "update", "value": "obfuscated"},
                        {"key": "token", "action": "delete"}]}, Signal.LOGS,
            logs([("AUTH failed", "", 0, {"password": "p", "token": "t"}),
                  ("user AUTH ok", "", 0, {"password": "p", "token": "t"}),
                  ("other", "", 0, {"password": "p", "token": "t"}),
                  (123, "", 0, {"password": "p"})])),
        Case("log_severity_regexp", "attributes", {
            "include": {"match_type": "regexp", "log_severity_texts": ["debug.*"]},
            "actions": [{"key": "password", "action": "update", "value": "obfuscated"},
                        {"key": "token", "action": "delete"}]}, Signal.LOGS,
            logs([("a", "debug", 5, {"password": "p", "token": "t"}),
                  ("b", "info", 9, {"password": "p", "token": "t"})])),
        Case("log_severity_number", "attributes", {
            "include": {"match_type": "strict", "log_severity_number": {"min": 13, "match_undefined": True}},
            "actions": [{"key": "loud", "value": True, "action": "insert"}]}, Signal.LOGS,
            logs([("a", "", 0, {}), ("b", "", 9, {}), ("c", "", 13, {}), ("d", "", 17, {})])),
        Case("log_resources_exclude", "attributes", {
            "exclude": {"match_type": "regexp", "resources": [{"key": "service.name", "value": "^noisy"}],
                        "attributes": [{"key": "debug"}]},
            "actions": [{"key": "kept", "value": 1, "action": "insert"}]}, Signal.LOGS,
            logs([("a", "", 9, {"debug": 1}), ("b", "", 9, {})], res={"service.name": "noisy-svc"})),
        Case("metric_names", "attributes", {
            "include": {"match_type": "regexp", "metric_names": ["^http\\."]},
            "actions": [{"key": "region", "value": "eu", "action": "upsert"},
                        {"key": "user", "action": "hash"}]}, Signal.METRICS,
            metrics([("http.server.duration", [{"user": "u1"}, {"region": "us"}]),
                     ("rpc.duration", [{"user": "u2"}])])),
        Case("metric_names_exclude", "attributes", {
            "exclude": {"match_type": "strict", "metric_names": ["rpc.duration"]},
            "actions": [{"key": "code", "action": "convert", "converted_type": "int"}]}, Signal.METRICS,
            metrics([("http.server.duration", [{"code": "200"}]), ("rpc.duration", [{"code": "5"}])])),
        Case("metric_resources", "attributes", {
            "include": {"match_type": "strict", "resources": [{"key": "service.name", "value": "other"}]},
            "actions": [{"key": "seen", "value": True, "action": "insert"}]}, Signal.METRICS,
            metrics([("m1", [{}]), ("m2", [{"a": 1}])])),
        Case("resource_readme", "resource", {"attributes": [
            {"key": "cloud.availability_zone", "value": "zone-1", "action": "upsert"},
            {"key": "k8s.cluster.name", "from_attribute": "k8s-cluster", "action": "insert"},
            {"key": "redundant-attribute", "action": "delete"}]}, t,
            traces([({"k8s-cluster": "prod", "redundant-attribute": 1, "cloud.availability_zone": "z0"},
                     ("l", ""), [("a", {}, 1)]),
                    ({"service.name": "x"}, ("l", ""), [("b", {}, 1)])])),
        Case("resource_demo_profiler", "resource", {"attributes": [
            {"key": "service.name", "from_attribute": "container.name", "action": "upsert"}]}, Signal.LOGS,
            logs([("a", "", 9, {})], res={"container.name": "cart", "service.name": "unknown_service"})),
        Case("resource_all_actions", "resource", {"attributes": [
            {"key": "host.id", "action": "hash"},
            {"key": "image", "action": "extract", "pattern": r"^(?P<image_name>[^:]+):(?P<image_tag>.+)$"},
            {"key": "pid", "action": "convert", "converted_type": "int"},
            {"action": "delete", "pattern": "^tmp\\."}]}, Signal.METRICS,
            metrics([("m", [{}])], res={"host.id": "abc", "image": "shop:1.2", "pid": "42", "tmp.a": 1})),
        Case("resource_profiles", "resource", {"attributes": [
            {"key": "service.name", "action": "hash"},
            {"key": "deployment.environment", "value": "prod", "action": "insert"}]}, Signal.PROFILES,
            otlp_samples.profiles()),
    ]
