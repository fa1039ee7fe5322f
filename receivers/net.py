"""`net` receiver: TCP below the connection pool, per process and remote endpoint.

Retransmissions, state changes, resets sent and received (with the kernel's reset reason), connect
latency and failures (by errno), how each connection ended and whether the peer's TCP was still
answering then (which tells a peer that is alive but whose service stopped answering from a dead one),
keepalive probes left unanswered, and packet drops with the kernel's drop reason; from tracepoints only
(tcp:*, sock:*, skb:kfree_skb) and /proc/PID/net.

Counts aggregate in kernel maps (bpf/net.c) and are read at the collection interval. Drop and reset
reason names come from the running kernel's own tracepoint formats (their __print_symbolic tables), so
a newer kernel's reasons are named without a gotel release.
"""

from __future__ import annotations

import ctypes
import errno
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
from gotel.pdata.builders import MetricsBuilder, log2_bounds_seconds
from gotel.receiverhelper.periodic import TargetedReceiver

SCOPE = "gotel/receiver/net"
TRACEFS = "/sys/kernel/tracing"
TCP_STATES = {
    1: "established", 2: "syn_sent", 3: "syn_received", 4: "fin_wait_1", 5: "fin_wait_2", 6: "time_wait",
    7: "closed", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv",
}
ETH_P = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp"}
CLOSE_CAUSES = {1: "peer_close", 2: "local_close", 3: "peer_reset", 4: "keepalive_timeout", 5: "abort"}
CONNECT_SLOTS = 40  # log2 slots of ns, as bpf/net.c clamps them
CLOSED_WHILE_CONNECTING = -1
ABANDONED_AFTER_NS = 1_000_000_000  # a failed connect with no error by then was closed by its process


class Config(ComponentConfig):
    collection_interval: Duration = Field(10.0, gt=0, description="time between two readings of the maps")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    node_drops: bool = Field(True, description="also report drops not attributable to a selected process")
    peer_liveness: bool = Field(
        True,
        description="track retransmissions the peer has not answered (tcp:tcp_probe, one hash delete per "
        "received segment), to tell at a connection's end whether the peer's TCP was still answering",
    )


def _format(event: str) -> str:
    with open(f"{TRACEFS}/events/{event}/format") as f:
        return f.read()


def drop_reasons(fmt: str | None = None) -> dict[int, str]:
    """Reason number -> name from kfree_skb's print format (`__print_symbolic(REC->reason, {2, "X"}..)`)."""
    return _symbols(fmt if fmt is not None else _format("skb/kfree_skb"), "reason")


def _symbols(fmt: str, field: str) -> dict[int, str]:
    """Number -> name of `field` from a tracepoint's print format (its numeric __print_symbolic table)."""
    m = re.search(rf"__print_symbolic\(REC->{field},([^)]*)\)", fmt)
    if not m:
        return {}
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}', m.group(1))}


def reset_reasons(fmt: str | None = None) -> dict[int, str]:
    """sk_rst_reason number -> name from tcp_send_reset's format (kernels >= 6.10 have it)."""
    return _symbols(fmt if fmt is not None else _format("tcp/tcp_send_reset"), "reason")


def _exists(event: str) -> bool:
    return os.path.exists(f"{TRACEFS}/events/{event}/format")


def errno_name(err: int) -> str:
    """error.type of a failed connect: the errno's name (ECONNREFUSED), or `closed` for an attempt its
    own process closed before the handshake ended (a dial timeout or cancel in the program)."""
    if err == CLOSED_WHILE_CONNECTING:
        return "closed"
    return errno.errorcode.get(err, f"E{err}")


def _take(table: Any) -> list[tuple[Any, Any]]:
    """Every entry of a map, removed from it (user space keeps the running totals)."""
    try:
        return list(table.items_lookup_and_delete_batch())
    except Exception:  # kernels without batch ops: read, then delete what was read
        items = list(table.items())
        for k, _ in items:
            table.pop(k, None)
        return items


def _n(v: Any) -> int:
    return int(getattr(v, "value", v))  # batch ops yield ints, items() c_ulongs


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


class _ConnectKey:
    """A `connects` key made in user space (for an attempt closed while connecting)."""

    def __init__(self, family: int, rport: int, raddr: bytes, tgid: int) -> None:
        self.family, self.rport, self.raddr, self.tgid = family, rport, raddr, tgid


def _log2(ns: int) -> int:
    return max(ns, 1).bit_length() - 1


