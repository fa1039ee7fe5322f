"""The self-telemetry endpoint: Prometheus text on /metrics, /healthz (liveness), /readyz (readiness).

One small aiohttp server on the pipeline's event loop, bound to 127.0.0.1:8888 unless configured.
The Kubernetes DaemonSet probes /healthz and /readyz on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("gotel.telemetry.counters")


class StartupError(Exception):
    """A start-up failure the user can fix; reported as one line, without a traceback."""


class TelemetryServer:
    def __init__(
        self,
        address: str,
        registry: Any,
        readiness: Callable[[], tuple[bool, dict[str, Any]]],
        metrics_enabled: bool = True,
        key: str = "service::telemetry::metrics::address",
    ) -> None:
        self.key = key
        self.metrics_enabled = metrics_enabled
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.registry = registry
        self.readiness = readiness
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    async def _metrics(self, _req: web.Request) -> web.Response:
        if not self.metrics_enabled:
            return web.Response(status=404, text="self-metrics are off (service::telemetry::metrics::level: none)\n")
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _req: web.Request) -> web.Response:
        ready, detail = self.readiness()
        return web.Response(status=200 if ready else 503, text=json.dumps(detail, indent=1) + "\n",
                            content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise StartupError(
                f"cannot serve self-telemetry on {self.host}:{self.port}: {e.strerror or e} "
                f"(set {self.key} to another host:port, or '' to turn it off)"
            ) from e
        server = site._server
        socks = getattr(server, "sockets", None) or []
        self.bound = socks[0].getsockname()[:2] if socks else (self.host, self.port)
        log.info("self-telemetry on http://%s:%d/metrics (health: /healthz, /readyz)", *self.bound)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
