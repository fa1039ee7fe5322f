"""A Jaeger test server, kept only for faults the real Jaeger (tests/helpers/jaeger_real.py) cannot be made
to show, such as a query service that answers slowly (`delay`). It takes OTLP (gRPC from the official
stubs, and OTLP/HTTP protobuf on /v1/traces) and answers api_v3's HTTP query endpoints from what it
received, with the parameters and shapes of Jaeger v2's HTTP gateway (cmd/query/app/apiv3/http_gateway.go):

GET /api/v3/services -> {"services": [...]}; GET /api/v3/operations?service=&span_kind= -> {"operations":
[{name, spanKind}]}; GET /api/v3/traces?query.service_name&query.operation_name&query.start_time_min/max
(RFC 3339, both required)&query.duration_min/max (Go durations)&query.num_traces -> {"result":
{"resourceSpans": [...]}}, 404 "No traces found" when nothing matches, 400 for an unparsable parameter;
GET /api/v3/traces/{trace_id} -> the trace or 404.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gotel.pdata.batch import get_attr
from gotel.pdata.otlpjson import to_dict
from tests.helpers.otlp_sink import OTLPGrpcSink

_GO_DUR = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SCALE = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
KIND = {0: "", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def go_duration_ns(s: str) -> int:
    pos, total = 0, 0.0
    for m in _GO_DUR.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _SCALE[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"time: invalid duration {s!r}")
    return int(total)


def rfc3339_ns(s: str) -> int:
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        raise ValueError(f"cannot parse {s!r} as RFC 3339")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    frac = int((m.group(2) or "0").ljust(9, "0"))
    return int(base.timestamp()) * 10**9 + frac


def _err(status: int, msg: str) -> web.Response:
    return web.json_response({"error": {"httpCode": status, "httpStatus": web.HTTPException.__name__, "message": msg}},
                             status=status)


class JaegerServer:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # seconds before every query answer
        self.grpc = OTLPGrpcSink()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.http_requests: list[dict[str, str]] = []

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_grpc(self) -> str:
        return f"http://{self.grpc.address}"

    async def start(self) -> JaegerServer:
        self.grpc.start()
        app = web.Application()
        app.router.add_get("/api/v3/services", self._services)
        app.router.add_get("/api/v3/operations", self._operations)
        app.router.add_get("/api/v3/traces", self._find)
        app.router.add_get("/api/v3/traces/{trace_id}", self._get)
        app.router.add_post("/v1/traces", self._otlp_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.grpc.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- storage view ---------------------------------------------------------------------------

    def _requests(self) -> list[ExportTraceServiceRequest]:
        with self.grpc._lock:
            return list(self.grpc.received.traces)

    def _flat(self) -> list[tuple[Any, Any, Any]]:
        """(resource_spans, scope_spans, span) for every span received."""
        return [(rs, ss, s) for r in self._requests() for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def _result(self, trace_ids: set[bytes]) -> dict[str, Any]:
        out = ExportTraceServiceRequest()
        for rs, ss, s in self._flat():
            if s.trace_id not in trace_ids:
                continue
            nrs = out.resource_spans.add()
            nrs.resource.CopyFrom(rs.resource)
            nss = nrs.scope_spans.add()
            nss.scope.CopyFrom(ss.scope)
            nss.spans.append(s)
        return {"result": to_dict(out)}

    # --- OTLP/HTTP ingest -----------------------------------------------------------------------

    async def _otlp_http(self, req: web.Request) -> web.Response:
        if req.headers.get("Content-Type", "").split(";")[0] != "application/x-protobuf":
            return web.Response(status=415, text="only application/x-protobuf here")
        body = await req.read()
        msg = ExportTraceServiceRequest()
        try:
            msg.ParseFromString(body)
        except Exception:
            return web.Response(status=400, text="cannot parse ExportTraceServiceRequest")
        with self.grpc._lock:
            self.grpc.received.traces.append(msg)
            self.grpc.received.metadata.append({k.lower(): v for k, v in req.headers.items()})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    # --- api_v3 ---------------------------------------------------------------------------------

    async def _services(self, req: web.Request) -> web.Response:
        names = sorted({str(get_attr(rs.resource.attributes, "service.name") or "") for rs, _, _ in self._flat()})
        return web.json_response({"services": names})

    async def _operations(self, req: web.Request) -> web.Response:
        svc = req.query.get("service", "")
        kind = req.query.get("span_kind", "")
        ops = sorted({(s.name, KIND.get(s.kind, "")) for rs, _, s in self._flat()
                      if get_attr(rs.resource.attributes, "service.name") == svc})
        return web.json_response({"operations": [{"name": n, "spanKind": k} for n, k in ops if not kind or k == kind]})

    async def _find(self, req: web.Request) -> web.Response:
        self.http_requests.append(dict(req.query))
        if self.delay:
            await asyncio.sleep(self.delay)
        q = req.query
        svc = q.get("query.service_name", "")
        op = q.get("query.operation_name", "")
        if not q.get("query.start_time_min") or not q.get("query.start_time_max"):
            return _err(400, "query.start_time_min and query.start_time_max are required")
        try:
            tmin = rfc3339_ns(q["query.start_time_min"])
            tmax = rfc3339_ns(q["query.start_time_max"])
            dmin = go_duration_ns(v) if (v := q.get("query.duration_min")) else 0
            dmax = go_duration_ns(v) if (v := q.get("query.duration_max")) else 0
            depth = int(q.get("query.num_traces", "0"))
        except ValueError as e:
            return _err(400, str(e))
        if depth <= 0:
            return _err(500, "search depth must be greater than 0 and less than max traces")
        hits: list[bytes] = []
        for rs, _, s in self._flat():
            if svc and get_attr(rs.resource.attributes, "service.name") != svc:
                continue
            if op and s.name != op:
                continue
            d = s.end_time_unix_nano - s.start_time_unix_nano
            if (dmin and d < dmin) or (dmax and d > dmax):
                continue
            if s.start_time_unix_nano < tmin or s.start_time_unix_nano > tmax:
                continue
            if s.trace_id not in hits:
                hits.append(s.trace_id)
        hits = hits[:depth]
        if not hits:
            return _err(404, "No traces found")
        return web.json_response(self._result(set(hits)))

    async def _get(self, req: web.Request) -> web.Response:
        tid = req.match_info["trace_id"]
        try:
            raw = bytes.fromhex(tid)
            if len(raw) != 16:
                raise ValueError
        except ValueError:
            return _err(400, f"malformed parameter trace_id: {tid}")
        if not any(s.trace_id == raw for _, _, s in self._flat()):
            return _err(404, "trace not found")
        return web.json_response(self._result({raw}))
