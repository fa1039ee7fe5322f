"""Pods on this node annotated for scraping, as pull targets of the pprof and go_metrics receivers.

Annotation schemes read (the community conventions, so existing pod specs work unchanged):

* ``profiles.grafana.com/<type>.scrape: "true"`` with ``.port``, ``.port_name``, ``.path``, ``.scheme``
  (types: cpu, memory, goroutine, block, mutex, fgprof);
* ``pyroscope.io/scrape: "true"``, ``pyroscope.io/port``, ``pyroscope.io/scheme``,
  ``pyroscope.io/profile-<type>-enabled``, ``pyroscope.io/profile-<type>-path``,
  ``pyroscope.io/service_name``;
* ``prometheus.io/scrape``, ``prometheus.io/port``, ``prometheus.io/path``, ``prometheus.io/scheme``
  for runtime metrics (go_metrics).

A pod's pprof port often listens on the pod's localhost only (the secure habit): when a process of
the pod is found on this node, the target is ``127.0.0.1:<port>`` inside that process's network
namespace (``netns=/proc/PID/ns/net``), so nobody has to expose pprof on the pod IP; otherwise the
pod IP is used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from gotel.component.contract import ComponentConfig
from gotel.host.cgroup import PidCgroupCache
from gotel.k8s.model import KeyFilter, PodInfo
from gotel.k8s.store import MetadataStore, Needs, StoreKey, acquire, release
from gotel.receiverhelper.targets import Target

log = logging.getLogger(__name__)

Kind = Literal["pprof", "metrics"]
GRAFANA = "profiles.grafana.com/"
PYROSCOPE = "pyroscope.io/"
PROMETHEUS = "prometheus.io/"
PROFILE_TYPES = ("cpu", "memory", "goroutine", "block", "mutex", "fgprof")
# the pprof path of each profile type (what pyroscope.scrape scrapes by default)
DEFAULT_PATHS = {
    "cpu": "/debug/pprof/profile", "memory": "/debug/pprof/allocs", "goroutine": "/debug/pprof/goroutine",
    "block": "/debug/pprof/block", "mutex": "/debug/pprof/mutex", "fgprof": "/debug/fgprof",
}  # fmt: skip
APP_NAME_LABEL = "app.kubernetes.io/name"
# what the pprof receiver scrapes (fgprof is a separate handler it does not speak)
PPROF_TYPES = ("cpu", "memory", "goroutine", "block", "mutex")


class KubernetesDiscoveryConfig(ComponentConfig):
    """The ``kubernetes:`` block of the pprof and go_metrics receivers (present = on)."""

    auth_type: Literal["serviceAccount", "kubeConfig", "none"] = "serviceAccount"
    kube_config_path: str = ""
    context: str = ""
    node_from_env_var: str = Field("K8S_NODE_NAME", description="only pods on this node; empty: the whole cluster")
    namespaces: list[str] = Field(default_factory=list, description="empty: every namespace")
    proc_root: str = "/proc"


@dataclass(frozen=True)
class PodTarget:
    """One scrape endpoint of one pod, before it becomes a receiver's Target."""

    kind: Kind
    scheme: str
    port: int
    host: str  # 127.0.0.1 inside netns, or the pod IP
    netns: str | None
    pid: int | None
    paths: Mapping[str, str]  # profile type (or "metrics") -> path
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def to_target(self) -> Target | None:
        """gotel.receiverhelper.targets.Target; for pprof with its own profile selection (``profile_paths``) under the
        common directory of the paths. None when nothing the pprof receiver scrapes is selected (fgprof only)."""
        if self.kind == "metrics":
            return Target(url=self.url, attributes=dict(self.attributes), netns=self.netns, pid=self.pid,
                          source="kubernetes", path_prefix=self.paths["metrics"])
        paths = {t: p for t, p in self.paths.items() if t in PPROF_TYPES}
        if not paths:
            return None
        prefix = posixpath.commonpath([posixpath.dirname(p) for p in paths.values()])
        return Target(url=self.url, attributes=dict(self.attributes), netns=self.netns, pid=self.pid,
                      source="kubernetes", path_prefix=prefix, profile_paths=paths)


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("true", "1", "yes")


