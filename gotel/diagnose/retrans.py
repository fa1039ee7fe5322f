"""TCP retransmits per peer for the tcp_retransmits rule: the net receiver (eBPF, tcp:tcp_retransmit_skb) run
in-process on the one target, its cumulative per-peer counts read at both ends of the window."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gotel.pdata.batch import Batch, Signal


class _Drop:
    mutates = False

    async def consume(self, batch: Batch) -> None:
        return None


def peer_name(peer: Any) -> str:
    a = dict(peer)
    addr = str(a.get("network.peer.address", "?"))
    host = f"[{addr}]" if ":" in addr else addr
    if "network.peer.port" in a:
        return f"{host}:{a['network.peer.port']}"
    return f"{host} (to local port {a.get('network.local.port', '?')})"


class EbpfRetransmits:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rcv: Any = None
        self.base: dict[str, int] = {}

    async def start(self, timeout: float = 10.0) -> None:
        from gotel.component.contract import ComponentID, Context, Kind
        from gotel.receivers.net import Config, NetReceiver
        from gotel.telemetry.counters import Telemetry

        cid = ComponentID("net", "diagnose")
        ctx = Context(cid, Kind.RECEIVER, logging.getLogger("gotel.diagnose.net"),
                      Telemetry().component(cid, Kind.RECEIVER))
        cfg = Config.model_validate({"discovery": {"pids": [self.pid], "go_only": False}, "collection_interval": 3600})
        self.rcv = NetReceiver(cfg, {Signal.METRICS: _Drop()}, ctx)
        await self.rcv.start()
        end = time.monotonic() + timeout
        while self.pid not in self.rcv.targets:
            if time.monotonic() > end:
                raise RuntimeError(f"the net receiver did not select pid {self.pid}")
            await asyncio.sleep(0.05)
        await self.mark()

    def _counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (pid, peer), n in self.rcv.read()["retrans"].items():
            if pid == self.pid:
                k = peer_name(peer)
                out[k] = out.get(k, 0) + n
        return out

    async def mark(self) -> None:
        """The window starts now."""
        self.base = await asyncio.to_thread(self._counts)

    async def stop(self) -> dict[str, int]:
        if self.rcv is None:
            return {}
        now = await asyncio.to_thread(self._counts)
        await self.rcv.shutdown()
        return {k: n - self.base.get(k, 0) for k, n in now.items() if n > self.base.get(k, 0)}
