"""`loki` exporter: logs to Loki's push API (protobuf + block snappy, or JSON), or to Loki 3's native
OTLP endpoint (``mode: otlp``).

Push mode: a configured list of resource attributes (plus the severity as ``level``) become stream
labels; everything else is structured metadata. Label names are sanitised to Loki's rules and Loki's
default limits are applied *before* sending (a request Loki would reject with 400 loses the whole
request), and every cut is counted. Entries are sorted by time per stream. Queueing and retries are
QueuedExporter's; a 413 splits the request in halves, which are sent at once.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections.abc import Iterable
from typing import Any, Literal

import cramjam
from pydantic import Field, SecretStr, field_validator, model_validator

from gotel.component.contract import ComponentConfig, Context, Exporter, ExporterFactory
from gotel.config.types import Duration
from gotel.exporterhelper.clientconfig import TLSClientConfig
from gotel.exporterhelper.http import HTTPAuth, HTTPPoster, retry_after, short
from gotel.exporterhelper.queue import ExportError, QueueConfig, QueuedExporter, RetryConfig, Sender
from gotel.formats.promnames import LABEL_NAME_RE, label_name
from gotel.pdata.batch import Batch, Logs, Signal, value_of
from gotel.pdata.wire import label_pair, ld, varint

_SMALL = [bytes([i]) for i in range(128)]
# structuredMetadata entries for the 16-byte trace id and 8-byte span id, up to the hex value
TRACE_PRE = b"\x1a" + bytes([2 + 8 + 2 + 32]) + b"\x0a\x08trace_id\x12\x20"
SPAN_PRE = b"\x1a" + bytes([2 + 7 + 2 + 16]) + b"\x0a\x07span_id\x12\x10"

DEFAULT_LABELS = [
    "service.name", "service.namespace", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name",
    "deployment.environment.name",
]
SEVERITY = ["", "trace", "debug", "info", "warn", "error", "fatal"]


class Limits(ComponentConfig):
    """Loki's default per-tenant limits; raise them here only when the Loki you write to allows more."""

    max_label_names_per_series: int = Field(15, ge=1)
    max_label_name_length: int = Field(1024, ge=1)
    max_label_value_length: int = Field(2048, ge=1)
    max_line_size: int = Field(256 * 1024, ge=0, description="bytes; 0 = no limit")
    max_line_size_truncate: bool = Field(True, description="cut long lines (True) or drop them (False)")
    max_structured_metadata_entries_count: int = Field(128, ge=0)
    max_structured_metadata_size: int = Field(64 * 1024, ge=0, description="bytes per entry; 0 = no limit")


class Config(ComponentConfig):
    endpoint: str = Field(description="push URL (http://host:3100/loki/api/v1/push), or in otlp mode the base http://host:3100/otlp")
    mode: Literal["push", "otlp"] = "push"
    encoding: Literal["protobuf", "json"] = "protobuf"
    tenant_id: str | None = Field(None, description="sent as X-Scope-OrgID")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    auth: HTTPAuth = Field(default_factory=HTTPAuth)
    tls: TLSClientConfig = Field(default_factory=TLSClientConfig)
    timeout: Duration = Field(5.0, gt=0)
    sending_queue: QueueConfig = Field(default_factory=QueueConfig)
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS),
                              description="resource attributes that become stream labels, in priority order")
    level_label: str = Field("level", description="label carrying the severity; empty to leave it out")
    limits: Limits = Field(default_factory=Limits)

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {v!r} must be an http:// or https:// URL, e.g. http://127.0.0.1:3100/loki/api/v1/push")
        return v.rstrip("/")

    @field_validator("level_label")
    @classmethod
    def _level(cls, v: str) -> str:
        if v and (not LABEL_NAME_RE.match(v) or v.startswith("__")):
            raise ValueError(f"level_label {v!r} is not a valid Loki label name ([a-zA-Z_][a-zA-Z0-9_]*, no __ prefix)")
        return v

    @model_validator(mode="after")
    def _mode(self) -> Config:
        if self.mode == "otlp" and self.endpoint.endswith("/loki/api/v1/push"):
            raise ValueError("mode otlp needs Loki's OTLP base URL (http://host:3100/otlp), not the push API path")
        if self.mode == "push" and self.endpoint.endswith(("/otlp", "/otlp/v1/logs")):
            raise ValueError("this is Loki's OTLP endpoint: set mode: otlp, or use http://host:3100/loki/api/v1/push")
        return self


# --- push request model ---------------------------------------------------------------------------


