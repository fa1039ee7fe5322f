"""`gotel run [-c FILE]`: the agent (pipeline process and its receiver processes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gotel.config.loader import load_config, load_default_config
from gotel.config.model import ConfigError

log = logging.getLogger("gotel")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default: the embedded config/default.yaml)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config) if args.config else load_default_config()
    except ConfigError as e:
        for i in [*e.warnings, *e.issues]:
            print(i, file=sys.stderr)
        print("gotel: not started: the config has errors (see above; `gotel validate` shows the same)", file=sys.stderr)
        return 1
    for w in cfg.warnings:
        log.warning("%s", w)
    # --log-level wins when given; otherwise service::telemetry::logs::level applies.
    level = getattr(args, "log_level", "info")
    configured = cfg.service.telemetry.logs.level.lower()
    if level == "info" and configured != "info":
        level = "warning" if configured == "warn" else configured
        logging.getLogger().setLevel(level.upper())

    from gotel.service.forkserver import prefork
    from gotel.service.service import Service
    from gotel.telemetry.sdk.logs import apply_log_config, customised, shutdown_providers
    from gotel.telemetry.sdk.resource import own_resource

    tcfg = cfg.service.telemetry
    providers = apply_log_config(tcfg.logs, level, own_resource(tcfg.resource)) if customised(tcfg.logs) else []
    if tcfg.profiling is not None:
        from gotel.telemetry.sdk.profiling import start_profiling

        start_profiling(tcfg.profiling)

    # the fork server forked from here, before any thread: it and the receiver processes share our imports
    used = {rid for p in cfg.service.pipelines.values() for rid in p.receivers}
    prefork(sorted({cfg.receivers[r].factory.type for r in used
                    if r in cfg.receivers and not cfg.receivers[r].factory.in_process}))

    async def main() -> int:
        return await Service(cfg, log_level=level).run()

    try:
        return asyncio.run(main())
    finally:
        if tcfg.profiling is not None:
            from gotel.telemetry.sdk.profiling import stop_profiling

            stop_profiling()
        shutdown_providers(providers)
