"""The metadata store: pods (and, when asked, ReplicaSets, nodes, namespaces) with the indexes enrichment uses.

One store per API connection and selector set, shared by every consumer in the process (the
k8s_attributes processor of each pipeline, resource_detection, pod discovery): one watch on the API
server, not one per pipeline. Consumers declare what they need (label and annotation keys, owner
kinds) before start; a need added later triggers a relist.

Writes happen on informer threads, reads on the pipeline's event loop: each write is a single
dict operation (atomic under the GIL) and readers never iterate the live dicts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as kclient

from gotel.k8s.informer import Informer
from gotel.k8s.model import (
    DEFAULT_DELETE_GRACE,
    KeyFilter,
    MetaInfo,
    OwnerInfo,
    PodInfo,
    parse_meta,
    parse_owned,
    parse_pod,
)

log = logging.getLogger(__name__)


@dataclass
class Needs:
    """What a consumer needs kept beyond the pod's own identity."""

    pod_labels: KeyFilter = field(default_factory=KeyFilter)
    pod_annotations: KeyFilter = field(default_factory=KeyFilter)
    replicasets: bool = False
    nodes: bool = False
    node_labels: KeyFilter = field(default_factory=KeyFilter)
    node_annotations: KeyFilter = field(default_factory=KeyFilter)
    namespaces: bool = False
    namespace_labels: KeyFilter = field(default_factory=KeyFilter)
    namespace_annotations: KeyFilter = field(default_factory=KeyFilter)

    def union(self, o: Needs) -> Needs:
        return Needs(
            self.pod_labels.union(o.pod_labels),
            self.pod_annotations.union(o.pod_annotations),
            self.replicasets or o.replicasets,
            self.nodes or o.nodes,
            self.node_labels.union(o.node_labels),
            self.node_annotations.union(o.node_annotations),
            self.namespaces or o.namespaces,
            self.namespace_labels.union(o.namespace_labels),
            self.namespace_annotations.union(o.namespace_annotations),
        )


@dataclass(frozen=True)
class StoreKey:
    """What makes two consumers' stores the same: the API connection and the selectors."""

    endpoint: str
    auth: str
    node: str = ""
    namespace: str = ""
    field_selector: str = ""
    label_selector: str = ""


class _PodHandler:
    def __init__(self, store: MetadataStore) -> None:
        self.s = store
        self.seen: set[str] = set()

    def begin_list(self) -> None:
        self.seen = set()

    def listed(self, obj: dict[str, Any]) -> None:
        pod = self.s._upsert_pod(obj)
        if pod is not None:
            self.seen.add(pod.uid)

    def end_list(self) -> None:
        now = time.monotonic()
        for uid, pod in list(self.s.pods.items()):
            if uid not in self.seen and not pod.deleted_at:
                self.s._mark_deleted(pod, now)
        self.seen = set()
        self.s._changed()

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            uid = (obj.get("metadata") or {}).get("uid")
            pod = self.s.pods.get(uid or "")
            if pod is not None and not pod.deleted_at:
                self.s._mark_deleted(pod, time.monotonic())
        else:
            self.s._upsert_pod(obj)
        self.s._changed()


class _DictHandler:
    """ReplicaSets, nodes, namespaces: a plain dict replaced by lists, updated by events."""

    def __init__(self, store: MetadataStore, target: dict[Any, Any], parse: Callable[[dict[str, Any]], Any]) -> None:
        self.s = store
        self.target = target
        self.parse = parse
        self.seen: set[Any] = set()

    def begin_list(self) -> None:
        self.seen = set()

    def listed(self, obj: dict[str, Any]) -> None:
        kv = self.parse(obj)
        if kv is not None:
            self.target[kv[0]] = kv[1]
            self.seen.add(kv[0])

    def end_list(self) -> None:
        for k in [k for k in list(self.target) if k not in self.seen]:
            self.target.pop(k, None)
        self.seen = set()
        self.s._bump()

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        kv = self.parse(obj)
        if kv is None:
            return
        if kind == "DELETED":
            self.target.pop(kv[0], None)
        else:
            self.target[kv[0]] = kv[1]
        self.s._bump()


