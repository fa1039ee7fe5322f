"""The ``otlp_http`` (alias ``otlphttp``) exporter: OTLP/HTTP, protobuf or JSON, for all four signals.

URLs follow the collector: ``endpoint`` + ``/v1/traces`` (``/v1/metrics``, ``/v1/logs``,
``/v1development/profiles``) unless ``traces_endpoint`` (...) gives the full URL of one signal.
429/502/503/504 are retried honouring ``Retry-After``; any other 4xx/5xx drops the batch with the
status as reason. Queueing and retries are gotel.exporterhelper.queue's.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Literal

from pydantic import Field, model_validator
from yarl import URL

from gotel import __version__
from gotel.component.contract import Context, Exporter, ExporterFactory
from gotel.exporterhelper.clientconfig import ClientConfig, auth_headers
from gotel.exporterhelper.http import HTTPPoster
from gotel.exporterhelper.http import retry_after as http_retry_after
from gotel.exporterhelper.queue import ExportError, QueuedExporter, Sender
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.otlp import (
    CONTENT_JSON,
    CONTENT_PROTOBUF,
    WIRE,
    json_to_message,
    message_to_json,
    report_partial_success,
    status_message,
    unix_path,
)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
GZIP_LEVEL = 6
OFFLOAD_BYTES = 256 << 10


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    return c.compress(data) + c.flush()


class Config(ClientConfig):
    endpoint: str = Field(
        "", description="base URL (http://host:4318, https://...) or unix:///path/to.sock; the signal path is appended"
    )
    traces_endpoint: str | None = Field(None, description="full URL for traces; overrides endpoint")
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    profiles_endpoint: str | None = None
    encoding: Literal["proto", "json"] = "proto"

    @model_validator(mode="after")
    def _check(self) -> Config:
        eps = [self.endpoint, self.traces_endpoint, self.metrics_endpoint, self.logs_endpoint, self.profiles_endpoint]
        if not any(eps):
            raise ValueError("endpoint (or one of traces_endpoint, metrics_endpoint, ...) must be set")
        for ep in eps:
            if ep and unix_path(ep) is None and not ep.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {ep!r} must start with http://, https:// or unix://")
        return self

    def url_for(self, signal: Signal) -> str:
        signal = Signal(signal)
        own = getattr(self, f"{signal.value}_endpoint")
        if own:
            return str(own)
        if not self.endpoint:
            raise ValueError(f"no endpoint for {signal}: set endpoint or {signal.value}_endpoint")
        if unix_path(self.endpoint) is not None:
            return self.endpoint  # a socket path: the signal's default path is used on it
        return self.endpoint.rstrip("/") + WIRE[signal].http_path


def _safe(url: URL) -> str:
    """A URL fit for logs: no user:password."""
    return str(url.with_user(None)) if url.user or url.password else str(url)


class HttpSender(Sender[Batch]):
    def __init__(self, signal: Signal, cfg: Config, ctx: Context) -> None:
        self.signal = signal
        self.cfg = cfg
        self.ctx = ctx
        self.log: logging.Logger = ctx.logger
        self.wire = WIRE[signal]
        target = cfg.url_for(signal)
        self._socket = unix_path(target)
        self.url = URL(f"http://localhost{self.wire.http_path}") if self._socket else URL(target)
        self._json = cfg.encoding == "json"
        self._headers = {
            "Content-Type": CONTENT_JSON if self._json else CONTENT_PROTOBUF,
            "User-Agent": f"gotel/{__version__}",
            **cfg.header_values(),
        }
        if cfg.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self.http = HTTPPoster(str(self.url), self._headers, cfg.tls, cfg.timeout,
                               auth=(lambda: auth_headers(ctx, cfg.auth)) if cfg.auth else None,
                               unix_socket=self._socket, limit=max(4, cfg.sending_queue.num_consumers),
                               safe_url=_safe(self.url))

    async def start(self) -> None:
        await self.http.start()

    async def _body(self, batch: Batch) -> bytes:
        body = message_to_json(batch.peek()) if self._json else batch.to_bytes()
        if self.cfg.compression == "gzip":
            if len(body) >= OFFLOAD_BYTES:
                # zlib releases the GIL: a large batch compresses on another core, not in the event loop
                return await asyncio.to_thread(_gzip, body)
            return _gzip(body)
        return body

    async def send(self, batch: Batch) -> None:
        body = await self._body(batch)
        status, data, rheaders = await self.http.post(body)
        ctype = rheaders.get("Content-Type", "")
        retry_after = rheaders.get("Retry-After")
        if 200 <= status < 300:
            self._check_partial(data, ctype, batch)
            return
        msg = f"{_safe(self.url)} answered HTTP {status}"
        detail = status_message(data, ctype)
        if detail:
            msg += f": {detail}"
        if status in RETRYABLE_STATUS:
            raise ExportError(msg, retryable=True, reason=f"http_{status}", retry_after=http_retry_after(retry_after))
        raise ExportError(msg, retryable=False, reason=f"http_{status}")

    def _check_partial(self, data: bytes, ctype: str, batch: Batch) -> None:
        if not data:
            return
        try:
            if ctype.startswith(CONTENT_JSON):
                resp = json_to_message(data, self.wire.response())
            else:
                resp = self.wire.response.FromString(data)
        except Exception:
            return
        report_partial_success(self.signal, resp, batch, self.ctx)

    async def shutdown(self) -> None:
        await self.http.shutdown()


def create(signal: Signal, cfg: Config, ctx: Context) -> Exporter:
    return QueuedExporter(
        signal,
        ctx,
        HttpSender(signal, cfg, ctx),
        queue=cfg.sending_queue,
        retry=cfg.retry_on_failure,
        timeout=cfg.timeout,
    )


factory = ExporterFactory(
    type="otlp_http",
    config=Config,
    signals=frozenset(Signal),
    description="OTLP/HTTP (protobuf or JSON) to a collector or any OTLP backend (TLS, headers, gzip, retries, queue)",
    aliases=("otlphttp",),
    create=create,
)
