"""Secrets stay out of argv, data files are private, and a killed pipeline's folder is cleaned up.

The witnesses are the kernel's: /proc/PID/cmdline (what `ps` shows every local user) of the
processes gotel starts, st_mode of the files it writes, and the folders left in the run-time dir.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent import GOTEL, Agent, alive
from tests.helpers.otlp_sink import OTLPGrpcSink
from tests.helpers.procmem import tree

_PIPELINE_CFG = """
receivers:
  synthetic: {spans_per_second: 10, metrics_per_second: 0, logs_per_second: 0, profiles_per_second: 0}
exporters:
  debug: {verbosity: basic}
service:
  telemetry:
    metrics: {address: "@TELEMETRY@"}
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [debug]
"""


TOKEN = "tok-" + os.urandom(8).hex()  # a value that appears nowhere unless gotel leaks it


@pytest.fixture
def rundir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR (short: unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="gr-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", d)
    yield Path(d)
    subprocess.run(["rm", "-rf", d], check=False)


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _wait(pred: object, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _receiver_pids(agent: Agent) -> list[int]:
    assert agent.proc is not None
    status = agent.ready()
    assert status is not None
    return [int(r["pid"]) for r in status["receivers"].values() if r["pid"]]


def test_tokens_reach_the_backend_but_never_argv(tmp_path: Path, rundir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOTEL_TEST_TOKEN", TOKEN)
    hfile = tmp_path / "otlp-headers.yaml"
    hfile.write_text(f"x-api-key: key-{TOKEN}\n")
    hfile.chmod(0o600)
    sink = OTLPGrpcSink(require_headers={"authorization": f"Bearer {TOKEN}", "x-api-key": f"key-{TOKEN}"}).start()
    a = Agent(f"""
receivers:
  synthetic:
    spans_per_second: 50
    metrics_per_second: 0
    logs_per_second: 0
    profiles_per_second: 0
    resource_attributes: {{deploy.token: "${{env:GOTEL_TEST_TOKEN}}"}}
exporters:
  otlp:
    endpoint: {sink.address}
    tls: {{insecure: true}}
    headers: {{authorization: "Bearer ${{env:GOTEL_TEST_TOKEN}}"}}
    headers_file: {hfile}
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [otlp]
""", tmp_path)
    a.start()
    try:
        a.wait_ready()
        assert sink.wait_for(lambda r: r.span_count() > 0, 20), a.output()  # both headers were right
        pids = _receiver_pids(a)
        assert pids, "the synthetic receiver runs in its own process"
        assert a.proc is not None
        assert set(pids) <= set(tree(a.proc.pid))
        for pid in tree(a.proc.pid):  # the agent, the fork server, the receivers
            line = _cmdline(pid)
            assert TOKEN not in line, f"pid {pid}: {line}"
        # The receiver process got the secret (its config) over its stdin pipe.
        spans = sink.received.traces
        assert any(kv.value.string_value == TOKEN for r in spans for rs in r.resource_spans
                   for kv in rs.resource.attributes if kv.key == "deploy.token")
        assert TOKEN not in a.output()
    finally:
        a.stop()
        sink.stop()


def test_receiver_command_takes_headers_from_env_and_file_not_argv(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "r.yaml"
    cfg.write_text(_PIPELINE_CFG.replace("@TELEMETRY@", "127.0.0.1:0"))
    hfile = tmp_path / "h.yaml"
    hfile.write_text(f"x-api-key: key-{TOKEN}\n")
    hfile.chmod(0o644)  # readable by others: works, with a warning
    sink = OTLPGrpcSink(require_headers={"authorization": f"Bearer {TOKEN}", "x-api-key": f"key-{TOKEN}"}).start()
    env = {**os.environ, "GOTEL_TEST_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "receiver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [GOTEL, "receiver", "synthetic", "-c", str(cfg), "--endpoint", f"http://{sink.address}",
             "--signals", "traces", "--header", "authorization=Bearer ${env:GOTEL_TEST_TOKEN}",
             "--header-file", str(hfile)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert sink.wait_for(lambda r: r.span_count() > 0, 20), log.read_text()
            assert TOKEN not in _cmdline(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            sink.stop()
    text = log.read_text()
    assert f"headers file {hfile} is readable by other users (mode 0644): chmod 600 it" in text
    assert TOKEN not in text


def test_literal_credential_in_argv_still_works_with_a_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "r.yaml"
    cfg.write_text(_PIPELINE_CFG.replace("@TELEMETRY@", "127.0.0.1:0"))
    sink = OTLPGrpcSink(require_headers={"authorization": "Bearer literal"}).start()
    log = tmp_path / "receiver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [GOTEL, "receiver", "synthetic", "-c", str(cfg), "--endpoint", f"http://{sink.address}",
             "--signals", "traces", "--header", "authorization=Bearer literal"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert sink.wait_for(lambda r: r.span_count() > 0, 20), log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            sink.stop()
    assert "--header 'authorization' holds a literal value, visible to every local user" in log.read_text()


def test_file_exporter_output_is_private_unless_configured(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        a = Agent(f"""
receivers:
  synthetic: {{spans_per_second: 100, metrics_per_second: 0, logs_per_second: 0, profiles_per_second: 0}}