def _port(pod: PodInfo, port: str | None, port_name: str | None) -> tuple[int, str] | None:
    """(port, container name) from a number or a named container port; None when it cannot be known."""
    if port_name:
        for c in pod.containers:
            for name, number, _ in c.ports:
                if name == port_name:
                    return number, c.name
        return None
    if port and port.strip().isdigit():
        n = int(port)
        for c in pod.containers:
            if any(number == n for _, number, _ in c.ports):
                return n, c.name
        return n, pod.containers[0].name if pod.containers else ""
    return None


def profile_endpoints(pod: PodInfo) -> list[tuple[str, int, str, dict[str, str]]]:
    """(scheme, port, container, {profile type: path}) from the Grafana and Pyroscope annotation schemes."""
    a = pod.annotations or {}
    by_endpoint: dict[tuple[str, int, str], dict[str, str]] = {}
    for t in PROFILE_TYPES:
        if not _truthy(a.get(f"{GRAFANA}{t}.scrape")):
            continue
        hit = _port(pod, a.get(f"{GRAFANA}{t}.port"), a.get(f"{GRAFANA}{t}.port_name"))
        if hit is None:
            log.debug("pod %s/%s: %s%s.scrape without a usable port", pod.namespace, pod.name, GRAFANA, t)
            continue
        scheme = a.get(f"{GRAFANA}{t}.scheme", "http") or "http"
        by_endpoint.setdefault((scheme, hit[0], hit[1]), {})[t] = a.get(f"{GRAFANA}{t}.path") or DEFAULT_PATHS[t]
    if _truthy(a.get(f"{PYROSCOPE}scrape")):
        hit = _port(pod, a.get(f"{PYROSCOPE}port"), a.get(f"{PYROSCOPE}port_name"))
        if hit is not None:
            scheme = a.get(f"{PYROSCOPE}scheme", "http") or "http"
            paths = by_endpoint.setdefault((scheme, hit[0], hit[1]), {})
            for t in PROFILE_TYPES:
                enabled = a.get(f"{PYROSCOPE}profile-{t}-enabled")
                # pyroscope's convention: cpu, memory, goroutine, block, mutex on unless disabled; fgprof off
                on = _truthy(enabled) if enabled is not None else t != "fgprof"
                if on:
                    paths.setdefault(t, a.get(f"{PYROSCOPE}profile-{t}-path") or DEFAULT_PATHS[t])
    return [(s, p, c, paths) for (s, p, c), paths in by_endpoint.items() if paths]


def metrics_endpoints(pod: PodInfo) -> list[tuple[str, int, str, dict[str, str]]]:
    a = pod.annotations or {}
    if not _truthy(a.get(f"{PROMETHEUS}scrape")):
        return []
    hit = _port(pod, a.get(f"{PROMETHEUS}port"), None)
    if hit is None:
        return []
    return [(a.get(f"{PROMETHEUS}scheme", "http") or "http", hit[0], hit[1], {"metrics": a.get(f"{PROMETHEUS}path") or "/metrics"})]


def pod_attributes(pod: PodInfo, container: str, store: MetadataStore | None) -> dict[str, Any]:
    a = pod.annotations or {}
    svc = a.get(f"{PYROSCOPE}service_name") or pod.label(APP_NAME_LABEL) or container or pod.name
    out: dict[str, Any] = {
        "service.name": svc,
        "k8s.namespace.name": pod.namespace,
        "k8s.pod.name": pod.name,
        "k8s.pod.uid": pod.uid,
        "k8s.node.name": pod.node,
    }
    if container:
        out["k8s.container.name"] = container
        c = pod.container(container)
        if c is not None and c.id:
            out["container.id"] = c.id
    kind = pod.owner_kind
    if kind == "ReplicaSet":
        out["k8s.replicaset.name"] = pod.owner_name
        rs = store.deployment_of(pod) if store is not None else None
        if rs is not None and rs.owner_kind == "Deployment":
            out["k8s.deployment.name"] = rs.owner_name
    elif kind in ("StatefulSet", "DaemonSet", "Job"):
        out[f"k8s.{kind.lower()}.name"] = pod.owner_name
    return {k: v for k, v in out.items() if v}


