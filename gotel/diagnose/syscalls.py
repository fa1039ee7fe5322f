"""Slow syscalls with the Go function that made them, for the slow_syscall rule: the sched receiver (eBPF
tracepoints, bpf/sched.c) run in-process on the one target for the window, its log records folded back
into SlowSyscall events."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gotel.diagnose.signals import SlowSyscall
from gotel.pdata.batch import Batch, Signal, attr_dict


class _Logs:
    mutates = False

    def __init__(self) -> None:
        self.events: list[SlowSyscall] = []

    async def consume(self, batch: Batch) -> None:
        if batch.signal != Signal.LOGS:
            return
        for rl in batch.peek().resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    a = attr_dict(r.attributes)
                    if "gotel.syscall.name" in a:
                        self.events.append(SlowSyscall(str(a["gotel.syscall.name"]),
                                                       float(a.get("gotel.syscall.duration", 0.0)),
                                                       str(a.get("code.function.name", ""))))


class _Drop:
    mutates = False

    async def consume(self, batch: Batch) -> None:
        return None


class EbpfSlowSyscalls:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.logs = _Logs()
        self.rcv: Any = None

    async def start(self) -> None:
        from gotel.component.contract import ComponentID, Context, Kind
        from gotel.receivers.sched import Config, SchedReceiver
        from gotel.telemetry.counters import Telemetry

        cid = ComponentID("sched", "diagnose")
        ctx = Context(cid, Kind.RECEIVER, logging.getLogger("gotel.diagnose.sched"),
                      Telemetry().component(cid, Kind.RECEIVER))
        cfg = Config.model_validate({"discovery": {"pids": [self.pid]}, "collection_interval": 1.0,
                                     "max_slow_syscall_logs": 100000})
        self.rcv = SchedReceiver(cfg, {Signal.LOGS: self.logs, Signal.METRICS: _Drop()}, ctx)
        await self.rcv.start()
        await self.mark()

    async def mark(self) -> None:
        """The window starts now: what happened before it is dropped."""
        if self.rcv is not None:
            await self.rcv.collect_now()
        self.logs.events.clear()

    async def stop(self) -> list[SlowSyscall]:
        if self.rcv is not None:
            await asyncio.sleep(0.2)
            await self.rcv.collect_now()
            await self.rcv.shutdown()
        return self.logs.events
