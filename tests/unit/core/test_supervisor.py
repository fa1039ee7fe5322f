"""Supervisor: exponential restart backoff (capped), state reporting, secrets passed on stdin only."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
import sys
import time

import pytest
from pydantic import Field, SecretStr

from gotel.component.contract import ComponentConfig, ComponentID, Kind
from gotel.config.model import ComponentEntry, SupervisorConfig
from gotel.config.types import Duration
from gotel.pdata.batch import Signal
from gotel.receivers.synthetic import factory as synthetic
from gotel.service.supervisor import Child, Supervisor, config_to_json
from gotel.telemetry.counters import Telemetry


class Secretive(ComponentConfig):
    token: SecretStr
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    every: Duration = 1.5


def test_config_to_json_reveals_secrets_for_the_child_only() -> None:
    cfg = Secretive(token=SecretStr("s3cr3t"), headers={"authorization": SecretStr("Bearer x")}, every="200ms")  # type: ignore[arg-type]
    assert "s3cr3t" not in repr(cfg)
    data = config_to_json(cfg)
    assert data == {"token": "s3cr3t", "headers": {"authorization": "Bearer x"}, "every": "200ms"}
    assert Secretive.model_validate(data).every == 0.2


class Crashing(Supervisor):
    """Children that print a line and exit 3 at once."""

    def command(self, child: Child) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.stdin.read(); print('boom: bad probe', file=sys.stderr); sys.exit(3)"]


async def test_restart_backoff_doubles_and_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gotel.service.supervisor")
    tel = Telemetry()
    sup = Crashing("unix:///nonexistent", SupervisorConfig(initial_backoff=0.1, max_backoff=0.4, stable_after=60), tel)
    entry = ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, synthetic.config())
    sup.add(entry, [Signal.TRACES])
    starts: list[float] = []
    orig = sup._spawn

    async def spawn(child: Child) -> asyncio.subprocess.Process:
        starts.append(time.monotonic())
        return await orig(child)

    sup._spawn = spawn  # type: ignore[method-assign]
    await sup.start()
    deadline = time.monotonic() + 20
    while len(starts) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sup.stop()
    assert len(starts) >= 6
    # the announced waits double from initial_backoff and stop at max_backoff
    waits = [float(m) for m in re.findall(r"restarting in ([0-9.]+)s", caplog.text)]
    assert waits[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    # and the real gaps between spawns are at least those waits
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= w - 0.01 for g, w in zip(gaps, waits, strict=False))
    restarts = tel.registry.get_sample_value("gotel_receiver_restarts_total", {"component": "synthetic", "kind": "receiver"})
    assert restarts is not None and restarts >= 5
    assert tel.registry.get_sample_value("gotel_receiver_up", {"component": "synthetic", "kind": "receiver"}) == 0
    assert "receiver synthetic exited with code 3 after" in caplog.text
    assert "(last output: boom: bad probe)" in caplog.text
    status = sup.status()["synthetic"]
    assert status["up"] is False and status["restarts"] >= 5


def test_spec_carries_config_signals_and_parent() -> None:
    sup = Supervisor("unix:///x.sock", SupervisorConfig(), Telemetry())
    cfg = synthetic.config.model_validate({"spans_per_second": 5, "service_name": "a"})
    sup.add(ComponentEntry(ComponentID("synthetic", "one"), Kind.RECEIVER, synthetic, cfg), [Signal.LOGS, Signal.TRACES])
    child = sup.children[ComponentID("synthetic", "one")]
    spec = json.loads(sup.spec(child))
    [one] = spec["receivers"]
    assert one["id"] == "synthetic/one" and one["type"] == "synthetic" and one["signals"] == ["logs", "traces"]
    assert synthetic.config.model_validate(one["config"]) == cfg
    cmd = sup.command(child)
    assert cmd[-5:] == ["receiver", "synthetic/one", "--internal", "--endpoint", "unix:///x.sock"]
    assert "spans_per_second" not in " ".join(cmd)  # config never in argv


class Chatty(Supervisor):
    """A child writing a 3 MB log line (more than any pipe buffer or stream limit) and two raw lines."""

    def command(self, child: Child) -> list[str]:
        return [sys.executable, "-c",
                "import sys; sys.stdin.read(); sys.stderr.write('2026-01-01 00:00:00,000 INFO ' + 'x' * 3_000_000 + "
                "'\\nraw C library line\\nlast words\\n'); sys.exit(0)"]


async def test_huge_log_lines_never_block_the_child(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="gotel.service.supervisor")
    sup = Chatty("unix:///nonexistent", SupervisorConfig(initial_backoff=5), Telemetry())
    sup.add(ComponentEntry(ComponentID("synthetic"), Kind.RECEIVER, synthetic, synthetic.config()), [Signal.TRACES])
    await sup.start()
    deadline = time.monotonic() + 20
    while "exited with code 0" not in caplog.text and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sup.stop()
    assert "(last output: last words)" in caplog.text
    err = capsys.readouterr().err
    assert err.count("x") >= 3_000_000
    # lines that are not log records (BCC, LLVM, grpc core writing to fd 2) show only at debug
    forwarded = err.splitlines()
    assert "raw C library line" not in forwarded and "last words" not in forwarded


def test_light_receivers_share_one_process_unless_kept_alone() -> None:
    light = dataclasses.replace(synthetic, shares_process=True)

    def units(own: list[str]) -> list[list[str]]:
        sup = Supervisor("unix:///x.sock", SupervisorConfig(own_process=own), Telemetry())
        for rid, f in (("synthetic/a", light), ("synthetic/b", synthetic), ("synthetic/c", light), ("synthetic/d", light)):
            sup.add(ComponentEntry(ComponentID.parse(rid), Kind.RECEIVER, f, f.config()), [Signal.TRACES])
        return sorted([str(c.id) for c in u.members] for u in sup.group())

    assert units([]) == [["synthetic/a", "synthetic/c", "synthetic/d"], ["synthetic/b"]]
    assert units(["synthetic/c"]) == [["synthetic/a", "synthetic/d"], ["synthetic/b"], ["synthetic/c"]]
    # one light receiver left: alone, named as before
    assert units(["synthetic/c", "synthetic/d"]) == [["synthetic/a"], ["synthetic/b"], ["synthetic/c"], ["synthetic/d"]]
    sup = Supervisor("unix:///x.sock", SupervisorConfig(), Telemetry())
    for rid in ("synthetic/a", "synthetic/c"):
        sup.add(ComponentEntry(ComponentID.parse(rid), Kind.RECEIVER, light, light.config()), [Signal.TRACES])
    [unit] = sup.group()
    assert sup.command(unit)[-5:] == ["receiver", "synthetic/a+synthetic/c", "--internal", "--endpoint", "unix:///x.sock"]
    spec = json.loads(sup.spec(unit))
    assert [r["id"] for r in spec["receivers"]] == ["synthetic/a", "synthetic/c"]


async def test_a_shared_process_restarts_its_receivers_together(caplog: pytest.LogCaptureFixture) -> None:
    """One process for two receivers: both up with its pid, both down when it exits, both restarted once."""
    caplog.set_level(logging.INFO, logger="gotel.service.supervisor")
    light = dataclasses.replace(synthetic, shares_process=True)
    tel = Telemetry()
    sup = Crashing("unix:///nonexistent", SupervisorConfig(initial_backoff=0.2, max_backoff=0.2), tel)
    for rid in ("synthetic/a", "synthetic/b"):
        sup.add(ComponentEntry(ComponentID.parse(rid), Kind.RECEIVER, light, light.config()), [Signal.TRACES])
    await sup.start()
    deadline = time.monotonic() + 20
    while "restarting in" not in caplog.text or not all(c.restarts for c in sup.children.values()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await sup.stop()
    assert "receivers synthetic/a, synthetic/b (one process) exited with code 3" in caplog.text
    for rid in ("synthetic/a", "synthetic/b"):
        assert tel.registry.get_sample_value("gotel_receiver_restarts_total", {"component": rid, "kind": "receiver"}) >= 1
    status = sup.status()
    assert status["synthetic/a"]["restarts"] == status["synthetic/b"]["restarts"]


def test_gotel_components_says_which_receivers_share_a_process(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from gotel.cli.main import main

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["components"]) == 0
    receivers = capsys.readouterr().out.split("\nprocessors")[0]  # the first table
    rows = {line.split("│")[1].strip(): line for line in receivers.splitlines() if line.count("│") > 3}
    assert "[shares a process]" in rows["pprof"] and "[shares a process]" in rows["process"]
    assert "[needs BPF]" in rows["go_ebpf"] and "[shares a process]" not in rows["go_ebpf"]
    assert main(["components", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    shared = sorted(r["type"] for r in data["receivers"] if r["shares_process"])
    assert shared == ["go_metrics", "pprof", "process"]
