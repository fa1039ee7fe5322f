"""A real OTLP/gRPC server built from the official opentelemetry-proto service stubs, for tests.

It records every request it receives, decoded, and can be told to answer with a status code (once, N
times or always; with google.rpc.RetryInfo if asked), to demand headers (auth), to answer a partial
success, to listen on a unix socket, and to use TLS.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lgrpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as ppb
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2_grpc as pgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

REJECTED_FIELD = {
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
    "logs": "rejected_log_records",
    "profiles": "rejected_profiles",
}


@dataclass
class Received:
    traces: list[tpb.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[mpb.ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[lpb.ExportLogsServiceRequest] = field(default_factory=list)
    profiles: list[ppb.ExportProfilesServiceRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    # every call, including refused ones: (monotonic time, signal, status answered)
    attempts: list[tuple[float, str, str]] = field(default_factory=list)

    def spans(self) -> list[Any]:
        return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def span_count(self) -> int:
        return len(self.spans())

    def log_records(self) -> list[Any]:
        return [x for r in self.logs for rl in r.resource_logs for sl in rl.scope_logs for x in sl.log_records]

    def metric_list(self) -> list[Any]:
        return [m for r in self.metrics for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]

    def profile_list(self) -> list[Any]:
        return [p for r in self.profiles for rp in r.resource_profiles for sp in rp.scope_profiles for p in sp.profiles]


def _wrong_length_id(kind: str, request: Any) -> str:
    """What a collector's pdata says when it decodes a request with a bad id: it refuses the whole
    request (TraceID 16 bytes, SpanID 8, or empty). Written here independently of gotel's check."""
    if kind != "traces":
        return ""
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if len(sp.trace_id) not in (0, 16):
                    return "length of TraceID must be 16"
                if len(sp.span_id) not in (0, 8) or len(sp.parent_span_id) not in (0, 8):
                    return "length of SpanID must be 8"
    return ""


@dataclass
class Failure:
    code: grpc.StatusCode
    retry_after: float | None = None
    times: int | None = None  # None: always
    message: str = "told to fail"


class OTLPGrpcSink:
    """Start with .start(); .address is host:port (or unix:PATH). .fail_with(code) makes it answer errors."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        require_headers: dict[str, str] | None = None,
        max_recv_mib: int = 64,
        strict_ids: bool = False,
    ) -> None:
        self.received = Received()
        self.strict_ids = strict_ids
        self._lock = threading.Lock()
        self._failure: Failure | None = None
        self._partial: tuple[int, str] | None = None
        self.require_headers = {k.lower(): v for k, v in (require_headers or {}).items()}
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", max_recv_mib << 20), ("grpc.so_reuseport", 0)],
        )
        sink = self

        def handler(kind: str, resp_type: Any) -> Callable[..., Any]:
            def export(self_: Any, request: Any, context: grpc.ServicerContext) -> Any:
                md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                now = time.monotonic()
                for k, v in sink.require_headers.items():
                    if md.get(k) != v:
                        with sink._lock:
                            sink.received.attempts.append((now, kind, "UNAUTHENTICATED"))
                        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {k} header")
                bad = _wrong_length_id(kind, request) if sink.strict_ids else None
                if bad:
                    with sink._lock:
                        sink.received.attempts.append((now, kind, "INVALID_ARGUMENT"))
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
                fail = sink._take_failure()
                if fail is not None:
                    with sink._lock:
                        sink.received.attempts.append((now, kind, fail.code.name))
                    md_out: tuple[tuple[str, bytes], ...] = ()
                    if fail.retry_after is not None:
                        st = status_pb2.Status(code=fail.code.value[0], message=fail.message)
                        ri = error_details_pb2.RetryInfo()
                        ri.retry_delay.FromNanoseconds(int(fail.retry_after * 1e9))
                        st.details.add().Pack(ri)
                        md_out = (("grpc-status-details-bin", st.SerializeToString()),)
                    context.set_trailing_metadata(md_out)
                    context.abort(fail.code, fail.message)
                with sink._lock:
                    getattr(sink.received, kind).append(request)
                    sink.received.metadata.append(md)
                    sink.received.attempts.append((now, kind, "OK"))
                resp = resp_type()
                if sink._partial is not None:
                    rejected, msg = sink._partial
                    setattr(resp.partial_success, REJECTED_FIELD[kind], rejected)
                    resp.partial_success.error_message = msg
                return resp

            return export

        class T(tgrpc.TraceServiceServicer):
            Export = handler("traces", tpb.ExportTraceServiceResponse)

        class M(mgrpc.MetricsServiceServicer):
            Export = handler("metrics", mpb.ExportMetricsServiceResponse)

        class L(lgrpc.LogsServiceServicer):
            Export = handler("logs", lpb.ExportLogsServiceResponse)

        class P(pgrpc.ProfilesServiceServicer):
            Export = handler("profiles", ppb.ExportProfilesServiceResponse)

        tgrpc.add_TraceServiceServicer_to_server(T(), self._server)
        mgrpc.add_MetricsServiceServicer_to_server(M(), self._server)
        lgrpc.add_LogsServiceServicer_to_server(L(), self._server)
        pgrpc.add_ProfilesServiceServicer_to_server(P(), self._server)
        addr = f"unix:{unix}" if unix else f"{host}:{port}"
        if tls is not None:
            cert, key = tls
            self.port = self._server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
        else:
            self.port = self._server.add_insecure_port(addr)
        self.host = host
        self.unix = unix

    @property
    def address(self) -> str:
        return f"unix://{self.unix}" if self.unix else f"{self.host}:{self.port}"

    def start(self) -> OTLPGrpcSink:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0.5).wait()

    def fail_with(self, code: grpc.StatusCode | None, *, retry_after: float | None = None, times: int | None = None) -> None:
        """Answer `code` (with RetryInfo when retry_after is given) `times` times, or always; None: succeed."""
        with self._lock:
            self._failure = None if code is None else Failure(code, retry_after, times)

    def partial(self, rejected: int | None, message: str = "") -> None:
        """Answer success with partial_success {rejected_<items>, error_message}; None: plain success."""
        self._partial = None if rejected is None else (rejected, message)

    def _take_failure(self) -> Failure | None:
        with self._lock:
            f = self._failure
            if f is None:
                return None
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    self._failure = None
            return f

    def wait_for(self, pred: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if pred(self.received):
                    return True
            time.sleep(0.05)
        with self._lock:
            return pred(self.received)

    async def await_for(self, pred: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        """wait_for for async tests: never blocks the event loop the exporter runs on."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if pred(self.received):
                    return True
            await asyncio.sleep(0.05)
        with self._lock:
            return pred(self.received)

    def __enter__(self) -> OTLPGrpcSink:
        return self.start()

    def __exit__(self, *a: object) -> None:
        self.stop()
