"""`prometheus_remote_write` exporter: remote-write 1.0 (prometheus.WriteRequest, block snappy).

Conversion (names, labels, delta -> cumulative) is gotel.promconv's, shared with the scrape exporter.
Series are sharded by their label set over ``remote_write_queue.num_consumers`` queues with one
sender each, so samples of one series always leave in time order while several connections work in
parallel. Queueing and retries are QueuedExporter's: 5xx retried (and 429 when
``retry_on_http_429``), other 4xx dropped and counted with Prometheus' reason.
"""

from __future__ import annotations

import asyncio
from itertools import accumulate
from typing import Any

import cramjam
from pydantic import Field, SecretStr, field_validator

from gotel.clientconfig import TLSClientConfig
from gotel.component import ComponentConfig, Context, Exporter, ExporterFactory
from gotel.config.types import Duration
from gotel.exporterhelper import ExportError, QueueConfig, QueuedExporter, RetryConfig, Sender
from gotel.httpclient import HTTPAuth, HTTPPoster, retry_after, short
from gotel.pdata import Batch, Metrics, Signal
from gotel.promconv import Converter, ConvertOptions, Series, Stats, format_le
from gotel.promnames import LABEL_NAME_RE, METRIC_NAME_RE
from gotel.protowire import SampleEncoder, label_pair, ld, pack_double, varint

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
        if v and not METRIC_NAME_RE.match(v):
            raise ValueError(f"namespace {v!r} must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        return v

    @field_validator("external_labels")
    @classmethod
    def _ext(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not LABEL_NAME_RE.match(k) or k.startswith("__")]
        if bad:
            raise ValueError(f"invalid label names in external_labels: {bad}")
        empty = [k for k, x in v.items() if not x]
        if empty:
            raise ValueError(f"external_labels must not have empty values: {empty}")
        return v


class WriteBatch:
    """An encoded, compressed WriteRequest in the sending queue: what QueuedExporter needs of a batch."""

    __slots__ = ("body", "points", "samples")

    def __init__(self, body: bytes, points: int, samples: int) -> None:
        self.body = body
        self.points = points
        self.samples = samples

    def byte_size(self) -> int:
        return len(self.body)

    def item_count(self) -> int:
        return self.points

    def is_empty(self) -> bool:
        return not self.body


class RemoteWriteSender(Sender):
    def __init__(self, cfg: Config) -> None:
        headers = {**HEADERS, **{k: v.get_secret_value() for k, v in cfg.headers.items()}}
        auth = cfg.auth.header()
        if auth:
            headers["Authorization"] = auth
        self.retry_429 = cfg.retry_on_http_429
        self.http = HTTPPoster(cfg.endpoint, headers, cfg.tls, cfg.timeout)

    async def start(self) -> None:
        await self.http.start()

    async def send(self, batch: Any) -> None:
        status, body, headers = await self.http.post(batch.body)
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


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
# One series' samples in a request: (timestamp ms, value) for plain series, (timestamp, values per
# sub-series) for histograms and summaries.
Snapshot = tuple[int, Any]


def label_block(name: str, labels: tuple[tuple[str, str], ...]) -> bytes:
    """The encoded labels (TimeSeries field 1, repeated) of one series: sorted, __name__ included."""
    pairs = sorted((("__name__", name), *labels))
    return b"".join(ld(b"\x0a", label_pair(n, v)) for n, v in pairs if v != "")


def sub_series(s: Series) -> list[SeriesKey]:
    """The Prometheus series a converted series is sent as, in the order of snapshot values."""
    fam, base = s.family, s.labels
    if s.kind == "histogram":
        keys = [(fam + "_bucket", base + (("le", format_le(b)),)) for b in s.bounds]
        keys.append((fam + "_bucket", base + (("le", "+Inf"),)))
        if s.has_sum:
            keys.append((fam + "_sum", base))
        keys.append((fam + "_count", base))
        return keys
    if s.kind == "summary":
        keys = [(fam, base + (("quantile", format_le(q)),)) for q, _ in s.quantiles]
        return [*keys, (fam + "_sum", base), (fam + "_count", base)]
    return [(fam, base)]


def snapshot_values(s: Series) -> Any:
    if s.kind in ("counter", "gauge"):
        return s.value
    if s.kind == "info":
        return 1.0
    if s.kind == "histogram":
        vals: list[float] = list(accumulate(s.counts[: len(s.bounds)]))
        vals.append(s.count)
        if s.has_sum:
            vals.append(s.sum)
        vals.append(s.count)
        return vals
    return [v for _, v in s.quantiles] + [s.sum, s.count]


class Encoder:
    """Series snapshots -> WriteRequest bodies split by size. Label blocks are computed once per series
    (cached on the Series) and each timestamp is encoded once per request."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def encode(self, grouped: dict[int, tuple[Series, list[Snapshot]]]) -> list[tuple[bytes, int]]:
        """-> [(uncompressed WriteRequest, samples)]; samples of a series sorted by time."""
        out: list[tuple[bytes, int]] = []
        parts: list[bytes] = []
        size = 0
        n = 0
        encs: dict[int, SampleEncoder] = {}
        pack = pack_double

        def enc(ts: int) -> SampleEncoder:
            e = encs.get(ts)
            if e is None:
                e = encs[ts] = SampleEncoder(ts)
            return e

        for s, snaps in grouped.values():
            blocks = s.wire[1]
            if len(snaps) == 1:
                # The common case: one sample per series. Each sub-series' TimeSeries header (tag,
                # length, labels) depends only on the sample's encoded size, so it is cached.
                ts, v = snaps[0]
                e = enc(ts)
                hdrs = s.wire[3].get(e.size)
                if hdrs is None:
                    hdrs = s.wire[3][e.size] = [b"\x0a" + varint(len(b) + e.size) + b for b in blocks]
                pre, post = e.pre, e.post
                if len(blocks) == 1:
                    msgs = [hdrs[0] + pre + pack(v) + post]
                else:
                    msgs = [h + pre + pack(x) + post for h, x in zip(hdrs, v, strict=False)]
                k = len(blocks)
            else:
                snaps.sort(key=lambda x: x[0])
                if len(blocks) == 1:
                    msgs = [ld(b"\x0a", blocks[0] + b"".join(enc(ts)(v) for ts, v in snaps))]
                else:
                    msgs = [ld(b"\x0a", block + b"".join(enc(ts)(vals[i]) for ts, vals in snaps))
                            for i, block in enumerate(blocks)]
                k = len(snaps) * len(blocks)
            for m in msgs:
                if parts and size + len(m) > self.max_bytes:
                    out.append((b"".join(parts), n))
                    parts, size, n = [], 0, 0
                parts.append(m)
                size += len(m)
            n += k
        if parts:
            out.append((b"".join(parts), n))
        return out


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
        self.encoder = Encoder(cfg.max_batch_size_bytes)
        self.shards = [
            QueuedExporter(
                Signal.METRICS, ctx, RemoteWriteSender(cfg),
                queue=QueueConfig(enabled=q.enabled, num_consumers=1, sizer="requests", queue_size=q.queue_size),
                retry=cfg.retry_on_failure, timeout=cfg.timeout,
            )
            for _ in range(self.nshards)
        ]
        self._samples = ctx.telemetry.counter("prometheus_remote_write_samples", "Samples handed to the sending queues.")
        self._consumed = 0

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.shards))

    def _wire(self, s: Series) -> tuple[int, list[bytes], int, dict[int, list[bytes]]]:
        """(shard, label blocks, number of quantiles, headers by sample size) of a series, cached on it."""
        blocks = [label_block(name, labels) for name, labels in sub_series(s)]
        return hash(s.labels) % self.nshards, blocks, len(s.quantiles), {}

    def build(self, batch: Metrics) -> tuple[list[list[tuple[bytes, int]]], list[int], Stats]:
        """Converts one batch: per shard, the request bodies (uncompressed) and the data points they carry."""
        stats = Stats()
        n = self.nshards
        grouped: list[dict[int, tuple[Series, list[Snapshot]]]] = [{} for _ in range(n)]
        points = [0] * n
        infos: list[list[list[Snapshot]]] = [[] for _ in range(n)]
        wire = self._wire

        def emit(s: Series) -> None:
            w = s.wire
            if w is None or w[2] != len(s.quantiles):
                w = s.wire = wire(s)
            shard = w[0]
            g = grouped[shard]
            ent = g.get(id(s))
            if s.kind == "info":
                if ent is None:
                    lst: list[Snapshot] = []
                    g[id(s)] = (s, lst)
                    infos[shard].append(lst)
                return
            points[shard] += 1
            snap = (s.ts_ms, s.value if s.kind in ("counter", "gauge") else snapshot_values(s))
            if ent is None:
                g[id(s)] = (s, [snap])
            else:
                ent[1].append(snap)

        self.conv.convert(batch, stats, emit=emit)
        self._consumed += 1
        if self._consumed % 64 == 0:
            self.conv.expire()
        # target_info has no time of its own: it takes the newest sample time of the batch.
        if any(infos):
            newest = max((snap[0] for g in grouped for _, snaps in g.values() for snap in snaps), default=0)
            for shard, g in enumerate(grouped):
                for lst in infos[shard]:
                    if newest:
                        lst.append((newest, 1.0))
                for k in [k for k, (_, snaps) in g.items() if not snaps]:
                    del g[k]
        return [self.encoder.encode(g) for g in grouped], points, stats

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, Metrics)
        bodies, points, stats = self.build(batch)
        for reason, k in stats.dropped.items():
            self.ctx.telemetry.dropped(Signal.METRICS, k, reason)
        for shard, reqs in enumerate(bodies):
            left = points[shard]
            for i, (raw, nsamples) in enumerate(reqs):
                # Points are attributed to the last request of a shard (a point's samples may span two).
                p = left if i == len(reqs) - 1 else 0
                left -= p
                self._samples.inc(nsamples)
                body = bytes(cramjam.snappy.compress_raw(raw))
                await self.shards[shard].consume(WriteBatch(body, p, nsamples))  # type: ignore[arg-type]

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.shutdown() for s in self.shards))


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
