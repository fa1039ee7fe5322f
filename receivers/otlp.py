"""The ``otlp`` receiver: OTLP/gRPC and OTLP/HTTP (protobuf and JSON) for all four signals.

It is the pipeline's own entry point (it runs inside the pipeline process): gotel's receiver processes
send to it over a unix socket, and any OTLP source can send to it over TCP. Requests are parsed once
(malformed input is refused with INVALID_ARGUMENT / 400 and the parser's reason) and handed on as
batches that keep their wire bytes, so an unmodified batch is exported without re-serialisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import aiohttp
import grpc
import grpc.aio
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from google.protobuf.message import DecodeError
from pydantic import Field, model_validator

from gotel.component.contract import (
    ITEM_COUNT_HEADER,
    REQUEST_METADATA,
    ComponentConfig,
    Consumer,
    ConsumerError,
    Context,
    PermanentError,
    Receiver,
    ReceiverFactory,
    RefusedError,
)
from gotel.config.types import Duration
from gotel.exporterhelper.clientconfig import AuthConfig
from gotel.pdata.batch import Batch, Profiles, Signal, batch_type, invalid_ids
from gotel.pdata.otlp import (
    CONTENT_JSON,
    CONTENT_PROTOBUF,
    STATUS_DETAILS_KEY,
    WIRE,
    decode_request,
    message_to_json,
    prepare_unix_socket,
    rpc_status,
    secure_unix_socket,
    unix_path,
)
from gotel.receiverhelper.auth import ServerAuthenticator, server_authenticator
from gotel.receiverhelper.inflate import ENCODINGS, CorruptBody, TooLarge, decoder

REFUSED_RETRY_AFTER = 1.0  # seconds a refused sender is asked to wait (RetryInfo / Retry-After)

# Request metadata key for the connection's peer address (overwrites any client-sent value).
PEER_KEY = "gotel-peer"


class ServerTLS(ComponentConfig):
    cert_file: str
    key_file: str
    client_ca_file: str | None = Field(None, description="require client certificates signed by this CA (mTLS)")
    min_version: Literal["1.2", "1.3"] = "1.2"


class GRPCServer(ComponentConfig):
    endpoint: str = Field("127.0.0.1:4317", description="host:port or unix:///path/to.sock")
    max_recv_msg_size_mib: int = Field(4, gt=0, description="larger requests get RESOURCE_EXHAUSTED")
    max_concurrent_streams: int | None = Field(None, gt=0)
    tls: ServerTLS | None = None
    auth: AuthConfig | None = Field(
        None, description="{authenticator: ID}: a bearertokenauth or basicauth extension every request must satisfy "
        "(else UNAUTHENTICATED)")

    @model_validator(mode="after")
    def _tls(self) -> GRPCServer:
        if self.tls is not None and self.tls.min_version != "1.2":
            raise ValueError("tls::min_version cannot be set for gRPC (grpc-python offers no knob; it negotiates TLS 1.2+)")
        return self


class CORS(ComponentConfig):
    allowed_origins: list[str] = Field(default_factory=list, description="origins (wildcards allowed)")
    allowed_headers: list[str] = Field(default_factory=list)
    max_age: Duration = Field(0.0, ge=0, description="how long browsers may cache a preflight answer (whole seconds)")


class HTTPServer(ComponentConfig):
    endpoint: str = Field("127.0.0.1:4318", description="host:port or unix:///path/to.sock")
    max_request_body_size: int = Field(
        20 << 20, gt=0, description="bytes, both as sent and after decompression (checked while inflating); larger gets 413"
    )
    max_concurrent_requests: int = Field(
        8, gt=0, description="requests read at once; more get 503 with Retry-After (memory: this x max_request_body_size)"
    )
    read_timeout: Duration = Field(0.0, ge=0, description="whole request incl. body; 0 = none (the collector's default)")
    read_header_timeout: Duration = Field(60.0, ge=0, description="request line and headers; 0 = read_timeout")
    write_timeout: Duration = Field(30.0, ge=0, description="from the end of the headers until the response is written; 0 = none")
    idle_timeout: Duration = Field(60.0, ge=0, description="keep-alive wait for the next request; 0 = read_timeout")
    tls: ServerTLS | None = None
    cors: CORS | None = None
    auth: AuthConfig | None = Field(
        None, description="{authenticator: ID}: a bearertokenauth or basicauth extension every request must satisfy "
        "(else 401)")
    traces_url_path: str = "/v1/traces"
    metrics_url_path: str = "/v1/metrics"
    logs_url_path: str = "/v1/logs"
    profiles_url_path: str = "/v1development/profiles"


class Protocols(ComponentConfig):
    grpc: GRPCServer | None = None
    http: HTTPServer | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        # `grpc:` with no value in YAML enables the protocol with its defaults, as in the collector.
        if isinstance(data, dict):
            return {k: ({} if v is None and k in ("grpc", "http") else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _one(self) -> Protocols:
        if self.grpc is None and self.http is None:
            raise ValueError("must specify at least one protocol (grpc, http)")
        return self


class Config(ComponentConfig):
    protocols: Protocols = Field(default_factory=lambda: Protocols(grpc=GRPCServer()))


def split_host_port(endpoint: str) -> tuple[str | None, int]:
    """'127.0.0.1:4317' / '[::1]:4317' / ':4317' -> (host or None for all interfaces, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} must be host:port or unix:///path")
    host = host.strip("[]")
    return (host or None), int(port)


