"""Where traces come from: a Jaeger query service (api_v3 over HTTP) or the `file` exporter's output.

Errors are raised as SourceError with a sentence a person at 3 a.m. can act on, never a traceback.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gotel.cli.traceview.model import Span, Trace, group, spans_from_otlp_json


class SourceError(Exception):
    """A problem with the source, already explained for the user."""


class NotFound(SourceError):
    pass


@dataclass
class Query:
    service: str | None = None
    operation: str | None = None
    min_duration_ns: int = 0
    max_duration_ns: int = 0
    start_min_ns: int | None = None
    start_max_ns: int | None = None
    errors_only: bool = False
    limit: int = 20

    def span_matches(self, s: Span) -> bool:
        """Jaeger's search semantics: one span must satisfy every span condition."""
        if self.service and s.service != self.service:
            return False
        if self.operation and s.name != self.operation:
            return False
        if self.min_duration_ns and s.duration_ns < self.min_duration_ns:
            return False
        if self.max_duration_ns and s.duration_ns > self.max_duration_ns:
            return False
        if self.start_min_ns is not None and s.start_ns < self.start_min_ns:
            return False
        return not (self.start_max_ns is not None and s.start_ns > self.start_max_ns)

    def select(self, traces: list[Trace]) -> list[Trace]:
        out = [t for t in traces if any(self.span_matches(s) for s in t.spans)]
        if self.errors_only:
            out = [t for t in out if t.errors]
        out.sort(key=lambda t: (-t.start_ns, t.trace_id))
        return out[: self.limit] if self.limit else out


def normalise_trace_id(tid: str) -> str:
    t = tid.strip().lower()
    if not t or len(t) > 32 or any(c not in "0123456789abcdef" for c in t):
        raise SourceError(f"{tid!r} is not a trace id (up to 32 hex digits)")
    return t.rjust(32, "0")


