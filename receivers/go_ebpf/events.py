"""Decoding go_ebpf.c records and turning them into OTLP spans and RED metrics (pure Python, unit-testable).

Trace ids from BPF are local (random per server span, inherited by client calls it makes, also through
goroutines it spawns). Here they are joined into real traces: a server span that carried a W3C
traceparent continues it, and a server span whose caller is a client span of a traced process on this
host (same TCP connection and HTTP/2 stream id) becomes that client span's child. Finished spans wait
`stitch_window` seconds so that both halves of a call are seen before export.
"""

from __future__ import annotations

import binascii
import bisect
import ipaddress
import struct
import time
from collections import OrderedDict
from collections.abc import Container, Sized
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.pdata.batch import Metrics, Traces, attrs

SCOPE = "gotel.receivers.go_ebpf"

T_GRPC_SERVER, T_GRPC_CLIENT, T_HTTP_SERVER, T_HTTP_CLIENT = 1, 2, 3, 4
E_DEADLINE, E_STATUS, E_NONSTATUS_ERR, E_TRACEPARENT, E_PARENT, E_ADDR, E_NO_OFFSETS, E_STREAM_ID, E_BEGIN_WALL = (
    1, 2, 4, 8, 16, 32, 64, 128, 256)
E_SAMPLED_TP = 1 << 24  # sampling: kept for a sampled incoming traceparent (red.py)
STR_LEN, TP_LEN, PEER_LEN, TS_LEN = 96, 56, 64, 96
# struct gev: fixed fields, then strings by call type (fields a type does not use share storage). A gRPC record
# is the first GRPC_RECORD.size bytes; an HTTP record all HTTP_RECORD_SIZE, then TS_LEN bytes of tracestate
# when E_HTTP_TS says so. The RED key's strings (method, then the two slots after it) are in every record.
_FIXED_FORMAT = "QQIIQQQQQqiIIHH16s16sBB6xQQ"
GRPC_RECORD = struct.Struct(f"<{_FIXED_FORMAT}{STR_LEN}s{STR_LEN}s{TP_LEN}s")  # method, status message, traceparent
# method, URL path (or route), Host, incoming traceparent, RemoteAddr
HTTP_SERVER_RECORD = struct.Struct(f"<{_FIXED_FORMAT}{STR_LEN}s{STR_LEN}s{TP_LEN}s{TP_LEN}s{PEER_LEN}s")
# method, URL host[:port], URL scheme, URL path
HTTP_CLIENT_RECORD = struct.Struct(f"<{_FIXED_FORMAT}{STR_LEN}s{STR_LEN}s{TP_LEN}s{STR_LEN}s24x")
HTTP_RECORD_SIZE = HTTP_SERVER_RECORD.size
assert HTTP_CLIENT_RECORD.size == HTTP_RECORD_SIZE
# ---- HTTP hops (issue 22): flags
E_HTTP_CONN = 1 << 16  # addresses set; stream_id: the request's order on its HTTP/1 connection, or its HTTP/2 stream
E_HTTP2 = 1 << 17
E_HTTP_TP = 1 << 18
E_HTTP_TS = 1 << 19
# ---- end of the HTTP hops block

CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]
# semconv (rpc spans, gRPC): codes that are errors when reported by a server
SERVER_ERROR_CODES = frozenset({2, 4, 12, 13, 14, 15})

