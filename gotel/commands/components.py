"""`gotel components [--json]`: every installed component type, its signals, aliases and config schema."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gotel.component import Kind, ReceiverFactory
from gotel.registry import registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable, with each config's JSON schema")
    p.add_argument("type", nargs="?", help="show one type's config keys in detail")


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
                "schema": f.config.model_json_schema(),
            }
            if isinstance(f, ReceiverFactory):
                item["in_process"] = f.in_process
                item["needs_bpf"] = f.needs_bpf
            items.append(item)
        out[f"{kind.value}s"] = items
    out["errors"] = list(reg.errors)
    return out


def _keys(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    props = schema.get("properties", {})
    rows = []
    for name, p in props.items():
        typ = p.get("type") or " | ".join(x.get("type", x.get("$ref", "?").split("/")[-1]) for x in p.get("anyOf", []))
        if not typ and "$ref" in p:
            typ = p["$ref"].split("/")[-1]
        default = "" if "default" not in p else json.dumps(p["default"])
        if name in schema.get("required", []):
            default = "(required)"
        rows.append((name, str(typ), default + (f"  {p['description']}" if p.get("description") else "")))
    return rows


def run(args: argparse.Namespace) -> int:
    data = describe()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
            desc = item["description"] + (" [needs BPF]" if item.get("needs_bpf") else "")
            t.add_row(item["type"], ", ".join(item["aliases"]), sig, desc)
        console.print(t)
    for e in data["errors"]:
        console.print(f"[yellow]not loadable:[/yellow] {e}")
    console.print("`gotel components TYPE` shows a type's config keys; --json gives every JSON schema.")
    return 0
