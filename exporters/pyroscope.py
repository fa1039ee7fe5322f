"""``pyroscope`` exporter: OTLP profiles -> pprof -> Grafana Pyroscope.

Two protocols, chosen by ``protocol``:
* ``push`` (default): Connect unary RPC ``POST /push.v1.PusherService/Push`` with a binary
  protobuf ``PushRequest`` (gotel/proto/pyroscope_push.proto): one series per pprof, labels
  ``__name__`` (profile family), ``service_name`` and the configured/resource labels.
* ``ingest``: the legacy ``POST /ingest?name=<service>{labels}&from=&until=&spyName=&format=pprof``
  with the pprof as the multipart field ``profile``.

Profiles that are already deltas (gotel's client-side deltas, CPU windows, godeltaprof) carry
``__delta__="false"`` so the server does not subtract a second time.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
from pydantic import Field, SecretStr, model_validator

from gotel.component.contract import Context, ExporterFactory
from gotel.exporterhelper.clientconfig import BasicAuth, ClientConfig, auth_headers
from gotel.exporterhelper.http import HTTPPoster
from gotel.exporterhelper.http import retry_after as parse_retry_after
from gotel.exporterhelper.queue import ExportError, QueuedExporter, Sender
from gotel.formats import pprof
from gotel.formats.profconv import DELTA_ATTR, PROFILE_TYPE_ATTR, PprofGroup, otlp_to_pprof
from gotel.pdata.batch import Batch, Signal
from gotel.proto import pyroscope_push_pb2 as push

PUSH_PATH = "/push.v1.PusherService/Push"
_LABEL_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# gotel.pprof.type -> Pyroscope's __name__ (the profile family)
FAMILY = {
    "cpu": "process_cpu",
    "heap": "memory",
    "allocs": "memory",
    "mutex": "mutex",
    "block": "block",
    "goroutine": "goroutine",
    "goroutineleak": "goroutine_leak",
}
DEFAULT_RESOURCE_LABELS = [
    "service.namespace", "service.version", "service.instance.id", "deployment.environment.name",
    "host.name", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "k8s.node.name",
    "k8s.deployment.name", "container.id", "process.pid",
]


class Config(ClientConfig):
    endpoint: str = Field(description="base URL of the Pyroscope server, e.g. http://127.0.0.1:4040")
    protocol: Literal["push", "ingest"] = "push"
    tenant_id: str | None = Field(None, description="sent as X-Scope-OrgID")
    basic_auth: BasicAuth | None = None
    bearer_token: SecretStr | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="static labels added to every series")
    resource_labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RESOURCE_LABELS),
        description="resource attributes turned into labels (dots become underscores)")
    service_name_default: str = Field("unknown_service", description="service_name when the resource has no service.name")
    spy_name: str = Field("gotel", description="spyName of /ingest uploads")
    compression: Literal["gzip", "none", ""] = Field("gzip", description="gzip the pprof bytes")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must start with http:// or https://")
        if self.basic_auth and self.bearer_token:
            raise ValueError("set basic_auth or bearer_token, not both")
        for k in self.labels:
            if not _LABEL_OK.match(k):
                raise ValueError(f"label name {k!r} is not valid in Pyroscope ([a-zA-Z_][a-zA-Z0-9_]*)")
        return self


def label_name(key: str) -> str:
    n = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return n if not n[:1].isdigit() else "_" + n


def family_of(g: PprofGroup) -> str:
    t = g.attributes.get(PROFILE_TYPE_ATTR)
    if isinstance(t, str) and t:
        return FAMILY.get(t, label_name(t))
    types = set(g.sample_types)
    if "cpu" in types or "samples" in types:
        return "process_cpu"
    if types & {"alloc_space", "inuse_space", "alloc_objects", "inuse_objects"}:
        return "memory"
    if "goroutine" in types or "goroutines" in types:
        return "goroutine"
    if "contentions" in types:
        return "mutex"
    return "profile"


class PyroscopeSender(Sender[Batch]):
    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.base = cfg.endpoint.rstrip("/")

        headers = {"User-Agent": "gotel-pyroscope-exporter"}
        headers.update(cfg.header_values())
        if cfg.tenant_id:
            headers["X-Scope-OrgID"] = cfg.tenant_id
        if cfg.basic_auth:
            tok = f"{cfg.basic_auth.username}:{cfg.basic_auth.password.get_secret_value()}"
            headers["Authorization"] = "Basic " + base64.b64encode(tok.encode()).decode()
        elif cfg.bearer_token:
            headers["Authorization"] = "Bearer " + cfg.bearer_token.get_secret_value()
        self.http = HTTPPoster(self.base + PUSH_PATH, headers, cfg.tls, cfg.timeout,
                               auth=(lambda: auth_headers(ctx, cfg.auth)) if cfg.auth else None)

    async def start(self) -> None:
        await self.http.start()

    async def shutdown(self) -> None:
        await self.http.shutdown()

    def _malformed(self, n: int, why: str) -> None:
        """A profile that refers outside its dictionary is left out, counted and named; the rest go on."""
        self.ctx.telemetry.dropped(Signal.PROFILES, n, "malformed")
        self.ctx.logger.warning("%s: dropped %d malformed profile(s): %s", self.ctx.id, n, why)

    def labels(self, g: PprofGroup) -> dict[str, str]:
        res = g.resource
        out: dict[str, str] = {}
        for k in self.cfg.resource_labels:
            v = res.get(k)
            if v is not None and v != "":
                out[label_name(k)] = str(v)
        out.update(self.cfg.labels)
        out["service_name"] = str(res.get("service.name") or self.cfg.service_name_default)
        out["__name__"] = family_of(g)
        if g.attributes.get(DELTA_ATTR) is True:
            out["__delta__"] = "false"
        return out

    def _payload(self, g: PprofGroup) -> bytes:
        return pprof.encode(g.profile, compress=self.cfg.compression == "gzip")

    async def send(self, batch: Batch) -> None:
        groups = [g for g in otlp_to_pprof(batch.peek(), on_drop=self._malformed) if g.profile.sample]
        if not groups:
            return
        if self.cfg.protocol == "push":
            await self._push(groups)
        else:
            for g in groups:
                await self._ingest(g)

    async def _push(self, groups: list[PprofGroup]) -> None:
        req = push.PushRequest()
        for g in groups:
            s = req.series.add()
            for k, v in sorted(self.labels(g).items()):
                s.labels.add(name=k, value=v)
            s.samples.add(raw_profile=self._payload(g), ID=str(uuid.uuid4()))
        headers = {"Content-Type": "application/proto", "Connect-Protocol-Version": "1",
                   "Connect-Timeout-Ms": str(int(self.cfg.timeout * 1000))}
        await self._post(self.base + PUSH_PATH, req.SerializeToString(), headers, None)

    async def _ingest(self, g: PprofGroup) -> None:
        labels = self.labels(g)
        svc = labels.pop("service_name")
        # /ingest names the series from the pprof's sample types; reserved labels are push-only
        labels.pop("__name__", None)
        labels.pop("__delta__", None)
        name = svc + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
        p = g.profile
        start = p.time_nanos or time.time_ns()
        until = start + max(p.duration_nanos, 1_000_000_000)
        params = {"name": name, "from": str(start // 1_000_000_000), "until": str(until // 1_000_000_000),
                  "spyName": self.cfg.spy_name, "format": "pprof"}
        form = aiohttp.FormData()
        form.add_field("profile", self._payload(g), filename="profile.pprof", content_type="application/octet-stream")
        await self._post(self.base + "/ingest", form, {}, params)

    async def _post(self, url: str, data: Any, headers: Mapping[str, str], params: Mapping[str, str] | None) -> None:
        status, body, rheaders = await self.http.post(data, headers, url=url, params=params)
        if not 200 <= status < 300:
            raise _classify(status, body, rheaders.get("Retry-After"))


def _classify(status: int, body: bytes, retry_after: str | None) -> ExportError:
    msg = body[:300].decode(errors="replace")
    code = ""
    try:
        j = json.loads(body)
        if isinstance(j, dict):
            code = str(j.get("code", ""))
            msg = str(j.get("message", msg))
    except ValueError:
        pass
    ra = parse_retry_after(retry_after)
    detail = f"pyroscope answered {status}{' ' + code if code else ''}: {msg.strip()[:200]}"
    if status == 429 or code == "resource_exhausted":
        return ExportError(detail, retryable=True, reason="throttled", retry_after=ra)
    if status in (408, 502, 503, 504) or status >= 500 or code in ("unavailable", "deadline_exceeded", "aborted"):
        return ExportError(detail, retryable=True, reason=f"http_{status}", retry_after=ra)
    if status in (401, 403):
        return ExportError(detail, retryable=False, reason="unauthorized")
    if status == 413:
        return ExportError(detail, retryable=False, reason="too_large")
    return ExportError(detail, retryable=False, reason=f"http_{status}")


def _create(signal: Signal, cfg: Config, ctx: Context) -> QueuedExporter:
    return QueuedExporter(signal, ctx, PyroscopeSender(cfg, ctx), cfg.sending_queue, cfg.retry_on_failure,
                          timeout=cfg.timeout)


factory = ExporterFactory(
    type="pyroscope",
    config=Config,
    signals=frozenset({Signal.PROFILES}),
    description="Sends profiles to Grafana Pyroscope (Connect push API or legacy /ingest)",
    create=_create,
)
