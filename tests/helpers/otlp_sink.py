"""A real OTLP/gRPC server built from the official opentelemetry-proto service stubs, for tests.

It records every request it receives, decoded, and can be told to answer with a status code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lgrpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as ppb
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2_grpc as pgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc


@dataclass
class Received:
    traces: list[tpb.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[mpb.ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[lpb.ExportLogsServiceRequest] = field(default_factory=list)
    profiles: list[ppb.ExportProfilesServiceRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

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


class OTLPGrpcSink:
    """Start with .start(); .address is host:port. .fail_with(code) makes it answer errors."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.received = Received()
        self._lock = threading.Lock()
        self._fail: Callable[[], grpc.StatusCode | None] = lambda: None
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                   options=[("grpc.max_receive_message_length", 64 << 20)])
        sink = self

        def handler(kind: str, resp: Any) -> Callable[..., Any]:
            def export(self_: Any, request: Any, context: grpc.ServicerContext) -> Any:
                code = sink._fail()
                if code is not None:
                    context.abort(code, "told to fail")
                with sink._lock:
                    getattr(sink.received, kind).append(request)
                    sink.received.metadata.append({k: v for k, v in context.invocation_metadata()})
                return resp()
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
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> OTLPGrpcSink:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0.5).wait()

    def fail_with(self, code: grpc.StatusCode | None) -> None:
        self._fail = lambda: code

    def wait_for(self, pred: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if pred(self.received):
                    return True
            time.sleep(0.05)
        with self._lock:
            return pred(self.received)

    def __enter__(self) -> OTLPGrpcSink:
        return self.start()

    def __exit__(self, *a: object) -> None:
        self.stop()
