"""Which sites go_ebpf attaches in one binary, and its probe specs for `gotel inspect`."""

from __future__ import annotations

from dataclasses import dataclass, field

from gotel.ebpf.goprobes import Site
from gotel.ebpf.probespecs import FieldRef, ProbeSpec, register
from gotel.ebpf.targets import call_after, call_sites_to, entry_site, ret_addresses
from gotel.golang import analyze
from gotel.golang.binary import FileIdentity, GoBinary
from gotel.receivers.go_ebpf import below as _below  # noqa: F401  (its probe specs, for `gotel inspect`)
from gotel.receivers.go_ebpf import flowcontrol as _flow
from gotel.receivers.go_ebpf.layout import GRPC, PROBES, Layout, layout_for, offset_names


@dataclass
class Plan:
    sites: list[Site]
    layout: Layout
    go_version: str | None
    has_dwarf: bool
    probe_ids: list[str] = field(default_factory=list)
    # grpc >= 1.84 (no processStreamingRPC): the streaming methods the binary declares (flowcontrol)
    streaming: frozenset[tuple[str, str]] | None = None


_PLANS: dict[tuple[FileIdentity, bool, bool, bool, bool], Plan] = {}


def plan_for(exe: str, *, grpc: bool = True, http: bool = True, flow: bool = True, inject: bool = False) -> Plan:
    """Cached per binary file: a new process of a known binary costs one stat."""
    key = (FileIdentity.of(exe), grpc, http, flow, inject)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(exe, grpc, http, flow, inject)
        while len(_PLANS) > 256:
            del _PLANS[next(iter(_PLANS))]
    return plan


def _plan(exe: str, grpc: bool, http: bool, flow: bool = True, inject: bool = False) -> Plan:
    gb = analyze(exe)
    layout = layout_for(gb)
    wanted = [p for p in PROBES if not ((p.id.startswith("grpc.") and not grpc) or (p.id.startswith("http.") and not http))]
    found = {p.id: sym for p in wanted if (sym := next((s for s in p.symbols if gb.functions.get(s) is not None), None))}
    sites: list[Site] = []
    ids: list[str] = []
    for p in wanted:
        sym = found.get(p.id)
        if sym is None:
            continue
        ids.append(p.id)
        ends: list[Site] = []
        if p.then_call:
            callee, prog = p.then_call
            for call in call_sites_to(gb, sym):
                nxt = call_after(gb, call, callee)
                if nxt is not None:
                    ends.append(Site(nxt, prog, callee))
        names = offset_names()
        entry_needed = not (ends and p.entry_unless_offsets
                            and all(layout.offsets.get(names[i]) is not None for i in p.entry_unless_offsets))
        if p.entry and entry_needed:
            at = entry_site(gb, sym)
            if at is not None:
                sites.append(Site(at[0], p.entry, sym))
        if p.ret and not ends and (p.ret_unless is None or p.ret_unless not in found):
            ends = [Site(r, p.ret, sym, is_return=True) for r in ret_addresses(gb, sym)]
        sites += ends
    streaming = None
    if flow and grpc and any(i.startswith("grpc.") for i in ids):  # flow control and stream limits (issue 19)
        from gotel.receivers.go_ebpf.flowcontrol import F_FLOW_ON, flow_offsets, flow_sites, streaming_methods

        layout.flags |= F_FLOW_ON

        fsites, fids, lacks = flow_sites(gb)
        sites += fsites
        ids += fids
        if "grpc.flow.server_streaming" not in fids and "grpc.server.handle_stream" in ids:
            streaming = streaming_methods(gb)  # grpc >= 1.84: one processRPC for every kind of call
            if streaming is None:
                lacks.append("gotel.grpc.stream.age (server side: no processStreamingRPC, and no grpc.ServiceDesc "
                             "initialised in the binary's data)")
        lacks += [f"{x} (not in DWARF)" for x in flow_offsets(gb)[2]] if gb.has_dwarf else []
        if lacks:
            layout.notes.append("flow control: not available: " + "; ".join(lacks))
    if http and "http.server.serve" in ids:
        h2_call = h2_handler_call(gb)
        if h2_call is not None:
            sites.append(Site(h2_call, "http_server_start", H2_HANDLER))
            ids.append("http.server.h2_handler")
    if inject and "http.client.conn" in ids:
        _inject_sites(gb, layout, sites, ids)
    if not any(i != "runtime.newproc1" for i in ids):
        sites, ids = [], []
    if "http.server.serve" in ids:
        # the ServeHTTP entry probe also reads the incoming traceparent: named as inspect names it (whether the
        # header map can be read is the per-binary note, as for every other DWARF loss)
        ids.append("http.server.trace_context")
    return Plan(sites, layout, gb.go_version, gb.has_dwarf, ids, streaming)


