"""k8s_attributes: adds the pod, its workload and its container to every resource, as the collector's
k8sattributes processor does, plus the association a node agent needs most: ``process.pid`` ->
container id (``/proc/PID/cgroup``) -> pod and container.

The API watch runs on a thread (gotel.k8s.store). On the data path a resource seen before costs one
serialisation, a dict lookup, a validity check and one protobuf merge (bench/k8s: about 3 µs per
resource); a new one goes through the association rules.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import ConfigDict, Field, field_validator, model_validator

from gotel.component.contract import PEER_METADATA_KEY as PEER_METADATA_KEY
from gotel.component.contract import (
    ComponentConfig,
    Consumer,
    Context,
    Processor,
    ProcessorFactory,
)
from gotel.component.contract import connection_ip as _connection_ip
from gotel.component.contract import ip_of as _ip_of
from gotel.config.types import Duration
from gotel.host.cgroup import PidCgroupCache
from gotel.k8s.model import DEFAULT_DELETE_GRACE, KeyFilter, PodInfo
from gotel.pdata.batch import Batch, Signal, kv

if TYPE_CHECKING:  # the kubernetes client is imported only when a pipeline uses the processor
    from gotel.k8s.store import MetadataStore, Needs

# --- attribute names ---

POD_ATTRS = {
    "k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.pod.start_time", "k8s.pod.ip", "k8s.node.name",
    "k8s.node.uid", "k8s.deployment.name", "k8s.deployment.uid", "k8s.replicaset.name", "k8s.replicaset.uid",
    "k8s.statefulset.name", "k8s.statefulset.uid", "k8s.daemonset.name", "k8s.daemonset.uid", "k8s.job.name",
    "k8s.job.uid", "k8s.cronjob.name",
}  # fmt: skip
CONTAINER_ATTRS = {"k8s.container.name", "container.id", "container.image.name", "container.image.tag",
                   "k8s.container.restart_count"}
SUPPORTED_METADATA = POD_ATTRS | CONTAINER_ATTRS
DEFAULT_METADATA = [
    "k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.pod.start_time", "k8s.node.name",
    "k8s.deployment.name", "k8s.replicaset.name", "k8s.statefulset.name", "k8s.daemonset.name",
    "k8s.job.name", "k8s.cronjob.name", "k8s.container.name", "container.image.name", "container.image.tag",
]  # fmt: skip

# resource attribute names usable in pod_association, and which index each one reads
ASSOC_NAMES = {
    "process.pid": "pid",
    "container.id": "container",
    "k8s.pod.uid": "uid",
    "k8s.pod.ip": "ip",
    "ip": "ip",
    "host.name": "ip",  # only when it parses as an IP, as in the collector
    "k8s.pod.name": "name",
    "k8s.namespace.name": "namespace",
}

_CRONJOB_FROM_JOB = re.compile(r"^(.*)-\d+$")
_DEPLOYMENT_FROM_RS = re.compile(r"^(.*)-[0-9a-z]{1,10}$")


class _Config(ComponentConfig):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class LabelFilter(_Config):
    key: str
    value: str = ""
    op: Literal["equals", "not-equals", "exists", "does-not-exist"] = "equals"


class FieldFilter(_Config):
    key: str
    value: str = ""
    op: Literal["equals", "not-equals"] = "equals"


class FilterConfig(_Config):
    node: str = ""
    # The DaemonSet sets K8S_NODE_NAME from the downward API; unset means the whole cluster (a gateway).
    node_from_env_var: str = "K8S_NODE_NAME"
    namespace: str = ""
    labels: list[LabelFilter] = Field(default_factory=list)
    fields: list[FieldFilter] = Field(default_factory=list)

    def resolved_node(self) -> str:
        if self.node:
            return self.node
        return os.environ.get(self.node_from_env_var, "") if self.node_from_env_var else ""

    def label_selector(self) -> str:
        ops = {"equals": "{k}={v}", "not-equals": "{k}!={v}", "exists": "{k}", "does-not-exist": "!{k}"}
        return ",".join(ops[f.op].format(k=f.key, v=f.value) for f in self.labels)

    def field_selector(self) -> str:
        return ",".join(f"{f.key}{'=' if f.op == 'equals' else '!='}{f.value}" for f in self.fields)


class FieldExtract(_Config):
    tag_name: str = ""
    key: str = ""
    key_regex: str = ""
    regex: str = ""
    from_: Literal["pod", "namespace", "node"] = Field("pod", alias="from")

    @model_validator(mode="after")
    def _check(self) -> FieldExtract:
        if bool(self.key) == bool(self.key_regex):
            raise ValueError("exactly one of key and key_regex must be set")
        for name, rx in (("key_regex", self.key_regex), ("regex", self.regex)):
            if rx:
                try:
                    compiled = re.compile(rx)
                except re.error as e:
                    raise ValueError(f"{name} {rx!r} is not a valid regular expression: {e}") from e
                if name == "regex" and "value" not in compiled.groupindex:
                    raise ValueError(f"regex {rx!r} must contain a named group (?P<value>...)")
        return self


class ExtractConfig(_Config):
    metadata: list[str] = Field(default_factory=lambda: list(DEFAULT_METADATA))
    labels: list[FieldExtract] = Field(default_factory=list)
    annotations: list[FieldExtract] = Field(default_factory=list)
    # ReplicaSet name minus its pod-template hash, instead of the ReplicaSet's owner (no ReplicaSet watch)
    deployment_name_from_replicaset: bool = False

    @field_validator("metadata")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in SUPPORTED_METADATA]
        if bad:
            raise ValueError(f"unsupported metadata {bad}; supported: {sorted(SUPPORTED_METADATA)}")
        return v


class AssocSource(_Config):
    from_: Literal["resource_attribute", "connection"] = Field(alias="from")
    name: str = ""

    @model_validator(mode="after")
    def _check(self) -> AssocSource:
        if self.from_ == "resource_attribute" and self.name not in ASSOC_NAMES:
            raise ValueError(f"pod_association name {self.name!r} is not supported; supported: {sorted(ASSOC_NAMES)}")
        return self


class AssocRule(_Config):
    sources: list[AssocSource] = Field(min_length=1, max_length=4)


def _default_association() -> list[AssocRule]:
    return [
        AssocRule(sources=[AssocSource.model_validate({"from": "resource_attribute", "name": n})])
        for n in ("container.id", "process.pid", "k8s.pod.uid", "k8s.pod.ip")
    ] + [AssocRule(sources=[AssocSource.model_validate({"from": "connection"})])]


class ExcludePod(_Config):
    name: str

    @field_validator("name")
    @classmethod
    def _rx(cls, v: str) -> str:
        re.compile(v)
        return v


class ExcludeConfig(_Config):
    pods: list[ExcludePod] = Field(default_factory=lambda: [ExcludePod(name="jaeger-agent"), ExcludePod(name="jaeger-collector")])


class Config(_Config):
    auth_type: Literal["serviceAccount", "kubeConfig", "none"] = "serviceAccount"
    kube_config_path: str = ""
    context: str = ""
    passthrough: bool = False
    filter: FilterConfig = Field(default_factory=FilterConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    pod_association: list[AssocRule] = Field(default_factory=_default_association)
    exclude: ExcludeConfig = Field(default_factory=ExcludeConfig)
    wait_for_metadata: bool = False
    wait_for_metadata_timeout: Duration = 10.0
    pod_delete_grace_period: Duration = DEFAULT_DELETE_GRACE
    # where the host's processes are (with hostPID the container's own /proc)
    proc_root: str = "/proc"

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.auth_type != "kubeConfig" and (self.kube_config_path or self.context):
            raise ValueError("kube_config_path and context apply only to auth_type: kubeConfig")
        return self


# --- the processor ---


def _value(av: Any) -> Any:
    kind = av.WhichOneof("value")
    return getattr(av, kind) if kind else None


class _Rule:
    __slots__ = ("sources",)

    def __init__(self, r: AssocRule) -> None:
        self.sources = tuple(("connection", "connection") if s.from_ == "connection" else (s.name, ASSOC_NAMES[s.name])
                             for s in r.sources)


class _Extractor:
    """Computes (once per pod and container) the attributes a pod contributes."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.meta = [m for m in cfg.metadata]
        self.cfg = cfg
        self.labels = [(f, re.compile(f.key_regex) if f.key_regex else None, re.compile(f.regex) if f.regex else None)
                       for f in cfg.labels]
        self.annotations = [(f, re.compile(f.key_regex) if f.key_regex else None, re.compile(f.regex) if f.regex else None)
                            for f in cfg.annotations]

    def needs(self) -> Needs:
        from gotel.k8s.store import Needs

        n = Needs()

        def kf(items: list[FieldExtract], frm: str) -> KeyFilter:
            sel = [f for f in items if f.from_ == frm]
            return KeyFilter(keys=[f.key for f in sel if f.key], patterns=[f.key_regex for f in sel if f.key_regex])

        n.pod_labels, n.pod_annotations = kf(self.cfg.labels, "pod"), kf(self.cfg.annotations, "pod")
        n.node_labels, n.node_annotations = kf(self.cfg.labels, "node"), kf(self.cfg.annotations, "node")
        n.namespace_labels, n.namespace_annotations = kf(self.cfg.labels, "namespace"), kf(self.cfg.annotations, "namespace")
        n.nodes = bool(n.node_labels or n.node_annotations or "k8s.node.uid" in self.meta)
        n.namespaces = bool(n.namespace_labels or n.namespace_annotations)
        n.replicasets = not self.cfg.deployment_name_from_replicaset and bool(
            {"k8s.deployment.name", "k8s.deployment.uid"} & set(self.meta))
        return n

    def attributes(self, store: MetadataStore, pod: PodInfo, c: Any) -> list[tuple[str, Any]]:
        owner = self._owners(store, pod)
        out = [(name, v) for name in self.meta if (v := self._value(name, store, pod, c, owner))]
        for items, what in ((self.labels, "labels"), (self.annotations, "annotations")):
            for f, krx, vrx in items:
                src = self._source(store, pod, f.from_, what)
                for key, val in (src or {}).items():
                    tag = _tag(f, krx, key, what)
                    if tag is None:
                        continue
                    if vrx is not None:
                        vm = vrx.search(val)
                        if not vm:
                            continue
                        val = vm.group("value")
                    out.append((tag, val))
        return out

    def _owners(self, store: MetadataStore, pod: PodInfo) -> dict[str, tuple[str, str]]:
        """Workload kind -> (name, uid) of the pod's owners, the deployment and cronjob inferred as configured."""
        owner: dict[str, tuple[str, str]] = {}
        kind = pod.owner_kind
        if kind == "ReplicaSet":
            owner["replicaset"] = (pod.owner_name, pod.owner_uid)
            if self.cfg.deployment_name_from_replicaset:
                m = _DEPLOYMENT_FROM_RS.match(pod.owner_name)
                if m:
                    owner["deployment"] = (m.group(1), "")
            else:
                rs = store.deployment_of(pod)
                if rs is not None and rs.owner_kind == "Deployment":
                    owner["deployment"] = (rs.owner_name, rs.owner_uid)
        elif kind in ("StatefulSet", "DaemonSet", "Job"):
            owner[kind.lower()] = (pod.owner_name, pod.owner_uid)
            m = _CRONJOB_FROM_JOB.match(pod.owner_name) if kind == "Job" else None
            if m:
                owner["cronjob"] = (m.group(1), "")
        return owner

    @staticmethod
    def _value(name: str, store: MetadataStore, pod: PodInfo, c: Any, owner: dict[str, tuple[str, str]]) -> Any:
        if name in _POD_FIELDS:
            return _POD_FIELDS[name](pod)
        if name == "k8s.node.uid":
            n = store.nodes.get(pod.node)
            return n.uid if n else None
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "k8s" and parts[1] in _WORKLOADS:
            hit = owner.get(parts[1])
            return (hit[0] if parts[2] == "name" else hit[1]) if hit else None
        if c is not None and name in _CONTAINER_FIELDS:
            return _CONTAINER_FIELDS[name](c)
        return None

    @staticmethod
    def _source(store: MetadataStore, pod: PodInfo, frm: str, what: str) -> dict[str, str] | None:
        if frm == "pod":
            return pod.labels if what == "labels" else pod.annotations
        mi = store.namespaces.get(pod.namespace) if frm == "namespace" else store.nodes.get(pod.node)
        return (mi.labels if what == "labels" else mi.annotations) if mi else None


