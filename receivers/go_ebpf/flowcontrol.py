"""Flow control and stream limits of gRPC (issue 19): what go_ebpf.c's flow-control block reports, turned into
metrics and span events.

Records (struct fev in bpf/go_ebpf.c, type >= 16) share the ring buffer with the call records; the receiver
hands them here by their type. Metrics go into the Assembler's per-process series (exported with the RED
metrics); the ages of streaming calls still open are read from the BPF tables of calls in progress at each
export. See docs/go_ebpf.md, "Flow control and stream limits".
"""

from __future__ import annotations

import logging
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2

from gotel.golang import GoAnalysisError, GoBinary
from gotel.pdata.batch import Metrics, attrs
from gotel.receivers.go_ebpf import events as ev

log = logging.getLogger(__name__)

T_FLOW_QUOTA, T_FLOW_WRITE, T_FLOW_GOAWAY, T_FLOW_RST, T_FLOW_EARLY = 16, 17, 18, 19, 20
FLOW_TYPE_MIN = 16  # struct gev types are below
FL_SENT, FL_RECEIVED, FL_SERVER, FL_SPAN = 1, 2, 4, 8
Q_QUOTA, Q_GOAWAY, Q_DONE, Q_UNKNOWN = 0, 1, 2, 3
WINDOWS = ("unknown", "stream", "connection", "write_quota")
E_STREAMING = 1 << 26  # bit 24 is E_SAMPLED_TP (sampling)
F_FLOW_SWISS = 1 << 24
F_FLOW_ON = 1 << 25  # the process's per-call additions are on (config flow_control)
DEBUG_LEN = 64
FLOW_RECORD = struct.Struct(f"<QQIIQ8sIIII{ev.STR_LEN}s{DEBUG_LEN}s")

# HTTP/2 error codes (RFC 9113 section 7)
H2_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
            "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
            "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
REFUSED_STREAM = 7

WAIT_BOUNDS = [0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
AGE_BOUNDS = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0]

QUOTA_WAIT = "gotel.grpc.client.stream_quota.wait"
FC_WAIT = "gotel.grpc.flow_control.wait"
REFUSED = "gotel.grpc.streams.refused"
RESETS = "gotel.grpc.stream.resets"
GOAWAY = "gotel.grpc.goaway"
STREAM_AGE = "gotel.grpc.stream.age"
DROPPED = "gotel.grpc.calls.dropped"

DESC = {
    QUOTA_WAIT: "Time a new client stream waited for the connection's stream quota (the server's "
                "MaxConcurrentStreams); streams that did not wait are not observed.",
    FC_WAIT: "Time a write waited for its stream's write quota, by what held the data back "
             "(gotel.grpc.flow_control.window: stream or connection flow-control window, or write_quota: "
             "queued, not yet written).",
    REFUSED: "Streams refused with RST_STREAM(REFUSED_STREAM) (sent: by this server, e.g. over its stream "
             "limit; received: by the peer).",
    RESETS: "RST_STREAM frames sent and received, by HTTP/2 error code.",
    GOAWAY: "GOAWAY frames sent and received, by HTTP/2 error code and debug data.",
    STREAM_AGE: "Age of streaming RPCs: at their end (state=closed, cumulative) and, at each export, of "
                "those still open (state=open: a snapshot, its start time is the export).",
    DROPPED: "Calls that never reached the handler, by reason.",
}
UNITS = {REFUSED: "{stream}", RESETS: "{frame}", GOAWAY: "{frame}", DROPPED: "{call}"}
ev._DESC.update(DESC)
ev._UNITS.update(UNITS)

