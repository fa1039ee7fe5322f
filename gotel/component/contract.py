"""The component contract (DESIGN.md section 4): factories, ids, contexts, consumers.

Every receiver, processor and exporter module exposes ``factory``: a ReceiverFactory,
ProcessorFactory or ExporterFactory. Factories are found through entry points
(``gotel.receivers``, ``gotel.processors``, ``gotel.exporters``, ``gotel.connectors``,
``gotel.extensions``).
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator

from gotel.component.ids import ComponentID as ComponentID
from gotel.component.ids import Kind as Kind
from gotel.config.duration import UNIT_NAMES, parse_duration
from gotel.pdata.batch import Batch, Signal

if TYPE_CHECKING:
    from gotel.telemetry.counters import ComponentTelemetry


@dataclass(frozen=True)
class RenamedKey:
    """A config key's new name. `unit` (a Go duration unit such as "ms") is what a bare number under
    the old key meant, so `slow_syscall_threshold_ms: 10` still means 10ms; a duration string carries its own."""

    new: str
    unit: str | None = None

    def convert(self, value: Any) -> Any:
        if self.unit is not None and not isinstance(value, bool):
            try:
                return float(value) * parse_duration("1" + self.unit)
            except (TypeError, ValueError):
                pass  # "10ms" (or garbage, which the new key's type reports)
        return value


def _schema_renamed(schema: dict[str, Any], cls: type) -> None:
    """Old names appear in the JSON schema (and `gotel components TYPE`) as deprecated properties."""
    for old, r in getattr(cls, "renamed_keys", {}).items():
        unit = f"; a bare number here is {UNIT_NAMES.get(r.unit, r.unit)}" if r.unit else ""
        schema.setdefault("properties", {})[old] = {"deprecated": True, "description": f"deprecated: use {r.new}{unit}"}


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors, not silence."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=_schema_renamed)
    # old key -> its new name: still accepted (the config loader warns, naming the new key)
    renamed_keys: ClassVar[Mapping[str, RenamedKey]] = MappingProxyType({})

    @model_validator(mode="before")
    @classmethod
    def _rename_old_keys(cls, data: Any) -> Any:
        if not cls.renamed_keys or not isinstance(data, dict):
            return data
        data = dict(data)
        for old, r in cls.renamed_keys.items():
            if old in data:
                if r.new in data:
                    raise ValueError(f'"{old}" is the deprecated name of "{r.new}": give only "{r.new}"')
                data[r.new] = r.convert(data.pop(old))
        return data


class ConsumerError(Exception):
    """Raised by consume(): the data was not accepted."""

    permanent: ClassVar[bool] = False


class RefusedError(ConsumerError):
    """Back-pressure (memory limiter over its limit, queue full): the sender may retry later."""


class PermanentError(ConsumerError):
    """The data can never be accepted (malformed, rejected by the backend): do not retry."""

    permanent = True


@runtime_checkable
class Consumer(Protocol):
    """Anything data flows into: a processor, an exporter, a fan-out, a receiver process's sink."""

    @property
    def mutates(self) -> bool: ...

    async def consume(self, batch: Batch) -> None: ...


@dataclass
class Context:
    """What a component gets besides its config."""

    id: ComponentID
    kind: Kind
    logger: logging.Logger
    telemetry: ComponentTelemetry
    signal: Signal | None = None
    # Set for components that run inside the pipeline process: data a component needs from the host.
    extras: dict[str, Any] = field(default_factory=dict)


SHUTDOWN_DEADLINE = 10.0
"""Seconds a component has to stop when its caller names no deadline (tests, tools)."""


class Component:
    """Life cycle shared by all components.

    shutdown(deadline) is called once with the seconds left of service.shutdown_timeout: the component
    flushes what it holds and returns within them (the service stops waiting after that). It must be
    safe without start() and without a deadline argument.
    """

    async def start(self) -> None:
        return None

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        return None


class Receiver(Component):
    pass


class Processor(Component):
    mutates: bool = True

    async def consume(self, batch: Batch) -> None:
        raise NotImplementedError


class Exporter(Component):
    mutates: bool = False

    async def consume(self, batch: Batch) -> None:
        raise NotImplementedError


class Connector(Component):
    """The exporter of one pipeline and the receiver of others: consumes one signal, emits one."""

    mutates: bool = False

    async def consume(self, batch: Batch) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Factory:
    type: str
    config: builtins.type[ComponentConfig]  # `type` is shadowed by the field above
    signals: frozenset[Signal]
    description: str = ""
    aliases: tuple[str, ...] = ()
    kind: ClassVar[Kind]

    def default_config(self) -> ComponentConfig:
        return self.config()


