"""Attribute actions, the collector's `attraction` engine: one implementation behind the `attributes`
processor (span, log record and data point attributes) and the `resource` processor (resource attributes).

Actions run in the order written, each on a repeated ``KeyValue`` field of the OTLP message in place:

* ``insert`` / ``update`` / ``upsert``: a value from ``value`` (typed as YAML typed it), ``from_attribute``
  (another attribute of the same item) or ``from_context`` (the request that carried the batch, see
  below); when the source gives nothing, ``default_value`` if set, else nothing happens;
* ``delete`` / ``hash``: the attribute ``key`` and every attribute whose key the regex ``pattern`` finds;
  ``hash`` is the collector's SHA-256: the lower-case hex digest of the value's bytes (a string's UTF-8, an
  int's or a double's 8 little-endian bytes, a bool's one byte 0/1); other kinds become "";
* ``extract``: the named groups of ``pattern`` (searched in the string value of ``key``) become attributes;
* ``convert``: ``converted_type`` int | double | string, as Go's strconv parses and pcommon prints; a value
  that does not convert stays as it was.

``from_context``: ``metadata.<name>`` is the gRPC metadata / HTTP header ``<name>`` of the OTLP request
(gotel's otlp receiver always passes them on; names are lower case), ``client.address`` the connection's
peer address, ``auth.<name>`` is accepted but never found (gotel's server authenticators record no
attributes), a bare name is looked up in the metadata as the collector does. The request is known while
the receiver's call runs, so these work only before a `batch` processor (the collector has the same
limit unless its batch processor keeps `metadata_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import Field, model_validator

from gotel.component.contract import REQUEST_METADATA, ComponentConfig, connection_ip
from gotel.pdata.batch import Batch, any_value, value_of

ACTIONS = ("insert", "update", "upsert", "delete", "hash", "extract", "convert")
CONVERTED_TYPES = ("int", "double", "string")


class ActionConfig(ComponentConfig):
    key: str = Field("", description="the attribute acted upon; required except for delete/hash with a pattern")
    action: str = Field(description="insert | update | upsert | delete | hash | extract | convert (any case)")
    value: Any = Field(None, description="insert/update/upsert: the value, typed as written in YAML")
    default_value: Any = Field(None, description="insert/update/upsert: the value when the source gives none")
    from_attribute: str = Field("", description="insert/update/upsert: copy the value of this attribute")
    from_context: str = Field("", description="insert/update/upsert: metadata.<name>, client.address, auth.<name>")
    pattern: str = Field("", description="delete/hash: regex on attribute keys; extract: regex with named groups")
    converted_type: str = Field("", description="convert: int | double | string")

    @model_validator(mode="after")
    def _check(self) -> ActionConfig:
        problem = action_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def _sources(a: ActionConfig) -> int:
    return (a.value is not None) + bool(a.from_attribute) + bool(a.from_context)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f'invalid regex in "pattern" `{pattern}`: {e}') from None


def action_problem(a: ActionConfig) -> str | None:  # noqa: C901 (one rule per action kind, as the collector validates them)
    """The collector's rules for one action, as one line; None when the action is valid."""
    act = a.action.lower()
    if act not in ACTIONS:
        return f'unknown action "{a.action}" (valid: {", ".join(ACTIONS)})'
    if act in ("delete", "hash"):
        if not a.key and not a.pattern:
            return f'action "{act}" needs "key" or "pattern"'
        if a.value is not None or a.from_attribute or a.from_context:
            return f'action "{act}" takes no "value", "from_attribute" or "from_context"'
    elif not a.key:
        return f'action "{act}" needs "key"'
    if act in ("insert", "update", "upsert"):
        n = _sources(a)
        if n == 0 and a.default_value is None:
            return f'action "{act}" needs one of "value", "from_attribute", "from_context" or "default_value"'
        if n > 1:
            return f'action "{act}" takes only one of "value", "from_attribute" or "from_context"'
        if a.pattern:
            return f'action "{act}" takes no "pattern"'
    if act == "extract":
        if _sources(a):
            return 'action "extract" takes no "value", "from_attribute" or "from_context"'
        if not a.pattern:
            return 'action "extract" needs "pattern" (a regex with named groups)'
    if act == "convert":
        if _sources(a) or a.pattern:
            return 'action "convert" takes no "value", "from_attribute", "from_context" or "pattern"'
        if not a.converted_type:
            return 'action "convert" needs "converted_type" (int, double or string)'
        if a.converted_type not in CONVERTED_TYPES:
            return f'"converted_type" must be int, double or string, not "{a.converted_type}"'
    elif a.converted_type:
        return f'action "{act}" takes no "converted_type"'
    if a.pattern:
        try:
            rx = _compile(a.pattern)
        except ValueError as e:
            return str(e)
        if act == "extract":
            if rx.groups == 0 or not rx.groupindex:
                return f'"pattern" `{a.pattern}` has no named groups (write (?P<name>...))'
            if len(rx.groupindex) != rx.groups:
                return f'"pattern" `{a.pattern}` has an unnamed group: every group must be named, or (?:...)'
    return None