_POD_FIELDS: dict[str, Callable[[PodInfo], Any]] = {
    "k8s.namespace.name": lambda p: p.namespace,
    "k8s.pod.name": lambda p: p.name,
    "k8s.pod.uid": lambda p: p.uid,
    "k8s.pod.start_time": lambda p: p.start_time,
    "k8s.pod.ip": lambda p: p.ip,
    "k8s.node.name": lambda p: p.node,
}
_CONTAINER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "k8s.container.name": lambda c: c.name,
    "container.id": lambda c: c.id,
    "container.image.name": lambda c: c.image_name,
    "container.image.tag": lambda c: c.image_tag,
    "k8s.container.restart_count": lambda c: str(c.restart_count),
}
_WORKLOADS = ("deployment", "replicaset", "statefulset", "daemonset", "job", "cronjob")


def _tag(f: FieldExtract, krx: re.Pattern[str] | None, key: str, what: str) -> str | None:
    """The attribute name a label/annotation key becomes, or None when the key is not extracted."""
    if f.key:
        return (f.tag_name or f"k8s.{f.from_}.{what}.{key}") if key == f.key else None
    assert krx is not None
    km = krx.fullmatch(key)
    if not km:
        return None
    if not f.tag_name:
        return f"k8s.{f.from_}.{what}.{key}"
    return km.expand(f.tag_name.replace("$$", "$").replace("${", "\\g<").replace("}", ">").replace("$", "\\"))