def _server_ssl(tls: ServerTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Guard:
    """Per-server timeouts for hostile or stuck HTTP clients, with Go's net/http semantics."""

    def __init__(self, h: HTTPServer, closed: Callable[[str], None]) -> None:
        self.header = h.read_header_timeout or h.read_timeout
        self.idle = h.idle_timeout or h.read_timeout
        self.read = h.read_timeout
        self.write = h.write_timeout
        self.closed = closed


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler plus a header deadline: from accept for the first request, from
    the first byte of each later one (aiohttp itself bounds only the idle wait, and counts a slow
    header as idle). A connection that misses it is closed, as Go's ReadHeaderTimeout does."""

    def __init__(self, manager: web.Server, *, guard: _Guard, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self._guard = guard
        self._hdr_handle: asyncio.TimerHandle | None = None
        self.request_started = 0.0  # loop time the current request's first byte arrived
        self._busy = False

    def _stop_keepalive(self) -> None:
        h = getattr(self, "_keepalive_handle", None)
        if h is not None:
            h.cancel()
            self._keepalive_handle = None

    def _start_header_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self.request_started = loop.time()
        if self._guard.header > 0:
            self._hdr_handle = loop.call_later(self._guard.header, self._header_timeout)

    def _header_timeout(self) -> None:
        self._hdr_handle = None
        if not self._busy and self.transport is not None:
            self._guard.closed("header_timeout")
            self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._stop_keepalive()
        self._start_header_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._hdr_handle is None:
            self._stop_keepalive()  # the idle wait is over: now the header deadline runs
            self._start_header_deadline()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a request's headers are complete
            self._busy = True
            if self._hdr_handle is not None:
                self._hdr_handle.cancel()
                self._hdr_handle = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._hdr_handle is not None:
            self._hdr_handle.cancel()
            self._hdr_handle = None
        super().connection_lost(exc)

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        self._busy = True  # also for a pipelined request whose headers came in during the last one
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._busy = False


class _GuardedServer(web.Server):
    _guard: _Guard

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, guard=self._guard, loop=self._loop, **self._kwargs)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, guard: _Guard, **kw: Any) -> None:
        super().__init__(app, **kw)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # the app's own Server, making _GuardedHandler connections
        server._guard = self._guard  # type: ignore[attr-defined]  # aiohttp/asyncio objects without these attributes in their stubs
        return server


