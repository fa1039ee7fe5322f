"""`redaction` processor: the collector's attribute redaction (keys allowed, ignored, masked or removed;
values masked by regex), with the same masks and audit attributes, so that a collector file behaves the
same here. Plus gotel's one-line default, ``preset: credentials``: secrets in URLs, auth headers, cookies
and pprof labels masked while every other attribute is kept.

Order per attribute, as the collector does it: ignored key -> kept untouched; key not allowed -> removed;
value matching ``allowed_values`` -> kept; key matching ``blocked_key_patterns`` -> whole value masked;
otherwise each ``blocked_values`` regex masks what it matches. Non-string values are seen as "" unless
``redact_all_types`` (then as their string form), exactly as the collector's ``Str()``/``AsString()``.

Traces and metrics that still have their received bytes are first searched at the byte level: every
rule's regex, relaxed to the bytes (gotel.processorhelper.byteproof), is looked for in the request,
and only the resources, scopes and spans/metrics whose own bytes it is found in are decoded, redacted
by the same code and encoded again; the rest is copied as it came. A request in which no rule can
match anything passes untouched. An allow list of keys (every key not on it goes) or
``redact_all_types`` (numbers are matched by their text) take the message path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import partial
from typing import Any, Literal

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.wire import ItemBytes, framing
from gotel.processorhelper.attraction import apply_encoded
from gotel.processorhelper.byteproof import relax, starts_with_literal

MASK = "****"
REDACTED_KEYS, REDACTED_COUNT = "redaction.redacted.keys", "redaction.redacted.count"
MASKED_KEYS, MASKED_COUNT = "redaction.masked.keys", "redaction.masked.count"
ALLOWED_KEYS, ALLOWED_COUNT = "redaction.allowed.keys", "redaction.allowed.count"
IGNORED_COUNT = "redaction.ignored.count"
BODY = "redaction.body."
# The collector's own summary keys survive a fail-closed allow list (the allowed.* ones do not: its quirk).
SUMMARY_KEYS = (REDACTED_KEYS, REDACTED_COUNT, MASKED_KEYS, MASKED_COUNT, IGNORED_COUNT)

# --- preset: credentials (gotel's own; documented in docs/processors.md) ---
# Keys whose whole value is a secret: auth headers (semconv http.request.header.*), cookies, api keys,
# passwords, tokens; anchored at a word boundary so `llm.usage.total_tokens` stays.
CREDENTIAL_KEYS = (
    r"(?i)(?:^|[._\-/])(?:authorization|proxy[-_]authorization|www[-_]authenticate|cookie|set[-_]cookie"
    r"|x[-_]api[-_]key|api[-_]?key|x[-_]auth[-_]token|auth[-_]?token|access[-_]?token|refresh[-_]?token"
    r"|id[-_]?token|bearer|password|passwd|pwd|secret|client[-_]secret|private[-_]key|session[-_]?id"
    r"|x[-_]amz[-_]security[-_]token|x[-_]goog[-_]api[-_]key)$"
)
# (regex, group to mask) pairs: only the secret part is masked, the URL stays readable.
CREDENTIAL_VALUES: tuple[tuple[str, int], ...] = (
    # userinfo: scheme://user:password@host -> scheme://****@host
    (r"(?i)\b[a-z][a-z0-9+.\-]*://([^/?#@\s]+)@", 1),
    # query/fragment parameters that carry secrets: ?token=...&api_key=...
    (r"(?i)[?&;#](?:access_token|refresh_token|id_token|token|api[_-]?key|apikey|key|password|passwd|pwd"
     r"|secret|client_secret|auth|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token"
     r"|sessionid|session_id|code)=([^&;#\s]*)", 1),
    # credentials in a header-like value: "Bearer abc", "Basic dXNlcjpw"
    (r"(?i)\b(?:bearer|basic|token)\s+([A-Za-z0-9._~+/\-]+=*)", 1),
)


class Disabled(ComponentConfig):
    """url_sanitizer / db_sanitizer: accepted only switched off (gotel has neither sanitizer)."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = False

    @model_validator(mode="after")
    def _off(self) -> Disabled:
        if self.enabled:
            raise ValueError("gotel's redaction has no URL/DB sanitizer: set enabled: false or remove it")
        return self


