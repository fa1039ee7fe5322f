"""`memory_limiter` processor: refuses data upstream when the process is over its soft memory limit.

Like the collector's: a periodic check of the process's memory (RSS here, from /proc/self/statm)
against a hard limit (limit_mib or limit_percentage of the machine's or cgroup's memory) and a soft
limit (hard - spike). Above soft, consume() raises RefusedError so that receivers push back
instead of the agent growing; above hard, a full garbage collection is forced as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Callable

from pydantic import Field, model_validator

from gotel.component.contract import (
    ALL_SIGNALS,
    ComponentConfig,
    Consumer,
    Context,
    Processor,
    ProcessorFactory,
    RefusedError,
)
from gotel.config.types import Duration
from gotel.pdata.batch import Batch, Signal

MIB = 1 << 20


class Config(ComponentConfig):
    check_interval: Duration = Field(1.0, gt=0, description="how often memory is measured")
    limit_mib: int = Field(0, ge=0, description="hard limit of the process's RSS in MiB")
    spike_limit_mib: int = Field(0, ge=0, description="headroom below the hard limit (soft = hard - spike); default 20% of limit")
    limit_percentage: int = Field(0, ge=0, le=100, description="hard limit as a percentage of total memory (cgroup limit if any)")
    spike_limit_percentage: int = Field(0, ge=0, le=100, description="headroom as a percentage of total memory")

    @model_validator(mode="after")
    def _limits(self) -> Config:
        if not self.limit_mib and not self.limit_percentage:
            raise ValueError("set limit_mib or limit_percentage")
        if self.limit_mib and self.limit_percentage:
            raise ValueError("set either limit_mib or limit_percentage, not both")
        if self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            raise ValueError("spike_limit_mib must be lower than limit_mib")
        if self.limit_percentage and self.spike_limit_percentage >= self.limit_percentage:
            raise ValueError("spike_limit_percentage must be lower than limit_percentage")
        return self


def process_rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def total_memory() -> int:
    """The cgroup v2 memory limit when one is set, else the machine's MemTotal (bytes)."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            v = f.read().strip()
        if v != "max":
            total = min(total, int(v)) if total else int(v)
    except (OSError, ValueError):
        pass
    return total


def limits(cfg: Config, total: Callable[[], int] = total_memory) -> tuple[int, int]:
    """(hard, soft) in bytes."""
    if cfg.limit_mib:
        hard = cfg.limit_mib * MIB
        spike = cfg.spike_limit_mib * MIB if cfg.spike_limit_mib else hard // 5
    else:
        t = total()
        hard = t * cfg.limit_percentage // 100
        spike = t * cfg.spike_limit_percentage // 100 if cfg.spike_limit_percentage else hard // 5
    return hard, hard - spike


class MemoryLimiter(Processor):
    mutates = False

    def __init__(
        self,
        signal: Signal,
        cfg: Config,
        nxt: Consumer,
        ctx: Context,
        rss: Callable[[], int] = process_rss,
        total: Callable[[], int] = total_memory,
    ) -> None:
        self.signal = signal
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        self._rss = rss
        self.hard, self.soft = limits(cfg, total)
        self.refusing = False
        self.last_rss = 0
        self._task: asyncio.Task[None] | None = None
        self._last_log = 0.0
        self._gauge = ctx.telemetry.gauge("memory_limiter_rss_bytes", "Process RSS at the memory limiter's last check.")
        self._refusing_gauge = ctx.telemetry.gauge(
            "memory_limiter_refusing", "1 while the memory limiter refuses data (over its soft limit)."
        )

    def check(self) -> None:
        """Measures memory and updates the refusing state (called every check_interval)."""
        rss = self._rss()
        if rss > self.hard:
            gc.collect()
            rss = self._rss()
        was = self.refusing
        self.refusing = rss >= self.soft
        self.last_rss = rss
        self._gauge.set(rss)
        self._refusing_gauge.set(1 if self.refusing else 0)
        if self.refusing != was:
            if self.refusing:
                self.ctx.logger.warning(
                    "%s: memory %d MiB is over the soft limit %d MiB (hard %d MiB): refusing data",
                    self.ctx.id, rss // MIB, self.soft // MIB, self.hard // MIB,
                )
            else:
                self.ctx.logger.info("%s: memory %d MiB is below the soft limit again: accepting data", self.ctx.id, rss // MIB)

    async def start(self) -> None:
        self.check()
        self._task = asyncio.create_task(self._loop(), name=f"{self.ctx.id}-check")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_interval)
            try:
                self.check()
            except OSError as e:
                self.ctx.logger.warning("%s: cannot read memory usage: %s", self.ctx.id, e)

    async def consume(self, batch: Batch) -> None:
        n = batch.item_count()
        if self.refusing:
            self.ctx.telemetry.refused(self.signal, n)
            raise RefusedError(
                f"memory limiter {self.ctx.id}: usage {self.last_rss // MIB} MiB is over the soft limit "
                f"{self.soft // MIB} MiB; retry later"
            )
        self.ctx.telemetry.processed(self.signal, n, n)
        await self.next.consume(batch)

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> MemoryLimiter:
    return MemoryLimiter(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="memory_limiter",
    config=Config,
    signals=ALL_SIGNALS,
    description="Refuses data upstream while the process is over its soft memory limit (the collector's memory_limiter).",
    create=create,
)