class Rejected(Exception):
    """A request the receiver answers with an error: gRPC code, HTTP status, message."""

    def __init__(self, code: grpc.StatusCode, http: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http = http
        self.message = message
        self.retry_after = retry_after


class OTLPReceiver(Receiver):
    def __init__(self, cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context, *, internal: bool = False) -> None:
        self.cfg = cfg
        self.sinks = dict(sinks)
        self.ctx = ctx
        self.log: logging.Logger = ctx.logger
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: list[str] = []
        self.grpc_port: int | None = None  # the bound TCP ports (useful with port 0)
        self.http_port: int | None = None
        self._last_log = 0.0
        self._malformed = ctx.telemetry.counter(
            "otlp_receiver_rejected_requests", "Requests the otlp receiver refused, by reason.", ("signal", "reason")
        )
        self._closed = ctx.telemetry.counter(
            "otlp_receiver_closed_connections",
            "HTTP connections the otlp receiver closed on a timeout (header, read or write).", ("reason",),
        )
        self._inflight = 0  # HTTP requests being read and handled (max_concurrent_requests)
        # The pipeline's internal hop (gotel.service.internal: a unix socket in a 0700 directory) carries
        # only what gotel's own receiver processes built; every other instance is an edge, checks ids
        # (~1 us a span) and parses every request (an edge's item-count header is never trusted).
        self._internal = internal
        self._check_ids = not internal
        self._guard: _Guard | None = None
        self._grpc_auth: ServerAuthenticator | None = None  # protocols::grpc::auth, resolved at start
        self._http_auth: ServerAuthenticator | None = None

    # --- the part both protocols share -----------------------------------------------------------

    def _log_rejected(self, signal: Signal, r: Rejected, peer: str) -> None:
        """One line a second at most: a sender stuck on bad data must not flood the log."""
        if r.code == grpc.StatusCode.UNAVAILABLE:
            return  # back-pressure is reported by whoever refused (memory_limiter) and counted here
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            self._last_log = now
            self.log.warning("%s: refused a %s request from %s: %s", self.ctx.id, signal, peer or "?", r.message)

    def _authenticate(self, auth: ServerAuthenticator | None, signal: Signal, headers: Mapping[str, str]) -> None:
        """Rejected (UNAUTHENTICATED / 401) unless the request's credentials satisfy the authenticator."""
        if auth is None:
            return
        why = auth.authenticate(headers)
        if why:
            self._malformed.labels(signal.value, "unauthenticated").inc()
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED, 401, f"unauthenticated: {why}")

    def _decode(self, signal: Signal, body: bytes, json_body: bool) -> Batch:
        try:
            batch: Batch = decode_request(signal, body, json_body)
        except Exception as e:
            self._malformed.labels(signal.value, "malformed").inc()
            what = "OTLP/JSON" if json_body else "protobuf"
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT, 400, f"malformed {what} {signal} request: {e}"
            ) from None
        bad = invalid_ids(batch) if self._check_ids else None
        if bad is not None:
            # Refused whole, as the collector's pdata does: never merged beside other senders' data.
            self._malformed.labels(signal.value, "invalid_id").inc()
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, 400, f"invalid {signal} request: {bad}")
        if isinstance(batch, Profiles):
            batch.resolve_string_refs()  # the collector sends resource attributes as string-table indices
        return batch

    def _counted(self, signal: Signal, body: bytes, md: Mapping[str, str], peer: str) -> Batch | None:
        """The internal hop's request as bytes with the item count its receiver process sent (None: parse it).

        A parse only to count costs ~0.7 us a span; the bytes are parsed later by whatever needs the
        messages (a processor), and an exporter passes them on untouched. Bytes that turn out malformed
        then are refused as malformed by _push. Profiles are always parsed (their string references)."""
        v = md.get(ITEM_COUNT_HEADER) if self._internal and peer.startswith("unix:") else None
        if v is None or signal is Signal.PROFILES or not (v.isascii() and v.isdigit()):
            return None
        n = int(v)
        if n > len(body):
            return None  # not a count of these bytes: parsed, and counted from the message
        return batch_type(signal)(raw=body, count=n)

    async def _push(self, signal: Signal, batch: Batch, metadata: Mapping[str, str]) -> None:
        n = batch.item_count()
        if n == 0 and batch.byte_size() == 0:
            return
        tel = self.ctx.telemetry
        token = REQUEST_METADATA.set(metadata)
        try:
            await self.sinks[signal].consume(batch)
        except RefusedError as e:
            tel.refused(signal, n)
            raise Rejected(grpc.StatusCode.UNAVAILABLE, 503, f"refused, retry later: {e}", REFUSED_RETRY_AFTER) from None
        except PermanentError as e:
            tel.refused(signal, n)
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, 400, f"rejected: {e}") from None
        except DecodeError as e:
            # a request passed on unparsed (_counted) that a processor could not parse
            tel.refused(signal, n)
            self._malformed.labels(signal.value, "malformed").inc()
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, 400, f"malformed protobuf {signal} request: {e}") from None
        except ConsumerError as e:
            tel.refused(signal, n)
            raise Rejected(grpc.StatusCode.UNAVAILABLE, 503, f"refused, retry later: {e}", REFUSED_RETRY_AFTER) from None
        except Exception as e:
            tel.refused(signal, n)
            self.log.exception("%s: pipeline failed on %d %s", self.ctx.id, n, signal)
            raise Rejected(grpc.StatusCode.INTERNAL, 500, f"internal error: {type(e).__name__}") from None
        finally:
            REQUEST_METADATA.reset(token)
        tel.accepted(signal, n)

    # --- gRPC -------------------------------------------------------------------------------------

    def _grpc_handler(self, signal: Signal) -> grpc.RpcMethodHandler:
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            # The connection's own address, never a client-sent value: k8s_attributes associates by it.
            md[PEER_KEY] = peer = context.peer() or ""
            try:
                self._authenticate(self._grpc_auth, signal, md)
                batch = self._counted(signal, request, md, peer)
                if batch is None:
                    batch = self._decode(signal, request, False)
                await self._push(signal, batch, md)
            except Rejected as r:
                self._log_rejected(signal, r, context.peer())
                st = rpc_status(r.code.value[0], r.message, r.retry_after)
                await context.abort(r.code, r.message, trailing_metadata=((STATUS_DETAILS_KEY, st.SerializeToString()),))
            return b""  # an empty Export*ServiceResponse: full success

        # No (de)serializers: the handler gets the request's bytes and returns the response's bytes.
        return grpc.unary_unary_rpc_method_handler(export)

    async def _start_grpc(self, g: GRPCServer) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", g.max_recv_msg_size_mib << 20),
            ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it
        ]
        if g.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", g.max_concurrent_streams))
        server = grpc.aio.server(options=options)
        handlers = [
            grpc.method_handlers_generic_handler(WIRE[s].service, {"Export": self._grpc_handler(s)}) for s in self.sinks
        ]
        server.add_generic_rpc_handlers(handlers)
        path = unix_path(g.endpoint)
        if path is not None:
            try:
                prepare_unix_socket(path)
            except OSError as e:
                raise OSError(f"{self.ctx.id}: cannot listen on {g.endpoint} (gRPC): {e}") from None
            address = f"unix:{path}"
        else:
            host, port = split_host_port(g.endpoint)
            address = f"{host or '[::]'}:{port}" if host is None or ":" not in host else f"[{host}]:{port}"
        try:
            if g.tls is not None:
                creds = grpc.ssl_server_credentials(
                    [(_read(g.tls.key_file), _read(g.tls.cert_file))],
                    root_certificates=_read(g.tls.client_ca_file) if g.tls.client_ca_file else None,
                    require_client_auth=bool(g.tls.client_ca_file),
                )
                bound = server.add_secure_port(address, creds)
            else:
                bound = server.add_insecure_port(address)
        except (RuntimeError, OSError) as e:
            raise OSError(f"{self.ctx.id}: cannot listen on {g.endpoint} (gRPC): {e}") from None
        if path is not None:
            secure_unix_socket(path)
            self._sockets.append(path)
        else:
            self.grpc_port = bound
        await server.start()
        self._grpc = server
        self.log.info("%s: OTLP/gRPC listening on %s", self.ctx.id, g.endpoint if path else f"{address} -> {bound}")

    # --- HTTP -------------------------------------------------------------------------------------

    def _http_error(self, r: Rejected, json_body: bool) -> web.Response:
        st = rpc_status(r.code.value[0], r.message, r.retry_after)
        headers = {}
        if r.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(r.retry_after)))
        if json_body:
            return web.Response(status=r.http, body=message_to_json(st), content_type=CONTENT_JSON, headers=headers)
        return web.Response(status=r.http, body=st.SerializeToString(), content_type=CONTENT_PROTOBUF, headers=headers)

    async def _read_body(self, request: web.Request, signal: Signal, enc: str, max_body: int) -> bytes:
        """The body, inflated while it arrives and never past max_body (compressed or not)."""
        too_large = Rejected(
            grpc.StatusCode.RESOURCE_EXHAUSTED, 413,
            f"request body larger than max_request_body_size ({max_body} bytes)"
            + (f" once inflated ({enc})" if enc not in ("", "identity") else ""),
        )
        if request.content_length is not None and request.content_length > max_body:
            self._malformed.labels(signal.value, "too_large").inc()
            raise too_large
        dec = decoder(enc, max_body)
        guard = self._guard
        deadline = None
        if guard is not None and guard.read > 0:
            started = getattr(request.protocol, "request_started", 0.0) or asyncio.get_running_loop().time()
            deadline = started + guard.read
        received = 0
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in request.content.iter_any():
                    received += len(chunk)
                    if received > max_body:
                        raise TooLarge
                    dec.feed(chunk)
            return dec.finish()
        except TooLarge:
            self._malformed.labels(signal.value, "too_large").inc()
            raise too_large from None
        except TimeoutError:
            self._malformed.labels(signal.value, "read_timeout").inc()
            if guard is not None:
                guard.closed("read_timeout")
            raise Rejected(
                grpc.StatusCode.DEADLINE_EXCEEDED, 408,
                f"request body not received within read_timeout ({guard.read if guard else 0:g}s)",
            ) from None
        except CorruptBody as e:
            self._malformed.labels(signal.value, "bad_body").inc()
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, 400, str(e)) from None
        except (RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError, ValueError) as e:
            self._malformed.labels(signal.value, "bad_body").inc()
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT, 400, f"unreadable body ({enc or 'identity'}): {str(e).strip()}"
            ) from None

    def _http_handler(self, signal: Signal, h: HTTPServer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        resp_proto = WIRE[signal].response().SerializeToString()
        max_body = h.max_request_body_size

        async def handle(request: web.Request) -> web.StreamResponse:
            ctype = request.content_type.lower()
            json_body = ctype == CONTENT_JSON
            try:
                if self._http_auth is not None:  # before the body is read: an unauthenticated client costs nothing
                    self._authenticate(self._http_auth, signal, {k.lower(): v for k, v in request.headers.items()})
                if not json_body and ctype not in (CONTENT_PROTOBUF, "application/protobuf"):
                    self._malformed.labels(signal.value, "unsupported_media_type").inc()
                    raise Rejected(
                        grpc.StatusCode.INVALID_ARGUMENT, 415,
                        f"unsupported Content-Type {ctype!r}: use {CONTENT_PROTOBUF} or {CONTENT_JSON}",
                    )
                enc = request.headers.get("Content-Encoding", "").strip().lower()
                if enc not in ENCODINGS:
                    self._malformed.labels(signal.value, "unsupported_encoding").inc()
                    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, 400, f"unsupported Content-Encoding {enc!r}")
                if self._inflight >= h.max_concurrent_requests:
                    self._malformed.labels(signal.value, "too_many_requests").inc()
                    raise Rejected(
                        grpc.StatusCode.UNAVAILABLE, 503,
                        f"more than max_concurrent_requests ({h.max_concurrent_requests}) at once, retry later",
                        REFUSED_RETRY_AFTER,
                    )
                # The slot is held until the pipeline took the batch: it bounds both the bodies held in
                # memory and the requests waiting on a back-pressuring pipeline.
                self._inflight += 1
                try:
                    body = await self._read_body(request, signal, enc, max_body)
                    md = {k.lower(): v for k, v in request.headers.items()}
                    md[PEER_KEY] = str(request.remote or "")
                    batch = self._decode(signal, body, json_body)
                    del body
                    await self._push(signal, batch, md)
                finally:
                    self._inflight -= 1
            except Rejected as r:
                self._log_rejected(signal, r, str(request.remote or ""))
                resp = self._http_error(r, json_body)
                if r.http in (401, 408, 413):
                    resp.force_close()  # the rest of the body is not worth reading
                return self._cors(request, resp)
            if json_body:
                return self._cors(request, web.Response(body=b"{}", content_type=CONTENT_JSON))
            return self._cors(request, web.Response(body=resp_proto, content_type=CONTENT_PROTOBUF))

        return handle

    @web.middleware
    async def _write_deadline(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """write_timeout: the response must be written within it from the end of the headers, or the
        connection is closed (Go's WriteTimeout). The response is written here, inside the deadline."""
        guard = self._guard
        if guard is None or guard.write <= 0:
            return await handler(request)

        def expire() -> None:
            guard.closed("write_timeout")
            if request.transport is not None:
                request.transport.close()

        timer = asyncio.get_running_loop().call_later(guard.write, expire)
        try:
            resp = await handler(request)
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        finally:
            timer.cancel()

    def _origin_allowed(self, origin: str | None) -> bool:
        h = self.cfg.protocols.http
        if not origin or h is None or h.cors is None:
            return False
        return any(fnmatch.fnmatchcase(origin, pat) for pat in h.cors.allowed_origins)

    def _cors(self, request: web.Request, resp: web.Response) -> web.Response:
        origin = request.headers.get("Origin")
        if self._origin_allowed(origin):
            resp.headers["Access-Control-Allow-Origin"] = origin or ""
            resp.headers["Vary"] = "Origin"
        return resp

    async def _preflight(self, request: web.Request) -> web.StreamResponse:
        h = self.cfg.protocols.http
        origin = request.headers.get("Origin")
        if h is None or h.cors is None or not self._origin_allowed(origin):
            return web.Response(status=403)
        allowed = ["Content-Type", "Content-Encoding", *h.cors.allowed_headers]
        headers = {
            "Access-Control-Allow-Origin": origin or "",
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": ", ".join(allowed),
            "Vary": "Origin",
        }
        if h.cors.max_age:
            headers["Access-Control-Max-Age"] = str(round(h.cors.max_age))
        return web.Response(status=204, headers=headers)

    async def _start_http(self, h: HTTPServer) -> None:
        guard = _Guard(h, lambda reason: self._closed.labels(reason).inc())
        self._guard = guard
        app = web.Application(client_max_size=h.max_request_body_size, middlewares=[self._write_deadline])
        for s in self.sinks:
            p = getattr(h, f"{s.value}_url_path")
            app.router.add_post(p, self._http_handler(s, h))
            if h.cors is not None:
                app.router.add_route("OPTIONS", p, self._preflight)
        # Bodies are inflated by _read_body (bounded), never by aiohttp's parser (unbounded queue).
        # keepalive_timeout is aiohttp's idle wait; 0 in the config means no limit, as in Go.
        runner = _GuardedRunner(app, guard, access_log=None, handle_signals=False, auto_decompress=False,
                                keepalive_timeout=guard.idle or 1e9)
        await runner.setup()
        sslctx = _server_ssl(h.tls) if h.tls is not None else None
        path = unix_path(h.endpoint)
        site: web.BaseSite
        try:
            if path is not None:
                prepare_unix_socket(path)
                site = web.UnixSite(runner, path, ssl_context=sslctx)
                await site.start()
                secure_unix_socket(path)
                self._sockets.append(path)
            else:
                host, port = split_host_port(h.endpoint)
                site = web.TCPSite(runner, host, port, ssl_context=sslctx, reuse_port=False)
                await site.start()
                server = site._server
                if server is not None and getattr(server, "sockets", None):
                    self.http_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # aiohttp/asyncio objects without these attributes in their stubs
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"{self.ctx.id}: cannot listen on {h.endpoint} (HTTP): {e}") from None
        self._runner = runner
        self.log.info("%s: OTLP/HTTP listening on %s", self.ctx.id, h.endpoint if path else f"{h.endpoint} -> {self.http_port}")

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        p = self.cfg.protocols
        if p.grpc is not None and p.grpc.auth is not None:
            self._grpc_auth = server_authenticator(self.ctx, p.grpc.auth.authenticator)
        if p.http is not None and p.http.auth is not None:
            self._http_auth = server_authenticator(self.ctx, p.http.auth.authenticator)
        try:
            if p.grpc is not None:
                await self._start_grpc(p.grpc)
            if p.http is not None:
                await self._start_http(p.http)
        except BaseException:
            await self.shutdown()
            raise

    async def shutdown(self, deadline: float = 10.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for path in self._sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._sockets = []


def create(cfg: Config, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    for s in sinks:
        batch_type(s)  # every signal is supported; fail loudly on anything else
    return OTLPReceiver(cfg, sinks, ctx)


factory = ReceiverFactory(
    type="otlp",
    config=Config,
    signals=frozenset(Signal),
    description="OTLP/gRPC and OTLP/HTTP (protobuf, JSON) for traces, metrics, logs, profiles; TCP or unix socket",
    aliases=("otlp_grpc",),
    create=create,
    in_process=True,
)
