"""resource_detection: host, process, container and service attributes, as the collector's processor of
that name does for the agent's own host, plus per-process facts for every resource that carries a
``process.pid`` (the eBPF and pull receivers report other processes, not the agent).

``service.name`` is resolved, when the resource has none (or only an SDK's ``unknown_service...``), in
this order: ``OTEL_SERVICE_NAME`` in the target process's environment, the pod's
``app.kubernetes.io/name`` label, the container's name, the executable's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from pydantic import Field

from gotel.component.contract import ComponentConfig, Consumer, Context, Processor, ProcessorFactory
from gotel.config.types import Duration
from gotel.host.cgroup import PidCgroupCache
from gotel.host.procfs import process_start_time
from gotel.k8s.model import KeyFilter
from gotel.pdata.batch import Batch, Signal, kv, set_attr, value_of

if TYPE_CHECKING:  # the kubernetes client is imported only when a pipeline uses the processor
    from gotel.k8s.store import MetadataStore

Detector = Literal["env", "system", "process", "container", "k8s"]
APP_NAME_LABEL = "app.kubernetes.io/name"
DEFAULT_DETECTORS: tuple[Detector, ...] = ("env", "system", "process", "container")


class ProcessOptions(ComponentConfig):
    command_line: bool = Field(False, description="process.command_line: off by default, arguments can hold secrets")
    executable: bool = True
    runtime: bool = Field(True, description="process.runtime.* for Go programs, from their build info")


class K8sOptions(ComponentConfig):
    auth_type: Literal["serviceAccount", "kubeConfig", "none"] = "serviceAccount"
    kube_config_path: str = ""
    context: str = ""
    node_from_env_var: str = "K8S_NODE_NAME"


class Config(ComponentConfig):
    detectors: list[Detector] = Field(default_factory=lambda: list(DEFAULT_DETECTORS))
    override: bool = Field(False, description="replace attributes the resource already has")
    service_name: bool = Field(True, description="resolve service.name in the documented order")
    process: ProcessOptions = Field(default_factory=ProcessOptions)
    k8s: K8sOptions = Field(default_factory=K8sOptions)
    proc_root: str = "/proc"
    cache_sweep_interval: Duration = Field(5.0, gt=0, description="how often exited processes are forgotten")


# --- Go build info (gotel.golang reads it: inline strings since Go 1.18, pointers before) ---


def go_version(path: str) -> str | None:
    """The Go version a binary was built with ("go1.22.5"), or None for anything else."""
    from gotel.golang import GoAnalysisError, analyze

    try:
        return analyze(path).go_version
    except (GoAnalysisError, OSError, ValueError):
        return None


# --- facts about the agent's host ---


def _first_line(*paths: str) -> str:
    for p in paths:
        with contextlib.suppress(OSError), open(p) as f:
            v = f.read().strip()
            if v:
                return v
    return ""


def parse_resource_env(s: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES: k=v,k2=v2 with percent-encoded values."""
    out: dict[str, str] = {}
    for part in s.split(","):
        k, sep, v = part.partition("=")
        if sep and k.strip():
            out[k.strip()] = unquote(v.strip())
    return out


_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def host_attributes(proc_root: str) -> dict[str, Any]:
    # In a pod the agent's hostname is the pod's; the node's name is what identifies the host.
    name = os.environ.get("K8S_NODE_NAME") or socket.gethostname()
    # with hostPID, PID 1's root is the host's: its machine-id, not the image's
    host_id = _first_line(f"{proc_root}/1/root/etc/machine-id", "/etc/machine-id", "/var/lib/dbus/machine-id")
    out: dict[str, Any] = {"host.name": name, "os.type": "linux", "host.arch": _ARCH}
    if host_id:
        out["host.id"] = host_id
    return out


# --- per-process facts ---


