"""The internal OTLP entry point belongs to the core: a third-party `otlp` receiver cannot replace it.

A fake distribution on sys.path registers its own `gotel.receivers` entry point named `otlp`, as any
installed package could. The registry then resolves `otlp` to it (precondition), yet the pipeline's
internal socket is still the core's receiver: a real receiver process (synthetic) delivers every
span through it to a file exporter, and the fake is never asked for anything.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.component.contract import Kind
from gotel.component.registry import registry
from gotel.config.loader import load_config
from gotel.service.service import Service
from gotel.telemetry.counters import Telemetry

FAKE = '''\
from gotel.component.contract import ALL_SIGNALS, ComponentConfig, ReceiverFactory

CALLS = []


class Config(ComponentConfig):
    model_config = {"extra": "allow"}


def create(cfg, sinks, ctx):
    CALLS.append(ctx.id)
    raise RuntimeError("the fake otlp receiver was asked to serve")


factory = ReceiverFactory(type="otlp", config=Config, signals=ALL_SIGNALS, create=create,
                          description="a third party's otlp", in_process=True)
'''


@pytest.fixture
def third_party_otlp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    site = tmp_path / "site"
    (site / "fake_otlp_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "fake_otlp_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-otlp-plugin\nVersion: 1.0\n")
    (site / "fake_otlp_plugin-1.0.dist-info" / "entry_points.txt").write_text("[gotel.receivers]\notlp = fake_otlp_plugin:factory\n")
    (site / "fake_otlp_plugin.py").write_text(FAKE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])  # last: its entry point is added last, and wins
    reg = registry(refresh=True)
    fake = reg.get(Kind.RECEIVER, "otlp")
    assert fake is not None and fake.description == "a third party's otlp", reg.errors
    yield sys.modules["fake_otlp_plugin"]
    monkeypatch.undo()
    sys.modules.pop("fake_otlp_plugin", None)
    registry(refresh=True)


async def test_a_third_party_otlp_cannot_replace_the_internal_socket(third_party_otlp: object, tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    text = f"""\
    receivers:
      synthetic: {{spans_per_second: 400, batch_size: 10, max_items: 40,
                  metrics_per_second: 0, logs_per_second: 0, profiles_per_second: 0}}
    exporters:
      file: {{path: {out}}}
    service:
      telemetry: {{metrics: {{address: ""}}}}
      pipelines:
        traces: {{receivers: [synthetic], exporters: [file]}}
    """
    # the core's own components for the pipeline; the fake only sits in the process-wide registry
    cfg = load_config("c.yaml", text=textwrap.dedent(text), env={})
    svc = Service(cfg, Telemetry())
    try:
        await svc.start()
        assert svc.socket_path is not None and Path(svc.socket_path).exists()

        def exported() -> int:
            if not out.exists():
                return 0
            return sum(len(ss["spans"]) for line in out.read_text().splitlines() if line
                       for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"])

        for _ in range(300):
            if exported() >= 40:
                break
            await asyncio.sleep(0.05)
    finally:
        await svc.shutdown()
    assert exported() == 40  # every span crossed the internal socket from the receiver process
    assert type(svc.internal).__module__ == "gotel.receivers.otlp"
    assert third_party_otlp.CALLS == []  # type: ignore[attr-defined]
