"""The component contract: every installed component stops with a deadline, even if never started."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import pytest

from gotel.component.contract import (
    SHUTDOWN_DEADLINE,
    Component,
    ComponentID,
    ConnectorFactory,
    ExporterFactory,
    ExtensionFactory,
    Factory,
    Kind,
    ProcessorFactory,
    ReceiverFactory,
)
from gotel.component.registry import registry
from gotel.pdata.batch import Batch
from tests.unit.core.conftest import Tel

# Only what a default config lacks; nothing here is ever contacted (no start()).
REQUIRED: dict[tuple[Kind, str], dict[str, Any]] = {
    (Kind.RECEIVER, "usdt"): {"counters": [{"probe": "gotelfix:req_end", "name": "app.requests"}]},
    (Kind.PROCESSOR, "memory_limiter"): {"limit_mib": 100},
    (Kind.PROCESSOR, "attributes"): {"actions": [{"key": "k", "action": "delete"}]},
    (Kind.PROCESSOR, "resource"): {"attributes": [{"key": "k", "action": "delete"}]},
    (Kind.PROCESSOR, "tail_sampling"): {"policies": [{"name": "all", "type": "always_sample"}]},
    (Kind.EXPORTER, "loki"): {"endpoint": "http://127.0.0.1:9/loki/api/v1/push"},
    (Kind.EXPORTER, "otlp"): {"endpoint": "127.0.0.1:9"},
    (Kind.EXPORTER, "otlp_http"): {"endpoint": "http://127.0.0.1:9"},
    (Kind.EXPORTER, "prometheus_remote_write"): {"endpoint": "http://127.0.0.1:9/api/v1/write"},
    (Kind.EXPORTER, "pyroscope"): {"endpoint": "http://127.0.0.1:9"},
    (Kind.EXTENSION, "bearertokenauth"): {"token": "never-sent"},
}


class Sink:
    mutates = False

    async def consume(self, batch: Batch) -> None:
        return None


def _factories() -> list[tuple[Kind, Factory]]:
    return [(kind, f) for kind, fs in sorted(registry().factories.items()) for _, f in sorted(fs.items())]


def _create(kind: Kind, f: Factory, tel: Tel, tmp_path: Path) -> Component:
    extra = dict(REQUIRED.get((kind, f.type), {}))
    if (kind, f.type) == (Kind.EXPORTER, "file"):
        extra["path"] = str(tmp_path / "out.jsonl")
    cfg = f.config.model_validate(extra)
    ctx = tel.ctx(str(ComponentID(f.type)), kind)
    ctx.extras.update(extensions={}, pipeline="traces")
    signal = sorted(f.signals)[0] if f.signals else None
    ctx.signal = signal
    if isinstance(f, ReceiverFactory):
        return f.create(cfg, {s: Sink() for s in f.signals}, ctx)
    if isinstance(f, ProcessorFactory):
        assert signal is not None
        return f.create(signal, cfg, Sink(), ctx)
    if isinstance(f, ExporterFactory):
        assert signal is not None
        return f.create(signal, cfg, ctx)
    if isinstance(f, ConnectorFactory):
        src, dst = sorted(f.pairs)[0]
        return f.create(src, dst, cfg, Sink(), ctx)
    assert isinstance(f, ExtensionFactory)
    return f.create(cfg, ctx)


def test_every_kind_is_installed() -> None:
    kinds = {k for k, _ in _factories()}
    assert kinds == {Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.CONNECTOR, Kind.EXTENSION}
    assert len(_factories()) >= 25


@pytest.mark.parametrize(("kind", "factory"), _factories(), ids=lambda x: str(getattr(x, "type", x)))
async def test_shutdown_takes_a_deadline_and_is_safe_without_start(
    kind: Kind, factory: Factory, tel: Tel, tmp_path: Path
) -> None:
    comp = _create(kind, factory, tel, tmp_path)
    assert isinstance(comp, Component)
    params = inspect.signature(comp.shutdown).parameters
    assert list(params) == ["deadline"] and params["deadline"].default == SHUTDOWN_DEADLINE
    t0 = time.monotonic()
    await comp.shutdown(0.5)
    await comp.shutdown()  # twice, and with the contract's default
    assert time.monotonic() - t0 < 1.0
