"""`gotel inspect PID|BINARY [--json]`: what gotel can see in one Go program, and why not the rest.

For a 3 a.m. question like "why has this service no spans?": the Go version and modules, whether the
binary carries DWARF, its USDT probes, and for every probe gotel knows whether it attaches, attaches
with fewer attributes (and which), or does not (symbol missing, Go too old, module absent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gotel.ebpf.probespecs import Verdict, evaluate_all


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a process id or the path of a binary")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--receiver", help="only the probes of this receiver (go_ebpf, go_runtime)")


def _resolve(target: str) -> tuple[str, int | None, str]:
    """(path to read, pid or None, path to show)."""
    if target.isdigit():
        pid = int(target)
        exe = f"/proc/{pid}/exe"
        try:
            shown = os.readlink(exe)
        except OSError as e:
            raise SystemExit(f"gotel inspect: no process {pid} (or not allowed to read it: {e.strerror})") from e
        return exe, pid, shown
    if not os.path.isfile(target):
        raise SystemExit(f"gotel inspect: {target}: no such file (give a pid or a binary path)")
    return target, None, os.path.abspath(target)


def collect(target: str, receiver: str | None = None) -> dict[str, Any]:
    from gotel.discovery.procfs import is_go_binary, service_name
    from gotel.ebpf import targets
    from gotel.ebpf.usdt import read_probes
    from gotel.golang import GoAnalysisError, analyze

    path, pid, shown = _resolve(target)
    out: dict[str, Any] = {"target": target, "path": shown, "pid": pid}
    if pid is not None:
        out["service_name"] = service_name(pid, shown)
    try:
        probes, _ = read_probes(path)
        out["usdt_probes"] = [
            {"provider": p.provider, "name": p.name, "address": p.pc, "semaphore": p.semaphore or None,
             "arguments": p.arg_spec.split()}
            for p in probes
        ]
    except Exception as e:  # not an ELF file, or a broken note: say so, keep going
        out["usdt_probes"] = []
        out["usdt_error"] = str(e)
    out["is_go"] = is_go_binary(path)
    if not out["is_go"]:
        out["go_version"] = None
        out["probes"] = []
        return out
    try:
        gb = analyze(path)
    except GoAnalysisError as e:
        out["is_go"] = False
        out["go_error"] = str(e)
        out["go_version"] = None
        out["probes"] = []
        return out
    facts = targets.facts_for(gb)
    out["go_version"] = facts.go_version
    out["modules"] = facts.modules
    if gb.buildinfo is not None:
        out["main_package"] = gb.buildinfo.path
        out["build_settings"] = dict(gb.buildinfo.settings)
        if gb.buildinfo.main is not None:
            out["main_module"] = f"{gb.buildinfo.main.path} {gb.buildinfo.main.version}"
    out["has_dwarf"] = facts.has_dwarf
    out["has_symtab"] = gb.has_symtab
    out["functions_from"] = "symtab" if gb.has_symtab else "pclntab"
    out["build_id"] = gb.build_id
    verdicts = evaluate_all(facts)
    out["probes"] = [_verdict_json(v) for v in verdicts if receiver is None or v.spec.receiver == receiver]
    if receiver in (None, "go_ebpf") and any(v.spec.receiver == "go_ebpf" and v.symbol and "grpc" in v.spec.id
                                              for v in verdicts):
        from gotel.receivers.go_ebpf.layout import describe, layout_for

        # go_ebpf's own reading of the binary's gRPC layout: which name each renamed field has here
        out["go_ebpf_grpc"] = describe(layout_for(gb))
    return out


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {
        "id": v.spec.id,
        "receiver": v.spec.receiver,
        "status": v.status,
        "attachable": v.status in ("ok", "degraded"),
        "symbol": v.symbol or v.spec.symbols[0],
        "address": v.address,
        "ret_probes": v.ret_count,
        "reasons": v.reasons,
        "lost_attributes": v.lost_attributes,
        "description": v.spec.description,
    }


_STYLE = {"ok": "green", "degraded": "yellow", "unavailable": "red", "not-present": "dim"}


def _print_rich(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    c = Console(width=None if sys.stdout.isatty() else 160)
    head = f"[bold]{info['path']}[/bold]" + (f"  pid {info['pid']}" if info.get("pid") else "")
    if info.get("service_name"):
        head += f"  service {info['service_name']}"
    c.print(head)
    if not info["is_go"]:
        c.print("not a Go program (no Go build info): only USDT probes apply")
    else:
        dwarf = "[green]yes[/green]" if info["has_dwarf"] else "[yellow]no (stripped): struct offsets unknown[/yellow]"
        c.print(f"Go {info['go_version']}   DWARF: {dwarf}" + (f"   build id {info['build_id']}" if info.get("build_id") else ""))
        if info.get("main_module") or info.get("main_package"):
            c.print(f"main: {info.get('main_module') or info.get('main_package')}   functions from {info['functions_from']}")
        if info.get("modules"):
            t = Table(title="modules", show_edge=False)
            t.add_column("path")
            t.add_column("version")
            for k, v in sorted(info["modules"].items()):
                t.add_row(k, v)
            c.print(t)
    if info["usdt_probes"]:
        t = Table(title="USDT probes", show_edge=False)
        for col in ("probe", "address", "semaphore", "arguments"):
            t.add_column(col)
        for p in info["usdt_probes"]:
            t.add_row(f"{p['provider']}:{p['name']}", hex(p["address"]), hex(p["semaphore"]) if p["semaphore"] else "-",
                      " ".join(p["arguments"]))
        c.print(t)
    else:
        c.print("USDT probes: none")
    g = info.get("go_ebpf_grpc")
    if g:
        t = Table(title=f"go_ebpf gRPC layout (grpc {g['grpc_version'] or 'version unknown'}: read by field name)",
                  show_edge=False)
        t.add_column("what")
        t.add_column("this binary has", overflow="fold")
        for k in ("server_addresses", "client_transport", "client_stream", "status_error", "stream",
                  "operate_headers", "call_start"):
            t.add_row(k.replace("_", " "), str(g[k]) if g[k] else "[yellow]not found[/yellow]")
        if g["missing"]:
            t.add_row("[yellow]loses[/yellow]", "[yellow]" + ", ".join(g["missing"]) + "[/yellow]")
        c.print(t)
    if info["probes"]:
        t = Table(title="gotel probes", show_edge=False)
        t.add_column("probe", no_wrap=True)
        t.add_column("status", no_wrap=True)
        t.add_column("RETs", justify="right")
        t.add_column("symbol / why not / lost attributes", overflow="fold")
        for p in info["probes"]:
            detail = escape(p["symbol"])
            if p["reasons"]:
                detail += "\n" + escape("; ".join(p["reasons"]))  # type names such as map.group[string] are not markup
            if p["lost_attributes"]:
                detail += "\n[yellow]loses " + ", ".join(p["lost_attributes"]) + "[/yellow]"
            st = p["status"]
            t.add_row(p["id"], f"[{_STYLE[st]}]{st}[/{_STYLE[st]}]",
                      "" if p["ret_probes"] is None else str(p["ret_probes"]), detail)
        c.print(t)


def run(args: argparse.Namespace) -> int:
    try:
        info = collect(args.target, args.receiver)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_rich(info)
    return 0
