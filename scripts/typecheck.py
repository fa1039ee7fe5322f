#!/usr/bin/env python3
"""mypy over gotel as it is installed: the plugin folders under their gotel.* names.

setup.py maps receivers/, processors/, exporters/, connectors/ and extensions/ into the gotel namespace;
run on the folders, mypy would see `receivers.*` and no `gotel.receivers.*`. This builds a tree of
symlinks in the installed shape (build/typecheck/gotel) and runs mypy there, printing repository paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("receivers", "processors", "exporters", "connectors", "extensions")
TREE = ROOT / "build" / "typecheck"


def build_tree() -> Path:
    pkg = TREE / "gotel"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "gotel").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for folder in PLUGINS:
        (pkg / folder).symlink_to(ROOT / folder)
    return TREE


def main() -> int:
    tree = build_tree()
    mypy = Path(sys.executable).parent / "mypy"
    r = subprocess.run([str(mypy), "--config-file", str(ROOT / "pyproject.toml"), "-p", "gotel", *sys.argv[1:]],
                       cwd=tree, capture_output=True, text=True, env={**os.environ, "MYPYPATH": ""})
    plugin = re.compile("^gotel/(" + "|".join(PLUGINS) + ")/", re.M)
    sys.stdout.write(plugin.sub(r"\1/", r.stdout))
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
