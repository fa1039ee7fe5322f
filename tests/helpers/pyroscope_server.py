"""A test server for Grafana Pyroscope's write APIs, implemented from the documented wire protocol.

* ``POST /push.v1.PusherService/Push`` (Connect unary): ``Content-Type: application/proto`` with a
  binary ``push.v1.PushRequest`` (or ``application/json``); errors are Connect JSON
  ``{"code": ..., "message": ...}`` with the HTTP status Connect maps the code to.
* ``POST /ingest`` (and ``/pyroscope/ingest``): ``name=<app>{k=v,...}``, ``from``, ``until`` required;
  ``format=pprof``: the pprof in the multipart field ``profile`` (or as the raw body).

Like the real server it rejects what it cannot use: a series without ``service_name`` or
``__name__``, invalid or duplicate label names (a dot in a name becomes an underscore first, as the
real server has sanitised since grafana/pyroscope#3335: `otel.scope.name` is stored as `otel_scope_name`), a sample that is not a pprof, a bad ``name``.
``fail_next(status, n)`` makes it answer the next n requests with that status.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError

from gotel.formats import pprof
from gotel.proto import pyroscope_push_pb2 as push

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NAME = re.compile(r"^([^{}]+)\{(.*)\}$")
_CONNECT_CODE = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
                 413: "resource_exhausted", 429: "resource_exhausted", 500: "internal", 503: "unavailable",
                 504: "deadline_exceeded"}


@dataclass
class Series:
    labels: dict[str, str]
    profiles: list[Any]  # decoded pprof Profiles
    api: str  # "push" or "ingest"
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)


class PyroscopeServer:
    def __init__(self, require_tenant: str | None = None, require_auth: str | None = None,
                 ssl_context: Any = None) -> None:
        self.ssl_context = ssl_context
        self.require_tenant = require_tenant
        self.require_auth = require_auth
        self.series: list[Series] = []
        self.requests = 0
        self.rejected: list[tuple[int, str]] = []
        self._fail: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def fail_next(self, status: int, n: int = 1) -> None:
        self._fail.extend([status] * n)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> PyroscopeServer:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/push.v1.PusherService/Push", self._push)
        app.router.add_post("/ingest", self._ingest)
        app.router.add_post("/pyroscope/ingest", self._ingest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 20.0) -> list[Series]:
        end = asyncio.get_running_loop().time() + timeout
        while len(self.series) < n and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.05)
        return self.series

    # --- common -------------------------------------------------------------------------------------

    def _gate(self, req: web.Request, connect: bool) -> web.Response | None:
        self.requests += 1
        if self._fail:
            st = self._fail.pop(0)
            return self._error(st, "told to fail", connect, {"Retry-After": "0"} if st == 429 else None)
        if self.require_tenant is not None and req.headers.get("X-Scope-OrgID") != self.require_tenant:
            return self._error(401, "no or wrong X-Scope-OrgID", connect)
        if self.require_auth is not None and req.headers.get("Authorization") != self.require_auth:
            return self._error(401, "unauthorized", connect)
        return None

    def _error(self, status: int, msg: str, connect: bool, headers: dict[str, str] | None = None) -> web.Response:
        self.rejected.append((status, msg))
        if connect:
            body = json.dumps({"code": _CONNECT_CODE.get(status, "unknown"), "message": msg})
            return web.Response(status=status, text=body, content_type="application/json", headers=headers)
        return web.Response(status=status, text=msg, headers=headers)

    @staticmethod
    def _sanitize(labels: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k.replace(".", "_"), v) for k, v in labels]

    @staticmethod
    def _check_labels(labels: list[tuple[str, str]]) -> str | None:
        names = [k for k, _v in labels]
        if len(set(names)) != len(names):
            return f"duplicate label name in {names}"
        for k, v in labels:
            if not _LABEL.match(k):
                return f"invalid label name {k!r}"
            if v == "":
                return f"empty value for label {k!r}"
        d = dict(labels)
        if not d.get("service_name"):
            return "series has no service_name label"
        if not d.get("__name__"):
            return "series has no __name__ label"
        return None

    # --- push ---------------------------------------------------------------------------------------

    async def _push(self, req: web.Request) -> web.Response:
        gate = self._gate(req, True)
        if gate is not None:
            return gate
        ctype = req.headers.get("Content-Type", "")
        body = await req.read()
        msg = push.PushRequest()
        if ctype.startswith("application/proto"):
            try:
                msg.ParseFromString(body)
            except DecodeError as e:
                return self._error(400, f"bad protobuf: {e}", True)
        elif ctype.startswith("application/json"):
            from google.protobuf import json_format

            try:
                json_format.Parse(body, msg)
            except json_format.ParseError as e:
                return self._error(400, f"bad json: {e}", True)
        else:
            return web.Response(status=415, text=f"unsupported content type {ctype!r}")
        decoded: list[Series] = []
        for s in msg.series:
            labels = self._sanitize([(lp.name, lp.value) for lp in s.labels])
            bad = self._check_labels(labels)
            if bad:
                return self._error(400, bad, True)
            profs = []
            for smp in s.samples:
                try:
                    profs.append(pprof.decode(smp.raw_profile))
                except pprof.PprofError as e:
                    return self._error(400, f"sample is not a pprof: {e}", True)
            decoded.append(Series(dict(labels), profs, "push", dict(req.headers)))
        self.series.extend(decoded)
        return web.Response(status=200, body=push.PushResponse().SerializeToString(), content_type="application/proto")

    # --- ingest -------------------------------------------------------------------------------------

    async def _ingest(self, req: web.Request) -> web.Response:
        gate = self._gate(req, False)
        if gate is not None:
            return gate
        q = req.query
        name = q.get("name", "")
        m = _NAME.match(name) or (re.match(r"^([^{}]+)$", name) and _NAME.match(name + "{}"))
        if not m:
            return self._error(400, f"invalid name {name!r}", False)
        for k in ("from", "until"):
            if not q.get(k, "").isdigit():
                return self._error(400, f"{k} must be a unix timestamp", False)
        labels = [("service_name", m.group(1))]
        if m.group(2):
            for part in m.group(2).split(","):
                k, sep, v = part.partition("=")
                if not sep:
                    return self._error(400, f"invalid label {part!r} in name", False)
                labels.append((k.strip().replace(".", "_"), v.strip()))
        if q.get("format") != "pprof":
            return self._error(400, "this test server only takes format=pprof", False)
        if req.content_type.startswith("multipart/"):
            form = await req.post()
            f = form.get("profile")
            if f is None or not hasattr(f, "file"):
                return self._error(400, "multipart upload has no 'profile' file field", False)
            data = f.file.read()
        else:
            data = await req.read()
        try:
            prof = pprof.decode(data)
        except pprof.PprofError as e:
            return self._error(400, f"profile is not a pprof: {e}", False)
        if any(k.startswith("__") for k, _v in labels):
            return self._error(400, "reserved label names are not accepted in /ingest names", False)
        bad = self._check_labels([*labels, ("__name__", "ingest")])
        if bad:
            return self._error(400, bad, False)
        self.series.append(Series(dict(labels), [prof], "ingest", dict(req.headers), dict(q)))
        return web.Response(status=200, text="")
