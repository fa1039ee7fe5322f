"""Traces for people (rich tables and a waterfall) and for scripts (plain JSON, stable keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gotel.cli.traceview.model import Span, Trace

# What an SRE looks at first on a Go service's span; the rest is behind --all-attributes.
KEY_ATTRIBUTES = (
    "rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "rpc.response.status_code",
    "http.request.method", "http.route", "url.path", "http.response.status_code",
    "server.address", "server.port", "client.address", "network.peer.address", "network.peer.port", "peer.service",
    "db.system.name", "db.system", "db.operation.name", "messaging.system", "messaging.destination.name",
    "error.type", "exception.message",
)


def fmt_duration(ns: int) -> str:
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.3f}s"


def fmt_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def fmt_short_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%m-%d %H:%M:%S")


def key_attributes(s: Span, everything: bool = False) -> dict[str, Any]:
    if everything:
        return dict(sorted(s.attributes.items()))
    out = {k: s.attributes[k] for k in KEY_ATTRIBUTES if k in s.attributes}
    for k, v in s.attributes.items():  # deadlines and timeouts matter when chasing latency
        if ("deadline" in k or "timeout" in k) and k not in out:
            out[k] = v
    return out


# --- JSON ---------------------------------------------------------------------------------------


def trace_summary(t: Trace) -> dict[str, Any]:
    r = t.root()
    return {
        "trace_id": t.trace_id,
        "start_unix_nano": t.start_ns,
        "duration_ns": t.duration_ns,
        "spans": len(t.spans),
        "errors": t.errors,
        "services": t.services,
        "root_service": r.service,
        "root_name": r.name,
    }


def span_json(s: Span, depth: int, t0: int) -> dict[str, Any]:
    return {
        "span_id": s.span_id,
        "parent_span_id": s.parent_id,
        "depth": depth,
        "service": s.service,
        "name": s.name,
        "kind": s.kind,
        "start_offset_ns": s.start_ns - t0,
        "duration_ns": s.duration_ns,
        "status": s.status,
        "status_message": s.status_message,
        "attributes": dict(sorted(s.attributes.items())),
        "events": [{"name": e.name, "offset_ns": e.time_ns - t0, "attributes": e.attributes} for e in s.events],
        "links": [{"trace_id": lk.trace_id, "span_id": lk.span_id, "attributes": lk.attributes} for lk in s.links],
    }


def trace_json(t: Trace) -> dict[str, Any]:
    t0 = t.start_ns
    return {**trace_summary(t), "tree": [span_json(s, d, t0) for d, s in t.walk()]}


# --- terminal -----------------------------------------------------------------------------------


def list_view(traces: list[Trace], width: int) -> Table | Group:
    """A table on wide terminals; two lines per trace (ids, then the root) when a table would fold."""
    if width >= 120:
        return list_table(traces)
    lines: list[Text] = []
    for t in traces:
        r = t.root()
        err = (f"{t.errors} errors", "bold red") if t.errors else ("no errors", "dim")
        lines.append(Text.assemble((t.trace_id, "cyan"), "  ", fmt_short_time(t.start_ns), "  ",
                                   (fmt_duration(t.duration_ns).rjust(9), "bold"), f"  {len(t.spans)} spans  ", err))
        lines.append(Text.assemble("    ", (r.service, "magenta"), ": ", r.name, overflow="ellipsis", no_wrap=True))
    return Group(*lines)


def list_table(traces: list[Trace]) -> Table:
    tab = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    tab.add_column("TRACE ID", style="cyan", no_wrap=True)
    tab.add_column("START", no_wrap=True)
    tab.add_column("DURATION", justify="right", no_wrap=True)
    tab.add_column("SPANS", justify="right")
    tab.add_column("ERR", justify="right")
    tab.add_column("ROOT", overflow="fold")
    for t in traces:
        r = t.root()
        err = Text(str(t.errors), style="bold red") if t.errors else Text("0", style="dim")
        tab.add_row(t.trace_id, fmt_short_time(t.start_ns), fmt_duration(t.duration_ns), str(len(t.spans)), err,
                    Text.assemble((r.service, "magenta"), ": ", r.name))
    return tab


def _bar(s: Span, t0: int, total: int, width: int) -> Text:
    if total <= 0:
        return Text("█" * width)
    start = int((s.start_ns - t0) * width / total)
    length = max(1, round(s.duration_ns * width / total))
    start = min(start, width - 1)
    length = min(length, width - start)
    style = "red" if s.is_error else ("blue" if s.kind in ("client", "producer") else "green")
    return Text.assemble(("·" * start, "dim"), ("█" * length, style), ("·" * (width - start - length), "dim"))


def waterfall(t: Trace, everything: bool = False, width: int = 100) -> Group:
    """One row per span (tree, duration, timeline bar), its status and key attributes indented below.

    Rows are laid out by hand rather than in a table so that long attribute lists wrap under their
    span instead of squeezing the timeline out of a narrow terminal.
    """
    t0, total = t.start_ns, t.duration_ns
    head = Text.assemble(("trace ", "bold"), (t.trace_id, "bold cyan"), "  ", fmt_time(t0), "  ",
                         (fmt_duration(total), "bold"), f"  {len(t.spans)} spans  ",
                         ((f"{t.errors} errors", "bold red") if t.errors else ("no errors", "green")),
                         "  services: ", (", ".join(t.services), "magenta"))
    rows = t.walk()
    bar_w = max(10, min(40, width // 4))
    dur_w = 9
    labels = []
    for depth, s in rows:
        prefix = "  " * depth + ("└ " if depth else "")
        labels.append((prefix, s))
    name_w = min(max(len(p) + len(s.service) + 1 + len(s.name) for p, s in labels), max(20, width - bar_w - dur_w - 4))
    lines: list[Text | Padding] = [head, Text("")]
    for prefix, s in labels:
        label = Text.assemble((prefix, "dim"), (s.service, "magenta"), " ", (s.name, "bold"))
        if len(label) > name_w:
            label.truncate(name_w - 1)
            label.append("…")
        label.pad_right(name_w - len(label))
        row = Text.assemble(label, "  ", (fmt_duration(s.duration_ns).rjust(dur_w), "bold" if s.is_error else ""),
                            "  ", _bar(s, t0, total, bar_w))
        row.no_wrap = True
        row.overflow = "ellipsis"
        lines.append(row)
        indent = len(prefix) + 4
        detail = Text(overflow="fold")
        detail.append(f"{s.kind}  ", style="dim")
        if s.is_error:
            detail.append("ERROR", style="bold red")
            detail.append(f" {s.status_message}  " if s.status_message else "  ", style="red")
        for k, v in key_attributes(s, everything).items():
            detail.append(f"{k}=", style="dim")
            detail.append(f"{v}  ")
        for e in s.events:
            detail.append(f"\n↳ {e.name} +{fmt_duration(e.time_ns - s.start_ns)}", style="yellow")
            if everything and e.attributes:
                detail.append(" " + " ".join(f"{k}={v}" for k, v in e.attributes.items()), style="yellow")
        for lk in s.links:
            detail.append(f"\n⇢ link {lk.trace_id}/{lk.span_id}", style="dim")
        # Padding keeps wrapped attribute lines under their span.
        lines.append(Padding(detail, (0, 0, 0, indent)))
    return Group(*lines)


def console(no_color: bool = False) -> Console:
    return Console(no_color=no_color, highlight=False, soft_wrap=False)
