"""`gotel rules prometheus`: the diagnosis rules PromQL can express, as a Prometheus rule file on stdout."""

from __future__ import annotations

import argparse
import re
import sys

from gotel.config.types import format_duration, parse_duration

_PROM_DURATION = re.compile(r"^(\d+(y|w|d|h|ms|m|s))+$")  # Prometheus' own: whole numbers, no "us"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["prometheus"], help="rule file format")
    p.add_argument("--for", dest="for_", metavar="DURATION",
                   help="one `for:` for every alert instead of each rule's own (e.g. 0s to see alerts fire at once)")


def run(args: argparse.Namespace) -> int:
    from gotel.diagnose import promrules

    for_ = None
    if args.for_ is not None:
        try:
            for_ = format_duration(parse_duration(args.for_))
            if not _PROM_DURATION.match(for_):
                raise ValueError(f"{for_} is not a Prometheus duration (whole ms, s, m or h)")
        except ValueError as e:
            print(f"gotel rules: --for {args.for_!r}: {e}", file=sys.stderr)
            return 2
    sys.stdout.write(promrules.render(for_))
    return 0