# --- values: hashing and conversion as the collector's pcommon does ---------------------------------


def hash_value(av: Any) -> str:
    """The collector's SHA-256 of one AnyValue, as lower-case hex; "" for kinds it does not hash."""
    kind = av.WhichOneof("value")
    if kind == "string_value":
        data = av.string_value.encode()
    elif kind == "bool_value":
        data = b"\x01" if av.bool_value else b"\x00"
    elif kind == "int_value":
        data = struct.pack("<q", av.int_value)
    elif kind == "double_value":
        data = struct.pack("<d", av.double_value)
    else:
        return ""
    return hashlib.sha256(data).hexdigest()


def format_double(f: float) -> str:
    """pcommon's Value.AsString of a double: ES6 number formatting (no exponent in [1e-6, 1e21))."""
    if math.isinf(f) or math.isnan(f):
        go = "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf")
        return f"json: unsupported value: {go}"
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        mant, _, exp = repr(f).partition("e")
        if not exp:  # repr chose a plain form: take the exponent form of the same digits
            mant, _, exp = f"{Decimal(repr(f)).normalize():e}".partition("e")
        e = int(exp)
        return f"{mant}e{'-' if e < 0 else '+'}{abs(e):02d}".replace("e-0", "e-")
    s = format(Decimal(repr(f)), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GO_SPECIAL = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
               "+infinity": math.inf, "-infinity": -math.inf, "nan": math.nan}


def parse_go_int(s: str) -> int | None:
    """strconv.ParseInt(s, 10, 64): None when Go would refuse it."""
    if not _GO_INT.fullmatch(s):
        return None
    n = int(s)
    return n if -(1 << 63) <= n < (1 << 63) else None


def parse_go_float(s: str) -> float | None:
    """strconv.ParseFloat(s, 64): None when Go would refuse it (out of range included)."""
    special = _GO_SPECIAL.get(s.lower())
    if special is not None:
        return special
    if "_" in s:  # Go takes underscores between digits ("1_000")
        if re.search(r"(?<![0-9])_|_(?![0-9])", s):
            return None
        s = s.replace("_", "")
    body = s.lstrip("+-")
    if body[:2].lower() == "0x":
        try:
            f = float.fromhex(s)
        except (ValueError, OverflowError):
            return None
    elif _GO_FLOAT.fullmatch(s):
        f = float(s)
    else:
        return None
    return None if math.isinf(f) else f


def as_string(av: Any) -> str:
    """pcommon's Value.AsString for the scalar kinds (what `convert` to string and matching print)."""
    kind = av.WhichOneof("value")
    if kind == "string_value":
        return str(av.string_value)
    if kind == "bool_value":
        return "true" if av.bool_value else "false"
    if kind == "int_value":
        return str(av.int_value)
    if kind == "double_value":
        return format_double(av.double_value)
    if kind == "bytes_value":
        return base64.b64encode(av.bytes_value).decode()
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(value_of(av), separators=(",", ":"), default=str)
    return ""


def _go_int_of_double(f: float) -> int:
    # Go's int64(f) on amd64: truncation; NaN and out-of-range give the minimum int64.
    if math.isnan(f) or not -(2.0**63) <= f < 2.0**63:
        return -(1 << 63)
    return int(f)


def convert_value(av: Any, to: str) -> None:
    kind = av.WhichOneof("value")
    if to == "string":
        if kind != "string_value":
            av.string_value = as_string(av)
    elif to == "int":
        if kind == "double_value":
            av.int_value = _go_int_of_double(av.double_value)
        elif kind == "bool_value":
            av.int_value = 1 if av.bool_value else 0
        elif kind == "string_value":
            n = parse_go_int(av.string_value)
            if n is not None:
                av.int_value = n
    elif to == "double":
        if kind == "int_value":
            av.double_value = float(av.int_value)
        elif kind == "bool_value":
            av.double_value = 1.0 if av.bool_value else 0.0
        elif kind == "string_value":
            f = parse_go_float(av.string_value)
            if f is not None:
                av.double_value = f


# --- the engine --------------------------------------------------------------------------------------


def context_value(name: str) -> str | None:
    """A from_context value of the request being consumed, or None when it has none."""
    if name == "client.address":
        return connection_ip() or None
    if name.startswith("auth."):
        return None
    return REQUEST_METADATA.get().get(name.removeprefix("metadata.").lower())


Kvs = Any  # a protobuf repeated KeyValue field
# An action on (the KeyValue field, the list of its keys): the keys are read once per item and kept in
# step with the field, so that finding a key is a C-level list scan instead of a Python loop over messages.
Op = Callable[[Kvs, list[str]], None]


def _key_bytes(key: str) -> bytes:
    """How a KeyValue with this key starts on the wire (field 1, length, UTF-8)."""
    data = key.encode()
    n, head = len(data), bytearray(b"\x0a")
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + data


