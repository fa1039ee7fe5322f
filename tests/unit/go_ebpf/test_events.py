"""go_ebpf's user-space half without BPF: record decoding, Go time conversion, span attributes, and how
traces are joined (traceparent continuation, cross-process stitching)."""

from __future__ import annotations

import datetime
import struct

from gotel.pdata.batch import attr_dict
from gotel.receivers.go_ebpf.events import (
    CODES,
    E_ADDR,
    E_DEADLINE,
    E_HTTP_CONN,
    E_HTTP_TP,
    E_HTTP_TS,
    E_PARENT,
    E_STATUS,
    E_STREAM_ID,
    GRPC_RECORD,
    HTTP_CLIENT_RECORD,
    HTTP_SERVER_RECORD,
    T_GRPC_CLIENT,
    T_GRPC_SERVER,
    T_HTTP_CLIENT,
    T_HTTP_SERVER,
    TS_LEN,
    Assembler,
    decode,
    go_time_unix_ns,
    parse_traceparent,
)

LO = b"\x7f\x00\x00\x01" + bytes(12)


def go_wall(unix_ns: int) -> tuple[int, int]:
    """time.Now()-style {wall, ext} with the monotonic bit, as Go stores it."""
    sec, nsec = divmod(unix_ns, 1_000_000_000)
    wall_sec = sec + 62135596800 - 59453308800  # unix -> seconds since 1885
    return (1 << 63) | (wall_sec << 30) | nsec, 123456789


def rec(typ: int, *, start: int = 1_000, end: int = 2_000, span: int = 7, parent: int = 0, trace: tuple[int, int] = (1, 2),
        code: int = 0, flags: int = 0, stream: int = 1, lport: int = 0, rport: int = 0, method: bytes = b"/p.S/M",
        msg: bytes = b"", tp: bytes = b"", dl: tuple[int, int] = (0, 0), path: bytes = b"", in_tp: bytes = b"",
        ts: bytes = b"", pid: int = 42) -> bytes:
    """A ring record as go_ebpf.c's emit writes it for this type. msg: gRPC status message, HTTP server
    RemoteAddr, HTTP client host; tp: gRPC incoming traceparent, HTTP server Host, HTTP client scheme;
    ts: an HTTP call's tracestate, after the record."""
    fixed = (start, end, pid, typ, span, parent, trace[0], trace[1], dl[0], dl[1], code, flags, stream, lport, rport,
             LO, LO, 4, 4, 0, 0)
    if typ <= T_GRPC_CLIENT:
        return GRPC_RECORD.pack(*fixed, method, msg, tp)
    if typ == T_HTTP_SERVER:
        r = HTTP_SERVER_RECORD.pack(*fixed, method, path, tp, in_tp, msg)
    else:
        r = HTTP_CLIENT_RECORD.pack(*fixed, method, msg, tp, path)
    return r + (ts.ljust(TS_LEN, b"\0") if ts else b"")


def test_go_time_to_unix() -> None:
    t = 1_795_376_115_511_545_503
    assert go_time_unix_ns(*go_wall(t)) == t
    # without the monotonic bit, ext holds seconds since year 1
    d = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    secs = int(d.timestamp()) + 62135596800
    assert go_time_unix_ns(5, secs) == int(d.timestamp()) * 1_000_000_000 + 5