class K8sAttributesProcessor(Processor):
    mutates = True
    MEMO_MAX = 16384

    def __init__(self, signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> None:
        self.signal = signal
        self.cfg = cfg
        self.next = nxt
        self.ctx = ctx
        self.log = ctx.logger
        self.rules = [_Rule(r) for r in cfg.pod_association]
        self._uses_connection = any(i == "connection" for r in self.rules for _, i in r.sources)
        self.extract = _Extractor(cfg.extract)
        self.exclude = [re.compile(p.name) for p in cfg.exclude.pods]
        self.pids = PidCgroupCache(cfg.proc_root)
        self.store: MetadataStore | None = None
        self._hooks: list[Any] = []
        # (pod uid, container name) -> (pod object, store generation, attributes)
        self._cache: dict[tuple[str, str], tuple[PodInfo, int, list[KeyValue]]] = {}
        # serialized resource [+ connection ip] -> (attributes added, result, pod, generation, pod version, pid, pid entry)
        self._memo: dict[Any, tuple[bytes, str, PodInfo | None, int, int | None, int | None, Any]] = {}
        self._pid_used: tuple[int, Any] | None = None
        c = ctx.telemetry.counter("k8s_attributes_resources", "Resources seen by k8s_attributes, by association result.",
                                  ("result",))
        self._results = {r: c.labels(r) for r in ("enriched", "no_identifier", "unmatched", "excluded", "not_synced")}
        self._counts = dict.fromkeys(self._results, 0)

    # --- life cycle ---

    async def start(self) -> None:
        if self.cfg.passthrough:
            return
        self.store = await asyncio.to_thread(self._acquire)
        self._telemetry(self.store)
        self.store.start()
        if self.cfg.wait_for_metadata:
            ok = await asyncio.to_thread(self.store.wait_synced, self.cfg.wait_for_metadata_timeout)
            if not ok:
                err = self.store.last_error() or "no answer"
                await self.shutdown()  # a start that fails leaves no informer thread behind
                raise RuntimeError(
                    f"{self.ctx.id}: Kubernetes metadata not synced within {self.cfg.wait_for_metadata_timeout:g}s "
                    f"(wait_for_metadata): {err}")

    def _telemetry(self, store: MetadataStore) -> None:
        t = self.ctx.telemetry
        t.gauge("k8s_metadata_pods", "Pods in the Kubernetes metadata cache (deleted ones in their grace period included).",
                ()).labels().set_function(lambda: len(store.pods))
        t.gauge("k8s_metadata_synced", "1 once every Kubernetes list/watch completed its first list.",
                ()).labels().set_function(lambda: 1 if store.synced else 0)
        relists = t.counter("k8s_metadata_relists", "Full relists of a Kubernetes resource, by reason (expired = 410 Gone).",
                            ("resource", "reason"))
        errors = t.counter("k8s_metadata_watch_errors", "Failed Kubernetes list or watch requests (retried with backoff).",
                           ("resource",))
        self._hooks = [store.on_relist(lambda kind, reason: relists.labels(kind, reason).inc()),
                       store.on_error(lambda kind: errors.labels(kind).inc())]

    def _acquire(self) -> MetadataStore:
        needs = self.extract.needs()
        from gotel.k8s.client import api_client
        from gotel.k8s.store import MetadataStore, StoreKey, acquire

        cfg = self.cfg
        api = api_client(cfg.auth_type, cfg.kube_config_path or None, cfg.context or None)
        node = cfg.filter.resolved_node()
        if not node:
            self.log.warning("%s: no node filter (%s unset): watching the pods of the whole cluster", self.ctx.id,
                             cfg.filter.node_from_env_var or "filter.node")
        key = StoreKey(str(api.configuration.host), f"{cfg.auth_type}:{cfg.kube_config_path}:{cfg.context}", node,
                       cfg.filter.namespace, cfg.filter.field_selector(), cfg.filter.label_selector())
        return acquire(key, lambda: MetadataStore(api, key, delete_grace=cfg.pod_delete_grace_period, logger=self.log),
                       needs)

    async def shutdown(self, deadline: float = 10.0) -> None:
        store, self.store = self.store, None
        if store is not None:
            for h in self._hooks:
                store.remove_hook(h)
            from gotel.k8s.store import release

            await asyncio.to_thread(release, store)

    # --- data path ---

    async def consume(self, batch: Batch) -> None:
        if self.cfg.passthrough:
            self._passthrough(batch)
        else:
            self.enrich(batch)
        await self.next.consume(batch)

    def _passthrough(self, batch: Batch) -> None:
        ip = _connection_ip()
        if not ip:
            return
        for res in batch.resources():
            attrs = res.resource.attributes
            if not any(a.key == "k8s.pod.ip" for a in attrs):
                attrs.append(kv("k8s.pod.ip", ip))

    def enrich(self, batch: Batch) -> None:
        """Adds the attributes of each resource's pod.

        Resources repeat: a receiver sends the same process's resource in batch after batch. So the
        outcome for a resource is memoised by its serialized bytes (plus the connection address)
        and replayed with one protobuf merge while it is still valid: the pod object is the store's
        current one, ReplicaSets/nodes/namespaces have not changed, and for a pid the pid -> cgroup
        entry is the same (the process has not exited). Misses take the full path below.
        """
        store = self.store
        counts = self._counts
        for k in counts:
            counts[k] = 0
        if store is None or (not store.synced and not store.pods):
            counts["not_synced"] = len(batch.peek_resources())
        else:
            conn_ip = _connection_ip() if self._uses_connection else ""
            memo = self._memo
            pids = self.pids
            now = time.monotonic()
            pids.maybe_sweep(now)
            pods = store.pods
            gen = store.generation
            pod_version = store.pod_version
            pid_entry = pids.entry
            for res in batch.resources():
                r = res.resource
                raw = r.SerializeToString()
                key = (raw, conn_ip) if conn_ip else raw
                m = memo.get(key)
                if m is not None:
                    delta, result, pod, mgen, mversion, pid, entry = m
                    if (
                        (pods.get(pod.uid) is pod and mgen == gen) if pod is not None
                        else (mversion is None or mversion == pod_version)
                    ) and (pid is None or (pid_entry(pid) is entry and (entry is None or not entry[2] or entry[2] > now))):
                        if delta:
                            r.MergeFromString(delta)
                        counts[result] += 1
                        continue
                counts[self._slow(store, r, key, conn_ip)] += 1
        for k, n in counts.items():
            if n:
                self._results[k].inc(n)

    def _slow(self, store: MetadataStore, r: Any, key: Any, conn_ip: str) -> str:
        existing = {a.key: a.value for a in r.attributes}
        self._pid_used = None
        found = self._associate(store, existing, conn_ip)
        added: list[KeyValue] = []
        if conn_ip and "k8s.pod.ip" not in existing:
            # as the collector: the connection's address is recorded as the pod IP
            added.append(kv("k8s.pod.ip", conn_ip))
            existing["k8s.pod.ip"] = None
        pod: PodInfo | None = None
        if found is None:
            result = "no_identifier"
        elif found[0] is None:
            result = "unmatched"
        else:
            pod, container = found
            if pod.ignored or any(rx.search(pod.name) for rx in self.exclude):
                result = "excluded"
            else:
                if container is None:
                    cname = existing.get("k8s.container.name")
                    if cname is not None:
                        container = pod.container(cname.string_value)
                added.extend(self._pod_attrs(store, pod, container, existing))
                result = "enriched"
        delta = Resource(attributes=added).SerializeToString() if added else b""
        if delta:
            r.MergeFromString(delta)
        pid = self._pid_used[0] if self._pid_used else None
        pid_info = self.pids.entry(pid) if pid is not None else None
        if pid is not None and pid_info is None:
            return result  # the process is gone: nothing to remember (its pid may come back in a pod)
        if len(self._memo) >= self.MEMO_MAX:
            self._memo.clear()
        # no identifier at all can never change; unmatched holds until a pod changes
        pod_version = None if result == "no_identifier" else store.pod_version
        self._memo[key] = (delta, result, pod, store.generation, pod_version, pid, pid_info)
        return result

    def _associate(self, store: MetadataStore, existing: dict[str, Any], conn_ip: str) -> tuple[Any, Any] | None:
        """First rule whose sources are all present decides: (pod or None, container or None); None if none applies."""
        for rule in self.rules:
            raws: list[Any] = []
            for name, index in rule.sources:
                if index == "connection":
                    raw: Any = conn_ip
                else:
                    av = existing.get(name)
                    raw = _value(av) if av is not None else None
                if raw is None or raw == "":
                    break
                raws.append(raw)
            else:
                # every source is present: this rule decides, match or not
                pod: PodInfo | None = None
                container = None
                for (_, index), raw in zip(rule.sources, raws, strict=True):
                    p, c = self._lookup(store, index, raw, existing)
                    if p is None or (pod is not None and p is not pod):
                        return None, None
                    pod, container = p, container or c
                return pod, container
        return None

    def _lookup(self, store: MetadataStore, index: str, raw: Any, existing: dict[str, Any]) -> tuple[Any, Any]:
        if index == "pid":
            try:
                pid = int(raw)
            except (TypeError, ValueError):
                return None, None
            info = self.pids.get(pid)
            self._pid_used = (pid, info)
            if info is None or not info:
                return None, None
            hit = store.by_container.get(info.container_id) if info.container_id else None
            if hit is not None:
                return hit
            # the container may not be in the pod's status yet: the pod uid in the cgroup path still tells the pod
            pod = store.pods.get(info.pod_uid) if info.pod_uid else None
            return pod, None
        if index == "container":
            hit = store.by_container.get(str(raw))
            return hit if hit is not None else (None, None)
        if index == "uid":
            return store.pods.get(str(raw)), None
        if index in ("ip", "connection"):
            ip = _ip_of(str(raw))
            return (store.by_ip.get(ip) if ip else None), None
        if index in ("name", "namespace"):
            ns_av, name_av = existing.get("k8s.namespace.name"), existing.get("k8s.pod.name")
            if ns_av is None or name_av is None:
                return None, None
            return store.by_name.get((ns_av.string_value, name_av.string_value)), None
        return None, None

    def _pod_attrs(self, store: MetadataStore, pod: PodInfo, c: Any, existing: dict[str, Any]) -> list[KeyValue]:
        """The pod's attributes the resource does not have yet (existing ones are never overwritten)."""
        key = (pod.uid, c.name if c is not None else "")
        hit = self._cache.get(key)
        if hit is None or hit[0] is not pod or hit[1] != store.generation:
            kvs = [kv(k, v) for k, v in self.extract.attributes(store, pod, c)]
            if len(self._cache) > 4 * len(store.pods) + 1024:
                self._cache.clear()
            hit = (pod, store.generation, kvs)
            self._cache[key] = hit
        return [x for x in hit[2] if x.key not in existing]


def _create(signal: Signal, cfg: Config, nxt: Consumer, ctx: Context) -> Processor:
    return K8sAttributesProcessor(signal, cfg, nxt, ctx)


factory = ProcessorFactory(
    type="k8s_attributes",
    config=Config,
    signals=frozenset(Signal),
    description="Adds pod, workload and container attributes (association by pid, container id, pod uid, IP).",
    aliases=("k8sattributes",),
    create=_create,
)
