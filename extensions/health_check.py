"""`health_check` extension: the collector's health endpoint (keys, defaults, JSON answer), serving
the same health state as gotel's own /readyz (Service.readiness, handed over in ctx.extras["health"]).

The collector binds localhost:13133; gotel binds 127.0.0.1:13133 unless configured (loopback by
default). GET on `path` answers 200 {"status": "Server available", "upSince": ..., "uptime": ...}
once every pipeline and receiver runs, 503 {"status": "Server not available", ...} before that, while
a receiver process restarts and during shutdown; `response_body` replaces the JSON with fixed texts.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator

from gotel.component.contract import SHUTDOWN_DEADLINE, Component, ComponentConfig, Context, ExtensionFactory
from gotel.config.types import Duration
from gotel.service.server import StartupError

DEFAULT_ENDPOINT = "127.0.0.1:13133"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, what the collector reports before it is up
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class ResponseBody(ComponentConfig):
    healthy: str = Field("", description="body answered with 200")
    unhealthy: str = Field("", description="body answered with 503")


class PipelineCheck(ComponentConfig):
    """Accepted so that collector configs validate; the collector documents it as not working as
    expected and not to be used, and gotel does not act on it (exporter failures are in /metrics)."""

    enabled: bool = False
    interval: Duration = Field(300.0, gt=0)
    exporter_failure_threshold: int = Field(5, ge=1)


class ServerTLS(ComponentConfig):
    cert_file: str
    key_file: str
    min_version: str = Field("1.2", pattern=r"^1\.[23]$")


class Config(ComponentConfig):
    endpoint: str = Field(DEFAULT_ENDPOINT, description="host:port to serve on (loopback unless configured)")
    path: str = Field("/", description="URL path of the health answer")
    response_body: ResponseBody | None = Field(None, description="fixed bodies instead of the JSON status")
    check_collector_pipeline: PipelineCheck = Field(default_factory=PipelineCheck)
    tls: ServerTLS | None = Field(None, description="serve HTTPS with this certificate")

    @field_validator("endpoint")
    @classmethod
    def _addr(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected host:port, got {v!r}")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path must start with /, got {v!r}")
        return v


def _go_duration(seconds: float) -> str:
    """time.Duration.String() for the uptime: 1h2m3.5s, 4.25s."""
    h, rest = divmod(max(seconds, 0.0), 3600)
    m, s = divmod(rest, 60)
    out = f"{int(h)}h" if h else ""
    if h or m:
        out += f"{int(m)}m"
    return out + f"{s:.9f}".rstrip("0").rstrip(".") + "s"


def collector_answer(ready: bool, up_since: float | None, now: float | None = None) -> dict[str, str]:
    """The collector's JSON for a health state."""
    if not ready or up_since is None:
        return {"status": "Server not available", "upSince": ZERO_TIME, "uptime": ""}
    since = datetime.fromtimestamp(up_since, UTC).isoformat().replace("+00:00", "Z")
    return {"status": "Server available", "upSince": since,
            "uptime": _go_duration((now if now is not None else time.time()) - up_since)}


class HealthCheck(Component):
    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.log: logging.Logger = ctx.logger
        self.readiness: Readiness | None = ctx.extras.get("health")
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    def state(self) -> tuple[bool, float | None]:
        """(ready, ready since as a UNIX time): the service's readiness, or up when run without one."""
        if self.readiness is None:
            return True, getattr(self, "_started", None)
        ready, detail = self.readiness()
        return ready, detail.get("up_since")

    async def _answer(self, _req: web.Request) -> web.Response:
        ready, since = self.state()
        status = 200 if ready else 503
        rb = self.cfg.response_body
        if rb is not None:
            return web.Response(status=status, text=rb.healthy if ready else rb.unhealthy)
        return web.Response(status=status, text=json.dumps(collector_answer(ready, since)),
                            content_type="application/json")

    async def start(self) -> None:
        self._started = time.time()
        host, _, port = self.cfg.endpoint.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        sslctx = None
        if self.cfg.tls is not None:
            sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            sslctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.cfg.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
            sslctx.load_cert_chain(self.cfg.tls.cert_file, self.cfg.tls.key_file)
        app = web.Application()
        app.router.add_get(self.cfg.path, self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), ssl_context=sslctx, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise StartupError(f"{self.ctx.id}: cannot serve on {host}:{port}: {e.strerror or e} "
                                   f"(set extensions::{self.ctx.id}::endpoint to another host:port)") from e
        socks = getattr(site._server, "sockets", None) or []
        self.bound = socks[0].getsockname()[:2] if socks else (host, int(port))
        self.log.info("%s: health on http%s://%s:%d%s", self.ctx.id, "s" if sslctx else "", *self.bound, self.cfg.path)

    async def shutdown(self, deadline: float = SHUTDOWN_DEADLINE) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


factory = ExtensionFactory(
    type="health_check",
    config=Config,
    signals=frozenset(),
    description="the collector's health endpoint (default 127.0.0.1:13133, path /): 200 once every pipeline "
    "runs, 503 before, while a receiver restarts and at shutdown; the same state as /readyz",
    create=HealthCheck,
)
