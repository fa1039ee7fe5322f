"""Compact records of the Kubernetes objects the agent keeps: only the fields enrichment and discovery use.

A Pod object as the API returns it is 5-20 KB of JSON (managedFields, the spec, probes, volumes...);
a PodInfo is a few hundred bytes, with shared strings (namespaces, node and image names, label keys)
interned. That is what keeps memory flat as pods come and go.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_intern = sys.intern

IGNORE_ANNOTATION = "opentelemetry.io/k8s-processor/ignore"
RUNTIME_PREFIXES = ("containerd://", "cri-o://", "docker://")
# seconds a deleted pod's metadata stays (late telemetry of a pod that just ended); here, not in
# gotel.k8s.store, so that a processor's config can name it without importing the kubernetes client
DEFAULT_DELETE_GRACE = 120.0


class KeyFilter:
    """Which label or annotation keys to keep: exact keys, prefixes and regexes (unions of every consumer)."""

    __slots__ = ("keys", "prefixes", "patterns", "_rx")

    def __init__(self, keys: Iterable[str] = (), prefixes: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        self.keys = frozenset(keys)
        self.prefixes = tuple(sorted(set(prefixes)))
        self.patterns = tuple(sorted(set(patterns)))
        self._rx = [re.compile(p) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self.keys or self.prefixes or self.patterns)

    def union(self, other: KeyFilter) -> KeyFilter:
        return KeyFilter(self.keys | other.keys, self.prefixes + other.prefixes, self.patterns + other.patterns)

    def covers(self, other: KeyFilter) -> bool:
        return other.keys <= self.keys and set(other.prefixes) <= set(self.prefixes) and set(other.patterns) <= set(self.patterns)

    def keep(self, key: str) -> bool:
        if key in self.keys:
            return True
        if self.prefixes and key.startswith(self.prefixes):
            return True
        return any(rx.fullmatch(key) for rx in self._rx)

    def select(self, d: Mapping[str, str] | None) -> dict[str, str] | None:
        if not d or not self:
            return None
        out = {_intern(k): v for k, v in d.items() if self.keep(k)}
        return out or None


def strip_runtime(container_id: str) -> str:
    """'containerd://abc' -> 'abc' (the id /proc/PID/cgroup shows)."""
    i = container_id.find("://")
    return container_id[i + 3 :] if i >= 0 else container_id


def parse_image(image: str) -> tuple[str, str]:
    """'reg:5000/team/app:1.2@sha256:..' -> ('reg:5000/team/app', '1.2'); no tag and no digest -> 'latest'."""
    ref, _, digest = image.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, ("" if digest else "latest")


class ContainerInfo:
    __slots__ = ("name", "image_name", "image_tag", "ids", "restart_count", "ports")

    def __init__(
        self,
        name: str,
        image_name: str,
        image_tag: str,
        ids: tuple[str, ...],
        restart_count: int,
        ports: tuple[tuple[str, int, str], ...],
    ) -> None:
        self.name = name
        self.image_name = image_name
        self.image_tag = image_tag
        self.ids = ids  # the current container id first, then the previous instance's
        self.restart_count = restart_count
        self.ports = ports  # (name, containerPort, protocol)

    @property
    def id(self) -> str:
        return self.ids[0] if self.ids else ""

    def __repr__(self) -> str:
        return f"ContainerInfo({self.name!r}, ids={[i[:12] for i in self.ids]})"


class PodInfo:
    __slots__ = (
        "uid", "name", "namespace", "node", "ip", "host_network", "start_time", "phase",
        "owner_kind", "owner_name", "owner_uid", "labels", "annotations", "containers",
        "ignored", "deleted_at", "__weakref__",
    )  # fmt: skip

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__[:-1]:
            setattr(self, k, kw.get(k))
        if self.deleted_at is None:
            self.deleted_at = 0.0

    uid: str
    name: str
    namespace: str
    node: str
    ip: str
    host_network: bool
    start_time: str
    phase: str
    owner_kind: str
    owner_name: str
    owner_uid: str
    labels: dict[str, str] | None
    annotations: dict[str, str] | None
    containers: tuple[ContainerInfo, ...]
    ignored: bool
    deleted_at: float

    def container(self, name: str) -> ContainerInfo | None:
        for c in self.containers:
            if c.name == name:
                return c
        return None

    def label(self, key: str) -> str | None:
        return self.labels.get(key) if self.labels else None

    def annotation(self, key: str) -> str | None:
        return self.annotations.get(key) if self.annotations else None

    def __repr__(self) -> str:
        return f"PodInfo({self.namespace}/{self.name} uid={self.uid} node={self.node} ip={self.ip})"


def parse_pod(obj: Mapping[str, Any], labels: KeyFilter, annotations: KeyFilter) -> PodInfo | None:
    """API Pod JSON -> PodInfo (None for an object without a uid)."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    owner_kind = owner_name = owner_uid = ""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") or not owner_kind:
            owner_kind, owner_name, owner_uid = ref.get("kind", ""), ref.get("name", ""), ref.get("uid", "")
    statuses: dict[str, Mapping[str, Any]] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for st in status.get(key) or ():
            statuses[st.get("name", "")] = st
    containers: list[ContainerInfo] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or ():
            cname = c.get("name", "")
            st = statuses.get(cname) or {}
            ids: list[str] = []
            if st.get("containerID"):
                ids.append(strip_runtime(st["containerID"]))
            last = (st.get("lastState") or {}).get("terminated") or {}
            if last.get("containerID"):
                ids.append(strip_runtime(last["containerID"]))
            name, tag = parse_image(c.get("image") or st.get("image") or "")
            ports = tuple(
                (_intern(p.get("name", "")), int(p.get("containerPort", 0)), _intern(p.get("protocol", "TCP")))
                for p in c.get("ports") or ()
            )
            containers.append(
                ContainerInfo(_intern(cname), _intern(name), _intern(tag), tuple(ids), int(st.get("restartCount", 0)), ports)
            )
    raw_ann = meta.get("annotations") or {}
    host_network = bool(spec.get("hostNetwork"))
    return PodInfo(
        uid=uid,
        name=meta.get("name", ""),
        namespace=_intern(meta.get("namespace", "")),
        node=_intern(spec.get("nodeName", "") or ""),
        ip=status.get("podIP", "") or "",
        host_network=host_network,
        start_time=status.get("startTime", "") or "",
        phase=_intern(status.get("phase", "") or ""),
        owner_kind=_intern(owner_kind),
        owner_name=owner_name,
        owner_uid=owner_uid,
        labels=labels.select(meta.get("labels")),
        annotations=annotations.select(raw_ann),
        containers=tuple(containers),
        ignored=raw_ann.get(IGNORE_ANNOTATION) == "true",
    )


@dataclass(slots=True)
class OwnerInfo:
    """A ReplicaSet (or Job): its uid and the controller that owns it (Deployment, CronJob)."""

    uid: str
    owner_kind: str
    owner_name: str
    owner_uid: str


def parse_owned(obj: Mapping[str, Any]) -> tuple[tuple[str, str], OwnerInfo] | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        return None
    kind = name = uid = ""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") or not kind:
            kind, name, uid = ref.get("kind", ""), ref.get("name", ""), ref.get("uid", "")
    key = (_intern(meta.get("namespace", "")), meta["name"])
    return key, OwnerInfo(meta.get("uid", ""), _intern(kind), name, uid)


@dataclass(slots=True)
class MetaInfo:
    """A node or namespace: uid, kept labels and annotations."""

    uid: str
    labels: dict[str, str] | None = field(default=None)
    annotations: dict[str, str] | None = field(default=None)


def parse_meta(obj: Mapping[str, Any], labels: KeyFilter, annotations: KeyFilter) -> tuple[str, MetaInfo] | None:
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        return None
    return _intern(meta["name"]), MetaInfo(meta.get("uid", ""), labels.select(meta.get("labels")), annotations.select(meta.get("annotations")))
