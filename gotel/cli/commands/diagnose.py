"""`gotel diagnose`: watch one Go process for a bounded time and say what is wrong with it, where, and what to do."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="the process to diagnose")
    who.add_argument("--selector", action="append", metavar="KEY=VALUE",
                     help="select the process like a receiver's discovery block: exe=GLOB, cmdline=REGEX, port=N, "
                          "container=ID (repeatable, all must match; exactly one process may match)")
    who.add_argument("--pod", metavar="NS/NAME", help="a pod on this node (its Go process; needs the Kubernetes API)")
    p.add_argument("--duration", default="30s", help="how long to watch (default 30s)")
    p.add_argument("--interval", default="1s", help="time between /proc samples and goroutine dumps (default 1s)")
    p.add_argument("--pprof", metavar="URL", help="the target's pprof base URL (default: found on its listening ports)")
    p.add_argument("--ebpf", choices=["auto", "on", "off"], default="auto",
                   help="attach the go_ebpf receiver for gRPC deadlines and errors (auto: when root)")
    p.add_argument("--threshold", action="append", default=[], metavar="RULE.NAME=VALUE",
                   help="override one rule threshold, e.g. gc.gc_cpu_fraction_warning=0.2 (docs/diagnose.md)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (flame graph, timeline)")


def _fail(msg: str) -> int:
    print(f"gotel diagnose: {msg}", file=sys.stderr)
    return 2


def _overrides(items: list[str]) -> dict[str, dict[str, float]]:
    from gotel.diagnose.rules import check_overrides

    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, sep, val = item.partition("=")
        rid, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--threshold {item!r}: expected RULE.NAME=VALUE")
        try:
            out.setdefault(rid, {})[name] = float(val)
        except ValueError:
            raise ValueError(f"--threshold {item!r}: {val!r} is not a number") from None
    check_overrides(out)
    return out


_SELECTOR_KEYS = {"exe": "exe_paths", "cmdline": "cmdline", "port": "ports", "container": "container_ids",
                  "pid": "pids"}


def select_pid(items: list[str]) -> int:
    """The one Go process the selector matches; ValueError naming the matches otherwise."""
    from gotel.discovery import DiscoveryConfig
    from gotel.discovery.procfs import all_pids, process_info

    crit: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        field = _SELECTOR_KEYS.get(k)
        if not sep or field is None:
            raise ValueError(f"--selector {item!r}: expected KEY=VALUE with KEY one of {', '.join(_SELECTOR_KEYS)}")
        if field in ("ports", "pids"):
            if not v.isdigit():
                raise ValueError(f"--selector {item!r}: {v!r} is not a number")
            crit.setdefault(field, []).append(int(v))
        elif field == "cmdline":
            crit[field] = v
        else:
            crit.setdefault(field, []).append(v)
    sel = DiscoveryConfig(**crit)
    me = os.getpid()
    found = [i for p in all_pids() if p != me and (i := process_info(p, go_only=True)) is not None and sel.selects(i)]
    if len(found) != 1:
        names = ", ".join(f"{i.pid} ({i.exe_name})" for i in found[:10]) or "none"
        raise ValueError(f"--selector {' '.join(items)} matches {len(found)} Go processes ({names}); it must match one")
    return found[0].pid


def pod_pid(spec: str) -> int:
    """The Go process of pod NS/NAME on this node: its uid from the API server, then /proc/PID/cgroup."""
    from gotel.discovery.procfs import all_pids, process_info
    from gotel.host import cgroup

    ns, sep, name = spec.partition("/")
    if not sep or not ns or not name:
        raise ValueError(f"--pod {spec!r}: expected NAMESPACE/NAME")
    from kubernetes import client as kclient

    from gotel.k8s.client import KubeConfigError, api_client

    try:
        api = api_client("serviceAccount" if os.environ.get("KUBERNETES_SERVICE_HOST") else "kubeConfig")
        # a list by name, not a GET: the same RBAC (list) the agent's pod watch already has
        pods = kclient.CoreV1Api(api).list_namespaced_pod(ns, field_selector=f"metadata.name={name}").items
        uid = pods[0].metadata.uid if pods and pods[0].metadata is not None else None
    except KubeConfigError as e:
        raise ValueError(f"--pod {spec}: {e}") from None
    except Exception as e:  # ApiException and transport errors: one line, not a traceback
        raise ValueError(f"--pod {spec}: reading the pod from the API server failed: {e}") from None
    if not uid:
        raise ValueError(f"--pod {spec}: no such pod in namespace {ns}")
    found = []
    for p in all_pids():
        info = cgroup.read_pid(p)
        if info is not None and info.pod_uid == uid and (pi := process_info(p, go_only=True)) is not None:
            found.append(pi)
    if len(found) != 1:
        raise ValueError(f"--pod {spec} (uid {uid}) has {len(found)} Go processes on this node; diagnose one with --pid "
                         f"({', '.join(str(i.pid) for i in found) or 'none here: is the pod on this node?'})")
    return found[0].pid


def run(args: argparse.Namespace) -> int:
    from gotel.config.duration import parse_duration
    from gotel.diagnose import gather, report, rules

    try:
        duration = parse_duration(args.duration)
        interval = parse_duration(args.interval)
        overrides = _overrides(args.threshold)
        if args.pid is not None:
            pid = args.pid
        elif args.selector:
            pid = select_pid(args.selector)
        else:
            pid = pod_pid(args.pod)
    except ValueError as e:
        return _fail(str(e))
    if duration <= 0 or interval <= 0:
        return _fail("--duration and --interval must be positive")
    ebpf = args.ebpf == "on" or (args.ebpf == "auto" and os.geteuid() == 0)
    opts = gather.Options(duration=duration, interval=min(interval, duration), pprof_url=args.pprof, ebpf=ebpf)
    try:
        snap = asyncio.run(gather.gather(pid, opts))
    except gather.TargetError as e:
        return _fail(str(e))
    rep = rules.evaluate(snap, overrides)
    if args.json:
        print(json.dumps(report.as_json(snap, rep), indent=2))
    else:
        sys.stdout.write(report.as_text(snap, rep))
    if args.html:
        with open(args.html, "w") as f:
            f.write(report.as_html(snap, rep))
    return 0
