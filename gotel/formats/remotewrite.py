"""OTLP metrics request bytes -> remote-write TimeSeries bytes, per shard: the remote-write hot path.

Why by hand: through protobuf message objects a counter sample cost ~5 µs (an accessor call per field,
a Python object per data point). Here number data points are read straight from the
ExportMetricsServiceRequest bytes:

* A point's bytes after its fixed-size fields (start, time, value) are its attributes. Those bytes
  identify its series, so a dict lookup replaces reading, sanitising and sorting the attributes.
* The cached series has its encoded label block and TimeSeries header. The message is that header +
  the point's 8 value bytes (an OTLP double is already the little-endian double remote-write sends) +
  the timestamp, which is encoded once per batch.

Everything else goes through gotel.formats.promconv's Converter on parsed messages: the first point of a
series, exemplars, histograms, summaries and unusual field layouts. The Converter owns all series
state, so both paths agree on names, labels, delta accumulation and expiry. The hot path leaves
Series.start_ms as it was (remote-write 1.0 does not send it). tests/unit/exporters/
test_remote_write_fast.py compares this module with the Converter on generated batches.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from gotel.formats.promconv import Converter, Series, Stats, _Emitter, format_le
from gotel.formats.promnames import metric_name
from gotel.pdata.wire import SampleEncoder, label_pair, ld, pack_double, varint
from gotel.proto import remote_write_pb2

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
# (timestamp ms, value) of a plain series; (timestamp, values per sub-series) of a histogram/summary
Snapshot = tuple[int, Any]

_unpack_d = struct.Struct("<d").unpack_from
_unpack_q = struct.Struct("<q").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from

# Metric.data oneof: wire tag -> kind
_GAUGE, _SUM = 5, 7
_DATA_FIELDS = frozenset({5, 7, 9, 10, 11})
# OTLP AggregationTemporality
_DELTA, _CUMULATIVE = 1, 2
# Bounds on the caches (series by attribute bytes, resources by bytes): cleared when exceeded.
_MAX_CACHED_SERIES = 200_000
_MAX_CACHED_RESOURCES = 10_000


# --- encoding -------------------------------------------------------------------------------------


def label_block(name: str, labels: tuple[tuple[str, str], ...]) -> bytes:
    """The encoded labels (TimeSeries field 1, repeated) of one series: sorted, __name__ included."""
    pairs = sorted((("__name__", name), *labels))
    return b"".join(ld(b"\x0a", label_pair(n, v)) for n, v in pairs if v != "")


def sub_series(s: Series) -> list[SeriesKey]:
    """The Prometheus series a converted series is sent as, in the order of snapshot values."""
    fam, base = s.family, s.labels
    if s.kind == "histogram":
        keys = [(fam + "_bucket", (*base, ("le", format_le(b)))) for b in s.bounds]
        keys.append((fam + "_bucket", (*base, ("le", "+Inf"))))
        if s.has_sum:
            keys.append((fam + "_sum", base))
        keys.append((fam + "_count", base))
        return keys
    if s.kind == "summary":
        keys = [(fam, (*base, ("quantile", format_le(q)))) for q, _ in s.quantiles]
        return [*keys, (fam + "_sum", base), (fam + "_count", base)]
    return [(fam, base)]


def snapshot_values(s: Series) -> Any:
    """The series' current sample values: a float, or a list in sub_series() order."""
    if s.kind in ("counter", "gauge"):
        return s.value
    if s.kind == "info":
        return 1.0
    if s.kind == "histogram":
        vals: list[float] = list(accumulate(s.counts[: len(s.bounds)]))
        vals.append(s.count)
        if s.has_sum:
            vals.append(s.sum)
        vals.append(s.count)
        return vals
    return [v for _, v in s.quantiles] + [s.sum, s.count]


def encode_series(blocks: list[bytes], snaps: list[Snapshot]) -> bytes:
    """TimeSeries messages of one series (one per sub-series), samples sorted by time."""
    if len(snaps) > 1:
        snaps = sorted(snaps, key=lambda x: x[0])
    encs: dict[int, SampleEncoder] = {}
    parts = []
    for i, block in enumerate(blocks):
        samples = []
        for ts, v in snaps:
            e = encs.get(ts)
            if e is None:
                e = encs[ts] = SampleEncoder(ts)
            samples.append(e(v if len(blocks) == 1 else v[i]))
        parts.append(ld(b"\x0a", block + b"".join(samples)))
    return b"".join(parts)