class PushBatch:
    """Streams of encoded entries waiting in the queue; splittable in halves when Loki answers 413."""

    __slots__ = ("streams", "n", "size")

    def __init__(self, streams: list[tuple[str, dict[str, str], list[tuple[int, bytes, Any]]]]) -> None:
        # (label selector, label dict, [(ts_ns, encoded EntryAdapter, json value row)])
        self.streams = streams
        self.n = sum(len(e) for _, _, e in streams)
        self.size = sum(len(b) for _, _, e in streams for _, b, _ in e)

    def byte_size(self) -> int:
        return self.size

    def item_count(self) -> int:
        return self.n

    def is_empty(self) -> bool:
        return self.n == 0

    def halves(self) -> tuple[PushBatch, PushBatch]:
        flat = [(sel, lab, e) for sel, lab, entries in self.streams for e in entries]
        mid = len(flat) // 2
        return _regroup(flat[:mid]), _regroup(flat[mid:])

    def protobuf(self) -> bytes:
        out = []
        for sel, _, entries in self.streams:
            body = ld(b"\x0a", sel.encode()) + b"".join(ld(b"\x12", e) for _, e, _ in entries)
            out.append(ld(b"\x0a", body))
        return b"".join(out)

    def json(self) -> bytes:
        return json.dumps(
            {"streams": [{"stream": lab, "values": [row for _, _, row in entries]} for _, lab, entries in self.streams]},
            separators=(",", ":"), ensure_ascii=False).encode()


def _regroup(flat: list[tuple[str, dict[str, str], tuple[int, bytes, Any]]]) -> PushBatch:
    streams: dict[str, tuple[str, dict[str, str], list[tuple[int, bytes, Any]]]] = {}
    for sel, lab, e in flat:
        s = streams.get(sel)
        if s is None:
            s = streams[sel] = (sel, lab, [])
        s[2].append(e)
    return PushBatch(list(streams.values()))


class PushBatchCodec:
    """PushBatch <-> bytes for a persistent sending queue (sending_queue.storage): JSON, entries base64."""

    @staticmethod
    def encode(item: Any) -> bytes:
        b: PushBatch = item
        return json.dumps([[sel, lab, [[ts, base64.b64encode(e).decode(), row] for ts, e, row in entries]]
                           for sel, lab, entries in b.streams], separators=(",", ":")).encode()

    @staticmethod
    def decode(raw: bytes, count: int) -> PushBatch:
        return PushBatch([(sel, lab, [(ts, base64.b64decode(e), row) for ts, e, row in entries])
                          for sel, lab, entries in json.loads(raw)])


def selector(labels: dict[str, str]) -> str:
    """{a="x", b="y"} with Prometheus string escaping."""
    return "{" + ", ".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels.items())) + "}"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _str(av: Any) -> str:
    k = av.WhichOneof("value")
    if k == "string_value":
        return str(av.string_value)
    if k is None:
        return ""
    if k == "bool_value":
        return "true" if av.bool_value else "false"
    if k in ("int_value", "double_value"):
        return str(getattr(av, k))
    if k == "bytes_value":
        return bytes(av.bytes_value).hex()
    return json.dumps(value_of(av), separators=(",", ":"), ensure_ascii=False, default=str)


# Loki's validation messages (pkg/validation) -> its reason codes, to count 400s by cause.
_REASONS = [
    (re.compile(r"at least one label pair is required"), "missing_labels"),
    (re.compile(r"error parsing labels", re.I), "invalid_labels"),
    (re.compile(r"label names; limit"), "max_label_names_per_series"),
    (re.compile(r"label name too long"), "label_name_too_long"),
    (re.compile(r"label value too long"), "label_value_too_long"),
    (re.compile(r"duplicate label name"), "duplicate_label_names"),
    (re.compile(r"max entry size .* exceeded"), "line_too_long"),
    (re.compile(r"timestamp too old"), "greater_than_max_sample_age"),
    (re.compile(r"timestamp too new"), "too_far_in_future"),
    (re.compile(r"too far behind"), "too_far_behind"),
    (re.compile(r"out of order"), "out_of_order"),
    (re.compile(r"structured metadata", re.I), "structured_metadata"),
]


def loki_reason(body: str) -> str:
    for rx, reason in _REASONS:
        if rx.search(body):
            return reason
    return "bad_request"


