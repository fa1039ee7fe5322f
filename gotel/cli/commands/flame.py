"""`gotel flame FILE|URL`: a flame graph (SVG) and a top-N table of a profile."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="pprof file (gzip or raw), OTLP-JSON profiles file (file exporter), "
                                  "or URL (http://host:port takes a CPU profile from /debug/pprof/profile)")
    p.add_argument("--svg", metavar="OUT", help="write a self-contained SVG flame graph here")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows of the top table (0: none)")
    p.add_argument("--type", dest="sample_type", metavar="SAMPLE_TYPE",
                   help="sample type to show, e.g. cpu, alloc_space, inuse_space, delay, goroutine (default: cpu "
                        "when present, else the first of inuse_space, alloc_space, delay, contentions, goroutine); "
                        "only the profiles that have it are used: values of different units are never added")
    p.add_argument("--list", action="store_true", help="list the sample types the source holds, and exit")
    p.add_argument("--seconds", type=int, default=5, help="CPU profile length when SOURCE is a URL")
    p.add_argument("--title", help="title of the SVG")


def run(args: argparse.Namespace) -> int:
    from gotel.cli import flame
    console = Console()
    err = Console(stderr=True)
    try:
        named = flame.load(args.source, seconds=args.seconds)
        if args.list:
            for h in flame.holdings(named):
                console.print(h.describe(), highlight=False, soft_wrap=True)
            return 0
        sel = flame.select(named, args.sample_type)
        root = flame.tree(sel)
    except flame.FlameError as e:
        err.print(f"[red]gotel flame:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    tname, unit = sel.type, sel.unit
    if root.total == 0:
        err.print(f"[yellow]gotel flame:[/yellow] {args.source}: no samples with a positive {tname}")
        return 1
    used = len(sel.profiles)
    about = f"{used} profile{'s' if used != 1 else ''}" + (
        f"; {sel.skipped} without {tname} left out (--list shows them)" if sel.skipped else "")
    if args.svg:
        title = args.title or f"{tname} ({unit}) — {args.source}"
        with open(args.svg, "w", encoding="utf-8") as f:
            f.write(flame.svg(root, title, unit))
        err.print(f"wrote {args.svg} ({about}, total {flame.fmt_value(root.total, unit)} {tname})", highlight=False, soft_wrap=True)
    elif sel.skipped:
        err.print(about, highlight=False, soft_wrap=True)
    if args.top > 0:
        rows, total = flame.top(sel, args.top)
        t = Table(title=f"top {len(rows)} by flat {tname} ({unit}), total {flame.fmt_value(total, unit)}")
        t.add_column("flat", justify="right")
        t.add_column("flat%", justify="right")
        t.add_column("cum", justify="right")
        t.add_column("cum%", justify="right")
        t.add_column("function", overflow="fold")
        for fn, fl, cu in rows:
            t.add_row(flame.fmt_value(fl, unit), f"{100 * fl / total:.1f}%", flame.fmt_value(cu, unit),
                      f"{100 * cu / total:.1f}%", fn)
        console.print(t)
    return 0