def keepalive_sockets(pid: int, inodes: set[int]) -> list[tuple[str, int, str, int, int]]:
    """(local addr, local port, peer addr, peer port, keepalive probes sent and not answered) for the
    process's established sockets whose keepalive timer runs: /proc/PID/net/tcp's `tr` 2, where the
    `timeout` column is the socket's icsk_probes_out (zeroed by any segment from the peer)."""
    out = []
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "01" or int(parts[9]) not in inodes:
                        continue
                    if parts[5].split(":")[0] != "02":
                        continue
                    la, lp = parts[1].split(":")
                    ra, rp = parts[2].split(":")
                    out.append((_hexaddr(fam, la), int(lp, 16), _hexaddr(fam, ra), int(rp, 16), int(parts[8])))
        except OSError:
            continue
    return out


def netstat(pid: int) -> dict[str, int]:
    """TcpExt counters of the process's network namespace (/proc/PID/net/netstat)."""
    try:
        with open(f"/proc/{pid}/net/netstat") as f:
            lines = [line.split() for line in f if line.startswith("TcpExt:")]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0][1:], (int(x) for x in lines[1][1:]), strict=False))


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
        self.rst_reasons: dict[int, str] = {}
        self.liveness = False
        self._listening: dict[int, set[int]] = {}
        self._retrans: dict[tuple[Any, ...], int] = {}
        self._states: dict[tuple[Any, ...], int] = {}
        self._resets: dict[tuple[Any, ...], int] = {}
        self._closes: dict[tuple[Any, ...], int] = {}
        # (pid, peer attributes, errno) -> [count per log2 slot..., sum of ns]
        self._connects: dict[tuple[Any, ...], list[int]] = {}
        self._unattributed = {"retrans": 0, "states": 0, "resets": 0, "closes": 0}
        self._tuples: dict[tuple[str, int, str, int], int] | None = None
        self._lost: Any = None

    def setup(self) -> None:
        from gotel.ebpf.program import BpfProgram, LostCounter

        defines: dict[str, Any] = {}
        if _has_field(_format("tcp/tcp_retransmit_skb"), "err"):
            defines["HAS_RETRANS_ERR"] = 1
        kfree = _format("skb/kfree_skb")
        if _has_field(kfree, "rx_sk"):
            defines["HAS_RX_SK"] = 1
        rst = _format("tcp/tcp_send_reset")
        if _has_field(rst, "reason"):
            self.rst_reasons = reset_reasons(rst)
            ka = [n for n, name in self.rst_reasons.items() if name == "TCP_KEEPALIVE_TIMEOUT"]
            defines["HAS_RST_REASON"] = 1
            defines["RST_KEEPALIVE"] = ka[0] if ka else 0xFFFF  # no such reason: never matches
        if _exists("sock/inet_sk_error_report"):
            defines["HAS_ERROR_REPORT"] = 1
        if self.cfg.peer_liveness and _exists("tcp/tcp_probe") and _has_field(_format("tcp/tcp_probe"), "skaddr"):
            defines["HAS_PROBE_SK"] = 1
            self.liveness = True
        self.reasons = drop_reasons(kfree)
        self.prog = BpfProgram("net.c", defines=defines)
        self._lost = LostCounter(self.prog, self.ctx.telemetry, "net")
        self._start_ns = time.time_ns()

    def on_added(self, info: ProcessInfo) -> None:
        if self.prog is not None:
            self.prog.table("targets")[ctypes.c_uint32(info.pid)] = ctypes.c_uint8(1)
            # ports it listened on before it was selected: connections it accepts are its own
            listeners = self.prog.table("listeners")
            for port in listening_ports(info.pid):
                listeners[ctypes.c_uint32(port)] = ctypes.c_uint32(info.pid)

    def on_removed(self, pid: int) -> None:
        if self.prog is None:
            return
        self.prog.table("targets").pop(ctypes.c_uint32(pid), None)
        for acc in (self._retrans, self._states, self._resets, self._closes, self._connects):
            for k in [k for k in acc if k[0] == pid]:
                del acc[k]
        for name in ("owners", "listeners"):
            table = self.prog.table(name)
            for k, v in list(table.items()):
                if v.value == pid:
                    table.pop(k, None)

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
        self._tuples = None
        for name, acc in (("retrans", self._retrans), ("states", self._states)):
            for k, v in _take(self.prog.table(name)):
                n = _n(v)
                pid, ntype, raddr, _laddr = self._owner(k)
                if pid in self.targets:
                    peer = self._peer(pid, ntype, raddr, k.rport, k.lport)
                    if name == "states":
                        peer["network.connection.state"] = TCP_STATES.get(k.state, str(k.state))
                    key: Any = (pid, tuple(sorted(peer.items())))
                else:
                    key = (0, ())
                    self._unattributed[name] += n
                acc[key] = acc.get(key, 0) + n
        self._drain_resets()
        self._drain_closes()
        self._drain_connects()

    def _owner(self, k: Any) -> tuple[int, str, str, str]:
        """(pid, network.type, peer address, local address) of a map key with tgid, family, raddr,
        laddr, lport, rport; tgid 0 is resolved from the selected processes' current sockets."""
        fam = socket.AF_INET if k.family == 2 else socket.AF_INET6
        raddr, laddr = _addr(fam, bytes(k.raddr)), _addr(fam, bytes(k.laddr))
        pid = k.tgid
        if pid == 0:
            if self._tuples is None:
                self._tuples = self._attribution()
            pid = self._tuples.get((laddr, k.lport, raddr, k.rport), 0)
        return pid, "ipv4" if fam == socket.AF_INET else "ipv6", raddr, laddr

    def _drain_resets(self) -> None:
        for k, v in _take(self.prog.table("resets")):
            n = _n(v)
            attrs: dict[str, Any] = {"network.io.direction": "receive" if k.received else "transmit"}
            if not k.received:
                attrs["gotel.tcp.reset.reason"] = (self.rst_reasons.get(k.reason, str(k.reason)) if self.rst_reasons
                                                   else ("abort" if k.active else "reply"))
            pid, ntype, raddr, _ = self._owner(k) if k.has_sk else (0, "", "", "")
            if pid in self.targets:
                attrs.update(self._peer(pid, ntype, raddr, k.rport, k.lport))
                key: Any = (pid, tuple(sorted(attrs.items())))
            else:
                key = (0, tuple(sorted(attrs.items())))  # node-wide: no socket, or none of ours
                self._unattributed["resets"] += n
            self._resets[key] = self._resets.get(key, 0) + n

    def _drain_closes(self) -> None:
        for k, v in _take(self.prog.table("closes")):
            n = _n(v)
            pid, ntype, raddr, _ = self._owner(k)
            if pid not in self.targets:
                self._unattributed["closes"] += n
                continue
            attrs: dict[str, Any] = {"gotel.tcp.close.cause": CLOSE_CAUSES.get(k.cause, str(k.cause))}
            if k.answering in (0, 1):
                attrs["gotel.tcp.peer.answering"] = bool(k.answering)
            attrs.update(self._peer(pid, ntype, raddr, k.rport, k.lport))
            key = (pid, tuple(sorted(attrs.items())))
            self._closes[key] = self._closes.get(key, 0) + n

    def _drain_connects(self) -> None:
        items = [(k, int(v.count), int(v.sum_ns), k.err, k.slot) for k, v in _take(self.prog.table("connects"))]
        # attempts that failed without a RST and got no error from the kernel within a second: their
        # own process closed them while connecting
        failed = self.prog.table("failed")
        now = time.monotonic_ns()  # the clock of bpf_ktime_get_ns
        for k, v in list(failed.items()):
            if now - v.when >= ABANDONED_AFTER_NS:
                failed.pop(k, None)
                k2 = _ConnectKey(k.family, k.rport, bytes(k.raddr), v.tgid)
                items.append((k2, 1, int(v.dur), CLOSED_WHILE_CONNECTING, _log2(int(v.dur))))
        for k, count, sum_ns, err, slot in items:
            pid = k.tgid
            if pid not in self.targets:
                continue
            fam = socket.AF_INET if k.family == 2 else socket.AF_INET6
            attrs: dict[str, Any] = {"network.type": "ipv4" if fam == socket.AF_INET else "ipv6",
                                     "network.peer.address": _addr(fam, bytes(k.raddr)),
                                     "network.peer.port": k.rport}
            if err != 0:
                attrs["error.type"] = errno_name(err)
            key = (pid, tuple(sorted(attrs.items())))
            acc = self._connects.setdefault(key, [0] * (CONNECT_SLOTS + 1))
            acc[min(slot, CONNECT_SLOTS - 1)] += count
            acc[CONNECT_SLOTS] += sum_ns

    def read(self) -> dict[str, Any]:
        """Cumulative counts: TCP ones per (pid, peer attributes), drops per (pid, reason, type)."""
        self._listening = {}
        self._drain()
        drops: dict[tuple[int, str, str], int] = {}
        for k, v in self.prog.table("drops").items():
            proto = k.protocol  # the tracepoint already stores it in host order
            key3 = (k.tgid, self.reasons.get(k.reason, str(k.reason)), ETH_P.get(proto, f"0x{proto:04x}"))
            drops[key3] = drops.get(key3, 0) + int(sum(v))
        return {"retrans": dict(self._retrans), "states": dict(self._states), "drops": drops,
                "resets": dict(self._resets), "closes": dict(self._closes),
                "connects": {k: list(v) for k, v in self._connects.items()}}

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
                mb.sum(self._node(), "gotel.network.packet.drops", n, unit="{packet}",
                       attributes=attrs, start=start,
                       desc="Packets the kernel dropped on this node, by drop reason (skb:kfree_skb).")
        for (pid, attrs), n in data["resets"].items():
            if pid in self.targets:
                mb.sum(self._resource(pid), "process.network.tcp.resets", n, unit="{reset}", attributes=dict(attrs),
                       start=start, desc="TCP RSTs the process's connections sent or received "
                       "(tcp:tcp_send_reset, tcp:tcp_receive_reset); sent ones by the kernel's reset reason.")
            elif pid == 0:
                mb.sum(self._node(), "gotel.network.tcp.resets", n, unit="{reset}", attributes=dict(attrs),
                       start=start, desc="TCP RSTs on this node owned by no selected process (e.g. NO_SOCKET: "
                       "the answer to a connection attempt to a closed port).")
        for (pid, attrs), n in data["closes"].items():
            if pid in self.targets:
                mb.sum(self._resource(pid), "process.network.tcp.closes", n, unit="{connection}",
                       attributes=dict(attrs), start=start,
                       desc="Established connections that ended, by how (gotel.tcp.close.cause) and whether "
                       "the peer's TCP still answered then (gotel.tcp.peer.answering).")
        bounds = log2_bounds_seconds(CONNECT_SLOTS - 1)
        for (pid, attrs), acc in data["connects"].items():
            if pid in self.targets:
                mb.histogram(self._resource(pid), "process.network.tcp.connect.duration", bounds,
                             acc[:CONNECT_SLOTS], acc[CONNECT_SLOTS] / 1e9, unit="s", attributes=dict(attrs),
                             start=start, desc="connect() to the end of the handshake: established, or failed "
                             "with error.type (ECONNREFUSED, ETIMEDOUT, ..., closed by the process).")
        self._keepalive(mb)
        return [mb.batch()]

    def _node(self) -> dict[str, Any]:
        return {"host.name": socket.gethostname()}

    def _keepalive(self, mb: MetricsBuilder) -> None:
        """Keepalive probes the peer has not answered, per process and peer, now; and the keepalive
        probes each network namespace of a selected process sent (TcpExt TCPKeepAlive)."""
        namespaces: dict[str, int] = {}
        for pid in sorted(self.targets):
            try:
                namespaces.setdefault(os.readlink(f"/proc/{pid}/ns/net"), pid)
            except OSError:
                continue
            worst: dict[tuple[tuple[str, Any], ...], int] = {}
            for _la, lport, raddr, rport, probes in keepalive_sockets(pid, _socket_inodes(pid)):
                ntype = "ipv6" if ":" in raddr else "ipv4"
                key = tuple(sorted(self._peer(pid, ntype, raddr, rport, lport).items()))
                worst[key] = max(worst.get(key, 0), probes)
            for attrs, probes in worst.items():
                mb.gauge(self._resource(pid), "process.network.tcp.keepalive.unanswered", probes, unit="{probe}",
                         attributes=dict(attrs), desc="Keepalive probes sent on the connection to this peer "
                         "that got no answer yet (the most of any one connection; /proc/PID/net/tcp).")
        for ns, pid in namespaces.items():
            sent = netstat(pid).get("TCPKeepAlive")
            if sent is not None:
                mb.sum({**self._node(), "gotel.network.namespace": ns}, "gotel.network.tcp.keepalive.probes",
                       sent, unit="{probe}", desc="Keepalive probes the network namespace sent "
                       "(/proc/net/netstat TcpExt TCPKeepAlive, since the namespace was made).")


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    return NetReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="net",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="TCP retransmissions, state changes, resets, connect latency and failures, connection "
    "ends and peer liveness, keepalive probes per process and peer, packet drops by kernel drop reason, "
    "from tcp/sock/skb tracepoints aggregated in the kernel",
    create=create,
    needs_bpf=True,
)
