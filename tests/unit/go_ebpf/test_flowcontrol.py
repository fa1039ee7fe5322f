"""Flow-control records (issue 19) without BPF: the record's layout against go_ebpf.c's struct fev, metrics per
record kind, and the join of a stream-quota wait with its client span (labels with the peer, span event)."""

from __future__ import annotations

import re
from pathlib import Path

from gotel.pdata.batch import attr_dict
from gotel.receivers.go_ebpf.events import (
    E_ADDR,
    E_STATUS,
    E_STREAM_ID,
    T_GRPC_CLIENT,
    T_GRPC_SERVER,
    Assembler,
)
from gotel.receivers.go_ebpf.flowcontrol import (
    DROPPED,
    FC_WAIT,
    FL_RECEIVED,
    FL_SENT,
    FL_SERVER,
    FL_SPAN,
    FLOW_RECORD,
    GOAWAY,
    QUOTA_WAIT,
    REFUSED,
    RESETS,
    STREAM_AGE,
    T_FLOW_EARLY,
    T_FLOW_GOAWAY,
    T_FLOW_QUOTA,
    T_FLOW_RST,
    T_FLOW_WRITE,
    FlowControl,
)
from tests.unit.go_ebpf.test_events import rec

SRC = Path(__file__).resolve().parents[3] / "bpf" / "go_ebpf.c"
SPAN = (7).to_bytes(8, "little")


def frec(typ: int, *, start: int = 1_000_000, end: int = 51_000_000, g: int = 0xC000, span: bytes = SPAN,
         code: int = 0, flags: int = 0, stream: int = 0, last: int = 0, method: bytes = b"/p.S/M",
         debug: bytes = b"") -> bytes:
    return FLOW_RECORD.pack(start, end, 42, typ, g, span, code, flags, stream, last, method, debug)


def test_record_size_matches_struct_fev() -> None:
    text = SRC.read_text()
    body = re.search(r"^struct fev \{(.*?)^\};", text, re.S | re.M)
    assert body
    sizes = {"u64": 8, "u32": 4}
    consts = {m[1]: int(m[2]) for m in re.finditer(r"^#define (\w+) (\d+)\b", text, re.M)}
    total = 0
    for m in re.finditer(r"(\w+)\s+\w+(?:\[(\w+)\])?;", body[1]):
        total += consts[m[2]] if m[1] == "char" else sizes[m[1]]
    assert total == FLOW_RECORD.size


def setup() -> tuple[Assembler, FlowControl]:
    a = Assembler(stitch_window=0.0)
    a.add_process(42, {"service.name": "x"})
    return a, FlowControl(a, event_threshold=0.01)


def series(a: Assembler, name: str) -> dict[tuple[tuple[str, object], ...], object]:
    st = a.procs[42]
    return {k[1]: v for k, v in {**st.hists, **st.counters}.items() if k[0] == name}


def test_quota_wait_joins_its_client_span() -> None:
    a, f = setup()
    # two returns of one wait (woken, quota taken again, woken): the last one counts
    assert f.add(frec(T_FLOW_QUOTA, end=21_000_000, flags=FL_SPAN), 0, 0.0)
    assert f.add(frec(T_FLOW_QUOTA, end=51_000_000, flags=FL_SPAN), 0, 0.0)
    assert a.add(rec(T_GRPC_CLIENT, start=500_000, end=90_000_000, flags=E_STATUS | E_ADDR | E_STREAM_ID,
                     rport=443), 0, 0.0)
    ((labels, h),) = series(a, QUOTA_WAIT).items()
    assert dict(labels) == {"rpc.system": "grpc", "rpc.service": "p.S", "rpc.method": "M",
                            "server.address": "127.0.0.1", "server.port": 443}
    assert h.n == 1 and abs(h.total - 0.05) < 1e-9  # type: ignore[attr-defined]
    traces = a.take_traces(10.0, flush_all=True)
    assert traces is not None
    (span,) = [s for rs in traces.peek().resource_spans for ss in rs.scope_spans for s in ss.spans]
    (e,) = span.events
    assert e.name == "gotel.grpc.stream_quota.wait"
    assert abs(attr_dict(e.attributes)["gotel.grpc.stream_quota.wait"] - 0.05) < 1e-9
    assert not f.quota_waits


def test_short_wait_has_no_event_and_a_deadline_while_queued_is_a_drop() -> None:
    a, f = setup()
    f.add(frec(T_FLOW_QUOTA, end=2_000_000, code=2, flags=FL_SPAN), 0, 0.0)  # 1 ms, ended by the context
    a.add(rec(T_GRPC_CLIENT, code=4, flags=E_STATUS), 0, 0.0)
    traces = a.take_traces(10.0, flush_all=True)
    assert traces is not None
    assert not [e for rs in traces.peek().resource_spans for ss in rs.scope_spans for s in ss.spans for e in s.events]
    assert list(series(a, DROPPED).values()) == [1]
    assert dict(next(iter(series(a, DROPPED)))) == {"gotel.grpc.drop.reason": "stream_quota_deadline",
                                                    "gotel.grpc.side": "client"}