@dataclass(frozen=True, kw_only=True)
class ReceiverFactory(Factory):
    """create(config, sinks-per-signal, context). One instance per receiver id serves all its signals."""

    create: Callable[[Any, Mapping[Signal, Consumer], Context], Receiver]
    # The otlp receiver is the pipeline's own entry point and runs inside the pipeline process;
    # every other receiver runs in a receiver process (DESIGN.md section 1; light ones share one).
    in_process: bool = False
    # Receivers that load BPF programs need root / CAP_BPF; `gotel components` says so.
    needs_bpf: bool = False
    # A light receiver (no BPF, no high-rate draining: pulls and /proc reads) runs with the other light
    # receivers of the config in one receiver process, each with its own sinks, telemetry and restart
    # account, saving a process's memory; service::supervisor::own_process keeps one alone.
    shares_process: bool = False
    # glibc malloc arenas of its process (the largest of a shared process's receivers). Two by default:
    # a receiver draining a ring buffer at a high rate keeps its drain thread off the main arena's lock.
    # One where nothing allocates at a high rate: what its executor threads did at start-up (a BPF
    # compile, a binary's analysis) then leaves no second arena fragmented (go_runtime: ~10 MB).
    malloc_arenas: int = 2
    kind: ClassVar[Kind] = Kind.RECEIVER


@dataclass(frozen=True, kw_only=True)
class ProcessorFactory(Factory):
    """create(signal, config, next, context). One instance per pipeline."""

    create: Callable[[Signal, Any, Consumer, Context], Processor]
    # Rules that depend on the pipeline's signal (the config alone cannot know it): a one-line problem
    # with the config in a pipeline of that signal, or None. The config loader reports it at validation.
    signal_problem: Callable[[Any, Signal], str | None] | None = None
    kind: ClassVar[Kind] = Kind.PROCESSOR


@dataclass(frozen=True, kw_only=True)
class ExporterFactory(Factory):
    """create(signal, config, context). One instance per exporter id and signal."""

    create: Callable[[Signal, Any, Context], Exporter]
    kind: ClassVar[Kind] = Kind.EXPORTER


@dataclass(frozen=True, kw_only=True)
class ExtensionFactory(Factory):
    create: Callable[[Any, Context], Component]
    kind: ClassVar[Kind] = Kind.EXTENSION


@dataclass(frozen=True, kw_only=True)
class ConnectorFactory(Factory):
    """create(from_signal, to_signal, config, next, context). One instance per connector id and signal
    pair; `next` fans out over the pipelines that list the connector as a receiver of `to_signal`.
    `signals` are the signals it consumes; `pairs` the (from, to) pairs it supports."""

    create: Callable[[Signal, Signal, Any, Consumer, Context], Connector]
    pairs: frozenset[tuple[Signal, Signal]]
    kind: ClassVar[Kind] = Kind.CONNECTOR


ALL_SIGNALS = frozenset(Signal)

# Set by a receiver around consume() to the request's metadata (gRPC metadata or HTTP headers,
# lower-case keys). The pipeline's internal entry point routes on "gotel-receiver" with it.
REQUEST_METADATA: ContextVar[Mapping[str, str]] = ContextVar(
    "gotel_request_metadata", default=MappingProxyType({})
)
RECEIVER_ID_HEADER = "gotel-receiver"
# The request's item count (spans, data points, log records), sent by gotel's receiver processes on the
# internal hop so that the pipeline counts without parsing; trusted only by the internal entry point.
ITEM_COUNT_HEADER = "gotel-items"
# The peer address of the request, set by the receiver in REQUEST_METADATA (gRPC context.peer() such as
# "ipv4:10.1.2.3:51234", or an HTTP remote address). Never a client header such as X-Forwarded-For: a
# client could then claim another pod's identity. The receiver must overwrite a client-sent value.
PEER_METADATA_KEY = "gotel-peer"


def ip_of(s: str) -> str:
    """'ipv4:10.1.2.3:4317', 'ipv6:[::1]:4317', '10.1.2.3:80', '10.1.2.3' -> the address, or ''."""
    if s.startswith(("ipv4:", "ipv6:")):
        s = s[5:]
    if s.startswith("["):
        s = s[1 : s.find("]")]
    elif s.count(":") == 1:
        s = s.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return ""


def connection_ip() -> str:
    """The IP address of the connection whose request is being consumed, or ''."""
    v = REQUEST_METADATA.get().get(PEER_METADATA_KEY)
    return ip_of(v.strip()) if v else ""


# A receiver process's exit status when the host lacks what it needs (BPF, capabilities, headers):
# EX_CONFIG. A quick restart will not help, so the supervisor waits its longest backoff.
EXIT_CANNOT_RUN = 78
