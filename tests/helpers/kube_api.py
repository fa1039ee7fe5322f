"""A Kubernetes API test server: list and watch of pods, nodes, namespaces and ReplicaSets, as the real one does.

No API server build can run here, so this implements the documented wire behaviour the agent relies on
(https://kubernetes.io/docs/reference/using-api/api-concepts/):

* bearer-token authentication (401 Status otherwise);
* lists: ``{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion", "continue"}, "items"}``
  (items without kind/apiVersion), sorted by namespace/name, ``limit``/``continue`` pages from one
  consistent snapshot, an expired continue token answered ``410`` with a Status;
* ``fieldSelector`` (only the fields the real server supports per kind; others are ``400``) and
  ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``);
* watches: chunked JSON lines ``{"type", "object"}`` from a resourceVersion, replaying history, with
  ADDED/DELETED synthesised when an object enters or leaves the selector (a pod scheduled to the
  node), ``BOOKMARK`` events only with ``allowWatchBookmarks``, a resourceVersion older than the
  compaction point answered with an ERROR event holding a ``410 Expired`` Status and the stream closed,
  ``timeoutSeconds`` honoured, and streams that tests can end or cut abruptly.

Tests drive it from their own thread; it runs its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# kind name, list kind, apiVersion, namespaced, field labels the real server accepts
KINDS: dict[str, tuple[str, str, str, bool, frozenset[str]]] = {
    "pods": ("Pod", "PodList", "v1", True, frozenset({
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
        "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
        "status.nominatedNodeName"})),
    "nodes": ("Node", "NodeList", "v1", False, frozenset({"metadata.name", "spec.unschedulable"})),
    "namespaces": ("Namespace", "NamespaceList", "v1", False, frozenset({"metadata.name", "status.phase"})),
    "replicasets": ("ReplicaSet", "ReplicaSetList", "apps/v1", True, frozenset({
        "metadata.name", "metadata.namespace", "status.replicas"})),
}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(sel: str, allowed: frozenset[str]) -> list[tuple[str, str, str]]:
    out = []
    for term in filter(None, (t.strip() for t in sel.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                k, v = term.split(op, 1)
                if k not in allowed:
                    raise ValueError(f'field label not supported: {k}')
                out.append((k, "!=" if op == "!=" else "=", v))
                break
        else:
            raise ValueError(f'invalid selector: \'{sel}\'; can\'t understand \'{term}\'')
    return out


def parse_label_selector(sel: str) -> list[tuple[str, str, str]]:
    out = []
    for term in filter(None, (t.strip() for t in sel.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k, "!=", v))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            out.append((k, "=", v))
        elif term.startswith("!"):
            out.append((term[1:], "!", ""))
        else:
            out.append((term, "exists", ""))
    return out


def matches(obj: dict[str, Any], fsel: list[tuple[str, str, str]], lsel: list[tuple[str, str, str]]) -> bool:
    for k, op, v in fsel:
        got = _field(obj, k)
        if (op == "=") != (got == v):
            return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for k, op, v in lsel:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "!" and k in labels:
            return False
    return True


@dataclass
class _Watcher:
    kind: str
    namespace: str
    fsel: list[tuple[str, str, str]]
    lsel: list[tuple[str, str, str]]
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    response: web.StreamResponse | None = None


class KubeAPIServer:
    """Start with ``with KubeAPIServer() as api:``; ``api.kubeconfig(path)`` writes a kubeconfig for the client."""

    def __init__(self, token: str = "test-token", bookmark_interval: float = 1.0) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.rv = 100
        self.compacted_rv = 0
        # (rv, kind, type, new object, old object)
        self.history: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []
        self.watchers: list[_Watcher] = []
        self.snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._gate: asyncio.Event | None = None

    # --- life cycle ---

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="kube-api-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test API server did not start")

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/api/v1/{kind}", self._handle)
        app.router.add_get("/api/v1/namespaces/{ns}/{kind}", self._handle)
        app.router.add_get("/apis/apps/v1/{kind}", self._handle)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/{kind}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self.release_watches()
            self.call(self._close_all, True)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs fn on the server's loop (mutations and watch registration are serialised there)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(120)

    def kubeconfig(self, path: str, token: str | None = None) -> str:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    # --- mutations (any thread) ---

    def apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Creates or replaces an object; returns it as stored (with uid and resourceVersion)."""
        return self.call(self._apply, kind, copy.deepcopy(obj))  # type: ignore[no-any-return]

    def load(self, kind: str, objs: list[dict[str, Any]]) -> None:
        """Creates many objects in one call (benchmarks)."""

        def run() -> None:
            for o in objs:
                self._apply(kind, o)

        self.call(run)

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        self.call(self._delete, kind, namespace, name)

    def compact(self) -> None:
        """Forgets history: a watch resuming from a resourceVersion older than the current one gets 410 Gone."""
        self.call(self._compact)

    def refuse_current_version(self) -> None:
        """A misbehaving server: even the resourceVersion its lists return is answered 410 on watch."""

        def bad() -> None:
            self.compacted_rv = 10**12

        self.call(bad)

    def end_watches(self) -> None:
        """Ends every watch stream cleanly (as the server does at timeoutSeconds)."""
        self.call(self._close_all, False)

    def drop_watches(self) -> None:
        """Cuts every watch connection without ending the chunked stream (a dropped connection)."""
        self.call(self._close_all, True)

    def expire_continue_tokens(self) -> None:
        self.call(self.snapshots.clear)

    def hold_watches(self) -> None:
        """New watch requests wait (a slow server) until release_watches(); lists are answered."""

        def hold() -> None:
            self._gate = asyncio.Event()

        self.call(hold)

    def release_watches(self) -> None:
        def release() -> None:
            if self._gate is not None:
                self._gate.set()
                self._gate = None

        self.call(release)

    def watch_count(self) -> int:
        return int(self.call(lambda: len(self.watchers)))

    # --- on the loop ---

    def _apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        k, _, api_version, namespaced, _ = KINDS[kind]
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "") if namespaced else ""
        if namespaced:
            meta["namespace"] = ns = ns or "default"
        key = (ns, meta["name"])
        old = self.objects[kind].get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-22T10:00:00Z")
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        obj["kind"], obj["apiVersion"] = k, api_version
        self.objects[kind][key] = obj
        self._emit(kind, "MODIFIED" if old else "ADDED", obj, old)
        return copy.deepcopy(obj)

    def _delete(self, kind: str, ns: str, name: str) -> None:
        old = self.objects[kind].pop((ns if KINDS[kind][3] else "", name), None)
        if old is None:
            raise KeyError(f"{kind} {ns}/{name} not found")
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(kind, "DELETED", gone, old)

    def _compact(self) -> None:
        # as etcd's compaction: history before the current revision is gone, the current one is watchable
        self.compacted_rv = self.rv
        self.history.clear()

    def _emit(self, kind: str, typ: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.history.append((self.rv, kind, typ, obj, old))
        for w in self.watchers:
            ev = self._event_for(w, typ, obj, old)
            if ev is not None:
                w.queue.put_nowait(ev)

    def _event_for(self, w: _Watcher, typ: str, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any] | None:
        if w.namespace and obj["metadata"].get("namespace") != w.namespace:
            return None
        now = matches(obj, w.fsel, w.lsel)
        before = old is not None and matches(old, w.fsel, w.lsel)
        if typ == "DELETED":
            return {"type": "DELETED", "object": obj} if before else None
        if now and before:
            return {"type": "MODIFIED", "object": obj}
        if now:
            return {"type": "ADDED", "object": obj}
        if before:  # left the selector: watchers see a deletion
            return {"type": "DELETED", "object": obj}
        return None

    def _close_all(self, abort: bool) -> None:
        for w in list(self.watchers):
            w.queue.put_nowait(("abort",) if abort else ("end",))

    # --- HTTP ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.requests.append((request.path, q))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        kind = request.match_info["kind"]
        ns = request.match_info.get("ns", "")
        if kind not in KINDS or (request.path.startswith("/apis/apps/") != (KINDS[kind][2] == "apps/v1")) or (ns and not KINDS[kind][3]):
            return web.json_response(status(404, "NotFound", "the server could not find the requested resource"), status=404)
        try:
            fsel = parse_field_selector(q.get("fieldSelector", ""), KINDS[kind][4])
            lsel = parse_label_selector(q.get("labelSelector", ""))
        except ValueError as e:
            return web.json_response(status(400, "BadRequest", str(e)), status=400)
        if q.get("watch") in ("true", "1"):
            return await self._watch(request, kind, ns, fsel, lsel, q)
        return self._list(kind, ns, fsel, lsel, q)

    def _selected(self, kind: str, ns: str, fsel: Any, lsel: Any) -> list[dict[str, Any]]:
        return [o for (ons, _), o in sorted(self.objects[kind].items()) if (not ns or ons == ns) and matches(o, fsel, lsel)]

    def _list(self, kind: str, ns: str, fsel: Any, lsel: Any, q: dict[str, str]) -> web.Response:
        _, list_kind, api_version, _, _ = KINDS[kind]
        cont = q.get("continue")
        if cont:
            try:
                tok = json.loads(base64.b64decode(cont))
                rv, items = self.snapshots[tok["id"]]
                offset = int(tok["offset"])
            except (KeyError, ValueError, TypeError):
                return web.json_response(status(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."), status=410)
        else:
            rv, items, offset = self.rv, self._selected(kind, ns, fsel, lsel), 0
        limit = int(q.get("limit") or 0)
        page = items[offset : offset + limit] if limit else items[offset:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and offset + limit < len(items):
            sid = (cont and json.loads(base64.b64decode(cont))["id"]) or uuid.uuid4().hex
            self.snapshots[sid] = (rv, items)
            meta["continue"] = base64.b64encode(json.dumps({"id": sid, "offset": offset + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        out = []
        for o in page:
            o = dict(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            out.append(o)
        return web.json_response({"kind": list_kind, "apiVersion": api_version, "metadata": meta, "items": out})

    async def _watch(self, request: web.Request, kind: str, ns: str, fsel: Any, lsel: Any, q: dict[str, str]) -> web.StreamResponse:
        if self._gate is not None:
            await self._gate.wait()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        w = _Watcher(kind, ns, fsel, lsel)
        w.response = resp
        rv_s = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or 1800)
        k, _, api_version, _, _ = KINDS[kind]
        # registration and the backlog are computed in one step on the loop: no event can slip between
        if rv_s in ("", "0"):
            backlog = [{"type": "ADDED", "object": o} for o in self._selected(kind, ns, fsel, lsel)]
        else:
            try:
                rv = int(rv_s)
            except ValueError:
                await resp.write(json.dumps({"type": "ERROR", "object": status(400, "BadRequest", f"invalid resource version: {rv_s}")}).encode() + b"\n")
                return resp
            if rv < self.compacted_rv:
                ev = {"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {rv} ({self.compacted_rv})")}
                await resp.write(json.dumps(ev).encode() + b"\n")
                await resp.write_eof()
                return resp
            backlog = []
            for hrv, hkind, typ, obj, old in self.history:
                if hkind == kind and hrv > rv:
                    ev2 = self._event_for(w, typ, obj, old)
                    if ev2 is not None:
                        backlog.append(ev2)
        self.watchers.append(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for ev in backlog:
                await resp.write(json.dumps(ev).encode() + b"\n")
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks and loop.time() < deadline:
                        bm = {"type": "BOOKMARK", "object": {"kind": k, "apiVersion": api_version,
                                                             "metadata": {"resourceVersion": str(self.rv)}}}
                        await resp.write(json.dumps(bm).encode() + b"\n")
                    continue
                if isinstance(item, tuple):
                    if item[0] == "abort":
                        if request.transport is not None:
                            request.transport.abort()
                        return resp
                    break
                await resp.write(json.dumps(item).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if w in self.watchers:
                self.watchers.remove(w)
        return resp


# --- object builders shaped as the API returns them ---


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    node: str = "node-a",
    uid: str | None = None,
    ip: str = "",
    containers: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    owner: tuple[str, str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    host_network: bool = False,
    phase: str = "Running",
    runtime: str = "containerd",
    ports: dict[str, list[tuple[str, int]]] | None = None,
    start_time: str = "2026-11-22T10:00:01Z",
) -> dict[str, Any]:
    """containers: (name, image, container id); owner: (kind, name)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1" if owner[0] != "Job" else "batch/v1", "kind": owner[0],
                                    "name": owner[1], "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, owner[1])),
                                    "controller": True, "blockOwnerDeletion": True}]
    spec: dict[str, Any] = {"containers": [
        {"name": c, "image": img, **({"ports": [{"name": pn, "containerPort": pp, "protocol": "TCP"}
                                              for pn, pp in (ports or {}).get(c, [])]} if ports and c in ports else {})}
        for c, img, _ in containers]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    st: dict[str, Any] = {"phase": phase}
    if ip:
        st["podIP"] = ip
        st["podIPs"] = [{"ip": ip}]
    if node:
        st["startTime"] = start_time
        st["containerStatuses"] = [
            {"name": c, "image": img, "imageID": "", "ready": True, "restartCount": 0, "started": True,
             "state": {"running": {"startedAt": start_time}},
             **({"containerID": f"{runtime}://{cid}"} if cid else {})}
            for c, img, cid in containers]
    return {"metadata": meta, "spec": spec, "status": st}


def make_replicaset(name: str, deployment: str | None, namespace: str = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if deployment:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                    "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, deployment)), "controller": True}]
    return {"metadata": meta, "spec": {"selector": {"matchLabels": {"app": name}}, "replicas": 1},
            "status": {"replicas": 1}}


def make_node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"metadata": meta, "spec": {}, "status": {}}


def make_namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"metadata": meta, "spec": {}, "status": {"phase": "Active"}}
