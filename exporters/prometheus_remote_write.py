"""`prometheus_remote_write` exporter: remote-write 1.0 (prometheus.WriteRequest, block snappy).

Conversion (names, labels, delta -> cumulative) is gotel.formats.promconv's, shared with the scrape exporter;
gotel.formats.remotewrite reads number data points straight from the request bytes (the hot path).
Series are sharded by their label set over ``remote_write_queue.num_consumers`` queues with one
sender each, so samples of one series always leave in time order while several connections work in
parallel. Queueing and retries are QueuedExporter's: 5xx retried (and 429 when
``retry_on_http_429``), other 4xx dropped and counted with Prometheus' reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import cramjam
from pydantic import Field, SecretStr, field_validator

from gotel.component.contract import ComponentConfig, Context, Exporter, ExporterFactory
from gotel.config.types import Duration
from gotel.exporterhelper.clientconfig import TLSClientConfig
from gotel.exporterhelper.http import HTTPAuth, HTTPPoster, retry_after, short
from gotel.exporterhelper.queue import ExportError, QueueConfig, QueuedExporter, RetryConfig, Sender
from gotel.formats.promconv import Converter, ConvertOptions
from gotel.formats.promnames import check_label_names, check_namespace
from gotel.formats.remotewrite import Builder, Built
from gotel.pdata.batch import Batch, Metrics, Signal

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


class RemoteWriteQueue(ComponentConfig):
    enabled: bool = True
    queue_size: int = Field(10000, ge=1, description="requests waiting per shard")
    num_consumers: int = Field(5, ge=1, le=64, description="shards: parallel connections, one series per shard")


class Toggle(ComponentConfig):
    enabled: bool = False


class TargetInfo(ComponentConfig):
    enabled: bool = True


class Config(ComponentConfig):
    endpoint: str = Field(description="remote-write URL, e.g. http://127.0.0.1:9090/api/v1/write")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tls: TLSClientConfig = Field(default_factory=TLSClientConfig)
    auth: HTTPAuth = Field(default_factory=HTTPAuth)
    timeout: Duration = Field(5.0, gt=0)
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)
    remote_write_queue: RemoteWriteQueue = Field(default_factory=RemoteWriteQueue)
    retry_on_http_429: bool = Field(False, description="the spec allows (not requires) retrying 429")
    namespace: str = ""
    external_labels: dict[str, str] = Field(default_factory=dict)
    resource_to_telemetry_conversion: Toggle = Field(default_factory=Toggle)
    target_info: TargetInfo = Field(default_factory=TargetInfo)
    add_metric_suffixes: bool = True
    max_batch_size_bytes: int = Field(3_000_000, ge=1024, description="uncompressed size of one request")
    metric_expiration: Duration = Field(300.0, description="forget accumulated delta series after this")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {v!r} must be an http:// or https:// URL (e.g. http://127.0.0.1:9090/api/v1/write)")
        return v

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return check_namespace(v)

    @field_validator("external_labels")
    @classmethod
    def _ext(cls, v: dict[str, str]) -> dict[str, str]:
        check_label_names(v, "external_labels")
        empty = [k for k, x in v.items() if not x]
        if empty:
            raise ValueError(f"external_labels must not have empty values: {empty}")
        return v


class WriteBatch:
    """One WriteRequest in a shard's sending queue: what QueuedExporter needs of a batch.

    While it waits in the queue, later conversions for the same shard are appended to it (up to
    max_batch_size_bytes), so a busy shard sends fewer, larger requests: an HTTP request costs about
    as much CPU as converting a few hundred samples. Series stay in order: a shard has one sender,
    and a series that occurs in two appended parts has its older TimeSeries first in the request
    (Prometheus' own sender puts each sample in a TimeSeries of its own). The sender seals it, that
    is compresses it, when it takes it.
    """

    __slots__ = ("body", "parts", "points", "samples", "size")

    def __init__(self, raw: bytes, points: int, samples: int) -> None:
        self.parts = [raw]
        self.size = len(raw)
        self.points = points
        self.samples = samples
        self.body: bytes | None = None

    def add(self, raw: bytes, points: int, samples: int) -> None:
        self.parts.append(raw)
        self.size += len(raw)
        self.points += points
        self.samples += samples

    def seal(self) -> bytes:
        """The block-snappy body; nothing may be added afterwards (a retry sends the same body)."""
        if self.body is None:
            self.body = bytes(cramjam.snappy.compress_raw(b"".join(self.parts)))
            self.parts = []
        return self.body

    def byte_size(self) -> int:
        return self.size

    def item_count(self) -> int:
        return self.points

    def is_empty(self) -> bool:
        return self.size == 0


class RemoteWriteSender(Sender[WriteBatch]):
    def __init__(self, cfg: Config, ctx: Context | None = None) -> None:
        headers = {**HEADERS, **{k: v.get_secret_value() for k, v in cfg.headers.items()}}
        auth = cfg.auth.header()
        if auth:
            headers["Authorization"] = auth
        self.retry_429 = cfg.retry_on_http_429
        self.http = HTTPPoster(cfg.endpoint, headers, cfg.tls, cfg.timeout,
                               auth=cfg.auth.dynamic(ctx) if ctx is not None else None)

    async def start(self) -> None:
        await self.http.start()

    async def send(self, batch: Any) -> None:
        status, body, headers = await self.http.post(batch.seal())
        if 200 <= status < 300:
            return
        msg = f"remote-write answered {status}: {short(body)}"
        if status >= 500:
            raise ExportError(msg, retryable=True, reason=f"http_{status}", retry_after=retry_after(headers.get("Retry-After")))
        if status == 429:
            raise ExportError(msg, retryable=self.retry_429, reason="http_429",
                              retry_after=retry_after(headers.get("Retry-After")))
        raise ExportError(msg, retryable=False, reason=f"http_{status}")

    async def shutdown(self) -> None:
        await self.http.shutdown()


class RemoteWriteExporter(Exporter):
    mutates = False

    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.conv = Converter(
            ConvertOptions(
                namespace=cfg.namespace,
                const_labels=dict(cfg.external_labels),
                resource_to_telemetry=cfg.resource_to_telemetry_conversion.enabled,
                suffixes=cfg.add_metric_suffixes,
                target_info=cfg.target_info.enabled,
            ),
            expiration=cfg.metric_expiration,
        )
        q = cfg.remote_write_queue
        self.nshards = q.num_consumers
        self.builder = Builder(self.conv, self.nshards, cfg.max_batch_size_bytes)
        self.shards = [
            QueuedExporter(
                Signal.METRICS, ctx, RemoteWriteSender(cfg, ctx),
                queue=QueueConfig(enabled=q.enabled, num_consumers=1, sizer="requests", queue_size=q.queue_size),
                retry=cfg.retry_on_failure, timeout=cfg.timeout,
            )
            for _ in range(self.nshards)
        ]
        self._samples = ctx.telemetry.counter("prometheus_remote_write_samples", "Samples handed to the sending queues.")
        self._consumed = 0

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.shards))

    def build(self, batch: Metrics) -> Built:
        """Converts one batch: per shard, the request bodies (uncompressed) and the data points they carry."""
        built = self.builder.build(batch.to_bytes(), time.monotonic())
        self._consumed += 1
        if self._consumed % 64 == 0 and self.conv.expire():
            self.builder.forget_dead()
        return built

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, Metrics)
        built = self.build(batch)
        for reason, k in built.stats.dropped.items():
            self.ctx.telemetry.dropped(Signal.METRICS, k, reason)
        limit = self.cfg.max_batch_size_bytes
        for shard, reqs in enumerate(built.bodies):
            left = built.points[shard]
            queue = self.shards[shard]
            for i, (raw, nsamples) in enumerate(reqs):
                # Points are attributed to the last request of a shard (a point's samples may span two).
                p = left if i == len(reqs) - 1 else 0
                left -= p
                self._samples.inc(nsamples)
                tail = queue.waiting_tail()
                if isinstance(tail, WriteBatch) and tail.body is None and tail.size + len(raw) <= limit:
                    tail.add(raw, p, nsamples)
                    continue
                await queue.enqueue(WriteBatch(raw, p, nsamples))

    async def shutdown(self, deadline: float = 10.0) -> None:
        await asyncio.gather(*(s.shutdown(deadline) for s in self.shards))  # the service's remaining shutdown_timeout


def create(signal: Signal, cfg: Config, ctx: Context) -> RemoteWriteExporter:
    return RemoteWriteExporter(cfg, ctx)


factory = ExporterFactory(
    type="prometheus_remote_write",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="Prometheus remote-write 1.0 (protobuf + block snappy), sharded by series",
    aliases=("prometheusremotewrite",),
    create=create,
)
