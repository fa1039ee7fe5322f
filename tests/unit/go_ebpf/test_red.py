"""Kernel-counted RED series (red.py, go_ebpf_red.h) carry the same metric names and labels as the series
the span path made before, so dashboards keep working: one call of each type, counted both ways."""

from __future__ import annotations

from typing import Any

import pytest

from gotel.pdata.batch import attr_dict
from gotel.receivers.go_ebpf.events import (
    _ADDR_AT,
    _FIXED,
    _PEER_AT,
    _S2_AT,
    _STRS_AT,
    _TAIL_AT,
    _TP_AT,
    DURATION_BOUNDS,
    E_ADDR,
    E_DEADLINE,
    E_NO_OFFSETS,
    E_NONSTATUS_ERR,
    E_STATUS,
    E_STREAM_ID,
    STR_LEN,
    T_GRPC_CLIENT,
    T_GRPC_SERVER,
    T_HTTP_CLIENT,
    T_HTTP_SERVER,
    TP_LEN,
    Assembler,
)
from gotel.receivers.go_ebpf.red import RED_BB, RED_KEY, RED_M, RED_NB, RED_VAL, SamplingConfig, keep_below
from tests.unit.go_ebpf.test_events import go_wall, rec


def red_key_of(r: bytes) -> bytes:
    """What red_add in go_ebpf_red.h puts in the key for this record."""
    f = _FIXED.unpack_from(r)
    typ, code, flags, lport, rport = f[3], f[9], f[10], f[12], f[13]
    lip, rip, liplen, riplen = r[_ADDR_AT:_ADDR_AT + 16], r[_ADDR_AT + 16:_ADDR_AT + 32], r[_ADDR_AT + 32], r[_ADDR_AT + 33]
    # the strings RED keys on are the same bytes for every type: method, then the two slots after it
    method, s2, tp = r[_STRS_AT:_S2_AT], r[_S2_AT:_TP_AT], r[_TP_AT:_TP_AT + TP_LEN]
    assert len(s2) == STR_LEN and _TAIL_AT < _PEER_AT
    if typ <= T_GRPC_CLIENT:
        srv = typ == T_GRPC_SERVER
        addr = flags & E_ADDR
        return RED_KEY.pack(f[2], typ, (liplen if srv else riplen) if addr else 0, (lport if srv else rport) if addr else 0,
                            code, flags & (E_STATUS | E_NONSTATUS_ERR | E_NO_OFFSETS | E_ADDR),
                            (lip if srv else rip) if addr else b"", b"", method, b"")
    s1 = (s2 if flags & E_STREAM_ID else b"") if typ == T_HTTP_SERVER else s2
    return RED_KEY.pack(f[2], typ, 0, 0, code, flags & (E_STATUS | E_NONSTATUS_ERR | E_NO_OFFSETS | E_STREAM_ID),
                        b"", method[:RED_M - 1], s1, tp)


def series(a: Assembler) -> dict[tuple[str, tuple[tuple[str, Any], ...]], int]:
    m = a.take_metrics()
    assert m is not None
    out = {}
    for rm in m.msg.resource_metrics:
        for sm in rm.scope_metrics:
            for x in sm.metrics:
                for dp in (x.histogram.data_points if x.HasField("histogram") else x.sum.data_points):
                    n = dp.count if x.HasField("histogram") else dp.as_int
                    out[(x.name, tuple(sorted(attr_dict(dp.attributes).items())))] = n
    return out


CASES = [
    rec(T_GRPC_SERVER, code=5, flags=E_STATUS | E_ADDR | E_STREAM_ID, lport=50051, rport=40000),
    rec(T_GRPC_CLIENT, code=4, flags=E_STATUS | E_ADDR | E_DEADLINE, lport=40000, rport=50051, end=80_000_000,
        dl=go_wall(10**18 + 50_000_000)),
    rec(T_GRPC_CLIENT, flags=E_NO_OFFSETS),
    rec(T_HTTP_SERVER, code=503, flags=E_STATUS | E_STREAM_ID, method=b"GET", msg=b"127.0.0.1:4000",
        path=b"GET /users/{id}", tp=b"example.test:8080"),
    rec(T_HTTP_SERVER, code=0, flags=E_STATUS, method=b"POST", path=b"/raw/path", tp=b"h"),
    rec(T_HTTP_CLIENT, code=404, flags=E_STATUS, method=b"GET", msg=b"svc:9000", path=b"/x", tp=b"http"),
    rec(T_HTTP_CLIENT, flags=E_NONSTATUS_ERR, method=b"PUT", msg=b"svc"),
]


@pytest.mark.parametrize("r", CASES)
def test_kernel_series_equal_the_span_paths(r: bytes) -> None:
    spans = Assembler()
    spans.add_process(42, {"process.pid": 42})
    assert spans.add(r, 10**18, 0.0)
    kernel = Assembler()
    kernel.kernel_metrics = True
    kernel.add_process(42, {"process.pid": 42})
    f = _FIXED.unpack_from(r)
    d = f[1] - f[0]
    b = [0] * RED_NB
    b[sum(1 for x in DURATION_BOUNDS if x * 1e9 < d)] = 1
    dl = bool(f[10] & E_DEADLINE)
    bb = [0] * RED_BB
    if dl:
        bb[-1] = 1  # 80 ms of a 50 ms budget: over 1.5
    val = (1, d, d + 1, d, *b, int(dl), 1_600_000 if dl else 0, *bb, int(dl), 0)
    kernel.fold_red(red_key_of(r), val, val)
    assert series(kernel) == series(spans)


def test_sampling_threshold() -> None:
    assert keep_below(0.0) == 0 and keep_below(1.0) == (1 << 32) - 1 and keep_below(0.01) == 42949672
    assert SamplingConfig().fraction == 1.0
    with pytest.raises(ValueError):
        SamplingConfig(fraction=1.5)
    assert RED_VAL.size == 8 * (4 + RED_NB + 2 + RED_BB + 2)
