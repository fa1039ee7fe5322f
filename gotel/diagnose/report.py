"""Renders a rules Report for people (terminal), programs (JSON) and browsers (one self-contained HTML page)."""

from __future__ import annotations

import datetime as dt
import html
import itertools
import json
from typing import Any

from gotel.diagnose.rules import Report
from gotel.diagnose.signals import Snapshot


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_json(snap: Snapshot, rep: Report) -> dict[str, Any]:
    """The shape docs/diagnose.md documents: target, window, findings (most severe first), fine, not_run."""
    return {
        "target": {k: v for k, v in snap.target.items() if v is not None}
        | {"gomaxprocs": snap.gomaxprocs, "gomaxprocs_source": snap.gomaxprocs_source, "cpus": snap.cpus},
        "window": {"start": _iso(snap.start_unix), "end": _iso(snap.end_unix), "duration_s": round(snap.duration_s, 3)},
        "findings": [f.as_dict() for f in rep.findings],
        "fine": [{"rule": r, "summary": s} for r, s in rep.fine],
        "not_run": [{"rule": r, "reason": s} for r, s in rep.not_run],
    }


def _ev_text(ev: dict[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        if v is None or isinstance(v, list | dict):
            continue
        parts.append(f"{k}={v}")
    return " ".join(parts)


def as_text(snap: Snapshot, rep: Report) -> str:
    t = snap.target
    lines = [f"gotel diagnose: pid {snap.pid} ({t.get('comm', '?')}, {snap.go_version or 'Go version unknown'})"
             f"{', pprof ' + t['pprof'] if t.get('pprof') else ', no pprof endpoint'}; "
             f"window {snap.duration_s:.1f}s from {_iso(snap.start_unix)}", ""]
    if rep.findings:
        lines.append("FINDINGS (most severe first)")
        for i, f in enumerate(rep.findings, 1):
            lines.append(f"{i:2}. [{f.severity}] {f.rule}: {f.summary}")
            if f.location:
                where = f.location.function + (f" ({f.location.file}:{f.location.line})" if f.location.file else "")
                lines.append(f"    where:    {where}")
            lines.append(f"    evidence: {_ev_text(f.evidence)}")
            for key in ("top_allocation_sites", "sites", "open_by"):
                for site in (f.evidence.get(key) or [])[:3]:
                    lines.append(f"              {key}: {json.dumps(site)}")
            lines.append(f"    fix:      {f.fix}")
    else:
        lines.append("FINDINGS: none")
    if rep.fine:
        lines += ["", "WHAT IS FINE"] + [f"  - {r}: {s}" for r, s in rep.fine]
    if rep.not_run:
        lines += ["", "COULD NOT RUN"] + [f"  - {r}: {s}" for r, s in rep.not_run]
    return "\n".join(lines) + "\n"


_SEV_COLOR = {"critical": "#c0392b", "warning": "#d68910", "info": "#2874a6"}


def as_html(snap: Snapshot, rep: Report) -> str:
    """One page, no external resource: findings, the CPU flame graph, a one-clock timeline, goroutine buckets."""
    from gotel.cli import flame

    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gotel diagnose pid {snap.pid}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
             ".f{border-left:6px solid;padding:4px 10px;margin:8px 0}code{font-size:90%}</style></head><body>",
             f"<h1>gotel diagnose: pid {snap.pid} ({e(str(snap.target.get('comm', '')))})</h1>",
             f"<p>{e(snap.go_version or 'Go version unknown')}; window {snap.duration_s:.1f}s from {_iso(snap.start_unix)}</p>",
             "<h2>Findings</h2>"]
    if not rep.findings:
        parts.append("<p>none</p>")
    for f in rep.findings:
        loc = f.location
        where = f"<br><b>where</b> <code>{e(loc.function)} {e(loc.file)}:{loc.line}</code>" if loc else ""
        parts.append(f"<div class='f' style='border-color:{_SEV_COLOR[f.severity]}'><b>[{f.severity}] {e(f.rule)}</b>: "
                     f"{e(f.summary)}{where}<br><b>evidence</b> <code>{e(json.dumps(f.evidence))}</code><br>"
                     f"<b>fix</b> {e(f.fix)}</div>")
    parts.append("<h2>What is fine</h2><ul>" + "".join(f"<li><b>{e(r)}</b>: {e(s)}</li>" for r, s in rep.fine) + "</ul>")
    parts.append("<h2>Could not run</h2><ul>" + "".join(f"<li><b>{e(r)}</b>: {e(s)}</li>" for r, s in rep.not_run) + "</ul>")
    parts.append("<h2>Timeline</h2>" + _timeline(snap))
    if snap.cpu_profile is not None:
        try:
            sel = flame.select([("cpu", snap.cpu_profile)], None)
            parts.append("<h2>CPU flame graph</h2>" + flame.svg(flame.tree(sel), f"pid {snap.pid} CPU", sel.unit))
        except flame.FlameError as ex:
            parts.append(f"<p>no flame graph: {e(str(ex))}</p>")
    if snap.goroutine_dumps:
        from gotel.receivers.pprof.goroutines import bucketize

        last = snap.goroutine_dumps[-1]
        rows = sorted(bucketize(last.goroutines).values(), key=lambda b: b.count, reverse=True)[:30]
        parts.append("<h2>Goroutine buckets (last dump)</h2><table><tr><th>count</th><th>state</th><th>where</th>"
                     "<th>created by</th></tr>" + "".join(
                         f"<tr><td>{b.count}</td><td>{e(b.wait_reason or b.state)}</td><td><code>{e(b.top_function)}</code></td>"
                         f"<td><code>{e(b.sample.created_by)}</code></td></tr>" for b in rows) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _timeline(snap: Snapshot) -> str:
    """Per-interval bars on the window's clock: CPU, run-queue wait, goroutines in syscalls, GC count."""
    s = snap.samples
    if len(s) < 2:
        return "<p>no samples</p>"
    t0 = s[0].t
    rows: list[tuple[str, list[tuple[float, float]]]] = []

    def rate(name: str, scale: float) -> list[tuple[float, float]]:
        out = []
        for a, b in itertools.pairwise(s):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None and y is not None and b.t > a.t:
                out.append((b.t - t0, (y - x) * scale / (b.t - a.t)))
        return out

    rows.append(("CPU (cores)", rate("on_cpu_ns", 1e-9)))
    rows.append(("run-queue wait (s/s)", rate("run_delay_ns", 1e-9)))
    rows.append(("goroutines in syscall", [(d.t - t0, float(sum(1 for g in d.goroutines if g.state == "syscall")))
                                           for d in snap.goroutine_dumps]))
    rows.append(("goroutines", [(d.t - t0, float(len(d.goroutines))) for d in snap.goroutine_dumps]))
    if snap.memstats:
        m1 = snap.memstats[-1]
        pauses = [(end / 1e9 - snap.start_unix, ns / 1e9) for ns, end in zip(m1.pause_ns, m1.pause_end_unix_ns, strict=False)]
        rows.append(("GC STW pauses (s)", [(t, v) for t, v in pauses if t >= 0]))
    width = 900.0
    span = max(1e-6, s[-1].t - t0)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width + 200:.0f}' height='{len(rows) * 40 + 10}'>"]
    for i, (name, pts) in enumerate(rows):
        y = i * 40 + 5
        out.append(f"<text x='0' y='{y + 20}' font-size='12'>{html.escape(name)}</text>")
        top = max((v for _t, v in pts), default=0.0) or 1.0
        for t, v in pts:
            h = 30 * v / top
            out.append(f"<rect x='{200 + width * t / span - 3:.1f}' y='{y + 30 - h:.1f}' width='6' height='{h:.1f}' "
                       f"fill='#2874a6'><title>{t:.1f}s: {v:.3g}</title></rect>")
    out.append("</svg>")
    return "".join(out)
