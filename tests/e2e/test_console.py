"""What a person sees on the console of `gotel run` with the embedded default config.

A `go build` starts dozens of short-lived Go processes (compile, asm, link) that the eBPF receivers
discover and often find gone before they are analysed. That is not a problem to report: the log must
hold no ERROR and no traceback, and the per-process messages about them must come as a few lines per
binary, not one per process. The independent truth for "dozens" is `go build -x`, which prints every
tool invocation.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from gotel.config.loader import default_config_text
from tests.e2e.agent import Agent, free_port
from tests.helpers import goapps

pytestmark = pytest.mark.slow

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _default_config_on_free_ports() -> str:
    text = default_config_text()
    assert "127.0.0.1:8888" in text and "127.0.0.1:8889" in text
    return text.replace("127.0.0.1:8888", "@TELEMETRY@").replace("127.0.0.1:8889", f"127.0.0.1:{free_port()}")


def test_go_build_during_gotel_run_gives_no_error_and_few_lines(tmp_path: Path) -> None:
    agent = Agent(_default_config_on_free_ports(), tmp_path).start()
    try:
        agent.wait_ready(120)
        end = time.monotonic() + 120
        while "receiver go_ebpf running" not in agent.output() or "receiver go_runtime running" not in agent.output():
            assert time.monotonic() < end, agent.output()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # the watchers' first scans

        src = tmp_path / "prog"
        src.mkdir()
        (src / "go.mod").write_text("module prog\n\ngo 1.19\n")
        (src / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n')
        go = str(goapps.go_tool("go1.27"))
        env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod",
               "GOPROXY": "off", "GOPATH": str(tmp_path / "gopath")}
        build = subprocess.run([go, "build", "-x", "-o", "prog", "."], cwd=src, env=env, capture_output=True,
                               text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-2000:]
        compiles = len(re.findall(r"/compile -o ", build.stderr))
        assert compiles >= 10, f"go build ran only {compiles} compile processes"
        for _ in range(5):  # short-lived Go CLI runs
            assert subprocess.run([str(src / "prog")], capture_output=True, timeout=30).returncode == 0
            assert subprocess.run([go, "env", "GOOS"], env=env, capture_output=True, timeout=60).returncode == 0
        time.sleep(3.0)  # the receivers handle the last exec events
        out = agent.output()
    finally:
        agent.stop()
    assert "Traceback" not in agent.output()  # nor at shutdown

    lines = out.splitlines()
    assert not [x for x in lines if " ERROR " in x], "\n".join(x for x in lines if " ERROR " in x)[:3000]
    assert "Traceback" not in out
    assert "/exe'" not in out  # FileNotFoundError: '/proc/N/exe' of a process that had exited
    raw = [x for x in lines if x.strip() and not _RECORD.match(x) and not x.startswith("debug: last ")]  # debug exporter
    assert not raw, "raw (unformatted) lines on the console:\n" + "\n".join(raw[:20])
    # per-process messages about the compiler: a few lines per receiver, not one per process
    about_compile = [x for x in lines if "/compile" in x]
    assert len(about_compile) <= 6, f"{compiles} compile processes -> {len(about_compile)} lines:\n" + "\n".join(about_compile)