class FileSource:
    """OTLP-JSON lines written by the `file` exporter: a file, a glob, or a directory of them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.skipped = 0

    def _files(self) -> list[str]:
        p = self.path
        if os.path.isdir(p):
            files = sorted(f for f in glob.glob(os.path.join(p, "*")) if os.path.isfile(f))
        elif any(c in p for c in "*?["):
            files = sorted(glob.glob(p))
        else:
            files = [p]
        if not files or not all(os.path.exists(f) for f in files):
            raise SourceError(f"{p}: no such file (give the file exporter's `path`, or the directory holding it)")
        return files

    def _spans(self) -> list[Span]:
        spans: list[Span] = []
        for f in self._files():
            try:
                fh = open(f, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
            except OSError as e:
                raise SourceError(f"{f}: cannot read: {e.strerror}") from e
            with fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError:
                        self.skipped += 1
                        continue
                    if not isinstance(doc, dict):
                        self.skipped += 1
                        continue
                    if "resourceSpans" in doc:
                        spans.extend(spans_from_otlp_json(doc))
                    elif not any(k in doc for k in ("resourceMetrics", "resourceLogs", "resourceProfiles")):
                        self.skipped += 1
        return spans

    def find(self, q: Query) -> list[Trace]:
        return q.select(group(self._spans()))

    def get(self, trace_id: str) -> Trace:
        tid = normalise_trace_id(trace_id)
        spans = [s for s in self._spans() if s.trace_id == tid]
        if not spans:
            raise NotFound(f"trace {tid} is not in {self.path}")
        return group(spans)[0]

    def services(self) -> list[str]:
        return sorted({s.service for s in self._spans()})

    def operations(self, service: str) -> list[tuple[str, str]]:
        return sorted({(s.name, s.kind) for s in self._spans() if s.service == service})


def _rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def go_duration(ns: int) -> str:
    """Nanoseconds as a Go duration string, exact (Jaeger parses query.duration_min with Go)."""
    if ns % 1_000_000 == 0:
        return f"{ns // 1_000_000}ms"
    if ns % 1000 == 0:
        return f"{ns // 1000}us"
    return f"{ns}ns"


def _json_docs(body: bytes) -> list[Any]:
    """One JSON document, or several concatenated (the gateway streams one per chunk)."""
    text = body.decode("utf-8", "replace").strip()
    dec = json.JSONDecoder()
    out = []
    pos = 0
    while pos < len(text):
        doc, end = dec.raw_decode(text, pos)
        out.append(doc)
        pos = end
        while pos < len(text) and text[pos] in " \r\n\t,":
            pos += 1
    return out


# `--limit 0` asks for every match; Jaeger needs a number (and its memory store refuses more than max_traces).
UNLIMITED_DEPTH = 1000


class JaegerSource:
    """Jaeger's api_v3 HTTP endpoints on the query port (16686).

    Traces are asked for raw: Jaeger's display adjusters would otherwise add `@jaeger@warnings`
    attributes (to every span whose parent was not traced, and wherever clock skew was seen) and could
    move spans in time, so the same trace would read differently from Jaeger and from the file.
    """

    def __init__(self, url: str, timeout: float = 10.0, ca_file: str | None = None) -> None:
        if "://" not in url:
            url = "http://" + url
        self.base = url.rstrip("/")
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if self.base.startswith("https://"):
            try:
                self._tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise SourceError(f"--ca-file {ca_file}: cannot load a CA certificate from it: {e}") from None
        elif ca_file:
            raise SourceError(f"--ca-file is for https:// query services; {self.base} is plain HTTP")

    def _get(self, path: str, params: dict[str, str] | None = None, what: str = "") -> list[Any]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as r:
                body = r.read()
                ctype = r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            detail = _error_message(e.read())
            if e.code == 404:
                raise NotFound(detail or f"{what or path}: not found") from None
            if e.code == 400 and "HTTPS server" in detail:
                raise SourceError(f"{self.base} takes TLS: use https:// ({detail})") from None
            if e.code == 400:
                raise SourceError(f"Jaeger rejected the query: {detail or 'bad request'}") from None
            raise SourceError(f"Jaeger answered {e.code} for {path}: {detail or e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                why = "connection refused"
            elif isinstance(reason, socket.gaierror):
                why = f"cannot resolve the host ({reason.strerror})"
            elif isinstance(reason, ssl.SSLCertVerificationError):
                raise SourceError(f"Jaeger's query service at {self.base}: TLS certificate not trusted "
                                  f"({reason.verify_message}); give its CA with --ca-file") from None
            elif isinstance(reason, ssl.SSLError):
                why = f"TLS failed ({reason.reason or reason}); is this an https:// port?"
            else:
                why = str(reason)
            raise SourceError(f"cannot reach Jaeger's query service at {self.base}: {why}. Is Jaeger running, "
                              "and is this its query/UI port (16686)?") from None
        except TimeoutError:
            raise SourceError(f"Jaeger's query service at {self.base} did not answer within {self.timeout:g}s") from None
        try:
            return _json_docs(body)
        except json.JSONDecodeError:
            head = body[:80].decode("utf-8", "replace").replace("\n", " ")
            raise SourceError(f"{url} did not answer JSON (Content-Type {ctype or 'none'}; starts with {head!r}). "
                              "Is this Jaeger's query service (port 16686), with api_v3?") from None

    def _traces(self, docs: list[Any]) -> list[Trace]:
        spans: list[Span] = []
        for d in docs:
            if not isinstance(d, dict):
                raise SourceError("Jaeger's answer is not an OTLP-JSON trace result")
            if "error" in d and "result" not in d:
                raise SourceError(f"Jaeger reported an error: {_error_message(json.dumps(d).encode())}")
            spans.extend(spans_from_otlp_json(d.get("result") or {}))
        return group(spans)

    def find(self, q: Query) -> list[Trace]:
        if not q.service:
            raise SourceError("Jaeger needs a service to search (--service); list them with `gotel traces services`")
        params: dict[str, str] = {"query.service_name": q.service, "query.raw_traces": "true"}
        if q.operation:
            params["query.operation_name"] = q.operation
        if q.start_min_ns is not None:
            params["query.start_time_min"] = _rfc3339(q.start_min_ns)
        if q.start_max_ns is not None:
            params["query.start_time_max"] = _rfc3339(q.start_max_ns)
        if q.min_duration_ns:
            params["query.duration_min"] = go_duration(q.min_duration_ns)
        if q.max_duration_ns:
            params["query.duration_max"] = go_duration(q.max_duration_ns)
        # Errors are filtered here, after the search: ask for more so that `--errors --limit N` finds N.
        # Jaeger's HTTP gateway calls the depth `query.num_traces` (the proto's search_depth is ignored
        # there) and its memory store refuses a search without one.
        depth = q.limit * 10 if q.errors_only else q.limit
        params["query.num_traces"] = str(depth or UNLIMITED_DEPTH)
        try:
            docs = self._get("/api/v3/traces", params, what="search")
        except NotFound:
            return []  # api_v3 answers 404 "No traces found" for an empty search
        return q.select(self._traces(docs))

    def get(self, trace_id: str) -> Trace:
        tid = normalise_trace_id(trace_id)
        try:
            docs = self._get(f"/api/v3/traces/{tid}", {"raw_traces": "true"}, what=f"trace {tid}")
        except NotFound:
            raise NotFound(f"trace {tid} was not found in Jaeger at {self.base} (wrong id, or it has aged "
                           "out of Jaeger's storage)") from None
        traces = [t for t in self._traces(docs) if t.trace_id == tid]
        if not traces:
            raise NotFound(f"trace {tid} was not found in Jaeger at {self.base}")
        return traces[0]

    def services(self) -> list[str]:
        docs = self._get("/api/v3/services", what="services")
        return sorted(str(s) for d in docs for s in (d.get("services") or []))

    def operations(self, service: str) -> list[tuple[str, str]]:
        try:
            docs = self._get("/api/v3/operations", {"service": service}, what=f"operations of {service}")
        except NotFound:
            return []
        out = set()
        for d in docs:
            for o in d.get("operations") or []:
                out.add((str(o.get("name", "")), str(o.get("spanKind", "")).lower()))
        return sorted(out)


def _error_message(body: bytes) -> str:
    """The message of a Jaeger/grpc-gateway error body ({"error": {"message": ...}} or {"message": ...})."""
    text = body.decode("utf-8", "replace").strip()
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return text[:200]
    if isinstance(d, dict):
        e = d.get("error", d)
        if isinstance(e, dict):
            return str(e.get("message") or e.get("msg") or e)
        if isinstance(e, str):
            return e
    return text[:200]
