"""A Loki push-API test server implementing the documented protocol (no Loki build exists here).

POST /loki/api/v1/push: protobuf (logproto.PushRequest, block snappy; Content-Type
application/x-protobuf or none) or JSON (optionally gzip/deflate). Validation follows Loki's rules and
default limits, with Loki's messages: label names [a-zA-Z_][a-zA-Z0-9_]* without the __ prefix, at
least one label, no duplicates, at most 15 names, name <= 1024 and value <= 2048 characters, line <=
256KB, timestamps not older than 7 days nor more than 10 minutes ahead, entries not more than 1 h
behind the stream's newest. Valid streams are kept even when others in the request are rejected (400),
as Loki does. Answers 204; told to, answers 400/413/429/5xx; a body larger than ``max_body`` gets 413.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import cramjam
from aiohttp import web

from gotel.proto import logproto_pb2

LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PAIR = re.compile(r'\s*([^=\s,{}]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_selector(s: str) -> list[tuple[str, str]]:
    """'{a="x", b="y"}' -> [(a, x), (b, y)]; raises ValueError like Loki's parser."""
    s = s.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueError("expected {...}")
    inner = s[1:-1].strip()
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(inner):
        m = _PAIR.match(inner, pos)
        if not m:
            raise ValueError(f"syntax error at {inner[pos:pos + 20]!r}")
        val = json.loads('"' + m.group(2) + '"')
        out.append((m.group(1), val))
        pos = m.end()
    return out


@dataclass
class Entry:
    ts: int
    line: str
    metadata: dict[str, str]