class DBSanitizer(ComponentConfig):
    model_config = ConfigDict(extra="forbid")
    sanitize_span_name: bool | None = None
    sql: Disabled = Field(default_factory=Disabled)
    redis: Disabled = Field(default_factory=Disabled)
    valkey: Disabled = Field(default_factory=Disabled)
    memcached: Disabled = Field(default_factory=Disabled)
    mongo: Disabled = Field(default_factory=Disabled)
    opensearch: Disabled = Field(default_factory=Disabled)
    es: Disabled = Field(default_factory=Disabled)


HashName = Literal["", "sha1", "sha3", "md5", "hmac-sha256", "hmac-sha512"]


class Config(ComponentConfig):
    preset: Literal["credentials"] | None = Field(
        None, description="gotel's defaults: `credentials` masks secrets in URLs, auth/cookie attributes and "
                          "pprof labels, and keeps every other key (allow_all_keys unless allowed_keys is set)")
    allow_all_keys: bool | None = Field(None, description="keep every key; values are still masked")
    allowed_keys: list[str] = Field(default_factory=list, description="keys kept; empty = none (fails closed)")
    ignored_keys: list[str] = Field(default_factory=list, description="keys passed through untouched")
    ignored_key_patterns: list[str] = Field(default_factory=list)
    blocked_key_patterns: list[str] = Field(default_factory=list, description="keys whose whole value is masked")
    blocked_values: list[str] = Field(default_factory=list, description="regexes masked inside values, in order")
    allowed_values: list[str] = Field(default_factory=list, description="values matching these are kept")
    hash_function: HashName = Field("", description="mask with this hash's hex digest instead of ****")
    hmac_key: SecretStr = Field(SecretStr(""), description="key of hmac-sha256/hmac-sha512")
    redact_all_types: bool = Field(False, description="check non-string values by their string form")
    summary: Literal["", "debug", "info", "silent"] = Field(
        "", description="audit attributes: debug = keys and counts, info = counts, silent/unset = none")
    url_sanitizer: Disabled = Field(default_factory=Disabled)
    db_sanitizer: DBSanitizer = Field(default_factory=DBSanitizer)

    @field_validator("hash_function", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> Config:
        for name in ("ignored_key_patterns", "blocked_key_patterns", "blocked_values", "allowed_values"):
            for i, p in enumerate(getattr(self, name)):
                try:
                    compile_go(p)
                except re.error as e:
                    raise ValueError(f"{name}[{i}]: bad regex {p!r}: {e}") from None
        if self.hash_function in ("hmac-sha256", "hmac-sha512"):
            n = 32 if self.hash_function == "hmac-sha256" else 64
            key = self.hmac_key.get_secret_value()
            if not key:
                raise ValueError(f"hmac_key must not be empty when hash_function is {self.hash_function!r}")
            if len(key.encode()) < n:
                raise ValueError(f"hmac_key must be at least {n} bytes long for {self.hash_function!r}, "
                                 f"got {len(key.encode())} bytes")
        return self


def go_to_python(pattern: str) -> str:
    """A Go (RE2) regex in Python's syntax. The syntax users write is shared; what differs: Go's `\\z`
    is Python's `\\Z`, and Go's `$` (without the m flag) matches only at the very end, where Python's
    also matches before a final newline."""
    multiline = re.match(r"\(\?[a-zA-Z]*m", pattern) is not None
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(r"\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]" and not (out and out[-1] in ("[", "[^")):
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "^":
                out.append("[^")
                i += 2
                continue
        elif c == "$" and not multiline:
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def compile_go(pattern: str) -> re.Pattern[str]:
    """Go's classes (`\\d`, `\\w`, `\\s`, `\\b`) are ASCII: so are these."""
    return re.compile(go_to_python(pattern), re.ASCII)


def go_replace_all(rx: re.Pattern[str], s: str, fn: Callable[[re.Match[str]], str]) -> str:
    """Go's ReplaceAllStringFunc: an empty match right after a match is skipped (`.*` on "ab" is one
    match in Go, two in Python's re.sub)."""
    out: list[str] = []
    pos, prev_end = 0, -1
    for m in rx.finditer(s):
        a, b = m.span()
        if a == b and a == prev_end:
            continue
        out.append(s[pos:a])
        out.append(fn(m))
        pos = prev_end = b
    if not out:
        return s
    out.append(s[pos:])
    return "".join(out)


def _go_float(f: float) -> str:
    """pdata's AsString of a double (ES6 number formatting)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        r = repr(f)  # shortest round-trip, as strconv 'e' with precision -1
        mant, _, exp = r.partition("e")
        e = int(exp)
        return f"{mant}e{'-' if e < 0 else '+'}{abs(e)}"
    # strconv 'f' with the shortest digits that round-trip (Python's repr digits, written out)
    out = format(Decimal(repr(f)), "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def _raw(av: Any) -> Any:
    kind = av.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _raw(kv.value) for kv in av.kvlist_value.values}
    if kind == "array_value":
        return [_raw(v) for v in av.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(av.bytes_value).decode()
    if kind is None:
        return None
    return getattr(av, kind)


def as_string(av: Any) -> str:
    """pdata's Value.AsString."""
    kind = av.WhichOneof("value")
    if kind == "string_value":
        return str(av.string_value)
    if kind is None:
        return ""
    if kind == "bool_value":
        return "true" if av.bool_value else "false"
    if kind == "int_value":
        return str(av.int_value)
    if kind == "double_value":
        return _go_float(av.double_value)
    if kind == "bytes_value":
        return base64.b64encode(av.bytes_value).decode()
    # encoding/json: map keys sorted, no HTML escaping, UTF-8 kept
    return json.dumps(_raw(av), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class Redactor:
    """The rules compiled once; applied to attribute lists (repeated KeyValue) in place."""

    def __init__(self, cfg: Config) -> None:
        preset = cfg.preset == "credentials"
        self.allow_all = cfg.allow_all_keys if cfg.allow_all_keys is not None else (preset and not cfg.allowed_keys)
        self.allowed = set(cfg.allowed_keys) | set(SUMMARY_KEYS)
        self.ignored = set(cfg.ignored_keys)
        self.ignored_rx = [compile_go(p) for p in cfg.ignored_key_patterns]
        self.block_rx = [compile_go(p) for p in cfg.blocked_values]
        self.allow_rx = [compile_go(p) for p in cfg.allowed_values]
        self.block_key_rx = [compile_go(p) for p in cfg.blocked_key_patterns]
        self.group_rx: list[tuple[re.Pattern[str], int]] = []
        if preset:
            self.block_key_rx.append(re.compile(CREDENTIAL_KEYS))
            self.group_rx = [(re.compile(p), g) for p, g in CREDENTIAL_VALUES]
        self.all_types = cfg.redact_all_types
        self.summary = cfg.summary
        self.mask = self._masker(cfg.hash_function, cfg.hmac_key.get_secret_value().encode())
        # one search that fails for most values, before the per-rule work
        self.any_rx = _union([p for p in cfg.blocked_values] + [p for p, _ in (CREDENTIAL_VALUES if preset else ())])
        self._keys: dict[str, int] = {}
        self._vals: dict[str, tuple[bool, str | None]] = {}
        # attributes removed and values masked so far (read and reset by the processor)
        self.removed = 0
        self.masked = 0
        self.proof = self._proof()

    def _proof(self) -> list[re.Pattern[bytes]] | None:
        """Bytes regexes one of which finds a match in the encoding of any part (resource, scope, item)
        the rules could change; None when they may change a part whatever its bytes hold."""
        if not self.allow_all or self.all_types:
            return None
        rules = [*self.block_key_rx, *self.block_rx, *(rx for rx, _ in self.group_rx)]
        if self.summary in ("debug", "info"):  # ignored keys and allowed values are counted then
            rules += [*self.ignored_rx, *self.allow_rx, *(re.compile(re.escape(k)) for k in self.ignored)]
        out = []
        for rx in rules:
            b = relax(rx)
            if b is None or not starts_with_literal(b):
                return None  # no proof, or one slower to search than the message path
            out.append(b)
        return out

    @staticmethod
    def _masker(name: str, key: bytes) -> Callable[[str], str]:
        if not name:
            return lambda _s: MASK
        if name.startswith("hmac-"):
            algo = name[5:]
            return lambda s: hmac.new(key, s.encode(), algo).hexdigest()
        algo = {"sha1": "sha1", "sha3": "sha3_256", "md5": "md5"}[name]
        return lambda s: hashlib.new(algo, s.encode()).hexdigest()

    # --- predicates, the collector's names ---
    def ignore_key(self, k: str) -> bool:
        return k in self.ignored or any(rx.search(k) for rx in self.ignored_rx)

    def redact_key(self, k: str) -> bool:
        return not self.allow_all and k not in self.allowed

    def allow_value(self, s: str) -> bool:
        return any(rx.search(s) for rx in self.allow_rx)

    def mask_key(self, k: str) -> bool:
        return any(rx.search(k) for rx in self.block_key_rx)

    def mask_all(self, s: str) -> str:
        """The collector masks a blocked key's value with the regex `.*`: once per line (`.` stops at a
        newline), an empty value once too."""
        if "\n" not in s:
            return self.mask(s)
        return go_replace_all(_DOT_STAR, s, lambda m: self.mask(m.group()))

    def process_string(self, s: str) -> str:
        if self.any_rx is not None and not self.any_rx.search(s):
            return s
        for rx in self.block_rx:
            if rx.search(s):
                s = go_replace_all(rx, s, lambda m: self.mask(m.group()))
        for rx, g in self.group_rx:
            s = go_replace_all(rx, s, partial(_mask_group, g=g, mask=self.mask))
        return s

    # --- attribute lists ---
    def attrs(self, attrs: Any) -> None:
        """The collector's processAttrs on one repeated KeyValue field."""
        if not attrs:
            return
        redacted: list[str] = []
        masked: list[str] = []
        allowed: list[str] = []
        ignored: list[str] = []
        keys, vals, all_types = self._keys, self._vals, self.all_types
        for kv in attrs:
            k = kv.key
            what = keys.get(k)
            if what is None:
                what = self._key_decision(k)
            if what == _IGNORE:
                ignored.append(k)
                continue
            if what == _REDACT:
                redacted.append(k)
                continue
            av = kv.value
            # pdata's Str(): "" for a value that is not a string; AsString() with redact_all_types
            s = av.string_value if not all_types or av.HasField("string_value") else as_string(av)
            hit = vals.get(s) or self._value_decision(s)
            if hit is _UNCHANGED and what == _CHECK:  # the common case: nothing to do
                continue
            if hit[0]:
                allowed.append(k)
                continue
            if what == _MASK_KEY:
                masked.append(k)
                av.string_value = self.mask_all(s)
                continue
            if hit[1] is not None:
                masked.append(k)
                av.string_value = hit[1]
        if redacted or masked:
            self.removed += len(redacted)
            self.masked += len(masked)
        summary = self.summary in ("debug", "info") and bool(redacted or masked or allowed or ignored)
        if not redacted and not summary:
            return
        names = [kv.key for kv in attrs]
        if redacted:
            _remove_keys(attrs, redacted, names)
        if summary:
            self.summarize(attrs, redacted, REDACTED_KEYS, REDACTED_COUNT, names)
            self.summarize(attrs, masked, MASKED_KEYS, MASKED_COUNT, names)
            self.summarize(attrs, allowed, ALLOWED_KEYS, ALLOWED_COUNT, names)
            self.summarize(attrs, ignored, "", IGNORED_COUNT, names)

    def _key_decision(self, k: str) -> int:
        """What a key's rules say, cached (keys repeat in every span)."""
        what = (_IGNORE if self.ignore_key(k) else _REDACT if self.redact_key(k)
                else _MASK_KEY if self.mask_key(k) else _CHECK)
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        self._keys[k] = what
        return what

    def _value_decision(self, s: str) -> tuple[bool, str | None]:
        """(allowed by allowed_values, the masked value or None when unchanged), cached."""
        if self.allow_value(s):
            out: tuple[bool, str | None] = (True, None)
        else:
            new = self.process_string(s)
            out = (False, new) if new != s else _UNCHANGED
        if len(self._vals) >= _CACHE_MAX:
            self._vals.clear()
        if len(s) <= _CACHE_VALUE_LEN:
            self._vals[s] = out
        return out

    def summarize(self, attrs: Any, keys: list[str], keys_attr: str, count_attr: str,
                  names: list[str] | None = None) -> None:
        if not keys or self.summary not in ("debug", "info"):
            return
        if names is None:
            names = [kv.key for kv in attrs]
        if self.summary == "debug" and keys_attr:
            old = _get(attrs, keys_attr, names)
            if old is not None and old.WhichOneof("value") == "string_value" and old.string_value:
                keys = keys + old.string_value.split(",")
            _put(attrs, keys_attr, names).string_value = ",".join(sorted(keys))
        n = len(keys)
        old = _get(attrs, count_attr, names)
        if old is not None:
            n += old.int_value if old.WhichOneof("value") == "int_value" else 0
        _put(attrs, count_attr, names).int_value = n

    # --- log bodies (the collector redacts map/array bodies key by key, strings by value) ---
    def body(self, body: Any, attrs: Any) -> None:
        redacted: list[str] = []
        masked: list[str] = []
        allowed: list[str] = []
        ignored: list[str] = []
        self._body_value("", body, redacted, masked, allowed, ignored)
        self.summarize(attrs, redacted, BODY + "redacted.keys", BODY + "redacted.count")
        self.summarize(attrs, masked, BODY + "masked.keys", BODY + "masked.count")
        self.summarize(attrs, allowed, BODY + "allowed.keys", BODY + "allowed.count")
        self.summarize(attrs, ignored, "", BODY + "ignored.count")

    def _body_value(self, path: str, v: Any, redacted: list[str], masked: list[str], allowed: list[str],
                    ignored: list[str]) -> None:
        """One value of a log body, map entries and array items by path ("" for the body itself: its
        keys are named bare, and a masked string body is named "body")."""
        kind = v.WhichOneof("value")
        if kind == "kvlist_value":
            drop: list[str] = []
            dropped: list[str] = []
            for kv in v.kvlist_value.values:
                k = kv.key
                sub = f"{path}.{k}" if path else k
                if self.ignore_key(k):
                    ignored.append(sub)
                elif self.redact_key(k):
                    drop.append(k)
                    dropped.append(sub)
                elif self.mask_key(k):
                    masked.append(sub)
                    s = kv.value.string_value if kv.value.WhichOneof("value") == "string_value" else ""
                    kv.value.string_value = self.mask_all(s)
                else:
                    self._body_value(sub, kv.value, redacted, masked, allowed, ignored)
            _remove_keys(v.kvlist_value.values, drop)
            redacted.extend(dropped)
        elif kind == "array_value":
            for i, item in enumerate(v.array_value.values):
                self._body_value(f"{path}.[{i}]" if path else f"[{i}]", item, redacted, masked, allowed, ignored)
        else:
            s = as_string(v)
            if self.allow_value(s):
                if path:
                    allowed.append(path)
                return
            new = self.process_string(s)
            if new != s:
                masked.append(path or "body")
                v.string_value = new

    # --- pprof labels: masked in place, never removed (indices into the table must stay valid) ---
    def profile_labels(self, dictionary: Any) -> None:
        st = dictionary.string_table
        for entry in dictionary.attribute_table:
            key = st[entry.key_strindex] if entry.key_strindex < len(st) else ""
            av = entry.value
            kind = av.WhichOneof("value")
            if kind == "string_value_strindex":
                s = st[av.string_value_strindex]
            elif kind == "string_value":
                s = av.string_value
            else:
                continue
            if self.ignore_key(key) or self.allow_value(s):
                continue
            new = self.mask_all(s) if self.mask_key(key) else self.process_string(s)
            if new != s:
                av.string_value = new

    # --- whole batches ---
    def on_wire(self, signal: Signal, wire: bytes) -> bytes | None:
        """The request redacted at the byte level: only the parts the rules' regexes are found in are
        decoded and encoded; `wire` itself when nothing changed; None when the message path must run."""
        if self.proof is None or signal not in (Signal.TRACES, Signal.METRICS):
            return None
        proof = self.proof
        if not any(rx.search(wire) for rx in proof):
            return wire
        try:
            fr = framing(wire)
        except DecodeError:
            return None
        changed = False
        res: Any = Resource()
        scope: Any = InstrumentationScope()
        for r in fr.resources:
            if len(r.resource) > 1 or any(len(sc.scope) > 1 for sc in r.scopes):
                return None  # a part given in pieces (merged by protobuf): the message path
            if r.resource and any(rx.search(r.resource[0]) for rx in proof):
                new = apply_encoded(self.attrs, res, r.resource[0])
                changed |= new != r.resource[0]
                r.resource[0] = new
            for sc in r.scopes:
                if sc.scope and any(rx.search(sc.scope[0]) for rx in proof):
                    new = apply_encoded(self.attrs, scope, sc.scope[0])
                    changed |= new != sc.scope[0]
                    sc.scope[0] = new
        index = ItemBytes(fr)
        found: dict[tuple[int, int], set[int]] = {}
        for rx in proof:
            for key, iis in index.matching(rx).items():
                found.setdefault(key, set()).update(iis)
        item: Any = Span() if signal == Signal.TRACES else Metric()
        for (ri, si), iis in sorted(found.items()):
            items = fr.resources[ri].scopes[si].items
            for ii in sorted(iis):
                old = items[ii]
                item.ParseFromString(old)
                if signal == Signal.TRACES:
                    self.attrs(item.attributes)
                    for ev in item.events:
                        self.attrs(ev.attributes)
                else:
                    kind = item.WhichOneof("data")
                    if kind is not None:
                        for dp in getattr(item, kind).data_points:
                            self.attrs(dp.attributes)
                new = item.SerializeToString()
                if new != old:
                    items[ii] = new
                    changed = True
        return bytes(fr.SerializeToString()) if changed else wire

    def batch(self, signal: Signal, batch: Batch) -> None:
        m = batch.msg
        if signal == Signal.TRACES:
            for rs in m.resource_spans:
                self.attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    self.attrs(ss.scope.attributes)
                    for span in ss.spans:
                        self.attrs(span.attributes)
                        for ev in span.events:
                            self.attrs(ev.attributes)
        elif signal == Signal.LOGS:
            for rl in m.resource_logs:
                self.attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    self.attrs(sl.scope.attributes)
                    for rec in sl.log_records:
                        self.attrs(rec.attributes)
                        self.body(rec.body, rec.attributes)
        elif signal == Signal.METRICS:
            for rm in m.resource_metrics:
                self.attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    self.attrs(sm.scope.attributes)
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        if kind is not None:
                            for dp in getattr(metric, kind).data_points:
                                self.attrs(dp.attributes)
        elif signal == Signal.PROFILES:
            for rp in m.resource_profiles:
                self.attrs(rp.resource.attributes)
            self.profile_labels(m.dictionary)


_CHECK, _IGNORE, _REDACT, _MASK_KEY = range(4)
_CACHE_MAX = 65536
_DOT_STAR = re.compile(".*")
_UNCHANGED: tuple[bool, str | None] = (False, None)
_CACHE_VALUE_LEN = 256


def _union(patterns: list[str]) -> re.Pattern[str] | None:
    """All patterns as one alternation (a pre-check: no match means no rule matches), or None when
    they cannot be joined (a pattern with global flags other than a leading (?i) on every one)."""
    if not patterns:
        return None
    parts = []
    for p in patterns:
        p = go_to_python(p)
        if p.startswith("(?i)"):
            p = "(?i:" + p[4:] + ")"
        parts.append(f"(?:{p})")
    try:
        return re.compile("|".join(parts), re.ASCII)
    except re.error:
        return None


def _mask_group(m: re.Match[str], *, g: int, mask: Callable[[str], str]) -> str:
    a, b = m.span(g)
    base = m.start()
    whole = m.group()
    return whole[: a - base] + mask(m.group(g)) + whole[b - base:]


def _remove_keys(kvs: Any, keys: Iterable[str], names: list[str] | None = None) -> None:
    """pdata's Map.Remove, key by key: the first entry of the key is replaced by the last entry (so the
    order of what remains is the collector's, not the original one). `names` mirrors the keys of kvs
    (kept in step) so that lookups run at C speed."""
    if names is None:
        names = [kv.key for kv in kvs]
    for key in keys:
        try:
            i = names.index(key)
        except ValueError:
            continue
        last = len(names) - 1
        if i != last:
            kvs[i].CopyFrom(kvs[last])
            names[i] = names[last]
        del kvs[last]
        names.pop()


def _get(attrs: Any, key: str, names: list[str]) -> Any:
    try:
        return attrs[names.index(key)].value
    except ValueError:
        return None


def _put(attrs: Any, key: str, names: list[str]) -> Any:
    """The value of `key`, cleared for a new value (appended when absent), as pdata's Put*."""
    try:
        v = attrs[names.index(key)].value
        v.Clear()
        return v
    except ValueError:
        names.append(key)
        return attrs.add(key=key).value


class RedactionProcessor(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.signal = signal
        self.next = nxt
        self.ctx = ctx
        self.redactor = Redactor(cfg)
        self._counter = ctx.telemetry.counter(
            "processor_redaction_attributes", "attributes removed (action=redacted) or masked (action=masked)",
            ("signal", "action"))

    async def consume(self, batch: Batch) -> None:
        red = self.redactor
        wire = batch.cached_bytes()
        out = red.on_wire(self.signal, wire) if wire is not None else None
        if out is None:
            red.batch(self.signal, batch)
        elif out is not wire:
            batch.replace_wire(out, batch.item_count())
        if red.removed:
            self._counter.labels(self.signal.value, "redacted").inc(red.removed)
        if red.masked:
            self._counter.labels(self.signal.value, "masked").inc(red.masked)
        red.removed = red.masked = 0
        n = batch.item_count()
        self.ctx.telemetry.processed(self.signal, n, n)
        await self.next.consume(batch)


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return RedactionProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="redaction",
    config=Config,
    signals=frozenset(Signal),
    description="Removes keys not allowed, masks secrets (**** or a hash) with audit attributes; "
                "`preset: credentials` masks URL credentials, auth headers, cookies and pprof labels.",
    create=_create,
)