_T = "google.golang.org/grpc/internal/transport"
_G = "google.golang.org/grpc"
_H2 = "golang.org/x/net/http2"
FLOW_SLOT = 100
_OS = f"{_T}.outStream"
# (kind, type alternatives, field, what is lost without it): slots FLOW_SLOT.. (FL_* in go_ebpf.c)
FLOW_OFFSETS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("field", (f"{_T}.http2Client",), "loopy", "flow_control.window (client)"),  # 100
    ("field", (f"{_T}.http2Server",), "loopy", "flow_control.window (server)"),  # 101
    ("field", (f"{_T}.loopyWriter",), "sendQuota", "flow_control.window"),  # 102
    ("field", (f"{_T}.loopyWriter",), "oiws", "flow_control.window"),  # 103
    ("field", (f"{_T}.loopyWriter",), "estdStreams", "flow_control.window"),  # 104
    ("field", (_OS,), "bytesOutStanding", "flow_control.window"),  # 105
    ("field", (f"{_T}.http2Client",), "streamsQuotaAvailable", "stream quota wait outcome"),  # 106
    ("field", (f"{_T}.http2Client",), "goAway", "stream quota wait outcome"),  # 107
    ("field", (f"{_H2}.GoAwayFrame",), "LastStreamID", "GOAWAY received"),  # 108
    ("field", (f"{_H2}.GoAwayFrame",), "ErrCode", "GOAWAY received"),  # 109
    ("field", (f"{_H2}.GoAwayFrame",), "debugData", "GOAWAY received debug data"),  # 110
    ("field", (f"{_H2}.RSTStreamFrame",), "ErrCode", "RST_STREAM received"),  # 111
    ("field", (f"{_G}.StreamDesc",), "ServerStreams", "stream.age (client)"),  # 112
    ("field", (f"{_G}.StreamDesc",), "ClientStreams", "stream.age (client)"),  # 113
    *(("flowmap", (), c, "flow_control.window") for c in "abcdef"),  # 114-119
    ("field", (f"{_T}.earlyAbortStream",), "rst", "calls.dropped reset_before_headers"),  # 120
    ("field", (f"{_T}.earlyAbortStream",), "streamID", "calls.dropped reset_before_headers"),  # 121
]
# the writer's quota, so that a wait is told by the bytes it needs sent (after the HTTP hops block, FL_OS_WQ..)
FLOW_SLOT2 = 127
FLOW_OFFSETS2: list[tuple[str, tuple[str, ...], str, str]] = [
    ("field", (_OS,), "wq", "flow_control.window"),  # 127
    ("field", (f"{_T}.writeQuota",), "quota", "flow_control.window"),  # 128
]

NEW_STREAM = f"{_T}.(*http2Client).NewStream"
WRITERS = ((f"{_T}.(*http2Client).Write", f"{_T}.(*http2Client).write"),
           (f"{_T}.(*http2Server).Write", f"{_T}.(*http2Server).write"))
FRAMES = (("grpc.flow.goaway_sent", f"{_H2}.(*Framer).WriteGoAway", "flow_goaway_sent"),
          ("grpc.flow.rst_sent", f"{_H2}.(*Framer).WriteRSTStream", "flow_rst_sent"),
          ("grpc.flow.goaway_received", f"{_T}.(*http2Client).handleGoAway", "flow_goaway_received"),
          ("grpc.flow.rst_received", f"{_T}.(*http2Client).handleRSTStream", "flow_rst_received_client"),
          ("grpc.flow.rst_received", f"{_T}.(*http2Server).handleRSTStream", "flow_rst_received_server"),
          ("grpc.flow.server_streaming", f"{_G}.(*Server).processStreamingRPC", "flow_server_streaming"),
          ("grpc.flow.early_abort", f"{_T}.(*loopyWriter).earlyAbortStreamHandler", "flow_early_abort"))


# programs that run only after a real wait (the instruction selectgo returns to) or per RST_STREAM/GOAWAY frame
# (past the stack check on Go <= 1.20): single-stepped where they sit, but never on a call's fast path
RARE_PROGRAMS = frozenset({"flow_quota_woken", "flow_write_woken", "flow_goaway_sent", "flow_rst_sent",
                           "flow_goaway_received", "flow_rst_received_client", "flow_rst_received_server",
                           "flow_early_abort"})


