"""What gotel's own telemetry shows (`metrics::level`) and how it names endpoints in logs: no SDK
imports here, so an agent without readers never loads the OpenTelemetry SDK."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.metrics_core import Metric as PromMetric

from gotel.telemetry.logs import redact


class LevelView:
    """The merged self-metrics as `service::telemetry::metrics::level` shows them: `none` nothing,
    `basic` the pipeline counters every component has (received, sent, refused, dropped, queues,
    receiver processes up and restarted), `normal` and `detailed` every family."""

    def __init__(self, source: Any, level: str, core: Iterable[str]) -> None:
        self.source = source
        self.level = level
        self.core = frozenset(core)

    def collect(self) -> Iterator[PromMetric]:
        if self.level == "none":
            return
        for fam in self.source.collect():
            if self.level != "basic" or fam.name in self.core:
                yield fam


def safe_endpoint(url: str) -> str:
    """The endpoint as it may be logged: no user:password, no query."""
    parts = urlsplit(url if "//" in url else "//" + url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    scheme = f"{parts.scheme}://" if parts.scheme else ""
    return redact(f"{scheme}{host}{port}{parts.path}")
