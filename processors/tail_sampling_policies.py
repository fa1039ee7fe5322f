"""The tail_sampling processor's policies: their config models and how each one decides.

Each policy reads a whole trace (its spans as parsed OTLP ResourceSpans) and answers sampled, not
sampled or dropped, with the collector's semantics as of v0.161.0 (contrib
processor/tailsamplingprocessor/internal/sampling): attribute policies look at resource attributes
and span attributes, an attribute of another type reads as the type's zero value (pdata's
``Value.Int()``/``Str()``/``Bool()``), ``invert_match`` is a plain not-sampled/sampled answer (the
deprecated "inverted" decisions are gone from the collector's policies), and ``drop`` is the one veto.
``deadline_missed`` is gotel's own: go_ebpf sees both sides of a call and marks missed deadlines.
Stateful policies (rate_limiting, bytes_limiting, composite) read the processor's clock: tests need no sleeps.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from enum import IntEnum
from fractions import Fraction
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from gotel.component.contract import ComponentConfig
from gotel.config.types import Duration
from gotel.ottl import ConditionSet, ErrorMode, Item, OttlEvalError, compile_condition

_log = logging.getLogger("gotel.processors.tail_sampling")


class Decision(IntEnum):
    SAMPLED = 1
    NOT_SAMPLED = 2
    DROPPED = 3


# --- config -------------------------------------------------------------------------------------------

STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}
# Collector policy types gotel's tail_sampling does not evaluate: named in the error so it is not a typo.
COLLECTOR_ONLY_TYPES: tuple[str, ...] = ()


class LatencyCfg(ComponentConfig):
    """The collector writes `threshold_ms`/`upper_threshold_ms` (integer milliseconds); gotel also takes
    `threshold`/`upper_threshold` as durations. Comparisons are in whole milliseconds, as the collector's."""

    model_config = ConfigDict(json_schema_extra={"properties": {
        "threshold_ms": {"type": "integer", "description": "the collector's key: traces longer than this many ms"},
        "upper_threshold_ms": {"type": "integer", "description": "the collector's key: and at most this many ms"},
    }})
    threshold: Duration = Field(0.0, ge=0, description="sample traces whose span window is longer than this")
    upper_threshold: Duration = Field(0.0, ge=0, description="and at most this long; 0 = no upper bound")

    @model_validator(mode="before")
    @classmethod
    def _collector_ms_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in (("threshold_ms", "threshold"), ("upper_threshold_ms", "upper_threshold")):
            if old in data:
                if new in data:
                    raise ValueError(f'give either "{old}" (milliseconds) or "{new}" (a duration), not both')
                v = data.pop(old)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f'"{old}" must be a whole number of milliseconds, got {v!r}')
                if v < 0:
                    raise ValueError(f'"{old}" must not be negative')
                data[new] = v / 1000.0
        return data


class NumericAttributeCfg(ComponentConfig):
    key: str = Field(..., min_length=1)
    min_value: int = Field(0, description="lower bound, inclusive (0 = none, as in the collector)")
    max_value: int = Field(0, description="upper bound, inclusive (0 = none, as in the collector)")
    invert_match: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> NumericAttributeCfg:
        if self.min_value == 0 and self.max_value == 0:
            raise ValueError("set min_value or max_value (0 means unset, as in the collector)")
        return self


class ProbabilisticCfg(ComponentConfig):
    hash_salt: str = ""
    sampling_percentage: float = Field(0.0, ge=0, le=100)