def estd_map_layout(gb: GoBinary) -> tuple[bool, tuple[int, ...]] | None:
    """(swiss, six numbers) of map[uint32]*outStream (loopyWriter.estdStreams), as header_map_layout does for
    http.Header: classic hmap.B, buckets, oldbuckets, bucket keys, elems, size; swiss Map.dirLen, dirPtr,
    table.groups, group slots, slot size, group size. None when DWARF does not describe it."""
    s = gb.structs
    try:
        if s.has_type("internal/runtime/maps.Map"):
            g = f"noalg.map.group[uint32]*{_OS}"
            slots, gsize = s.offset(g, "slots"), s.size(g)
            slot = (gsize - slots) // 8
            if slot != 16:
                return None  # not {key uint32; elem pointer}
            return True, (s.offset("internal/runtime/maps.Map", "dirLen"), s.offset("internal/runtime/maps.Map", "dirPtr"),
                          s.offset("internal/runtime/maps.table", "groups"), slots, slot, gsize)
        b = f"noalg.map.bucket[uint32]*{_OS}"
        return False, (s.offset("runtime.hmap", "B"), s.offset("runtime.hmap", "buckets"),
                       s.offset("runtime.hmap", "oldbuckets"), s.offset(b, "keys"), s.offset(b, "elems"), s.size(b))
    except GoAnalysisError:
        return None


_SYM = struct.Struct("<IBBHQQ")
_SD = f"{_G}.ServiceDesc"
_STD = f"{_G}.StreamDesc"


def streaming_methods(gb: GoBinary) -> frozenset[tuple[str, str]] | None:
    """(service, method) of every streaming RPC the binary's grpc.ServiceDesc variables declare, read from the
    file: grpc >= 1.84 serves unary and streaming calls in one processRPC, so no function tells them apart
    (docs/go_ebpf.md, "Stream age"), but generated descriptors are statically initialised package variables.
    Candidates are data symbols of ServiceDesc's size whose strings and slices check out. None when the
    binary has no symbol table or none is found (a descriptor built at run time is not seen)."""
    img = gb.image
    sec, raw, strs = img.sections.get(".symtab"), img.section_bytes(".symtab"), img.section_bytes(".strtab")
    if sec is None or raw is None or strs is None:
        return None
    size, st_size, o_name, o_s, o_c, o_streams = 96, 32, 0, 24, 25, 64
    if gb.has_dwarf:
        try:
            s = gb.structs
            size, st_size = s.size(_SD), s.size(_STD)
            o_name, o_s, o_c = s.offset(_STD, "StreamName"), s.offset(_STD, "ServerStreams"), s.offset(_STD, "ClientStreams")
            o_streams = s.offset(_SD, "Streams")
        except GoAnalysisError:
            pass
    data = [x for n in (".data", ".noptrdata") if (x := img.sections.get(n)) is not None]

    def text(addr: int, n: int) -> str | None:
        if not 0 < n <= 256:
            return None
        try:
            b = img.read_vaddr(addr, n)
        except ValueError:
            return None
        return b.decode() if len(b) == n and all(32 < c < 127 for c in b) else None

    found: set[tuple[str, str]] = set()
    seen = False
    for _n, info, _o, _shndx, value, sz in _SYM.iter_unpack(raw[: sec.size - sec.size % 24]):
        if info & 0xF != 1 or sz != size or not any(d.addr <= value < d.addr + d.size for d in data):
            continue  # STT_OBJECT of ServiceDesc's size, in initialised data
        try:
            head = img.read_vaddr(value, size)
        except ValueError:
            continue
        name_p, name_n = struct.unpack_from("<QQ", head, 0)
        sp, sn, sc = struct.unpack_from("<QQQ", head, o_streams)
        svc = text(name_p, name_n)
        if svc is None or "/" in svc or sn > sc or sn > 4096 or (sn and not sp):
            continue
        descs: list[tuple[str, bool]] = []
        for i in range(sn):
            try:
                d = img.read_vaddr(sp + i * st_size, st_size)
            except ValueError:
                break
            meth = text(*struct.unpack_from("<QQ", d, o_name))
            if meth is None or d[o_s] > 1 or d[o_c] > 1:
                break
            descs.append((meth, bool(d[o_s] or d[o_c])))
        else:
            seen = True
            found.update((svc, m) for m, streaming in descs if streaming)
    return frozenset(found) if seen else None


