"""`gotel components [--json]`: every installed component type, its signals, aliases and config schema."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gotel.component.contract import Kind, ReceiverFactory
from gotel.component.registry import registry
from gotel.config.types import ConfigJsonSchema


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable, with each config's JSON schema")
    p.add_argument("type", nargs="?", help="show one type's config keys in detail "
                   "(`telemetry`: the keys of service::telemetry)")


def describe() -> dict[str, Any]:
    reg = registry()
    out: dict[str, Any] = {}
    for kind in reg.factories:
        items = []
        for typ in reg.types(kind):
            f = reg.factories[kind][typ]
            item: dict[str, Any] = {
                "type": typ,
                "aliases": list(f.aliases),
                "signals": sorted(s.value for s in f.signals),
                "description": f.description,
                "schema": f.config.model_json_schema(schema_generator=ConfigJsonSchema),
            }
            if isinstance(f, ReceiverFactory):
                item["in_process"] = f.in_process
                item["needs_bpf"] = f.needs_bpf
                item["shares_process"] = f.shares_process
            items.append(item)
        out[f"{kind.value}s"] = items
    out["errors"] = list(reg.errors)
    from gotel.config.model import TelemetryConfig

    out["service_telemetry"] = TelemetryConfig.model_json_schema(schema_generator=ConfigJsonSchema)
    return out


def _type(p: dict[str, Any]) -> str:
    if p.get("format") == "duration":
        return "duration"
    if p.get("deprecated"):
        return "deprecated"
    if "$ref" in p:
        return str(p["$ref"]).split("/")[-1]
    return str(p.get("type") or " | ".join(_type(x) for x in p.get("anyOf", [])))


def _nested(p: dict[str, Any], defs: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(ref name, key suffix, schema) of the model a property holds, directly, optionally or as list items."""
    for q, suffix in ((p, "."), *((x, ".") for x in p.get("anyOf", [])), (p.get("items") or {}, "[].")):
        ref = str(q.get("$ref", ""))
        if ref.startswith("#/$defs/") and ref[8:] in defs:
            return ref[8:], suffix, defs[ref[8:]]
    return None


def _keys(schema: dict[str, Any], defs: dict[str, Any] | None = None, prefix: str = "",
          seen: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    """One row per key, nested models' keys included as a.b (a[].b for lists of them)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    rows = []
    for name, p in schema.get("properties", {}).items():
        typ = _type(p)
        default = "" if "default" not in p else p["default"] if typ == "duration" else json.dumps(p["default"])
        if name in schema.get("required", []):
            default = "(required)"
        rows.append((prefix + name, str(typ), default + (f"  {p['description']}" if p.get("description") else "")))
        sub = _nested(p, defs)
        if sub is not None and sub[0] not in seen:
            rows += _keys(sub[2], defs, prefix + name + sub[1], seen | {sub[0]})
    return rows


def run(args: argparse.Namespace) -> int:
    data = describe()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if args.type in ("telemetry", "service::telemetry", "service.telemetry"):
        t = Table(title="service::telemetry: gotel's own metrics, logs, resource and profiling", title_justify="left")
        for col in ("key", "type", "default / description"):
            t.add_column(col)
        for row in _keys(data["service_telemetry"]):
            t.add_row(*row)
        console.print(t)
        return 0
    if args.type:
        found = False
        for kind in Kind:
            for item in data.get(f"{kind.value}s", []):
                if item["type"] == args.type or args.type in item["aliases"]:
                    found = True
                    t = Table(title=f"{kind.value} {item['type']}: {item['description']}", title_justify="left")
                    for col in ("key", "type", "default / description"):
                        t.add_column(col)
                    for row in _keys(item["schema"]):
                        t.add_row(*row)
                    console.print(t)
        if not found:
            console.print(f"no component type {args.type!r}")
            return 1
        return 0
    for kind in Kind:
        items = data.get(f"{kind.value}s")
        if not items:
            continue
        t = Table(title=f"{kind.value}s", title_justify="left")
        for col in ("type", "aliases", "signals", "description"):
            t.add_column(col)
        for item in items:
            sig = ", ".join(item["signals"])
            desc = (item["description"] + (" [needs BPF]" if item.get("needs_bpf") else "")
                    + (" [shares a process]" if item.get("shares_process") else ""))
            t.add_row(item["type"], ", ".join(item["aliases"]), sig, escape(desc))  # "[needs BPF]" is no style
        console.print(t)
    for e in data["errors"]:
        console.print(f"[yellow]not loadable:[/yellow] {e}")
    console.print("`gotel components TYPE` shows a type's config keys; --json gives every JSON schema.")
    return 0
