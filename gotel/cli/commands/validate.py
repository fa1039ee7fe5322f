"""`gotel validate -c FILE`: every problem at once with file, line and path; exit 1 if any."""

from __future__ import annotations

import argparse
import os
import sys

from gotel.config.loader import load_config, load_default_config
from gotel.config.model import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default: the embedded default.yaml)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config) if args.config else load_default_config()
    except ConfigError as e:
        for w in e.warnings:
            print(w, file=sys.stderr)
        for i in e.issues:
            print(i, file=sys.stderr)
        n = len(e.issues)
        print(f"{args.config or 'default.yaml'}: {n} error{'' if n == 1 else 's'}", file=sys.stderr)
        return 1
    for w in cfg.warnings:
        print(w, file=sys.stderr)
    name = os.path.basename(args.config) if args.config else "default.yaml (embedded)"
    print(f"{name}: valid ({cfg.summary()})")
    return 0
