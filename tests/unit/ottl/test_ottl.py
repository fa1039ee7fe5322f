"""gotel.ottl: OTTL's typing rules for comparisons and arithmetic, converters, precedence, what the
request bytes can rule out; each case on one span or log record with a known value."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gotel.ottl import ConditionSet, Item, OttlEvalError, OttlSyntaxError, compile_condition
from gotel.pdata.batch import kv


def span_item(**attrs: Any) -> Item:
    s = Span(name="GET /x", kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1_000, end_time_unix_nano=1_500_001_000)
    s.status.code = Status.STATUS_CODE_ERROR
    s.attributes.extend(kv(k, v) for k, v in attrs.items())
    it = Item()
    it.item = s
    return it


def ev(cond: str, it: Item, signal: str = "traces", context: str = "span") -> bool:
    return compile_condition(cond, signal, context).evaluate(it)


@pytest.mark.parametrize(("cond", "want"), [
    ('attributes["i"] == 3', True), ('attributes["i"] == 3.0', True), ('attributes["i"] < 3.5', True),
    ('attributes["i"] == "3"', False), ('attributes["i"] != "3"', True), ('attributes["i"] < "4"', False),
    ('attributes["b"] == true', True), ('attributes["b"] == 1', False), ('attributes["b"] != 1', True),
    ('attributes["s"] > "abb"', True), ('attributes["s"] <= "abd"', True),
    ('attributes["missing"] == nil', True), ('attributes["missing"] != nil', False),
    ('attributes["missing"] < 1', False), ("nil == nil", True), ("nil <= nil", True),
    ('attributes["s"] == nil', False), ('attributes["m"]["k"] == "v"', True), ('attributes["l"][1] == 2', True),
    ("kind == SPAN_KIND_SERVER and status.code == STATUS_CODE_ERROR", True),
    ("span.kind == SPAN_KIND_CLIENT or not (status.code != 2)", True),
    ("end_time_unix_nano - start_time_unix_nano > 1000000000", True),
    ("end_time - start_time > Duration(\"1.5s\")", False), ("end_time - start_time >= Duration(\"1.5s\")", True),
    ("end_time > start_time", True), ("end_time - start_time == 1500000000", False),  # a duration is no int
    ("7 / 2 == 3", True), ("-7 / 2 == -3", True), ("1 + 2 * 3 == 7", True), ("(1 + 2) * 3 == 9", True),
    ("7.0 / 2 == 3.5", True),
    ("true and false or true", True), ("true and (false or false)", False), ("not true or true", True),
    ('IsMatch(name, "^GET")', True), ('IsMatch(attributes["i"], "^3$")', True),
    ('IsMatch(attributes["m"], "\\"k\\":\\"v\\"")', True), ('IsMatch(attributes["missing"], ".*")', False),
    ('IsString(attributes["s"])', True), ('IsString(attributes["i"])', False), ('IsInt(attributes["i"])', True),
    ('IsBool(attributes["b"])', True), ('IsDouble(attributes["f"])', True), ('IsMap(attributes["m"])', True),
    ('IsList(attributes["l"])', True),
    ('Len(attributes["u"]) == 4', True),  # bytes, as Go's len: "é" is 2
    ('Len(attributes["l"]) == 2', True), ('Len(attributes["m"]) == 1', True),
    ('kind.string == "Server"', True), ('trace_id.string == "00000000000000000000000000000000"', False),
])
def test_semantics(cond: str, want: bool) -> None:
    it = span_item(i=3, b=True, s="abc", f=1.5, m={"k": "v"}, l=[1, 2], u="éé")
    assert ev(cond, it) is want


def test_runtime_errors_follow_the_error_mode() -> None:
    import logging

    it = span_item(i=3)
    conds = [compile_condition(c, "traces", "span") for c in ('Len(attributes["i"]) > 1', "1 / 0 == 1",
                                                              'name == "GET /x"')]
    assert ConditionSet(conds, "ignore", logging.getLogger("t"), "f").matches(it) is True  # errors skipped
    failing = ConditionSet(conds[:2], "silent", logging.getLogger("t"), "f")
    assert failing.matches(it) is False and failing.errors == 2
    with pytest.raises(OttlEvalError, match="divide by 0"):
        ConditionSet(conds[1:], "propagate", logging.getLogger("t"), "f").matches(it)


def test_log_context() -> None:
    lr = LogRecord(severity_number=SeverityNumber.SEVERITY_NUMBER_INFO, severity_text="INFO")
    lr.body.string_value = "user password reset"
    it = Item()
    it.item = lr
    assert ev('IsMatch(body, "password") and severity_number < SEVERITY_NUMBER_WARN', it, "logs", "log")
    assert ev('log.body.string == "user password reset"', it, "logs", "log")


@pytest.mark.parametrize(("cond", "needs"), [
    ('span.attributes["http.route"] == "/healthz"', {b"/healthz"}),
    ('span.name == "a" or IsMatch(span.name, "^b.*")', {b"a", b"b"}),
    ('span.name == "a" and span.kind == SPAN_KIND_SERVER', {b"a"}),
    ('span.name != "a"', None), ('not span.name == "a"', None), ('span.attributes["x"] == nil', None),
    ('IsMatch(span.attributes["x"], "42")', None),  # an int attribute matches as its text, not raw bytes
    ('IsMatch(span.name, "a.c")', None), ('span.name == "a" or span.kind == 2', None),
])
def test_what_the_request_bytes_can_rule_out(cond: str, needs: set[bytes] | None) -> None:
    got = compile_condition(cond, "traces").needs
    assert (set(got) if got is not None else None) == needs


@pytest.mark.parametrize("cond", ["name ==", "name == 'x'", "(name == \"x\"", "name == \"x\" and",
                                  "attributes[1] == 2", "Len()", "IsMatch(name, name)", "name == [1]"])
def test_syntax_errors_have_a_column(cond: str) -> None:
    with pytest.raises(OttlSyntaxError) as e:
        compile_condition(cond, "traces", "span")
    assert 1 <= e.value.col <= len(cond) + 1
