"""Bounded inflation of compressed request bodies (gzip, deflate/zlib, zstd, snappy).

Every decoder stops as soon as its output would pass the limit, so a decompression bomb costs at
most ``limit`` bytes of memory, never its inflated size (the collector has done the same since
CVE-2024-36129). Feed compressed chunks as they arrive; ``finish()`` returns the body.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - depends on the interpreter
    from backports import zstd

# Content-Encoding values accepted, as in the collector's confighttp (lz4 is not offered).
ENCODINGS = ("", "identity", "gzip", "deflate", "zlib", "zstd", "snappy", "x-snappy-framed")
_SNAPPY_FRAMED_HEADER = b"\xff\x06\x00\x00sNaPpY"
_STEP = 1 << 20


class TooLarge(Exception):
    """The body inflates (or arrives) larger than the limit."""


class CorruptBody(Exception):
    """The body is not valid for its Content-Encoding; the message says why."""


class _Stream:
    """zlib/zstd: inflate chunk by chunk, asking for at most one byte more than the room left."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.parts: list[bytes] = []  # joined once at the end: no growing buffer copied as it grows
        self.size = 0
        self.d: Any = None
        self.members = 0

    def _new(self, first: bytes) -> Any:
        if self.encoding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.encoding == "zstd":
            return zstd.ZstdDecompressor()
        # deflate is zlib-wrapped (RFC 9110); senders that send raw deflate are accepted too.
        raw = bool(first) and (first[0] & 0x0F) != 8
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        while True:
            if self.d is None:
                if not data:
                    return
                self.d = self._new(data)
                self.members += 1
            # Small steps: the peak is the body so far plus one step, not twice the limit.
            asked = min(self.limit - self.size + 1, _STEP)
            try:
                piece = self.d.decompress(data, asked)
            except (zlib.error, zstd.ZstdError) as e:
                raise CorruptBody(f"corrupt {self.encoding} body: {e}") from None
            self.size += len(piece)
            if self.size > self.limit:
                self.parts.clear()
                raise TooLarge
            self.parts.append(piece)
            if self.d.eof:
                data = self.d.unused_data  # a next gzip member or zstd frame, as Go's readers accept
                self.d = None
            elif len(piece) == asked:  # the step was full: more output may be pending
                data = getattr(self.d, "unconsumed_tail", b"")
            else:
                return  # all input consumed

    def finish(self) -> bytes:
        if self.d is not None and not self.d.eof:
            raise CorruptBody(f"truncated {self.encoding} body: the stream ended before its end marker")
        if self.members == 0 and self.encoding in ("gzip", "zstd"):
            raise CorruptBody(f"empty {self.encoding} body")
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class _Plain:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self.out) + len(data) > self.limit:
            raise TooLarge
        self.out += data

    def finish(self) -> bytes:
        return bytes(self.out)


def _varint(b: bytes) -> int:
    n = shift = 0
    for i, c in enumerate(b[:10]):
        n |= (c & 0x7F) << shift
        if not c & 0x80:
            return n
        shift += 7
        if i == 9:
            break
    raise CorruptBody("corrupt snappy body: bad length header")


class _Snappy(_Plain):
    """Block snappy (the length is in its header), or the framed format when it starts with its
    stream identifier (as the collector auto-detects). Sizes are checked before inflating."""

    def __init__(self, limit: int, framed_only: bool) -> None:
        super().__init__(limit)
        self.framed_only = framed_only

    def feed(self, data: bytes) -> None:
        # The compressed bytes themselves are bounded by the limit (snappy never shrinks much below
        # 1/20th, so this is not what stops a bomb: the size checks below are).
        super().feed(data)

    def _framed_size(self, body: bytes) -> int:
        total, i = 0, 0
        while i < len(body):
            if i + 4 > len(body):
                raise CorruptBody("corrupt snappy frame: truncated chunk header")
            kind = body[i]
            n = int.from_bytes(body[i + 1:i + 4], "little")
            chunk = body[i + 4:i + 4 + n]
            if len(chunk) != n:
                raise CorruptBody("corrupt snappy frame: truncated chunk")
            if kind == 0x00:
                total += _varint(chunk[4:])
            elif kind == 0x01:
                total += max(0, n - 4)
            elif 0x02 <= kind <= 0x7F:
                raise CorruptBody(f"corrupt snappy frame: unskippable chunk type 0x{kind:02x}")
            if total > self.limit:
                raise TooLarge
            i += 4 + n
        return total

    def finish(self) -> bytes:
        import cramjam  # on first use: most agents never see snappy (its library: 2 MB of each process)

        body = bytes(self.out)
        try:
            if self.framed_only or body.startswith(_SNAPPY_FRAMED_HEADER):
                self._framed_size(body)
                return bytes(cramjam.snappy.decompress(body))
            if _varint(body) > self.limit:
                raise TooLarge
            return bytes(cramjam.snappy.decompress_raw(body))
        except cramjam.DecompressionError as e:
            raise CorruptBody(f"corrupt snappy body: {e}") from None


def decoder(encoding: str, limit: int) -> _Plain | _Stream:
    """A bounded decoder for one body; raises ValueError for an encoding not in ENCODINGS."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return _Plain(limit)
    if enc in ("gzip", "deflate", "zlib", "zstd"):
        return _Stream("deflate" if enc == "zlib" else enc, limit)
    if enc in ("snappy", "x-snappy-framed"):
        return _Snappy(limit, enc == "x-snappy-framed")
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """One-shot form of decoder(): the whole compressed body at once."""
    d = decoder(encoding, limit)
    d.feed(data)
    return d.finish()
