"""`gotel traces`: find and show traces from a Jaeger query service or the file exporter's output.

  gotel traces list  --jaeger http://127.0.0.1:16686 --service checkout --min-duration 100ms --errors
  gotel traces show  TRACE_ID --file ./gotel-data/traces.json
  gotel traces services --jaeger https://jaeger.internal:16686 --ca-file ca.pem
  gotel traces services | operations --service S
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from gotel.config.types import parse_duration


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--jaeger", metavar="URL", help="Jaeger query service (api_v3), e.g. http://127.0.0.1:16686")
    g.add_argument("--file", metavar="PATH", help="the file exporter's output (file, glob or directory)")
    p.add_argument("--ca-file", metavar="PATH", help="CA certificate(s) to trust for an https:// --jaeger")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-color", action="store_true", help="plain text")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="traces_cmd", metavar="ACTION")
    ls = sub.add_parser("list", help="find traces", description="find traces (most recent first)")
    _source_args(ls)
    ls.add_argument("--service", "-s", help="a span of this service must match")
    ls.add_argument("--operation", "-o", help="span name (with --service)")
    ls.add_argument("--min-duration", metavar="DUR", help="a matching span lasted at least this long (e.g. 250ms)")
    ls.add_argument("--max-duration", metavar="DUR")
    ls.add_argument("--errors", action="store_true", help="only traces with a span in error")
    ls.add_argument("--since", metavar="DUR", help="start time window ending now (default for Jaeger: 1h)")
    ls.add_argument("--start", metavar="TIME", help="window start (RFC 3339 / ISO 8601)")
    ls.add_argument("--end", metavar="TIME", help="window end (RFC 3339 / ISO 8601)")
    ls.add_argument("--limit", "-n", type=int, default=20)
    show = sub.add_parser("show", help="one trace as a waterfall", description="one trace as a waterfall tree")
    _source_args(show)
    show.add_argument("trace_id")
    show.add_argument("--all-attributes", "-a", action="store_true", help="every attribute, not only the key ones")
    sv = sub.add_parser("services", help="services that sent traces")
    _source_args(sv)
    op = sub.add_parser("operations", help="span names of a service")
    _source_args(op)
    op.add_argument("--service", "-s", required=True)
    p.set_defaults(_parser=p)


def _time(s: str, flag: str) -> int:
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"gotel traces: {flag} {s!r} is not a time (use RFC 3339, e.g. 2026-11-22T18:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1e9)


def _dur(s: str | None, flag: str) -> int:
    if not s:
        return 0
    try:
        return int(parse_duration(s) * 1e9)
    except ValueError as e:
        raise SystemExit(f"gotel traces: {flag}: {e}") from None


def _source(args: argparse.Namespace) -> Any:
    from gotel.cli.traceview.sources import FileSource, JaegerSource

    if args.file:
        if args.ca_file:
            raise SystemExit("gotel traces: --ca-file goes with an https:// --jaeger, not --file")
        return FileSource(args.file)
    if args.jaeger:
        return JaegerSource(args.jaeger, ca_file=args.ca_file)
    raise SystemExit("gotel traces: say where the traces are: --jaeger URL (query port 16686) or --file PATH")


def _emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gotel.cli.traceview import render
    from gotel.cli.traceview.sources import FileSource, NotFound, Query, SourceError

    if not args.traces_cmd:
        args._parser.print_help()
        return 2
    con = render.console(no_color=args.no_color)
    err = Console(stderr=True, no_color=args.no_color, highlight=False)
    try:
        src = _source(args)
    except SourceError as e:
        err.print(f"[bold red]error:[/] {e}")
        return 1
    try:
        if args.traces_cmd == "list":
            q = Query(service=args.service, operation=args.operation,
                      min_duration_ns=_dur(args.min_duration, "--min-duration"),
                      max_duration_ns=_dur(args.max_duration, "--max-duration"),
                      errors_only=args.errors, limit=max(0, args.limit))
            now = time.time_ns()
            if args.start or args.end:
                q.start_min_ns = _time(args.start, "--start") if args.start else None
                q.start_max_ns = _time(args.end, "--end") if args.end else now
            elif args.since or args.jaeger:
                q.start_min_ns = now - _dur(args.since or "1h", "--since")
                q.start_max_ns = now
            if args.jaeger and q.start_min_ns is None:
                q.start_min_ns = q.start_max_ns - 3600 * 10**9 if q.start_max_ns else now - 3600 * 10**9
            traces = src.find(q)
            if args.json:
                _emit_json([render.trace_summary(t) for t in traces])
            elif not traces:
                err.print("No traces match." + ("" if args.service or args.file else " (try --service)"))
            else:
                con.print(render.list_view(traces, con.width))
        elif args.traces_cmd == "show":
            t = src.get(args.trace_id)
            if args.json:
                _emit_json(render.trace_json(t))
            else:
                con.print(render.waterfall(t, everything=args.all_attributes, width=con.width))
        elif args.traces_cmd == "services":
            names = src.services()
            if args.json:
                _emit_json(names)
            else:
                con.print("\n".join(names) if names else "(no services)")
        elif args.traces_cmd == "operations":
            ops = src.operations(args.service)
            if args.json:
                _emit_json([{"name": n, "span_kind": k} for n, k in ops])
            else:
                for n, k in ops:
                    con.print(f"{n}  [dim]{k}[/dim]" if k else n)
    except NotFound as e:
        err.print(f"[bold red]not found:[/] {e}")
        return 1
    except SourceError as e:
        err.print(f"[bold red]error:[/] {e}")
        return 1
    if isinstance(src, FileSource) and src.skipped:
        err.print(f"[yellow]note:[/] skipped {src.skipped} lines of {src.path} that are not OTLP-JSON")
    return 0
