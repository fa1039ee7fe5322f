"""`gotel receiver TYPE[/NAME] -c FILE --endpoint URL`: one receiver alone, sending OTLP anywhere.

--endpoint unix:///path or http://host:4317 is OTLP/gRPC in plain text, https://host:4317 OTLP/gRPC
over TLS; with --protocol http the URL is an OTLP/HTTP base URL (http://host:4318).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import sys

from gotel.component.contract import ComponentID, Kind, ReceiverFactory
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.pdata.batch import Signal
from gotel.telemetry.logs import setup_logging

log = logging.getLogger("gotel.receiver")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """The kernel kills this process when the pipeline process goes away, even by SIGKILL. The
    parent's pid comes with the spec: if it is no longer our parent, it died before prctl."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:
        raise SystemExit(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="TYPE[/NAME]", help="the receiver's id in the config")
    p.add_argument("-c", "--config", help="config file that configures the receiver")
    p.add_argument("--endpoint", required=True, help="unix:///path, http://host:4317, https://host:4317 (or an OTLP/HTTP URL)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                   help="sent with every request; quote ${env:NAME} in VALUE to keep a token out of the process list")
    p.add_argument("--header-file", metavar="FILE", help="YAML file of header: value sent with every request (auth)")
    p.add_argument("--compression", choices=["gzip", "none"], default=None)
    p.add_argument("--signals", help="comma-separated signals (default: those its pipelines use, else all it supports)")
    p.add_argument("--internal", action="store_true", help=argparse.SUPPRESS)


def _internal(args: argparse.Namespace) -> int:
    """Receiver process of the agent: the spec (each receiver's id, type, validated config and signals;
    several when light receivers share the process) comes on stdin; args.id names the process."""
    setup_logging(args.log_level, prefix=f"[receiver {args.id}]")
    spec = json.loads(sys.stdin.read())
    die_with_parent(int(spec.get("parent_pid", 0)))
    if spec.get("profiling"):
        from gotel.telemetry.sdk.profiling import start_profiling

        start_profiling(spec["profiling"], receiver=str(args.id))
    from gotel.receiverhelper.process import load_one

    members = []
    for r in spec["receivers"]:
        factory, problem = load_one(Kind.RECEIVER, r["type"])
        if not isinstance(factory, ReceiverFactory):
            log.error("receiver type %s: %s", r["type"], problem)
            return 2
        members.append((ComponentID.parse(r["id"]), factory, factory.config.model_validate(r["config"]),
                        [Signal(s) for s in r["signals"]]))
    from gotel.host.memory import limit_arenas

    # before gRPC and the executor start their threads (a config's validation starts none)
    limit_arenas(max(f.malloc_arenas for _, f, _, _ in members))
    from gotel.receiverhelper.process import run_receivers, sink_config

    typ, ecfg = sink_config(args.endpoint, "grpc", {}, None, None)
    ecfg["retry_on_failure"] = {"initial_interval": 0.2, "max_interval": 2.0, "max_elapsed_time": 0}
    ecfg["send_item_count"] = True  # the pipeline's entry point then counts each request without parsing it
    try:
        return asyncio.run(run_receivers(members, typ, ecfg,
                                         telemetry_interval=float(spec.get("telemetry_interval", 5.0))))
    finally:
        if spec.get("profiling"):
            from gotel.telemetry.sdk.profiling import stop_profiling

            stop_profiling()


def run(args: argparse.Namespace) -> int:
    if args.internal:
        return _internal(args)
    try:
        cid = ComponentID.parse(args.id)
    except ValueError as e:
        print(f"gotel receiver: {e}", file=sys.stderr)
        return 2
    if not args.config:
        print("gotel receiver: -c/--config is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for i in e.issues:
            print(i, file=sys.stderr)
        return 1
    entry = cfg.receivers.get(cid)
    if entry is None:
        have = ", ".join(str(c) for c in cfg.receivers) or "none"
        print(f"gotel receiver: {args.config}: receiver {cid} is not configured (configured: {have})", file=sys.stderr)
        return 1
    factory = entry.factory
    assert isinstance(factory, ReceiverFactory)
    if args.signals:
        try:
            signals = [Signal(s.strip()) for s in args.signals.split(",") if s.strip()]
        except ValueError as e:
            print(f"gotel receiver: --signals: {e}", file=sys.stderr)
            return 2
        bad = [s for s in signals if s not in factory.signals]
        if bad:
            print(f"gotel receiver: {cid} does not produce {', '.join(bad)}", file=sys.stderr)
            return 2
    else:
        used = {p.signal for p in cfg.service.pipelines.values() if cid in p.receivers}
        signals = sorted(used or factory.signals)
    from gotel.exporterhelper.clientconfig import parse_header_args, read_headers_file

    headers, errors, warnings = parse_header_args(args.header, os.environ)
    for w in warnings:
        log.warning("%s", w)
    if args.header_file:
        try:
            headers.update(read_headers_file(args.header_file))
        except ValueError as err:
            errors.append(f"--header-file: {err}")
    if errors:
        for msg in errors:
            print(f"gotel receiver: {msg}", file=sys.stderr)
        return 2
    from gotel.receiverhelper.process import run_receiver, sink_config

    typ, ecfg = sink_config(args.endpoint, args.protocol, headers, args.compression, None)
    prof = cfg.service.telemetry.profiling  # a standalone receiver profiles itself as the agent's do
    if prof is not None:
        from gotel.telemetry.sdk.profiling import start_profiling, stop_profiling

        start_profiling(prof, receiver=str(cid))
    try:
        return asyncio.run(run_receiver(cid, factory, entry.config, list(signals), typ, ecfg))
    finally:
        if prof is not None:
            stop_profiling()