INJECT_WRITE = "net/http.(*Request).write"
INJECT_HEADERS = "net/http.Header.writeSubset"


def _inject_sites(gb: GoBinary, layout: Layout, sites: list[Site], ids: list[str]) -> None:
    """traceparent injection into HTTP/1 client requests (inject_traceparent): (*Request).write's entry and
    Header.writeSubset's RETs, where DWARF gives every field written; else a note says why not."""
    from gotel.receivers.go_ebpf.layout import INJECT_SLOT

    names = offset_names()
    lacks = [names[i] for i in range(INJECT_SLOT, INJECT_SLOT + 4) if layout.offsets.get(names[i]) is None]
    entry = entry_site(gb, INJECT_WRITE) if gb.functions.get(INJECT_WRITE) is not None else None
    rets = ret_addresses(gb, INJECT_HEADERS) if gb.functions.get(INJECT_HEADERS) is not None else []
    if lacks or entry is None or not rets:
        why = ", ".join(lacks) if lacks else f"{INJECT_WRITE} or {INJECT_HEADERS} not found"
        layout.notes.append(f"inject_traceparent: not available in this binary ({why})")
        return
    sites.append(Site(entry[0], "http_inject_write", INJECT_WRITE))
    sites += [Site(r, "http_inject_ret", INJECT_HEADERS, is_return=True) for r in rets]
    ids.append("http.client.inject_traceparent")


# Go >= 1.27 hands an HTTP/2 stream to a handler through http2Handler.ServeHTTP, which calls the handler it
# wraps: serverHandler for net/http's own servers, but the user's handler for connections given to
# golang.org/x/net/http2's (*Server).ServeConn (h2c), which on Go 1.27 wraps net/http's HTTP/2.
H2_HANDLER = "net/http.http2Handler.ServeHTTP"
# x/net's ServeConn handing connections to net/http's HTTP/2 (x/net's go1.27 build files): where it is linked
XNET_WRAP = "golang.org/x/net/http2.(*serverConfig).ServeConnFunc"


def h2_handler_call(gb: GoBinary) -> int | None:
    """The one indirect call in http2Handler.ServeHTTP (`h.h.ServeHTTP(rw, req)`: rw's itab, rw, req in the
    registers serverHandler.ServeHTTP's entry has them), only where x/net's wrapping ServeConn is linked: this call is
    single-stepped (an indirect call is not emulated), so binaries that cannot need it do not pay for it."""
    f = gb.functions.get(H2_HANDLER)
    if f is None or gb.functions.get(XNET_WRAP) is None:
        return None
    from gotel.golang.disasm import decode

    off = gb.image.vaddr_to_offset(f.entry)
    calls = [a for a, _n, mnem, ops, _r in decode(bytes(gb.image.data[off:off + f.size]), f.entry, 4096)
             if mnem == "call" and ops.startswith("r")]
    return calls[0] if len(calls) == 1 else None


