"""The sched receiver configured the collector's way: `collection_interval: 2s`, a threshold as a duration
(or under its deprecated `_ms` key), loaded from YAML and run against the kernel and a real Go program."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from gotel.component.contract import ComponentID
from gotel.config.loader import load_config
from gotel.pdata.batch import Batch, Signal
from tests.helpers.memsink import MemorySink, make_ctx

pytestmark = [pytest.mark.root, pytest.mark.slow]

YAML = """\
receivers:
  sched:
    discovery: {{pids: [{pid}]}}
    collection_interval: 2s
    {threshold}
exporters:
  debug: {{}}
service:
  pipelines:
    metrics: {{receivers: [sched], exporters: [debug]}}
    logs: {{receivers: [sched], exporters: [debug]}}
"""


class TimedSink(MemorySink):
    """Also notes when each batch arrived, to measure the receiver's own timer."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def consume(self, batch: Batch) -> None:
        self.times.append(time.monotonic())
        await super().consume(batch)


@pytest.mark.parametrize("threshold", ["slow_syscall_threshold: 30ms", "slow_syscall_threshold_ms: 30"])
async def test_sched_from_yaml_collects_every_2s_with_its_threshold(goapp: Any, threshold: str) -> None:
    app = goapp("runtime")
    cfg = load_config("sched.yaml", text=YAML.format(pid=app.pid, threshold=threshold))
    warnings = [w.message for w in cfg.warnings]
    if "_ms" in threshold:
        assert warnings == ['"slow_syscall_threshold_ms" is deprecated: write slow_syscall_threshold: 30ms']
    else:
        assert warnings == []
    entry = cfg.receivers[ComponentID("sched")]
    metrics = TimedSink()
    r = entry.factory.create(entry.config, {Signal.METRICS: metrics, Signal.LOGS: MemorySink()}, make_ctx("sched"))
    await r.start()
    try:
        started = time.monotonic()
        # below the 30 ms threshold three times, above it once: only the last is slow
        assert (await asyncio.to_thread(app.get_json, "/syscall?ms=5&n=3"))["calls"] == 3
        assert (await asyncio.to_thread(app.get_json, "/syscall?ms=80"))["calls"] == 1
        while len(metrics.times) < 4 and time.monotonic() - started < 20:
            await asyncio.sleep(0.1)
        ticks = [started, *metrics.times]
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        # the timer waits 2 s, then collects (a few ms, more under load): never 10 s (the default),
        # 2 ms (read as ms) or 2 min (read as minutes)
        assert len(gaps) >= 4 and all(1.95 <= g < 4.0 for g in gaps), gaps
        counts = {a["gotel.syscall.name"]: p.as_int for res, a, p in metrics.points("process.syscall.slow.count")
                  if res["process.pid"] == app.pid}
        assert counts.get("nanosleep") == 1, counts
    finally:
        await r.shutdown()