# --- wire reading ---------------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next position) of the varint at ``i``."""
    b = buf[i]
    if b < 0x80:
        return b, i + 1
    result = b & 0x7F
    shift = 7
    i += 1
    while True:
        if i >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes, i: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in buf[i:end]; for varints (start, end) are
    (value, end)."""
    while i < end:
        key, i = _varint(buf, i)
        fn, wt = key >> 3, key & 7
        if wt == 2:
            n, i = _varint(buf, i)
            a, i = i, i + n
        elif wt == 0:
            a, i = _varint(buf, i)
        elif wt == 1:
            a, i = i, i + 8
        elif wt == 5:
            a, i = i, i + 4
        else:
            raise DecodeError(f"unsupported wire type {wt}")
        if i > end or fn == 0:
            raise DecodeError("truncated message")
        yield fn, wt, a, i


def _clean_rest(buf: bytes, a: int, b: int) -> bool:
    """Whether a data point's bytes after its fixed fields hold nothing that is not its identity:
    no time, value or exemplar fields (2..6). Then equal bytes mean the same series."""
    try:
        return all(not 2 <= fn <= 6 for fn, _, _, _ in _fields(buf, a, b))
    except DecodeError:
        return False


# --- caches ---------------------------------------------------------------------------------------


class _MetricCtx:
    """One gauge/sum metric of one scope: family, kind, temporality, and its series by attribute bytes."""

    __slots__ = ("delta", "fam", "meta", "pkind", "series")

    def __init__(self, fam: str, pkind: str, delta: bool, meta: Any) -> None:
        self.fam = fam
        self.pkind = pkind
        self.delta = delta
        self.meta = meta  # Metric with name, description, unit only (what the Converter reads)
        self.series: dict[bytes, Series] = {}


class _ScopeCtx:
    __slots__ = ("common", "metrics")

    def __init__(self, common: dict[str, str]) -> None:
        self.common = common
        self.metrics: dict[tuple[bytes, int, int, bool], _MetricCtx] = {}


class _ResCtx:
    __slots__ = ("base", "info", "scopes")

    def __init__(self, base: dict[str, str], info: dict[str, str]) -> None:
        self.base = base
        self.info = info
        self.scopes: dict[bytes, _ScopeCtx] = {}


class Built:
    """One converted batch: per shard, the uncompressed request bodies with their sample counts, and
    the data points each shard carries."""

    __slots__ = ("bodies", "points", "stats")

    def __init__(self, bodies: list[list[tuple[bytes, int]]], points: list[int], stats: Stats) -> None:
        self.bodies = bodies
        self.points = points
        self.stats = stats


class Builder:
    """Converts request bytes into WriteRequest bodies (uncompressed), per shard, split by size.

    Per batch, each series is one element of its shard's output (one TimeSeries, or several for a
    histogram), so that a second point of the series in the same batch can be merged into it, in time
    order. Series are sharded by their label set.
    """

    def __init__(self, conv: Converter, nshards: int, max_bytes: int) -> None:
        self.conv = conv
        self.nshards = nshards
        self.max_bytes = max_bytes
        self._res: dict[bytes, _ResCtx] = {}
        self._cached = 0
        self._seq = 0
        self._catch = _Emitter(self._emit)
        self._begin(0.0)

    # --- per batch state ---

    def _begin(self, now: float) -> None:
        n = self.nshards
        self._seq += 1
        self._now = now
        self._outs: list[list[bytes]] = [[] for _ in range(n)]
        self._multi: list[dict[int, int]] = [{} for _ in range(n)]  # element -> samples, when not 1
        self._extra_points = [0] * n  # points merged into an earlier element of their series
        self._dups: dict[int, tuple[Series, int, list[Snapshot]]] = {}
        # histograms/summaries by key: the Converter makes a new object when bounds change (and for
        # every summary point), so one series can have two elements in a batch; merged at the end.
        self._bykey: dict[SeriesKey, Series] = {}
        self._regroup: dict[SeriesKey, list[Series]] = {}
        self._infos: dict[tuple[str, Any], Series] = {}
        self._tcache: dict[bytes, tuple[int, bytes | None]] = {}
        self._encs: dict[int, SampleEncoder] = {}
        self._newest = 0
        self._stats = Stats()
        self._entered: _ScopeCtx | None = None

    def build(self, raw: bytes, now: float) -> Built:
        """Converts one ExportMetricsServiceRequest; raises DecodeError on malformed bytes."""
        self._begin(now)
        for fn, wt, a, b in _fields(raw, 0, len(raw)):
            if fn == 1 and wt == 2:
                self._resource_metrics(raw, a, b)
        return self._finish()

    def forget_dead(self) -> None:
        """Drops expired series (Series.dead) from the caches; called after Converter.expire()."""
        n = 0
        for rc in self._res.values():
            for sc in rc.scopes.values():
                for mc in sc.metrics.values():
                    mc.series = {k: s for k, s in mc.series.items() if not s.dead}
                    n += len(mc.series)
        self._cached = n

    def _clear(self) -> None:
        self._res.clear()
        self._cached = 0

    # --- structure ---

    def _resource_metrics(self, buf: bytes, a: int, b: int) -> None:
        res_parts: list[bytes] = []
        scopes: list[tuple[int, int]] = []
        for fn, wt, x, y in _fields(buf, a, b):
            if wt != 2:
                continue
            if fn == 1:
                res_parts.append(buf[x:y])  # a repeated message field is merged: parse the concatenation
            elif fn == 2:
                scopes.append((x, y))
        rkey = b"".join(res_parts)
        rc = self._res.get(rkey)
        if rc is None:
            if len(self._res) >= _MAX_CACHED_RESOURCES:
                self._clear()
            base, info = self.conv._resource(Resource.FromString(rkey))
            rc = self._res[rkey] = _ResCtx(base, info)
        ti = self.conv.target_info(rc.base, rc.info, self._now)
        if ti is not None:
            self._infos[ti.key()] = ti
        for x, y in scopes:
            self._scope_metrics(buf, x, y, rc)

    def _scope_metrics(self, buf: bytes, a: int, b: int, rc: _ResCtx) -> None:
        scope_parts: list[bytes] = []
        metrics: list[tuple[int, int]] = []
        for fn, wt, x, y in _fields(buf, a, b):
            if wt != 2:
                continue
            if fn == 1:
                scope_parts.append(buf[x:y])
            elif fn == 2:
                metrics.append((x, y))
        skey = b"".join(scope_parts)
        sc = rc.scopes.get(skey)
        if sc is None:
            sc = rc.scopes[skey] = _ScopeCtx(self.conv.scope_labels(rc.base, InstrumentationScope.FromString(skey)))
        for x, y in metrics:
            self._metric(buf, x, y, sc)

    def _enter(self, sc: _ScopeCtx) -> None:
        """Before the Converter handles something of this scope: it numbers the scope's label set."""
        if self._entered is not sc:
            self.conv.enter_scope(sc.common)
            self._entered = sc

    def _slow_metric(self, buf: bytes, a: int, b: int, sc: _ScopeCtx) -> None:
        self._enter(sc)
        self.conv._metric(Metric.FromString(buf[a:b]), sc.common, self._now, self._catch, self._stats)

    def _metric(self, buf: bytes, a: int, b: int, sc: _ScopeCtx) -> None:
        head: list[bytes] = []
        data: tuple[int, int, int] | None = None
        ndata = 0
        for fn, wt, x, y in _fields(buf, a, b):
            if wt != 2:
                continue
            if fn in _DATA_FIELDS:
                data = (fn, x, y)
                ndata += 1
            elif fn in (1, 2, 3):  # name, description, unit
                head.append(bytes((fn << 3 | 2,)) + varint(y - x) + buf[x:y])
        if data is None or ndata > 1 or data[0] not in (_GAUGE, _SUM):
            self._slow_metric(buf, a, b, sc)
            return
        kind, x, y = data
        if kind == _GAUGE:
            self._numbers_all(buf, x, y, self._metric_ctx(sc, head, kind, 0, False), sc)
            return
        # Sum: data points (field 1) first, then temporality (2) and monotonic (3), as every protobuf
        # encoder writes fields in number order. The tail is read first; the walk checks it is right.
        temp = mono = -1
        tail = 0
        if y - x >= 4 and buf[y - 4] == 0x10 and buf[y - 2] == 0x18 and buf[y - 3] in (1, 2) and buf[y - 1] < 2:
            temp, mono, tail = buf[y - 3], buf[y - 1], 4
        elif y - x >= 2 and buf[y - 2] == 0x10 and buf[y - 1] in (1, 2):
            temp, mono, tail = buf[y - 1], 0, 2
        if temp != _CUMULATIVE:  # unusual layout, or delta: find out exactly before accumulating
            temp, mono, tail = self._sum_scan(buf, x, y)
            if tail < 0 or temp not in (_DELTA, _CUMULATIVE):
                self._slow_metric(buf, a, b, sc)
                return
            self._numbers_all(buf, x, y - tail, self._metric_ctx(sc, head, kind, temp, bool(mono)), sc)
            return
        mc = self._metric_ctx(sc, head, kind, temp, bool(mono))
        end = y - tail
        mark = ([len(o) for o in self._outs], list(self._extra_points))
        stop = self._numbers(buf, x, end, mc, sc)
        if stop != end:
            # Not a plain layout after all. Undo this metric's output and let the Converter do it
            # (setting cumulative values again is harmless; delta never gets here unverified).
            self._rollback(mark)
            self._slow_metric(buf, a, b, sc)

    def _sum_scan(self, buf: bytes, a: int, b: int) -> tuple[int, int, int]:
        """(temporality, monotonic, tail length) of a Sum read field by field; tail is -1 when the data
        points are not all before the other fields."""
        temp = mono = 0
        first_other = -1
        last_dp_end = a
        i = a
        for fn, wt, x, y in _fields(buf, a, b):
            if fn == 1 and wt == 2:
                if first_other >= 0:
                    return temp, mono, -1
                last_dp_end = y
            else:
                if first_other < 0:
                    first_other = i
                if fn == 2 and wt == 0:
                    temp = x
                elif fn == 3 and wt == 0:
                    mono = 1 if x else 0
            i = y
        return temp, mono, b - last_dp_end

    def _metric_ctx(self, sc: _ScopeCtx, head: list[bytes], kind: int, temp: int, mono: bool) -> _MetricCtx:
        hb = b"".join(head)
        key = (hb, kind, temp, mono)
        mc = sc.metrics.get(key)
        if mc is None:
            meta = Metric.FromString(hb)
            o = self.conv.opts
            pkind = "gauge" if kind == _GAUGE or not mono else "counter"
            fam = metric_name(meta.name, meta.unit, pkind, o.namespace, o.suffixes)
            mc = sc.metrics[key] = _MetricCtx(fam, pkind, temp == _DELTA, meta)
        return mc

    def _rollback(self, mark: tuple[list[int], list[int]]) -> None:
        lens, self._extra_points = mark
        for shard, n in enumerate(lens):
            del self._outs[shard][n:]
            self._multi[shard] = {k: v for k, v in self._multi[shard].items() if k < n}
        self._dups = {k: d for k, d in self._dups.items() if d[1] < lens[d[0].shard]}
        # Series emitted by the undone part still say "emitted in this batch": a new batch number
        # makes them start afresh (only merging with elements before this metric is lost).
        self._seq += 1

    # --- data points ---

    def _numbers_all(self, buf: bytes, a: int, b: int, mc: _MetricCtx, sc: _ScopeCtx) -> None:
        """All data points of a Gauge (or a verified Sum), whatever the layout."""
        i = self._numbers(buf, a, b, mc, sc)
        if i == b:
            return
        for fn, wt, x, y in _fields(buf, i, b):
            if fn == 1 and wt == 2:
                self._point(buf, x, y, mc, sc)

    def _numbers(self, buf: bytes, i: int, end: int, mc: _MetricCtx, sc: _ScopeCtx) -> int:
        """The hot loop: data points (field 1) from ``i``; returns where it stopped (``end`` when all
        were read; earlier at any other field or a point reaching past ``end``).

        A point takes the fast way when it is laid out as [start] time value attributes..., its
        attribute bytes are cached and its series was not emitted yet in this batch.
        """
        cache = mc.series
        tcache = self._tcache
        outs = self._outs
        seq = self._seq
        now = self._now
        delta = mc.delta
        unpack_d = _unpack_d
        unpack_q = _unpack_q
        pack = pack_double
        while i < end:
            if buf[i] != 0x0A:
                return i
            n = buf[i + 1]
            if n < 0x80:
                j = i + 2
            else:
                n, j = _varint(buf, i + 1)
            k = j + n
            if k > end:
                return i
            p = j + 9 if n >= 18 and buf[j] == 0x11 else j
            if p + 18 <= k and buf[p] == 0x19:
                s = cache.get(buf[p + 18:k])
                vt = buf[p + 9]
                if s is not None and s.seq != seq and (vt == 0x21 or vt == 0x31):
                    t8 = buf[p + 1:p + 9]
                    tp = tcache.get(t8)
                    if tp is None:
                        tp = self._time(t8)
                    ms, post = tp
                    if post is not None:
                        if not delta:
                            if vt == 0x21:
                                vb = buf[p + 10:p + 18]
                                s.value = unpack_d(vb)[0]
                            else:
                                v = s.value = float(unpack_q(buf, p + 10)[0])
                                vb = pack(v)
                            s.ts_ms = ms
                            s.seen = now
                            s.seq = seq
                            o = outs[s.shard]
                            s.pos = len(o)
                            o.append(s.hdr + vb + post)
                            i = k
                            continue
                        if ms >= s.ts_ms:
                            v = s.value = s.value + (unpack_d(buf, p + 10)[0] if vt == 0x21
                                                     else float(unpack_q(buf, p + 10)[0]))
                            s.ts_ms = ms
                            s.seen = now
                            s.seq = seq
                            o = outs[s.shard]
                            s.pos = len(o)
                            o.append(s.hdr + pack(v) + post)
                            i = k
                            continue
            self._point(buf, j, k, mc, sc)
            i = k
        return i

    def _time(self, t8: bytes) -> tuple[int, bytes | None]:
        """(ms, encoded Sample.timestamp field) of an OTLP time; None when not 6 varint bytes (the
        cached headers assume that size: years 1971..2109)."""
        ms = _unpack_Q(t8)[0] // 1_000_000
        tb = varint(ms)
        tp = self._tcache[t8] = (ms, b"\x10" + tb if len(tb) == 6 else None)
        return tp

    def _point(self, buf: bytes, j: int, k: int, mc: _MetricCtx, sc: _ScopeCtx) -> None:
        """One data point the hot loop could not take: the Converter updates the series (and creates
        it), then the attribute bytes are cached when they identify it."""
        p = j + 9 if k - j >= 18 and buf[j] == 0x11 else j
        regular = p + 18 <= k and buf[p] == 0x19 and buf[p + 9] in (0x21, 0x31)
        s = mc.series.get(buf[p + 18:k]) if regular else None
        if s is not None:
            # Known series, plain point (a second point of the series in this batch, or an odd time).
            ts = _unpack_Q(buf, p + 1)[0] // 1_000_000
            v = _unpack_d(buf, p + 10)[0] if buf[p + 9] == 0x21 else float(_unpack_q(buf, p + 10)[0])
            if mc.delta:
                if ts < s.ts_ms:
                    ts = s.ts_ms
                s.value += v
            else:
                s.value = v
            s.ts_ms = ts
            s.seen = self._now
            self._emit(s)
            return
        self._enter(sc)
        dp = NumberDataPoint.FromString(buf[j:k])
        got: list[Series] = []
        self.conv._number(mc.fam, mc.pkind, mc.meta, dp, sc.common, self._now, got, mc.delta)
        s = got[0]
        if regular and s.kind in ("counter", "gauge") and _clean_rest(buf, p + 18, k):
            if self._cached >= _MAX_CACHED_SERIES:
                self._clear()  # the contexts in use stay referenced by the caller: this one refills
            mc.series[buf[p + 18:k]] = s
            self._cached += 1
        self._emit(s)

    # --- output ---

    def _wire(self, s: Series) -> Any:
        """(label blocks, number of quantiles, TimeSeries headers by sample size) of a series, cached
        on it with its shard and its one-sample header."""
        blocks = [label_block(name, labels) for name, labels in sub_series(s)]
        s.shard = hash(s.labels) % self.nshards
        if len(blocks) == 1:
            s.hdr = b"\x0a" + varint(len(blocks[0]) + 18) + blocks[0] + b"\x12\x10\x09"
        w: tuple[list[bytes], int, dict[int, list[bytes]]] = (blocks, len(s.quantiles), {})
        s.wire = w
        return w

    def _encode_one(self, w: Any, ts: int, vals: Any) -> bytes:
        """A histogram's or summary's TimeSeries for one snapshot, with headers cached per series."""
        e = self._encs.get(ts)
        if e is None:
            e = self._encs[ts] = SampleEncoder(ts)
        hdrs = w[2].get(e.size)
        if hdrs is None:
            hdrs = w[2][e.size] = [b"\x0a" + varint(len(b) + e.size) + b + e.pre for b in w[0]]
        post = e.post
        return b"".join([h + pack_double(x) + post for h, x in zip(hdrs, vals, strict=True)])

    def _emit(self, s: Series) -> None:
        """A series' current state as one element of its shard's output (or merged into the element
        it already has in this batch)."""
        w = s.wire
        if w is None or w[1] != len(s.quantiles):
            w = self._wire(s)
        if s.kind == "info":
            self._infos[s.key()] = s
            return
        if s.ts_ms > self._newest:
            self._newest = s.ts_ms
        plain = s.kind in ("counter", "gauge")
        snap = (s.ts_ms, s.value if plain else snapshot_values(s))
        shard = s.shard
        if not plain and s.seq != self._seq:
            first = self._bykey.setdefault(s.key(), s)
            if first is not s:
                self._regroup.setdefault(s.key(), [first]).append(s)
        if s.seq == self._seq:
            d = self._dups.get(id(s))
            if d is None:
                d = self._dups[id(s)] = (s, s.pos, _decode(self._outs[shard][s.pos], len(w[0])))
            d[2].append(snap)
            self._extra_points[shard] += 1
            return
        s.seq = self._seq
        o = self._outs[shard]
        s.pos = len(o)
        if plain:
            o.append(encode_series(w[0], [snap]))
        else:
            o.append(self._encode_one(w, snap[0], snap[1]))
            self._multi[shard][s.pos] = len(w[0])

    def _finish(self) -> Built:
        newest = max([self._newest, *(ms for ms, _ in self._tcache.values())])
        # Points merged into an earlier element of their series: re-encode it with all samples.
        for s, pos, snaps in self._dups.values():
            blocks = s.wire[0]
            self._outs[s.shard][pos] = encode_series(blocks, snaps)
            self._multi[s.shard][pos] = len(blocks) * len(snaps)
        for group in self._regroup.values():
            self._merge(group)
        points = [len(o) + x for o, x in zip(self._outs, self._extra_points, strict=True)]
        # target_info has no time of its own: it takes the newest sample time of the batch.
        if newest:
            for s in self._infos.values():
                w = s.wire if s.wire is not None else self._wire(s)
                self._outs[s.shard].append(encode_series(w[0], [(newest, 1.0)]))
        bodies = [self._split(o, m) for o, m in zip(self._outs, self._multi, strict=True)]
        built = Built(bodies, points, self._stats)
        self._outs = []
        return built

    def _merge(self, group: list[Series]) -> None:
        """Elements of several objects of one series (same labels, same shard) as one element, each
        Prometheus series once with its samples in time order."""
        shard = group[0].shard
        o = self._outs[shard]
        by_labels: dict[bytes, list[tuple[int, float]]] = {}
        for s in group:
            for ts in remote_write_pb2.WriteRequest.FromString(o[s.pos]).timeseries:
                block = b"".join(ld(b"\x0a", label_pair(x.name, x.value)) for x in ts.labels)
                by_labels.setdefault(block, []).extend((x.timestamp, x.value) for x in ts.samples)
            o[s.pos] = b""
            self._multi[shard][s.pos] = 0
        o[group[0].pos] = b"".join(encode_series([block], snaps) for block, snaps in by_labels.items())
        self._multi[shard][group[0].pos] = sum(len(v) for v in by_labels.values())

    def _split(self, elems: list[bytes], multi: dict[int, int]) -> list[tuple[bytes, int]]:
        if not elems:
            return []
        extra = sum(multi.values()) - len(multi)
        body = b"".join(elems)
        if len(body) <= self.max_bytes:
            return [(body, len(elems) + extra)]
        out: list[tuple[bytes, int]] = []
        parts: list[bytes] = []
        size = n = 0
        for idx, e in enumerate(elems):
            if parts and size + len(e) > self.max_bytes:
                out.append((b"".join(parts), n))
                parts, size, n = [], 0, 0
            parts.append(e)
            size += len(e)
            n += multi.get(idx, 1)
        out.append((b"".join(parts), n))
        return out


def _decode(elem: bytes, nsub: int) -> list[Snapshot]:
    """The one snapshot encoded in an element (to merge a later point of the series into it)."""
    wr = remote_write_pb2.WriteRequest.FromString(elem)
    ts = wr.timeseries[0].samples[0].timestamp
    if nsub == 1:
        return [(ts, wr.timeseries[0].samples[0].value)]
    return [(ts, [t.samples[0].value for t in wr.timeseries])]