_EB = "go_ebpf"
_T = "google.golang.org/grpc/internal/transport"
_SPB = "google.golang.org/genproto/googleapis/rpc/status.Status"
_XH2 = "golang.org/x/net/http2"
for _spec in (
    # ids are the ones the agent's log names (layout.PROBES): `gotel inspect` and the log agree
    ProbeSpec("grpc.server.handle_stream", ("google.golang.org/grpc.(*Server).handleStream",), _EB,
              "gRPC server call start: method, deadline, addresses, stream id (entry; the span ends at WriteStatus)",
              module=GRPC, optional=True,
              offsets=(FieldRef(f"{_T}.Stream", "method", "rpc.method"),
                       FieldRef(f"{_T}.Stream", "ctx", "gotel.rpc.deadline.timeout"),
                       FieldRef("context.timerCtx", "deadline", "gotel.rpc.deadline.timeout"),
                       FieldRef(f"{_T}.http2Server", "remoteAddr|peer.Addr", "client.address"),
                       FieldRef("net.TCPAddr", "Port", "server.port"))),
    ProbeSpec("grpc.server.write_status", (f"{_T}.(*http2Server).WriteStatus", f"{_T}.(*http2Server).writeStatus"),
              _EB, "gRPC server status code and span end", module=GRPC, optional=True,
              offsets=(FieldRef("google.golang.org/grpc/internal/status.Status", "s", "rpc.response.status_code"),
                       FieldRef(_SPB, "Code", "rpc.response.status_code"))),
    ProbeSpec("grpc.server.operate_headers", (f"{_T}.(*http2Server).operateHeaders",), _EB,
              "incoming gRPC headers: traceparent", module=GRPC, optional=True,
              offsets=(FieldRef("golang.org/x/net/http2.MetaHeadersFrame", "Fields", "traceparent continuation"),)),
    ProbeSpec("grpc.client.new_stream", ("google.golang.org/grpc.newClientStream",), _EB,
              "gRPC client call start, unary and streaming (method is an argument: no offsets needed)",
              module=GRPC, optional=True,
              offsets=(FieldRef("context.timerCtx", "deadline", "gotel.rpc.deadline.timeout"),)),
    ProbeSpec("grpc.client.attempt", ("google.golang.org/grpc.(*clientStream).newAttemptLocked",), _EB,
              "gRPC client stream created: the call is followed by its clientStream from here (else newClientStream's RETs)",
              module=GRPC, optional=True),
    ProbeSpec("grpc.client.finish", ("google.golang.org/grpc.(*clientStream).finish",), _EB,
              "gRPC client call end with the real status (unary and streaming)", module=GRPC, optional=True,
              offsets=(FieldRef("google.golang.org/grpc/internal/status.Error", "e|s", "rpc.response.status_code"),
                       FieldRef(_SPB, "Code", "rpc.response.status_code"),
                       FieldRef("google.golang.org/grpc.clientStream", "attempt", "server.address"),
                       # renamed in grpc 1.71
                       FieldRef("google.golang.org/grpc.csAttempt", "t|transport", "server.address"),
                       FieldRef("google.golang.org/grpc.csAttempt", "s|transportStream", "server/client stitching"))),
    ProbeSpec("http.server.serve", ("net/http.serverHandler.ServeHTTP",), _EB,
              "HTTP server request (entry; ends at (*response).finishRequest, else at every RET)", optional=True,
              offsets=(FieldRef("net/http.Request", "Method", "http.request.method"),
                       FieldRef("net/url.URL", "Path", "url.path"),
                       FieldRef("net/http.response", "status", "http.response.status_code"))),
    ProbeSpec("http.client.roundtrip", ("net/http.(*Transport).roundTrip",), _EB, "HTTP client request",
              returns=True, optional=True,
              offsets=(FieldRef("net/http.Request", "Method", "http.request.method"),
                       FieldRef("net/url.URL", "Host", "url.full"),
                       FieldRef("net/http.Response", "StatusCode", "http.response.status_code"))),
    # ---- HTTP hops (issue 22)
    ProbeSpec("http.server.trace_context", ("net/http.serverHandler.ServeHTTP",), _EB,
              "incoming W3C traceparent/tracestate, read from http.Header with the map layout DWARF gives "
              "(classic buckets before Go 1.24, swiss groups after)", optional=True,
              offsets=(FieldRef("net/http.Request", "Header", "traceparent continuation (HTTP)"),
                       FieldRef("noalg.map.group[string][]string|noalg.map.bucket[string][]string", "slots|keys",
                                "traceparent continuation (HTTP)"),
                       FieldRef("internal/runtime/maps.Map|runtime.hmap", "dirPtr|buckets",
                                "traceparent continuation (HTTP)"))),
    ProbeSpec("http.server.conn", ("net/http.(*conn).serve",), _EB,
              "an accepted HTTP/1 connection: addresses and request order (server span -> client span)",
              optional=True,
              offsets=(FieldRef("net/http.conn", "rwc", "HTTP/1 stitching"),
                       FieldRef("net/http.response", "conn", "HTTP/1 stitching"),
                       FieldRef("net.netFD", "laddr", "HTTP/1 stitching"))),
    ProbeSpec("http.client.conn", ("net/http.(*persistConn).roundTrip",), _EB,
              "the HTTP/1 connection a client request goes out on, and its order there", optional=True,
              offsets=(FieldRef("net/http.persistConn", "conn", "HTTP/1 stitching"),
                       FieldRef("net/http.persistConn", "nwrite", "HTTP/1 stitching"))),
    ProbeSpec("http.server.h2_done", ("net/http.(*http2responseWriter).handlerDone",
                                      "net/http/internal/http2.(*responseWriter).handlerDone"), _EB,
              "HTTP/2 server span end and status; stream id and connection (stitching)", optional=True,
              offsets=(FieldRef("net/http.http2responseWriterState|net/http/internal/http2.responseWriterState",
                                "status", "http.response.status_code (HTTP/2)"),
                       FieldRef("net/http.http2stream|net/http/internal/http2.stream", "id", "HTTP/2 stitching"))),
    ProbeSpec("http.server.h2_conn", ("net/http.(*http2serverConn).serve",
                                      "net/http/internal/http2.(*serverConn).serve"), _EB,
              "a new HTTP/2 server connection: its cached addresses are dropped (stitching)", optional=True),
    ProbeSpec("http.client.h2_conn", ("net/http.(*http2ClientConn).readLoop",
                                      "net/http/internal/http2.(*ClientConn).readLoop"), _EB,
              "a new HTTP/2 client connection: its cached addresses are dropped (stitching)", optional=True),
    ProbeSpec("http.client.h2_headers", ("net/http.(*http2clientStream).encodeAndWriteHeaders",
                                         "net/http/internal/http2.(*clientStream).encodeAndWriteHeaders"), _EB,
              "the HTTP/2 stream a client request goes out on (stitching)", optional=True,
              offsets=(FieldRef("net/http.http2clientStream|net/http/internal/http2.clientStream", "ID",
                                "HTTP/2 stitching"),)),
    ProbeSpec("http.server.h2_handler", (XNET_WRAP,), _EB,
              "HTTP/2 server span start for streams of x/net's ServeConn (h2c) where x/net wraps net/http's "
              "HTTP/2 (Go >= 1.27), which skip serverHandler.ServeHTTP: the probe is on the one indirect call "
              f"in {H2_HANDLER} (single-stepped)", module="golang.org/x/net", optional=True),
    ProbeSpec("http.client.inject_traceparent", (INJECT_WRITE,), _EB,
              "inject_traceparent only (off by default): a traceparent appended to an HTTP/1 client request "
              "without one, in the connection's write buffer after its headers (Header.writeSubset's RETs)",
              optional=True, requires=("net/http.(*persistConn).roundTrip", INJECT_HEADERS), offsets_required=True,
              offsets=(FieldRef("net/http.persistConn", "bw", "traceparent injection"),
                       FieldRef("bufio.Writer", "n", "traceparent injection"))),
    # golang.org/x/net/http2 used directly (ConfigureServer, h2c, http2.Transport)
    ProbeSpec("http.server.h2x_start", (f"{_XH2}.(*serverConn).runHandler",), _EB,
              "HTTP/2 server span start for x/net's server (every stream, h2c too): method, path, peer, "
              "traceparent, stream id and connection (stitching)", optional=True,
              offsets=(FieldRef(f"{_XH2}.responseWriterState", "stream", "HTTP/2 server, x/net (stitching)"),
                       FieldRef(f"{_XH2}.stream", "id", "HTTP/2 server, x/net (stitching)"),
                       FieldRef(f"{_XH2}.serverConn", "conn", "HTTP/2 server, x/net (stitching)"))),
    ProbeSpec("http.server.h2x_done", (f"{_XH2}.(*responseWriter).handlerDone",), _EB,
              "HTTP/2 server span end and status (x/net)", optional=True,
              offsets=(FieldRef(f"{_XH2}.responseWriterState", "status",
                                "http.response.status_code (HTTP/2 server, x/net)"),)),
    ProbeSpec("http.server.h2x_conn", (f"{_XH2}.(*serverConn).serve",), _EB,
              "a new x/net HTTP/2 server connection: its cached addresses are dropped (stitching)", optional=True),
    ProbeSpec("http.client.h2x_roundtrip", (f"{_XH2}.(*Transport).roundTripOpt", f"{_XH2}.(*Transport).RoundTripOpt"),
              _EB, "HTTP client request through x/net's http2.Transport (when net/http's roundTrip is not under it)",
              returns=True, optional=True),
    ProbeSpec("http.client.h2x_conn", (f"{_XH2}.(*ClientConn).readLoop",), _EB,
              "a new x/net HTTP/2 client connection: its cached addresses are dropped (stitching)", optional=True),
    ProbeSpec("http.client.h2x_headers", (f"{_XH2}.(*clientStream).encodeAndWriteHeaders",), _EB,
              "the x/net HTTP/2 stream a client request goes out on (stitching)", optional=True,
              offsets=(FieldRef(f"{_XH2}.clientStream", "ID", "HTTP/2 client, x/net (stitching)"),
                       FieldRef(f"{_XH2}.ClientConn", "tconn", "HTTP/2 client, x/net (stitching)"))),
):
    register(_spec)