class AttrActions:
    """Compiled actions: `apply(kvs)` runs them in order on one repeated KeyValue field."""

    def __init__(self, actions: list[ActionConfig]) -> None:
        self.ops: list[Op] = [self._op(a) for a in actions]
        # Wire patterns without which an action can do nothing (None: it may act on any item).
        triggers = [self._trigger(a) for a in actions]
        self.triggers: list[bytes] | None = (
            None if any(t is None for t in triggers) else [t for ts in triggers if ts for t in ts])

    def apply(self, kvs: Kvs) -> None:
        keys = [x.key for x in kvs]
        for op in self.ops:
            op(kvs, keys)

    def may_act(self, wire: bytes) -> bool:
        """False when the encoded request holds none of the keys every action needs: nothing to do."""
        return self.triggers is None or any(t in wire for t in self.triggers)

    @staticmethod
    def _trigger(a: ActionConfig) -> list[bytes] | None:
        act = a.action.lower()
        if act in ("insert", "update", "upsert"):
            if a.from_attribute and a.default_value is None:
                return [_key_bytes(a.from_attribute)]
            return [_key_bytes(a.key)] if act == "update" else None
        if a.pattern and act in ("delete", "hash"):
            return None
        return [_key_bytes(a.key)]

    @staticmethod
    def _op(a: ActionConfig) -> Op:  # noqa: C901 - one small closure per action kind
        act, key = a.action.lower(), a.key
        rx = re.compile(a.pattern) if a.pattern else None
        if act in ("insert", "update", "upsert"):
            const = any_value(a.value) if a.value is not None else None
            default = any_value(a.default_value) if a.default_value is not None else None
            src_attr, src_ctx = a.from_attribute, a.from_context
            do_insert, do_update = act != "update", act != "insert"

            def set_op(kvs: Kvs, keys: list[str]) -> None:
                s = context_value(src_ctx) if src_ctx and const is None else None
                if const is not None:
                    val = const
                elif s is not None:
                    val = any_value(s)
                elif src_attr and src_attr in keys:
                    if src_attr == key:
                        return  # copying an attribute onto itself
                    val = kvs[keys.index(src_attr)].value
                elif default is not None:
                    val = default
                else:
                    return
                if key in keys:
                    if do_update:
                        kvs[keys.index(key)].value.CopyFrom(val)
                elif do_insert:
                    kvs.add(key=key).value.CopyFrom(val)
                    keys.append(key)

            return set_op
        if act == "delete":

            def delete_op(kvs: Kvs, keys: list[str]) -> None:
                if key in keys:
                    i = keys.index(key)
                    del kvs[i]
                    del keys[i]
                if rx is not None:
                    for k in [k for k in keys if rx.search(k)]:
                        if k in keys:  # a duplicate key is removed once per match, as the collector does
                            i = keys.index(k)
                            del kvs[i]
                            del keys[i]

            return delete_op
        if act == "hash":

            def hash_op(kvs: Kvs, keys: list[str]) -> None:
                if key in keys:
                    v = kvs[keys.index(key)].value
                    v.string_value = hash_value(v)
                if rx is not None:
                    for k in [k for k in keys if rx.search(k)]:
                        v = kvs[keys.index(k)].value
                        v.string_value = hash_value(v)

            return hash_op
        if act == "extract":
            assert rx is not None
            names = sorted(rx.groupindex, key=rx.groupindex.__getitem__)

            def extract_op(kvs: Kvs, keys: list[str]) -> None:
                if key not in keys:
                    return
                v = kvs[keys.index(key)].value
                if v.WhichOneof("value") != "string_value":
                    return
                m = rx.search(v.string_value)
                if m is None:
                    return
                for name in names:
                    g = m.group(name) or ""  # Go gives "" for a group that did not take part
                    if name in keys:
                        kvs[keys.index(name)].value.string_value = g
                    else:
                        kvs.add(key=name).value.string_value = g
                        keys.append(name)

            return extract_op
        to = a.converted_type

        def convert_op(kvs: Kvs, keys: list[str]) -> None:
            if key in keys:
                convert_value(kvs[keys.index(key)].value, to)

        return convert_op


# --- on the wire: only the parts whose bytes hold what an action needs are decoded and encoded ------


def apply_encoded(apply: Callable[[Any], None], msg: Any, old: bytes) -> bytes:
    """The encoding of the message `old` encodes after apply() ran on its attributes."""
    msg.ParseFromString(old)
    apply(msg.attributes)
    return bytes(msg.SerializeToString())


def process_on_wire(batch: Batch, actions: AttrActions, on_wire: Callable[[bytes], bytes | None]) -> bool:
    """Run the actions on the batch's received bytes when it has them; False when the message path must
    run instead (no bytes, or `on_wire` declined). A request holding none of the keys the actions need
    passes untouched, and one the actions did not change keeps its bytes."""
    wire = batch.cached_bytes()
    if wire is None:
        return False
    if not actions.may_act(wire):
        return True
    out = on_wire(wire)
    if out is None:
        return False
    if out is not wire:
        batch.replace_wire(out, batch.item_count())
    return True
