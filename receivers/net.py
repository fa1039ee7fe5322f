"""`net` receiver: TCP retransmissions and state changes per process and remote endpoint, and packet
drops with the kernel's drop reason (tcp:tcp_retransmit_skb, sock:inet_sock_set_state, skb:kfree_skb).

Counts aggregate in kernel maps (bpf/net.c) and are read at the collection interval. Drop reason
names come from the running kernel's own tracepoint format (its __print_symbolic table), so a newer
kernel's reasons are named without a gotel release.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from gotel.component.contract import ComponentConfig, Consumer, Context, Receiver, ReceiverFactory
from gotel.config.types import Duration
from gotel.discovery import DiscoveryConfig, ProcessInfo
from gotel.discovery.procfs import listening_ports
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.builders import MetricsBuilder
from gotel.receiverhelper.periodic import TargetedReceiver

SCOPE = "gotel/receiver/net"
TRACEFS = "/sys/kernel/tracing"
TCP_STATES = {
    1: "established", 2: "syn_sent", 3: "syn_received", 4: "fin_wait_1", 5: "fin_wait_2", 6: "time_wait",
    7: "closed", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv",
}
ETH_P = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp"}


class Config(ComponentConfig):
    collection_interval: Duration = Field(10.0, gt=0, description="time between two readings of the maps")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    node_drops: bool = Field(True, description="also report drops not attributable to a selected process")


def _format(event: str) -> str:
    with open(f"{TRACEFS}/events/{event}/format") as f:
        return f.read()


def drop_reasons(fmt: str | None = None) -> dict[int, str]:
    """Reason number -> name from kfree_skb's print format (`__print_symbolic(REC->reason, {2, "X"}..)`)."""
    text = fmt if fmt is not None else _format("skb/kfree_skb")
    m = re.search(r"__print_symbolic\(REC->reason,(.*)\)", text, re.S)
    if not m:
        return {}
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}', m.group(1))}


def _has_field(fmt: str, name: str) -> bool:
    return re.search(rf"field:[^;]*\b{name}(\[\d+\])?;", fmt) is not None


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw[:16])))


def _proc_tcp_tuples(pid: int) -> dict[tuple[str, int, str, int], int]:
    """(local addr, local port, remote addr, remote port) -> socket inode, in the process's netns."""
    out: dict[tuple[str, int, str, int], int] = {}
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10:
                        continue
                    la, lp = parts[1].split(":")
                    ra, rp = parts[2].split(":")
                    out[(_hexaddr(fam, la), int(lp, 16), _hexaddr(fam, ra), int(rp, 16))] = int(parts[9])
        except OSError:
            continue
    return out


