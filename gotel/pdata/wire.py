"""Protobuf wire encoding by hand for the two hot paths that build large messages (Loki entries,
remote-write samples): building generated message objects costs a Python object per field, which
measured several times slower here. Tests compare the bytes with the generated classes in gotel.proto.
"""

from __future__ import annotations

import struct

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


# --- reading: where the items of a serialized OTLP export request lie ---

Span = tuple[int, int, int]  # a field's start, its payload's start, its end: raw[start:end] is the field
Layout = list[tuple[Span, list[tuple[Span, list[Span]]]]]


def _len_fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, field start, payload start, end) of every length-delimited field in buf[start:end];
    fields of other wire types are skipped."""
    out = []
    i = start
    while i < end:
        h = i
        b = buf[i]
        i += 1
        tag = b & 0x7F
        shift = 7
        while b >= 0x80:
            b = buf[i]
            i += 1
            tag |= (b & 0x7F) << shift
            shift += 7
        wt = tag & 7
        if wt == 2:
            b = buf[i]
            i += 1
            n = b & 0x7F
            shift = 7
            while b >= 0x80:
                b = buf[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
            out.append((tag >> 3, h, i, i + n))
            i += n
        elif wt == 0:
            while buf[i] >= 0x80:
                i += 1
            i += 1
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt} at byte {i}")
    if i != end:
        raise ValueError("truncated protobuf message")
    return out


def otlp_layout(raw: bytes) -> Layout:
    """For an Export{Trace,Metrics,Logs}ServiceRequest: each resource with each of its scopes with each
    of its spans / metrics / log records, as byte spans, in the order the parsed message lists them
    (field 1 of the request, field 2 of a resource, field 2 of a scope: the same in all three signals)."""
    return [((h, s, e), [((h2, s2, e2), [(h3, s3, e3) for f3, h3, s3, e3 in _len_fields(raw, s2, e2) if f3 == 2])
                         for f2, h2, s2, e2 in _len_fields(raw, s, e) if f2 == 2])
            for f, h, s, e in _len_fields(raw, 0, len(raw)) if f == 1]


def otlp_item_ranges(raw: bytes) -> list[list[list[tuple[int, int]]]]:
    """Per resource, per scope, the (payload start, end) of each item: raw[start:end] parses as the item."""
    return [[[(s, e) for _, s, e in items] for _, items in scopes] for _, scopes in otlp_layout(raw)]


def _cut(raw: bytes, start: int, end: int, parts: list[tuple[Span, bytes | None]]) -> bytes:
    """raw[start:end] with each (field span, replacement) applied in order: None removes the field."""
    out = []
    at = start
    for (h, _, e), new in parts:
        out.append(raw[at:h])
        if new is not None:
            out.append(new)
        at = e
    out.append(raw[at:end])
    return b"".join(out)


def otlp_without(raw: bytes, layout: Layout, resources: set[int], scopes: dict[int, set[int]],
                 items: dict[tuple[int, int], set[int]]) -> bytes:
    """The request raw without the resources, scopes (per resource) and items (per resource, scope) at
    these indices: everything else is copied byte for byte, only the enclosing lengths are written anew,
    so nothing is re-encoded and the work is per removal, not per item."""
    top: list[tuple[Span, bytes | None]] = []
    touched = {ri for ri, _ in items} | set(scopes) | resources
    for ri in sorted(touched):
        rspan, rscopes = layout[ri]
        if ri in resources:
            top.append((rspan, None))
            continue
        inner: list[tuple[Span, bytes | None]] = []
        drop_s = scopes.get(ri, set())
        for si in sorted(drop_s | {s for r, s in items if r == ri}):
            sspan, sitems = rscopes[si]
            if si in drop_s:
                inner.append((sspan, None))
                continue
            cut: list[tuple[Span, bytes | None]] = [(sitems[ii], None) for ii in sorted(items[(ri, si)])]
            inner.append((sspan, ld(b"\x12", _cut(raw, sspan[1], sspan[2], cut))))
        top.append((rspan, ld(b"\x0a", _cut(raw, rspan[1], rspan[2], inner))))
    return _cut(raw, 0, len(raw), top)
