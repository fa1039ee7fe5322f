"""The fork server: receiver processes forked from one that imported their modules, with their own
stdin, stderr, session and name; they are the supervisor's children (it reaps them: exit codes and
signals reach it), outlive the fork server (it retires) and die with the supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gotel.component.contract import ComponentID, Kind
from gotel.config.model import ComponentEntry, SupervisorConfig
from gotel.pdata.batch import Signal
from gotel.receivers.synthetic import factory as synthetic
from gotel.service.forkserver import ForkServerClient
from gotel.service.supervisor import Supervisor
from gotel.telemetry.counters import Telemetry


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_forked_command_gets_stdin_stderr_and_reports_its_exit_code(tmp_path: Path) -> None:
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    try:
        bad = tmp_path / "bad.yaml"
        bad.write_text("receivers: {nope: {}}\n")
        p = await fs.spawn(["validate", "-c", str(bad)], b"", 1 << 20)
        assert p.pid != fs.pid
        err = (await p.stderr.read()).decode()
        assert await p.wait() == 1
        assert "nope" in err  # validate's own message, through the stderr pipe we passed
    finally:
        await fs.stop()
    assert fs.proc is not None and fs.proc.returncode == 0


async def test_a_receiver_process_runs_in_its_session_is_named_and_killed_by_pidfd(tmp_path: Path) -> None:
    sup = Supervisor("unix:///nonexistent.sock", SupervisorConfig(), Telemetry())
    cfg = synthetic.config.model_validate({"spans_per_second": 1})
    sup.add(ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, cfg), [Signal.TRACES])
    child = sup.children[ComponentID("synthetic")]
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    try:
        p = await fs.spawn(sup.command(child)[3:], sup.spec(child), 1 << 20)
        deadline = time.monotonic() + 10
        while b"running" not in await p.stderr.readline():
            assert time.monotonic() < deadline
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read().strip() == "synthetic"
        assert os.getsid(p.pid) == p.pid  # its own session, as start_new_session gives an exec'd one
        with open(f"/proc/{p.pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()  # ours, not the server's
        p.kill()
        assert await p.wait() == -signal.SIGKILL
    finally:
        await fs.stop()


async def test_receiver_processes_outlive_the_fork_server() -> None:
    sup = Supervisor("unix:///nonexistent.sock", SupervisorConfig(), Telemetry())
    cfg = synthetic.config.model_validate({"spans_per_second": 1})
    sup.add(ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, cfg), [Signal.TRACES])
    child = sup.children[ComponentID("synthetic")]
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    p = await fs.spawn(sup.command(child)[3:], sup.spec(child), 1 << 20)
    assert json.loads(sup.spec(child))["parent_pid"] == os.getpid()
    deadline = time.monotonic() + 10
    while b"running" not in await p.stderr.readline():
        assert time.monotonic() < deadline
    assert fs.proc is not None
    fs.proc.kill()  # SIGKILL, as hard as a retirement can be
    await fs.proc.wait()
    time.sleep(0.5)
    assert _alive(p.pid) and p.returncode is None  # still running, still ours
    with pytest.raises(OSError):
        await fs.spawn(["validate"], b"", 1 << 20)  # no server: the supervisor execs instead
    p.send_signal(signal.SIGTERM)
    assert await p.wait() == 0  # its clean exit status, reaped by us
    await fs.stop()


SUPERVISOR = r"""
import asyncio, json, sys, time
from gotel.component.contract import ComponentID, Kind
from gotel.config.model import ComponentEntry, SupervisorConfig
from gotel.pdata.batch import Signal
from gotel.receivers.synthetic import factory as synthetic
from gotel.service.forkserver import ForkServerClient
from gotel.service.supervisor import Supervisor
from gotel.telemetry.counters import Telemetry

async def main():
    sup = Supervisor("unix:///nonexistent.sock", SupervisorConfig(), Telemetry())
    cfg = synthetic.config.model_validate({"spans_per_second": 1})
    sup.add(ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, cfg), [Signal.TRACES])
    child = sup.children[ComponentID("synthetic")]
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    p = await fs.spawn(sup.command(child)[3:], sup.spec(child), 1 << 20)
    while b"running" not in await p.stderr.readline():
        pass
    await fs.stop()  # retired
    print(json.dumps({"receiver": p.pid}), flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_receiver_processes_die_with_the_supervisor() -> None:
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True)
    try:
        assert sup.stdout is not None
        receiver = json.loads(sup.stdout.readline())["receiver"]
        assert _alive(receiver)
    finally:
        sup.kill()  # SIGKILL: the supervisor cannot clean up; PR_SET_PDEATHSIG does
        sup.wait()
    deadline = time.monotonic() + 5
    while _alive(receiver) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(receiver)