# flow control and stream limits (issue 19): the ids go_ebpf logs for them (flowcontrol.flow_sites)
_FLOW_DESC = {
    "grpc.flow.stream_quota": "a new client stream waiting for the connection's stream quota (MaxConcurrentStreams)",
    "grpc.flow.write_quota.client": "a client write waiting for its stream's write quota / flow-control window",
    "grpc.flow.write_quota.server": "a server write waiting for its stream's write quota / flow-control window",
    "grpc.flow.goaway_sent": "GOAWAY frames written", "grpc.flow.rst_sent": "RST_STREAM frames written",
    "grpc.flow.goaway_received": "GOAWAY frames received by a client",
    "grpc.flow.rst_received": "RST_STREAM frames received",
    "grpc.flow.early_abort": "a stream the server answered before any handler saw it (grpc >= 1.5x: "
                             "InTapHandle, bad headers; calls.dropped)",
    "grpc.flow.server_streaming": "a streaming RPC on the server (stream age; grpc < 1.84, later ones: the binary's "
                                  "grpc.ServiceDesc data)",
}
_FLOW_SYMBOLS: dict[str, tuple[str, ...]] = {"grpc.flow.stream_quota": (_flow.NEW_STREAM,),
                                             "grpc.flow.write_quota.client": _flow.WRITERS[0],
                                             "grpc.flow.write_quota.server": _flow.WRITERS[1]}
for _pid, _sym, _prog in _flow.FRAMES:
    _FLOW_SYMBOLS[_pid] = (*_FLOW_SYMBOLS.get(_pid, ()), _sym)
for _pid, _syms in _FLOW_SYMBOLS.items():
    register(ProbeSpec(_pid, _syms, _EB, _FLOW_DESC[_pid], module=GRPC, optional=True))
