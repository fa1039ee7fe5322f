"""The TCP ports a config listens on: two keys on one port, or a port another process holds.

Both are one line naming the keys: `gotel validate` reports a clash inside the config, and the
agent checks every port before it starts anything (a busy port used to surface as a chained
traceback, or as grpc core's own log line, from whichever component bound it first).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from gotel.component.contract import Kind
from gotel.config.model import Config

# Where each listening component type keeps its host:port (a unix:// endpoint or port 0 never clashes).
LISTEN_FIELDS: dict[tuple[Kind, str], tuple[tuple[str, ...], ...]] = {
    (Kind.RECEIVER, "otlp"): (("protocols", "grpc", "endpoint"), ("protocols", "http", "endpoint")),
    (Kind.EXPORTER, "prometheus"): (("endpoint",),),
    (Kind.EXTENSION, "health_check"): (("endpoint",),),
}
_SECTION = {Kind.RECEIVER: "receivers", Kind.EXPORTER: "exporters", Kind.EXTENSION: "extensions"}
_WILDCARD = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class Listener:
    path: tuple[str, ...]  # the config key, e.g. ("exporters", "prometheus", "endpoint")
    host: str
    port: int

    @property
    def key(self) -> str:
        return "::".join(self.path)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split(endpoint: str) -> tuple[str, int] | None:
    if not endpoint or endpoint.startswith("unix:") or endpoint.startswith("/"):
        return None
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return None
    return host.strip("[]"), int(port)


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        cfg = getattr(cfg, name, None)
        if cfg is None:
            return None
    return cfg


def listeners(cfg: Config) -> list[Listener]:
    """Every TCP listener the agent would open with this config: self-telemetry, then the components
    that run (used by a pipeline, or an enabled extension), in config order."""
    out: list[Listener] = []
    tm = cfg.service.telemetry.metrics
    addr = _split(tm.address) if tm.serves_address() else None
    if addr is not None:
        out.append(Listener(("service", "telemetry", "metrics", "address"), *addr))
    for i, r in enumerate(tm.readers):
        if r.pull is not None and r.pull.exporter.prometheus.port:
            prom = r.pull.exporter.prometheus
            out.append(Listener(("service", "telemetry", "metrics", "readers", str(i), "pull"), prom.host, prom.port))
    used = {(Kind.EXTENSION, e) for e in cfg.service.extensions}
    for spec in cfg.service.pipelines.values():
        used.update((Kind.RECEIVER, c) for c in spec.receivers)
        used.update((Kind.EXPORTER, c) for c in spec.exporters)
    for kind, section in _SECTION.items():
        for cid, entry in cfg.section(kind).items():
            if (kind, cid) not in used:
                continue
            for path in LISTEN_FIELDS.get((kind, entry.factory.type), ()):
                value = _get(entry.config, path)
                hp = _split(value) if isinstance(value, str) else None
                if hp is not None:
                    out.append(Listener((section, str(cid), *path), *hp))
    return out


def _overlap(a: str, b: str) -> bool:
    if a in _WILDCARD or b in _WILDCARD:
        return True
    norm = {"localhost": "127.0.0.1"}
    a, b = norm.get(a, a), norm.get(b, b)
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    return a == b


def clashes(ls: list[Listener]) -> list[tuple[Listener, Listener]]:
    """(first, later) for each listener whose port an earlier one already takes."""
    out = []
    for i, later in enumerate(ls):
        for first in ls[:i]:
            if first.port == later.port and _overlap(first.host, later.host):
                out.append((first, later))
                break
    return out


def clash_message(first: Listener, later: Listener) -> str:
    return (f"{later.address} is also {first.key} ({first.address}): two listeners cannot share a port; "
            "give one of them another port")


def busy(listener: Listener) -> str | None:
    """None if the port can be bound now; else one line naming the key and who holds the port."""
    host = listener.host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return f"{listener.key}: cannot resolve {listener.host!r}: {e}"
    for family, stype, proto, _name, sockaddr in {i[4]: i for i in infos}.values():  # every address it binds
        with socket.socket(family, stype, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no clash
            try:
                s.bind(sockaddr)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    return f"{listener.key}: cannot listen on {listener.address}: {e.strerror or e}"
                return f"{listener.key}: {listener.address} is already in use by another process{_holder(listener.port)}"
    return None


def _holder(port: int) -> str:
    from gotel.discovery.procfs import process_name, socket_owner, tcp_socket_inodes

    pid = socket_owner(tcp_socket_inodes(port, listen_only=True))
    if pid is None:
        return ""
    name = process_name(pid)
    return f" (pid {pid}{', ' + name if name else ''})"


def busy_ports(cfg: Config) -> list[str]:
    """One line per listener of the config whose port is taken now."""
    return [m for m in (busy(ln) for ln in listeners(cfg)) if m is not None]
