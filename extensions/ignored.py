"""Collector extensions that mean nothing for a Python agent (`pprof`, `zpages`): configuring one is
accepted with one warning that says why it is ignored and what to use instead, not an "unknown
extension" error, so that collector configs carrying them still validate and run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from gotel.component.contract import Component, ComponentConfig, Context, ExtensionFactory


@dataclass(frozen=True)
class IgnoredExtensionFactory(ExtensionFactory):
    """An extension gotel accepts and does not run; `ignored` is the warning's reason (the config
    loader reports it at the extension's line)."""

    ignored: str = ""


class PprofConfig(ComponentConfig):
    endpoint: str = Field("localhost:1777", description="accepted, not served")
    block_profile_fraction: int = Field(0, ge=0, description="accepted, not used")
    mutex_profile_fraction: int = Field(0, ge=0, description="accepted, not used")
    save_to_file: str = Field("", description="accepted, not used")


class ZpagesConfig(ComponentConfig):
    endpoint: str = Field("localhost:55679", description="accepted, not served")
    expvar: dict[str, Any] = Field(default_factory=dict, description="accepted, not used")
    tls: dict[str, Any] | None = Field(None, description="accepted, not used")


class Ignored(Component):
    """Starts and stops; serves nothing."""

    def __init__(self, _cfg: Any, ctx: Context) -> None:
        self.ctx = ctx


PPROF_REASON = (
    "pprof serves a Go program's runtime profiles and gotel is a Python program; "
    "gotel's own CPU profile is planned through pyroscope-io (service::telemetry), and the Go services "
    "it watches are profiled by gotel's pprof receivers")
ZPAGES_REASON = (
    "zpages shows the collector's in-process trace spans and pipeline pages, which gotel does not "
    "record; gotel's own state is on its self-telemetry port: /metrics, /readyz "
    "(service::telemetry::metrics::address) and the health_check extension")

pprof_factory = IgnoredExtensionFactory(
    type="pprof", config=PprofConfig, signals=frozenset(), create=Ignored, ignored=PPROF_REASON,
    description="accepted and ignored (gotel is not a Go program): a warning says what to use instead")
zpages_factory = IgnoredExtensionFactory(
    type="zpages", config=ZpagesConfig, signals=frozenset(), create=Ignored, ignored=ZPAGES_REASON,
    description="accepted and ignored (no in-process span pages): a warning says what to use instead")
