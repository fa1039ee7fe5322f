"""`jaeger` exporter: spans to Jaeger over OTLP (gRPC on 4317 by default, or HTTP on 4318).

Jaeger ingests OTLP natively (since 1.35, on by default since 1.46; v2 is a collector distribution), so
the sending is the ``otlp`` / ``otlp_http`` exporters' senders. What this adds is what Jaeger needs to
show spans well: a ``service.name`` on every resource (Jaeger files spans under it; without one, Jaeger
v2 files them all under "missing-service-name", v1 under "OTLPResourceNoServiceName"), and a span kind. Events and links pass through untouched.
Configs written for Jaeger's legacy ports and agents get an error that says what to use instead.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from opentelemetry.proto.trace.v1 import trace_pb2
from pydantic import Field, model_validator

from gotel.component.contract import Context, Exporter, ExporterFactory
from gotel.exporterhelper.clientconfig import ClientConfig
from gotel.exporterhelper.queue import QueuedExporter
from gotel.exporters import otlp as otlp_grpc
from gotel.exporters import otlp_http
from gotel.pdata.batch import Batch, Signal, Traces, get_attr, set_attr

LEGACY_PORTS = {
    14250: "the legacy jaeger.api_v2 gRPC collector port (model.proto)",
    14268: "the legacy Thrift-over-HTTP collector port (/api/traces)",
    6831: "the legacy agent's UDP Thrift compact port",
    6832: "the legacy agent's UDP Thrift binary port",
    14267: "the legacy agent's TChannel port",
    5775: "the legacy agent's UDP Zipkin Thrift port",
    16686: "Jaeger's query/UI port (it does not accept spans)",
    16685: "Jaeger's query gRPC port (it does not accept spans)",
}
LEGACY_KEYS = {
    "agent_endpoint", "agent_host", "agent_port", "collector_endpoint", "thrift", "udp", "transport",
    "username", "password", "max_packet_size", "jaeger_endpoint",
}
ADVICE = ("Jaeger takes OTLP: use endpoint http://HOST:4317 (protocol: grpc) or http://HOST:4318 "
          "(protocol: http)")


class Config(ClientConfig):
    endpoint: str = Field("", description="default http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http)")
    protocol: Literal["grpc", "http"] = "grpc"
    default_service_name: str = Field(
        "", description="service.name for resources without one; by default unknown_service:<process.executable.name> "
        "from the resource, else unknown_service (what the OpenTelemetry SDKs do)")
    default_span_kind: Literal["internal", "server", "client", "producer", "consumer", ""] = Field(
        "internal", description="kind given to spans with SPAN_KIND_UNSPECIFIED ('' leaves them as they are)")
    derive_status: bool = Field(
        True, description="set ERROR on spans left UNSET whose gRPC/HTTP status code semconv calls an error")

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            legacy = sorted(k for k in data if k in LEGACY_KEYS)
            if legacy:
                raise ValueError(f"{', '.join(legacy)}: Jaeger's legacy agent/collector options are not "
                                 f"supported (Jaeger v1 reached end of life; its Thrift/model.proto ingest is legacy). {ADVICE}")
            data = dict(data)
            if not data.get("endpoint"):
                data["endpoint"] = "http://127.0.0.1:4318" if data.get("protocol") == "http" else "http://127.0.0.1:4317"
        return data

    @model_validator(mode="after")
    def _legacy_ports(self) -> Config:
        ep = self.endpoint if "://" in self.endpoint else "//" + self.endpoint
        parts = urlsplit(ep)
        try:
            port = parts.port
        except ValueError:
            port = None
        if port in LEGACY_PORTS:
            raise ValueError(f"endpoint {self.endpoint!r} is {LEGACY_PORTS[port]}. {ADVICE}")
        if parts.path.rstrip("/") in ("/api/traces", "/api/v2/spans", "/api/v1/spans"):
            raise ValueError(f"endpoint {self.endpoint!r} is a legacy Jaeger/Zipkin span path. {ADVICE}")
        if self.protocol == "http" and not self.endpoint.startswith(("http://", "https://", "unix://")):
            raise ValueError(f"protocol http needs an http:// or https:// endpoint, got {self.endpoint!r}")
        return self

    def otlp_config(self) -> otlp_grpc.Config | otlp_http.Config:
        common = self.model_dump(exclude={"protocol", "default_service_name", "default_span_kind", "endpoint",
                                          "derive_status"})
        common["headers"] = self.header_values()
        if self.protocol == "grpc":
            return otlp_grpc.Config(endpoint=self.endpoint, **common)
        ep = self.endpoint.rstrip("/")
        if ep.endswith("/v1/traces"):
            return otlp_http.Config(traces_endpoint=ep, **common)
        return otlp_http.Config(endpoint=ep, **common)


_KINDS = {
    "internal": trace_pb2.Span.SPAN_KIND_INTERNAL, "server": trace_pb2.Span.SPAN_KIND_SERVER,
    "client": trace_pb2.Span.SPAN_KIND_CLIENT, "producer": trace_pb2.Span.SPAN_KIND_PRODUCER,
    "consumer": trace_pb2.Span.SPAN_KIND_CONSUMER,
}


# OTel semconv: gRPC codes that make a *server* span an error (any non-zero code does for a client).
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_GRPC_NAMES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
               6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
               10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
               15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


def semconv_error(span: Any) -> str | None:
    """The error message semconv implies for an UNSET span from its status-code attributes, or None."""
    server = span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    code = None
    for kv in span.attributes:
        if kv.key in ("rpc.grpc.status_code", "rpc.response.status_code"):
            v = kv.value
            code = v.int_value if v.WhichOneof("value") == "int_value" else None
            if code is not None and (code in _GRPC_SERVER_ERRORS if server else code != 0):
                return f"gRPC status {_GRPC_NAMES.get(code, code)}"
        elif kv.key in ("http.response.status_code", "http.status_code"):
            v = kv.value
            code = v.int_value if v.WhichOneof("value") == "int_value" else None
            if code is not None and (code >= 500 or (not server and code >= 400)):
                return f"HTTP {code}"
    return None


def _service_from(res: Any) -> str:
    exe = get_attr(res.attributes, "process.executable.name")
    return f"unknown_service:{exe}" if exe else ""


class JaegerExporter(Exporter):
    """Fixes what Jaeger needs (on a copy, only when something is missing), then queues for the OTLP sender."""

    mutates = False

    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        oc = cfg.otlp_config()
        if isinstance(oc, otlp_grpc.Config):
            sender: Any = otlp_grpc.GrpcSender(Signal.TRACES, oc, ctx)
        else:
            sender = otlp_http.HttpSender(Signal.TRACES, oc, ctx)
        self.queue = QueuedExporter(Signal.TRACES, ctx, sender, queue=cfg.sending_queue,
                                    retry=cfg.retry_on_failure, timeout=cfg.timeout)
        self.fallback = cfg.default_service_name
        self.kind = _KINDS.get(cfg.default_span_kind)
        self.filled_service = ctx.telemetry.counter(
            "jaeger_exporter_service_name_filled", "Resources sent without service.name, given the default.")
        self.filled_kind = ctx.telemetry.counter(
            "jaeger_exporter_span_kind_filled", "Spans sent with SPAN_KIND_UNSPECIFIED, given the default kind.")
        self.derived_status = ctx.telemetry.counter(
            "jaeger_exporter_status_derived", "UNSET spans set to ERROR from their gRPC/HTTP status code (semconv).")

    async def start(self) -> None:
        await self.queue.start()

    def _needs_fix(self, req: Any) -> bool:
        for rs in req.resource_spans:
            if not get_attr(rs.resource.attributes, "service.name"):
                return True
            for ss in rs.scope_spans:
                for s in ss.spans:
                    if s.kind == 0 and self.kind is not None:
                        return True
                    if self.cfg.derive_status and s.status.code == 0 and semconv_error(s) is not None:
                        return True
        return False

    def prepare(self, batch: Batch) -> Batch:
        """The batch as Jaeger should get it; the input is shared with other exporters, so it is copied."""
        if not self._needs_fix(batch.peek()):
            return batch
        out = batch.copy()
        services = kinds = statuses = 0
        for rs in out.msg.resource_spans:
            if not get_attr(rs.resource.attributes, "service.name"):
                set_attr(rs.resource.attributes, "service.name",
                         self.fallback or _service_from(rs.resource) or "unknown_service")
                services += 1
            for ss in rs.scope_spans:
                for s in ss.spans:
                    if self.cfg.derive_status and s.status.code == 0:
                        msg = semconv_error(s)  # judged on the kind the instrumentation gave
                        if msg is not None:
                            s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                            s.status.message = msg
                            statuses += 1
                    if s.kind == 0 and self.kind is not None:
                        s.kind = self.kind
                        kinds += 1
        if services:
            self.filled_service.inc(services)
        if kinds:
            self.filled_kind.inc(kinds)
        if statuses:
            self.derived_status.inc(statuses)
        return out

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, Traces)
        await self.queue.consume(self.prepare(batch))

    async def shutdown(self, deadline: float = 10.0) -> None:
        await self.queue.shutdown(deadline)  # the service's remaining shutdown_timeout


def create(signal: Signal, cfg: Config, ctx: Context) -> JaegerExporter:
    return JaegerExporter(cfg, ctx)


factory = ExporterFactory(
    type="jaeger",
    config=Config,
    signals=frozenset({Signal.TRACES}),
    description="Jaeger over OTLP (gRPC 4317 / HTTP 4318), filling service.name and span kind",
    create=create,
)
