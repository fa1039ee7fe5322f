"""Integration tests that load real BPF programs into the running kernel, against the Go fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gotel.ebpf.checks import require_bpf

TOOLCHAINS = ["go1.19", "go1.27"]


@pytest.fixture(scope="session", autouse=True)
def _bpf_ready() -> None:
    """Fails (never skips) with the actionable message when the host cannot load BPF: CI is root."""
    require_bpf()


def gotel_uprobe_events() -> list[str]:
    """Lines of uprobe_events: gotel attaches through perf_event_open, so this must stay free of its probes."""
    try:
        return [ln for ln in Path("/sys/kernel/tracing/uprobe_events").read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def prog_exists(prog_id: int) -> bool:
    r = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    return r.returncode == 0 and bool(json.loads(r.stdout or "null"))


def own_prog_ids(pid: int | None = None) -> list[int]:
    """BPF program ids held by a process's file descriptors (from /proc/PID/fdinfo)."""
    base = f"/proc/{pid or os.getpid()}/fdinfo"
    ids = []
    for fd in os.listdir(base):
        try:
            text = Path(base, fd).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.append(int(line.split()[1]))
    return sorted(set(ids))


def wait_until(pred: Callable[[], bool], timeout: float = 10) -> bool:
    """Polls pred until it holds or timeout seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def read_text_byte(pid: int, address: int) -> int:
    """The byte at a code address as the process sees it: 0xCC while a uprobe sits there."""
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(address)
        return f.read(1)[0]
