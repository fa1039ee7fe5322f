"""Known traces for tail_sampling tests: spans described as plain dicts, built into one OTLP request.

A trace is a list of span dicts: {"service", "name", "start_ms", "dur_ms", "status" (0/1/2), "attrs",
"res" (extra resource attributes),
"trace_state" (W3C tracestate), "flags" (OTLP span flags), "events" ([{"name", "attrs"}])}. Spans of one service share a ResourceSpans; trace ids are fixed
16-byte values derived from a small integer so tests can name traces by number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gotel.pdata.batch import Traces, attrs

BASE_NS = 1_700_000_000_000_000_000


def tid(n: int) -> bytes:
    """Trace id number n: a hash, so that probabilistic sampling sees well spread ids."""
    return hashlib.sha256(f"trace-{n}".encode()).digest()[:16]


def request(traces: dict[int, list[dict[str, Any]]]) -> ExportTraceServiceRequest:
    """One request holding every span of the given traces, grouped by (service, extra resource attrs)."""
    req = ExportTraceServiceRequest()
    groups: dict[tuple[Any, ...], Any] = {}
    for n, spans in traces.items():
        for i, s in enumerate(spans):
            res = {"service.name": s.get("service", "svc"), **s.get("res", {})}
            key = tuple(sorted((k, repr(v)) for k, v in res.items()))
            ss = groups.get(key)
            if ss is None:
                rs = req.resource_spans.add()
                rs.resource.attributes.extend(attrs(res))
                ss = rs.scope_spans.add()
                ss.scope.name = "tailtraces"
                groups[key] = ss
            sp = ss.spans.add()
            sp.trace_id = tid(n)
            sp.span_id = hashlib.sha256(f"span-{n}-{i}".encode()).digest()[:8]
            if i:
                sp.parent_span_id = hashlib.sha256(f"span-{n}-0".encode()).digest()[:8]
            sp.name = s.get("name", f"op{i}")
            sp.kind = s.get("kind", 2)
            start = BASE_NS + int(s.get("start_ms", 0) * 1_000_000)
            sp.start_time_unix_nano = start
            sp.end_time_unix_nano = start + int(s.get("dur_ms", 1) * 1_000_000)
            sp.status.code = s.get("status", 0)
            sp.trace_state = s.get("trace_state", "")
            sp.flags = s.get("flags", 0)
            sp.attributes.extend(attrs(s.get("attrs", {})))
            for e in s.get("events", ()):
                ev = sp.events.add()
                ev.name = e.get("name", "")
                ev.time_unix_nano = start
                ev.attributes.extend(attrs(e.get("attrs", {})))
    return req


def batch(traces: dict[int, list[dict[str, Any]]]) -> Traces:
    return Traces(request(traces))


def trace_ids(batches: Iterable[Any]) -> set[bytes]:
    """Trace ids of every span in the batches (Traces or request messages)."""
    out: set[bytes] = set()
    for b in batches:
        m = b.peek() if hasattr(b, "peek") else b
        for rs in m.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    out.add(bytes(sp.trace_id))
    return out


def spans_of(batches: Iterable[Any]) -> list[tuple[bytes, bytes, bytes]]:
    """(trace id, span id, the span's bytes) of every span, sorted: equal lists = the same spans."""
    out = []
    for b in batches:
        m = b.peek() if hasattr(b, "peek") else b
        for rs in m.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    out.append((bytes(sp.trace_id), bytes(sp.span_id), sp.SerializeToString(deterministic=True)))
    return sorted(out)