class PushSender(Sender[PushBatch]):
    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        if cfg.encoding == "protobuf":
            headers["Content-Type"] = "application/x-protobuf"
        else:
            headers["Content-Type"] = "application/json"
            headers["Content-Encoding"] = "gzip"
        if cfg.tenant_id:
            headers["X-Scope-OrgID"] = cfg.tenant_id
        auth = cfg.auth.header()
        if auth:
            headers["Authorization"] = auth
        self.http = HTTPPoster(cfg.endpoint, headers, cfg.tls, cfg.timeout, auth=cfg.auth.dynamic(ctx))
        self.rejected = ctx.telemetry.counter("loki_exporter_rejected_entries",
                                              "Entries Loki rejected with 400, by Loki's reason.", ("reason",))
        self.splits = ctx.telemetry.counter("loki_exporter_splits", "Requests split in two after a 413 answer.")

    async def start(self) -> None:
        await self.http.start()

    def body(self, b: PushBatch) -> bytes:
        if self.cfg.encoding == "protobuf":
            return bytes(cramjam.snappy.compress_raw(b.protobuf()))
        return gzip.compress(b.json(), compresslevel=1)

    async def send(self, batch: Any) -> None:
        b: PushBatch = batch
        status, body, headers = await self.http.post(self.body(b))
        if 200 <= status < 300:
            return
        text = short(body)
        if status == 413:
            if b.n <= 1:
                raise ExportError(f"Loki answered 413 for a single entry: {text}", retryable=False, reason="entry_too_large")
            self.splits.inc()
            first, second = b.halves()
            await self.send(first)
            # Delivered: count it now and keep only the rest in the queued batch, so that a retry of the
            # rest never sends the first half twice and sent/dropped counts stay exact.
            self.ctx.telemetry.sent(Signal.LOGS, first.n)
            b.streams, b.n, b.size = second.streams, second.n, second.size
            await self.send(b)
            return
        if status == 429 or status >= 500:
            raise ExportError(f"Loki answered {status}: {text}", retryable=True, reason=f"http_{status}",
                              retry_after=retry_after(headers.get("Retry-After")))
        if status == 400:
            reason = loki_reason(text)
            self.rejected.labels(reason).inc(b.n)
            raise ExportError(f"Loki rejected {b.n} entries (400 {reason}): {text}", retryable=False,
                              reason=f"loki_{reason}")
        raise ExportError(f"Loki answered {status}: {text}", retryable=False, reason=f"http_{status}")

    async def shutdown(self) -> None:
        await self.http.shutdown()