def test_unjoined_quota_wait_is_observed_after_a_while() -> None:
    a, f = setup()
    f.add(frec(T_FLOW_QUOTA, flags=FL_SPAN), 0, 0.0)
    f.expire(1.0, 0)
    assert not series(a, QUOTA_WAIT)
    f.expire(10.0, 0)
    ((labels, _h),) = series(a, QUOTA_WAIT).items()
    assert dict(labels)["rpc.method"] == "M" and "server.port" not in dict(labels)


def test_write_waits_resets_refusals_and_goaways() -> None:
    a, f = setup()
    f.add(frec(T_FLOW_WRITE, code=1, flags=FL_SPAN | FL_SERVER), 0, 0.0)
    f.add(frec(T_FLOW_WRITE, code=3, flags=FL_SPAN), 0, 0.0)
    windows = {dict(k)["gotel.grpc.flow_control.window"]: dict(k)["gotel.grpc.side"] for k in series(a, FC_WAIT)}
    assert windows == {"stream": "server", "write_quota": "client"}
    f.add(frec(T_FLOW_RST, code=7, flags=FL_SENT, stream=3), 0, 0.0)
    f.add(frec(T_FLOW_RST, code=8, flags=FL_RECEIVED, stream=5), 0, 0.0)
    resets = {(dict(k)["gotel.grpc.http2.error_code"], dict(k)["gotel.grpc.direction"]): v
              for k, v in series(a, RESETS).items()}
    assert resets == {("REFUSED_STREAM", "sent"): 1, ("CANCEL", "received"): 1}
    assert list(series(a, REFUSED).values()) == [1]
    assert dict(next(iter(series(a, DROPPED)))) == {"gotel.grpc.drop.reason": "refused_stream",
                                                    "gotel.grpc.side": "server"}
    f.add(frec(T_FLOW_GOAWAY, code=11, flags=FL_SENT, debug=b"too_many_pings"), 0, 0.0)
    f.add(frec(T_FLOW_GOAWAY, code=0, flags=FL_RECEIVED, debug=b"\x01\x02"), 0, 0.0)
    got = {tuple(v for _, v in k): n for k, n in series(a, GOAWAY).items()}
    assert got == {("ENHANCE_YOUR_CALM", "too_many_pings", "sent"): 1, ("NO_ERROR", "<binary>", "received"): 1}


def test_bad_and_unknown_process_records_are_counted() -> None:
    a, f = setup()
    assert not f.add(b"\0" * 10, 0, 0.0) and f.bad == 1
    assert f.add(FLOW_RECORD.pack(0, 0, 99, T_FLOW_RST, 0, SPAN, 0, 0, 0, 0, b"", b""), 0, 0.0)
    assert a.unknown_process == 1


def test_streams_answered_before_a_handler_are_drops_by_whether_they_were_reset() -> None:
    a, f = setup()
    f.add(frec(T_FLOW_EARLY, code=1, flags=FL_SENT | FL_SERVER, stream=3), 0, 0.0)
    f.add(frec(T_FLOW_EARLY, code=1, flags=FL_SENT | FL_SERVER, stream=5), 0, 0.0)
    f.add(frec(T_FLOW_EARLY, code=0, flags=FL_SENT | FL_SERVER, stream=7), 0, 0.0)
    got = {dict(k)["gotel.grpc.drop.reason"]: n for k, n in series(a, DROPPED).items()}
    assert got == {"reset_before_headers": 2, "rejected_before_handler": 1}
    assert not series(a, RESETS)  # the RST_STREAM itself is counted where it is written


def test_server_stream_age_from_the_binarys_streaming_methods() -> None:
    """grpc >= 1.84: no E_STREAMING on server calls; the methods the binary declares streaming say it."""
    a, f = setup()
    a.add(rec(T_GRPC_SERVER, start=0, end=2_000_000_000, flags=E_STATUS, method=b"/p.S/Watch"), 0, 0.0)
    assert not series(a, STREAM_AGE)
    f.set_streaming(42, frozenset({("p.S", "Watch")}))
    f.set_streaming(99, frozenset({("p.S", "M")}))  # not a known process: forgotten at the next call
    a.add(rec(T_GRPC_SERVER, start=0, end=2_000_000_000, flags=E_STATUS, method=b"/p.S/Watch"), 0, 0.0)
    a.add(rec(T_GRPC_SERVER, start=0, end=1_000_000_000, flags=E_STATUS, method=b"/p.S/M"), 0, 0.0)
    ((labels, h),) = series(a, STREAM_AGE).items()
    assert dict(labels)["rpc.method"] == "Watch" and dict(labels)["gotel.grpc.side"] == "server"
    assert h.n == 1 and abs(h.total - 2.0) < 1e-9  # type: ignore[attr-defined]
    f.set_streaming(42, None)
    assert 99 not in f.streaming
