"""Per-binary facts for bpf/go_ebpf.c: which functions to probe and the struct offsets / code addresses
it reads, from the binary's build info, symbol table and DWARF (never guessed: unknown stays unknown).

The index of each entry in OFFSETS is its slot in the BPF offsets table (O_* / A_* in go_ebpf.c).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gotel.ebpf.goprobes import MAX_OFFSETS
from gotel.ebpf.probespecs import version_at_least
from gotel.golang import GoAnalysisError, GoBinary
from gotel.receivers.go_ebpf.flowcontrol import (
    FLOW_OFFSETS,
    FLOW_OFFSETS2,
    FLOW_SLOT,
    FLOW_SLOT2,
    flow_offsets,
)

log = logging.getLogger(__name__)

_T = "google.golang.org/grpc/internal/transport"
_ST = "google.golang.org/grpc/internal/status"
_SPB = "google.golang.org/genproto/googleapis/rpc/status.Status"
_G = "google.golang.org/grpc"
GRPC = "google.golang.org/grpc"

# (struct type alternatives, field) or ("addr", function/var symbol alternatives); the attribute lost when unknown
OffsetSpec = tuple[str, tuple[str, ...], str, str]
OFFSETS: list[OffsetSpec] = [
    ("field", (f"{_T}.Stream", f"{_T}.ServerStream"), "method", "rpc.method (server)"),  # 0
    ("field", (f"{_T}.Stream",), "id", "server/client stitching"),  # 1
    ("field", (f"{_T}.Stream",), "ctx", "deadline (server)"),  # 2
    ("field", (f"{_T}.http2Server",), "remoteAddr|peer.Addr", "client.address"),  # 3 (peer: grpc >= 1.60)
    ("field", (f"{_T}.http2Server",), "localAddr|peer.LocalAddr", "server.address"),  # 4
    ("field", ("net.TCPAddr",), "IP", "addresses"),  # 5
    ("field", ("net.TCPAddr",), "Port", "ports"),  # 6
    ("field", (f"{_ST}.Status",), "s", "rpc.response.status_code (server)"),  # 7
    ("field", (_SPB,), "Code", "rpc.response.status_code"),  # 8
    ("field", (_SPB,), "Message", "status message"),  # 9
    ("field", (f"{_ST}.Error",), "e|s", "rpc.response.status_code (client)"),  # 10
    ("field", (f"{_G}.clientStream",), "attempt", "server.address (client)"),  # 11
    ("field", (f"{_G}.csAttempt",), "t|transport", "server.address (client)"),  # 12 (transport: grpc >= 1.71)
    ("field", (f"{_G}.csAttempt",), "s|transportStream", "server/client stitching"),  # 13
    ("field", (f"{_T}.http2Client",), "remoteAddr", "server.address (client)"),  # 14
    ("field", (f"{_T}.http2Client",), "localAddr", "client port (stitching)"),  # 15
    ("field", ("context.timerCtx",), "deadline", "deadline"),  # 16
    ("func", ("context.(*timerCtx).Value",), "", "deadline"),  # 17
    ("func", ("context.(*valueCtx).Value",), "", "deadline"),  # 18
    ("func", ("context.(*cancelCtx).Value",), "", "deadline"),  # 19
    ("func", (f"{_ST}.(*Error).Error",), "", "rpc.response.status_code (client)"),  # 20
    ("var", ("io.EOF",), "", "OK status of client streams ending with io.EOF"),  # 21
    ("field", ("golang.org/x/net/http2.MetaHeadersFrame", "net/http.http2MetaHeadersFrame"), "Fields", "traceparent (gRPC)"),  # 22
    ("field", ("golang.org/x/net/http2.FrameHeader", "net/http.http2FrameHeader"), "StreamID", "traceparent (gRPC)"),  # 23
    ("size", ("golang.org/x/net/http2/hpack.HeaderField", "vendor/golang.org/x/net/http2/hpack.HeaderField"), "", "traceparent (gRPC)"),  # 24
    ("field", ("golang.org/x/net/http2/hpack.HeaderField", "vendor/golang.org/x/net/http2/hpack.HeaderField"), "Value", "traceparent (gRPC)"),  # 25
    ("field", ("net/http.Request",), "Method", "http.request.method"),  # 26
    ("field", ("net/http.Request",), "URL", "url.path"),  # 27
    ("field", ("net/url.URL",), "Path", "url.path"),  # 28
    ("field", ("net/http.Request",), "RemoteAddr", "client.address (http)"),  # 29
    ("field", ("net/http.Request",), "Host", "server.address (http)"),  # 30
    ("field", ("net/http.response",), "status", "http.response.status_code (server)"),  # 31
    ("field", ("net/http.Request",), "Pattern", "http.route (Go >= 1.23)"),  # 32
    ("field", ("net/url.URL",), "Scheme", "url.full"),  # 33
    ("field", ("net/url.URL",), "Host", "url.full / server.address"),  # 34
    ("field", ("net/http.Response",), "StatusCode", "http.response.status_code (client)"),  # 35
    ("field", (f"{_G}.clientStream",), "ctx", "deadline (client)"),  # 36
    ("field", (f"{_G}.clientStream",), "callHdr", "calls in flight at attach"),  # 37
    ("field", (f"{_T}.CallHdr",), "Method", "calls in flight at attach"),  # 38
    ("field", (f"{_G}.clientStream",), "beginTime", ""),  # 39 (grpc < 1.58; else 44; missing: see layout_for)
    # the creator of a new goroutine read on g0 as m.curg (without them newproc1's entry is probed: no loss)
    ("field", ("runtime.g",), "m", ""),  # 40
    ("field", ("runtime.m",), "curg", ""),  # 41
    # ---- grpc-go layout eras (issue 14): appended, existing slots are never renumbered ----
    # grpc >= 1.69 hands handleStream/writeStatus a *ServerStream and csAttempt holds a *ClientStream, each
    # embedding the Stream: as a pointer (1.69-1.76, F_SS_STREAM_PTR / F_CLS_STREAM_PTR) or a value (1.77+).
    # Absent before 1.69 (the Stream itself is passed): not a loss, hence no attribute.
    ("field", (f"{_T}.ServerStream",), "Stream", ""),  # 42
    ("field", (f"{_T}.ClientStream",), "Stream", ""),  # 43
    ("field", (f"{_G}.csAttempt",), "beginTime", ""),  # 44 the call's start once it moved to the attempt
]

# ---- HTTP hops (issue 22): a block of its own from slot HTTP_SLOT (H_* in go_ebpf.c), so that entries
# appended to OFFSETS above and this block merge without renumbering. Kinds as above, plus "mapfmt":
# the http.Header map's layout (classic buckets before Go 1.24, swiss tables after), from DWARF.
_NH = "net/http"
_H2 = ("net/http.http2", "net/http/internal/http2.")  # bundled h2 up to Go 1.26, its own package in 1.27
HTTP_SLOT = 64
_XH2 = "golang.org/x/net/http2"


def _h2(t: str) -> tuple[str, ...]:
    return tuple(f"{p}{t}" for p in _H2)


HTTP_OFFSETS: list[OffsetSpec] = [
    ("field", (f"{_NH}.response",), "conn", "HTTP/1 server connection (stitching)"),  # 64
    ("field", (f"{_NH}.conn",), "rwc", "HTTP/1 server connection (stitching)"),  # 65
    ("field", (f"{_NH}.persistConn",), "conn", "HTTP/1 client connection (stitching)"),  # 66
    ("field", (f"{_NH}.persistConn",), "nwrite", "HTTP/1 client connection (stitching)"),  # 67
    ("field", ("net.TCPConn",), "conn.fd", "HTTP connection addresses"),  # 68
    ("field", ("net.netFD",), "laddr", "HTTP connection addresses"),  # 69
    ("field", ("net.netFD",), "raddr", "HTTP connection addresses"),  # 70
    ("field", ("crypto/tls.Conn",), "conn", "HTTPS connection addresses"),  # 71
    ("func", ("crypto/tls.(*Conn).LocalAddr",), "", "HTTPS connection addresses"),  # 72
    ("func", ("net.(*TCPConn).LocalAddr",), "", "HTTP connection addresses"),  # 73
    ("func", (f"{_NH}.(*response).Header",), "", "HTTP/1 server connection (stitching)"),  # 74
    ("field", (f"{_NH}.Request",), "Header", "traceparent (HTTP)"),  # 75
    # the header map: classic (hmap.B, hmap.buckets, hmap.oldbuckets, bucket keys, elems, size) or swiss
    # (Map.dirLen, Map.dirPtr, table.groups, group slots, slot size, group size)
    ("mapfmt", (), "a", "traceparent (HTTP)"),  # 76
    ("mapfmt", (), "b", "traceparent (HTTP)"),  # 77
    ("mapfmt", (), "c", "traceparent (HTTP)"),  # 78
    ("mapfmt", (), "d", "traceparent (HTTP)"),  # 79
    ("mapfmt", (), "e", "traceparent (HTTP)"),  # 80
    ("mapfmt", (), "f", "traceparent (HTTP)"),  # 81
    # HTTP/2 server (bundled in net/http, or net/http/internal/http2 from Go 1.27)
    # Go 1.27 hands the handler net/http.http2ResponseWriter{*responseWriter}: pointer-shaped, so the
    # interface's data word is the inner responseWriter and its itab holds the value method
    ("func", (f"{_NH}.(*http2responseWriter).Header", f"{_NH}.http2ResponseWriter.Header"), "",
     "HTTP/2 server (stitching, status)"),  # 82
    ("field", _h2("responseWriter"), "rws", "HTTP/2 server (stitching, status)"),  # 83
    ("field", _h2("responseWriterState"), "stream", "HTTP/2 server (stitching)"),  # 84
    ("field", _h2("responseWriterState"), "status", "http.response.status_code (HTTP/2 server)"),  # 85
    ("field", _h2("stream"), "id", "HTTP/2 server (stitching)"),  # 86
    ("field", _h2("stream"), "sc", "HTTP/2 server (stitching)"),  # 87
    ("field", _h2("serverConn"), "conn", "HTTP/2 server (stitching)"),  # 88
    # HTTP/2 client: the stream a request went out on, found by the request's header map (shared by the
    # shallow copies the transport makes, and by Go 1.27's internal ClientRequest)
    ("field", ("net/http/internal/http2.ClientRequest", f"{_NH}.Request"), "Header", "HTTP/2 client (stitching)"),  # 89
    ("field", _h2("clientStream"), "ID", "HTTP/2 client (stitching)"),  # 90
    ("field", _h2("clientStream"), "cc", "HTTP/2 client (stitching)"),  # 91
    ("field", _h2("ClientConn"), "tconn", "HTTP/2 client (stitching)"),  # 92
    # golang.org/x/net/http2 used directly (its own types beside net/http's bundled ones): HX_* in go_ebpf.c.
    # responseWriter is {rws *responseWriterState}: rws at 0 (checked by layout_for, not given a slot)
    ("field", (f"{_XH2}.responseWriterState",), "stream", "HTTP/2 server, x/net (stitching)"),  # 93
    ("field", (f"{_XH2}.responseWriterState",), "status", "http.response.status_code (HTTP/2 server, x/net)"),  # 94
    ("field", (f"{_XH2}.stream",), "id", "HTTP/2 server, x/net (stitching)"),  # 95
    ("field", (f"{_XH2}.serverConn",), "conn", "HTTP/2 server, x/net (stitching)"),  # 96
    ("field", (f"{_XH2}.clientStream",), "ID", "HTTP/2 client, x/net (stitching)"),  # 97
    ("field", (f"{_XH2}.clientStream",), "cc", "HTTP/2 client, x/net (stitching)"),  # 98
    ("field", (f"{_XH2}.ClientConn",), "tconn", "HTTP/2 client, x/net (stitching)"),  # 99
]
assert len(OFFSETS) <= HTTP_SLOT, "OFFSETS reached the HTTP block: move HTTP_SLOT (and H_BASE in go_ebpf.c)"
ALL_OFFSETS: list[OffsetSpec | None] = [*OFFSETS, *[None] * (HTTP_SLOT - len(OFFSETS)), *HTTP_OFFSETS]
# ---- flow control and stream limits (issue 19): a block of its own from flowcontrol.FLOW_SLOT (FL_* in
# go_ebpf.c); its values and losses come from flowcontrol.flow_offsets (not attribute losses of the spans)
ALL_OFFSETS += [None] * (FLOW_SLOT - len(ALL_OFFSETS))
ALL_OFFSETS += [(k, t, f, "") for k, t, f, _ in FLOW_OFFSETS]
F_HTTP_SWISS_MAP = 1 << 16  # http.Header is a swiss-table map (Go >= 1.24)
# h2c's net.Conn wrapper {net.Conn; *bufio.Reader} (its Conn at 0, checked by layout_for): after the flow block,
# as the HTTP block is full (HA_H2C_BUFCONN in go_ebpf.c)
H2C_BUFCONN_SLOT = 122
ALL_OFFSETS += [None] * (H2C_BUFCONN_SLOT - len(ALL_OFFSETS))
assert len(ALL_OFFSETS) == H2C_BUFCONN_SLOT, "the flow block grew into HA_H2C_BUFCONN's slot: move it"
ALL_OFFSETS += [("func", (f"{_XH2}/h2c.(*bufConn).LocalAddr",), "", "HTTP/2 server, h2c (stitching)")]
# traceparent injection into HTTP/1 client requests (inject_traceparent; H_PC_BW.. in go_ebpf.c)
INJECT_SLOT = 123
assert len(ALL_OFFSETS) == INJECT_SLOT, "H_PC_BW.. in go_ebpf.c must follow HA_H2C_BUFCONN"
INJECT_WHAT = "traceparent injection (HTTP/1 client)"
ALL_OFFSETS += [("field", (f"{_NH}.persistConn",), "bw", INJECT_WHAT),  # 123
                ("field", ("bufio.Writer",), "buf", INJECT_WHAT),  # 124
                ("field", ("bufio.Writer",), "n", INJECT_WHAT),  # 125
                ("field", (f"{_NH}.transportRequest",), "Request", INJECT_WHAT)]  # 126
# ---- end of the HTTP hops block
assert len(ALL_OFFSETS) == FLOW_SLOT2, "FL_OS_WQ.. in go_ebpf.c must follow H_TREQ_REQ"
ALL_OFFSETS += [(k, t, f, "") for k, t, f, _ in FLOW_OFFSETS2]

# the table's last slots are the BPF side's own (L_ITAB_* in go_ebpf.c: context itabs it has recognised)
LEARNED_SLOTS = 3
assert len(ALL_OFFSETS) <= MAX_OFFSETS - LEARNED_SLOTS, "the offsets table is full"

F_ERROR_VIA_STATUS = 1
F_NEWPROC1_GO117 = 2
F_OPHDR_CTX = 4
# grpc-go eras (issue 14), high bits so that other flags can be added below them
F_SS_STREAM_PTR = 1 << 8  # ServerStream embeds *Stream (1.69-1.76)
F_CLS_STREAM_PTR = 1 << 9  # ClientStream embeds *Stream (1.69-1.76)

@dataclass(frozen=True)
class Probe:
    """One probed function. Ends are read where a uprobe costs least (see gotel.ebpf.targets.entry_site):
    RETs are single-stepped (10+ us a hit in a VM), so `ret` programs go on only as a fallback, when the
    cheaper site named by `then_call` or `ret_unless` is missing from the binary."""

    id: str
    symbols: tuple[str, ...]
    entry: str | None
    ret: str | None = None
    ret_unless: str | None = None  # a probe id: when that function exists, `ret` is not attached
    then_call: tuple[str, str] | None = None  # (callee, program): the next call to callee after each call of this
    # offsets (OFFSETS indexes) that, when all known and then_call's sites exist, make the entry probe unneeded
    entry_unless_offsets: tuple[int, ...] = ()


PROBES: list[Probe] = [
    # the creator is newproc1's argument, or m.curg read at the enqueue site (one probe hit per goroutine)
    Probe("runtime.newproc1", ("runtime.newproc1",), "go_newproc1", ret="go_newproc1_ret",
          then_call=("runtime.runqput", "go_newproc_enqueue"), entry_unless_offsets=(40, 41)),
    Probe("grpc.server.handle_stream", (f"{_G}.(*Server).handleStream",), "grpc_server_start"),
    # ends the server span: WriteStatus exists in every grpc-go
    Probe("grpc.server.write_status", (f"{_T}.(*http2Server).WriteStatus", f"{_T}.(*http2Server).writeStatus"),
          "grpc_server_status"),
    Probe("grpc.server.operate_headers", (f"{_T}.(*http2Server).operateHeaders",), "grpc_operate_headers"),
    Probe("grpc.client.new_stream", (f"{_G}.newClientStream",), "grpc_client_start", ret="grpc_client_started",
          ret_unless="grpc.client.attempt"),
    Probe("grpc.client.attempt", (f"{_G}.(*clientStream).newAttemptLocked",), "grpc_client_attempt"),
    Probe("grpc.client.finish", (f"{_G}.(*clientStream).finish",), "grpc_client_finish"),
    Probe("http.server.serve", ("net/http.serverHandler.ServeHTTP",), "http_server_start", ret="http_server_end",
          ret_unless="http.server.finish"),
    Probe("http.server.finish", ("net/http.(*response).finishRequest",), "http_server_finish"),
    # no cheaper end found for the client: its RETs carry (*Response, error)
    Probe("http.client.roundtrip", ("net/http.(*Transport).roundTrip",), "http_client_start", ret="http_client_end"),
    # ---- HTTP hops (issue 22): connections and HTTP/2 ends
    Probe("http.server.conn", ("net/http.(*conn).serve",), "http_conn_serve"),
    Probe("http.client.conn", ("net/http.(*persistConn).roundTrip",), "http_pconn_roundtrip"),
    Probe("http.server.h2_done", ("net/http.(*http2responseWriter).handlerDone",
                                  "net/http/internal/http2.(*responseWriter).handlerDone"), "http2_server_done"),
    # a new HTTP/2 connection (one call each): its object's cached addresses are dropped (Go reuses the
    # addresses of the serverConn/ClientConn and its tls.Conn quickly when connections churn)
    Probe("http.server.h2_conn", ("net/http.(*http2serverConn).serve", "net/http/internal/http2.(*serverConn).serve"),
          "http2_conn_new"),
    Probe("http.client.h2_conn", ("net/http.(*http2ClientConn).readLoop",
                                  "net/http/internal/http2.(*ClientConn).readLoop"), "http2_conn_new"),
    Probe("http.client.h2_headers", ("net/http.(*http2clientStream).encodeAndWriteHeaders",
                                     "net/http/internal/http2.(*clientStream).encodeAndWriteHeaders"), "http2_client_headers"),
    # golang.org/x/net/http2 used directly (ConfigureServer, h2c, its Transport): its own functions, beside
    # net/http's. Its server spans begin where every stream's handler starts (h2c's skip ServeHTTP); its
    # Transport's calls are client spans unless net/http's roundTrip already made one (one span per call)
    Probe("http.server.h2x_start", (f"{_XH2}.(*serverConn).runHandler",), "http2x_server_start"),
    Probe("http.server.h2x_done", (f"{_XH2}.(*responseWriter).handlerDone",), "http2x_server_done"),
    Probe("http.server.h2x_conn", (f"{_XH2}.(*serverConn).serve",), "http2_conn_new"),
    Probe("http.client.h2x_roundtrip", (f"{_XH2}.(*Transport).roundTripOpt", f"{_XH2}.(*Transport).RoundTripOpt"),
          "http2x_client_start", ret="http2x_client_end"),
    Probe("http.client.h2x_conn", (f"{_XH2}.(*ClientConn).readLoop",), "http2_conn_new"),
    Probe("http.client.h2x_headers", (f"{_XH2}.(*clientStream).encodeAndWriteHeaders",), "http2x_client_headers"),
]


@dataclass
class Layout:
    """What one binary gives go_ebpf.c."""

    offsets: dict[str, int | None]
    flags: int
    missing: list[str] = field(default_factory=list)  # attributes lost, for logs and inspect
    grpc_version: str | None = None
    notes: list[str] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)  # offset name -> the alternative DWARF had


def offset_names() -> list[str]:
    return [f"unused:{i}" if spec is None else f"{spec[0]}:{'/'.join(spec[1])}.{spec[2]}"
            for i, spec in enumerate(ALL_OFFSETS)]


def _symbols(gb: GoBinary) -> dict[str, int]:
    """Data symbols (io.EOF) from .symtab; empty for stripped binaries."""
    from elftools.elf.elffile import ELFFile

    out: dict[str, int] = {}
    if not gb.has_symtab:
        return out
    with open(gb.path, "rb") as f:
        st = ELFFile(f).get_section_by_name(".symtab")
        if st is None:
            return out
        for s in st.iter_symbols():  # type: ignore[attr-defined]  # pyelftools types the section as Section; it is a SymbolTableSection here
            if s.name == "io.EOF":
                out[s.name] = int(s["st_value"])
    return out


def _field(gb: GoBinary, types: tuple[str, ...], fld: str) -> tuple[int, str] | None:
    """The first alternative (type, then `a|b` field) that DWARF has: (offset, "Type.field")."""
    for t in types:
        for f in fld.split("|"):
            try:
                return gb.struct_offset(t, f), f"{t.rsplit('/', 1)[-1]}.{f}"
            except GoAnalysisError:
                continue
    return None


def _embeds_pointer(gb: GoBinary, typ: str) -> bool | None:
    """Whether `typ` embeds *Stream (True) or Stream (False); None when it has no Stream (grpc < 1.69)."""
    try:
        return len(gb.field_chain(typ, "Stream.id")) > 1
    except GoAnalysisError:
        return None


def _has_type(gb: GoBinary, typ: str) -> bool:
    try:
        return gb.structs.has_type(typ)
    except GoAnalysisError:
        return False


# What each grpc-go era needs that older go_ebpf did not know, by the names DWARF gives (docs/go_ebpf.md)
OPERATE_HEADERS = f"{_T}.(*http2Server).operateHeaders"


def layout_for(gb: GoBinary) -> Layout:  # noqa: C901 (one DWARF lookup per field alternative of each era)
    names = offset_names()
    vals: dict[str, int | None] = {}
    resolved: dict[str, str] = {}
    missing: list[str] = []
    syms: dict[str, int] | None = None
    flags = 0
    hdr = header_map_layout(gb) if gb.has_dwarf else None
    for name, spec in zip(names, ALL_OFFSETS, strict=True):
        if spec is None:
            vals[name] = None
            continue
        kind, types, fld, attr = spec
        v: int | None = None
        if kind == "mapfmt":
            v = hdr[1]["abcdef".index(fld)] if hdr is not None else None
        elif kind == "field":
            got = _field(gb, types, fld) if gb.has_dwarf else None
            if got is not None:
                v, resolved[name] = got
        elif kind == "size":
            if gb.has_dwarf:
                for t in types:
                    try:
                        v = gb.structs.size(t)
                        break
                    except GoAnalysisError:
                        continue
        elif kind == "func":
            # a function address is in .gopclntab even when stripped, but without DWARF its companion
            # field offsets are unknown anyway
            f = next((f for t in types if (f := gb.functions.get(t)) is not None), None)
            v = f.entry if f is not None else None
        elif kind == "var":
            syms = _symbols(gb) if syms is None else syms
            v = syms.get(types[0])
        vals[name] = v
        if v is None and attr and attr not in missing and _applies(gb, kind, types):
            missing.append(attr)
    if vals[names[39]] is None and vals[names[44]] is None and _applies(gb, "field", (f"{_G}.clientStream",)):
        missing.append("calls in flight at attach")
    grpc_v = gb.module_version(GRPC)
    has_grpc = gb.functions.get(f"{_G}.(*Server).handleStream") is not None or \
        gb.functions.get(f"{_G}.newClientStream") is not None
    notes: list[str] = []
    if gb.has_dwarf:
        try:
            gb.struct_offset(f"{_ST}.Error", "s")
            flags |= F_ERROR_VIA_STATUS
        except GoAnalysisError:
            pass
        if _embeds_pointer(gb, f"{_T}.ServerStream"):
            flags |= F_SS_STREAM_PTR
        if _embeds_pointer(gb, f"{_T}.ClientStream"):
            flags |= F_CLS_STREAM_PTR
        if has_grpc and gb.functions.get(OPERATE_HEADERS) is not None:
            params = gb.func_params(OPERATE_HEADERS)
            if params is not None and len(params) > 1 and params[1] == "ctx":
                flags |= F_OPHDR_CTX  # operateHeaders(ctx, frame, ...) (grpc >= 1.60)
            elif params is None or len(params) < 2 or params[1] != "frame":
                vals[names[22]] = None  # a signature not known: where the frame is cannot be told
                missing.append("traceparent (gRPC): operateHeaders signature not recognised")
    if gb.go_version and not version_at_least(gb.go_version, "1.18"):
        flags |= F_NEWPROC1_GO117
    if has_grpc and (grpc_v is None or not grpc_v.startswith("v")):
        # nothing is assumed from a version number anyway: DWARF names every field read (no note needed)
        log.debug("%s: grpc version %s; its layout is read from DWARF by field name", gb.path, grpc_v or "unknown")
    if hdr is not None and hdr[0]:
        flags |= F_HTTP_SWISS_MAP
    if has_grpc:  # flow control (issue 19)
        fvals, fflags, _lost = flow_offsets(gb)
        for i, v in fvals.items():
            vals[names[i]] = v
        flags |= fflags
    if gb.has_dwarf and _has_type(gb, f"{_XH2}.responseWriter") and _field(gb, (f"{_XH2}.responseWriter",), "rws") != \
            (0, "http2.responseWriter.rws"):
        for i in (93, 94, 95):  # x/net's responseWriter is not {rws}: its server streams are not read
            vals[names[i]] = None
        missing.append("HTTP/2 server, x/net (stitching): responseWriter.rws not at 0")
    # x/net's losses only where its probed functions are linked (on Go 1.27 x/net wraps net/http's HTTP/2)
    for lost, fn in (("HTTP/2 server, x/net", f"{_XH2}.(*serverConn).runHandler"),
                     ("HTTP/2 client, x/net", f"{_XH2}.(*clientStream).encodeAndWriteHeaders"),
                     ("HTTP/2 server, h2c", f"{_XH2}/h2c.(*bufConn).LocalAddr")):
        if gb.functions.get(fn) is None:
            missing = [m for m in missing if lost not in m]
    if gb.has_dwarf and vals[names[H2C_BUFCONN_SLOT]] is not None and \
            _field(gb, (f"{_XH2}/h2c.bufConn",), "Conn") != (0, "h2c.bufConn.Conn"):
        vals[names[H2C_BUFCONN_SLOT]] = None  # not {net.Conn; ...}: its connections are not read
        missing.append("HTTP/2 server, h2c (stitching): bufConn.Conn not at 0")
    missing = [m for m in missing if INJECT_WHAT not in m]  # optional: probes.py says it when it is on
    if gb.has_dwarf and gb.functions.get("net/http.serverHandler.ServeHTTP") is not None and hdr is None:
        notes.append("http.Header's map layout is not in DWARF: incoming HTTP traceparents are not read")
    if not gb.has_dwarf:
        notes.append("no DWARF: server method names, status codes, deadlines, addresses and traceparent "
                     "continuation are unavailable; spans keep timing, client method names and parenting")
    return Layout(vals, flags, missing, grpc_v, notes, resolved)


def _applies(gb: GoBinary, kind: str, types: tuple[str, ...]) -> bool:
    """A field is lost only where its struct exists: a type of another era (or of a library the program
    does not link) is no loss. Without DWARF nothing can be told apart, so every field counts."""
    if kind != "field" or not gb.has_dwarf:
        return True
    return any(_has_type(gb, t) for t in types)


def grpc_losses(missing: list[str]) -> list[str]:
    """The losses that concern gRPC spans (the rest are net/http's)."""
    return [m for m in missing if "http" not in m and "url." not in m]


def traced_losses(missing: list[str], probe_ids: list[str]) -> list[str]:
    """The losses of what a binary actually has: a program without gRPC loses no gRPC attribute (and one
    without net/http no HTTP attribute), whatever its DWARF lacks."""
    grpc = any(i.startswith("grpc.") for i in probe_ids)
    http = any(i.startswith("http.") for i in probe_ids)
    g = set(grpc_losses(missing))
    return [m for m in missing if (grpc if m in g else http)]


def describe(layout: Layout) -> dict[str, object]:
    """What `gotel inspect` shows of a binary's gRPC layout: which name of each renamed field it has, how its
    streams are passed, and what it loses."""
    names = offset_names()

    def got(i: int) -> str | None:
        return layout.resolved.get(names[i])

    f = layout.flags
    if got(42) is None:
        stream = "handleStream gets *Stream (grpc < 1.69)"
    elif f & F_SS_STREAM_PTR:
        stream = "ServerStream/ClientStream embed *Stream (grpc 1.69-1.76)"
    else:
        stream = "ServerStream/ClientStream embed Stream by value (grpc >= 1.77)"
    return {
        "grpc_version": layout.grpc_version,
        "server_addresses": got(3),
        "client_transport": got(12),
        "client_stream": got(13),
        "status_error": got(10),
        "stream": stream,
        "operate_headers": "(ctx, frame, ...)" if f & F_OPHDR_CTX else "(frame, ...)",
        "call_start": got(39) or got(44),
        "missing": list(layout.missing),
        "notes": list(layout.notes),
    }


def header_map_layout(gb: GoBinary) -> tuple[bool, tuple[int, int, int, int, int, int]] | None:
    """(swiss, six numbers) describing map[string][]string (http.Header) for go_ebpf.c's header scan, from
    DWARF; None when the binary does not describe it. Classic maps (Go < 1.24): hmap.B, hmap.buckets,
    hmap.oldbuckets, and the bucket's keys and elems offsets and size. Swiss maps (Go >= 1.24): Map.dirLen,
    Map.dirPtr, table.groups, the group's slots offset, the slot size, the group size."""
    s = gb.structs
    try:
        if s.has_type("internal/runtime/maps.Map"):
            g = "noalg.map.group[string][]string"
            slots, gsize = s.offset(g, "slots"), s.size(g)
            slot = (gsize - slots) // 8  # 8 slots a group, each struct { key string; elem []string }
            if slot != 40:
                return None  # not the key/elem layout go_ebpf.c reads (key at 0, elem at 16)
            return True, (s.offset("internal/runtime/maps.Map", "dirLen"), s.offset("internal/runtime/maps.Map", "dirPtr"),
                          s.offset("internal/runtime/maps.table", "groups"), slots, slot, gsize)
        b = "noalg.map.bucket[string][]string"
        return False, (s.offset("runtime.hmap", "B"), s.offset("runtime.hmap", "buckets"),
                       s.offset("runtime.hmap", "oldbuckets"), s.offset(b, "keys"), s.offset(b, "elems"), s.size(b))
    except GoAnalysisError:
        return None
