"""Flame graphs and top-N tables from pprof profiles, OTLP profile files or live pprof endpoints.

The SVG is self-contained (no script, no external font or stylesheet): every frame is a ``<rect>``
with a ``<title>`` that browsers show on hover, so the file can be attached to a ticket and opened
anywhere.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlsplit

from gotel.formats import pprof
from gotel.proto import pprof_profile_pb2 as pb


class FlameError(ValueError):
    pass


@dataclass
class Node:
    name: str
    total: int = 0
    self_value: int = 0
    children: dict[str, Node] = field(default_factory=dict)

    def child(self, name: str) -> Node:
        c = self.children.get(name)
        if c is None:
            c = self.children[name] = Node(name)
        return c


# --- loading -----------------------------------------------------------------------------------


def _strip_ids(obj: Any) -> Any:
    """OTLP/JSON writes profileId as hex, protobuf's JSON parser wants base64: the id is not needed."""
    if isinstance(obj, dict):
        return {k: _strip_ids(v) for k, v in obj.items() if k not in ("profileId", "traceId", "spanId")}
    if isinstance(obj, list):
        return [_strip_ids(x) for x in obj]
    return obj


def profiles_from_otlp_json(text: str) -> list[tuple[str, pb.Profile]]:
    """Every profile in a file of OTLP-JSON lines (the file exporter's format); other signals are skipped."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceRequest,
    )

    from gotel.formats.profconv import otlp_to_pprof

    out: list[tuple[str, pb.Profile]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or '"resourceProfiles"' not in line:
            continue
        try:
            d = json.loads(line)
            req = ExportProfilesServiceRequest()
            json_format.ParseDict(_strip_ids(d), req, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError) as e:
            raise FlameError(f"line {n}: not an OTLP profiles request: {e}") from None
        for g in otlp_to_pprof(req):
            svc = g.resource.get("service.name", "?")
            out.append((f"{svc} {g.attributes.get('gotel.pprof.type', '')}".strip(), g.profile))
    return out


def load(source: str, seconds: int = 5, timeout: float = 60.0) -> list[tuple[str, pb.Profile]]:
    """A pprof file, an OTLP-JSON profiles file, or a URL of a pprof endpoint -> named profiles."""
    if source.startswith(("http://", "https://")):
        u = urlsplit(source)
        url = source
        if u.path in ("", "/"):
            url = source.rstrip("/") + f"/debug/pprof/profile?seconds={seconds}"
        elif u.path.rstrip("/").endswith("/debug/pprof"):
            url = source.rstrip("/") + f"/profile?seconds={seconds}"
        try:
            with urllib.request.urlopen(url, timeout=timeout + seconds) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            # net/http/pprof says why in the body (e.g. "Could not enable CPU profiling: cpu profiling
            # already in use"): that is the useful part, not the status line
            body = e.read(4096).decode("utf-8", "replace").strip()
            raise FlameError(f"{url} answered {e.code}: {' '.join(body.split()) or e.reason}") from None
        except OSError as e:
            raise FlameError(f"cannot fetch {url}: {e}") from None
        try:
            return [(url, pprof.decode(data))]
        except pprof.PprofError as e:
            raise FlameError(f"{url}: {e}") from None
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlameError(f"cannot read {source}: {e.strerror}") from None
    head = data[:64].lstrip()
    if head[:1] == b"<":
        raise FlameError(f"{source}: an HTML/XML document, not a profile (pprof or OTLP-JSON lines expected)")
    if data[:2] == pprof.GZIP_MAGIC or (head[:1] and head[:1] not in (b"{", b"[")):
        try:
            return [(source, pprof.decode(data))]
        except pprof.PprofError as e:
            raise FlameError(f"{source}: {e}") from None
    profs = profiles_from_otlp_json(data.decode(errors="replace"))
    if not profs:
        raise FlameError(f"{source}: no profiles in it (expected pprof, or OTLP-JSON lines with resourceProfiles)")
    return profs


# The default sample type of a file that holds several kinds of profile: the first one present.
# CPU time says where a program spends itself; heap, contention and goroutine counts come after.
PREFERENCE = ("cpu", "inuse_space", "alloc_space", "delay", "contentions", "goroutine", "alloc_objects",
              "inuse_objects", "samples")


@dataclass
class Holding:
    """One sample type (with its unit) of a set of profiles: how many profiles have it, their total."""

    type: str
    unit: str
    profiles: int = 0
    total: int = 0
    sources: list[str] = field(default_factory=list)

    def describe(self) -> str:
        names = sorted(set(self.sources))
        more = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        return (f"{self.type} ({self.unit}): {self.profiles} profile{'s' if self.profiles != 1 else ''}, "
                f"total {fmt_value(self.total, self.unit)}{more}")


def holdings(named: list[tuple[str, pb.Profile]]) -> list[Holding]:
    """Every (sample type, unit) in the profiles, in PREFERENCE order, then as first seen."""
    out: dict[tuple[str, str], Holding] = {}
    for name, p in named:
        for i, (t, u) in enumerate(pprof.sample_type_names(p)):
            h = out.setdefault((t, u), Holding(t, u))
            h.profiles += 1
            h.total += sum(s.value[i] for s in p.sample if len(s.value) > i and s.value[i] > 0)
            h.sources.append(name)
    rank = {t: n for n, t in enumerate(PREFERENCE)}
    order = list(out)
    return sorted(out.values(), key=lambda h: (rank.get(h.type, len(rank)), order.index((h.type, h.unit))))


def _default_type(p: pb.Profile) -> str:
    names = pprof.sample_type_names(p)
    if p.default_sample_type:
        dst = str(p.string_table[p.default_sample_type])
        if any(t == dst for t, _u in names):
            return dst
    return names[-1][0] if names else ""


@dataclass
class Selection:
    """One sample type and unit, and the profiles that have it (with the index of that type in each)."""

    type: str
    unit: str
    profiles: list[tuple[pb.Profile, int]]
    skipped: int = 0  # profiles without this sample type


def select(named: list[tuple[str, pb.Profile]], wanted: str | None) -> Selection:
    """The profiles of one sample type: `wanted`, else CPU when present (PREFERENCE), else the first
    profile's default. Values of different units are never added up."""
    if not named:
        raise FlameError("no profiles")
    held = holdings(named)
    if wanted:
        matches = [h for h in held if h.type == wanted]
        if not matches:
            raise FlameError(f"sample type {wanted!r} not in profile; it holds:\n  " + "\n  ".join(h.describe() for h in held))
        chosen = max(matches, key=lambda h: h.profiles)
    else:
        preferred = [h for h in held if h.type in PREFERENCE]
        if preferred:
            chosen = preferred[0]
        else:
            dflt = _default_type(named[0][1])
            chosen = next(h for h in held if h.type == dflt)
    picked: list[tuple[pb.Profile, int]] = []
    for _name, p in named:
        for i, (t, u) in enumerate(pprof.sample_type_names(p)):
            if (t, u) == (chosen.type, chosen.unit):
                picked.append((p, i))
                break
    return Selection(chosen.type, chosen.unit, picked, len(named) - len(picked))