def flow_offsets(gb: GoBinary) -> tuple[dict[int, int | None], int, list[str]]:
    """The flow block's slot values, its flags and what this binary loses of it (said once per binary)."""
    vals: dict[int, int | None] = {}
    lost: list[str] = []
    mp = estd_map_layout(gb) if gb.has_dwarf else None
    for slot, (kind, types, fld, what) in [*enumerate(FLOW_OFFSETS, FLOW_SLOT), *enumerate(FLOW_OFFSETS2, FLOW_SLOT2)]:
        v: int | None = None
        if kind == "flowmap":
            v = mp[1]["abcdef".index(fld)] if mp is not None else None
        elif gb.has_dwarf:
            for t in types:
                try:
                    v = gb.struct_offset(t, fld)
                    break
                except GoAnalysisError:
                    continue
        vals[slot] = v
        if v is None and what not in lost:
            lost.append(what)
    flags = F_FLOW_SWISS if mp is not None and mp[0] else 0
    return vals, flags, lost


def flow_sites(gb: GoBinary) -> tuple[list[Any], list[str], list[str]]:
    """(sites, probe ids, what is not probed) of the flow block in one binary: the selectgo call in
    NewStream and in each writer (and the instruction after it), and the frame functions' entries."""
    from gotel.ebpf.goprobes import Site
    from gotel.ebpf.targets import body_address, entry_site
    from gotel.golang.disasm import call_sites, decode

    sites: list[Site] = []
    ids: list[str] = []
    lacks: list[str] = []
    sel = gb.functions.get("runtime.selectgo")

    def select_site(sym: str, wait: str, woken: str) -> bool:
        f = gb.functions.get(sym)
        if f is None or sel is None:
            return False
        code = bytes(gb.image.data[f.file_offset:f.file_offset + f.size])
        calls = call_sites(code, f.entry, {sel.entry})[sel.entry]
        if len(calls) != 1:  # one select in each of these functions in every grpc-go read so far
            return False
        at = calls[0]
        off = at - f.entry
        insn = decode(code[off:off + 16], at, 1)
        if not insn or insn[0][2] != "call":
            return False
        sites.append(Site(at, wait, sym))
        sites.append(Site(at + insn[0][1], woken, sym))
        return True

    if select_site(NEW_STREAM, "flow_quota_wait", "flow_quota_woken"):
        ids.append("grpc.flow.stream_quota")
    else:
        lacks.append("gotel.grpc.client.stream_quota.wait")
    for (syms, prog) in zip(WRITERS, ("flow_write_wait_client", "flow_write_wait_server"), strict=True):
        sym = next((s for s in syms if gb.functions.get(s) is not None), None)
        if sym is not None and select_site(sym, prog, "flow_write_woken"):
            ids.append("grpc.flow.write_quota." + ("client" if "Client" in sym else "server"))
        else:
            lacks.append(f"gotel.grpc.flow_control.wait ({'client' if 'client' in prog else 'server'})")
    for pid_, sym, prog in FRAMES:
        if gb.functions.get(sym) is None:
            if pid_ != "grpc.flow.server_streaming":  # grpc >= 1.84: streaming_methods instead
                lacks.append(f"{pid_} ({sym.rsplit('.', 1)[-1]} not found)")
            continue
        at = entry_site(gb, sym)
        if at is None:
            continue
        addr = at[0]
        if at[1] and pid_ != "grpc.flow.server_streaming":
            # may fire twice (Go <= 1.20, morestack): frames are counted, so the site past the stack check
            # (single-stepped, but these are rare frames) fires exactly once
            addr = body_address(gb, sym) or addr
        sites.append(Site(addr, prog, sym))
        if pid_ not in ids:
            ids.append(pid_)
    return sites, ids, lacks


def _h2code(code: int) -> str:
    return H2_CODES[code] if 0 <= code < len(H2_CODES) else f"0x{code:x}"


def _debug_text(b: bytes) -> str:
    t = b.split(b"\0", 1)[0]
    if not t:
        return ""
    if all(32 <= c < 127 for c in t):
        return t.decode()
    return "<binary>"


def _event(name: str, t_ns: int, a: dict[str, Any]) -> bytes:
    """Span.events (field 11) entry: Event{time_unix_nano, name, attributes}."""
    body = b"\x09" + struct.pack("<Q", t_ns) + ev._ld(0x12, name.encode())
    body += b"".join(ev._ld(0x1A, kv.SerializeToString()) for kv in attrs(a))
    return ev._ld(0x5A, body)