exporters:
  file:
    path: {tmp_path}/gotel-data/traces.jsonl
    flush_interval: 100ms
  file/shared:
    path: {tmp_path}/shared/traces.jsonl
    flush_interval: 100ms
    file_mode: 0640
service:
  telemetry:
    metrics: {{address: "@TELEMETRY@"}}
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [file, file/shared]
""", tmp_path)
        a.start()
    finally:
        os.umask(old)
    try:
        a.wait_ready()
        private, shared = tmp_path / "gotel-data" / "traces.jsonl", tmp_path / "shared" / "traces.jsonl"
        assert _wait(lambda: private.exists() and private.stat().st_size > 0 and shared.exists())
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(shared.stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "gotel-data").stat().st_mode) == 0o700
    finally:
        a.stop()


def _folders(rundir: Path) -> set[str]:
    return {p.name for p in rundir.iterdir() if p.name.startswith("gotel-run-")}


def test_killed_pipelines_folder_is_removed_at_next_start_and_a_live_ones_kept(
        tmp_path: Path, rundir: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    (tmp_path / "3").mkdir()
    live = Agent(_PIPELINE_CFG, tmp_path / "1").start()
    crashed = Agent(_PIPELINE_CFG, tmp_path / "2").start()
    nxt: Agent | None = None
    try:
        live.wait_ready()
        crashed.wait_ready()
        assert live.proc is not None and crashed.proc is not None
        live_dir = next(n for n in _folders(rundir) if n.startswith(f"gotel-run-{live.proc.pid}-"))
        crashed_dir = next(n for n in _folders(rundir) if n.startswith(f"gotel-run-{crashed.proc.pid}-"))
        kids = tree(crashed.proc.pid)[1:]
        crashed.proc.send_signal(signal.SIGKILL)
        crashed.proc.wait(10)
        assert _wait(lambda: not any(alive(k) for k in kids), 10)  # its receivers die with it
        assert crashed_dir in _folders(rundir)  # left behind, with its socket
        # Someone else's folder that only looks like ours: a pid that is alive, not a gotel.
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        decoy = rundir / f"gotel-run-{other.pid}-decoy"
        decoy.mkdir(mode=0o700)
        try:
            nxt = Agent(_PIPELINE_CFG, tmp_path / "3").start()
            nxt.wait_ready()
            assert nxt.proc is not None
            left = _folders(rundir)
            assert crashed_dir not in left
            assert live_dir in left and decoy.name in left
            assert any(n.startswith(f"gotel-run-{nxt.proc.pid}-") for n in left)
            assert "removed 1 run-time folder(s) left by pipelines that did not stop cleanly" in nxt.output()
        finally:
            other.kill()
            other.wait()
    finally:
        for x in (live, nxt):
            if x is not None:
                x.stop()
        crashed.kill()
