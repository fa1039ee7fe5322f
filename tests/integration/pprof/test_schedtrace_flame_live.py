"""schedtrace from a real Go program's stderr; gotel flame of a live target."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gotel.cli.commands import flame as flame_cmd
from gotel.receivers.schedtrace import SchedtraceReceiver, factory
from tests.helpers import goapps
from tests.helpers.pprofkit import MemSink, context, metric_points

from .conftest import http_get

pytestmark = pytest.mark.slow


async def test_schedtrace_lines_of_a_real_program(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    binary = goapps.build("runtime", "go1.27")
    env = {**os.environ, "GODEBUG": "schedtrace=200,scheddetail=1", "GOMAXPROCS": "2"}
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline().decode().removeprefix("READY "))
        cfg = factory.config.model_validate({"files": [{"path": str(log), "service_name": "runtime"}],
                                             "start_at": "beginning"})
        sink = MemSink()
        r = SchedtraceReceiver(cfg, {"metrics": sink}, context("schedtrace"))  # type: ignore[dict-item]
        await asyncio.sleep(1.0)
        sink.batches.append(r.poll().batch())
        maxprocs = [dp.as_int for _r, dp in metric_points(sink, "gotel.schedtrace.gomaxprocs")]
        assert len(maxprocs) >= 3 and set(maxprocs) == {2}
        threads = [dp.as_int for _r, dp in metric_points(sink, "gotel.schedtrace.threads")]
        assert min(threads) >= 2
        local = metric_points(sink, "gotel.schedtrace.local_runqueue")
        assert {dp.attributes[0].value.int_value for _r, dp in local} == {0, 1}  # one queue per P
        assert ready["pid"] == proc.pid
        await r.shutdown()
    finally:
        proc.terminate()
        proc.wait(10)


def test_flame_of_live_target(goapp, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = goapp("runtime")
    stop = time.monotonic() + 3.5
    t = threading.Thread(target=lambda: [http_get(app.url("/burn?ms=200")) for _ in iter(lambda: time.monotonic() < stop, False)],
                         daemon=True)
    t.start()
    p = argparse.ArgumentParser()
    flame_cmd.add_arguments(p)
    out = tmp_path / "live.svg"
    rc = flame_cmd.run(p.parse_args([f"http://127.0.0.1:{app.port()}", "--seconds", "3", "--svg", str(out), "--top", "5"]))
    t.join()
    assert rc == 0
    table = capsys.readouterr().out
    first = next(ln for ln in table.splitlines() if "main." in ln or "runtime." in ln)
    assert "main.hotLoop" in first
    titles = [e.text or "" for e in ET.parse(out).getroot().iter("{http://www.w3.org/2000/svg}title")]
    assert any(x.startswith("main.hotLoop") for x in titles)
