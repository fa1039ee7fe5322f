"""List-then-watch of one resource kind in a thread, as client-go's reflector does.

The official Python client has no informer, so this is one built on its API calls and its
``watch.Watch``:

* list in pages (``limit``/``continue``, so a 10,000-pod cluster never sits in memory as JSON at
  once); pages are handed to the handler as they arrive and the objects the list did not show are
  removed at the end (``replace`` semantics);
* watch from the list's resourceVersion with ``allowWatchBookmarks`` and a server-side timeout;
  the resourceVersion of every event and bookmark is remembered, so a stream that ends or drops is
  resumed where it stopped without a relist;
* ``410 Gone`` (an ERROR event with a Status, or an HTTP 410 for an expired continue token) and any
  other API error cause a relist; connection errors back off exponentially (capped) with jitter.

Handlers run on the informer's thread; they must be quick (dict updates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import watch as kwatch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


class Handler(Protocol):
    def begin_list(self) -> None: ...

    def listed(self, obj: dict[str, Any]) -> None: ...

    def end_list(self) -> None: ...

    def event(self, kind: str, obj: dict[str, Any]) -> None: ...


class _RawWatch(kwatch.Watch):
    """The client's Watch without model deserialisation: events carry the JSON dicts.

    (``deserialize=False`` cannot be used: the client then fails on ERROR events, which it reads
    from ``raw_object``.)
    """

    def get_return_type(self, func: Any) -> Any:
        return None


class Stats:
    """Counters an informer keeps for self-telemetry and tests."""

    def __init__(self) -> None:
        self.lists = 0
        self.relists: dict[str, int] = {}
        self.watches = 0
        self.events: dict[str, int] = {}
        self.bookmarks = 0
        self.errors = 0

    def relist(self, reason: str) -> None:
        self.relists[reason] = self.relists.get(reason, 0) + 1


class Informer:
    """One resource kind: ``list_fn`` is a client method such as ``CoreV1Api.list_pod_for_all_namespaces``."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        handler: Handler,
        *,
        field_selector: str = "",
        label_selector: str = "",
        page_size: int = 500,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        backoff_max: float = 30.0,
        logger: logging.Logger | None = None,
        on_error: Callable[[str], None] | None = None,
        on_relist: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.list_fn = list_fn
        self.handler = handler
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self.backoff_max = backoff_max
        self.log = logger or log
        self.on_error = on_error
        self.on_relist = on_relist
        self.synced = threading.Event()
        self.stats = Stats()
        self.resource_version = ""
        self._listed_rv = ""
        self.last_error = ""
        self._stop = threading.Event()
        self._need_list = True
        self._relist_requested = False
        self._watch: _RawWatch | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ---

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"gotel-k8s-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def relist(self) -> None:
        """Asks for a fresh list (e.g. a consumer needs more fields): the current watch ends, and
        wait_synced() waits for the new list."""
        self.synced.clear()
        self._need_list = True
        self._relist_requested = True
        w = self._watch
        if w is not None:
            w.stop()

    def wait_synced(self, timeout: float | None) -> bool:
        return self.synced.wait(timeout)

    # --- the loop ---

    def _selectors(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.field_selector:
            kw["field_selector"] = self.field_selector
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        return kw

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self._need_list:
                    self._list()
                    self._need_list = False
                self._watch_once()
                failures = 0
            except ApiException as e:
                if self._stop.is_set():
                    break
                self.stats.errors += 1
                if e.status == 410:
                    self._relisted("expired")
                    self.log.info("k8s %s: resourceVersion %s expired (410 Gone), relisting", self.name, self.resource_version)
                    self._need_list = True
                    if self.resource_version != self._listed_rv:
                        continue  # immediately, as client-go does
                    # the list's own resourceVersion refused: never relist in a tight loop against the server
                    failures += 1
                    self._error(f"410 Gone for the resourceVersion {self._listed_rv} the list just returned", failures)
                    continue
                failures += 1
                self._relisted(f"http_{e.status}")
                self._need_list = True
                self._error(f"API server answered {e.status} {e.reason}", failures)
            except Exception as e:  # connection refused/reset, timeouts, malformed JSON
                if self._stop.is_set():
                    break
                if self._relist_requested:
                    self._relist_requested = False
                    continue
                self.stats.errors += 1
                failures += 1
                self._error(f"{type(e).__name__}: {e}", failures)
        self._watch = None

    def _relisted(self, reason: str) -> None:
        self.stats.relist(reason)
        if self.on_relist is not None:
            self.on_relist(reason)

    def _error(self, msg: str, failures: int) -> None:
        self.last_error = msg
        if self.on_error is not None:
            self.on_error(msg)
        delay = min(self.backoff_max, 0.2 * 2 ** min(failures, 10)) * (0.5 + random.random() / 2)
        level = logging.WARNING if failures <= 3 or failures % 20 == 0 else logging.DEBUG
        self.log.log(level, "k8s %s: %s; retrying in %.1fs (failure %d)", self.name, msg, delay, failures)
        self._stop.wait(delay)

    def _list(self) -> None:
        self.stats.lists += 1
        restarts = 0
        while True:
            self.handler.begin_list()
            token: str | None = None
            rv = ""
            try:
                while True:
                    kw = self._selectors()
                    kw["limit"] = self.page_size
                    if token:
                        kw["_continue"] = token
                    resp = self.list_fn(_preload_content=False, _request_timeout=self.request_timeout, **kw)
                    try:
                        body = json.loads(resp.data)
                    finally:
                        with contextlib.suppress(Exception):
                            resp.release_conn()
                    meta = body.get("metadata") or {}
                    for item in body.get("items") or ():
                        self.handler.listed(item)
                    rv = meta.get("resourceVersion") or rv
                    token = meta.get("continue") or None
                    if not token or self._stop.is_set():
                        break
            except ApiException as e:
                # an expired continue token: start the list over (a consistent list is needed)
                if e.status == 410 and token and restarts < 3:
                    restarts += 1
                    self._relisted("continue_expired")
                    continue
                raise
            self.handler.end_list()
            self.resource_version = self._listed_rv = rv
            self.synced.set()
            return

    def _watch_once(self) -> None:
        w = _RawWatch()
        self._watch = w
        if self._stop.is_set():
            return
        self.stats.watches += 1
        timeout = int(self.watch_timeout * (1 + random.random()))  # spread reconnects, as client-go
        stream = w.stream(
            self.list_fn,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self.request_timeout, timeout + 30),
            **self._selectors(),
        )
        started = time.monotonic()
        n = 0
        for ev in stream:
            n += 1
            typ = ev.get("type")
            obj = ev.get("raw_object")
            if not isinstance(obj, dict):
                continue
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if typ == "BOOKMARK":
                self.stats.bookmarks += 1
            elif typ in ("ADDED", "MODIFIED", "DELETED"):
                self.stats.events[typ] = self.stats.events.get(typ, 0) + 1
                self.handler.event(typ, obj)
            if rv:
                self.resource_version = rv
            if self._stop.is_set() or self._need_list:
                w.stop()
        # the stream ended (server timeout, or a closed connection seen as EOF): resume from rv, but
        # never spin on a server that closes every watch at once
        if n == 0 and time.monotonic() - started < 1.0:
            self._stop.wait(1.0)
