"""The ``otlp`` (alias ``otlp_grpc``) exporter: OTLP/gRPC for all four signals.

Batches leave as the wire bytes they arrived with when nothing changed them (identity serializer):
no protobuf round trip on the hot path. Queueing and retries are gotel.exporterhelper.queue's; this module
makes one attempt and classifies the outcome as the OTLP specification says.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import grpc.aio
from pydantic import Field, model_validator

from gotel import __version__
from gotel.component.contract import ITEM_COUNT_HEADER, Context, Exporter, ExporterFactory
from gotel.exporterhelper.clientconfig import ClientConfig, auth_headers
from gotel.exporterhelper.queue import ExportError, QueuedExporter, Sender
from gotel.pdata.batch import Batch, Signal
from gotel.pdata.otlp import (
    STATUS_DETAILS_KEY,
    WIRE,
    report_partial_success,
    retry_info_delay,
    unix_path,
)

# OTLP spec "Failures": retryable gRPC codes. RESOURCE_EXHAUSTED only when the server sent RetryInfo.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class Config(ClientConfig):
    endpoint: str = Field(
        description="host:port (TLS unless tls.insecure), http://host:port (plain text), "
        "https://host:port, or unix:///path/to.sock"
    )
    authority: str | None = Field(None, description="overrides the :authority header")
    max_send_msg_size_mib: int = Field(64, gt=0)
    send_item_count: bool = Field(
        False, description=f"send each request's item count as gRPC metadata {ITEM_COUNT_HEADER!r} (gotel's "
        "internal hop: the pipeline then counts without parsing)")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.tls.insecure_skip_verify and not self.tls.insecure:
            raise ValueError(
                "tls::insecure_skip_verify is not supported by the gRPC exporter (grpc-python cannot skip "
                "verification); set tls::ca_file to the server's CA or certificate"
            )
        if self.tls.min_version != "1.2":
            raise ValueError("tls::min_version cannot be set for gRPC (grpc-python offers no knob; it negotiates TLS 1.2+)")
        if not self.endpoint.strip():
            raise ValueError("endpoint must not be empty")
        return self


def channel_target(cfg: Config) -> tuple[str, bool]:
    """(gRPC target, use TLS) from the collector-style endpoint."""
    ep = cfg.endpoint.strip()
    path = unix_path(ep)
    if path is not None:
        return f"unix://{path}" if path.startswith("/") else f"unix:{path}", False
    if ep.startswith("http://"):
        return ep[len("http://") :].rstrip("/"), False
    if ep.startswith("https://"):
        return ep[len("https://") :].rstrip("/"), True
    return ep, not cfg.tls.insecure


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def make_channel(cfg: Config) -> grpc.aio.Channel:
    target, secure = channel_target(cfg)
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", cfg.max_send_msg_size_mib << 20),
        ("grpc.max_receive_message_length", 4 << 20),
        ("grpc.primary_user_agent", f"gotel/{__version__}"),
        # A backend that was down must be found again within seconds, not grpc's default two minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if cfg.authority:
        options.append(("grpc.default_authority", cfg.authority))
    compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression
    if not secure:
        return grpc.aio.insecure_channel(target, options=options, compression=compression)
    if cfg.tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", cfg.tls.server_name_override))
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(cfg.tls.ca_file),
        private_key=_read(cfg.tls.key_file),
        certificate_chain=_read(cfg.tls.cert_file),
    )
    return grpc.aio.secure_channel(target, creds, options=options, compression=compression)


class GrpcSender(Sender[Batch]):
    """One Export call per batch on a shared channel."""

    def __init__(self, signal: Signal, cfg: Config, ctx: Context) -> None:
        self.signal = signal
        self.cfg = cfg
        self.ctx = ctx
        self.log: logging.Logger = ctx.logger
        self.wire = WIRE[signal]
        # gRPC metadata keys are lower-case; values stay secret (never logged).
        self._md = tuple((k.lower(), v) for k, v in cfg.header_values().items())
        self._count = cfg.send_item_count
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    async def start(self) -> None:
        self._channel = make_channel(self.cfg)
        # Identity (de)serializers: bytes in, bytes out; the batch already is the request.
        self._call = self._channel.unary_unary(self.wire.grpc_method)

    async def send(self, batch: Batch) -> None:
        if self._call is None:
            await self.start()
        try:
            md = self._md + tuple((k.lower(), v) for k, v in auth_headers(self.ctx, self.cfg.auth).items())
            if self._count:
                md += ((ITEM_COUNT_HEADER, str(batch.item_count())),)
            resp: bytes = await self._call(batch.to_bytes(), timeout=self.cfg.timeout, metadata=md or None)
        except grpc.aio.AioRpcError as e:
            raise classify(e) from None
        if resp:
            self._check_partial(resp, batch)

    def _check_partial(self, resp_bytes: bytes, batch: Batch) -> None:
        try:
            resp = self.wire.response.FromString(resp_bytes)
        except Exception:
            return  # an unreadable response to a successful call is the server's problem, not data loss
        report_partial_success(self.signal, resp, batch, self.ctx)

    async def shutdown(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=1.0)
            self._channel = None
            self._call = None


def classify(e: grpc.aio.AioRpcError) -> ExportError:
    """An RPC error -> ExportError, retryable per the OTLP spec, honouring RetryInfo."""
    code = e.code()
    delay = None
    md = e.trailing_metadata() or ()
    for k, v in md:
        if k == STATUS_DETAILS_KEY and isinstance(v, bytes):
            delay = retry_info_delay(v)
    retryable = code in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None)
    name = code.name if code is not None else "UNKNOWN"
    return ExportError(f"{name}: {e.details()}", retryable=retryable, reason=name.lower(), retry_after=delay)


def create(signal: Signal, cfg: Config, ctx: Context) -> Exporter:
    return QueuedExporter(
        signal,
        ctx,
        GrpcSender(signal, cfg, ctx),
        queue=cfg.sending_queue,
        retry=cfg.retry_on_failure,
        timeout=cfg.timeout,
    )


factory = ExporterFactory(
    type="otlp",
    config=Config,
    signals=frozenset(Signal),
    description="OTLP/gRPC to a collector or any OTLP backend (TLS, headers, gzip, retries, queue)",
    aliases=("otlp_grpc",),
    create=create,
)