class _ProcessFacts:
    """pid -> facts, computed once per process (pid + start time); exited processes swept."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = cfg.proc_root
        self.cache: dict[int, tuple[int | None, dict[str, Any], str, str]] = {}
        self.go_versions: dict[tuple[int, int], str | None] = {}
        self.next_sweep = time.monotonic() + cfg.cache_sweep_interval

    def get(self, pid: int) -> tuple[dict[str, Any], str, str] | None:
        """(attributes, OTEL_SERVICE_NAME or '', executable name or '')."""
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + self.cfg.cache_sweep_interval
            for p, (st, *_rest) in list(self.cache.items()):
                if process_start_time(p, self.root) != st:
                    del self.cache[p]
        hit = self.cache.get(pid)
        if hit is not None:
            return hit[1], hit[2], hit[3]
        start = process_start_time(pid, self.root)
        if start is None:
            return None
        attrs: dict[str, Any] = {}
        exe = ""
        with contextlib.suppress(OSError):
            exe = os.readlink(f"{self.root}/{pid}/exe").removesuffix(" (deleted)")
        exe_name = os.path.basename(exe)
        if exe and self.cfg.process.executable:
            attrs["process.executable.path"] = exe
            attrs["process.executable.name"] = exe_name
        if self.cfg.process.command_line:
            with contextlib.suppress(OSError), open(f"{self.root}/{pid}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
                if cmd:
                    attrs["process.command_line"] = cmd
        if self.cfg.process.runtime and exe:
            try:
                fst = os.stat(f"{self.root}/{pid}/exe")
                key = (fst.st_dev, fst.st_ino)
                if key not in self.go_versions:
                    self.go_versions[key] = go_version(f"{self.root}/{pid}/exe")
                v = self.go_versions[key]
            except OSError:
                v = None
            if v:
                attrs["process.runtime.name"] = "go"
                attrs["process.runtime.version"] = v
                attrs["process.runtime.description"] = f"go version {v} linux/{_ARCH}"
        env_name = ""
        with contextlib.suppress(OSError), open(f"{self.root}/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"OTEL_SERVICE_NAME="):
                    env_name = item[18:].decode(errors="replace").strip()
        if len(self.cache) > 65536:
            self.cache.clear()
        self.cache[pid] = (start, attrs, env_name, exe_name)
        return attrs, env_name, exe_name


class ResourceDetectionProcessor(Processor):
    mutates = True

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        d = set(cfg.detectors)
        self.static: dict[str, Any] = {}
        if "system" in d:
            self.static.update(host_attributes(cfg.proc_root))
        if "env" in d:
            self.static.update(parse_resource_env(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
        if "k8s" in d:
            node = os.environ.get(cfg.k8s.node_from_env_var, "") if cfg.k8s.node_from_env_var else ""
            if node:
                self.static["k8s.node.name"] = node
        self.static_kvs = [kv(k, v) for k, v in self.static.items()]
        self.procs = _ProcessFacts(cfg) if d & {"process", "k8s"} or cfg.service_name else None
        self.cgroups = PidCgroupCache(cfg.proc_root) if d & {"container", "k8s"} else None
        self.store: MetadataStore | None = None

    async def start(self) -> None:
        if "k8s" in self.cfg.detectors:
            self.store = await asyncio.to_thread(self._acquire)
            self.store.start()

    def _acquire(self) -> MetadataStore:
        from gotel.k8s.client import api_client
        from gotel.k8s.store import MetadataStore, Needs, StoreKey, acquire

        k = self.cfg.k8s
        api = api_client(k.auth_type, k.kube_config_path or None, k.context or None)
        node = os.environ.get(k.node_from_env_var, "") if k.node_from_env_var else ""
        # the same key as a k8s_attributes processor with the same connection and node: one shared watch
        key = StoreKey(str(api.configuration.host), f"{k.auth_type}:{k.kube_config_path}:{k.context}", node)
        return acquire(key, lambda: MetadataStore(api, key, logger=self.ctx.logger),
                       Needs(pod_labels=KeyFilter(keys=[APP_NAME_LABEL])))

    async def shutdown(self, deadline: float = 10.0) -> None:
        store, self.store = self.store, None
        if store is not None:
            from gotel.k8s.store import release

            await asyncio.to_thread(release, store)

    async def consume(self, batch: Batch) -> None:
        self.detect(batch)
        await self.next.consume(batch)

    def detect(self, batch: Batch) -> None:  # noqa: C901 (one branch per detector)
        override = self.cfg.override
        d = self.cfg.detectors
        for res in batch.resources():
            attrs = res.resource.attributes
            existing = {a.key: a.value for a in attrs}
            add: dict[str, Any] = {}
            pid_av = existing.get("process.pid")
            pid = None
            if pid_av is not None:
                with contextlib.suppress(TypeError, ValueError):
                    pid = int(value_of(pid_av))
            env_name = exe_name = container_name = label_name = ""
            if pid is not None and self.procs is not None:
                facts = self.procs.get(pid)
                if facts is not None:
                    pattrs, env_name, exe_name = facts
                    if "process" in d:
                        add.update(pattrs)
            if pid is not None and self.cgroups is not None:
                info = self.cgroups.get(pid)
                if info is not None and info.container_id:
                    if "container" in d:
                        add["container.id"] = info.container_id
                    store = self.store
                    if store is not None:
                        hit = store.by_container.get(info.container_id)
                        pod = hit[0] if hit else store.pods.get(info.pod_uid) if info.pod_uid else None
                        if pod is not None:
                            label_name = pod.label(APP_NAME_LABEL) or ""
                        if hit is not None:
                            container_name = hit[1].name
            if not container_name and "k8s.container.name" in existing:
                container_name = str(value_of(existing["k8s.container.name"]) or "")
            replace = override
            placeholder = False
            if self.cfg.service_name:
                svc = existing.get("service.name")
                current = str(value_of(svc)) if svc is not None else ""
                placeholder = current.startswith("unknown_service")
                if override or not current or placeholder:
                    name = env_name or label_name or container_name or exe_name
                    if name:
                        add["service.name"] = name
            if not add and all(k in existing for k in self.static):
                continue
            for k, v in self.static.items():
                add.setdefault(k, v)
            for k, v in add.items():
                if k not in existing:
                    attrs.append(kv(k, v))
                elif replace or (placeholder and k == "service.name"):  # an SDK's placeholder is replaced
                    set_attr(attrs, k, v)


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return ResourceDetectionProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="resource_detection",
    config=Config,
    signals=frozenset(Signal),
    description="Host, process (pid), container and service.name attributes; Go runtime version from build info.",
    aliases=("resourcedetection",),
    create=_create,
)