def test_traceparent_parsing() -> None:
    assert parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331"))
    for bad in ("", "00-zz-b7ad6b7169203331-01", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01"):
        assert parse_traceparent(bad) is None


def test_traceparent_parsing_from_record_bytes() -> None:
    """The BPF side copies the header's 55 bytes into a NUL-padded field; a later version may extend it."""
    raw = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + bytes(1)
    assert parse_traceparent(raw) == (bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
                                      bytes.fromhex("b7ad6b7169203331"))
    assert parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz") is not None
    for bad in (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz",
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
                b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
                b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"):
        assert parse_traceparent(bad) is None, bad


def test_decode_keeps_ids_as_written_and_short_records_are_refused() -> None:
    r = rec(T_GRPC_CLIENT, span=7, parent=9, trace=(1, 2), flags=E_STATUS | E_PARENT, lport=40000, rport=50051)
    c = decode(r, 10)
    assert c is not None
    assert c.span_id == (7).to_bytes(8, "little") and c.parent_span_id == (9).to_bytes(8, "little")
    assert c.trace == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    assert (c.method, c.msg, c.lip, c.lport, c.rport, c.start_ns) == ("/p.S/M", "", "127.0.0.1", 40000, 50051, 1_010)
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    assert decode(r[:-1], 0) is None and not a.add(r[:-1], 0, 0.0) and not a.pending


def test_each_type_reads_its_own_fields_and_http_records_are_longer() -> None:
    """Slots are shared between types (go_ebpf.c struct gev): a record is decoded by its type. A gRPC record
    is shorter than an HTTP one, and an HTTP record cut to a gRPC record's length is refused."""
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    srv = rec(T_HTTP_SERVER, flags=E_STATUS | E_HTTP_TP, code=200, method=b"GET", path=b"/items/7",
              tp=b"example.test:8080", msg=b"[::1]:40000", in_tp=tp)
    cli = rec(T_HTTP_CLIENT, flags=E_STATUS, code=200, method=b"POST", msg=b"svc:9000", tp=b"https", path=b"/x")
    g = rec(T_GRPC_SERVER, flags=E_STATUS, code=5, method=b"/p.S/M", msg=b"no such item", tp=tp)
    assert len(g) < len(srv) == len(cli) <= 512
    c = decode(srv, 0)
    assert c is not None and (c.method, c.path, c.tp, c.msg) == ("GET", "/items/7", "example.test:8080", "[::1]:40000")
    c = decode(cli, 0)
    assert c is not None and (c.method, c.msg, c.tp, c.path) == ("POST", "svc:9000", "https", "/x")
    c = decode(g, 0)
    assert c is not None and (c.method, c.msg, c.tp, c.path) == ("/p.S/M", "no such item", tp.decode(), "")
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    assert decode(srv[:len(g)], 0) is None and not a.add(srv[:len(g)], 0, 0.0) and not a.pending
    for sid, r in ((1, srv), (2, cli), (3, g)):
        assert a.add(r[:24] + sid.to_bytes(8, "little") + r[32:], 0, 0.0)  # span_id at 24
    out = {k: attr_dict(s.attributes) for k, s in spans(a).items()}  # type: ignore[attr-defined]
    assert out[1]["url.path"] == "/items/7" and out[1]["client.address"] == "::1" and out[1]["client.port"] == 40000
    assert out[1]["server.address"] == "example.test" and out[1]["server.port"] == 8080
    assert out[2]["url.full"] == "https://svc:9000/x" and out[2]["server.port"] == 9000
    assert out[3]["rpc.grpc.status_message"] == "no such item"


def test_an_http_servers_traceparent_and_tracestate_make_no_new_shape() -> None:
    """An HTTP server's incoming traceparent (in its record) and tracestate (after it) vary per call; its peer
    address is part of the span's attributes."""
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    for i in range(3):
        tp = f"00-{i + 1:032x}-{i + 1:016x}-01".encode()
        assert a.add(rec(T_HTTP_SERVER, span=10 + i, trace=(i, 9), flags=E_STATUS | E_HTTP_TP | E_HTTP_TS, code=200, method=b"GET",
                         path=b"/a", msg=b"127.0.0.1:4000", in_tp=tp, ts=f"k={i}".encode()), 0, 0.0)
    assert len(a._shapes) == 1
    assert a.add(rec(T_HTTP_SERVER, span=20, flags=E_STATUS, code=200, method=b"GET", path=b"/a",
                     msg=b"127.0.0.1:4001"), 0, 0.0)
    assert len(a._shapes) == 2
    out = spans(a)
    for i in range(3):
        s = out[10 + i]
        assert s.trace_state == f"k={i}" and s.trace_id == (i + 1).to_bytes(16, "big")  # type: ignore[attr-defined]
        assert s.parent_span_id == (i + 1).to_bytes(8, "big")  # type: ignore[attr-defined]


def spans(a: Assembler) -> dict[int, object]:
    b = a.take_traces(1e9, flush_all=True)
    assert b is not None
    return {int.from_bytes(s.span_id, "little"): s for rs in b.msg.resource_spans for ss in rs.scope_spans for s in ss.spans}


def test_server_span_attributes_and_error_semantics() -> None:
    a = Assembler(legacy_status_code=True)
    a.add_process(42, {"service.name": "svc", "process.pid": 42})
    dl = go_wall(1_000 + 50_000_000 + 10**18)
    for i, code in enumerate((0, 5, 13)):
        assert a.add(rec(T_GRPC_SERVER, span=10 + i, code=code, flags=E_STATUS | E_ADDR | E_DEADLINE,
                            lport=50051, rport=40000, msg=b"why", dl=dl), 10**18, 0.0)
    out = spans(a)
    ok, notfound, internal = (attr_dict(out[i].attributes) for i in (10, 11, 12))  # type: ignore[attr-defined]
    assert ok["rpc.response.status_code"] == "OK" and ok["rpc.grpc.status_code"] == 0
    assert ok["rpc.service"] == "p.S" and ok["rpc.method"] == "M" and ok["server.port"] == 50051
    assert ok["client.address"] == "127.0.0.1" and ok["client.port"] == 40000
    assert abs(ok["gotel.rpc.deadline.timeout"] - 0.05) < 1e-6
    assert out[11].status.code == 0  # type: ignore[attr-defined]  # NOT_FOUND is no server error
    assert out[12].status.code == 2 and internal["error.type"] == "INTERNAL"  # type: ignore[attr-defined]
    assert notfound["rpc.grpc.status_message"] == "why"
    assert CODES[4] == "DEADLINE_EXCEEDED" and CODES[1] == "CANCELLED" and len(CODES) == 17


TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TP_TRACE, TP_SPAN = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), "b7ad6b7169203331"


def server_rec() -> bytes:
    """Span 20 of pid 43: a gRPC server call on :50051 from :40000, stream 3, with the caller's traceparent."""
    srv = bytearray(rec(T_GRPC_SERVER, span=20, trace=(5, 6), flags=E_STATUS | E_ADDR | E_STREAM_ID, stream=3,
                        lport=50051, rport=40000, tp=TP))
    struct.pack_into("<I", srv, 16, 43)  # pid 43
    return bytes(srv)


def client_rec() -> bytes:
    """Span 30 of pid 42: the client call that server_rec() served."""
    return rec(T_GRPC_CLIENT, span=30, trace=(8, 9), flags=E_STATUS | E_ADDR | E_STREAM_ID, stream=3, lport=40000,
               rport=50051)


def two_processes(window: float) -> Assembler:
    a = Assembler(stitch_window=window)
    a.add_process(42, {"process.pid": 42})
    a.add_process(43, {"process.pid": 43})
    return a


def only_span(b: object) -> object:
    (s,) = [s for rs in b.msg.resource_spans for ss in rs.scope_spans for s in ss.spans]  # type: ignore[attr-defined]
    return s


def test_stitching_and_traceparent_across_processes() -> None:
    """caller SDK span (traceparent) -> client span (pid 42) -> server span (pid 43) -> its client child."""
    a = two_processes(0.1)
    child = bytearray(rec(T_GRPC_CLIENT, span=21, parent=20, trace=(5, 6), flags=E_STATUS | E_PARENT))
    struct.pack_into("<I", child, 16, 43)
    for r in (bytes(child), server_rec(), client_rec()):  # the server side finishes first
        assert a.add(r, 0, 0.0)
    out = spans(a)
    assert {s.trace_id for s in out.values()} == {TP_TRACE}  # type: ignore[attr-defined]
    assert out[30].parent_span_id.hex() == TP_SPAN  # type: ignore[attr-defined]
    assert int.from_bytes(out[20].parent_span_id, "little") == 30  # type: ignore[attr-defined]
    assert int.from_bytes(out[21].parent_span_id, "little") == 20  # type: ignore[attr-defined]


def test_a_poll_between_server_and_client_records_keeps_the_caller_as_parent() -> None:
    """The traced caller's client record arrives a poll after the server's: the server span must still be
    the client span's child, not its traceparent's (a CI run under load caught the earlier greedy fallback)."""
    a = two_processes(0.5)
    assert a.add(server_rec(), 0, 10.0)
    assert a.take_traces(10.1) is None  # not due yet; nothing decided
    assert a.add(client_rec(), 0, 10.2)
    s20 = only_span(a.take_traces(10.6))  # the server span is due, the client's not yet
    assert int.from_bytes(s20.parent_span_id, "little") == 30  # type: ignore[attr-defined]
    out = spans(a)
    assert s20.trace_id == TP_TRACE and out[30].trace_id == TP_TRACE  # type: ignore[attr-defined]
    assert out[30].parent_span_id.hex() == TP_SPAN  # type: ignore[attr-defined]


def test_a_server_span_without_a_traced_caller_continues_its_traceparent_once_due() -> None:
    a = two_processes(0.5)
    assert a.add(server_rec(), 0, 10.0)
    assert a.take_traces(10.1) is None
    s20 = only_span(a.take_traces(10.6))
    assert s20.trace_id == TP_TRACE and s20.parent_span_id.hex() == TP_SPAN  # type: ignore[attr-defined]


def test_metrics_with_exemplars_and_deadline_counts() -> None:
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    dl = go_wall(10**18 + 1_000 + 50_000_000)
    assert a.add(rec(T_GRPC_CLIENT, end=1_000 + 60_000_000, code=4, flags=E_STATUS | E_DEADLINE, dl=dl), 10**18, 0.0)
    m = a.take_metrics()
    assert m is not None
    by = {x.name: x for rm in m.msg.resource_metrics for sm in rm.scope_metrics for x in sm.metrics}
    h = by["rpc.client.call.duration"].histogram.data_points[0]
    assert h.count == 1 and abs(h.sum - 0.059999) < 1e-3 and by["rpc.client.call.duration"].unit == "s"
    assert h.exemplars[0].span_id == (7).to_bytes(8, "little") and len(h.exemplars[0].trace_id) == 16
    assert by["gotel.rpc.client.deadline_exceeded"].sum.data_points[0].as_int == 1
    bu = by["gotel.rpc.client.deadline.budget_used"].histogram.data_points[0]
    assert abs(bu.sum - 1.2) < 0.01


def test_incoming_traceparents_share_one_span_shape() -> None:
    """SDK callers send a new traceparent per call: each span continues its own, and the encoded name,
    attributes and status are still built once (a new shape per call cost ~25 us a span)."""
    a = Assembler(stitch_window=0.0)
    a.add_process(42, {"process.pid": 42})
    for i in range(50):
        tp = f"00-{i + 1:032x}-{i + 1:016x}-01".encode()
        assert a.add(rec(T_GRPC_SERVER, span=100 + i, trace=(9, i), flags=E_STATUS | E_ADDR, lport=50051,
                            rport=40000, tp=tp), 0, 0.0)
    assert len(a._shapes) == 1
    out = spans(a)
    for i in range(50):
        s = out[100 + i]
        assert s.trace_id == (i + 1).to_bytes(16, "big")  # type: ignore[attr-defined]
        assert s.parent_span_id == (i + 1).to_bytes(8, "big")  # type: ignore[attr-defined]
        assert attr_dict(s.attributes)["rpc.method"] == "M"  # type: ignore[attr-defined]


def test_a_reused_pid_gets_its_own_metric_series() -> None:
    """Calls of one shape share their histogram lookup; a new process under an old pid still counts apart."""
    a = Assembler()
    a.add_process(42, {"service.name": "old", "process.pid": 42})
    for _ in range(3):
        assert a.add(rec(T_GRPC_SERVER, flags=E_STATUS), 0, 0.0)
    a.remove_process(42)
    a.add_process(42, {"service.name": "new", "process.pid": 42})
    assert a.add(rec(T_GRPC_SERVER, flags=E_STATUS), 0, 0.0)
    m = a.take_metrics()
    assert m is not None
    counts = {attr_dict(rm.resource.attributes)["service.name"]: x.histogram.data_points[0].count
              for rm in m.msg.resource_metrics for sm in rm.scope_metrics for x in sm.metrics
              if x.name == "rpc.server.call.duration"}
    assert counts == {"new": 1}


def test_deadline_exceeded_is_the_callers_own_and_propagated_is_told_apart() -> None:
    """DEADLINE_EXCEEDED that arrives with time left is a deadline further down that ran out: its own
    attribute and count, never `gotel.rpc.deadline.exceeded`; exceeded means no time left at return."""
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    base = 10**18
    own = go_wall(base + 1_000 + 50_000_000)  # 50 ms budget, ends at 60 ms: its own deadline passed
    far = go_wall(base + 1_000 + 2_000_000_000)  # 2 s budget, ends at 60 ms with DEADLINE_EXCEEDED
    assert a.add(rec(T_GRPC_CLIENT, span=1, end=1_000 + 60_000_000, code=4, flags=E_STATUS | E_DEADLINE, dl=own),
                 base, 0.0)
    assert a.add(rec(T_GRPC_CLIENT, span=2, end=1_000 + 60_000_000, code=4, flags=E_STATUS | E_DEADLINE, dl=far),
                 base, 0.0)
    assert a.add(rec(T_GRPC_CLIENT, span=3, end=1_000 + 60_000_000, code=0, flags=E_STATUS | E_DEADLINE, dl=far),
                 base, 0.0)
    out = {k: attr_dict(s.attributes) for k, s in spans(a).items()}  # type: ignore[attr-defined]
    assert out[1]["gotel.rpc.deadline.exceeded"] is True and "gotel.rpc.deadline.propagated" not in out[1]
    assert out[2]["gotel.rpc.deadline.exceeded"] is False and out[2]["gotel.rpc.deadline.propagated"] is True
    assert out[2]["rpc.response.status_code"] == "DEADLINE_EXCEEDED" and out[2]["gotel.rpc.deadline.remaining"] > 1.9
    assert out[3]["gotel.rpc.deadline.exceeded"] is False and "gotel.rpc.deadline.propagated" not in out[3]
    m = a.take_metrics()
    assert m is not None
    by = {x.name: x for rm in m.msg.resource_metrics for sm in rm.scope_metrics for x in sm.metrics}
    assert by["gotel.rpc.client.deadline_exceeded"].sum.data_points[0].as_int == 1
    assert by["gotel.rpc.client.deadline_propagated"].sum.data_points[0].as_int == 1


# ---- HTTP hops (issue 22)

def http_rec(typ: int, *, span: int, pid: int, seq: int, lport: int, rport: int, start: int, end: int,
             trace: tuple[int, int] = (1, 2), flags: int = 0, parent: int = 0, tp: bytes = b"",
             ts: bytes = b"") -> bytes:
    """An HTTP record with its connection (E_HTTP_CONN: addresses, and seq = order or stream id), its
    incoming traceparent and, after it, its tracestate."""
    return rec(typ, start=start, end=end, span=span, parent=parent, trace=trace, code=200,
               flags=flags | E_STATUS | E_HTTP_CONN | (E_HTTP_TP if tp else 0) | (E_HTTP_TS if ts else 0),
               stream=seq, lport=lport, rport=rport, method=b"GET", in_tp=tp, ts=ts, pid=pid)


def test_http_server_joins_the_client_span_of_its_connection_and_order() -> None:
    a = two_processes(0.1)
    for seq in (1, 2):  # two requests on one keep-alive connection, :40000 -> :8080
        t0 = seq * 1000
        assert a.add(http_rec(T_HTTP_SERVER, span=20 + seq, pid=43, seq=seq, lport=8080, rport=40000, start=t0 + 10,
                              end=t0 + 50, trace=(5, seq)), 0, 0.0)
        assert a.add(http_rec(T_HTTP_CLIENT, span=30 + seq, pid=42, seq=seq, lport=40000, rport=8080, start=t0,
                              end=t0 + 60, trace=(8, seq)), 0, 0.0)
    out = spans(a)
    for seq in (1, 2):
        assert int.from_bytes(out[20 + seq].parent_span_id, "little") == 30 + seq  # type: ignore[attr-defined]
        assert out[20 + seq].trace_id == out[30 + seq].trace_id  # type: ignore[attr-defined]


def test_a_stale_client_span_of_a_reused_port_is_not_a_parent() -> None:
    """A fresh connection got the port of an earlier one: the earlier client span (ended before this server
    span began) must not parent it; the right client record, a poll later, does."""
    a = two_processes(0.5)
    assert a.add(http_rec(T_HTTP_CLIENT, span=31, pid=42, seq=1, lport=40000, rport=8080, start=0, end=100), 0, 0.0)
    a.take_traces(1.0)
    assert a.add(http_rec(T_HTTP_SERVER, span=22, pid=43, seq=1, lport=8080, rport=40000, start=5000, end=5050,
                          tp=TP, ts=b"k=v"), 0, 2.0)
    assert a.take_traces(2.1) is None  # not due; the stale entry was not taken
    assert a.add(http_rec(T_HTTP_CLIENT, span=32, pid=42, seq=1, lport=40000, rport=8080, start=4990, end=5060), 0, 2.2)
    out = spans(a)
    assert int.from_bytes(out[22].parent_span_id, "little") == 32  # type: ignore[attr-defined]
    # the traceparent the caller's SDK sent parents the client span, with its tracestate
    assert out[32].parent_span_id.hex() == TP_SPAN and out[32].trace_state == "k=v"  # type: ignore[attr-defined]
    assert out[22].trace_id == TP_TRACE and out[22].trace_state == ""  # type: ignore[attr-defined]


def test_http_traceparent_and_tracestate_continued_and_children_wait_for_it() -> None:
    """An untraced SDK caller: the server span continues its traceparent once due; a call made while serving
    (ended first) waits for that, and leaves with the continued trace id."""
    a = two_processes(0.5)
    assert a.add(http_rec(T_HTTP_CLIENT, span=41, pid=43, seq=1, lport=41000, rport=9090, start=20, end=40,
                          trace=(5, 6), flags=E_PARENT, parent=20), 0, 10.0)
    assert a.add(http_rec(T_HTTP_SERVER, span=20, pid=43, seq=1, lport=8080, rport=40000, start=10, end=50,
                          trace=(5, 6), tp=TP, ts=b"rojo=1"), 0, 10.2)
    assert a.take_traces(10.6) is None  # the child is due, its server span is not: it waits
    out = spans(a)
    assert out[20].trace_id == TP_TRACE and out[20].parent_span_id.hex() == TP_SPAN  # type: ignore[attr-defined]
    assert out[20].trace_state == "rojo=1"  # type: ignore[attr-defined]
    assert out[41].trace_id == TP_TRACE  # type: ignore[attr-defined]


def test_loopback_connections_join_only_inside_one_network_namespace() -> None:
    """127.0.0.1:40000 -> 127.0.0.1:8080 exists in every pod's namespace: never joined across them."""
    for same in (True, False):
        a = Assembler(stitch_window=0.1)
        a.add_process(42, {"process.pid": 42}, netns=1)
        a.add_process(43, {"process.pid": 43}, netns=1 if same else 2)
        assert a.add(http_rec(T_HTTP_SERVER, span=21, pid=43, seq=1, lport=8080, rport=40000, start=10, end=50,
                              trace=(5, 1)), 0, 0.0)
        assert a.add(http_rec(T_HTTP_CLIENT, span=31, pid=42, seq=1, lport=40000, rport=8080, start=0, end=60,
                              trace=(8, 1)), 0, 0.0)
        out = spans(a)
        assert (int.from_bytes(out[21].parent_span_id, "little") == 31) == same  # type: ignore[attr-defined]


def test_spans_leave_when_due_whatever_order_their_records_came_in() -> None:
    """Due spans are found as a prefix of the pending list while records come in time order; a record
    stamped earlier than the one before it must still leave on time, none twice, none held back."""
    a = Assembler(stitch_window=0.5)
    a.add_process(42, {"process.pid": 42})
    for i, now in enumerate((10.0, 10.1, 10.2)):  # in order
        assert a.add(rec(T_GRPC_CLIENT, span=100 + i, flags=E_STATUS), 0, now)
    b = a.take_traces(10.65)
    assert b is not None and b.item_count() == 2  # 10.0 and 10.1 are due, 10.2 is not
    assert a.add(rec(T_GRPC_CLIENT, span=200, flags=E_STATUS), 0, 11.0)
    assert a.add(rec(T_GRPC_CLIENT, span=201, flags=E_STATUS), 0, 9.0)  # stamped before the one above
    got = {int.from_bytes(s.span_id, "little") for s in only_spans(a.take_traces(10.75))}
    assert got == {102, 201}
    assert {int.from_bytes(s.span_id, "little") for s in only_spans(a.take_traces(11.5))} == {200}
    assert a.take_traces(99.0) is None and not a.pending


def only_spans(b: object) -> list[object]:
    assert b is not None
    return [s for rs in b.msg.resource_spans for ss in rs.scope_spans for s in ss.spans]  # type: ignore[attr-defined]


def test_one_shape_with_and_without_per_call_fields() -> None:
    """Calls of one shape share its encoded fields; a call's own (deadline attributes, a parent) come with
    its span only, and every span parses with the same name, attributes and times as its record."""
    a = Assembler()
    a.add_process(42, {"process.pid": 42})
    dl = go_wall(10**18 + 1_000 + 50_000_000)
    assert a.add(rec(T_GRPC_CLIENT, span=1, end=5_000, flags=E_STATUS), 10**18, 0.0)
    assert a.add(rec(T_GRPC_CLIENT, span=2, end=6_000, flags=E_STATUS | E_DEADLINE, dl=dl), 10**18, 0.0)
    assert a.add(rec(T_GRPC_CLIENT, span=3, parent=9, end=7_000, flags=E_STATUS | E_PARENT), 10**18, 0.0)
    out = spans(a)
    assert len(a._shapes) == 1
    for sid, end in ((1, 5_000), (2, 6_000), (3, 7_000)):
        s = out[sid]
        assert s.name == "p.S/M" and s.kind == 3  # type: ignore[attr-defined]
        assert s.start_time_unix_nano == 10**18 + 1_000 and s.end_time_unix_nano == 10**18 + end  # type: ignore[attr-defined]
        assert attr_dict(s.attributes)["rpc.method"] == "M"  # type: ignore[attr-defined]
        assert len(s.trace_id) == 16  # type: ignore[attr-defined]
    assert "gotel.rpc.deadline.timeout" in attr_dict(out[2].attributes)  # type: ignore[attr-defined]
    assert "gotel.rpc.deadline.timeout" not in attr_dict(out[1].attributes)  # type: ignore[attr-defined]
    assert int.from_bytes(out[3].parent_span_id, "little") == 9 and not out[1].parent_span_id  # type: ignore[attr-defined]


def test_a_traceparent_gotel_injected_does_not_parent_the_client_span_on_itself() -> None:
    """inject_traceparent: the server's incoming traceparent names the traced caller's client span (its trace
    and span id, as exported); the client span keeps no parent, and both sides share the caller's trace."""
    a = two_processes(0.1)
    client_span = (30).to_bytes(8, "little").hex()
    client_trace = (8).to_bytes(8, "little").hex() + (9).to_bytes(8, "little").hex()
    injected = f"00-{client_trace}-{client_span}-01".encode()
    srv = bytearray(rec(T_GRPC_SERVER, span=20, trace=(5, 6), flags=E_STATUS | E_ADDR | E_STREAM_ID, stream=3,
                        lport=50051, rport=40000, tp=injected))
    struct.pack_into("<I", srv, 16, 43)
    for r in (bytes(srv), client_rec()):
        assert a.add(r, 0, 0.0)
    out = spans(a)
    assert out[30].parent_span_id == b""  # type: ignore[attr-defined]
    assert int.from_bytes(out[20].parent_span_id, "little") == 30  # type: ignore[attr-defined]
    assert {s.trace_id.hex() for s in out.values()} == {client_trace}  # type: ignore[attr-defined]
