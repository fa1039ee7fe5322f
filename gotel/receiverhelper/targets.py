"""The pull-target model shared by every receiver that scrapes a Go program's HTTP endpoints
(pprof, go_metrics) and by every way of finding them (static lists, local process discovery,
Kubernetes pod discovery).

A ``TargetSource`` returns the current ``Target`` list whenever asked; receivers diff the lists by
``Target.key`` and start or stop their scrape loops. A pod-discovery source plugs in by implementing
the same protocol (it sets ``netns`` to a container's ``/proc/PID/ns/net`` to reach pod-local
ports and adds ``k8s.*`` attributes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from gotel.discovery.procfs import listening_sockets
from gotel.host.procfs import process_start_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One HTTP endpoint of one program. ``attributes`` become the OTLP resource attributes."""

    url: str  # scheme://host:port (no path)
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    netns: str | None = None  # a network-namespace file to connect from, e.g. /proc/PID/ns/net
    pid: int | None = None
    start_time: int | None = None  # process start (clock ticks since boot): tells a restart from the same pid
    source: str = "static"
    path_prefix: str = "/debug/pprof"
    # Per-target profile selection from discovery (e.g. pod annotations): profile type -> absolute path.
    # Types use the annotation names (cpu, memory, goroutine, block, mutex); None = the receiver's config.
    profile_paths: Mapping[str, str] | None = field(default=None, hash=False, compare=False)

    @property
    def key(self) -> str:
        """Identity across refreshes: the same endpoint in the same namespace is the same target."""
        return f"{self.url}@{self.netns}" if self.netns else self.url

    @property
    def instance(self) -> str:
        return urlsplit(self.url).netloc

    def resource(self) -> dict[str, Any]:
        r = dict(self.attributes)
        r.setdefault("service.instance.id", self.instance if not self.pid else f"{self.instance}/{self.pid}")
        if self.pid is not None:
            r.setdefault("process.pid", self.pid)
        return r

    def describe(self) -> str:
        extra = f" (pid {self.pid}" + (f", netns {self.netns})" if self.netns else ")") if self.pid else ""
        if self.netns and not self.pid:
            extra = f" (netns {self.netns})"
        return self.url + extra


@runtime_checkable
class TargetSource(Protocol):
    name: str

    async def targets(self) -> list[Target]: ...

    async def close(self) -> None: ...


class StaticSource:
    name = "static"

    def __init__(self, targets: list[Target]) -> None:
        self._targets = targets

    async def targets(self) -> list[Target]:
        return list(self._targets)

    async def close(self) -> None:
        return None


# --- local process discovery -------------------------------------------------------------------

class LocalProcessSource:
    """Go processes on this host (agent in the host PID namespace) that serve ``{path_prefix}/`` on a port.

    Processes are selected with gotel.discovery (the same selectors as the eBPF receivers: pids,
    exe_paths, cmdline, ports, container_ids, exclude) and named by its service-name resolution.
    A candidate port is confirmed by one GET of the pprof index page; the answer is cached per
    (pid, start time, port), so a refresh costs a /proc walk, not a probe per port.
    """

    name = "local"

    def __init__(self, selector: Any = None, path_prefix: str = "/debug/pprof", fetcher: Any = None) -> None:
        from gotel.discovery import DiscoveryConfig

        self.selector = selector if selector is not None else DiscoveryConfig()
        self.path_prefix = path_prefix.rstrip("/")
        self.fetcher = fetcher  # an object with async probe(target, path) -> bool
        self._probe_cache: dict[tuple[int, int | None, int], bool] = {}
        self._self_pid = os.getpid()
        try:
            from gotel.host.netns import own_netns_id

            self._own_ns = own_netns_id()
        except OSError:
            self._own_ns = (0, 0)

    async def targets(self) -> list[Target]:
        cands = await asyncio.get_running_loop().run_in_executor(None, self._candidates)
        return cands if self.fetcher is None else await self._probe_all(cands)

    def _candidates(self) -> list[Target]:
        from gotel.discovery.procfs import all_pids, process_info
        from gotel.host.netns import netns_id

        out: list[Target] = []
        for pid in all_pids():
            if pid == self._self_pid:
                continue
            info = process_info(pid)
            if info is None or not self.selector.selects(info):
                continue
            listeners = listening_sockets(pid)
            if not listeners:
                continue
            try:
                own_path = f"/proc/{pid}/ns/net"
                ns: str | None = None if netns_id(own_path) == self._own_ns else own_path
            except OSError:
                continue
            start = process_start_time(pid)
            attrs: dict[str, Any] = {
                "service.name": info.service_name,
                "process.pid": pid,
                "process.executable.path": info.exe,
                "process.executable.name": info.exe_name,
                "process.command_line": " ".join(info.cmdline),
            }
            if info.container_id:
                attrs["container.id"] = info.container_id
            seen_ports: set[int] = set()
            for ln in listeners:
                if ln.port in seen_ports or (self.selector.ports and ln.port not in self.selector.ports):
                    continue
                seen_ports.add(ln.port)
                # wildcard and loopback listeners are reached on loopback (inside the namespace if any)
                if ln.ip in ("0.0.0.0", "::", "127.0.0.1"):
                    host = "127.0.0.1"
                elif ln.ip == "::1":
                    host = "[::1]"
                else:
                    host = f"[{ln.ip}]" if ":" in ln.ip else ln.ip
                out.append(Target(url=f"http://{host}:{ln.port}", attributes=dict(attrs), netns=ns, pid=pid,
                                  start_time=start, source=self.name, path_prefix=self.path_prefix))
        return out

    async def _probe_all(self, cands: list[Target]) -> list[Target]:
        live = {(t.pid or 0, t.start_time, int(urlsplit(t.url).port or 0)) for t in cands}
        for k in list(self._probe_cache):
            if k not in live:
                del self._probe_cache[k]

        async def probe(t: Target) -> bool:
            k = (t.pid or 0, t.start_time, int(urlsplit(t.url).port or 0))
            if k in self._probe_cache:
                return self._probe_cache[k]
            try:
                ok = bool(await self.fetcher.probe(t, self.path_prefix + "/"))
            except Exception as e:  # a probe failure means "not a pprof port", never a crash
                log.debug("probe %s failed: %s", t.describe(), e)
                ok = False
            self._probe_cache[k] = ok
            return ok

        results = await asyncio.gather(*(probe(t) for t in cands))
        return [t for t, ok in zip(cands, results, strict=True) if ok]

    async def close(self) -> None:
        return None
