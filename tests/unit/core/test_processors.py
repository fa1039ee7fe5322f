"""batch (size, timeout, max-size splitting, flush on shutdown) and memory_limiter (soft/hard limits)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gotel.component.contract import Kind, RefusedError
from gotel.pdata.batch import Batch, Logs, Signal, Traces
from gotel.processors.batch import BatchProcessor
from gotel.processors.batch import Config as BatchConfig
from gotel.processors.memory_limiter import MIB, MemoryLimiter
from gotel.processors.memory_limiter import Config as MLConfig
from tests.unit.core.conftest import Tel


def traces(n: int, prefix: str = "s") -> Batch:
    b = Traces()
    ss = b.msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        ss.spans.add(name=f"{prefix}{i}")
    return Traces.parse(b.to_bytes())  # as the otlp receiver hands them over: parsed, bytes kept


class Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []
        self.times: list[float] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)
        self.times.append(time.monotonic())

    def names(self) -> list[str]:
        return [s.name for b in self.got for rs in b.peek().resource_spans for ss in rs.scope_spans for s in ss.spans]


def batcher(tel: Tel, sink: Sink, **kw: object) -> BatchProcessor:
    return BatchProcessor(Signal.TRACES, BatchConfig.model_validate(kw), sink, tel.ctx("batch", Kind.PROCESSOR))


async def test_batch_sends_when_size_reached(tel: Tel) -> None:
    sink = Sink()
    p = batcher(tel, sink, send_batch_size=10, timeout="10s")
    await p.start()
    for i in range(4):
        await p.consume(traces(3, f"b{i}-"))
    # 12 >= 10: one batch of all 12, in order, merged into one request
    assert [b.item_count() for b in sink.got] == [12]
    assert sink.names()[:4] == ["b0-0", "b0-1", "b0-2", "b1-0"]
    await p.consume(traces(2))
    assert len(sink.got) == 1
    await p.shutdown()  # flushes the remainder
    assert [b.item_count() for b in sink.got] == [12, 2]
    assert tel.value("processor_outgoing_items_total", component="batch", kind="processor", signal="traces") == 14


async def test_batch_timeout_flushes_partial_batch(tel: Tel) -> None:
    sink = Sink()
    p = batcher(tel, sink, send_batch_size=1000, timeout="100ms")
    await p.start()
    t0 = time.monotonic()
    await p.consume(traces(5))
    await asyncio.sleep(0.02)
    assert sink.got == []
    for _ in range(100):
        if sink.got:
            break
        await asyncio.sleep(0.02)
    assert [b.item_count() for b in sink.got] == [5]
    assert sink.times[0] - t0 >= 0.09
    await p.shutdown()


async def test_batch_splits_oversize(tel: Tel) -> None:
    sink = Sink()
    p = batcher(tel, sink, send_batch_size=4, send_batch_max_size=4, timeout=0)
    await p.start()
    await p.consume(traces(10))
    await p.shutdown()
    assert [b.item_count() for b in sink.got] == [4, 4, 2]
    assert sink.names() == [f"s{i}" for i in range(10)]


async def test_batch_keeps_remainder_when_timeout_set(tel: Tel) -> None:
    sink = Sink()
    p = batcher(tel, sink, send_batch_size=4, send_batch_max_size=4, timeout="10s")
    await p.start()
    await p.consume(traces(10))
    assert [b.item_count() for b in sink.got] == [4, 4]  # 2 wait for more data or the timeout
    await p.shutdown()
    assert [b.item_count() for b in sink.got] == [4, 4, 2]


async def test_batch_merge_is_byte_level_and_counts_are_cached(tel: Tel) -> None:
    sink = Sink()
    p = batcher(tel, sink, send_batch_size=6, timeout="1s")
    await p.start()
    a, b = traces(3, "a"), traces(3, "b")
    await p.consume(a)
    await p.consume(b)
    out = sink.got[0]
    assert out.to_bytes() == a.to_bytes() + b.to_bytes()
    assert out.item_count() == 6
    assert len(out.peek().resource_spans) == 2
    await p.shutdown()


async def test_batch_metrics_and_logs(tel: Tel) -> None:
    sink = Sink()
    p = BatchProcessor(Signal.LOGS, BatchConfig(send_batch_size=3, timeout=0), sink, tel.ctx("batch", Kind.PROCESSOR))
    lg = Logs()
    sl = lg.msg.resource_logs.add().scope_logs.add()
    for _ in range(5):
        sl.log_records.add()
    await p.consume(lg)
    assert sum(b.item_count() for b in sink.got) == 5
    assert BatchConfig.model_validate({}).timeout == 0.2
    with pytest.raises(ValueError, match="send_batch_max_size"):
        BatchConfig(send_batch_size=10, send_batch_max_size=5)


async def test_memory_limiter_refuses_over_soft_limit_and_recovers(tel: Tel) -> None:
    rss = [100 * MIB]
    sink = Sink()
    ml = MemoryLimiter(Signal.TRACES, MLConfig(limit_mib=200, spike_limit_mib=50, check_interval=3600), sink,
                       tel.ctx("memory_limiter", Kind.PROCESSOR), rss=lambda: rss[0])
    assert (ml.hard, ml.soft) == (200 * MIB, 150 * MIB)
    await ml.start()
    await ml.consume(traces(2))
    rss[0] = 160 * MIB
    ml.check()
    with pytest.raises(RefusedError, match="over the soft limit 150 MiB"):
        await ml.consume(traces(3))
    assert tel.value("receiver_refused_items_total", component="memory_limiter", kind="processor", signal="traces") == 3
    rss[0] = 120 * MIB
    ml.check()
    await ml.consume(traces(4))
    assert [b.item_count() for b in sink.got] == [2, 4]
    await ml.shutdown()


async def test_memory_limiter_hard_limit_forces_gc(tel: Tel, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    def collect() -> int:
        calls.append(1)
        return 0

    monkeypatch.setattr("gotel.processors.memory_limiter.gc.collect", collect)
    readings = iter([300 * MIB, 100 * MIB])
    ml = MemoryLimiter(Signal.TRACES, MLConfig(limit_mib=200), Sink(), tel.ctx("ml", Kind.PROCESSOR), rss=lambda: next(readings))
    ml.check()
    assert calls == [1]  # over hard: collected, measured again, and now below soft
    assert not ml.refusing


def test_memory_limiter_percentage_and_validation() -> None:
    ml_cfg = MLConfig(limit_percentage=50, spike_limit_percentage=10)
    from gotel.processors.memory_limiter import limits

    assert limits(ml_cfg, total=lambda: 1000 * MIB) == (500 * MIB, 400 * MIB)
    assert limits(MLConfig(limit_mib=100), total=lambda: 0) == (100 * MIB, 80 * MIB)
    for bad in ({}, {"limit_mib": 100, "limit_percentage": 10}, {"limit_mib": 100, "spike_limit_mib": 100}):
        with pytest.raises(ValueError):
            MLConfig.model_validate(bad)


async def test_memory_limiter_real_rss(tel: Tel) -> None:
    """Against this process's real RSS: a limit far below it refuses, far above it accepts."""
    from gotel.processors.memory_limiter import process_rss

    rss = process_rss()
    assert rss > 10 * MIB
    low = MemoryLimiter(Signal.TRACES, MLConfig(limit_mib=max(2, rss // MIB // 4)), Sink(), tel.ctx("low", Kind.PROCESSOR))
    low.check()
    assert low.refusing
    high = MemoryLimiter(Signal.TRACES, MLConfig(limit_mib=rss // MIB * 4), Sink(), tel.ctx("high", Kind.PROCESSOR))
    high.check()
    assert not high.refusing
