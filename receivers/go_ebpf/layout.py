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
# the table's last slots are the BPF side's own (L_ITAB_* in go_ebpf.c: context itabs it has recognised)
LEARNED_SLOTS = 3
assert len(OFFSETS) <= MAX_OFFSETS - LEARNED_SLOTS, "the offsets table is full"

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
    return [f"{kind}:{'/'.join(types)}.{fld}" for kind, types, fld, _ in OFFSETS]


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
        for s in st.iter_symbols():  # type: ignore[attr-defined]
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


def layout_for(gb: GoBinary) -> Layout:
    names = offset_names()
    vals: dict[str, int | None] = {}
    resolved: dict[str, str] = {}
    missing: list[str] = []
    syms: dict[str, int] | None = None
    flags = 0
    for name, (kind, types, fld, attr) in zip(names, OFFSETS, strict=True):
        v: int | None = None
        if kind == "field":
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
            f = gb.functions.get(types[0])
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