_WALL_TO_INTERNAL = (1884 * 365 + 1884 // 4 - 1884 // 100 + 1884 // 400) * 86400
_UNIX_TO_INTERNAL = (1969 * 365 + 1969 // 4 - 1969 // 100 + 1969 // 400) * 86400


def go_time_unix_ns(wall: int, ext: int) -> int:
    """A Go time.Time {wall, ext} as Unix nanoseconds."""
    nsec = wall & ((1 << 30) - 1)
    sec = _WALL_TO_INTERNAL + ((wall << 1 & (1 << 64) - 1) >> 31) if wall >> 63 else ext
    return (sec - _UNIX_TO_INTERNAL) * 1_000_000_000 + nsec


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


_IP_CACHE: dict[bytes, str | None] = {}


def _ip(b: bytes, n: int) -> str | None:
    """Peers repeat: formatted once per address (ipaddress costs a few us per call)."""
    key = b[:n] if n in (4, 16) else b""
    s = _IP_CACHE.get(key, "")
    if s == "":
        if len(_IP_CACHE) >= 4096:
            _IP_CACHE.clear()
        s = _IP_CACHE[key] = _ip_text(b, n)
    return s


def _ip_text(b: bytes, n: int) -> str | None:
    if n == 4:
        return str(ipaddress.IPv4Address(b[:4]))
    if n == 16:
        a = ipaddress.IPv6Address(b[:16])
        return str(a.ipv4_mapped or a)
    return None


@dataclass(slots=True)
class Call:
    """One record, every field decoded: built once per span shape (and for inspection), not per call."""

    type: int
    pid: int
    start_ns: int  # unix
    end_ns: int
    span_id: bytes  # as BPF wrote them: ids are opaque, never converted to integers and back
    parent_span_id: bytes
    trace: bytes  # local trace id (16 bytes)
    flags: int
    code: int
    stream_id: int
    lport: int
    rport: int
    lip: str | None
    rip: str | None
    method: str
    msg: str
    path: str
    tp: str
    deadline_ns: int | None  # unix


# every fixed field (ids as bytes), the two addresses and their lengths skipped
_FIXED = struct.Struct("<QQII8s8s16sQqiIIHH34x6xQQ")
_ADDR_AT = struct.calcsize("<" + _FIXED_FORMAT[: _FIXED_FORMAT.index("16s16sBB")])
_PORTS_AT = _ADDR_AT - 4  # lport, rport, the two addresses and their lengths: one slice in a span's shape
_ADDR_END = _ADDR_AT + 34
_STRS_AT = _FIXED.size  # method
_S2_AT = _STRS_AT + STR_LEN  # gRPC: status message; HTTP server: path or route; HTTP client: host[:port]
_TP_AT = _S2_AT + STR_LEN  # gRPC server: incoming traceparent; HTTP server: Host; HTTP client: scheme
_TP_END = _TAIL_AT = GRPC_RECORD.size  # HTTP only from here
_IN_TP_AT, _PEER_AT = _TAIL_AT, _TAIL_AT + TP_LEN  # HTTP server: incoming traceparent, RemoteAddr
assert _FIXED.size == struct.calcsize("<" + _FIXED_FORMAT) and _TP_END == _TP_AT + TP_LEN
assert _PEER_AT + PEER_LEN == HTTP_RECORD_SIZE


def decode(rec: bytes, mono_to_unix: int) -> Call | None:
    if len(rec) < GRPC_RECORD.size:
        return None
    (start, end, pid, typ, sid, psid, trace, dlw, dle, code, flags, stream_id, lport, rport, obj,
     aux) = _FIXED.unpack_from(rec)
    if typ > T_GRPC_CLIENT and len(rec) < HTTP_RECORD_SIZE:
        return None
    a = rec[_ADDR_AT:_ADDR_END]
    s2 = _cstr(rec[_S2_AT:_TP_AT])
    if typ <= T_GRPC_CLIENT:
        msg, path = s2, ""
    elif typ == T_HTTP_SERVER:
        msg, path = _cstr(rec[_PEER_AT:HTTP_RECORD_SIZE]), s2
    else:
        msg, path = s2, _cstr(rec[_TAIL_AT:_TAIL_AT + STR_LEN])
    start_unix = go_time_unix_ns(aux, obj) if flags & E_BEGIN_WALL else start + mono_to_unix
    return Call(typ, pid, start_unix, end + mono_to_unix, sid, psid if flags & E_PARENT else b"", trace, flags,
                code, stream_id, lport, rport, _ip(a[:16], a[32]), _ip(a[16:32], a[33]), _cstr(rec[_STRS_AT:_S2_AT]),
                msg, path, _cstr(rec[_TP_AT:_TP_END]), go_time_unix_ns(dlw, dle) if flags & E_DEADLINE else None)


def parse_traceparent(tp: str | bytes) -> tuple[bytes, bytes] | None:
    """W3C traceparent -> (trace id, parent span id); None when it is not a valid one."""
    raw = tp.encode("ascii", "replace") if isinstance(tp, str) else tp
    raw = raw.split(b"\0", 1)[0].strip()
    if len(raw) < 55 or raw[2:3] != b"-" or raw[35:36] != b"-" or raw[52:53] != b"-" or raw[:2] == b"ff":
        return None
    if len(raw) > 55 and (raw[:2] == b"00" or raw[55:56] != b"-"):
        return None  # version 00 is exactly 55 characters; later versions extend it after a dash
    try:
        tid, sid = binascii.a2b_hex(raw[3:35]), binascii.a2b_hex(raw[36:52])
        binascii.a2b_hex(raw[:2] + raw[53:55])
    except (binascii.Error, ValueError):
        return None
    if tid == _ZERO16 or sid == _ZERO16[:8]:
        return None
    return tid, sid


_ZERO16 = bytes(16)


def split_method(full: str) -> tuple[str, str]:
    m = full.lstrip("/")
    svc, _, meth = m.rpartition("/")
    return svc, meth


_QUERY_SECRET = ("?", "#")


@dataclass
class Hist:
    bounds: list[float]
    counts: list[int]
    n: int = 0
    total: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")
    exemplar: tuple[float, int, bytes, bytes] | None = None  # value, time, local trace id, span id

    def add(self, x: float, t_ns: int, trace: bytes, span_id: bytes) -> None:
        self.counts[bisect.bisect_left(self.bounds, x)] += 1
        self.n += 1
        self.total += x
        if x < self.lo:
            self.lo = x
        if x > self.hi:
            self.hi = x
        if self.exemplar is None or x >= self.exemplar[0]:  # the slowest call since the last export
            self.exemplar = (x, t_ns, trace, span_id)

    def sub(self, x: float) -> None:
        """Takes back one call the kernel counted (one gotel made itself: selffilter)."""
        i = bisect.bisect_left(self.bounds, x)
        if self.counts[i] > 0 and self.n > 0:
            self.counts[i] -= 1
            self.n -= 1
            self.total -= x

    def fold(self, buckets: tuple[int, ...], n: int, total: float, lo: float | None, hi: float) -> None:
        """Adds a delta read from the kernel."""
        for i, c in enumerate(buckets):
            self.counts[i] += c
        self.n += n
        self.total += total
        if lo is not None and lo < self.lo:
            self.lo = lo
        if hi > self.hi:
            self.hi = hi


DURATION_BOUNDS = [0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
BUDGET_BOUNDS = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag byte already shifted: field << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


_PACK_Q = struct.Struct("<Q").pack
_PACK_D = struct.Struct("<d").pack


def _kv_double_prefix(key: bytes) -> bytes:
    """Span.attributes KeyValue{key, AnyValue.double_value} up to the 8 bytes of the double (fixed length)."""
    inner = _ld(0x0A, key) + b"\x12\x09\x21"
    return b"\x4a" + _varint(len(inner) + 8) + inner


def _kv_bool(key: bytes, x: bool) -> bytes:
    return _ld(0x4A, _ld(0x0A, key) + (b"\x12\x02\x10\x01" if x else b"\x12\x02\x10\x00"))


_P_TIMEOUT = _kv_double_prefix(b"gotel.rpc.deadline.timeout")
_P_REMAINING = _kv_double_prefix(b"gotel.rpc.deadline.remaining")
_EXCEEDED = (_kv_bool(b"gotel.rpc.deadline.exceeded", False), _kv_bool(b"gotel.rpc.deadline.exceeded", True))
# DEADLINE_EXCEEDED with time left: not this call's budget but one further down the chain that ran out
_PROPAGATED = _kv_bool(b"gotel.rpc.deadline.propagated", True)


_Labels = tuple[tuple[str, Any], ...]
_MetricKey = tuple[str, _Labels, _Labels]  # duration metric name, its labels, the deadline metrics' labels
_RPC_KEYS = ("rpc.system", "rpc.service", "rpc.method", "rpc.response.status_code", "server.address", "server.port")
_HTTP_KEYS = ("http.request.method", "http.route", "http.response.status_code", "server.address", "server.port",
              "error.type")


def _metric_key(typ: int, a: dict[str, Any]) -> _MetricKey:
    if typ in (T_GRPC_SERVER, T_GRPC_CLIENT):
        name = "rpc.server.call.duration" if typ == T_GRPC_SERVER else "rpc.client.call.duration"
        labels = tuple((k, a[k]) for k in _RPC_KEYS if k in a)
        return name, labels, tuple((k, v) for k, v in labels if k in ("rpc.system", "rpc.service", "rpc.method"))
    name = "http.server.request.duration" if typ == T_HTTP_SERVER else "http.client.request.duration"
    return name, tuple((k, a[k]) for k in _HTTP_KEYS if k in a), ()


class _MetricSlot:
    """A span shape's metric series: their keys built once, and each process's histograms found by pid
    (hashing the label tuples on every call cost more than the histogram update)."""

    __slots__ = ("budget", "budget_key", "duration", "duration_key", "exceeded_key", "propagated_key")

    def __init__(self, typ: int, key: _MetricKey) -> None:
        name, labels, blabels = key
        self.duration_key = (name, labels)
        side = "server" if typ == T_GRPC_SERVER else "client"
        self.budget_key = (f"gotel.rpc.{side}.deadline.budget_used", blabels)
        self.exceeded_key = (f"gotel.rpc.{side}.deadline_exceeded", blabels)
        self.propagated_key = (f"gotel.rpc.{side}.deadline_propagated", blabels)
        self.duration: dict[ProcState, Hist] = {}
        self.budget: dict[ProcState, Hist] = {}


class _Pending:
    """A finished call waiting for export: no protobuf objects (building Span messages cost ~40 us each) and
    no bytes built per call until export: the shape's encoded fields, the ids stitching may still change,
    the times, and what stitching matches on."""

    __slots__ = ("body", "end", "flags", "ip", "lport", "netns", "parent_span_id", "pid", "ready_at", "rport",
                 "shape", "span_id", "start", "stream_id", "tp", "trace", "ts", "type")

    def __init__(self, shape: _Shape, span_id: bytes, parent_span_id: bytes, body: bytes, ready_at: float,
                 trace: bytes, pid: int, typ: int, flags: int, stream_id: int, lport: int, rport: int,
                 ip: str | None, tp: bytes, start: int, end: int) -> None:
        self.shape = shape
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        # Span fields of this call beyond its shape's (deadline attributes, events): usually none
        self.body = body
        self.ready_at = ready_at
        self.trace = trace  # local trace id from BPF
        self.pid = pid
        self.type = typ
        self.flags = flags
        self.stream_id = stream_id
        self.lport = lport
        self.rport = rport
        self.ip = ip  # the peer's address (server span) or the local one (client span): stitching keys
        self.tp = tp  # incoming traceparent (gRPC and HTTP servers), raw
        self.ts = ""  # the W3C tracestate that comes with a continued traceparent (HTTP server)
        self.start = start  # unix ns: a caller's span covers the start of its callee's
        self.end = end
        self.netns = 0  # the process's network namespace, for loopback connections only

    def encode_into(self, parts: list[bytes], trace_id: bytes) -> None:
        """Appends the span as ScopeSpans.spans (field 2) pieces: the shape's fields first (protobuf fields
        may come in any order), then the ids and times in one pack, then this call's own fields."""
        sh, body = self.shape, self.body
        if self.ts:  # Span.trace_state (field 3): encoded here, as it is rare
            body = _ld(0x1A, self.ts.encode()) + body
        if self.parent_span_id:
            ids = _IDS_P(0x100A, trace_id, 0x0812, self.span_id, 0x0822, self.parent_span_id, 0x39, self.start,
                         0x41, self.end)
            if body:
                parts += (_span_tag(sh.n_parent + len(body)), sh.fields, ids, body)
            else:
                parts += (sh.with_parent, ids)
        else:
            ids = _IDS_R(0x100A, trace_id, 0x0812, self.span_id, 0x39, self.start, 0x41, self.end)
            if body:
                parts += (_span_tag(sh.n_root + len(body)), sh.fields, ids, body)
            else:
                parts += (sh.root, ids)


# a span's ids and times, tags as little-endian u16 (0x0a 0x10: trace_id, 0x12 0x08: span_id, 0x22 0x08:
# parent_span_id) and bytes (0x39, 0x41: fixed64 start and end)
_IDS_P = struct.Struct("<H16sH8sH8sBQBQ").pack
_IDS_R = struct.Struct("<H16sH8sBQBQ").pack
_IDS_P_LEN, _IDS_R_LEN = struct.calcsize("<H16sH8sH8sBQBQ"), struct.calcsize("<H16sH8sBQBQ")
_SPAN_TAGS: dict[int, bytes] = {}


def _span_tag(n: int) -> bytes:
    """ScopeSpans.spans' tag and length for an n-byte span."""
    t = _SPAN_TAGS.get(n)
    if t is None:
        if len(_SPAN_TAGS) >= 4096:
            _SPAN_TAGS.clear()
        t = _SPAN_TAGS[n] = b"\x12" + _varint(n)
    return t


class _Shape:
    """What calls of one shape (type, code, method, message, peer, ...) share: the encoded span fields
    other than ids and times (with their ScopeSpans.spans tag when the call adds none), the peer text
    stitching needs, and the metric series."""

    __slots__ = ("attrs", "fields", "ip", "loopback", "metric", "n_parent", "n_root", "pre", "root", "status",
                 "with_parent")

    def __init__(self, pre: bytes, attrs_b: bytes, status: bytes, ip: str | None, metric: _MetricSlot) -> None:
        self.pre = pre  # name, kind
        self.attrs = attrs_b
        self.status = status
        self.fields = pre + attrs_b + status
        self.n_parent = len(self.fields) + _IDS_P_LEN
        self.n_root = len(self.fields) + _IDS_R_LEN
        self.with_parent = _span_tag(self.n_parent) + self.fields
        self.root = _span_tag(self.n_root) + self.fields
        self.ip = ip
        self.loopback = ip is not None and (ip.startswith("127.") or ip == "::1")
        self.metric = metric


_ready_at = attrgetter("ready_at")

# flags that do not change a span's name, attributes or status (times and deadlines are encoded per call)
_SHAPE_FLAGS = ~(E_DEADLINE | E_PARENT | E_BEGIN_WALL | E_HTTP_CONN | E_HTTP2 | E_HTTP_TP | E_HTTP_TS | E_SAMPLED_TP)


class _SpanParts:
    """The span fields _span decides on (name, kind, status) before they are encoded."""

    __slots__ = ("kind", "name", "status_code", "status_message")

    def __init__(self) -> None:
        self.name, self.kind, self.status_code, self.status_message = "", 0, 0, ""


@dataclass(eq=False)  # hashed by identity: a pid reused by a new process gets new series
class ProcState:
    resource: dict[str, Any]
    start_ns: int
    hists: dict[tuple[str, tuple[tuple[str, Any], ...]], Hist] = field(default_factory=dict)
    counters: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = field(default_factory=dict)
    gone: bool = False
    gone_at: float = 0.0
    grpc_missing: str = ""  # what the binary's gRPC spans lack (its layout), for gotel.missing
    netns: int = 0  # network namespace inode: loopback connections are joined only inside one


class Assembler:
    """Calls -> spans (stitched into traces) and RED metrics per process."""

    def __init__(self, *, legacy_status_code: bool = False, stitch_window: float = 0.5,
                 client_index_size: int = 100_000) -> None:
        self.legacy = legacy_status_code
        self.window = stitch_window
        self.procs: dict[int, ProcState] = {}
        self.pending: list[_Pending] = []  # in arrival order: by ready_at too while _in_order
        self._unlinked: list[_Pending] = []  # pending server spans without a parent yet (stitching's work list)
        self._last_ready = float("-inf")
        self._in_order = True
        # local trace id -> the trace id it continues (bytes) or the local trace it joins (a 1-tuple)
        self.alias: OrderedDict[bytes, bytes | tuple[bytes]] = OrderedDict()
        # (client ip, client port, server port, stream id) -> the client span (kept after its export)
        self.clients: OrderedDict[tuple[Any, ...], _Pending] = OrderedDict()
        self.index_size = client_index_size
        self.seen_no_offsets: set[int] = set()
        self.unknown_process = 0
        self.self_filter: Any = None  # selffilter.SelfFilter: drops calls gotel itself made
        # RED counts come from the kernel (red.KernelRed -> fold_red); spans then only offer exemplars
        self.kernel_metrics = False
        self._red_slots: dict[bytes, tuple[int, _MetricSlot]] = {}
        # span shapes repeat (same method, code, peer): encoded once
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        # flowcontrol.FlowControl (issue 19): sees each gRPC call's end; may add span events to client spans.
        # Called only when it may have work (~0.2 us a record otherwise): a record with one of hook_flags, a
        # pending quota wait (hook_waits), a process whose streaming methods it knows by name (hook_pids)
        self.on_span: Any = None
        self.on_server_span: Any = None
        self.hook_flags = 0
        self.hook_waits: Sized = ()
        self.hook_pids: Container[int] = ()

    # ---- processes ----
    def add_process(self, pid: int, resource: dict[str, Any], grpc_missing: str = "", netns: int = 0) -> None:
        self.procs[pid] = ProcState(resource, time.time_ns(), grpc_missing=grpc_missing, netns=netns)

    def remove_process(self, pid: int) -> None:
        st = self.procs.get(pid)
        if st is not None:
            st.gone = True
            st.gone_at = time.monotonic()

    # ---- spans ----
    def _trace_of(self, local: bytes) -> bytes:
        """The trace id of a local trace: a continued traceparent's, its caller's local trace's, or its own."""
        t = self.alias.get(local)
        seen = 0
        while isinstance(t, tuple) and seen < 8:  # another local trace (a traced caller's)
            local = t[0]
            t = self.alias.get(local)
            seen += 1
        return t if isinstance(t, bytes) else local

    def _local_root(self, local: bytes) -> bytes:
        """The local trace a local trace joins through traced callers (itself when it joins none)."""
        t = self.alias.get(local)
        seen = 0
        while isinstance(t, tuple) and seen < 8:
            local = t[0]
            t = self.alias.get(local)
            seen += 1
        return local

    def _remember_alias(self, local: bytes, target: bytes | tuple[bytes]) -> None:
        """target: a trace id (bytes), or another local trace id as a 1-tuple."""
        self.alias[local] = target
        if len(self.alias) > self.index_size:
            self.alias.popitem(last=False)

    def add(self, rec: bytes, mono_to_unix: int, now: float) -> bool:  # noqa: C901 (one branch per record kind: the per-record hot path)
        """One ring-buffer record -> a pending span and its metrics; False when it is too short to be one.

        The per-call path: one unpack, the shape found by raw slices of the record, and nothing encoded
        but a deadline's attributes; everything else is decoded once per shape (_new_shape), and the ids
        and times are packed at export (encode_into)."""
        if len(rec) < GRPC_RECORD.size:
            return False
        (start, end, pid, typ, sid, psid, trace, dlw, dle, code, flags, stream_id, lport, rport, obj,
         aux) = _FIXED.unpack_from(rec)
        http = typ > T_GRPC_CLIENT
        if http and len(rec) < HTTP_RECORD_SIZE:
            return False
        st = self.procs.get(pid)
        if st is None:
            self.unknown_process += 1  # the receiver counts these as dropped
            return True
        if flags & E_NO_OFFSETS:
            self.seen_no_offsets.add(pid)
        # HTTP attributes come from the strings (peer, host, URL), not the connection's addresses: a new
        # connection (port) makes no new shape; gRPC spans also carry what their binary's layout lacks. A gRPC
        # call's tp is its incoming traceparent, new on every call and not part of the span's shape (HTTP
        # records carry the server host or URL scheme there, which is; an HTTP server's traceparent is in_tp)
        if http:
            key = (typ, flags & _SHAPE_FLAGS, code, b"", rec[_STRS_AT:_TAIL_AT],
                   rec[_PEER_AT if typ == T_HTTP_SERVER else _TAIL_AT:HTTP_RECORD_SIZE], "")
        else:
            tp = rec[_TP_AT:_TP_END] if rec[_TP_AT] else b""
            key = (typ, flags & _SHAPE_FLAGS, code, rec[_PORTS_AT:_ADDR_END], rec[_STRS_AT:_TP_AT], b"",
                   st.grpc_missing)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._new_shape(key, rec, mono_to_unix, key[-1])
        end += mono_to_unix
        start = go_time_unix_ns(aux, obj) if flags & E_BEGIN_WALL else start + mono_to_unix
        server = typ in (T_GRPC_SERVER, T_HTTP_SERVER)
        if server and self.self_filter is not None and self.self_filter.drop(typ, shape, rec, pid):
            # a request of gotel's own (a pprof scrape): not the target's traffic; counted
            if self.kernel_metrics:  # the kernel counted it: taken back (only calls sampling kept are seen)
                d = end - start
                h = shape.metric.duration.get(st)
                if h is not None:
                    h.sub(d / 1e9 if d > 0 else 0.0)
            return True
        body = b""
        if flags & E_DEADLINE and typ <= T_GRPC_CLIENT:
            deadline = go_time_unix_ns(dlw, dle)
            # vary per call: encoded here, not part of the shape. Exceeded: this call's own deadline passed
            # (no time left at return), whatever the code; DEADLINE_EXCEEDED with time left is propagated.
            exceeded = end >= deadline
            body = b"".join((_P_TIMEOUT, _PACK_D((deadline - start) / 1e9), _P_REMAINING,
                             _PACK_D((deadline - end) / 1e9), _EXCEEDED[exceeded],
                             _PROPAGATED if code == 4 and not exceeded else b""))
        else:
            deadline = 0
        if self.on_span is not None and typ <= T_GRPC_CLIENT and (
                flags & self.hook_flags or self.hook_waits or pid in self.hook_pids):  # flow control (issue 19)
            if typ == T_GRPC_CLIENT:
                body += self.on_span(pid, sid, shape.metric.duration_key[1], code, flags, start, end)
            else:
                self.on_server_span(pid, shape.metric.duration_key[1], flags, start, end)
        if not flags & E_PARENT:
            psid = b""
        ip = shape.ip
        loopback = shape.loopback
        if http:
            tp = rec[_IN_TP_AT:_PEER_AT] if flags & E_HTTP_TP and typ == T_HTTP_SERVER else b""
            if flags & E_HTTP_CONN:  # the client's address: the server's peer, the client's local one
                if typ == T_HTTP_SERVER:
                    ip = _ip(rec[_ADDR_AT + 16:_ADDR_AT + 32], rec[_ADDR_AT + 33])
                else:
                    ip = _ip(rec[_ADDR_AT:_ADDR_AT + 16], rec[_ADDR_AT + 32])
                loopback = ip is not None and (ip.startswith("127.") or ip == "::1")
        ready_at = now + self.window
        p = _Pending(shape, sid, psid, body, ready_at, trace, pid, typ, flags, stream_id, lport, rport, ip,
                     tp if server else b"", start, end)
        if http and flags & E_HTTP_TS and flags & E_HTTP_TP:
            p.ts = _cstr(rec[HTTP_RECORD_SIZE:HTTP_RECORD_SIZE + TS_LEN])  # after the record (go_ebpf.c emit)
        if loopback:
            # the same loopback 4-tuple exists in every network namespace (pods): joined only within one
            p.netns = st.netns
        if server:
            if not psid:
                self._unlinked.append(p)  # take_traces looks for its parent
        elif lport and ((typ == T_GRPC_CLIENT and flags & E_STREAM_ID) or (typ == T_HTTP_CLIENT and flags & E_HTTP_CONN)):
            clients = self.clients
            clients[(ip, lport, rport, stream_id, p.netns)] = p
            if len(clients) > self.index_size:
                clients.popitem(last=False)
        if ready_at < self._last_ready:
            self._in_order = False  # take_traces then looks at every pending span, not a due prefix
        self._last_ready = ready_at
        self.pending.append(p)
        # RED metrics, in the shape's series for this process
        slot = shape.metric
        d = end - start
        x = d / 1e9 if d > 0 else 0.0
        h = slot.duration.get(st)
        if h is None:
            h = slot.duration[st] = self._hist(st, slot.duration_key, DURATION_BOUNDS)
        if self.kernel_metrics:  # counted in the kernel, every call: this kept span may be an exemplar
            ex = h.exemplar
            if ex is None or x >= ex[0]:  # the slowest since the last export (counts: red.py)
                h.exemplar = (x, end, trace, sid)
            return True
        h.add(x, end, trace, sid)
        if deadline:
            budget = deadline - start
            if budget > 0:
                h = slot.budget.get(st)
                if h is None:
                    h = slot.budget[st] = self._hist(st, slot.budget_key, BUDGET_BOUNDS)
                h.add(d / budget, end, trace, sid)
            if end >= deadline:
                st.counters[slot.exceeded_key] = st.counters.get(slot.exceeded_key, 0) + 1
            elif code == 4:
                st.counters[slot.propagated_key] = st.counters.get(slot.propagated_key, 0) + 1
        return True

    def fold_red(self, key: bytes, delta: tuple[int, ...], total: tuple[int, ...]) -> None:
        """One series' delta read from the kernel (red.RED_KEY, red.RED_VAL) into its process's metrics."""
        from gotel.receivers.go_ebpf.red import RED_BB, RED_KEY, RED_NB

        hit = self._red_slots.get(key)
        if hit is None:
            if len(self._red_slots) >= 16384:
                self._red_slots.clear()
            pid, typ, iplen, port, code, flags, ip, m, s1, s2 = RED_KEY.unpack(key)
            addr = _ip(ip, iplen) if flags & E_ADDR else None
            srv = typ == T_GRPC_SERVER
            if typ <= T_GRPC_CLIENT:
                c = Call(typ, pid, 0, 0, b"", b"", b"", flags, code, 0, port if srv else 0, 0 if srv else port,
                         addr if srv else None, None if srv else addr, _cstr(s1), "", "", "", None)
            elif typ == T_HTTP_SERVER:
                c = Call(typ, pid, 0, 0, b"", b"", b"", flags, code, 0, 0, 0, None, None, _cstr(m), "",
                         _cstr(s1), _cstr(s2), None)
            else:
                c = Call(typ, pid, 0, 0, b"", b"", b"", flags, code, 0, 0, 0, None, None, _cstr(m), _cstr(s1),
                         "", _cstr(s2), None)
            hit = self._red_slots[key] = (pid, _MetricSlot(typ, _metric_key(typ, self._shape(c)[3])))
        pid, slot = hit
        st = self.procs.get(pid)
        if st is None:
            return
        n, sum_ns, _, _ = delta[:4]
        lo1, hi = total[2], total[3]
        h = slot.duration.get(st)
        if h is None:
            h = slot.duration[st] = self._hist(st, slot.duration_key, DURATION_BOUNDS)
        h.fold(delta[4:4 + RED_NB], n, sum_ns / 1e9, (lo1 - 1) / 1e9 if lo1 else None, hi / 1e9)
        i = 4 + RED_NB
        bn, bsum = delta[i], delta[i + 1]
        bb = delta[i + 2:i + 2 + RED_BB]
        exceeded, propagated = delta[i + 2 + RED_BB], delta[i + 3 + RED_BB]
        if bn:
            h = slot.budget.get(st)
            if h is None:
                h = slot.budget[st] = self._hist(st, slot.budget_key, BUDGET_BOUNDS)
            h.fold(bb, bn, bsum / 1e6, None, float("-inf"))
        if exceeded:
            st.counters[slot.exceeded_key] = st.counters.get(slot.exceeded_key, 0) + exceeded
        if propagated:
            st.counters[slot.propagated_key] = st.counters.get(slot.propagated_key, 0) + propagated

    def _new_shape(self, key: tuple[Any, ...], rec: bytes, mono_to_unix: int, missing: str = "") -> _Shape:
        c = decode(rec, mono_to_unix)
        assert c is not None  # add() checked the length
        if len(self._shapes) >= 8192:
            self._shapes.clear()
        pre, attrs_b, status, a = self._shape(c, missing)
        ip = c.rip if c.type == T_GRPC_SERVER else c.lip
        shape = self._shapes[key] = _Shape(pre, attrs_b, status, ip, _MetricSlot(c.type, _metric_key(c.type, a)))
        return shape

    def _link_server(self, p: _Pending, ready: bool) -> None:
        """Parent a server span on its traced caller's client span, else (once it is due) on its traceparent.

        The caller's client span ends after the server span, so its record can arrive a poll later: the
        traceparent fallback waits until the span is due, or a traced caller would lose its child."""
        if p.type not in (T_GRPC_SERVER, T_HTTP_SERVER) or p.parent_span_id:
            return
        # gRPC: the connection and the HTTP/2 stream id; HTTP: the connection and the request's order on it
        # (HTTP/1) or its stream id (HTTP/2)
        if (p.flags & E_STREAM_ID if p.type == T_GRPC_SERVER else p.flags & E_HTTP_CONN) and p.rport:
            hit = self.clients.get((p.ip, p.rport, p.lport, p.stream_id, p.netns))
            # the client span must cover the server span's start: an index entry left by an earlier connection
            # that had the same ports (a client port reused after a fresh connection closed) does not, and the
            # right client record may come a poll later
            if hit is not None and hit.type == p.type + 1 and hit.start <= p.start <= hit.end:
                p.parent_span_id = hit.span_id
                self._remember_alias(p.trace, (hit.trace,))
                parsed = parse_traceparent(p.tp) if p.tp else None
                if parsed is not None and not hit.parent_span_id and parsed[1] != hit.span_id:
                    # the caller's own (SDK) span sent this traceparent: it is the client span's parent (one
                    # naming the client span itself was written by gotel: inject_traceparent)
                    self._remember_alias(hit.trace, parsed[0])
                    hit.parent_span_id = parsed[1]
                    hit.ts = p.ts
                p.ts = ""
                return
        if p.tp and ready:
            parsed = parse_traceparent(p.tp)
            if parsed is not None:
                self._remember_alias(p.trace, parsed[0])
                p.parent_span_id = parsed[1]
            else:
                p.ts = ""  # a tracestate belongs to the traceparent it came with

    def take_traces(self, now: float, flush_all: bool = False) -> Traces | None:
        if not self.pending:
            return None
        waiting: set[bytes] = set()  # local traces whose server span may still get a parent (and trace id)
        if self._unlinked:
            still: list[_Pending] = []
            for p in self._unlinked:
                due = flush_all or p.ready_at <= now
                self._link_server(p, due)
                if not due and not p.parent_span_id:
                    waiting.add(p.trace)
                    still.append(p)
            self._unlinked = still
        if flush_all:
            ready, self.pending = self.pending, []
        else:
            pending = self.pending
            if self._in_order:  # the due spans are a prefix
                i = bisect.bisect_right(pending, now, key=_ready_at)
                due_list, rest = pending[:i], pending[i:]
            else:
                due_list = [p for p in pending if p.ready_at <= now]
                rest = [p for p in pending if p.ready_at > now]
            if waiting:
                # a call made while serving waits for its server span to be stitched (it ends first, and
                # would otherwise leave with the local trace id), for at most `hold` seconds past its own time
                hold = max(2.0, 4 * self.window)
                alias = self.alias.get
                held: list[_Pending] = []
                ready = []
                for p in due_list:
                    lt = p.trace
                    if (lt in waiting or (isinstance(alias(lt), tuple) and self._local_root(lt) in waiting)) and (
                            p.ready_at + hold > now):
                        held.append(p)
                    else:
                        ready.append(p)
                self.pending = held + rest if held else rest
            else:
                ready, self.pending = due_list, rest
        if not self.pending:
            self._in_order, self._last_ready = True, float("-inf")
        if not ready:
            return None
        # each process's spans as a list of byte pieces, joined once per process (no bytes per span)
        by_pid: dict[int, list[bytes]] = {}
        alias = self.alias.get
        parts: list[bytes] = []
        last_pid = -1
        for p in ready:
            t = alias(p.trace)
            if t is None:
                tid = p.trace
            elif isinstance(t, bytes):
                tid = t
            else:  # joined a traced caller's local trace: most often one step (_trace_of follows chains)
                t2 = alias(t[0])
                tid = t[0] if t2 is None else t2 if isinstance(t2, bytes) else self._trace_of(p.trace)
            if p.pid != last_pid:
                last_pid = p.pid
                parts = by_pid.setdefault(last_pid, [])
            if p.body or p.ts:
                p.encode_into(parts, tid)
            elif p.parent_span_id:  # encode_into's common cases, inlined
                parts += (p.shape.with_parent, _IDS_P(0x100A, tid, 0x0812, p.span_id, 0x0822, p.parent_span_id,
                                                      0x39, p.start, 0x41, p.end))
            else:
                parts += (p.shape.root, _IDS_R(0x100A, tid, 0x0812, p.span_id, 0x39, p.start, 0x41, p.end))
        out = []
        for pid, parts in by_pid.items():
            res = b"".join(_ld(0x0A, kv.SerializeToString()) for kv in attrs(self._resource(pid)))
            scope = _ld(0x0A, _ld(0x0A, SCOPE.encode()))  # ScopeSpans.scope = InstrumentationScope{name}
            out.append(_ld(0x0A, _ld(0x0A, res) + _ld(0x12, scope + b"".join(parts))))
        return Traces(raw=b"".join(out), count=len(ready))

    def _resource(self, pid: int) -> dict[str, Any]:
        st = self.procs.get(pid)
        return st.resource if st else {"process.pid": pid}

    def _shape(self, c: Call, missing: str = "") -> tuple[bytes, bytes, bytes, dict[str, Any]]:
        """(name + kind, attributes, status) encoded, and the attributes (for metric labels); `missing`:
        what the process's binary cannot give its gRPC spans (its layout)."""
        sp = _SpanParts()
        a: dict[str, Any] = {}
        if c.type in (T_GRPC_SERVER, T_GRPC_CLIENT):
            self._grpc_attrs(c, sp, a, missing)
        else:
            server = c.type == T_HTTP_SERVER
            sp.kind = 2 if server else 3  # Span.SpanKind SERVER / CLIENT
            method = c.method or "_OTHER"
            a["http.request.method"] = method
            if server:
                _http_server_attrs(c, sp, a, method)
            else:
                _http_client_attrs(c, sp, a, method)
        head = _ld(0x2A, sp.name.encode()) + b"\x30" + _varint(sp.kind)
        attr_bytes = b"".join(_ld(0x4A, kv.SerializeToString()) for kv in attrs(a))
        status_b = b""
        if sp.status_code:
            st = (_ld(0x12, sp.status_message.encode()) if sp.status_message else b"") + b"\x18" + _varint(
                sp.status_code)
            status_b = _ld(0x7A, st)
        return head, attr_bytes, status_b, a

    def _grpc_attrs(self, c: Call, sp: _SpanParts, a: dict[str, Any], missing: str) -> None:
        """A gRPC span's name, kind, status and attributes."""
        server = c.type == T_GRPC_SERVER
        sp.kind = 2 if server else 3  # Span.SpanKind SERVER / CLIENT
        svc, meth = split_method(c.method)
        sp.name = f"{svc}/{meth}" if c.method else ("grpc.server" if server else "grpc.client")
        a["rpc.system"] = "grpc"
        if c.method:
            a["rpc.service"], a["rpc.method"] = svc, meth
        if c.flags & (E_STATUS | E_NONSTATUS_ERR) or (not server and not c.flags & E_NO_OFFSETS):
            name = CODES[c.code] if 0 <= c.code < len(CODES) else str(c.code)
            a["rpc.response.status_code"] = name
            if self.legacy:
                a["rpc.grpc.status_code"] = c.code
            is_err = c.code != 0 and (not server or c.code in SERVER_ERROR_CODES)
            if is_err:
                sp.status_code = 2  # Status.STATUS_CODE_ERROR
                sp.status_message = c.msg
                a["error.type"] = name
            if c.code != 0 and c.msg:
                a["rpc.grpc.status_message"] = c.msg
        elif c.flags & E_NO_OFFSETS and not server:
            a["gotel.missing"] = "rpc.response.status_code, addresses (binary has no DWARF)"
        elif server and c.flags & E_NO_OFFSETS:
            a["gotel.missing"] = "rpc.method, rpc.response.status_code, deadline, addresses (binary has no DWARF)"
        if missing and "gotel.missing" not in a:
            a["gotel.missing"] = missing
        if c.flags & E_ADDR:
            if server:
                if c.lip:
                    a["server.address"] = c.lip
                a["server.port"] = c.lport
                if c.rip:
                    a["client.address"] = c.rip
                a["client.port"] = c.rport
            else:
                if c.rip:
                    a["server.address"] = c.rip
                a["server.port"] = c.rport
                if c.lip:
                    a["network.local.address"] = c.lip
                a["network.local.port"] = c.lport

    # ---- metrics ----
    @staticmethod
    def _hist(st: ProcState, key: tuple[str, _Labels], bounds: list[float]) -> Hist:
        """The process's histogram for a series (exemplar trace ids are resolved at export: they may still
        be aliased)."""
        h = st.hists.get(key)
        if h is None:
            h = st.hists[key] = Hist(bounds, [0] * (len(bounds) + 1))
        return h

    def take_metrics(self) -> Metrics | None:
        now = time.time_ns()
        b = Metrics()
        for pid, st in list(self.procs.items()):
            if st.hists or st.counters:
                rm = b.msg.resource_metrics.add()
                rm.resource.attributes.extend(attrs(st.resource))
                sm = rm.scope_metrics.add()
                sm.scope.name = SCOPE
                made: dict[str, Any] = {}
                for (name, labels), h in st.hists.items():
                    if not h.n:
                        continue  # a kept span's series the kernel's next read fills (or one taken back)
                    m = made.get(name)
                    if m is None:
                        unit = "1" if name.endswith("budget_used") else "s"
                        m = made[name] = sm.metrics.add(name=name, unit=unit, description=_DESC.get(name, ""))
                        m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                    dp = m.histogram.data_points.add(start_time_unix_nano=st.start_ns, time_unix_nano=now,
                                                     count=h.n, sum=h.total, explicit_bounds=h.bounds,
                                                     bucket_counts=h.counts)
                    if h.lo <= h.hi:  # the kernel keeps no min/max of deadline budgets
                        dp.min, dp.max = h.lo, h.hi
                    dp.attributes.extend(attrs(dict(labels)))
                    if h.exemplar is not None:
                        v, t, local, sid = h.exemplar
                        dp.exemplars.add(time_unix_nano=t, as_double=v, trace_id=self._trace_of(local), span_id=sid)
                        h.exemplar = None
                for (name, labels), n in st.counters.items():
                    m = made.get(name)
                    if m is None:
                        m = made[name] = sm.metrics.add(name=name, unit=_UNITS.get(name, "{call}"),
                                                        description=_DESC.get(name, ""))
                        m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                        m.sum.is_monotonic = True
                    dp = m.sum.data_points.add(start_time_unix_nano=st.start_ns, time_unix_nano=now, as_int=n)
                    dp.attributes.extend(attrs(dict(labels)))
            if st.gone and time.monotonic() - st.gone_at > 10 * self.window + 5:
                del self.procs[pid]  # its last events and metrics are out
        return b if b.msg.resource_metrics else None


_UNITS: dict[str, str] = {}  # counters whose unit is not {call} (flowcontrol adds its own)
_DESC = {
    "rpc.server.call.duration": "Duration of gRPC calls served (uprobes).",
    "rpc.client.call.duration": "Duration of gRPC calls made (uprobes).",
    "http.server.request.duration": "Duration of HTTP requests served.",
    "http.client.request.duration": "Duration of HTTP requests made.",
    "gotel.rpc.server.deadline.budget_used": "Elapsed time / the caller's deadline budget, per served call.",
    "gotel.rpc.client.deadline.budget_used": "Elapsed time / the deadline budget, per call made.",
    "gotel.rpc.server.deadline_exceeded": "Served calls that ended after their caller's deadline.",
    "gotel.rpc.client.deadline_exceeded": "Calls made that ended after their own deadline.",
    "gotel.rpc.server.deadline_propagated": "Served calls that ended DEADLINE_EXCEEDED with time left (a "
                                            "deadline further down ran out).",
    "gotel.rpc.client.deadline_propagated": "Calls made that got DEADLINE_EXCEEDED with time left (a "
                                            "deadline further down ran out).",
}


def _pyval(av: Any) -> Any:
    k = av.WhichOneof("value")
    return getattr(av, k) if k else None


def _http_server_attrs(c: Call, sp: _SpanParts, a: dict[str, Any], method: str) -> None:
    """An HTTP server span's name, status and attributes (route or path, peer, host)."""
    route = c.path if c.flags & E_STREAM_ID else ""
    if route:
        # Go 1.22+ mux patterns may carry the method ("GET /users/{id}")
        route = route.split(" ", 1)[-1]
        a["http.route"] = route
    elif c.path:
        a["url.path"] = c.path
    sp.name = f"{method} {route}" if route else method
    if c.msg:
        host, _, port = c.msg.rpartition(":")
        a["client.address"] = host.strip("[]")
        if port.isdigit():
            a["client.port"] = int(port)
    if c.tp:
        host, _, port = c.tp.rpartition(":")
        a["server.address"] = host if port.isdigit() else c.tp
        if port.isdigit():
            a["server.port"] = int(port)
    status = c.code if c.flags & E_STATUS else 0
    if c.flags & E_STATUS:
        status = status or 200  # nothing written: net/http answers 200
        a["http.response.status_code"] = status
        if status >= 500:
            sp.status_code = 2  # Status.STATUS_CODE_ERROR
            a["error.type"] = str(status)


def _http_client_attrs(c: Call, sp: _SpanParts, a: dict[str, Any], method: str) -> None:
    """An HTTP client span's name, status and attributes (URL, server, status)."""
    sp.name = method
    host = c.msg
    if c.tp or host:
        a["url.full"] = f"{c.tp or 'http'}://{host}{c.path}"
        h, _, port = host.rpartition(":")
        a["server.address"] = h if port.isdigit() else host
        if port.isdigit():
            a["server.port"] = int(port)
        elif c.tp in ("http", "https"):
            a["server.port"] = 80 if c.tp == "http" else 443
    if c.flags & E_STATUS:
        a["http.response.status_code"] = c.code
        if c.code >= 400:
            sp.status_code = 2  # Status.STATUS_CODE_ERROR
            a["error.type"] = str(c.code)
    elif c.flags & E_NONSTATUS_ERR:
        sp.status_code = 2  # Status.STATUS_CODE_ERROR
        a["error.type"] = "_OTHER"