class MetadataStore:
    """Pods on this node (or the whole cluster) and the indexes: uid, container id, pod IP, namespace/name."""

    def __init__(
        self,
        api: kclient.ApiClient,
        key: StoreKey,
        *,
        delete_grace: float = DEFAULT_DELETE_GRACE,
        logger: logging.Logger | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
    ) -> None:
        self.api = api
        self.key = key
        self.delete_grace = delete_grace
        self.log = logger or log
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.needs = Needs()
        self.pods: dict[str, PodInfo] = {}
        self.by_container: dict[str, tuple[PodInfo, Any]] = {}
        self.by_ip: dict[str, PodInfo] = {}
        self.by_name: dict[tuple[str, str], PodInfo] = {}
        self.replicasets: dict[tuple[str, str], OwnerInfo] = {}
        self.nodes: dict[str, MetaInfo] = {}
        self.namespaces: dict[str, MetaInfo] = {}
        # bumps whenever a ReplicaSet, node or namespace changes: consumers' derived caches check it
        self.generation = 0
        # bumps whenever a pod is added, changed, deleted or purged: "no pod matched" may have changed
        self.pod_version = 0
        self._deleted: deque[tuple[float, PodInfo]] = deque()
        self._listeners: list[Callable[[], None]] = []
        self._relist_hooks: list[Callable[[str, str], None]] = []
        self._error_hooks: list[Callable[[str], None]] = []
        self.informers: dict[str, Informer] = {}
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None
        self._started = False
        self.refs = 0

    # --- what consumers need ---

    def require(self, needs: Needs) -> None:
        """Adds a consumer's needs; after start, a need not yet covered relists what it concerns."""
        old = self.needs
        self.needs = old.union(needs)
        if not self._started:
            return
        if not old.pod_labels.covers(needs.pod_labels) or not old.pod_annotations.covers(needs.pod_annotations):
            self.informers["pods"].relist()
        for kind in ("replicasets", "nodes", "namespaces"):
            if getattr(self.needs, kind) and kind not in self.informers:
                self._start_informer(kind)
        if "nodes" in self.informers and not (
            old.node_labels.covers(needs.node_labels) and old.node_annotations.covers(needs.node_annotations)
        ):
            self.informers["nodes"].relist()
        if "namespaces" in self.informers and not (
            old.namespace_labels.covers(needs.namespace_labels) and old.namespace_annotations.covers(needs.namespace_annotations)
        ):
            self.informers["namespaces"].relist()

    def on_relist(self, fn: Callable[[str, str], None]) -> Callable[..., None]:
        """fn(resource, reason) on every relist (self-telemetry); returns fn for remove_hook()."""
        self._relist_hooks.append(fn)
        return fn

    def on_error(self, fn: Callable[[str], None]) -> Callable[..., None]:
        """fn(resource) on every failed list or watch (self-telemetry); returns fn for remove_hook()."""
        self._error_hooks.append(fn)
        return fn

    def remove_hook(self, fn: Callable[..., None]) -> None:
        for hooks in (self._relist_hooks, self._error_hooks, self._listeners):
            if fn in hooks:
                hooks.remove(fn)

    def _hook_relist(self, kind: str, reason: str) -> None:
        for fn in list(self._relist_hooks):
            try:
                fn(kind, reason)
            except Exception:
                self.log.exception("k8s relist hook")

    def _hook_error(self, kind: str) -> None:
        for fn in list(self._error_hooks):
            try:
                fn(kind)
            except Exception:
                self.log.exception("k8s error hook")

    def on_change(self, fn: Callable[[], None]) -> None:
        """fn() runs on the informer thread after pods change (discovery recomputes its targets)."""
        self._listeners.append(fn)

    # --- life cycle ---

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._start_informer("pods")
        for kind in ("replicasets", "nodes", "namespaces"):
            if getattr(self.needs, kind):
                self._start_informer(kind)
        self._janitor = threading.Thread(target=self._janitor_loop, name="gotel-k8s-janitor", daemon=True)
        self._janitor.start()

    def _start_informer(self, kind: str) -> None:
        core = kclient.CoreV1Api(self.api)
        apps = kclient.AppsV1Api(self.api)
        k = self.key
        fs = ""
        handler: Any
        if kind == "pods":
            parts = [f"spec.nodeName={k.node}"] if k.node else []
            if k.field_selector:
                parts.append(k.field_selector)
            fs = ",".join(parts)
            fn: Callable[..., Any] = core.list_pod_for_all_namespaces
            if k.namespace:
                ns = k.namespace

                def fn(**kw: Any) -> Any:
                    return core.list_namespaced_pod(ns, **kw)

                fn.__doc__ = core.list_namespaced_pod.__doc__
            handler = _PodHandler(self)
            inf = Informer("pods", fn, handler, field_selector=fs, label_selector=k.label_selector,
                           page_size=self.page_size, watch_timeout=self.watch_timeout, logger=self.log)
        elif kind == "replicasets":
            handler = _DictHandler(self, self.replicasets, parse_owned)
            inf = Informer("replicasets", apps.list_replica_set_for_all_namespaces, handler,
                           page_size=self.page_size, watch_timeout=self.watch_timeout, logger=self.log)
        elif kind == "nodes":
            fs = f"metadata.name={k.node}" if k.node else ""

            def parse_node(o: dict[str, Any]) -> Any:
                return parse_meta(o, self.needs.node_labels, self.needs.node_annotations)

            handler = _DictHandler(self, self.nodes, parse_node)
            inf = Informer("nodes", core.list_node, handler, field_selector=fs,
                           page_size=self.page_size, watch_timeout=self.watch_timeout, logger=self.log)
        elif kind == "namespaces":

            def parse_ns(o: dict[str, Any]) -> Any:
                return parse_meta(o, self.needs.namespace_labels, self.needs.namespace_annotations)

            handler = _DictHandler(self, self.namespaces, parse_ns)
            inf = Informer("namespaces", core.list_namespace, handler,
                           page_size=self.page_size, watch_timeout=self.watch_timeout, logger=self.log)
        else:  # pragma: no cover
            raise ValueError(kind)
        inf.on_relist = lambda reason, kind=kind: self._hook_relist(kind, reason)
        inf.on_error = lambda msg, kind=kind: self._hook_error(kind)
        self.informers[kind] = inf
        inf.start()

    def stop(self) -> None:
        self._stop.set()
        for inf in self.informers.values():
            inf.stop()
        if self._janitor is not None:
            self._janitor.join(2)
            self._janitor = None

    def wait_synced(self, timeout: float | None) -> bool:
        """True once every informer has completed its first list."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in list(self.informers.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not inf.wait_synced(left):
                return False
        return True

    @property
    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self.informers.values()) and bool(self.informers)

    def last_error(self) -> str:
        return "; ".join(f"{k}: {i.last_error}" for k, i in self.informers.items() if i.last_error)

    # --- reads ---

    def live_pods(self) -> Iterator[PodInfo]:
        for p in list(self.pods.values()):
            if not p.deleted_at:
                yield p

    def pod_by_container(self, cid: str) -> tuple[PodInfo, Any] | None:
        return self.by_container.get(cid)

    def deployment_of(self, pod: PodInfo) -> OwnerInfo | None:
        if pod.owner_kind != "ReplicaSet":
            return None
        return self.replicasets.get((pod.namespace, pod.owner_name))

    # --- writes (informer threads) ---

    def _upsert_pod(self, obj: dict[str, Any]) -> PodInfo | None:
        pod = parse_pod(obj, self.needs.pod_labels, self.needs.pod_annotations)
        if pod is None:
            return None
        old = self.pods.get(pod.uid)
        self.pods[pod.uid] = pod
        self.pod_version += 1
        if old is not None:
            self._unindex(old, keep=pod)
        self._index(pod)
        return pod

    def _index(self, pod: PodInfo) -> None:
        for c in pod.containers:
            for cid in c.ids:
                self.by_container[cid] = (pod, c)
        self.by_name[(pod.namespace, pod.name)] = pod
        if pod.ip and not pod.host_network:
            cur = self.by_ip.get(pod.ip)
            # two pods with one IP (a deleted one and its successor): the newer start time wins
            if cur is None or cur.uid == pod.uid or cur.deleted_at or (pod.start_time or "") >= (cur.start_time or ""):
                self.by_ip[pod.ip] = pod

    def _unindex(self, pod: PodInfo, keep: PodInfo | None = None) -> None:
        keep_ids = {cid for c in keep.containers for cid in c.ids} if keep is not None else set()
        for c in pod.containers:
            for cid in c.ids:
                if cid not in keep_ids:
                    hit = self.by_container.get(cid)
                    if hit is not None and hit[0] is pod:
                        del self.by_container[cid]
        key = (pod.namespace, pod.name)
        if self.by_name.get(key) is pod:
            del self.by_name[key]
        if pod.ip and self.by_ip.get(pod.ip) is pod:
            del self.by_ip[pod.ip]

    def _mark_deleted(self, pod: PodInfo, now: float) -> None:
        pod.deleted_at = now
        self.pod_version += 1
        self._deleted.append((now + self.delete_grace, pod))

    def purge(self, now: float | None = None) -> int:
        """Forgets pods deleted more than delete_grace seconds ago."""
        now = time.monotonic() if now is None else now
        n = 0
        while self._deleted and self._deleted[0][0] <= now:
            _, pod = self._deleted.popleft()
            if self.pods.get(pod.uid) is pod and pod.deleted_at:
                del self.pods[pod.uid]
                self._unindex(pod)
                self.pod_version += 1
                n += 1
        return n

    def _janitor_loop(self) -> None:
        interval = max(0.05, min(30.0, self.delete_grace / 4))
        while not self._stop.wait(interval):
            try:
                self.purge()
            except Exception:  # never let the janitor die
                self.log.exception("k8s metadata janitor")

    def _bump(self) -> None:
        self.generation += 1

    def _changed(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                self.log.exception("k8s metadata listener")


# --- sharing one store per connection and selector set in the process ---

_SHARED: dict[StoreKey, MetadataStore] = {}
_SHARED_LOCK = threading.Lock()


def acquire(key: StoreKey, make: Callable[[], MetadataStore], needs: Needs) -> MetadataStore:
    """The shared store for key (created by make() the first time), with needs added."""
    with _SHARED_LOCK:
        store = _SHARED.get(key)
        if store is None:
            store = make()
            _SHARED[key] = store
        store.refs += 1
        store.require(needs)
        return store


def release(store: MetadataStore) -> None:
    with _SHARED_LOCK:
        store.refs -= 1
        if store.refs > 0:
            return
        if _SHARED.get(store.key) is store:
            del _SHARED[store.key]
    store.stop()