class PodTargetSource:
    """A gotel.receiverhelper.targets.TargetSource over the shared metadata store."""

    name = "kubernetes"

    def __init__(self, store: MetadataStore, kind: Kind, *, namespaces: list[str] | None = None,
                 proc_root: str = "/proc", owned: bool = False) -> None:
        self.store = store
        self.kind = kind
        self.namespaces = set(namespaces or ())
        self.proc_root = proc_root
        self.cgroups = PidCgroupCache(proc_root)
        self._owned = owned

    @staticmethod
    def needs() -> Needs:
        return Needs(pod_annotations=KeyFilter(prefixes=[GRAFANA, PYROSCOPE, PROMETHEUS]),
                     pod_labels=KeyFilter(keys=[APP_NAME_LABEL]), replicasets=True)

    @classmethod
    def from_config(cls, cfg: KubernetesDiscoveryConfig, kind: Kind) -> PodTargetSource:
        """Acquires (and starts) the process's shared store for this connection and node."""
        from gotel.k8s.client import api_client

        api = api_client(cfg.auth_type, cfg.kube_config_path or None, cfg.context or None)
        node = os.environ.get(cfg.node_from_env_var, "") if cfg.node_from_env_var else ""
        key = StoreKey(str(api.configuration.host), f"{cfg.auth_type}:{cfg.kube_config_path}:{cfg.context}", node)
        store = acquire(key, lambda: MetadataStore(api, key), cls.needs())
        store.start()
        return cls(store, kind, namespaces=cfg.namespaces, proc_root=cfg.proc_root, owned=True)

    def _pids_by_container(self) -> dict[str, int]:
        """container id -> one pid on this node (the lowest: usually the container's init)."""
        out: dict[str, int] = {}
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return out
        for n in names:
            if not n.isdigit():
                continue
            info = self.cgroups.get(int(n))
            if info is not None and info.container_id:
                pid = int(n)
                if info.container_id not in out or pid < out[info.container_id]:
                    out[info.container_id] = pid
        return out

    def compute(self) -> list[PodTarget]:
        pids = self._pids_by_container()
        out: list[PodTarget] = []
        for pod in self.store.live_pods():
            if pod.phase not in ("Running", "") or (self.namespaces and pod.namespace not in self.namespaces):
                continue
            endpoints = profile_endpoints(pod) if self.kind == "pprof" else metrics_endpoints(pod)
            for scheme, port, container, paths in endpoints:
                c = pod.container(container)
                pid = next((pids[i] for i in (c.ids if c is not None else ()) if i in pids), None)
                if pid is None:  # any process of the pod shares its network namespace
                    pid = next((pids[i] for cc in pod.containers for i in cc.ids if i in pids), None)
                if pid is not None:
                    host, netns = "127.0.0.1", f"{self.proc_root}/{pid}/ns/net"
                elif pod.ip:
                    host, netns = (f"[{pod.ip}]" if ":" in pod.ip else pod.ip), None
                else:
                    continue
                out.append(PodTarget(self.kind, scheme, port, host, netns, pid, paths,
                                     pod_attributes(pod, container, self.store)))
        return out

    async def targets(self) -> list[Target]:
        pts = await asyncio.to_thread(self.compute)
        return [t for t in (p.to_target() for p in pts) if t is not None]

    async def close(self) -> None:
        if self._owned:
            self._owned = False
            await asyncio.to_thread(release, self.store)
