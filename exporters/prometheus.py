"""`prometheus` exporter: a scrape endpoint serving what the pipeline's metrics add up to.

Text 0.0.4 or OpenMetrics 1.0 by content negotiation; names and labels from gotel.formats.promconv, the
same as the remote-write exporter. Delta temporality is accumulated into cumulative series; series
not updated for ``metric_expiration`` drop out (the collector's default is 5 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import exposition as textfmt
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as omfmt
from prometheus_client.samples import Exemplar as PExemplar
from pydantic import Field, field_validator

from gotel.component.contract import ComponentConfig, Context, Exporter, ExporterFactory
from gotel.config.types import Duration
from gotel.formats.promconv import Converter, ConvertOptions, Series, Stats, format_le
from gotel.formats.promnames import check_label_names, check_namespace
from gotel.pdata.batch import Batch, Metrics, Signal

OPENMETRICS_CT = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_CT = "text/plain; version=0.0.4; charset=utf-8"


class ResourceToTelemetry(ComponentConfig):
    enabled: bool = False


class Config(ComponentConfig):
    endpoint: str = Field("127.0.0.1:8889", description="host:port to serve /metrics on (loopback by default)")
    namespace: str = ""
    const_labels: dict[str, str] = Field(default_factory=dict)
    send_timestamps: bool = False
    metric_expiration: Duration = Field(300.0, description="series not updated for this long are dropped")
    resource_to_telemetry_conversion: ResourceToTelemetry = Field(default_factory=ResourceToTelemetry)
    enable_open_metrics: bool = Field(True, description="answer OpenMetrics (with exemplars) when asked for it")
    without_scope_info: bool = Field(False, description="leave out otel_scope_name/otel_scope_version labels")
    add_metric_suffixes: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"endpoint {v!r} must be host:port, e.g. 127.0.0.1:8889")
        return v

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return check_namespace(v)

    @field_validator("const_labels")
    @classmethod
    def _const(cls, v: dict[str, str]) -> dict[str, str]:
        return check_label_names(v, "const_labels")


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics 1.x with a non-zero weight."""
    for part in (accept or "").split(","):
        toks = [t.strip() for t in part.split(";")]
        if toks[0] != "application/openmetrics-text":
            continue
        params = dict(t.split("=", 1) for t in toks[1:] if "=" in t)
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        version = params.get("version", "1.0.0")
        if version.startswith("1.") or version == "0.0.1":
            return True
    return False


class _Collector:
    """prometheus_client collector over a snapshot of the converter's series (the library formats)."""

    def __init__(self, series: list[Series], send_timestamps: bool) -> None:
        self.series = series
        self.ts = send_timestamps

    def collect(self) -> Iterator[Metric]:
        fams: dict[tuple[str, str], Metric] = {}
        order: list[tuple[str, str]] = []
        for s in sorted(self.series, key=lambda s: (s.family != "target_info", s.family)):
            key = (s.family, s.kind)
            m = fams.get(key)
            if m is None:
                m = _family(s)
                if m is None:
                    continue
                fams[key] = m
                order.append(key)
            _add(m, s, self.ts)
        for k in order:
            yield fams[k]


def snapshot(series: Iterable[Series]) -> list[Series]:
    """Copies that the event loop may go on updating while a thread formats them. The converter
    replaces counts and quantile lists rather than changing them, so only exemplars need copying."""
    return [Series(s.family, s.kind, s.help, s.unit, s.labels, s.ts_ms, s.start_ms, s.value, s.bounds, s.counts,
                   s.sum, s.count, s.has_sum, s.quantiles, dict(s.exemplars) if s.exemplars else {})
            for s in series]


def render(series: list[Series], accept: str, send_timestamps: bool, open_metrics: bool) -> tuple[bytes, str]:
    """The exposition of a snapshot for an Accept header: (body, content type)."""
    col = _Collector(series, send_timestamps)
    if open_metrics and wants_openmetrics(accept):
        return omfmt.generate_latest(col, version="1.0.0"), OPENMETRICS_CT
    return textfmt.generate_latest(col), TEXT_CT


def _family(s: Series) -> Metric | None:
    name = s.family
    if s.kind == "counter":
        name = name[:-6] if name.endswith("_total") else name
    elif s.kind == "info":
        name = name[:-5] if name.endswith("_info") else name
    unit = s.unit if s.unit and name.endswith("_" + s.unit) else ""
    try:
        return Metric(name, s.help or "", s.kind, unit)
    except ValueError:
        return None


def _ex(e: Any) -> PExemplar:
    return PExemplar(e.labels, e.value, e.ts or None)


