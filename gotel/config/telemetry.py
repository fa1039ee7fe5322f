"""`service::telemetry` as the collector writes it: metric readers, log output, resource, profiling.

The shapes follow the collector's (its declarative-configuration schema): `metrics::readers` is a list
of `pull` (a Prometheus endpoint) and `periodic` (an OTLP or console push) readers; `logs` has
`level`, `encoding`, `output_paths`, `error_output_paths`, `initial_fields` and `processors` (OTLP
export of gotel's own log records); `resource` is a map whose null values remove an attribute.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, field_validator, model_validator

from gotel.component.contract import ComponentConfig
from gotel.config.duration import DURATION_SCHEMA
from gotel.config.types import Duration, format_duration, parse_duration


def _bare_ms(v: Any) -> Any:
    """The collector's telemetry schema writes times as integer milliseconds: a bare number is ms here."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v / 1000
    if isinstance(v, str) and v.strip().lstrip("+").replace(".", "", 1).isdigit():
        return float(v) / 1000
    return v


# Seconds, like Duration; a bare number is milliseconds (interval: 60000), a unit string as usual (60s).
Millis = Annotated[
    float,
    BeforeValidator(parse_duration),
    BeforeValidator(_bare_ms),  # runs first
    PlainSerializer(format_duration, when_used="json"),
    WithJsonSchema(DURATION_SCHEMA),
]


class PrometheusPullExporter(ComponentConfig):
    host: str = Field("127.0.0.1", description="interface of the Prometheus endpoint (loopback unless configured)")
    port: int = Field(8888, ge=0, le=65535, description="port of the Prometheus endpoint; 0 picks a free one")
    without_scope_info: bool = Field(False, description="no otel_scope_* labels on the series")
    without_type_suffix: bool = Field(False, description="accepted for the collector's schema; counters keep _total")
    without_units: bool = Field(False, description="accepted for the collector's schema; gotel's metrics have no units")
    with_resource_constant_labels: dict[str, Any] | None = Field(
        None, description="accepted for the collector's schema; the resource is served as target_info")


class PullExporter(ComponentConfig):
    prometheus: PrometheusPullExporter


class PullReader(ComponentConfig):
    exporter: PullExporter


class OTLPPushExporter(ComponentConfig):
    protocol: Literal["grpc", "http/protobuf"] = Field(
        "http/protobuf", description="grpc or http/protobuf (http/json is not offered by the OpenTelemetry Python SDK)")
    endpoint: str = Field(..., description="grpc: host:port or URL; http/protobuf: a URL (with no path, the "
                          "signal's /v1/metrics or /v1/logs is added)")
    headers: dict[str, str] = Field(
        default_factory=dict, description="request headers (a map, or the schema's list of {name, value}); never logged")
    compression: Literal["gzip", "none", ""] = Field("", description="gzip or none")
    timeout: Millis = Field(10.0, gt=0, description="how long one export may take (a bare number is ms)")
    insecure: bool | None = Field(None, description="grpc without TLS; default: true for http:// endpoints")
    certificate: str | None = Field(None, description="CA file to verify the server with")
    client_certificate: str | None = Field(None, description="client certificate file (mTLS)")
    client_key: str | None = Field(None, description="client key file (mTLS)")
    temporality_preference: Literal["cumulative", "delta", "lowmemory"] = "cumulative"
    default_histogram_aggregation: str | None = Field(None, description="accepted for the collector's schema")

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if isinstance(v, list):  # the schema's [{name: x, value: y}, ...]
            out: dict[str, str] = {}
            for i, h in enumerate(v):
                if not isinstance(h, dict) or "name" not in h:
                    raise ValueError(f"headers[{i}]: expected {{name: ..., value: ...}}")
                out[str(h["name"])] = "" if h.get("value") is None else str(h["value"])
            return out
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("endpoint is empty")
        return v


class PeriodicExporter(ComponentConfig):
    otlp: OTLPPushExporter | None = None
    console: dict[str, Any] | None = Field(None, description="print the metrics to standard output")

    @model_validator(mode="before")
    @classmethod
    def _console(cls, v: Any) -> Any:
        if isinstance(v, dict) and "console" in v and v["console"] is None:
            v = {**v, "console": {}}  # `console:` with no body, as the collector's docs write it
        return v

    @model_validator(mode="after")
    def _one(self) -> PeriodicExporter:
        if (self.otlp is None) == (self.console is None):
            raise ValueError("expected exactly one exporter: otlp or console")
        return self


class PeriodicReader(ComponentConfig):
    interval: Millis = Field(60.0, gt=0, description="time between exports (a bare number is ms: 60000)")
    timeout: Millis = Field(30.0, gt=0, description="how long one export may take (a bare number is ms)")
    exporter: PeriodicExporter


class MetricReader(ComponentConfig):
    pull: PullReader | None = None
    periodic: PeriodicReader | None = None

    @model_validator(mode="after")
    def _one(self) -> MetricReader:
        if (self.pull is None) == (self.periodic is None):
            raise ValueError("a reader is either pull or periodic")
        return self


class LogBatchProcessor(ComponentConfig):
    exporter: PeriodicExporter
    schedule_delay: Millis = Field(1.0, gt=0, description="time between exports (a bare number is ms)")
    export_timeout: Millis = Field(30.0, gt=0, description="how long one export may take (a bare number is ms)")
    max_queue_size: int = Field(2048, gt=0)
    max_export_batch_size: int = Field(512, gt=0)


class LogSimpleProcessor(ComponentConfig):
    exporter: PeriodicExporter


class LogProcessor(ComponentConfig):
    batch: LogBatchProcessor | None = None
    simple: LogSimpleProcessor | None = None

    @model_validator(mode="after")
    def _one(self) -> LogProcessor:
        if (self.batch is None) == (self.simple is None):
            raise ValueError("a log processor is either batch or simple")
        return self


class LogSampling(ComponentConfig):
    enabled: bool = True
    tick: Any = None
    initial: int = 10
    thereafter: int = 100


class ProfilingConfig(ComponentConfig):
    """gotel profiling itself (every process) into Pyroscope with pyroscope-io."""

    server_address: str = Field(..., description="Pyroscope URL, e.g. http://127.0.0.1:4040")
    application_name: str = Field("gotel", description="the service_name of gotel's profiles")
    sample_rate: int = Field(100, gt=0, le=1000, description="samples per second")
    tags: dict[str, str] = Field(default_factory=dict, description="extra labels on every profile")
    basic_auth_username: str = ""
    basic_auth_password: str = Field("", description="never logged")
    tenant_id: str = ""
    oncpu: bool = Field(True, description="on-CPU only (false: wall clock)")
    gil_only: bool = Field(True, description="only threads that hold the GIL")
    upload_interval: Duration = Field(10.0, ge=1, description="how often each process uploads (whole seconds)")

    @field_validator("server_address")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")