@dataclass
class _Wait:
    start: int  # mono ns
    end: int
    code: int
    method: str
    pid: int
    seen: float  # monotonic (s) when last updated


class FlowControl:
    """Turns flow records into the Assembler's per-process series, and joins a client stream's quota wait to
    its span (metric labels with the peer, and a span event when the wait was long)."""

    def __init__(self, asm: ev.Assembler, *, event_threshold: float = 0.01) -> None:
        self.asm = asm
        self.event_threshold = event_threshold
        self.quota_waits: OrderedDict[tuple[int, bytes], _Wait] = OrderedDict()
        # pid -> (service, method) of its streaming RPCs, for servers whose grpc has no processStreamingRPC
        self.streaming: dict[int, frozenset[tuple[str, str]]] = {}
        self._streaming_seen: dict[int, tuple[tuple[tuple[str, Any], ...], int, bool]] = {}
        self.bad = 0
        asm.on_span = self.on_span
        asm.on_server_span = self.on_server_span
        # when the hooks have work (on_span, on_server_span): the containers are shared, and only mutated
        asm.hook_flags, asm.hook_waits, asm.hook_pids = E_STREAMING, self.quota_waits, self.streaming

    # ---- records ----
    def add(self, rec: bytes, mono_to_unix: int, now: float) -> bool:
        if len(rec) < FLOW_RECORD.size:
            self.bad += 1
            return False
        (start, end, pid, typ, g, sid, code, flags, _stream_id, _last_id, method,
         debug) = FLOW_RECORD.unpack_from(rec)
        st = self.asm.procs.get(pid)
        if st is None:
            self.asm.unknown_process += 1
            return True
        if typ == T_FLOW_QUOTA:
            # by the call's span (joined at its end), else by goroutine and start: one wait's returns share both
            key = (pid, sid if flags & FL_SPAN else g.to_bytes(8, "little") + start.to_bytes(8, "little"))
            self.quota_waits[key] = _Wait(start, end, code, ev._cstr(method), pid, now)
            self.quota_waits.move_to_end(key)
            while len(self.quota_waits) > 4096:
                self._finish_quota(*self.quota_waits.popitem(last=False), None)
        elif typ == T_FLOW_WRITE:
            a = self._method_labels(ev._cstr(method))
            a += (("gotel.grpc.flow_control.window", WINDOWS[code] if code < len(WINDOWS) else "unknown"),
                  ("gotel.grpc.side", "server" if flags & FL_SERVER else "client"))
            self._observe(st, FC_WAIT, a, (end - start) / 1e9, end + mono_to_unix)
        elif typ == T_FLOW_RST:
            d = "sent" if flags & FL_SENT else "received"
            self._count(st, RESETS, (("gotel.grpc.http2.error_code", _h2code(code)), ("gotel.grpc.direction", d)))
            if code == REFUSED_STREAM:
                self._count(st, REFUSED, (("gotel.grpc.direction", d),))
                # a stream refused by this server, or by the peer of this client: it never reached a handler
                side = "server" if flags & FL_SENT else "client"
                self._count(st, DROPPED, (("gotel.grpc.drop.reason", "refused_stream"), ("gotel.grpc.side", side)))
        elif typ == T_FLOW_EARLY:
            # answered before any handler saw it; reset too unless the client had ended the stream
            reason = "reset_before_headers" if code == 1 else "rejected_before_handler"
            self._count(st, DROPPED, (("gotel.grpc.drop.reason", reason), ("gotel.grpc.side", "server")))
        elif typ == T_FLOW_GOAWAY:
            d = "sent" if flags & FL_SENT else "received"
            self._count(st, GOAWAY, (("gotel.grpc.http2.error_code", _h2code(code)),
                                     ("gotel.grpc.goaway.debug", _debug_text(debug)), ("gotel.grpc.direction", d)))
        else:
            self.bad += 1
            return False
        return True

    def expire(self, now: float, mono_to_unix: int) -> None:
        """Quota waits whose call record never came (the client span was lost): observed without the peer."""
        while self.quota_waits:
            key, w = next(iter(self.quota_waits.items()))
            if now - w.seen < 5.0:
                break
            del self.quota_waits[key]
            self._finish_quota(key, w, None, mono_to_unix)

    # ---- the join with the client span (Assembler.add calls this for every gRPC client record) ----
    def on_span(self, pid: int, span_id: bytes, labels: tuple[tuple[str, Any], ...], code: int, flags: int,
                start: int, end: int) -> bytes:
        out = b""
        if flags & E_STREAMING:
            st = self.asm.procs.get(pid)
            if st is not None:
                a = tuple((k, v) for k, v in labels if k in ("rpc.system", "rpc.service", "rpc.method"))
                self._observe(st, STREAM_AGE, (*a, ("gotel.grpc.side", "client"), ("gotel.grpc.stream.state", "closed")),
                              max(end - start, 0) / 1e9, end)
        if not self.quota_waits:
            return out
        w = self.quota_waits.pop((pid, span_id), None)
        if w is None:
            return out
        return out + self._finish_quota((pid, span_id), w, (labels, code, start), 0)

    def set_streaming(self, pid: int, methods: frozenset[tuple[str, str]] | None) -> None:
        """The streaming methods of a server process whose calls carry no E_STREAMING (grpc >= 1.84)."""
        for gone in [p for p in self.streaming if p not in self.asm.procs]:
            del self.streaming[gone]
        if methods:
            self.streaming[pid] = methods

    def _server_streaming(self, pid: int, flags: int, svc: Any, meth: Any) -> bool:
        return bool(flags & E_STREAMING) or (svc, meth) in self.streaming.get(pid, ())

    def _by_descriptor(self, pid: int, labels: tuple[tuple[str, Any], ...]) -> bool:
        """Whether a server call of a grpc >= 1.84 process is streaming, by its labels: a call's labels are one
        shared tuple per method (events.Assembler's shapes), so the answer is kept by that tuple's identity
        (held, so the id stays its own): ~0.1 us a call instead of ~1 us."""
        hit = self._streaming_seen.get(id(labels))
        if hit is not None and hit[0] is labels and hit[1] == pid:
            return hit[2]
        d = dict(labels)
        yes = self._server_streaming(pid, 0, d.get("rpc.service"), d.get("rpc.method"))
        if len(self._streaming_seen) >= 4096:
            self._streaming_seen.clear()
        self._streaming_seen[id(labels)] = (labels, pid, yes)
        return yes

    def on_server_span(self, pid: int, labels: tuple[tuple[str, Any], ...], flags: int, start: int, end: int) -> None:
        if flags & E_STREAMING or (pid in self.streaming and self._by_descriptor(pid, labels)):
            st = self.asm.procs.get(pid)
            if st is not None:
                a = tuple((k, v) for k, v in labels if k in ("rpc.system", "rpc.service", "rpc.method"))
                self._observe(st, STREAM_AGE, (*a, ("gotel.grpc.side", "server"), ("gotel.grpc.stream.state", "closed")),
                              max(end - start, 0) / 1e9, end)

    def _finish_quota(self, key: tuple[int, bytes], w: _Wait,
                      span: tuple[tuple[tuple[str, Any], ...], int, int] | None, mono_to_unix: int = 0) -> bytes:
        st = self.asm.procs.get(w.pid)
        if st is None:
            return b""
        wait = max(w.end - w.start, 0) / 1e9
        if span is not None:
            labels, code, call_start = span
            a = tuple((k, v) for k, v in labels
                      if k in ("rpc.system", "rpc.service", "rpc.method", "server.address", "server.port"))
            # the span's times are unix: the wait's are monotonic, placed by the call's start
            t_unix = call_start
        else:
            a = self._method_labels(w.method)
            code = -1
            t_unix = w.end + mono_to_unix
        self._observe(st, QUOTA_WAIT, a, wait, t_unix)
        if w.code == Q_DONE:
            reason = {4: "stream_quota_deadline", 1: "stream_quota_cancelled"}.get(code, "stream_quota_closed")
            self._count(st, DROPPED, (("gotel.grpc.drop.reason", reason), ("gotel.grpc.side", "client")))
        if span is None or wait < self.event_threshold:
            return b""
        outcome = ("quota", "goaway", "done", "unknown")[min(w.code, 3)]
        return _event("gotel.grpc.stream_quota.wait", t_unix,
                      {"gotel.grpc.stream_quota.wait": wait, "gotel.grpc.stream_quota.outcome": outcome})

    # ---- series ----
    @staticmethod
    def _method_labels(method: str) -> tuple[tuple[str, Any], ...]:
        if not method:
            return (("rpc.system", "grpc"),)
        svc, meth = ev.split_method(method)
        return (("rpc.system", "grpc"), ("rpc.service", svc), ("rpc.method", meth))

    @staticmethod
    def _observe(st: ev.ProcState, name: str, labels: tuple[tuple[str, Any], ...], x: float, t: int) -> None:
        key = (name, labels)
        h = st.hists.get(key)
        if h is None:
            h = st.hists[key] = ev.Hist(AGE_BOUNDS if name == STREAM_AGE else WAIT_BOUNDS,
                                        [0] * ((len(AGE_BOUNDS) if name == STREAM_AGE else len(WAIT_BOUNDS)) + 1))
        h.n += 1
        h.total += x
        h.counts[_bisect(h.bounds, x)] += 1
        h.lo = min(h.lo, x)
        h.hi = max(h.hi, x)

    @staticmethod
    def _count(st: ev.ProcState, name: str, labels: tuple[tuple[str, Any], ...]) -> None:
        key = (name, labels)
        st.counters[key] = st.counters.get(key, 0) + 1

    # ---- streams still open ----
    def open_stream_ages(self, program: Any, mono_ns: int | None = None, limit: int = 16384) -> Metrics | None:
        """The ages of the streaming calls still open (server and client tables of go_ebpf.c) as a snapshot
        histogram per process and method, with gotel.grpc.stream.state=open."""
        now = time.monotonic_ns() if mono_ns is None else mono_ns
        series: dict[int, dict[tuple[tuple[str, Any], ...], ev.Hist]] = {}
        seen = 0
        for table, side in (("srv_ongoing", "server"), ("cli_streams", "client")):
            try:
                items = program.table(table).items()
            except Exception:
                continue
            for _k, v in items:
                seen += 1
                if seen > limit:
                    break
                raw = bytes(v)
                if len(raw) < ev._FIXED.size:
                    continue
                (start, _end, pid, typ, _s, _p, _t, _dw, _de, _c, flags, *_rest) = ev._FIXED.unpack_from(raw)
                if typ not in (ev.T_GRPC_SERVER, ev.T_GRPC_CLIENT) or flags & ev.E_BEGIN_WALL \
                        or pid not in self.asm.procs:
                    continue
                method = ev._cstr(raw[ev._STRS_AT:ev._STRS_AT + ev.STR_LEN])
                if not (flags & E_STREAMING or (typ == ev.T_GRPC_SERVER
                        and self._server_streaming(pid, flags, *ev.split_method(method)))):
                    continue
                labels = (*self._method_labels(method), ("gotel.grpc.side", side),
                          ("gotel.grpc.stream.state", "open"))
                hs = series.setdefault(pid, {})
                h = hs.get(labels)
                if h is None:
                    h = hs[labels] = ev.Hist(AGE_BOUNDS, [0] * (len(AGE_BOUNDS) + 1))
                x = max(now - start, 0) / 1e9
                h.n += 1
                h.total += x
                h.counts[_bisect(AGE_BOUNDS, x)] += 1
                h.lo = min(h.lo, x)
                h.hi = max(h.hi, x)
        if not series:
            return None
        t = time.time_ns()
        b = Metrics()
        for pid, hs in series.items():
            rm = b.msg.resource_metrics.add()
            rm.resource.attributes.extend(attrs(self.asm.procs[pid].resource))
            sm = rm.scope_metrics.add()
            sm.scope.name = ev.SCOPE
            m = sm.metrics.add(name=STREAM_AGE, unit="s", description=DESC[STREAM_AGE])
            m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            for labels, h in hs.items():
                dp = m.histogram.data_points.add(start_time_unix_nano=t, time_unix_nano=t, count=h.n, sum=h.total,
                                                 min=h.lo, max=h.hi, explicit_bounds=h.bounds, bucket_counts=h.counts)
                dp.attributes.extend(attrs(dict(labels)))
        return b


def _bisect(bounds: list[float], x: float) -> int:
    import bisect

    return bisect.bisect_left(bounds, x)
