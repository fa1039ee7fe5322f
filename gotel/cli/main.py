"""The `gotel` command. Each subcommand lives in its own module and is imported only when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("gotel.cli.commands.run", "run the agent (pipeline process and its receiver processes)"),
    "validate": ("gotel.cli.commands.validate", "check a config file and print every error with its place"),
    "receiver": ("gotel.cli.commands.receiver", "run one receiver alone, sending OTLP to an endpoint"),
    "components": ("gotel.cli.commands.components", "list every component type with its config schema"),
    "rules": ("gotel.cli.commands.rules", "print the diagnosis rules as a Prometheus alerting rule file"),
    "traces": ("gotel.cli.commands.traces", "find traces in Jaeger or the file exporter's output; show one as a waterfall"),
    "flame": ("gotel.cli.commands.flame", "flame graph (SVG) and top table of a pprof file, OTLP profile file or live target"),
    "inspect": ("gotel.cli.commands.inspect", "show what gotel can probe in a Go process or binary, and why not"),
    "diagnose": ("gotel.cli.commands.diagnose", "watch one Go process for a while and report what is wrong, where, and the fix"),
}


def build_parser() -> argparse.ArgumentParser:
    from gotel import __version__
    p = argparse.ArgumentParser(prog="gotel", description="A Go-aware telemetry agent.")
    p.add_argument("--version", action="version", version=f"gotel {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=mod)
        importlib.import_module(mod).add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from gotel.telemetry.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    if args.log_level != "debug":
        # grpc core logs to fd 2 itself (e.g. add_port.cc on a busy port) what its Python API raises
        # anyway, and gotel says once, on one line; at debug its lines stay. Set before grpc loads;
        # receiver processes inherit it. An explicit GRPC_VERBOSITY wins.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