def _hexaddr(family: int, h: str) -> str:
    b = bytes.fromhex(h)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(b[::-1]))
    # /proc/net/tcp6 prints four host-order 32-bit words
    words = b"".join(b[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("socket:["):
                out.add(int(t[8:-1]))
    except OSError:
        pass
    return out


class NetReceiver(TargetedReceiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> None:
        super().__init__(sinks, ctx, cfg.collection_interval, cfg.discovery)
        self.cfg = cfg
        self.reasons: dict[int, str] = {}
        self._listening: dict[int, set[int]] = {}
        self._retrans: dict[tuple[Any, ...], int] = {}
        self._states: dict[tuple[Any, ...], int] = {}
        self._unattributed = {"retrans": 0, "states": 0}
        self._lost: Any = None

    def setup(self) -> None:
        from gotel.ebpf.program import BpfProgram, LostCounter

        defines: dict[str, Any] = {}
        if _has_field(_format("tcp/tcp_retransmit_skb"), "err"):
            defines["HAS_RETRANS_ERR"] = 1
        kfree = _format("skb/kfree_skb")
        if _has_field(kfree, "rx_sk"):
            defines["HAS_RX_SK"] = 1
        self.reasons = drop_reasons(kfree)
        self.prog = BpfProgram("net.c", defines=defines)
        self._lost = LostCounter(self.prog, self.ctx.telemetry, "net")
        self._start_ns = time.time_ns()

    def on_added(self, info: ProcessInfo) -> None:
        if self.prog is not None:
            self.prog.table("targets")[ctypes.c_uint32(info.pid)] = ctypes.c_uint8(1)

    def on_removed(self, pid: int) -> None:
        if self.prog is None:
            return
        self.prog.table("targets").pop(ctypes.c_uint32(pid), None)
        for acc in (self._retrans, self._states):
            for k in [k for k in acc if k[0] == pid]:
                del acc[k]
        owners = self.prog.table("owners")
        for k, v in list(owners.items()):
            if v.value == pid:
                owners.pop(k, None)

    # ---- reading ----

    def _attribution(self) -> dict[tuple[str, int, str, int], int]:
        """4-tuple -> pid for the selected processes' current TCP sockets."""
        out: dict[tuple[str, int, str, int], int] = {}
        for pid in self.targets:
            inodes = _socket_inodes(pid)
            for t, ino in _proc_tcp_tuples(pid).items():
                if ino in inodes:
                    out[t] = pid
        return out

    def _drain(self) -> None:
        """Moves the per-connection counts out of the kernel maps into per-(pid, peer) totals; a
        connection's owner is looked up now, while the socket most likely still exists."""
        tuples: dict[tuple[str, int, str, int], int] | None = None
        for name, acc in (("retrans", self._retrans), ("states", self._states)):
            table = self.prog.table(name)
            try:
                items = list(table.items_lookup_and_delete_batch())
            except Exception:  # kernels without batch ops: read, then delete what was read
                items = list(table.items())
                for k, _ in items:
                    table.pop(k, None)
            for k, v in items:
                n = int(getattr(v, "value", v))  # batch ops yield ints, items() c_ulongs
                fam = socket.AF_INET if k.family == 2 else socket.AF_INET6
                raddr, laddr = _addr(fam, bytes(k.raddr)), _addr(fam, bytes(k.laddr))
                pid = k.tgid
                if pid == 0:
                    if tuples is None:
                        tuples = self._attribution()
                    pid = tuples.get((laddr, k.lport, raddr, k.rport), 0)
                ntype = "ipv4" if fam == socket.AF_INET else "ipv6"
                key: Any = (pid, ntype, raddr, k.rport, k.lport)
                if pid in self.targets:
                    peer = self._peer(pid, ntype, raddr, k.rport, k.lport)
                    if name == "states":
                        peer["network.connection.state"] = TCP_STATES.get(k.state, str(k.state))
                    key = (pid, tuple(sorted(peer.items())))
                else:
                    key = (0, ())
                    self._unattributed[name] += n
                acc[key] = acc.get(key, 0) + n

    def read(self) -> dict[str, Any]:
        """Cumulative counts: TCP ones per (pid, peer attributes), drops per (pid, reason, type)."""
        self._listening = {}
        self._drain()
        drops: dict[tuple[int, str, str], int] = {}
        for k, v in self.prog.table("drops").items():
            proto = k.protocol  # the tracepoint already stores it in host order
            key3 = (k.tgid, self.reasons.get(k.reason, str(k.reason)), ETH_P.get(proto, f"0x{proto:04x}"))
            drops[key3] = drops.get(key3, 0) + int(sum(v))
        return {"retrans": dict(self._retrans), "states": dict(self._states), "drops": drops}

    def retransmits(self, pid: int) -> int:
        return sum(n for k, n in self.read()["retrans"].items() if k[0] == pid)

    def unattributed(self) -> dict[str, int]:
        """TCP events whose socket no selected process owned (or whose owner was gone)."""
        self.read()
        return dict(self._unattributed)

    def _peer(self, pid: int, ntype: str, raddr: str, rport: int, lport: int) -> dict[str, Any]:
        a: dict[str, Any] = {"network.type": ntype, "network.peer.address": raddr}
        # on the server side (the local port is one the process listens on) the peer's port is
        # ephemeral, unbounded cardinality: keep the local port; on the client side the peer's port
        # names the service
        listening = self._listening.get(pid)
        if listening is None:
            listening = self._listening[pid] = listening_ports(pid)
        if lport in listening:
            a["network.local.port"] = lport
        else:
            a["network.peer.port"] = rport
        return a

    def collect(self) -> list[Batch]:
        if self.prog is None:
            return []
        data = self.read()
        if self._lost is not None:
            self._lost.update()  # tracepoint runs the kernel skipped: counts these metrics are missing
        mb = MetricsBuilder(SCOPE, time_ns=time.time_ns())
        start = self._start_ns
        for (pid, peer), n in data["retrans"].items():
            if pid in self.targets:
                mb.sum(self._resource(pid), "process.network.tcp.retransmits", n, unit="{segment}",
                       attributes=dict(peer), start=start,
                       desc="TCP segments retransmitted on the process's connections (tcp:tcp_retransmit_skb).")
        for (pid, peer), n in data["states"].items():
            if pid in self.targets:
                mb.sum(self._resource(pid), "process.network.tcp.state_changes", n, unit="{transition}",
                       attributes=dict(peer), start=start,
                       desc="TCP state transitions into network.connection.state (sock:inet_sock_set_state).")
        for (pid, reason, proto), n in data["drops"].items():
            attrs = {"gotel.drop.reason": reason, "network.type": proto}
            if pid in self.targets:
                mb.sum(self._resource(pid), "process.network.packet.drops", n, unit="{packet}", attributes=attrs,
                       start=start, desc="Packets the kernel dropped for the process, by drop reason.")
            elif pid == 0 and self.cfg.node_drops:
                mb.sum({"host.name": socket.gethostname()}, "gotel.network.packet.drops", n, unit="{packet}",
                       attributes=attrs, start=start,
                       desc="Packets the kernel dropped on this node, by drop reason (skb:kfree_skb).")
        return [mb.batch()]


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    return NetReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="net",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="TCP retransmissions and state changes per process and peer, packet drops by kernel drop "
    "reason, from tcp/sock/skb tracepoints aggregated in the kernel",
    create=create,
    needs_bpf=True,
)