def _add(m: Metric, s: Series, with_ts: bool) -> None:
    labels = dict(s.labels)
    t = s.ts_ms / 1000.0 if with_ts and s.ts_ms else None
    if s.kind == "counter":
        ex = s.exemplars.get(0)
        m.add_sample(m.name + "_total", labels, s.value, t, _ex(ex) if ex else None)
    elif s.kind == "gauge":
        m.add_sample(m.name, labels, s.value, t)
    elif s.kind == "info":
        m.add_sample(m.name + "_info", labels, 1.0, t)
    elif s.kind == "histogram":
        acc = 0.0
        for i, b in enumerate(s.bounds):
            acc += s.counts[i] if i < len(s.counts) else 0.0
            ex = s.exemplars.get(i)
            m.add_sample(m.name + "_bucket", {**labels, "le": format_le(b)}, acc, t, _ex(ex) if ex else None)
        ex = s.exemplars.get(len(s.bounds))
        m.add_sample(m.name + "_bucket", {**labels, "le": "+Inf"}, s.count, t, _ex(ex) if ex else None)
        if s.has_sum:
            m.add_sample(m.name + "_sum", labels, s.sum, t)
        m.add_sample(m.name + "_count", labels, s.count, t)
    elif s.kind == "summary":
        for q, v in s.quantiles:
            m.add_sample(m.name, {**labels, "quantile": format_le(q)}, v, t)
        m.add_sample(m.name + "_sum", labels, s.sum, t)
        m.add_sample(m.name + "_count", labels, s.count, t)


class PrometheusExporter(Exporter):
    mutates = False

    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.log = ctx.logger
        self.conv = Converter(
            ConvertOptions(
                namespace=cfg.namespace,
                const_labels=dict(cfg.const_labels),
                resource_to_telemetry=cfg.resource_to_telemetry_conversion.enabled,
                scope_labels=not cfg.without_scope_info,
                suffixes=cfg.add_metric_suffixes,
            ),
            expiration=cfg.metric_expiration,
        )
        self._runner: web.AppRunner | None = None
        self._series_gauge = ctx.telemetry.gauge("prometheus_exporter_series", "Series the scrape endpoint serves.")
        self._scrapes = ctx.telemetry.counter("prometheus_exporter_scrapes", "Scrapes served, by format.", ("format",))
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.cfg.endpoint.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        site = web.TCPSite(self._runner, host, int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise RuntimeError(f"{self.ctx.id}: cannot listen on {self.cfg.endpoint}: {e.strerror or e}") from e
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self.log.info("%s: serving Prometheus metrics on http://%s:%s/metrics", self.ctx.id, host, self.port)

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, Metrics)
        stats = Stats()
        self.conv.convert(batch, stats)
        n = batch.item_count()
        dropped = sum(stats.dropped.values())
        for reason, k in stats.dropped.items():
            self.ctx.telemetry.dropped(Signal.METRICS, k, reason)
        self.ctx.telemetry.sent(Signal.METRICS, n - dropped)
        self._series_gauge.set(len(self.conv.series))

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition for an Accept header, formatted here (tests, small endpoints)."""
        self.conv.expire()
        om = self.cfg.enable_open_metrics and wants_openmetrics(accept)
        self._scrapes.labels("openmetrics" if om else "text").inc()
        return render(snapshot(self.conv.series.values()), accept, self.cfg.send_timestamps, self.cfg.enable_open_metrics)

    async def _handle(self, request: web.Request) -> web.Response:
        """Snapshots on the event loop (cheap), formats in a thread: a scrape of tens of thousands of
        series takes a second of formatting, which must not stop the pipeline for that long."""
        t0 = time.perf_counter()
        accept = request.headers.get("Accept", "")
        self.conv.expire()
        snap = snapshot(self.conv.series.values())
        om = self.cfg.enable_open_metrics and wants_openmetrics(accept)
        self._scrapes.labels("openmetrics" if om else "text").inc()
        body, ct = await asyncio.to_thread(render, snap, accept, self.cfg.send_timestamps, self.cfg.enable_open_metrics)
        self._series_gauge.set(len(snap))
        took = time.perf_counter() - t0
        if took > 5.0:
            self.log.warning("%s: serving %d series took %.1fs", self.ctx.id, len(snap), took)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ct
        return resp

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5)
            self._runner = None


def create(signal: Signal, cfg: Config, ctx: Context) -> PrometheusExporter:
    return PrometheusExporter(cfg, ctx)


factory = ExporterFactory(
    type="prometheus",
    config=Config,
    signals=frozenset({Signal.METRICS}),
    description="Prometheus scrape endpoint (text 0.0.4 and OpenMetrics 1.0), 127.0.0.1:8889 by default",
    create=create,
)