@dataclass
class Stream:
    labels: dict[str, str]
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Forced:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class LokiServer:
    def __init__(self, max_body: int = 100 << 20, ssl_context: Any = None) -> None:
        self.ssl_context = ssl_context
        self.streams: dict[tuple[tuple[str, str], ...], Stream] = {}
        self.requests: list[dict[str, Any]] = []  # one per POST: headers, status, entries
        self.forced: list[Forced] = []
        self.otlp_requests: list[Any] = []
        self.max_body = max_body
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> LokiServer:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/loki/api/v1/push", self._push)
        app.router.add_post("/otlp/v1/logs", self._otlp)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, status: int, times: int = 1, body: str = "", headers: dict[str, str] | None = None) -> None:
        self.forced.extend(Forced(status, body, headers or {}) for _ in range(times))

    def entries(self) -> list[tuple[dict[str, str], Entry]]:
        return [(s.labels, e) for s in self.streams.values() for e in s.entries]

    # --- protocol -------------------------------------------------------------------------------

    async def _otlp(self, req: web.Request) -> web.Response:
        """Loki 3's native OTLP endpoint: ExportLogsServiceRequest (protobuf; aiohttp undoes gzip)."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        raw = await req.read()
        rec: dict[str, Any] = {"headers": dict(req.headers), "bytes": len(raw), "otlp": True}
        self.requests.append(rec)
        if req.headers.get("Content-Type", "").split(";")[0] != "application/x-protobuf":
            rec["status"] = 415
            return web.Response(status=415, text="unsupported content type")
        msg = ExportLogsServiceRequest()
        try:
            msg.ParseFromString(raw)
        except Exception:
            rec["status"] = 400
            return web.Response(status=400, text="cannot parse OTLP logs")
        self.otlp_requests.append(msg)
        rec["status"] = 200
        return web.Response(body=ExportLogsServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    async def _push(self, req: web.Request) -> web.Response:
        raw = await req.read()
        rec: dict[str, Any] = {"headers": dict(req.headers), "bytes": len(raw), "entries": 0}
        self.requests.append(rec)
        f = self.forced.pop(0) if self.forced else None
        if f is not None and f.status:  # status 0 in the script: answer normally
            rec["status"] = f.status
            return web.Response(status=f.status, text=f.body, headers=f.headers)
        if len(raw) > self.max_body:
            rec["status"] = 413
            return web.Response(status=413, text=f"request body too large: {len(raw)} bytes, limit {self.max_body}")
        try:
            streams = self._decode(req, raw)
        except Exception as e:  # Loki answers 400 for whatever it cannot parse
            rec["status"] = 400
            return web.Response(status=400, text=f"error parsing push request: {e}")
        rec["received"] = sum(len(e) for _, e in streams)
        errors: list[str] = []
        now = time.time_ns()
        for labels_str, entries in streams:
            try:
                pairs = parse_selector(labels_str)
            except ValueError as e:
                errors.append(f"Error parsing labels '{labels_str}' with error: {e}")
                continue
            err = self._validate_labels(labels_str, pairs)
            if err:
                errors.append(err)
                continue
            key = tuple(sorted(pairs))
            st = self.streams.setdefault(key, Stream(dict(pairs)))
            for ts, line, md in entries:
                if len(line.encode()) > 256 * 1024:
                    errors.append(f"max entry size '262144' bytes exceeded for stream '{labels_str}' while adding an entry with length '{len(line.encode())}' bytes")
                    continue
                if ts < now - 7 * 86400 * 10**9:
                    errors.append(f"entry for stream '{labels_str}' has timestamp too old: {ts}")
                    continue
                if ts > now + 600 * 10**9:
                    errors.append(f"entry for stream '{labels_str}' has timestamp too new: {ts}")
                    continue
                if len(md) > 128:
                    errors.append(f"stream '{labels_str}' has too many structured metadata entries")
                    continue
                if st.entries and ts < max(e.ts for e in st.entries[-50:]) - 3600 * 10**9:
                    errors.append(f"entry too far behind, entry timestamp is: {ts}")
                    continue
                if any(e.ts == ts and e.line == line for e in st.entries[-50:]):
                    continue  # exact duplicate: silently ignored
                st.entries.append(Entry(ts, line, md))
                rec["entries"] += 1
        if errors:
            rec["status"] = 400
            return web.Response(status=400, text="\n".join(errors))
        rec["status"] = 204
        return web.Response(status=204)

    def _validate_labels(self, s: str, pairs: list[tuple[str, str]]) -> str | None:
        if not pairs:
            return "error at least one label pair is required per stream"
        if len(pairs) > 15:
            return f"entry for stream '{s}' has {len(pairs)} label names; limit 15"
        seen: set[str] = set()
        for n, v in pairs:
            if not LABEL_RE.match(n) or n.startswith("__"):
                return f"Error parsing labels '{s}' with error: invalid label name {n!r}"
            if len(n) > 1024:
                return f"stream '{s}' has label name too long: '{n}'"
            if len(v) > 2048:
                return f"stream '{s}' has label value too long: '{v[:50]}'"
            if n in seen:
                return f"stream '{s}' has duplicate label name: '{n}'"
            seen.add(n)
        return None

    def _decode(self, req: web.Request, raw: bytes) -> list[tuple[str, list[tuple[int, str, dict[str, str]]]]]:
        ct = req.headers.get("Content-Type", "").split(";")[0].strip()
        if ct in ("", "application/x-protobuf"):
            data = bytes(cramjam.snappy.decompress_raw(raw))  # block format; framed fails here
            pr = logproto_pb2.PushRequest()
            pr.ParseFromString(data)
            out = []
            for s in pr.streams:
                entries = []
                for e in s.entries:
                    if e.parsed:
                        raise ValueError("'parsed' is query-side only")
                    entries.append((e.timestamp.seconds * 10**9 + e.timestamp.nanos, e.line,
                                    {p.name: p.value for p in e.structuredMetadata}))
                out.append((s.labels, entries))
            return out
        if ct == "application/json":
            enc = req.headers.get("Content-Encoding", "")
            # aiohttp may already have decoded the body; decode only what is still compressed.
            if enc == "gzip" and raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            elif enc == "deflate" and raw[:1] == b"\x78":
                raw = zlib.decompress(raw)
            doc = json.loads(raw)
            out = []
            for s in doc["streams"]:
                labels = s["stream"]
                if not isinstance(labels, dict):
                    raise ValueError("stream must be an object")
                entries = []
                for v in s["values"]:
                    if not isinstance(v[0], str):
                        raise ValueError("timestamp must be a string of nanoseconds")
                    md = v[2] if len(v) > 2 else {}
                    if not all(isinstance(x, str) for x in md.values()):
                        raise ValueError("structured metadata values must be strings")
                    entries.append((int(v[0]), v[1], md))
                sel = "{" + ", ".join(f'{k}={json.dumps(x)}' for k, x in labels.items()) + "}"
                out.append((sel, entries))
            return out
        raise ValueError(f"unsupported Content-Type {ct!r}")
