"""Requests gotel itself makes (pprof and metrics scrapes, OTLP exports to a Go collector) are not the
target's traffic: their server spans and RED samples are dropped and counted.

A server call is gotel's when its client socket belongs to a gotel process on this node. The client
socket is found in the server process's own network namespace (/proc/PID/net/tcp{,6}: the socket
whose local port is the call's client port), and its owner among gotel's processes (their
/proc/PID/fd links; a socket made inside a pod's namespace still belongs to the process that made
it). Only loopback clients are looked up: that is how gotel reaches local and pod-local endpoints.

Verdicts are cached per record shape (events.Assembler's: the peer address and ports are part of
its key), so a keep-alive connection costs one lookup per `ttl_s`; verdicts expire so that a client
port reused by another program is not dropped (or kept) for long. A lookup costs a few ms
(bench/go_ebpf/selffilter.py), so at most `max_lookups_per_s` are made a second: in a burst of new
local connections the rest are kept and looked at again a second later (gotel's own connections are
few and kept alive). Short-lived gotel clients (`gotel flame URL`) may close their socket before the
call's record is read, and are then traced like anyone else's.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import time
from typing import Any

from gotel.discovery.procfs import PROC, all_pids, socket_inodes, tcp_socket_inodes
from gotel.pdata.batch import Signal

# events.T_GRPC_SERVER, events.T_HTTP_SERVER
_SERVER_TYPES = frozenset((1, 3))
_monotonic = time.monotonic


def is_gotel_cmdline(argv: list[bytes]) -> bool:
    """`gotel ...` (the console script, run by its interpreter or directly) or `python -m gotel ...`."""
    head = argv[:4]
    if head and os.path.basename(head[0]) == b"gotel":
        return True
    if len(head) > 1 and os.path.basename(head[0]).startswith(b"python") and os.path.basename(head[1]) == b"gotel":
        return True
    return any(a == b"-m" and b == b"gotel" for a, b in itertools.pairwise(head))


def gotel_pids() -> set[int]:
    """This process and every gotel process on the node (pipeline, receiver processes, CLIs)."""
    out = {os.getpid()}
    for pid in all_pids():
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if is_gotel_cmdline(argv):
            out.add(pid)
    return out


def _loopback(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip == "localhost"
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback


class SelfFilter:
    """drop(type, shape, rec, pid) -> True for a server call whose client is a gotel process (counted)."""

    def __init__(self, telemetry: Any = None, *, ttl_s: float = 30.0, refresh_s: float = 5.0,
                 cache_size: int = 4096, max_lookups_per_s: int = 20) -> None:
        self.telemetry = telemetry
        self.max_lookups_per_s = max_lookups_per_s
        self._second = -1e9
        self._budget = 0
        self.deferred = 0  # verdicts put off by the lookup budget
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.cache_size = cache_size
        self._verdicts: dict[Any, tuple[bool, float]] = {}  # insertion-ordered: the oldest first
        self._gotel: set[int] = set()
        self._gotel_at = -1e9
        self.dropped = 0
        self.lookups = 0

    def drop(self, typ: int, shape: Any, rec: bytes, pid: int) -> bool:
        """shape: the Assembler's object for the record's shape (peer address and ports are part of it);
        identity-hashed here, so a cached verdict costs one small-tuple dict lookup."""
        if typ not in _SERVER_TYPES:
            return False
        k = (pid, shape)
        hit = self._verdicts.get(k)
        now = _monotonic()
        if hit is None or hit[1] < now:
            if now - self._second >= 1.0:
                self._second, self._budget = now, self.max_lookups_per_s
            if self._budget > 0:
                self._budget -= 1
                hit = self._verdicts[k] = (self._decide(rec, pid), now + self.ttl_s)
            else:  # a burst of new local connections: kept for now, looked at again in a second
                self.deferred += 1
                hit = self._verdicts[k] = (False, now + 1.0)
            if len(self._verdicts) > self.cache_size:
                del self._verdicts[next(iter(self._verdicts))]  # the oldest
        if hit[0]:
            self.dropped += 1
            if self.telemetry is not None:
                self.telemetry.dropped(Signal.TRACES, 1, "gotel_request")
        return hit[0]

    def _decide(self, rec: bytes, pid: int) -> bool:
        from gotel.receivers.go_ebpf.events import T_HTTP_SERVER, decode

        c = decode(rec, 0)
        if c is None:
            return False
        if c.type == T_HTTP_SERVER:  # net/http's Request.RemoteAddr: "ip:port"
            host, _, port = (c.msg or "").rpartition(":")
            ip, cport = host, int(port) if port.isdigit() else 0
        else:
            ip, cport = c.rip or "", c.rport
        if not cport or not _loopback(ip):
            return False
        return self.client_is_gotel(pid, cport)

    def client_is_gotel(self, server_pid: int, client_port: int) -> bool:
        """Whether the socket with local port `client_port`, in server_pid's network namespace, is a
        gotel process's."""
        self.lookups += 1
        inodes = tcp_socket_inodes(client_port, listen_only=False, netns_of=server_pid)
        if not inodes:
            return False
        now = time.monotonic()
        if now - self._gotel_at > self.refresh_s:
            self._gotel, self._gotel_at = gotel_pids(), now
        if any(socket_inodes(g) & inodes for g in self._gotel):
            return True
        if now - self._gotel_at > 1.0:  # a gotel process started since the last look (a restarted receiver)
            self._gotel, self._gotel_at = gotel_pids(), now
            return any(socket_inodes(g) & inodes for g in self._gotel)
        return False
