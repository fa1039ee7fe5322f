"""The validated shape of a gotel config: components by kind, pipelines, service settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import Field, field_validator

from gotel.component.contract import (
    ComponentConfig,
    ComponentID,
    ConnectorFactory,
    ExporterFactory,
    ExtensionFactory,
    Factory,
    Kind,
    ProcessorFactory,
    ReceiverFactory,
)
from gotel.config.source import Issue
from gotel.config.telemetry import LogProcessor, LogSampling, MetricReader, ProfilingConfig
from gotel.config.types import Duration
from gotel.pdata.batch import Signal


class TelemetryMetrics(ComponentConfig):
    address: str = Field("127.0.0.1:8888", description="host:port of the Prometheus / health endpoint; '' turns it off")
    level: str = Field("normal", pattern="^(none|basic|normal|detailed)$",
                       description="none turns self-metrics off (/metrics answers 404, no self-metrics pipelines, "
                       "no readers); basic: the pipeline counters only; normal and detailed: every metric")
    pipelines: list[str] = Field(
        default_factory=list,
        description="metrics pipelines that also receive gotel's own metrics (e.g. [metrics/self])",
    )
    interval: Duration = Field(15.0, gt=0, description="how often self-metrics are fed into those pipelines")
    readers: list[MetricReader] = Field(
        default_factory=list,
        description="the collector's metric readers: pull (a Prometheus endpoint) and periodic (OTLP or console push)",
    )

    def serves_address(self) -> bool:
        """Whether the `address` endpoint runs: pull readers replace it unless `address` is written too."""
        if not self.address:
            return False
        return "address" in self.model_fields_set or not any(r.pull is not None for r in self.readers)

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            _host, sep, port = v.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"expected host:port, got {v!r}")
        return v


class TelemetryLogs(ComponentConfig):
    level: str = Field("info", pattern="^(?i:debug|info|warn|warning|error|dpanic|panic|fatal)$")
    encoding: str = Field("console", pattern="^(console|json)$", description="console (one line) or json")
    output_paths: list[str] = Field(default_factory=lambda: ["stderr"],
                                    description="stderr, stdout or files that receive every record")
    error_output_paths: list[str] = Field(default_factory=lambda: ["stderr"],
                                          description="where records at error level also go (beside output_paths)")
    initial_fields: dict[str, Any] = Field(default_factory=dict, description="fields added to every record")
    processors: list[LogProcessor] = Field(default_factory=list,
                                           description="export gotel's own log records (batch|simple with otlp)")
    development: bool = Field(False, description="accepted for the collector's schema; no effect")
    disable_caller: bool = Field(False, description="accepted; gotel's lines carry the logger name, not a caller")
    disable_stacktrace: bool = Field(False, description="accepted; tracebacks appear at debug level only")
    sampling: LogSampling | None = Field(None, description="accepted; gotel summarises repeated lines itself")


class TelemetryConfig(ComponentConfig):
    metrics: TelemetryMetrics = Field(default_factory=TelemetryMetrics)
    logs: TelemetryLogs = Field(default_factory=TelemetryLogs)
    resource: dict[str, Any] = Field(
        default_factory=dict,
        description="resource of gotel's own telemetry (defaults: service.name gotel, service.version, "
        "service.instance.id); a null value removes an attribute",
    )
    profiling: ProfilingConfig | None = Field(
        None, description="gotel profiles its own processes (pipeline and receivers) into Pyroscope")


class SupervisorConfig(ComponentConfig):
    initial_backoff: Duration = Field(0.5, gt=0, description="wait before the first restart of a dead receiver")
    max_backoff: Duration = Field(30.0, gt=0, description="cap of the doubling restart backoff")
    stable_after: Duration = Field(60.0, gt=0, description="a receiver up this long gets its backoff reset")
    stop_timeout: Duration = Field(5.0, gt=0, description="SIGTERM to SIGKILL for a receiver process")
    own_process: list[str] = Field(
        default_factory=list,
        description="receiver ids that run in a process of their own although their type shares one "
        "(light receivers share one process by default: one crash restarts them together)")


F = TypeVar("F", bound=Factory)


@dataclass
class ComponentEntry(Generic[F]):
    """One configured component: the id as written, its factory (aliases resolved) and validated config.
    Typed by its kind's factory, so `entry.factory.create(...)` is checked against that kind's contract
    (the registry admits only factories of the kind's class)."""

    id: ComponentID
    kind: Kind
    factory: F
    config: Any
    line: int | None = None


@dataclass
class PipelineSpec:
    name: str  # as written: traces, traces/2
    signal: Signal
    receivers: list[ComponentID]
    processors: list[ComponentID]
    exporters: list[ComponentID]
    line: int | None = None


@dataclass
class ServiceConfig:
    pipelines: dict[str, PipelineSpec] = field(default_factory=dict)
    extensions: list[ComponentID] = field(default_factory=list)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    shutdown_timeout: float = 10.0
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)


@dataclass
class Config:
    file: str
    receivers: dict[ComponentID, ComponentEntry[ReceiverFactory]] = field(default_factory=dict)
    processors: dict[ComponentID, ComponentEntry[ProcessorFactory]] = field(default_factory=dict)
    exporters: dict[ComponentID, ComponentEntry[ExporterFactory]] = field(default_factory=dict)
    extensions: dict[ComponentID, ComponentEntry[ExtensionFactory]] = field(default_factory=dict)
    connectors: dict[ComponentID, ComponentEntry[ConnectorFactory]] = field(default_factory=dict)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    warnings: list[Issue] = field(default_factory=list)

    def section(self, kind: Kind) -> dict[ComponentID, ComponentEntry[Any]]:
        """The loader fills each section with factories the registry checked are of the kind's class."""
        sections: dict[Kind, dict[ComponentID, ComponentEntry[Any]]] = {
            Kind.RECEIVER: self.receivers,
            Kind.PROCESSOR: self.processors,
            Kind.EXPORTER: self.exporters,
            Kind.EXTENSION: self.extensions,
            Kind.CONNECTOR: self.connectors,
        }
        return sections[kind]

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        return ", ".join(
            [
                n(len(self.receivers), "receiver"),
                n(len(self.processors), "processor"),
                n(len(self.exporters), "exporter"),
                *([n(len(self.connectors), "connector")] if self.connectors else []),
                n(len(self.service.pipelines), "pipeline"),
            ]
        )


class ConfigError(Exception):
    """Every problem found in a config, reported at once."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = [i for i in issues if not i.warning]
        self.warnings = [i for i in issues if i.warning]
        super().__init__("\n".join(str(i) for i in self.issues))