class Converter:
    """OTLP logs -> PushBatch, applying the label list and Loki's limits. Counts every cut."""

    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.lim = cfg.limits
        self.want = {k: i for i, k in enumerate(cfg.labels)}
        self.json = cfg.encoding == "json"
        self.limited = ctx.telemetry.counter(
            "loki_exporter_limited", "Labels, lines and metadata cut or moved to fit Loki's limits.", ("what",))
        self.cuts: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], bytes] = {}

    def _cut(self, what: str, n: int = 1) -> None:
        self.cuts[what] = self.cuts.get(what, 0) + n
        self.limited.labels(what).inc(n)

    def _resource(self, res: Any) -> tuple[dict[str, str], list[tuple[str, str]]]:
        lim = self.lim
        picked: list[tuple[int, str, str]] = []
        meta: list[tuple[str, str]] = []
        for x in res.attributes:
            v = _str(x.value)
            pos = self.want.get(x.key)
            if pos is None or v == "":
                meta.append((x.key, v))
            else:
                picked.append((pos, x.key, v))
        picked.sort()
        labels: dict[str, str] = {}
        for _, key, v in picked:
            name = label_name(key)
            if len(name) > lim.max_label_name_length:
                self._cut("label_name_too_long")
                meta.append((key, v))
                continue
            if name in labels:
                self._cut("duplicate_label_name")
                meta.append((key, v))
                continue
            if len(labels) >= lim.max_label_names_per_series - (1 if self.cfg.level_label else 0):
                self._cut("label_moved_to_metadata")
                meta.append((key, v))
                continue
            if len(v) > lim.max_label_value_length:
                self._cut("label_value_truncated")
                v = v[: lim.max_label_value_length]
            labels[name] = v
        return labels, meta

    def _metadata(self, rec: Any, use_json: bool,
                  rmeta: tuple[list[tuple[str, str]], bytes, int, int]) -> tuple[bytes, list[tuple[str, str]]]:
        """A record's structured metadata, encoded (repeated pairs encoded once and cached), and as pairs
        for the JSON body; cut to Loki's count and size limits, counting what was cut."""
        rmeta_pairs, rmeta_bytes, n_rmeta, rmeta_size = rmeta
        lim = self.lim
        pairs: list[tuple[str, str]] | None = None
        if use_json:
            pairs = _record_pairs(rec)
        if len(rec.attributes) + 2 + n_rmeta <= lim.max_structured_metadata_entries_count:
            cache = self._pairs
            parts = [rmeta_bytes]
            size = rmeta_size
            for x in rec.attributes:
                av = x.value
                sv = av.string_value if av.WhichOneof("value") == "string_value" else _str(av)
                ck = (x.key, sv)
                size += len(ck[0]) + len(sv)
                b = cache.get(ck)
                if b is None:
                    if len(cache) > 50_000:
                        cache.clear()
                    b = cache[ck] = ld(b"\x1a", label_pair(label_name(x.key), sv))
                parts.append(b)
            if rec.trace_id:
                parts.append(TRACE_PRE + rec.trace_id.hex().encode() if len(rec.trace_id) == 16
                             else ld(b"\x1a", label_pair("trace_id", rec.trace_id.hex())))
            if rec.span_id:
                parts.append(SPAN_PRE + rec.span_id.hex().encode() if len(rec.span_id) == 8
                             else ld(b"\x1a", label_pair("span_id", rec.span_id.hex())))
            max_size = lim.max_structured_metadata_size
            if not max_size or size + 80 <= max_size:
                return b"".join(parts), (rmeta_pairs + pairs if pairs is not None else [])
        # over Loki's count or size limit: cut, and count what was cut
        pairs = self._fit_metadata(pairs if pairs is not None else _record_pairs(rec), rmeta_pairs)
        return b"".join(ld(b"\x1a", label_pair(k, v)) for k, v in pairs), pairs

    def convert(self, batch: Logs) -> PushBatch:
        lim = self.lim
        level_label = self.cfg.level_label
        max_line = lim.max_line_size
        now = time.time_ns()
        streams: dict[tuple[int, str], tuple[str, dict[str, str], list[tuple[int, bytes, Any]]]] = {}
        use_json = self.json
        secs: dict[int, bytes] = {}
        rids: dict[tuple[tuple[str, str], ...], int] = {}
        for rl in batch.peek().resource_logs:
            labels, rmeta = self._resource(rl.resource)
            # resources with the same labels share streams (one sorted entry list per stream)
            ri = rids.setdefault(tuple(sorted(labels.items())), len(rids))
            rmeta_pairs = [(label_name(k), v) for k, v in rmeta]
            rmeta_bytes = b"".join(ld(b"\x1a", label_pair(k, v)) for k, v in rmeta_pairs)
            rm = (rmeta_pairs, rmeta_bytes, len(rmeta_pairs), sum(len(k) + len(v) for k, v in rmeta_pairs))
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    ts = rec.time_unix_nano or rec.observed_time_unix_nano or now
                    body = rec.body
                    line = body.string_value if body.WhichOneof("value") == "string_value" else _str(body)
                    if max_line and len(line) > max_line // 4 and len(lb := line.encode()) > max_line:
                        if not lim.max_line_size_truncate:
                            self._cut("line_dropped")
                            continue
                        self._cut("line_truncated")
                        line = lb[:max_line].decode("utf-8", "ignore")
                    sev = rec.severity_number
                    level = SEVERITY[(sev - 1) // 4 + 1] if 0 < sev <= 24 else rec.severity_text.lower()
                    key = (ri, level)
                    st = streams.get(key)
                    if st is None:
                        lab = dict(labels)
                        if level_label and level:
                            lab[level_label] = level[: lim.max_label_value_length]
                        if not lab:  # Loki rejects a stream without labels (missing_labels)
                            lab = {"service_name": "unknown_service"}
                        st = streams[key] = (selector(lab), lab, [])
                    smb, allpairs = self._metadata(rec, use_json, rm)
                    sec, nanos = divmod(ts, 1_000_000_000)
                    secb = secs.get(sec)
                    if secb is None:
                        secb = secs[sec] = b"\x08" + varint(sec) if sec else b""
                    tsb = secb + (b"\x10" + varint(nanos) if nanos else b"")
                    lineb = line.encode()
                    n = len(lineb)
                    enc = (b"\x0a" + _SMALL[len(tsb)] + tsb + b"\x12" + (_SMALL[n] if n < 128 else varint(n))
                           + lineb + smb)
                    row: Any = None
                    if use_json:
                        row = [str(ts), line, dict(allpairs)] if allpairs else [str(ts), line]
                    st[2].append((ts, enc, row))
        out = list(streams.values())
        for _, _, entries in out:
            entries.sort(key=lambda e: e[0])
        return PushBatch(out)

    def _fit_metadata(self, pairs: list[tuple[str, str]], rmeta: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Record attributes first, then resource ones, up to the count and size limits."""
        lim = self.lim
        out: list[tuple[str, str]] = []
        size = 0
        cut = 0
        for k, v in [*pairs, *rmeta]:
            if len(out) >= lim.max_structured_metadata_entries_count or (
                    lim.max_structured_metadata_size and size + len(k) + len(v) > lim.max_structured_metadata_size):
                cut += 1
                continue
            out.append((k, v))
            size += len(k) + len(v)
        if cut:
            self._cut("structured_metadata_dropped", cut)
        return out


class LokiExporter(Exporter):
    mutates = False

    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.conv = Converter(cfg, ctx)
        self.queue = QueuedExporter(Signal.LOGS, ctx, PushSender(cfg, ctx), queue=cfg.sending_queue,
                                    retry=cfg.retry_on_failure, timeout=cfg.timeout, codec=PushBatchCodec())
        self._last_log = 0.0

    async def start(self) -> None:
        await self.queue.start()

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, Logs)
        n_in = batch.item_count()
        before = dict(self.conv.cuts)
        pb = self.conv.convert(batch)
        if pb.n < n_in:
            self.ctx.telemetry.dropped(Signal.LOGS, n_in - pb.n, "line_too_long")
        if self.conv.cuts != before:
            now = time.monotonic()
            if now - self._last_log > 10:
                self._last_log = now
                diff = {k: v - before.get(k, 0) for k, v in self.conv.cuts.items() if v != before.get(k, 0)}
                self.ctx.logger.warning("%s: fitted to Loki's limits: %s (counted in gotel_loki_exporter_limited_total)",
                                        self.ctx.id, ", ".join(f"{k}={v}" for k, v in sorted(diff.items())))
        await self.queue.enqueue(pb)

    async def shutdown(self, deadline: float = 10.0) -> None:
        await self.queue.shutdown(deadline)  # the service's remaining shutdown_timeout


def _otlp_exporter(cfg: Config, ctx: Context) -> Exporter:
    """mode: otlp — Loki >= 3 takes OTLP/HTTP at <base>/v1/logs; the otlp_http exporter does the work."""
    from gotel.exporters import otlp_http

    fields = set(otlp_http.Config.model_fields)
    raw: dict[str, Any] = {
        "endpoint": cfg.endpoint,
        "headers": {k: v.get_secret_value() for k, v in cfg.headers.items()},
        "tls": cfg.tls.model_dump(),
        "timeout": cfg.timeout,
        "sending_queue": cfg.sending_queue.model_dump(),
        "retry_on_failure": cfg.retry_on_failure.model_dump(),
        "auth": {"authenticator": cfg.auth.authenticator} if cfg.auth.authenticator else None,
    }
    if cfg.tenant_id:
        raw["headers"]["X-Scope-OrgID"] = cfg.tenant_id
    auth = cfg.auth.header()
    if auth:
        raw["headers"]["Authorization"] = auth
    return otlp_http.factory.create(Signal.LOGS, otlp_http.Config(**{k: v for k, v in raw.items() if k in fields}), ctx)


def create(signal: Signal, cfg: Config, ctx: Context) -> Exporter:
    if cfg.mode == "otlp":
        return _otlp_exporter(cfg, ctx)
    return LokiExporter(cfg, ctx)


def loki_labels(labels: Iterable[str]) -> list[str]:
    """The Loki label names a list of resource attributes turns into (for docs and `gotel components`)."""
    return [label_name(x) for x in labels]


factory = ExporterFactory(
    type="loki",
    config=Config,
    signals=frozenset({Signal.LOGS}),
    description="Grafana Loki: push API (protobuf+snappy or JSON) with labels from resource attributes, or native OTLP",
    create=create,
)


def _record_pairs(rec: Any) -> list[tuple[str, str]]:
    """A record's attributes and trace context as (label name, value) pairs."""
    pairs = [(label_name(x.key), _str(x.value)) for x in rec.attributes]
    if rec.trace_id:
        pairs.append(("trace_id", rec.trace_id.hex()))
    if rec.span_id:
        pairs.append(("span_id", rec.span_id.hex()))
    return pairs
