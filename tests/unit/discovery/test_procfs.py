"""is_alive against processes in each state the kernel can show: running, zombie, reaped, no executable."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gotel.discovery.procfs import is_alive


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3].decode()


def test_a_running_process_is_alive() -> None:
    assert is_alive(os.getpid())


def test_a_zombie_and_a_reaped_process_are_not() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    end = time.monotonic() + 10
    while _state(p.pid) != "Z":  # exited, not reaped: the kernel's own word for it
        assert time.monotonic() < end
        time.sleep(0.01)
    assert not is_alive(p.pid)
    p.wait()
    assert not is_alive(p.pid)


def test_a_process_without_an_executable_is_not() -> None:
    # kthreadd (pid 2 in the initial pid namespace) has no memory map, as an exiting process has after it
    # released its memory and before it becomes a zombie: /proc/PID/exe is gone while its state is S
    assert Path("/proc/2/comm").read_text().strip() == "kthreadd", "needs the initial pid namespace"
    assert _state(2) in ("S", "I")
    with pytest.raises(FileNotFoundError):
        os.readlink("/proc/2/exe")
    assert not is_alive(2)
