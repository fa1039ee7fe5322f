"""The code standard is part of the suite: ruff and mypy clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    r = _run(str(BIN / "ruff"), "check", "gotel", "receivers", "processors", "exporters", "connectors", "extensions", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    """mypy over the installed shape (scripts/typecheck.py): plugins seen as gotel.*, strict on the core."""
    r = _run(sys.executable, str(ROOT / "scripts" / "typecheck.py"))
    assert r.returncode == 0, r.stdout + r.stderr
