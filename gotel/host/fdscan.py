"""A process's open fds by kind, sockets split by transport and TCP state.

Socket fds only say `socket:[INODE]`; the transport and state come from the process's own network
namespace tables (/proc/PID/net/{tcp,tcp6,udp,udp6,unix}), joined on the inode. The tables are read once
per namespace and reading (the caller passes a cache), not once per process.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from gotel.host import procfs

TCP_STATES = {
    1: "established", 2: "syn_sent", 3: "syn_received", 4: "fin_wait_1", 5: "fin_wait_2", 6: "time_wait",
    7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv",
}
# key of one group of fds: (gotel.fd.kind, network.transport or "", network.connection.state or "")
FdKey = tuple[str, str, str]
SocketTable = dict[int, tuple[str, str]]


def _inet_table(path: str, transport: str, out: SocketTable) -> None:
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 10:
                    continue
                state = TCP_STATES.get(int(parts[3], 16), parts[3]) if transport == "tcp" else ""
                out[int(parts[9])] = (transport, state)
    except OSError:
        return


def _unix_table(path: str, out: SocketTable) -> None:
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) >= 7:
                    out[int(parts[6])] = ("unix", "")
    except OSError:
        return


def socket_table(pid: int, proc: str = "/proc") -> SocketTable:
    """Socket inode -> (network.transport, TCP state) for every socket of the process's netns."""
    out: SocketTable = {}
    for name, transport in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        _inet_table(f"{proc}/{pid}/net/{name}", transport, out)
    _unix_table(f"{proc}/{pid}/net/unix", out)
    return out


def _netns(pid: int, proc: str) -> str:
    try:
        return os.readlink(f"{proc}/{pid}/ns/net")
    except OSError:
        return f"pid:{pid}"


def fd_groups(pid: int, tables: MutableMapping[str, SocketTable] | None = None,
              proc: str = "/proc") -> dict[FdKey, int]:
    """Open fds counted by (kind, transport, TCP state). `tables` caches socket tables per netns across
    the processes of one reading. A socket found in no table (netlink, packet, a TCP socket not yet bound or
    connected, which the kernel lists nowhere, one created after the table was read) is ("socket", "", "")."""
    links = procfs.fd_links(pid, proc)
    out: dict[FdKey, int] = {}
    table: SocketTable | None = None
    for link in links.values():
        kind = procfs.fd_kind(link)
        key: FdKey = (kind, "", "")
        if kind == "socket":
            if table is None:
                ns = _netns(pid, proc)
                cache = tables if tables is not None else {}
                table = cache.get(ns)
                if table is None:
                    table = cache[ns] = socket_table(pid, proc)
            try:
                transport, state = table.get(int(link[8:-1]), ("", ""))
            except ValueError:
                transport, state = "", ""
            key = ("socket", transport, state)
        out[key] = out.get(key, 0) + 1
    return out
