"""A real OTLP/HTTP server (aiohttp) for tests, decoding what the OTLP spec allows and rejecting the rest.

It runs on its own thread and event loop, like a separate backend. Paths /v1/traces, /v1/metrics,
/v1/logs, /v1development/profiles; bodies application/x-protobuf or application/json (OTLP/JSON with
hex trace/span ids, decoded here independently of gotel's own code); Content-Encoding gzip. Like a
collector it answers 415 for other media types, 400 with a google.rpc.Status for malformed bodies, 413
above its body limit; it can be told to answer 429/503 with Retry-After, 400, or a partial success, and
to demand headers (401 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as ppb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb

from tests.helpers.otlp_sink import REJECTED_FIELD, Received

PATHS: dict[str, tuple[str, Any, Any]] = {
    "/v1/traces": ("traces", tpb.ExportTraceServiceRequest, tpb.ExportTraceServiceResponse),
    "/v1/metrics": ("metrics", mpb.ExportMetricsServiceRequest, mpb.ExportMetricsServiceResponse),
    "/v1/logs": ("logs", lpb.ExportLogsServiceRequest, lpb.ExportLogsServiceResponse),
    "/v1development/profiles": ("profiles", ppb.ExportProfilesServiceRequest, ppb.ExportProfilesServiceResponse),
}
ID_KEYS = {"traceId", "spanId", "parentSpanId", "profileId"}  # hex in OTLP/JSON, as in the collector


def _hex_ids_to_b64(node: Any) -> None:
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k in ID_KEYS and isinstance(v, str):
                node[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                _hex_ids_to_b64(v)
    elif isinstance(node, list):
        for x in node:
            _hex_ids_to_b64(x)


@dataclass
class Answer:
    status: int
    retry_after: str | None = None
    times: int | None = None
    message: str = "told to fail"


@dataclass
class RequestInfo:
    path: str
    headers: dict[str, str]
    content_type: str
    content_encoding: str
    wire_size: int
    body_size: int


class OTLPHttpSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        require_headers: dict[str, str] | None = None,
        max_body: int = 64 << 20,
    ) -> None:
        self.received = Received()
        self.requests: list[RequestInfo] = []
        self._lock = threading.Lock()
        self._answer: Answer | None = None
        self._partial: tuple[int, str] | None = None
        self.require_headers = {k.lower(): v for k, v in (require_headers or {}).items()}
        self.host, self.port, self.unix = host, port, unix
        self._ssl = ssl_context
        self._max_body = max_body
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        if self.unix:
            return f"unix://{self.unix}"
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def respond_with(self, status: int | None, *, retry_after: str | None = None, times: int | None = None) -> None:
        with self._lock:
            self._answer = None if status is None else Answer(status, retry_after, times)

    def partial(self, rejected: int | None, message: str = "") -> None:
        self._partial = None if rejected is None else (rejected, message)

    def _take_answer(self) -> Answer | None:
        with self._lock:
            a = self._answer
            if a is None:
                return None
            if a.times is not None:
                a.times -= 1
                if a.times <= 0:
                    self._answer = None
            return a

    @staticmethod
    def _status(status: int, message: str, json_body: bool, headers: dict[str, str] | None = None) -> web.Response:
        st = status_pb2.Status(message=message)
        if json_body:
            return web.json_response({"message": message}, status=status, headers=headers)
        return web.Response(status=status, body=st.SerializeToString(), content_type="application/x-protobuf", headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        kind, req_type, resp_type = PATHS[request.path]
        ctype = request.content_type
        json_body = ctype == "application/json"
        now = time.monotonic()
        hdrs = {k.lower(): v for k, v in request.headers.items()}
        if ctype not in ("application/x-protobuf", "application/json"):
            return self._status(415, f"unsupported content type {ctype}", False)
        for k, v in self.require_headers.items():
            if hdrs.get(k) != v:
                with self._lock:
                    self.received.attempts.append((now, kind, "401"))
                return self._status(401, f"missing or wrong {k}", json_body)
        wire_size = int(request.headers.get("Content-Length", "0") or 0)
        try:
            body = await request.read()  # aiohttp inflates Content-Encoding: gzip
        except web.HTTPRequestEntityTooLarge:
            return self._status(413, "body too large", json_body)
        ans = self._take_answer()
        if ans is not None:
            with self._lock:
                self.received.attempts.append((now, kind, str(ans.status)))
            headers = {"Retry-After": ans.retry_after} if ans.retry_after is not None else None
            return self._status(ans.status, ans.message, json_body, headers)
        msg = req_type()
        try:
            if json_body:
                d = json.loads(body)
                _hex_ids_to_b64(d)
                json_format.ParseDict(d, msg)
            else:
                msg.ParseFromString(body)
        except Exception as e:
            return self._status(400, f"cannot decode: {e}", json_body)
        with self._lock:
            getattr(self.received, kind).append(msg)
            self.received.metadata.append(hdrs)
            self.received.attempts.append((now, kind, "200"))
            self.requests.append(
                RequestInfo(request.path, hdrs, ctype, hdrs.get("content-encoding", ""), wire_size, len(body))
            )
        resp = resp_type()
        if self._partial is not None:
            setattr(resp.partial_success, REJECTED_FIELD[kind], self._partial[0])
            resp.partial_success.error_message = self._partial[1]
        if json_body:
            return web.json_response(json_format.MessageToDict(resp))
        return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")

    def start(self) -> OTLPHttpSink:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:  # surfaced to the caller of start()
                errors.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="otlp-http-sink")
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=self._max_body)
        for p in PATHS:
            app.router.add_post(p, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site: web.BaseSite
        if self.unix:
            site = web.UnixSite(self._runner, self.unix, ssl_context=self._ssl)
            await site.start()
        else:
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
            await site.start()
            srv: Any = site._server
            self.port = srv.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    async def await_for(self, pred: Callable[[Received], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if pred(self.received):
                    return True
            await asyncio.sleep(0.05)
        with self._lock:
            return pred(self.received)

    def __enter__(self) -> OTLPHttpSink:
        return self.start()

    def __exit__(self, *a: object) -> None:
        self.stop()