class StatusCodeCfg(ComponentConfig):
    status_codes: list[str] = Field(..., min_length=1)

    @field_validator("status_codes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for c in v:
            if c not in STATUS_CODES:
                raise ValueError(f"unknown status code {c!r}, supported: OK, ERROR, UNSET")
        return v


class StringAttributeCfg(ComponentConfig):
    key: str = Field(..., min_length=1)
    values: list[str] = Field(default_factory=list)
    enabled_regex_matching: bool = False
    cache_max_size: int = Field(0, ge=0, description="regex results remembered per value (default 128)")
    invert_match: bool = False

    @model_validator(mode="after")
    def _regexes(self) -> StringAttributeCfg:
        if self.enabled_regex_matching:
            for v in self.values:
                try:
                    re.compile(v)
                except re.error as e:
                    raise ValueError(f"invalid regex `{v}`: {e}") from None
        return self


class RateLimitingCfg(ComponentConfig):
    spans_per_second: int = Field(0, ge=0)
    burst_capacity: int = Field(0, ge=0, description="token bucket size in spans; 0 = 2 x spans_per_second")


class BytesLimitingCfg(ComponentConfig):
    bytes_per_second: int = Field(..., ge=0)
    burst_capacity: int = Field(0, ge=0, description="token bucket size in bytes; 0 = 2 x bytes_per_second")


class TraceStateCfg(ComponentConfig):
    key: str = Field(..., min_length=1)
    values: list[str] = Field(..., min_length=1)


class SpanCountCfg(ComponentConfig):
    min_spans: int = Field(0, ge=0)
    max_spans: int = Field(0, ge=0, description="0 = no upper bound")


class BooleanAttributeCfg(ComponentConfig):
    key: str = Field(..., min_length=1)
    value: bool = False
    invert_match: bool = False


class DeadlineMissedCfg(ComponentConfig):
    """gotel's policy: keep every trace in which some call missed a deadline."""

    exceeded: bool = Field(True, description="spans with gotel.rpc.deadline.exceeded=true (the call's own deadline ran out)")
    propagated: bool = Field(True, description="spans with gotel.rpc.deadline.propagated=true (DEADLINE_EXCEEDED "
                                               "passed on from a deadline further up the call chain)")
    grpc_status: bool = Field(False, description="also spans whose gRPC status is DEADLINE_EXCEEDED "
                                                 "(rpc.grpc.status_code 4, rpc.response.status_code), from other instrumentation")

    @model_validator(mode="after")
    def _something(self) -> DeadlineMissedCfg:
        if not (self.exceeded or self.propagated or self.grpc_status):
            raise ValueError("enable at least one of exceeded, propagated, grpc_status")
        return self


class OttlConditionCfg(ComponentConfig):
    """The collector's ottl_condition policy: sampled when any `span` condition holds for a span or any
    `spanevent` condition for a span event of the trace."""

    error_mode: ErrorMode = Field("propagate", description="propagate: a failing condition makes the trace not "
                                  "sampled; ignore: logged and treated as no match; silent: neither")
    span: list[str] = Field(default_factory=list, description="OTTL conditions in the span context")
    spanevent: list[str] = Field(default_factory=list, description="OTTL conditions in the spanevent context")

    @model_validator(mode="after")
    def _compiled(self) -> OttlConditionCfg:
        if not self.span and not self.spanevent:
            raise ValueError("at least one span or spanevent condition is required")
        for ctx, conds in (("span", self.span), ("spanevent", self.spanevent)):
            for i, c in enumerate(conds):
                try:
                    compile_condition(c, "traces", ctx)
                except ValueError as e:
                    raise ValueError(f"{ctx}[{i}]: {e}") from None
        return self


LEAF_TYPES = ("always_sample", "latency", "numeric_attribute", "probabilistic", "status_code", "string_attribute",
              "rate_limiting", "bytes_limiting", "span_count", "trace_state", "trace_flags", "boolean_attribute",
              "deadline_missed", "ottl_condition")


class SharedPolicy(ComponentConfig):
    """A policy that decides by itself (what `and` and `drop` may hold)."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(..., min_length=1)
    type: str
    latency: LatencyCfg | None = None
    numeric_attribute: NumericAttributeCfg | None = None
    probabilistic: ProbabilisticCfg | None = None
    status_code: StatusCodeCfg | None = None
    string_attribute: StringAttributeCfg | None = None
    rate_limiting: RateLimitingCfg | None = None
    bytes_limiting: BytesLimitingCfg | None = None
    span_count: SpanCountCfg | None = None
    trace_state: TraceStateCfg | None = None
    boolean_attribute: BooleanAttributeCfg | None = None
    deadline_missed: DeadlineMissedCfg | None = None
    ottl_condition: OttlConditionCfg | None = None

    @model_validator(mode="before")
    @classmethod
    def _type_first(cls, data: Any) -> Any:
        """The type is checked before its block, so that a type gotel lacks is named as such."""
        if isinstance(data, dict) and isinstance(data.get("type"), str):
            t, name, allowed = data["type"], data.get("name", "?"), cls.allowed()
            if t not in allowed:
                if t in COLLECTOR_ONLY_TYPES:
                    raise ValueError(f"policy {name!r}: type {t!r} is the collector's, gotel's tail_sampling does not "
                                     f"have it (it has: {', '.join(allowed)})")
                raise ValueError(f"policy {name!r}: unknown type {t!r} (valid here: {', '.join(allowed)})")
        return data

    @model_validator(mode="after")
    def _typed(self) -> SharedPolicy:
        need = {"latency", "numeric_attribute", "status_code", "string_attribute", "boolean_attribute",
                "bytes_limiting", "trace_state", "not", "and", "composite", "drop", "ottl_condition"}
        attr = {"and": "and_", "not": "not_"}.get(self.type, self.type)
        if self.type in need and getattr(self, attr, None) is None:
            raise ValueError(f"policy {self.name!r} of type {self.type} needs its {self.type}: block")
        return self

    @classmethod
    def allowed(cls) -> tuple[str, ...]:
        return LEAF_TYPES


class NotCfg(ComponentConfig):
    not_sub_policy: SharedPolicy


class AndSubPolicy(SharedPolicy):
    """What `and` and `drop` hold: a policy that decides by itself, or `not` of one."""

    not_: NotCfg | None = Field(None, alias="not")

    @classmethod
    def allowed(cls) -> tuple[str, ...]:
        return (*LEAF_TYPES, "not")


class AndCfg(ComponentConfig):
    and_sub_policy: list[AndSubPolicy] = Field(..., min_length=1)


class DropCfg(ComponentConfig):
    drop_sub_policy: list[AndSubPolicy] = Field(..., min_length=1)


class CompositeSubPolicy(SharedPolicy):
    and_: AndCfg | None = Field(None, alias="and")

    @classmethod
    def allowed(cls) -> tuple[str, ...]:
        return (*LEAF_TYPES, "and")


class RateAllocation(ComponentConfig):
    policy: str
    percent: int = Field(..., ge=0, le=100)


class CompositeCfg(ComponentConfig):
    max_total_spans_per_second: int = Field(..., ge=0)
    policy_order: list[str] = Field(default_factory=list, description="names of composite_sub_policy entries; "
                                    "as in the collector, sub-policies are evaluated in composite_sub_policy order")
    composite_sub_policy: list[CompositeSubPolicy] = Field(..., min_length=1)
    rate_allocation: list[RateAllocation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> CompositeCfg:
        names = {p.name for p in self.composite_sub_policy}
        for n in self.policy_order:
            if n not in names:
                raise ValueError(f"policy_order names {n!r}, which is not a composite_sub_policy")
        for r in self.rate_allocation:
            if r.policy not in names:
                raise ValueError(f"rate_allocation names {r.policy!r}, which is not a composite_sub_policy")
        if sum(r.percent for r in self.rate_allocation) > 100:
            raise ValueError("rate_allocation percentages add up to more than 100")
        return self


class PolicyCfg(CompositeSubPolicy):
    composite: CompositeCfg | None = None
    drop: DropCfg | None = None
    not_: NotCfg | None = Field(None, alias="not")

    @classmethod
    def allowed(cls) -> tuple[str, ...]:
        return (*LEAF_TYPES, "and", "composite", "drop", "not")


# --- what a policy sees -------------------------------------------------------------------------------


class TraceData:
    """One trace at decision time: its id, counts and spans (ResourceSpans messages)."""

    __slots__ = ("_spans", "resource_spans", "size", "span_count", "trace_id")

    def __init__(self, trace_id: bytes, span_count: int, size: int, resource_spans: Any) -> None:
        self.trace_id = trace_id
        self.span_count = span_count
        self.size = size
        self.resource_spans = resource_spans
        self._spans: list[Any] | None = None

    def spans(self) -> list[Any]:
        """Every span, in order (listed once: several policies walk them)."""
        if self._spans is None:
            self._spans = [sp for rs in self.resource_spans for ss in rs.scope_spans for sp in ss.spans]
        return self._spans


Policy = Callable[[TraceData], Decision]
Clock = Callable[[], float]


def _find(kvs: Iterable[Any], key: str) -> Any:
    """The first attribute named key (pdata's Map.Get), or None."""
    for kv in kvs:
        if kv.key == key:
            return kv.value
    return None


def _as_int(v: Any) -> int:
    return int(v.int_value) if v.WhichOneof("value") == "int_value" else 0


def _as_str(v: Any) -> str:
    return str(v.string_value) if v.WhichOneof("value") == "string_value" else ""


def _as_bool(v: Any) -> bool:
    return bool(v.bool_value) if v.WhichOneof("value") == "bool_value" else False


def _resource_or_span(td: TraceData, res_ok: Callable[[Any], bool], span_ok: Callable[[Any], bool],
                      invert: bool) -> Decision:
    """Any resource or span matching -> sampled; inverted: any resource or span matching -> not sampled."""
    for rs in td.resource_spans:
        if res_ok(rs.resource.attributes):
            return Decision.NOT_SAMPLED if invert else Decision.SAMPLED
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if span_ok(sp):
                    return Decision.NOT_SAMPLED if invert else Decision.SAMPLED
    return Decision.SAMPLED if invert else Decision.NOT_SAMPLED


def _any_span(td: TraceData, ok: Callable[[Any], bool]) -> Decision:
    for sp in td.spans():
        if ok(sp):
            return Decision.SAMPLED
    return Decision.NOT_SAMPLED


def always_sample() -> Policy:
    return lambda td: Decision.SAMPLED


def latency(cfg: LatencyCfg) -> Policy:
    lo = cfg.threshold * 1000.0
    hi = cfg.upper_threshold * 1000.0

    def decide(td: TraceData) -> Decision:
        # the collector widens the window span by span and samples as soon as it qualifies
        first = last = 0
        for sp in td.spans():
            s, e = sp.start_time_unix_nano, sp.end_time_unix_nano
            if first == 0 or s < first:
                first = s
            if last == 0 or e > last:
                last = e
            d = last - first
            ms = -((-d) // 1_000_000) if d < 0 else d // 1_000_000  # Go's Duration.Milliseconds truncates
            if (ms > lo) if hi == 0 else (lo < ms <= hi):
                return Decision.SAMPLED
        return Decision.NOT_SAMPLED

    return decide


def numeric_attribute(cfg: NumericAttributeCfg) -> Policy:
    key = cfg.key
    lo = cfg.min_value if cfg.min_value != 0 else -(1 << 63)
    hi = cfg.max_value if cfg.max_value != 0 else (1 << 63) - 1

    def hit(kvs: Any) -> bool:
        v = _find(kvs, key)
        return v is not None and lo <= _as_int(v) <= hi

    return lambda td: _resource_or_span(td, hit, lambda sp: hit(sp.attributes), cfg.invert_match)


MAX_UINT64 = (1 << 64) - 1


def _round_to_bits(x: Fraction, bits: int) -> Fraction:
    """x rounded to `bits` significant bits, half to even (big.Float's default mode)."""
    if x == 0:
        return x
    e = math.floor(math.log2(x)) - (bits - 1)
    while x / Fraction(2) ** e >= 1 << bits:
        e += 1
    while x / Fraction(2) ** e < 1 << (bits - 1):
        e -= 1
    return Fraction(round(x / Fraction(2) ** e)) * Fraction(2) ** e


def probability_threshold(percentage: float) -> int:
    """The collector's threshold: MaxUint64 x ratio in a 64-bit big.Float, truncated to an integer."""
    ratio = Fraction(percentage / 100.0)  # the float64 division Go does
    v = _round_to_bits(Fraction(MAX_UINT64) * ratio, 64)
    return min(MAX_UINT64, math.floor(v))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MAX_UINT64
    return h


def probabilistic(cfg: ProbabilisticCfg) -> Policy:
    salt = (cfg.hash_salt or "default-hash-seed").encode()
    threshold = probability_threshold(cfg.sampling_percentage)
    return lambda td: Decision.SAMPLED if fnv1a64(salt + td.trace_id) <= threshold else Decision.NOT_SAMPLED


def status_code(cfg: StatusCodeCfg) -> Policy:
    codes = frozenset(STATUS_CODES[c] for c in cfg.status_codes)
    return lambda td: _any_span(td, lambda sp: sp.status.code in codes)


def string_attribute(cfg: StringAttributeCfg) -> Policy:
    key = cfg.key
    match: Callable[[str], bool]
    if cfg.enabled_regex_matching:
        regexes = [re.compile(v) for v in cfg.values]
        size = cfg.cache_max_size or 128
        seen: dict[str, bool] = {}

        def match(s: str) -> bool:
            r = seen.get(s)
            if r is None:
                r = any(x.search(s) for x in regexes)  # Go's MatchString: anywhere in the value
                if len(seen) >= size:
                    seen.pop(next(iter(seen)))
                seen[s] = r
            return r
    else:
        exact = frozenset(v for v in cfg.values if v)
        match = exact.__contains__

    def res_hit(kvs: Any) -> bool:
        v = _find(kvs, key)
        return v is not None and match(_as_str(v))

    def span_hit(sp: Any) -> bool:
        v = _find(sp.attributes, key)
        if v is None:
            return False
        s = _as_str(v)
        return s != "" and match(s)

    return lambda td: _resource_or_span(td, res_hit, span_hit, cfg.invert_match)


class TokenBucket:
    """golang.org/x/time/rate's Limiter as the collector uses it: starts full, refills continuously."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.last: float | None = None

    def allow(self, n: int) -> bool:
        now = self.clock()
        if self.last is not None and now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if n > self.burst:
            return False
        if self.tokens - n < 0:
            return False
        self.tokens -= n
        return True


def rate_limiting(cfg: RateLimitingCfg, clock: Clock) -> Policy:
    bucket = TokenBucket(cfg.spans_per_second, cfg.burst_capacity or 2 * cfg.spans_per_second, clock)
    return lambda td: Decision.SAMPLED if bucket.allow(td.span_count) else Decision.NOT_SAMPLED


def bytes_limiting(cfg: BytesLimitingCfg, clock: Clock) -> Policy:
    """A token bucket of bytes; a trace's size is its OTLP request size, as the collector's TracesSize."""
    bucket = TokenBucket(cfg.bytes_per_second, cfg.burst_capacity or 2 * cfg.bytes_per_second, clock)
    return lambda td: Decision.SAMPLED if bucket.allow(td.size) else Decision.NOT_SAMPLED


_TS_KEY = re.compile(r"[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}")
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_trace_state(raw: str) -> dict[str, str] | None:
    """W3C tracestate as the Go SDK's ParseTraceState reads it; None when it is invalid (then the collector's
    policy does not match the span)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for member in raw.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        key, sep, value = member.partition("=")
        if not sep or not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(value) or key in out:
            return None
        out[key] = value
        if len(out) > 32:
            return None
    return out


def trace_state(cfg: TraceStateCfg) -> Policy:
    key = cfg.key
    values = frozenset(v for v in cfg.values if v and len(key) + len(v) < 256)

    def hit(sp: Any) -> bool:
        ts = parse_trace_state(sp.trace_state)
        return ts is not None and ts.get(key, "") in values

    return lambda td: _any_span(td, hit)


def trace_flags() -> Policy:
    return lambda td: _any_span(td, lambda sp: bool(sp.flags & 0x01))


def not_policy(sub: Policy) -> Policy:
    def decide(td: TraceData) -> Decision:
        d = sub(td)
        if d == Decision.SAMPLED:
            return Decision.NOT_SAMPLED
        if d == Decision.NOT_SAMPLED:
            return Decision.SAMPLED
        return d

    return decide


def span_count(cfg: SpanCountCfg) -> Policy:
    lo, hi = cfg.min_spans, cfg.max_spans

    def decide(td: TraceData) -> Decision:
        n = td.span_count
        ok = n >= lo if hi == 0 else lo <= n <= hi
        return Decision.SAMPLED if ok else Decision.NOT_SAMPLED

    return decide


def boolean_attribute(cfg: BooleanAttributeCfg) -> Policy:
    key, want = cfg.key, cfg.value

    def hit(kvs: Any) -> bool:
        v = _find(kvs, key)
        return v is not None and _as_bool(v) == want

    return lambda td: _resource_or_span(td, hit, lambda sp: hit(sp.attributes), cfg.invert_match)


GRPC_DEADLINE_EXCEEDED = 4


def deadline_missed(cfg: DeadlineMissedCfg) -> Policy:
    keys = [k for k, on in (("gotel.rpc.deadline.exceeded", cfg.exceeded),
                            ("gotel.rpc.deadline.propagated", cfg.propagated)) if on]

    def hit(sp: Any) -> bool:
        for kv in sp.attributes:
            k = kv.key
            if k in keys and _as_bool(kv.value):
                return True
            if cfg.grpc_status and (
                    (k == "rpc.grpc.status_code" and _as_int(kv.value) == GRPC_DEADLINE_EXCEEDED)
                    or (k == "rpc.response.status_code" and _as_str(kv.value) == "DEADLINE_EXCEEDED")):
                return True
        return False

    return lambda td: _any_span(td, hit)


def ottl_condition(cfg: OttlConditionCfg, name: str, logger: logging.Logger) -> Policy:
    """Sampled when a span condition holds for some span or a spanevent condition for some span event;
    a condition that fails under error_mode propagate makes the trace not sampled (the collector
    returns the error, and an erroring policy samples nothing)."""
    where = f"tail_sampling policy {name!r}"
    spans = ConditionSet([compile_condition(c, "traces", "span") for c in cfg.span], cfg.error_mode, logger, where)
    events = ConditionSet([compile_condition(c, "traces", "spanevent") for c in cfg.spanevent], cfg.error_mode,
                          logger, where)

    def decide(td: TraceData) -> Decision:
        it = Item()
        try:
            for rs in td.resource_spans:
                it.resource = rs.resource
                for ss in rs.scope_spans:
                    it.scope = ss.scope
                    for sp in ss.spans:
                        it.item = sp
                        if spans and spans.matches(it):
                            return Decision.SAMPLED
                        if events:
                            for ev in sp.events:
                                it.sub = ev
                                if events.matches(it):
                                    return Decision.SAMPLED
        except OttlEvalError as e:
            logger.debug("%s", e)
            return Decision.NOT_SAMPLED
        return Decision.NOT_SAMPLED

    return decide


def and_policy(subs: list[Policy]) -> Policy:
    def decide(td: TraceData) -> Decision:
        for p in subs:
            if p(td) == Decision.NOT_SAMPLED:
                return Decision.NOT_SAMPLED
        return Decision.SAMPLED

    return decide


def drop_policy(subs: list[Policy]) -> Policy:
    def decide(td: TraceData) -> Decision:
        for p in subs:
            if p(td) == Decision.NOT_SAMPLED:
                return Decision.NOT_SAMPLED
        return Decision.DROPPED

    return decide


def composite(cfg: CompositeCfg, clock: Clock) -> Policy:
    """Sub-policies in composite_sub_policy order, each within its share of max_total_spans_per_second
    (rate_allocation percent, else an equal share), counted per clock second."""
    total = cfg.max_total_spans_per_second
    percent = {r.policy: r.percent for r in cfg.rate_allocation}
    default = total / len(cfg.composite_sub_policy)
    subs: list[tuple[Policy, int]] = []
    for p in cfg.composite_sub_policy:
        pct = percent.get(p.name, 0)
        alloc = pct / 100 * total if pct > 0 else default
        subs.append((build(p, clock), int(alloc)))
    used = [0] * len(subs)
    second = [0]

    def decide(td: TraceData) -> Decision:
        now = int(clock())
        if now != second[0]:
            second[0] = now
            used[:] = [0] * len(subs)
        for i, (p, alloc) in enumerate(subs):
            if p(td) == Decision.SAMPLED:
                n = used[i] + td.span_count
                if n <= alloc and n <= total:
                    used[i] = n
                    return Decision.SAMPLED
                return Decision.NOT_SAMPLED
        return Decision.NOT_SAMPLED

    return decide


def build(cfg: SharedPolicy, clock: Clock) -> Policy:
    """The evaluator of one configured policy (sub-policies included)."""
    t = cfg.type
    if t == "always_sample":
        return always_sample()
    if t == "latency":
        return latency(cfg.latency or LatencyCfg())
    if t == "probabilistic":
        return probabilistic(cfg.probabilistic or ProbabilisticCfg())
    if t == "rate_limiting":
        return rate_limiting(cfg.rate_limiting or RateLimitingCfg(), clock)
    if t == "span_count":
        return span_count(cfg.span_count or SpanCountCfg())
    if t == "trace_flags":
        return trace_flags()
    if t == "bytes_limiting" and cfg.bytes_limiting is not None:
        return bytes_limiting(cfg.bytes_limiting, clock)
    if t == "trace_state" and cfg.trace_state is not None:
        return trace_state(cfg.trace_state)
    if t == "not" and isinstance(cfg, AndSubPolicy | PolicyCfg) and cfg.not_ is not None:
        return not_policy(build(cfg.not_.not_sub_policy, clock))
    if t == "deadline_missed":
        return deadline_missed(cfg.deadline_missed or DeadlineMissedCfg())
    if t == "ottl_condition" and cfg.ottl_condition is not None:
        return ottl_condition(cfg.ottl_condition, cfg.name, _log)
    if t == "numeric_attribute" and cfg.numeric_attribute is not None:
        return numeric_attribute(cfg.numeric_attribute)
    if t == "status_code" and cfg.status_code is not None:
        return status_code(cfg.status_code)
    if t == "string_attribute" and cfg.string_attribute is not None:
        return string_attribute(cfg.string_attribute)
    if t == "boolean_attribute" and cfg.boolean_attribute is not None:
        return boolean_attribute(cfg.boolean_attribute)
    if t == "and" and isinstance(cfg, CompositeSubPolicy) and cfg.and_ is not None:
        return and_policy([build(p, clock) for p in cfg.and_.and_sub_policy])
    if t == "drop" and isinstance(cfg, PolicyCfg) and cfg.drop is not None:
        return drop_policy([build(p, clock) for p in cfg.drop.drop_sub_policy])
    if t == "composite" and isinstance(cfg, PolicyCfg) and cfg.composite is not None:
        return composite(cfg.composite, clock)
    raise ValueError(f"policy {cfg.name!r}: type {t!r} is not valid here")

