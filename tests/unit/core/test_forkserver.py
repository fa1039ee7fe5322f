"""The fork server: receiver processes forked from one that imported their modules, with their own
stdin, stderr, session and name; exit codes and signals reach the supervisor; they die with it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

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
        p = await fs.spawn(sup.command(child)[3:], sup.spec(child, fs.pid), 1 << 20)
        deadline = time.monotonic() + 10
        while b"running" not in await p.stderr.readline():
            assert time.monotonic() < deadline
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read().strip() == "synthetic"
        assert os.getsid(p.pid) == p.pid  # its own session, as start_new_session gives an exec'd one
        with open(f"/proc/{p.pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == fs.pid
        p.kill()
        assert await p.wait() == -signal.SIGKILL
    finally:
        await fs.stop()


async def test_receiver_processes_die_with_the_fork_server() -> None:
    sup = Supervisor("unix:///nonexistent.sock", SupervisorConfig(), Telemetry())
    cfg = synthetic.config.model_validate({"spans_per_second": 1})
    sup.add(ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, cfg), [Signal.TRACES])
    child = sup.children[ComponentID("synthetic")]
    fs = ForkServerClient()
    await fs.start(["synthetic"])
    p = await fs.spawn(sup.command(child)[3:], sup.spec(child, fs.pid), 1 << 20)
    assert json.loads(sup.spec(child, fs.pid))["parent_pid"] == fs.pid
    await p.stderr.readline()
    assert fs.proc is not None
    fs.proc.kill()  # SIGKILL: the server cannot clean up; PR_SET_PDEATHSIG does
    await fs.proc.wait()
    assert await p.wait() == -signal.SIGKILL  # reported as killed when the server's socket closed
    deadline = time.monotonic() + 5
    while _alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(p.pid)
    await fs.stop()
