"""OTLP/JSON encoding (the OTLP spec's JSON mapping) of export requests.

protobuf's JSON mapping differs from OTLP's in one way: trace and span ids are hex strings in OTLP,
base64 in protobuf. Enums are integers and field names lowerCamelCase in both (with
use_integers_for_enums). This module converts both ways so files and HTTP bodies round-trip.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

# Bytes fields that OTLP/JSON writes as hex (trace/span ids, profile ids).
HEX_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "profileId"})


def _convert(obj: Any, fn: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (fn(v) if k in HEX_FIELDS and isinstance(v, str) else _convert(v, fn)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_convert(x, fn) for x in obj]
    return obj


def _b64_to_hex(v: str) -> str:
    return base64.b64decode(v).hex()


def _hex_to_b64(v: str) -> str:
    return base64.b64encode(bytes.fromhex(v)).decode()


def to_dict(msg: Message) -> dict[str, Any]:
    d = json_format.MessageToDict(msg, use_integers_for_enums=True, preserving_proto_field_name=False)
    out: dict[str, Any] = _convert(d, _b64_to_hex)
    return out


def to_json(msg: Message) -> str:
    """One line of OTLP/JSON (no newlines inside)."""
    return json.dumps(to_dict(msg), separators=(",", ":"))


def from_dict(d: dict[str, Any], msg: Message) -> Message:
    json_format.ParseDict(_convert(d, _hex_to_b64), msg, ignore_unknown_fields=True)
    return msg


def from_json(text: str | bytes, msg: Message) -> Message:
    """Parses OTLP/JSON into msg; raises ValueError (json) or json_format.ParseError."""
    return from_dict(json.loads(text), msg)
