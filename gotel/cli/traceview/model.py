"""Traces read from OTLP-JSON (the `file` exporter's lines, Jaeger api_v3 answers) into a small model.

Both sources speak OTLP-JSON (hex ids, integer or named enums, 64-bit integers as strings), so one
reader serves both and `gotel traces` shows the same trace the same way wherever it came from.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS = {0: "unset", 1: "ok", 2: "error"}


def _enum(v: Any, table: dict[int, str], prefix: str) -> str:
    if isinstance(v, int):
        return table.get(v, str(v))
    if isinstance(v, str):
        if v.isdigit():
            return table.get(int(v), v)
        return v.removeprefix(prefix).lower() or table[0]
    return table[0]


def any_value(v: dict[str, Any] | None) -> Any:
    """An OTLP-JSON AnyValue as a plain Python value."""
    if not v:
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"]).hex()
    if "arrayValue" in v:
        return [any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {x["key"]: any_value(x.get("value")) for x in v["kvlistValue"].get("values", [])}
    return None


def attributes(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {x["key"]: any_value(x.get("value")) for x in kvs or [] if "key" in x}


@dataclass
class Event:
    time_ns: int
    name: str
    attributes: dict[str, Any]


@dataclass
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str = ""
    events: list[Event] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def is_error(self) -> bool:
        return self.status == "error"


@dataclass
class Trace:
    trace_id: str
    spans: list[Span]

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def errors(self) -> int:
        return sum(1 for s in self.spans if s.is_error)

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})

    def roots(self) -> list[Span]:
        """Spans whose parent is not in the trace (the root, and orphans whose parent was not received)."""
        ids = {s.span_id for s in self.spans}
        return sorted((s for s in self.spans if not s.parent_id or s.parent_id not in ids),
                      key=lambda s: (s.start_ns, s.span_id))

    def root(self) -> Span:
        r = self.roots()
        return r[0] if r else min(self.spans, key=lambda s: s.start_ns)

    def walk(self) -> list[tuple[int, Span]]:
        """(depth, span) in tree order, children by start time: the waterfall's rows."""
        children: dict[str, list[Span]] = {}
        for s in self.spans:
            children.setdefault(s.parent_id, []).append(s)
        for v in children.values():
            v.sort(key=lambda s: (s.start_ns, s.span_id))
        out: list[tuple[int, Span]] = []
        seen: set[str] = set()

        def visit(s: Span, depth: int) -> None:
            if s.span_id in seen:  # a malformed trace with a cycle must not hang the viewer
                return
            seen.add(s.span_id)
            out.append((depth, s))
            for c in children.get(s.span_id, []):
                visit(c, depth + 1)

        for r in self.roots():
            visit(r, 0)
        for s in sorted(self.spans, key=lambda s: s.start_ns):
            if s.span_id not in seen:
                visit(s, 0)
        return out


def _norm_id(v: Any) -> str:
    return str(v or "").lower()


def spans_from_otlp_json(doc: dict[str, Any]) -> list[Span]:
    """Spans of one OTLP-JSON TracesData / ExportTraceServiceRequest object."""
    out: list[Span] = []
    for rs in doc.get("resourceSpans", []) or []:
        res = attributes((rs.get("resource") or {}).get("attributes"))
        service = str(res.get("service.name") or "unknown_service")
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []) or []:
            scope = (ss.get("scope") or ss.get("instrumentationLibrary") or {}).get("name", "")
            for sp in ss.get("spans", []) or []:
                st = sp.get("status") or {}
                out.append(Span(
                    trace_id=_norm_id(sp.get("traceId")),
                    span_id=_norm_id(sp.get("spanId")),
                    parent_id=_norm_id(sp.get("parentSpanId")),
                    name=sp.get("name", ""),
                    service=service,
                    kind=_enum(sp.get("kind", 0), KINDS, "SPAN_KIND_"),
                    start_ns=int(sp.get("startTimeUnixNano", 0) or 0),
                    end_ns=int(sp.get("endTimeUnixNano", 0) or 0),
                    status=_enum(st.get("code", 0), STATUS, "STATUS_CODE_"),
                    status_message=st.get("message", ""),
                    attributes=attributes(sp.get("attributes")),
                    resource=res,
                    scope=scope,
                    events=[Event(int(e.get("timeUnixNano", 0) or 0), e.get("name", ""), attributes(e.get("attributes")))
                            for e in sp.get("events", []) or []],
                    links=[Link(_norm_id(lk.get("traceId")), _norm_id(lk.get("spanId")), attributes(lk.get("attributes")))
                           for lk in sp.get("links", []) or []],
                ))
    return out


def group(spans: list[Span]) -> list[Trace]:
    """Spans -> traces; a span seen twice (same trace and span id) is kept once."""
    by: dict[str, dict[str, Span]] = {}
    for s in spans:
        by.setdefault(s.trace_id, {}).setdefault(s.span_id, s)
    return [Trace(tid, list(d.values())) for tid, d in by.items()]