def pick_type(p: pb.Profile, wanted: str | None) -> int:
    """Index of a sample type in one profile (select() does this for a set of profiles)."""
    sel = select([("", p)], wanted)
    return sel.profiles[0][1]


def tree(sel: Selection) -> Node:
    root = Node("all")
    for p, i in sel.profiles:
        res = pprof.Resolver(p)
        for s in p.sample:
            v = s.value[i]
            if v <= 0:
                continue
            frames = res.stack(s.location_id)
            node = root
            node.total += v
            for fr in reversed(frames):
                node = node.child(fr.function)
                node.total += v
            node.self_value += v
    return root


# --- formatting --------------------------------------------------------------------------------


def fmt_value(v: float, unit: str) -> str:
    if unit == "nanoseconds":
        for lim, u in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
            if v >= lim:
                return f"{v / lim:.2f}{u}"
        return f"{v:.0f}ns"
    if unit == "bytes":
        for lim, u in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if v >= lim:
                return f"{v / lim:.2f}{u}"
        return f"{v:.0f}B"
    return f"{v:,.0f}"


def _color(name: str) -> str:
    h = hashlib.blake2b(name.encode(), digest_size=3).digest()
    if name.startswith("runtime."):
        return f"rgb({200 + h[0] % 40},{120 + h[1] % 50},{110 + h[2] % 40})"
    return f"rgb({215 + h[0] % 40},{90 + h[1] % 110},{30 + h[2] % 40})"


def svg(root: Node, title: str, unit: str, width: int = 1200, frame_h: int = 17, min_px: float = 0.3) -> str:
    depth = _depth(root)
    top = 50
    height = top + (depth + 1) * frame_h + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="Verdana, DejaVu Sans, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f4"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="16">{escape(title)}</text>',
        f'<text x="10" y="40" fill="#555">total {escape(fmt_value(root.total, unit))} — hover a frame for its value</text>',
    ]
    scale = (width - 20) / root.total if root.total else 0.0

    def draw(n: Node, x: float, level: int) -> None:
        w = n.total * scale
        if w < min_px:
            return
        y = height - 30 - (level + 1) * frame_h
        pct = 100.0 * n.total / root.total if root.total else 0.0
        tip = f"{n.name} — {fmt_value(n.total, unit)} ({pct:.2f}%), self {fmt_value(n.self_value, unit)}"
        parts.append(f'<g><title>{escape(tip)}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{frame_h - 1}" '
                     f'fill="{_color(n.name)}" rx="2"/>')
        chars = int((w - 6) / 6.6)
        if chars >= 3:
            label = n.name if len(n.name) <= chars else n.name[: chars - 2] + ".."
            parts.append(f'<text x="{x + 3:.2f}" y="{y + frame_h - 5}">{escape(label)}</text>')
        parts.append("</g>")
        cx = x
        for c in sorted(n.children.values(), key=lambda c: c.name):
            draw(c, cx, level + 1)
            cx += c.total * scale

    draw(root, 10.0, 0)
    parts.append("</svg>")
    return "\n".join(parts)


def _depth(n: Node) -> int:
    best = 0
    stack = [(n, 0)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        stack.extend((c, d + 1) for c in node.children.values())
    return best


def top(sel: Selection, n: int) -> tuple[list[tuple[str, int, int]], int]:
    """[(function, flat, cum)] by flat value, and the total."""
    flat: dict[str, int] = {}
    cum: dict[str, int] = {}
    total = 0
    for p, i in sel.profiles:
        res = pprof.Resolver(p)
        for s in p.sample:
            v = s.value[i]
            if v <= 0:
                continue
            total += v
            frames = res.stack(s.location_id)
            if frames:
                flat[frames[0].function] = flat.get(frames[0].function, 0) + v
            for fn in {f.function for f in frames}:
                cum[fn] = cum.get(fn, 0) + v
    rows = sorted(((fn, flat.get(fn, 0), c) for fn, c in cum.items()), key=lambda r: (r[1], r[2]), reverse=True)
    return rows[:n], total
