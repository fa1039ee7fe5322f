"""Fixture traces shaped like a Go gRPC service's: a slow checkout that fails on a payment deadline,
a fast successful one, and a trace of another service."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.proto.trace.v1 import trace_pb2

from gotel.pdata.batch import Traces, attrs

S = trace_pb2.Span
MS = 1_000_000


def _span(ss: Any, tid: bytes, sid: bytes, parent: bytes, name: str, kind: int, start: int, dur: int,
          a: dict[str, Any], error: str | None = None) -> Any:
    s = ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=parent, name=name, kind=kind,  # type: ignore[arg-type]
                     start_time_unix_nano=start, end_time_unix_nano=start + dur)
    s.attributes.extend(attrs(a))
    if error is not None:
        s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        s.status.message = error
    else:
        s.status.code = trace_pb2.Status.STATUS_CODE_OK
    return s


def fixture_traces(now: int | None = None) -> tuple[Traces, dict[str, str]]:
    """The batch and {name: trace id hex} of its three traces."""
    now = now or time.time_ns()
    b = Traces()
    slow, fast, other = (bytes.fromhex(f"{i:032x}") for i in (0x4bf92f3577b34da6a3ce929d0e0e4736, 0xa1, 0xb2))
    t0 = now - 120 * 10**9

    co = b.msg.resource_spans.add()
    co.resource.attributes.extend(attrs({"service.name": "checkout", "service.namespace": "shop",
                                         "k8s.pod.name": "checkout-7", "process.executable.name": "checkout"}))
    ss = co.scope_spans.add()
    ss.scope.name = "gotel.go_ebpf"
    root = _span(ss, slow, b"\x00" * 7 + b"\x01", b"", "/shop.Cart/Checkout", S.SPAN_KIND_SERVER, t0, 1200 * MS,
                 {"rpc.system": "grpc", "rpc.method": "/shop.Cart/Checkout", "rpc.grpc.status_code": 4,
                  "rpc.grpc.deadline_ms": 1200, "network.peer.address": "10.0.0.9"},
                 error="context deadline exceeded")
    root.events.add(name="exception", time_unix_nano=t0 + 1199 * MS).attributes.extend(
        attrs({"exception.message": "rpc error: code = DeadlineExceeded"}))
    _span(ss, slow, b"\x00" * 7 + b"\x02", root.span_id, "/pay.Payments/Charge", S.SPAN_KIND_CLIENT, t0 + 5 * MS,
          1190 * MS, {"rpc.system": "grpc", "rpc.method": "/pay.Payments/Charge", "server.address": "payments",
                      "server.port": 50051, "rpc.grpc.status_code": 4}, error="DeadlineExceeded")
    fast_root = _span(ss, fast, b"\x00" * 7 + b"\x11", b"", "/shop.Cart/Checkout", S.SPAN_KIND_SERVER, t0 + 5 * 10**9,
                      40 * MS, {"rpc.system": "grpc", "rpc.method": "/shop.Cart/Checkout", "rpc.grpc.status_code": 0})
    link = fast_root.links.add(trace_id=slow, span_id=root.span_id)
    link.attributes.extend(attrs({"reason": "retry of"}))

    pay = b.msg.resource_spans.add()
    pay.resource.attributes.extend(attrs({"service.name": "payments", "k8s.pod.name": "payments-2"}))
    ps = pay.scope_spans.add()
    ps.scope.name = "gotel.go_ebpf"
    _span(ps, slow, b"\x00" * 7 + b"\x03", b"\x00" * 7 + b"\x02", "/pay.Payments/Charge", S.SPAN_KIND_SERVER,
          t0 + 8 * MS, 1185 * MS, {"rpc.system": "grpc", "rpc.method": "/pay.Payments/Charge",
                                   "rpc.grpc.status_code": 1}, error="context canceled")
    _span(ps, slow, b"\x00" * 7 + b"\x04", b"\x00" * 7 + b"\x03", "SELECT payments", S.SPAN_KIND_CLIENT,
          t0 + 10 * MS, 1100 * MS, {"db.system.name": "postgresql", "db.operation.name": "SELECT",
                                    "server.address": "pg", "server.port": 5432})
    _span(ps, other, b"\x00" * 7 + b"\x21", b"", "/pay.Payments/Refund", S.SPAN_KIND_SERVER, t0 + 9 * 10**9, 3 * MS,
          {"rpc.system": "grpc", "rpc.method": "/pay.Payments/Refund", "rpc.grpc.status_code": 0})
    return b, {"slow": slow.hex(), "fast": fast.hex(), "other": other.hex()}
