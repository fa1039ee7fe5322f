"""gRPC call outcomes for the deadline and grpc_errors rules, from the go_ebpf receiver's spans.

`gotel diagnose` runs the receiver in-process (as the agent runs it in a receiver process) on the one
target and folds its spans into per-method RpcStats: calls, codes, calls that ended past their own
deadline, and for those the client call made inside them that took the largest share of the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from gotel.diagnose.signals import RpcStat
from gotel.pdata.batch import Batch, attr_dict

log = logging.getLogger(__name__)
SERVER, CLIENT = 2, 3  # Span.SpanKind


class SpanCollector:
    """A read-only consumer that keeps the spans it is given (bounded)."""

    mutates = False

    def __init__(self, max_spans: int = 200_000) -> None:
        self.spans: list[Any] = []
        self.max_spans = max_spans
        self.dropped = 0

    async def consume(self, batch: Batch) -> None:
        for rs in batch.peek().resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    if len(self.spans) >= self.max_spans:
                        self.dropped += 1
                    else:
                        self.spans.append(sp)


def rpc_stats(spans: list[Any]) -> list[RpcStat]:
    by_id = {}
    children: dict[bytes, list[Any]] = {}
    for sp in spans:
        by_id[sp.span_id] = sp
        if sp.parent_span_id:
            children.setdefault(sp.parent_span_id, []).append(sp)
    stats: dict[tuple[str, str], RpcStat] = {}
    downstream: dict[tuple[str, str], Counter[str]] = {}
    shares: dict[tuple[str, str], list[float]] = {}
    for sp in spans:
        a = attr_dict(sp.attributes)
        if a.get("rpc.system") != "grpc" or sp.kind not in (SERVER, CLIENT):
            continue
        kind = "server" if sp.kind == SERVER else "client"
        key = (sp.name, kind)
        st = stats.get(key)
        if st is None:
            st = stats[key] = RpcStat(method=sp.name, kind=kind, calls=0)
        st.calls += 1
        code = str(a.get("rpc.response.status_code", "OK"))
        st.codes[code] = st.codes.get(code, 0) + 1
        if kind == "server" and a.get("gotel.rpc.deadline.exceeded") is True:
            st.deadline_missed += 1
            budget = float(a.get("gotel.rpc.deadline.timeout") or 0.0)
            kids = [c for c in children.get(sp.span_id, []) if c.kind == CLIENT]
            if kids and budget > 0:
                top = max(kids, key=lambda c: c.end_time_unix_nano - c.start_time_unix_nano)
                downstream.setdefault(key, Counter())[top.name] += 1
                shares.setdefault(key, []).append((top.end_time_unix_nano - top.start_time_unix_nano) / 1e9 / budget)
    for key, cnt in downstream.items():
        st = stats[key]
        st.downstream = cnt.most_common(1)[0][0]
        sh = shares[key]
        st.downstream_share = sum(sh) / len(sh)
    return sorted(stats.values(), key=lambda s: (s.kind, s.method))


class EbpfSpans:
    """The go_ebpf receiver on one pid, in this process; start() returns once the pid is attached."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.collector = SpanCollector()
        self.rcv: Any = None

    async def start(self, timeout: float = 30.0) -> None:
        from gotel.component.contract import ComponentID, Context, Kind
        from gotel.discovery.procfs import process_info
        from gotel.pdata.batch import Signal
        from gotel.receivers.go_ebpf import Config, factory
        from gotel.telemetry.counters import Telemetry

        info = process_info(self.pid)
        if info is None or not info.is_go:
            raise RuntimeError(f"pid {self.pid} is not a Go program")
        cid = ComponentID("go_ebpf", "diagnose")
        ctx = Context(cid, Kind.RECEIVER, logging.getLogger("gotel.diagnose.go_ebpf"),
                      Telemetry().component(cid, Kind.RECEIVER))
        cfg = Config.model_validate({"discovery": {"pids": [self.pid]}, "flush_interval": 0.2, "stitch_window": 0.3})
        self.rcv = factory.create(cfg, {Signal.TRACES: self.collector}, ctx)
        await self.rcv.start()
        end = time.monotonic() + timeout
        while self.pid not in self.rcv.attached_pids:
            if time.monotonic() > end:
                raise RuntimeError(f"go_ebpf did not attach to pid {self.pid} within {timeout:g}s "
                                   "(not a Go program with gRPC, or no symbols)")
            await asyncio.sleep(0.1)

    async def stop(self) -> list[RpcStat]:
        if self.rcv is not None:
            await asyncio.sleep(0.6)  # the last flush and stitch window
            await self.rcv.shutdown()
        return rpc_stats(self.collector.spans)
