"""Protobuf wire encoding by hand for the two hot paths that build large messages (Loki entries,
remote-write samples): building generated message objects costs a Python object per field, which
measured several times slower here. Tests compare the bytes with the generated classes in gotel.proto.

And the other direction for processors: a received OTLP request's framing (resources, scopes, items)
parsed with its parts left as bytes, so that a processor finds, changes or cuts the few items it acts
on and copies the rest as it came (`framing`, `ItemBytes`, `framing_without`).
"""

from __future__ import annotations

import re
import struct
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_SMALL = [bytes([i]) for i in range(128)]
_pack_double = struct.Struct("<d").pack
pack_double = _pack_double


def varint(n: int) -> bytes:
    """Unsigned varint; negative int64 is encoded as its 64-bit two's complement (10 bytes)."""
    if 0 <= n < 128:
        return _SMALL[n]
    if 0 < n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if 0 < n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    if 0 < n < 0x10000000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, (n >> 14) & 0x7F | 0x80, n >> 21))
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + payload


def string_field(tag: bytes, s: str) -> bytes:
    return ld(tag, s.encode())


def label_pair(name: str, value: str) -> bytes:
    """A {name=1, value=2} message (prometheus.Label, logproto.LabelPairAdapter), without its own tag."""
    nb = name.encode()
    vb = value.encode()
    return ld(b"\x0a", nb) + ld(b"\x12", vb)


class SampleEncoder:
    """prometheus.Sample fields for one timestamp: prefix + double + suffix, the timestamp encoded once."""

    __slots__ = ("pre", "post", "size")

    def __init__(self, ts_ms: int) -> None:
        tsb = varint(ts_ms)
        self.pre = b"\x12" + _SMALL[10 + len(tsb)] + b"\x09"
        self.post = b"\x10" + tsb
        self.size = 12 + len(tsb)  # the whole samples field: tag, length, 9 + 1 + len(tsb)

    def __call__(self, value: float) -> bytes:
        return self.pre + _pack_double(value) + self.post


def sample(value: float, ts_ms: int) -> bytes:
    """prometheus.Sample {double value = 1; int64 timestamp = 2} as a TimeSeries.samples (2) field."""
    body = b"\x09" + _pack_double(value) + b"\x10" + varint(ts_ms)
    return b"\x12" + _SMALL[len(body)] + body


def timestamp(ns: int) -> bytes:
    """google.protobuf.Timestamp {seconds = 1; nanos = 2} payload from nanoseconds."""
    sec, nanos = divmod(ns, 1_000_000_000)
    out = b""
    if sec:
        out += b"\x08" + varint(sec)
    if nanos:
        out += b"\x10" + varint(nanos)
    return out


# --- the framing parsed by protobuf itself: each resource, scope and item left as raw bytes ---
#
# A received request is a list of resources, each with a list of scopes, each with a list of items
# (spans, metrics, log records: field 1, 2, 2 in all three signals). Parsed with a schema that declares
# those as bytes, protobuf's C parser hands back every item as one bytes object in a few microseconds,
# and serializing the framing again is a copy: a processor that changes a few items (or none) works on
# those alone and never decodes or encodes the others. Fields the framing does not name stay unknown
# fields and are written back; `resource`, `scope` and `schema_url` are repeated so that a request
# that repeats them (legal, merged by protobuf) is kept as it came.


def _framing_class() -> Any:
    fd = descriptor_pb2.FileDescriptorProto(name="gotel/pdata/framing.proto", package="gotel.framing",
                                            syntax="proto2")
    rep, b, msg = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                   descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
    shapes = (("Scope", (("scope", 1, b, ""), ("items", 2, b, ""), ("schema_url", 3, b, ""))),
              ("Resource", (("resource", 1, b, ""), ("scopes", 2, msg, ".gotel.framing.Scope"),
                            ("schema_url", 3, b, ""))),
              ("Request", (("resources", 1, msg, ".gotel.framing.Resource"),)))
    for name, fields in shapes:
        m = fd.message_type.add(name=name)
        for fname, num, typ, tname in fields:
            f = m.field.add(name=fname, number=num, type=typ, label=rep)
            if tname:
                f.type_name = tname
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("gotel.framing.Request"))


_Framing = _framing_class()


def framing(raw: bytes) -> Any:
    """The request's framing: `.resources[r].resource` (a list of the Resource's encodings, normally one),
    `.resources[r].scopes[s].scope` (likewise) and `.resources[r].scopes[s].items` (each item's bytes).
    Raises DecodeError where the real parser would; `.SerializeToString()` gives the request back."""
    f = _Framing()
    f.ParseFromString(raw)
    return f


Where = dict[tuple[int, int], set[int]]  # per (resource, scope) index, the indices of items


class ItemBytes:
    """Every item of a framing in one buffer, to find which items a byte string or a regex occurs in
    with one search of the whole request instead of one per item."""

    def __init__(self, fr: Any) -> None:
        chunks: list[bytes] = []
        self.firsts: list[int] = []  # per scope, the index in chunks of its first item
        self.keys: list[tuple[int, int]] = []
        for ri, r in enumerate(fr.resources):
            for si, sc in enumerate(r.scopes):
                self.firsts.append(len(chunks))
                self.keys.append((ri, si))
                chunks.extend(sc.items)
        self.joined = b"".join(chunks)
        self.ends = list(accumulate(map(len, chunks)))

    def _add(self, out: Where, k: int) -> None:
        s = bisect_right(self.firsts, k) - 1
        out.setdefault(self.keys[s], set()).add(k - self.firsts[s])

    def containing(self, needles: Iterable[bytes]) -> Where:
        """The items whose own bytes contain one of the needles."""
        out: Where = {}
        joined, ends = self.joined, self.ends
        for needle in needles:
            pos = joined.find(needle)
            while pos != -1:
                k = bisect_right(ends, pos)
                if pos + len(needle) <= ends[k]:
                    self._add(out, k)
                pos = joined.find(needle, pos + 1)
        return out

    def matching(self, rx: re.Pattern[bytes]) -> Where:
        """The items whose own bytes rx finds a match in. After a match the search goes on at the next
        item, so that a match running over an item's end can hide no match inside the next one."""
        out: Where = {}
        joined, ends = self.joined, self.ends
        m = rx.search(joined)
        while m is not None:
            k = bisect_right(ends, m.start())
            if k >= len(ends):
                break  # an empty match at the very end
            self._add(out, k)
            m = rx.search(joined, ends[k])
        return out


def framing_without(fr: Any, resources: set[int], scopes: dict[int, set[int]], items: Where) -> bytes:
    """The request of fr without the resources, scopes (per resource) and items (per resource, scope)
    at these indices, every other byte as it came."""
    for (ri, si), iis in items.items():
        its = fr.resources[ri].scopes[si].items
        for ii in sorted(iis, reverse=True):
            del its[ii]
    for ri, sis in scopes.items():
        scs = fr.resources[ri].scopes
        for si in sorted(sis, reverse=True):
            del scs[si]
    for ri in sorted(resources, reverse=True):
        del fr.resources[ri]
    return bytes(fr.SerializeToString())
